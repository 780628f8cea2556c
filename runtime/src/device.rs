//! The device side of a [`Group`]: collectives on GPU buffers, one backend communicator per
//! epoch.
//!
//! A group configured with a [`DeviceSpec`] (`RINGRUN_TRANSPORT=nccl` or `RINGRUN_DEVICE=cuda`)
//! builds its backend at join (probing CUDA and NCCL, so a machine without them fails at once
//! with [`GroupError::DeviceUnavailable`] naming the library). On entering each epoch, after the
//! epoch's authenticated TCP mesh is up, rank 0 makes a unique id and broadcasts it on that mesh,
//! every rank drops the previous epoch's communicator (an NCCL communicator that was not
//! finalised aborts off the caller's thread when dropped, so this never blocks) and creates a
//! non-blocking one for the new epoch, and the group waits for it to be ready under the epoch's
//! deadline and cancellation.
//!
//! Device collectives run through [`DeviceCommunicator`] with the same [`Cancel`] the runtime
//! registers for the epoch: when the membership changes, the driver fires it, the watchdog
//! aborts the backend (`ncclCommAbort`, on a thread of its own) and the call returns
//! [`GroupError::MembershipChanged`] within the abort grace. Nothing waits on the device.
//!
//! The backend is injectable ([`DeviceSpec::custom`]): tests run the whole per-epoch lifecycle
//! with `ringrun_collectives::device::fake::FakeComm` (`runtime/tests/device.rs`).
//!
//! [`Cancel`]: ringrun_collectives::Cancel

use std::{any::Any, fmt, sync::Arc};

use ringrun_collectives::{
    CollectiveError, Ctl, DType, ReduceOp,
    device::{
        DeviceBuffer, DeviceBufs, DeviceComm, DeviceCommunicator, DeviceFault, WatchConfig,
        fake::{FakeBuf, FakeComm},
    },
};
use tokio::runtime::Runtime;

use crate::{Group, GroupConfig, error::GroupError};

/// Bytes of a unique id (NCCL's `ncclUniqueId`).
pub const UNIQUE_ID_LEN: usize = 128;

/// A unique id as it travels on the epoch's mesh.
pub type UniqueIdBytes = [u8; UNIQUE_ID_LEN];

/// Builds one rank's device communicator per epoch. Implemented by [`NcclBackend`] (feature
/// `nccl`) and by tests over the fake backend.
pub trait DeviceBackend: Send {
    /// The per-epoch communicator.
    type Comm: DeviceComm + Send + 'static;

    /// What it runs on, for logs and the membership metadata (`cuda:0`).
    fn describe(&self) -> String;
    /// A fresh unique id; called on rank 0 of every epoch.
    fn unique_id(&mut self) -> Result<UniqueIdBytes, DeviceFault>;
    /// Starts creating this rank's communicator for `epoch` (non-blocking: the group waits
    /// for it with [`DeviceCommunicator::ready`]).
    fn create(
        &mut self,
        id: &UniqueIdBytes,
        rank: usize,
        size: usize,
        epoch: u64,
    ) -> Result<Self::Comm, DeviceFault>;
    /// The stream collectives run on when the caller passes none.
    fn stream(&self) -> &<Self::Comm as DeviceComm>::Stream;
}

/// Device memory whose backend the group knows: the buffer type picks the communicator type,
/// so that `group.allreduce_device(dtype, DeviceBufs::InPlace(&mut slice), op, None)` needs no
/// annotation.
pub trait DeviceMemory: DeviceBuffer + Sized + 'static {
    /// The communicator that takes this memory.
    type Comm: DeviceComm<Buf = Self> + Send + 'static;
}

impl DeviceMemory for FakeBuf {
    type Comm = FakeComm;
}

/// The stream type of the backend of memory `M`.
pub type StreamOf<M> = <<M as DeviceMemory>::Comm as DeviceComm>::Stream;

/// Which device backend a group uses.
#[derive(Clone)]
pub enum DeviceSpec {
    /// NCCL on this member's GPU (`local_rank % devices`); needs the `nccl` feature, CUDA and
    /// NCCL at run time.
    Nccl,
    /// A backend built by the caller at join (tests: the fake).
    Custom(DeviceFactory),
}

impl fmt::Debug for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Nccl => f.write_str("Nccl"),
            DeviceSpec::Custom(c) => write!(f, "Custom({})", c.name),
        }
    }
}

type Make = dyn Fn(&GroupConfig) -> Result<Box<dyn DeviceEpochs>, GroupError> + Send + Sync;

/// A caller-supplied backend constructor, run once at join.
#[derive(Clone)]
pub struct DeviceFactory {
    name: String,
    make: Arc<Make>,
}

impl DeviceSpec {
    /// A backend built by `make` at join; an `Err` fails the join with
    /// [`GroupError::DeviceUnavailable`].
    pub fn custom<B, F>(name: impl Into<String>, make: F) -> DeviceSpec
    where
        B: DeviceBackend + 'static,
        F: Fn(&GroupConfig) -> Result<B, String> + Send + Sync + 'static,
    {
        DeviceSpec::Custom(DeviceFactory {
            name: name.into(),
            make: Arc::new(move |c: &GroupConfig| {
                let b = make(c).map_err(GroupError::DeviceUnavailable)?;
                Ok(Box::new(DeviceSide::new(Box::new(b))) as Box<dyn DeviceEpochs>)
            }),
        })
    }

    /// Builds the backend for a member configured by `config` (at join).
    pub(crate) fn build(&self, config: &GroupConfig) -> Result<Box<dyn DeviceEpochs>, GroupError> {
        match self {
            DeviceSpec::Custom(f) => (f.make)(config),
            #[cfg(feature = "nccl")]
            DeviceSpec::Nccl => {
                let b = NcclBackend::new(config.local_rank as usize)?;
                Ok(Box::new(DeviceSide::new(Box::new(b))))
            }
            #[cfg(not(feature = "nccl"))]
            DeviceSpec::Nccl => Err(GroupError::DeviceUnavailable(
                "this build of ringrun has no NCCL support (the runtime's `nccl` feature)".into(),
            )),
        }
    }
}

/// The group's view of its device side, with the backend's types erased.
pub(crate) trait DeviceEpochs: Send {
    /// See [`DeviceBackend::describe`].
    fn describe(&self) -> String;
    /// Forgets the current epoch's communicator without waiting (dropping an NCCL
    /// communicator that was not finalised aborts it off this thread).
    fn drop_epoch(&mut self);
    /// See [`DeviceBackend::unique_id`].
    fn unique_id(&mut self) -> Result<UniqueIdBytes, DeviceFault>;
    /// Creates this rank's communicator for `epoch` and waits until it is ready, under `ctl`.
    fn install(
        &mut self,
        rt: &Runtime,
        ctl: &Ctl,
        id: &UniqueIdBytes,
        rank: usize,
        size: usize,
        epoch: u64,
    ) -> Result<(), CollectiveError>;
    /// For the typed calls.
    fn as_any(&mut self) -> &mut dyn Any;
}

/// The device side over a backend whose communicator is `C`.
pub(crate) struct DeviceSide<C: DeviceComm> {
    backend: Box<dyn DeviceBackend<Comm = C>>,
    comm: Option<DeviceCommunicator<C>>,
    watch: WatchConfig,
}

impl<C: DeviceComm + Send + 'static> DeviceSide<C> {
    fn new(backend: Box<dyn DeviceBackend<Comm = C>>) -> Self {
        DeviceSide {
            backend,
            comm: None,
            watch: WatchConfig::default(),
        }
    }

    /// The epoch's communicator and the stream to use (the caller's, else the backend's).
    fn parts<'a>(
        &'a mut self,
        stream: Option<&'a C::Stream>,
    ) -> Result<(&'a mut DeviceCommunicator<C>, &'a C::Stream), CollectiveError> {
        let comm = self.comm.as_mut().ok_or_else(|| CollectiveError::Aborted {
            reason: "no device communicator for this epoch".into(),
        })?;
        Ok((comm, stream.unwrap_or_else(|| self.backend.stream())))
    }
}

impl<C: DeviceComm + Send + 'static> DeviceEpochs for DeviceSide<C> {
    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn drop_epoch(&mut self) {
        self.comm = None;
    }

    fn unique_id(&mut self) -> Result<UniqueIdBytes, DeviceFault> {
        self.backend.unique_id()
    }

    fn install(
        &mut self,
        rt: &Runtime,
        ctl: &Ctl,
        id: &UniqueIdBytes,
        rank: usize,
        size: usize,
        epoch: u64,
    ) -> Result<(), CollectiveError> {
        self.comm = None;
        let raw = self
            .backend
            .create(id, rank, size, epoch)
            .map_err(|f| f.to_error(std::time::Duration::ZERO))?;
        let comm = self
            .comm
            .insert(DeviceCommunicator::new(raw, epoch, self.watch));
        rt.block_on(comm.ready(ctl))
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// The typed device side for memory `M`, or why the group's backend does not take it.
fn side<M: DeviceMemory>(
    dev: &mut dyn DeviceEpochs,
) -> Result<&mut DeviceSide<M::Comm>, CollectiveError> {
    let what = dev.describe();
    dev.as_any()
        .downcast_mut::<DeviceSide<M::Comm>>()
        .ok_or_else(|| {
            CollectiveError::InvalidArgument(format!(
                "the group's device backend ({what}) does not take {} buffers",
                std::any::type_name::<M>()
            ))
        })
}

/// Device collectives. Like the host ones: collective, bounded by the op timeout, aborted by a
/// membership change ([`GroupError::MembershipChanged`], then [`Group::restore`]). The buffers
/// must be on this member's device; `stream: None` runs on the group's own stream. The call
/// returns when the operation finished on the device.
impl Group {
    /// Allreduce of the `dtype` elements in `bufs`.
    pub fn allreduce_device<M: DeviceMemory>(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, M>,
        op: ReduceOp,
        stream: Option<&StreamOf<M>>,
    ) -> Result<(), GroupError> {
        self.device_op("allreduce", |dev, rt, ctl| {
            let (comm, stream) = side::<M>(dev)?.parts(stream)?;
            rt.block_on(comm.allreduce(dtype, bufs, op, stream, ctl))
        })
    }

    /// Broadcast from `root`.
    pub fn broadcast_device<M: DeviceMemory>(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, M>,
        root: usize,
        stream: Option<&StreamOf<M>>,
    ) -> Result<(), GroupError> {
        self.device_op("broadcast", |dev, rt, ctl| {
            let (comm, stream) = side::<M>(dev)?.parts(stream)?;
            rt.block_on(comm.broadcast(dtype, bufs, root, stream, ctl))
        })
    }

    /// Allgather: the output holds `size` blocks, in rank order.
    pub fn allgather_device<M: DeviceMemory>(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, M>,
        stream: Option<&StreamOf<M>>,
    ) -> Result<(), GroupError> {
        self.device_op("allgather", |dev, rt, ctl| {
            let (comm, stream) = side::<M>(dev)?.parts(stream)?;
            rt.block_on(comm.allgather(dtype, bufs, stream, ctl))
        })
    }

    /// Reduce-scatter: the input holds `size` blocks; this rank's reduced block is the output.
    pub fn reduce_scatter_device<M: DeviceMemory>(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, M>,
        op: ReduceOp,
        stream: Option<&StreamOf<M>>,
    ) -> Result<(), GroupError> {
        self.device_op("reduce_scatter", |dev, rt, ctl| {
            let (comm, stream) = side::<M>(dev)?.parts(stream)?;
            rt.block_on(comm.reduce_scatter(dtype, bufs, op, stream, ctl))
        })
    }

    /// The group's own stream for memory `M` (allocate buffers and enqueue work on it), or
    /// `None` when the group has no device backend of that kind.
    pub fn device_stream<M: DeviceMemory>(&mut self) -> Option<StreamOf<M>>
    where
        StreamOf<M>: Clone,
    {
        let dev = self.device_mut()?;
        let side = side::<M>(dev).ok()?;
        Some(side.backend.stream().clone())
    }

    /// What the device backend runs on (`cuda:0`), or `None` for a CPU-only group.
    pub fn device(&mut self) -> Option<String> {
        self.device_mut().map(|d| d.describe())
    }
}

#[cfg(feature = "nccl")]
pub use nccl::NcclBackend;

#[cfg(feature = "nccl")]
mod nccl {
    use std::sync::Arc;

    use ringrun_collectives::{
        device::DeviceFault,
        nccl::{CudaContext, CudaSlice, CudaStream, NcclComm, UniqueId, probe_cuda, probe_nccl},
    };

    use super::{DeviceBackend, DeviceMemory, UniqueIdBytes};
    use crate::error::GroupError;

    impl DeviceMemory for CudaSlice<u8> {
        type Comm = NcclComm;
    }

    /// NCCL on one GPU of this host: the CUDA context, the group's stream, and one
    /// non-blocking [`NcclComm`] per epoch.
    pub struct NcclBackend {
        ordinal: usize,
        ctx: Arc<CudaContext>,
        stream: Arc<CudaStream>,
    }

    impl NcclBackend {
        /// Probes CUDA and NCCL (the error names a missing library) and opens device
        /// `local_rank % devices`.
        pub fn new(local_rank: usize) -> Result<NcclBackend, GroupError> {
            let unavailable = |e: ringrun_collectives::nccl::Unavailable| {
                GroupError::DeviceUnavailable(e.to_string())
            };
            let devices = probe_cuda().map_err(unavailable)?;
            probe_nccl().map_err(unavailable)?;
            let ordinal = local_rank % devices.max(1);
            let fail = |what: &str, e: &dyn std::fmt::Debug| {
                GroupError::DeviceUnavailable(format!("CUDA device {ordinal}: {what}: {e:?}"))
            };
            let ctx = CudaContext::new(ordinal).map_err(|e| fail("context", &e))?;
            let stream = ctx.new_stream().map_err(|e| fail("stream", &e))?;
            Ok(NcclBackend {
                ordinal,
                ctx,
                stream,
            })
        }

        /// The CUDA context of this member's device.
        pub fn context(&self) -> &Arc<CudaContext> {
            &self.ctx
        }
    }

    impl DeviceBackend for NcclBackend {
        type Comm = NcclComm;

        fn describe(&self) -> String {
            format!("cuda:{}", self.ordinal)
        }

        fn unique_id(&mut self) -> Result<UniqueIdBytes, DeviceFault> {
            Ok(UniqueId::new()?.0)
        }

        fn create(
            &mut self,
            id: &UniqueIdBytes,
            rank: usize,
            size: usize,
            _epoch: u64,
        ) -> Result<NcclComm, DeviceFault> {
            NcclComm::init(&self.ctx, &UniqueId(*id), rank, size)
        }

        fn stream(&self) -> &Arc<CudaStream> {
            &self.stream
        }
    }
}
