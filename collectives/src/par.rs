//! Reductions split over threads, for large segments on hosts with cores to spare.
//!
//! Each rank runs its collective on one thread. Where a host has more cores than ranks, the
//! reduction of a large segment (memory-bound: two reads and a write per element) can use the
//! spare cores; where it has not (2 cores and 2 or more ranks, this project's test machine),
//! extra threads only compete with the peer ranks for the same cores and the spawn costs tens
//! of microseconds, so [`CommConfig::reduce_threads`](crate::CommConfig::reduce_threads) is 1
//! unless set, and `CommConfig::for_local_ranks` gives each rank its share of the cores.
//!
//! Threads are scoped (no `unsafe`, no pool), so a split only pays for pieces large enough that
//! a spawn is small beside them: [`MIN_PER_THREAD`] bytes each.

use crate::{
    dtype::{DType, ReduceOp},
    reduce::{Order, reduce, reduce_from},
};

/// Smallest piece (bytes) handed to a thread of its own.
pub(crate) const MIN_PER_THREAD: usize = 1 << 20;

/// How many threads to use for `bytes` bytes, at most `threads`.
fn split(threads: usize, bytes: usize) -> usize {
    threads.min(bytes / MIN_PER_THREAD).max(1)
}

/// `len` bytes cut into `parts` pieces on element boundaries.
fn bounds(len: usize, elem: usize, parts: usize) -> impl Iterator<Item = usize> {
    let count = len / elem;
    (1..parts).map(move |i| count * i / parts * elem)
}

/// [`reduce`] over up to `threads` threads.
pub(crate) fn reduce_par(
    threads: usize,
    dtype: DType,
    op: ReduceOp,
    order: Order,
    dst: &mut [u8],
    src: &[u8],
) {
    let parts = split(threads, dst.len());
    if parts == 1 {
        return reduce(dtype, op, order, dst, src);
    }
    std::thread::scope(|s| {
        let (mut dst, mut src, mut at) = (dst, src, 0);
        for cut in bounds(dst.len(), dtype.size(), parts) {
            let (d, rest) = std::mem::take(&mut dst).split_at_mut(cut - at);
            let (x, more) = src.split_at(cut - at);
            s.spawn(move || reduce(dtype, op, order, d, x));
            (dst, src, at) = (rest, more, cut);
        }
        reduce(dtype, op, order, dst, src);
    });
}

/// [`reduce_from`] over up to `threads` threads.
pub(crate) fn reduce_from_par(
    threads: usize,
    dtype: DType,
    op: ReduceOp,
    dst: &mut [u8],
    left: &[u8],
    right: &[u8],
) {
    let parts = split(threads, dst.len());
    if parts == 1 {
        return reduce_from(dtype, op, dst, left, right);
    }
    std::thread::scope(|s| {
        let (mut dst, mut left, mut right, mut at) = (dst, left, right, 0);
        for cut in bounds(dst.len(), dtype.size(), parts) {
            let (d, rest) = std::mem::take(&mut dst).split_at_mut(cut - at);
            let (l, lm) = left.split_at(cut - at);
            let (r, rm) = right.split_at(cut - at);
            s.spawn(move || reduce_from(dtype, op, d, l, r));
            (dst, left, right, at) = (rest, lm, rm, cut);
        }
        reduce_from(dtype, op, dst, left, right);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_one_thread() {
        let n = (3 << 20) / 4 + 5;
        let a: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
        let b: Vec<f32> = (0..n).map(|i| (i as f32).cos()).collect();
        let (mut one, mut four) = (a.clone(), a.clone());
        let src = bytemuck::cast_slice(&b);
        reduce(
            DType::F32,
            ReduceOp::Sum,
            Order::SrcFirst,
            bytemuck::cast_slice_mut(&mut one),
            src,
        );
        reduce_par(
            4,
            DType::F32,
            ReduceOp::Sum,
            Order::SrcFirst,
            bytemuck::cast_slice_mut(&mut four),
            src,
        );
        assert_eq!(one, four);
        let mut out = vec![0f32; n];
        let l = bytemuck::cast_slice(&a);
        reduce_from_par(
            3,
            DType::F32,
            ReduceOp::Max,
            bytemuck::cast_slice_mut(&mut out),
            l,
            src,
        );
        let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x.max(*y)).collect();
        assert_eq!(out, want);
    }
}
