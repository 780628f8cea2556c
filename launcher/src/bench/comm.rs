//! What the bench's timed loops need of a communicator: [`LayoutComm`], flat or hierarchical
//! as the transport choice and the layout made it.

use std::time::Duration;

use ringrun_collectives::{
    Bufs, CollectiveError, Ctl, DType, Element, LayoutComm, ReduceOp, TensorMut,
};

type R = Result<(), CollectiveError>;

#[allow(async_fn_in_trait)] // The bench runs on one current-thread runtime; no Send bound.
pub(super) trait BenchComm {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// The algorithm name reported for an allreduce of `bytes`.
    fn algo_name(&self, dtype: DType, bytes: usize) -> &'static str;
    async fn allreduce_bytes(&mut self, dtype: DType, bufs: Bufs<'_>, op: ReduceOp, ctl: &Ctl)
    -> R;
    async fn allreduce_grouped(&mut self, t: &mut [TensorMut<'_>], op: ReduceOp, ctl: &Ctl) -> R;
    async fn allgather_bytes(&mut self, dtype: DType, bufs: Bufs<'_>, ctl: &Ctl) -> R;
    async fn barrier(&mut self, ctl: &Ctl) -> R;
    async fn close(self, within: Duration);

    /// In-place allreduce of a typed slice.
    async fn allreduce<E: Element>(&mut self, buf: &mut [E], op: ReduceOp, ctl: &Ctl) -> R {
        let b = Bufs::InPlace(bytemuck::cast_slice_mut(buf));
        self.allreduce_bytes(E::DTYPE, b, op, ctl).await
    }
}

impl BenchComm for LayoutComm {
    fn rank(&self) -> usize {
        LayoutComm::rank(self)
    }
    fn size(&self) -> usize {
        LayoutComm::size(self)
    }
    fn algo_name(&self, dtype: DType, bytes: usize) -> &'static str {
        self.allreduce_algo_name(dtype, bytes)
    }
    async fn allreduce_bytes(&mut self, d: DType, b: Bufs<'_>, op: ReduceOp, ctl: &Ctl) -> R {
        LayoutComm::allreduce_bytes(self, d, b, op, ctl).await
    }
    async fn allreduce_grouped(&mut self, t: &mut [TensorMut<'_>], op: ReduceOp, ctl: &Ctl) -> R {
        LayoutComm::allreduce_grouped(self, t, op, ctl).await
    }
    async fn allgather_bytes(&mut self, d: DType, b: Bufs<'_>, ctl: &Ctl) -> R {
        self.flat().allgather_bytes(d, b, ctl).await
    }
    async fn barrier(&mut self, ctl: &Ctl) -> R {
        self.flat().barrier(ctl).await
    }
    async fn close(self, within: Duration) {
        LayoutComm::close(self, within).await;
    }
}
