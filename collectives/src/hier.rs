//! Hierarchical allreduce for jobs spread over several hosts: shared memory inside a host,
//! the network between hosts, composed from ordinary communicators over [`Subset`]s of one
//! world transport.
//!
//! With `H` hosts of `L` ranks each (a *uniform* layout) and a buffer above
//! [`CommConfig::small_bytes`] that splits into `L` equal blocks, the allreduce runs in three stages (the "2D" form, NCCL's and Horovod's
//! hierarchical allreduce):
//!
//! 1. reduce-scatter inside the host: local rank `i` holds the host's sum of block `i`;
//! 2. allreduce of block `i` among the `H` ranks of local index `i`, one per host, so every
//!    rank takes a share of the inter-host traffic (`2 (H - 1) / H` of `S / L` bytes each);
//! 3. allgather inside the host.
//!
//! Otherwise (hosts of different sizes, or a small or indivisible buffer) it takes the leader
//! form: allreduce inside the host, allreduce among the hosts' first ranks (the leaders),
//! broadcast inside the host. The local stage is an allreduce rather than a reduce to the
//! leader because over shared memory its second half costs little and it reuses the tested ring.
//!
//! Stages reduce with `Sum` where the caller asked for `Avg`, and the one division by the world
//! size comes last, on bits every rank already shares. Each stage's result is bitwise identical
//! on the ranks that share it (see `algo`), and later stages only copy or reduce identical
//! inputs, so every rank ends with the same bits. The *order* of reduction, however, depends on
//! the layout; deterministic mode therefore runs the flat, rank-ordered algorithm over the whole
//! world instead (correct and reproducible, but without the hierarchy's traffic savings).
//!
//! A failed stage tells every rank of the world (a subset's abort goes to its parent) and
//! poisons the whole hierarchy.

use std::{sync::Arc, time::Duration};

use crate::{
    comm::{Bufs, CommConfig, Communicator, Ctl},
    dtype::{DType, Element, ReduceOp},
    error::{CollectiveError, Result},
    fusion::{self, BucketBuf, FusionBuffer, TensorMut},
    reduce::finish_avg,
    transport::{Transport, subset::Subset},
};

/// Collectives over a world whose ranks sit on several hosts.
pub struct Hierarchical<T> {
    world: Communicator<Subset<T>>,
    local: Communicator<Subset<T>>,
    /// Ranks of this rank's local index on every host (uniform layouts), or the leaders (on a
    /// leader of a non-uniform layout); `None` elsewhere.
    cross: Option<Communicator<Subset<T>>>,
    uniform: bool,
    hosts: usize,
    poisoned: Option<String>,
    fusion: FusionBuffer,
}

impl<T: Transport> Hierarchical<T> {
    /// Builds the hierarchy over `world` for epoch `epoch`; `host_of[r]` names rank `r`'s host
    /// (any labels; ranks with equal labels share memory). Every rank must pass the same labels.
    pub fn new(world: Arc<T>, host_of: &[u64], epoch: u64, config: CommConfig) -> Self {
        let (me, n) = (world.rank(), world.size());
        assert_eq!(host_of.len(), n, "one host label per rank");
        let mut labels: Vec<u64> = Vec::new();
        for h in host_of {
            if !labels.contains(h) {
                labels.push(*h);
            }
        }
        let members = |h: u64| (0..n).filter(|r| host_of[*r] == h).collect::<Vec<_>>();
        let per_host: Vec<Vec<usize>> = labels.iter().map(|h| members(*h)).collect();
        let local_ranks = members(host_of[me]);
        let index = local_ranks.iter().position(|r| *r == me).expect("own host");
        let uniform = per_host.iter().all(|m| m.len() == local_ranks.len());
        let cross_ranks: Option<Vec<usize>> = match (uniform, index) {
            (true, i) => Some(per_host.iter().map(|m| m[i]).collect()),
            (false, 0) => Some(per_host.iter().map(|m| m[0]).collect()),
            (false, _) => None,
        };
        let sub = |ranks: Vec<usize>| {
            Communicator::new(Subset::new(world.clone(), ranks), epoch, config.clone())
        };
        Hierarchical {
            world: sub((0..n).collect()),
            local: sub(local_ranks),
            cross: cross_ranks.map(sub),
            uniform,
            hosts: labels.len(),
            poisoned: None,
            fusion: FusionBuffer::default(),
        }
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.world.rank()
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.world.size()
    }

    /// Number of hosts.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// The flat communicator over the whole world (for the collectives without a hierarchical
    /// form, and for deterministic allreduce).
    pub fn world(&mut self) -> &mut Communicator<Subset<T>> {
        &mut self.world
    }

    /// Ends every link gracefully (bounded by `within`).
    pub async fn close(self, within: Duration) {
        let parent = self.world.transport().parent().clone();
        parent.close(within).await;
    }

    /// Allreduce of the elements of `dtype` in `bufs` (see the module docs for the stages).
    pub async fn allreduce_bytes(
        &mut self,
        dtype: DType,
        bufs: Bufs<'_>,
        op: ReduceOp,
        ctl: &Ctl,
    ) -> Result<()> {
        if let Some(why) = &self.poisoned {
            return Err(CollectiveError::Poisoned(why.clone()));
        }
        let flat =
            self.world.config().deterministic || self.hosts == 1 || self.hosts == self.size();
        if flat {
            return self.world.allreduce_bytes(dtype, bufs, op, ctl).await;
        }
        let buf = match bufs {
            Bufs::InPlace(b) => b,
            Bufs::OutOfPlace { send, recv } => {
                if send.len() != recv.len() {
                    return Err(CollectiveError::InvalidArgument(format!(
                        "input has {} bytes, output {}",
                        send.len(),
                        recv.len()
                    )));
                }
                recv.copy_from_slice(send);
                recv
            }
        };
        let r = self.stages(dtype, buf, op, ctl).await;
        if let Err(e) = &r {
            self.poisoned = Some(e.to_string());
        }
        r
    }

    async fn stages(
        &mut self,
        dtype: DType,
        buf: &mut [u8],
        op: ReduceOp,
        ctl: &Ctl,
    ) -> Result<()> {
        let stage_op = if op == ReduceOp::Avg {
            ReduceOp::Sum
        } else {
            op
        };
        let l = self.local.size();
        // Small buffers are latency-bound: three stages of one message beat three of `L`.
        let split = self.uniform
            && buf.len() > self.world.config().small_bytes
            && buf.len().is_multiple_of(l * dtype.size());
        if split {
            let block = buf.len() / l;
            let i = self.local.rank();
            let r = self
                .local
                .reduce_scatter_bytes(dtype, Bufs::InPlace(buf), stage_op, ctl)
                .await;
            lift(&self.local, r)?;
            let cross = self
                .cross
                .as_mut()
                .expect("uniform layouts have a cross group");
            let mine = &mut buf[i * block..(i + 1) * block];
            let r = cross
                .allreduce_bytes(dtype, Bufs::InPlace(mine), stage_op, ctl)
                .await;
            lift(cross, r)?;
            let r = self
                .local
                .allgather_bytes(dtype, Bufs::InPlace(buf), ctl)
                .await;
            lift(&self.local, r)?;
        } else {
            let r = self
                .local
                .allreduce_bytes(dtype, Bufs::InPlace(buf), stage_op, ctl)
                .await;
            lift(&self.local, r)?;
            // In a uniform layout every rank has a cross group; only local rank 0's leads.
            if let Some(cross) = self.cross.as_mut().filter(|_| self.local.rank() == 0) {
                let r = cross
                    .allreduce_bytes(dtype, Bufs::InPlace(buf), stage_op, ctl)
                    .await;
                lift(cross, r)?;
            }
            let r = self
                .local
                .broadcast_bytes(dtype, Bufs::InPlace(buf), 0, ctl)
                .await;
            lift(&self.local, r)?;
        }
        if op == ReduceOp::Avg {
            finish_avg(dtype, buf, self.size());
        }
        Ok(())
    }

    /// In-place allreduce of a typed slice.
    pub async fn allreduce<E: Element>(
        &mut self,
        buf: &mut [E],
        op: ReduceOp,
        ctl: &Ctl,
    ) -> Result<()> {
        let b = Bufs::InPlace(bytemuck::cast_slice_mut(buf));
        self.allreduce_bytes(E::DTYPE, b, op, ctl).await
    }

    /// Grouped allreduce of many tensors, fused as in [`Communicator::allreduce_grouped`].
    pub async fn allreduce_grouped(
        &mut self,
        tensors: &mut [TensorMut<'_>],
        op: ReduceOp,
        ctl: &Ctl,
    ) -> Result<()> {
        if let Some(bad) = tensors
            .iter()
            .find(|t| !t.bytes().len().is_multiple_of(t.dtype().size()))
        {
            return Err(CollectiveError::InvalidArgument(format!(
                "a grouped tensor holds {} bytes, not whole {} elements",
                bad.bytes().len(),
                bad.dtype().nccl_name()
            )));
        }
        let shapes: Vec<_> = tensors
            .iter()
            .map(|t| (t.dtype(), t.bytes().len()))
            .collect();
        let buckets = fusion::plan(&shapes, self.world.config().fusion_bytes);
        let mut space = std::mem::take(&mut self.fusion);
        // The stages are separate collectives, so every bucket is packed (no gather list).
        let r = fusion::run(
            tensors,
            &buckets,
            &[],
            &mut space,
            async |dtype, bucket| match bucket {
                BucketBuf::Whole(bytes) => {
                    self.allreduce_bytes(dtype, Bufs::InPlace(bytes), op, ctl)
                        .await
                }
                BucketBuf::Gathered(_) => Err(CollectiveError::Poisoned(
                    "internal: a gather list reached the hierarchical allreduce".into(),
                )),
            },
        )
        .await;
        self.fusion = space;
        r
    }
}

/// A stage's error with its ranks renamed from the subset's numbering to the world's.
fn lift<T: Transport>(c: &Communicator<Subset<T>>, r: Result<()>) -> Result<()> {
    r.map_err(|e| e.renumber(|s| c.transport().global(s)))
}
