//! `/metrics`: the job in the OpenMetrics text format (which Prometheus scrapes), encoded by `prometheus-client` from a
//! snapshot of the [`JobView`] at each scrape.

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, text::encode},
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use ringrun_runtime::{
    progress::{COLLECTIVES, LATENCY_BUCKETS, latency_bucket},
    straggler::Blame,
};

use super::view::JobView;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RankLabel {
    rank: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StragglerLabels {
    rank: String,
    /// `rank` (the rank itself), `network` (its links to most peers) or `link`.
    blame: String,
    /// The other end of a slow link (empty otherwise).
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CollectiveLabels {
    collective: String,
    rank: String,
}

/// A histogram whose buckets were counted elsewhere (a member's report, the faults).
#[derive(Debug, Default)]
struct Counted {
    sum: f64,
    count: u64,
    /// (upper bound, calls in this bucket alone), +Inf last.
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for Counted {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<Vec<(String, String)>>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A family of [`Counted`] histograms.
#[derive(Debug, Default)]
struct CountedFamily(Vec<(CollectiveLabels, Counted)>);

impl EncodeMetric for CountedFamily {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, h) in &self.0 {
            h.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Per-bucket counts against [`LATENCY_BUCKETS`] and +Inf.
fn with_bounds(counts: &[u64]) -> Vec<(f64, u64)> {
    let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
    bounds.zip(counts.iter().copied()).collect()
}

/// The text exposition of `view`.
pub(crate) fn render(view: &JobView) -> String {
    let mut reg = Registry::default();
    let (epoch, size) = view.epoch();
    let gauge = |v: i64| {
        let g: Gauge = Gauge::default();
        g.set(v);
        g
    };
    reg.register(
        "ringrun_epoch",
        "The newest installed epoch",
        gauge(epoch as i64),
    );
    reg.register(
        "ringrun_world_size",
        "Members of that epoch",
        gauge(i64::from(size)),
    );
    let members = Family::<StateLabel, Gauge>::default();
    for (state, n) in view.states() {
        let label = StateLabel {
            state: state.into(),
        };
        members.get_or_create(&label).set(n as i64);
    }
    reg.register(
        "ringrun_members",
        "Members by SWIM state (up, suspect, down, left)",
        members,
    );
    let faults: Counter = Counter::default();
    faults.inc_by(view.faults().count() as u64);
    reg.register("ringrun_faults", "Recoveries the job went through", faults);
    let restarts: Counter = Counter::default();
    restarts.inc_by(u64::from(view.restarts));
    reg.register(
        "ringrun_restarts",
        "Workers this launcher restarted",
        restarts,
    );
    register_members(&mut reg, view);
    let stragglers = Family::<StragglerLabels, Gauge>::default();
    for s in view.stragglers() {
        let (blame, peer) = match s.blame {
            Blame::Rank => ("rank", String::new()),
            Blame::Network => ("network", String::new()),
            Blame::Link { peer } => ("link", peer.to_string()),
        };
        let labels = StragglerLabels {
            rank: s.rank.to_string(),
            blame: blame.into(),
            peer,
        };
        stragglers.get_or_create(&labels).set(1);
    }
    reg.register(
        "ringrun_straggler",
        "1 for each flagged straggler: the rank itself, its network, or its link to rank `peer`",
        stragglers,
    );
    let restore = Counted {
        sum: view.faults().map(|f| f.restored_ms / 1e3).sum(),
        count: view.faults().count() as u64,
        buckets: with_bounds(&restore_buckets(view)),
    };
    reg.register(
        "ringrun_restore_seconds",
        "First sign of a fault to the state restored, per recovery",
        restore,
    );
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

/// The per-rank families: steps, and each collective's latency histogram and bytes.
fn register_members(reg: &mut Registry, view: &JobView) {
    let steps = Family::<RankLabel, Gauge>::default();
    let compute = Family::<RankLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let bytes = Family::<CollectiveLabels, Counter>::default();
    let mut latency = CountedFamily::default();
    for (row, report) in view.reports() {
        let rank = report.rank.to_string();
        steps
            .get_or_create(&RankLabel { rank: rank.clone() })
            .set(row.step.unwrap_or(0) as i64);
        if let Some(w) = &report.window {
            compute
                .get_or_create(&RankLabel { rank: rank.clone() })
                .set(w.compute_s);
        }
        for (name, c) in COLLECTIVES.iter().zip(&report.collectives) {
            if c.count == 0 {
                continue;
            }
            let labels = CollectiveLabels {
                collective: (*name).into(),
                rank: rank.clone(),
            };
            bytes.get_or_create(&labels).inc_by(c.bytes);
            let h = Counted {
                sum: c.seconds,
                count: c.count,
                buckets: with_bounds(&c.buckets),
            };
            latency.0.push((labels, h));
        }
    }
    reg.register("ringrun_step", "The step each rank works on", steps);
    reg.register(
        "ringrun_compute_seconds",
        "Each rank's time per step outside collectives, over its straggler window",
        compute,
    );
    reg.register(
        "ringrun_bytes",
        "Payload bytes per collective and rank",
        bytes,
    );
    reg.register(
        "ringrun_collective_seconds",
        "Collective latency per collective and rank",
        latency,
    );
}

/// The faults' restore times in [`LATENCY_BUCKETS`] (per bucket), +Inf last.
fn restore_buckets(view: &JobView) -> Vec<u64> {
    let mut counts = vec![0; LATENCY_BUCKETS.len() + 1];
    for f in view.faults() {
        counts[latency_bucket(f.restored_ms / 1e3)] += 1;
    }
    counts
}
