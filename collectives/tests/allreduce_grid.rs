//! Every op × dtype × algorithm × world size 1–8 × size, against an exact reference.

mod common;

use common::*;
use ringrun_collectives::{AlgoChoice, Bufs, CommConfig, DType, ReduceOp};

#[derive(Clone, Copy, Debug)]
enum Mode {
    Ring,
    Rd,
    Hd,
    Deterministic,
}

fn config(mode: Mode, segment_bytes: usize) -> CommConfig {
    CommConfig {
        algo: match mode {
            Mode::Ring => AlgoChoice::Ring,
            Mode::Rd => AlgoChoice::RecursiveDoubling,
            Mode::Hd => AlgoChoice::HalvingDoubling,
            Mode::Deterministic => AlgoChoice::Auto,
        },
        deterministic: matches!(mode, Mode::Deterministic),
        segment_bytes,
        // Two ranks out of place stream the half the peer reduced from this size on.
        pair_stream_bytes: 4 * segment_bytes,
        ..CommConfig::default()
    }
}

/// One allreduce on `n` ranks; odd ranks run in place, even ranks out of place.
fn one(mode: Mode, n: usize, dtype: DType, op: ReduceOp, count: usize, segment_bytes: usize) {
    let what = format!("{mode:?} n={n} {dtype:?} {op:?} count={count}");
    let outs = run_ranks(n, config(mode, segment_bytes), |r, mut comm| async move {
        let input = inputs(dtype, op, r, count);
        let mut out = if r % 2 == 1 {
            input.clone()
        } else {
            Aligned::zeroed(input.bytes().len())
        };
        let bufs = match r % 2 {
            1 => Bufs::InPlace(out.bytes_mut()),
            _ => Bufs::OutOfPlace {
                send: input.bytes(),
                recv: out.bytes_mut(),
            },
        };
        comm.allreduce_bytes(dtype, bufs, op, &ctl())
            .await
            .map(|()| (input, out))
    });
    for (r, res) in outs.into_iter().enumerate() {
        let (input, out) = res.unwrap_or_else(|e| panic!("{what}: rank {r}: {e}"));
        check(dtype, op, n, out.bytes(), &format!("{what} rank {r}"));
        if r % 2 == 0 {
            assert_eq!(
                input.bytes(),
                inputs(dtype, op, r, count).bytes(),
                "{what}: input changed"
            );
        }
    }
}

#[test]
fn small_sizes_full_grid() {
    for mode in [Mode::Ring, Mode::Rd, Mode::Hd, Mode::Deterministic] {
        for n in 1..=8 {
            for dtype in DType::ALL {
                for op in ReduceOp::ALL {
                    for count in [0, 1, 7, 1023] {
                        // A small segment makes the ring pipeline many segments per chunk.
                        one(mode, n, dtype, op, count, 64);
                    }
                }
            }
        }
    }
}

#[test]
fn large_sizes() {
    let pairs = [
        (DType::F32, ReduceOp::Sum),
        (DType::BF16, ReduceOp::Avg),
        (DType::I8, ReduceOp::Prod),
        (DType::F64, ReduceOp::Max),
        (DType::F16, ReduceOp::Min),
        (DType::I64, ReduceOp::Sum),
    ];
    for mode in [Mode::Ring, Mode::Rd, Mode::Hd, Mode::Deterministic] {
        for n in [2, 3, 8] {
            for (i, (dtype, op)) in pairs.into_iter().enumerate() {
                // 1 MiB + 3 elements, and a 16 MiB buffer (alternating, to bound the run).
                let count = if (i + n) % 2 == 0 {
                    (1 << 20) + 3
                } else {
                    (16 << 20) / dtype.size()
                };
                one(mode, n, dtype, op, count, 256 * 1024);
            }
        }
    }
}

mod props {
    use proptest::prelude::*;

    use super::*;

    fn mode() -> impl Strategy<Value = Mode> {
        prop_oneof![
            Just(Mode::Ring),
            Just(Mode::Rd),
            Just(Mode::Hd),
            Just(Mode::Deterministic)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_shape(mode in mode(), n in 1usize..=8, d in 0usize..8, o in 0usize..5,
                     count in 0usize..3000, seg in 1usize..2048) {
            one(mode, n, DType::ALL[d], ReduceOp::ALL[o], count, seg);
        }
    }
}
