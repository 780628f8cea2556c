//! A scripted [`DeviceComm`] for tests: each enqueued operation follows a [`Behavior`], so the
//! watchdog's paths (hang, cancel, asynchronous error, failed enqueue, mismatch, hung abort) run
//! on any machine, in microseconds, and count the calls the real backend would have received.
//!
//! Progress is counted in polls, not in time, so a test's outcome does not depend on the
//! machine's speed; only the deadline and the abort grace are wall-clock.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use super::{
    AsyncStatus, DeviceBuffer, DeviceBufs, DeviceComm, DeviceFault, FaultKind, Progress, Staging,
};
use crate::dtype::{DType, ReduceOp};

/// "Device" memory that lives on the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeBuf(pub Vec<u8>);

impl DeviceBuffer for FakeBuf {
    fn len_bytes(&self) -> usize {
        self.0.len()
    }
}

/// What one enqueued operation does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Finishes after this many completion polls.
    Complete {
        /// Polls that answer `Running` first.
        polls: u32,
    },
    /// Stays `Enqueuing` (`ncclInProgress`) for `polls` polls, then finishes at once.
    SlowEnqueue {
        /// Polls that answer `Enqueuing` first.
        polls: u32,
    },
    /// Never finishes (a peer died and NCCL does not notice).
    Hang,
    /// After `polls` polls the communicator's asynchronous error turns to `kind`.
    AsyncError {
        /// Polls before the error shows.
        polls: u32,
        /// What failed.
        kind: FaultKind,
    },
    /// The enqueue call itself fails.
    EnqueueError(FaultKind),
}

/// How an abort behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortBehavior {
    /// Finished after this many `abort_finished` polls.
    Finishes {
        /// Polls that answer `false` first.
        polls: u32,
    },
    /// Never finishes (`ncclCommAbort` stuck on a dead proxy).
    Hangs,
}

/// What the backend was asked to do, shared with the test.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FakeLog {
    /// Operations enqueued, by name.
    pub enqueued: Vec<&'static str>,
    /// `abort` calls.
    pub aborts: u32,
    /// `finalize` calls.
    pub finalizes: u32,
    /// Calls other than `abort_finished` made after `abort` (must stay zero).
    pub calls_after_abort: u32,
    /// Enqueues made while an earlier one was still `Enqueuing` (must stay zero).
    pub enqueues_while_enqueuing: u32,
}

/// A scripted backend.
#[derive(Debug)]
pub struct FakeComm {
    rank: usize,
    size: usize,
    script: VecDeque<Behavior>,
    init_polls: u32,
    abort_behavior: AbortBehavior,
    abort_polls: u32,
    fault: Option<DeviceFault>,
    aborted: bool,
    enqueuing: bool,
    log: Arc<Mutex<FakeLog>>,
}

/// An operation in flight on a [`FakeComm`].
#[derive(Debug)]
pub struct FakePending {
    behavior: Behavior,
    polls: u32,
}

impl FakeComm {
    /// Rank `rank` of `size`; operations follow `script` in order, then complete at once.
    pub fn new(rank: usize, size: usize, script: impl IntoIterator<Item = Behavior>) -> Self {
        FakeComm {
            rank,
            size,
            script: script.into_iter().collect(),
            init_polls: 0,
            abort_behavior: AbortBehavior::Finishes { polls: 0 },
            abort_polls: 0,
            fault: None,
            aborted: false,
            enqueuing: false,
            log: Arc::default(),
        }
    }

    /// Initialisation stays in progress for `polls` polls (`None`: forever).
    pub fn init_polls(mut self, polls: Option<u32>) -> Self {
        self.init_polls = polls.unwrap_or(u32::MAX);
        self
    }

    /// How `abort` behaves.
    pub fn abort_behavior(mut self, b: AbortBehavior) -> Self {
        self.abort_behavior = b;
        self
    }

    /// The shared call log.
    pub fn log(&self) -> Arc<Mutex<FakeLog>> {
        self.log.clone()
    }

    fn note(&mut self, f: impl FnOnce(&mut FakeLog)) {
        f(&mut self.log.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn enqueue(&mut self, name: &'static str) -> Result<FakePending, DeviceFault> {
        let (aborted, enqueuing) = (self.aborted, self.enqueuing);
        self.note(|l| {
            l.enqueued.push(name);
            l.calls_after_abort += u32::from(aborted);
            l.enqueues_while_enqueuing += u32::from(enqueuing);
        });
        let behavior = self
            .script
            .pop_front()
            .unwrap_or(Behavior::Complete { polls: 0 });
        if let Behavior::EnqueueError(kind) = behavior {
            return Err(DeviceFault {
                kind,
                detail: format!("fake {name} enqueue failed"),
            });
        }
        self.enqueuing = matches!(behavior, Behavior::SlowEnqueue { polls } if polls > 0);
        Ok(FakePending { behavior, polls: 0 })
    }
}

impl DeviceComm for FakeComm {
    type Buf = FakeBuf;
    type Stream = ();
    type Pending = FakePending;

    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn allreduce(
        &mut self,
        _: DType,
        _: DeviceBufs<'_, FakeBuf>,
        _: ReduceOp,
        _: &(),
    ) -> Result<FakePending, DeviceFault> {
        self.enqueue("allreduce")
    }

    fn broadcast(
        &mut self,
        _: DType,
        _: DeviceBufs<'_, FakeBuf>,
        _: usize,
        _: &(),
    ) -> Result<FakePending, DeviceFault> {
        self.enqueue("broadcast")
    }

    fn allgather(
        &mut self,
        _: DType,
        _: DeviceBufs<'_, FakeBuf>,
        _: &(),
    ) -> Result<FakePending, DeviceFault> {
        self.enqueue("allgather")
    }

    fn reduce_scatter(
        &mut self,
        _: DType,
        _: DeviceBufs<'_, FakeBuf>,
        _: ReduceOp,
        _: &(),
    ) -> Result<FakePending, DeviceFault> {
        self.enqueue("reduce_scatter")
    }

    fn progress(&mut self, p: &mut FakePending) -> Result<Progress, DeviceFault> {
        if self.aborted {
            self.note(|l| l.calls_after_abort += 1);
        }
        p.polls = p.polls.saturating_add(1);
        Ok(match &p.behavior {
            Behavior::Complete { polls } if p.polls > *polls => Progress::Complete,
            Behavior::SlowEnqueue { polls } if p.polls <= *polls => Progress::Enqueuing,
            Behavior::SlowEnqueue { .. } => {
                self.enqueuing = false;
                Progress::Complete
            }
            Behavior::AsyncError { polls, kind } if p.polls > *polls => {
                self.fault = Some(DeviceFault {
                    kind: *kind,
                    detail: "fake asynchronous error".into(),
                });
                Progress::Running
            }
            _ => Progress::Running,
        })
    }

    fn poll_async_error(&mut self) -> AsyncStatus {
        if self.aborted {
            self.note(|l| l.calls_after_abort += 1);
        }
        if let Some(f) = &self.fault {
            return AsyncStatus::Failed(f.clone());
        }
        if self.init_polls > 0 {
            self.init_polls -= 1;
            return AsyncStatus::InProgress;
        }
        if self.enqueuing {
            AsyncStatus::InProgress
        } else {
            AsyncStatus::Ok
        }
    }

    fn abort(&mut self) {
        self.aborted = true;
        self.note(|l| l.aborts += 1);
    }

    fn abort_finished(&mut self) -> bool {
        self.abort_polls = self.abort_polls.saturating_add(1);
        match self.abort_behavior {
            AbortBehavior::Finishes { polls } => self.abort_polls > polls,
            AbortBehavior::Hangs => false,
        }
    }

    fn finalize(&mut self) -> Result<(), DeviceFault> {
        if self.aborted {
            self.note(|l| l.calls_after_abort += 1);
        }
        self.note(|l| l.finalizes += 1);
        Ok(())
    }
}

/// [`Staging`] for [`FakeBuf`]: copies at once, so the staged path runs over the CPU transports
/// in CI exactly as it does with CUDA buffers.
#[derive(Debug, Default)]
pub struct HostStaging {
    host: Vec<u8>,
}

impl Staging for HostStaging {
    type Buf = FakeBuf;
    type Stream = ();
    type Copy = ();

    fn reserve(&mut self, bytes: usize) -> Result<(), DeviceFault> {
        if self.host.len() < bytes {
            self.host.resize(bytes, 0);
        }
        Ok(())
    }

    fn host(&mut self) -> &mut [u8] {
        &mut self.host
    }

    fn download(
        &mut self,
        src: &FakeBuf,
        src_at: usize,
        host_at: usize,
        len: usize,
        _: &(),
    ) -> Result<(), DeviceFault> {
        self.host[host_at..host_at + len].copy_from_slice(&src.0[src_at..src_at + len]);
        Ok(())
    }

    fn upload(
        &mut self,
        dst: &mut FakeBuf,
        dst_at: usize,
        host_at: usize,
        len: usize,
        _: &(),
    ) -> Result<(), DeviceFault> {
        dst.0[dst_at..dst_at + len].copy_from_slice(&self.host[host_at..host_at + len]);
        Ok(())
    }

    fn is_done(&mut self, _: &mut ()) -> Result<bool, DeviceFault> {
        Ok(true)
    }
}
