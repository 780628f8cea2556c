//! Shared-memory transport: every rank on its own thread and current-thread runtime (as in
//! production, where each is a process), set up over an in-memory boot mesh. Every test is
//! bounded: operations carry deadlines and the harness gives up on ranks after a minute.

mod common;

use std::{
    future::Future,
    sync::mpsc,
    time::{Duration, Instant},
};

use common::*;
use proptest::prelude::*;
use ringrun_collectives::{
    Algo, AlgoChoice, Bufs, CollectiveError, CommConfig, Communicator, Ctl, DType, ReduceOp,
    transport::{
        auth::JobSecret,
        mem,
        shm::{self, ShmConfig, ShmTransport},
    },
};

type Setup = Result<ShmTransport, CollectiveError>;

/// Runs `body(rank, set-up result)` for every rank on its own thread, rank `r` using
/// `secrets[r]`. Returns the results in rank order.
fn run_ranks<F, Fut, R>(secrets: Vec<JobSecret>, ring_bytes: usize, body: F) -> Vec<R>
where
    F: Fn(usize, Setup) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = R>,
    R: Send + 'static,
{
    let n = secrets.len();
    let (tx, rx) = mpsc::channel();
    for (rank, (boot, secret)) in mem::mesh(n, 64 * 1024).into_iter().zip(secrets).enumerate() {
        let (tx, body) = (tx.clone(), body.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let out = rt.block_on(async {
                // The arena's buffers as small as the ring, so that small tests take many rounds.
                let config = ShmConfig {
                    ring_bytes,
                    arena_bytes: ring_bytes,
                    ..ShmConfig::default()
                };
                let deadline = Instant::now() + Duration::from_secs(10);
                let t = shm::connect(&boot, &secret, 5, &config, deadline).await;
                // The boot mesh has done its job; keep it open until every rank has set up.
                let out = body(rank, t).await;
                drop(boot);
                out
            });
            let _ = tx.send((rank, out));
        });
    }
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        let (rank, r) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a rank did not finish within 60 s");
        out[rank] = Some(r);
    }
    out.into_iter().map(Option::unwrap).collect()
}

fn same_secret(n: usize) -> Vec<JobSecret> {
    vec![JobSecret::random().unwrap(); n]
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Ring,
    Rd,
    Hd,
    Arena,
    Deterministic,
}

/// One allreduce per rank (odd ranks in place, even ranks out of place), checked exactly.
fn allreduce(
    mode: Mode,
    n: usize,
    dtype: DType,
    op: ReduceOp,
    count: usize,
    seg: usize,
    ring: usize,
) {
    let what = format!("{mode:?} n={n} {dtype:?} {op:?} count={count} seg={seg} ring={ring}");
    let cfg = CommConfig {
        algo: match mode {
            Mode::Ring => AlgoChoice::Ring,
            Mode::Hd => AlgoChoice::HalvingDoubling,
            Mode::Arena => AlgoChoice::Arena,
            _ => AlgoChoice::RecursiveDoubling,
        },
        deterministic: matches!(mode, Mode::Deterministic),
        segment_bytes: seg,
        // Below `seg` bytes an arena round is one-shot, above it two-shot; larger calls write
        // their results with streaming stores (two ranks' too).
        arena_one_shot_bytes: seg,
        arena_stream_bytes: seg * 8,
        pair_stream_bytes: seg * 8,
        ..CommConfig::default()
    };
    let outs = run_ranks(same_secret(n), ring, move |r, t| {
        let cfg = cfg.clone();
        async move {
            let mut comm = Communicator::new(t?, 5, cfg);
            let input = inputs(dtype, op, r, count);
            let mut out = match r % 2 {
                1 => input.clone(),
                _ => Aligned::zeroed(input.bytes().len()),
            };
            let bufs = match r % 2 {
                1 => Bufs::InPlace(out.bytes_mut()),
                _ => Bufs::OutOfPlace {
                    send: input.bytes(),
                    recv: out.bytes_mut(),
                },
            };
            comm.allreduce_bytes(dtype, bufs, op, &ctl()).await?;
            comm.close(Duration::from_secs(5)).await;
            Ok::<_, CollectiveError>(out)
        }
    });
    for (r, out) in outs.into_iter().enumerate() {
        let out = out.unwrap_or_else(|e| panic!("{what}: rank {r}: {e}"));
        check(dtype, op, n, out.bytes(), &format!("{what} rank {r}"));
    }
}

#[test]
fn allreduce_grid_over_shm() {
    for mode in [
        Mode::Ring,
        Mode::Rd,
        Mode::Hd,
        Mode::Arena,
        Mode::Deterministic,
    ] {
        for n in [1, 2, 3, 5] {
            for (dtype, op) in [
                (DType::F32, ReduceOp::Sum),
                (DType::BF16, ReduceOp::Avg),
                (DType::I8, ReduceOp::Prod),
                (DType::F64, ReduceOp::Max),
            ] {
                for count in [0, 1, 7, 1023, (1 << 18) + 3] {
                    // A 4 KiB ring wraps and fills constantly; 64-byte segments pipeline.
                    allreduce(mode, n, dtype, op, count, 64 * 1024, 4096);
                }
                allreduce(mode, n, dtype, op, 1023, 64, 1 << 20);
            }
        }
    }
}

#[test]
fn large_allreduce_over_shm() {
    for n in [2, 4] {
        allreduce(
            Mode::Ring,
            n,
            DType::F32,
            ReduceOp::Sum,
            4 << 20,
            256 * 1024,
            1 << 20,
        );
    }
}

#[test]
fn reductions_straight_from_the_ring_survive_an_unaligned_stream() {
    // Odd-length i8 and f16 frames put the byte stream off the grid of wider elements, and a
    // 4 KiB ring splits elements at its wrap: the lent-bytes path must fall back to copying.
    let seq = [
        (DType::I8, 4097),
        (DType::F64, 3001),
        (DType::F16, 999),
        (DType::F32, 5003),
        (DType::I64, 777),
        (DType::F32, 1 << 14),
    ];
    let n = 3;
    let outs = run_ranks(same_secret(n), 4096, move |r, t| async move {
        let cfg = CommConfig {
            algo: AlgoChoice::Ring,
            segment_bytes: 1000,
            ..CommConfig::default()
        };
        let mut comm = Communicator::new(t?, 5, cfg);
        let mut outs = Vec::new();
        for (dtype, count) in seq {
            let mut buf = inputs(dtype, ReduceOp::Sum, r, count);
            let b = Bufs::InPlace(buf.bytes_mut());
            comm.allreduce_bytes(dtype, b, ReduceOp::Sum, &ctl())
                .await?;
            outs.push((dtype, buf));
        }
        comm.close(Duration::from_secs(5)).await;
        Ok::<_, CollectiveError>(outs)
    });
    for (r, out) in outs.into_iter().enumerate() {
        for (dtype, buf) in out.unwrap_or_else(|e| panic!("rank {r}: {e}")) {
            check(
                dtype,
                ReduceOp::Sum,
                n,
                buf.bytes(),
                &format!("rank {r} {dtype:?}"),
            );
        }
    }
}

#[test]
fn a_grouped_ring_reduces_tensors_where_they_lie() {
    // Reduced straight from the peer's ring into tensors that segments span, with a 4 KiB ring
    // whose wrap splits frames; the result must be the whole buffer's, bit for bit.
    let lens: Vec<usize> = (0..400).map(|i| (i * 53) % 900 + 1).collect();
    for (n, ring) in [(2, 4096), (3, 1 << 16)] {
        let lens = lens.clone();
        let outs = run_ranks(same_secret(n), ring, move |r, t| {
            let lens = lens.clone();
            async move {
                let cfg = CommConfig {
                    algo: AlgoChoice::Ring,
                    segment_bytes: 3000,
                    ..CommConfig::default()
                };
                let mut comm = Communicator::new(t?, 5, cfg);
                let out = grouped_and_whole(&mut comm, r, &lens).await?;
                comm.close(Duration::from_secs(5)).await;
                Ok::<_, CollectiveError>(out)
            }
        });
        let outs = outs.into_iter().map(|o| o.unwrap()).collect();
        assert_grouped_is_whole(outs, &format!("n={n} ring={ring}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn any_shape_over_shm(mode in prop_oneof![Just(Mode::Ring), Just(Mode::Rd), Just(Mode::Hd), Just(Mode::Arena), Just(Mode::Deterministic)],
                          n in 1usize..=6, d in 0usize..8, o in 0usize..5,
                          count in 0usize..3000, seg in 1usize..2048, ring_log in 12usize..17) {
        allreduce(mode, n, DType::ALL[d], ReduceOp::ALL[o], count, seg, 1 << ring_log);
    }
}

/// Segment files of this process (the test) left in /dev/shm.
fn leaked() -> Vec<String> {
    let prefix = format!("ringrun-{}-", std::process::id());
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

#[test]
fn a_rank_without_the_secret_cannot_attach() {
    let mut s = same_secret(3);
    s[1] = JobSecret::from_bytes(b"not this job's secret");
    let started = Instant::now();
    let results = run_ranks(s, 1 << 16, |_, t| async move { t.map(|_| ()) });
    for (rank, r) in results.iter().enumerate() {
        let Err(CollectiveError::Setup(msg)) = r else {
            panic!("rank {rank}: expected a set-up error, got {r:?}");
        };
        eprintln!("rank {rank}: {msg}");
    }
    // Rank 1's segment fails the honest ranks' check (every rank tries every segment before
    // any file is removed, so each sees the forgery itself).
    for rank in [0, 2] {
        let Err(CollectiveError::Setup(msg)) = &results[rank] else {
            unreachable!()
        };
        assert!(
            msg.contains("does not hold this job's secret"),
            "rank {rank}: {msg}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // Failed set-ups remove their files. (Other tests of this process may be setting up right
    // now, so only a stable leak counts.)
    let deadline = Instant::now() + Duration::from_secs(20);
    while !leaked().is_empty() {
        assert!(Instant::now() < deadline, "leaked {:?}", leaked());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_dead_peer_fails_the_allreduce_quickly() {
    for (victim, algo) in [(0, AlgoChoice::Ring), (2, AlgoChoice::Ring)]
        .into_iter()
        .chain([(0, AlgoChoice::Arena), (3, AlgoChoice::Arena)])
    {
        let results = run_ranks(same_secret(4), 1 << 16, move |rank, t| async move {
            let t = t?;
            if rank == victim {
                // Dies while the others are inside the allreduce, waiting on it.
                tokio::time::sleep(Duration::from_millis(300)).await;
                drop(t);
                return Ok(Duration::ZERO);
            }
            let cfg = CommConfig {
                algo,
                ..CommConfig::default()
            };
            let mut comm = Communicator::new(t, 5, cfg);
            let mut buf = vec![1.0f32; 4 << 20];
            let started = Instant::now();
            let ctl = Ctl::timeout(Duration::from_secs(10));
            let err = comm
                .allreduce(&mut buf, ReduceOp::Sum, &ctl)
                .await
                .expect_err("the allreduce cannot finish without the victim");
            assert!(
                matches!(
                    err,
                    CollectiveError::PeerLost { .. } | CollectiveError::Aborted { .. }
                ),
                "{algo:?} rank {rank}: {err}"
            );
            Ok::<_, CollectiveError>(started.elapsed())
        });
        for (rank, r) in results.into_iter().enumerate() {
            let waited = r.unwrap();
            assert!(
                waited < Duration::from_secs(3),
                "rank {rank} waited {waited:?}"
            );
        }
    }
}

#[test]
fn deadlines_and_cancellation_are_honoured() {
    for algo in [AlgoChoice::Ring, AlgoChoice::Arena] {
        deadline_and_cancel(algo);
    }
}

fn deadline_and_cancel(algo: AlgoChoice) {
    let results = run_ranks(same_secret(3), 1 << 16, move |rank, t| async move {
        let t = t?;
        let cfg = CommConfig {
            algo,
            ..CommConfig::default()
        };
        let mut comm = Communicator::new(t, 5, cfg);
        let mut buf = vec![1.0f32; 1 << 16];
        if rank == 2 {
            // Silent: alive but never joins the allreduce.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            return Ok(None);
        }
        let started = Instant::now();
        let err = if rank == 0 {
            let ctl = Ctl::timeout(Duration::from_millis(300));
            comm.allreduce(&mut buf, ReduceOp::Sum, &ctl).await
        } else {
            let cancel = ringrun_collectives::Cancel::new();
            let c2 = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                c2.cancel("test cancel");
            });
            let ctl = Ctl::timeout(Duration::from_secs(20)).with_cancel(cancel);
            comm.allreduce(&mut buf, ReduceOp::Sum, &ctl).await
        }
        .expect_err("cannot finish without rank 2");
        Ok::<_, CollectiveError>(Some((err, started.elapsed())))
    });
    let mut it = results.into_iter();
    let (e0, t0) = it.next().unwrap().unwrap().unwrap();
    let (e1, t1) = it.next().unwrap().unwrap().unwrap();
    // Rank 0 times out (or hears of rank 1's abort first); rank 1 is cancelled.
    assert!(
        matches!(
            e0,
            CollectiveError::Timeout { .. } | CollectiveError::Aborted { .. }
        ),
        "{e0}"
    );
    assert!(matches!(e1, CollectiveError::Aborted { .. }), "{e1}");
    assert!(
        t0 < Duration::from_secs(2) && t1 < Duration::from_secs(2),
        "{t0:?} {t1:?}"
    );
}

#[test]
fn the_arena_gives_every_rank_the_same_bits_whatever_its_rounds() {
    // Inexact float inputs: any change of reduction order would show in the low bits.
    let (n, len) = (5, 50_000);
    let run = |arena: usize, cfg: CommConfig| -> Vec<Vec<u32>> {
        let outs = run_ranks(same_secret(n), arena, move |r, t| {
            let cfg = cfg.clone();
            async move {
                let mut comm = Communicator::new(t?, 5, cfg);
                let input = inexact_tensors(r, &[len]).remove(0);
                // Even ranks out of place (where streaming stores apply), odd ranks in place.
                let mut out = input.clone();
                let bufs = match r % 2 {
                    0 => Bufs::OutOfPlace {
                        send: bytemuck::cast_slice(&input),
                        recv: bytemuck::cast_slice_mut(&mut out),
                    },
                    _ => Bufs::InPlace(bytemuck::cast_slice_mut(&mut out)),
                };
                comm.allreduce_bytes(DType::F32, bufs, ReduceOp::Sum, &ctl())
                    .await?;
                comm.close(Duration::from_secs(5)).await;
                Ok::<_, CollectiveError>(out.iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
            }
        });
        outs.into_iter().map(Result::unwrap).collect()
    };
    let arena = |one_shot: usize, stream: usize| CommConfig {
        algo: AlgoChoice::Arena,
        arena_one_shot_bytes: one_shot,
        arena_stream_bytes: stream,
        ..CommConfig::default()
    };
    let deterministic = CommConfig {
        deterministic: true,
        ..CommConfig::default()
    };
    let never = usize::MAX;
    let in_rank_order = rank_order_sum(n, len);
    // 4 KiB rounds split in parts (two-shot), with ordinary and with streaming stores; one
    // whole round (one-shot); and deterministic mode, which must give what it gives on every
    // other transport (`collectives.rs` checks the same sum without shared memory).
    for (what, outs) in [
        ("two-shot", run(4096, arena(0, never))),
        ("streaming", run(4096, arena(0, 0))),
        ("one-shot", run(1 << 20, arena(1 << 20, never))),
        ("deterministic", run(4096, deterministic)),
    ] {
        for (r, out) in outs.iter().enumerate() {
            assert!(
                *out == in_rank_order,
                "{what}: rank {r} differs from the rank-order sum"
            );
        }
    }
}

/// With an arena, `Auto` takes it from 3 ranks on, except halving-doubling at 256 KiB–1 MiB on
/// 4 ranks; two ranks keep the ring; deterministic mode takes it too (same order of addition).
#[test]
fn auto_takes_the_arena_where_it_pays() {
    let picks = |n: usize, cfg: CommConfig, sizes: &'static [usize]| -> Vec<Algo> {
        let outs = run_ranks(same_secret(n), 4096, move |_, t| {
            let cfg = cfg.clone();
            async move {
                let comm = Communicator::new(t?, 5, cfg);
                let picked = sizes.iter().map(|b| comm.allreduce_algo(DType::F32, *b));
                Ok::<_, CollectiveError>(picked.collect::<Vec<_>>())
            }
        });
        outs.into_iter().next().unwrap().unwrap()
    };
    const KIB: usize = 1024;
    const MIB: usize = 1 << 20;
    let sizes: &'static [usize] = &[8, 256 * KIB, 512 * KIB, MIB, 2 * MIB, 16 * MIB];
    let (a, h) = (Algo::Arena, Algo::HalvingDoubling);
    assert_eq!(picks(4, CommConfig::default(), sizes), [a, a, h, h, a, a]);
    assert_eq!(picks(8, CommConfig::default(), sizes), [a; 6]);
    assert_eq!(picks(3, CommConfig::default(), sizes), [a; 6]);
    let two = picks(2, CommConfig::default(), sizes);
    assert!(!two.contains(&a), "two ranks took the arena: {two:?}");
    let deterministic = CommConfig {
        deterministic: true,
        ..CommConfig::default()
    };
    assert_eq!(picks(4, deterministic, sizes), [a; 6]);
}

#[test]
fn a_mismatched_call_in_the_arena_fails_every_rank_promptly() {
    // Case 0: rank 1 reduces more elements than the others, all in the arena. Case 1: rank 2
    // runs the ring while the others wait in the arena.
    for case in 0..2 {
        let results = run_ranks(same_secret(3), 1 << 16, move |r, t| async move {
            let algo = match (case, r) {
                (1, 2) => AlgoChoice::Ring,
                _ => AlgoChoice::Arena,
            };
            let cfg = CommConfig {
                algo,
                ..CommConfig::default()
            };
            let mut comm = Communicator::new(t?, 5, cfg);
            let mut buf = vec![1.0f32; if (case, r) == (0, 1) { 5000 } else { 4000 }];
            let started = Instant::now();
            let ctl = Ctl::timeout(Duration::from_secs(20));
            let err = comm
                .allreduce(&mut buf, ReduceOp::Sum, &ctl)
                .await
                .expect_err("a mismatched call cannot succeed");
            Ok::<_, CollectiveError>((err, started.elapsed()))
        });
        for (r, res) in results.into_iter().enumerate() {
            let (err, took) = res.unwrap();
            assert!(
                matches!(err, CollectiveError::Mismatch { .. }),
                "case {case} rank {r}: {err}"
            );
            assert!(
                took < Duration::from_secs(3),
                "case {case} rank {r}: {took:?}"
            );
        }
    }
}

#[test]
fn an_abandoned_call_in_the_arena_fails_its_peers_promptly() {
    // Rank 0 drops its allreduce's future (a caller's timeout) and keeps the communicator; the
    // others, waiting for phases it will never publish, must hear of it long before their
    // deadline.
    let results = run_ranks(same_secret(3), 1 << 16, move |rank, t| async move {
        let cfg = CommConfig {
            algo: AlgoChoice::Arena,
            ..CommConfig::default()
        };
        let mut comm = Communicator::new(t?, 5, cfg);
        let mut buf = vec![1.0f32; 1 << 16];
        let ctl = Ctl::timeout(Duration::from_secs(20));
        match rank {
            0 => {
                let call = comm.allreduce(&mut buf, ReduceOp::Sum, &ctl);
                let dropped = tokio::time::timeout(Duration::from_millis(200), call).await;
                assert!(dropped.is_err(), "rank 0 finished without rank 2");
                tokio::time::sleep(Duration::from_millis(3500)).await;
                return Ok(None);
            }
            2 => tokio::time::sleep(Duration::from_millis(600)).await,
            _ => {}
        }
        let started = Instant::now();
        let err = comm
            .allreduce(&mut buf, ReduceOp::Sum, &ctl)
            .await
            .expect_err("rank 0 left the call");
        Ok::<_, CollectiveError>(Some((err, started.elapsed())))
    });
    for (rank, r) in results.into_iter().enumerate().skip(1) {
        let (err, took) = r.unwrap().unwrap();
        assert!(
            matches!(err, CollectiveError::PeerLost { rank: 0, .. }),
            "rank {rank}: {err}"
        );
        assert!(took < Duration::from_secs(3), "rank {rank} waited {took:?}");
    }
}
