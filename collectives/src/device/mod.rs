//! Collectives on device (GPU) memory: the backend abstraction, its watchdog, a fake backend for
//! tests and a staged fallback through host memory.
//!
//! A [`DeviceComm`] is a backend such as NCCL (`crate::nccl`, feature `nccl`): it *enqueues* a
//! collective on a stream and returns at once; the work finishes later on the device, or never
//! when a peer died. [`DeviceCommunicator`] wraps a backend with the crate's contract (every
//! operation ends within its deadline or when its [`Cancel`](crate::Cancel) fires, with a typed
//! [`CollectiveError`]): it polls completion and the backend's asynchronous error, and aborts the
//! backend when the operation has to end early ([`watchdog`]).
//!
//! Nothing in this module touches CUDA: it is plain Rust over the trait, so CI tests the whole
//! state machine with [`fake::FakeComm`]. The CPU transports never reach this module.

pub mod communicator;
pub mod fake;
pub mod staged;
pub mod watchdog;

pub use communicator::{DeviceCommunicator, WatchConfig};
pub use staged::{Staged, Stager, Staging};

use crate::{
    dtype::{DType, ReduceOp},
    error::CollectiveError,
};

/// Device memory whose length the generic code can check before a backend sees it.
pub trait DeviceBuffer {
    /// Length in bytes.
    fn len_bytes(&self) -> usize;
}

/// Where a device collective reads its input and writes its output (as [`Bufs`](crate::Bufs)
/// for host memory). Shapes are those of [`Communicator`](crate::Communicator): allgather's
/// output holds `size` blocks, reduce-scatter's input does.
#[derive(Debug)]
pub enum DeviceBufs<'a, B> {
    /// Input and output are the same buffer (for allgather, this rank's block is already in
    /// place; for reduce-scatter, the result is left in this rank's block).
    InPlace(&'a mut B),
    /// Input is left untouched; output goes to `recv`.
    OutOfPlace {
        /// Input.
        send: &'a B,
        /// Output.
        recv: &'a mut B,
    },
}

impl<B> DeviceBufs<'_, B> {
    /// Reborrows, so that the same buffers can be enqueued again.
    pub fn reborrow(&mut self) -> DeviceBufs<'_, B> {
        match self {
            DeviceBufs::InPlace(b) => DeviceBufs::InPlace(b),
            DeviceBufs::OutOfPlace { send, recv } => DeviceBufs::OutOfPlace { send, recv },
        }
    }
}

/// Why a backend gave up: what its asynchronous error (`ncclCommGetAsyncError`) or a failed
/// enqueue reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceFault {
    /// Whose fault it is.
    pub kind: FaultKind,
    /// The backend's own words (error string, last error).
    pub detail: String,
}

/// The classes of [`DeviceFault`] that map to different [`CollectiveError`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A remote peer failed (`ncclRemoteError`); `peer` if the backend knows which.
    Remote {
        /// The failed peer, if known (NCCL does not say).
        peer: Option<usize>,
    },
    /// The backend's own timeout fired (`ncclTimeout`).
    Timeout,
    /// A local failure: CUDA error, invalid usage, internal error, system error.
    Local,
    /// Ranks disagree about the call or the communicator (found by a checking backend, the
    /// staged path's frame headers, or the bootstrap exchange); NCCL itself cannot tell.
    Mismatch {
        /// The rank that disagreed.
        rank: usize,
    },
}

impl DeviceFault {
    /// A local fault with a message.
    pub fn local(detail: impl Into<String>) -> DeviceFault {
        DeviceFault {
            kind: FaultKind::Local,
            detail: detail.into(),
        }
    }

    /// The collective error this fault ends an operation with; `waited` is how long it ran.
    pub fn to_error(&self, waited: std::time::Duration) -> CollectiveError {
        match self.kind {
            FaultKind::Remote { peer: Some(rank) } => CollectiveError::PeerLost {
                rank,
                reason: self.detail.clone(),
            },
            // NCCL does not name the peer; the membership layer will. The runtime treats
            // `Aborted` like `PeerLost`: re-form and restore.
            FaultKind::Remote { peer: None } => CollectiveError::Aborted {
                reason: format!("a remote peer failed: {}", self.detail),
            },
            FaultKind::Timeout => CollectiveError::Timeout {
                waiting_on: None,
                waited,
            },
            FaultKind::Local => CollectiveError::Aborted {
                reason: format!("device backend failed: {}", self.detail),
            },
            FaultKind::Mismatch { rank } => CollectiveError::Mismatch {
                rank,
                detail: self.detail.clone(),
            },
        }
    }
}

/// What `poll_async_error` says about a communicator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AsyncStatus {
    /// No error; nothing pending in the backend's host-side state machine.
    Ok,
    /// Initialisation or an enqueue is still in progress (`ncclInProgress`).
    InProgress,
    /// The communicator failed; it must be aborted.
    Failed(DeviceFault),
}

/// How far an enqueued operation got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Progress {
    /// The backend is still putting it on the stream (`ncclInProgress` from a non-blocking
    /// communicator): no other call may be made on the communicator yet.
    Enqueuing,
    /// On the stream, not finished.
    Running,
    /// Finished on the device.
    Complete,
}

/// A device collectives backend: one rank's communicator for one epoch.
///
/// Enqueue calls return without waiting for the device; [`progress`](Self::progress) polls. No method may block on the device or on a peer: the watchdog relies on every call
/// returning promptly (in NCCL terms: a non-blocking communicator, `blocking = 0`, and no
/// implicit CUDA synchronisation). After [`abort`](Self::abort) only
/// [`abort_finished`](Self::abort_finished) may be called.
pub trait DeviceComm {
    /// Device memory.
    type Buf: DeviceBuffer;
    /// The stream work is enqueued on (the caller's).
    type Stream;
    /// An enqueued operation, polled by [`is_complete`](Self::is_complete).
    type Pending;

    /// This rank.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;

    /// Enqueues an allreduce.
    fn allreduce(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, Self::Buf>,
        op: ReduceOp,
        stream: &Self::Stream,
    ) -> Result<Self::Pending, DeviceFault>;
    /// Enqueues a broadcast from `root`.
    fn broadcast(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, Self::Buf>,
        root: usize,
        stream: &Self::Stream,
    ) -> Result<Self::Pending, DeviceFault>;
    /// Enqueues an allgather.
    fn allgather(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, Self::Buf>,
        stream: &Self::Stream,
    ) -> Result<Self::Pending, DeviceFault>;
    /// Enqueues a reduce-scatter.
    fn reduce_scatter(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, Self::Buf>,
        op: ReduceOp,
        stream: &Self::Stream,
    ) -> Result<Self::Pending, DeviceFault>;

    /// How far an enqueued operation got (never waits).
    fn progress(&mut self, pending: &mut Self::Pending) -> Result<Progress, DeviceFault>;
    /// The communicator's asynchronous error state (never waits).
    fn poll_async_error(&mut self) -> AsyncStatus;
    /// Starts aborting the communicator: in-flight work is cancelled and resources freed.
    /// Returns at once; the abort may take a while (or hang, as `ncclCommAbort` is known to).
    fn abort(&mut self);
    /// Whether a started abort has finished.
    fn abort_finished(&mut self) -> bool;
    /// Starts a graceful close (`ncclCommFinalize`): pending work is flushed to the peers; done
    /// when [`poll_async_error`](Self::poll_async_error) says [`AsyncStatus::Ok`].
    fn finalize(&mut self) -> Result<(), DeviceFault>;
}

/// Checks the buffer shapes of a device collective and returns the element count NCCL takes
/// (for allgather the send count, for reduce-scatter the receive count).
pub fn check_shape(
    what: Shape,
    dtype: DType,
    send: Option<usize>,
    recv: usize,
    size: usize,
) -> Result<usize, CollectiveError> {
    let elem = dtype.size();
    let bad = |m: String| Err(CollectiveError::InvalidArgument(m));
    if !recv.is_multiple_of(elem) || send.is_some_and(|s| !s.is_multiple_of(elem)) {
        return bad(format!(
            "buffers do not hold whole {} elements",
            dtype.nccl_name()
        ));
    }
    match what {
        Shape::Same => match send {
            Some(s) if s != recv => bad(format!("input has {s} bytes, output {recv}")),
            _ => Ok(recv / elem),
        },
        Shape::Root(root) if root >= size => bad(format!("root {root} outside a world of {size}")),
        Shape::Root(_) => match send {
            Some(s) if s != recv => bad(format!("input has {s} bytes, output {recv}")),
            _ => Ok(recv / elem),
        },
        // Out of place the input is one block; in place the buffer holds all of them.
        Shape::Gather => match send {
            Some(s) if s * size != recv => {
                bad(format!("output has {recv} bytes, not {size} × {s}"))
            }
            _ if !recv.is_multiple_of(size * elem) => {
                bad(format!("{recv} bytes do not split into {size} blocks"))
            }
            _ => Ok(recv / size / elem),
        },
        Shape::Scatter => match send {
            Some(s) if s != recv * size => bad(format!("input has {s} bytes, not {size} × {recv}")),
            Some(_) => Ok(recv / elem),
            None if !recv.is_multiple_of(size * elem) => {
                bad(format!("{recv} bytes do not split into {size} blocks"))
            }
            None => Ok(recv / size / elem),
        },
    }
}

/// How a device collective's input relates to its output (for [`check_shape`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Allreduce: same lengths.
    Same,
    /// Broadcast from this root: same lengths.
    Root(usize),
    /// Allgather: the output is `size` input blocks.
    Gather,
    /// Reduce-scatter: the input is `size` output blocks.
    Scatter,
}

/// The lengths (send, recv) of a [`DeviceBufs`].
pub(crate) fn lens<B: DeviceBuffer>(bufs: &DeviceBufs<'_, B>) -> (Option<usize>, usize) {
    match bufs {
        DeviceBufs::InPlace(b) => (None, b.len_bytes()),
        DeviceBufs::OutOfPlace { send, recv } => (Some(send.len_bytes()), recv.len_bytes()),
    }
}
