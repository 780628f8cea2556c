//! `ringrun bench --device cuda`: the same sweep on device buffers, through NCCL
//! (`--transport nccl`, the default with `--device cuda`) or staged through pinned host memory
//! over a CPU transport (`--transport tcp|quic|shm`; the default picks shm when ranks share a
//! GPU).
//!
//! The NCCL unique id travels over the bench's authenticated TCP mesh (a broadcast from rank 0),
//! which also carries the bookkeeping reductions. Every library is probed before any CUDA call,
//! so a machine without a GPU gets a one-line error naming the missing library.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result, anyhow};
use ringrun_collectives::{
    Bufs, Communicator, Ctl, DType,
    device::{DeviceBufs, DeviceCommunicator, Staged, WatchConfig},
    nccl::{
        CudaContext, CudaSlice, CudaStaging, CudaStream, NcclComm, UniqueId, probe_cuda, probe_nccl,
    },
    transport::Transport,
};

use super::{BenchArgs, TransportKind, device_sweep::Engine};

/// Checks that CUDA (and NCCL, if `nccl`) can be used here; the error names the library.
pub(super) fn probe(nccl: bool) -> Result<usize> {
    let devices = probe_cuda().map_err(|e| anyhow!("{e}"))?;
    if nccl {
        probe_nccl().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(devices)
}

/// `--device cuda` with no `--transport`: NCCL when every local rank has a GPU of its own and
/// NCCL loads; otherwise (ranks sharing a GPU, which NCCL refuses, or no NCCL) staged over shared
/// memory. The reason for a fallback goes to stderr, once per rank.
pub(super) fn auto_transport(local_ranks: usize) -> TransportKind {
    let devices = probe_cuda().unwrap_or(0);
    let why = match probe_nccl() {
        Err(e) => format!("{e}"),
        Ok(_) if local_ranks > devices => {
            format!("{local_ranks} ranks share {devices} GPU(s), which NCCL refuses")
        }
        Ok(_) => return TransportKind::Nccl,
    };
    eprintln!("ringrun bench: staging GPU buffers over shared memory: {why}");
    TransportKind::Shm
}

enum Backend<T> {
    Nccl {
        comm: DeviceCommunicator<NcclComm>,
        ctrl: Communicator<T>,
    },
    Staged(Staged<T, CudaStaging>),
}

/// Device buffers on this rank's GPU, allreduced by NCCL or staged.
pub(super) struct GpuEngine<T> {
    backend: Backend<T>,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    send: Option<CudaSlice<u8>>,
    recv: Option<CudaSlice<u8>>,
    describe: String,
}

impl<T: Transport> GpuEngine<T> {
    /// Sets up this rank's device (`rank % devices`) and backend over `ctrl`.
    pub(super) async fn new(
        mut ctrl: Communicator<T>,
        nccl: bool,
        transport: &str,
        timeout: Duration,
    ) -> Result<GpuEngine<T>> {
        let devices = probe(nccl)?;
        let (rank, n) = (ctrl.rank(), ctrl.size());
        let ordinal = rank % devices;
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("CUDA device {ordinal}: {e:?}"))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| anyhow!("CUDA stream: {e:?}"))?;
        let name = ctx.name().unwrap_or_else(|_| "?".into());
        let ctl = Ctl::timeout(timeout);
        let backend = if nccl {
            // One communicator per run (the bench's one epoch): rank 0 makes the id, the TCP
            // mesh carries it.
            let mut id = match rank {
                0 => UniqueId::new().map_err(|f| anyhow!("ncclGetUniqueId: {}", f.detail))?,
                _ => UniqueId([0; 128]),
            };
            ctrl.broadcast_bytes(DType::U8, Bufs::InPlace(&mut id.0), 0, &ctl)
                .await
                .context("sending the NCCL unique id")?;
            let raw = NcclComm::init(&ctx, &id, rank, n)
                .map_err(|f| anyhow!("ncclCommInitRankConfig: {}", f.detail))?;
            let mut comm = DeviceCommunicator::new(raw, 0, WatchConfig::default());
            comm.ready(&ctl).await.context("NCCL initialisation")?;
            Backend::Nccl { comm, ctrl }
        } else {
            let staging = CudaStaging::new(&ctx).map_err(|f| anyhow!("{}", f.detail))?;
            Backend::Staged(Staged::new(ctrl, staging))
        };
        let how = if nccl {
            "nccl".to_string()
        } else {
            format!("staged {transport}")
        };
        Ok(GpuEngine {
            backend,
            ctx,
            stream,
            send: None,
            recv: None,
            describe: format!("{how} cuda:{ordinal} {name}"),
        })
    }

    fn bufs(&mut self) -> Result<(&mut CudaSlice<u8>, &mut CudaSlice<u8>)> {
        match (self.send.as_mut(), self.recv.as_mut()) {
            (Some(s), Some(r)) => Ok((s, r)),
            _ => Err(anyhow!("no buffers")),
        }
    }
}

impl<T: Transport> Engine for GpuEngine<T> {
    type T = T;

    fn ctrl(&mut self) -> &mut Communicator<T> {
        match &mut self.backend {
            Backend::Nccl { ctrl, .. } => ctrl,
            Backend::Staged(s) => s.comm(),
        }
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn resize(&mut self, bytes: usize) -> Result<()> {
        // Fresh buffers per size: a device collective takes whole `CudaSlice`s.
        let alloc = || {
            self.stream
                .alloc_zeros::<u8>(bytes.max(1))
                .map_err(|e| anyhow!("cudaMalloc of {bytes} bytes: {e:?}"))
        };
        let (send, recv) = (alloc()?, alloc()?);
        self.send = Some(send);
        self.recv = Some(recv);
        Ok(())
    }

    fn fill(&mut self, data: &[u8], in_place: bool, zero_recv: bool) -> Result<()> {
        let stream = self.stream.clone();
        let (send, recv) = self.bufs()?;
        if zero_recv {
            stream.memset_zeros(recv).map_err(|e| anyhow!("{e:?}"))?;
        }
        let target = if in_place { recv } else { send };
        stream
            .memcpy_htod(data, target)
            .map_err(|e| anyhow!("{e:?}"))?;
        // Set-up only, with no collective in flight on this stream: a plain wait is safe here.
        stream.synchronize().map_err(|e| anyhow!("{e:?}"))?;
        Ok(())
    }

    async fn allreduce(
        &mut self,
        args: &BenchArgs,
        in_place: bool,
        times: usize,
        ctl: &Ctl,
    ) -> Result<()> {
        let stream = self.stream.clone();
        let (mut send, mut recv) = (self.send.take(), self.recv.take());
        let r = async {
            let (s, r) = match (send.as_mut(), recv.as_mut()) {
                (Some(s), Some(r)) => (s, r),
                _ => return Err(anyhow!("no buffers")),
            };
            let mut bufs = if in_place {
                DeviceBufs::InPlace(r)
            } else {
                DeviceBufs::OutOfPlace { send: s, recv: r }
            };
            match &mut self.backend {
                Backend::Nccl { comm, .. } => {
                    comm.allreduce_n(args.dtype, bufs, args.op, &stream, times, ctl)
                        .await?
                }
                Backend::Staged(st) => {
                    for _ in 0..times {
                        st.allreduce(args.dtype, bufs.reborrow(), args.op, &stream, ctl)
                            .await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Backend::Nccl { comm, .. } = &self.backend
            && comm.leaked()
        {
            // The device may still write these buffers: never free them.
            std::mem::forget(send.take());
            std::mem::forget(recv.take());
        }
        (self.send, self.recv) = (send, recv);
        r
    }

    fn output(&mut self) -> Result<Vec<u8>> {
        let stream = self.stream.clone();
        let (_, recv) = self.bufs()?;
        stream.clone_dtoh(&*recv).map_err(|e| anyhow!("{e:?}"))
    }

    async fn close(mut self, timeout: Duration) {
        let ctl = Ctl::timeout(timeout);
        (self.send, self.recv) = (None, None);
        match self.backend {
            Backend::Nccl { mut comm, ctrl } => {
                if let Err(e) = comm.close(&ctl).await {
                    tracing::warn!(error = %e, "NCCL close");
                }
                ctrl.close(timeout).await;
            }
            Backend::Staged(mut st) => {
                let _ = st.comm().barrier(&ctl).await;
            }
        }
        drop(self.ctx);
    }
}
