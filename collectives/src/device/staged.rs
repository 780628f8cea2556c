//! [`Staged`]: device collectives without NCCL. Each call copies the device input to a host
//! staging area (pinned memory with CUDA), runs the CPU [`Communicator`] on it, and copies the
//! result back.
//!
//! This is the path for GPUs without NCCL, and for ranks that share one GPU (NCCL refuses two
//! ranks of a communicator on the same device). It is slower than NCCL by two PCIe copies per
//! call, but keeps every property of the CPU path: frame signatures (so ranks that disagree get
//! `Mismatch`), deadlines, cancellation and deterministic mode. The copies are polled, never
//! waited for with a stream synchronisation, so a stream that also holds stuck work cannot hang
//! the caller past the deadline.

use std::time::Duration;

use super::{DeviceBuffer, DeviceBufs, DeviceFault, Shape, check_shape, lens};
use crate::{
    comm::{Bufs, Communicator, Ctl},
    dtype::{DType, ReduceOp},
    error::{CollectiveError, Result},
    transport::Transport,
};

/// How long a staged copy sleeps between polls: a copy of a few MiB takes about a millisecond.
const COPY_POLL: Duration = Duration::from_micros(20);

/// Asynchronous copies between device buffers and one host staging area.
pub trait Staging {
    /// Device memory.
    type Buf: DeviceBuffer;
    /// The stream copies are enqueued on.
    type Stream;
    /// A copy in flight.
    type Copy;

    /// Makes the host area at least `bytes` long (contents unspecified).
    fn reserve(&mut self, bytes: usize) -> Result<(), DeviceFault>;
    /// The host area; only valid to read once every copy into it is done.
    fn host(&mut self) -> &mut [u8];
    /// Starts copying `len` bytes from `src[src_at..]` to `host[host_at..]`.
    fn download(
        &mut self,
        src: &Self::Buf,
        src_at: usize,
        host_at: usize,
        len: usize,
        stream: &Self::Stream,
    ) -> Result<Self::Copy, DeviceFault>;
    /// Starts copying `len` bytes from `host[host_at..]` to `dst[dst_at..]`.
    fn upload(
        &mut self,
        dst: &mut Self::Buf,
        dst_at: usize,
        host_at: usize,
        len: usize,
        stream: &Self::Stream,
    ) -> Result<Self::Copy, DeviceFault>;
    /// Whether a copy has finished (never waits).
    fn is_done(&mut self, copy: &mut Self::Copy) -> Result<bool, DeviceFault>;
}

/// Device collectives over a CPU transport, staged through host memory: a [`Stager`] with the
/// [`Communicator`] it reduces over.
pub struct Staged<T, S> {
    comm: Communicator<T>,
    stager: Stager<S>,
}

impl<T: Transport, S: Staging> Staged<T, S> {
    /// Stages through `staging` and reduces over `comm`.
    pub fn new(comm: Communicator<T>, staging: S) -> Self {
        Staged {
            comm,
            stager: Stager::new(staging),
        }
    }

    /// The CPU communicator (for host-side collectives next to the device ones).
    pub fn comm(&mut self) -> &mut Communicator<T> {
        &mut self.comm
    }

    /// See [`Stager::allreduce`].
    pub async fn allreduce(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, S::Buf>,
        op: ReduceOp,
        stream: &S::Stream,
        ctl: &Ctl,
    ) -> Result<()> {
        let (comm, st) = (&mut self.comm, &mut self.stager);
        st.allreduce(comm, dtype, bufs, op, stream, ctl).await
    }

    /// See [`Stager::broadcast`].
    pub async fn broadcast(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, S::Buf>,
        root: usize,
        stream: &S::Stream,
        ctl: &Ctl,
    ) -> Result<()> {
        let (comm, st) = (&mut self.comm, &mut self.stager);
        st.broadcast(comm, dtype, bufs, root, stream, ctl).await
    }

    /// See [`Stager::allgather`].
    pub async fn allgather(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, S::Buf>,
        stream: &S::Stream,
        ctl: &Ctl,
    ) -> Result<()> {
        let (comm, st) = (&mut self.comm, &mut self.stager);
        st.allgather(comm, dtype, bufs, stream, ctl).await
    }

    /// See [`Stager::reduce_scatter`].
    pub async fn reduce_scatter(
        &mut self,
        dtype: DType,
        bufs: DeviceBufs<'_, S::Buf>,
        op: ReduceOp,
        stream: &S::Stream,
        ctl: &Ctl,
    ) -> Result<()> {
        let (comm, st) = (&mut self.comm, &mut self.stager);
        st.reduce_scatter(comm, dtype, bufs, op, stream, ctl).await
    }
}

/// The staging half of [`Staged`], for callers that own the [`Communicator`] elsewhere (the
/// runtime's group, whose host communicator changes every epoch). Each call takes the
/// communicator to reduce over.
pub struct Stager<S> {
    staging: S,
    poisoned: Option<String>,
}

impl<S: Staging> Stager<S> {
    /// Stages through `staging`.
    pub fn new(staging: S) -> Self {
        Stager {
            staging,
            poisoned: None,
        }
    }

    /// Why a copy failed, if one did: a copy that did not finish may still write the staging
    /// area, so a poisoned stager refuses every call (make a fresh one, and leak this one).
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Allreduce of the `dtype` elements in `bufs`.
    pub async fn allreduce<T: Transport>(
        &mut self,
        comm: &mut Communicator<T>,
        dtype: DType,
        bufs: DeviceBufs<'_, S::Buf>,
        op: ReduceOp,
        stream: &S::Stream,
        ctl: &Ctl,
    ) -> Result<()> {
        let (send, recv) = lens(&bufs);
        let n = comm.size();
        check_shape(Shape::Same, dtype, send, recv, n)?;
        self.stage_in(&bufs, 0, recv, stream, ctl).await?;
        let host = &mut self.staging.host()[..recv];
        let r = comm
            .allreduce_bytes(dtype, Bufs::InPlace(host), op, ctl)
            .await;
        self.finish(r, bufs, 0, recv, stream, ctl).await
    }

    /// Broadcast from `root`.
    pub async fn broadcast<T: Transport>(
        &mut self,
        comm: &mut Communicator<T>,
        dtype: DType,
        bufs: DeviceBufs<'_, S::Buf>,
        root: usize,
        stream: &S::Stream,
        ctl: &Ctl,
    ) -> Result<()> {
        let (send, recv) = lens(&bufs);
        check_shape(Shape::Root(root), dtype, send, recv, comm.size())?;
        if root == comm.rank() {
            self.stage_in(&bufs, 0, recv, stream, ctl).await?;
        } else {
            self.reserve(recv)?;
        }
        let host = &mut self.staging.host()[..recv];
        let r = comm
            .broadcast_bytes(dtype, Bufs::InPlace(host), root, ctl)
            .await;
        self.finish(r, bufs, 0, recv, stream, ctl).await
    }

    /// Allgather (the output holds `size` blocks).
    pub async fn allgather<T: Transport>(
        &mut self,
        comm: &mut Communicator<T>,
        dtype: DType,
        bufs: DeviceBufs<'_, S::Buf>,
        stream: &S::Stream,
        ctl: &Ctl,
    ) -> Result<()> {
        let (send, recv) = lens(&bufs);
        let (rank, n) = (comm.rank(), comm.size());
        check_shape(Shape::Gather, dtype, send, recv, n)?;
        let block = recv / n;
        // Only this rank's block goes down; the host buffer then holds it in place.
        self.stage_in(&bufs, rank * block, block, stream, ctl)
            .await?;
        self.reserve(recv)?;
        let host = &mut self.staging.host()[..recv];
        let r = comm.allgather_bytes(dtype, Bufs::InPlace(host), ctl).await;
        self.finish(r, bufs, 0, recv, stream, ctl).await
    }

    /// Reduce-scatter (the input holds `size` blocks; in place, the result is left in this
    /// rank's block).
    pub async fn reduce_scatter<T: Transport>(
        &mut self,
        comm: &mut Communicator<T>,
        dtype: DType,
        bufs: DeviceBufs<'_, S::Buf>,
        op: ReduceOp,
        stream: &S::Stream,
        ctl: &Ctl,
    ) -> Result<()> {
        let (send, recv) = lens(&bufs);
        let (rank, n) = (comm.rank(), comm.size());
        check_shape(Shape::Scatter, dtype, send, recv, n)?;
        let total = send.unwrap_or(recv);
        let block = total / n;
        self.stage_in(&bufs, 0, total, stream, ctl).await?;
        let host = &mut self.staging.host()[..total];
        let r = comm
            .reduce_scatter_bytes(dtype, Bufs::InPlace(host), op, ctl)
            .await;
        // Out of place the result is the whole (one-block) output; in place it is block `rank`.
        let dst_at = if send.is_some() { 0 } else { rank * block };
        self.finish_at(r, bufs, dst_at, rank * block, block, stream, ctl)
            .await
    }

    fn reserve(&mut self, bytes: usize) -> Result<()> {
        self.check()?;
        let r = self.staging.reserve(bytes);
        self.fail(r.map_err(|f| f.to_error(Duration::ZERO)))
    }

    /// Copies the input's bytes `[at, at + len)` to the same place in the host area (from
    /// `send` out of place, from the buffer in place; an out-of-place input is read from 0).
    async fn stage_in(
        &mut self,
        bufs: &DeviceBufs<'_, S::Buf>,
        at: usize,
        len: usize,
        stream: &S::Stream,
        ctl: &Ctl,
    ) -> Result<()> {
        self.reserve(at + len)?;
        let copy = match bufs {
            DeviceBufs::InPlace(b) => self.staging.download(b, at, at, len, stream),
            DeviceBufs::OutOfPlace { send, .. } => {
                let from = if send.len_bytes() >= at + len { at } else { 0 };
                self.staging.download(send, from, at, len, stream)
            }
        };
        self.wait(copy, ctl).await
    }

    async fn finish(
        &mut self,
        r: Result<()>,
        bufs: DeviceBufs<'_, S::Buf>,
        at: usize,
        len: usize,
        stream: &S::Stream,
        ctl: &Ctl,
    ) -> Result<()> {
        self.finish_at(r, bufs, at, at, len, stream, ctl).await
    }

    /// After the host collective: copies `host[host_at..+len]` to the output at `dst_at`.
    #[allow(clippy::too_many_arguments)]
    async fn finish_at(
        &mut self,
        r: Result<()>,
        bufs: DeviceBufs<'_, S::Buf>,
        dst_at: usize,
        host_at: usize,
        len: usize,
        stream: &S::Stream,
        ctl: &Ctl,
    ) -> Result<()> {
        // The CPU communicator poisons itself on failure; nothing is copied back then.
        r?;
        let dst = match bufs {
            DeviceBufs::InPlace(b) => b,
            DeviceBufs::OutOfPlace { recv, .. } => recv,
        };
        let copy = self.staging.upload(dst, dst_at, host_at, len, stream);
        self.wait(copy, ctl).await
    }

    /// Polls a copy until it is done, the deadline passes or the cancel fires.
    async fn wait(
        &mut self,
        copy: std::result::Result<S::Copy, DeviceFault>,
        ctl: &Ctl,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let r = async {
            let mut copy = copy.map_err(|f| f.to_error(Duration::ZERO))?;
            loop {
                let done = self
                    .staging
                    .is_done(&mut copy)
                    .map_err(|f| f.to_error(started.elapsed()))?;
                if done {
                    return Ok(());
                }
                if let Some(reason) = ctl.cancel.as_ref().and_then(crate::Cancel::reason) {
                    return Err(CollectiveError::Aborted { reason });
                }
                if std::time::Instant::now() >= ctl.deadline {
                    return Err(CollectiveError::Timeout {
                        waiting_on: None,
                        waited: started.elapsed(),
                    });
                }
                tokio::time::sleep(COPY_POLL).await;
            }
        }
        .await;
        self.fail(r)
    }

    fn check(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(CollectiveError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Poisons on a copy failure: a copy that did not finish may still write the buffers.
    fn fail(&mut self, r: Result<()>) -> Result<()> {
        if let Err(e) = &r {
            self.poisoned.get_or_insert_with(|| e.to_string());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        CommConfig,
        device::fake::{FakeBuf, HostStaging},
        testdata::{count_wrong, inputs},
        transport::mem,
    };

    fn run<F, Fut>(n: usize, f: F) -> Vec<Result<FakeBuf>>
    where
        F: Fn(usize, Staged<mem::MemTransport, HostStaging>) -> Fut + Send + Sync + Copy + 'static,
        Fut: std::future::Future<Output = Result<FakeBuf>>,
    {
        let ts = mem::mesh(n, 1 << 16);
        let handles: Vec<_> = ts
            .into_iter()
            .enumerate()
            .map(|(rank, t)| {
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    let comm = Communicator::new(t, 0, CommConfig::default());
                    rt.block_on(f(rank, Staged::new(comm, HostStaging::default())))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn staged_allreduce_is_exact_in_and_out_of_place() {
        for in_place in [false, true] {
            let outs = run(3, move |rank, mut s| async move {
                let (dt, op) = (DType::F32, ReduceOp::Sum);
                let mut buf = FakeBuf(inputs(dt, op, rank, 1000).bytes().to_vec());
                let ctl = Ctl::timeout(Duration::from_secs(10));
                if in_place {
                    s.allreduce(dt, DeviceBufs::InPlace(&mut buf), op, &(), &ctl)
                        .await?;
                    Ok(buf)
                } else {
                    let mut out = FakeBuf(vec![0; buf.0.len()]);
                    let bufs = DeviceBufs::OutOfPlace {
                        send: &buf,
                        recv: &mut out,
                    };
                    s.allreduce(dt, bufs, op, &(), &ctl).await?;
                    Ok(out)
                }
            });
            for out in outs {
                assert_eq!(
                    count_wrong(DType::F32, ReduceOp::Sum, 3, &out.unwrap().0),
                    0
                );
            }
        }
    }

    #[test]
    fn staged_allgather_and_reduce_scatter_shapes() {
        let outs = run(2, |rank, mut s| async move {
            let ctl = Ctl::timeout(Duration::from_secs(10));
            let mine = FakeBuf(vec![rank as u8 + 1; 4]);
            let mut all = FakeBuf(vec![0; 8]);
            let bufs = DeviceBufs::OutOfPlace {
                send: &mine,
                recv: &mut all,
            };
            s.allgather(DType::U8, bufs, &(), &ctl).await?;
            assert_eq!(all.0, [1, 1, 1, 1, 2, 2, 2, 2]);
            let mut block = FakeBuf(vec![0; 4]);
            let bufs = DeviceBufs::OutOfPlace {
                send: &all,
                recv: &mut block,
            };
            s.reduce_scatter(DType::U8, bufs, ReduceOp::Sum, &(), &ctl)
                .await?;
            Ok(block)
        });
        assert_eq!(outs[0].as_ref().unwrap().0, [2; 4]);
        assert_eq!(outs[1].as_ref().unwrap().0, [4; 4]);
    }

    #[test]
    fn ranks_that_disagree_get_mismatch_through_the_staged_path() {
        let outs = run(2, |rank, mut s| async move {
            let ctl = Ctl::timeout(Duration::from_secs(10));
            let mut buf = FakeBuf(vec![0; 16 * (rank + 1)]);
            s.allreduce(
                DType::U8,
                DeviceBufs::InPlace(&mut buf),
                ReduceOp::Sum,
                &(),
                &ctl,
            )
            .await?;
            Ok(buf)
        });
        for out in outs {
            assert!(
                matches!(out, Err(CollectiveError::Mismatch { .. })),
                "{out:?}"
            );
        }
    }
}
