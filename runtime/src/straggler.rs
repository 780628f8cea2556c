//! Naming stragglers (pure): from every rank's window of per-step averages (`progress::Window`),
//! which rank is slow itself, or which link.
//!
//! In data-parallel training every rank's step takes the same wall time (the collectives wait
//! for the slowest), so step times cannot tell a straggler apart, nor can the waits inside the
//! collectives: in a stalled pipeline every rank waits alike, however many links are slow.
//! What differs:
//! - a slow rank spends longer *outside* the collectives (its compute); the others wait for it;
//! - a slow link has a longer round trip. Every pair of ranks measures its own at each commit
//!   (`rtt`), so the link is named directly instead of being inferred from who waited.
//!
//! A rank is flagged when its compute per step exceeds `factor` times the median of the other
//! ranks'. A rank's network is flagged when the median round trip to its peers exceeds
//! `factor` times the other ranks' medians (a slow network port, a congested uplink); a single
//! link when its round trip exceeds `factor` times the median of all the other pairs'. Each
//! must also exceed the median by at least [`FLOOR_S`] and [`FLOOR_SHARE`] of the median step
//! time, so that scheduling noise, and round trips too short to matter to a step, flag
//! nothing. Windows shorter than the required steps, or of an older epoch, are ignored.

use serde::{Deserialize, Serialize};

use crate::progress::Window;

/// The least excess per step that is ever flagged: scheduling noise stays below it.
pub const FLOOR_S: f64 = 0.003;
/// ... nor below this share of the median step time (noise grows with the step).
pub const FLOOR_SHARE: f64 = 0.1;

/// What is slow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Blame {
    /// The rank itself: its work outside the collectives.
    Rank,
    /// The rank's network: its links to most of its peers.
    Network,
    /// The link between the flagged rank and `peer`.
    Link {
        /// The rank at the link's other end.
        peer: u32,
    },
}

/// One flag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Straggler {
    /// The rank (for a link: its lower-ranked end).
    pub rank: u32,
    /// What is slow.
    pub blame: Blame,
    /// Its time: compute per step, or a round trip; in seconds.
    pub seconds: f64,
    /// The median of the others', in seconds.
    pub median_s: f64,
    /// Steps the windows span.
    pub steps: u32,
}

impl std::fmt::Display for Straggler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ms, med, rank) = (self.seconds * 1e3, self.median_s * 1e3, self.rank);
        match self.blame {
            Blame::Rank => write!(
                f,
                "rank {rank} is slow itself: {ms:.1} ms of work outside collectives a step \
                 against a median of {med:.1} ms"
            ),
            Blame::Network => write!(
                f,
                "rank {rank}'s network is slow: a median round trip of {ms:.1} ms to its peers \
                 against {med:.1} ms for the other ranks"
            ),
            Blame::Link { peer } => write!(
                f,
                "the link between rank {rank} and rank {peer} is slow: a round trip of \
                 {ms:.1} ms against a median of {med:.1} ms"
            ),
        }
        .and_then(|()| write!(f, " (over {} steps)", self.steps))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n % 2 {
        1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Whether `value` exceeds `factor` times `others` and by at least `floor`.
fn stands_out(value: f64, others: f64, factor: f64, floor: f64) -> bool {
    value > factor * others && value - others >= floor
}

/// The stragglers among `windows` (rank, epoch, window), newest epoch only.
pub fn find(windows: &[(u32, u64, &Window)], factor: f64, min_steps: u32) -> Vec<Straggler> {
    let Some(epoch) = windows.iter().map(|w| w.1).max() else {
        return Vec::new();
    };
    let current: Vec<(u32, &Window)> = windows
        .iter()
        .filter(|(_, e, w)| *e == epoch && w.steps >= min_steps)
        .map(|(r, _, w)| (*r, *w))
        .collect();
    if current.len() < 2 {
        return Vec::new();
    }
    let steps = current.iter().map(|(_, w)| w.steps).min().unwrap_or(0);
    let step_s = median(current.iter().map(|(_, w)| w.step_s).collect());
    let floor = FLOOR_S.max(FLOOR_SHARE * step_s);
    let mut out = Vec::new();
    for (rank, w) in &current {
        let others = median(
            current
                .iter()
                .filter(|(r, _)| r != rank)
                .map(|(_, o)| o.compute_s)
                .collect(),
        );
        if stands_out(w.compute_s, others, factor, floor) {
            out.push(Straggler {
                rank: *rank,
                blame: Blame::Rank,
                seconds: w.compute_s,
                median_s: others,
                steps,
            });
        }
    }
    let slow: Vec<u32> = out.iter().map(|s| s.rank).collect();
    out.extend(slow_links(&current, &slow, (factor, floor), steps));
    out
}

/// Each measured pair's round trip: the mean of what its two ends measured (see `rtt`).
fn pair_round_trips(current: &[(u32, &Window)]) -> Vec<(u32, u32, f64)> {
    let measured = |from: u32, to: u32| {
        let (_, w) = current.iter().find(|(r, _)| *r == from)?;
        w.link_rtt_s.get(to as usize).copied().flatten()
    };
    let mut pairs = Vec::new();
    for (i, (a, _)) in current.iter().enumerate() {
        for (b, _) in &current[i + 1..] {
            let ends: Vec<f64> = [measured(*a, *b), measured(*b, *a)]
                .into_iter()
                .flatten()
                .collect();
            if !ends.is_empty() {
                let mean = ends.iter().sum::<f64>() / ends.len() as f64;
                pairs.push(((*a).min(*b), (*a).max(*b), mean));
            }
        }
    }
    pairs
}

/// Ranks whose links are slow to most of their peers (their network), then single links that
/// stand out among all pairs; ranks in `slow` (slow themselves) are left out of both, since a
/// rank short of CPU also answers late.
fn slow_links(
    current: &[(u32, &Window)],
    slow: &[u32],
    (factor, floor): (f64, f64),
    steps: u32,
) -> Vec<Straggler> {
    let pairs = pair_round_trips(current);
    let touching = |r: u32| pairs.iter().filter(move |(a, b, _)| *a == r || *b == r);
    let per_rank: Vec<(u32, f64)> = current
        .iter()
        .filter_map(|(r, _)| {
            let rtts: Vec<f64> = touching(*r).map(|p| p.2).collect();
            (!rtts.is_empty()).then(|| (*r, median(rtts)))
        })
        .collect();
    let mut out = Vec::new();
    // With two ranks, a slow link could be either end's: nothing to compare with.
    if per_rank.len() < 3 {
        return out;
    }
    for (rank, rtt) in &per_rank {
        let others = median(
            per_rank
                .iter()
                .filter(|(r, _)| r != rank)
                .map(|p| p.1)
                .collect(),
        );
        if !slow.contains(rank) && stands_out(*rtt, others, factor, floor) {
            out.push(Straggler {
                rank: *rank,
                blame: Blame::Network,
                seconds: *rtt,
                median_s: others,
                steps,
            });
        }
    }
    let networks: Vec<u32> = out.iter().map(|s| s.rank).collect();
    let excluded = |r: &u32| slow.contains(r) || networks.contains(r);
    for (i, (a, b, rtt)) in pairs.iter().enumerate() {
        if excluded(a) || excluded(b) {
            continue;
        }
        let others = median(
            pairs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| p.2)
                .collect(),
        );
        if stands_out(*rtt, others, factor, floor) {
            out.push(Straggler {
                rank: *a,
                blame: Blame::Link { peer: *b },
                seconds: *rtt,
                median_s: others,
                steps,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window of `compute_ms` a step with round trips `rtt_ms` by peer (negative: none).
    fn window(compute_ms: f64, rtt_ms: &[f64]) -> Window {
        Window {
            steps: 10,
            step_s: 0.05,
            compute_s: compute_ms / 1e3,
            link_wait_s: vec![0.0; rtt_ms.len()],
            link_rtt_s: rtt_ms
                .iter()
                .map(|r| (*r >= 0.0).then_some(r / 1e3))
                .collect(),
        }
    }

    fn flags(ws: &[Window]) -> Vec<(u32, Blame)> {
        let input: Vec<_> = ws
            .iter()
            .enumerate()
            .map(|(r, w)| (r as u32, 1, w))
            .collect();
        find(&input, 1.5, 10)
            .into_iter()
            .map(|s| (s.rank, s.blame))
            .collect()
    }

    const X: f64 = -1.0;

    #[test]
    fn a_clean_run_flags_nothing() {
        let ws = [
            window(20.0, &[X, 0.4, 0.3, 0.2]),
            window(20.5, &[0.3, X, 0.2, 0.5]),
            window(19.8, &[0.6, 0.2, X, 0.1]),
            window(20.2, &[0.2, 0.3, 0.4, X]),
        ];
        assert!(flags(&ws).is_empty());
    }

    #[test]
    fn a_slow_rank_is_blamed_not_its_links() {
        // Rank 2 computes 40 ms more and, short of CPU, answers late: its round trips grow.
        let ws = [
            window(20.0, &[X, 0.2, 9.0, 0.2]),
            window(20.0, &[0.2, X, 9.0, 0.3]),
            window(60.0, &[X, X, X, X]),
            window(20.0, &[0.3, 0.2, 9.0, X]),
        ];
        assert_eq!(flags(&ws), [(2, Blame::Rank)]);
    }

    #[test]
    fn a_rank_whose_links_are_all_slow_has_its_network_blamed() {
        // 40 ms each way on rank 1's port: every pair with rank 1 takes 80 ms more.
        let ws = [
            window(20.0, &[X, 80.3, 0.2, 0.3]),
            window(20.0, &[80.2, X, 80.4, 80.1]),
            window(20.0, &[0.2, X, X, 0.2]),
            window(20.0, &[0.3, 80.5, 0.2, X]),
        ];
        assert_eq!(flags(&ws), [(1, Blame::Network)]);
        // Three ranks are enough to tell which end is slow.
        let three = [
            window(20.0, &[X, 80.3, 0.2]),
            window(20.0, &[80.2, X, 80.4]),
            window(20.0, &[0.2, 80.1, X]),
        ];
        assert_eq!(flags(&three), [(1, Blame::Network)]);
    }

    #[test]
    fn one_slow_link_is_blamed_between_its_ends() {
        let ws = [
            window(20.0, &[X, 0.2, 0.3, 30.0]),
            window(20.0, &[0.2, X, 0.2, 0.3]),
            window(20.0, &[0.3, 0.2, X, 0.2]),
            window(20.0, &[X, 0.3, 0.2, X]),
        ];
        assert_eq!(flags(&ws), [(0, Blame::Link { peer: 3 })]);
        // Below the floor (3 ms, or a tenth of the step) nothing is flagged, however large
        // the ratio.
        let mut small = ws.clone();
        small[0].link_rtt_s[3] = Some(0.002);
        assert!(flags(&small).is_empty());
    }

    #[test]
    fn two_ranks_cannot_tell_which_end_is_slow() {
        let ws = [window(20.0, &[X, 80.0]), window(20.0, &[80.0, X])];
        assert!(flags(&ws).is_empty());
    }

    #[test]
    fn short_or_stale_windows_are_ignored() {
        let slow = window(60.0, &[X, X]);
        let fine = window(20.0, &[X, X]);
        let short = Window {
            steps: 3,
            ..slow.clone()
        };
        assert!(find(&[(0, 1, &short), (1, 1, &fine)], 1.5, 10).is_empty());
        assert!(find(&[(0, 1, &slow), (1, 2, &fine)], 1.5, 10).is_empty());
        let two = find(&[(0, 2, &slow), (1, 2, &fine)], 1.5, 10);
        assert_eq!(two.len(), 1);
        assert!(
            two[0].to_string().contains("rank 0 is slow itself"),
            "{}",
            two[0]
        );
    }
}
