//! Test support: run every rank of an in-memory mesh on one current-thread runtime, and build
//! inputs whose reductions are exact in every dtype.

#![allow(dead_code, unreachable_pub)]

use std::{future::Future, time::Duration};

use ringrun_collectives::{
    CommConfig, Communicator, Ctl, DType, ReduceOp, bf16, f16,
    transport::mem::{self, MemTransport},
};

pub type Comm = Communicator<MemTransport>;

/// Runs `body(rank, comm)` for every rank of an `n`-rank mesh concurrently; returns the results
/// in rank order. The whole run is bounded by a 60 s timeout.
pub fn run_ranks<F, Fut, R>(n: usize, cfg: CommConfig, body: F) -> Vec<R>
where
    F: Fn(usize, Comm) -> Fut,
    Fut: Future<Output = R>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ranks = mem::mesh(n, 256 * 1024)
            .into_iter()
            .enumerate()
            .map(|(r, t)| body(r, Communicator::new(t, 1, cfg.clone())));
        tokio::time::timeout(
            Duration::from_secs(60),
            futures_util::future::join_all(ranks),
        )
        .await
        .expect("ranks did not finish within 60 s")
    })
}

pub fn ctl() -> Ctl {
    Ctl::timeout(Duration::from_secs(30))
}

/// An 8-byte-aligned byte buffer.
#[derive(Clone)]
pub struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    pub fn zeroed(len: usize) -> Aligned {
        Aligned {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }
}

/// Encodes exact small numbers as `dtype` elements.
pub fn encode(dtype: DType, vals: &[f64]) -> Aligned {
    let mut out = Aligned::zeroed(vals.len() * dtype.size());
    let b = out.bytes_mut();
    for (i, v) in vals.iter().enumerate() {
        let at = &mut b[i * dtype.size()..(i + 1) * dtype.size()];
        match dtype {
            DType::I8 => at.copy_from_slice(&(*v as i64 as i8).to_le_bytes()),
            DType::U8 => at.copy_from_slice(&(*v as i64 as u8).to_le_bytes()),
            DType::I32 => at.copy_from_slice(&(*v as i64 as i32).to_le_bytes()),
            DType::I64 => at.copy_from_slice(&(*v as i64).to_le_bytes()),
            DType::F16 => at.copy_from_slice(&f16::from_f64(*v).to_le_bytes()),
            DType::BF16 => at.copy_from_slice(&bf16::from_f64(*v).to_le_bytes()),
            DType::F32 => at.copy_from_slice(&(*v as f32).to_le_bytes()),
            DType::F64 => at.copy_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

/// Decodes `dtype` elements into f64 (exact for every value these tests use).
pub fn decode(dtype: DType, b: &[u8]) -> Vec<f64> {
    b.chunks(dtype.size())
        .map(|c| match dtype {
            DType::I8 => c[0] as i8 as f64,
            DType::U8 => c[0] as f64,
            DType::I32 => i32::from_le_bytes(c.try_into().unwrap()) as f64,
            DType::I64 => i64::from_le_bytes(c.try_into().unwrap()) as f64,
            DType::F16 => f16::from_le_bytes(c.try_into().unwrap()).to_f64(),
            DType::BF16 => bf16::from_le_bytes(c.try_into().unwrap()).to_f64(),
            DType::F32 => f32::from_le_bytes(c.try_into().unwrap()) as f64,
            DType::F64 => f64::from_le_bytes(c.try_into().unwrap()),
        })
        .collect()
}

/// Rank `r`'s input value at index `i`: small integers whose sums (≤ 4·8), products (≤ 2^8)
/// and extremes are exact in every dtype.
pub fn input(op: ReduceOp, r: usize, i: usize) -> f64 {
    match op {
        ReduceOp::Prod => 1.0 + f64::from((i + r) % 3 == 0),
        ReduceOp::Min | ReduceOp::Max => ((i * 7 + r * 3) % 11) as f64,
        ReduceOp::Sum | ReduceOp::Avg => ((i * 7 + r * 3) % 5) as f64,
    }
}

pub fn inputs(dtype: DType, op: ReduceOp, r: usize, count: usize) -> Aligned {
    encode(
        dtype,
        &(0..count).map(|i| input(op, r, i)).collect::<Vec<_>>(),
    )
}

/// The exact expected reduction at index `i` over `n` ranks, rounded as `dtype` would.
pub fn expected(dtype: DType, op: ReduceOp, n: usize, i: usize) -> f64 {
    let vals = (0..n).map(|r| input(op, r, i));
    let exact = match op {
        ReduceOp::Sum | ReduceOp::Avg => vals.sum::<f64>(),
        ReduceOp::Prod => vals.product(),
        ReduceOp::Min => vals.fold(f64::INFINITY, f64::min),
        ReduceOp::Max => vals.fold(f64::NEG_INFINITY, f64::max),
    };
    let wrapped = match dtype {
        DType::I8 => exact as i64 as i8 as f64,
        _ => exact,
    };
    if op != ReduceOp::Avg {
        return wrapped;
    }
    let n = n as f64;
    match dtype {
        DType::I8 | DType::U8 | DType::I32 | DType::I64 => (wrapped / n).trunc(),
        DType::F16 => f16::from_f32(wrapped as f32 / n as f32).to_f64(),
        DType::BF16 => bf16::from_f32(wrapped as f32 / n as f32).to_f64(),
        DType::F32 => (wrapped as f32 / n as f32) as f64,
        DType::F64 => wrapped / n,
    }
}

/// Asserts a rank's allreduce output element by element.
pub fn check(dtype: DType, op: ReduceOp, n: usize, out: &[u8], what: &str) {
    for (i, got) in decode(dtype, out).into_iter().enumerate() {
        let want = expected(dtype, op, n, i);
        assert_eq!(got, want, "{what}: element {i}: got {got}, want {want}");
    }
}
