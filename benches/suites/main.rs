//! Criterion suites: reduce kernels (are they near the machine's add bandwidth?), frame
//! header codec, the elastic sampler's cost per step, and what the progress report adds to
//! every collective of a group.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringrun_collectives::{
    DType, ReduceOp,
    frame::{Algo, Collective, FrameKind, Header, OpSig},
    reduce::{Order, reduce},
};
use ringrun_runtime::{
    progress::Progress,
    sampler::{ElasticSampler, SamplerSpec},
};

/// 2 × 128 KiB of operands: both stay in a 1 MiB L2.
const L2_BYTES: usize = 128 * 1024;

fn kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("reduce_l2");
    for dtype in [
        DType::F32,
        DType::F64,
        DType::BF16,
        DType::F16,
        DType::I32,
        DType::I8,
    ] {
        for op in [ReduceOp::Sum, ReduceOp::Max] {
            let mut dst = vec![0u64; L2_BYTES / 8];
            let src = vec![0u64; L2_BYTES / 8];
            // Bytes of the destination written per second, as in peers/limits.sh's `c = a + b`.
            g.throughput(Throughput::Bytes(L2_BYTES as u64));
            g.bench_function(BenchmarkId::new(dtype.nccl_name(), op.nccl_name()), |b| {
                b.iter(|| {
                    let d: &mut [u8] = bytemuck::cast_slice_mut(&mut dst);
                    reduce(
                        dtype,
                        op,
                        Order::DstFirst,
                        black_box(d),
                        bytemuck::cast_slice(&src),
                    );
                })
            });
        }
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    let h = Header {
        kind: FrameKind::Data,
        epoch: 3,
        op_id: 99,
        sig: OpSig {
            coll: Collective::AllReduce,
            dtype: DType::F32,
            op: ReduceOp::Sum,
            algo: Algo::Ring,
            count: 1 << 20,
            root: 0,
        },
        seq: 7,
        len: 4096,
    };
    c.bench_function("header_round_trip", |b| {
        b.iter(|| Header::decode(&black_box(h).encode()).unwrap())
    });
}

/// One rank of 8 taking its share of a global batch of 4,096 shuffled indices, at 10^6 and
/// 10^9 samples (the sampler holds no table either way).
fn sampler(c: &mut Criterion) {
    let mut g = c.benchmark_group("sampler_next_share");
    for num_samples in [1_000_000u64, 1_000_000_000] {
        let spec = SamplerSpec {
            num_samples,
            global_batch: 4096,
            seed: 1,
            shuffle: true,
        };
        let mut s = ElasticSampler::new(spec).expect("valid spec");
        g.bench_with_input(
            BenchmarkId::from_parameter(num_samples),
            &num_samples,
            |b, _| b.iter(|| black_box(s.next_share(3, 8))),
        );
    }
    g.finish();
}

/// What a group adds to each collective for its progress report: two clock reads and one
/// uncontended lock to count the call into its latency histogram.
fn progress(c: &mut Criterion) {
    let p = Progress::new(10);
    c.bench_function("progress_per_collective", |b| {
        b.iter(|| {
            let t = std::time::Instant::now();
            p.collective(0, black_box(8), t.elapsed());
        })
    });
}

criterion_group!(benches, kernels, codec, sampler, progress);
criterion_main!(benches);
