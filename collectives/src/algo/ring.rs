//! Ring reduce-scatter and allgather, chunked and pipelined.
//!
//! The buffer is cut into `n` chunks and each chunk into segments. In the reduce-scatter phase,
//! step `s` sends chunk `base - s` to the next rank and reduces chunk `base - s - 1` arriving
//! from the previous one; after `n - 1` steps this rank holds the full reduction of chunk
//! `base + 1`. The allgather phase then passes complete chunks around the ring the same way.
//! Each rank sends `2 (n - 1) / n` of the buffer in total, the bandwidth optimum.
//!
//! Pipelining: a reader future receives segment after segment and hands each finished segment
//! to a writer future through a queue, so a segment is forwarded as soon as it is reduced while
//! later segments are still arriving. The two futures share the buffer through [`Segments`]:
//! the writer only ever reads segments the reader has finished with.
//!
//! Two ranks running a whole allreduce take [`pair`] instead: the same two steps, with the
//! frames of both interleaved.
//!
//! Bitwise identity across ranks holds because each chunk is reduced on exactly one path and
//! the result is then copied, never recomputed, by the allgather.

use std::cell::Cell;

use tokio::sync::{mpsc, watch};

use super::{OpCx, Scratch, Segments, pair::pair};
use crate::{
    copy::StoreKind,
    dtype::ReduceOp,
    error::Result,
    par::{reduce_from_par, reduce_par},
    reduce::{Order, finish_avg},
    transport::Transport,
};

/// Runs the reduce-scatter phase (if `op` is given) and/or the allgather phase (if `gather`).
/// `base` fixes the chunk rotation: after reduce-scatter this rank owns chunk `base + 1`; with
/// no reduce phase, the allgather starts from chunk `base + 1`.
///
/// With `input`, the operation is out of place: `buf` starts undefined and the reduce-scatter
/// reads this rank's contributions from `input` (each chunk is reduced once per rank, straight
/// into `buf`, and chunk `base`, the only one never reduced here, is filled by the allgather).
#[expect(
    clippy::await_holding_refcell_ref,
    reason = "disjoint segments, see Segments"
)]
pub(crate) async fn ring<T: Transport>(
    cx: &OpCx<'_, T>,
    buf: RingBuf<'_>,
    input: Option<&[u8]>,
    op: Option<ReduceOp>,
    gather: bool,
    base: usize,
    scratch: &mut Scratch,
) -> Result<()> {
    let n = cx.size;
    let segs = &buf.cut(cx);
    let inputs: Vec<&[u8]> = input
        .map(|i| segs.ranges().map(|r| &i[r]).collect())
        .unwrap_or_default();
    let inputs = &inputs;
    if let (2, Some(op), true) = (n, op, gather) {
        return pair(cx, segs, inputs, op, base, scratch).await;
    }
    let (next, prev) = (cx.rel(1), cx.rel(-1));
    let chunk = |k: isize| (base as isize + k).rem_euclid(n as isize) as usize;
    let own = chunk(1);

    let (queue, mut rx) = SendQueue::new(segs.count());
    let (done_tx, done_rx) = watch::channel(0usize);
    let first = if op.is_some() { chunk(0) } else { own };
    for id in segs.of_chunk(first) {
        queue.push(if op.is_some() && input.is_some() {
            Src::Input(id)
        } else {
            Src::Buf(id)
        });
    }

    let writer = async {
        while let Some(src) = rx.recv().await {
            match src {
                Src::Input(id) => cx.send(next, inputs[id]).await?,
                Src::Buf(id) => cx.send_seg(next, &*segs.get(id)?).await?,
            }
            done_tx.send_modify(|n| *n += 1);
        }
        Ok(())
    };
    let reader = async move {
        if let Some(op) = op {
            for s in 0..n - 1 {
                let last = s == n - 2;
                for id in segs.of_chunk(chunk(-(s as isize) - 1)) {
                    let space = scratch.bytes(segs.len(id));
                    recv_reduce(cx, prev, segs, id, inputs.get(id), op, last, space).await?;
                    if !last || gather {
                        queue.push(Src::Buf(id));
                    }
                }
            }
        }
        if gather {
            let mut done = done_rx;
            for s in 0..n - 1 {
                let c = (own as isize - s as isize - 1).rem_euclid(n as isize) as usize;
                for id in segs.of_chunk(c) {
                    // The reduce-scatter may have queued this segment for sending; its new
                    // contents must not be borrowed until the writer is past it.
                    let sent = queue.position(id);
                    let _ = done.wait_for(|n| *n >= sent).await;
                    let space = scratch.bytes(segs.len(id));
                    cx.recv_seg(prev, &mut *segs.get_mut(id)?, space, StoreKind::Cached)
                        .await?;
                    if s < n - 2 {
                        queue.push(Src::Buf(id));
                    }
                }
            }
        }
        Ok(())
    };
    tokio::try_join!(writer, reader).map(|_| ())
}

/// Receives the next frame from `from` and reduces it into segment `id` as it is lent
/// (straight from a shared-memory ring, so the incoming bytes are read once, not copied to
/// scratch first). With `contribution`, out of place: the segment is `contribution ⊕ frame`.
/// On the reduction's `last` step an average is finished.
#[expect(clippy::too_many_arguments, reason = "one segment's whole context")]
#[expect(
    clippy::await_holding_refcell_ref,
    reason = "disjoint segments, see Segments"
)]
pub(super) async fn recv_reduce<T: Transport>(
    cx: &OpCx<'_, T>,
    from: usize,
    segs: &Segments<'_>,
    id: usize,
    contribution: Option<&&[u8]>,
    op: ReduceOp,
    last: bool,
    space: &mut [u8],
) -> Result<()> {
    let dtype = cx.sig.dtype;
    let mut mine = segs.get_mut(id)?;
    let threads = cx.reduce_threads;
    let mut consume = |off: usize, piece: &[u8]| {
        mine.overlay(off, piece, |d, piece, at| match contribution {
            Some(c) => {
                let c = &c[at..at + piece.len()];
                reduce_from_par(threads, dtype, op, d, piece, c);
            }
            None => reduce_par(threads, dtype, op, Order::SrcFirst, d, piece),
        });
    };
    cx.recv_with(from, &mut space[..segs.len(id)], &mut consume)
        .await?;
    if last && op == ReduceOp::Avg {
        mine.parts_mut().for_each(|p| finish_avg(dtype, p, cx.size));
    }
    Ok(())
}

/// The ring's buffer: one slice, or a gather list of slices laid end to end (see `segments`).
pub(crate) enum RingBuf<'b> {
    One(&'b mut [u8]),
    Gather(Vec<&'b mut [u8]>),
}

impl<'b> RingBuf<'b> {
    /// Cuts the buffer into the ring's chunks and pipeline segments.
    fn cut<T: Transport>(self, cx: &OpCx<'_, T>) -> Segments<'b> {
        let parts = match self {
            RingBuf::One(buf) => vec![buf],
            RingBuf::Gather(parts) => parts,
        };
        let len = parts.iter().map(|p| p.len()).sum();
        Segments::gather(parts, &cx.byte_chunks(len), cx.seg_bytes)
    }
}

/// What the writer sends next: a segment of the input (first sends of an out-of-place
/// reduce-scatter) or of the buffer being reduced.
#[derive(Clone, Copy)]
enum Src {
    Input(usize),
    Buf(usize),
}

/// The reader's hand-off to the writer, remembering where in the send order each segment was
/// last queued.
struct SendQueue {
    tx: mpsc::UnboundedSender<Src>,
    pushed: Cell<usize>,
    position: Vec<Cell<usize>>,
}

impl SendQueue {
    fn new(segments: usize) -> (Self, mpsc::UnboundedReceiver<Src>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let position = (0..segments).map(|_| Cell::new(0)).collect();
        (
            SendQueue {
                tx,
                pushed: Cell::new(0),
                position,
            },
            rx,
        )
    }

    fn push(&self, src: Src) {
        self.pushed.set(self.pushed.get() + 1);
        if let Src::Buf(id) = src {
            self.position[id].set(self.pushed.get());
        }
        let _ = self.tx.send(src);
    }

    /// How many sends must have completed before segment `id` is free (0: never queued).
    fn position(&self, id: usize) -> usize {
        self.position[id].get()
    }
}
