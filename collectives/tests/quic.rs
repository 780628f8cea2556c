//! QUIC transport on loopback: every rank on its own thread and executor, as in production.
//! Every test is bounded: set-up and operations carry deadlines, and the harness gives up on
//! ranks that do not report within a minute.

use std::{
    future::Future,
    net::{SocketAddr, UdpSocket},
    sync::mpsc,
    time::{Duration, Instant},
};

use ringrun_collectives::{
    AlgoChoice, CollectiveError, CommConfig, Communicator, Ctl, ReduceOp,
    exec::Executor,
    transport::quic::{self, JobSecret, MeshSpec, QuicTransport},
};

type Setup = Result<QuicTransport, CollectiveError>;

/// Binds `n` UDP sockets on 127.0.0.1:0, then runs `body(rank, connect result)` for every rank on
/// its own thread, rank `r` using `secrets[r]`; ranks other than 0 start `stagger` late.
/// Returns the results in rank order.
fn run_ranks<F, Fut, R>(
    secrets: Vec<JobSecret>,
    setup_within: Duration,
    stagger: Duration,
    strangers: impl FnOnce(&[SocketAddr]),
    body: F,
) -> Vec<R>
where
    F: Fn(usize, Setup) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = R>,
    R: Send + 'static,
{
    let n = secrets.len();
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = sockets.iter().map(|l| l.local_addr().unwrap()).collect();
    strangers(&addrs);
    let (tx, rx) = mpsc::channel();
    for (rank, (socket, secret)) in sockets.into_iter().zip(secrets).enumerate() {
        let spec = MeshSpec {
            rank,
            addrs: addrs.clone(),
            epoch: 3,
        };
        let (tx, body) = (tx.clone(), body.clone());
        std::thread::spawn(move || {
            if rank > 0 {
                std::thread::sleep(stagger);
            }
            // The runtime QUIC is made for: its keeper drives the drivers between calls.
            let rt = Executor::new("test").unwrap();
            let out = rt.block_on(async {
                let deadline = Instant::now() + setup_within;
                let t = quic::connect(socket, &spec, &secret, deadline).await;
                body(rank, t).await
            });
            let _ = tx.send((rank, out));
        });
    }
    collect(n, rx)
}

fn collect<R>(n: usize, rx: mpsc::Receiver<(usize, R)>) -> Vec<R> {
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        let (rank, r) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a rank did not finish within 60 s");
        out[rank] = Some(r);
    }
    out.into_iter().map(Option::unwrap).collect()
}

fn secrets(n: usize) -> Vec<JobSecret> {
    let s = JobSecret::random().unwrap();
    vec![s; n]
}

/// Small integers, so that float sums are exact.
fn input(rank: usize, count: usize) -> Vec<f32> {
    (0..count).map(|i| ((i % 17) + rank) as f32).collect()
}

fn expected(n: usize, count: usize) -> Vec<f32> {
    (0..count)
        .map(|i| (0..n).map(|r| (i % 17) + r).sum::<usize>() as f32)
        .collect()
}

const COUNTS: [usize; 4] = [0, 1, 7, (1 << 20) + 3];

#[test]
fn allreduce_over_quic_mesh() {
    for n in [2, 3, 4] {
        for algo in [AlgoChoice::Ring, AlgoChoice::RecursiveDoubling] {
            let results = run_ranks(
                secrets(n),
                Duration::from_secs(10),
                Duration::ZERO,
                |_| {},
                move |rank, t| async move {
                    let cfg = CommConfig {
                        algo,
                        ..CommConfig::default()
                    };
                    let mut comm = Communicator::new(t?, 3, cfg);
                    let mut outs = Vec::new();
                    for count in COUNTS {
                        let mut buf = input(rank, count);
                        let ctl = Ctl::timeout(Duration::from_secs(20));
                        comm.allreduce(&mut buf, ReduceOp::Sum, &ctl).await?;
                        outs.push(buf);
                    }
                    Ok::<_, CollectiveError>(outs)
                },
            );
            for (rank, outs) in results.into_iter().enumerate() {
                let outs = outs.unwrap_or_else(|e| panic!("n={n} {algo:?} rank {rank}: {e}"));
                for (count, got) in COUNTS.into_iter().zip(outs) {
                    assert!(
                        got == expected(n, count),
                        "n={n} {algo:?} rank {rank} count {count}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_rank_without_the_secret_is_refused() {
    let mut s = secrets(3);
    s[2] = JobSecret::from_bytes(b"not this job's secret");
    let started = Instant::now();
    let results = run_ranks(
        s,
        Duration::from_secs(2),
        Duration::ZERO,
        |_| {},
        |_, t| async move { t.map(|_| ()) },
    );
    for (rank, r) in results.iter().enumerate() {
        let Err(CollectiveError::Setup(msg)) = r else {
            panic!("rank {rank}: expected a set-up error, got {r:?}");
        };
        eprintln!("rank {rank}: {msg}");
        match rank {
            2 => assert!(msg.contains("secret"), "{msg}"),
            _ => assert!(msg.contains("missing rank(s) [2]"), "{msg}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn strangers_do_not_block_the_mesh() {
    let (mut held, mut impostors) = (Vec::new(), Vec::new());
    let job = JobSecret::random().unwrap();
    let started = Instant::now();
    let results = run_ranks(
        vec![job.clone(); 3],
        Duration::from_secs(10),
        // Rank 0 meets the impostors alone first, then the honest ranks while it is still busy
        // with the silent strangers.
        Duration::from_millis(500),
        |addrs| {
            // Datagrams that are not QUIC, queued before the ranks serve their sockets.
            let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
            for addr in addrs {
                junk.send_to(&[0xAB; 1200], addr).unwrap();
                junk.send_to(b"RRQ1", addr).unwrap();
            }
            held.push(junk);
            impostors.push(impostor(addrs, JobSecret::from_bytes(b"guess"), 3));
            impostors.push(impostor(addrs, job.clone(), 2));
        },
        |rank, t| async move {
            let mut comm = Communicator::new(t?, 3, CommConfig::default());
            let mut buf = input(rank, 1000);
            comm.allreduce(
                &mut buf,
                ReduceOp::Sum,
                &Ctl::timeout(Duration::from_secs(10)),
            )
            .await?;
            Ok::<_, CollectiveError>(buf)
        },
    );
    for r in results {
        assert!(r.unwrap() == expected(3, 1000));
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    drop(held);
    let wrong_secret = impostors.remove(0).join().unwrap();
    assert!(wrong_secret.contains("secret"), "{wrong_secret}");
    let wrong_epoch = impostors.remove(0).join().unwrap();
    assert!(
        wrong_epoch.contains("rank 0 (epoch 3) refused it: peer is in epoch 2"),
        "{wrong_epoch}"
    );
}

/// A process that runs the real protocol as rank 1 of the mesh at `addrs` from an address of its
/// own (so it dials rank 0 only); returns its set-up error.
fn impostor(
    addrs: &[SocketAddr],
    secret: JobSecret,
    epoch: u64,
) -> std::thread::JoinHandle<String> {
    let own = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut addrs = addrs.to_vec();
    addrs[1] = own.local_addr().unwrap();
    let spec = MeshSpec {
        rank: 1,
        addrs,
        epoch,
    };
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(3);
            match quic::connect(own, &spec, &secret, deadline).await {
                Ok(_) => "impostor got in".to_string(),
                Err(e) => e.to_string(),
            }
        })
    })
}

#[test]
fn a_dead_peer_fails_the_allreduce_quickly() {
    let results = run_ranks(
        secrets(3),
        Duration::from_secs(10),
        Duration::ZERO,
        |_| {},
        |rank, t| async move {
            let t = t?;
            if rank == 2 {
                // Dies while the others are inside the allreduce, waiting on it.
                tokio::time::sleep(Duration::from_millis(300)).await;
                drop(t);
                return Ok(Duration::ZERO);
            }
            let mut comm = Communicator::new(t, 3, CommConfig::default());
            let mut buf = input(rank, 4 << 20);
            let started = Instant::now();
            let err = comm
                .allreduce(
                    &mut buf,
                    ReduceOp::Sum,
                    &Ctl::timeout(Duration::from_secs(10)),
                )
                .await
                .expect_err("the allreduce cannot finish without rank 2");
            assert!(
                matches!(
                    err,
                    CollectiveError::PeerLost { .. } | CollectiveError::Aborted { .. }
                ),
                "rank {rank}: {err}"
            );
            Ok::<_, CollectiveError>(started.elapsed())
        },
    );
    for (rank, r) in results.into_iter().enumerate() {
        let waited = r.unwrap();
        assert!(
            waited < Duration::from_secs(3),
            "rank {rank} waited {waited:?}"
        );
    }
}

/// Between collectives rank 0 computes outside the runtime for longer than QUIC's idle timeout
/// while rank 1 already waits in the next allreduce. Rank 1's link stays up only if rank 0's
/// drivers answer its keep-alives meanwhile: the executor's keeper runs them.
#[test]
fn links_survive_compute_longer_than_the_idle_timeout() {
    let n = 2;
    let secret = JobSecret::random().unwrap();
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = sockets.iter().map(|l| l.local_addr().unwrap()).collect();
    let (tx, rx) = mpsc::channel();
    for (rank, socket) in sockets.into_iter().enumerate() {
        let (tx, secret) = (tx.clone(), secret.clone());
        let spec = MeshSpec {
            rank,
            addrs: addrs.clone(),
            epoch: 1,
        };
        std::thread::spawn(move || {
            let rt = Executor::new("test").unwrap();
            let run = || -> Result<Vec<f32>, CollectiveError> {
                let deadline = Instant::now() + Duration::from_secs(10);
                let t = rt.block_on(quic::connect(socket, &spec, &secret, deadline))?;
                let mut comm = Communicator::new(t, 1, CommConfig::default());
                let mut buf = input(rank, 1 << 20);
                for round in 0..2 {
                    if round > 0 {
                        if rank == 0 {
                            // "Compute": the runtime is not entered for 2.5 s.
                            std::thread::sleep(Duration::from_millis(2500));
                        }
                        buf = input(rank, 1 << 20);
                    }
                    let ctl = Ctl::timeout(Duration::from_secs(5));
                    rt.block_on(comm.allreduce(&mut buf, ReduceOp::Sum, &ctl))?;
                }
                Ok(buf)
            };
            let _ = tx.send((rank, run()));
        });
    }
    for (rank, out) in collect(n, rx).into_iter().enumerate() {
        let got = out.unwrap_or_else(|e| panic!("rank {rank}: {e}"));
        assert!(got == expected(n, 1 << 20), "rank {rank}");
    }
}
