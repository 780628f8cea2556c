//! The algorithms, each an async function over a [`Transport`] and caller-owned bytes.
//!
//! Every algorithm gets an [`OpCx`]: the operation's identity (which goes into every frame
//! header) and per-link frame counters. Algorithms never allocate per segment: they receive into
//! the communicator's [`Scratch`] or straight into the destination.

mod barrier;
mod broadcast;
mod direct;
mod hd;
mod rd;
mod ring;

use std::{
    cell::{Cell, Ref, RefCell, RefMut},
    ops::Range,
};

pub(crate) use barrier::dissemination;
pub(crate) use broadcast::{chain, tree};
pub(crate) use direct::direct;
pub(crate) use hd::halving_doubling;
pub(crate) use rd::recursive_doubling;
pub(crate) use ring::ring;

use crate::{
    error::{CollectiveError, Result},
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

/// A buffer cut into pipeline segments that one task's reader and writer futures share.
///
/// Algorithms guarantee that the writer only reads segments the reader has finished with, so a
/// borrow conflict is a bug; it surfaces as an error, not a panic.
pub(crate) struct Segments<'b> {
    cells: Vec<RefCell<&'b mut [u8]>>,
    lens: Vec<usize>,
    starts: Vec<usize>,
    /// `first[c]..first[c + 1]` are the segment ids of chunk `c`.
    first: Vec<usize>,
}

impl<'b> Segments<'b> {
    pub(crate) fn new(mut buf: &'b mut [u8], chunks: &[Range<usize>], seg_bytes: usize) -> Self {
        let (mut cells, mut lens, mut starts, mut first, mut offset) =
            (Vec::new(), Vec::new(), Vec::new(), vec![0], 0);
        for chunk in chunks {
            debug_assert_eq!(chunk.start, offset, "chunks must tile the buffer");
            for seg in schedule::segments(chunk.clone(), seg_bytes) {
                let (head, tail) = std::mem::take(&mut buf).split_at_mut(seg.len());
                lens.push(head.len());
                starts.push(seg.start);
                cells.push(RefCell::new(head));
                buf = tail;
                offset = seg.end;
            }
            first.push(cells.len());
        }
        Segments {
            cells,
            lens,
            starts,
            first,
        }
    }

    pub(crate) fn of_chunk(&self, c: usize) -> Range<usize> {
        self.first[c]..self.first[c + 1]
    }

    /// The byte range of every segment within the buffer, by id.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        self.starts.iter().zip(&self.lens).map(|(s, l)| *s..s + l)
    }

    pub(crate) fn count(&self) -> usize {
        self.cells.len()
    }

    pub(crate) fn len(&self, id: usize) -> usize {
        self.lens[id]
    }

    pub(crate) fn get(&self, id: usize) -> Result<Ref<'_, &'b mut [u8]>> {
        self.cells[id].try_borrow().map_err(|_| overlap(id))
    }

    pub(crate) fn get_mut(&self, id: usize) -> Result<RefMut<'_, &'b mut [u8]>> {
        self.cells[id].try_borrow_mut().map_err(|_| overlap(id))
    }
}

fn overlap(id: usize) -> CollectiveError {
    CollectiveError::Poisoned(format!(
        "internal: segment {id} used by reader and writer at once"
    ))
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
