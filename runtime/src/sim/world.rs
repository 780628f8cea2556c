//! What the simulator knows that no member does, and the invariants it checks with it.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use ringrun_membership::Time;

use super::{SimReport, front::next_state};
use crate::{driver::GroupView, member::MemberKey, report::FaultEvent};

pub(super) struct World {
    seed: u64,
    pub(super) report: SimReport,
    /// Every installed view's members, by epoch.
    views: BTreeMap<u64, Vec<MemberKey>>,
    /// Installed views in the order they were first installed.
    order: Vec<(u64, Vec<MemberKey>)>,
    /// Lives that ended (crashed or left): they cannot be on another side of a partition.
    dead: BTreeSet<MemberKey>,
    /// The state after each step, computed once: what every holder of that step must hold.
    chain: Vec<[u64; 2]>,
    /// Commits after the faults ended: when, and by which members.
    late_commits: Vec<(Time, Vec<MemberKey>)>,
}

impl World {
    pub(super) fn new(seed: u64) -> World {
        World {
            seed,
            report: SimReport::default(),
            views: BTreeMap::new(),
            order: Vec::new(),
            dead: BTreeSet::new(),
            chain: Vec::new(),
            late_commits: Vec::new(),
        }
    }

    fn violation(&mut self, what: String) {
        self.report
            .violations
            .push(format!("SIM_SEED={}: {what}", self.seed));
    }

    pub(super) fn dead(&mut self, key: MemberKey) {
        self.dead.insert(key);
    }

    /// The digest of the state after `step`.
    fn state_of(&mut self, step: u64) -> [u64; 2] {
        while self.chain.len() <= step as usize {
            let before = self.chain.last().map(|d| (self.chain.len() as u64 - 1, *d));
            self.chain.push(next_state(before).1);
        }
        self.chain[step as usize]
    }

    /// A member installed `view`: one view per epoch number, and none without a strict
    /// majority of the live members of the view installed last that still has any (a minority
    /// side of a partition waits). Views whose lives all ended belong to a group that is gone:
    /// new lives may start again, and reuse its epoch numbers.
    pub(super) fn installed(&mut self, view: &GroupView) {
        let members: Vec<MemberKey> = view.members.iter().map(|(k, _)| *k).collect();
        let epoch = view.epoch;
        if let Some(known) = self.views.get(&epoch) {
            if *known == members {
                return;
            }
            if self.live(known) > 0 {
                let known = known.clone();
                self.violation(format!(
                    "epoch {epoch} installed as {known:?} and as {members:?}"
                ));
            }
        }
        self.report.epochs += 1;
        let before = (self.order.iter().rev())
            .find(|(e, ks)| *e != epoch && self.live(ks) > 0)
            .cloned();
        if let Some((e0, prev)) = before {
            let counted = self.live(&prev);
            let kept = (prev.iter())
                .filter(|k| !self.dead.contains(k) && members.contains(k))
                .count();
            if 2 * kept <= counted {
                self.violation(format!(
                    "epoch {epoch} {members:?} holds {kept} of the {counted} live members of \
                     epoch {e0} {prev:?}: a minority installed a view"
                ));
            }
        }
        self.views.insert(epoch, members.clone());
        self.order.push((epoch, members));
    }

    /// `member`'s plane completed a fault report: it moves from an epoch the member was in to a
    /// later one installed with it, and its phases come in order.
    pub(super) fn fault_reported(&mut self, member: MemberKey, f: &FaultEvent) {
        self.report.fault_reports += 1;
        let listed = |e: u64| self.views.get(&e).is_some_and(|ks| ks.contains(&member));
        let ordered = f.to_installed <= f.to_restored && f.to_restored <= f.to_first_collective;
        let complete = f.to_first_collective.is_some();
        if f.to_epoch <= f.from_epoch || !listed(f.from_epoch) || !listed(f.to_epoch) {
            self.violation(format!(
                "{member} reported a recovery from epoch {} to epoch {}",
                f.from_epoch, f.to_epoch
            ));
        } else if !ordered || !complete {
            self.violation(format!("{member} reported phases out of order: {f:?}"));
        }
    }

    /// How many of `keys` are lives that have not ended.
    fn live(&self, keys: &[MemberKey]) -> usize {
        keys.iter().filter(|k| !self.dead.contains(k)).count()
    }

    /// An epoch's members agreed to resume from `chosen`, while the newest step any live
    /// worker held was `held`.
    pub(super) fn synced(
        &mut self,
        epoch: u64,
        chosen: Option<(u64, [u64; 2])>,
        held: Option<u64>,
    ) {
        let step = chosen.map(|(s, _)| s);
        if held > step {
            self.violation(format!(
                "epoch {epoch} resumed from step {step:?} while a live worker held step {held:?}: \
                 a committed step was lost"
            ));
        }
        if let Some((s, d)) = chosen
            && d != self.state_of(s)
        {
            self.violation(format!(
                "epoch {epoch} resumed from a state of step {s} that is not that step's"
            ));
        }
    }

    /// Epoch `epoch`'s members (`members`, holding `before`) committed `after`.
    pub(super) fn committed(
        &mut self,
        now: Time,
        epoch: u64,
        before: &[Option<(u64, [u64; 2])>],
        after: (u64, [u64; 2]),
        members: &[MemberKey],
        live: &[MemberKey],
    ) {
        self.report.commits += 1;
        if before.iter().any(|m| *m != before[0]) {
            self.violation(format!(
                "the members of epoch {epoch} held different states before step {}: {before:?}",
                after.0
            ));
        }
        if after.1 != self.state_of(after.0) {
            self.violation(format!(
                "epoch {epoch} committed a wrong state at step {}",
                after.0
            ));
        }
        let mut all = live.to_vec();
        all.sort();
        let mut ms = members.to_vec();
        ms.sort();
        if ms == all {
            self.late_commits.push((now, ms));
        }
    }

    /// The end of the run: an epoch of every live worker committed after the faults ended.
    pub(super) fn check_recovered(&mut self, calm: Time, end: Time, live: &[MemberKey]) {
        let mut all = live.to_vec();
        all.sort();
        let first = self
            .late_commits
            .iter()
            .find(|(t, ms)| *t >= calm && *ms == all)
            .map(|(t, _)| t.saturating_since(calm));
        self.report.recovered_in = first;
        if first.is_none() {
            let bound: Duration = end.saturating_since(calm);
            self.violation(format!(
                "no epoch of all {} live workers committed within {bound:?} of the faults' end",
                all.len()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        agreement::View,
        member::{Advert, Endpoints},
    };

    fn key(n: u64) -> MemberKey {
        MemberKey {
            incarnation: n,
            node: n,
        }
    }

    fn view(epoch: u64, members: &[u64]) -> GroupView {
        let advert = Advert {
            endpoints: Endpoints {
                control: "127.0.0.1:1".parse().unwrap(),
                tcp: "127.0.0.1:2".parse().unwrap(),
            },
            launch_rank: None,
        };
        View {
            epoch,
            members: members.iter().map(|n| (key(*n), advert)).collect(),
        }
    }

    #[test]
    fn two_views_of_one_epoch_are_a_violation() {
        let mut w = World::new(7);
        w.installed(&view(1, &[1, 2, 3]));
        w.installed(&view(1, &[1, 2, 3]));
        assert!(w.report.violations.is_empty());
        w.installed(&view(1, &[4]));
        assert!(w.report.violations[0].starts_with("SIM_SEED=7: epoch 1 installed as"));
    }

    #[test]
    fn a_minority_of_the_live_members_is_a_violation_dead_ones_aside() {
        let mut w = World::new(1);
        w.installed(&view(1, &[1, 2, 3, 4]));
        w.dead(key(4));
        w.installed(&view(2, &[1, 2]));
        assert!(w.report.violations.is_empty(), "2 of the 3 live members");
        w.installed(&view(3, &[2, 5]));
        assert_eq!(w.report.violations.len(), 1, "1 of the 2 of epoch 2");
        w.dead(key(5));
        w.installed(&view(4, &[2, 6]));
        assert_eq!(
            w.report.violations.len(),
            1,
            "the one live member of epoch 3"
        );
        // A group whose lives all ended is gone: new lives start over, epoch numbers included.
        let mut w = World::new(1);
        w.installed(&view(1, &[1, 2]));
        w.installed(&view(2, &[1, 2, 3]));
        [1, 2, 3].into_iter().for_each(|k| w.dead(key(k)));
        w.installed(&view(1, &[7, 8]));
        assert!(w.report.violations.is_empty());
        w.installed(&view(1, &[7, 9]));
        assert_eq!(w.report.violations.len(), 1, "two live views of epoch 1");
    }

    #[test]
    fn a_lost_commit_and_a_wrong_state_are_violations() {
        let mut w = World::new(1);
        let s5 = (5, w.state_of(5));
        w.synced(2, Some(s5), Some(5));
        assert!(w.report.violations.is_empty());
        w.synced(3, Some(s5), Some(6));
        w.synced(4, Some((5, [1, 2])), None);
        w.synced(5, None, Some(0));
        assert_eq!(w.report.violations.len(), 3);
    }

    #[test]
    fn a_fault_report_outside_the_members_epochs_or_out_of_order_is_a_violation() {
        let mut w = World::new(1);
        w.installed(&view(1, &[1, 2, 3]));
        w.installed(&view(2, &[1, 2]));
        let ms = |m: u64| Some(std::time::Duration::from_millis(m));
        let report = |from_epoch, to_epoch, installed| FaultEvent {
            from_epoch,
            to_epoch,
            size_before: 3,
            size_after: 2,
            reason: "members of the epoch were lost".into(),
            detected_unix_ms: 0,
            to_installed: installed,
            to_restored: ms(20),
            to_first_collective: ms(30),
            steps_rolled_back: 0,
        };
        w.fault_reported(key(1), &report(1, 2, ms(10)));
        assert!(w.report.violations.is_empty());
        w.fault_reported(key(3), &report(1, 2, ms(10)));
        w.fault_reported(key(1), &report(2, 2, ms(10)));
        w.fault_reported(key(1), &report(1, 2, ms(25)));
        assert_eq!(w.report.violations.len(), 3);
        assert_eq!(w.report.fault_reports, 4);
    }

    #[test]
    fn commits_from_different_states_are_a_violation() {
        let mut w = World::new(1);
        let s0 = next_state(None);
        let s1 = next_state(Some(s0));
        w.committed(
            Time::ZERO,
            1,
            &[Some(s0), Some(s0)],
            s1,
            &[key(1)],
            &[key(1)],
        );
        assert!(w.report.violations.is_empty());
        w.committed(Time::ZERO, 1, &[Some(s0), None], s1, &[key(1)], &[key(1)]);
        w.committed(
            Time::ZERO,
            1,
            &[Some(s0)],
            (1, [9, 9]),
            &[key(1)],
            &[key(1)],
        );
        assert_eq!(w.report.violations.len(), 2);
    }
}
