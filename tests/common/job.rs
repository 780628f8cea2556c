//! The elastic-test harness: a job of `ringrun train-worker` processes (on loopback or in
//! network namespaces) whose output lines are collected with timestamps.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use super::ports::free_udp_port;

pub const EXE: &str = env!("CARGO_BIN_EXE_ringrun");
pub const SECRET: &str = "elastic-test-secret-0123456789";

pub type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

pub struct Worker {
    child: Child,
    lines: Lines,
}

pub struct Job {
    name: String,
    ports: Vec<u16>,
    steps: u64,
    initial: usize,
    /// `RINGRUN_MAX_SIZE`, if set.
    pub max_size: Option<usize>,
    checkpoints: Option<std::path::PathBuf>,
    crash_at: Vec<(usize, String)>,
    /// Per member: the namespace to run in and the address to bind (None: loopback).
    hosts: Option<Vec<(String, String)>>,
    workers: Vec<Option<Worker>>,
    finished: Vec<Lines>,
}

impl Job {
    pub fn start(name: &str, n: usize, steps: u64) -> Job {
        Job::start_with(name, n, steps, None)
    }

    pub fn start_with(
        name: &str,
        n: usize,
        steps: u64,
        checkpoints: Option<std::path::PathBuf>,
    ) -> Job {
        Job::start_full(name, n, steps, checkpoints, &[])
    }

    /// `crash_at`: (node, `point:value`) crash points (see `ringrun_runtime::failpoint`).
    pub fn start_full(
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
            max_size: None,
            checkpoints,
            crash_at: crash_at.iter().map(|(n, c)| (*n, c.to_string())).collect(),
            hosts: None,
            workers: (0..n).map(|_| None).collect(),
            finished: Vec::new(),
        };
        for node in 0..n {
            job.spawn(node);
        }
        job
    }

    /// A job of `n` slots where only the first `running` are started, with a world size cap.
    pub fn start_capped(name: &str, n: usize, running: usize, steps: u64, max: usize) -> Job {
        let mut job = Job {
            name: format!("{name}-{}", std::process::id()),
            ports: (0..n).map(|_| free_udp_port()).collect(),
            steps,
            initial: max,
            max_size: Some(max),
            checkpoints: None,
            crash_at: Vec::new(),
            hosts: None,
            workers: (0..n).map(|_| None).collect(),
            finished: Vec::new(),
        };
        for node in 0..running {
            job.spawn(node);
        }
        job
    }

    /// Member `i` runs inside namespace `hosts[i].0`, bound to `hosts[i].1` (members sharing a
    /// namespace take consecutive membership ports from 7400).
    pub fn start_in_namespaces(name: &str, steps: u64, hosts: Vec<(String, String)>) -> Job {
        let n = hosts.len();
        let ports = (0..n)
            .map(|i| 7400 + hosts[..i].iter().filter(|h| h.0 == hosts[i].0).count() as u16)
            .collect();
        let mut job = Job {
            name: format!("{name}-{}", std::process::id()),
            ports,
            steps,
            initial: n,
            max_size: None,
            checkpoints: None,
            crash_at: Vec::new(),
            hosts: Some(hosts),
            workers: (0..n).map(|_| None).collect(),
            finished: Vec::new(),
        };
        for node in 0..n {
            job.spawn(node);
        }
        job
    }

    fn ip_of(&self, node: usize) -> String {
        self.hosts
            .as_ref()
            .map_or_else(|| "127.0.0.1".into(), |h| h[node].1.clone())
    }

    fn command(&self, node: usize) -> Command {
        match &self.hosts {
            None => Command::new(EXE),
            Some(h) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &h[node].0, EXE]);
                c
            }
        }
    }

    pub fn spawn(&mut self, node: usize) {
        let seeds: Vec<String> = (0..self.ports.len())
            .map(|i| format!("{}:{}", self.ip_of(i), self.ports[i]))
            .collect();
        let crash = self
            .crash_at
            .iter()
            .find(|(n, _)| *n == node)
            .map(|(_, c)| c.clone());
        let mut child = self
            .command(node)
            .args([
                "train-worker",
                "--steps",
                &self.steps.to_string(),
                "--step-ms",
                "15",
            ])
            .env("RINGRUN_SECRET", SECRET)
            .env("RINGRUN_RUN_ID", &self.name)
            .env("RINGRUN_BIND", self.ip_of(node))
            .env("RINGRUN_NODE_ID", node.to_string())
            .env("RINGRUN_MEMBER_PORT", self.ports[node].to_string())
            .env("RINGRUN_SEEDS", seeds.join(","))
            .env("RINGRUN_INITIAL_SIZE", self.initial.to_string())
            .env("RINGRUN_MIN_SIZE", "2")
            .env(
                "RINGRUN_MAX_SIZE",
                self.max_size.map(|m| m.to_string()).unwrap_or_default(),
            )
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

    /// The job's run id (`RINGRUN_RUN_ID`).
    pub fn run_id(&self) -> &str {
        &self.name
    }

    /// `ringrun status --json` for this job, asked of `seed`, run under `prefix` (`ip netns
    /// exec NS` from a namespace; empty: here); the error says why it gave no report.
    pub fn status(&self, seed: &str, prefix: &[&str]) -> Result<serde_json::Value, String> {
        let (program, args) = match prefix {
            [] => (EXE, Vec::new()),
            [first, rest @ ..] => (*first, [rest, &[EXE]].concat()),
        };
        let out = Command::new(program)
            .args(args)
            .args([
                "status",
                "--json",
                "--seeds",
                seed,
                "--job-id",
                self.run_id(),
            ])
            .args(["--timeout", "3"])
            .env("RINGRUN_SECRET", SECRET)
            .output()
            .map_err(|e| format!("ringrun status: {e}"))?;
        serde_json::from_slice(&out.stdout).map_err(|e| {
            let stderr = String::from_utf8_lossy(&out.stderr);
            format!("ringrun status: {e}: {}", stderr.trim())
        })
    }

    /// Worker `node`'s process id and membership port.
    pub fn process(&self, node: usize) -> (u32, u16) {
        let w = self.workers[node].as_ref().expect("a running worker");
        (w.child.id(), self.ports[node])
    }

    pub fn lines(&self, node: usize) -> Vec<(Instant, String)> {
        self.workers[node]
            .as_ref()
            .unwrap()
            .lines
            .lock()
            .unwrap()
            .clone()
    }

    /// Waits (bounded) until `node` has printed a line starting with `prefix`.
    pub fn wait_line(&self, node: usize, prefix: &str, within: Duration) -> Instant {
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

    pub fn signal(&self, node: usize, sig: &str) {
        let pid = self.workers[node].as_ref().unwrap().child.id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    pub fn kill(&mut self, node: usize) -> Instant {
        let mut w = self.workers[node].take().unwrap();
        w.child.kill().unwrap();
        let at = Instant::now();
        w.child.wait().unwrap();
        self.finished.push(w.lines);
        at
    }

    /// Waits for every running worker to exit successfully; returns their final lines.
    pub fn finish(&mut self, within: Duration) -> Vec<String> {
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

pub fn reference(steps: u64) -> String {
    let out = Command::new(EXE)
        .args(["train-worker", "--reference", "--steps", &steps.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The first `step` line after `t` printed with world size `size` by any of `nodes`.
pub fn first_step_after(job: &Job, nodes: &[usize], t: Instant, size: usize) -> Option<Duration> {
    let tag = format!(" size {size} ");
    nodes
        .iter()
        .flat_map(|n| job.lines(*n))
        .filter(|(at, l)| *at > t && l.starts_with("step ") && l.contains(&tag))
        .map(|(at, _)| at - t)
        .min()
}

pub fn assert_no_commit_lost(job: &Job, nodes: &[usize]) {
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
