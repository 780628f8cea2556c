//! Each link's round trip, measured on the commit exchange (pure: times come in as arguments).
//!
//! At every commit each rank sends every peer a block (`Comm::alltoall`) carrying, besides the
//! commit record, two words: when it sent the block, on its own clock, and the newest one-way
//! time it measured from that peer (the echo). A one-way time is an arrival on the receiver's
//! clock minus a sending time on the sender's, so it holds the offset between two clocks that
//! were never synchronised; but a pair's two directions add up to the round trip, in which the
//! offset cancels. Only blocks the receiver was already waiting for give a one-way time (see
//! `algo::alltoall`): a late receiver would otherwise count its own lateness as the link's.
//!
//! Each direction keeps the least one-way time of the newest `max_age` commits, and the echo
//! carries that least one: a delay the link itself adds is in every sample, whereas a
//! receiver that ran late (descheduled on a busy host, say) inflates only some, so the
//! minimum is the link's own round trip. A slow link shows once a window's worth of commits
//! has passed since it slowed.
//!
//! Why not the frames of the collectives themselves: a ring sends each link's bytes one way
//! only, and while a pipeline stalls every rank waits alike, so a slow link and its healthy
//! neighbours look the same from inside. A round trip needs both directions, and every pair
//! exchanges at each commit.

use std::{collections::VecDeque, time::Duration};

/// The word that stands for "no one-way time measured" in an echo.
const NONE: u64 = u64::MAX;

/// One measurement and the commit it was made at.
#[derive(Clone, Copy, Debug)]
struct Stamp {
    ns: i64,
    commit: u64,
}

impl Stamp {
    /// Whether it is at most `max_age` commits old at commit `commit`.
    fn fresh(&self, commit: u64, max_age: u64) -> bool {
        commit.saturating_sub(self.commit) <= max_age
    }
}

/// One rank's view of its links' round trips, for one epoch (ranks index peers).
#[derive(Debug)]
pub(crate) struct RoundTrips {
    /// Per peer: the one-way times from it of the newest `max_age` commits, on our clock
    /// minus its.
    inbound: Vec<VecDeque<Stamp>>,
    /// Per peer: the newest least one-way time it measured from us, as it echoed it.
    outbound: Vec<Option<Stamp>>,
    /// Measurements older than this many commits are no longer used.
    max_age: u64,
}

impl RoundTrips {
    /// For a world of `size`, forgetting measurements after `max_age` commits.
    pub(crate) fn new(size: usize, max_age: u64) -> Self {
        RoundTrips {
            inbound: vec![VecDeque::new(); size],
            outbound: vec![None; size],
            max_age: max_age.max(1),
        }
    }

    /// The world size this was made for.
    pub(crate) fn size(&self) -> usize {
        self.inbound.len()
    }

    fn is_fresh(&self, s: &Stamp, commit: u64) -> bool {
        s.fresh(commit, self.max_age)
    }

    /// The least fresh one-way time from `peer`.
    fn least_inbound(&self, peer: usize, commit: u64) -> Option<i64> {
        let fresh = self.inbound[peer]
            .iter()
            .filter(|s| self.is_fresh(s, commit));
        fresh.map(|s| s.ns).min()
    }

    /// The two words for `peer`'s block of commit number `commit`, sent at `now_ns`.
    pub(crate) fn outgoing(&self, peer: usize, now_ns: i64, commit: u64) -> [u64; 2] {
        let echo = self.least_inbound(peer, commit);
        [now_ns as u64, echo.map_or(NONE, |e| e as u64)]
    }

    /// `peer`'s two words at commit number `commit`; `arrived_ns` is when its block came,
    /// where this rank was waiting for it.
    pub(crate) fn incoming(
        &mut self,
        peer: usize,
        words: [u64; 2],
        arrived_ns: Option<i64>,
        commit: u64,
    ) {
        if let Some(at) = arrived_ns {
            let ns = at.wrapping_sub(words[0] as i64);
            let max_age = self.max_age;
            let kept = &mut self.inbound[peer];
            kept.retain(|s| s.fresh(commit, max_age));
            kept.push_back(Stamp { ns, commit });
        }
        if words[1] != NONE {
            let ns = words[1] as i64;
            self.outbound[peer] = Some(Stamp { ns, commit });
        }
    }

    /// Each peer's round trip as of commit `commit`, the least of the window's (`None` for
    /// this rank's own slot and where either direction has no fresh measurement).
    pub(crate) fn round_trips(&self, commit: u64) -> Vec<Option<Duration>> {
        (0..self.size())
            .map(|p| {
                let there = self.outbound[p].filter(|s| self.is_fresh(s, commit))?.ns;
                let back = self.least_inbound(p, commit)?;
                let ns = there.saturating_add(back).max(0);
                Some(Duration::from_nanos(ns as u64))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two ranks whose clocks differ by `offset` ns (rank 1 ahead), over a link taking
    /// `there` ns from 0 to 1 and `back` ns from 1 to 0, commit after commit.
    fn exchange(offset: i64, there: i64, back: i64, commits: u64) -> [RoundTrips; 2] {
        let mut r = [RoundTrips::new(2, 10), RoundTrips::new(2, 10)];
        for c in 1..=commits {
            let t0 = 1_000_000 * c as i64; // rank 0's clock when both send
            let from0 = r[0].outgoing(1, t0, c);
            let from1 = r[1].outgoing(0, t0 + offset, c);
            r[1].incoming(0, from0, Some(t0 + there + offset), c);
            r[0].incoming(1, from1, Some(t0 + back), c);
        }
        r
    }

    #[test]
    fn the_clock_offset_cancels_out_of_the_round_trip() {
        for offset in [0, 5_000_000_000, -77_777_777] {
            let r = exchange(offset, 40_000_000, 300_000, 3);
            let want = Some(Duration::from_nanos(40_300_000));
            assert_eq!(r[0].round_trips(3), [None, want]);
            assert_eq!(r[1].round_trips(3), [want, None]);
        }
    }

    #[test]
    fn a_late_receiver_inflates_a_sample_but_not_the_round_trip() {
        let mut r = exchange(0, 300_000, 300_000, 3);
        // Rank 0 ran 5 ms late for rank 1's block of commit 4.
        r[0].incoming(1, [4_000_000, 300_000], Some(9_300_000), 4);
        assert_eq!(r[0].round_trips(4)[1], Some(Duration::from_micros(600)));
    }

    #[test]
    fn a_block_that_was_not_waited_for_measures_nothing() {
        let mut r = RoundTrips::new(2, 10);
        r.incoming(1, [5, NONE], None, 1);
        assert_eq!(r.outgoing(1, 9, 1), [9, NONE]);
        assert_eq!(r.round_trips(1), [None, None]);
    }

    #[test]
    fn old_measurements_expire() {
        let r = exchange(0, 1_000, 1_000, 2);
        assert!(r[0].round_trips(12)[1].is_some());
        assert_eq!(r[0].round_trips(13)[1], None);
        assert_eq!(r[0].outgoing(1, 0, 13)[1], NONE);
    }
}
