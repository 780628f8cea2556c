//! The algorithms, each an async function over a [`Transport`] and caller-owned bytes.
//!
//! Every algorithm gets an [`OpCx`]: the operation's identity (which goes into every frame
//! header) and per-link frame counters. Algorithms never allocate per segment: they receive into
//! the communicator's [`Scratch`] or straight into the destination.

mod alltoall;
mod arena;
mod barrier;
mod broadcast;
mod direct;
mod hd;
mod pair;
mod rd;
mod ring;
mod segments;

use std::{cell::Cell, ops::Range};

pub(crate) use alltoall::alltoall;
pub(crate) use arena::{Tuning as ArenaTuning, arena};
pub(crate) use barrier::dissemination;
pub(crate) use broadcast::{chain, tree};
pub(crate) use direct::direct;
pub(crate) use hd::halving_doubling;
pub(crate) use rd::recursive_doubling;
pub(crate) use ring::{RingBuf, ring};
use segments::{Seg, Segments};

use crate::{
    copy::StoreKind,
    error::Result,
    frame::{FrameKind, Header, OpSig},
    schedule,
    transport::Transport,
};

/// One operation in flight: who we are, what we are doing, and how many frames went each way.
pub(crate) struct OpCx<'t, T> {
    pub(crate) t: &'t T,
    pub(crate) rank: usize,
    pub(crate) size: usize,
    pub(crate) epoch: u64,
    pub(crate) op_id: u64,
    pub(crate) sig: OpSig,
    /// Pipeline segment size in bytes (a whole number of elements).
    pub(crate) seg_bytes: usize,
    /// Threads the ring may reduce a segment with (see `par`).
    pub(crate) reduce_threads: usize,
    /// Out-of-place buffers this large take streaming stores where an algorithm writes results
    /// it does not read again (see `pair`).
    pub(crate) stream_bytes: usize,
    sent: Vec<Cell<u32>>,
    received: Vec<Cell<u32>>,
}

impl<'t, T: Transport> OpCx<'t, T> {
    pub(crate) fn new(t: &'t T, epoch: u64, op_id: u64, sig: OpSig, seg_bytes: usize) -> Self {
        let elem = sig.dtype.size();
        let seg_bytes = (seg_bytes / elem).max(1) * elem;
        let n = t.size();
        OpCx {
            t,
            rank: t.rank(),
            size: n,
            epoch,
            op_id,
            sig,
            seg_bytes,
            reduce_threads: 1,
            stream_bytes: usize::MAX,
            sent: (0..n).map(|_| Cell::new(0)).collect(),
            received: (0..n).map(|_| Cell::new(0)).collect(),
        }
    }

    pub(crate) fn with_reduce_threads(self, threads: usize) -> Self {
        OpCx {
            reduce_threads: threads.max(1),
            ..self
        }
    }

    pub(crate) fn with_stream_bytes(self, stream_bytes: usize) -> Self {
        OpCx {
            stream_bytes,
            ..self
        }
    }

    /// The header of this operation's frame number `seq` on some link.
    pub(crate) fn header(&self, seq: u32, len: usize) -> Header {
        Header {
            kind: FrameKind::Data,
            epoch: self.epoch,
            op_id: self.op_id,
            sig: self.sig,
            seq,
            len: len as u32,
        }
    }

    pub(crate) async fn send(&self, peer: usize, payload: &[u8]) -> Result<()> {
        let seq = bump(&self.sent[peer]);
        self.t
            .send(peer, &self.header(seq, payload.len()), payload)
            .await
    }

    pub(crate) async fn recv(&self, peer: usize, dst: &mut [u8]) -> Result<()> {
        let seq = bump(&self.received[peer]);
        self.t.recv(peer, &self.header(seq, dst.len()), dst).await
    }

    /// Receives the next frame from `peer` (`len` bytes), lending its payload to `consume` in
    /// pieces (see [`Transport::recv_with`]); `scratch` holds it where the transport copies.
    pub(crate) async fn recv_with(
        &self,
        peer: usize,
        scratch: &mut [u8],
        consume: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<()> {
        let seq = bump(&self.received[peer]);
        let header = self.header(seq, scratch.len());
        self.t.recv_with(peer, &header, scratch, consume).await
    }

    /// Sends one segment as one frame (its pieces gathered by the transport).
    pub(crate) async fn send_seg(&self, peer: usize, seg: &Seg<'_>) -> Result<()> {
        if let Some(one) = seg.single() {
            return self.send(peer, one).await;
        }
        let seq = bump(&self.sent[peer]);
        let parts: Vec<&[u8]> = seg.parts().collect();
        self.t
            .send_parts(peer, &self.header(seq, seg.len()), &parts)
            .await
    }

    /// Receives the next frame from `peer` into a segment, scattering it over its pieces with
    /// `store` (`space`, at least the segment's length, holds it where the transport copies).
    pub(crate) async fn recv_seg(
        &self,
        peer: usize,
        seg: &mut Seg<'_>,
        space: &mut [u8],
        store: StoreKind,
    ) -> Result<()> {
        if store == StoreKind::Cached
            && let Some(one) = seg.single_mut()
        {
            return self.recv(peer, one).await;
        }
        let len = seg.len();
        let mut copy = |off: usize, piece: &[u8]| {
            seg.overlay(off, piece, |d, p, _| store.copy(d, p));
        };
        self.recv_with(peer, &mut space[..len], &mut copy).await
    }

    /// `(rank + k) mod size` for any signed `k`.
    pub(crate) fn rel(&self, k: isize) -> usize {
        (self.rank as isize + k).rem_euclid(self.size as isize) as usize
    }

    /// Byte ranges of the `size` chunks of a buffer of `bytes` bytes.
    pub(crate) fn byte_chunks(&self, bytes: usize) -> Vec<Range<usize>> {
        let elem = self.sig.dtype.size();
        schedule::chunks(bytes / elem, self.size)
            .into_iter()
            .map(|r| r.start * elem..r.end * elem)
            .collect()
    }
}

fn bump(c: &Cell<u32>) -> u32 {
    let v = c.get();
    c.set(v + 1);
    v
}

/// Reusable 8-byte-aligned scratch space.
#[derive(Default)]
pub(crate) struct Scratch(Vec<u64>);

impl Scratch {
    /// `len` bytes of scratch (contents unspecified).
    pub(crate) fn bytes(&mut self, len: usize) -> &mut [u8] {
        let words = len.div_ceil(8);
        if self.0.len() < words {
            self.0.resize(words, 0);
        }
        &mut bytemuck::cast_slice_mut(&mut self.0)[..len]
    }

    /// Two disjoint scratch areas of `len` bytes each.
    pub(crate) fn two(&mut self, len: usize) -> (&mut [u8], &mut [u8]) {
        let stride = len.div_ceil(8) * 8;
        let all = self.bytes(2 * stride);
        let (a, b) = all.split_at_mut(stride);
        (&mut a[..len], &mut b[..len])
    }
}
