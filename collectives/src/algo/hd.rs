//! Rabenseifner's allreduce: a reduce-scatter by recursive halving, then an allgather by
//! recursive doubling. It moves the same `2 (p - 1) / p` of the buffer per rank as the ring but
//! in `2 log2 p` steps instead of `2 (p - 1)`. Where ranks outnumber cores every step is a
//! hand-off through the scheduler, so fewer steps is what wins at mid sizes there.
//!
//! The `p` ranks of the largest power of two take part; in a world of `n > p` rank `p + i`
//! first hands its buffer to rank `i` and gets the result back at the end (as in `rd`).
//!
//! Round `m` of the halving (`m = p/2, ..., 1`) splits this rank's current block range in two:
//! the rank with bit `m` clear keeps the lower half, its partner `r ^ m` the upper, and each
//! sends the half it gives up while reducing the partner's copy of the half it keeps, straight
//! from the transport (zero-copy on shared memory). After the last round rank `r` holds the full
//! reduction of block `r`; the doubling rounds then exchange the blocks back in reverse order.
//! Each block is reduced on exactly one rank and copied from there, so all ranks get the same
//! bits.
//!
//! Out of place (`input`, on a power-of-two world), the first round reads this rank's data from
//! `input` (sending from it, reducing `input ⊕ incoming` into `buf`), so nothing is copied up
//! front: every byte of `buf` is written by a reduction or by the allgather.

use std::ops::Range;

use super::{OpCx, Scratch};
use crate::{
    dtype::ReduceOp,
    error::Result,
    par::{reduce_from_par, reduce_par},
    reduce::{Order, finish_avg, reduce},
    schedule::{self, pow2_floor},
    transport::Transport,
};

pub(crate) async fn halving_doubling<T: Transport>(
    cx: &OpCx<'_, T>,
    buf: &mut [u8],
    mut input: Option<&[u8]>,
    op: ReduceOp,
    scratch: &mut Scratch,
) -> Result<()> {
    let (r, n, dtype) = (cx.rank, cx.size, cx.sig.dtype);
    let p = pow2_floor(n);
    if let Some(i) = input.filter(|_| p != n) {
        buf.copy_from_slice(i);
        input = None;
    }
    if r >= p {
        cx.send(r - p, buf).await?;
        return cx.recv(r - p, buf).await;
    }
    if r + p < n {
        let theirs = scratch.bytes(buf.len());
        cx.recv(r + p, theirs).await?;
        reduce(dtype, op, Order::DstFirst, buf, theirs);
    }
    let elem = dtype.size();
    let blocks: Vec<Range<usize>> = schedule::chunks(buf.len() / elem, p)
        .into_iter()
        .map(|b| b.start * elem..b.end * elem)
        .collect();
    let bytes = |lo: usize, hi: usize| blocks[lo].start..blocks[hi - 1].end;

    // Reduce-scatter by recursive halving.
    let (mut lo, mut hi) = (0, p);
    let mut mask = p / 2;
    while mask > 0 {
        let partner = r ^ mask;
        let mid = lo + (hi - lo) / 2;
        let (keep, give) = match r & mask {
            0 => ((lo, mid), (mid, hi)),
            _ => ((mid, hi), (lo, mid)),
        };
        let (keep_bytes, give_bytes) = (bytes(keep.0, keep.1), bytes(give.0, give.1));
        let (mine, mut given) = split_disjoint(buf, keep_bytes.clone(), give_bytes.clone());
        let mine_in = input.take().map(|i| {
            given = &i[give_bytes];
            &i[keep_bytes.clone()]
        });
        // The lower rank's data first, as in `rd`.
        let lower_first = r < partner;
        let order = if lower_first {
            Order::DstFirst
        } else {
            Order::SrcFirst
        };
        let threads = cx.reduce_threads;
        let mut consume = |off: usize, piece: &[u8]| {
            let d = &mut mine[off..off + piece.len()];
            match mine_in.map(|m| &m[off..off + piece.len()]) {
                Some(m) if lower_first => reduce_from_par(threads, dtype, op, d, m, piece),
                Some(m) => reduce_from_par(threads, dtype, op, d, piece, m),
                None => reduce_par(threads, dtype, op, order, d, piece),
            }
        };
        let into = scratch.bytes(keep_bytes.len());
        tokio::try_join!(
            cx.send(partner, given),
            cx.recv_with(partner, into, &mut consume)
        )?;
        (lo, hi) = keep;
        mask /= 2;
    }
    if op == ReduceOp::Avg {
        finish_avg(dtype, &mut buf[blocks[r].clone()], n);
    }

    // Allgather by recursive doubling: the halving's rounds in reverse.
    let mut mask = 1;
    while mask < p {
        let partner = r ^ mask;
        let width = hi - lo;
        let theirs = match r & mask {
            0 => (hi, hi + width),
            _ => (lo - width, lo),
        };
        let (mine, their_bytes) = (bytes(lo, hi), bytes(theirs.0, theirs.1));
        let (dst, src) = split_disjoint(buf, their_bytes, mine);
        tokio::try_join!(cx.send(partner, src), cx.recv(partner, dst))?;
        (lo, hi) = (lo.min(theirs.0), hi.max(theirs.1));
        mask *= 2;
    }
    if r + p < n {
        cx.send(r + p, buf).await?;
    }
    Ok(())
}

/// `buf[a]` mutably and `buf[b]` shared, for disjoint ranges.
fn split_disjoint(buf: &mut [u8], a: Range<usize>, b: Range<usize>) -> (&mut [u8], &[u8]) {
    debug_assert!(
        a.end <= b.start || b.end <= a.start,
        "{a:?} and {b:?} overlap"
    );
    if a.start < b.start {
        let (left, right) = buf.split_at_mut(b.start);
        (&mut left[a], &right[..b.end - b.start])
    } else {
        let (left, right) = buf.split_at_mut(a.start);
        (&mut right[..a.end - a.start], &left[b])
    }
}

#[cfg(test)]
mod tests {
    use super::split_disjoint;

    #[test]
    fn split_disjoint_gives_both_ranges_either_way_round() {
        let mut v: Vec<u8> = (0..10).collect();
        let (a, b) = split_disjoint(&mut v, 6..9, 1..3);
        assert_eq!((&a[..], b), (&[6, 7, 8][..], &[1, 2][..]));
        let (a, b) = split_disjoint(&mut v, 0..2, 2..5);
        a[0] = 9;
        assert_eq!(b, [2, 3, 4]);
        assert_eq!(v[0], 9);
    }
}
