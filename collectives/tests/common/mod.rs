//! Test support: run every rank of an in-memory mesh on one current-thread runtime.

#![allow(dead_code, unreachable_pub)]

use std::{future::Future, time::Duration};

pub use ringrun_collectives::testdata::*;
use ringrun_collectives::{
    CommConfig, Communicator, Ctl, DType, ReduceOp,
    transport::mem::{self, MemTransport},
};
pub type Comm = Communicator<MemTransport>;

/// Runs `body(rank, comm)` for every rank of an `n`-rank mesh concurrently; returns the results
/// in rank order. The whole run is bounded by a 60 s timeout.
pub fn run_ranks<F, Fut, R>(n: usize, cfg: CommConfig, body: F) -> Vec<R>
where
    F: Fn(usize, Comm) -> Fut,
    Fut: Future<Output = R>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ranks = mem::mesh(n, 256 * 1024)
            .into_iter()
            .enumerate()
            .map(|(r, t)| body(r, Communicator::new(t, 1, cfg.clone())));
        tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::future::join_all(ranks),
        )
        .await
        .expect("ranks did not finish within 60 s")
    })
}

pub fn ctl() -> Ctl {
    Ctl::timeout(Duration::from_secs(30))
}

/// Asserts a rank's allreduce output element by element.
pub fn check(dtype: DType, op: ReduceOp, n: usize, out: &[u8], what: &str) {
    for (i, got) in decode(dtype, out).into_iter().enumerate() {
        let want = expected(dtype, op, n, i);
        assert_eq!(got, want, "{what}: element {i}: got {got}, want {want}");
    }
}

/// Float tensors of `lens` elements with inexact values (rounding depends on the order of
/// reduction), different on every rank.
pub fn inexact_tensors(rank: usize, lens: &[usize]) -> Vec<Vec<f32>> {
    let mut at = 0usize;
    lens.iter()
        .map(|l| {
            at += l;
            (at - l..at)
                .map(|i| ((i * 31 + rank * 17) as f32).sin() * 1e3 + 0.1 * rank as f32)
                .collect()
        })
        .collect()
}

/// Bits of the sum of every rank's `inexact_tensors(r, &[len])`, added in rank order
/// (`x0 + x1 + …`, left to right): what deterministic mode must give on every transport.
pub fn rank_order_sum(n: usize, len: usize) -> Vec<u32> {
    let inputs: Vec<Vec<f32>> = (0..n)
        .map(|r| inexact_tensors(r, &[len]).remove(0))
        .collect();
    (0..len)
        .map(|i| {
            (1..n)
                .fold(inputs[0][i], |acc, r| acc + inputs[r][i])
                .to_bits()
        })
        .collect()
}

/// A grouped allreduce of `lens` tensors and, after it, one allreduce of their concatenation;
/// returns both results, which must match bit for bit when the tensors fit one bucket.
pub async fn grouped_and_whole<T: ringrun_collectives::transport::Transport>(
    comm: &mut Communicator<T>,
    rank: usize,
    lens: &[usize],
) -> ringrun_collectives::Result<(Vec<f32>, Vec<f32>)> {
    use ringrun_collectives::TensorMut;
    let mut tensors = inexact_tensors(rank, lens);
    let mut whole: Vec<f32> = tensors.concat();
    let mut views: Vec<TensorMut<'_>> = tensors.iter_mut().map(|t| TensorMut::new(t)).collect();
    comm.allreduce_grouped(&mut views, ReduceOp::Sum, &ctl())
        .await?;
    comm.allreduce(&mut whole, ReduceOp::Sum, &ctl()).await?;
    Ok((tensors.concat(), whole))
}

/// Asserts that every rank's grouped result equals its whole one bit for bit, and that all
/// ranks agree.
pub fn assert_grouped_is_whole(outs: Vec<(Vec<f32>, Vec<f32>)>, what: &str) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let first = bits(&outs[0].1);
    for (r, (grouped, whole)) in outs.iter().enumerate() {
        assert_eq!(grouped.len(), whole.len(), "{what}: rank {r}");
        assert!(
            bits(grouped) == bits(whole),
            "{what}: rank {r}: grouped differs"
        );
        assert!(
            bits(whole) == first,
            "{what}: rank {r} disagrees with rank 0"
        );
    }
}
