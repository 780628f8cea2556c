//! Reduce kernels: `dst = dst ⊕ src` over byte buffers of one [`DType`].
//!
//! The loops are written so that the compiler vectorises them (plain zips over slices, no
//! branches in the body); `benches/` checks that f32 sum runs near the machine's add bandwidth.
//! Half-precision types are widened to f32 a block at a time and rounded back after every
//! operation, so a half reduction rounds exactly as a sequence of half operations would.
//!
//! Operand order matters for bitwise reproducibility (NaN payloads, signed zeros in min/max):
//! every kernel takes an [`Order`] so that two ranks combining the same two values in the same
//! logical order get the same bits.

use half::{bf16, f16, slice::HalfFloatSliceExt};

use crate::dtype::{DType, ReduceOp};

/// Which operand is on the left of `⊕`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// `dst = dst ⊕ src`.
    DstFirst,
    /// `dst = src ⊕ dst`.
    SrcFirst,
}

/// Combines `src` into `dst` element-wise. Both must hold whole elements of `dtype`, be equally
/// long and be aligned for it (buffers from typed slices and the crate's scratch always are).
/// `Avg` combines like `Sum`; call [`finish_avg`] once at the end.
pub fn reduce(dtype: DType, op: ReduceOp, order: Order, dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "reduce operands differ in length");
    match dtype {
        DType::I8 => int_kernel::<i8>(op, order, dst, src),
        DType::U8 => int_kernel::<u8>(op, order, dst, src),
        DType::I32 => int_kernel::<i32>(op, order, dst, src),
        DType::I64 => int_kernel::<i64>(op, order, dst, src),
        DType::F32 => float_kernel::<f32>(op, order, cast_mut(dst), cast(src)),
        DType::F64 => float_kernel::<f64>(op, order, cast_mut(dst), cast(src)),
        DType::F16 => half_kernel::<f16>(op, order, cast_mut(dst), cast(src)),
        DType::BF16 => half_kernel::<bf16>(op, order, cast_mut(dst), cast(src)),
    }
}

/// `dst = left ⊕ right` element-wise: [`reduce`] for when the left operand is not the
/// destination (an out-of-place collective reads its input without copying it first).
pub fn reduce_from(dtype: DType, op: ReduceOp, dst: &mut [u8], left: &[u8], right: &[u8]) {
    assert!(
        dst.len() == left.len() && dst.len() == right.len(),
        "reduce operands differ in length"
    );
    match dtype {
        DType::I8 => int_kernel3::<i8>(op, dst, left, right),
        DType::U8 => int_kernel3::<u8>(op, dst, left, right),
        DType::I32 => int_kernel3::<i32>(op, dst, left, right),
        DType::I64 => int_kernel3::<i64>(op, dst, left, right),
        DType::F32 => float_kernel3::<f32>(op, cast_mut(dst), cast(left), cast(right)),
        DType::F64 => float_kernel3::<f64>(op, cast_mut(dst), cast(left), cast(right)),
        DType::F16 | DType::BF16 => {
            // Rare enough in the three-operand form to take two passes.
            dst.copy_from_slice(left);
            reduce(dtype, op, Order::DstFirst, dst, right);
        }
    }
}

/// Divides every element by `n`: the single division of `Avg`.
pub fn finish_avg(dtype: DType, buf: &mut [u8], n: usize) {
    match dtype {
        DType::I8 => cast_mut::<i8>(buf).iter_mut().for_each(|x| *x /= n as i8),
        DType::U8 => cast_mut::<u8>(buf).iter_mut().for_each(|x| *x /= n as u8),
        DType::I32 => cast_mut::<i32>(buf).iter_mut().for_each(|x| *x /= n as i32),
        DType::I64 => cast_mut::<i64>(buf).iter_mut().for_each(|x| *x /= n as i64),
        DType::F32 => cast_mut::<f32>(buf).iter_mut().for_each(|x| *x /= n as f32),
        DType::F64 => cast_mut::<f64>(buf).iter_mut().for_each(|x| *x /= n as f64),
        DType::F16 => half_map::<f16>(buf, |x| x / n as f32),
        DType::BF16 => half_map::<bf16>(buf, |x| x / n as f32),
    }
}

fn cast<T: bytemuck::Pod>(b: &[u8]) -> &[T] {
    bytemuck::cast_slice(b)
}

fn cast_mut<T: bytemuck::Pod>(b: &mut [u8]) -> &mut [T] {
    bytemuck::cast_slice_mut(b)
}

/// Applies `f(left, right)` element-wise with the operands in `order`.
#[inline(always)]
fn zip<T: Copy>(order: Order, dst: &mut [T], src: &[T], f: impl Fn(T, T) -> T) {
    match order {
        Order::DstFirst => dst.iter_mut().zip(src).for_each(|(d, s)| *d = f(*d, *s)),
        Order::SrcFirst => dst.iter_mut().zip(src).for_each(|(d, s)| *d = f(*s, *d)),
    }
}

/// Applies `f(left, right)` element-wise into `dst`.
#[inline(always)]
fn zip3<T: Copy>(dst: &mut [T], left: &[T], right: &[T], f: impl Fn(T, T) -> T) {
    dst.iter_mut()
        .zip(left.iter().zip(right))
        .for_each(|(d, (l, r))| *d = f(*l, *r));
}

trait Int: bytemuck::Pod + Ord {
    fn wadd(self, o: Self) -> Self;
    fn wmul(self, o: Self) -> Self;
}

macro_rules! int {
    ($($t:ty),*) => {$(impl Int for $t {
        #[inline(always)] fn wadd(self, o: Self) -> Self { self.wrapping_add(o) }
        #[inline(always)] fn wmul(self, o: Self) -> Self { self.wrapping_mul(o) }
    })*};
}
int!(i8, u8, i32, i64);

fn int_kernel<T: Int>(op: ReduceOp, order: Order, dst: &mut [u8], src: &[u8]) {
    let (dst, src) = (cast_mut::<T>(dst), cast::<T>(src));
    match op {
        // Integer add, mul, min and max are commutative bit for bit; order is irrelevant.
        ReduceOp::Sum | ReduceOp::Avg => zip(order, dst, src, T::wadd),
        ReduceOp::Prod => zip(order, dst, src, T::wmul),
        ReduceOp::Min => zip(order, dst, src, Ord::min),
        ReduceOp::Max => zip(order, dst, src, Ord::max),
    }
}

fn int_kernel3<T: Int>(op: ReduceOp, dst: &mut [u8], left: &[u8], right: &[u8]) {
    let (dst, l, r) = (cast_mut::<T>(dst), cast::<T>(left), cast::<T>(right));
    match op {
        ReduceOp::Sum | ReduceOp::Avg => zip3(dst, l, r, T::wadd),
        ReduceOp::Prod => zip3(dst, l, r, T::wmul),
        ReduceOp::Min => zip3(dst, l, r, Ord::min),
        ReduceOp::Max => zip3(dst, l, r, Ord::max),
    }
}

trait Float: Copy + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> {
    fn fmin(self, o: Self) -> Self;
    fn fmax(self, o: Self) -> Self;
}

macro_rules! float {
    ($($t:ty),*) => {$(impl Float for $t {
        #[inline(always)] fn fmin(self, o: Self) -> Self { self.min(o) }
        #[inline(always)] fn fmax(self, o: Self) -> Self { self.max(o) }
    })*};
}
float!(f32, f64);

fn float_kernel<T: Float>(op: ReduceOp, order: Order, dst: &mut [T], src: &[T]) {
    match op {
        ReduceOp::Sum | ReduceOp::Avg => zip(order, dst, src, |a, b| a + b),
        ReduceOp::Prod => zip(order, dst, src, |a, b| a * b),
        ReduceOp::Min => zip(order, dst, src, T::fmin),
        ReduceOp::Max => zip(order, dst, src, T::fmax),
    }
}

fn float_kernel3<T: Float>(op: ReduceOp, dst: &mut [T], l: &[T], r: &[T]) {
    match op {
        ReduceOp::Sum | ReduceOp::Avg => zip3(dst, l, r, |a, b| a + b),
        ReduceOp::Prod => zip3(dst, l, r, |a, b| a * b),
        ReduceOp::Min => zip3(dst, l, r, T::fmin),
        ReduceOp::Max => zip3(dst, l, r, T::fmax),
    }
}

/// Elements widened to f32 per block; 256 keeps both blocks in L1.
const HALF_BLOCK: usize = 256;

/// A 16-bit float that converts to and from f32 slices in bulk.
trait Half: bytemuck::Pod {
    fn widen(src: &[Self], dst: &mut [f32]);
    fn narrow(src: &[f32], dst: &mut [Self]);
}

macro_rules! half_impl {
    ($($t:ty),*) => {$(impl Half for $t {
        fn widen(src: &[Self], dst: &mut [f32]) { src.convert_to_f32_slice(dst) }
        fn narrow(src: &[f32], dst: &mut [Self]) { dst.convert_from_f32_slice(src) }
    })*};
}
half_impl!(f16, bf16);

fn half_kernel<T: Half>(op: ReduceOp, order: Order, dst: &mut [T], src: &[T]) {
    let (mut a, mut b) = ([0f32; HALF_BLOCK], [0f32; HALF_BLOCK]);
    for (d, s) in dst.chunks_mut(HALF_BLOCK).zip(src.chunks(HALF_BLOCK)) {
        let (a, b) = (&mut a[..d.len()], &mut b[..d.len()]);
        T::widen(d, a);
        T::widen(s, b);
        float_kernel::<f32>(op, order, a, b);
        T::narrow(a, d);
    }
}

fn half_map<T: Half>(buf: &mut [u8], f: impl Fn(f32) -> f32) {
    let mut a = [0f32; HALF_BLOCK];
    for d in cast_mut::<T>(buf).chunks_mut(HALF_BLOCK) {
        let a = &mut a[..d.len()];
        T::widen(d, a);
        a.iter_mut().for_each(|x| *x = f(*x));
        T::narrow(a, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
        bytemuck::cast_slice(v).to_vec()
    }

    #[test]
    fn f32_ops() {
        let mut d = bytes(&[1.0f32, 5.0, -2.0]);
        reduce(
            DType::F32,
            ReduceOp::Sum,
            Order::DstFirst,
            &mut d,
            &bytes(&[2.0f32, 1.0, 2.0]),
        );
        assert_eq!(cast::<f32>(&d), &[3.0, 6.0, 0.0]);
        reduce(
            DType::F32,
            ReduceOp::Max,
            Order::DstFirst,
            &mut d,
            &bytes(&[4.0f32, 1.0, 2.0]),
        );
        assert_eq!(cast::<f32>(&d), &[4.0, 6.0, 2.0]);
    }

    #[test]
    fn ints_wrap() {
        let mut d = bytes(&[120i8, -128]);
        reduce(
            DType::I8,
            ReduceOp::Sum,
            Order::DstFirst,
            &mut d,
            &bytes(&[10i8, -1]),
        );
        assert_eq!(cast::<i8>(&d), &[-126, 127]);
        let mut d = bytes(&[7i64]);
        reduce(
            DType::I64,
            ReduceOp::Avg,
            Order::SrcFirst,
            &mut d,
            &bytes(&[2i64]),
        );
        finish_avg(DType::I64, &mut d, 2);
        assert_eq!(cast::<i64>(&d), &[4]);
    }

    #[test]
    fn half_rounds_per_operation() {
        // 2048 + 1 is not representable in f16: the sum rounds back to 2048.
        let h = |x: f32| f16::from_f32(x);
        let mut d = bytes(&vec![h(2048.0); 300]);
        reduce(
            DType::F16,
            ReduceOp::Sum,
            Order::DstFirst,
            &mut d,
            &bytes(&vec![h(1.0); 300]),
        );
        assert!(cast::<f16>(&d).iter().all(|x| *x == h(2048.0)));
        let b = |x: f32| bf16::from_f32(x);
        let mut d = bytes(&[b(3.0), b(-1.0)]);
        reduce(
            DType::BF16,
            ReduceOp::Prod,
            Order::DstFirst,
            &mut d,
            &bytes(&[b(2.0), b(4.0)]),
        );
        finish_avg(DType::BF16, &mut d, 2);
        assert_eq!(cast::<bf16>(&d), &[b(3.0), b(-2.0)]);
    }

    #[test]
    fn order_selects_left_operand() {
        // maxNum of +0 and -0 may return either; the order fixes which one on every rank.
        let mut a = bytes(&[0.0f32]);
        let mut b = bytes(&[-0.0f32]);
        reduce(
            DType::F32,
            ReduceOp::Max,
            Order::DstFirst,
            &mut a,
            &bytes(&[-0.0f32]),
        );
        reduce(
            DType::F32,
            ReduceOp::Max,
            Order::SrcFirst,
            &mut b,
            &bytes(&[0.0f32]),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn three_operand_form_matches_the_two_operand_form() {
        for dtype in DType::ALL {
            for op in ReduceOp::ALL {
                let n = 37;
                let a: Vec<u8> = (0..n * dtype.size()).map(|i| (i * 7 % 5) as u8).collect();
                let b: Vec<u8> = (0..n * dtype.size()).map(|i| (i * 3 % 4) as u8).collect();
                let (a, b) = (bytes(&words(&a)), bytes(&words(&b)));
                let (a, b) = (&a[..n * dtype.size()], &b[..n * dtype.size()]);
                let mut two = b.to_vec();
                reduce(dtype, op, Order::SrcFirst, &mut two, a);
                let mut three = vec![0u8; a.len()];
                let mut three_w = words(&three);
                let three_b: &mut [u8] = &mut bytemuck::cast_slice_mut(&mut three_w)[..a.len()];
                reduce_from(dtype, op, three_b, a, b);
                three.copy_from_slice(three_b);
                assert_eq!(two, three, "{dtype:?} {op:?}");
            }
        }
    }

    /// An 8-byte-aligned copy of `b`, so that any dtype can view it.
    fn words(b: &[u8]) -> Vec<u64> {
        let mut w = vec![0u64; b.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut w)[..b.len()].copy_from_slice(b);
        w
    }

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::parse(d.nccl_name()), Some(d));
            assert_eq!(DType::from_code(d as u8), Some(d));
        }
        for op in ReduceOp::ALL {
            assert_eq!(ReduceOp::parse(op.nccl_name()), Some(op));
        }
    }
}
