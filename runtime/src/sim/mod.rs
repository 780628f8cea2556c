//! A seeded simulator of the whole control plane: N workers' [`ControlPlane`]s (SWIM,
//! agreement, exits, completion) over a simulated network, each with a modelled group (mesh
//! set-up, the state agreed at the start of every epoch, steps of collectives and commits,
//! admission of joiners at commit boundaries) under crashes, restarts, joins, partitions, loss,
//! duplication and slow members.
//!
//! One seed drives everything (the run's shape, the network, every member's random choices);
//! the clock moves only when the next event is taken off the queue and ties go by insertion
//! order, so a seed replays a run exactly (`SIM_SEED=<seed>` in every violation message).
//!
//! The invariants (`world.rs`) are checked after every event: at most one view per epoch
//! number, the same on every member that installs it; no view without a majority of the
//! previous one (members known to have exited aside); no committed step lost while a member
//! holding it is alive; every member of an epoch resumes from the same state, which is the
//! state of that step; every fault report runs from an epoch its member was in to a later one,
//! its phases in order; and after the faults end and every partition heals, an epoch of every
//! live worker commits within [`SimConfig::recovery`].

mod front;
mod world;

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap},
    net::SocketAddr,
    time::Duration,
};

use rand::{RngExt, SeedableRng, rngs::StdRng};
use ringrun_membership::{
    Authenticator, Incarnation, JobId, MemberId, MembershipConfig, Metadata, Node, NodeId, Time,
};

use crate::{
    agreement,
    control::ControlCodec,
    lifecycle,
    member::{Endpoints, MemberKey},
    plane::{ControlPlane, Output, Socket},
};

use front::{Front, Run};
use world::World;

const SECRET: &[u8] = b"ringrun whole-stack simulator secret";

/// The shape of one run, drawn from its seed by [`SimConfig::from_seed`].
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// Workers at the start.
    pub members: usize,
    /// Workers that start later (joiners).
    pub joiners: usize,
    /// How long faults are injected.
    pub faults_for: Duration,
    /// How long, after the faults end, every live worker has to be training in one epoch.
    pub recovery: Duration,
    /// Time of one step (collective and commit) without slow members.
    pub step_time: Duration,
    /// Datagram loss and duplication probabilities.
    pub loss: f64,
    /// See `loss`.
    pub duplicate: f64,
    /// At most this many faults (crashes, leaves, partitions, slow members) are drawn.
    pub max_faults: usize,
    /// Keep a trace of the run's faults, views and epochs in the report.
    pub trace: bool,
}

impl SimConfig {
    /// A run of 3 to 7 workers, up to 2 joiners, up to 4 faults in 20 s, and the default
    /// recovery bound.
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        SimConfig {
            seed,
            members: rng.random_range(3..=7),
            joiners: rng.random_range(0..=2),
            faults_for: Duration::from_secs(20),
            recovery: RECOVERY_BOUND,
            step_time: Duration::from_millis(rng.random_range(20..=80)),
            loss: [0.0, 0.01, 0.05][rng.random_range(0..3)],
            duplicate: [0.0, 0.01][rng.random_range(0..2)],
            max_faults: 4,
            trace: false,
        }
    }
}

/// The bound on recovery: SWIM's detection (1.5 s at these settings), a mesh that cannot
/// form timing out (10 s, as `Group`'s), the agreement's rounds, and room for one more fault
/// found late (a member whose loss was seen only after healing).
pub const RECOVERY_BOUND: Duration = Duration::from_secs(30);

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Events handled.
    pub events: u64,
    /// Datagrams delivered.
    pub delivered: u64,
    /// Epochs installed.
    pub epochs: u64,
    /// Steps committed (by whole epochs).
    pub commits: u64,
    /// Crashes, graceful leaves, partitions injected.
    pub faults: u64,
    /// Fault reports the members' lifecycles completed.
    pub fault_reports: u64,
    /// From the end of the faults to the first commit of an epoch of every live worker.
    pub recovered_in: Option<Duration>,
    /// Invariant violations, each starting with `SIM_SEED=<seed>`.
    pub violations: Vec<String>,
    /// With [`SimConfig::trace`]: the run's faults, views and epochs, one line each.
    pub trace: Vec<String>,
}

/// Runs one seed.
pub fn run(config: SimConfig) -> SimReport {
    let mut sim = Sim::new(config);
    sim.run();
    sim.world.report
}

#[derive(Clone, Debug)]
enum Event {
    Deliver {
        to: usize,
        life: u32,
        socket: Socket,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Wake {
        slot: usize,
        life: u32,
    },
    Start(usize),
    Crash(usize),
    Leave(usize),
    Partition(Vec<u8>),
    Heal,
    Slow(usize, Duration),
    /// Epoch `epoch`'s next step is due.
    Step(u64),
    /// The faults end: heal, restart whoever is down, start the recovery clock.
    Calm,
}

/// One worker slot: the lives of one launcher slot.
struct Worker {
    life: u32,
    plane: Option<ControlPlane>,
    wake: Option<Time>,
    front: Front,
    slow: Duration,
}

struct Sim {
    config: SimConfig,
    rng: StdRng,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    events: BTreeMap<u64, Event>,
    workers: Vec<Worker>,
    /// Partition side of each slot (all 0: no partition).
    side: Vec<u8>,
    world: World,
    /// Every epoch's modelled mesh.
    runs: BTreeMap<u64, Run>,
    calm_at: Time,
}

fn membership_addr(slot: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 20_000 + slot as u16))
}

fn control_addr(slot: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 30_000 + slot as u16))
}

fn slot_of(addr: SocketAddr) -> Option<(usize, Socket)> {
    match addr.port() {
        p @ 20_000..30_000 => Some((usize::from(p - 20_000), Socket::Membership)),
        p @ 30_000..40_000 => Some((usize::from(p - 30_000), Socket::Control)),
        _ => None,
    }
}

fn codec() -> ControlCodec {
    ControlCodec::new(Authenticator::new(JobId(1), SECRET).expect("a long secret"))
}

impl Sim {
    fn new(config: SimConfig) -> Sim {
        let n = config.members + config.joiners;
        let mut sim = Sim {
            rng: StdRng::seed_from_u64(config.seed),
            now: Time::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            workers: (0..n)
                .map(|_| Worker {
                    life: 0,
                    plane: None,
                    wake: None,
                    front: Front::default(),
                    slow: Duration::ZERO,
                })
                .collect(),
            side: vec![0; n],
            world: World::new(config.seed),
            runs: BTreeMap::new(),
            calm_at: Time::ZERO + config.faults_for,
            config,
        };
        for slot in 0..sim.config.members {
            let at = Duration::from_micros(sim.rng.random_range(0..50_000));
            sim.push(at, Event::Start(slot));
        }
        sim.plan_faults();
        sim.push(sim.config.faults_for, Event::Calm);
        sim
    }

    /// Draws the fault schedule: joins, crashes (restarted by their launcher), graceful
    /// leaves, partitions and slow members, spread over the fault phase.
    fn plan_faults(&mut self) {
        let span = self.config.faults_for.as_micros() as u64;
        let n = self.workers.len();
        for slot in self.config.members..n {
            let at = Duration::from_micros(self.rng.random_range(span / 10..span));
            self.push(at, Event::Start(slot));
        }
        for _ in 0..self.rng.random_range(0..=self.config.max_faults) {
            let at = Duration::from_micros(self.rng.random_range(span / 10..span));
            let slot = self.rng.random_range(0..n);
            let fault = match self.rng.random_range(0..10) {
                0..=4 => Event::Crash(slot),
                5 => Event::Leave(slot),
                6..=7 => {
                    let sides = (0..n).map(|_| self.rng.random_range(0..2)).collect();
                    let heal = at + Duration::from_millis(self.rng.random_range(500..5_000));
                    self.push(heal, Event::Heal);
                    Event::Partition(sides)
                }
                _ => Event::Slow(slot, Duration::from_millis(self.rng.random_range(10..200))),
            };
            self.push(at, fault);
        }
    }

    fn push(&mut self, after: Duration, event: Event) {
        let at = self.now + after;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, event);
        self.seq += 1;
    }

    fn run(&mut self) {
        let end = self.calm_at + self.config.recovery;
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            if at > end {
                break;
            }
            self.now = at;
            let event = self.events.remove(&seq).expect("queued events are stored");
            self.world.report.events += 1;
            if self.config.trace && !matches!(event, Event::Deliver { .. } | Event::Wake { .. }) {
                self.note(format!("{event:?}"));
            }
            self.handle(event);
        }
        self.now = end;
        let live = self.live_keys();
        self.world.check_recovered(self.calm_at, end, &live);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver {
                to,
                life,
                socket,
                from,
                bytes,
            } => {
                let now = self.now;
                let w = &mut self.workers[to];
                let Some(plane) = w.plane.as_mut().filter(|_| w.life == life) else {
                    return;
                };
                self.world.report.delivered += 1;
                match socket {
                    Socket::Membership => plane.membership_datagram(now, from, &bytes),
                    Socket::Control => plane.control_datagram(now, from, &bytes),
                }
                self.drain(to);
            }
            Event::Wake { slot, life } => {
                let now = self.now;
                let w = &mut self.workers[slot];
                if w.life != life || w.wake != Some(now) {
                    return;
                }
                w.wake = None;
                if let Some(plane) = w.plane.as_mut() {
                    plane.tick(now);
                }
                self.drain(slot);
            }
            Event::Start(slot) => self.start(slot),
            Event::Crash(slot) => self.crash(slot),
            Event::Leave(slot) => {
                if let Some(plane) = self.workers[slot].plane.as_mut() {
                    self.world.report.faults += 1;
                    self.world.dead(plane.me());
                    plane.leave(self.now);
                    self.drain(slot);
                    self.stop(slot);
                }
            }
            Event::Partition(sides) => {
                self.world.report.faults += 1;
                self.side = sides;
            }
            Event::Heal => self.side.iter_mut().for_each(|s| *s = 0),
            Event::Slow(slot, by) => self.workers[slot].slow = by,
            Event::Calm => self.calm(),
            Event::Step(epoch) => self.step(epoch),
        }
    }

    /// A new life of `slot`: a fresh process with nothing in memory, joining through the
    /// first members' addresses (what a launcher hands out as seeds).
    fn start(&mut self, slot: usize) {
        if self.workers[slot].plane.is_some() {
            return;
        }
        let w = &mut self.workers[slot];
        w.life += 1;
        w.front = Front::default();
        let endpoints = Endpoints {
            control: control_addr(slot),
            tcp: SocketAddr::from(([127, 0, 0, 1], 40_000 + slot as u16)),
        };
        let meta = Metadata {
            endpoints: endpoints.to_meta(),
            launch_rank: Some(slot as u32),
            ..Metadata::default()
        };
        let incarnation = Incarnation(self.now.as_micros() + 1);
        let id = MemberId::new(
            NodeId(slot as u64),
            membership_addr(slot),
            incarnation,
            meta,
        );
        let auth = Authenticator::new(JobId(1), SECRET).expect("a long secret");
        let node = Node::new(id, MembershipConfig::default(), auth, self.rng.random())
            .expect("a valid member");
        let seeds: Vec<SocketAddr> = (0..self.config.members.min(3))
            .map(membership_addr)
            .collect();
        // As the launcher does: a first life of the initial world may start the group, and so
        // may any life when no other worker runs; restarts and joiners otherwise rejoin.
        let first = self.workers[slot].life == 1 && slot < self.config.members;
        let config = agreement::Config {
            initial_size: self.config.members,
            initial_wait: Duration::from_secs(3),
            bootstrap: first || self.live_slots().is_empty(),
            ..agreement::Config::default()
        };
        let life = lifecycle::Config {
            admit_wait: Duration::from_secs(2),
            ..lifecycle::Config::default()
        };
        let plane = ControlPlane::start(node, &seeds, codec(), config, life, self.now)
            .expect("a worker's identity");
        self.workers[slot].plane = Some(plane);
        self.drain(slot);
    }

    /// `slot`'s process dies; its launcher sees it exit, tells the live workers so, and
    /// restarts it a moment later.
    fn crash(&mut self, slot: usize) {
        let Some(plane) = self.workers[slot].plane.as_ref() else {
            return;
        };
        self.world.report.faults += 1;
        let key = plane.me();
        self.stop(slot);
        self.world.dead(key);
        if self.rng.random_bool(0.8) {
            let proof = codec().seal_exited(key);
            let after = Duration::from_millis(self.rng.random_range(1..50));
            for to in self.live_slots() {
                self.send(slot, to, Socket::Control, proof.clone(), after);
            }
        }
        let after = Duration::from_millis(self.rng.random_range(200..2_000));
        self.push(after, Event::Start(slot));
    }

    fn stop(&mut self, slot: usize) {
        let w = &mut self.workers[slot];
        w.plane = None;
        w.wake = None;
        w.front = Front::default();
        w.life += 1;
    }

    /// The faults end: every partition heals, no member stays slow, every slot runs.
    fn calm(&mut self) {
        if self.config.trace {
            for slot in 0..self.workers.len() {
                let view: Option<Vec<String>> = self.workers[slot].plane.as_ref().map(|p| {
                    (p.node().members().iter())
                        .map(|m| format!("{}:{:?}", m.id.node, m.state))
                        .collect()
                });
                self.note(format!("slot {slot} sees {view:?}"));
            }
        }
        self.side.iter_mut().for_each(|s| *s = 0);
        for slot in 0..self.workers.len() {
            self.workers[slot].slow = Duration::ZERO;
        }
        let planned: Vec<usize> = self
            .events
            .values()
            .filter_map(|e| match e {
                Event::Start(s) => Some(*s),
                _ => None,
            })
            .collect();
        for slot in 0..self.workers.len() {
            if self.workers[slot].plane.is_none() && !planned.contains(&slot) {
                self.push(Duration::ZERO, Event::Start(slot));
            }
        }
        self.events
            .retain(|_, e| !matches!(e, Event::Crash(_) | Event::Leave(_) | Event::Partition(_)));
    }

    pub(super) fn note(&mut self, line: String) {
        if self.config.trace {
            let t = self.now.as_micros() as f64 / 1e6;
            self.world.report.trace.push(format!("{t:9.4} {line}"));
        }
    }

    fn live_slots(&self) -> Vec<usize> {
        (0..self.workers.len())
            .filter(|&s| self.workers[s].plane.is_some())
            .collect()
    }

    fn live_keys(&self) -> Vec<MemberKey> {
        self.workers
            .iter()
            .filter_map(|w| w.plane.as_ref().map(ControlPlane::me))
            .collect()
    }

    /// Queues a datagram from `from` to `to`: lost, delayed, duplicated as the network says.
    fn send(&mut self, from: usize, to: usize, socket: Socket, bytes: Vec<u8>, extra: Duration) {
        if self.side[from] != self.side[to] {
            return;
        }
        let copies = if self.rng.random_bool(self.config.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.rng.random_bool(self.config.loss) {
                continue;
            }
            let latency = Duration::from_micros(self.rng.random_range(100..1_000)) + extra;
            let event = Event::Deliver {
                to,
                life: self.workers[to].life,
                socket,
                from: match socket {
                    Socket::Membership => membership_addr(from),
                    Socket::Control => control_addr(from),
                },
                bytes: bytes.clone(),
            };
            self.push(latency, event);
        }
    }

    /// Carries out everything `slot`'s plane output, and schedules its next wake-up.
    fn drain(&mut self, slot: usize) {
        while let Some(output) = self.workers[slot]
            .plane
            .as_mut()
            .and_then(|p| p.poll_output())
        {
            match output {
                Output::Transmit { socket, to, bytes } => {
                    if let Some((dst, kind)) = slot_of(to)
                        && kind == socket
                        && dst < self.workers.len()
                    {
                        self.send(slot, dst, socket, bytes, Duration::ZERO);
                    }
                }
                Output::Installed(view) => self.installed(slot, view),
                Output::Ended { epoch, why } => {
                    self.note(format!("slot {slot} ended epoch {epoch}: {why}"));
                    self.workers[slot].front.ended(epoch);
                }
                Output::Waiting(n) => self.workers[slot].front.waiting = n,
                Output::Blocked(why) => self.note(format!("slot {slot} blocked: {why}")),
                Output::Fault(f) => {
                    self.note(format!("slot {slot} recovered: {f:?}"));
                    if let Some(me) = self.workers[slot].plane.as_ref().map(|p| p.me()) {
                        self.world.fault_reported(me, &f);
                    }
                }
                // Collectives are modelled whole: none is in flight to cancel.
                Output::Cancel { .. }
                | Output::AdmissionClosed
                | Output::Completed(_)
                | Output::ReportRequested { .. } => {}
            }
        }
        let w = &mut self.workers[slot];
        if let Some(plane) = w.plane.as_ref() {
            let at = plane.poll_timeout().max(self.now);
            if w.wake.is_none_or(|t| t != at) {
                w.wake = Some(at);
                let life = w.life;
                self.push(at.saturating_since(self.now), Event::Wake { slot, life });
            }
        }
    }
}
