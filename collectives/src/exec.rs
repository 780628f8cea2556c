//! The caller's runtime, kept running while the caller is away.
//!
//! Collectives run on the calling thread's current-thread tokio runtime (`block_on`), so that a
//! rank waits for its peers without a hop to another thread. Some transports, however, have
//! work to do between collectives: QUIC's drivers send the last segments of a collective that
//! returned before they left, acknowledge the peer's, retransmit what was lost and keep idle
//! links alive through long compute phases. A runtime driven only inside `block_on` would leave
//! all of that undone until the next collective.
//!
//! An [`Executor`] is that runtime plus a *keeper* thread. When the caller has been out of
//! [`Executor::block_on`] for [`HANDOFF_IDLE`], the keeper takes the runtime's core and drives
//! its tasks; the next `block_on` asks for the core back (one wake of the keeper, paid only
//! after such an idle spell). Back-to-back collectives never meet the keeper, and neither does
//! a caller whose runtime has no tasks (shared memory and TCP spawn none).
//!
//! On drop the keeper stops, and the runtime is driven until its tasks end (QUIC's lingering
//! streams and draining connections), at most [`DRAIN_LIMIT`].

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::{runtime::Runtime, sync::Notify};

/// How long the caller must be away before the keeper drives the runtime.
pub const HANDOFF_IDLE: Duration = Duration::from_millis(1);
/// How often a keeper whose runtime has no tasks looks again.
const IDLE_CHECK: Duration = Duration::from_millis(10);
/// The longest a dropped executor drives its remaining tasks.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(4);

/// A current-thread runtime for one caller, and the keeper thread that drives it while the
/// caller is elsewhere. See the module docs.
pub struct Executor {
    rt: Arc<Runtime>,
    shared: Arc<Shared>,
    keeper: Option<JoinHandle<()>>,
}

/// What the caller and the keeper tell each other.
struct Shared {
    origin: Instant,
    /// The caller is inside `block_on` (or about to enter).
    inside: AtomicBool,
    /// When the caller last left `block_on`, in nanoseconds since `origin`.
    left_ns: AtomicU64,
    /// The keeper holds (or is about to take) the core.
    keeper_holds: AtomicBool,
    /// The caller wants the core back; with `release`, ends the keeper's `block_on`.
    wanted: AtomicBool,
    release: Notify,
    stop: AtomicBool,
}

impl Executor {
    /// A runtime with IO and timers, and its keeper thread (named after `name`).
    pub fn new(name: &str) -> std::io::Result<Executor> {
        let rt = Arc::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        );
        let shared = Arc::new(Shared {
            origin: Instant::now(),
            inside: AtomicBool::new(false),
            left_ns: AtomicU64::new(0),
            keeper_holds: AtomicBool::new(false),
            wanted: AtomicBool::new(false),
            release: Notify::new(),
            stop: AtomicBool::new(false),
        });
        let keeper = {
            let (rt, shared) = (rt.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("{name}-keeper"))
                .spawn(move || keep(&rt, &shared))?
        };
        Ok(Executor {
            rt,
            shared,
            keeper: Some(keeper),
        })
    }

    /// Runs `f` to completion on this thread, driving the runtime's other tasks meanwhile.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        let s = &self.shared;
        s.inside.store(true, SeqCst);
        // Paired with the keeper's store-then-check: one of us sees the other.
        if s.keeper_holds.load(SeqCst) {
            s.wanted.store(true, SeqCst);
            s.release.notify_one();
        }
        let rt = &self.rt;
        let out = rt.block_on(async {
            let out = f.await;
            // Lets tasks that `f` woke on its way out run before the core is left: QUIC's
            // connection drivers then send the last segments now rather than after the
            // hand-off. Skipped where there are none (shared memory, TCP).
            if rt.metrics().num_alive_tasks() > 0 {
                tokio::task::yield_now().await;
            }
            out
        });
        s.left_ns.store(s.now_ns(), SeqCst);
        s.inside.store(false, SeqCst);
        out
    }

    /// The runtime's handle, for spawning and for entering its context.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.rt.handle()
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        self.shared.wanted.store(true, SeqCst);
        self.shared.release.notify_one();
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
        // Inside another runtime (a caller that drops us from async code) we cannot drive
        // ours; its tasks are then dropped with it.
        if tokio::runtime::Handle::try_current().is_ok() {
            return;
        }
        let rt = &self.rt;
        rt.block_on(async {
            let end = Instant::now() + DRAIN_LIMIT;
            while rt.metrics().num_alive_tasks() > 0 && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// How long the caller has been away; `None` while it is inside.
    fn away(&self) -> Option<Duration> {
        if self.inside.load(SeqCst) {
            return None;
        }
        let left = Duration::from_nanos(self.left_ns.load(SeqCst));
        Some(self.origin.elapsed().saturating_sub(left))
    }
}

/// The keeper: waits until the caller has been away for [`HANDOFF_IDLE`], then drives the
/// runtime until the caller asks for it back. A runtime without tasks (shared memory and TCP
/// spawn none) is left alone, so that its caller never waits for the core.
fn keep(rt: &Runtime, s: &Shared) {
    while !s.stop.load(SeqCst) {
        if rt.metrics().num_alive_tasks() == 0 {
            std::thread::sleep(IDLE_CHECK);
            continue;
        }
        match s.away() {
            Some(away) if away >= HANDOFF_IDLE => {}
            Some(away) => {
                std::thread::sleep(HANDOFF_IDLE - away);
                continue;
            }
            None => {
                std::thread::sleep(HANDOFF_IDLE);
                continue;
            }
        }
        s.keeper_holds.store(true, SeqCst);
        if s.inside.load(SeqCst) {
            s.keeper_holds.store(false, SeqCst);
            continue;
        }
        rt.block_on(async {
            while !s.wanted.swap(false, SeqCst) {
                s.release.notified().await;
            }
        });
        s.keeper_holds.store(false, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A task spawned from inside `block_on` keeps running while the caller is away.
    #[test]
    fn keeper_drives_tasks_between_calls() {
        let exec = Executor::new("test").unwrap();
        let ticks = Arc::new(AtomicUsize::new(0));
        let t = ticks.clone();
        exec.block_on(async move {
            tokio::spawn(async move {
                for _ in 0..20 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    t.fetch_add(1, SeqCst);
                }
            });
        });
        let end = Instant::now() + Duration::from_secs(5);
        while ticks.load(SeqCst) < 20 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(ticks.load(SeqCst), 20, "the keeper did not drive the task");
        // And the caller gets the core back.
        assert_eq!(exec.block_on(async { 7 }), 7);
    }

    /// Many short calls with idle spells between them, while a task keeps the keeper taking
    /// the core in those spells: every call gets the core back, and the task keeps running.
    #[test]
    fn calls_after_idle_spells_get_the_core() {
        let exec = Executor::new("test").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ticks = Arc::new(AtomicUsize::new(0));
        let (s, t) = (stop.clone(), ticks.clone());
        exec.handle().spawn(async move {
            while !s.load(SeqCst) {
                tokio::time::sleep(Duration::from_micros(200)).await;
                t.fetch_add(1, SeqCst);
            }
        });
        let start = Instant::now();
        for i in 0..200u64 {
            if i % 3 == 0 {
                std::thread::sleep(HANDOFF_IDLE * 3);
            }
            assert_eq!(exec.block_on(async move { i }), i);
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        let before = ticks.load(SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        let during = ticks.load(SeqCst) - before;
        stop.store(true, SeqCst);
        assert!(during >= 20, "the task ran {during} times in 50 ms away");
    }

    /// Dropping the executor lets lingering tasks finish (bounded).
    #[test]
    fn drop_drains_tasks() {
        let done = Arc::new(AtomicBool::new(false));
        {
            let exec = Executor::new("test").unwrap();
            let d = done.clone();
            exec.handle().spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                d.store(true, SeqCst);
            });
        }
        assert!(done.load(SeqCst));
    }
}
