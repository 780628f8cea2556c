//! `ringrun data-check DIR`: reads the data ledger the workers wrote (`RINGRUN_DATA_LEDGER`)
//! and reports, per sampler and data epoch, any index missing or read more than once by the
//! job's history (`ringrun_runtime::sampler::ledger::check`).

use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Args;
use ringrun_runtime::sampler::ledger::{self, Record, StreamReport};

/// Options of `ringrun data-check`.
#[derive(Args, Debug)]
pub(crate) struct DataCheckArgs {
    /// The ledger directory (`RINGRUN_DATA_LEDGER` of the job).
    dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn main(args: DataCheckArgs) -> anyhow::Result<ExitCode> {
    let (records, files, torn) = read_dir(&args.dir)?;
    let reports = ledger::check(&records);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&as_json(&reports))?);
    } else {
        println!(
            "ringrun data-check: {files} ledger files, {} records{}",
            records.len(),
            match torn {
                0 => String::new(),
                n => format!(" ({n} torn lines skipped)"),
            }
        );
        for r in &reports {
            print!("{}", render(r));
        }
    }
    let ok = !reports.is_empty() && reports.iter().all(StreamReport::ok);
    if reports.is_empty() {
        eprintln!("ringrun data-check: no records in {}", args.dir.display());
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every record of every `*.jsonl` file in `dir`, the number of files, and the number of
/// lines that do not parse (a worker killed mid-write leaves at most its last line torn).
fn read_dir(dir: &std::path::Path) -> anyhow::Result<(Vec<Record>, usize, usize)> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let (mut records, mut files, mut torn) = (Vec::new(), 0, 0);
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str(line) {
                Ok(r) => records.push(r),
                Err(_) => torn += 1,
            }
        }
    }
    Ok((records, files, torn))
}

fn render(r: &StreamReport) -> String {
    let mut s = String::new();
    if let Some(spec) = &r.spec {
        let _ = writeln!(
            s,
            "sampler: num_samples {}, global_batch {}, seed {}, shuffle {}",
            spec.num_samples, spec.global_batch, spec.seed, spec.shuffle
        );
    }
    let _ = writeln!(
        s,
        "  history: {} global batches up to offset {}; {} shares read by rolled-back steps",
        r.batches, r.end, r.superseded
    );
    let _ = writeln!(
        s,
        "  {:>10} {:>10} {:>10} {:>8} {:>9}",
        "data epoch", "positions", "read once", "missing", "repeated"
    );
    for d in &r.data_epochs {
        let _ = writeln!(
            s,
            "  {:>10} {:>10} {:>10} {:>8} {:>9}",
            d.data_epoch, d.positions, d.once, d.missing, d.repeated
        );
    }
    let listed = |v: &[u64]| v.iter().take(8).map(u64::to_string).collect::<Vec<_>>();
    if !r.gaps.is_empty() {
        let _ = writeln!(s, "  offsets never read: {}", listed(&r.gaps).join(", "));
    }
    for (offset, ranks) in r.incomplete.iter().take(8) {
        let _ = writeln!(s, "  offset {offset}: no share recorded by ranks {ranks:?}");
    }
    if !r.wrong_batches.is_empty() {
        let _ = writeln!(
            s,
            "  offsets whose global batch is not the sampler's: {}",
            listed(&r.wrong_batches).join(", ")
        );
    }
    let verdict = if r.ok() { "yes" } else { "NO" };
    let _ = writeln!(s, "  every index exactly once per data epoch: {verdict}");
    s
}

fn as_json(reports: &[StreamReport]) -> serde_json::Value {
    let streams: Vec<_> = reports
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).expect("a report always encodes");
            v["ok"] = r.ok().into();
            v
        })
        .collect();
    serde_json::json!({ "samplers": streams })
}
