//! Crash points for fault-injection tests.
//!
//! `RINGRUN_CRASH_AT=<point>:<n>` makes the process abort, as abruptly as a SIGKILL (no
//! destructors, no graceful leave), the first time it reaches `<point>` with a value of at least
//! `<n>`. Points: `allreduce` (value: the step set with `Group::set_step`; the process dies with
//! its peers inside the collective), `commit` (the step being committed; peers are inside the
//! commit's exchange), `sync` (the epoch being entered; peers are in the middle of the view
//! change). Tests use it to place a crash exactly where a timed signal rarely lands.

use std::sync::OnceLock;

/// Name of the environment variable.
pub const CRASH_AT_ENV: &str = "RINGRUN_CRASH_AT";

fn spec() -> &'static Option<(String, u64)> {
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let v = std::env::var(CRASH_AT_ENV).ok()?;
        let (point, n) = v.split_once(':')?;
        Some((point.to_string(), n.parse().ok()?))
    })
}

/// Aborts the process if the crash point `point` is armed for `value`.
pub(crate) fn crash_point(point: &str, value: u64) {
    if let Some((p, n)) = spec()
        && p == point
        && value >= *n
    {
        eprintln!("ringrun: crash point {point}:{value} reached; aborting");
        std::process::abort();
    }
}
