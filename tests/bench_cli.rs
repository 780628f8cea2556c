//! Multi-process tests of `ringrun bench`: real processes on loopback, real sockets.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const RINGRUN: &str = env!("CARGO_BIN_EXE_ringrun");

fn bench(args: &[&str]) -> Output {
    let mut child = Command::new(RINGRUN)
        .arg("bench")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_bounded(&mut child, Duration::from_secs(60))
}

/// Waits for `child` at most `limit`, killing it if it overruns (and failing the test).
fn wait_bounded(child: &mut Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = Output {
        status: child.wait().unwrap(),
        stdout: vec![],
        stderr: vec![],
    };
    child
        .stdout
        .take()
        .map(|mut s| s.read_to_end(&mut out.stdout));
    child
        .stderr
        .take()
        .map(|mut s| s.read_to_end(&mut out.stderr));
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_table(out: &Output, rows: usize) {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "status {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    let data: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(data.len(), rows, "{stdout}");
    for line in &data {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols.len(), 13, "{line}");
        assert_eq!((cols[8], cols[12]), ("0", "0"), "wrong elements: {line}");
    }
    assert!(stdout.contains("# Out of bounds values : 0 OK"), "{stdout}");
    assert!(stdout.contains("# Avg bus bandwidth    : "), "{stdout}");
}

#[test]
fn tcp_sweep_prints_an_nccl_tests_table() {
    let out = bench(&[
        "--np",
        "3",
        "-b",
        "8",
        "-e",
        "1M",
        "-f",
        "4",
        "-n",
        "3",
        "-w",
        "1",
        "--transport",
        "tcp",
    ]);
    assert_table(&out, 9);
}

#[test]
fn auto_picks_shm_on_one_host_and_the_hierarchy_across_hosts() {
    let out = bench(&[
        "--np", "3", "-b", "8", "-e", "1M", "-f", "8", "-n", "3", "-w", "1",
    ]);
    assert_table(&out, 6);
    assert!(text(&out.stdout).contains("transport auto (shm)"));
    // Two pretend hosts of two ranks (uniform: the 2D form above --small-bytes), then hosts of
    // 2 and 1 (the leader form), then one rank per host (plain TCP).
    for (labels, rows, says) in [
        ("0,0,1,1", 6, "shm in host, tcp across"),
        ("4,4,9", 6, "shm in host, tcp across"),
        ("1,2,3", 6, "auto (tcp)"),
    ] {
        let np = labels.split(',').count().to_string();
        let out = bench(&[
            "--np",
            &np,
            "--host-labels",
            labels,
            "-b",
            "8",
            "-e",
            "1M",
            "-f",
            "8",
            "-n",
            "3",
            "-w",
            "1",
            "--small-bytes",
            "4K",
        ]);
        assert_table(&out, rows);
        assert!(
            text(&out.stdout).contains(says),
            "{labels}: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn fusion_compares_grouped_with_one_allreduce() {
    for (transport, dtype) in [("auto", "float"), ("tcp", "bfloat16")] {
        let out = bench(&[
            "--np",
            "2",
            "--transport",
            transport,
            "-d",
            dtype,
            "--fusion",
            "300x4K,3x100K",
            "-n",
            "3",
            "-w",
            "1",
            "--fusion-bytes",
            "256K",
        ]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
        assert!(stdout.contains("303 tensors"), "{stdout}");
        assert!(
            stdout.contains("ratio") && stdout.contains("#wrong 0"),
            "{stdout}"
        );
    }
}

#[test]
fn shm_sweep_with_every_algorithm() {
    for algo in ["ring", "tree"] {
        let out = bench(&[
            "--np",
            "3",
            "--transport",
            "shm",
            "--algo",
            algo,
            "-b",
            "8",
            "-e",
            "4M",
            "-f",
            "8",
            "-n",
            "3",
            "-w",
            "1",
            "--shm-ring-bytes",
            "64K",
        ]);
        assert_table(&out, 7);
        assert!(text(&out.stdout).contains("transport shm"));
    }
}

#[test]
fn quic_sweep_with_every_algorithm() {
    for algo in ["ring", "tree"] {
        let out = bench(&[
            "--np",
            "3",
            "--transport",
            "quic",
            "--algo",
            algo,
            "-b",
            "1K",
            "-e",
            "256K",
            "-f",
            "16",
            "-n",
            "2",
            "-w",
            "1",
        ]);
        assert_table(&out, 3);
    }
}

#[test]
fn dtypes_ops_and_deterministic_mode_check_clean() {
    for (d, o) in [
        ("bfloat16", "avg"),
        ("int8", "prod"),
        ("double", "max"),
        ("half", "min"),
    ] {
        let out = bench(&[
            "--np", "2", "-d", d, "-o", o, "-b", "64", "-e", "64K", "-f", "32", "-n", "2", "-w",
            "1",
        ]);
        assert_table(&out, 3);
    }
    let out = bench(&[
        "--np",
        "4",
        "--deterministic",
        "-b",
        "4",
        "-e",
        "4M",
        "-f",
        "64",
        "-n",
        "2",
        "-w",
        "1",
    ]);
    assert_table(&out, 4);
}

/// Spawns `n` ranks directly (as the bench parent would) so that the test can kill one.
fn spawn_ranks(n: usize, extra: &[&str], secret_of: impl Fn(usize) -> String) -> Vec<Child> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap().to_string();
    let children: Vec<Child> = (0..n)
        .map(|rank| {
            Command::new(RINGRUN)
                .arg("bench")
                .args(extra)
                .args([
                    "--rank",
                    &rank.to_string(),
                    "--rendezvous",
                    &server,
                    "--np",
                    &n.to_string(),
                ])
                .env("RINGRUN_SECRET", secret_of(rank))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // The parent's side of the address exchange: one "rank addr" line each, then the list.
    listener.set_nonblocking(false).unwrap();
    let mut addrs = vec![String::new(); n];
    let mut streams = Vec::new();
    for _ in 0..n {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        let (rank, addr) = line.trim().split_once(' ').unwrap();
        addrs[rank.parse::<usize>().unwrap()] = addr.to_string();
        streams.push(s);
    }
    for mut s in streams {
        writeln!(s, "{}", addrs.join(" ")).unwrap();
    }
    children
}

const SECRET: &str = "job-secret-for-tests-only";

#[test]
fn sigkill_of_a_rank_gives_survivors_a_typed_error_promptly() {
    // `auto` with two pretend hosts runs the hierarchical allreduce over shm and TCP.
    for (transport, hosts) in [
        ("tcp", None),
        ("quic", None),
        ("shm", None),
        ("auto", Some("0,0,1,1")),
    ] {
        let mut args = vec![
            "--transport",
            transport,
            "-b",
            "8M",
            "-e",
            "8M",
            "-n",
            "100000",
            "-w",
            "1",
            "--timeout",
            "30",
        ];
        if let Some(h) = hosts {
            args.extend(["--host-labels", h]);
        }
        let mut ranks = spawn_ranks(4, &args, |_| SECRET.into());
        let pids: Vec<u32> = ranks.iter().map(Child::id).collect();
        std::thread::sleep(Duration::from_millis(1500));
        ranks[2].kill().unwrap();
        let killed = Instant::now();
        for (r, child) in ranks.iter_mut().enumerate().filter(|(r, _)| *r != 2) {
            let out = wait_bounded(child, Duration::from_secs(20));
            let waited = killed.elapsed();
            let stderr = text(&out.stderr);
            assert!(!out.status.success(), "{transport} rank {r} succeeded?");
            // Usually the killed rank is named; a survivor whose only link to it runs through
            // a neighbour that died of the same cause mid-frame names that neighbour instead.
            // (over shared memory, writing into the ring of a neighbour that closed its end).
            // Either way the error is the typed PeerLost, not a timeout.
            let lost = ["peer rank 2 lost", " lost: connection", " closed its end"];
            assert!(
                lost.iter().any(|l| stderr.contains(l)),
                "{transport} rank {r}: {stderr}"
            );
            assert!(
                !stderr.contains("timed out"),
                "{transport} rank {r}: {stderr}"
            );
            assert!(
                waited < Duration::from_secs(5),
                "{transport} rank {r} took {waited:?}: {stderr}"
            );
        }
        let _ = ranks[2].wait();
        // Segments lose their names once set up, so even the killed rank's memory is freed.
        assert_eq!(
            common::shm::segments_of(&pids),
            Vec::<String>::new(),
            "{transport}"
        );
    }
}

/// Shared-memory segment files in /dev/shm created by any of `pids` (names carry the pid).
#[test]
fn a_rank_without_the_secret_cannot_join() {
    for transport in ["tcp", "quic", "shm"] {
        let args = [
            "--transport",
            transport,
            "-b",
            "8",
            "-e",
            "8",
            "--start-timeout",
            "3",
        ];
        let mut ranks = spawn_ranks(3, &args, |r| {
            if r == 1 {
                "a-different-job-secret".into()
            } else {
                SECRET.into()
            }
        });
        let pids: Vec<u32> = ranks.iter().map(Child::id).collect();
        for (r, child) in ranks.iter_mut().enumerate() {
            let out = wait_bounded(child, Duration::from_secs(20));
            assert!(
                !out.status.success(),
                "{transport} rank {r} formed a mesh with a stranger"
            );
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains("transport set-up failed"),
                "{transport} rank {r}: {stderr}"
            );
        }
        assert_eq!(
            common::shm::segments_of(&pids),
            Vec::<String>::new(),
            "{transport}"
        );
    }
}

#[test]
fn ranks_given_explicit_peers_form_a_job_without_a_parent() {
    // Reserve two loopback ports, then let the ranks bind them (the multi-host form).
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let peers = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut ranks: Vec<Child> = (0..2)
        .map(|rank| {
            Command::new(RINGRUN)
                .args([
                    "bench", "--np", "2", "-b", "1K", "-e", "64K", "-f", "8", "-n", "2", "-w", "1",
                ])
                .args(["--rank", &rank.to_string(), "--peers", &peers])
                .env("RINGRUN_SECRET", SECRET)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = ranks
        .iter_mut()
        .map(|c| wait_bounded(c, Duration::from_secs(30)))
        .collect();
    assert_table(&outs[0], 3);
    assert!(outs[1].status.success(), "{}", text(&outs[1].stderr));
    assert!(outs[1].stdout.is_empty(), "only rank 0 prints");
}

/// `--device cuda`: with a CUDA device the sweep runs; without one it fails before starting
/// ranks, with one line naming the library.
#[test]
fn device_cuda_runs_with_a_gpu_and_fails_with_one_clear_line_without() {
    let out = bench(&[
        "--device", "cuda", "--np", "2", "-b", "8", "-e", "64", "-n", "1",
    ]);
    let stderr = text(&out.stderr);
    if ringrun_collectives::nccl::probe_cuda().is_ok_and(|devices| devices > 0) {
        assert!(out.status.success(), "a CUDA device is present: {stderr}");
        assert_table(&out, 4);
        return;
    }
    assert!(!out.status.success(), "no CUDA device, yet the sweep ran");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("not found") || lines[0].contains("no CUDA device"),
        "{stderr}"
    );
    if !std::path::Path::new("/proc/driver/nvidia").exists() {
        assert!(lines[0].contains("libcuda.so.1 not found"), "{stderr}");
    }
}
