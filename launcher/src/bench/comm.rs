//! What the bench needs of a communicator, for a flat [`Communicator`] and a [`Hierarchical`]
//! one alike, so that the timed loops do not care which the transport choice produced.

use std::time::Duration;

use ringrun_collectives::{
    Bufs, CollectiveError, Communicator, Ctl, DType, Element, Hierarchical, ReduceOp, TensorMut,
    transport::Transport,
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

impl<T: Transport> BenchComm for Communicator<T> {
    fn rank(&self) -> usize {
        Communicator::rank(self)
    }
    fn size(&self) -> usize {
        Communicator::size(self)
    }
    fn algo_name(&self, dtype: DType, bytes: usize) -> &'static str {
        self.allreduce_algo(dtype, bytes).name()
    }
    async fn allreduce_bytes(&mut self, d: DType, b: Bufs<'_>, op: ReduceOp, ctl: &Ctl) -> R {
        Communicator::allreduce_bytes(self, d, b, op, ctl).await
    }
    async fn allreduce_grouped(&mut self, t: &mut [TensorMut<'_>], op: ReduceOp, ctl: &Ctl) -> R {
        Communicator::allreduce_grouped(self, t, op, ctl).await
    }
    async fn allgather_bytes(&mut self, d: DType, b: Bufs<'_>, ctl: &Ctl) -> R {
        Communicator::allgather_bytes(self, d, b, ctl).await
    }
    async fn barrier(&mut self, ctl: &Ctl) -> R {
        Communicator::barrier(self, ctl).await
    }
    async fn close(self, within: Duration) {
        Communicator::close(self, within).await;
    }
}

impl<T: Transport> BenchComm for Hierarchical<T> {
    fn rank(&self) -> usize {
        Hierarchical::rank(self)
    }
    fn size(&self) -> usize {
        Hierarchical::size(self)
    }
    fn algo_name(&self, _: DType, _: usize) -> &'static str {
        "hierarchical"
    }
    async fn allreduce_bytes(&mut self, d: DType, b: Bufs<'_>, op: ReduceOp, ctl: &Ctl) -> R {
        Hierarchical::allreduce_bytes(self, d, b, op, ctl).await
    }
    async fn allreduce_grouped(&mut self, t: &mut [TensorMut<'_>], op: ReduceOp, ctl: &Ctl) -> R {
        Hierarchical::allreduce_grouped(self, t, op, ctl).await
    }
    async fn allgather_bytes(&mut self, d: DType, b: Bufs<'_>, ctl: &Ctl) -> R {
        self.world().allgather_bytes(d, b, ctl).await
    }
    async fn barrier(&mut self, ctl: &Ctl) -> R {
        self.world().barrier(ctl).await
    }
    async fn close(self, within: Duration) {
        Hierarchical::close(self, within).await;
    }
}
