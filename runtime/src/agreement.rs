//! Epoch agreement: from each member's (possibly stale, possibly different) SWIM view to one
//! numbered view that every member of it has acknowledged.
//!
//! Sans-IO: every input takes `now`, a `Duration` since an origin the caller chooses
//! (monotonic), and outputs are polled.
//!
//! Gossip alone is not agreement: two members may briefly disagree about who is alive. Here the
//! *coordinator* (the lowest id in its own live set) proposes `{epoch, ordered members}`; each
//! proposed member promises not to accept a lower epoch and acknowledges; once every proposed
//! member has acknowledged, the coordinator tells them to install it. A member that dies during
//! the round makes the coordinator give up and propose again with the newer view and a higher
//! epoch, after a short straggler window so that several failures or joins land in one epoch.
//!
//! Safety (checked by the simulator in `tests/agreement_sim.rs`):
//! - A member accepts at most one proposal per epoch number (promises only increase), so two
//!   proposals of one epoch can both be installed only if their member sets are disjoint.
//! - Every proposal must contain a strict majority of its *reference* view (the newest view the
//!   judging member installed or accepted), not counting members known to have exited. The
//!   coordinator checks this before proposing and every member checks it again before
//!   accepting. Two disjoint sets cannot both hold a majority of one view, so a partitioned job
//!   never yields two groups that both train; a minority side waits.
//! - "Known to have exited" (`left`) is evidence the caller supplies: a graceful leave, or a
//!   launcher that reaped its worker. A member merely unreachable is not known to have exited.
//!
//! Rank order: a view lists its members by the launch rank each advertises
//! ([`Placement::launch_rank`], the launcher's `RANK`), lowest first; members without one come
//! after every member with one; ties (two lives of one slot) and members without a launch rank
//! go by id. So the first epoch of a launched job has the launch ranks as its ranks whatever
//! order the workers started in; after a loss the survivors keep their order, compacted (launch
//! ranks 0, 2, 3 become ranks 0, 1, 2); a restarted worker advertises its slot's launch rank
//! again, so once it is readmitted the ranks are the launch ranks again. The order of ids
//! (seniority, for the runtime) still picks the coordinator: it is not rank 0.
//!
//! Sans-IO: inputs are [`Agreement::set_live`] (the membership view), [`Agreement::handle`]
//! (a message) and [`Agreement::tick`], each with the current time; outputs are drained with
//! [`Agreement::poll_send`] and [`Agreement::poll_event`] after every input.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::Debug,
    time::Duration,
};

use tracing::{debug, info};

/// Tuning of the agreement.
#[derive(Clone, Debug)]
pub struct Config {
    /// No view with fewer members is proposed.
    pub min_size: usize,
    /// At most this many members; installed members are kept first, then the lowest new ids
    /// (whatever their launch ranks).
    pub max_size: usize,
    /// How long the live set must be stable before a changed view is proposed.
    pub straggler_window: Duration,
    /// A round not acknowledged by every member within this time is abandoned and re-proposed.
    pub ack_timeout: Duration,
    /// How often a coordinator re-sends `Install` to members that have not confirmed it.
    pub resend: Duration,
    /// The first view waits for this many live members (the expected world size)...
    pub initial_size: usize,
    /// ...but no longer than this after start; then a strict majority of it is enough.
    pub initial_wait: Duration,
    /// Whether this member may form a first view, starting a group. A worker restarted while
    /// its group runs, or a joiner, may not: cut off from the running group, it would start a
    /// second one with others like it. It waits to be admitted instead.
    pub bootstrap: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            min_size: 1,
            max_size: usize::MAX,
            straggler_window: Duration::from_millis(20),
            ack_timeout: Duration::from_millis(500),
            resend: Duration::from_millis(100),
            initial_size: 1,
            initial_wait: Duration::ZERO,
            bootstrap: true,
        }
    }
}

/// What the agreement reads from a member's metadata: where the member asks to be in the rank
/// order (see the module's "Rank order").
pub trait Placement {
    /// The rank the member's launcher gave it, if any.
    fn launch_rank(&self) -> Option<u32>;
}

impl Placement for () {
    fn launch_rank(&self) -> Option<u32> {
        None
    }
}

/// The rank-order key of a member: launch rank (members without one last), then id.
fn rank_order<I: Ord, M: Placement>((id, meta): &(I, M)) -> (bool, Option<u32>, &I) {
    let r = meta.launch_rank();
    (r.is_none(), r, id)
}

/// An agreed view: the epoch number and the members in rank order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct View<I, M> {
    /// The epoch; strictly increasing across installed views.
    pub epoch: u64,
    /// Members with their metadata (endpoints); a member's index is its rank.
    pub members: Vec<(I, M)>,
}

impl<I: Ord + Clone, M> View<I, M> {
    /// The rank of `id`, if it is a member.
    pub fn rank_of(&self, id: &I) -> Option<usize> {
        self.members.iter().position(|(m, _)| m == id)
    }

    /// The member ids, as a set (ordered by id, not by rank).
    pub fn ids(&self) -> BTreeSet<I> {
        self.members.iter().map(|(i, _)| i.clone()).collect()
    }
}

/// What members tell each other.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Msg<I, M> {
    /// Coordinator → proposed members: accept this view.
    Propose(View<I, M>),
    /// Member → coordinator: accepted the proposal of this epoch.
    Ack {
        /// The epoch accepted.
        epoch: u64,
    },
    /// Member → coordinator: refused; it has promised `promised` or the view lacks a majority.
    Nack {
        /// The epoch refused.
        epoch: u64,
        /// The member's highest promise.
        promised: u64,
    },
    /// Coordinator → members: every member accepted; install the epoch.
    Install {
        /// The epoch to install.
        epoch: u64,
    },
    /// Member → coordinator: installed the epoch (stops re-sends).
    Confirm {
        /// The epoch installed.
        epoch: u64,
    },
    /// Member → coordinator: the communicator of `epoch` broke although nobody is known to be
    /// gone (a reset connection, say): form a new epoch of the same members.
    Reform {
        /// The broken epoch.
        epoch: u64,
    },
    /// "I have installed `installed`": member → coordinator, repeated while the member's
    /// installed view differs from its live set (a coordinator that healed from a partition
    /// learns this way that the other side moved on), and coordinator → proposed members
    /// before a proposal. A member whose own installed view is older judges majorities against
    /// the newer one: members known to have exited while it was cut off then do not count
    /// against a view without them.
    Nudge {
        /// The sender's installed view.
        installed: Option<View<I, M>>,
    },
}

/// What the caller must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<I, M> {
    /// A new view is in force: rebuild the communicator for it.
    Installed(View<I, M>),
    /// Members of the installed view are gone: abort collectives in flight on `epoch`.
    Abort {
        /// The epoch whose collectives must stop.
        epoch: u64,
        /// The members no longer live.
        lost: Vec<I>,
    },
    /// The coordinator cannot propose (too few members, or no majority of the last view).
    Blocked(String),
}

struct Round<I, M> {
    view: View<I, M>,
    acks: BTreeSet<I>,
    started: Duration,
}

/// One member's side of the agreement.
pub struct Agreement<I, M> {
    me: I,
    config: Config,
    live: BTreeMap<I, M>,
    /// Every member this one's membership layer has reported live; only those can be "lost".
    seen_live: BTreeSet<I>,
    left: BTreeSet<I>,
    live_since: Duration,
    installed: Option<View<I, M>>,
    accepted: BTreeMap<u64, View<I, M>>,
    promised: u64,
    max_seen: u64,
    round: Option<Round<I, M>>,
    not_before: Duration,
    confirmed: BTreeSet<I>,
    last_resend: Duration,
    newest_installed_seen: u64,
    /// The newest view another member says it installed, when newer than this member's.
    heard: Option<View<I, M>>,
    aborted_epoch: Option<u64>,
    blocked: Option<String>,
    started: Duration,
    /// New members are added only while this is set (at a commit boundary) or before the
    /// first view; lost members are dropped whenever.
    admitting: bool,
    /// A member asked for a new epoch of this (installed) epoch number.
    reform: Option<u64>,
    out: VecDeque<(I, Msg<I, M>)>,
    events: VecDeque<Event<I, M>>,
}

impl<I, M> Agreement<I, M>
where
    I: Ord + Clone + Debug,
    M: Clone + Eq + Debug + Placement,
{
    /// A member `me` with metadata `meta`, alone in its view until [`set_live`](Self::set_live).
    pub fn new(me: I, meta: M, config: Config, now: Duration) -> Self {
        Agreement {
            live: BTreeMap::from([(me.clone(), meta)]),
            seen_live: BTreeSet::from([me.clone()]),
            me,
            config,
            left: BTreeSet::new(),
            live_since: now,
            installed: None,
            accepted: BTreeMap::new(),
            promised: 0,
            max_seen: 0,
            round: None,
            not_before: now,
            confirmed: BTreeSet::new(),
            last_resend: now,
            newest_installed_seen: 0,
            heard: None,
            aborted_epoch: None,
            blocked: None,
            started: now,
            admitting: true,
            reform: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The membership layer's current view: live members (this one is always kept) and members
    /// known to have exited.
    pub fn set_live(&mut self, now: Duration, mut live: BTreeMap<I, M>, left: BTreeSet<I>) {
        if let Some(mine) = self.live.get(&self.me).cloned() {
            live.insert(self.me.clone(), mine);
        }
        if live != self.live {
            self.live_since = now;
            self.seen_live.extend(live.keys().cloned());
            self.live = live;
        }
        self.left = left;
        self.check_lost();
        self.step(now);
    }

    /// Whether new members may be added to the next view. The group opens admission only at a
    /// commit boundary, so that a joiner never interrupts a collective.
    pub fn set_admitting(&mut self, now: Duration, admitting: bool) {
        self.admitting = admitting;
        self.step(now);
    }

    /// The communicator of `epoch` broke with no member known to be gone: ask the coordinator
    /// (possibly this member) for a new epoch of the same members.
    pub fn request_reform(&mut self, now: Duration, epoch: u64) {
        if self.installed_epoch() != epoch {
            return;
        }
        match self.live.keys().next() {
            Some(c) if *c == self.me => self.reform = Some(epoch),
            Some(c) => self.out.push_back((c.clone(), Msg::Reform { epoch })),
            None => {}
        }
        self.step(now);
    }

    /// Members the coordinator would add at the next commit boundary (live, not in the view).
    pub fn waiting_to_join(&self) -> usize {
        let Some(view) = &self.installed else {
            return 0;
        };
        self.live
            .keys()
            .filter(|i| view.rank_of(i).is_none())
            .count()
    }

    /// A message from member `from`.
    pub fn handle(&mut self, now: Duration, from: I, msg: Msg<I, M>) {
        match msg {
            Msg::Propose(view) => self.on_propose(from, view),
            Msg::Ack { epoch } => self.on_ack(now, from, epoch),
            Msg::Nack { epoch, promised } => self.on_nack(now, epoch, promised),
            Msg::Install { epoch } => self.on_install(from, epoch),
            Msg::Confirm { epoch } => {
                if self.installed_epoch() == epoch {
                    self.confirmed.insert(from);
                }
            }
            Msg::Reform { epoch } => {
                if self.installed_epoch() == epoch {
                    self.reform = Some(epoch);
                }
            }
            Msg::Nudge { installed } => {
                let epoch = installed.as_ref().map_or(0, |v| v.epoch);
                self.newest_installed_seen = self.newest_installed_seen.max(epoch);
                self.max_seen = self.max_seen.max(epoch);
                let newest = self
                    .installed_epoch()
                    .max(self.heard.as_ref().map_or(0, |v| v.epoch));
                if epoch > newest {
                    self.heard = installed;
                }
            }
        }
        self.step(now);
    }

    /// Duration passes: retries, re-sends and straggler windows are evaluated here.
    pub fn tick(&mut self, now: Duration) {
        self.step(now);
    }

    /// The next message to send, if any.
    pub fn poll_send(&mut self) -> Option<(I, Msg<I, M>)> {
        self.out.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event<I, M>> {
        self.events.pop_front()
    }

    /// The view in force, if any.
    pub fn installed(&self) -> Option<&View<I, M>> {
        self.installed.as_ref()
    }

    /// This member's id.
    pub fn id(&self) -> &I {
        &self.me
    }

    fn installed_epoch(&self) -> u64 {
        self.installed.as_ref().map_or(0, |v| v.epoch)
    }

    fn is_coordinator(&self) -> bool {
        self.live.keys().next() == Some(&self.me)
    }

    fn check_lost(&mut self) {
        let Some(view) = &self.installed else { return };
        // A member not yet reported by this member's SWIM is not lost, only not heard of yet.
        let gone = |i: &&I| self.seen_live.contains(*i) && !self.live.contains_key(*i);
        let lost: Vec<I> = view
            .members
            .iter()
            .map(|(i, _)| i)
            .filter(gone)
            .cloned()
            .collect();
        if !lost.is_empty() && self.aborted_epoch != Some(view.epoch) {
            self.aborted_epoch = Some(view.epoch);
            info!(
                epoch = view.epoch,
                ?lost,
                "members of the current epoch lost: abort"
            );
            self.events.push_back(Event::Abort {
                epoch: view.epoch,
                lost,
            });
        }
    }

    fn step(&mut self, now: Duration) {
        if let Some(r) = &self.round
            && now >= r.started + self.config.ack_timeout
        {
            debug!(
                epoch = r.view.epoch,
                "proposal not acknowledged in time; will re-propose"
            );
            self.round = None;
        }
        if self.is_coordinator() {
            self.coordinate(now);
        } else {
            self.round = None;
            self.nudge(now);
        }
        self.resend_install(now);
    }

    /// The members the next view should have, in rank order: installed members still live,
    /// then new members by id, up to `max_size`.
    fn desired(&self) -> Vec<(I, M)> {
        let mut ids: Vec<&I> = Vec::new();
        if let Some(v) = &self.installed {
            ids.extend(
                v.members
                    .iter()
                    .map(|(i, _)| i)
                    .filter(|i| self.live.contains_key(*i)),
            );
        }
        let kept: BTreeSet<&I> = ids.iter().copied().collect();
        // Joiners wait for a commit boundary so as not to interrupt a working epoch; an epoch
        // already over (members lost, or a re-form asked for) has nothing left to interrupt.
        // Without this, a coordinator whose epoch broke could only propose views without the
        // members others admitted meanwhile, which those others refuse (no majority of theirs).
        let installed = self.installed_epoch();
        let over = self.aborted_epoch == Some(installed) || self.reform == Some(installed);
        if self.installed.is_none() || self.admitting || over {
            ids.extend(self.live.keys().filter(|i| !kept.contains(i)));
        }
        ids.truncate(self.config.max_size);
        let mut members: Vec<(I, M)> = ids
            .into_iter()
            .map(|i| (i.clone(), self.live[i].clone()))
            .collect();
        members.sort_by(|a, b| rank_order(a).cmp(&rank_order(b)));
        members
    }

    fn coordinate(&mut self, now: Duration) {
        let desired = self.desired();
        let current = self
            .installed
            .as_ref()
            .is_some_and(|v| v.members == desired)
            && self.newest_installed_seen <= self.installed_epoch()
            && self.reform != Some(self.installed_epoch());
        if current {
            self.set_blocked(None);
            return;
        }
        if let Some(r) = &self.round {
            if r.view.members == desired {
                return;
            }
            self.round = None;
        }
        if now < self.live_since + self.config.straggler_window || now < self.not_before {
            return;
        }
        // The first view waits for the whole expected world; after `initial_wait`, a strict
        // majority of it is enough, never fewer: a member that cannot reach the others (a
        // partition, or a worker started after the job finished) must not start a job of its
        // own, and two halves must not both start one.
        let needed = match (
            self.installed.is_none(),
            now < self.started + self.config.initial_wait,
        ) {
            (true, true) => self.config.initial_size.max(self.config.min_size),
            (true, false) => (self.config.initial_size / 2 + 1).max(self.config.min_size),
            (false, _) => self.config.min_size,
        };
        if desired.len() < needed {
            let why = format!(
                "{} live members, waiting for at least {needed}",
                desired.len(),
            );
            return self.set_blocked(Some(why));
        }
        if self.installed.is_none() && !self.config.bootstrap {
            let why = "waiting to be admitted to the running group".to_string();
            return self.set_blocked(Some(why));
        }
        let ids: BTreeSet<I> = desired.iter().map(|(i, _)| i.clone()).collect();
        if let Err(why) = self.majority_of_reference(&ids) {
            return self.set_blocked(Some(why));
        }
        self.set_blocked(None);
        let view = View {
            epoch: self.max_seen.max(self.promised) + 1,
            members: desired,
        };
        info!(epoch = view.epoch, members = ?view.ids(), "proposing a view");
        let installed = self.newest_installed().cloned();
        for (id, _) in view.members.iter().filter(|(i, _)| *i != self.me) {
            if installed.is_some() {
                let nudge = Msg::Nudge {
                    installed: installed.clone(),
                };
                self.out.push_back((id.clone(), nudge));
            }
            self.out.push_back((id.clone(), Msg::Propose(view.clone())));
        }
        self.accept(view.clone());
        self.round = Some(Round {
            view,
            acks: BTreeSet::from([self.me.clone()]),
            started: now,
        });
        self.maybe_commit(now);
    }

    fn set_blocked(&mut self, why: Option<String>) {
        if why != self.blocked {
            if let Some(w) = &why {
                info!(reason = %w, "cannot form a new view");
                self.events.push_back(Event::Blocked(w.clone()));
            }
            self.blocked = why;
        }
    }

    /// `ids` must hold a strict majority of every view that may be in force: the view this
    /// member installed and every newer view it accepted (another member may have installed
    /// it), not counting members known to have exited. Checking only the newest accepted view
    /// is not enough: after a partition both sides may have accepted (never installed) views
    /// of three that each make a pair look like a majority.
    fn majority_of_reference(&self, ids: &BTreeSet<I>) -> Result<(), String> {
        let base = self.newest_installed();
        let base_epoch = base.map_or(0, |v| v.epoch);
        let newer = self.accepted.values().filter(|v| v.epoch > base_epoch);
        for reference in base.into_iter().chain(newer) {
            let base: BTreeSet<&I> = reference
                .members
                .iter()
                .map(|(i, _)| i)
                .filter(|i| !self.left.contains(*i))
                .collect();
            let kept = base.iter().filter(|i| ids.contains(**i)).count();
            if kept * 2 <= base.len() && !base.is_empty() {
                return Err(format!(
                    "only {kept} of the {} members of epoch {} are in the new view: no majority",
                    base.len(),
                    reference.epoch
                ));
            }
        }
        Ok(())
    }

    /// The view this member judges majorities by: its own installed view, or a newer one
    /// another member installed (`heard`). A member that never installed a view has none: it
    /// was never counted in a majority, so its refusal would protect nothing.
    fn newest_installed(&self) -> Option<&View<I, M>> {
        match (&self.installed, &self.heard) {
            (Some(mine), Some(theirs)) if theirs.epoch > mine.epoch => Some(theirs),
            (mine, _) => mine.as_ref(),
        }
    }

    fn accept(&mut self, view: View<I, M>) {
        self.promised = view.epoch;
        self.max_seen = self.max_seen.max(view.epoch);
        self.accepted.insert(view.epoch, view);
    }

    fn on_propose(&mut self, from: I, view: View<I, M>) {
        let epoch = view.epoch;
        self.max_seen = self.max_seen.max(epoch);
        let ok = epoch > self.promised
            && view.rank_of(&self.me).is_some()
            && self.majority_of_reference(&view.ids()).is_ok();
        if !ok {
            self.out.push_back((
                from,
                Msg::Nack {
                    epoch,
                    promised: self.promised,
                },
            ));
            return;
        }
        if self.round.as_ref().is_some_and(|r| r.view.epoch < epoch) {
            self.round = None;
        }
        self.accept(view);
        self.out.push_back((from, Msg::Ack { epoch }));
    }

    fn on_ack(&mut self, now: Duration, from: I, epoch: u64) {
        if let Some(r) = &mut self.round
            && r.view.epoch == epoch
        {
            r.acks.insert(from);
            self.maybe_commit(now);
        }
    }

    fn maybe_commit(&mut self, now: Duration) {
        let Some(r) = &self.round else { return };
        if r.view.members.iter().any(|(i, _)| !r.acks.contains(i)) {
            return;
        }
        let view = r.view.clone();
        self.round = None;
        for (id, _) in view.members.iter().filter(|(i, _)| *i != self.me) {
            self.out
                .push_back((id.clone(), Msg::Install { epoch: view.epoch }));
        }
        self.install(view);
        self.confirmed = BTreeSet::from([self.me.clone()]);
        self.last_resend = now;
    }

    fn on_nack(&mut self, now: Duration, epoch: u64, promised: u64) {
        self.max_seen = self.max_seen.max(promised);
        if self.round.as_ref().is_some_and(|r| r.view.epoch == epoch) {
            self.round = None;
            // Back off by position, so that of two would-be coordinators the lower id retries first.
            let position = self.live.keys().position(|i| *i == self.me).unwrap_or(0) as u32;
            self.not_before = now + self.config.straggler_window * (1 + position);
        }
    }

    fn on_install(&mut self, from: I, epoch: u64) {
        if epoch > self.installed_epoch()
            && let Some(view) = self.accepted.get(&epoch).cloned()
        {
            self.install(view);
        }
        if self.installed_epoch() >= epoch {
            self.out.push_back((from, Msg::Confirm { epoch }));
        }
    }

    fn install(&mut self, view: View<I, M>) {
        info!(epoch = view.epoch, members = ?view.ids(), "view installed");
        self.accepted.retain(|e, _| *e > view.epoch);
        self.installed = Some(view.clone());
        self.reform = None;
        self.events.push_back(Event::Installed(view));
        self.check_lost();
    }

    /// Tells the coordinator this member's installed epoch while its view differs from the
    /// live set (rate-limited by `resend`).
    fn nudge(&mut self, now: Duration) {
        let live: BTreeSet<&I> = self.live.keys().collect();
        let in_sync = self
            .installed
            .as_ref()
            .is_some_and(|v| v.members.iter().map(|(i, _)| i).collect::<BTreeSet<_>>() == live);
        if in_sync || now < self.last_resend + self.config.resend {
            return;
        }
        self.last_resend = now;
        if let Some(coordinator) = self.live.keys().next().cloned() {
            let installed = self.installed.clone();
            self.out.push_back((coordinator, Msg::Nudge { installed }));
        }
    }

    fn resend_install(&mut self, now: Duration) {
        let Some(view) = &self.installed else { return };
        if now < self.last_resend + self.config.resend || self.confirmed.is_empty() {
            return;
        }
        self.last_resend = now;
        let epoch = view.epoch;
        let pending: Vec<I> = view
            .members
            .iter()
            .map(|(i, _)| i)
            .filter(|i| !self.confirmed.contains(*i) && self.live.contains_key(*i))
            .cloned()
            .collect();
        self.out
            .extend(pending.into_iter().map(|i| (i, Msg::Install { epoch })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn live(ids: &[u32]) -> BTreeMap<u32, ()> {
        ids.iter().map(|i| (*i, ())).collect()
    }

    type Outputs<I, M> = (Vec<(I, Msg<I, M>)>, Vec<Event<I, M>>);

    fn drain<I: Ord + Clone + Debug, M: Clone + Eq + Debug + Placement>(
        a: &mut Agreement<I, M>,
    ) -> Outputs<I, M> {
        // Nudges (what a member installed) go along with proposals; the tests below that
        // are about them read `poll_send` themselves.
        let sent = std::iter::from_fn(|| a.poll_send());
        (
            sent.filter(|(_, m)| !matches!(m, Msg::Nudge { .. }))
                .collect(),
            std::iter::from_fn(|| a.poll_event()).collect(),
        )
    }

    #[test]
    fn a_proposal_comes_with_the_view_its_coordinator_installed() {
        let mut a = installed_with(&[1, 2]);
        a.handle(ms(60), 2, Msg::Reform { epoch: 1 });
        a.tick(ms(100));
        let sent: Vec<_> = std::iter::from_fn(|| a.poll_send()).collect();
        assert!(
            matches!(&sent[..], [(2, Msg::Nudge { installed: Some(v) }), (2, Msg::Propose(_))] if v.epoch == 1),
            "{sent:?}"
        );
    }

    #[test]
    fn a_member_cut_off_judges_majorities_by_the_newer_view_it_hears_of() {
        // Member 1 installed {1, 2, 3, 4}. While it was cut off, 3 and 4 exited and the others
        // installed {2}, which 1 never saw. Back, {1, 2, 5} keeps only 2 of the 4 members of
        // its own view; hearing that {2} is installed, it judges by that view instead.
        let newer = View {
            epoch: 5,
            members: vec![(2, ())],
        };
        let proposal = View {
            epoch: 9,
            members: vec![(1, ()), (2, ()), (5, ())],
        };
        let cut_off = || {
            let mut a = installed_with(&[1, 2, 3, 4]);
            a.set_live(ms(100), live(&[1, 2, 5]), BTreeSet::new());
            a.tick(ms(200));
            drain(&mut a);
            a
        };
        let mut a = cut_off();
        a.handle(ms(211), 2, Msg::Propose(proposal.clone()));
        let (sent, _) = drain(&mut a);
        assert!(matches!(&sent[..], [(2, Msg::Nack { .. })]), "{sent:?}");
        let mut b = cut_off();
        let nudge = Msg::Nudge {
            installed: Some(newer),
        };
        b.handle(ms(210), 2, nudge);
        b.handle(ms(211), 2, Msg::Propose(proposal));
        let (sent, _) = drain(&mut b);
        assert!(sent.contains(&(2, Msg::Ack { epoch: 9 })), "{sent:?}");
    }

    #[test]
    fn waits_for_min_size_then_proposes_after_the_straggler_window() {
        let cfg = Config {
            min_size: 2,
            ..Config::default()
        };
        let mut a = Agreement::new(1u32, (), cfg, ms(0));
        a.tick(ms(100));
        let (sent, events) = drain(&mut a);
        assert!(sent.is_empty());
        assert!(
            matches!(&events[..], [Event::Blocked(w)] if w.contains("at least 2")),
            "{events:?}"
        );
        a.set_live(ms(100), live(&[1, 2]), BTreeSet::new());
        a.tick(ms(110));
        assert!(drain(&mut a).0.is_empty(), "inside the straggler window");
        a.tick(ms(125));
        let view = View {
            epoch: 1,
            members: vec![(1, ()), (2, ())],
        };
        assert_eq!(drain(&mut a).0, vec![(2, Msg::Propose(view.clone()))]);
        a.handle(ms(126), 2, Msg::Ack { epoch: 1 });
        let (sent, events) = drain(&mut a);
        assert_eq!(sent, vec![(2, Msg::Install { epoch: 1 })]);
        assert_eq!(events, vec![Event::Installed(view)]);
        a.tick(ms(500));
        assert!(
            drain(&mut a)
                .0
                .iter()
                .all(|(_, m)| *m == Msg::Install { epoch: 1 }),
            "re-sent until confirmed"
        );
        a.handle(ms(501), 2, Msg::Confirm { epoch: 1 });
        a.tick(ms(900));
        assert!(
            drain(&mut a).0.is_empty(),
            "nothing changed: no new epoch, no re-send"
        );
    }

    #[test]
    fn a_lost_member_aborts_the_epoch_once() {
        let mut b = Agreement::new(2u32, (), Config::default(), ms(0));
        let view = View {
            epoch: 4,
            members: vec![(1, ()), (2, ()), (3, ())],
        };
        b.handle(ms(1), 1, Msg::Propose(view.clone()));
        b.handle(ms(2), 1, Msg::Install { epoch: 4 });
        let (sent, events) = drain(&mut b);
        assert_eq!(
            sent,
            vec![(1, Msg::Ack { epoch: 4 }), (1, Msg::Confirm { epoch: 4 })]
        );
        assert_eq!(events, vec![Event::Installed(view)]);
        b.set_live(ms(3), live(&[1, 2, 3]), BTreeSet::new());
        b.set_live(ms(4), live(&[1, 2]), BTreeSet::new());
        b.set_live(ms(5), live(&[1, 2]), BTreeSet::new());
        let (_, events) = drain(&mut b);
        assert_eq!(
            events,
            vec![Event::Abort {
                epoch: 4,
                lost: vec![3]
            }]
        );
    }

    #[test]
    fn refuses_stale_epochs_and_minority_views() {
        let mut c = Agreement::new(3u32, (), Config::default(), ms(0));
        let all = View {
            epoch: 5,
            members: (1..=4).map(|i| (i, ())).collect(),
        };
        c.handle(ms(1), 1, Msg::Propose(all));
        c.handle(ms(2), 1, Msg::Install { epoch: 5 });
        drain(&mut c);
        c.handle(
            ms(3),
            1,
            Msg::Propose(View {
                epoch: 5,
                members: vec![(3, ())],
            }),
        );
        c.handle(
            ms(4),
            4,
            Msg::Propose(View {
                epoch: 6,
                members: vec![(3, ()), (4, ())],
            }),
        );
        let (sent, _) = drain(&mut c);
        assert_eq!(
            sent,
            vec![
                (
                    1,
                    Msg::Nack {
                        epoch: 5,
                        promised: 5
                    }
                ),
                (
                    4,
                    Msg::Nack {
                        epoch: 6,
                        promised: 5
                    }
                )
            ]
        );
        // The same two members are a majority once the other two are known to have exited.
        c.set_live(ms(5), live(&[3, 4]), BTreeSet::from([1, 2]));
        drain(&mut c);
        c.handle(
            ms(6),
            4,
            Msg::Propose(View {
                epoch: 6,
                members: vec![(3, ()), (4, ())],
            }),
        );
        assert_eq!(drain(&mut c).0, vec![(4, Msg::Ack { epoch: 6 })]);
    }

    fn installed_with(members: &[u32]) -> Agreement<u32, ()> {
        let mut a = Agreement::new(1u32, (), Config::default(), ms(0));
        a.set_live(ms(0), live(members), BTreeSet::new());
        a.tick(ms(50));
        for m in members.iter().filter(|m| **m != 1) {
            a.handle(ms(51), *m, Msg::Ack { epoch: 1 });
        }
        assert_eq!(a.installed().map(|v| v.members.len()), Some(members.len()));
        drain(&mut a);
        a
    }

    #[test]
    fn joiners_wait_for_admission() {
        let mut a = installed_with(&[1, 2]);
        a.set_admitting(ms(60), false);
        a.set_live(ms(60), live(&[1, 2, 3]), BTreeSet::new());
        a.tick(ms(200));
        let proposes =
            |sent: &[(u32, Msg<u32, ()>)]| sent.iter().any(|(_, m)| matches!(m, Msg::Propose(_)));
        assert!(!proposes(&drain(&mut a).0), "no proposal while closed");
        assert_eq!(a.waiting_to_join(), 1);
        a.set_admitting(ms(201), true);
        let (sent, _) = drain(&mut a);
        assert!(
            sent.iter()
                .any(|(to, m)| *to == 3 && matches!(m, Msg::Propose(v) if v.epoch == 2)),
            "{sent:?}"
        );
    }

    #[test]
    fn a_lost_member_is_dropped_even_while_admission_is_closed() {
        let mut a = installed_with(&[1, 2, 3]);
        a.set_admitting(ms(60), false);
        a.set_live(ms(60), live(&[1, 2]), BTreeSet::new());
        a.tick(ms(100));
        let (sent, _) = drain(&mut a);
        assert!(matches!(&sent[..], [(2, Msg::Propose(v))] if v.members.len() == 2));
    }

    #[test]
    fn a_reform_request_gives_a_new_epoch_of_the_same_members() {
        let mut a = installed_with(&[1, 2]);
        a.handle(ms(60), 2, Msg::Reform { epoch: 1 });
        a.tick(ms(100));
        let (sent, _) = drain(&mut a);
        assert!(
            matches!(&sent[..], [(2, Msg::Propose(v))] if v.epoch == 2 && v.members.len() == 2),
            "{sent:?}"
        );
        a.handle(ms(101), 2, Msg::Ack { epoch: 2 });
        a.handle(ms(102), 2, Msg::Reform { epoch: 1 });
        a.tick(ms(300));
        assert!(
            !drain(&mut a)
                .0
                .iter()
                .any(|(_, m)| matches!(m, Msg::Propose(_))),
            "a stale reform request is ignored"
        );
    }

    #[test]
    fn the_first_view_waits_for_the_initial_size_until_the_wait_ends() {
        let cfg = Config {
            initial_size: 3,
            initial_wait: ms(1000),
            ..Config::default()
        };
        let mut a = Agreement::new(1u32, (), cfg, ms(0));
        a.set_live(ms(0), live(&[1, 2]), BTreeSet::new());
        a.tick(ms(500));
        assert!(drain(&mut a).0.is_empty());
        a.tick(ms(1001));
        assert!(matches!(&drain(&mut a).0[..], [(2, Msg::Propose(_))]));
    }

    #[test]
    fn a_first_view_needs_a_majority_of_the_initial_size_even_after_the_wait() {
        let cfg = Config {
            initial_size: 4,
            initial_wait: ms(1000),
            ..Config::default()
        };
        let mut a = Agreement::new(1u32, (), cfg, ms(0));
        a.set_live(ms(0), live(&[1, 2]), BTreeSet::new());
        a.tick(ms(5000));
        assert!(drain(&mut a).0.is_empty(), "two of four is no majority");
        a.set_live(ms(5000), live(&[1, 2, 3]), BTreeSet::new());
        a.tick(ms(5100));
        assert_eq!(drain(&mut a).0.len(), 2, "three of four propose");
    }

    /// Metadata that carries only a launch rank.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Slot(Option<u32>);

    impl Placement for Slot {
        fn launch_rank(&self) -> Option<u32> {
            self.0
        }
    }

    /// Ids (seniority order) with their launch ranks.
    fn slots(members: &[(u32, Option<u32>)]) -> BTreeMap<u32, Slot> {
        members.iter().map(|(i, r)| (*i, Slot(*r))).collect()
    }

    /// Member 1 coordinates: it proposes after the straggler window, everyone acknowledges.
    fn install(a: &mut Agreement<u32, Slot>, now: u64, members: &[(u32, Option<u32>)]) -> Vec<u32> {
        a.set_live(ms(now), slots(members), BTreeSet::new());
        a.tick(ms(now + 50));
        let epoch = a.installed().map_or(0, |v| v.epoch) + 1;
        for (m, _) in members.iter().filter(|(m, _)| *m != 1) {
            a.handle(ms(now + 51), *m, Msg::Ack { epoch });
        }
        drain(a);
        let view = a.installed().expect("installed");
        assert_eq!(view.epoch, epoch, "a new view was installed");
        view.members.iter().map(|(i, _)| *i).collect()
    }

    #[test]
    fn ranks_follow_launch_ranks_not_seniority() {
        let mut a = Agreement::new(1u32, Slot(Some(3)), Config::default(), ms(0));
        let order = install(
            &mut a,
            0,
            &[(1, Some(3)), (2, Some(2)), (3, Some(0)), (4, Some(1))],
        );
        assert_eq!(
            order,
            [3, 4, 2, 1],
            "rank r is the member launched as RANK=r"
        );
        assert!(a.is_coordinator(), "the oldest member still coordinates");
    }

    #[test]
    fn members_without_a_launch_rank_come_last_by_id_and_ties_go_by_id() {
        let mut a = Agreement::new(1u32, Slot(None), Config::default(), ms(0));
        let order = install(
            &mut a,
            0,
            &[
                (1, None),
                (2, Some(5)),
                (3, Some(1)),
                (4, None),
                (5, Some(1)),
            ],
        );
        assert_eq!(order, [3, 5, 2, 1, 4]);
    }

    #[test]
    fn survivors_compact_in_launch_order_and_a_restarted_slot_gets_its_rank_back() {
        let mut a = Agreement::new(1u32, Slot(Some(2)), Config::default(), ms(0));
        let all = [(1, Some(2)), (2, Some(0)), (3, Some(1)), (4, Some(3))];
        assert_eq!(install(&mut a, 0, &all), [2, 3, 1, 4]);
        // The worker launched as RANK=1 dies: the others keep their order, compacted.
        let survivors = [(1, Some(2)), (2, Some(0)), (4, Some(3))];
        assert_eq!(install(&mut a, 100, &survivors), [2, 1, 4]);
        // Its slot restarts as a new life (a younger id) with the same RANK: back to rank 1.
        let back = [(1, Some(2)), (2, Some(0)), (4, Some(3)), (9, Some(1))];
        assert_eq!(install(&mut a, 200, &back), [2, 9, 1, 4]);
    }

    #[test]
    fn an_abandoned_three_member_round_does_not_make_a_pair_a_majority() {
        // Installed {1,2,3,4}; a partition cuts {3,4} off, but 4's failure is seen late, so
        // {1,2,4} is proposed and accepted by 1 and 2, then abandoned.
        let mut a = installed_with(&[1, 2, 3, 4]);
        a.set_live(ms(100), live(&[1, 2, 4]), BTreeSet::new());
        a.tick(ms(130));
        a.handle(ms(131), 2, Msg::Ack { epoch: 2 });
        a.set_live(ms(140), live(&[1, 2]), BTreeSet::new());
        a.tick(ms(2000));
        let (sent, events) = drain(&mut a);
        assert!(
            !sent
                .iter()
                .any(|(_, m)| matches!(m, Msg::Propose(v) if v.members.len() == 2)),
            "{sent:?}"
        );
        assert!(
            events.iter().any(|e| matches!(e, Event::Blocked(_))),
            "{events:?}"
        );
    }
}
