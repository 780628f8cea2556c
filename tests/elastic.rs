//! Multi-process elastic training on loopback: `ringrun train-worker` processes under SIGKILL,
//! SIGSTOP and restarts. Every run must end with the model of a fault-free run, bit for bit
//! (the trainer is world-size independent), and lose no committed step. Bounded in time.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

const EXE: &str = env!("CARGO_BIN_EXE_ringrun");
const SECRET: &str = "elastic-test-secret-0123456789";

type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

struct Worker {
    child: Child,
    lines: Lines,
}

struct Job {
    name: String,
    ports: Vec<u16>,
    steps: u64,
    initial: usize,
    checkpoints: Option<std::path::PathBuf>,
    crash_at: Vec<(usize, String)>,
    workers: Vec<Option<Worker>>,
    finished: Vec<Lines>,
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Job {
    fn start(name: &str, n: usize, steps: u64) -> Job {
        Job::start_with(name, n, steps, None)
    }

    fn start_with(
        name: &str,
        n: usize,
        steps: u64,
        checkpoints: Option<std::path::PathBuf>,
    ) -> Job {
        Job::start_full(name, n, steps, checkpoints, &[])
    }

    /// `crash_at`: (node, `point:value`) crash points (see `ringrun_runtime::failpoint`).
    fn start_full(
        name: &str,
        n: usize,
        steps: u64,
        checkpoints: Option<std::path::PathBuf>,
        crash_at: &[(usize, &str)],
    ) -> Job {
        let mut job = Job {
            name: format!("{name}-{}", std::process::id()),
            ports: (0..n).map(|_| free_udp_port()).collect(),
            steps,
            initial: n,
            checkpoints,
            crash_at: crash_at.iter().map(|(n, c)| (*n, c.to_string())).collect(),
            workers: (0..n).map(|_| None).collect(),
            finished: Vec::new(),
        };
        for node in 0..n {
            job.spawn(node);
        }
        job
    }

    fn spawn(&mut self, node: usize) {
        let seeds: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let crash = self
            .crash_at
            .iter()
            .find(|(n, _)| *n == node)
            .map(|(_, c)| c.clone());
        let mut child = Command::new(EXE)
            .args([
                "train-worker",
                "--steps",
                &self.steps.to_string(),
                "--step-ms",
                "15",
            ])
            .env("RINGRUN_SECRET", SECRET)
            .env("RINGRUN_RUN_ID", &self.name)
            .env("RINGRUN_NODE_ID", node.to_string())
            .env("RINGRUN_MEMBER_PORT", self.ports[node].to_string())
            .env("RINGRUN_SEEDS", seeds.join(","))
            .env("RINGRUN_INITIAL_SIZE", self.initial.to_string())
            .env("RINGRUN_MIN_SIZE", "2")
            .env("RINGRUN_RESTORE_TIMEOUT_MS", "30000")
            .env("RINGRUN_OP_TIMEOUT_MS", "20000")
            .env(
                "RINGRUN_CHECKPOINT_DIR",
                self.checkpoints.clone().unwrap_or_default(),
            )
            .env("RINGRUN_CHECKPOINT_EVERY", "10")
            .env("RINGRUN_CRASH_AT", crash.unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ringrun train-worker");
        let lines: Lines = Arc::default();
        let (out, sink) = (child.stdout.take().unwrap(), lines.clone());
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("[node {node}] {line}");
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        self.workers[node] = Some(Worker { child, lines });
    }

    fn lines(&self, node: usize) -> Vec<(Instant, String)> {
        self.workers[node]
            .as_ref()
            .unwrap()
            .lines
            .lock()
            .unwrap()
            .clone()
    }

    /// Waits (bounded) until `node` has printed a line starting with `prefix`.
    fn wait_line(&self, node: usize, prefix: &str, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if let Some((t, _)) = self
                .lines(node)
                .into_iter()
                .find(|(_, l)| l.starts_with(prefix))
            {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} never printed {prefix:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn signal(&self, node: usize, sig: &str) {
        let pid = self.workers[node].as_ref().unwrap().child.id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    fn kill(&mut self, node: usize) -> Instant {
        let mut w = self.workers[node].take().unwrap();
        w.child.kill().unwrap();
        let at = Instant::now();
        w.child.wait().unwrap();
        self.finished.push(w.lines);
        at
    }

    /// Waits for every running worker to exit successfully; returns their final lines.
    fn finish(&mut self, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut finals = Vec::new();
        for (node, slot) in self.workers.iter_mut().enumerate() {
            let Some(w) = slot.as_mut() else { continue };
            let status = loop {
                if let Some(s) = w.child.try_wait().unwrap() {
                    break s;
                }
                if Instant::now() > deadline {
                    let _ = w.child.kill();
                    panic!("node {node} did not finish in {within:?}");
                }
                thread::sleep(Duration::from_millis(20));
            };
            thread::sleep(Duration::from_millis(50)); // let the reader drain
            if self.crash_at.iter().any(|(n, _)| *n == node) {
                assert!(
                    !status.success(),
                    "node {node} was to crash but exited with {status}"
                );
                continue;
            }
            assert!(status.success(), "node {node} exited with {status}");
            let lines = w.lines.lock().unwrap();
            let last = lines
                .iter()
                .rev()
                .find(|(_, l)| l.starts_with("final "))
                .map(|(_, l)| l.clone());
            finals.push(last.unwrap_or_else(|| panic!("node {node} printed no final line")));
        }
        finals
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        for w in self.workers.iter_mut().flatten() {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

fn reference(steps: u64) -> String {
    let out = Command::new(EXE)
        .args(["train-worker", "--reference", "--steps", &steps.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The first `step` line after `t` printed with world size `size` by any of `nodes`.
fn first_step_after(job: &Job, nodes: &[usize], t: Instant, size: usize) -> Option<Duration> {
    let tag = format!(" size {size} ");
    nodes
        .iter()
        .flat_map(|n| job.lines(*n))
        .filter(|(at, l)| *at > t && l.starts_with("step ") && l.contains(&tag))
        .map(|(at, _)| at - t)
        .min()
}

fn assert_no_commit_lost(job: &Job, nodes: &[usize]) {
    for n in nodes {
        for (_, l) in job
            .lines(*n)
            .iter()
            .filter(|(_, l)| l.starts_with("fault "))
        {
            let v: serde_json::Value = serde_json::from_str(&l[6..]).unwrap();
            let rolled = v["steps_rolled_back"].as_u64().unwrap();
            assert!(rolled <= 1, "node {n} rolled back {rolled} steps: {l}");
        }
    }
}

#[test]
fn sigkill_one_of_four_then_restart_it() {
    let steps = 160;
    let expected = reference(steps);
    let mut job = Job::start("kill1", 4, steps);
    job.wait_line(2, "step 30 ", Duration::from_secs(30));
    let killed = job.kill(2);
    let resumed = loop {
        if let Some(d) = first_step_after(&job, &[0, 1, 3], killed, 3) {
            break d;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "survivors never resumed with 3"
        );
        thread::sleep(Duration::from_millis(5));
    };
    eprintln!("kill → first step completed by 3 survivors: {resumed:?}");
    assert!(
        resumed < Duration::from_secs(5),
        "resumed after {resumed:?}"
    );
    job.spawn(2);
    job.wait_line(2, "step ", Duration::from_secs(30));
    let finals = job.finish(Duration::from_secs(60));
    assert_eq!(finals.len(), 4);
    for f in &finals {
        assert_eq!(
            f.split(" loss").next(),
            expected.split(" loss").next(),
            "{f} vs {expected}"
        );
    }
    assert_no_commit_lost(&job, &[0, 1, 2, 3]);
}

#[test]
fn sigkill_two_of_five_at_once() {
    let steps = 120;
    let expected = reference(steps);
    let mut job = Job::start("kill2", 5, steps);
    job.wait_line(1, "step 25 ", Duration::from_secs(30));
    let killed = job.kill(1);
    job.kill(3);
    let finals = job.finish(Duration::from_secs(60));
    assert_eq!(finals.len(), 3);
    for f in &finals {
        assert_eq!(f.split(" loss").next(), expected.split(" loss").next());
    }
    let resumed = first_step_after(&job, &[0, 2, 4], killed, 3).expect("resumed with 3");
    eprintln!("kill of two → first step completed by 3 survivors: {resumed:?}");
    assert_no_commit_lost(&job, &[0, 2, 4]);
}

#[test]
fn sigstop_one_then_resume_it() {
    let steps = 200;
    let expected = reference(steps);
    let mut job = Job::start("stop1", 4, steps);
    job.wait_line(3, "step 20 ", Duration::from_secs(30));
    job.signal(3, "-STOP");
    let stopped = Instant::now();
    // A stopped process is silent, not dead: SWIM must declare it down and the rest go on.
    let resumed = loop {
        if let Some(d) = first_step_after(&job, &[0, 1, 2], stopped, 3) {
            break d;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "survivors stuck behind a stopped peer"
        );
        thread::sleep(Duration::from_millis(5));
    };
    eprintln!("SIGSTOP → first step completed by 3: {resumed:?}");
    thread::sleep(Duration::from_millis(500));
    job.signal(3, "-CONT");
    let finals = job.finish(Duration::from_secs(60));
    assert_eq!(finals.len(), 4, "the resumed worker finishes too");
    for f in &finals {
        assert_eq!(f.split(" loss").next(), expected.split(" loss").next());
    }
}

#[test]
fn the_whole_group_restarts_from_the_disk_checkpoint() {
    let steps = 100;
    let expected = reference(steps);
    let dir = std::env::temp_dir().join(format!("ringrun-elastic-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut job = Job::start_with("disk", 3, steps, Some(dir.clone()));
    job.wait_line(0, "step 45 ", Duration::from_secs(30));
    for node in 0..3 {
        job.kill(node);
    }
    drop(job);
    let mut job = Job::start_with("disk", 3, steps, Some(dir.clone()));
    let first = job.wait_line(0, "step ", Duration::from_secs(30));
    let resumed_at: u64 = job
        .lines(0)
        .iter()
        .find(|(t, _)| *t == first)
        .and_then(|(_, l)| l.split(' ').nth(1)?.parse().ok())
        .unwrap();
    assert!(
        (40..=50).contains(&resumed_at),
        "resumed at step {resumed_at}, not from the checkpoint"
    );
    let finals = job.finish(Duration::from_secs(60));
    for f in &finals {
        assert_eq!(f.split(" loss").next(), expected.split(" loss").next());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `n` workers with crash points and checks the survivors end with the reference model.
fn crash_run(name: &str, n: usize, crashes: &[(usize, &str)]) {
    let steps = 80;
    let expected = reference(steps);
    let mut job = Job::start_full(name, n, steps, None, crashes);
    let finals = job.finish(Duration::from_secs(60));
    assert_eq!(finals.len(), n - crashes.len());
    for f in &finals {
        assert_eq!(
            f.split(" loss").next(),
            expected.split(" loss").next(),
            "{f}"
        );
    }
    let survivors: Vec<usize> = (0..n)
        .filter(|i| !crashes.iter().any(|(c, _)| c == i))
        .collect();
    assert_no_commit_lost(&job, &survivors);
}

#[test]
fn crash_mid_allreduce() {
    crash_run("mid-allreduce", 4, &[(2, "allreduce:30")]);
}

#[test]
fn crash_mid_commit() {
    crash_run("mid-commit", 4, &[(1, "commit:30")]);
}

#[test]
fn crash_during_the_view_change_after_a_crash() {
    // Node 1 dies in a commit; node 3 dies entering the epoch that replaces it.
    crash_run("mid-view-change", 5, &[(1, "commit:30"), (3, "sync:2")]);
}
