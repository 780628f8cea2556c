//! Members that failed or left recently, kept after foca forgets them (a restarted member's new
//! life replaces the old one in foca at once): `ringrun status` lists them with their state
//! and since when, as `serf members` lists failed nodes.

use std::collections::VecDeque;

use crate::{
    identity::MemberId,
    time::Time,
    view::{MemberInfo, MemberState},
};

/// How many departures are kept.
const KEPT: usize = 64;
/// How long a departure is kept.
const RETENTION_MS: u64 = 10 * 60 * 1000;

/// The newest departures, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Departed(VecDeque<(MemberId, MemberState, Time)>);

impl Departed {
    /// `id` went `state` (down or left) at `now`; a later departure of the same life replaces
    /// an earlier one (down, then the leave notice).
    pub(crate) fn record(&mut self, id: &MemberId, state: MemberState, now: Time) {
        self.0.retain(|(d, _, _)| d != id);
        if self.0.len() == KEPT {
            self.0.pop_front();
        }
        self.0.push_back((id.clone(), state, now));
    }

    /// The departures at `now` that `current` does not list, as view entries.
    pub(crate) fn missing_from(&self, current: &[MemberInfo], now: Time) -> Vec<MemberInfo> {
        let recent = |at: &Time| now.saturating_since(*at).as_millis() < u128::from(RETENTION_MS);
        self.0
            .iter()
            .filter(|(id, _, at)| recent(at) && !current.iter().any(|m| &m.id == id))
            .map(|(id, state, at)| MemberInfo {
                id: id.clone(),
                state: *state,
                swim_incarnation: 0,
                time_in_state_ms: now.saturating_since(*at).as_millis() as u64,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::{Incarnation, Metadata, NodeId};

    fn id(node: u64, life: u64) -> MemberId {
        MemberId::new(
            NodeId(node),
            "127.0.0.1:1".parse().unwrap(),
            Incarnation(life),
            Metadata::default(),
        )
    }

    #[test]
    fn a_replaced_life_stays_listed_for_a_while() {
        let mut d = Departed::default();
        let t0 = Time::ZERO;
        d.record(&id(1, 1), MemberState::Down, t0);
        let now = t0 + Duration::from_secs(5);
        let listed = d.missing_from(&[], now);
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].state, listed[0].time_in_state_ms),
            (MemberState::Down, 5000)
        );
        let later = t0 + Duration::from_millis(RETENTION_MS + 1);
        assert!(d.missing_from(&[], later).is_empty());
        for n in 0..100 {
            d.record(&id(n, 2), MemberState::Left, now);
        }
        assert_eq!(d.missing_from(&[], now).len(), KEPT);
    }
}
