//! What the algorithms see of the network: ordered, framed, point-to-point links to peer ranks.
//!
//! [`Transport`] is the whole interface. Implementations:
//! - [`stream::StreamTransport`]: framing over any pair of byte streams per peer; the in-memory
//!   ([`mem`]), TCP ([`tcp`]), QUIC ([`quic`]) and shared-memory ([`shm`]) transports are this
//!   type with different connection set-up (shared memory: lock-free rings in `/dev/shm`
//!   segments, set up over an authenticated boot transport).
//!
//! - [`subset`]: a sub-communicator's view of a transport, and a per-peer router over two
//!   transports (shared memory within a host, TCP across hosts).
//!
//! Links are ordered per direction: frames from one peer arrive in the order it sent them.
//! Nothing here knows about membership; a transport is built for one epoch's fixed rank list.

pub mod arena;
pub mod auth;
mod kind;
pub mod mem;
pub mod quic;
pub mod shm;
pub mod stream;
pub mod subset;
pub mod tcp;

use std::time::Duration;

pub use arena::HostArena;
pub use kind::{TransportKind, UnknownTransport};
pub use stream::set_link_timing;

use crate::{
    error::{CollectiveError, Result},
    frame::{ErrorCode, Header},
};

/// Framed, ordered links from this rank to every other rank of one communicator.
///
/// The futures are driven on one task (the collective's); they need not be `Send`.
/// Sends and receives on different peers, and a send and a receive on the same peer, may be in
/// flight at once.
#[allow(async_fn_in_trait)] // Ops run on the caller's current-thread runtime; no Send bound needed.
pub trait Transport {
    /// This rank, in `0..size`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn size(&self) -> usize;

    /// Sends one frame to `peer`.
    ///
    /// Not cancel-safe: dropping the future part-way leaves the link mid-frame, after which the
    /// link only accepts [`abort_all`](Self::abort_all) (which then closes it).
    async fn send(&self, peer: usize, header: &Header, payload: &[u8]) -> Result<()>;

    /// Sends one frame whose payload is `parts` back to back (a gather list: the fused tensors
    /// of a grouped allreduce). The default packs them and calls [`send`](Self::send); streams
    /// write the parts where they lie.
    async fn send_parts(&self, peer: usize, header: &Header, parts: &[&[u8]]) -> Result<()> {
        match parts {
            [one] => self.send(peer, header, one).await,
            _ => self.send(peer, header, &parts.concat()).await,
        }
    }

    /// Receives the next frame from `peer` into `dst`.
    ///
    /// The frame must match `expect` (see [`Header::check`]) and `dst.len()` must equal
    /// `expect.len`; an error frame from the peer turns into the error it reports.
    async fn recv(&self, peer: usize, expect: &Header, dst: &mut [u8]) -> Result<()>;

    /// Receives the next frame from `peer` like [`recv`](Self::recv), handing its payload to
    /// `consume(offset, bytes)` in order, in pieces of whole elements of the frame's dtype,
    /// aligned for it. The default receives into `scratch` (which must hold `expect.len`
    /// bytes) and hands it over whole; shared memory lends the bytes where they lie in the
    /// ring, which saves the copy (a reduction reads them straight from the peer's segment).
    async fn recv_with(
        &self,
        peer: usize,
        expect: &Header,
        scratch: &mut [u8],
        consume: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<()> {
        self.recv(peer, expect, scratch).await?;
        consume(0, scratch);
        Ok(())
    }

    /// Best effort, bounded by `within`: tells every peer that this rank gave up on the operation
    /// `header` names. Links left mid-frame by a dropped send are closed instead.
    async fn abort_all(
        &self,
        header: &Header,
        code: ErrorCode,
        subject: Option<usize>,
        message: &str,
        within: Duration,
    );

    /// After an operation failed because `peer`'s link broke: the error `peer` reported in an
    /// error frame before it went away, if one is waiting to be read (bounded by `within`).
    async fn last_word(&self, peer: usize, within: Duration) -> Option<CollectiveError>;

    /// The peer a receive is currently blocked on, for timeout reports.
    fn waiting_on(&self) -> Option<usize>;

    /// The host arena every rank of this transport maps, if it offers one (a capability:
    /// shared memory does, across one host): `Algo::Arena` runs on it.
    fn arena(&self) -> Option<&dyn HostArena> {
        None
    }

    /// How long this rank waited, cumulatively, for each peer's frames to begin arriving, by
    /// peer rank (empty where it is not measured): where a collective spent its time, link by
    /// link, for naming a slow rank or link. See [`set_link_timing`].
    fn link_waits(&self) -> Vec<Duration> {
        Vec::new()
    }

    /// Graceful end, bounded by `within`: ends this rank's side of every link, then waits until
    /// every peer has ended its side too. A peer still finishing the last operation (it may
    /// need bytes this rank already sent, or still be writing) is not cut off by an early close.
    async fn close(&self, within: Duration);
}

/// A shared transport (sub-communicators and routers hold their parent this way).
impl<T: Transport> Transport for std::sync::Arc<T> {
    fn rank(&self) -> usize {
        (**self).rank()
    }

    fn size(&self) -> usize {
        (**self).size()
    }

    async fn send(&self, peer: usize, header: &Header, payload: &[u8]) -> Result<()> {
        (**self).send(peer, header, payload).await
    }

    async fn send_parts(&self, peer: usize, header: &Header, parts: &[&[u8]]) -> Result<()> {
        (**self).send_parts(peer, header, parts).await
    }

    async fn recv(&self, peer: usize, expect: &Header, dst: &mut [u8]) -> Result<()> {
        (**self).recv(peer, expect, dst).await
    }

    async fn recv_with(
        &self,
        peer: usize,
        expect: &Header,
        scratch: &mut [u8],
        consume: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<()> {
        (**self).recv_with(peer, expect, scratch, consume).await
    }

    async fn abort_all(
        &self,
        header: &Header,
        code: ErrorCode,
        subject: Option<usize>,
        message: &str,
        within: Duration,
    ) {
        (**self)
            .abort_all(header, code, subject, message, within)
            .await;
    }

    async fn last_word(&self, peer: usize, within: Duration) -> Option<CollectiveError> {
        (**self).last_word(peer, within).await
    }

    fn waiting_on(&self) -> Option<usize> {
        (**self).waiting_on()
    }

    fn arena(&self) -> Option<&dyn HostArena> {
        (**self).arena()
    }

    fn link_waits(&self) -> Vec<Duration> {
        (**self).link_waits()
    }

    async fn close(&self, within: Duration) {
        (**self).close(within).await;
    }
}
