//! Worker processes: spawn, tag their output, restart them, forward signals.
//!
//! The supervisor is polled by its caller (`ringrun launch`'s loop, or the demo's, which also
//! injects faults): [`Supervisor::poll`] returns what happened since the last call: output lines
//! and exits. Restarts follow the mode: in-process, only the failed worker is restarted (the
//! others keep training and admit it at a commit); restart mode stops every local worker and
//! starts them all again, for scripts with a static world.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{Receiver, Sender, channel},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use rustix::process::{Pid, Signal, kill_process};

use super::env::{self, JobEnv, Slot};

/// How long an exited worker's output readers are waited for (a grandchild that keeps its
/// pipes open would otherwise hold the launcher).
const READERS_GRACE: Duration = Duration::from_millis(500);

/// How workers are restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// Restart only the failed worker; the others keep running.
    Inprocess,
    /// Stop and restart every local worker on any failure.
    Restart,
}

/// What the caller hears about.
#[derive(Debug)]
pub(crate) enum Event {
    Line {
        slot: usize,
        stderr: bool,
        text: String,
    },
    Exited {
        slot: usize,
        status: ExitStatus,
        at: Instant,
    },
    Restarting {
        slot: Option<usize>,
        attempt: u32,
        after: Duration,
    },
    /// The restart budget is spent: the job has failed.
    GaveUp { slot: usize },
    /// A worker failed after the job completed (another worker here finished its work, or a
    /// member of the job announced the completion): it is not restarted (it would train
    /// alone from the last commit).
    NotRestarted { slot: usize, why: String },
}

pub(crate) struct Supervisor {
    cmd: Vec<String>,
    job: JobEnv,
    slots: Vec<Slot>,
    mode: Mode,
    log_dir: Option<PathBuf>,
    children: Vec<Option<Child>>,
    done: Vec<Option<ExitStatus>>,
    restarts: u32,
    pending: Vec<(Instant, Option<usize>)>,
    lines: Receiver<(usize, bool, String)>,
    lines_tx: Sender<(usize, bool, String)>,
    /// Each live worker's output readers, waited for when it exits so that its last lines come
    /// before its exit.
    readers: std::collections::HashMap<usize, Vec<std::thread::JoinHandle<()>>>,
    failed: bool,
    /// Workers asked to stop by a shrink: their exit is neither a failure nor restarted.
    retiring: Vec<bool>,
    /// The job's final step, as a member of the job announced it.
    completed_at: Option<u64>,
}

impl Supervisor {
    pub(crate) fn start(
        cmd: Vec<String>,
        job: JobEnv,
        slots: Vec<Slot>,
        mode: Mode,
        log_dir: Option<PathBuf>,
    ) -> Result<Supervisor> {
        if let Some(dir) = &log_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let (lines_tx, lines) = channel();
        let n = slots.len();
        let mut s = Supervisor {
            cmd,
            job,
            slots,
            mode,
            log_dir,
            children: (0..n).map(|_| None).collect(),
            done: vec![None; n],
            restarts: 0,
            pending: Vec::new(),
            lines,
            lines_tx,
            readers: Default::default(),
            failed: false,
            retiring: vec![false; n],
            completed_at: None,
        };
        for i in 0..n {
            s.spawn(i)?;
        }
        Ok(s)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let slot = &self.slots[i];
        let mut cmd = Command::new(&self.cmd[0]);
        cmd.args(&self.cmd[1..])
            .envs(env::vars(&self.job, slot))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A worker restarted while others of this host still run rejoins their group: it may
        // not start a group of its own, which, cut off from theirs, would be a second one. With
        // none left here (the whole job may be down) it may.
        let others_run = (0..self.children.len()).any(|j| j != i && self.children[j].is_some());
        if slot.restarts > 0 && others_run {
            cmd.env("RINGRUN_BOOTSTRAP", "0");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.cmd[0]))?;
        let log = match &self.log_dir {
            Some(d) => Some(
                File::options()
                    .create(true)
                    .append(true)
                    .open(self.log_path(i).unwrap_or_else(|| d.join("worker.log")))?,
            ),
            None => None,
        };
        for (stderr, pipe) in [
            (
                false,
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            ),
            (
                true,
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            ),
        ] {
            let (tx, mut log) = (
                self.lines_tx.clone(),
                log.as_ref().and_then(|f| f.try_clone().ok()),
            );
            let Some(pipe) = pipe else { continue };
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(|l| l.ok()) {
                    if let Some(f) = log.as_mut() {
                        let _ = writeln!(f, "{line}");
                    }
                    if tx.send((i, stderr, line)).is_err() {
                        break;
                    }
                }
            });
            self.readers.entry(i).or_default().push(reader);
        }
        self.children[i] = Some(child);
        self.done[i] = None;
        Ok(())
    }

    /// Waits up to `within` for something to happen.
    pub(crate) fn poll(&mut self, within: Duration) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        if let Ok((slot, stderr, text)) = self.lines.recv_timeout(within) {
            events.push(Event::Line { slot, stderr, text });
        }
        while let Ok((slot, stderr, text)) = self.lines.try_recv() {
            events.push(Event::Line { slot, stderr, text });
        }
        for i in 0..self.children.len() {
            let Some(child) = self.children[i].as_mut() else {
                continue;
            };
            if let Some(status) = child.try_wait()? {
                forget_segments(child.id());
                self.children[i] = None;
                self.finish_output(i, &mut events);
                self.done[i] = Some(status);
                events.push(Event::Exited {
                    slot: i,
                    status,
                    at: Instant::now(),
                });
                if !status.success() && !self.retiring[i] {
                    events.extend(self.on_failure(i));
                }
            }
        }
        self.respawn_due(&mut events)?;
        Ok(events)
    }

    /// Waits (bounded: a grandchild may hold the pipes open) until worker `i`'s output readers
    /// reach the end of its pipes, and adds what they read to `events`.
    fn finish_output(&mut self, i: usize, events: &mut Vec<Event>) {
        let readers = self.readers.remove(&i).unwrap_or_default();
        let deadline = Instant::now() + READERS_GRACE;
        while !readers.iter().all(|r| r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        while let Ok((slot, stderr, text)) = self.lines.try_recv() {
            events.push(Event::Line { slot, stderr, text });
        }
    }

    fn on_failure(&mut self, i: usize) -> Option<Event> {
        // Stopped by us: the rest of a generation being restarted, or a job being stopped.
        if self.failed || self.pending.iter().any(|(_, which)| which.is_none()) {
            return None;
        }
        if let Some(why) = self.completed() {
            return Some(Event::NotRestarted { slot: i, why });
        }
        if self.restarts >= self.job.max_restarts {
            self.failed = true;
            self.signal_all(Signal::TERM);
            return Some(Event::GaveUp { slot: i });
        }
        self.restarts += 1;
        // 0.2 s, 0.4 s, ... up to 5 s: a worker that dies at start does not spin the launcher.
        let after =
            Duration::from_millis(200 << (self.restarts - 1).min(5)).min(Duration::from_secs(5));
        let which = match self.mode {
            Mode::Inprocess => Some(i),
            Mode::Restart => {
                self.signal_all(Signal::TERM);
                None
            }
        };
        self.pending.push((Instant::now() + after, which));
        Some(Event::Restarting {
            slot: which,
            attempt: self.restarts,
            after,
        })
    }

    fn respawn_due(&mut self, events: &mut Vec<Event>) -> Result<()> {
        let now = Instant::now();
        let due: Vec<_> = self
            .pending
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, w)| *w)
            .collect();
        self.pending.retain(|(t, _)| *t > now);
        for which in due {
            match which {
                // The others finished while this restart waited.
                Some(i) if let Some(why) = self.completed() => {
                    events.push(Event::NotRestarted { slot: i, why });
                }
                Some(i) => {
                    self.slots[i].restarts += 1;
                    self.spawn(i)?;
                }
                None => {
                    if !self.wait_all_exited(Duration::from_secs(10), events)? {
                        self.pending.push((now + Duration::from_millis(100), None));
                        continue;
                    }
                    for i in 0..self.slots.len() {
                        self.slots[i].restarts = self.restarts;
                        self.spawn(i)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// In restart mode, every worker must be gone before the next generation starts.
    fn wait_all_exited(&mut self, grace: Duration, events: &mut Vec<Event>) -> Result<bool> {
        let deadline = Instant::now() + grace;
        for i in 0..self.children.len() {
            let Some(child) = self.children[i].as_mut() else {
                continue;
            };
            let status = loop {
                if let Some(s) = child.try_wait()? {
                    break s;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            forget_segments(child.id());
            self.children[i] = None;
            events.push(Event::Exited {
                slot: i,
                status,
                at: Instant::now(),
            });
        }
        Ok(true)
    }

    /// Sends `sig` to every running worker.
    pub(crate) fn signal_all(&self, sig: Signal) {
        for child in self.children.iter().flatten() {
            let _ = kill_process(Pid::from_child(child), sig);
        }
    }

    /// Starts one more worker (a host discovery script grew this host); returns its index.
    pub(crate) fn add_worker(&mut self, slot: Slot) -> Result<usize> {
        self.slots.push(slot);
        self.children.push(None);
        self.done.push(None);
        self.retiring.push(false);
        let i = self.slots.len() - 1;
        self.spawn(i)?;
        Ok(i)
    }

    /// Asks worker `i` to stop (SIGTERM: it leaves the group gracefully); not restarted.
    pub(crate) fn retire(&mut self, i: usize) {
        self.retiring[i] = true;
        if let Some(child) = &self.children[i] {
            let _ = kill_process(Pid::from_child(child), Signal::TERM);
        }
    }

    /// Indices of running workers not asked to stop.
    pub(crate) fn active(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|i| self.children[*i].is_some() && !self.retiring[*i])
            .collect()
    }

    /// Worker `i`'s log file, if there is a log directory.
    pub(crate) fn log_path(&self, i: usize) -> Option<PathBuf> {
        self.log_dir
            .as_ref()
            .map(|d| d.join(format!("worker-{i}.log")))
    }

    /// The worker slots started so far.
    pub(crate) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// SIGKILLs worker `i` (fault injection).
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(child) = self.children[i].as_mut() {
            let _ = child.kill();
        }
    }

    /// Nothing runs and nothing is waiting to be restarted.
    pub(crate) fn finished(&self) -> bool {
        self.children.iter().all(Option::is_none) && (self.pending.is_empty() || self.failed)
    }

    /// A member of the job announced that it completed at `step`.
    pub(crate) fn job_completed(&mut self, step: u64) {
        self.completed_at = Some(step);
    }

    /// Whether the job has completed, and how this launcher knows: local workers finished
    /// their work (exited with success, not retired), or a member announced it.
    fn completed(&self) -> Option<String> {
        let n = (0..self.done.len())
            .filter(|&j| !self.retiring[j] && self.done[j].is_some_and(|s| s.success()))
            .count();
        match (n, self.completed_at) {
            (0, None) => None,
            (0, Some(step)) => Some(format!("the job completed at step {step}")),
            (n, _) => Some(format!("{n} worker(s) finished the job")),
        }
    }

    /// The job succeeded: every worker's last exit was a success and the budget held.
    pub(crate) fn succeeded(&self) -> bool {
        let ok = |i: usize| self.retiring[i] || self.done[i].is_some_and(|s| s.success());
        !self.failed && (0..self.done.len()).all(ok)
    }

    pub(crate) fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Whether some worker failed after others had finished (and was not restarted).
    pub(crate) fn failed_after_completion(&self) -> bool {
        !self.succeeded() && !self.failed && self.completed().is_some()
    }

    /// Output still in the pipes once the workers are gone (bounded by `within`).
    pub(crate) fn drain(&mut self, within: Duration) -> Vec<Event> {
        let deadline = Instant::now() + within;
        let mut events = Vec::new();
        while let Ok((slot, stderr, text)) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            events.push(Event::Line { slot, stderr, text });
        }
        events
    }

    /// Stops everything: `sig` first, SIGKILL after `grace`.
    pub(crate) fn stop(&mut self, sig: Signal, grace: Duration) {
        self.failed = true;
        self.pending.clear();
        self.signal_all(sig);
        let deadline = Instant::now() + grace;
        for child in self.children.iter_mut().flatten() {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.iter_mut().for_each(|c| *c = None);
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A worker killed while it set up shared memory leaves its segment named (set-up unlinks it);
/// the launcher, which reaped the worker, removes it.
fn forget_segments(pid: u32) {
    let n = ringrun_collectives::transport::shm::remove_leftovers_of(pid);
    if n > 0 {
        eprintln!("ringrun: removed {n} shared-memory segment(s) worker pid {pid} left in set-up");
    }
}
