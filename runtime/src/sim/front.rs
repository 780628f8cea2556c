//! The modelled group: the IO `Group` does for its plane, as events of the simulator. The
//! decisions are the plane's own (its `Lifecycle`: when an epoch is over, when to ask for a
//! new one, the mesh deadline, the admission window); the model tells it what happened, as
//! `Group` does.
//!
//! An installed view that lists the worker is entered: the epoch's mesh forms once every
//! member has entered it, each as the life the view names, all on one side of any partition
//! (else the mesh never forms and each member's plane gives the epoch up at its deadline).
//! The first operation of the epoch agrees the state to resume from with the real
//! `state::decide`. Then a step is due every `step_time` (plus the slowest member's delay):
//! it commits if every member is still there, in the epoch, and reachable, else every member
//! reports the failed collective. After a commit, if some member sees workers waiting, the
//! members ask their planes to admit them (`Group::admit`).

use std::time::Duration;

use ring::digest::{SHA256, digest};

use super::{Event, Sim};
use crate::{
    driver::GroupView,
    lifecycle::FrontEvent,
    member::MemberKey,
    state::{self, Decision, NONE},
};

/// One worker's modelled group.
#[derive(Clone, Debug, Default)]
pub(super) struct Front {
    /// The committed state held: step and digest.
    pub(super) memory: Option<(u64, [u64; 2])>,
    /// The epoch this worker is in (installed, listing it).
    pub(super) epoch: Option<u64>,
    /// Its plane ended its epoch: it waits for a newer one.
    pub(super) broken: bool,
    /// A step of its epoch committed (its plane was told).
    resumed: bool,
    /// Live workers outside the view, as its plane counts them.
    pub(super) waiting: usize,
}

impl Front {
    /// The plane ended `epoch` and every older one.
    pub(super) fn ended(&mut self, epoch: u64) {
        if self.epoch.is_some_and(|e| e <= epoch) {
            self.broken = true;
        }
    }
}

/// The state after `step`, from the state before it (`None`: the initial state).
pub(super) fn next_state(before: Option<(u64, [u64; 2])>) -> (u64, [u64; 2]) {
    let (step, prev) = match before {
        Some((s, d)) => (s + 1, d),
        None => (0, [0, 0]),
    };
    let mut bytes = Vec::with_capacity(24);
    bytes.extend(prev[0].to_le_bytes());
    bytes.extend(prev[1].to_le_bytes());
    bytes.extend(step.to_le_bytes());
    (step, state::digest_of(digest(&SHA256, &bytes).as_ref()))
}

/// An epoch's mesh, as the model sees it.
#[derive(Clone, Debug)]
pub(super) struct Run {
    view: GroupView,
    entered: Vec<bool>,
    running: bool,
}

impl Sim {
    /// `slot`'s plane installed `view`.
    pub(super) fn installed(&mut self, slot: usize, view: GroupView) {
        self.world.installed(&view);
        self.note(format!(
            "slot {slot} installed epoch {} {:?}",
            view.epoch,
            view.ids()
        ));
        let Some(key) = self.workers[slot].plane.as_ref().map(|p| p.me()) else {
            return;
        };
        let Some(rank) = view.rank_of(&key) else {
            return;
        };
        let epoch = view.epoch;
        let w = &mut self.workers[slot];
        w.front.epoch = Some(epoch);
        w.front.broken = false;
        w.front.resumed = false;
        let n = view.members.len();
        // A run of this epoch number whose members all ended belongs to a group that is gone.
        if self
            .runs
            .get(&epoch)
            .is_some_and(|r| r.view.members != view.members)
            && self.gone(epoch)
        {
            self.runs.remove(&epoch);
        }
        let run = self.runs.entry(epoch).or_insert_with(|| Run {
            view: view.clone(),
            entered: vec![false; n],
            running: false,
        });
        // Another view of this epoch number (a violation, recorded above): no mesh with it.
        if run.view.members == view.members {
            run.entered[rank] = true;
        }
        if self.runs[&epoch].entered.iter().all(|e| *e) && self.healthy(epoch) {
            self.form(epoch);
        }
    }

    /// No member of `epoch`'s run still runs the life the view names.
    fn gone(&self, epoch: u64) -> bool {
        self.runs[&epoch].view.members.iter().all(|(k, _)| {
            let w = self.workers.get(k.node as usize);
            w.and_then(|w| w.plane.as_ref()).map(|p| p.me()) != Some(*k)
        })
    }

    /// The slots of `epoch`'s members, if each still runs the life the view names.
    fn member_slots(&self, epoch: u64) -> Option<Vec<usize>> {
        let run = self.runs.get(&epoch)?;
        run.view
            .members
            .iter()
            .map(|(k, _)| {
                let slot = k.node as usize;
                let w = self.workers.get(slot)?;
                (w.plane.as_ref().map(|p| p.me()) == Some(*k)).then_some(slot)
            })
            .collect()
    }

    /// Every member of `epoch` is there, in it, unaborted, and all on one side.
    fn healthy(&self, epoch: u64) -> bool {
        let Some(slots) = self.member_slots(epoch) else {
            return false;
        };
        let side = slots.first().map(|&s| self.side[s]);
        slots.iter().all(|&s| {
            let f = &self.workers[s].front;
            f.epoch == Some(epoch) && !f.broken && Some(self.side[s]) == side
        })
    }

    /// The mesh of `epoch` formed: agree the state to resume from, then start stepping.
    fn form(&mut self, epoch: u64) {
        let slots = self.member_slots(epoch).expect("healthy");
        let records: Vec<state::Record> = (slots.iter())
            .map(|&s| match self.workers[s].front.memory {
                Some((step, d)) => [step, d[0], d[1], NONE, 0],
                None => [NONE, 0, 0, NONE, 0],
            })
            .collect();
        let chosen = match state::decide(&records) {
            Decision::Fresh => None,
            Decision::Keep { .. } => self.workers[slots[0]].front.memory,
            Decision::Broadcast { root, .. } => self.workers[slots[root]].front.memory,
        };
        let held = (self.workers.iter())
            .filter(|w| w.plane.is_some())
            .filter_map(|w| w.front.memory.map(|(s, _)| s))
            .max();
        self.world.synced(epoch, chosen, held);
        self.note(format!(
            "epoch {epoch} formed on {slots:?}, resumes from {chosen:?}"
        ));
        let size = slots.len();
        for &s in &slots {
            self.workers[s].front.memory = chosen;
            self.tell(s, FrontEvent::MeshUp { epoch });
            let entered = FrontEvent::Entered {
                epoch,
                size,
                rolled_back: 0,
                holds_final: false,
            };
            self.tell(s, entered);
        }
        if let Some(run) = self.runs.get_mut(&epoch) {
            run.running = true;
        }
        let after = self.step_time(&slots);
        self.push(after, Event::Step(epoch));
    }

    fn step_time(&self, slots: &[usize]) -> Duration {
        let slowest = slots.iter().map(|&s| self.workers[s].slow).max();
        self.config.step_time + slowest.unwrap_or_default()
    }

    /// `epoch`'s next step is due: commit it, or give the epoch up.
    pub(super) fn step(&mut self, epoch: u64) {
        if !self.runs.get(&epoch).is_some_and(|r| r.running) {
            return;
        }
        if !self.healthy(epoch) {
            self.fail(epoch);
            return;
        }
        let slots = self.member_slots(epoch).expect("healthy");
        let before: Vec<_> = slots
            .iter()
            .map(|&s| self.workers[s].front.memory)
            .collect();
        let after = next_state(before[0]);
        let live = self.live_keys();
        let members: Vec<MemberKey> = self.runs[&epoch]
            .view
            .members
            .iter()
            .map(|(k, _)| *k)
            .collect();
        self.world
            .committed(self.now, epoch, &before, after, &members, &live);
        let waiting = slots.iter().any(|&s| self.workers[s].front.waiting > 0);
        for &s in &slots {
            let front = &mut self.workers[s].front;
            front.memory = Some(after);
            if !std::mem::replace(&mut front.resumed, true) {
                self.tell(s, FrontEvent::Resumed { epoch });
            }
            if waiting {
                self.tell(s, FrontEvent::Admit);
            }
        }
        let next = self.step_time(&slots);
        self.push(next, Event::Step(epoch));
    }

    /// `slot`'s front tells its plane what happened.
    fn tell(&mut self, slot: usize, event: FrontEvent) {
        let now = self.now;
        if let Some(plane) = self.workers[slot].plane.as_mut() {
            plane.front(now, event);
            self.drain(slot);
        }
    }

    /// A collective of `epoch` failed: every member still in it reports so.
    fn fail(&mut self, epoch: u64) {
        self.note(format!("epoch {epoch} failed"));
        if let Some(run) = self.runs.get_mut(&epoch) {
            run.running = false;
        }
        let keys: Vec<MemberKey> = self.runs[&epoch]
            .view
            .members
            .iter()
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.give_up(k.node as usize, k, epoch);
        }
    }

    /// `slot`, as life `key`, reports a failed collective of `epoch` if it is still in it.
    fn give_up(&mut self, slot: usize, key: MemberKey, epoch: u64) {
        let Some(w) = self.workers.get_mut(slot) else {
            return;
        };
        if w.plane.as_ref().map(|p| p.me()) != Some(key) || w.front.epoch != Some(epoch) {
            return;
        }
        let failed = FrontEvent::Failed {
            epoch,
            why: "a collective failed".into(),
            mismatch: false,
        };
        self.tell(slot, failed);
        self.note(format!("slot {slot} gave up epoch {epoch}"));
    }
}
