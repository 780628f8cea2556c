//! [`NcclComm`]: one rank's non-blocking NCCL communicator for one epoch.
//!
//! Non-blocking (`ncclConfig_t.blocking = 0`) so that no call waits on a peer: initialisation
//! and enqueues may return `ncclInProgress`, and the watchdog polls `ncclCommGetAsyncError`
//! until the state clears. Completion is an event recorded after the collective and queried
//! (`cuEventQuery`), never a stream synchronisation, which would hang with a dead peer.
//! `ncclCommAbort` runs on a thread of its own, because it can block for a long time (or for
//! ever, in some NCCL versions, with a dead proxy); the watchdog polls for its end.

use std::{
    ffi::{CStr, c_int, c_void},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use cudarc::{
    driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut},
    nccl::sys::{self, ncclDataType_t as Ty, ncclRedOp_t as Op, ncclResult_t as R},
};
use tracing::warn;

use super::probe::probe_nccl;
use crate::{
    device::{AsyncStatus, DeviceBufs, DeviceComm, DeviceFault, FaultKind, Progress},
    dtype::{DType, ReduceOp},
};

/// An NCCL unique id: made by one rank, sent to the others out of band (the bench sends it over
/// its authenticated TCP mesh; the runtime will carry it in the epoch's agreement).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UniqueId(pub [u8; 128]);

impl UniqueId {
    /// A fresh id (`ncclGetUniqueId`; starts NCCL's bootstrap listener on this host).
    pub fn new() -> Result<UniqueId, DeviceFault> {
        probe_nccl().map_err(|e| DeviceFault::local(e.to_string()))?;
        let mut id = sys::ncclUniqueId { internal: [0; 128] };
        // SAFETY: NCCL is loaded and has the symbol (probe above); `id` is a valid out pointer.
        check(unsafe { sys::ncclGetUniqueId(&mut id) }, None)?;
        Ok(UniqueId(id.internal.map(|c| c as u8)))
    }
}

/// The raw handle, movable to the abort thread.
struct Raw(sys::ncclComm_t);

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not
// overlap; `Raw` is moved (never shared), and `ncclCommAbort` is documented as callable from
// another thread than the one that enqueued.
unsafe impl Send for Raw {}

impl Raw {
    /// `ncclCommAbort`, consuming the handle (a method, so that closures move all of `Raw`).
    fn abort(self) -> R {
        // SAFETY: the handle is live and owned here; no other call is made on it afterwards
        // (the communicator gave up its copy).
        unsafe { sys::ncclCommAbort(self.0) }
    }
}

/// One rank's NCCL communicator for one epoch. Build it with [`NcclComm::init`], wrap it in a
/// [`DeviceCommunicator`](crate::device::DeviceCommunicator) and wait for
/// [`ready`](crate::device::DeviceCommunicator::ready).
pub struct NcclComm {
    raw: Option<Raw>,
    rank: usize,
    size: usize,
    ctx: Arc<CudaContext>,
    abort_done: Option<Arc<AtomicBool>>,
    finalized: bool,
}

/// An enqueued NCCL operation: still being enqueued, or on the stream behind an event.
pub struct NcclPending {
    stream: Arc<CudaStream>,
    event: Option<CudaEvent>,
}

impl NcclComm {
    /// Starts `ncclCommInitRankConfig` (non-blocking) for `rank` of `size` on `ctx`'s device.
    /// Every rank must pass the same `id`; each rank needs a device of its own.
    pub fn init(
        ctx: &Arc<CudaContext>,
        id: &UniqueId,
        rank: usize,
        size: usize,
    ) -> Result<NcclComm, DeviceFault> {
        probe_nccl().map_err(|e| DeviceFault::local(e.to_string()))?;
        ctx.bind_to_thread().map_err(cuda)?;
        let id = sys::ncclUniqueId {
            internal: id.0.map(|b| b as std::ffi::c_char),
        };
        let mut config = config();
        let mut raw: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: NCCL is loaded with this symbol (probe); `raw` and `config` are valid for the
        // call, and NCCL copies the config before returning.
        let r = unsafe {
            sys::ncclCommInitRankConfig(&mut raw, size as c_int, id, rank as c_int, &mut config)
        };
        let comm = NcclComm {
            raw: (!raw.is_null()).then_some(Raw(raw)),
            rank,
            size,
            ctx: ctx.clone(),
            abort_done: None,
            finalized: false,
        };
        // On failure `comm` is dropped, which aborts a half-made handle off this thread.
        check(r, comm.raw.as_ref().map(|r| r.0))?;
        Ok(comm)
    }

    fn handle(&self) -> Result<sys::ncclComm_t, DeviceFault> {
        match &self.raw {
            Some(r) if self.abort_done.is_none() => Ok(r.0),
            _ => Err(DeviceFault::local("communicator already aborted")),
        }
    }

    /// Enqueues one collective; `call` gets the handle, the send and receive pointers and the
    /// raw stream.
    fn enqueue(
        &mut self,
        bufs: DeviceBufs<'_, CudaSlice<u8>>,
        stream: &Arc<CudaStream>,
        call: impl FnOnce(sys::ncclComm_t, *const c_void, *mut c_void, sys::cudaStream_t) -> R,
    ) -> Result<NcclPending, DeviceFault> {
        let comm = self.handle()?;
        self.ctx.bind_to_thread().map_err(cuda)?;
        let raw_stream = stream.cu_stream() as sys::cudaStream_t;
        // The guards make `stream` wait for earlier writes to the buffers, and record on drop
        // that this stream used them (cudarc's cross-stream tracking).
        let (r, guards) = match bufs {
            DeviceBufs::InPlace(b) => {
                let (p, g) = b.device_ptr_mut(stream);
                (
                    call(comm, p as *const c_void, p as *mut c_void, raw_stream),
                    vec![g],
                )
            }
            DeviceBufs::OutOfPlace { send, recv } => {
                let (s, gs) = send.device_ptr(stream);
                let (d, gd) = recv.device_ptr_mut(stream);
                (
                    call(comm, s as *const c_void, d as *mut c_void, raw_stream),
                    vec![gs, gd],
                )
            }
        };
        check(r, Some(comm))?;
        let mut pending = NcclPending {
            stream: stream.clone(),
            event: None,
        };
        if r == R::ncclInProgress {
            // Nothing may be put on the stream until the enqueue finished, not even the guards'
            // event records: skip them (the buffers stay in use by this stream anyway).
            std::mem::forget(guards);
        } else {
            drop(guards);
            pending.event = Some(self.record(stream)?);
        }
        Ok(pending)
    }

    fn record(&self, stream: &CudaStream) -> Result<CudaEvent, DeviceFault> {
        let event = self.ctx.new_event(None).map_err(cuda)?;
        event.record(stream).map_err(cuda)?;
        Ok(event)
    }
}

impl DeviceComm for NcclComm {
    type Buf = CudaSlice<u8>;
    type Stream = Arc<CudaStream>;
    type Pending = NcclPending;

    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn allreduce(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, CudaSlice<u8>>,
        op: ReduceOp,
        stream: &Arc<CudaStream>,
    ) -> Result<NcclPending, DeviceFault> {
        let count = recv_len(&bufs) / dtype.size();
        self.enqueue(bufs, stream, |c, s, d, st| {
            // SAFETY: pointers are live device allocations of at least `count` elements (shape
            // checked by the caller), valid until the pending operation completes or the
            // communicator is aborted (the caller's borrow, see `DeviceCommunicator::leaked`).
            unsafe { sys::ncclAllReduce(s, d, count, ty(dtype), red(op), c, st) }
        })
    }

    fn broadcast(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, CudaSlice<u8>>,
        root: usize,
        stream: &Arc<CudaStream>,
    ) -> Result<NcclPending, DeviceFault> {
        let count = recv_len(&bufs) / dtype.size();
        self.enqueue(bufs, stream, |c, s, d, st| {
            // SAFETY: as in `allreduce`; `root` was checked against the size.
            unsafe { sys::ncclBroadcast(s, d, count, ty(dtype), root as c_int, c, st) }
        })
    }

    fn allgather(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, CudaSlice<u8>>,
        stream: &Arc<CudaStream>,
    ) -> Result<NcclPending, DeviceFault> {
        let (size, rank) = (self.size, self.rank);
        let block = recv_len(&bufs) / size;
        let in_place = matches!(bufs, DeviceBufs::InPlace(_));
        self.enqueue(bufs, stream, |c, s, d, st| {
            // NCCL's in-place allgather reads this rank's block where it lands.
            let s = if in_place {
                s.wrapping_byte_add(rank * block)
            } else {
                s
            };
            // SAFETY: as in `allreduce`: the output holds `size` blocks of `block` bytes.
            unsafe { sys::ncclAllGather(s, d, block / dtype.size(), ty(dtype), c, st) }
        })
    }

    fn reduce_scatter(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, CudaSlice<u8>>,
        op: ReduceOp,
        stream: &Arc<CudaStream>,
    ) -> Result<NcclPending, DeviceFault> {
        let (size, rank) = (self.size, self.rank);
        let in_place = matches!(bufs, DeviceBufs::InPlace(_));
        let block = match in_place {
            true => recv_len(&bufs) / size,
            false => recv_len(&bufs),
        };
        self.enqueue(bufs, stream, |c, s, d, st| {
            // NCCL's in-place reduce-scatter writes this rank's block of the input buffer.
            let d = if in_place {
                d.wrapping_byte_add(rank * block)
            } else {
                d
            };
            // SAFETY: as in `allreduce`: the input holds `size` blocks of `block` bytes.
            unsafe { sys::ncclReduceScatter(s, d, block / dtype.size(), ty(dtype), red(op), c, st) }
        })
    }

    fn progress(&mut self, p: &mut NcclPending) -> Result<Progress, DeviceFault> {
        if p.event.is_none() {
            match self.poll_async_error() {
                AsyncStatus::InProgress => return Ok(Progress::Enqueuing),
                AsyncStatus::Failed(f) => return Err(f),
                AsyncStatus::Ok => p.event = Some(self.record(&p.stream)?),
            }
        }
        let event = p.event.as_ref().expect("recorded above");
        match event.try_is_complete() {
            Ok(true) => Ok(Progress::Complete),
            Ok(false) => Ok(Progress::Running),
            Err(e) => Err(cuda(e)),
        }
    }

    fn poll_async_error(&mut self) -> AsyncStatus {
        let comm = match self.handle() {
            Ok(c) => c,
            Err(f) => return AsyncStatus::Failed(f),
        };
        let mut state = R::ncclSuccess;
        // SAFETY: `comm` is a live handle (not aborted); `state` is a valid out pointer. This is
        // one of the calls NCCL allows while a non-blocking operation is in progress.
        let r = unsafe { sys::ncclCommGetAsyncError(comm, &mut state) };
        match (r, state) {
            (R::ncclSuccess, R::ncclSuccess) => AsyncStatus::Ok,
            (R::ncclSuccess, R::ncclInProgress) => AsyncStatus::InProgress,
            (R::ncclSuccess, e) | (e, _) => AsyncStatus::Failed(fault(e, Some(comm))),
        }
    }

    fn abort(&mut self) {
        let Some(raw) = self.raw.take() else {
            self.abort_done = Some(Arc::new(AtomicBool::new(true)));
            return;
        };
        let done = Arc::new(AtomicBool::new(false));
        self.abort_done = Some(done.clone());
        let ctx = self.ctx.clone();
        let job = move || {
            let _ = ctx.bind_to_thread();
            let r = raw.abort();
            if r != R::ncclSuccess {
                warn!(result = ?r, "ncclCommAbort failed");
            }
            done.store(true, Ordering::Release);
        };
        // A thread, because the abort may block. If none can be started the handle is leaked:
        // `abort_finished` stays false and the watchdog reports the communicator as leaked.
        if let Err(e) = std::thread::Builder::new()
            .name("nccl-abort".into())
            .spawn(job)
        {
            warn!(error = %e, "no thread for ncclCommAbort");
        }
    }

    fn abort_finished(&mut self) -> bool {
        self.abort_done
            .as_ref()
            .is_some_and(|d| d.load(Ordering::Acquire))
    }

    fn finalize(&mut self) -> Result<(), DeviceFault> {
        let comm = self.handle()?;
        // SAFETY: live handle, no operation being enqueued (the caller watched the last one).
        check(unsafe { sys::ncclCommFinalize(comm) }, Some(comm))?;
        self.finalized = true;
        Ok(())
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        let Some(raw) = self.raw.take() else { return };
        if self.finalized {
            // SAFETY: finalised (flushed) and never used again; destroy only frees local state.
            let _ = unsafe { sys::ncclCommDestroy(raw.0) };
        } else {
            // Not finalised: a destroy could wait on peers, so abort, off this thread.
            self.raw = Some(raw);
            self.abort();
        }
    }
}

/// NCCL's config for a non-blocking communicator; every field NCCL_CONFIG_INITIALIZER leaves
/// undefined stays undefined (`INT_MIN`, null), so NCCL applies its defaults and environment.
fn config() -> sys::ncclConfig_t {
    const UNDEF: c_int = c_int::MIN;
    sys::ncclConfig_t {
        size: std::mem::size_of::<sys::ncclConfig_t>(),
        magic: 0xcafe_beef,
        // NCCL_VERSION(2, 30, 0): the layout of cudarc's bindings; an older library reads the
        // prefix it knows.
        version: 23000,
        blocking: 0,
        cgaClusterSize: UNDEF,
        minCTAs: UNDEF,
        maxCTAs: UNDEF,
        netName: std::ptr::null(),
        splitShare: UNDEF,
        trafficClass: UNDEF,
        commName: std::ptr::null(),
        collnetEnable: UNDEF,
        CTAPolicy: UNDEF,
        shrinkShare: UNDEF,
        nvlsCTAs: UNDEF,
        nChannelsPerNetPeer: UNDEF,
        nvlinkCentricSched: UNDEF,
        graphUsageMode: UNDEF,
        numRmaCtx: UNDEF,
        maxP2pPeers: UNDEF,
    }
}

fn recv_len(bufs: &DeviceBufs<'_, CudaSlice<u8>>) -> usize {
    match bufs {
        DeviceBufs::InPlace(b) => b.len(),
        DeviceBufs::OutOfPlace { recv, .. } => recv.len(),
    }
}

fn ty(d: DType) -> Ty {
    match d {
        DType::I8 => Ty::ncclInt8,
        DType::U8 => Ty::ncclUint8,
        DType::I32 => Ty::ncclInt32,
        DType::I64 => Ty::ncclInt64,
        DType::F16 => Ty::ncclFloat16,
        DType::BF16 => Ty::ncclBfloat16,
        DType::F32 => Ty::ncclFloat32,
        DType::F64 => Ty::ncclFloat64,
    }
}

fn red(op: ReduceOp) -> Op {
    match op {
        ReduceOp::Sum => Op::ncclSum,
        ReduceOp::Prod => Op::ncclProd,
        ReduceOp::Min => Op::ncclMin,
        ReduceOp::Max => Op::ncclMax,
        ReduceOp::Avg => Op::ncclAvg,
    }
}

/// `Ok` for success and in-progress, the fault otherwise.
fn check(r: R, comm: Option<sys::ncclComm_t>) -> Result<(), DeviceFault> {
    match r {
        R::ncclSuccess | R::ncclInProgress => Ok(()),
        e => Err(fault(e, comm)),
    }
}

/// A fault from an NCCL result, with NCCL's own words.
fn fault(r: R, comm: Option<sys::ncclComm_t>) -> DeviceFault {
    // SAFETY: both return pointers to static or communicator-owned NUL-terminated strings (or
    // null); they are copied at once. NCCL documents `ncclGetLastError` as callable at any time.
    let text = |p: *const std::ffi::c_char| {
        if p.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    // SAFETY: plain lookups of error strings (see above).
    let what = text(unsafe { sys::ncclGetErrorString(r) });
    let last = text(unsafe { sys::ncclGetLastError(comm.unwrap_or(std::ptr::null_mut())) });
    let kind = match r {
        R::ncclRemoteError => FaultKind::Remote { peer: None },
        R::ncclTimeout => FaultKind::Timeout,
        _ => FaultKind::Local,
    };
    DeviceFault {
        kind,
        detail: format!(
            "{r:?}: {what}{}",
            if last.is_empty() {
                String::new()
            } else {
                format!(" ({last})")
            }
        ),
    }
}

fn cuda(e: cudarc::driver::DriverError) -> DeviceFault {
    DeviceFault::local(format!("CUDA: {e:?}"))
}
