//! CUDA device sides: NCCL on this member's GPU when every rank on the host has a GPU of its
//! own and NCCL loads, else (for `RINGRUN_DEVICE=cuda`) device buffers staged through pinned
//! host memory over the epoch's host transport.

use std::sync::Arc;

use ringrun_collectives::{
    device::DeviceFault,
    nccl::{
        CudaContext, CudaSlice, CudaStaging, CudaStream, NcclComm, UniqueId, probe_cuda, probe_nccl,
    },
};

use super::{
    DeviceBackend, DeviceMemory, StagingBackend, UniqueIdBytes,
    sides::{DeviceEpochs, DeviceSide, StagedSide},
};
use crate::{GroupConfig, error::GroupError};

impl DeviceMemory for CudaSlice<u8> {
    type Comm = NcclComm;
    type Staging = CudaStaging;
}

/// One GPU of this host: the CUDA context and the group's stream. Builds one non-blocking
/// [`NcclComm`] per epoch, or the pinned staging area of the staged path.
pub struct CudaBackend {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

impl CudaBackend {
    /// Opens device `ordinal` (CUDA must have been probed).
    fn open(ordinal: usize) -> Result<CudaBackend, GroupError> {
        let fail = |what: &str, e: &dyn std::fmt::Debug| {
            GroupError::DeviceUnavailable(format!("CUDA device {ordinal}: {what}: {e:?}"))
        };
        let ctx = CudaContext::new(ordinal).map_err(|e| fail("context", &e))?;
        let stream = ctx.new_stream().map_err(|e| fail("stream", &e))?;
        Ok(CudaBackend {
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

fn unavailable(e: ringrun_collectives::nccl::Unavailable) -> GroupError {
    GroupError::DeviceUnavailable(e.to_string())
}

/// The device side of a member on GPU `local_rank % devices`. `nccl_only` (from
/// `RINGRUN_TRANSPORT=nccl`) turns each reason to stage into an error instead.
pub(super) fn build(
    config: &GroupConfig,
    nccl_only: bool,
) -> Result<Box<dyn DeviceEpochs>, GroupError> {
    let devices = probe_cuda().map_err(unavailable)?.max(1);
    let backend = CudaBackend::open(config.local_rank as usize % devices)?;
    let local = config.local_world_size.max(1) as usize;
    let why_not_nccl = match probe_nccl() {
        Err(e) => e.to_string(),
        Ok(_) if local > devices => format!(
            "{local} ranks on this host share {devices} GPU(s), and NCCL refuses two ranks of \
             one communicator on the same GPU"
        ),
        Ok(_) => return Ok(Box::new(DeviceSide::new(Box::new(backend)))),
    };
    if nccl_only {
        return Err(GroupError::DeviceUnavailable(format!(
            "{why_not_nccl}; RINGRUN_DEVICE=cuda stages device buffers through host memory instead"
        )));
    }
    tracing::warn!(reason = %why_not_nccl, "staging device buffers through host memory");
    Ok(Box::new(StagedSide::new(Box::new(backend))))
}

impl DeviceBackend for CudaBackend {
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

impl StagingBackend for CudaBackend {
    type Staging = CudaStaging;

    fn describe(&self) -> String {
        format!("cuda:{} staged", self.ordinal)
    }

    fn staging(&mut self) -> Result<CudaStaging, DeviceFault> {
        CudaStaging::new(&self.ctx)
    }

    fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}
