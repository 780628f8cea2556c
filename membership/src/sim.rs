//! A seeded deterministic simulator of many [`Node`]s on an in-memory network.
//!
//! One `u64` seed drives everything (node RNGs, latency, loss, duplication); the virtual clock
//! only moves when the next event is taken off the queue, and ties are broken by insertion
//! order, so one seed reproduces a run exactly ([`Sim::fingerprint`] checks it).
//!
//! Network model: every datagram gets a latency drawn uniformly from the link's range, is lost
//! with the link's probability, and is duplicated (a second copy with its own latency) with the
//! duplication probability. [`Sim::set_link`] overrides one directed link; [`Sim::partition`]
//! drops every datagram between groups until [`Sim::heal`]. [`Sim::crash`] removes a node (its
//! queued datagrams and timers are dropped); [`Sim::restart`] starts a new life at the same
//! address with a larger restart incarnation.
//!
//! Start-up: by default member `i` joins at `i` ms by announcing to the seeds. With
//! [`SimConfig::preloaded`] every member instead starts with the full roster
//! ([`Node::join_preloaded`]) at a random instant within the first probe period, so the run
//! starts converged; that is how the measurements start clusters of thousands of members.
//!
//! Cost at scale: foca keeps each node's members in a `Vec` searched linearly, so a preloaded
//! start is O(n³) in total, every handled datagram costs O(n), and the state of all nodes
//! together is O(n²) identities. With [`SimConfig::views`] off the simulator itself keeps
//! only O(n + crashes × n) bookkeeping (who declared which crashed member down, and when; who
//! holds a live member down) instead of one view per member.
//!
//! Invariants, checked after every step and at the deadlines they define (a failure message
//! always starts with `SIM_SEED=<seed>`):
//! 1. *No false majority*: while loss is at most 5 % and no partition is active, a live member
//!    is never declared down by a majority of the live members.
//! 2. *Detection*: every member that crashes is declared down (or replaced by its restart) by
//!    every member that was live and knew it at crash time, within
//!    [`MembershipConfig::detection_bound`].
//! 3. *Convergence*: within [`MembershipConfig::convergence_bound`] after a partition heals,
//!    every live member's active set is exactly the set of live members' current identities.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::config::MembershipConfig;
use crate::identity::{Incarnation, MemberId, Metadata, NodeId, loopback};
use crate::node::{LocalEvent, MembershipEvent, Node};
use crate::time::Time;
use crate::view::MemberState;
use crate::wire::{Authenticator, JobId};

/// Shared secret of simulated jobs.
pub const SIM_SECRET: &[u8] = b"ringrun-simulator-secret";
/// First port of simulated members (addresses are 127.0.0.1:port; nothing is bound).
pub const BASE_PORT: u16 = 20_000;

/// Delay and loss of a directed link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Smallest latency.
    pub latency_min: Duration,
    /// Largest latency.
    pub latency_max: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            latency_min: Duration::from_micros(100),
            latency_max: Duration::from_millis(1),
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

/// Parameters of a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Root seed.
    pub seed: u64,
    /// Members started by [`Sim::new`].
    pub members: usize,
    /// Protocol parameters of every member.
    pub membership: MembershipConfig,
    /// Default link.
    pub link: Link,
    /// Members used as seeds by everyone (the first `seeds` members).
    pub seeds: usize,
    /// Record a per-node event trace (for failure reports); costs memory on big runs.
    pub trace: bool,
    /// Start every member with the full roster instead of announce-based joins (see the module
    /// docs): the run starts converged.
    pub preloaded: bool,
    /// Keep one view per member built from its events (O(n²) memory). Without it, the
    /// observers of a crash are the live members that do not hold the victim down (exact when
    /// every live member knows every other, as after a preloaded start), the detection
    /// invariant reads the recorded `Down` events, and [`Sim::converged`] reads the nodes'
    /// own views.
    pub views: bool,
}

impl SimConfig {
    /// `members` members with the default configuration and a clean sub-millisecond network.
    pub fn new(seed: u64, members: usize) -> Self {
        Self {
            seed,
            members,
            membership: MembershipConfig::default(),
            link: Link::default(),
            seeds: 3,
            trace: true,
            preloaded: false,
            views: true,
        }
    }

    /// A cluster of `members` that starts converged ([`SimConfig::preloaded`]), with the
    /// lean bookkeeping of large runs (no views, no trace).
    pub fn converged(seed: u64, members: usize) -> Self {
        Self {
            trace: false,
            preloaded: true,
            views: false,
            ..Self::new(seed, members)
        }
    }
}

enum Event {
    Deliver {
        to: usize,
        life: u64,
        from: SocketAddr,
        data: Vec<u8>,
    },
    Wake {
        node: usize,
        life: u64,
        at: Time,
    },
    CheckDetection(usize),
    CheckConvergence,
}

struct Slot {
    node: Option<Node>,
    addr: SocketAddr,
    /// Bumped on every start so that datagrams and wake-ups of a previous life are dropped.
    life: u64,
    restarts: u64,
    wake: Option<Time>,
    view: BTreeMap<SocketAddr, (MemberId, MemberState)>,
    group: u32,
}

struct Crash {
    id: MemberId,
    at: Time,
    /// Sorted.
    observers: Vec<usize>,
    detected_by: BTreeMap<usize, Time>,
}

/// What the survivors did about one crashed member, for measurements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashReport {
    /// The crashed life.
    pub member: MemberId,
    /// When it crashed.
    pub at: Time,
    /// Members that held it active at crash time and are still live.
    pub observers: usize,
    /// For each of those that declared it down so far, the delay from the crash to its first
    /// `Down` (or `Left`) event about it; sorted.
    pub detections: Vec<Duration>,
}

impl CrashReport {
    /// Observers that have not declared it down yet.
    pub fn undetected(&self) -> usize {
        self.observers - self.detections.len()
    }
}

/// Aggregate counters of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams emitted by all nodes.
    pub sent: u64,
    /// Datagrams delivered to a live node.
    pub delivered: u64,
    /// `Down` events about a member that was live and reachable at the time.
    pub false_downs: u64,
    /// Node-level rejoins after being declared down.
    pub rejoins: u64,
    /// Events processed.
    pub steps: u64,
}

/// The simulator. See the module docs.
pub struct Sim {
    config: SimConfig,
    now: Time,
    rng: StdRng,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    events: HashMap<u64, Event>,
    next_seq: u64,
    slots: Vec<Slot>,
    links: HashMap<(usize, usize), Link>,
    partitioned: bool,
    seeds: Vec<SocketAddr>,
    by_addr: HashMap<SocketAddr, usize>,
    crashes: Vec<Crash>,
    /// Observers that currently hold a live member's current identity as down.
    down_by: Vec<BTreeSet<usize>>,
    converge_deadline: Option<Time>,
    violations: Vec<String>,
    trace: VecDeque<String>,
    stats: SimStats,
    fingerprint: DefaultHasher,
}

const TRACE_LINES: usize = 60;

impl Sim {
    /// Starts `config.members` members: member `i` joins at `i` ms through the seeds, or, with
    /// [`SimConfig::preloaded`], every member starts with the full roster at a random instant
    /// within the first probe period.
    pub fn new(config: SimConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        let n = config.members;
        let seeds: Vec<SocketAddr> = (0..config.seeds.min(n)).map(addr_of).collect();
        let mut sim = Self {
            now: Time::ZERO,
            rng,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_seq: 0,
            slots: Vec::with_capacity(n),
            links: HashMap::new(),
            partitioned: false,
            seeds,
            by_addr: HashMap::new(),
            crashes: Vec::new(),
            down_by: vec![BTreeSet::new(); n],
            converge_deadline: None,
            violations: Vec::new(),
            trace: VecDeque::new(),
            stats: SimStats::default(),
            fingerprint: DefaultHasher::new(),
            config,
        };
        for i in 0..n {
            sim.slots.push(Slot {
                node: None,
                addr: addr_of(i),
                life: 0,
                restarts: 0,
                wake: None,
                view: BTreeMap::new(),
                group: 0,
            });
            sim.by_addr.insert(addr_of(i), i);
        }
        if sim.config.preloaded {
            let roster: Vec<MemberId> = (0..n).map(|i| sim.identity_of(i)).collect();
            let period = sim.config.membership.probe_period.as_micros() as u64;
            let mut last = Time::ZERO;
            for i in 0..n {
                sim.now = Time::from_micros(sim.rng.random_range(0..period.max(1)));
                last = last.max(sim.now);
                sim.start_with(i, Some(&roster));
            }
            sim.now = last;
        } else {
            for i in 0..n {
                sim.now = Time::from_micros(i as u64 * 1000);
                sim.start(i);
            }
        }
        sim
    }

    /// Current virtual time.
    pub const fn now(&self) -> Time {
        self.now
    }

    /// The configuration.
    pub const fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Counters.
    pub const fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Live members.
    pub fn live(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|i| self.slots[*i].node.is_some())
            .collect()
    }

    /// Member `i`'s node, if live.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.slots.get(i)?.node.as_ref()
    }

    /// Sets the default link for every pair without an override.
    pub fn set_default_link(&mut self, link: Link) {
        self.config.link = link;
    }

    /// Overrides the directed link `from -> to`.
    pub fn set_link(&mut self, from: usize, to: usize, link: Link) {
        self.links.insert((from, to), link);
    }

    /// Splits the members into `groups` (members not listed form one more group).
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        for slot in &mut self.slots {
            slot.group = u32::MAX;
        }
        for (g, members) in groups.iter().enumerate() {
            for &i in members {
                self.slots[i].group = g as u32;
            }
        }
        self.partitioned = true;
        self.note(format!("partition {groups:?}"));
    }

    /// Removes the partition; convergence is checked after the convergence bound.
    pub fn heal(&mut self) {
        for slot in &mut self.slots {
            slot.group = 0;
        }
        self.partitioned = false;
        let bound = self.config.membership.convergence_bound(self.live().len());
        let at = self.now + bound;
        self.converge_deadline = Some(at);
        self.push(at, Event::CheckConvergence);
        self.note("heal".to_string());
    }

    /// Crashes member `i` (no-op if it is down). Its detection is checked after the bound.
    pub fn crash(&mut self, i: usize) {
        let Some(node) = self.slots[i].node.take() else {
            return;
        };
        let id = node.identity().clone();
        self.slots[i].wake = None;
        let observers: Vec<usize> = if self.config.views {
            self.live()
                .into_iter()
                .filter(|&k| {
                    self.slots[k]
                        .view
                        .get(&id.addr)
                        .is_some_and(|(v, s)| *v == id && s.is_active())
                })
                .collect()
        } else {
            self.live()
                .into_iter()
                .filter(|k| !self.down_by[i].contains(k))
                .collect()
        };
        let bound = self
            .config
            .membership
            .detection_bound(self.live().len() + 1);
        self.note(format!("crash {i} ({id})"));
        self.crashes.push(Crash {
            id,
            at: self.now,
            observers,
            detected_by: BTreeMap::new(),
        });
        let crash = self.crashes.len() - 1;
        self.push(self.now + bound, Event::CheckDetection(crash));
    }

    /// Member `i` leaves gracefully: its last datagrams are sent, then it stops.
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        let Some(node) = self.slots[i].node.as_mut() else {
            return;
        };
        let _ = node.leave(now);
        self.note(format!("leave {i}"));
        self.after_input(i);
        self.slots[i].node = None;
        self.slots[i].wake = None;
    }

    /// Restarts member `i` as a new life (no-op if it is live).
    pub fn restart(&mut self, i: usize) {
        if self.slots[i].node.is_some() {
            return;
        }
        self.slots[i].restarts += 1;
        self.note(format!("restart {i}"));
        self.start(i);
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: Time) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            let Some(event) = self.events.remove(&seq) else {
                continue;
            };
            self.now = at;
            self.stats.steps += 1;
            self.step(event);
        }
        self.now = self.now.max(until);
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        self.run_until(until);
    }

    /// Runs until every live member's view is converged, or `limit` passes; returns whether it
    /// converged.
    pub fn run_until_converged(&mut self, limit: Duration) -> bool {
        let until = self.now + limit;
        let step = self.config.membership.probe_period;
        while self.now < until {
            if self.converged() {
                return true;
            }
            self.run_for(step);
        }
        self.converged()
    }

    /// Whether every live member's active set equals the live members' current identities.
    pub fn converged(&self) -> bool {
        self.divergence().is_none()
    }

    /// Invariant violations so far, each starting with `SIM_SEED=<seed>`.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Panics with every violation, the seed and the recent trace if any invariant failed.
    pub fn assert_ok(&self) {
        if !self.violations.is_empty() {
            let mut report = self.violations.join("\n");
            let _ = write!(report, "\nrecent trace:\n");
            for line in &self.trace {
                let _ = writeln!(report, "  {line}");
            }
            panic!("{report}");
        }
    }

    /// For each crash, the time until every observer that is still live declared it down
    /// (`None` if some never did).
    pub fn detection_times(&self) -> Vec<Option<Duration>> {
        self.crashes
            .iter()
            .map(|c| {
                let mut latest = c.at;
                for &k in &c.observers {
                    if self.slots[k].node.is_none() {
                        continue;
                    }
                    latest = latest.max(*c.detected_by.get(&k)?);
                }
                Some(latest.saturating_since(c.at))
            })
            .collect()
    }

    /// For each crash, in order, every observer's detection delay.
    pub fn crash_reports(&self) -> Vec<CrashReport> {
        self.crashes
            .iter()
            .map(|c| {
                let live: Vec<usize> = c
                    .observers
                    .iter()
                    .copied()
                    .filter(|&k| self.slots[k].node.is_some())
                    .collect();
                let mut detections: Vec<Duration> = live
                    .iter()
                    .filter_map(|k| c.detected_by.get(k))
                    .map(|t| t.saturating_since(c.at))
                    .collect();
                detections.sort();
                CrashReport {
                    member: c.id.clone(),
                    at: c.at,
                    observers: live.len(),
                    detections,
                }
            })
            .collect()
    }

    /// For each crash, the time until the first observer declared it down.
    pub fn first_detection_times(&self) -> Vec<Option<Duration>> {
        self.crashes
            .iter()
            .map(|c| {
                c.detected_by
                    .values()
                    .min()
                    .map(|t| t.saturating_since(c.at))
            })
            .collect()
    }

    /// A hash of every event of the run so far: equal for equal seeds.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint.finish()
    }

    fn seed_for(&self, i: usize) -> u64 {
        let mut h = DefaultHasher::new();
        (self.config.seed, i, self.slots[i].restarts).hash(&mut h);
        h.finish()
    }

    fn identity_of(&self, i: usize) -> MemberId {
        let slot = &self.slots[i];
        MemberId::new(
            NodeId(i as u64),
            slot.addr,
            Incarnation(slot.restarts),
            Metadata::default(),
        )
    }

    fn start(&mut self, i: usize) {
        self.start_with(i, None);
    }

    /// Starts a new life of member `i`, joining through the seeds or with `roster` preloaded.
    fn start_with(&mut self, i: usize, roster: Option<&[MemberId]>) {
        let seed = self.seed_for(i);
        let id = self.identity_of(i);
        let slot = &mut self.slots[i];
        slot.life += 1;
        slot.view.clear();
        slot.wake = None;
        let auth = Authenticator::new(JobId(1), SIM_SECRET).expect("simulator secret is long");
        let mut node = Node::new(id, self.config.membership.clone(), auth, seed)
            .expect("simulator configuration is valid");
        match roster {
            None => {
                let _ = node.join(self.now, &self.seeds);
            }
            Some(roster) => {
                node.join_preloaded(self.now, &self.seeds, roster.iter().cloned())
                    .expect("a preloaded roster is accepted");
                // The n - 1 `Up` events of the preload are the starting state, not part of the
                // run: they fill the view (if kept) without going through `observe_event`.
                let mut ups = 0u64;
                while let Some(event) = node.poll_event() {
                    if let MembershipEvent::Up(id) = event {
                        ups += 1;
                        if self.config.views {
                            slot.view.insert(id.addr, (id, MemberState::Alive));
                        }
                    }
                }
                (i, ups).hash(&mut self.fingerprint);
            }
        }
        self.slots[i].node = Some(node);
        self.down_by[i].clear();
        self.after_input(i);
    }

    fn push(&mut self, at: Time, event: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse((at, seq)));
        self.events.insert(seq, event);
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Deliver {
                to,
                life,
                from,
                data,
            } => {
                let slot = &mut self.slots[to];
                if slot.life != life {
                    return;
                }
                let Some(node) = slot.node.as_mut() else {
                    return;
                };
                self.stats.delivered += 1;
                let result = node.handle_packet(self.now, from, &data);
                if let Err(err) = result {
                    // Authenticated protocol errors happen (e.g. stale probes after a rejoin);
                    // authentication failures never should inside one simulated job.
                    if matches!(err, crate::MembershipError::Dropped(_)) {
                        let seed = self.config.seed;
                        self.violations
                            .push(format!("SIM_SEED={seed}: in-job packet dropped: {err}"));
                    }
                }
                self.after_input(to);
            }
            Event::Wake { node, life, at } => {
                let slot = &mut self.slots[node];
                if slot.life != life || slot.wake != Some(at) {
                    return;
                }
                slot.wake = None;
                if let Some(n) = slot.node.as_mut() {
                    n.handle_timeout(self.now);
                }
                self.after_input(node);
            }
            Event::CheckDetection(crash) => self.check_detection(crash),
            Event::CheckConvergence => self.check_convergence(),
        }
    }

    fn after_input(&mut self, i: usize) {
        let mut outgoing = Vec::new();
        let mut events = Vec::new();
        let (wake, life) = {
            let slot = &mut self.slots[i];
            let Some(node) = slot.node.as_mut() else {
                return;
            };
            while let Some(t) = node.poll_transmit() {
                outgoing.push(t);
            }
            while let Some(e) = node.poll_event() {
                events.push(e);
            }
            (node.poll_timeout(), slot.life)
        };
        if let Some(at) = wake {
            let at = at.max(self.now);
            if self.slots[i].wake.is_none_or(|w| at < w) {
                self.slots[i].wake = Some(at);
                self.push(at, Event::Wake { node: i, life, at });
            }
        }
        let from = self.slots[i].addr;
        for transmit in outgoing {
            self.stats.sent += 1;
            let Some(&to) = self.by_addr.get(&transmit.dst) else {
                continue;
            };
            if self.slots[i].group != self.slots[to].group {
                continue;
            }
            let link = self
                .links
                .get(&(i, to))
                .copied()
                .unwrap_or(self.config.link);
            let copies = if self.rng.random_bool(link.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                if self.rng.random_bool(link.loss) {
                    continue;
                }
                let latency = if link.latency_max > link.latency_min {
                    let span = (link.latency_max - link.latency_min).as_micros() as u64;
                    link.latency_min + Duration::from_micros(self.rng.random_range(0..=span))
                } else {
                    link.latency_min
                };
                let life = self.slots[to].life;
                self.push(
                    self.now + latency,
                    Event::Deliver {
                        to,
                        life,
                        from,
                        data: transmit.payload.clone(),
                    },
                );
            }
        }
        for event in events {
            self.observe_event(i, event);
        }
    }

    fn observe_event(&mut self, k: usize, event: MembershipEvent) {
        if self.config.trace {
            let line = format!(
                "{:>9.3}s node {k}: {event:?}",
                self.now.since_epoch().as_secs_f64()
            );
            line.hash(&mut self.fingerprint);
            self.note_raw(line);
        } else {
            (k, self.now.as_micros(), format!("{event:?}")).hash(&mut self.fingerprint);
        }
        match event {
            MembershipEvent::Up(id) => {
                if let Some(&j) = self.by_addr.get(&id.addr)
                    && self.current_id(j).as_ref() == Some(&id)
                {
                    self.down_by[j].remove(&k);
                }
                if self.config.views {
                    self.slots[k].view.insert(id.addr, (id, MemberState::Alive));
                }
            }
            MembershipEvent::Suspect(id) => {
                let view = &mut self.slots[k].view;
                if let Some(entry) = view.get_mut(&id.addr).filter(|(v, _)| *v == id) {
                    entry.1 = MemberState::Suspect;
                }
            }
            MembershipEvent::Down(id) | MembershipEvent::Left(id) => {
                if self.config.views {
                    let view = &mut self.slots[k].view;
                    let replaced = view.get(&id.addr).is_some_and(|(v, _)| *v != id);
                    if !replaced {
                        view.insert(id.addr, (id.clone(), MemberState::Down));
                    }
                }
                self.on_down(k, &id);
            }
            MembershipEvent::Local(LocalEvent::Rejoined(_)) => {
                self.stats.rejoins += 1;
                self.down_by[k].clear();
            }
            MembershipEvent::Local(_) => {}
        }
    }

    fn on_down(&mut self, k: usize, id: &MemberId) {
        let now = self.now;
        for crash in &mut self.crashes {
            if crash.id == *id && crash.observers.binary_search(&k).is_ok() {
                crash.detected_by.entry(k).or_insert(now);
            }
        }
        let Some(&j) = self.by_addr.get(&id.addr) else {
            return;
        };
        if self.current_id(j).as_ref() != Some(id) {
            return;
        }
        // A live member with its current identity was declared down.
        let reachable = self.slots[j].group == self.slots[k].group;
        if !reachable {
            return;
        }
        self.stats.false_downs += 1;
        self.down_by[j].insert(k);
        let live = self.live();
        let accusers = self.down_by[j]
            .iter()
            .filter(|&&o| self.slots[o].node.is_some())
            .count();
        let max_loss = self
            .links
            .values()
            .map(|l| l.loss)
            .fold(self.config.link.loss, f64::max);
        if !self.partitioned && max_loss <= 0.05 && accusers * 2 > live.len() {
            let seed = self.config.seed;
            let message = format!(
                "SIM_SEED={seed}: live member {id} declared down by {accusers} of {} live members at {:.3}s",
                live.len(),
                now.since_epoch().as_secs_f64()
            );
            self.violations.push(message);
        }
    }

    fn current_id(&self, j: usize) -> Option<MemberId> {
        self.slots[j].node.as_ref().map(|n| n.identity().clone())
    }

    fn check_detection(&mut self, c: usize) {
        let crash = &self.crashes[c];
        let mut missing = Vec::new();
        for &k in &crash.observers {
            if self.slots[k].node.is_none() {
                continue;
            }
            let still_up = if self.config.views {
                self.slots[k]
                    .view
                    .get(&crash.id.addr)
                    .is_some_and(|(v, s)| *v == crash.id && s.is_active())
            } else {
                !crash.detected_by.contains_key(&k)
            };
            if still_up {
                missing.push(k);
            }
        }
        if !missing.is_empty() {
            let seed = self.config.seed;
            let message = format!(
                "SIM_SEED={seed}: {} crashed at {:.3}s is still active in the views of members {missing:?} at {:.3}s",
                crash.id,
                crash.at.since_epoch().as_secs_f64(),
                self.now.since_epoch().as_secs_f64()
            );
            self.violations.push(message);
        }
    }

    fn check_convergence(&mut self) {
        if self.converge_deadline != Some(self.now) || self.partitioned {
            return;
        }
        if let Some(diff) = self.divergence() {
            let seed = self.config.seed;
            let message = format!(
                "SIM_SEED={seed}: views not converged {:.3}s after heal: {diff}",
                self.now.since_epoch().as_secs_f64()
            );
            self.violations.push(message);
        }
    }

    fn divergence(&self) -> Option<String> {
        let live = self.live();
        let ids: BTreeMap<SocketAddr, MemberId> = live
            .iter()
            .filter_map(|&i| self.current_id(i).map(|id| (id.addr, id)))
            .collect();
        for &k in &live {
            let own = self.slots[k].addr;
            // Without views, the node's own view (foca's member list) stands in.
            let members = if self.config.views {
                Vec::new()
            } else {
                self.slots[k]
                    .node
                    .as_ref()
                    .map_or(Vec::new(), Node::members)
            };
            let active: BTreeMap<&SocketAddr, &MemberId> = if self.config.views {
                self.slots[k]
                    .view
                    .iter()
                    .filter(|(_, (_, s))| s.is_active())
                    .map(|(a, (id, _))| (a, id))
                    .collect()
            } else {
                members
                    .iter()
                    .filter(|m| m.state.is_active() && m.id.addr != own)
                    .map(|m| (&m.id.addr, &m.id))
                    .collect()
            };
            let expected: BTreeMap<&SocketAddr, &MemberId> =
                ids.iter().filter(|(a, _)| **a != own).collect();
            if active != expected {
                let extra: Vec<String> = active
                    .iter()
                    .filter(|(a, id)| expected.get(*a) != Some(*id))
                    .map(|(_, id)| id.to_string())
                    .collect();
                let lacking: Vec<String> = expected
                    .iter()
                    .filter(|(a, id)| active.get(*a) != Some(*id))
                    .map(|(_, id)| id.to_string())
                    .collect();
                return Some(format!(
                    "member {k} has extra {extra:?} and lacks {lacking:?}"
                ));
            }
        }
        None
    }

    fn note(&mut self, line: String) {
        let line = format!("{:>9.3}s {line}", self.now.since_epoch().as_secs_f64());
        line.hash(&mut self.fingerprint);
        self.note_raw(line);
    }

    fn note_raw(&mut self, line: String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }
}

/// Address of simulated member `i`.
pub fn addr_of(i: usize) -> SocketAddr {
    loopback(BASE_PORT + i as u16)
}
