//! Mismatched calls, dead peers, silent peers and cancellation: every rank gets a typed error
//! promptly, never a hang.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringrun_collectives::{
    AlgoChoice, Bufs, Cancel, CollectiveError, CommConfig, Ctl, DType, ReduceOp,
};

fn ring() -> CommConfig {
    CommConfig {
        algo: AlgoChoice::Ring,
        segment_bytes: 4096,
        ..CommConfig::default()
    }
}

#[test]
fn mismatched_count_fails_on_every_rank() {
    for algo in [AlgoChoice::Ring, AlgoChoice::RecursiveDoubling] {
        for n in [2, 3, 5, 8] {
            let cfg = CommConfig { algo, ..ring() };
            let outs = run_ranks(n, cfg, |r, mut comm| async move {
                let count = if r == n - 1 { 1001 } else { 1000 };
                let mut buf = vec![1.0f32; count];
                comm.allreduce(&mut buf, ReduceOp::Sum, &ctl()).await
            });
            for (r, out) in outs.into_iter().enumerate() {
                match out {
                    Err(CollectiveError::Mismatch { .. }) => {}
                    other => panic!("{algo:?} n={n} rank {r}: expected Mismatch, got {other:?}"),
                }
            }
        }
    }
}

#[test]
fn mismatched_dtype_and_op_fail_on_every_rank() {
    let outs = run_ranks(4, ring(), |r, mut comm| async move {
        if r == 2 {
            let mut buf = vec![1i32; 64];
            comm.allreduce(&mut buf, ReduceOp::Sum, &ctl()).await
        } else if r == 1 {
            let mut buf = vec![1.0f32; 64];
            comm.allreduce(&mut buf, ReduceOp::Max, &ctl()).await
        } else {
            let mut buf = vec![1.0f32; 64];
            comm.allreduce(&mut buf, ReduceOp::Sum, &ctl()).await
        }
    });
    for (r, out) in outs.into_iter().enumerate() {
        assert!(
            matches!(out, Err(CollectiveError::Mismatch { .. })),
            "rank {r}: {out:?}"
        );
    }
}

#[test]
fn local_invalid_argument_is_reported_and_peers_fail_fast() {
    let started = Instant::now();
    let outs = run_ranks(3, ring(), |r, mut comm| async move {
        let mut out = vec![0u64; 8];
        let send = vec![0u64; if r == 0 { 7 } else { 8 }];
        let b = Bufs::OutOfPlace {
            send: bytemuck::cast_slice(&send),
            recv: bytemuck::cast_slice_mut(&mut out),
        };
        comm.allreduce_bytes(DType::I64, b, ReduceOp::Sum, &ctl())
            .await
    });
    assert!(
        matches!(outs[0], Err(CollectiveError::InvalidArgument(_))),
        "{:?}",
        outs[0]
    );
    assert!(
        outs[1..]
            .iter()
            .all(|o| matches!(o, Err(CollectiveError::Mismatch { rank: 0, .. }))),
        "{outs:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn dead_peer_mid_allreduce_is_peer_lost_on_every_survivor() {
    for victim in [0, 2] {
        let started = Instant::now();
        let outs = run_ranks(5, ring(), |r, mut comm| async move {
            let mut buf = vec![1.0f32; 4 << 20];
            if r == victim {
                // Take part for a moment, then die: dropping the communicator closes its links.
                let ctl = Ctl::timeout(Duration::from_millis(5));
                let _ = comm.allreduce(&mut buf, ReduceOp::Sum, &ctl).await;
                return None;
            }
            let ctl = Ctl::timeout(Duration::from_secs(20));
            Some(comm.allreduce(&mut buf, ReduceOp::Sum, &ctl).await)
        });
        for (r, out) in outs.into_iter().enumerate().filter(|(r, _)| *r != victim) {
            match out {
                Some(Err(
                    e @ (CollectiveError::PeerLost { .. } | CollectiveError::Aborted { .. }),
                )) => {
                    assert!(e.recoverable(), "{e}");
                }
                other => panic!("victim {victim}, rank {r}: expected PeerLost, got {other:?}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn silent_peer_times_out_naming_it() {
    let started = Instant::now();
    let outs = run_ranks(2, ring(), |r, mut comm| async move {
        if r == 1 {
            // Alive but never joins the collective (a stopped process).
            tokio::time::sleep(Duration::from_millis(800)).await;
            return None;
        }
        let mut buf = vec![1.0f32; 1 << 16];
        Some(
            comm.allreduce(
                &mut buf,
                ReduceOp::Sum,
                &Ctl::timeout(Duration::from_millis(300)),
            )
            .await,
        )
    });
    match &outs[0] {
        Some(Err(CollectiveError::Timeout {
            waiting_on: Some(1),
            waited,
        })) => {
            assert!(*waited >= Duration::from_millis(300) && *waited < Duration::from_secs(2));
        }
        other => panic!("expected Timeout waiting on rank 1, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn cancel_aborts_in_flight_and_poisons() {
    let cancel = Cancel::new();
    let outs = run_ranks(3, ring(), |r, mut comm| {
        let cancel = cancel.clone();
        async move {
            if r == 2 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                cancel.cancel("membership changed");
                return (None, None);
            }
            let mut buf = vec![1.0f32; 1 << 16];
            let ctl = Ctl::timeout(Duration::from_secs(20)).with_cancel(cancel.clone());
            let first = comm.allreduce(&mut buf, ReduceOp::Sum, &ctl).await;
            let second = comm.allreduce(&mut buf, ReduceOp::Sum, &ctl).await;
            (Some(first), Some(second))
        }
    });
    for (first, second) in &outs[..2] {
        assert!(
            matches!(first, Some(Err(CollectiveError::Aborted { reason })) if reason.contains("membership")),
            "{first:?}"
        );
        assert!(
            matches!(second, Some(Err(CollectiveError::Poisoned(_)))),
            "{second:?}"
        );
    }
}
