//! Real UDP on 127.0.0.1 with one process per member.
//!
//! The test binary re-executes itself: with `RINGRUN_MEMBER_ROLE` set, the `member_process`
//! test runs one member and reports its events on stdout (`EV <kind> <node> <rejoin>`); every
//! other test is a parent that spawns members and reads those lines.
//!
//! `RINGRUN_LOOPBACK_REPEAT=<n>` repeats the SIGKILL measurement `n` times and prints the
//! median detection time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use ringrun_membership::observer::ObserverConfig;
use ringrun_membership::{
    DriverConfig, JobId, Membership, MembershipConfig, MembershipEvent, Metadata, NodeId, observe,
};

const SECRET: &str = "loopback-test-secret-0123456789";
const JOB: u64 = 7;
const MEMBERS: u64 = 8;

/// The clusters of different tests would compete for the 2 CI cores; run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn member_process() {
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let config = DriverConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
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
        // Bounded lifetime: a member never outlives a minute even if its parent vanishes.
        let deadline = tokio::time::sleep(Duration::from_secs(60));
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

struct Line {
    from: u64,
    at: Instant,
    text: String,
}

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    procs: BTreeMap<u64, Proc>,
    lines: Receiver<Line>,
    tx: Sender<Line>,
    /// observer -> member -> (up?, rejoin)
    views: BTreeMap<u64, BTreeMap<u64, (bool, u16)>>,
    stats: BTreeMap<u64, (u64, u64)>,
}

impl Cluster {
    fn start(n: u64) -> Self {
        let (tx, lines) = mpsc::channel();
        let mut cluster = Self {
            procs: BTreeMap::new(),
            lines,
            tx,
            views: BTreeMap::new(),
            stats: BTreeMap::new(),
        };
        cluster.spawn(0, &[], SECRET);
        let seed = cluster.procs[&0].addr;
        for node in 1..n {
            cluster.spawn(node, &[seed], SECRET);
        }
        cluster
    }

    fn spawn(&mut self, node: u64, seeds: &[SocketAddr], secret: &str) -> SocketAddr {
        let seeds: Vec<String> = seeds.iter().map(ToString::to_string).collect();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "member_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RINGRUN_MEMBER_ROLE", node.to_string())
            .env("RINGRUN_SEEDS", seeds.join(","))
            .env("RINGRUN_SECRET", secret)
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
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("member printed its address");
        self.views.insert(node, BTreeMap::new());
        self.procs.insert(node, Proc { child, stdin, addr });
        addr
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
    fn wait(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> Option<Instant> {
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

    fn sees(&self, observer: u64, member: u64) -> Option<(bool, u16)> {
        self.views.get(&observer)?.get(&member).copied()
    }

    fn converged(&self, members: &BTreeSet<u64>) -> bool {
        members.iter().all(|&o| {
            members
                .iter()
                .filter(|&&m| m != o)
                .all(|&m| self.sees(o, m).is_some_and(|(up, _)| up))
        })
    }

    fn ask_stats(&mut self, node: u64) {
        if let Some(stdin) = self.procs.get_mut(&node).and_then(|p| p.stdin.as_mut()) {
            let _ = writeln!(stdin, "stats");
        }
    }
}

fn all(n: u64) -> BTreeSet<u64> {
    (0..n).collect()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[test]
fn sigkill_is_detected_and_wrong_secret_is_never_admitted() {
    if std::env::var("RINGRUN_MEMBER_ROLE").is_ok() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = MembershipConfig::default();
    let mut cluster = Cluster::start(MEMBERS);
    let members = all(MEMBERS);
    cluster
        .wait(Duration::from_secs(15), |c| c.converged(&members))
        .expect("8 members converge");

    // An intruder with the wrong secret, seeded with every member, is never admitted.
    let seeds: Vec<SocketAddr> = cluster.procs.values().map(|p| p.addr).collect();
    cluster.spawn(99, &seeds, "not-the-job-secret-at-all-000");
    let admitted = cluster.wait(Duration::from_millis(1500), |c| {
        members.iter().any(|&o| c.sees(o, 99).is_some()) || c.views[&99].values().any(|v| v.0)
    });
    assert!(
        admitted.is_none(),
        "a member with the wrong secret was admitted"
    );
    cluster.ask_stats(0);
    let (_, bad_mac) = cluster
        .wait(Duration::from_secs(5), |c| c.stats.contains_key(&0))
        .map(|_| cluster.stats[&0])
        .expect("member 0 reports its stats");
    assert!(bad_mac > 0, "member 0 counted no bad-MAC drops");
    drop(cluster.procs.remove(&99));

    // The observer API sees all 8 members alive; with the wrong secret it gets no answer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let observer = ObserverConfig {
        seeds: vec![cluster.procs[&0].addr],
        job: JobId(JOB),
        secret: SECRET.as_bytes().to_vec(),
        bind: "127.0.0.1:0".parse().unwrap(),
        timeout: Duration::from_secs(2),
    };
    let view = rt
        .block_on(observe(&observer))
        .expect("observer gets a view");
    let alive = view
        .members
        .iter()
        .filter(|m| m.state == ringrun_membership::MemberState::Alive)
        .count();
    assert_eq!(alive, MEMBERS as usize, "observer view: {view:?}");
    let json = serde_json::to_string(&view).unwrap();
    assert!(json.contains("\"local_rank\""));
    let wrong = ObserverConfig {
        secret: b"wrong-secret-wrong-secret".to_vec(),
        timeout: Duration::from_millis(400),
        ..observer
    };
    assert!(rt.block_on(observe(&wrong)).is_err());

    // SIGKILL one member; every survivor reports it down within the configured bound.
    let repeat: usize = std::env::var("RINGRUN_LOOPBACK_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let bound = config.detection_bound(MEMBERS as usize);
    let mut times = Vec::new();
    for round in 0..repeat {
        let victim = 1 + (round as u64 % (MEMBERS - 1));
        let survivors: BTreeSet<u64> = members.iter().copied().filter(|&m| m != victim).collect();
        let rejoin = cluster.sees(0, victim).map_or(0, |v| v.1);
        let mut proc = cluster.procs.remove(&victim).unwrap();
        let killed = Instant::now();
        proc.child.kill().unwrap();
        let _ = proc.child.wait();
        drop(proc);
        let detected = cluster
            .wait(bound * 3, |c| {
                survivors
                    .iter()
                    .all(|&o| c.sees(o, victim).is_some_and(|(up, r)| !up && r >= rejoin))
            })
            .expect("every survivor reports the killed member down");
        let took = detected - killed;
        times.push(took);
        assert!(
            took <= bound,
            "detection took {took:?}, bound {bound:?} (round {round})"
        );
        if round + 1 < repeat {
            // Bring the slot back as a new process (a new life) and wait for convergence.
            let seed = cluster.procs[&0].addr;
            cluster.spawn(victim, &[seed], SECRET);
            cluster
                .wait(Duration::from_secs(15), |c| c.converged(&members))
                .expect("restarted member is re-admitted");
        }
    }
    println!(
        "loopback SIGKILL detection: median {:?} over {} runs, min {:?}, max {:?} (bound {bound:?})",
        median(times.clone()),
        times.len(),
        times.iter().min().unwrap(),
        times.iter().max().unwrap()
    );
}

#[test]
fn sigstop_member_is_declared_down_and_rejoins_after_resume() {
    if std::env::var("RINGRUN_MEMBER_ROLE").is_ok() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = MembershipConfig::default();
    let mut cluster = Cluster::start(MEMBERS);
    let members = all(MEMBERS);
    cluster
        .wait(Duration::from_secs(15), |c| c.converged(&members))
        .expect("8 members converge");
    let victim = 3;
    let pid = cluster.procs[&victim].child.id().to_string();
    let survivors: BTreeSet<u64> = members.iter().copied().filter(|&m| m != victim).collect();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let bound = config.detection_bound(MEMBERS as usize);
    let down = cluster.wait(bound * 3, |c| {
        survivors
            .iter()
            .all(|&o| c.sees(o, victim).is_some_and(|(up, _)| !up))
    });
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(down.is_some(), "stopped member was not declared down");
    // After SIGCONT the member learns it was declared down, renews its identity (rejoin + 1)
    // and is re-admitted by everyone.
    cluster
        .wait(Duration::from_secs(15), |c| {
            c.converged(&members)
                && survivors
                    .iter()
                    .all(|&o| c.sees(o, victim).is_some_and(|(_, r)| r >= 1))
        })
        .expect("resumed member rejoins under a new identity");
}
