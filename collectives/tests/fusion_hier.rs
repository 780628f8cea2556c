//! Grouped (fused) allreduce of many tensors of mixed dtypes, and the hierarchical allreduce
//! over in-memory meshes that simulate several hosts.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use proptest::prelude::*;
use ringrun_collectives::{
    AlgoChoice, Bufs, CommConfig, Communicator, DType, Hierarchical, ReduceOp, TensorMut,
    transport::mem,
};

/// Runs `body(rank, hierarchy)` on every rank of an in-memory mesh laid out as `hosts`.
fn run_hier<F, Fut, R>(hosts: &[u64], cfg: CommConfig, body: F) -> Vec<R>
where
    F: Fn(usize, Hierarchical<mem::MemTransport>) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ranks = mem::mesh(hosts.len(), 64 * 1024)
            .into_iter()
            .enumerate()
            .map(|(r, t)| body(r, Hierarchical::new(Arc::new(t), hosts, 3, cfg.clone())));
        tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::future::join_all(ranks),
        )
        .await
        .expect("ranks did not finish within 60 s")
    })
}

fn small_cfg(deterministic: bool) -> CommConfig {
    CommConfig {
        deterministic,
        segment_bytes: 512,
        small_bytes: 256,
        ..CommConfig::default()
    }
}

const LAYOUTS: [&[u64]; 5] = [
    &[0, 0, 1, 1],
    &[0, 0, 0, 1, 1],
    &[5, 5, 7, 7, 9, 9],
    &[0, 1, 0, 1],
    &[3, 3, 3, 3],
];

#[test]
fn hierarchical_matches_reference() {
    for hosts in LAYOUTS {
        for deterministic in [false, true] {
            for (dtype, op) in [
                (DType::F32, ReduceOp::Sum),
                (DType::BF16, ReduceOp::Avg),
                (DType::I8, ReduceOp::Prod),
                (DType::F64, ReduceOp::Max),
                (DType::I32, ReduceOp::Avg),
                (DType::F16, ReduceOp::Min),
            ] {
                // Below and above small_bytes, divisible by the host size or not.
                for count in [0, 1, 5, 96, 1000, 4099] {
                    let what = format!("{hosts:?} det={deterministic} {dtype:?} {op:?} {count}");
                    let outs = run_hier(hosts, small_cfg(deterministic), |r, mut h| async move {
                        let input = inputs(dtype, op, r, count);
                        let mut out = Aligned::zeroed(input.bytes().len());
                        let bufs = Bufs::OutOfPlace {
                            send: input.bytes(),
                            recv: out.bytes_mut(),
                        };
                        h.allreduce_bytes(dtype, bufs, op, &ctl())
                            .await
                            .map(|()| out)
                    });
                    let n = hosts.len();
                    for (r, out) in outs.into_iter().enumerate() {
                        let out = out.unwrap_or_else(|e| panic!("{what}: rank {r}: {e}"));
                        check(dtype, op, n, out.bytes(), &format!("{what} rank {r}"));
                    }
                }
            }
        }
    }
}

#[test]
fn hierarchical_results_are_bitwise_identical() {
    // Inexact inputs: rounding differs with the order of reduction, but never between ranks.
    for hosts in LAYOUTS {
        let count = 3001;
        let outs = run_hier(hosts, small_cfg(false), |r, mut h| async move {
            let mut buf: Vec<f32> = (0..count)
                .map(|i| ((i * 31 + r * 17) as f32).sin() * 1e3 + 0.1 * r as f32)
                .collect();
            h.allreduce(&mut buf, ReduceOp::Avg, &ctl())
                .await
                .map(|()| buf)
        });
        let first = outs[0].as_ref().unwrap();
        for o in &outs {
            let o = o.as_ref().unwrap();
            assert!(
                o.iter().zip(first).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{hosts:?}: ranks disagree"
            );
        }
    }
}

#[test]
fn a_dead_rank_fails_every_other_rank() {
    let hosts = [0u64, 0, 1, 1];
    let outs = run_hier(&hosts, small_cfg(false), |r, mut h| async move {
        if r == 3 {
            drop(h);
            return None;
        }
        let mut buf = vec![1.0f32; 4096];
        Some(h.allreduce(&mut buf, ReduceOp::Sum, &ctl()).await)
    });
    for (r, o) in outs.into_iter().enumerate().take(3) {
        let e = o.unwrap().expect_err("a rank died");
        assert!(e.recoverable(), "rank {r}: {e}");
    }
}

/// Tensors of mixed dtypes and lengths: `(dtype index, element count)`.
fn tensors_strategy() -> impl Strategy<Value = Vec<(usize, usize)>> {
    proptest::collection::vec((0usize..8, prop_oneof![0usize..40, 100usize..3000]), 1..40)
}

/// Every rank's tensors for one op, built from the exactly checkable inputs.
fn build(shapes: &[(usize, usize)], op: ReduceOp, r: usize) -> Vec<(DType, Aligned)> {
    shapes
        .iter()
        .map(|(d, count)| {
            let dtype = DType::ALL[*d];
            (dtype, inputs(dtype, op, r, *count))
        })
        .collect()
}

fn check_all(shapes: &[(usize, usize)], op: ReduceOp, n: usize, outs: Vec<Vec<(DType, Aligned)>>) {
    for (r, tensors) in outs.into_iter().enumerate() {
        assert_eq!(tensors.len(), shapes.len());
        for (k, (dtype, t)) in tensors.iter().enumerate() {
            check(*dtype, op, n, t.bytes(), &format!("rank {r} tensor {k}"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn grouped_allreduce_matches_reference(
        shapes in tensors_strategy(),
        n in 1usize..5,
        bucket in prop_oneof![Just(64usize), Just(1000), Just(8192), Just(1 << 20)],
        op in prop::sample::select(ReduceOp::ALL.to_vec()),
        ring in any::<bool>(),
    ) {
        // The forced ring takes every bucket as a gather list (segments spanning tensors).
        let algo = if ring { AlgoChoice::Ring } else { AlgoChoice::Auto };
        let cfg = CommConfig {
            fusion_bytes: bucket,
            segment_bytes: 1024,
            algo,
            ..CommConfig::default()
        };
        let shapes2 = shapes.clone();
        let outs = run_ranks(n, cfg, |r, mut comm: Communicator<mem::MemTransport>| {
            let shapes = shapes2.clone();
            async move {
                let mut data = build(&shapes, op, r);
                let mut views: Vec<TensorMut<'_>> = data
                    .iter_mut()
                    .map(|(d, a)| TensorMut::from_bytes(*d, a.bytes_mut()))
                    .collect();
                comm.allreduce_grouped(&mut views, op, &ctl()).await.unwrap();
                data
            }
        });
        check_all(&shapes, op, n, outs);
    }

    #[test]
    fn hierarchical_grouped_matches_reference(
        shapes in tensors_strategy(),
        layout in 0usize..LAYOUTS.len(),
        bucket in prop_oneof![Just(64usize), Just(4096)],
    ) {
        let hosts = LAYOUTS[layout];
        let op = ReduceOp::Sum;
        let cfg = CommConfig { fusion_bytes: bucket, ..small_cfg(false) };
        let shapes2 = shapes.clone();
        let outs = run_hier(hosts, cfg, |r, mut h| {
            let shapes = shapes2.clone();
            async move {
                let mut data = build(&shapes, op, r);
                let mut views: Vec<TensorMut<'_>> = data
                    .iter_mut()
                    .map(|(d, a)| TensorMut::from_bytes(*d, a.bytes_mut()))
                    .collect();
                h.allreduce_grouped(&mut views, op, &ctl()).await.unwrap();
                data
            }
        });
        check_all(&shapes, op, hosts.len(), outs);
    }
}

#[test]
fn grouped_rejects_a_partial_element() {
    let outs = run_ranks(2, CommConfig::default(), |_, mut comm| async move {
        let mut bytes = [0u8; 6];
        let mut t = [TensorMut::from_bytes(DType::F32, &mut bytes)];
        comm.allreduce_grouped(&mut t, ReduceOp::Sum, &ctl()).await
    });
    for o in outs {
        assert!(matches!(
            o,
            Err(ringrun_collectives::CollectiveError::InvalidArgument(_))
        ));
    }
}

#[test]
fn a_gathered_ring_matches_one_allreduce_bit_for_bit() {
    // Tensors of 1..700 floats cut by 512-byte segments: most segments span several tensors.
    let lens: Vec<usize> = (0..300).map(|i| (i * 37) % 700 + 1).collect();
    for n in [2, 3, 5] {
        let cfg = CommConfig {
            algo: AlgoChoice::Ring,
            segment_bytes: 512,
            ..CommConfig::default()
        };
        let outs = run_ranks(n, cfg, |r, mut comm| {
            let lens = lens.clone();
            async move { grouped_and_whole(&mut comm, r, &lens).await.unwrap() }
        });
        assert_grouped_is_whole(outs, &format!("n={n}"));
    }
}

#[test]
fn unaligned_tensors_are_packed_and_still_reduced() {
    // A float tensor starting one byte into its allocation cannot be reduced in place.
    let outs = run_ranks(
        3,
        CommConfig {
            algo: AlgoChoice::Ring,
            ..CommConfig::default()
        },
        |r, mut comm| async move {
            let op = ReduceOp::Sum;
            let mut odd = Aligned::zeroed(4 * 301 + 1);
            let inp = inputs(DType::F32, op, r, 301);
            odd.bytes_mut()[1..].copy_from_slice(inp.bytes());
            let mut even = inputs(DType::F32, op, r, 500);
            let mut views = [
                TensorMut::from_bytes(DType::F32, &mut odd.bytes_mut()[1..]),
                TensorMut::from_bytes(DType::F32, even.bytes_mut()),
            ];
            comm.allreduce_grouped(&mut views, op, &ctl())
                .await
                .unwrap();
            let mut first = Aligned::zeroed(4 * 301);
            first.bytes_mut().copy_from_slice(&odd.bytes()[1..]);
            (first, even)
        },
    );
    for (r, (a, b)) in outs.into_iter().enumerate() {
        check(
            DType::F32,
            ReduceOp::Sum,
            3,
            a.bytes(),
            &format!("rank {r} unaligned"),
        );
        check(
            DType::F32,
            ReduceOp::Sum,
            3,
            b.bytes(),
            &format!("rank {r} aligned"),
        );
    }
}
