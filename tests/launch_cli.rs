//! `ringrun launch` and `ringrun demo` end to end: the environment contract, tagged output,
//! the restart budget, restart mode with a disk checkpoint, signal forwarding, and the demo's
//! JSON. Every test is bounded in time.

mod common;

use common::launched::text;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

const EXE: &str = env!("CARGO_BIN_EXE_ringrun");

fn launch(args: &[&str], script: &str, within: Duration) -> Output {
    common::launched::output_within(
        Command::new(EXE)
            .arg("launch")
            .args(args)
            .args(["--", "sh", "-c", script]),
        within,
    )
}

#[test]
fn workers_get_the_torchrun_tf_and_ringrun_environment_with_tagged_output() {
    let script = r#"echo "RANK=$RANK LOCAL_RANK=$LOCAL_RANK WORLD_SIZE=$WORLD_SIZE LOCAL_WORLD_SIZE=$LOCAL_WORLD_SIZE GROUP_RANK=$GROUP_RANK MASTER=$MASTER_ADDR:$MASTER_PORT RESTARTS=$TORCHELASTIC_RESTART_COUNT/$TORCHELASTIC_MAX_RESTARTS RUN=$TORCHELASTIC_RUN_ID NODE=$RINGRUN_NODE_ID TRANSPORT=$RINGRUN_TRANSPORT SEEDS=$RINGRUN_SEEDS"; echo "TF $TF_CONFIG"; echo oops >&2"#;
    let out = launch(
        &["--np", "3", "--max-restarts", "0", "--run-id", "envtest"],
        script,
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for r in 0..3 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("[{r}] RANK=")))
            .unwrap_or_else(|| panic!("no env line of rank {r}: {stdout}"));
        assert!(line.contains(&format!("RANK={r} LOCAL_RANK={r} WORLD_SIZE=3 LOCAL_WORLD_SIZE=3 GROUP_RANK=0 MASTER=127.0.0.1:")), "{line}");
        assert!(line.contains("RESTARTS=0/0 RUN=envtest"), "{line}");
        assert!(line.contains("SEEDS=127.0.0.1:"), "{line}");
        assert!(line.contains("TRANSPORT=auto"), "{line}");
        let tf = stdout
            .lines()
            .find(|l| l.starts_with(&format!("[{r}] TF ")))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&tf[format!("[{r}] TF ").len()..]).unwrap();
        assert_eq!(v["task"]["index"], r);
        assert_eq!(v["cluster"]["worker"].as_array().unwrap().len(), 3);
    }
    assert_eq!(
        text(&out.stderr).matches("] oops").count(),
        3,
        "stderr is tagged too"
    );
}

#[test]
fn a_worker_that_keeps_failing_spends_the_restart_budget_and_fails_the_job() {
    let out = launch(
        &["--np", "2", "--max-restarts", "2"],
        "sleep 0.1; exit 3",
        Duration::from_secs(30),
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("restart budget is spent"), "{stderr}");
    assert_eq!(stderr.matches("restarting worker").count(), 2, "{stderr}");
}

#[test]
fn restart_mode_restarts_every_worker_and_they_resume_from_their_checkpoint() {
    let dir = std::env::temp_dir().join(format!("ringrun-launch-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Each worker counts to 6, checkpointing the count to disk; worker 1 fails once at 3.
    let script = format!(
        r#"f={dir}/w$LOCAL_RANK; n=$(cat $f 2>/dev/null || echo 0); echo "generation $TORCHELASTIC_RESTART_COUNT from $n";
        while [ $n -lt 6 ]; do n=$((n+1)); echo $n > $f;
          if [ $LOCAL_RANK = 1 ] && [ $n = 3 ] && [ $TORCHELASTIC_RESTART_COUNT = 0 ]; then exit 1; fi; sleep 0.05; done; echo done at $n"#,
        dir = dir.display()
    );
    let out = launch(
        &["--np", "2", "--mode", "restart", "--max-restarts", "1"],
        &script,
        Duration::from_secs(30),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("restarting all workers"), "{stderr}");
    for r in 0..2 {
        assert!(
            stdout.contains(&format!("[{r}] generation 1 from")),
            "worker {r} restarted: {stdout}"
        );
        assert!(stdout.contains(&format!("[{r}] done at 6")), "{stdout}");
    }
    assert!(
        stdout.contains("[1] generation 1 from 3"),
        "worker 1 resumed from its checkpoint: {stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_is_forwarded_to_the_workers() {
    let script =
        r#"trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.05; done"#;
    let mut child = Command::new(EXE)
        .args(["launch", "--np", "2", "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ready = 0;
    while ready < 2 {
        let line = lines.next().expect("output").unwrap();
        ready += usize::from(line.ends_with("ready"));
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let sent = Instant::now();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(sent.elapsed() < Duration::from_secs(10));
    assert_eq!(
        rest.iter().filter(|l| l.ends_with("got TERM")).count(),
        2,
        "{rest:?}"
    );
    assert_eq!(status.code(), Some(143));
}

#[test]
fn the_demo_kills_a_worker_and_ends_with_the_reference_model() {
    demo_survives_a_kill("tcp");
}

#[test]
fn the_demo_survives_a_kill_over_quic() {
    demo_survives_a_kill("quic");
}

#[test]
fn the_demo_survives_a_kill_over_the_default_links() {
    demo_survives_a_kill("auto");
    let ours = common::shm::segments_of_dead_processes();
    assert!(ours.is_empty(), "segments of dead processes left: {ours:?}");
}

#[test]
fn the_demo_survives_a_kill_over_shared_memory() {
    demo_survives_a_kill("shm");
    let ours = common::shm::segments_of_dead_processes();
    assert!(ours.is_empty(), "segments of dead processes left: {ours:?}");
}

fn demo_survives_a_kill(transport: &str) {
    let mut child = Command::new(EXE)
        .args(["demo", "--json", "--steps", "120", "--kill", "1@40"])
        .args(["--transport", transport])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "demo did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["final_matches_reference"], true);
    assert_eq!(last["world_size"], 4);
    assert_eq!(last["steps"], 120);
    let faults = last["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 1, "{stdout}");
    assert_eq!(faults[0]["rank"], 1);
    assert!(
        faults[0]["resume_ms"].as_f64().unwrap() < 5000.0,
        "{stdout}"
    );
    assert!(faults[0]["steps_rolled_back"].as_u64().unwrap() <= 1);
    assert!(stdout.contains("loss per step"));
}

#[test]
fn status_shows_the_epoch_and_ranks_of_a_launched_job() {
    let secret = "status-test-secret-0123456789";
    let mut job = Command::new(EXE)
        .args([
            "launch",
            "--np",
            "3",
            "--run-id",
            "statusjob",
            "--",
            EXE,
            "train-worker",
            "--steps",
            "2000",
            "--step-ms",
            "5",
        ])
        .env("RINGRUN_SECRET", secret)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(job.stderr.take().unwrap()).lines();
    let seed = loop {
        let line = lines.next().expect("launcher output").unwrap();
        if let Some(rest) = line.split("--seeds ").nth(1) {
            break rest.split('`').next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let out = Command::new(EXE)
            .args([
                "status",
                "--seeds",
                &seed,
                "--json",
                "--job-id",
                "statusjob",
            ])
            .env("RINGRUN_SECRET", secret)
            .output()
            .unwrap();
        let v: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        let ranked = v.as_ref().map_or(0, |v| {
            v["members"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["rank"].is_u64())
                .count()
        });
        if ranked == 3 {
            break v.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "status never showed 3 ranked members: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // SIGTERM, which the launcher forwards: no worker outlives the test.
    let pid = job.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = job.wait();
    assert!(report["epoch"].as_u64().unwrap() >= 1, "{report}");
    let mut ranks: Vec<u64> = report["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["rank"].as_u64())
        .collect();
    ranks.sort();
    assert_eq!(ranks, vec![0, 1, 2], "{report}");
    for m in report["members"].as_array().unwrap() {
        for field in ["id", "addr", "state", "incarnation"] {
            assert!(!m[field].is_null(), "{field} missing: {m}");
        }
    }
}

#[test]
fn a_discovery_script_grows_and_shrinks_the_job_and_training_stays_exact() {
    let dir = std::env::temp_dir().join(format!("ringrun-discovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    let script = dir.join("discover.sh");
    std::fs::write(&hosts, "localhost:2\n").unwrap();
    std::fs::write(&script, format!("#!/bin/sh\ncat {}\n", hosts.display())).unwrap();
    Command::new("chmod")
        .args(["+x", script.to_str().unwrap()])
        .status()
        .unwrap();
    let steps = 400;
    let mut job = Command::new(EXE)
        .args([
            "launch",
            "--host-discovery-script",
            script.to_str().unwrap(),
            "--discovery-interval-ms",
            "200",
            "--",
        ])
        .args([
            EXE,
            "train-worker",
            "--steps",
            &steps.to_string(),
            "--step-ms",
            "10",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(job.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        out.lines()
            .map_while(Result::ok)
            .for_each(|l| drop(tx.send(l)))
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut all = Vec::new();
    let wait_for = |pred: &dyn Fn(&str) -> bool, all: &mut Vec<String>| loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("launcher output in time");
        let hit = pred(&line);
        all.push(line);
        if hit {
            return;
        }
    };
    wait_for(&|l| l.contains(" size 2 "), &mut all);
    std::fs::write(&hosts, "localhost:3\n").unwrap();
    wait_for(&|l| l.contains(" size 3 "), &mut all);
    std::fs::write(&hosts, "localhost:1\n").unwrap();
    wait_for(&|l| l.contains(" size 1 "), &mut all);
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        all.push(l);
    }
    let status = job.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "{all:?}");
    assert_eq!(
        all.iter().filter(|l| l.contains("leaving at step")).count(),
        2,
        "two workers left gracefully"
    );
    let reference = Command::new(EXE)
        .args(["train-worker", "--reference", "--steps", &steps.to_string()])
        .output()
        .unwrap();
    let expected = text(&reference.stdout)
        .split(" loss")
        .next()
        .unwrap()
        .to_string();
    let finals: Vec<&String> = all.iter().filter(|l| l.contains("] final ")).collect();
    assert_eq!(finals.len(), 1, "{all:?}");
    assert!(finals[0].contains(&expected), "{} vs {expected}", finals[0]);
}

/// `--transport nccl` is accepted and reaches the workers as `RINGRUN_TRANSPORT=nccl`; on a
/// machine without the CUDA driver their join fails at once with an error naming libcuda, and
/// the job fails cleanly (no hang, no panic).
#[test]
fn transport_nccl_without_cuda_fails_at_join_naming_libcuda() {
    let cuda = ringrun_collectives::nccl::probe_cuda();
    if cuda.is_ok() && ringrun_collectives::nccl::probe_nccl().is_ok() {
        println!("skipped: CUDA and NCCL are present, so the workers would form a device group");
        return;
    }
    let script =
        format!("echo \"transport=$RINGRUN_TRANSPORT\"; exec {EXE} train-worker --steps 3");
    let start = Instant::now();
    let out = launch(
        &["--transport", "nccl", "--np", "2", "--max-restarts", "0"],
        &script,
        Duration::from_secs(30),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("] transport=nccl"), "{stdout}");
    let needle = if cuda.is_err() {
        "libcuda.so.1"
    } else {
        "libnccl.so"
    };
    assert!(
        stderr.contains("device group unavailable") && stderr.contains(needle),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn an_unknown_transport_is_rejected_listing_the_valid_ones() {
    let out = launch(&["--transport", "pigeon"], "true", Duration::from_secs(10));
    let bench = Command::new(EXE)
        .args(["bench", "--np", "2", "--transport", "pigeon"])
        .output()
        .unwrap();
    for (what, out) in [("launch", out), ("bench", bench)] {
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{what}");
        assert!(
            stderr.contains("--transport") && stderr.contains("\"pigeon\""),
            "{stderr}"
        );
        assert!(
            stderr.contains("auto, tcp, quic, shm, nccl"),
            "{what}: {stderr}"
        );
    }
}

/// A worker that fails after the others finished is not restarted (it would train alone from
/// the last commit): the job ends, as failed, without a restart.
#[test]
fn a_worker_failing_after_the_others_finished_is_not_restarted() {
    let script = r#"if [ "$RANK" = 2 ]; then sleep 1; echo "worker 2 ran"; exit 1; fi"#;
    let out = launch(
        &["--np", "3", "--max-restarts", "3"],
        script,
        Duration::from_secs(30),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not restarted"), "{stderr}");
    assert!(!stderr.contains("restarting worker"), "{stderr}");
    assert_eq!(stdout.matches("worker 2 ran").count(), 1, "{stdout}");
}
