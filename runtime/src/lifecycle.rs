//! [`Lifecycle`]: the epoch lifecycle around the collectives, sans-IO; part of the
//! [`crate::plane::ControlPlane`].
//!
//! It decides which epoch is over for this member and why (members lost, a newer view, the
//! job completed elsewhere, a collective or the mesh set-up failed), when to ask the
//! coordinator for a new epoch (at once after a failure; after [`Config::mismatch_grace`]
//! after a caller's mismatch, so that the peers' calls end on this rank's notice rather than
//! on a cancellation; when a mesh did not form within [`Config::mesh_timeout`]), how long
//! admission of joiners stays open at a commit boundary, and the fault report of every
//! recovery. The front end (`group.rs` in a worker, `sim/front.rs` in the simulator) forms
//! meshes and runs the collectives, tells the lifecycle what happened ([`FrontEvent`]) and
//! refuses the collectives of an epoch the lifecycle ended ([`Action::Ended`]).

use std::time::Duration;

use ringrun_membership::Time;
use tracing::warn;

use crate::{
    driver::GroupView,
    member::MemberKey,
    report::{FaultEvent, Open},
};

/// The lifecycle's timings.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Longest a mesh set-up may take before the epoch is given up and re-formed.
    pub mesh_timeout: Duration,
    /// How long a rank that saw a mismatch waits before asking for a new epoch.
    pub mismatch_grace: Duration,
    /// How long admission stays open at a commit boundary while joiners wait.
    pub admit_wait: Duration,
    /// The wall clock at the plane's `Time::ZERO`, in ms since the Unix epoch (for the fault
    /// report's `detected_unix_ms`).
    pub wall_origin_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            mesh_timeout: Duration::from_secs(10),
            mismatch_grace: Duration::from_millis(100),
            admit_wait: Duration::from_secs(3),
            wall_origin_ms: 0,
        }
    }
}

/// What the front end reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrontEvent {
    /// The mesh of `epoch` is connected (its state is agreed next).
    MeshUp {
        /// The epoch.
        epoch: u64,
    },
    /// `epoch` is entered: the state to resume from is agreed and held.
    Entered {
        /// The epoch.
        epoch: u64,
        /// Its members.
        size: usize,
        /// Steps of work lost: the newest step this member reached minus the restored one.
        rolled_back: u64,
        /// The state held is the job's final state.
        holds_final: bool,
    },
    /// The first collective of the entered `epoch` completed.
    Resumed {
        /// The epoch.
        epoch: u64,
    },
    /// A collective (or the mesh set-up) of `epoch` failed.
    Failed {
        /// The epoch.
        epoch: u64,
        /// Why.
        why: String,
        /// The failure was a caller's mismatch (shapes, dtypes, commits), not a lost member.
        mismatch: bool,
    },
    /// Joiners wait at this commit boundary: admit them for a while.
    Admit,
}

/// What the lifecycle asks of the plane.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Ask the coordinator for a new epoch after `epoch`.
    Reform(u64),
    /// Open or close admission of joiners.
    Admitting(bool),
    /// `epoch` and every older one are over for this member: refuse their collectives.
    Ended {
        /// The epoch.
        epoch: u64,
        /// Why.
        why: String,
    },
    /// Admission closed without a newer view.
    AdmissionClosed,
    /// A recovery completed.
    Fault(FaultEvent),
}

/// The epoch lifecycle of one member.
#[derive(Debug)]
pub struct Lifecycle {
    me: MemberKey,
    config: Config,
    /// The epoch the front entered, and its size.
    entered: Option<(u64, usize)>,
    /// The newest installed view that lists this member: its epoch and when it came.
    listed: Option<(u64, Time)>,
    /// The newest epoch over for this member.
    ended: Option<u64>,
    /// The newest epoch whose members were lost, and when that was heard.
    aborted: Option<(u64, Time)>,
    /// The newest epoch a new one was asked for after.
    reformed: Option<u64>,
    mesh_due: Option<(u64, Time)>,
    reform_at: Option<(u64, Time)>,
    admit_until: Option<Time>,
    /// This member holds the job's final state.
    finished: bool,
    fault: Option<Open>,
    actions: Vec<Action>,
}

impl Lifecycle {
    /// The lifecycle of member `me`.
    pub fn new(me: MemberKey, config: Config) -> Lifecycle {
        Lifecycle {
            me,
            config,
            entered: None,
            listed: None,
            ended: None,
            aborted: None,
            reformed: None,
            mesh_due: None,
            reform_at: None,
            admit_until: None,
            finished: false,
            fault: None,
            actions: Vec::new(),
        }
    }

    /// The actions asked for since the last call, oldest first.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// When [`Lifecycle::tick`] is next due, if ever.
    pub fn poll_timeout(&self) -> Option<Time> {
        let times = [
            self.mesh_due.map(|(_, t)| t),
            self.reform_at.map(|(_, t)| t),
            self.admit_until,
        ];
        times.into_iter().flatten().min()
    }

    /// A view was installed.
    pub fn installed(&mut self, now: Time, view: &GroupView) {
        let planned = self.admit_until.take().is_some();
        if planned {
            self.actions.push(Action::Admitting(false));
        }
        if let Some((epoch, _)) = self.entered.filter(|(e, _)| *e < view.epoch) {
            let why = format!("epoch {} was installed", view.epoch);
            // An admission this member opened moves the group on on purpose: no fault.
            self.end(now, epoch, why, !planned);
        }
        if view.rank_of(&self.me).is_some() {
            self.listed = Some((view.epoch, now));
            self.mesh_due = Some((view.epoch, now + self.config.mesh_timeout));
        }
    }

    /// Members of `epoch` were lost.
    pub fn aborted(&mut self, now: Time, epoch: u64) {
        self.aborted = Some((epoch, now));
        self.end(now, epoch, "members of the epoch were lost".into(), true);
    }

    /// The job completed: every epoch this member entered or was listed in is over, unless it
    /// holds the final state.
    pub fn completed(&mut self, now: Time, step: u64) {
        if self.finished {
            return;
        }
        let newest = self
            .entered
            .map(|(e, _)| e)
            .max(self.listed.map(|(e, _)| e));
        if let Some(epoch) = newest {
            self.end(
                now,
                epoch,
                format!("the job completed at step {step}"),
                false,
            );
        }
    }

    /// This member holds the job's final state (it finished the job).
    pub fn finished(&mut self) {
        self.finished = true;
    }

    /// The front end reports.
    pub fn front(&mut self, now: Time, event: FrontEvent) {
        match event {
            FrontEvent::MeshUp { epoch } => {
                self.mesh_due.take_if(|(e, _)| *e == epoch);
            }
            FrontEvent::Entered {
                epoch,
                size,
                rolled_back,
                holds_final,
            } => {
                self.mesh_due.take_if(|(e, _)| *e == epoch);
                self.entered = Some((epoch, size));
                self.finished |= holds_final;
                let installed = (self.listed)
                    .filter(|(e, _)| *e == epoch)
                    .map_or(now, |(_, t)| t);
                if let Some(f) = &mut self.fault {
                    f.restored(epoch, size, installed, now, rolled_back);
                }
            }
            FrontEvent::Resumed { epoch } => {
                if self.entered.is_some_and(|(e, _)| e == epoch)
                    && let Some(f) = self.fault.take_if(|f| f.is_restored())
                {
                    self.actions.push(Action::Fault(f.finish(now)));
                }
            }
            FrontEvent::Failed {
                epoch,
                why,
                mismatch: true,
            } => {
                // A caller's bug: every rank must see it, so the re-form that would cancel
                // the peers' calls waits a moment.
                self.end(now, epoch, why, false);
                self.reform_at = Some((epoch, now + self.config.mismatch_grace));
            }
            FrontEvent::Failed { epoch, why, .. } => {
                warn!(epoch, reason = %why, "epoch over");
                self.end(now, epoch, why, true);
                self.reform(epoch);
            }
            FrontEvent::Admit => {
                if self.admit_until.is_none() {
                    self.actions.push(Action::Admitting(true));
                }
                self.admit_until = Some(now + self.config.admit_wait);
            }
        }
    }

    /// Time passes: mesh deadlines, the mismatch grace, the admission window.
    pub fn tick(&mut self, now: Time) {
        if let Some((epoch, _)) = self.mesh_due.take_if(|(_, t)| *t <= now) {
            self.end(now, epoch, "the mesh did not form in time".into(), true);
            self.reform(epoch);
        }
        if let Some((epoch, _)) = self.reform_at.take_if(|(_, t)| *t <= now) {
            self.reform(epoch);
        }
        if self.admit_until.take_if(|t| *t <= now).is_some() {
            self.actions.push(Action::Admitting(false));
            self.actions.push(Action::AdmissionClosed);
        }
    }

    /// `epoch` (and every older one) is over for this member; a fault report opens if it is
    /// the entered epoch, `fault` says so and none is open.
    fn end(&mut self, now: Time, epoch: u64, why: String, fault: bool) {
        if self.ended.is_some_and(|e| e >= epoch) {
            return;
        }
        self.ended = Some(epoch);
        if fault
            && self.fault.is_none()
            && let Some((entered, size)) = self.entered.filter(|(e, _)| *e <= epoch)
        {
            // The first sign: the abort of this epoch (or a later one), if heard before.
            let at = match self.aborted {
                Some((a, t)) if a >= entered => t.min(now),
                _ => now,
            };
            let unix_ms = self.config.wall_origin_ms + at.since_epoch().as_millis() as u64;
            self.fault = Some(Open::new(entered, size, why.clone(), at, unix_ms));
        }
        self.actions.push(Action::Ended { epoch, why });
    }

    /// Asks for a new epoch after `epoch`, once.
    fn reform(&mut self, epoch: u64) {
        if self.reformed.is_none_or(|e| e < epoch) {
            self.reformed = Some(epoch);
            self.actions.push(Action::Reform(epoch));
        }
    }
}

/// Whether the member at `rank` of `view` writes the checkpoints of its host: the lowest rank
/// whose endpoint has its IP does, so that one process per host writes.
pub fn writes_checkpoints(view: &GroupView, rank: usize) -> bool {
    let ip = |r: usize| view.members.get(r).map(|(_, a)| a.endpoints.tcp.ip());
    let mine = ip(rank);
    mine.is_some() && (0..view.members.len()).position(|r| ip(r) == mine) == Some(rank)
}

#[cfg(test)]
mod tests;
