//! The whole-stack simulator over a few hundred seeds (`RINGRUN_SIM_SEEDS` sets how many):
//! no invariant may break. `cargo run --release -p ringrun-runtime --example simulate --
//! --seeds 10000` runs many more; a violation's message gives the seed that replays it.

use ringrun_runtime::sim::{self, SimConfig};

#[test]
fn no_seed_breaks_an_invariant() {
    let seeds: u64 = std::env::var("RINGRUN_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut violations = Vec::new();
    let (mut faults, mut commits) = (0, 0);
    for seed in 0..seeds {
        let report = sim::run(SimConfig::from_seed(seed));
        violations.extend(report.violations);
        faults += report.faults;
        commits += report.commits;
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // The runs did inject faults and did train.
    assert!(faults > seeds, "{faults} faults in {seeds} seeds");
    assert!(commits > 100 * seeds, "{commits} commits in {seeds} seeds");
}

#[test]
fn a_seed_replays_exactly() {
    let run = |seed| {
        let r = sim::run(SimConfig {
            trace: true,
            ..SimConfig::from_seed(seed)
        });
        (r.events, r.delivered, r.commits, r.trace)
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}
