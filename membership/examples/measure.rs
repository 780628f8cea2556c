//! Simulator measurements: detection time, packets per member per period, false positives.
//!
//! `cargo run --release -p ringrun-membership --features sim --example measure -- [SIZES]`
//! where SIZES is a comma-separated list of cluster sizes (default `50,1000`). Each row runs
//! several seeds: join, 20 quiet periods (packet count), kill 5 members, wait.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ringrun_membership::sim::{Link, Sim, SimConfig};

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let idx = ((values.len() - 1) as f64 * p).round() as usize;
    values[idx]
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "50,1000".into())
        .split(',')
        .map(|s| s.parse().expect("cluster size"))
        .collect();
    println!(
        "| members | loss | seeds | join (s) | first Down p50 (periods) | all survivors p50 / p90 / max (periods) | same in s (p50 / p90 / max) | undetected | false Downs | pkts/member/period quiet | pkts/member/period with failures | wall (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        for loss in [0.0, 0.05] {
            let seeds: u64 = if n <= 100 {
                40
            } else if n <= 1000 {
                3
            } else {
                1
            };
            let wall = Instant::now();
            let mut first = Vec::new();
            let mut all = Vec::new();
            let mut undetected = 0;
            let mut false_downs = 0;
            let mut quiet_rate = Vec::new();
            let mut busy_rate = Vec::new();
            let mut joins = Vec::new();
            for seed in 0..seeds {
                let mut config = SimConfig::new(seed, n);
                config.trace = false;
                config.link = Link {
                    loss,
                    ..Link::default()
                };
                let period = config.membership.probe_period.as_secs_f64();
                let mut sim = Sim::new(config);
                let converged = sim.run_until_converged(Duration::from_secs(120));
                joins.push(sim.now().since_epoch().as_secs_f64());
                if !converged {
                    eprintln!("n={n} loss={loss} seed={seed}: join did not converge");
                }
                sim.run_for(Duration::from_secs(1));
                let before = sim.stats().sent;
                let quiet = 20;
                sim.run_for(Duration::from_secs_f64(period * quiet as f64));
                quiet_rate.push((sim.stats().sent - before) as f64 / (n as f64 * quiet as f64));
                let mut rng = StdRng::seed_from_u64(seed ^ 0xdead);
                let before = sim.stats().sent;
                let mut victims = Vec::new();
                while victims.len() < 5 {
                    let v = rng.random_range(0..n);
                    if !victims.contains(&v) {
                        victims.push(v);
                    }
                }
                for &v in &victims {
                    sim.crash(v);
                }
                let window = 100;
                sim.run_for(Duration::from_secs_f64(period * window as f64));
                busy_rate
                    .push((sim.stats().sent - before) as f64 / ((n - 5) as f64 * window as f64));
                for t in sim.first_detection_times().into_iter().flatten() {
                    first.push(t.as_secs_f64() / period);
                }
                for t in sim.detection_times() {
                    match t {
                        Some(t) => all.push(t.as_secs_f64() / period),
                        None => undetected += 1,
                    }
                }
                false_downs += sim.stats().false_downs;
                if !sim.violations().is_empty() {
                    eprintln!("n={n} loss={loss}: {:?}", sim.violations());
                }
            }
            let p50 = percentile(&mut all, 0.5);
            let p90 = percentile(&mut all, 0.9);
            let max = percentile(&mut all, 1.0);
            println!(
                "| {n} | {:.0} % | {seeds} | {:.1} | {:.2} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {undetected} | {false_downs} | {:.2} | {:.2} | {:.1} |",
                loss * 100.0,
                percentile(&mut joins, 0.5),
                percentile(&mut first, 0.5),
                p50,
                p90,
                max,
                p50 * 0.1,
                p90 * 0.1,
                max * 0.1,
                percentile(&mut quiet_rate, 0.5),
                percentile(&mut busy_rate, 0.5),
                wall.elapsed().as_secs_f64()
            );
        }
    }
}
