//! `ringrun bench --fusion COUNTxBYTES,...`: a grouped allreduce of many tensors (fused into
//! buckets) beside one allreduce of their total size, the cost fusion is meant to approach.
//! The two calls alternate, iteration by iteration, so that on a shared machine both see the
//! same load and the same cache state (each evicts the other's buffers, as a training step's
//! compute would); the ratio is the figure to read.

use std::time::{Duration, Instant};

use anyhow::Result;
use ringrun_collectives::{
    Bufs, Ctl, ReduceOp, TensorMut,
    fusion::plan,
    testdata::{Aligned, count_wrong, inputs},
};

use super::{BenchArgs, comm::BenchComm, parse_size, sweep::print_header};

/// `--fusion`: `(count, bytes)` groups of tensors.
#[derive(Clone, Debug)]
pub(crate) struct Spec(Vec<(usize, usize)>);

/// Parses `COUNTxBYTES[,COUNTxBYTES...]` (sizes take K, M, G suffixes).
pub(super) fn parse_spec(s: &str) -> Result<Spec, String> {
    s.split(',')
        .map(|part| {
            let (count, bytes) = part
                .split_once(['x', 'X'])
                .ok_or_else(|| format!("{part:?} is not COUNTxBYTES"))?;
            let count = count
                .trim()
                .parse()
                .map_err(|_| format!("bad count in {part:?}"))?;
            Ok((count, parse_size(bytes)?))
        })
        .collect::<Result<_, String>>()
        .map(Spec)
}

/// Times the grouped and the single allreduce on this rank (rank 0 prints); returns the number
/// of wrong elements over all ranks in a checked grouped call.
pub(super) async fn run<C: BenchComm>(
    mut comm: C,
    args: &BenchArgs,
    transport: &str,
    spec: &Spec,
) -> Result<u64> {
    let (rank, n) = (comm.rank(), comm.size());
    let (dtype, op) = (args.dtype, args.op);
    let timeout = Duration::from_secs(args.timeout);
    print_header(&mut comm, args, transport, timeout).await?;
    let elem = dtype.size();
    let lens: Vec<usize> = spec
        .0
        .iter()
        .flat_map(|(count, bytes)| std::iter::repeat_n(bytes / elem, *count))
        .collect();
    let total: usize = lens.iter().sum::<usize>() * elem;
    let mut tensors: Vec<Aligned> = lens.iter().map(|l| inputs(dtype, op, rank, *l)).collect();
    let mut single = Aligned::zeroed(total);
    let ctl = || Ctl::timeout(timeout);

    // Alternate the two calls, so that both see the same load on a shared machine.
    let mut times = [0.0f64; 2];
    let iters = args.iters.max(1);
    for i in 0..args.warmup + iters {
        let started = Instant::now();
        let mut views: Vec<TensorMut<'_>> = tensors
            .iter_mut()
            .map(|t| TensorMut::from_bytes(dtype, t.bytes_mut()))
            .collect();
        comm.allreduce_grouped(&mut views, op, &ctl()).await?;
        let grouped = started.elapsed().as_secs_f64();
        let started = Instant::now();
        comm.allreduce_bytes(dtype, Bufs::InPlace(single.bytes_mut()), op, &ctl())
            .await?;
        let one = started.elapsed().as_secs_f64();
        if i >= args.warmup {
            times[0] += grouped / iters as f64;
            times[1] += one / iters as f64;
        }
    }
    comm.allreduce(&mut times, ReduceOp::Avg, &ctl()).await?;

    // Check one fresh grouped call.
    let mut tensors: Vec<Aligned> = lens.iter().map(|l| inputs(dtype, op, rank, *l)).collect();
    let mut views: Vec<TensorMut<'_>> = tensors
        .iter_mut()
        .map(|t| TensorMut::from_bytes(dtype, t.bytes_mut()))
        .collect();
    comm.allreduce_grouped(&mut views, op, &ctl()).await?;
    let wrong: usize = tensors
        .iter()
        .map(|t| count_wrong(dtype, op, n, t.bytes()))
        .sum();
    let mut wrong = [wrong as i64];
    comm.allreduce(&mut wrong, ReduceOp::Sum, &ctl()).await?;
    comm.close(timeout).await;

    if rank == 0 {
        let shapes: Vec<_> = lens.iter().map(|l| (dtype, l * elem)).collect();
        let fusion_bytes = args
            .fusion_bytes
            .unwrap_or(ringrun_collectives::fusion::DEFAULT_BUCKET_BYTES);
        let buckets = plan(&shapes, fusion_bytes).len();
        let [g, o] = times.map(|t| t * 1e6);
        println!(
            "# fusion: {} tensors, {total} B of {} in {buckets} bucket(s) of at most {fusion_bytes} B",
            lens.len(),
            dtype.nccl_name()
        );
        println!(
            "# grouped allreduce {g:.1} us, one allreduce of {total} B {o:.1} us: ratio {:.2}, #wrong {}",
            g / o,
            wrong[0]
        );
    }
    Ok(wrong[0] as u64)
}
