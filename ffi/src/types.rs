//! Element types, reduce ops, and turning C pointers into Rust slices only after every check
//! that keeps that sound (null, alignment, overflow, overlap).
//!
//! `ringrun_dtype_t` and `ringrun_op_t` are plain integers on purpose: a C caller can pass any
//! value, and an out-of-range value must be `RINGRUN_INVALID_ARGUMENT`, which a Rust enum in
//! the signature could not guarantee (it would be undefined behaviour before our code runs).

use std::ffi::c_void;

use ringrun_collectives::{DType, ReduceOp};

use crate::status::{Fail, invalid};

/// An element type (one of the `RINGRUN_FLOAT32` ... `RINGRUN_INT64` values).
#[allow(non_camel_case_types)]
pub type ringrun_dtype_t = i32;
/// A reduce operation (one of the `RINGRUN_SUM` ... `RINGRUN_AVG` values).
#[allow(non_camel_case_types)]
pub type ringrun_op_t = i32;

/// IEEE 754 binary32 (`float`).
pub const RINGRUN_FLOAT32: ringrun_dtype_t = 0;
/// IEEE 754 binary64 (`double`).
pub const RINGRUN_FLOAT64: ringrun_dtype_t = 1;
/// IEEE 754 binary16, 2-byte aligned.
pub const RINGRUN_FLOAT16: ringrun_dtype_t = 2;
/// bfloat16 (the upper half of a float), 2-byte aligned.
pub const RINGRUN_BFLOAT16: ringrun_dtype_t = 3;
/// `int8_t`.
pub const RINGRUN_INT8: ringrun_dtype_t = 4;
/// `uint8_t`.
pub const RINGRUN_UINT8: ringrun_dtype_t = 5;
/// `int32_t`.
pub const RINGRUN_INT32: ringrun_dtype_t = 6;
/// `int64_t`.
pub const RINGRUN_INT64: ringrun_dtype_t = 7;

/// Sum; integers wrap on overflow.
pub const RINGRUN_SUM: ringrun_op_t = 0;
/// Product; integers wrap on overflow.
pub const RINGRUN_PROD: ringrun_op_t = 1;
/// Minimum (a NaN loses to a number).
pub const RINGRUN_MIN: ringrun_op_t = 2;
/// Maximum (a NaN loses to a number).
pub const RINGRUN_MAX: ringrun_op_t = 3;
/// Sum divided once by the world size (integers truncate toward zero).
pub const RINGRUN_AVG: ringrun_op_t = 4;

/// Decodes a C dtype.
pub fn dtype(code: ringrun_dtype_t) -> Result<DType, Fail> {
    Ok(match code {
        RINGRUN_FLOAT32 => DType::F32,
        RINGRUN_FLOAT64 => DType::F64,
        RINGRUN_FLOAT16 => DType::F16,
        RINGRUN_BFLOAT16 => DType::BF16,
        RINGRUN_INT8 => DType::I8,
        RINGRUN_UINT8 => DType::U8,
        RINGRUN_INT32 => DType::I32,
        RINGRUN_INT64 => DType::I64,
        other => return Err(invalid(format!("unknown dtype {other}"))),
    })
}

/// Decodes a C reduce op.
pub fn op(code: ringrun_op_t) -> Result<ReduceOp, Fail> {
    Ok(match code {
        RINGRUN_SUM => ReduceOp::Sum,
        RINGRUN_PROD => ReduceOp::Prod,
        RINGRUN_MIN => ReduceOp::Min,
        RINGRUN_MAX => ReduceOp::Max,
        RINGRUN_AVG => ReduceOp::Avg,
        other => return Err(invalid(format!("unknown op {other}"))),
    })
}

/// A checked C buffer: `count` elements of `dtype` at `ptr`. NULL is accepted only for an
/// empty buffer.
#[derive(Clone, Copy, Debug)]
pub struct Raw {
    pub ptr: *mut c_void,
    pub count: usize,
    pub bytes: usize,
}

impl Raw {
    /// Checks `ptr`/`count` for `dtype`; `what` names the argument in the error.
    pub fn new(ptr: *const c_void, count: usize, dtype: DType, what: &str) -> Result<Raw, Fail> {
        let bytes = count
            .checked_mul(dtype.size())
            .filter(|b| *b <= isize::MAX as usize)
            .ok_or_else(|| invalid(format!("{what}: {count} elements overflow")))?;
        if ptr.is_null() && count > 0 {
            return Err(invalid(format!("{what} is NULL")));
        }
        // Every dtype's alignment is its size (f16 and bf16: 2).
        if !(ptr as usize).is_multiple_of(dtype.size()) {
            return Err(invalid(format!(
                "{what} ({ptr:p}) is not aligned to {} bytes for {}",
                dtype.size(),
                dtype.nccl_name()
            )));
        }
        let ptr = ptr.cast_mut();
        Ok(Raw { ptr, count, bytes })
    }

    fn range(&self) -> (usize, usize) {
        (self.ptr as usize, self.ptr as usize + self.bytes)
    }

    /// Whether the two buffers share a byte (empty buffers share none).
    pub fn overlaps(&self, other: &Raw) -> bool {
        let ((a0, a1), (b0, b1)) = (self.range(), other.range());
        self.bytes > 0 && other.bytes > 0 && a0 < b1 && b0 < a1
    }

    /// The buffer as a mutable slice.
    ///
    /// # Safety
    /// The caller guarantees (the ABI's contract) that `ptr` points to `count` writable
    /// elements that nothing else accesses during the call; [`Raw::new`] checked null,
    /// alignment and size, and the callers check overlap with the other arguments.
    pub unsafe fn slice_mut<'a, E: ringrun_collectives::Element>(&self) -> &'a mut [E] {
        if self.count == 0 {
            return &mut [];
        }
        // SAFETY: non-null, aligned for E (checked in `new`, E's alignment is its size),
        // `count * size_of::<E>()` fits in isize, exclusive per the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<E>(), self.count) }
    }

    /// The buffer as a shared slice; same contract as [`Raw::slice_mut`], read-only.
    ///
    /// # Safety
    /// As [`Raw::slice_mut`], with `count` readable elements not written during the call.
    pub unsafe fn slice<'a, E: ringrun_collectives::Element>(&self) -> &'a [E] {
        if self.count == 0 {
            return &[];
        }
        // SAFETY: as in `slice_mut`; only read.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<E>().cast_const(), self.count) }
    }
}

/// Runs `$body` with `$E` bound to the Rust element type of `$dtype`.
macro_rules! with_element {
    ($dtype:expr, $E:ident => $body:expr) => {{
        use ringrun_collectives::DType;
        match $dtype {
            DType::F32 => {
                type $E = f32;
                $body
            }
            DType::F64 => {
                type $E = f64;
                $body
            }
            DType::F16 => {
                type $E = half::f16;
                $body
            }
            DType::BF16 => {
                type $E = half::bf16;
                $body
            }
            DType::I8 => {
                type $E = i8;
                $body
            }
            DType::U8 => {
                type $E = u8;
                $body
            }
            DType::I32 => {
                type $E = i32;
                $body
            }
            DType::I64 => {
                type $E = i64;
                $body
            }
        }
    }};
}
pub(crate) use with_element;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_decodes_and_nothing_else() {
        let all: Vec<DType> = (0..8).map(|c| dtype(c).unwrap()).collect();
        for d in DType::ALL {
            assert!(all.contains(&d));
        }
        assert!(dtype(8).is_err() && dtype(-1).is_err());
        for c in 0..5 {
            assert!(op(c).is_ok());
        }
        assert!(op(5).is_err() && op(i32::MIN).is_err());
    }

    #[test]
    fn raw_checks() {
        let buf = [0u64; 4];
        let p = buf.as_ptr().cast::<c_void>();
        assert!(Raw::new(p, 4, DType::F64, "b").is_ok());
        assert!(Raw::new(std::ptr::null(), 0, DType::F64, "b").is_ok());
        assert!(Raw::new(std::ptr::null(), 1, DType::F64, "b").is_err());
        let odd = p.cast::<u8>().wrapping_add(1).cast::<c_void>();
        assert!(Raw::new(odd, 1, DType::F32, "b").is_err());
        assert!(Raw::new(odd, 1, DType::U8, "b").is_ok());
        assert!(Raw::new(p, usize::MAX / 2, DType::F64, "b").is_err());
        let a = Raw::new(p, 2, DType::F64, "a").unwrap();
        let b = Raw::new(p.cast::<u8>().wrapping_add(8).cast(), 2, DType::F64, "b").unwrap();
        let c = Raw::new(p.cast::<u8>().wrapping_add(16).cast(), 2, DType::F64, "c").unwrap();
        assert!(a.overlaps(&b) && !a.overlaps(&c));
    }
}
