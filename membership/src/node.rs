//! The sans-IO membership node: foca plus authentication, timers, events and a view.
//!
//! # Contract
//!
//! Inputs, each with the current [`Time`] (which must not go backwards):
//! [`Node::join`] (or [`Node::join_preloaded`]), [`Node::handle_packet`] (a datagram and its
//! source address), [`Node::handle_timeout`] (call when [`Node::poll_timeout`] is due; early or
//! late calls are harmless), [`Node::leave`].
//!
//! Outputs, to drain after every input, in this order: [`Node::poll_transmit`] (datagrams to
//! send, already sealed), [`Node::poll_event`] (membership events), then [`Node::poll_timeout`]
//! (when to call `handle_timeout` next). [`Node::members`] is a snapshot of the view.
//!
//! The node reads no clock and does no IO; every random choice comes from the seed given to
//! [`Node::new`], so a run is reproducible from its inputs.
//!
//! # Events
//!
//! `Up` when a member joins (or refutes a suspicion), `Suspect` when this node suspects it or
//! learns that someone does, `Down` when it is declared down or replaced by a newer life
//! (restart), `Left` when it left gracefully and told us. foca only reports up and down; the
//! suspect transitions come from the updates piggybacked on authenticated packets (decoded a
//! second time here) and from the suspicion timers foca schedules, so `Suspect` is advisory.
//!
//! # Watchdog
//!
//! Under loss, foca can rarely end up renewed but not re-admitted, with no probe round running
//! (see the reference notes). The node re-announces to its seeds and to a few known members
//! whenever no probe round ran for `watchdog_periods` probe periods, and announces to a random
//! seed every `seed_announce_interval`, which also repairs splits that outlived
//! `remove_down_after`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;

use foca::{
    Codec, Foca, Member, Message, NoCustomBroadcast, OwnedNotification, PostcardCodec, State, Timer,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::config::MembershipConfig;
use crate::departed::Departed;
use crate::error::MembershipError;
use crate::identity::MemberId;
use crate::time::Time;
use crate::view::{MemberInfo, MemberState, ViewChunk};
use crate::wire::{Authenticator, DropReason, OVERHEAD, PacketKind};

/// Largest annotation [`Node::set_annotation`] accepts, in bytes.
pub const MAX_ANNOTATION: usize = 640;

type Swim = Foca<MemberId, PostcardCodec, StdRng, NoCustomBroadcast>;

/// Most membership updates decoded from one packet for the suspect tracking.
const MAX_PEEKED_UPDATES: usize = 256;
/// Most timers fired by one `handle_timeout` call (foca never schedules zero delays, so this
/// only bounds a pathological configuration).
const MAX_TIMERS_PER_CALL: usize = 100_000;
/// Roster entries given to foca per call in [`Node::join_preloaded`].
const PRELOAD_CHUNK: usize = 256;
/// Event queue capacity kept once the queue is drained.
const KEEP_EVENT_CAPACITY: usize = 1024;

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination address.
    pub dst: SocketAddr,
    /// Sealed datagram.
    pub payload: Vec<u8>,
}

/// A change in the membership as seen by this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum MembershipEvent {
    /// The member joined, rejoined, or refuted a suspicion.
    Up(MemberId),
    /// The member is suspected to have failed.
    Suspect(MemberId),
    /// The member was declared down, or replaced by a newer life of the same address.
    Down(MemberId),
    /// The member left gracefully.
    Left(MemberId),
    /// Something happened to this node itself.
    Local(LocalEvent),
}

/// A change in this node's own standing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum LocalEvent {
    /// Connected to the cluster (at least one other member is known active).
    Joined,
    /// No active member is known any more.
    Isolated,
    /// The cluster declared this node down and it could not rejoin, or it left.
    Defunct,
    /// The cluster declared this node down; it rejoined under this new identity.
    Rejoined(MemberId),
}

/// Counters of one node. Monotone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Datagrams produced by [`Node::poll_transmit`].
    pub packets_sent: u64,
    /// Bytes in those datagrams.
    pub bytes_sent: u64,
    /// Datagrams given to [`Node::handle_packet`].
    pub packets_received: u64,
    /// Datagrams dropped before foca, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Authenticated datagrams that foca rejected.
    pub protocol_errors: u64,
    /// Times the watchdog re-announced.
    pub watchdog_kicks: u64,
    /// Times this node was declared down and rejoined under a new identity.
    pub rejoins: u64,
}

impl Stats {
    /// All dropped datagrams.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Connection {
    New,
    Connected,
    Disconnected,
    Defunct,
    Left,
}

#[derive(Clone, Debug)]
struct Shadow {
    id: MemberId,
    state: MemberState,
    swim_incarnation: u16,
    since: Time,
    leaving: bool,
}

/// One membership node: the sans-IO core. See the module docs for the contract.
pub struct Node {
    foca: Swim,
    rt: foca::AccumulatingRuntime<MemberId>,
    auth: Authenticator,
    config: MembershipConfig,
    rng: StdRng,
    now: Time,
    timers: BinaryHeap<Reverse<(Time, u64)>>,
    pending: HashMap<u64, Timer<MemberId>>,
    next_timer: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<MembershipEvent>,
    shadow: BTreeMap<SocketAddr, Shadow>,
    seeds: Vec<SocketAddr>,
    connection: Connection,
    last_probe: Time,
    next_watchdog: Option<Time>,
    next_seed_announce: Option<Time>,
    stats: Stats,
    annotation: Vec<u8>,
    departed: Departed,
}

impl Node {
    /// Creates a node that has not joined anything yet.
    ///
    /// `seed` drives every random choice of this node. Fails, creating nothing, if the
    /// configuration or the identity is invalid.
    pub fn new(
        identity: MemberId,
        config: MembershipConfig,
        auth: Authenticator,
        seed: u64,
    ) -> Result<Self, MembershipError> {
        config.validate()?;
        identity.validate()?;
        let foca = Foca::new(
            identity,
            config.to_foca(),
            StdRng::seed_from_u64(seed),
            PostcardCodec,
        );
        Ok(Self {
            foca,
            rt: foca::AccumulatingRuntime::new(),
            auth,
            config,
            rng: StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            now: Time::ZERO,
            timers: BinaryHeap::new(),
            pending: HashMap::new(),
            next_timer: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            shadow: BTreeMap::new(),
            seeds: Vec::new(),
            connection: Connection::New,
            last_probe: Time::ZERO,
            next_watchdog: None,
            next_seed_announce: None,
            stats: Stats::default(),
            annotation: Vec::new(),
            departed: Departed::default(),
        })
    }

    /// Announces this node to `seeds` (its own address is skipped, so every member can be
    /// given the same list). With no other seed the node waits to be contacted.
    pub fn join(&mut self, now: Time, seeds: &[SocketAddr]) -> Result<(), MembershipError> {
        self.enter(now, seeds);
        let _span = tracing::debug_span!("join", node = %self.identity()).entered();
        for seed in self.seeds.clone() {
            self.announce(seed);
        }
        Ok(())
    }

    /// Starts as a member of a cluster whose roster is known in advance: every identity in
    /// `members` (this node's own address is skipped) is added as alive, without announcing
    /// or gossiping anything, so the node starts converged if every member is given the same
    /// roster. `seeds` play the same role as in [`Node::join`] afterwards (periodic seed
    /// announces, watchdog). The first datagrams go out with the first probe, one probe period
    /// later. The simulator uses it to start large clusters without an O(n) join phase.
    ///
    /// Cost: foca keeps members in a `Vec` with linear search, so this is O(roster²).
    pub fn join_preloaded(
        &mut self,
        now: Time,
        seeds: &[SocketAddr],
        members: impl IntoIterator<Item = MemberId>,
    ) -> Result<(), MembershipError> {
        self.enter(now, seeds);
        let own = self.identity().addr;
        let mut updates = members
            .into_iter()
            .filter(|m| m.addr != own)
            .map(Member::alive)
            .peekable();
        // In chunks, draining foca's output queues in between so that they stay small.
        while updates.peek().is_some() {
            let result =
                self.foca
                    .apply_many(updates.by_ref().take(PRELOAD_CHUNK), false, &mut self.rt);
            self.drain();
            result.map_err(|e| MembershipError::Foca(e.to_string()))?;
        }
        Ok(())
    }

    /// Common part of the joins: records the seeds and arms the watchdog.
    fn enter(&mut self, now: Time, seeds: &[SocketAddr]) {
        self.advance(now);
        let own = self.identity().addr;
        self.seeds = seeds.iter().copied().filter(|s| *s != own).collect();
        self.seeds.dedup();
        self.last_probe = now;
        self.next_watchdog = Some(now + self.watchdog_window());
        self.next_seed_announce = Some(now + self.config.seed_announce_interval);
        if self.connection == Connection::New {
            self.connection = Connection::Disconnected;
        }
    }

    /// Handles one datagram from `from`.
    ///
    /// Returns `Err(Dropped)` for packets that fail authentication (state unchanged but for
    /// the counters) and `Err(Protocol)` for authenticated packets that foca rejects.
    pub fn handle_packet(
        &mut self,
        now: Time,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<(), MembershipError> {
        self.advance(now);
        self.stats.packets_received += 1;
        if data.len() > self.config.max_packet_size {
            return Err(self.drop_packet(DropReason::Oversized));
        }
        let (kind, payload) = match self.auth.open(data) {
            Ok(opened) => opened,
            Err(reason) => return Err(self.drop_packet(reason)),
        };
        if matches!(self.connection, Connection::Left) {
            return Ok(());
        }
        match kind {
            PacketKind::Swim => self.handle_swim(payload),
            PacketKind::Leave => self.handle_leave(from, payload),
            PacketKind::ViewRequest => self.handle_view_request(from, payload),
            PacketKind::ViewReply => Ok(()),
            PacketKind::Control => Err(self.drop_packet(DropReason::BadKind)),
        }
    }

    /// Fires every timer due at `now` and runs the watchdog.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        if matches!(self.connection, Connection::Left) {
            self.timers.clear();
            self.pending.clear();
            return;
        }
        for _ in 0..MAX_TIMERS_PER_CALL {
            let Some(Reverse((due, seq))) = self.timers.peek().copied() else {
                break;
            };
            if due > now {
                break;
            }
            self.timers.pop();
            let Some(timer) = self.pending.remove(&seq) else {
                continue;
            };
            if matches!(timer, Timer::ProbeRandomMember(_)) {
                self.last_probe = now;
            }
            if let Err(err) = self.foca.handle_timer(timer, &mut self.rt) {
                // IncompleteProbeCycle is foca recovering by itself; anything else is logged.
                self.stats.protocol_errors += 1;
                tracing::debug!(node = %self.foca.identity(), %err, "timer error");
            }
            self.drain();
        }
        if self.next_seed_announce.is_some_and(|t| t <= now) {
            self.next_seed_announce = Some(now + self.config.seed_announce_interval);
            if !self.seeds.is_empty() {
                let seed = self.seeds[self.rng.random_range(0..self.seeds.len())];
                self.announce(seed);
            }
        }
        if self.next_watchdog.is_some_and(|t| t <= now) {
            self.next_watchdog = Some(now + self.config.probe_period);
            self.watchdog(now);
        }
    }

    /// Leaves gracefully: tells every known active member directly, gossips our own `Down`,
    /// and stops reacting to anything. Idempotent.
    pub fn leave(&mut self, now: Time) -> Result<(), MembershipError> {
        self.advance(now);
        if matches!(self.connection, Connection::Left) {
            return Ok(());
        }
        let _span = tracing::info_span!("leave", node = %self.identity()).entered();
        let me = postcard::to_allocvec(self.foca.identity())
            .map_err(|e| MembershipError::Foca(e.to_string()))?;
        let targets: Vec<SocketAddr> = self
            .shadow
            .values()
            .filter(|s| s.state.is_active())
            .map(|s| s.id.addr)
            .collect();
        for dst in targets {
            self.push_sealed(PacketKind::Leave, dst, &me);
        }
        let result = self.foca.leave_cluster(&mut self.rt);
        self.drain();
        self.connection = Connection::Left;
        self.timers.clear();
        self.pending.clear();
        self.next_watchdog = None;
        self.next_seed_announce = None;
        tracing::info!("left the cluster");
        result.map_err(|e| MembershipError::Foca(e.to_string()))
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next membership event, if any.
    pub fn poll_event(&mut self) -> Option<MembershipEvent> {
        let event = self.events.pop_front();
        if event.is_none() && self.events.capacity() > KEEP_EVENT_CAPACITY {
            // Do not keep the buffer of a burst (a preloaded roster) for the node's lifetime.
            self.events = VecDeque::new();
        }
        event
    }

    /// When [`Node::handle_timeout`] should be called next; `None` when nothing is scheduled.
    pub fn poll_timeout(&self) -> Option<Time> {
        let timer = self.timers.peek().map(|Reverse((due, _))| *due);
        [timer, self.next_watchdog, self.next_seed_announce]
            .into_iter()
            .flatten()
            .min()
    }

    /// This node's current identity (it changes when the node rejoins after a false `Down`).
    pub fn identity(&self) -> &MemberId {
        self.foca.identity()
    }

    /// The configuration.
    pub const fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// Counters.
    pub const fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Number of active members other than this node.
    pub fn num_active(&self) -> usize {
        self.foca.num_members()
    }

    /// Whether this node believes it is part of a cluster.
    pub fn is_connected(&self) -> bool {
        self.connection == Connection::Connected
    }

    /// Snapshot of the view: this node first (alive), then every member foca remembers.
    pub fn members(&self) -> Vec<MemberInfo> {
        let mut out = Vec::with_capacity(self.foca.iter_membership_state().len() + 1);
        out.push(MemberInfo {
            id: self.identity().clone(),
            state: if self.connection == Connection::Left {
                MemberState::Left
            } else {
                MemberState::Alive
            },
            swim_incarnation: 0,
            time_in_state_ms: 0,
        });
        for member in self.foca.iter_membership_state() {
            let shadow = self
                .shadow
                .get(&member.id().addr)
                .filter(|s| &s.id == member.id());
            let state = match (member.state(), shadow) {
                (State::Alive, _) => MemberState::Alive,
                (State::Suspect, _) => MemberState::Suspect,
                (State::Down, Some(s)) if s.state == MemberState::Left => MemberState::Left,
                (State::Down, _) => MemberState::Down,
            };
            let since = shadow.map_or(self.now, |s| s.since);
            out.push(MemberInfo {
                id: member.id().clone(),
                state,
                swim_incarnation: member.incarnation(),
                time_in_state_ms: self.now.saturating_since(since).as_millis() as u64,
            });
        }
        let gone = self.departed.missing_from(&out, self.now);
        out.extend(gone);
        out
    }

    fn advance(&mut self, now: Time) {
        debug_assert!(now >= self.now, "time went backwards");
        self.now = self.now.max(now);
    }

    fn watchdog_window(&self) -> std::time::Duration {
        self.config.probe_period * self.config.watchdog_periods
    }

    fn drop_packet(&mut self, reason: DropReason) -> MembershipError {
        *self.stats.dropped.entry(reason.to_string()).or_default() += 1;
        tracing::trace!(%reason, "dropped packet");
        MembershipError::Dropped(reason)
    }

    fn announce(&mut self, dst: SocketAddr) {
        if let Err(err) = self.foca.announce(MemberId::placeholder(dst), &mut self.rt) {
            tracing::debug!(%err, "announce failed");
        }
        self.drain();
    }

    fn watchdog(&mut self, now: Time) {
        let stalled = now.saturating_since(self.last_probe) >= self.watchdog_window();
        let stuck = match self.connection {
            Connection::Connected | Connection::Disconnected => stalled,
            Connection::New | Connection::Defunct | Connection::Left => false,
        };
        if !stuck {
            return;
        }
        self.stats.watchdog_kicks += 1;
        self.last_probe = now;
        tracing::debug!(node = %self.identity(), connection = ?self.connection, "watchdog: re-announcing");
        let mut targets = self.seeds.clone();
        let known: Vec<SocketAddr> = self
            .shadow
            .values()
            .filter(|s| s.state.is_active())
            .map(|s| s.id.addr)
            .collect();
        for _ in 0..2 {
            if !known.is_empty() {
                targets.push(known[self.rng.random_range(0..known.len())]);
            }
        }
        targets.sort();
        targets.dedup();
        for dst in targets {
            self.announce(dst);
        }
    }

    fn handle_swim(&mut self, payload: &[u8]) -> Result<(), MembershipError> {
        let peeked = peek(payload);
        let result = self.foca.handle_data(payload, &mut self.rt);
        self.drain();
        match result {
            Ok(()) => {
                if let Some((header, updates)) = peeked {
                    self.track_suspicion(header, updates);
                }
                Ok(())
            }
            Err(err) => {
                self.stats.protocol_errors += 1;
                tracing::debug!(node = %self.foca.identity(), %err, "foca rejected a packet");
                Err(MembershipError::Protocol(err.to_string()))
            }
        }
    }

    fn handle_leave(&mut self, from: SocketAddr, payload: &[u8]) -> Result<(), MembershipError> {
        let Ok(id) = postcard::from_bytes::<MemberId>(payload) else {
            return Err(self.drop_packet(DropReason::Malformed));
        };
        // Only a member may announce its own departure.
        if id.addr != from || id == *self.identity() {
            return Err(self.drop_packet(DropReason::Malformed));
        }
        let Some(shadow) = self.shadow.get_mut(&id.addr).filter(|s| s.id == id) else {
            return Ok(());
        };
        shadow.leaving = true;
        if shadow.state == MemberState::Down {
            // foca's own `Down` gossip overtook the notice: correct the reason.
            shadow.state = MemberState::Left;
            self.emit(MembershipEvent::Left(id));
            return Ok(());
        }
        if shadow.state == MemberState::Left {
            return Ok(());
        }
        let update = Member::new(id, shadow.swim_incarnation, State::Down);
        let result = self
            .foca
            .apply_many(std::iter::once(update), true, &mut self.rt);
        self.drain();
        result.map_err(|e| MembershipError::Protocol(e.to_string()))
    }

    /// Publishes `bytes` (at most [`MAX_ANNOTATION`] bytes; longer is refused) with every
    /// answer to an observer's view request.
    pub fn set_annotation(&mut self, bytes: Vec<u8>) -> Result<(), MembershipError> {
        if bytes.len() > MAX_ANNOTATION {
            return Err(MembershipError::Foca(format!(
                "annotation of {} bytes exceeds {MAX_ANNOTATION}",
                bytes.len()
            )));
        }
        self.annotation = bytes;
        Ok(())
    }

    fn handle_view_request(
        &mut self,
        from: SocketAddr,
        payload: &[u8],
    ) -> Result<(), MembershipError> {
        let Ok(request) = postcard::from_bytes::<u64>(payload) else {
            return Err(self.drop_packet(DropReason::Malformed));
        };
        let members = self.members();
        let budget = self.config.max_packet_size - OVERHEAD - 2 * crate::MAX_IDENTITY_LEN;
        let mut chunks: Vec<Vec<MemberInfo>> = vec![Vec::new()];
        let mut used = self.annotation.len() + 2;
        for member in members {
            let len = postcard::to_allocvec(&member).map_or(budget, |v| v.len());
            let last = chunks.last_mut().expect("chunks is never empty");
            if used + len > budget && !last.is_empty() {
                chunks.push(Vec::new());
                used = 0;
            }
            used += len;
            chunks
                .last_mut()
                .expect("chunks is never empty")
                .push(member);
        }
        let parts = u16::try_from(chunks.len()).unwrap_or(u16::MAX);
        for (part, members) in chunks.into_iter().enumerate().take(usize::from(parts)) {
            let chunk = ViewChunk {
                request,
                responder: self.identity().clone(),
                part: part as u16,
                parts,
                members,
                annotation: match part {
                    0 => self.annotation.clone(),
                    _ => Vec::new(),
                },
            };
            let bytes =
                postcard::to_allocvec(&chunk).map_err(|e| MembershipError::Foca(e.to_string()))?;
            self.push_sealed(PacketKind::ViewReply, from, &bytes);
        }
        Ok(())
    }

    fn push_sealed(&mut self, kind: PacketKind, dst: SocketAddr, payload: &[u8]) {
        let mut sealed = Vec::with_capacity(payload.len() + OVERHEAD);
        self.auth.seal(kind, payload, &mut sealed);
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += sealed.len() as u64;
        self.transmits.push_back(Transmit {
            dst,
            payload: sealed,
        });
    }

    /// Moves foca's outputs into the node's queues.
    fn drain(&mut self) {
        while let Some((dst, data)) = self.rt.to_send() {
            self.push_sealed(PacketKind::Swim, dst.addr, &data);
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            if let Timer::ChangeSuspectToDown {
                member_id,
                incarnation,
                ..
            } = &timer
            {
                self.mark_suspect(&member_id.clone(), *incarnation);
            }
            let seq = self.next_timer;
            self.next_timer += 1;
            self.timers.push(Reverse((self.now + after, seq)));
            self.pending.insert(seq, timer);
        }
        while let Some(notification) = self.rt.to_notify() {
            self.on_notification(notification);
        }
    }

    fn on_notification(&mut self, notification: OwnedNotification<MemberId>) {
        let now = self.now;
        match notification {
            OwnedNotification::MemberUp(id) => {
                let entry = self.shadow.get(&id.addr);
                if entry.is_some_and(|s| s.id == id && s.state == MemberState::Alive) {
                    return;
                }
                if let Some(old) = entry.filter(|s| s.id != id && s.state.is_active()) {
                    let old = old.id.clone();
                    self.emit(MembershipEvent::Down(old));
                }
                self.shadow
                    .insert(id.addr, shadow(id.clone(), MemberState::Alive, now));
                self.emit(MembershipEvent::Up(id));
            }
            OwnedNotification::MemberDown(id) => {
                let leaving = self
                    .shadow
                    .get(&id.addr)
                    .is_some_and(|s| s.id == id && s.leaving);
                let state = if leaving {
                    MemberState::Left
                } else {
                    MemberState::Down
                };
                self.shadow.insert(id.addr, shadow(id.clone(), state, now));
                self.emit(if leaving {
                    MembershipEvent::Left(id)
                } else {
                    MembershipEvent::Down(id)
                });
            }
            OwnedNotification::Rename(old, new) => {
                let old_active = self
                    .shadow
                    .get(&old.addr)
                    .is_some_and(|s| s.id == old && s.state.is_active());
                if old_active {
                    // A restart (or rejoin) replaced a live member: the old life is gone.
                    self.emit(MembershipEvent::Down(old));
                    self.shadow
                        .insert(new.addr, shadow(new.clone(), MemberState::Alive, now));
                    self.emit(MembershipEvent::Up(new));
                } else {
                    self.shadow
                        .insert(new.addr, shadow(new, MemberState::Down, now));
                }
            }
            OwnedNotification::Active => {
                self.connection = Connection::Connected;
                self.last_probe = now;
                self.emit(MembershipEvent::Local(LocalEvent::Joined));
            }
            OwnedNotification::Idle => {
                self.connection = Connection::Disconnected;
                self.emit(MembershipEvent::Local(LocalEvent::Isolated));
            }
            OwnedNotification::Defunct => {
                if self.connection != Connection::Left {
                    self.connection = Connection::Defunct;
                }
                self.emit(MembershipEvent::Local(LocalEvent::Defunct));
            }
            OwnedNotification::Rejoin(id) => {
                self.connection = Connection::Disconnected;
                self.last_probe = now;
                self.stats.rejoins += 1;
                self.emit(MembershipEvent::Local(LocalEvent::Rejoined(id)));
            }
        }
    }

    fn mark_suspect(&mut self, id: &MemberId, swim_incarnation: u16) {
        let now = self.now;
        if let Some(s) = self.shadow.get_mut(&id.addr).filter(|s| &s.id == id)
            && s.state == MemberState::Alive
            && swim_incarnation >= s.swim_incarnation
        {
            s.state = MemberState::Suspect;
            s.swim_incarnation = swim_incarnation;
            s.since = now;
            self.emit(MembershipEvent::Suspect(id.clone()));
        }
    }

    fn mark_alive(&mut self, id: &MemberId, swim_incarnation: u16) {
        let now = self.now;
        if let Some(s) = self.shadow.get_mut(&id.addr).filter(|s| &s.id == id) {
            match s.state {
                MemberState::Alive if swim_incarnation > s.swim_incarnation => {
                    s.swim_incarnation = swim_incarnation;
                }
                MemberState::Suspect if swim_incarnation > s.swim_incarnation => {
                    s.state = MemberState::Alive;
                    s.swim_incarnation = swim_incarnation;
                    s.since = now;
                    self.emit(MembershipEvent::Up(id.clone()));
                }
                _ => {}
            }
        }
    }

    /// Mirrors foca's Alive/Suspect precedence rules on the updates of an accepted packet.
    fn track_suspicion(&mut self, header: foca::Header<MemberId>, updates: Vec<Member<MemberId>>) {
        let accepted = header.dst == *self.identity() || header.message == Message::Announce;
        let sender_active = self
            .shadow
            .get(&header.src.addr)
            .is_some_and(|s| s.id == header.src && s.state.is_active());
        if !accepted || !sender_active {
            return;
        }
        self.mark_alive(&header.src, header.src_incarnation);
        for update in updates {
            if update.id() == self.identity() {
                continue;
            }
            match update.state() {
                State::Alive => self.mark_alive(update.id(), update.incarnation()),
                State::Suspect => self.mark_suspect(update.id(), update.incarnation()),
                State::Down => {}
            }
        }
    }

    fn emit(&mut self, event: MembershipEvent) {
        match &event {
            MembershipEvent::Down(id) => self.departed.record(id, MemberState::Down, self.now),
            MembershipEvent::Left(id) => self.departed.record(id, MemberState::Left, self.now),
            _ => {}
        }
        match &event {
            MembershipEvent::Up(id) => {
                tracing::info!(node = %self.foca.identity(), member = %id, "member up")
            }
            MembershipEvent::Suspect(id) => {
                tracing::info!(node = %self.foca.identity(), member = %id, "member suspect")
            }
            MembershipEvent::Down(id) => {
                tracing::warn!(node = %self.foca.identity(), member = %id, "member down")
            }
            MembershipEvent::Left(id) => {
                tracing::info!(node = %self.foca.identity(), member = %id, "member left")
            }
            MembershipEvent::Local(local) => {
                tracing::info!(node = %self.foca.identity(), event = ?local, "local membership change")
            }
        }
        self.events.push_back(event);
    }
}

fn shadow(id: MemberId, state: MemberState, since: Time) -> Shadow {
    Shadow {
        id,
        state,
        swim_incarnation: 0,
        since,
        leaving: false,
    }
}

/// Decodes a SWIM payload's header and piggybacked updates without touching foca's state.
fn peek(mut data: &[u8]) -> Option<(foca::Header<MemberId>, Vec<Member<MemberId>>)> {
    let mut codec = PostcardCodec;
    let header: foca::Header<MemberId> = codec.decode_header(&mut data).ok()?;
    let mut updates = Vec::new();
    if data.len() >= 2 && header.message != Message::Broadcast {
        let count = usize::from(u16::from_be_bytes([data[0], data[1]]));
        data = &data[2..];
        for _ in 0..count.min(MAX_PEEKED_UPDATES) {
            match codec.decode_member(&mut data) {
                Ok(member) => updates.push(member),
                Err(_) => break,
            }
        }
    }
    Some((header, updates))
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
