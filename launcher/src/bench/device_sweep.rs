//! The measured loop of `--device cuda`: for each size, out-of-place then in-place, time
//! `iters` allreduces after a warm-up, then check one fresh allreduce element by element. The
//! buffers and the timed allreduce belong to an [`Engine`] (device memory, `device.rs`); the
//! bookkeeping reductions (mean time, wrong counts, device lines) go over the CPU communicator.
//! Host buffers use `sweep.rs`, whose communicator may be hierarchical.

use std::time::{Duration, Instant};

use anyhow::Result;
use ringrun_collectives::{
    Communicator, Ctl, DType, ReduceOp,
    testdata::{count_wrong, inputs},
    transport::Transport,
};

use super::{BenchArgs, report::Half, sweep};

/// Where the measured allreduces run: buffers of the current size and the collective on them.
pub(super) trait Engine {
    /// The CPU transport of the bookkeeping communicator.
    type T: Transport;
    /// The CPU communicator (also the data path for host buffers).
    fn ctrl(&mut self) -> &mut Communicator<Self::T>;
    /// What the device line says after the host name (`cpu tcp`, `cuda 0 <name> nccl`).
    fn describe(&self) -> String;
    /// Makes the buffers `bytes` long (contents unspecified).
    fn resize(&mut self, bytes: usize) -> Result<()>;
    /// Writes `data` to the input (`recv` in place, `send` out of place); `zero_recv` clears
    /// the output first.
    fn fill(&mut self, data: &[u8], in_place: bool, zero_recv: bool) -> Result<()>;
    /// `times` back-to-back allreduces of `bytes`, waited for together.
    async fn allreduce(
        &mut self,
        args: &BenchArgs,
        in_place: bool,
        times: usize,
        ctl: &Ctl,
    ) -> Result<()>;
    /// The output's bytes.
    fn output(&mut self) -> Result<Vec<u8>>;
    /// Ends the run gracefully (flushes what peers still need).
    async fn close(self, timeout: Duration);
}

/// Runs the sweep on this rank; rank 0 prints. Returns the number of wrong elements (all ranks).
pub(super) async fn run<E: Engine>(mut engine: E, args: &BenchArgs, algo: &str) -> Result<u64> {
    let (rank, n) = (engine.ctrl().rank(), engine.ctrl().size());
    let elem = args.dtype.size();
    let timeout = Duration::from_secs(args.timeout);
    let describe = engine.describe();
    print_header(engine.ctrl(), args, &describe, timeout).await?;
    let mut rows = Vec::new();
    let mut size = args.min_bytes;
    while size <= args.max_bytes {
        let count = size / elem;
        let bytes = count * elem;
        engine.resize(bytes)?;
        let mut halves = [None, None];
        let mut iterations = 0;
        for (h, in_place) in [false, true].into_iter().enumerate() {
            let mut m = Measure {
                engine: &mut engine,
                args,
                bytes,
                in_place,
                timeout,
            };
            let (seconds, iters) = m.time(rank).await?;
            let wrong = if args.check == 1 {
                m.check(rank, n).await?
            } else {
                0
            };
            halves[h] = Some(Half::new(bytes, seconds, n, wrong));
            iterations = iters;
        }
        let row = sweep::row(args, bytes, count, halves, iterations, rank);
        rows.push(row);
        size *= args.step_factor;
    }
    engine.close(timeout).await;
    let transport = describe.strip_prefix("cpu ").unwrap_or(&describe);
    sweep::finish(args, rank, n, transport, algo, &rows)
}

async fn print_header<T: Transport>(
    comm: &mut Communicator<T>,
    args: &BenchArgs,
    describe: &str,
    timeout: Duration,
) -> Result<()> {
    let (rank, n) = (comm.rank(), comm.size());
    let record = sweep::device_record(rank, describe);
    let mut all = vec![0u8; sweep::LINE * n];
    comm.allgather(&record[..], &mut all, &Ctl::timeout(timeout))
        .await?;
    if rank == 0 {
        let transport = describe.strip_prefix("cpu ").unwrap_or(describe);
        sweep::print_header_lines(args, n, transport, &all);
    }
    Ok(())
}

struct Measure<'a, E> {
    engine: &'a mut E,
    args: &'a BenchArgs,
    bytes: usize,
    in_place: bool,
    timeout: Duration,
}

impl<E: Engine> Measure<'_, E> {
    async fn run(&mut self, times: usize) -> Result<()> {
        let ctl = Ctl::timeout(self.timeout);
        self.engine
            .allreduce(self.args, self.in_place, times, &ctl)
            .await
    }

    fn fill(&mut self, rank: usize, zero_recv: bool) -> Result<()> {
        let dtype: DType = self.args.dtype;
        let data = inputs(dtype, self.args.op, rank, self.bytes / dtype.size());
        self.engine.fill(data.bytes(), self.in_place, zero_recv)
    }

    /// Mean seconds per allreduce, averaged over ranks, and the iteration count used.
    async fn time(&mut self, rank: usize) -> Result<(f64, usize)> {
        self.fill(rank, false)?;
        let start = Instant::now();
        self.run(1).await?;
        let timeout = self.timeout;
        let ctl = || Ctl::timeout(timeout);
        let iters = match self.args.budget {
            Some(budget) => {
                let mut first = [start.elapsed().as_secs_f64()];
                self.engine
                    .ctrl()
                    .allreduce(&mut first, ReduceOp::Max, &ctl())
                    .await?;
                ((budget / first[0].max(1e-9)) as usize).clamp(3, self.args.iters.max(3))
            }
            None => self.args.iters,
        };
        if self.args.warmup > 1 {
            self.run(self.args.warmup - 1).await?;
        }
        self.engine.ctrl().barrier(&ctl()).await?;
        let start = Instant::now();
        self.run(iters).await?;
        let mut mean = [start.elapsed().as_secs_f64() / iters.max(1) as f64];
        self.engine
            .ctrl()
            .allreduce(&mut mean, ReduceOp::Avg, &ctl())
            .await?;
        Ok((mean[0], iters))
    }

    /// Wrong elements over all ranks in one freshly initialised allreduce.
    async fn check(&mut self, rank: usize, n: usize) -> Result<u64> {
        self.fill(rank, !self.in_place)?;
        self.run(1).await?;
        let out = self.engine.output()?;
        let mut wrong = [count_wrong(self.args.dtype, self.args.op, n, &out) as i64];
        self.engine
            .ctrl()
            .allreduce(&mut wrong, ReduceOp::Sum, &Ctl::timeout(self.timeout))
            .await?;
        Ok(wrong[0] as u64)
    }
}
