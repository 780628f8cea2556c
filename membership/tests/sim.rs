//! Deterministic simulation over many seeds.
//!
//! `RINGRUN_SIM_SEEDS=<n>` runs `n` seeds per scenario (default: 6 in debug builds, 40 in
//! release builds); `SIM_SEED=<s>` runs exactly seed `s` (what a failure prints).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ringrun_membership::sim::{Link, Sim, SimConfig};

fn seeds(salt: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        return vec![seed.parse().expect("SIM_SEED is a u64")];
    }
    let default = if cfg!(debug_assertions) { 6 } else { 40 };
    let n = std::env::var("RINGRUN_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    (0..n).map(|i| salt * 1_000_003 + i).collect()
}

fn lossy(loss: f64) -> Link {
    Link {
        loss,
        duplicate: 0.01,
        ..Link::default()
    }
}

fn started(seed: u64, members: usize, link: Link) -> Sim {
    let mut config = SimConfig::new(seed, members);
    config.link = link;
    let mut sim = Sim::new(config);
    assert!(
        sim.run_until_converged(Duration::from_secs(10)),
        "SIM_SEED={seed}: initial join did not converge"
    );
    sim.assert_ok();
    sim
}

#[test]
fn crashes_are_detected_without_false_majorities() {
    for seed in seeds(1) {
        let mut rng = StdRng::seed_from_u64(seed);
        let loss = [0.0, 0.02, 0.05][(seed % 3) as usize];
        let n = 16;
        let mut sim = started(seed, n, lossy(loss));
        sim.run_for(Duration::from_secs(1));
        let victims = [rng.random_range(0..n), rng.random_range(0..n)];
        for victim in victims {
            sim.crash(victim);
            sim.run_for(Duration::from_millis(rng.random_range(0..500)));
        }
        let bound = sim.config().membership.detection_bound(n);
        sim.run_for(bound + Duration::from_millis(200));
        sim.assert_ok();
        for victim in victims {
            sim.restart(victim);
        }
        assert!(
            sim.run_until_converged(Duration::from_secs(10)),
            "SIM_SEED={seed}: restarted members were not re-admitted"
        );
        sim.run_for(Duration::from_secs(1));
        sim.assert_ok();
    }
}

#[test]
fn views_converge_after_a_partition_heals() {
    for seed in seeds(2) {
        let n = 12;
        let loss = [0.0, 0.05][(seed % 2) as usize];
        let mut sim = started(seed, n, lossy(loss));
        let left: Vec<usize> = (0..n / 2).collect();
        let right: Vec<usize> = (n / 2..n).collect();
        sim.partition(&[left, right]);
        sim.run_for(Duration::from_secs(3));
        sim.heal();
        let bound = sim.config().membership.convergence_bound(n);
        sim.run_for(bound + Duration::from_millis(100));
        sim.assert_ok();
        assert!(sim.converged(), "SIM_SEED={seed}: not converged after heal");
    }
}

#[test]
fn a_fast_restart_replaces_the_old_life() {
    for seed in seeds(3) {
        let n = 10;
        let mut sim = started(seed, n, Link::default());
        let victim = (seed % n as u64) as usize;
        let old = sim.node(victim).unwrap().identity().clone();
        sim.crash(victim);
        sim.run_for(Duration::from_millis(20));
        sim.restart(victim);
        let new = sim.node(victim).unwrap().identity().clone();
        assert!(new.incarnation > old.incarnation);
        assert!(
            sim.run_until_converged(Duration::from_secs(5)),
            "SIM_SEED={seed}: restart did not converge"
        );
        sim.assert_ok();
    }
}

#[test]
fn graceful_leave_is_reported_as_left() {
    for seed in seeds(4) {
        let n = 8;
        let mut sim = started(seed, n, Link::default());
        sim.leave(3);
        sim.run_for(Duration::from_millis(200));
        for k in sim.live() {
            let left = sim
                .node(k)
                .unwrap()
                .members()
                .into_iter()
                .any(|m| m.id.node.0 == 3 && m.state == ringrun_membership::MemberState::Left);
            assert!(
                left,
                "SIM_SEED={seed}: member {k} did not see member 3 leave"
            );
        }
        assert!(sim.converged());
        sim.assert_ok();
    }
}

#[test]
fn one_seed_reproduces_a_run_exactly() {
    let run = |seed| {
        let mut sim = started(seed, 10, lossy(0.05));
        sim.crash(4);
        sim.run_for(Duration::from_secs(2));
        (sim.fingerprint(), sim.stats().clone())
    };
    assert_eq!(run(77), run(77));
    assert_ne!(run(77).0, run(78).0);
}

#[test]
fn a_preloaded_start_is_converged_and_lean_bookkeeping_changes_nothing() {
    let run = |seed: u64, views: bool| {
        let n = 40;
        let mut config = SimConfig::converged(seed, n);
        config.views = views;
        config.link = lossy(0.02);
        let mut sim = Sim::new(config);
        assert!(sim.converged(), "SIM_SEED={seed}: preloaded start");
        sim.run_for(Duration::from_secs(1));
        sim.crash(5);
        sim.run_for(Duration::from_millis(150));
        sim.crash(17);
        let bound = sim.config().membership.detection_bound(n);
        sim.run_for(bound + Duration::from_millis(200));
        sim.assert_ok();
        let reports = sim.crash_reports();
        assert_eq!(reports.len(), 2);
        for report in &reports {
            assert_eq!(report.undetected(), 0, "SIM_SEED={seed}: {report:?}");
            assert!(report.observers >= n - 2, "SIM_SEED={seed}: {report:?}");
            assert!(report.detections.iter().all(|d| *d <= bound));
        }
        assert!(sim.converged(), "SIM_SEED={seed}: views after the crashes");
        (sim.fingerprint(), sim.stats().clone(), reports)
    };
    for seed in seeds(5).into_iter().take(3) {
        assert_eq!(run(seed, true), run(seed, false), "SIM_SEED={seed}");
    }
}
