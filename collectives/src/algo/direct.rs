//! Deterministic allreduce and reduce-scatter: chunk `c` is reduced by rank `c` alone, from
//! every rank's contribution in rank order (`x0 ⊕ x1 ⊕ ... ⊕ x(n-1)`, left to right), then
//! copied to the others.
//!
//! The result therefore depends only on the inputs and their ranks, not on the algorithm, the
//! transport or the ring's shape: the same job replayed gets the same bits. It moves the same
//! bytes per rank as the ring (`(n - 1) / n` of the buffer out in each phase), but over `n - 1`
//! links at once and without pipelining across ranks, so it is opt-in.

use std::ops::Range;

use futures_util::future::try_join_all;

use super::{OpCx, Scratch};
use crate::{
    dtype::ReduceOp,
    error::Result,
    reduce::{Order, finish_avg, reduce},
    schedule::segments,
    transport::Transport,
};

/// Reduces chunk `r` onto rank `r` in rank order; with `gather`, then copies every chunk to
/// every rank (allreduce), else leaves each rank its own chunk (reduce-scatter).
pub(crate) async fn direct<T: Transport>(
    cx: &OpCx<'_, T>,
    buf: &mut [u8],
    op: ReduceOp,
    gather: bool,
    scratch: &mut Scratch,
) -> Result<()> {
    let ranges = cx.byte_chunks(buf.len());
    let mut chunks = split(buf, &ranges);
    let mine = std::mem::take(&mut chunks[cx.rank]);
    let others = |j: &usize| *j != cx.rank;
    {
        let sends = (0..cx.size)
            .filter(others)
            .map(|j| send_all(cx, j, chunks[j]));
        tokio::try_join!(try_join_all(sends), reduce_mine(cx, mine, op, scratch))?;
    }
    if gather {
        let sends = (0..cx.size).filter(others).map(|j| send_all(cx, j, mine));
        let recvs = chunks.iter_mut().enumerate().filter(|(j, _)| others(j));
        let recvs = recvs.map(|(j, c)| recv_all(cx, j, c));
        tokio::try_join!(try_join_all(sends), try_join_all(recvs))?;
    }
    Ok(())
}

async fn reduce_mine<T: Transport>(
    cx: &OpCx<'_, T>,
    mine: &mut [u8],
    op: ReduceOp,
    scratch: &mut Scratch,
) -> Result<()> {
    let dtype = cx.sig.dtype;
    for seg in segments(0..mine.len(), cx.seg_bytes) {
        let (acc, theirs) = scratch.two(seg.len());
        for j in 0..cx.size {
            let operand: &[u8] = if j == cx.rank {
                &mine[seg.clone()]
            } else {
                cx.recv(j, theirs).await?;
                theirs
            };
            if j == 0 {
                acc.copy_from_slice(operand);
            } else {
                reduce(dtype, op, Order::DstFirst, acc, operand);
            }
        }
        if op == ReduceOp::Avg {
            finish_avg(dtype, acc, cx.size);
        }
        mine[seg].copy_from_slice(acc);
    }
    Ok(())
}

/// Sends `data` to `peer` in pipeline segments.
pub(crate) async fn send_all<T: Transport>(
    cx: &OpCx<'_, T>,
    peer: usize,
    data: &[u8],
) -> Result<()> {
    for seg in segments(0..data.len(), cx.seg_bytes) {
        cx.send(peer, &data[seg]).await?;
    }
    Ok(())
}

/// Receives `data.len()` bytes from `peer` in pipeline segments, straight into `data`.
pub(crate) async fn recv_all<T: Transport>(
    cx: &OpCx<'_, T>,
    peer: usize,
    data: &mut [u8],
) -> Result<()> {
    for seg in segments(0..data.len(), cx.seg_bytes) {
        cx.recv(peer, &mut data[seg]).await?;
    }
    Ok(())
}

/// Cuts `buf` into the disjoint `ranges`, which must tile it in order.
fn split<'b>(mut buf: &'b mut [u8], ranges: &[Range<usize>]) -> Vec<&'b mut [u8]> {
    ranges
        .iter()
        .map(|r| {
            let (head, tail) = std::mem::take(&mut buf).split_at_mut(r.len());
            buf = tail;
            head
        })
        .collect()
}
