//! Shared by the process-level tests (`loopback`, `netns`): the member role and the parent's
//! harness.
//!
//! A test binary re-executes itself: with `RINGRUN_MEMBER_ROLE=<node>` set, its
//! `member_process` test calls [`member_main`], which runs one member and reports on stdout:
//! `ADDR <socket address>` once bound, then `EV <UP|SUSPECT|DOWN|LEFT> <node> <rejoin>` per
//! membership event, `LOCAL <event>`, `STATS <dropped> <bad mac>` when asked (`stats` on
//! stdin), and `BYE` after leaving (on stdin EOF or after `RINGRUN_MEMBER_LIFETIME_S`,
//! default 60 s). Other variables: `RINGRUN_SEEDS` (comma-separated addresses),
//! `RINGRUN_SECRET`, `RINGRUN_BIND` (default `127.0.0.1:0`). Every other test is a parent
//! that spawns members through [`Cluster`] and reads those lines.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use ringrun_membership::{
    DriverConfig, JobId, Membership, MembershipConfig, MembershipEvent, Metadata, NodeId,
};

pub(crate) const SECRET: &str = "loopback-test-secret-0123456789";
pub(crate) const JOB: u64 = 7;

/// Whether this process was started as a member (the parent's tests then do nothing).
pub(crate) fn is_member() -> bool {
    std::env::var("RINGRUN_MEMBER_ROLE").is_ok()
}

/// Runs one member if `RINGRUN_MEMBER_ROLE` is set (see the module docs); returns at once
/// otherwise.
pub(crate) fn member_main() {
    let Ok(node) = std::env::var("RINGRUN_MEMBER_ROLE") else {
        return;
    };
    let node: u64 = node.parse().unwrap();
    let seeds: Vec<SocketAddr> = std::env::var("RINGRUN_SEEDS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let secret = std::env::var("RINGRUN_SECRET").unwrap();
    let bind: SocketAddr = std::env::var("RINGRUN_BIND")
        .unwrap_or_else(|_| "127.0.0.1:0".into())
        .parse()
        .unwrap();
    let lifetime: u64 = std::env::var("RINGRUN_MEMBER_LIFETIME_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let config = DriverConfig {
            bind,
            seeds,
            node: NodeId(node),
            meta: Metadata {
                host: "localhost".into(),
                device: "cpu".into(),
                local_rank: node as u32,
                ..Metadata::default()
            },
            job: JobId(JOB),
            secret: secret.into_bytes(),
            membership: MembershipConfig::default(),
            incarnation: None,
        };
        let (membership, mut events) = Membership::start(config).await.unwrap();
        println!("ADDR {}", membership.local_addr());
        // Commands on stdin: "stats" or EOF (leave). Read on a blocking thread.
        let (tx, mut commands) = tokio::sync::mpsc::channel::<String>(8);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    return;
                }
            }
        });
        // Bounded lifetime: a member never outlives its parent by long even if it vanishes.
        let deadline = tokio::time::sleep(Duration::from_secs(lifetime));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => println!("{}", event_line(&event)),
                    Err(_) => break,
                },
                command = commands.recv() => match command.as_deref() {
                    Some("stats") => {
                        let stats = membership.stats().await.unwrap();
                        let bad_mac = stats.dropped.get("authentication failed").copied().unwrap_or(0);
                        println!("STATS {} {}", stats.dropped_total(), bad_mac);
                    }
                    Some(_) => {}
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        membership.leave().await.unwrap();
        println!("BYE");
    });
}

fn event_line(event: &MembershipEvent) -> String {
    match event {
        MembershipEvent::Up(id) => format!("EV UP {} {}", id.node.0, id.rejoin),
        MembershipEvent::Suspect(id) => format!("EV SUSPECT {} {}", id.node.0, id.rejoin),
        MembershipEvent::Down(id) => format!("EV DOWN {} {}", id.node.0, id.rejoin),
        MembershipEvent::Left(id) => format!("EV LEFT {} {}", id.node.0, id.rejoin),
        MembershipEvent::Local(local) => format!("LOCAL {local:?}"),
    }
}

pub(crate) struct Line {
    pub(crate) from: u64,
    pub(crate) at: Instant,
    pub(crate) text: String,
}

pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start a member process: a command prefix (e.g. `ip netns exec NAME`) and the
/// address to bind.
#[derive(Clone, Debug)]
pub(crate) struct Launch {
    pub(crate) prefix: Vec<String>,
    pub(crate) bind: SocketAddr,
}

impl Default for Launch {
    fn default() -> Self {
        Self {
            prefix: Vec::new(),
            bind: "127.0.0.1:0".parse().unwrap(),
        }
    }
}

pub(crate) struct Cluster {
    pub(crate) procs: BTreeMap<u64, Proc>,
    lines: Receiver<Line>,
    tx: Sender<Line>,
    /// observer -> member -> (up?, rejoin)
    pub(crate) views: BTreeMap<u64, BTreeMap<u64, (bool, u16)>>,
    pub(crate) stats: BTreeMap<u64, (u64, u64)>,
}

impl Cluster {
    pub(crate) fn new() -> Self {
        let (tx, lines) = mpsc::channel();
        Self {
            procs: BTreeMap::new(),
            lines,
            tx,
            views: BTreeMap::new(),
            stats: BTreeMap::new(),
        }
    }

    /// `n` members on 127.0.0.1, member 0 the seed of the others.
    pub(crate) fn start(n: u64) -> Self {
        let mut cluster = Self::new();
        cluster.spawn(0, &[], SECRET);
        let seed = cluster.procs[&0].addr;
        for node in 1..n {
            cluster.spawn(node, &[seed], SECRET);
        }
        cluster
    }

    pub(crate) fn spawn(&mut self, node: u64, seeds: &[SocketAddr], secret: &str) -> SocketAddr {
        self.spawn_with(node, seeds, secret, &Launch::default(), 60)
            .expect("member printed its address")
    }

    /// Starts member `node` as `launch` says; `None` if it did not print its address within
    /// 20 s (it is killed then).
    pub(crate) fn spawn_with(
        &mut self,
        node: u64,
        seeds: &[SocketAddr],
        secret: &str,
        launch: &Launch,
        lifetime_s: u64,
    ) -> Option<SocketAddr> {
        let seeds: Vec<String> = seeds.iter().map(ToString::to_string).collect();
        let exe = std::env::current_exe().unwrap();
        let mut command = match launch.prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        let mut child = command
            .args([
                "member_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RINGRUN_MEMBER_ROLE", node.to_string())
            .env("RINGRUN_SEEDS", seeds.join(","))
            .env("RINGRUN_SECRET", secret)
            .env("RINGRUN_BIND", launch.bind.to_string())
            .env("RINGRUN_MEMBER_LIFETIME_S", lifetime_s.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (addr_tx, addr_rx) = mpsc::channel();
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(text) = line else { break };
                // libtest prints "test member_process ... " without a newline first.
                if let Some(addr) = text.find("ADDR ").map(|at| &text[at + 5..]) {
                    if let Some(addr_tx) = addr_tx.take() {
                        let _ = addr_tx.send(addr.parse::<SocketAddr>().unwrap());
                    }
                    continue;
                }
                let at = Instant::now();
                if tx
                    .send(Line {
                        from: node,
                        at,
                        text,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        // Killed on drop if it never reports its address.
        let mut proc = Proc {
            child,
            stdin,
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        proc.addr = addr_rx.recv_timeout(Duration::from_secs(20)).ok()?;
        let addr = proc.addr;
        self.views.insert(node, BTreeMap::new());
        self.procs.insert(node, proc);
        Some(addr)
    }

    fn apply(&mut self, line: &Line) {
        let words: Vec<&str> = line.text.split_whitespace().collect();
        match words.as_slice() {
            ["EV", kind, node, rejoin] => {
                let node: u64 = node.parse().unwrap();
                let rejoin: u16 = rejoin.parse().unwrap();
                let view = self.views.entry(line.from).or_default();
                let up = matches!(*kind, "UP" | "SUSPECT");
                // Ignore a late event about an older life.
                if view.get(&node).is_none_or(|(_, r)| rejoin >= *r) {
                    view.insert(node, (up, rejoin));
                }
            }
            ["STATS", total, bad_mac] => {
                self.stats.insert(
                    line.from,
                    (total.parse().unwrap(), bad_mac.parse().unwrap()),
                );
            }
            _ => {}
        }
    }

    /// Reads lines until `done` holds or `limit` passes; returns the time it held.
    pub(crate) fn wait(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        if done(self) {
            return Some(Instant::now());
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            self.apply(&line);
            if done(self) {
                return Some(line.at);
            }
        }
        None
    }

    pub(crate) fn sees(&self, observer: u64, member: u64) -> Option<(bool, u16)> {
        self.views.get(&observer)?.get(&member).copied()
    }

    pub(crate) fn converged(&self, members: &BTreeSet<u64>) -> bool {
        members.iter().all(|&o| {
            members
                .iter()
                .filter(|&&m| m != o)
                .all(|&m| self.sees(o, m).is_some_and(|(up, _)| up))
        })
    }

    pub(crate) fn ask_stats(&mut self, node: u64) {
        if let Some(stdin) = self.procs.get_mut(&node).and_then(|p| p.stdin.as_mut()) {
            let _ = writeln!(stdin, "stats");
        }
    }
}

pub(crate) fn all(n: u64) -> BTreeSet<u64> {
    (0..n).collect()
}

pub(crate) fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}
