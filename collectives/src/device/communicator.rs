//! [`DeviceCommunicator`]: a [`DeviceComm`] backend under the crate's contract (deadline,
//! cancellation, typed errors, poisoning). The driver of [`Watchdog`]: it owns the clock and the
//! waiting; the decisions are the watchdog's.

use std::time::Duration;

use tracing::warn;

use super::{
    AsyncStatus, DeviceBufs, DeviceComm, DeviceFault, Progress, Shape, check_shape, lens,
    watchdog::{Observation, Step, Watchdog},
};
use crate::{
    comm::Ctl,
    dtype::{DType, ReduceOp},
    error::{CollectiveError, Result},
};

/// How a [`DeviceCommunicator`] watches its operations.
#[derive(Clone, Copy, Debug)]
pub struct WatchConfig {
    /// How often completion and the backend's async error are polled. Smaller is faster to
    /// notice completion (latency of small collectives) at the cost of a busier host thread.
    pub poll: Duration,
    /// How long an abort may take before the error is returned anyway and the backend leaked.
    pub abort_grace: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            poll: Duration::from_micros(100),
            abort_grace: Duration::from_secs(2),
        }
    }
}

/// The device collectives of one epoch's ranks over a backend `C`.
///
/// Like [`Communicator`](crate::Communicator): calls are collective, every call ends within its
/// deadline or at its cancellation (plus [`WatchConfig::abort_grace`]), and a failed call aborts
/// the backend and poisons the communicator. The runtime builds a fresh one (new NCCL unique id)
/// for the next epoch.
pub struct DeviceCommunicator<C: DeviceComm> {
    comm: C,
    epoch: u64,
    config: WatchConfig,
    poisoned: Option<String>,
    leaked: bool,
}

impl<C: DeviceComm> DeviceCommunicator<C> {
    /// Wraps a backend communicator built for `epoch`.
    pub fn new(comm: C, epoch: u64, config: WatchConfig) -> Self {
        DeviceCommunicator {
            comm,
            epoch,
            config,
            poisoned: None,
            leaked: false,
        }
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.comm.size()
    }

    /// The epoch this communicator was built for.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Why the communicator is unusable, if it is.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Whether an abort did not finish within the grace. The backend still owns device work
    /// that may write into the buffers of the failed call; the safe recovery is to restart the
    /// process (the runtime's restart-in-process is not enough).
    pub fn leaked(&self) -> bool {
        self.leaked
    }

    /// The backend (for its own queries; the watchdog assumes nobody else enqueues on it).
    pub fn backend(&self) -> &C {
        &self.comm
    }

    /// Waits until the backend's initialisation (a non-blocking `ncclCommInitRankConfig`)
    /// finished, under the same watchdog as an operation: a peer that never joins ends in
    /// `Timeout`, a membership change in `Aborted`.
    pub async fn ready(&mut self, ctl: &Ctl) -> Result<()> {
        self.watch(ctl, None, Progress::Complete).await
    }

    /// Closes gracefully (`ncclCommFinalize`, so that the peers get every byte this rank sent),
    /// under the watchdog; a close that does not finish in time aborts.
    pub async fn close(&mut self, ctl: &Ctl) -> Result<()> {
        if let Some(why) = &self.poisoned {
            return Err(CollectiveError::Poisoned(why.clone()));
        }
        match self.comm.finalize() {
            Ok(()) => self.watch(ctl, None, Progress::Complete).await,
            Err(f) => self.watch(ctl, Some(Err(f)), Progress::Complete).await,
        }
    }

    /// Allreduce of the `dtype` elements in `bufs`.
    pub async fn allreduce(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, C::Buf>,
        op: ReduceOp,
        stream: &C::Stream,
        ctl: &Ctl,
    ) -> Result<()> {
        self.allreduce_n(dtype, bufs, op, stream, 1, ctl).await
    }

    /// `times` back-to-back allreduces on the same buffers, watched as one: the benchmark's
    /// timed loop, which must not wait on the host between operations to match nccl-tests.
    pub async fn allreduce_n(
        &mut self,
        dtype: DType,
        mut bufs: DeviceBufs<'_, C::Buf>,
        op: ReduceOp,
        stream: &C::Stream,
        times: usize,
        ctl: &Ctl,
    ) -> Result<()> {
        let (send, recv) = lens(&bufs);
        check_shape(Shape::Same, dtype, send, recv, self.size())?;
        let times = times.max(1);
        for i in 1..=times {
            // A non-blocking communicator takes no new call while one is still being enqueued;
            // only the last operation is waited for on the device.
            let target = if i == times {
                Progress::Complete
            } else {
                Progress::Running
            };
            self.run(ctl, target, |c| {
                c.allreduce(dtype, bufs.reborrow(), op, stream)
            })
            .await?;
        }
        Ok(())
    }

    /// Broadcast from `root`.
    pub async fn broadcast(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, C::Buf>,
        root: usize,
        stream: &C::Stream,
        ctl: &Ctl,
    ) -> Result<()> {
        let (send, recv) = lens(&bufs);
        check_shape(Shape::Root(root), dtype, send, recv, self.size())?;
        self.run(ctl, Progress::Complete, |c| {
            c.broadcast(dtype, bufs, root, stream)
        })
        .await
    }

    /// Allgather (the output holds `size` blocks).
    pub async fn allgather(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, C::Buf>,
        stream: &C::Stream,
        ctl: &Ctl,
    ) -> Result<()> {
        let (send, recv) = lens(&bufs);
        check_shape(Shape::Gather, dtype, send, recv, self.size())?;
        self.run(ctl, Progress::Complete, |c| {
            c.allgather(dtype, bufs, stream)
        })
        .await
    }

    /// Reduce-scatter (the input holds `size` blocks).
    pub async fn reduce_scatter(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, C::Buf>,
        op: ReduceOp,
        stream: &C::Stream,
        ctl: &Ctl,
    ) -> Result<()> {
        let (send, recv) = lens(&bufs);
        check_shape(Shape::Scatter, dtype, send, recv, self.size())?;
        self.run(ctl, Progress::Complete, |c| {
            c.reduce_scatter(dtype, bufs, op, stream)
        })
        .await
    }

    /// Enqueues one operation and watches it until it reaches `target`.
    async fn run(
        &mut self,
        ctl: &Ctl,
        target: Progress,
        enqueue: impl FnOnce(&mut C) -> std::result::Result<C::Pending, DeviceFault>,
    ) -> Result<()> {
        if let Some(why) = &self.poisoned {
            return Err(CollectiveError::Poisoned(why.clone()));
        }
        // A cancel that fired before the call aborts without enqueueing (and without waiting
        // on peers that may already be gone).
        let pending = match ctl.cancel.as_ref().and_then(crate::Cancel::reason) {
            Some(_) => None,
            None => Some(enqueue(&mut self.comm)),
        };
        match pending {
            Some(p) => self.watch(ctl, Some(p), target).await,
            None => self.watch(ctl, None, target).await,
        }
    }

    /// Drives the watchdog over one enqueued operation until it reaches `target` (`None`: over
    /// initialisation or finalisation, done when the backend's state is no longer in progress).
    async fn watch(
        &mut self,
        ctl: &Ctl,
        pending: Option<std::result::Result<C::Pending, DeviceFault>>,
        target: Progress,
    ) -> Result<()> {
        if let Some(why) = &self.poisoned {
            return Err(CollectiveError::Poisoned(why.clone()));
        }
        let now = || tokio::time::Instant::now().into_std();
        let mut dog = Watchdog::new(
            now(),
            ctl.deadline,
            self.config.poll,
            self.config.abort_grace,
        );
        let (mut pending, mut fault) = match pending {
            Some(Ok(p)) => (Some(p), None),
            Some(Err(f)) => (None, Some(f)),
            None => (None, None),
        };
        let init = pending.is_none() && fault.is_none();
        let mut aborting = false;
        let result = loop {
            let mut obs = Observation {
                cancelled: ctl.cancel.as_ref().and_then(crate::Cancel::reason),
                fault: fault.take(),
                ..Default::default()
            };
            if aborting {
                obs.abort_finished = self.comm.abort_finished();
            } else if obs.fault.is_none() {
                match self.comm.poll_async_error() {
                    AsyncStatus::Failed(f) => obs.fault = Some(f),
                    AsyncStatus::Ok if init => obs.complete = true,
                    _ => {}
                }
                if let (None, Some(p)) = (&obs.fault, pending.as_mut()) {
                    match self.comm.progress(p) {
                        Ok(got) => obs.complete = got >= target,
                        Err(f) => obs.fault = Some(f),
                    }
                }
            }
            match dog.step(now(), obs) {
                Step::Done(r) => break r,
                Step::Abort => {
                    aborting = true;
                    self.comm.abort();
                }
                Step::WaitUntil(at) => {
                    let at = tokio::time::Instant::from_std(at);
                    let cancelled = async {
                        match &ctl.cancel {
                            // Once aborting, a cancel changes nothing: do not spin on it.
                            Some(c) if !aborting => c.cancelled().await,
                            _ => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = cancelled => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        };
        if let Err(e) = &result {
            self.leaked = dog.leaked();
            warn!(epoch = self.epoch, error = %e, leaked = self.leaked, "device collective failed");
            self.poisoned = Some(e.to_string());
        }
        drop(pending);
        result
    }
}
