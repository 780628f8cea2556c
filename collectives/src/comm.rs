//! [`Communicator`]: the collectives on one epoch's fixed group of ranks.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use tracing::{Instrument, debug_span, warn};

use crate::{
    algo::{self, OpCx, RingBuf, Scratch},
    cancel::Cancel,
    dtype::{DType, Element, ReduceOp},
    error::{CollectiveError, Result},
    frame::{Algo, Collective, ErrorCode, OpSig},
    fusion::{self, BucketBuf, FusionBuffer, TensorMut},
    spin::Spin,
    transport::{HostArena, Transport, arena::Abandon},
};

/// How long peers get to hear about an abort before the error is returned.
const ABORT_NOTICE: Duration = Duration::from_millis(100);

/// How long a failed operation reads a lost peer's link for the error it reported.
const LAST_WORD: Duration = Duration::from_millis(20);

/// Largest allreduce that `Auto` sends by halving-doubling rather than through a
/// shared-memory arena (where `mid_bytes` allows halving-doubling at all).
const HD_OVER_ARENA_BYTES: usize = 1 << 20;

/// Which allreduce algorithm to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AlgoChoice {
    /// Recursive doubling up to [`CommConfig::small_bytes`] (or when there are fewer elements
    /// than ranks), halving-doubling up to [`CommConfig::mid_bytes`] on power-of-two worlds of
    /// 4 or more, the ring above. Where the transport has a shared-memory arena (every rank on
    /// one host) and there are 3 ranks or more, the arena replaces recursive doubling and the
    /// ring, and halving-doubling above 1 MiB or from 8 ranks: it needs one barrier per round
    /// where they need a hand-off per step.
    #[default]
    Auto,
    /// Always the ring.
    Ring,
    /// Always recursive doubling (called `tree` on the command line).
    RecursiveDoubling,
    /// Always Rabenseifner's halving-doubling (`hd` on the command line).
    HalvingDoubling,
    /// Always the shared-memory arena where the transport has one (all ranks on one host),
    /// else as `Auto`.
    Arena,
}

/// Tuning of a [`Communicator`]. Every rank must use the same values for `algo`,
/// `deterministic`, `small_bytes` and `mid_bytes`, or its calls
/// [`Mismatch`](CollectiveError::Mismatch).
#[derive(Clone, Debug)]
pub struct CommConfig {
    /// Allreduce algorithm override.
    pub algo: AlgoChoice,
    /// Reduce in rank order, independent of algorithm and ring position (see `algo::direct`;
    /// over a shared-memory arena, `algo::arena`, which adds in the same order).
    pub deterministic: bool,
    /// Pipeline segment size in bytes.
    pub segment_bytes: usize,
    /// Largest allreduce (bytes) that [`AlgoChoice::Auto`] sends by recursive doubling, and
    /// largest broadcast sent down a tree rather than a chain.
    pub small_bytes: usize,
    /// Largest allreduce (bytes) that [`AlgoChoice::Auto`] runs by halving-doubling on a
    /// power-of-two world of 4 or more (above `small_bytes`): as much data as the ring in
    /// `2 log2 n` steps instead of `2 (n - 1)`, which wins while per-step hand-offs dominate.
    pub mid_bytes: usize,
    /// How long an operation keeps polling before it sleeps until data arrives (zero: sleep at
    /// once). Spinning trades CPU for latency.
    pub spin: Duration,
    /// Whether a spinning rank yields the CPU between rounds. Needed when the ranks on a host
    /// outnumber its cores (the peer being waited for may need this core); costly otherwise
    /// (each yield is a context switch into whatever else is runnable). Default: true, the safe
    /// choice; [`CommConfig::for_local_ranks`] sets it from the host's core count.
    pub spin_yield: bool,
    /// Threads a rank may use to reduce one large segment (1: the rank's own thread only).
    /// Pays only where cores outnumber ranks; see `par`.
    pub reduce_threads: usize,
    /// Largest fusion bucket of [`Communicator::allreduce_grouped`] (Horovod's fusion
    /// threshold); tensors at least this large are reduced in place, unpacked.
    pub fusion_bytes: usize,
    /// Largest arena round that every rank reduces whole (`n` reads of it per rank) rather
    /// than by parts (each rank reduces `1/n` of it, and the rounds pipeline); see
    /// `algo::arena`.
    pub arena_one_shot_bytes: usize,
    /// Out-of-place arena allreduces whose buffers, summed over the host's ranks, reach this
    /// many bytes write their results with streaming stores: results that large leave the
    /// cache before they are read again, and an ordinary store would first read every line it
    /// overwrites (in place, staging the input has just read them).
    pub arena_stream_bytes: usize,
    /// Out-of-place two-rank allreduces (see `algo::pair`) of at least this many bytes write
    /// the half the peer reduced with streaming stores, for the same reason. Two ranks' buffers
    /// leave the cache at smaller sizes than the arena's threshold says, because the ring
    /// reads no staged copy: 4 MiB measured faster streamed, 1–2 MiB slower.
    pub pair_stream_bytes: usize,
}

impl Default for CommConfig {
    fn default() -> Self {
        CommConfig {
            algo: AlgoChoice::Auto,
            deterministic: false,
            segment_bytes: 256 * 1024,
            small_bytes: 256 * 1024,
            mid_bytes: 4 << 20,
            spin: Duration::from_micros(50),
            spin_yield: true,
            reduce_threads: 1,
            fusion_bytes: fusion::DEFAULT_BUCKET_BYTES,
            arena_one_shot_bytes: 64 * 1024,
            arena_stream_bytes: 16 << 20,
            pair_stream_bytes: 4 << 20,
        }
    }
}

impl CommConfig {
    /// This configuration for `ranks` ranks sharing this host: spinning yields only when they
    /// outnumber its cores, and each rank reduces with its share of the cores.
    pub fn for_local_ranks(self, ranks: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        CommConfig {
            spin_yield: ranks > cores,
            reduce_threads: (cores / ranks.max(1)).max(1),
            ..self
        }
    }
}

/// The deadline and cancellation handle of one operation.
#[derive(Clone, Debug)]
pub struct Ctl {
    /// The operation fails with [`Timeout`](CollectiveError::Timeout) if not done by then.
    pub deadline: Instant,
    /// Firing it makes the operation fail with [`Aborted`](CollectiveError::Aborted).
    pub cancel: Option<Cancel>,
}

impl Ctl {
    /// A deadline `timeout` from now and no cancellation handle.
    pub fn timeout(timeout: Duration) -> Ctl {
        Ctl {
            deadline: Instant::now() + timeout,
            cancel: None,
        }
    }

    /// The same deadline, cancellable through `cancel`.
    pub fn with_cancel(self, cancel: Cancel) -> Ctl {
        Ctl {
            cancel: Some(cancel),
            ..self
        }
    }
}

/// Where a collective reads its input and writes its output.
#[derive(Debug)]
pub enum Bufs<'a> {
    /// Input and output are the same buffer.
    InPlace(&'a mut [u8]),
    /// Input is left untouched; output goes to `recv`.
    OutOfPlace {
        /// Input.
        send: &'a [u8],
        /// Output.
        recv: &'a mut [u8],
    },
}

/// The collectives over one epoch's ranks, on a [`Transport`].
///
/// Calls are collective: every rank must make the same calls in the same order with matching
/// arguments. A failed call poisons the communicator (see [`CollectiveError`]).
pub struct Communicator<T> {
    transport: T,
    epoch: u64,
    config: CommConfig,
    next_op: u64,
    poisoned: Option<String>,
    scratch: Scratch,
    fusion: FusionBuffer,
}

impl<T: Transport> Communicator<T> {
    /// Wraps a connected transport for epoch `epoch`.
    pub fn new(transport: T, epoch: u64, config: CommConfig) -> Self {
        Communicator {
            transport,
            epoch,
            config,
            next_op: 0,
            poisoned: None,
            scratch: Scratch::default(),
            fusion: FusionBuffer::default(),
        }
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.transport.rank()
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.transport.size()
    }

    /// The epoch this communicator was built for.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The configuration.
    pub fn config(&self) -> &CommConfig {
        &self.config
    }

    /// Why the communicator is unusable, if it is.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Ends the communicator gracefully (bounded by `within`): every peer gets to finish the last
    /// operation before the links close. See [`Transport::close`].
    pub async fn close(self, within: Duration) {
        self.transport.close(within).await;
    }

    /// The transport underneath.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport's shared-memory arena, where every rank has one of some size.
    fn arena(&self) -> Option<&dyn HostArena> {
        self.transport.arena().filter(|a| a.capacity() > 0)
    }

    /// The allreduce algorithm this communicator picks for `bytes` bytes of `dtype`.
    pub fn allreduce_algo(&self, dtype: DType, bytes: usize) -> Algo {
        let n = self.size();
        let arena = self.arena().is_some();
        if self.config.deterministic {
            // The arena reduces in rank order too: the same bits as `Direct`, faster.
            return if arena { Algo::Arena } else { Algo::Direct };
        }
        let small = bytes <= self.config.small_bytes || bytes / dtype.size() < n;
        let hd = n >= 4 && n.is_power_of_two() && bytes <= self.config.mid_bytes;
        match self.config.algo {
            AlgoChoice::Ring => Algo::Ring,
            AlgoChoice::RecursiveDoubling => Algo::RecursiveDoubling,
            AlgoChoice::HalvingDoubling => Algo::HalvingDoubling,
            AlgoChoice::Arena if arena => Algo::Arena,
            // Auto, or Arena where there is none. Halving-doubling's 2 log2 n hand-offs still
            // beat the arena's barriers up to 1 MiB on 4 ranks, not on 8 (on two cores).
            _ if arena && n >= 3 && (small || !hd || n >= 8 || bytes > HD_OVER_ARENA_BYTES) => {
                Algo::Arena
            }
            _ if small => Algo::RecursiveDoubling,
            _ if hd => Algo::HalvingDoubling,
            _ => Algo::Ring,
        }
    }

    /// Allreduce of the elements of `dtype` in `bufs` (the buffer length gives the count).
    pub async fn allreduce_bytes(
        &mut self,
        dtype: DType,
        bufs: Bufs<'_>,
        op: ReduceOp,
        ctl: &Ctl,
    ) -> Result<()> {
        let input = match &bufs {
            Bufs::OutOfPlace { send, .. } => Some(*send),
            Bufs::InPlace(_) => None,
        };
        let buf = match prepare(dtype, bufs, Shape::SameLen) {
            Ok(b) => b,
            Err(e) => return self.reject(Collective::AllReduce, dtype, e).await,
        };
        let algo = self.allreduce_algo(dtype, buf.len());
        // The ring and halving-doubling read an out-of-place input directly; the others work in
        // place on a copy.
        let input = match (algo, input) {
            (Algo::Ring | Algo::HalvingDoubling | Algo::Arena, Some(i)) if self.size() > 1 => {
                Some(i)
            }
            (_, i) => {
                i.inspect(|i| buf.copy_from_slice(i));
                None
            }
        };
        let sig = sig(
            Collective::AllReduce,
            dtype,
            op,
            algo,
            buf.len() / dtype.size(),
            0,
        );
        let base = self.rank();
        let tuning = algo::ArenaTuning {
            one_shot_bytes: self.config.arena_one_shot_bytes,
            stream_bytes: self.config.arena_stream_bytes,
        };
        self.run(sig, ctl, async |cx, scratch| match (algo, cx.t.arena()) {
            _ if cx.size == 1 => Ok(()),
            (Algo::Arena, Some(arena)) => algo::arena(cx, arena, buf, input, tuning).await,
            (Algo::Ring, _) => {
                algo::ring(cx, RingBuf::One(buf), input, Some(op), true, base, scratch).await
            }
            (Algo::Direct, _) => algo::direct(cx, buf, op, true, scratch).await,
            (Algo::HalvingDoubling, _) => algo::halving_doubling(cx, buf, input, op, scratch).await,
            _ => algo::recursive_doubling(cx, buf, op, scratch).await,
        })
        .await
    }

    /// Grouped allreduce of many tensors of mixed sizes and dtypes, in place, fused into buckets
    /// of at most [`CommConfig::fusion_bytes`] (see `fusion`). Every rank must pass tensors of
    /// the same dtypes and lengths in the same order.
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
            let e = invalid(format!(
                "a grouped tensor holds {} bytes, not whole {} elements",
                bad.bytes().len(),
                bad.dtype().nccl_name()
            ));
            return self.reject(Collective::AllReduce, bad.dtype(), e).await;
        }
        let shapes: Vec<_> = tensors
            .iter()
            .map(|t| (t.dtype(), t.bytes().len()))
            .collect();
        let buckets = fusion::plan(&shapes, self.config.fusion_bytes);
        // The ring walks a gather list, so its buckets skip the fusion buffer.
        let gather: Vec<bool> = buckets
            .iter()
            .map(|b| self.size() > 1 && self.allreduce_algo(b.dtype, b.bytes) == Algo::Ring)
            .collect();
        let mut space = std::mem::take(&mut self.fusion);
        let r = fusion::run(
            tensors,
            &buckets,
            &gather,
            &mut space,
            async |dtype, bucket| match bucket {
                BucketBuf::Whole(bytes) => {
                    self.allreduce_bytes(dtype, Bufs::InPlace(bytes), op, ctl)
                        .await
                }
                BucketBuf::Gathered(parts) => self.allreduce_gathered(dtype, parts, op, ctl).await,
            },
        )
        .await;
        self.fusion = space;
        r
    }

    /// Ring allreduce, in place, of the buffer that `parts` make laid end to end (a fused
    /// bucket reduced where its tensors lie). Each part holds whole, aligned elements.
    async fn allreduce_gathered(
        &mut self,
        dtype: DType,
        parts: Vec<&mut [u8]>,
        op: ReduceOp,
        ctl: &Ctl,
    ) -> Result<()> {
        let bytes: usize = parts.iter().map(|p| p.len()).sum();
        let count = bytes / dtype.size();
        let sig = sig(Collective::AllReduce, dtype, op, Algo::Ring, count, 0);
        let base = self.rank();
        let buf = RingBuf::Gather(parts);
        self.run(sig, ctl, async |cx, scratch| {
            algo::ring(cx, buf, None, Some(op), true, base, scratch).await
        })
        .await
    }

    /// Broadcast of `root`'s buffer to every rank. Out of place, only the root reads `send`.
    pub async fn broadcast_bytes(
        &mut self,
        dtype: DType,
        bufs: Bufs<'_>,
        root: usize,
        ctl: &Ctl,
    ) -> Result<()> {
        let is_root = root == self.rank();
        let buf = match self
            .check_root(root)
            .and_then(|()| prepare(dtype, bufs, Shape::Root(is_root)))
        {
            Ok(b) => b,
            Err(e) => return self.reject(Collective::Broadcast, dtype, e).await,
        };
        let algo = if buf.len() <= self.config.small_bytes {
            Algo::Tree
        } else {
            Algo::Chain
        };
        let count = buf.len() / dtype.size();
        let sig = sig(
            Collective::Broadcast,
            dtype,
            ReduceOp::Sum,
            algo,
            count,
            root,
        );
        self.run(sig, ctl, async |cx, _| match algo {
            _ if cx.size == 1 => Ok(()),
            Algo::Tree => algo::tree(cx, buf, root).await,
            _ => algo::chain(cx, buf, root).await,
        })
        .await
    }

    /// Allgather: rank `r`'s block lands at block `r` of every rank's output (`size` blocks).
    /// In place, the buffer holds all blocks with this rank's block already in place;
    /// out of place, `send` is one block and `recv` all of them.
    pub async fn allgather_bytes(&mut self, dtype: DType, bufs: Bufs<'_>, ctl: &Ctl) -> Result<()> {
        let (n, r) = (self.size(), self.rank());
        let buf = match prepare(dtype, bufs, Shape::Blocks { n, r }) {
            Ok(b) => b,
            Err(e) => return self.reject(Collective::AllGather, dtype, e).await,
        };
        let block = buf.len() / n / dtype.size();
        let sig = sig(
            Collective::AllGather,
            dtype,
            ReduceOp::Sum,
            Algo::Ring,
            block,
            0,
        );
        let base = (r + n - 1) % n;
        self.run(sig, ctl, async |cx, scratch| match cx.size {
            1 => Ok(()),
            _ => algo::ring(cx, RingBuf::One(buf), None, None, true, base, scratch).await,
        })
        .await
    }

    /// Reduce-scatter: the input has `size` equal blocks; rank `r` ends with the reduction of
    /// block `r`. Out of place, `recv` is one block; in place, the result is left in block `r`
    /// of the buffer and the other blocks hold partial sums afterwards.
    pub async fn reduce_scatter_bytes(
        &mut self,
        dtype: DType,
        bufs: Bufs<'_>,
        op: ReduceOp,
        ctl: &Ctl,
    ) -> Result<()> {
        let (n, r) = (self.size(), self.rank());
        // Out of place, the whole reduction runs in a work buffer and block `r` is copied out.
        let mut work_space = Vec::new();
        let (input, work, out) = match bufs {
            Bufs::InPlace(b) => (None, Bufs::InPlace(b), None),
            Bufs::OutOfPlace { send, recv } => {
                work_space = vec![0u64; send.len().div_ceil(8)];
                let work = &mut bytemuck::cast_slice_mut(&mut work_space)[..send.len()];
                (
                    Some(send),
                    Bufs::OutOfPlace { send, recv: work },
                    Some(recv),
                )
            }
        };
        let shape = Shape::Scatter {
            n,
            out: out.as_deref().map(<[u8]>::len),
        };
        let buf = match prepare(dtype, work, shape) {
            Ok(b) => b,
            Err(e) => return self.reject(Collective::ReduceScatter, dtype, e).await,
        };
        let block = buf.len() / n;
        let algo = if self.config.deterministic {
            Algo::Direct
        } else {
            Algo::Ring
        };
        // The ring reads an out-of-place input directly; the direct algorithm needs a copy.
        let input = match (algo, input) {
            (Algo::Ring, Some(i)) if n > 1 => Some(i),
            (_, i) => {
                i.inspect(|i| buf.copy_from_slice(i));
                None
            }
        };
        let sig = sig(
            Collective::ReduceScatter,
            dtype,
            op,
            algo,
            block / dtype.size(),
            0,
        );
        let base = (r + n - 1) % n;
        self.run(sig, ctl, async |cx, scratch| match algo {
            _ if cx.size == 1 => Ok(()),
            Algo::Direct => algo::direct(cx, buf, op, false, scratch).await,
            _ => algo::ring(cx, RingBuf::One(buf), input, Some(op), false, base, scratch).await,
        })
        .await?;
        if let Some(out) = out {
            out.copy_from_slice(&buf[r * block..(r + 1) * block]);
        }
        drop(work_space);
        Ok(())
    }

    /// Returns once every rank has entered the barrier.
    pub async fn barrier(&mut self, ctl: &Ctl) -> Result<()> {
        let sig = sig(
            Collective::Barrier,
            DType::U8,
            ReduceOp::Sum,
            Algo::Dissemination,
            0,
            0,
        );
        self.run(sig, ctl, async |cx, _| algo::dissemination(cx).await)
            .await
    }

    /// All-to-all of `dtype` elements: `send` and `recv` hold `size` equal blocks; block `j`
    /// of `send` goes to rank `j`, and block `j` of `recv` comes from rank `j`, straight over
    /// their link. Returns, by rank, when that rank's block arrived where this rank was already
    /// waiting for it (`None` for its own block and for blocks that came before the call did):
    /// the samples the runtime measures each link's round trip with.
    pub async fn alltoall_bytes(
        &mut self,
        dtype: DType,
        send: &[u8],
        recv: &mut [u8],
        ctl: &Ctl,
    ) -> Result<Vec<Option<Instant>>> {
        let n = self.size();
        let unit = n * dtype.size();
        if send.is_empty() || send.len() != recv.len() || !send.len().is_multiple_of(unit) {
            let why = invalid(format!(
                "alltoall needs equal send and receive buffers of {n} non-empty blocks of \
                 {dtype:?}, got {} and {} bytes",
                send.len(),
                recv.len()
            ));
            return self
                .reject(Collective::AllToAll, dtype, why)
                .await
                .map(|()| Vec::new());
        }
        let block = send.len() / n;
        let sig = sig(
            Collective::AllToAll,
            dtype,
            ReduceOp::Sum,
            Algo::Direct,
            block / dtype.size(),
            0,
        );
        let mut arrived = vec![None; n];
        self.run(sig, ctl, async |cx, _| {
            algo::alltoall(cx, send, recv, &mut arrived).await
        })
        .await?;
        Ok(arrived)
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

    /// Out-of-place allreduce of a typed slice.
    pub async fn allreduce_into<E: Element>(
        &mut self,
        send: &[E],
        recv: &mut [E],
        op: ReduceOp,
        ctl: &Ctl,
    ) -> Result<()> {
        let b = Bufs::OutOfPlace {
            send: bytemuck::cast_slice(send),
            recv: bytemuck::cast_slice_mut(recv),
        };
        self.allreduce_bytes(E::DTYPE, b, op, ctl).await
    }

    /// In-place broadcast of a typed slice from `root`.
    pub async fn broadcast<E: Element>(
        &mut self,
        buf: &mut [E],
        root: usize,
        ctl: &Ctl,
    ) -> Result<()> {
        let b = Bufs::InPlace(bytemuck::cast_slice_mut(buf));
        self.broadcast_bytes(E::DTYPE, b, root, ctl).await
    }

    /// Out-of-place allgather of typed slices (`recv` is `size` times `send`).
    pub async fn allgather<E: Element>(
        &mut self,
        send: &[E],
        recv: &mut [E],
        ctl: &Ctl,
    ) -> Result<()> {
        let b = Bufs::OutOfPlace {
            send: bytemuck::cast_slice(send),
            recv: bytemuck::cast_slice_mut(recv),
        };
        self.allgather_bytes(E::DTYPE, b, ctl).await
    }

    /// All-to-all of typed slices (see [`Communicator::alltoall_bytes`]): `send` and `recv`
    /// hold `size` equal blocks, block `j` of `send` for rank `j`.
    pub async fn alltoall<E: Element>(
        &mut self,
        send: &[E],
        recv: &mut [E],
        ctl: &Ctl,
    ) -> Result<Vec<Option<Instant>>> {
        let (send, recv) = (bytemuck::cast_slice(send), bytemuck::cast_slice_mut(recv));
        self.alltoall_bytes(E::DTYPE, send, recv, ctl).await
    }

    /// Out-of-place reduce-scatter of typed slices (`send` is `size` times `recv`).
    pub async fn reduce_scatter<E: Element>(
        &mut self,
        send: &[E],
        recv: &mut [E],
        op: ReduceOp,
        ctl: &Ctl,
    ) -> Result<()> {
        let b = Bufs::OutOfPlace {
            send: bytemuck::cast_slice(send),
            recv: bytemuck::cast_slice_mut(recv),
        };
        self.reduce_scatter_bytes(E::DTYPE, b, op, ctl).await
    }

    fn check_root(&self, root: usize) -> Result<()> {
        match root < self.size() {
            true => Ok(()),
            false => Err(invalid(format!(
                "root {root} outside a world of {}",
                self.size()
            ))),
        }
    }

    /// Runs one operation under its deadline and cancellation handle; on failure, tells the
    /// peers and poisons the communicator.
    async fn run<F>(&mut self, sig: OpSig, ctl: &Ctl, op: F) -> Result<()>
    where
        F: AsyncFnOnce(&OpCx<'_, T>, &mut Scratch) -> Result<()>,
    {
        if let Some(why) = &self.poisoned {
            return Err(CollectiveError::Poisoned(why.clone()));
        }
        let op_id = self.next_op;
        self.next_op += 1;
        let cx = OpCx::new(
            &self.transport,
            self.epoch,
            op_id,
            sig,
            self.config.segment_bytes,
        )
        .with_reduce_threads(self.config.reduce_threads)
        .with_stream_bytes(self.config.pair_stream_bytes);
        if let Some(a) = self.transport.arena() {
            // Before anything else of the call: a peer waiting in the arena compares it.
            a.announce(&cx.header(0, 0));
        }
        let span = debug_span!("collective", coll = ?sig.coll, algo = sig.algo.name(),
            dtype = sig.dtype.nccl_name(), count = sig.count, epoch = self.epoch, op_id);
        let started = Instant::now();
        let abandon = Abandon::arm(self.transport.arena());
        let op = Box::pin(op(&cx, &mut self.scratch));
        let spun = Spin::new(op, self.config.spin, self.config.spin_yield);
        let result = guarded(&self.transport, spun, ctl, started)
            .instrument(span)
            .await;
        abandon.disarm();
        let header = cx.header(0, 0);
        drop(cx);
        let Err(mut e) = result else { return Ok(()) };
        if let CollectiveError::PeerLost { rank, .. } = e {
            // A peer that failed first usually said why before its link closed.
            if let Some(word) = self.transport.last_word(rank, LAST_WORD).await {
                e = word;
            }
        }
        self.give_up(&header, &e).await;
        Err(e)
    }

    /// Fails a call whose arguments are unusable: consumes its op id and tells the peers, so
    /// that they fail at once instead of waiting for their deadline.
    async fn reject(&mut self, coll: Collective, dtype: DType, e: CollectiveError) -> Result<()> {
        if let Some(why) = &self.poisoned {
            return Err(CollectiveError::Poisoned(why.clone()));
        }
        let op_id = self.next_op;
        self.next_op += 1;
        let s = sig(coll, dtype, ReduceOp::Sum, Algo::Ring, 0, 0);
        let header = OpCx::new(&self.transport, self.epoch, op_id, s, 1).header(0, 0);
        self.give_up(&header, &e).await;
        Err(e)
    }

    async fn give_up(&mut self, header: &crate::frame::Header, e: &CollectiveError) {
        warn!(epoch = self.epoch, op_id = header.op_id, error = %e, "collective failed");
        let (code, subject) = match e {
            CollectiveError::Mismatch { .. } | CollectiveError::InvalidArgument(_) => {
                (ErrorCode::Mismatch, None)
            }
            CollectiveError::PeerLost { rank, .. } => (ErrorCode::PeerLost, Some(*rank)),
            _ => (ErrorCode::Aborted, None),
        };
        let message = format!("rank {} failed: {e}", self.rank());
        self.transport
            .abort_all(header, code, subject, &message, ABORT_NOTICE)
            .await;
        self.poisoned = Some(e.to_string());
    }
}

/// Runs `fut` until it finishes, the deadline passes or `ctl.cancel` fires.
async fn guarded<T: Transport>(
    t: &T,
    fut: impl Future<Output = Result<()>>,
    ctl: &Ctl,
    started: Instant,
) -> Result<()> {
    let cancelled = async {
        match &ctl.cancel {
            Some(c) => c.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let deadline = tokio::time::Instant::from_std(ctl.deadline);
    let mut fut = std::pin::pin!(fut);
    tokio::select! {
        biased;
        () = cancelled => {
            // One last look at the call: an outcome already there (success, or a peer's
            // Mismatch notice already in the socket) wins over a cancel that raced with it, so
            // every rank of a mismatched call reports the mismatch.
            match futures_util::FutureExt::now_or_never(fut.as_mut()) {
                Some(r @ (Ok(()) | Err(CollectiveError::Mismatch { .. }))) => r,
                _ => Err(CollectiveError::Aborted {
                    reason: ctl.cancel.as_ref().and_then(Cancel::reason).unwrap_or_default(),
                }),
            }
        }
        r = fut.as_mut() => r,
        () = tokio::time::sleep_until(deadline) => Err(CollectiveError::Timeout {
            waiting_on: t.waiting_on(),
            waited: started.elapsed(),
        }),
    }
}

fn sig(
    coll: Collective,
    dtype: DType,
    op: ReduceOp,
    algo: Algo,
    count: usize,
    root: usize,
) -> OpSig {
    OpSig {
        coll,
        dtype,
        op,
        algo,
        count: count as u64,
        root: root as u32,
    }
}

fn invalid(msg: String) -> CollectiveError {
    CollectiveError::InvalidArgument(msg)
}

/// How a collective's input relates to its output.
enum Shape {
    /// Same length; the caller decides whether to copy (allreduce).
    SameLen,
    /// Same length; only the root's input is read (broadcast).
    Root(bool),
    /// The output has `n` blocks, this rank's input is block `r` (allgather).
    Blocks { n: usize, r: usize },
    /// The input has `n` blocks; out of place, the output is one of length `out` (reduce-scatter).
    Scatter { n: usize, out: Option<usize> },
}

/// Checks lengths and alignment and copies the input into the output where the operation
/// runs in place on the output. Returns the buffer the algorithm works on.
fn prepare<'a>(dtype: DType, bufs: Bufs<'a>, shape: Shape) -> Result<&'a mut [u8]> {
    let elem = dtype.size();
    let whole = |what: &str, b: &[u8]| match (b.len() % elem, b.as_ptr() as usize % elem) {
        (0, 0) => Ok(()),
        (0, _) => Err(invalid(format!(
            "{what} buffer is not aligned for {}",
            dtype.nccl_name()
        ))),
        _ => Err(invalid(format!(
            "{what} holds {} bytes, not whole {} elements",
            b.len(),
            dtype.nccl_name()
        ))),
    };
    let (send, recv) = match bufs {
        Bufs::InPlace(b) => (None, b),
        Bufs::OutOfPlace { send, recv } => (Some(send), recv),
    };
    whole("output", recv)?;
    if let Some(s) = send {
        whole("input", s)?;
    }
    let blocks = match shape {
        Shape::Blocks { n, .. } | Shape::Scatter { n, .. } => n,
        _ => 1,
    };
    if recv.len() % (blocks * elem) != 0 && !matches!(shape, Shape::Scatter { out: Some(_), .. }) {
        return Err(invalid(format!(
            "{} bytes do not split into {blocks} equal blocks",
            recv.len()
        )));
    }
    match (send, shape) {
        (None, _) => {}
        (Some(s), Shape::SameLen | Shape::Root(_)) if s.len() != recv.len() => {
            return Err(invalid(format!(
                "input has {} bytes, output {}",
                s.len(),
                recv.len()
            )));
        }
        (Some(s), Shape::Root(true)) => recv.copy_from_slice(s),
        (Some(_), Shape::SameLen | Shape::Root(false)) => {}
        (Some(s), Shape::Blocks { n, r }) => {
            if s.len() * n != recv.len() {
                return Err(invalid(format!(
                    "output has {} bytes, expected {n} blocks of {}",
                    recv.len(),
                    s.len()
                )));
            }
            recv[r * s.len()..(r + 1) * s.len()].copy_from_slice(s);
        }
        (Some(s), Shape::Scatter { n, out }) => {
            let out = out.unwrap_or(0);
            if s.len() != out * n || out % elem != 0 {
                return Err(invalid(format!(
                    "input has {} bytes, expected {n} blocks of {out}",
                    s.len()
                )));
            }
        }
    }
    Ok(recv)
}
