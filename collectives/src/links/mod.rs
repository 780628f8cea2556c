//! One communicator's links as a [`TransportKind`] asks for them, formed the same way for
//! `ringrun bench` and for every epoch of the runtime.
//!
//! [`connect`] starts from the authenticated TCP mesh (needed anyway: it carries shared
//! memory's segment names, QUIC's per-run addresses and the links between hosts) and learns
//! every rank's host ([`Layout`]). Under `auto`:
//! - one host: shared memory between all ranks, and the TCP mesh closes;
//! - one rank per host: the TCP mesh;
//! - otherwise: shared memory inside each host (set up over a [`Subset`] of the mesh), routed
//!   beside TCP to the other hosts ([`Routed`]), under the hierarchical allreduce.
//!
//! [`LayoutComm`] is the communicator over the result: flat, or hierarchical for allreduces
//! above `CommConfig::small_bytes`.
//! Algorithms are chosen by [`Communicator`]'s one selection in every case.

mod comm;
mod connect;

use std::{sync::Arc, time::Duration};

pub use comm::LayoutComm;
pub use connect::{HostLabel, Layout, LinkSpec, connect, host_key};

#[cfg(doc)]
use crate::{
    Communicator,
    transport::{TransportKind, subset::Subset},
};
use crate::{
    error::{CollectiveError, Result},
    frame::{ErrorCode, Header},
    transport::{
        HostArena, Transport, quic::QuicTransport, shm::ShmTransport, subset::Routed,
        tcp::TcpTransport,
    },
};

/// Shared memory to the ranks on this host, TCP to the others.
pub type HostLinks = Routed<ShmTransport, Arc<TcpTransport>>;

/// One communicator's links, whichever kind they are.
pub enum Links {
    /// TCP to every rank.
    Tcp(TcpTransport),
    /// QUIC to every rank.
    Quic(QuicTransport),
    /// Shared memory to every rank (all on this host).
    Shm(ShmTransport),
    /// Shared memory in the host, TCP across hosts.
    Hosts(Arc<HostLinks>),
}

impl Links {
    /// What these links are, for reports: `tcp`, `quic`, `shm`, or `shm+tcp`.
    pub fn name(&self) -> &'static str {
        match self {
            Links::Tcp(_) => "tcp",
            Links::Quic(_) => "quic",
            Links::Shm(_) => "shm",
            Links::Hosts(_) => "shm+tcp",
        }
    }
}

macro_rules! each {
    ($self:ident, $t:ident => $e:expr) => {
        match $self {
            Links::Tcp($t) => $e,
            Links::Quic($t) => $e,
            Links::Shm($t) => $e,
            Links::Hosts($t) => $e,
        }
    };
}

impl Transport for Links {
    fn rank(&self) -> usize {
        each!(self, t => t.rank())
    }

    fn size(&self) -> usize {
        each!(self, t => t.size())
    }

    async fn send(&self, peer: usize, header: &Header, payload: &[u8]) -> Result<()> {
        each!(self, t => t.send(peer, header, payload).await)
    }

    // Delegated so that shared memory and TCP write a gather list where it lies.
    async fn send_parts(&self, peer: usize, header: &Header, parts: &[&[u8]]) -> Result<()> {
        each!(self, t => t.send_parts(peer, header, parts).await)
    }

    async fn recv(&self, peer: usize, expect: &Header, dst: &mut [u8]) -> Result<()> {
        each!(self, t => t.recv(peer, expect, dst).await)
    }

    // Delegated, not left to the trait's default: shared memory lends the bytes where they lie
    // in the ring, so a reduction reads them without a copy into scratch.
    async fn recv_with(
        &self,
        peer: usize,
        expect: &Header,
        scratch: &mut [u8],
        consume: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<()> {
        each!(self, t => t.recv_with(peer, expect, scratch, consume).await)
    }

    async fn abort_all(
        &self,
        header: &Header,
        code: ErrorCode,
        subject: Option<usize>,
        message: &str,
        within: Duration,
    ) {
        each!(self, t => t.abort_all(header, code, subject, message, within).await)
    }

    async fn last_word(&self, peer: usize, within: Duration) -> Option<CollectiveError> {
        each!(self, t => t.last_word(peer, within).await)
    }

    fn waiting_on(&self) -> Option<usize> {
        each!(self, t => t.waiting_on())
    }

    fn arena(&self) -> Option<&dyn HostArena> {
        each!(self, t => t.arena())
    }

    fn link_waits(&self) -> Vec<Duration> {
        each!(self, t => t.link_waits())
    }

    async fn close(&self, within: Duration) {
        each!(self, t => t.close(within).await)
    }
}
