//! Element types and the reduce operations over them.

use half::{bf16, f16};

/// The element type of a buffer, as it travels in frame headers and across the C ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DType {
    /// Signed 8-bit integer.
    I8 = 0,
    /// Unsigned 8-bit integer.
    U8 = 1,
    /// Signed 32-bit integer.
    I32 = 2,
    /// Signed 64-bit integer.
    I64 = 3,
    /// IEEE 754 binary16.
    F16 = 4,
    /// bfloat16 (the upper half of an f32).
    BF16 = 5,
    /// IEEE 754 binary32.
    F32 = 6,
    /// IEEE 754 binary64.
    F64 = 7,
}

impl DType {
    /// Every type, in wire-code order.
    pub const ALL: [DType; 8] = [
        DType::I8,
        DType::U8,
        DType::I32,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
    ];

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    /// The name nccl-tests prints for this type (`float`, `half`, `bfloat16`, ...).
    pub const fn nccl_name(self) -> &'static str {
        match self {
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F16 => "half",
            DType::BF16 => "bfloat16",
            DType::F32 => "float",
            DType::F64 => "double",
        }
    }

    /// Whether the type is a floating-point type.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// Decodes a wire code.
    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.get(code as usize).copied()
    }

    /// Parses nccl-tests names and the usual aliases (`f32`, `fp16`, `int`, ...).
    pub fn parse(name: &str) -> Option<DType> {
        Some(match name.to_ascii_lowercase().as_str() {
            "int8" | "i8" | "char" => DType::I8,
            "uint8" | "u8" | "byte" => DType::U8,
            "int32" | "i32" | "int" => DType::I32,
            "int64" | "i64" | "long" => DType::I64,
            "half" | "f16" | "fp16" | "float16" => DType::F16,
            "bfloat16" | "bf16" => DType::BF16,
            "float" | "f32" | "fp32" | "float32" => DType::F32,
            "double" | "f64" | "fp64" | "float64" => DType::F64,
            _ => return None,
        })
    }
}

/// How contributions are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReduceOp {
    /// Sum; integers wrap on overflow, as in NCCL.
    Sum = 0,
    /// Product; integers wrap on overflow.
    Prod = 1,
    /// Minimum; for floats a NaN loses to a number (IEEE `minNum`).
    Min = 2,
    /// Maximum; for floats a NaN loses to a number (IEEE `maxNum`).
    Max = 3,
    /// Sum, divided once by the world size at the end (integers truncate toward zero).
    Avg = 4,
}

impl ReduceOp {
    /// Every op, in wire-code order.
    pub const ALL: [ReduceOp; 5] = [
        ReduceOp::Sum,
        ReduceOp::Prod,
        ReduceOp::Min,
        ReduceOp::Max,
        ReduceOp::Avg,
    ];

    /// The name nccl-tests prints (`sum`, `prod`, ...).
    pub const fn nccl_name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Prod => "prod",
            ReduceOp::Min => "min",
            ReduceOp::Max => "max",
            ReduceOp::Avg => "avg",
        }
    }

    /// Decodes a wire code.
    pub fn from_code(code: u8) -> Option<ReduceOp> {
        ReduceOp::ALL.get(code as usize).copied()
    }

    /// Parses an nccl-tests op name.
    pub fn parse(name: &str) -> Option<ReduceOp> {
        ReduceOp::ALL
            .into_iter()
            .find(|op| op.nccl_name().eq_ignore_ascii_case(name))
    }
}

/// A Rust type that can be reduced: the bridge between typed slices and [`DType`].
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    /// The wire type of `Self`.
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => { $(impl Element for $t { const DTYPE: DType = DType::$d; })* };
}
element!(i8 => I8, u8 => U8, i32 => I32, i64 => I64, f16 => F16, bf16 => BF16, f32 => F32, f64 => F64);
