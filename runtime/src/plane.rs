//! [`ControlPlane`]: one worker's control plane, sans-IO.
//!
//! It owns the worker's SWIM member ([`Node`]), its epoch [`Agreement`] and its epoch
//! [`Lifecycle`], and decides what surrounds them: which members are live or known to have
//! exited (a graceful leave, or a launcher's proof of exit), when an abort cancels the
//! collective in flight (at once when members failed; after [`LEAVE_GRACE`] when they left,
//! since their closed links fail a collective that needs them at once and one that does not
//! may still end), the job's completion, and report requests. Every input carries the time;
//! the outputs ([`Output`]) are polled. The driver thread (`driver.rs`) owns the two sockets
//! and the clock and carries the outputs out, and the group (`group.rs`) forms meshes and runs
//! collectives and reports back ([`FrontEvent`]); the simulator (`sim/`) runs many planes over
//! a simulated network.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::SocketAddr,
    time::Duration,
};

use ringrun_membership::{MemberInfo, MemberState, MembershipError, Node, Time};
use tracing::{debug, info, info_span};

use crate::{
    agreement::{self, Agreement, Event},
    control::{Completion, Control, ControlCodec},
    driver::GroupView,
    lifecycle::{self, Action, FrontEvent, Lifecycle},
    member::{self, Advert, CONTROL_ENDPOINT, EpochAnnotation, MemberKey},
    report::FaultEvent,
};

/// How often the agreement's timers are evaluated.
pub const TICK: Duration = Duration::from_millis(10);
/// How long a collective in flight may still finish after members of its epoch left
/// gracefully.
pub const LEAVE_GRACE: Duration = Duration::from_millis(500);

/// Which of the worker's sockets a datagram travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Socket {
    /// SWIM's.
    Membership,
    /// The agreement's and the launchers' (control datagrams).
    Control,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send `bytes` to `to` from `socket`.
    Transmit {
        /// The socket.
        socket: Socket,
        /// The addressee.
        to: SocketAddr,
        /// The sealed datagram.
        bytes: Vec<u8>,
    },
    /// An epoch was installed (this member may not be in it: then it waits for the next).
    Installed(GroupView),
    /// `epoch` and every older one are over for this member: their next collectives must be
    /// refused (one in flight gets its own [`Output::Cancel`]).
    Ended {
        /// The epoch.
        epoch: u64,
        /// Why.
        why: String,
    },
    /// Cancel the collective in flight if its epoch is below `below`.
    Cancel {
        /// Epochs below this one are over.
        below: u64,
        /// Why.
        why: &'static str,
    },
    /// No view can be formed now, and why.
    Blocked(String),
    /// The job completed (a member that finished it said so).
    Completed(Completion),
    /// Someone with the job's secret asks for this member's report (scalars from `since`);
    /// the answer goes to `to` on the control socket.
    ReportRequested {
        /// Where the answer goes.
        to: SocketAddr,
        /// The first scalar wanted.
        since: u64,
    },
    /// How many live workers wait outside the view for a commit boundary.
    Waiting(usize),
    /// Admission, opened at a commit boundary, closed without a newer view.
    AdmissionClosed,
    /// A recovery completed: its report.
    Fault(FaultEvent),
}

/// One worker's control plane.
pub struct ControlPlane {
    node: Node,
    agreement: Agreement<MemberKey, Advert>,
    lifecycle: Lifecycle,
    codec: ControlCodec,
    /// The SWIM view, refreshed after every batch of membership events.
    members: Vec<MemberInfo>,
    control_addrs: BTreeMap<MemberKey, SocketAddr>,
    /// Control sockets of every live member, launchers included (for completions).
    announce_to: BTreeSet<SocketAddr>,
    /// Members a launcher saw exit: never live again, and known to have exited.
    exited: BTreeSet<MemberKey>,
    completed: Option<Completion>,
    /// Control datagrams dropped (unauthenticated or malformed).
    dropped: u64,
    /// An epoch whose collective in flight is cancelled at this time, unless a newer one came.
    cancel_at: Option<(u64, Time)>,
    next_tick: Time,
    annotated: u64,
    waiting: usize,
    outputs: VecDeque<Output>,
}

impl ControlPlane {
    /// A plane around `node` (which holds this worker's identity and advert) that joins
    /// through `seeds` at `now`.
    pub fn start(
        mut node: Node,
        seeds: &[SocketAddr],
        codec: ControlCodec,
        config: agreement::Config,
        life: lifecycle::Config,
        now: Time,
    ) -> Result<ControlPlane, MembershipError> {
        let (me, advert) = member::advertised(node.identity()).ok_or_else(|| {
            MembershipError::Foca("a worker's identity must advertise its endpoints".into())
        })?;
        node.join(now, seeds)?;
        let mut plane = ControlPlane {
            agreement: Agreement::new(me, advert, config, now.since_epoch()),
            lifecycle: Lifecycle::new(me, life),
            node,
            codec,
            members: Vec::new(),
            control_addrs: BTreeMap::new(),
            announce_to: BTreeSet::new(),
            exited: BTreeSet::new(),
            completed: None,
            dropped: 0,
            cancel_at: None,
            next_tick: now,
            annotated: 0,
            waiting: 0,
            outputs: VecDeque::new(),
        };
        plane.after_input(now);
        Ok(plane)
    }

    /// This worker's key.
    pub fn me(&self) -> MemberKey {
        *self.agreement.id()
    }

    /// The SWIM member.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Control datagrams dropped so far (unauthenticated or malformed).
    pub fn control_dropped(&self) -> u64 {
        self.dropped
    }

    /// The installed view, if any.
    pub fn installed(&self) -> Option<&GroupView> {
        self.agreement.installed()
    }

    /// The job's completion, once known.
    pub fn completed(&self) -> Option<Completion> {
        self.completed
    }

    /// When [`ControlPlane::tick`] is next due.
    pub fn poll_timeout(&self) -> Time {
        let mut at = self.next_tick;
        if let Some(t) = self.node.poll_timeout() {
            at = at.min(t);
        }
        if let Some((_, t)) = self.cancel_at {
            at = at.min(t);
        }
        if let Some(t) = self.lifecycle.poll_timeout() {
            at = at.min(t);
        }
        at
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// A datagram on the membership socket. Garbage is dropped and counted by the node.
    pub fn membership_datagram(&mut self, now: Time, from: SocketAddr, bytes: &[u8]) {
        let _ = self.node.handle_packet(now, from, bytes);
        self.after_input(now);
    }

    /// A datagram on the control socket.
    pub fn control_datagram(&mut self, now: Time, from: SocketAddr, bytes: &[u8]) {
        match self.codec.open(self.me(), bytes) {
            Ok(Control::Agreement(sender, msg)) => {
                self.agreement.handle(now.since_epoch(), sender, msg);
            }
            Ok(Control::Exited(member)) => {
                if member != self.me() && self.exited.insert(member) {
                    info!(%member, "a launcher saw the member exit");
                    self.refresh_live(now);
                }
            }
            Ok(Control::ReportRequest { since }) => {
                self.outputs
                    .push_back(Output::ReportRequested { to: from, since });
            }
            Ok(Control::Completed(c)) => self.complete(now, c),
            Ok(Control::Report(_)) => self.dropped += 1,
            Err(reason) => {
                self.dropped += 1;
                debug!(%reason, "control datagram dropped");
            }
        }
        self.after_input(now);
    }

    /// Time passes: SWIM's timers, the agreement's retries and windows, the leave grace.
    pub fn tick(&mut self, now: Time) {
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
        if self.next_tick <= now {
            self.agreement.tick(now.since_epoch());
            self.next_tick = now + TICK;
        }
        if let Some((epoch, _)) = self.cancel_at.take_if(|(_, at)| *at <= now) {
            self.outputs.push_back(Output::Cancel {
                below: epoch + 1,
                why: "members of the epoch left",
            });
        }
        self.lifecycle.tick(now);
        self.after_input(now);
    }

    /// The group reports what happened to its epoch (see [`Lifecycle`]).
    pub fn front(&mut self, now: Time, event: FrontEvent) {
        self.lifecycle.front(now, event);
        self.after_input(now);
    }

    /// This worker finished the job: tells every member and launcher known (once; one that
    /// misses it learns it from its launcher, which passes it on to workers it sees join).
    pub fn finish(&mut self, now: Time, c: Completion) {
        self.lifecycle.finished();
        self.complete(now, c);
        let bytes = self.codec.seal_completed(c);
        for to in &self.announce_to {
            self.outputs.push_back(Output::Transmit {
                socket: Socket::Control,
                to: *to,
                bytes: bytes.clone(),
            });
        }
        self.after_input(now);
    }

    /// Leaves gracefully (the others re-form without this worker at once).
    pub fn leave(&mut self, now: Time) {
        let _ = self.node.leave(now);
        self.after_input(now);
    }

    fn complete(&mut self, now: Time, c: Completion) {
        if self.completed.is_none() {
            info!(step = c.step, "the job completed");
            self.completed = Some(c);
            self.lifecycle.completed(now, c.step);
            self.outputs.push_back(Output::Completed(c));
        }
    }

    /// Drains the node, the agreement and the lifecycle into outputs, until none has more to
    /// say (the lifecycle's actions feed the agreement, whose events feed the lifecycle).
    fn after_input(&mut self, now: Time) {
        loop {
            self.drain_node_and_agreement(now);
            let actions = self.lifecycle.take_actions();
            if actions.is_empty() {
                break;
            }
            for action in actions {
                self.act(now, action);
            }
        }
        let waiting = self.agreement.waiting_to_join();
        if waiting != self.waiting {
            self.waiting = waiting;
            self.outputs.push_back(Output::Waiting(waiting));
        }
    }

    fn act(&mut self, now: Time, action: Action) {
        match action {
            Action::Reform(epoch) => self.agreement.request_reform(now.since_epoch(), epoch),
            Action::Admitting(open) => self.agreement.set_admitting(now.since_epoch(), open),
            Action::Ended { epoch, why } => self.outputs.push_back(Output::Ended { epoch, why }),
            Action::AdmissionClosed => self.outputs.push_back(Output::AdmissionClosed),
            Action::Fault(f) => self.outputs.push_back(Output::Fault(f)),
        }
    }

    fn drain_node_and_agreement(&mut self, now: Time) {
        while let Some(t) = self.node.poll_transmit() {
            self.outputs.push_back(Output::Transmit {
                socket: Socket::Membership,
                to: t.dst,
                bytes: t.payload,
            });
        }
        let mut changed = false;
        while self.node.poll_event().is_some() {
            changed = true;
        }
        if changed {
            self.members = self.node.members();
            self.refresh_live(now);
        }
        while let Some((to, msg)) = self.agreement.poll_send() {
            let Some(addr) = self.control_addrs.get(&to) else {
                debug!(%to, "no control address yet; the agreement will retry");
                continue;
            };
            let bytes = self.codec.seal(self.me(), to, &msg);
            self.outputs.push_back(Output::Transmit {
                socket: Socket::Control,
                to: *addr,
                bytes,
            });
        }
        while let Some(ev) = self.agreement.poll_event() {
            self.apply(now, ev);
        }
    }

    /// Hands the SWIM view to the agreement: live workers, and those known to have exited (a
    /// launcher's proof, a graceful leave, or a newer life at the same address: a slot's
    /// address is bound by one process at a time, so its old life is gone).
    fn refresh_live(&mut self, now: Time) {
        let replaced: BTreeMap<SocketAddr, u64> = (self.members.iter())
            .filter(|info| info.state.is_active())
            .map(|info| (info.id.addr, info.id.incarnation.0))
            .collect();
        let (mut live, mut left) = (BTreeMap::new(), self.exited.clone());
        self.announce_to = (self.members.iter())
            .filter(|info| info.state.is_active())
            .flat_map(|info| &info.id.meta.endpoints)
            .filter(|e| e.transport == CONTROL_ENDPOINT)
            .map(|e| e.addr)
            .collect();
        for info in &self.members {
            let Some((key, advert)) = member::advertised(&info.id) else {
                continue;
            };
            self.control_addrs.insert(key, advert.endpoints.control);
            match info.state {
                _ if self.exited.contains(&key) => {}
                s if s.is_active() => {
                    live.insert(key, advert);
                }
                MemberState::Left => {
                    left.insert(key);
                }
                _ if replaced
                    .get(&info.id.addr)
                    .is_some_and(|i| *i > key.incarnation) =>
                {
                    left.insert(key);
                }
                _ => {}
            }
        }
        self.agreement.set_live(now.since_epoch(), live, left);
    }

    fn apply(&mut self, now: Time, ev: Event<MemberKey, Advert>) {
        match ev {
            Event::Installed(view) => {
                let _span = info_span!("view_change", epoch = view.epoch).entered();
                info!(size = view.members.len(), "epoch installed");
                self.cancel_at = None;
                self.outputs.push_back(Output::Cancel {
                    below: view.epoch,
                    why: "a newer epoch was installed",
                });
                if view.epoch != self.annotated {
                    self.annotated = view.epoch;
                    let ranks = view.members.iter().map(|(k, _)| *k).collect();
                    let note = EpochAnnotation {
                        epoch: view.epoch,
                        ranks,
                    };
                    let _ = self.node.set_annotation(note.encode());
                }
                self.lifecycle.installed(now, &view);
                self.outputs.push_back(Output::Installed(view));
            }
            Event::Abort { epoch, lost } => {
                let _span = info_span!("view_change", epoch).entered();
                let graceful = lost.iter().all(|k| self.left_gracefully(k));
                if graceful {
                    info!(
                        ?lost,
                        "members left: the epoch ends after its collective in flight"
                    );
                    self.cancel_at = Some((epoch, now + LEAVE_GRACE));
                } else {
                    info!(?lost, "members lost: aborting the epoch's collectives");
                    self.outputs.push_back(Output::Cancel {
                        below: epoch + 1,
                        why: "members of the epoch were lost",
                    });
                }
                self.lifecycle.aborted(now, epoch);
            }
            Event::Blocked(why) => self.outputs.push_back(Output::Blocked(why)),
        }
    }

    /// Whether `key` told the group it was leaving (not failed, not merely seen to exit).
    fn left_gracefully(&self, key: &MemberKey) -> bool {
        self.members.iter().any(|info| {
            info.state == MemberState::Left
                && member::advertised(&info.id).is_some_and(|(k, _)| k == *key)
        })
    }
}
