//! Recursive doubling allreduce: `log2 n` rounds, each exchanging the whole buffer with the
//! partner whose rank differs in one bit. Latency-optimal, so it serves small messages.
//!
//! A world that is not a power of two `p` first folds: rank `p + i` hands its data to rank `i`
//! and gets the result back at the end (two extra steps for those ranks).
//!
//! Bitwise identity: in every round both partners compute `lower ⊕ upper`, with the data of
//! the lower-ranked block on the left, so they get the same bits.

use super::{OpCx, Scratch};
use crate::{
    dtype::ReduceOp,
    error::Result,
    reduce::{Order, finish_avg, reduce},
    schedule::pow2_floor,
    transport::Transport,
};

pub(crate) async fn recursive_doubling<T: Transport>(
    cx: &OpCx<'_, T>,
    buf: &mut [u8],
    op: ReduceOp,
    scratch: &mut Scratch,
) -> Result<()> {
    let (r, n, dtype) = (cx.rank, cx.size, cx.sig.dtype);
    let p = pow2_floor(n);
    if r >= p {
        cx.send(r - p, buf).await?;
        return cx.recv(r - p, buf).await;
    }
    let theirs = scratch.bytes(buf.len());
    if r + p < n {
        cx.recv(r + p, theirs).await?;
        reduce(dtype, op, Order::DstFirst, buf, theirs);
    }
    let mut mask = 1;
    while mask < p {
        let partner = r ^ mask;
        tokio::try_join!(cx.send(partner, buf), cx.recv(partner, theirs))?;
        let order = if r < partner {
            Order::DstFirst
        } else {
            Order::SrcFirst
        };
        reduce(dtype, op, order, buf, theirs);
        mask <<= 1;
    }
    if op == ReduceOp::Avg {
        finish_avg(dtype, buf, n);
    }
    if r + p < n {
        cx.send(r + p, buf).await?;
    }
    Ok(())
}
