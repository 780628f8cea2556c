//! Real UDP on 127.0.0.1 with one process per member.
//!
//! The test binary re-executes itself as members (see `common`): with `RINGRUN_MEMBER_ROLE`
//! set, the `member_process` test runs one member and reports its events on stdout
//! (`EV <kind> <node> <rejoin>`); every other test is a parent that spawns members and reads
//! those lines.
//!
//! `RINGRUN_LOOPBACK_REPEAT=<n>` repeats the SIGKILL measurement `n` times and prints the
//! median detection time.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Cluster, JOB, SECRET, all, median};
use ringrun_membership::observer::ObserverConfig;
use ringrun_membership::{JobId, MembershipConfig, observe};

const MEMBERS: u64 = 8;

/// The clusters of different tests would compete for the 2 CI cores; run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn member_process() {
    common::member_main();
}

#[test]
fn sigkill_is_detected_and_wrong_secret_is_never_admitted() {
    if common::is_member() {
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
    if common::is_member() {
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
