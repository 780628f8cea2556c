//! The communicator over [`Links`]: flat, or hierarchical for large allreduces when the layout
//! spans hosts with several ranks on some.

use std::{sync::Arc, time::Duration};

use super::{HostLinks, Layout, Links};
use crate::{
    comm::{Bufs, CommConfig, Communicator, Ctl},
    dtype::{DType, Element, ReduceOp},
    error::Result,
    fusion::TensorMut,
    hier::Hierarchical,
};

/// Collectives over one communicator's links. Allreduces above `CommConfig::small_bytes` go
/// through the hierarchy where there is one; smaller ones, and every other collective, run
/// flat over the whole world (through [`flat`](Self::flat)). Both are built over the same
/// links; their operations never overlap in time, since the caller runs one collective at a
/// time.
pub struct LayoutComm {
    flat: Communicator<Links>,
    hier: Option<Hierarchical<HostLinks>>,
    layout: Layout,
}

impl LayoutComm {
    /// The communicator of epoch `epoch` over `links`, laid out as `layout` says; `config`
    /// is tuned for the ranks on this host ([`CommConfig::for_local_ranks`]) by the caller.
    pub fn new(links: Links, layout: Layout, epoch: u64, config: CommConfig) -> Self {
        let hier = match &links {
            Links::Hosts(h) if layout.is_hierarchical() => Some(Hierarchical::new(
                Arc::clone(h),
                layout.hosts(),
                epoch,
                config.clone(),
            )),
            _ => None,
        };
        LayoutComm {
            flat: Communicator::new(links, epoch, config),
            hier,
            layout,
        }
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.flat.rank()
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.flat.size()
    }

    /// The epoch the links were formed for.
    pub fn epoch(&self) -> u64 {
        self.flat.epoch()
    }

    /// The links.
    pub fn links(&self) -> &Links {
        self.flat.transport()
    }

    /// The flat communicator over every rank: the collectives other than allreduce.
    pub fn flat(&mut self) -> &mut Communicator<Links> {
        &mut self.flat
    }

    /// What these links are, in one word: `tcp`, `quic`, `shm`, or `hierarchical` (shared
    /// memory in the host, TCP across).
    pub fn name(&self) -> &'static str {
        match &self.hier {
            Some(_) => "hierarchical",
            None => self.links().name(),
        }
    }

    /// What these links and this layout are, for logs: `shm`, `tcp`, `shm in host, tcp across
    /// 2 hosts`, ...
    pub fn describe(&self) -> String {
        match &self.hier {
            Some(_) => format!("shm in host, tcp across {} hosts", self.layout.host_count()),
            None => self.links().name().to_string(),
        }
    }

    /// The algorithm an allreduce of `bytes` of `dtype` runs (the flat selection's, or
    /// `hierarchical`).
    pub fn allreduce_algo_name(&self, dtype: DType, bytes: usize) -> &'static str {
        match self.hierarchy_for(bytes) {
            true => "hierarchical",
            false => self.flat.allreduce_algo(dtype, bytes).name(),
        }
    }

    /// Whether an allreduce of `bytes` goes through the hierarchy. Small ones do not: its three
    /// stages cost more than recursive doubling over the same links, whose first rounds pair
    /// ranks of one host (shared memory) and whose last ones cross hosts.
    fn hierarchy_for(&self, bytes: usize) -> bool {
        let config = self.flat.config();
        self.hier.is_some() && !config.deterministic && bytes > config.small_bytes
    }

    /// Allreduce of the elements of `dtype` in `bufs`.
    pub async fn allreduce_bytes(
        &mut self,
        dtype: DType,
        bufs: Bufs<'_>,
        op: ReduceOp,
        ctl: &Ctl,
    ) -> Result<()> {
        let bytes = match &bufs {
            Bufs::InPlace(b) => b.len(),
            Bufs::OutOfPlace { recv, .. } => recv.len(),
        };
        let hierarchical = self.hierarchy_for(bytes);
        match &mut self.hier {
            Some(h) if hierarchical => h.allreduce_bytes(dtype, bufs, op, ctl).await,
            _ => self.flat.allreduce_bytes(dtype, bufs, op, ctl).await,
        }
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

    /// Grouped allreduce of many tensors (fused; see [`Communicator::allreduce_grouped`]).
    pub async fn allreduce_grouped(
        &mut self,
        tensors: &mut [TensorMut<'_>],
        op: ReduceOp,
        ctl: &Ctl,
    ) -> Result<()> {
        match &mut self.hier {
            Some(h) => h.allreduce_grouped(tensors, op, ctl).await,
            None => self.flat.allreduce_grouped(tensors, op, ctl).await,
        }
    }

    /// Ends every link gracefully (bounded by `within`).
    pub async fn close(self, within: Duration) {
        drop(self.hier);
        self.flat.close(within).await;
    }
}
