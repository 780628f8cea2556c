//! The dashboard's model of the job (pure): members as SWIM reported them, with their history
//! (a failed or departed member stays listed with its state and when), merged with each
//! member's latest report; the faults, one row per epoch change however many members reported
//! it; and the training curves. `/api/status`, `/metrics` and the page all read it.

use std::collections::BTreeMap;

use ringrun_runtime::{
    member::MemberKey,
    progress::{self, COLLECTIVES, FaultRecord, Report, Scalar},
    straggler::Straggler,
};
use serde::Serialize;

/// Points kept per curve; beyond, every other point is dropped (the curve keeps its shape).
const CURVE_POINTS: usize = 4000;
/// Members that left or failed kept listed.
const HISTORY: usize = 64;

/// One member, as the page lists it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MemberRow {
    /// SWIM node id and the life (restart incarnation) of the process.
    pub(crate) node: u64,
    pub(crate) incarnation: u64,
    pub(crate) host: String,
    pub(crate) launch_rank: Option<u32>,
    pub(crate) addr: String,
    /// `up`, `suspect`, `down` (failed) or `left`.
    pub(crate) state: &'static str,
    /// When it entered that state (ms since the Unix epoch).
    pub(crate) since_unix_ms: u64,
    /// From its latest report: rank and epoch (`None` before the first report).
    pub(crate) rank: Option<u32>,
    pub(crate) epoch: Option<u64>,
    pub(crate) step: Option<u64>,
    pub(crate) steps_per_s: Option<f64>,
    /// The newest commit: step and wall clock.
    pub(crate) last_commit: Option<(u64, u64)>,
    #[serde(skip)]
    pub(crate) control: Option<std::net::SocketAddr>,
    #[serde(skip)]
    pub(crate) report: Option<Report>,
}

/// One recovery: the epoch change, and each phase as the fastest reporting member saw it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FaultRow {
    pub(crate) from_epoch: u64,
    pub(crate) to_epoch: u64,
    pub(crate) size_before: u32,
    pub(crate) size_after: u32,
    pub(crate) detected_unix_ms: u64,
    pub(crate) installed_ms: f64,
    pub(crate) restored_ms: f64,
    pub(crate) resumed_ms: f64,
    pub(crate) rolled_back: u64,
    pub(crate) reason: String,
}

/// The whole job as this launcher sees it.
#[derive(Debug, Default)]
pub(crate) struct JobView {
    pub(crate) run_id: String,
    pub(crate) started_unix_ms: u64,
    /// Restarts this launcher made.
    pub(crate) restarts: u32,
    members: BTreeMap<MemberKey, MemberRow>,
    faults: BTreeMap<(u64, u64), FaultRow>,
    curves: BTreeMap<String, BTreeMap<u64, f64>>,
    /// Per member: the next scalar sequence number wanted.
    cursors: BTreeMap<MemberKey, u64>,
    /// Stragglers: the factor over the median, and the steps a window must span.
    pub(crate) straggler_rule: (f64, u32),
}

/// What SWIM said about a member.
pub(crate) struct Sighting {
    pub(crate) key: MemberKey,
    pub(crate) state: &'static str,
    pub(crate) host: String,
    pub(crate) launch_rank: Option<u32>,
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) control: std::net::SocketAddr,
}

impl JobView {
    pub(crate) fn new(run_id: &str, started_unix_ms: u64) -> JobView {
        JobView {
            run_id: run_id.into(),
            started_unix_ms,
            straggler_rule: (1.5, 10),
            ..JobView::default()
        }
    }

    /// A membership event.
    pub(crate) fn saw(&mut self, s: Sighting, now_ms: u64) {
        let row = self.members.entry(s.key).or_insert_with(|| MemberRow {
            node: s.key.node,
            incarnation: s.key.incarnation,
            host: s.host.clone(),
            launch_rank: s.launch_rank,
            addr: s.addr.to_string(),
            state: s.state,
            since_unix_ms: now_ms,
            rank: None,
            epoch: None,
            step: None,
            steps_per_s: None,
            last_commit: None,
            control: Some(s.control),
            report: None,
        });
        if row.state != s.state {
            row.state = s.state;
            row.since_unix_ms = now_ms;
        }
        self.forget_old();
    }

    /// Keeps the newest [`HISTORY`] members that are gone.
    fn forget_old(&mut self) {
        let mut gone: Vec<(u64, MemberKey)> = self
            .members
            .iter()
            .filter(|(_, r)| matches!(r.state, "down" | "left"))
            .map(|(k, r)| (r.since_unix_ms, *k))
            .collect();
        if gone.len() > HISTORY {
            gone.sort();
            for (_, k) in &gone[..gone.len() - HISTORY] {
                self.members.remove(k);
                self.cursors.remove(k);
            }
        }
    }

    /// Members to ask for a report: the live ones, with the scalar cursor of each.
    pub(crate) fn to_poll(&self) -> Vec<(MemberKey, std::net::SocketAddr, u64)> {
        self.members
            .iter()
            .filter(|(_, r)| matches!(r.state, "up" | "suspect"))
            .filter_map(|(k, r)| Some((*k, r.control?, *self.cursors.get(k).unwrap_or(&0))))
            .collect()
    }

    /// A member's report.
    pub(crate) fn reported(&mut self, r: Report) {
        let Some(key) = r.member.filter(|k| self.members.contains_key(k)) else {
            return;
        };
        for f in &r.faults {
            self.fault(f);
        }
        for s in &r.scalars {
            add_point(&mut self.curves, s);
        }
        if let Some(last) = r.scalars.last() {
            let cursor = self.cursors.entry(key).or_default();
            *cursor = (*cursor).max(last.seq + 1);
        }
        let row = self.members.get_mut(&key).expect("checked above");
        row.rank = Some(r.rank);
        row.epoch = Some(r.epoch);
        row.step = Some(r.step);
        row.steps_per_s = Some(r.steps_per_s);
        row.last_commit = r.last_commit;
        row.report = Some(r);
    }

    fn fault(&mut self, f: &FaultRecord) {
        let row = self
            .faults
            .entry((f.from_epoch, f.to_epoch))
            .or_insert_with(|| FaultRow {
                from_epoch: f.from_epoch,
                to_epoch: f.to_epoch,
                size_before: f.size_before,
                size_after: f.size_after,
                detected_unix_ms: f.detected_unix_ms,
                installed_ms: f.installed_ms,
                restored_ms: f.restored_ms,
                resumed_ms: f.resumed_ms,
                rolled_back: f.rolled_back,
                reason: f.reason.clone(),
            });
        // The earliest first sign over the members, and each phase as the fastest saw it.
        row.detected_unix_ms = row.detected_unix_ms.min(f.detected_unix_ms);
        row.installed_ms = row.installed_ms.min(f.installed_ms);
        row.restored_ms = row.restored_ms.min(f.restored_ms);
        row.resumed_ms = row.resumed_ms.min(f.resumed_ms);
        row.rolled_back = row.rolled_back.max(f.rolled_back);
    }

    /// Live members' reports.
    pub(crate) fn reports(&self) -> impl Iterator<Item = (&MemberRow, &Report)> {
        self.members
            .values()
            .filter(|r| r.state == "up")
            .filter_map(|r| Some((r, r.report.as_ref()?)))
    }

    /// The newest epoch a live member reports, and its size.
    pub(crate) fn epoch(&self) -> (u64, u32) {
        self.reports()
            .map(|(_, r)| (r.epoch, r.size))
            .max()
            .unwrap_or((0, 0))
    }

    /// The stragglers the live members' windows show.
    pub(crate) fn stragglers(&self) -> Vec<Straggler> {
        let (factor, steps) = self.straggler_rule;
        progress::stragglers(self.reports().map(|(_, r)| r), factor, steps)
    }

    /// Members per state.
    pub(crate) fn states(&self) -> BTreeMap<&'static str, usize> {
        let mut n = BTreeMap::new();
        for s in ["up", "suspect", "down", "left"] {
            n.insert(s, 0);
        }
        for r in self.members.values() {
            *n.entry(r.state).or_default() += 1;
        }
        n
    }

    pub(crate) fn faults(&self) -> impl Iterator<Item = &FaultRow> {
        self.faults.values()
    }

    /// `/api/status`.
    pub(crate) fn status_json(&self, now_ms: u64) -> serde_json::Value {
        let (epoch, size) = self.epoch();
        let curves: BTreeMap<&str, Vec<(u64, f64)>> = self
            .curves
            .iter()
            .map(|(name, pts)| (name.as_str(), pts.iter().map(|(s, v)| (*s, *v)).collect()))
            .collect();
        let collectives: Vec<_> = COLLECTIVES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let (count, seconds, bytes) = self
                    .reports()
                    .filter_map(|(_, r)| r.collectives.get(i))
                    .fold((0, 0.0, 0), |a, c| (a.0 + c.count, a.1 + c.seconds, a.2 + c.bytes));
                serde_json::json!({"collective": name, "count": count, "seconds": seconds, "bytes": bytes})
            })
            .collect();
        serde_json::json!({
            "run_id": self.run_id,
            "uptime_s": now_ms.saturating_sub(self.started_unix_ms) as f64 / 1e3,
            "epoch": epoch,
            "world_size": size,
            "restarts": self.restarts,
            "members": self.members.values().collect::<Vec<_>>(),
            "faults": self.faults.values().collect::<Vec<_>>(),
            "curves": curves,
            "collectives": collectives,
            "stragglers": self.stragglers().iter().map(|s| serde_json::json!({
                "rank": s.rank, "blame": s.blame, "seconds": s.seconds,
                "median_s": s.median_s, "steps": s.steps, "message": s.to_string(),
            })).collect::<Vec<_>>(),
        })
    }
}

fn add_point(curves: &mut BTreeMap<String, BTreeMap<u64, f64>>, s: &Scalar) {
    let pts = curves.entry(s.name.clone()).or_default();
    pts.insert(s.step, s.value);
    if pts.len() > CURVE_POINTS {
        let keep: BTreeMap<u64, f64> = pts.iter().step_by(2).map(|(k, v)| (*k, *v)).collect();
        *pts = keep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(node: u64, life: u64) -> MemberKey {
        MemberKey {
            incarnation: life,
            node,
        }
    }

    fn sighting(node: u64, life: u64, state: &'static str) -> Sighting {
        Sighting {
            key: key(node, life),
            state,
            host: "h".into(),
            launch_rank: Some(node as u32),
            addr: "127.0.0.1:1".parse().unwrap(),
            control: "127.0.0.1:2".parse().unwrap(),
        }
    }

    fn fault(from: u64, installed: f64) -> FaultRecord {
        FaultRecord {
            from_epoch: from,
            to_epoch: from + 1,
            size_before: 4,
            size_after: 3,
            detected_unix_ms: 1000 + from,
            installed_ms: installed,
            restored_ms: installed + 5.0,
            resumed_ms: installed + 6.0,
            rolled_back: 1,
            reason: "peer lost".into(),
        }
    }

    #[test]
    fn a_failed_member_stays_listed_beside_its_restart() {
        let mut v = JobView::new("job", 0);
        v.saw(sighting(1, 1, "up"), 10);
        v.saw(sighting(1, 1, "down"), 20);
        v.saw(sighting(1, 2, "up"), 30);
        let rows: Vec<_> = v
            .members
            .values()
            .map(|r| (r.incarnation, r.state, r.since_unix_ms))
            .collect();
        assert_eq!(rows, [(1, "down", 20), (2, "up", 30)]);
        assert_eq!(v.to_poll().len(), 1);
        assert_eq!(v.states()["down"], 1);
    }

    #[test]
    fn reports_merge_faults_curves_and_advance_the_cursor() {
        let mut v = JobView::new("job", 0);
        for n in 0..2 {
            v.saw(sighting(n, 1, "up"), 0);
        }
        for (n, installed) in [(0, 30.0), (1, 20.0)] {
            v.reported(Report {
                member: Some(key(n, 1)),
                epoch: 3,
                size: 2,
                faults: vec![fault(2, installed)],
                scalars: vec![Scalar {
                    seq: 7,
                    step: 5,
                    name: "loss".into(),
                    value: 0.5,
                }],
                next_seq: 8,
                ..Report::default()
            });
        }
        let faults: Vec<_> = v.faults().map(|f| (f.from_epoch, f.installed_ms)).collect();
        assert_eq!(
            faults,
            [(2, 20.0)],
            "one row per epoch change, the fastest phase"
        );
        assert_eq!(v.epoch(), (3, 2));
        assert_eq!(v.to_poll()[0].2, 8);
        let json = v.status_json(5000);
        assert_eq!(json["curves"]["loss"][0], serde_json::json!([5, 0.5]));
        assert_eq!(json["members"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn curves_are_bounded() {
        let mut curves = BTreeMap::new();
        for step in 0..(CURVE_POINTS as u64 * 3) {
            let s = Scalar {
                seq: step,
                step,
                name: "loss".into(),
                value: 1.0,
            };
            add_point(&mut curves, &s);
        }
        assert!(curves["loss"].len() <= CURVE_POINTS);
    }
}
