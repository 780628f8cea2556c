//! What a member reports about itself to whoever asks (a launcher's dashboard, `ringrun
//! status`): its epoch, rank and step, its commits and step rate, its collectives' counts,
//! bytes and latency histograms, the scalars the training loop logged, and its fault reports.
//!
//! The group updates a [`Progress`] as it goes (one uncontended lock per collective); the driver
//! thread turns it into a [`Report`] when a sealed `ReportRequest` arrives on the control
//! socket. Nothing is pushed: a member that nobody asks costs one lock and two clock reads per
//! collective, and the scalars it keeps are bounded.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{
    FaultEvent,
    member::MemberKey,
    report,
    straggler::{self, Straggler},
};

/// Upper bounds, in seconds, of the collective latency histogram's buckets (the last bucket,
/// +Inf, is implied).
pub const LATENCY_BUCKETS: [f64; 12] = [
    1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0,
];

/// The collectives a member counts, in [`Report::collectives`] order.
pub const COLLECTIVES: [&str; 6] = [
    "allreduce",
    "broadcast",
    "allgather",
    "reduce_scatter",
    "barrier",
    "alltoall",
];

/// The [`LATENCY_BUCKETS`] bucket of `secs` (the last index, one past the bounds, is +Inf).
pub fn latency_bucket(secs: f64) -> usize {
    LATENCY_BUCKETS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(LATENCY_BUCKETS.len())
}

/// The index in [`COLLECTIVES`] of a collective's name (unknown names count as allreduces).
pub fn kind_of(name: &str) -> usize {
    COLLECTIVES
        .iter()
        .position(|c| name.contains(c))
        .unwrap_or(0)
}

/// Scalars kept for reports; older ones are dropped first.
const SCALARS_KEPT: usize = 4096;
/// Scalars in one report (a report is one datagram).
pub const SCALARS_PER_REPORT: usize = 512;
/// Fault reports in one report (the newest).
const FAULTS_PER_REPORT: usize = 32;
/// Commits the step rate is measured over.
const RATE_WINDOW: usize = 20;
/// Steps the straggler window spans unless configured.
const DEFAULT_WINDOW: usize = 10;

/// One kind of collective's totals.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CollectiveStats {
    /// Calls that completed.
    pub count: u64,
    /// Their total time, in seconds.
    pub seconds: f64,
    /// Payload bytes (this rank's buffer).
    pub bytes: u64,
    /// Calls per [`LATENCY_BUCKETS`] bucket (not cumulative), then the +Inf bucket.
    pub buckets: Vec<u64>,
}

/// A value the training loop logged (`ringrun.log(step, loss=...)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scalar {
    /// Its sequence number in this member's log (0 first).
    pub seq: u64,
    /// The step it belongs to.
    pub step: u64,
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: f64,
}

/// A fault report as a report carries it (times in milliseconds from the first sign).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// Epoch that ended.
    pub from_epoch: u64,
    /// Epoch resumed in.
    pub to_epoch: u64,
    /// Members before.
    pub size_before: u32,
    /// Members after.
    pub size_after: u32,
    /// Wall clock of the first sign (ms since the Unix epoch).
    pub detected_unix_ms: u64,
    /// First sign → new epoch installed.
    pub installed_ms: f64,
    /// First sign → state restored.
    pub restored_ms: f64,
    /// First sign → first collective done.
    pub resumed_ms: f64,
    /// Steps rolled back.
    pub rolled_back: u64,
    /// What ended the epoch.
    pub reason: String,
}

impl From<&FaultEvent> for FaultRecord {
    fn from(e: &FaultEvent) -> FaultRecord {
        FaultRecord {
            from_epoch: e.from_epoch,
            to_epoch: e.to_epoch,
            size_before: e.size_before as u32,
            size_after: e.size_after as u32,
            detected_unix_ms: e.detected_unix_ms,
            installed_ms: report::ms(e.to_installed),
            restored_ms: report::ms(e.to_restored),
            resumed_ms: report::ms(e.to_first_collective),
            rolled_back: e.steps_rolled_back,
            reason: e.reason.clone(),
        }
    }
}

/// What a member answers a `ReportRequest` with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The member.
    pub member: Option<MemberKey>,
    /// Its wall clock when it answered (ms since the Unix epoch).
    pub unix_ms: u64,
    /// Epoch, rank and size it is in (0, 0, 0 before the first).
    pub epoch: u64,
    /// Its rank in that epoch.
    pub rank: u32,
    /// That epoch's size.
    pub size: u32,
    /// The step it is working on (`set_step`, or the last commit's).
    pub step: u64,
    /// Commits made by this process.
    pub commits: u64,
    /// The newest commit: step and wall clock (ms).
    pub last_commit: Option<(u64, u64)>,
    /// Commits per second over the last few.
    pub steps_per_s: f64,
    /// Per kind, in [`COLLECTIVES`] order.
    pub collectives: Vec<CollectiveStats>,
    /// Logged scalars after the requested sequence number (at most [`SCALARS_PER_REPORT`]).
    pub scalars: Vec<Scalar>,
    /// The sequence number the next logged scalar will get.
    pub next_seq: u64,
    /// The newest fault reports.
    pub faults: Vec<FaultRecord>,
    /// Per-step averages over the newest commits of this epoch (none before two commits).
    pub window: Option<Window>,
    /// Datagrams it dropped as unauthenticated or malformed (filled in by its driver).
    #[serde(default)]
    pub dropped: Dropped,
}

/// Datagrams a member dropped as unauthenticated or malformed, by socket, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// On its membership (SWIM) socket.
    pub membership: u64,
    /// On its control socket (agreement, reports).
    pub control: u64,
}

/// A member's averages per step over its newest commits (the straggler window): what the
/// straggler check compares across ranks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Steps the window spans.
    pub steps: u32,
    /// Wall time per step, in seconds.
    pub step_s: f64,
    /// Time per step outside collectives (the rank's own work), in seconds.
    pub compute_s: f64,
    /// Time per step spent waiting for each peer's frames, by peer rank, in seconds.
    pub link_wait_s: Vec<f64>,
    /// Each link's round trip (the least over the window, see `rtt`), by peer rank, in
    /// seconds; `None` where it was not measured.
    #[serde(default)]
    pub link_rtt_s: Vec<Option<f64>>,
}

/// One commit, for the window.
struct Sample {
    at: Instant,
    collective_s: f64,
    waits: Vec<Duration>,
    round_trips: Vec<Option<Duration>>,
}

/// A member's running totals, shared by the group and its driver thread.
#[derive(Clone, Default)]
pub struct Progress(Arc<Mutex<Totals>>);

#[derive(Default)]
struct Totals {
    /// Commits the window spans (0: [`DEFAULT_WINDOW`]).
    window_steps: usize,
    window: VecDeque<Sample>,
    epoch: u64,
    rank: u32,
    size: u32,
    step: u64,
    commits: u64,
    last_commit: Option<(u64, u64)>,
    commit_times: VecDeque<Instant>,
    collectives: [CollectiveStats; COLLECTIVES.len()],
    scalars: VecDeque<Scalar>,
    next_seq: u64,
    faults: Vec<FaultRecord>,
}

/// The wall clock in milliseconds since the Unix epoch, as reports carry it.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Totals {
    fn span(&self) -> usize {
        match self.window_steps {
            0 => DEFAULT_WINDOW,
            n => n,
        }
    }
}

impl Progress {
    fn lock(&self) -> MutexGuard<'_, Totals> {
        // Totals are consistent between statements; a panic elsewhere loses nothing here.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A record whose straggler window spans `steps` commits.
    pub fn new(steps: u32) -> Progress {
        let p = Progress::default();
        p.lock().window_steps = steps as usize;
        p
    }

    /// Commits the straggler window spans.
    pub(crate) fn window_span(&self) -> usize {
        self.lock().span()
    }

    /// The epoch the member entered (its links, ranks and waits start afresh).
    pub(crate) fn entered(&self, epoch: u64, rank: usize, size: usize) {
        let mut t = self.lock();
        (t.epoch, t.rank, t.size) = (epoch, rank as u32, size as u32);
        t.window.clear();
    }

    /// The step the caller works on.
    pub(crate) fn step(&self, step: u64) {
        self.lock().step = step;
    }

    /// A collective of kind `kind` (an index into [`COLLECTIVES`]) completed.
    pub fn collective(&self, kind: usize, bytes: usize, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = latency_bucket(secs);
        let mut t = self.lock();
        let c = &mut t.collectives[kind];
        c.count += 1;
        c.seconds += secs;
        c.bytes += bytes as u64;
        if c.buckets.is_empty() {
            c.buckets = vec![0; LATENCY_BUCKETS.len() + 1];
        }
        c.buckets[bucket] += 1;
    }

    /// A commit of `step`; `waits` are the epoch's cumulative link waits by peer rank, and
    /// `round_trips` each link's newest round trip.
    pub(crate) fn committed(
        &self,
        step: u64,
        waits: Vec<Duration>,
        round_trips: Vec<Option<Duration>>,
    ) {
        let mut t = self.lock();
        t.commits += 1;
        t.step = step;
        t.last_commit = Some((step, unix_ms()));
        if t.commit_times.len() == RATE_WINDOW {
            t.commit_times.pop_front();
        }
        let now = Instant::now();
        t.commit_times.push_back(now);
        if t.window.len() > t.span() {
            t.window.pop_front();
        }
        let collective_s = t.collectives.iter().map(|c| c.seconds).sum();
        t.window.push_back(Sample {
            at: now,
            collective_s,
            waits,
            round_trips,
        });
    }

    /// A recovery completed.
    pub(crate) fn fault(&self, e: &FaultEvent) {
        self.lock().faults.push(e.into());
    }

    /// Logs named values for `step`.
    pub fn log<'a>(&self, step: u64, values: impl IntoIterator<Item = (&'a str, f64)>) {
        let mut t = self.lock();
        for (name, value) in values {
            if t.scalars.len() == SCALARS_KEPT {
                t.scalars.pop_front();
            }
            let seq = t.next_seq;
            t.next_seq += 1;
            t.scalars.push_back(Scalar {
                seq,
                step,
                name: name.to_string(),
                value,
            });
        }
    }

    /// The report for a requester that has every scalar before `since`.
    pub fn report(&self, member: MemberKey, since: u64) -> Report {
        let t = self.lock();
        let steps_per_s = match (t.commit_times.front(), t.commit_times.back()) {
            (Some(a), Some(b)) if t.commit_times.len() > 1 && b > a => {
                (t.commit_times.len() - 1) as f64 / (*b - *a).as_secs_f64()
            }
            _ => 0.0,
        };
        Report {
            member: Some(member),
            unix_ms: unix_ms(),
            epoch: t.epoch,
            rank: t.rank,
            size: t.size,
            step: t.step,
            commits: t.commits,
            last_commit: t.last_commit,
            steps_per_s,
            collectives: t.collectives.to_vec(),
            scalars: t
                .scalars
                .iter()
                .filter(|s| s.seq >= since)
                .take(SCALARS_PER_REPORT)
                .cloned()
                .collect(),
            next_seq: t.next_seq,
            faults: t.faults[t.faults.len().saturating_sub(FAULTS_PER_REPORT)..].to_vec(),
            window: window(&t.window),
            dropped: Dropped::default(),
        }
    }
}

/// The stragglers among `reports` (each member's newest): [`straggler::find`] over their
/// windows.
pub fn stragglers<'a>(
    reports: impl IntoIterator<Item = &'a Report>,
    factor: f64,
    min_steps: u32,
) -> Vec<Straggler> {
    let windows: Vec<(u32, u64, &Window)> = reports
        .into_iter()
        .filter_map(|r| Some((r.rank, r.epoch, r.window.as_ref()?)))
        .collect();
    straggler::find(&windows, factor, min_steps)
}

/// Per-step averages between the window's first and last commits.
fn window(samples: &VecDeque<Sample>) -> Option<Window> {
    let (first, last) = (samples.front()?, samples.back()?);
    let steps = samples.len() - 1;
    if steps == 0 {
        return None;
    }
    let per = |x: f64| x / steps as f64;
    let step_s = per((last.at - first.at).as_secs_f64());
    let in_collectives = per(last.collective_s - first.collective_s);
    let link_wait_s = last
        .waits
        .iter()
        .enumerate()
        .map(|(p, w)| {
            let before = first.waits.get(p).copied().unwrap_or_default();
            per(w.saturating_sub(before).as_secs_f64())
        })
        .collect();
    Some(Window {
        steps: steps as u32,
        step_s,
        compute_s: (step_s - in_collectives).max(0.0),
        link_wait_s,
        link_rtt_s: last
            .round_trips
            .iter()
            .map(|d| d.map(|d| d.as_secs_f64()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MemberKey {
        MemberKey {
            incarnation: 1,
            node: 2,
        }
    }

    #[test]
    fn counts_collectives_into_buckets_and_reports_scalars_after_a_cursor() {
        let p = Progress::default();
        p.collective(0, 8, Duration::from_micros(5));
        p.collective(0, 8, Duration::from_secs(10));
        p.collective(4, 0, Duration::from_millis(2));
        p.log(3, [("loss", 0.5), ("lr", 0.1)]);
        p.log(4, [("loss", 0.25)]);
        let r = p.report(key(), 1);
        let all = &r.collectives[0];
        assert_eq!((all.count, all.bytes), (2, 16));
        assert_eq!(all.buckets[0], 1);
        assert_eq!(all.buckets[LATENCY_BUCKETS.len()], 1, "10 s lands in +Inf");
        assert_eq!(r.collectives[4].buckets[5], 1, "2 ms is under 3 ms");
        let names: Vec<_> = r.scalars.iter().map(|s| (s.seq, s.name.as_str())).collect();
        assert_eq!(names, [(1, "lr"), (2, "loss")]);
        assert_eq!(r.next_seq, 3);
    }

    #[test]
    fn the_scalar_log_is_bounded_and_a_report_fits_a_datagram() {
        let p = Progress::default();
        for step in 0..(SCALARS_KEPT as u64 + 10) {
            p.log(step, [("a_rather_long_scalar_name", step as f64)]);
        }
        let r = p.report(key(), 0);
        assert_eq!(r.scalars.len(), SCALARS_PER_REPORT);
        assert_eq!(r.scalars[0].seq, 10, "the oldest were dropped");
        let bytes = postcard::to_allocvec(&r).unwrap();
        assert!(bytes.len() < 60_000, "{} bytes", bytes.len());
    }

    #[test]
    fn the_step_rate_comes_from_commit_times() {
        let p = Progress::default();
        assert_eq!(p.report(key(), 0).steps_per_s, 0.0);
        for step in 0..3 {
            let rtt = Duration::from_micros(100 * (step + 1));
            p.committed(
                step,
                vec![Duration::ZERO, Duration::from_millis(step)],
                vec![None, Some(rtt)],
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let r = p.report(key(), 0);
        assert!(
            r.steps_per_s > 10.0 && r.steps_per_s < 150.0,
            "{}",
            r.steps_per_s
        );
        assert_eq!(r.last_commit.map(|c| c.0), Some(2));
        let w = r.window.expect("three commits make a window");
        assert_eq!(w.steps, 2);
        assert!(w.step_s >= 0.01 && w.compute_s <= w.step_s, "{w:?}");
        assert_eq!(w.link_wait_s, [0.0, 0.001]);
        assert_eq!(w.link_rtt_s, [None, Some(0.0003)]);
    }
}
