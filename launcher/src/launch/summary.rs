//! The end of a failed job, in torchrun's spirit: the first worker that failed (the root
//! cause), its exit code or signal, when, and where its log is; and the exit code that says
//! what happened.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | every worker finished successfully |
//! | 1 | a worker failed and no restart was allowed (`--max-restarts 0`) |
//! | 2 | bad command line |
//! | 3 | workers failed more often than `--max-restarts` allowed |
//! | 4 | the launcher could not start or run the job (configuration, ports, spawn) |
//! | 128+N | the launcher got signal N and stopped the workers |

use std::{
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::ExitStatus,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

/// Exit codes of `ringrun launch`.
pub(crate) mod code {
    pub(crate) const WORKER_FAILED: u8 = 1;
    pub(crate) const USAGE: u8 = 2;
    pub(crate) const RESTARTS_SPENT: u8 = 3;
    pub(crate) const LAUNCHER: u8 = 4;
}

/// One worker's failed exit.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) rank: usize,
    pub(crate) local_rank: usize,
    pub(crate) status: ExitStatus,
    pub(crate) at: Instant,
    pub(crate) wall: SystemTime,
    pub(crate) log: Option<PathBuf>,
}

/// `exitcode : 3` or `signal : 9 (SIGKILL)`.
pub(crate) fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exitcode  : {c}"),
        (None, Some(s)) => format!("signal    : {s} ({})", signal_name(s)),
        _ => format!("status    : {status}"),
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        1 => "SIGHUP",
        2 => "SIGINT",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// The summary's lines: the root cause first, then the other failures.
pub(crate) fn lines(
    program: &str,
    host: &str,
    failures: &[Failure],
    started: Instant,
) -> Vec<String> {
    let rule = "=".repeat(60);
    let thin = "-".repeat(60);
    let mut out = vec![rule.clone(), format!("{program} FAILED"), thin.clone()];
    let entry = |f: &Failure| {
        vec![
            format!("[{}]:", f.rank),
            format!(
                "  time      : {} (+{:.2}s)",
                utc(f.wall),
                f.at.duration_since(started).as_secs_f64()
            ),
            format!("  host      : {host}"),
            format!("  rank      : {} (local_rank: {})", f.rank, f.local_rank),
            format!("  {}", describe(&f.status)),
            format!(
                "  log       : {}",
                f.log
                    .as_ref()
                    .map_or("<none: run with --log-dir DIR>".into(), |p| p
                        .display()
                        .to_string())
            ),
        ]
    };
    out.push("Failures:".into());
    match failures.get(1..).filter(|rest| !rest.is_empty()) {
        None => out.push("  <NO_OTHER_FAILURES>".into()),
        Some(rest) => rest.iter().for_each(|f| out.extend(entry(f))),
    }
    out.push(thin);
    out.push("Root Cause (first observed failure):".into());
    if let Some(first) = failures.first() {
        out.extend(entry(first));
    }
    out.push(rule);
    out
}

/// `2026-12-03_04:10:55` (UTC), torchrun's format.
pub(crate) fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}_{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01_00:00:00");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661); // 2000-02-29 01:01:01
        assert_eq!(utc(t), "2000-02-29_01:01:01");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_271_055);
        assert_eq!(utc(t), "2026-12-03_04:10:55");
    }

    #[test]
    fn the_root_cause_is_the_first_failure() {
        let started = Instant::now();
        let f = |rank, raw| Failure {
            rank,
            local_rank: rank,
            status: ExitStatus::from_raw(raw),
            at: started,
            wall: UNIX_EPOCH,
            log: (rank == 1).then(|| PathBuf::from("/logs/worker-1.log")),
        };
        let text = lines("train.py", "h", &[f(1, 3 << 8), f(0, 9)], started).join("\n");
        let root = text.split("Root Cause").nth(1).unwrap();
        assert!(root.contains("rank      : 1 (local_rank: 1)"), "{text}");
        assert!(root.contains("exitcode  : 3"), "{text}");
        assert!(root.contains("/logs/worker-1.log"), "{text}");
        let others = text.split("Root Cause").next().unwrap();
        assert!(others.contains("signal    : 9 (SIGKILL)"), "{text}");
        let alone = lines("x", "h", &[f(0, 1 << 8)], started).join("\n");
        assert!(alone.contains("<NO_OTHER_FAILURES>"), "{alone}");
    }
}
