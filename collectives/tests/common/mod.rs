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
