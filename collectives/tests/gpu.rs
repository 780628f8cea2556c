//! GPU tests of the NCCL backend and the staged fallback. Each one prints why it skipped and
//! passes when the machine lacks what it needs (no driver, no NCCL, too few GPUs), so CI without
//! GPUs runs them as no-ops; on a GPU runner they run for real.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ringrun_collectives::{
    CollectiveError, CommConfig, Communicator, Ctl, DType, ReduceOp,
    device::{DeviceBufs, DeviceCommunicator, Staged, WatchConfig},
    nccl::{CudaContext, CudaStaging, NcclComm, UniqueId, probe_cuda, probe_nccl},
    testdata::{count_wrong, inputs},
    transport::mem,
};

/// The number of GPUs, or `None` after printing why the test skips.
fn gpus(need: usize, nccl: bool) -> Option<usize> {
    let n = match probe_cuda() {
        Ok(n) => n,
        Err(e) => {
            println!("skipped: no CUDA device ({e})");
            return None;
        }
    };
    if nccl && let Err(e) = probe_nccl() {
        println!("skipped: no NCCL ({e})");
        return None;
    }
    if n < need {
        println!("skipped: {need} GPUs needed, {n} found");
        return None;
    }
    Some(n)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Two ranks on one GPU (which NCCL refuses), staged through pinned memory.
#[test]
fn staged_allreduce_two_ranks_on_one_gpu() {
    if gpus(1, false).is_none() {
        return;
    }
    let (dt, op, count) = (DType::F32, ReduceOp::Sum, 1 << 16);
    let ranks: Vec<_> = mem::mesh(2, 1 << 20)
        .into_iter()
        .enumerate()
        .map(|(rank, t)| {
            std::thread::spawn(move || {
                let ctx = CudaContext::new(0).unwrap();
                let stream = ctx.new_stream().unwrap();
                let mut buf = stream
                    .clone_htod(inputs(dt, op, rank, count).bytes())
                    .unwrap();
                let comm = Communicator::new(t, 0, CommConfig::default());
                let mut s = Staged::new(comm, CudaStaging::new(&ctx).unwrap());
                let ctl = Ctl::timeout(Duration::from_secs(30));
                block_on(s.allreduce(dt, DeviceBufs::InPlace(&mut buf), op, &stream, &ctl))
                    .unwrap();
                stream.clone_dtoh(&buf).unwrap()
            })
        })
        .collect();
    for r in ranks {
        assert_eq!(count_wrong(dt, op, 2, &r.join().unwrap()), 0);
    }
}

/// Rank threads on GPUs 0 and 1 sharing one NCCL unique id.
fn nccl_pair<F>(f: F) -> Vec<Result<Vec<u8>, CollectiveError>>
where
    F: Fn(
            usize,
            Arc<CudaContext>,
            DeviceCommunicator<NcclComm>,
        ) -> Result<Vec<u8>, CollectiveError>
        + Send
        + Sync
        + Copy
        + 'static,
{
    let id = UniqueId::new().unwrap();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            std::thread::spawn(move || {
                let ctx = CudaContext::new(rank).unwrap();
                let raw = NcclComm::init(&ctx, &id, rank, 2).unwrap();
                let mut comm = DeviceCommunicator::new(raw, 0, WatchConfig::default());
                block_on(comm.ready(&Ctl::timeout(Duration::from_secs(60))))?;
                f(rank, ctx, comm)
            })
        })
        .collect();
    ranks.into_iter().map(|r| r.join().unwrap()).collect()
}

#[test]
fn nccl_allreduce_two_ranks() {
    if gpus(2, true).is_none() {
        return;
    }
    let (dt, op, count) = (DType::F32, ReduceOp::Sum, 1 << 20);
    let outs = nccl_pair(move |rank, ctx, mut comm| {
        let stream = ctx.new_stream().unwrap();
        let mut buf = stream
            .clone_htod(inputs(dt, op, rank, count).bytes())
            .unwrap();
        let ctl = Ctl::timeout(Duration::from_secs(30));
        block_on(comm.allreduce(dt, DeviceBufs::InPlace(&mut buf), op, &stream, &ctl))?;
        block_on(comm.close(&ctl))?;
        Ok(stream.clone_dtoh(&buf).unwrap())
    });
    for out in outs {
        assert_eq!(count_wrong(dt, op, 2, &out.unwrap()), 0);
    }
}

/// Rank 1 dies (its communicator is aborted, as a SIGKILL would leave it) before the collective:
/// rank 0 must get an error within its deadline plus the abort grace, never hang.
#[test]
fn nccl_abort_on_a_killed_rank() {
    if gpus(2, true).is_none() {
        return;
    }
    let deadline = Duration::from_secs(3);
    let grace = WatchConfig::default().abort_grace;
    let outs = nccl_pair(move |rank, ctx, mut comm| {
        if rank == 1 {
            drop(comm); // aborts without taking part
            return Ok(vec![]);
        }
        let stream = ctx.new_stream().unwrap();
        let mut buf = stream.alloc_zeros::<u8>(1 << 24).unwrap();
        let t0 = Instant::now();
        let ctl = Ctl::timeout(deadline);
        let r = block_on(comm.allreduce(
            DType::F32,
            DeviceBufs::InPlace(&mut buf),
            ReduceOp::Sum,
            &stream,
            &ctl,
        ));
        assert!(t0.elapsed() < deadline + grace + Duration::from_secs(1));
        if comm.leaked() {
            std::mem::forget(buf); // the device may still write it
        }
        r.map(|()| vec![])
    });
    let err = outs[0].as_ref().unwrap_err();
    assert!(
        matches!(
            err,
            CollectiveError::Timeout { .. }
                | CollectiveError::Aborted { .. }
                | CollectiveError::PeerLost { .. }
        ),
        "{err:?}"
    );
}
