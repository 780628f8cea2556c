//! Inputs whose reductions are exactly checkable in every dtype, for tests and `ringrun bench`.
//!
//! Rank `r`'s element `i` is a small integer chosen per op so that sums (at most 4 per rank),
//! products (of ones and twos, at most 2^8) and extremes are exact in every type up to 8 ranks
//! for bf16 and up to 63 ranks for f32 sums; [`expected`] rounds the exact result the way the
//! collective must (integer wrap-around, one final division for `Avg`).

use crate::{DType, ReduceOp, bf16, f16};

/// An 8-byte-aligned byte buffer.
#[derive(Clone)]
pub struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Aligned {
        Aligned {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
    /// The bytes, writable.
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
        ReduceOp::Prod => 1.0 + f64::from((i + r).is_multiple_of(3)),
        ReduceOp::Min | ReduceOp::Max => ((i * 7 + r * 3) % 11) as f64,
        ReduceOp::Sum | ReduceOp::Avg => ((i * 7 + r * 3) % 5) as f64,
    }
}

/// Rank `r`'s whole input of `count` elements.
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

/// How many elements of an allreduce output over `n` ranks differ from [`expected`].
pub fn count_wrong(dtype: DType, op: ReduceOp, n: usize, out: &[u8]) -> usize {
    decode(dtype, out)
        .into_iter()
        .enumerate()
        .filter(|(i, got)| *got != expected(dtype, op, n, *i))
        .count()
}
