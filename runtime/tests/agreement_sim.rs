//! Seeded, deterministic simulation of epoch agreement.
//!
//! Every seed builds a world of 3–7 members, lets them form a first view, then injects one kind
//! of fault (crashes of a minority, some in the middle of agreement and some of the
//! coordinator; a partition with loss; a restart under a new id), heals, and requires
//! convergence. Invariants are checked after every event:
//! - at most one installed member list per epoch number, on every member;
//! - every installed list is in rank order: by launch rank (each world's slots get a shuffled
//!   permutation of launch ranks, so seniority never gives the order by accident; joiners have
//!   none and come last), then id;
//! - installed epochs only grow on each member;
//! - while partitioned, every install holds a majority of the last view before the partition;
//! - after the faults stop, all live members install one view of exactly the live set within
//!   a bound; where the live launch ranks are exactly 0..n (no fault, or a restarted slot that
//!   kept its launch rank), every member's rank is its launch rank.
//!
//! A failure prints its seed; `AGREEMENT_SEED=<n> cargo test -p ringrun-runtime --test
//! agreement_sim` replays it exactly, and `AGREEMENT_SEEDS=<count>` runs more seeds.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque},
    time::Duration,
};

use ringrun_runtime::agreement::{Agreement, Config, Event, Msg, Placement, View};

type Id = u64;

/// A member's metadata: its launch rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta(Option<u32>);

impl Placement for Meta {
    fn launch_rank(&self) -> Option<u32> {
        self.0
    }
}

/// splitmix64: small, seedable, good enough for choosing faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_micros(lo * 1000 + self.below((hi - lo) * 1000))
    }
}

enum Ev {
    Deliver {
        to: Id,
        from: Id,
        msg: Msg<Id, Meta>,
    },
    Tick {
        node: Id,
    },
    Detect {
        node: Id,
    },
}

struct World {
    seed: u64,
    rng: Rng,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    pending: BTreeMap<u64, Ev>,
    nodes: BTreeMap<Id, Agreement<Id, Meta>>,
    side: BTreeMap<Id, u8>,
    loss: f64,
    epochs: BTreeMap<u64, Vec<Id>>,
    /// Each id's launch rank.
    launch: BTreeMap<Id, Option<u32>>,
    last_epoch: BTreeMap<Id, u64>,
    partition_reference: Option<BTreeSet<Id>>,
    latest_view: BTreeSet<Id>,
    trace: VecDeque<String>,
}

const TICK: Duration = Duration::from_millis(10);

fn config() -> Config {
    Config {
        min_size: 2,
        ..Config::default()
    }
}

impl World {
    fn new(seed: u64, n: u64) -> World {
        let mut w = World {
            seed,
            rng: Rng(seed),
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            nodes: BTreeMap::new(),
            side: BTreeMap::new(),
            loss: 0.0,
            epochs: BTreeMap::new(),
            launch: BTreeMap::new(),
            last_epoch: BTreeMap::new(),
            partition_reference: None,
            latest_view: BTreeSet::new(),
            trace: VecDeque::new(),
        };
        // Launch ranks: a shuffled permutation, so that id (seniority) order is not rank order.
        let mut ranks: Vec<u32> = (0..n as u32).collect();
        ranks.sort_by_key(|_| w.rng.next());
        for (id, r) in ranks.into_iter().enumerate() {
            w.add(id as Id, Some(r));
        }
        w
    }

    fn fail(&self, what: String) -> ! {
        let trace: Vec<&String> = self.trace.iter().collect();
        panic!(
            "AGREEMENT_SEED={} at {:?}: {what}\nlast events:\n{}",
            self.seed,
            self.now,
            trace
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        )
    }

    fn log(&mut self, line: String) {
        if self.trace.len() == 400 {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>9.3?} {line}", self.now));
    }

    fn push(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + after, self.seq)));
        self.pending.insert(self.seq, ev);
    }

    fn add(&mut self, id: Id, launch_rank: Option<u32>) {
        self.launch.insert(id, launch_rank);
        let meta = Meta(launch_rank);
        self.nodes
            .insert(id, Agreement::new(id, meta, config(), self.now));
        self.side.insert(id, 0);
        let first_tick = self.rng.ms(0, 10);
        self.push(first_tick, Ev::Tick { node: id });
        self.membership_changed();
    }

    fn crash(&mut self, id: Id) {
        self.log(format!("crash {id}"));
        self.nodes.remove(&id);
        self.membership_changed();
    }

    /// Every live node learns the truth after its own detection delay (SWIM is eventually
    /// consistent, not instant and not simultaneous).
    fn membership_changed(&mut self) {
        let ids: Vec<Id> = self.nodes.keys().copied().collect();
        for id in ids {
            let delay = self.rng.ms(50, 600);
            self.push(delay, Ev::Detect { node: id });
        }
    }

    fn truth(&self, node: Id) -> BTreeMap<Id, Meta> {
        let side = self.side[&node];
        self.nodes
            .keys()
            .filter(|i| self.side[*i] == side)
            .map(|i| (*i, Meta(self.launch[i])))
            .collect()
    }

    fn run_until(&mut self, until: Duration) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            let ev = self.pending.remove(&seq).expect("queued event");
            let node = match ev {
                Ev::Tick { node } if self.nodes.contains_key(&node) => {
                    self.nodes.get_mut(&node).unwrap().tick(self.now);
                    self.push(TICK, Ev::Tick { node });
                    node
                }
                Ev::Detect { node } if self.nodes.contains_key(&node) => {
                    let live = self.truth(node);
                    self.log(format!("{node} sees {:?}", live.keys().collect::<Vec<_>>()));
                    self.nodes
                        .get_mut(&node)
                        .unwrap()
                        .set_live(self.now, live, BTreeSet::new());
                    node
                }
                Ev::Deliver { to, from, msg } if self.nodes.contains_key(&to) => {
                    self.log(format!("{from} -> {to}: {msg:?}"));
                    self.nodes.get_mut(&to).unwrap().handle(self.now, from, msg);
                    to
                }
                _ => continue,
            };
            self.drain(node);
        }
        self.now = until;
    }

    fn drain(&mut self, node: Id) {
        loop {
            let Some(a) = self.nodes.get_mut(&node) else {
                return;
            };
            if let Some((to, msg)) = a.poll_send() {
                let cut = self.side.get(&to).is_none_or(|s| *s != self.side[&node]);
                if !cut && !self.rng.chance(self.loss) {
                    let delay = self.rng.ms(0, 2);
                    self.push(
                        delay,
                        Ev::Deliver {
                            to,
                            from: node,
                            msg,
                        },
                    );
                }
                continue;
            }
            let Some(ev) = a.poll_event() else { return };
            if let Event::Installed(view) = ev {
                self.check_install(node, &view);
            }
        }
    }

    fn check_install(&mut self, node: Id, view: &View<Id, Meta>) {
        let (epoch, ids) = (view.epoch, view.ids());
        let list: Vec<Id> = view.members.iter().map(|(i, _)| *i).collect();
        self.log(format!("{node} installs {epoch} {list:?}"));
        if let Some(prev) = self.epochs.get(&epoch)
            && *prev != list
        {
            self.fail(format!(
                "epoch {epoch} installed as {prev:?} and as {list:?} (on {node})"
            ));
        }
        let mut ordered = list.clone();
        ordered.sort_by_key(|i| (self.launch[i].is_none(), self.launch[i], *i));
        if ordered != list {
            self.fail(format!(
                "epoch {epoch} lists {list:?}, not in rank order {ordered:?}"
            ));
        }
        self.epochs.insert(epoch, list);
        let last = self.last_epoch.insert(node, epoch).unwrap_or(0);
        if epoch <= last {
            self.fail(format!("{node} installed epoch {epoch} after {last}"));
        }
        if let Some(reference) = &self.partition_reference {
            let kept = reference.intersection(&ids).count();
            if kept * 2 <= reference.len() {
                self.fail(format!(
                    "minority install during partition: {ids:?} of {reference:?}"
                ));
            }
        }
        self.latest_view = ids;
    }

    /// Every live node has installed the same view, of exactly the live set.
    fn converged(&self) -> Result<(), String> {
        let live: BTreeSet<Id> = self.nodes.keys().copied().collect();
        let views: BTreeSet<(u64, BTreeSet<Id>)> = self
            .nodes
            .values()
            .map(|a| {
                a.installed()
                    .map_or((0, BTreeSet::new()), |v| (v.epoch, v.ids()))
            })
            .collect();
        match views.len() == 1 && views.iter().next().is_some_and(|(_, ids)| *ids == live) {
            true => Ok(()),
            false => Err(format!("live {live:?} but views {views:?}")),
        }
    }

    /// Where the live launch ranks are exactly 0..n, rank r is the member launched as r.
    fn check_launch_ranks(&self) {
        let Some(view) = self.nodes.values().next().and_then(|a| a.installed()) else {
            return;
        };
        let ranks: Vec<Option<u32>> = view.members.iter().map(|(_, m)| m.0).collect();
        let mut sorted = ranks.clone();
        sorted.sort();
        if sorted.iter().enumerate().any(|(i, r)| *r != Some(i as u32)) {
            return;
        }
        if ranks.iter().enumerate().any(|(i, r)| *r != Some(i as u32)) {
            self.fail(format!("launch ranks 0..n but ranks {ranks:?}"));
        }
    }

    fn require_convergence(&mut self, within: Duration) {
        let deadline = self.now + within;
        while self.now < deadline {
            let step = self.now + Duration::from_millis(50);
            self.run_until(step);
            if self.converged().is_ok() {
                self.check_launch_ranks();
                return;
            }
        }
        let why = self.converged().unwrap_err();
        self.fail(format!("no convergence within {within:?}: {why}"));
    }
}

/// Liveness bound: detection (≤ 0.6 s) + straggler window + a few ack timeouts under loss.
const CONVERGE: Duration = Duration::from_secs(6);

fn scenario(seed: u64) {
    let mut rng = Rng(seed ^ 0x5eed);
    let n = 3 + rng.below(5);
    let mut w = World::new(seed, n);
    w.require_convergence(CONVERGE);
    match rng.below(4) {
        0 => {
            // Crash a minority, at staggered times so that some crashes land mid-agreement,
            // the coordinator (lowest id) among them half the time.
            let k = 1 + rng.below((n - 1) / 2);
            let mut victims: Vec<Id> = (0..n).collect();
            victims.sort_by_key(|_| rng.next());
            victims.truncate(k as usize);
            if rng.chance(0.5) && !victims.contains(&0) {
                victims[0] = 0;
            }
            w.loss = if rng.chance(0.5) { 0.05 } else { 0.0 };
            for v in victims {
                let t = w.now + rng.ms(0, 700);
                w.run_until(t);
                w.crash(v);
            }
        }
        1 => {
            // Partition into two sides with loss, then heal.
            w.partition_reference = Some(w.latest_view.clone());
            w.loss = 0.05;
            let ids: Vec<Id> = w.nodes.keys().copied().collect();
            for id in ids {
                w.side.insert(id, rng.below(2) as u8);
            }
            w.membership_changed();
            let t = w.now + Duration::from_secs(3);
            w.run_until(t);
            w.partition_reference = None;
            w.side.values_mut().for_each(|s| *s = 0);
            w.membership_changed();
        }
        2 => {
            // A worker restarts: the old incarnation dies, a new one (new id) joins with the
            // slot's launch rank.
            let victim = rng.below(n);
            let slot = w.launch[&victim];
            w.crash(victim);
            let t = w.now + rng.ms(0, 1500);
            w.run_until(t);
            w.add(100 + victim, slot);
        }
        _ => {
            // Several joiners at once, under loss.
            w.loss = 0.05;
            for j in 0..1 + rng.below(3) {
                let t = w.now + rng.ms(0, 30);
                w.run_until(t);
                w.add(200 + j, None);
            }
        }
    }
    w.loss = 0.0;
    w.require_convergence(CONVERGE);
}

#[test]
fn agreement_under_faults() {
    if let Ok(seed) = std::env::var("AGREEMENT_SEED") {
        return scenario(seed.parse().expect("AGREEMENT_SEED is a number"));
    }
    let seeds: u64 = std::env::var("AGREEMENT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    for seed in 0..seeds {
        scenario(seed);
    }
}

#[test]
fn a_two_two_partition_installs_nothing_until_healed() {
    let mut w = World::new(7, 4);
    w.require_convergence(CONVERGE);
    let before = w.latest_view.clone();
    w.partition_reference = Some(before.clone());
    for (id, side) in [(0, 0), (1, 0), (2, 1), (3, 1)] {
        w.side.insert(id, side);
    }
    w.membership_changed();
    let installs = w.epochs.len();
    let t = w.now + Duration::from_secs(5);
    w.run_until(t);
    assert_eq!(
        w.epochs.len(),
        installs,
        "a 2+2 split must not install a new epoch"
    );
    w.partition_reference = None;
    w.side.values_mut().for_each(|s| *s = 0);
    w.membership_changed();
    w.require_convergence(CONVERGE);
    assert_eq!(w.latest_view, before);
}
