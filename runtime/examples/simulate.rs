//! Runs the whole-stack simulator (`ringrun_runtime::sim`) over many seeds.
//!
//! ```text
//! cargo run --release -p ringrun-runtime --example simulate -- --seeds N [--from S]
//! cargo run --release -p ringrun-runtime --example simulate -- --seed S     # replay one
//! ```
//!
//! `--trace` prints a replayed run's faults, views and epochs; `--max-faults N` draws up to N
//! faults per seed instead of 4 (a replay needs the same N).
//!
//! Prints every violation with the command that replays its seed, a summary (seeds per
//! second, events, epochs and commits per seed, recovery times), and last the line
//! `seeds N, violations V`. Exits with status 1 if there was any violation.

use std::{process::ExitCode, time::Instant};

use ringrun_runtime::sim::{self, SimConfig};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut from, mut count, mut trace, mut max_faults) = (0u64, 100u64, false, None);
    while let Some(arg) = args.next() {
        let mut value = || -> u64 {
            let v = args.next().unwrap_or_default();
            v.parse()
                .unwrap_or_else(|_| panic!("{arg} takes a number, not {v:?}"))
        };
        match arg.as_str() {
            "--seeds" => count = value(),
            "--from" => from = value(),
            "--seed" => (from, count) = (value(), 1),
            "--trace" => trace = true,
            "--max-faults" => max_faults = Some(value() as usize),
            other => panic!(
                "unknown argument {other:?} (--seeds N, --from S, --seed S, --trace, --max-faults N)"
            ),
        }
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
    let started = Instant::now();
    let (mut violations, mut events, mut epochs, mut commits, mut faults, mut recovery) =
        (0usize, 0u64, 0u64, 0u64, 0u64, Vec::new());
    let mut reports = 0u64;
    for seed in from..from + count {
        let drawn = SimConfig::from_seed(seed);
        let config = SimConfig {
            trace,
            max_faults: max_faults.unwrap_or(drawn.max_faults),
            ..drawn
        };
        let shape = format!("{config:?}");
        let report = sim::run(config);
        report.trace.iter().for_each(|l| println!("{l}"));
        events += report.events;
        epochs += report.epochs;
        commits += report.commits;
        faults += report.faults;
        reports += report.fault_reports;
        recovery.extend(report.recovered_in.map(|d| d.as_secs_f64()));
        for v in &report.violations {
            println!("{v}");
        }
        if !report.violations.is_empty() {
            violations += report.violations.len();
            println!("  run: {shape}");
            let faults = max_faults.map(|n| format!(" --max-faults {n}"));
            println!(
                "  replay: cargo run --release -p ringrun-runtime --example simulate -- --seed \
                 {seed}{} --trace",
                faults.unwrap_or_default()
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    recovery.sort_by(f64::total_cmp);
    let pick = |p: f64| {
        recovery
            .get(((recovery.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let n = count.max(1) as f64;
    println!(
        "{:.1} seeds/s; per seed: {:.0} events, {:.1} faults, {:.1} fault reports, {:.1} epochs, \
         {:.0} commits; recovery after the faults p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        count as f64 / secs,
        events as f64 / n,
        faults as f64 / n,
        reports as f64 / n,
        epochs as f64 / n,
        commits as f64 / n,
        pick(0.5),
        pick(0.99),
        pick(1.0),
    );
    println!("seeds {count}, violations {violations}");
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
