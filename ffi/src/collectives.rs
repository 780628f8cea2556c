//! The collectives: allreduce (one buffer or many), broadcast, allgather, reduce-scatter,
//! all-to-all, barrier.
//!
//! Each entry point checks every pointer before it builds a slice (see [`Raw`]), then calls
//! the group with the matching Rust element type.
//!
//! Device memory: in a device group (`RINGRUN_TRANSPORT=nccl`), allreduce, broadcast,
//! allgather and reduce-scatter accept CUDA device pointers (`cudaMalloc`); CUDA says which memory a pointer is,
//! and device buffers run on the group's NCCL communicator (see `device.rs` and
//! `ringrun_set_stream`). The buffers of one call must all be on the device or all on the host.
//! In a CPU group every pointer is host memory and CUDA is never loaded.

use std::ffi::{c_int, c_void};

use crate::{
    device::{self, Call},
    group::{Global, with_global},
    status::{Fail, guard, invalid},
    types::{Raw, dtype, op, ringrun_dtype_t, ringrun_op_t, with_element},
};

/// Allreduce of `count` elements: `recvbuf` receives the reduction of every rank's `sendbuf`.
/// In place when `sendbuf == recvbuf`; otherwise the two must not overlap. Buffers must be
/// aligned for `dtype`; NULL only with `count == 0`. Every rank must pass the same count,
/// dtype and op (else `RINGRUN_MISMATCH` on every rank). In a device group
/// (`RINGRUN_TRANSPORT=nccl`) both may be CUDA device pointers on this process's GPU: the
/// call then runs on NCCL and returns when the result is on the device (ordered after the
/// stream set with `ringrun_set_stream`); mixing device and host buffers is
/// `RINGRUN_INVALID_ARGUMENT`.
///
/// # Safety
/// `sendbuf` is readable and `recvbuf` writable for `count` elements of `dtype` (host memory,
/// or device memory of this process's GPU), and nothing else touches them during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_allreduce(
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    count: usize,
    dtype: ringrun_dtype_t,
    op: ringrun_op_t,
) -> c_int {
    guard(|| {
        let (dt, op) = (self::dtype(dtype)?, self::op(op)?);
        let recv = Raw::new(recvbuf, count, dt, "recvbuf")?;
        let send = Raw::new(sendbuf, count, dt, "sendbuf")?;
        if send.ptr != recv.ptr && send.overlaps(&recv) {
            return Err(invalid("sendbuf and recvbuf overlap (and are not equal)"));
        }
        with_global(|g| {
            if device::on_device(g, &[send.ptr, recv.ptr])? {
                let (send, recv, bytes) = (send.ptr as usize, recv.ptr as usize, recv.bytes);
                return device::run(
                    g,
                    Call::Allreduce {
                        send,
                        recv,
                        bytes,
                        dtype: dt,
                        op,
                    },
                );
            }
            if send.ptr != recv.ptr && count > 0 {
                // SAFETY: both valid for `bytes` (caller's contract), checked non-overlapping.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        send.ptr.cast::<u8>(),
                        recv.ptr.cast::<u8>(),
                        recv.bytes,
                    )
                };
            }
            with_element!(dt, E => {
                // SAFETY: checked by `Raw::new`; exclusive per the caller's contract.
                let buf = unsafe { recv.slice_mut::<E>() };
                Ok(g.group.allreduce(buf, op)?)
            })
        })
    })
}

/// Allreduce of `n` buffers in place, as one fused operation: `bufs[i]` holds `counts[i]`
/// elements of `dtype`. The buffers must not overlap each other. Host buffers are fused into
/// buckets; device buffers (all of them, or none) are reduced one after another on the group's
/// device side.
///
/// # Safety
/// `bufs` and `counts` point to `n` entries (or are NULL with `n == 0`); each buffer is
/// writable for its count and untouched by other threads during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_allreduce_many(
    bufs: *const *mut c_void,
    counts: *const usize,
    n: usize,
    dtype: ringrun_dtype_t,
    op: ringrun_op_t,
) -> c_int {
    guard(|| {
        let (dt, op) = (self::dtype(dtype)?, self::op(op)?);
        if n > 0 && (bufs.is_null() || counts.is_null()) {
            return Err(invalid("bufs or counts is NULL"));
        }
        if !bufs.is_aligned() || !counts.is_aligned() {
            return Err(invalid("bufs or counts is misaligned"));
        }
        let (ptrs, counts): (&[*mut c_void], &[usize]) = if n == 0 {
            (&[], &[])
        } else {
            // SAFETY: non-null, aligned, `n` entries each per the caller's contract.
            unsafe {
                (
                    std::slice::from_raw_parts(bufs, n),
                    std::slice::from_raw_parts(counts, n),
                )
            }
        };
        let raws = ptrs
            .iter()
            .zip(counts)
            .enumerate()
            .map(|(i, (p, c))| Raw::new(*p, *c, dt, &format!("bufs[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        // Overlapping buffers would alias two `&mut` slices: sort by address, compare
        // neighbours.
        let mut sorted: Vec<&Raw> = raws.iter().filter(|r| r.bytes > 0).collect();
        sorted.sort_by_key(|r| r.ptr as usize);
        if sorted.windows(2).any(|w| w[0].overlaps(w[1])) {
            return Err(invalid("two of the buffers overlap"));
        }
        with_global(|g| {
            if device::on_device(g, ptrs)? {
                // Device buffers: one device allreduce each, in order (NCCL runs them
                // back to back on the group's stream).
                for r in raws.iter().filter(|r| r.bytes > 0) {
                    let (p, bytes) = (r.ptr as usize, r.bytes);
                    let call = Call::Allreduce {
                        send: p,
                        recv: p,
                        bytes,
                        dtype: dt,
                        op,
                    };
                    device::run(g, call)?;
                }
                return Ok(());
            }
            with_element!(dt, E => {
                // SAFETY: each checked by `Raw::new`, pairwise disjoint (checked above),
                // exclusive per the caller's contract.
                let mut slices: Vec<&mut [E]> =
                    raws.iter().map(|r| unsafe { r.slice_mut::<E>() }).collect();
                Ok(g.group.allreduce_many(&mut slices, op)?)
            })
        })
    })
}

/// Broadcast of `count` elements in place from rank `root` to every rank. `buf` may be a CUDA
/// device pointer in a device group (as for `ringrun_allreduce`).
///
/// # Safety
/// `buf` is writable for `count` elements of `dtype` (host, or device memory of this
/// process's GPU) and untouched by others during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_broadcast(
    buf: *mut c_void,
    count: usize,
    dtype: ringrun_dtype_t,
    root: c_int,
) -> c_int {
    guard(|| {
        let dt = self::dtype(dtype)?;
        let raw = Raw::new(buf, count, dt, "buf")?;
        let root = usize::try_from(root).map_err(|_| invalid(format!("root {root} < 0")))?;
        with_global(|g| {
            let size = g.group.size();
            if root >= size {
                return Err(invalid(format!("root {root} is not a rank of {size}")));
            }
            if device::on_device(g, &[raw.ptr])? {
                let (buf, bytes) = (raw.ptr as usize, raw.bytes);
                return device::run(
                    g,
                    Call::Broadcast {
                        buf,
                        bytes,
                        dtype: dt,
                        root,
                    },
                );
            }
            with_element!(dt, E => {
                // SAFETY: checked by `Raw::new`; exclusive per the caller's contract.
                let buf = unsafe { raw.slice_mut::<E>() };
                Ok(g.group.broadcast(buf, root)?)
            })
        })
    })
}

/// Allgather: `recvbuf` (`count * size` elements, size from `ringrun_size` in this epoch)
/// receives every rank's `count` elements of `sendbuf`, in rank order. The buffers must not
/// overlap. Both may be CUDA device pointers in a device group (as for `ringrun_allreduce`).
///
/// # Safety
/// `sendbuf` is readable for `count` elements, `recvbuf` writable for `count * size` (host, or
/// device memory of this process's GPU), both untouched by others during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_allgather(
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    count: usize,
    dtype: ringrun_dtype_t,
) -> c_int {
    guard(|| {
        let dt = self::dtype(dtype)?;
        let send = Raw::new(sendbuf, count, dt, "sendbuf")?;
        with_global(|g| {
            let recv = Raw::new(recvbuf, per_rank(g, count, "count")?, dt, "recvbuf")?;
            if send.overlaps(&recv) {
                return Err(invalid("sendbuf and recvbuf overlap"));
            }
            if device::on_device(g, &[send.ptr, recv.ptr])? {
                let call = Call::Allgather {
                    send: send.ptr as usize,
                    recv: recv.ptr as usize,
                    send_bytes: send.bytes,
                    recv_bytes: recv.bytes,
                    dtype: dt,
                };
                return device::run(g, call);
            }
            with_element!(dt, E => {
                // SAFETY: checked by `Raw::new`, disjoint (checked), per the caller's contract.
                let (s, r) = unsafe { (send.slice::<E>(), recv.slice_mut::<E>()) };
                Ok(g.group.allgather(s, r)?)
            })
        })
    })
}

/// All-to-all with equal blocks, as MPI's `MPI_Alltoall`: `sendbuf` and `recvbuf` each hold
/// `count * size` elements (size from `ringrun_size` in this epoch), `size` blocks of `count`;
/// block `j` of `sendbuf` goes to rank `j`, and block `j` of `recvbuf` comes from rank `j`. The
/// buffers must not overlap, and are host memory (the device side has no all-to-all:
/// `RINGRUN_INVALID_ARGUMENT`). Every rank must pass the same `count` and dtype (else
/// `RINGRUN_MISMATCH` on every rank).
///
/// # Safety
/// `sendbuf` is readable and `recvbuf` writable for `count * size` elements, both untouched by
/// others during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_alltoall(
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    count: usize,
    dtype: ringrun_dtype_t,
) -> c_int {
    guard(|| {
        let dt = self::dtype(dtype)?;
        with_global(|g| {
            let total = per_rank(g, count, "count")?;
            let send = Raw::new(sendbuf, total, dt, "sendbuf")?;
            let recv = Raw::new(recvbuf, total, dt, "recvbuf")?;
            if send.overlaps(&recv) {
                return Err(invalid("sendbuf and recvbuf overlap"));
            }
            if device::on_device(g, &[send.ptr, recv.ptr])? {
                return Err(invalid(
                    "alltoall takes host buffers (no device all-to-all)",
                ));
            }
            with_element!(dt, E => {
                // SAFETY: checked by `Raw::new`, disjoint (checked), per the caller's contract.
                let (s, r) = unsafe { (send.slice::<E>(), recv.slice_mut::<E>()) };
                Ok(g.group.alltoall(s, r)?)
            })
        })
    })
}

/// Reduce-scatter, as NCCL's `ncclReduceScatter`: `sendbuf` holds `recvcount * size` elements
/// (size from `ringrun_size` in this epoch), `size` blocks of `recvcount`; rank `r`'s `recvbuf`
/// receives the reduction with `op` of block `r` over every rank's `sendbuf` (`RINGRUN_AVG`
/// divides once by the size). The buffers must not overlap. Every rank must pass the same
/// `recvcount`, dtype and op (else `RINGRUN_MISMATCH` on every rank). Both may be CUDA device
/// pointers (as for `ringrun_allreduce`).
///
/// # Safety
/// `sendbuf` is readable for `recvcount * size` elements, `recvbuf` writable for `recvcount`
/// (host, or device memory of this process's GPU), both untouched by others during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_reduce_scatter(
    sendbuf: *const c_void,
    recvbuf: *mut c_void,
    recvcount: usize,
    dtype: ringrun_dtype_t,
    op: ringrun_op_t,
) -> c_int {
    guard(|| {
        let (dt, op) = (self::dtype(dtype)?, self::op(op)?);
        let recv = Raw::new(recvbuf, recvcount, dt, "recvbuf")?;
        with_global(|g| {
            let send = Raw::new(sendbuf, per_rank(g, recvcount, "recvcount")?, dt, "sendbuf")?;
            if send.overlaps(&recv) {
                return Err(invalid("sendbuf and recvbuf overlap"));
            }
            if device::on_device(g, &[send.ptr, recv.ptr])? {
                let call = Call::ReduceScatter {
                    send: send.ptr as usize,
                    recv: recv.ptr as usize,
                    send_bytes: send.bytes,
                    recv_bytes: recv.bytes,
                    dtype: dt,
                    op,
                };
                return device::run(g, call);
            }
            with_element!(dt, E => {
                // SAFETY: checked by `Raw::new`, disjoint (checked), per the caller's contract.
                let (s, r) = unsafe { (send.slice::<E>(), recv.slice_mut::<E>()) };
                Ok(g.group.reduce_scatter(s, r, op)?)
            })
        })
    })
}

/// `count` elements for every rank of the epoch: the length of a buffer that holds `size`
/// blocks (`name` is the argument, for the error).
fn per_rank(g: &Global, count: usize, name: &str) -> Result<usize, Fail> {
    count
        .checked_mul(g.group.size())
        .ok_or_else(|| invalid(format!("{name} * size overflows")))
}

/// Blocks until every rank of the epoch has called it.
#[unsafe(no_mangle)]
pub extern "C" fn ringrun_barrier() -> c_int {
    guard(|| with_global(|g| Ok(g.group.barrier()?)))
}
