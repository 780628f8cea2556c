//! Tensor fusion: a grouped allreduce of many tensors of mixed sizes and dtypes, packed into
//! buckets so that the network sees a few large operations instead of many small ones.
//!
//! The planner ([`plan`]) is pure: it walks the tensors in the caller's order and appends each
//! one to the open bucket of its dtype (one dtype per bucket, since a reduction has one element
//! type); a bucket is closed when the next tensor would take it past `bucket_bytes` (Horovod's
//! fusion threshold). A tensor of at least `bucket_bytes` is not copied at all: it is reduced
//! in place as a bucket of its own. Every rank passes the same list and gets the same plan, so
//! the buckets line up as collective calls.
//!
//! Execution ([`run`]) hands each bucket to the caller's allreduce in one of two forms. Where the
//! caller's algorithm can walk a gather list (the ring), the bucket's tensors are reduced where
//! they lie, as one buffer laid end to end: no copy in, no copy out. Otherwise the bucket is
//! packed into a reusable, 8-byte-aligned fusion buffer, reduced in place and unpacked. Buckets
//! run in plan order, so a failure leaves earlier tensors reduced and later ones untouched (the
//! communicator is poisoned either way, as for any failed call).

use std::ops::Range;

use crate::{
    dtype::{DType, Element},
    error::Result,
};

/// Horovod's default fusion threshold.
pub const DEFAULT_BUCKET_BYTES: usize = 128 << 20;

/// One tensor of a grouped call: its element type and its bytes, reduced in place.
#[derive(Debug)]
pub struct TensorMut<'a> {
    dtype: DType,
    bytes: &'a mut [u8],
}

impl<'a> TensorMut<'a> {
    /// A typed slice as a tensor.
    pub fn new<E: Element>(data: &'a mut [E]) -> Self {
        TensorMut {
            dtype: E::DTYPE,
            bytes: bytemuck::cast_slice_mut(data),
        }
    }

    /// Raw bytes holding whole, aligned elements of `dtype` (checked when the call runs).
    pub fn from_bytes(dtype: DType, bytes: &'a mut [u8]) -> Self {
        TensorMut { dtype, bytes }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The tensor's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }
}

/// One fused allreduce: tensors of one dtype, at consecutive byte ranges of the fusion buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Element type of every member.
    pub dtype: DType,
    /// `(tensor index, byte range in the bucket)`, in the caller's order.
    pub members: Vec<(usize, Range<usize>)>,
    /// Total bytes.
    pub bytes: usize,
}

impl Bucket {
    /// Whether the bucket is one tensor reduced where it lies (no packing).
    pub fn is_direct(&self) -> bool {
        self.members.len() == 1
    }
}

/// Splits tensors `(dtype, bytes)` into buckets of at most `bucket_bytes` (see the module docs).
/// Buckets are ordered by when they close, the last open ones in order of their first tensor.
pub fn plan(tensors: &[(DType, usize)], bucket_bytes: usize) -> Vec<Bucket> {
    let bucket_bytes = bucket_bytes.max(1);
    let mut done = Vec::new();
    // Open buckets, at most one per dtype, in the order they were opened.
    let mut open: Vec<Bucket> = Vec::new();
    for (i, &(dtype, len)) in tensors.iter().enumerate() {
        if len >= bucket_bytes {
            done.push(Bucket {
                dtype,
                members: vec![(i, 0..len)],
                bytes: len,
            });
            continue;
        }
        let slot = open.iter().position(|b| b.dtype == dtype);
        if let Some(s) = slot.filter(|s| open[*s].bytes + len > bucket_bytes) {
            done.push(open.remove(s));
        }
        let slot = open.iter().position(|b| b.dtype == dtype);
        let b = match slot {
            Some(s) => &mut open[s],
            None => {
                open.push(Bucket {
                    dtype,
                    members: Vec::new(),
                    bytes: 0,
                });
                open.last_mut().expect("just pushed")
            }
        };
        b.members.push((i, b.bytes..b.bytes + len));
        b.bytes += len;
    }
    done.extend(open);
    done
}

/// Reusable 8-byte-aligned packing space (kept by the communicator between calls).
#[derive(Default)]
pub(crate) struct FusionBuffer(Vec<u64>);

impl FusionBuffer {
    fn bytes(&mut self, len: usize) -> &mut [u8] {
        let words = len.div_ceil(8);
        if self.0.len() < words {
            self.0.resize(words, 0);
        }
        &mut bytemuck::cast_slice_mut(&mut self.0)[..len]
    }
}

/// One bucket as [`run`] hands it to the allreduce, which reduces it in place.
pub(crate) enum BucketBuf<'a> {
    /// Contiguous: one tensor where it lies, or the members packed into the fusion buffer.
    Whole(&'a mut [u8]),
    /// The members where they lie, to be reduced as one buffer laid end to end.
    Gathered(Vec<&'a mut [u8]>),
}

/// Runs `plan` over `tensors`: `reduce(dtype, bucket)` allreduces one bucket in place. Bucket
/// `i` goes as a gather list where `gather[i]` says the allreduce takes one and every member is
/// aligned for its dtype; otherwise it is packed.
pub(crate) async fn run(
    tensors: &mut [TensorMut<'_>],
    buckets: &[Bucket],
    gather: &[bool],
    space: &mut FusionBuffer,
    mut reduce: impl AsyncFnMut(DType, BucketBuf<'_>) -> Result<()>,
) -> Result<()> {
    for (i, b) in buckets.iter().enumerate() {
        if b.is_direct() {
            let t = &mut tensors[b.members[0].0];
            reduce(b.dtype, BucketBuf::Whole(t.bytes)).await?;
            continue;
        }
        if gather.get(i) == Some(&true) && aligned(tensors, b) {
            reduce(b.dtype, BucketBuf::Gathered(members(tensors, b))).await?;
            continue;
        }
        let packed = space.bytes(b.bytes);
        for (i, r) in &b.members {
            packed[r.clone()].copy_from_slice(tensors[*i].bytes);
        }
        reduce(b.dtype, BucketBuf::Whole(&mut *packed)).await?;
        for (i, r) in &b.members {
            tensors[*i].bytes.copy_from_slice(&packed[r.clone()]);
        }
    }
    Ok(())
}

/// Whether every member of `b` starts on its dtype's alignment (a reduction reads it in place).
fn aligned(tensors: &[TensorMut<'_>], b: &Bucket) -> bool {
    let elem = b.dtype.size();
    b.members
        .iter()
        .all(|(i, _)| (tensors[*i].bytes.as_ptr() as usize).is_multiple_of(elem))
}

/// The member tensors of `b`, in bucket order (which is the caller's order).
fn members<'a>(tensors: &'a mut [TensorMut<'_>], b: &Bucket) -> Vec<&'a mut [u8]> {
    let mut want = b.members.iter().map(|(i, _)| *i).peekable();
    let mut out = Vec::with_capacity(b.members.len());
    for (i, t) in tensors.iter_mut().enumerate() {
        if want.peek() == Some(&i) {
            want.next();
            out.push(&mut *t.bytes);
        }
    }
    debug_assert_eq!(out.len(), b.members.len(), "members are in ascending order");
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn one_dtype_per_bucket_and_big_tensors_alone() {
        let t = [
            (DType::F32, 40),
            (DType::F16, 10),
            (DType::F32, 70),
            (DType::F32, 100),
            (DType::F16, 4),
        ];
        let p = plan(&t, 100);
        let shape: Vec<(DType, Vec<usize>)> = p
            .iter()
            .map(|b| (b.dtype, b.members.iter().map(|m| m.0).collect()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (DType::F32, vec![0]),
                (DType::F32, vec![3]),
                (DType::F16, vec![1, 4]),
                (DType::F32, vec![2]),
            ]
        );
        assert!(p[1].is_direct());
        assert_eq!(p[2].members[1].1, 10..14);
    }

    proptest! {
        #[test]
        fn every_tensor_once_within_limits(
            sizes in proptest::collection::vec((0usize..8, 0usize..300), 0..60),
            limit in 1usize..500,
        ) {
            let t: Vec<(DType, usize)> = sizes.iter().map(|(d, n)| {
                let d = DType::ALL[*d];
                (d, n * d.size())
            }).collect();
            let p = plan(&t, limit);
            let mut seen = vec![0; t.len()];
            for b in &p {
                let mut at = 0;
                for (i, r) in &b.members {
                    seen[*i] += 1;
                    prop_assert_eq!(t[*i].0, b.dtype);
                    prop_assert_eq!(r.clone(), at..at + t[*i].1);
                    at = r.end;
                }
                prop_assert_eq!(at, b.bytes);
                prop_assert!(b.bytes <= limit || b.is_direct());
            }
            prop_assert!(seen.iter().all(|s| *s == 1));
        }
    }
}
