//! Broadcast, allgather, reduce-scatter and barrier over every world size, in and out of place.

mod common;

use common::*;
use ringrun_collectives::{Bufs, CommConfig, DType, ReduceOp};

const SIZES: [usize; 5] = [0, 1, 7, 1023, 300_001];

fn cfg(deterministic: bool) -> CommConfig {
    CommConfig {
        deterministic,
        segment_bytes: 4096,
        small_bytes: 2048,
        ..CommConfig::default()
    }
}

#[test]
fn broadcast_from_every_root() {
    for n in 1..=8 {
        for count in SIZES {
            for root in [0, n / 2, n - 1] {
                let outs = run_ranks(n, cfg(false), |r, mut comm| async move {
                    let src = inputs(DType::F32, ReduceOp::Sum, root, count);
                    let mut buf = if r == root {
                        src.clone()
                    } else {
                        Aligned::zeroed(src.bytes().len())
                    };
                    if r % 2 == 0 {
                        comm.broadcast_bytes(
                            DType::F32,
                            Bufs::InPlace(buf.bytes_mut()),
                            root,
                            &ctl(),
                        )
                        .await?;
                    } else {
                        let send = buf.clone();
                        let b = Bufs::OutOfPlace {
                            send: send.bytes(),
                            recv: buf.bytes_mut(),
                        };
                        comm.broadcast_bytes(DType::F32, b, root, &ctl()).await?;
                    }
                    Ok::<_, ringrun_collectives::CollectiveError>(buf)
                });
                let want = inputs(DType::F32, ReduceOp::Sum, root, count);
                for (r, out) in outs.into_iter().enumerate() {
                    assert_eq!(
                        out.unwrap().bytes(),
                        want.bytes(),
                        "n={n} count={count} root={root} rank {r}"
                    );
                }
            }
        }
    }
}

#[test]
fn allgather_places_every_block() {
    for n in 1..=8 {
        for count in SIZES {
            let outs = run_ranks(n, cfg(false), |r, mut comm| async move {
                let mine = inputs(DType::I32, ReduceOp::Max, r, count);
                let mut all = Aligned::zeroed(mine.bytes().len() * n);
                if r % 2 == 0 {
                    let b = Bufs::OutOfPlace {
                        send: mine.bytes(),
                        recv: all.bytes_mut(),
                    };
                    comm.allgather_bytes(DType::I32, b, &ctl()).await?;
                } else {
                    let len = mine.bytes().len();
                    all.bytes_mut()[r * len..(r + 1) * len].copy_from_slice(mine.bytes());
                    comm.allgather_bytes(DType::I32, Bufs::InPlace(all.bytes_mut()), &ctl())
                        .await?;
                }
                Ok::<_, ringrun_collectives::CollectiveError>(all)
            });
            let mut want = Vec::new();
            (0..n).for_each(|r| {
                want.extend_from_slice(inputs(DType::I32, ReduceOp::Max, r, count).bytes())
            });
            for (r, out) in outs.into_iter().enumerate() {
                assert_eq!(
                    out.unwrap().bytes(),
                    &want[..],
                    "n={n} count={count} rank {r}"
                );
            }
        }
    }
}

#[test]
fn deterministic_allreduce_is_the_rank_order_sum() {
    // Inexact inputs, so any other order of reduction shows in the low bits; `shm.rs` checks
    // the same sum over shared memory.
    for n in [2, 3, 5, 8] {
        for len in [1, 1023, 50_000] {
            let outs = run_ranks(n, cfg(true), |r, mut comm| async move {
                let mut buf = inexact_tensors(r, &[len]).remove(0);
                comm.allreduce(&mut buf, ReduceOp::Sum, &ctl())
                    .await
                    .map(|()| buf.iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
            });
            let want = rank_order_sum(n, len);
            for (r, out) in outs.into_iter().enumerate() {
                assert!(out.unwrap() == want, "n={n} len={len} rank {r}");
            }
        }
    }
}

#[test]
fn reduce_scatter_gives_each_rank_its_block() {
    for deterministic in [false, true] {
        for n in 1..=8 {
            for block in [0, 1, 7, 1023, 40_001] {
                for op in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Min] {
                    let dtype = DType::BF16;
                    let outs = run_ranks(n, cfg(deterministic), |r, mut comm| async move {
                        let input = inputs(dtype, op, r, block * n);
                        let bytes = block * dtype.size();
                        if r % 2 == 0 {
                            let mut out = Aligned::zeroed(bytes);
                            let b = Bufs::OutOfPlace {
                                send: input.bytes(),
                                recv: out.bytes_mut(),
                            };
                            comm.reduce_scatter_bytes(dtype, b, op, &ctl())
                                .await
                                .map(|()| out)
                        } else {
                            let mut buf = input.clone();
                            comm.reduce_scatter_bytes(
                                dtype,
                                Bufs::InPlace(buf.bytes_mut()),
                                op,
                                &ctl(),
                            )
                            .await?;
                            let mut out = Aligned::zeroed(bytes);
                            out.bytes_mut()
                                .copy_from_slice(&buf.bytes()[r * bytes..(r + 1) * bytes]);
                            Ok(out)
                        }
                    });
                    for (r, out) in outs.into_iter().enumerate() {
                        let got = decode(dtype, out.unwrap().bytes());
                        for (i, g) in got.into_iter().enumerate() {
                            let want = expected(dtype, op, n, r * block + i);
                            assert_eq!(
                                g, want,
                                "det={deterministic} n={n} block={block} {op:?} rank {r} i={i}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn barrier_and_many_ops_in_sequence() {
    for n in 1..=8 {
        let outs = run_ranks(n, cfg(false), |r, mut comm| async move {
            let mut total = 0.0f64;
            for step in 0..20 {
                comm.barrier(&ctl()).await?;
                let mut x = [r as f64 + step as f64];
                comm.allreduce(&mut x, ReduceOp::Sum, &ctl()).await?;
                total += x[0];
            }
            Ok::<_, ringrun_collectives::CollectiveError>(total)
        });
        let want: f64 = (0..20)
            .map(|s| (0..n).map(|r| (r + s) as f64).sum::<f64>())
            .sum();
        for out in outs {
            assert_eq!(out.unwrap(), want);
        }
    }
}

/// `Auto` picks recursive doubling for small buffers, halving-doubling for mid sizes on
/// power-of-two worlds of 4 or more, and the ring otherwise.
#[test]
fn auto_picks_the_algorithm_by_size_and_world() {
    use ringrun_collectives::{Algo, Communicator, transport::mem};
    let pick = |n: usize, bytes: usize| {
        let t = mem::mesh(n, 1 << 10).into_iter().next().unwrap();
        Communicator::new(t, 0, CommConfig::default()).allreduce_algo(DType::F32, bytes)
    };
    let c = CommConfig::default();
    assert_eq!(pick(4, 8), Algo::RecursiveDoubling);
    assert_eq!(pick(4, c.small_bytes), Algo::RecursiveDoubling);
    assert_eq!(pick(4, c.small_bytes + 4), Algo::HalvingDoubling);
    assert_eq!(pick(8, c.mid_bytes), Algo::HalvingDoubling);
    assert_eq!(pick(8, c.mid_bytes + 4), Algo::Ring);
    assert_eq!(pick(2, 1 << 20), Algo::Ring);
    assert_eq!(pick(6, 1 << 20), Algo::Ring);
}

/// A rank that arrives 50 ms late at an allreduce shows as 50 ms of waiting on its link in its
/// peer's `link_waits`, and nowhere else.
#[test]
fn link_waits_name_the_peer_that_was_late() {
    use ringrun_collectives::transport::Transport;
    let outs = run_ranks(2, cfg(false), |r, mut comm| async move {
        if r == 1 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let mut x = [1.0f64];
        comm.allreduce(&mut x, ReduceOp::Sum, &ctl()).await?;
        Ok::<_, ringrun_collectives::CollectiveError>(comm.transport().link_waits())
    });
    let waits: Vec<_> = outs.into_iter().map(Result::unwrap).collect();
    assert!(
        waits[0][1].as_millis() >= 45,
        "rank 0 waited for rank 1: {waits:?}"
    );
    assert!(
        waits[1][0].as_millis() < 20,
        "rank 1 hardly waited: {waits:?}"
    );
    assert_eq!(waits[0][0], std::time::Duration::ZERO);
}
