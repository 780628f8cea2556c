//! The device side of a [`Group`]: collectives on GPU buffers.
//!
//! A group configured with a [`DeviceSpec`] builds its device side at join, probing CUDA (and
//! NCCL), so a machine without them fails at once with [`GroupError::DeviceUnavailable`] naming
//! the library. There are two sides (`sides.rs`):
//!
//! - one backend communicator per epoch ([`DeviceBackend`]: NCCL, or the fake in tests). On
//!   entering each epoch, after the epoch's authenticated host mesh is up, rank 0 makes a unique
//!   id and broadcasts it on that mesh, every rank drops the previous epoch's communicator (an
//!   NCCL communicator that was not finalised aborts off the caller's thread when dropped, so
//!   this never blocks) and creates a non-blocking one, and the group waits for it to be ready
//!   under the epoch's deadline and cancellation. Collectives run through
//!   [`DeviceCommunicator`] with the same [`Cancel`] the runtime registers for the epoch: when
//!   the membership changes, the watchdog aborts the backend (`ncclCommAbort`, on a thread of its
//!   own) and the call returns [`GroupError::MembershipChanged`] within the abort grace.
//! - staged ([`StagingBackend`]): each call copies the device buffers to pinned host memory and
//!   runs the epoch's host collective there ([`Stager`]). This is what `RINGRUN_DEVICE=cuda`
//!   falls back to when NCCL is missing or ranks share a GPU (which NCCL refuses).
//!
//! Nothing waits on the device: copies and NCCL calls are polled under the deadline. Backends
//! are injectable ([`DeviceSpec::custom`], [`DeviceSpec::custom_staged`]): tests run both
//! lifecycles with the fakes of `ringrun_collectives::device::fake` (`runtime/tests/device.rs`).
//!
//! [`Cancel`]: ringrun_collectives::Cancel
//! [`Stager`]: ringrun_collectives::device::Stager

#[cfg(feature = "nccl")]
mod cuda;
mod sides;

use std::{fmt, sync::Arc};

use ringrun_collectives::{
    CollectiveError, Communicator, Ctl, DType, Links, ReduceOp,
    device::{
        DeviceBuffer, DeviceBufs, DeviceComm, DeviceCommunicator, DeviceFault, Stager, Staging,
        fake::{FakeBuf, FakeComm, HostStaging},
    },
    exec::Executor,
};

#[cfg(feature = "nccl")]
pub use cuda::CudaBackend;
pub(crate) use sides::DeviceEpochs;
use sides::{DeviceSide, StagedSide};

use crate::{Group, GroupConfig, error::GroupError};

/// Bytes of a unique id (NCCL's `ncclUniqueId`).
pub const UNIQUE_ID_LEN: usize = 128;

/// A unique id as it travels on the epoch's mesh.
pub type UniqueIdBytes = [u8; UNIQUE_ID_LEN];

/// Builds one rank's device communicator per epoch. Implemented by [`CudaBackend`] (feature
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

/// Makes the host staging areas of the staged device side. Implemented by [`CudaBackend`]
/// (pinned memory) and by tests over plain host memory.
pub trait StagingBackend: Send {
    /// The staging area.
    type Staging: Staging + Send + 'static;

    /// What it runs on (`cuda:0 staged`).
    fn describe(&self) -> String;
    /// A fresh staging area (at the first epoch, and after a copy failed).
    fn staging(&mut self) -> Result<Self::Staging, DeviceFault>;
    /// The stream copies run on when the caller passes none.
    fn stream(&self) -> &<Self::Staging as Staging>::Stream;
}

/// Device memory whose backends the group knows: the buffer type picks the communicator and
/// staging types, so that `group.allreduce_device(dtype, DeviceBufs::InPlace(&mut slice), op,
/// None)` needs no annotation.
pub trait DeviceMemory: DeviceBuffer + Sized + 'static {
    /// The communicator that takes this memory.
    type Comm: DeviceComm<Buf = Self> + Send + 'static;
    /// The staging area that takes this memory, on the communicator's streams.
    type Staging: Staging<Buf = Self, Stream = StreamOf<Self>> + Send + 'static;
}

impl DeviceMemory for FakeBuf {
    type Comm = FakeComm;
    type Staging = HostStaging;
}

/// The stream type of the backend of memory `M`.
pub type StreamOf<M> = <<M as DeviceMemory>::Comm as DeviceComm>::Stream;

/// Which device backend a group uses.
#[derive(Clone)]
pub enum DeviceSpec {
    /// NCCL on this member's GPU (`local_rank % devices`), and nothing else: an error at join
    /// where NCCL cannot run (`RINGRUN_TRANSPORT=nccl`). Needs the `nccl` feature.
    Nccl,
    /// This member's GPU through NCCL where it can run, else staged through pinned host memory
    /// over the host transport (`RINGRUN_DEVICE=cuda`). Needs the `nccl` feature and CUDA.
    Cuda,
    /// A backend built by the caller at join (tests: the fakes).
    Custom(DeviceFactory),
}

impl fmt::Debug for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Nccl => f.write_str("Nccl"),
            DeviceSpec::Cuda => f.write_str("Cuda"),
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
    /// A per-epoch communicator backend built by `make` at join; an `Err` fails the join with
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

    /// A staged backend built by `make` at join.
    pub fn custom_staged<B, F>(name: impl Into<String>, make: F) -> DeviceSpec
    where
        B: StagingBackend + 'static,
        F: Fn(&GroupConfig) -> Result<B, String> + Send + Sync + 'static,
    {
        DeviceSpec::Custom(DeviceFactory {
            name: name.into(),
            make: Arc::new(move |c: &GroupConfig| {
                let b = make(c).map_err(GroupError::DeviceUnavailable)?;
                Ok(Box::new(StagedSide::new(Box::new(b))) as Box<dyn DeviceEpochs>)
            }),
        })
    }

    /// Builds the device side for a member configured by `config` (at join).
    pub(crate) fn build(&self, config: &GroupConfig) -> Result<Box<dyn DeviceEpochs>, GroupError> {
        match self {
            DeviceSpec::Custom(f) => (f.make)(config),
            #[cfg(feature = "nccl")]
            DeviceSpec::Nccl => cuda::build(config, true),
            #[cfg(feature = "nccl")]
            DeviceSpec::Cuda => cuda::build(config, false),
            #[cfg(not(feature = "nccl"))]
            DeviceSpec::Nccl | DeviceSpec::Cuda => Err(GroupError::DeviceUnavailable(
                "this build of ringrun has no CUDA support (the runtime's `nccl` feature)".into(),
            )),
        }
    }
}

/// One device collective, before it is given to a side.
enum Call<'a, M> {
    Allreduce(DType, DeviceBufs<'a, M>, ReduceOp),
    Broadcast(DType, DeviceBufs<'a, M>, usize),
    Allgather(DType, DeviceBufs<'a, M>),
    ReduceScatter(DType, DeviceBufs<'a, M>, ReduceOp),
}

impl<M: DeviceMemory> Call<'_, M> {
    async fn on_comm(
        self,
        comm: &mut DeviceCommunicator<M::Comm>,
        stream: &StreamOf<M>,
        ctl: &Ctl,
    ) -> Result<(), CollectiveError> {
        match self {
            Call::Allreduce(dt, bufs, op) => comm.allreduce(dt, bufs, op, stream, ctl).await,
            Call::Broadcast(dt, bufs, root) => comm.broadcast(dt, bufs, root, stream, ctl).await,
            Call::Allgather(dt, bufs) => comm.allgather(dt, bufs, stream, ctl).await,
            Call::ReduceScatter(dt, bufs, op) => {
                comm.reduce_scatter(dt, bufs, op, stream, ctl).await
            }
        }
    }

    async fn on_host(
        self,
        stager: &mut Stager<M::Staging>,
        host: &mut Communicator<Links>,
        stream: &StreamOf<M>,
        ctl: &Ctl,
    ) -> Result<(), CollectiveError> {
        let st = stager;
        match self {
            Call::Allreduce(dt, b, op) => st.allreduce(host, dt, b, op, stream, ctl).await,
            Call::Broadcast(dt, b, root) => st.broadcast(host, dt, b, root, stream, ctl).await,
            Call::Allgather(dt, b) => st.allgather(host, dt, b, stream, ctl).await,
            Call::ReduceScatter(dt, b, op) => st.reduce_scatter(host, dt, b, op, stream, ctl).await,
        }
    }

    /// Runs on whichever side the group has for memory `M`.
    fn run(
        self,
        dev: &mut dyn DeviceEpochs,
        host: &mut Communicator<Links>,
        rt: &Executor,
        ctl: &Ctl,
        stream: Option<&StreamOf<M>>,
    ) -> Result<(), CollectiveError> {
        let what = dev.describe();
        let any = dev.as_any();
        if any.is::<DeviceSide<M::Comm>>() {
            let side = any.downcast_mut::<DeviceSide<M::Comm>>().expect("checked");
            let (comm, stream) = side.parts(stream)?;
            return rt.block_on(self.on_comm(comm, stream, ctl));
        }
        if let Some(side) = any.downcast_mut::<StagedSide<M::Staging>>() {
            let (stager, stream) = side.parts(stream)?;
            return rt.block_on(self.on_host(stager, host, stream, ctl));
        }
        Err(CollectiveError::InvalidArgument(format!(
            "the group's device backend ({what}) does not take {} buffers",
            std::any::type_name::<M>()
        )))
    }
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
        self.device_op("allreduce", |dev, host, rt, ctl| {
            Call::Allreduce(dtype, bufs, op).run(dev, host, rt, ctl, stream)
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
        self.device_op("broadcast", |dev, host, rt, ctl| {
            Call::Broadcast(dtype, bufs, root).run(dev, host, rt, ctl, stream)
        })
    }

    /// Allgather: the output holds `size` blocks, in rank order.
    pub fn allgather_device<M: DeviceMemory>(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, M>,
        stream: Option<&StreamOf<M>>,
    ) -> Result<(), GroupError> {
        self.device_op("allgather", |dev, host, rt, ctl| {
            Call::Allgather(dtype, bufs).run(dev, host, rt, ctl, stream)
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
        self.device_op("reduce_scatter", |dev, host, rt, ctl| {
            Call::ReduceScatter(dtype, bufs, op).run(dev, host, rt, ctl, stream)
        })
    }

    /// The group's own stream for memory `M` (allocate buffers and enqueue work on it), or
    /// `None` when the group has no device backend of that kind.
    pub fn device_stream<M: DeviceMemory>(&mut self) -> Option<StreamOf<M>>
    where
        StreamOf<M>: Clone,
    {
        let any = self.device_mut()?.as_any();
        if let Some(side) = any.downcast_ref::<DeviceSide<M::Comm>>() {
            return Some(side.stream().clone());
        }
        let side = any.downcast_ref::<StagedSide<M::Staging>>()?;
        Some(side.stream().clone())
    }

    /// What the device backend runs on (`cuda:0`, `cuda:0 staged`), or `None` for a CPU-only
    /// group.
    pub fn device(&mut self) -> Option<String> {
        self.device_mut().map(|d| d.describe())
    }
}
