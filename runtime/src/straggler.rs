//! Naming stragglers (pure): from every rank's window of per-step averages (`progress::Window`),
//! which rank is slow itself, or which link.
//!
//! In data-parallel training every rank's step takes the same wall time (the collectives wait
//! for the slowest), so step times cannot tell a straggler apart. What differs:
//! - a slow rank spends longer *outside* the collectives (its compute); the others wait for it;
//! - a slow link makes its receiver wait for frames longer than the sender explains. A rank
//!   that waited `W` for its inputs, or worked `C` longer than the receiver, sends late by up
//!   to `W + C`, and its receivers inherit that lateness; so a link's *excess* is the
//!   receiver's wait on it minus the sender's, and the delay shows on the link where it begins.
//!
//! A rank is flagged when its compute per step exceeds `factor` times the median of the other
//! ranks', by at least [`FLOOR_S`] and [`FLOOR_SHARE`] of the median step; a link when its
//! excess does against the median of the other links', by at least [`LINK_FLOOR_SHARE`] of the
//! step, and its sender is not itself flagged (a slow rank makes its outgoing links look slow
//! too). Windows shorter than the required steps, or of an older epoch, are ignored.

use serde::{Deserialize, Serialize};

use crate::progress::Window;

/// The least excess per step that is ever flagged: scheduling noise stays below it.
pub const FLOOR_S: f64 = 0.003;
/// ... nor below this share of the median step time for a rank's work (noise grows with the
/// step) ...
pub const FLOOR_SHARE: f64 = 0.1;
/// ... and this share for a link's excess: jitter in when ranks arrive at a collective sums
/// into the waits of every link, where compute averages it out.
pub const LINK_FLOOR_SHARE: f64 = 0.25;

/// What is slow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Blame {
    /// The rank itself: its work outside the collectives.
    Rank,
    /// The link from rank `from` into the flagged rank.
    Link {
        /// The sending rank.
        from: u32,
    },
}

/// One flag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Straggler {
    /// The rank (for a link: the receiving one).
    pub rank: u32,
    /// What is slow.
    pub blame: Blame,
    /// Its time per step (compute, or the link's excess wait), in seconds.
    pub seconds: f64,
    /// The median of the others', in seconds.
    pub median_s: f64,
    /// Steps the windows span.
    pub steps: u32,
}

impl std::fmt::Display for Straggler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ms, med) = (self.seconds * 1e3, self.median_s * 1e3);
        match self.blame {
            Blame::Rank => write!(
                f,
                "rank {} is slow itself: {ms:.1} ms of work outside collectives a step against \
                 a median of {med:.1} ms",
                self.rank
            ),
            Blame::Link { from } => write!(
                f,
                "the link from rank {from} to rank {} is slow: {ms:.1} ms a step of waiting \
                 beyond what rank {from} waited itself, against a median of {med:.1} ms",
                self.rank
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
    let link_floor = FLOOR_S.max(LINK_FLOOR_SHARE * step_s);
    out.extend(slow_links(&current, &slow, (factor, link_floor), steps));
    out
}

/// Links whose excess wait stands out, their sender not being slow itself.
fn slow_links(
    current: &[(u32, &Window)],
    slow: &[u32],
    (factor, floor): (f64, f64),
    steps: u32,
) -> Vec<Straggler> {
    let window = |rank: u32| current.iter().find(|(r, _)| *r == rank).map(|(_, w)| *w);
    // How late `from`'s frames to `to` were for reasons of `from`'s own: it waited for its
    // inputs, or it worked longer than `to` before sending (a rank descheduled for a while).
    let explained = |from: &Window, to: &Window| {
        from.link_wait_s.iter().sum::<f64>() + (from.compute_s - to.compute_s).max(0.0)
    };
    // (receiver, sender, excess)
    let links: Vec<(u32, u32, f64)> = current
        .iter()
        .flat_map(|(to, w)| {
            w.link_wait_s
                .iter()
                .enumerate()
                .filter_map(move |(from, wait)| {
                    let sender = window(from as u32).filter(|_| from as u32 != *to)?;
                    Some((*to, from as u32, wait - explained(sender, w)))
                })
        })
        .collect();
    let mut out = Vec::new();
    for (i, (to, from, excess)) in links.iter().enumerate() {
        if slow.contains(from) {
            continue;
        }
        let others = median(
            links
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, l)| l.2.max(0.0))
                .collect(),
        );
        if stands_out(*excess, others, factor, floor) {
            out.push(Straggler {
                rank: *to,
                blame: Blame::Link { from: *from },
                seconds: *excess,
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

    fn window(compute_ms: f64, waits_ms: &[f64]) -> Window {
        Window {
            steps: 10,
            step_s: 0.05,
            compute_s: compute_ms / 1e3,
            link_wait_s: waits_ms.iter().map(|w| w / 1e3).collect(),
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

    #[test]
    fn a_clean_run_flags_nothing() {
        let ws = [
            window(20.0, &[0.0, 0.4, 0.3, 0.2]),
            window(20.5, &[0.3, 0.0, 0.2, 0.5]),
            window(19.8, &[0.6, 0.2, 0.0, 0.1]),
            window(20.2, &[0.2, 0.3, 0.4, 0.0]),
        ];
        assert!(flags(&ws).is_empty());
    }

    #[test]
    fn a_slow_rank_is_blamed_not_its_links() {
        // Rank 2 computes 40 ms more; everyone waits for it, and its receivers most.
        let ws = [
            window(20.0, &[0.0, 0.2, 40.0, 0.2]),
            window(20.0, &[0.2, 0.0, 0.3, 40.0]),
            window(60.0, &[0.2, 0.3, 0.0, 0.2]),
            window(20.0, &[0.3, 0.2, 40.0, 0.0]),
        ];
        assert_eq!(flags(&ws), [(2, Blame::Rank)]);
    }

    #[test]
    fn a_slow_link_is_blamed_where_the_delay_begins() {
        // Frames from rank 1 to rank 0 take 20 ms longer; rank 0 then sends late to rank 2,
        // which inherits the wait (rank 0 waited as long itself), so only 1 → 0 is blamed.
        let ws = [
            window(20.0, &[0.0, 20.0, 0.2, 0.2]),
            window(20.0, &[0.2, 0.0, 0.2, 0.2]),
            window(20.0, &[20.3, 0.2, 0.0, 0.2]),
            window(20.0, &[0.2, 0.2, 0.2, 0.0]),
        ];
        assert_eq!(flags(&ws), [(0, Blame::Link { from: 1 })]);
    }

    #[test]
    fn short_or_stale_windows_are_ignored() {
        let slow = window(60.0, &[0.0, 0.0]);
        let fine = window(20.0, &[0.0, 0.0]);
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
