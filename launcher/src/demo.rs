//! `ringrun demo`: the main job on a fresh machine. Four workers (by default) train the small
//! deterministic model of `ringrun train-worker` through `ringrun launch`'s machinery; the
//! requested workers are SIGKILLed at the requested steps, the survivors go on, the launcher
//! restarts the killed ones and they rejoin. The run ends with the loss curve, the fault report
//! and a check that the final model equals a fault-free run's, bit for bit.

use std::{
    collections::BTreeMap,
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    launch::{self, LaunchArgs, Report, supervisor::Event},
    train::{self, model::Problem},
};

/// Options of `ringrun demo`.
#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    #[command(flatten)]
    launch: LaunchArgs,
    /// Training steps.
    #[arg(long, default_value_t = 200)]
    steps: u64,
    /// Milliseconds of simulated computation per step.
    #[arg(long, default_value_t = 10)]
    step_ms: u64,
    /// SIGKILL the worker of launch rank RANK when it reaches STEP (repeatable).
    #[arg(long = "kill", value_name = "RANK@STEP")]
    kills: Vec<String>,
    /// Inject no faults (default: --kill 2@60 with 4 workers).
    #[arg(long)]
    no_faults: bool,
    /// End with one JSON object on the last line of standard output.
    #[arg(long)]
    json: bool,
}

struct Kill {
    rank: usize,
    step: u64,
    at: Option<(Instant, u64)>,
}

#[derive(Default)]
struct Seen {
    losses: BTreeMap<u64, f64>,
    faults: Vec<(usize, serde_json::Value)>,
    finals: BTreeMap<usize, String>,
}

pub(crate) fn main(mut args: DemoArgs) -> Result<ExitCode> {
    let np = *args.launch.nproc.get_or_insert(4);
    let mut kills = parse_kills(&args)?;
    if kills.iter().any(|k| k.rank >= np) {
        bail!("--kill names a rank outside --np {np}");
    }
    let exe = std::env::current_exe()?.display().to_string();
    let cmd = vec![
        exe,
        "train-worker".into(),
        "--steps".into(),
        args.steps.to_string(),
        "--step-ms".into(),
        args.step_ms.to_string(),
    ];
    let mut job = launch::start(&args.launch, cmd)?;
    let mut report = Report::default();
    let mut seen = Seen::default();
    let deadline =
        Instant::now() + Duration::from_secs(120 + args.steps * (args.step_ms + 20) / 1000);
    while !job.sup.finished() {
        if Instant::now() > deadline {
            job.sup
                .stop(rustix::process::Signal::TERM, Duration::from_secs(5));
            bail!("the demo did not finish in time");
        }
        for ev in job.sup.poll(Duration::from_millis(20))? {
            if let Event::Line {
                slot,
                text,
                stderr: false,
                ..
            } = &ev
            {
                seen.note(*slot, text);
                let rank = job.sup.slots()[*slot].rank;
                for k in kills
                    .iter_mut()
                    .filter(|k| k.at.is_none() && k.rank == rank)
                {
                    if step_of(text).is_some_and(|s| s >= k.step) {
                        job.sup.kill(*slot);
                        k.at = Some((Instant::now(), unix_ms()));
                        eprintln!("ringrun demo: SIGKILL worker {} at step {}", k.rank, k.step);
                    }
                }
            }
            if !args.json || !matches!(ev, Event::Line { stderr: false, .. }) {
                report.print(&job, &ev);
            }
        }
        for s in job.seen.try_iter() {
            report.membership(&job, &s);
        }
    }
    report.summary(&job);
    let (reference, _) = Problem::default().reference(args.steps);
    let expected = train::model_digest(&reference);
    let matches = !seen.finals.is_empty() && seen.finals.values().all(|d| *d == expected);
    print_curve(&seen.losses);
    let faults = fault_rows(&kills, &seen);
    print_faults(&faults);
    println!(
        "final model {} the fault-free reference ({} workers finished, {})",
        if matches { "matches" } else { "DOES NOT match" },
        seen.finals.len(),
        expected
    );
    if args.json {
        let obj = serde_json::json!({
            "world_size": np,
            "steps": args.steps,
            "final_loss": seen.losses.values().last(),
            "final_matches_reference": matches,
            "faults": faults,
        });
        println!("{obj}");
    }
    Ok(match matches && job.sup.succeeded() {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    })
}

fn parse_kills(args: &DemoArgs) -> Result<Vec<Kill>> {
    if args.no_faults {
        return Ok(Vec::new());
    }
    let specs = match args.kills.is_empty() {
        true => vec!["2@60".to_string()],
        false => args.kills.clone(),
    };
    specs
        .iter()
        .map(|s| {
            let (r, st) = s
                .split_once('@')
                .ok_or_else(|| anyhow::anyhow!("--kill {s}: want RANK@STEP"))?;
            Ok(Kill {
                rank: r.parse()?,
                step: st.parse()?,
                at: None,
            })
        })
        .collect()
}

fn step_of(line: &str) -> Option<u64> {
    line.strip_prefix("step ")?.split(' ').next()?.parse().ok()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Seen {
    fn note(&mut self, slot: usize, text: &str) {
        if let Some(step) = step_of(text)
            && let Some(loss) = text
                .split(" loss ")
                .nth(1)
                .and_then(|r| r.split(' ').next()?.parse().ok())
        {
            self.losses.insert(step, loss);
        } else if let Some(json) = text.strip_prefix("fault ") {
            if let Ok(v) = serde_json::from_str(json) {
                self.faults.push((slot, v));
            }
        } else if let Some(rest) = text.strip_prefix("final ") {
            self.finals
                .insert(slot, rest.split(' ').next().unwrap_or_default().to_string());
        }
    }
}

/// One row per injected kill, from the survivors' fault reports (the earliest of them).
fn fault_rows(kills: &[Kill], seen: &Seen) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    for k in kills {
        let Some((_, killed_ms)) = k.at else { continue };
        let reports: Vec<&serde_json::Value> = seen
            .faults
            .iter()
            .map(|(_, v)| v)
            .filter(|v| {
                v["detected_unix_ms"]
                    .as_u64()
                    .is_some_and(|d| d + 50 >= killed_ms)
            })
            .collect();
        let Some(first) = reports
            .iter()
            .min_by_key(|v| v["detected_unix_ms"].as_u64())
        else {
            continue;
        };
        let detected = first["detected_unix_ms"].as_u64().unwrap_or(killed_ms);
        let since_kill = |field: &str| {
            first[field]
                .as_f64()
                .map(|ms| (detected.saturating_sub(killed_ms)) as f64 + ms)
        };
        rows.push(serde_json::json!({
            "kind": "sigkill",
            "rank": k.rank,
            "step": k.step,
            "detect_ms": detected.saturating_sub(killed_ms),
            "epoch_ms": since_kill("epoch_ms"),
            "restore_ms": since_kill("restore_ms"),
            "resume_ms": since_kill("resume_ms"),
            "steps_rolled_back": reports.iter().filter_map(|v| v["steps_rolled_back"].as_u64()).max(),
        }));
    }
    rows
}

fn print_faults(rows: &[serde_json::Value]) {
    if rows.is_empty() {
        println!("fault report: no faults injected");
        return;
    }
    println!("fault report (ms after the SIGKILL):");
    println!("  rank  step  detect  epoch  restore  resume  rolled back");
    for r in rows {
        let f = |k: &str| r[k].as_f64().map_or("-".to_string(), |v| format!("{v:.0}"));
        println!(
            "  {:>4}  {:>4}  {:>6}  {:>5}  {:>7}  {:>6}  {:>11}",
            r["rank"],
            r["step"],
            f("detect_ms"),
            f("epoch_ms"),
            f("restore_ms"),
            f("resume_ms"),
            r["steps_rolled_back"]
        );
    }
}

/// A text plot of the loss per step: 60 columns, 10 rows.
fn print_curve(losses: &BTreeMap<u64, f64>) {
    let (Some(lo), Some(hi)) = (
        losses.values().copied().reduce(f64::min),
        losses.values().copied().reduce(f64::max),
    ) else {
        return;
    };
    let (cols, rows) = (60usize, 10usize);
    let last = *losses.keys().last().unwrap_or(&0) + 1;
    let mut grid = vec![vec![' '; cols]; rows];
    for (step, loss) in losses {
        let x = (*step as usize * cols / last as usize).min(cols - 1);
        let y = (((hi - loss) / (hi - lo).max(1e-12)) * (rows - 1) as f64).round() as usize;
        grid[y.min(rows - 1)][x] = '*';
    }
    println!("loss per step ({lo:.3} .. {hi:.3}):");
    for (i, row) in grid.iter().enumerate() {
        let label = hi - (hi - lo) * i as f64 / (rows - 1) as f64;
        println!("{label:>7.3} |{}", row.iter().collect::<String>());
    }
    println!("        +{}", "-".repeat(cols));
    println!("         step 0{:>width$}", last - 1, width = cols - 6);
}
