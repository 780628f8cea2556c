//! The measured loop: for each size, out-of-place then in-place, time `iters` allreduces after
//! a warm-up, then check one fresh allreduce element by element.

use std::time::{Duration, Instant};

use anyhow::Result;
use ringrun_collectives::{
    Bufs, Ctl, DType, ReduceOp,
    testdata::{Aligned, count_wrong, inputs},
};

use super::{
    BenchArgs,
    comm::BenchComm,
    report::{self, Half, Row},
};

/// Runs the sweep on this rank; rank 0 prints. Returns the number of wrong elements (all ranks).
pub(super) async fn run<C: BenchComm>(
    mut comm: C,
    args: &BenchArgs,
    transport: &str,
) -> Result<u64> {
    let (rank, n) = (comm.rank(), comm.size());
    let elem = args.dtype.size();
    let mut send = Aligned::zeroed(args.max_bytes / elem * elem);
    let mut recv = send.clone();
    let timeout = Duration::from_secs(args.timeout);
    let algo = comm.algo_name(args.dtype, args.max_bytes);
    print_header(&mut comm, args, transport, timeout).await?;
    let mut rows = Vec::new();
    let mut size = args.min_bytes;
    while size <= args.max_bytes {
        let count = size / elem;
        let bytes = count * elem;
        let mut halves = [None, None];
        let mut iterations = 0;
        for (h, in_place) in [false, true].into_iter().enumerate() {
            let mut m = Measure {
                comm: &mut comm,
                args,
                send: &mut send,
                recv: &mut recv,
                bytes,
                in_place,
                timeout,
            };
            let (seconds, iters) = m.time().await?;
            let wrong = if args.check == 1 {
                m.check(rank, n).await?
            } else {
                0
            };
            halves[h] = Some(Half::new(bytes, seconds, n, wrong));
            iterations = iters;
        }
        let row = row(args, bytes, count, halves, iterations, rank);
        rows.push(row);
        size *= args.step_factor;
    }
    // The last rank to finish may still need bytes this one sent: end the links gracefully.
    comm.close(timeout).await;
    finish(args, rank, n, transport, algo, &rows)
}

/// One size's row from its two halves; rank 0 prints it.
pub(super) fn row(
    args: &BenchArgs,
    bytes: usize,
    count: usize,
    halves: [Option<Half>; 2],
    iterations: usize,
    rank: usize,
) -> Row {
    let [Some(out_of_place), Some(in_place)] = halves else {
        unreachable!("both halves ran")
    };
    let row = Row {
        size: bytes,
        count,
        dtype: args.dtype.nccl_name(),
        redop: args.op.nccl_name(),
        root: -1,
        out_of_place,
        in_place,
        actual_iterations: iterations,
    };
    if rank == 0 {
        println!("{}", report::row(&row));
    }
    row
}

/// The footer and `-J` file (rank 0); returns the wrong elements of every row.
pub(super) fn finish(
    args: &BenchArgs,
    rank: usize,
    n: usize,
    transport: &str,
    algo: &str,
    rows: &[Row],
) -> Result<u64> {
    let wrong = rows
        .iter()
        .map(|r| r.out_of_place.nwrong + r.in_place.nwrong)
        .sum();
    if rank == 0 {
        print!("{}", report::footer(rows));
        if let Some(path) = &args.json {
            std::fs::write(path, json(args, n, transport, algo, rows)?)?;
        }
    }
    Ok(wrong)
}

pub(super) async fn print_header<C: BenchComm>(
    comm: &mut C,
    args: &BenchArgs,
    transport: &str,
    timeout: Duration,
) -> Result<()> {
    let (rank, n) = (comm.rank(), comm.size());
    let record = device_record(rank, &format!("cpu {transport}"));
    let mut all = vec![0u8; LINE * n];
    let bufs = Bufs::OutOfPlace {
        send: &record[..],
        recv: &mut all,
    };
    comm.allgather_bytes(DType::U8, bufs, &Ctl::timeout(timeout))
        .await?;
    if rank == 0 {
        print_header_lines(args, n, transport, &all);
    }
    Ok(())
}

/// Bytes of one rank's device line in the header's allgather (fixed, so that one allgather
/// carries every rank's line to rank 0).
pub(super) const LINE: usize = 160;

/// This rank's device line (`describe`: what follows the host name), padded to `LINE` bytes.
pub(super) fn device_record(rank: usize, describe: &str) -> [u8; LINE] {
    let mine = report::device_line(rank, std::process::id(), &hostname(), describe);
    let mut record = [b' '; LINE];
    let len = mine.len().min(LINE);
    record[..len].copy_from_slice(&mine.as_bytes()[..len]);
    record
}

/// Rank 0's header: the configuration line and every rank's device line (`all`: `n` records
/// of `LINE` bytes, in rank order).
pub(super) fn print_header_lines(args: &BenchArgs, n: usize, transport: &str, all: &[u8]) {
    let lines: Vec<String> = all
        .chunks(LINE)
        .map(|c| String::from_utf8_lossy(c).trim_end().to_string())
        .collect();
    let config = format!(
        "nThread 1 nGpus 1 minBytes {} maxBytes {} step: {}(factor) warmup iters: {} iters: {} agg iters: 1 validation: {} graph: 0",
        args.min_bytes, args.max_bytes, args.step_factor, args.warmup, args.iters, args.check
    );
    println!(
        "# ringrun {} bench: transport {transport}, {} ranks",
        env!("CARGO_PKG_VERSION"),
        n
    );
    print!("{}", report::header(&config, &lines));
}

struct Measure<'a, C> {
    comm: &'a mut C,
    args: &'a BenchArgs,
    send: &'a mut Aligned,
    recv: &'a mut Aligned,
    bytes: usize,
    in_place: bool,
    timeout: Duration,
}

impl<C: BenchComm> Measure<'_, C> {
    async fn once(&mut self) -> Result<()> {
        let ctl = Ctl::timeout(self.timeout);
        let (send, recv) = (
            &self.send.bytes()[..self.bytes],
            &mut self.recv.bytes_mut()[..self.bytes],
        );
        let bufs = if self.in_place {
            Bufs::InPlace(recv)
        } else {
            Bufs::OutOfPlace { send, recv }
        };
        self.comm
            .allreduce_bytes(self.args.dtype, bufs, self.args.op, &ctl)
            .await?;
        Ok(())
    }

    fn fill(&mut self, rank: usize) {
        let data = inputs(
            self.args.dtype,
            self.args.op,
            rank,
            self.bytes / self.args.dtype.size(),
        );
        let target = if self.in_place {
            &mut *self.recv
        } else {
            &mut *self.send
        };
        target.bytes_mut()[..self.bytes].copy_from_slice(data.bytes());
    }

    /// Mean seconds per allreduce, averaged over ranks, and the iteration count used.
    async fn time(&mut self) -> Result<(f64, usize)> {
        let rank = self.comm.rank();
        self.fill(rank);
        let start = Instant::now();
        self.once().await?;
        let iters = match self.args.budget {
            Some(budget) => {
                let mut first = [start.elapsed().as_secs_f64()];
                self.comm
                    .allreduce(&mut first, ReduceOp::Max, &Ctl::timeout(self.timeout))
                    .await?;
                ((budget / first[0].max(1e-9)) as usize).clamp(3, self.args.iters.max(3))
            }
            None => self.args.iters,
        };
        for _ in 1..self.args.warmup {
            self.once().await?;
        }
        self.comm.barrier(&Ctl::timeout(self.timeout)).await?;
        let start = Instant::now();
        for _ in 0..iters {
            self.once().await?;
        }
        let mut mean = [start.elapsed().as_secs_f64() / iters.max(1) as f64];
        self.comm
            .allreduce(&mut mean, ReduceOp::Avg, &Ctl::timeout(self.timeout))
            .await?;
        Ok((mean[0], iters))
    }

    /// Wrong elements over all ranks in one freshly initialised allreduce.
    async fn check(&mut self, rank: usize, n: usize) -> Result<u64> {
        self.fill(rank);
        if !self.in_place {
            self.recv.bytes_mut()[..self.bytes].fill(0);
        }
        self.once().await?;
        let out = &self.recv.bytes()[..self.bytes];
        let mut wrong = [count_wrong(self.args.dtype, self.args.op, n, out) as i64];
        self.comm
            .allreduce(&mut wrong, ReduceOp::Sum, &Ctl::timeout(self.timeout))
            .await?;
        Ok(wrong[0] as u64)
    }
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn json(args: &BenchArgs, n: usize, transport: &str, algo: &str, rows: &[Row]) -> Result<String> {
    let wrong: u64 = rows
        .iter()
        .map(|r| r.out_of_place.nwrong + r.in_place.nwrong)
        .sum();
    let doc = serde_json::json!({
        "config": {
            "nthreads": 1, "ngpus": 1, "minimum_bytes": args.min_bytes, "maximum_bytes": args.max_bytes,
            "step_factor": args.step_factor, "warmup_iters": args.warmup, "iterations": args.iters,
            "aggregated_iterations": 1, "validation": args.check, "graph": 0,
            "blocking_collectives": 1, "per_iter_timing": 0, "parallel_init": 0,
        },
        "ranks": n,
        "transport": transport,
        "algo": algo,
        "results": rows,
        "out_of_bounds": { "count": wrong, "okay": wrong == 0 },
        "average_bus_bandwidth": { "bandwidth": report::avg_bus_bw(rows), "okay": true },
        "errors": [],
    });
    Ok(serde_json::to_string_pretty(&doc)?)
}
