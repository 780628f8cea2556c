//! Simulator measurements: detection time, packets per member per period, false positives.
//!
//! ```text
//! cargo run --release -p ringrun-membership --features sim --example measure -- \
//!     [SIZES] [--seeds S1,S2,..] [--victims V] [--quiet P] [--loss L1,L2,..]
//! ```
//!
//! SIZES is a comma-separated list of cluster sizes (default `50,1000`); `--seeds` gives the
//! seeds per size (default 20 up to 100 members, 2 up to 1,000, 1 above); `--victims` the
//! members crashed per seed (default 5); `--quiet` the length of the failure-free window in
//! probe periods (default 50); `--loss` the loss rates (default `0,0.05`).
//!
//! Every run starts converged ([`SimConfig::converged`]: every member preloaded with the full
//! roster, lean bookkeeping), runs 10 periods, counts datagrams over the quiet window, then
//! crashes the victims one by one at random instants spread over the next `victims` periods
//! and runs until the last crash plus the detection bound plus 10 periods. Detection delays
//! are measured per (victim, survivor) pair: the time from the crash to that survivor's
//! first `Down` event about the victim. The last column is the peak resident set of the
//! process so far (rows grow, so it is the row's own peak when sizes are given in increasing
//! order).

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ringrun_membership::MembershipConfig;
use ringrun_membership::sim::{Link, Sim, SimConfig};

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let idx = ((values.len() - 1) as f64 * p).round() as usize;
    values[idx]
}

fn list<T: std::str::FromStr>(text: &str) -> Vec<T> {
    text.split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad list element {s:?}"))
        })
        .collect()
}

fn peak_rss_gib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / (1024.0 * 1024.0))
}

struct Options {
    sizes: Vec<usize>,
    seeds: Option<Vec<u64>>,
    victims: usize,
    quiet: u32,
    losses: Vec<f64>,
}

fn options() -> Options {
    let mut opts = Options {
        sizes: vec![50, 1000],
        seeds: None,
        victims: 5,
        quiet: 50,
        losses: vec![0.0, 0.05],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().expect("option value");
        match arg.as_str() {
            "--seeds" => opts.seeds = Some(list(&value())),
            "--victims" => opts.victims = value().parse().expect("victims"),
            "--quiet" => opts.quiet = value().parse().expect("quiet periods"),
            "--loss" => opts.losses = list(&value()),
            sizes => opts.sizes = list(sizes),
        }
    }
    opts
}

#[derive(Default)]
struct Row {
    /// Per (victim, survivor): delay to that survivor's first `Down`, in periods.
    pairs: Vec<f64>,
    /// Per victim: delay until the last survivor declared it down, in periods.
    last: Vec<f64>,
    undetected: usize,
    victims: usize,
    false_downs: u64,
    quiet_rate: Vec<f64>,
    busy_rate: Vec<f64>,
    start_wall: Vec<f64>,
    violations: usize,
}

fn run_seed(n: usize, loss: f64, seed: u64, opts: &Options, row: &mut Row) {
    let mut config = SimConfig::converged(seed, n);
    config.link = Link {
        loss,
        ..Link::default()
    };
    let period = config.membership.probe_period;
    let bound = config.membership.detection_bound(n);
    let started = Instant::now();
    let mut sim = Sim::new(config);
    row.start_wall.push(started.elapsed().as_secs_f64());

    sim.run_for(period * 10);
    let before = sim.stats().sent;
    sim.run_for(period * opts.quiet);
    row.quiet_rate
        .push((sim.stats().sent - before) as f64 / (n as f64 * f64::from(opts.quiet)));

    let mut rng = StdRng::seed_from_u64(seed ^ 0xdead_beef);
    let victims = opts.victims.min(n.saturating_sub(2));
    let mut chosen: Vec<usize> = Vec::new();
    while chosen.len() < victims {
        let v = rng.random_range(0..n);
        if !chosen.contains(&v) {
            chosen.push(v);
        }
    }
    let span = (period * victims as u32).as_micros() as u64;
    let mut offsets: Vec<u64> = (0..victims)
        .map(|_| rng.random_range(0..span.max(1)))
        .collect();
    offsets.sort_unstable();
    let t0 = sim.now();
    let before = sim.stats().sent;
    // Member-periods of live members over the failure window.
    let mut member_time = 0.0;
    let mut live = n as f64;
    let mut last = t0;
    for (&v, &offset) in chosen.iter().zip(&offsets) {
        let at = t0 + Duration::from_micros(offset);
        sim.run_until(at);
        member_time += live * at.saturating_since(last).as_secs_f64();
        last = at;
        sim.crash(v);
        live -= 1.0;
    }
    let end = last + bound + period * 10;
    sim.run_until(end);
    member_time += live * end.saturating_since(last).as_secs_f64();
    row.busy_rate
        .push((sim.stats().sent - before) as f64 / (member_time / period.as_secs_f64()));

    for report in sim.crash_reports() {
        row.victims += 1;
        row.undetected += report.undetected();
        let delays: Vec<f64> = report
            .detections
            .iter()
            .map(|d| d.as_secs_f64() / period.as_secs_f64())
            .collect();
        if report.undetected() == 0
            && let Some(&max) = delays.last()
        {
            row.last.push(max);
        }
        row.pairs.extend(delays);
    }
    row.false_downs += sim.stats().false_downs;
    row.violations += sim.violations().len();
    for v in sim.violations() {
        eprintln!("n={n} loss={loss} seed={seed}: {v}");
    }
}

fn main() {
    let opts = options();
    let defaults = MembershipConfig::default();
    let period_s = defaults.probe_period.as_secs_f64();
    println!(
        "| members | loss | seeds x victims | Down delay per survivor p50 / p90 / p99 / max (periods) | same (s) | all survivors per victim p50 / max (periods) | bound (periods) | undetected | false Downs | pkts/member/period quiet | with failures | start wall (s) | row wall (s) | peak RSS (GiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (idx, &n) in opts.sizes.iter().enumerate() {
        let seeds = opts.seeds.as_ref().map_or_else(
            || match n {
                0..=100 => 20,
                101..=1000 => 2,
                _ => 1,
            },
            |s| s[idx.min(s.len() - 1)],
        );
        for &loss in &opts.losses {
            let wall = Instant::now();
            let mut row = Row::default();
            for seed in 0..seeds {
                run_seed(n, loss, seed, &opts, &mut row);
            }
            let p50 = percentile(&mut row.pairs, 0.5);
            let p90 = percentile(&mut row.pairs, 0.9);
            let p99 = percentile(&mut row.pairs, 0.99);
            let max = percentile(&mut row.pairs, 1.0);
            let bound = defaults.detection_bound(n).as_secs_f64() / period_s;
            println!(
                "| {n} | {:.0} % | {seeds} x {} | {p50:.2} / {p90:.2} / {p99:.2} / {max:.2} | {:.2} / {:.2} / {:.2} / {:.2} | {:.2} / {:.2} | {bound:.1} | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2} |",
                loss * 100.0,
                row.victims / seeds as usize,
                p50 * period_s,
                p90 * period_s,
                p99 * period_s,
                max * period_s,
                percentile(&mut row.last, 0.5),
                percentile(&mut row.last, 1.0),
                row.undetected,
                row.false_downs,
                percentile(&mut row.quiet_rate, 0.5),
                percentile(&mut row.busy_rate, 0.5),
                percentile(&mut row.start_wall, 0.5),
                wall.elapsed().as_secs_f64(),
                peak_rss_gib(),
            );
            if row.violations > 0 {
                eprintln!("n={n} loss={loss}: {} invariant violations", row.violations);
            }
        }
    }
}
