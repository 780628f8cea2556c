//! Device pointers: when the process's group has a device side (`RINGRUN_DEVICE=cuda`, or
//! `RINGRUN_TRANSPORT=nccl`), the collectives ask CUDA whether their buffers are device memory
//! and, if so, run them on the group's device communicator instead of the host path.
//!
//! A CPU group without the automatic device side never reaches CUDA: [`Global::route`] and
//! [`Global::auto`] are `None` and the host path is exactly what it was; with it
//! ([`on_device`]), the first device pointer gives the group its device side. The routing is a
//! pair of functions ([`DeviceRoute`]) so that the unit tests can drive it with the fake
//! backend on a machine without a GPU.

use std::{ffi::c_void, mem::ManuallyDrop};

use ringrun_collectives::{
    DType, ReduceOp,
    device::DeviceBufs,
    nccl::{CudaSlice, is_device_pointer, wait_for_foreign_stream},
};
use ringrun_runtime::Group;

use crate::{
    group::{Global, with_global},
    status::{Fail, guard, invalid, ringrun_status_t::RINGRUN_INTERNAL},
};

/// One device collective, its buffers as raw device addresses (already checked by `Raw`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// In place when `send == recv`.
    Allreduce {
        send: usize,
        recv: usize,
        bytes: usize,
        dtype: DType,
        op: ReduceOp,
    },
    /// In place.
    Broadcast {
        buf: usize,
        bytes: usize,
        dtype: DType,
        root: usize,
    },
    /// `recv` holds `size` blocks of `send_bytes`.
    Allgather {
        send: usize,
        recv: usize,
        send_bytes: usize,
        recv_bytes: usize,
        dtype: DType,
    },
    /// `send` holds `size` blocks of `recv_bytes`.
    ReduceScatter {
        send: usize,
        recv: usize,
        send_bytes: usize,
        recv_bytes: usize,
        dtype: DType,
        op: ReduceOp,
    },
}

/// How device pointers are recognised and run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceRoute {
    /// Whether an address is device memory.
    pub(crate) classify: fn(usize) -> Result<bool, String>,
    /// Runs a call on the group's device side; the `usize` is the caller's stream (0: none).
    pub(crate) run: fn(&mut Group, usize, Call) -> Result<(), Fail>,
}

impl DeviceRoute {
    /// Through CUDA (`cuPointerGetAttribute`) and the group's NCCL communicator.
    pub(crate) fn cuda() -> DeviceRoute {
        DeviceRoute {
            classify: |p| is_device_pointer(p).map_err(|e| e.to_string()),
            run: run_cuda,
        }
    }
}

/// Whether the call's buffers are on the device; every non-NULL pointer of one call must be on
/// the same side. A device group classifies through its route. A CPU group with an `auto` route
/// classifies where CUDA loads (an address it cannot classify is host memory) and, at the first
/// device pointer, gains its device side: collective, since every member passes device memory
/// to the same call. A CPU group without one never reaches CUDA.
pub(crate) fn on_device(g: &mut Global, ptrs: &[*mut c_void]) -> Result<bool, Fail> {
    if let Some(route) = g.route {
        return classify(route, ptrs, true);
    }
    let Some((route, spec)) = g.auto.clone() else {
        return Ok(false);
    };
    if !classify(route, ptrs, false)? {
        return Ok(false);
    }
    g.group.enable_device(spec)?;
    (g.route, g.auto) = (Some(route), None);
    Ok(true)
}

/// `strict`: a classifier error is an error; otherwise it means host memory.
fn classify(route: DeviceRoute, ptrs: &[*mut c_void], strict: bool) -> Result<bool, Fail> {
    let mut side = None;
    for p in ptrs.iter().filter(|p| !p.is_null()) {
        let dev = match (route.classify)(*p as usize) {
            Ok(d) => d,
            Err(e) if strict => return Err(Fail(RINGRUN_INTERNAL, e)),
            Err(_) => false,
        };
        match side {
            Some(s) if s != dev => {
                return Err(invalid(
                    "the buffers mix device and host memory: pass both on the device or both on the host",
                ));
            }
            _ => side = Some(dev),
        }
    }
    Ok(side == Some(true))
}

/// Runs `call` on the device side of the global group.
pub(crate) fn run(g: &mut Global, call: Call) -> Result<(), Fail> {
    let route = g
        .route
        .ok_or_else(|| Fail(RINGRUN_INTERNAL, "no device side".into()))?;
    (route.run)(&mut g.group, g.stream, call)
}

/// A caller's device allocation as the `CudaSlice` the NCCL backend takes. Never freed by us:
/// [`release`] gives it back without `cuMemFree`, and `ManuallyDrop` keeps a panic from freeing
/// it either.
///
/// # Safety
/// `ptr` is device memory of the group's context, valid for `bytes`, untouched by others during
/// the call (the ABI's contract).
unsafe fn borrow(
    stream: &std::sync::Arc<ringrun_collectives::nccl::CudaStream>,
    ptr: usize,
    bytes: usize,
) -> ManuallyDrop<CudaSlice<u8>> {
    // SAFETY: per this function's contract; the slice is never dropped (ManuallyDrop, then
    // `leak`), so cudarc never frees the caller's memory.
    ManuallyDrop::new(unsafe { stream.upgrade_device_ptr::<u8>(ptr as u64, bytes) })
}

fn release(s: ManuallyDrop<CudaSlice<u8>>) {
    let _ = ManuallyDrop::into_inner(s).leak();
}

fn run_cuda(group: &mut Group, foreign: usize, call: Call) -> Result<(), Fail> {
    let stream = group
        .device_stream::<CudaSlice<u8>>()
        .ok_or_else(|| Fail(RINGRUN_INTERNAL, "the group has no CUDA stream".into()))?;
    if foreign != 0 {
        // SAFETY: `foreign` is the stream the caller passed to `ringrun_set_stream`, live per
        // that function's contract.
        unsafe { wait_for_foreign_stream(&stream, foreign) }
            .map_err(|f| Fail(RINGRUN_INTERNAL, f.detail))?;
    }
    let r = match call {
        Call::Allreduce {
            send,
            recv,
            bytes,
            dtype,
            op,
        } => {
            // SAFETY (both): device memory of `bytes` (classified, checked by `Raw`), per the
            // ABI's contract.
            let mut r = unsafe { borrow(&stream, recv, bytes) };
            let res = if send == recv {
                group.allreduce_device(dtype, DeviceBufs::InPlace(&mut *r), op, None)
            } else {
                let s = unsafe { borrow(&stream, send, bytes) };
                let bufs = DeviceBufs::OutOfPlace {
                    send: &*s,
                    recv: &mut *r,
                };
                let res = group.allreduce_device(dtype, bufs, op, None);
                release(s);
                res
            };
            release(r);
            res
        }
        Call::Broadcast {
            buf,
            bytes,
            dtype,
            root,
        } => {
            // SAFETY: as above.
            let mut b = unsafe { borrow(&stream, buf, bytes) };
            let res = group.broadcast_device(dtype, DeviceBufs::InPlace(&mut *b), root, None);
            release(b);
            res
        }
        Call::Allgather {
            send,
            recv,
            send_bytes,
            recv_bytes,
            dtype,
        } => {
            // SAFETY: as above.
            let (s, mut r) = unsafe {
                (
                    borrow(&stream, send, send_bytes),
                    borrow(&stream, recv, recv_bytes),
                )
            };
            let bufs = DeviceBufs::OutOfPlace {
                send: &*s,
                recv: &mut *r,
            };
            let res = group.allgather_device(dtype, bufs, None);
            release(s);
            release(r);
            res
        }
        Call::ReduceScatter {
            send,
            recv,
            send_bytes,
            recv_bytes,
            dtype,
            op,
        } => {
            // SAFETY: as above.
            let (s, mut r) = unsafe {
                (
                    borrow(&stream, send, send_bytes),
                    borrow(&stream, recv, recv_bytes),
                )
            };
            let bufs = DeviceBufs::OutOfPlace {
                send: &*s,
                recv: &mut *r,
            };
            let res = group.reduce_scatter_device(dtype, bufs, op, None);
            release(s);
            release(r);
            res
        }
    };
    Ok(r?)
}

/// Orders the device collectives after the caller's CUDA stream (`cudaStream_t`): each later
/// call on device buffers first makes the group's stream wait (on the device, through an event;
/// the host does not wait) for the work enqueued on `stream` so far, then returns when the
/// collective finished on the device, so work the caller enqueues afterwards sees the result.
/// NULL (the default) means no ordering: the caller must have finished writing the buffers.
/// Host buffers, and groups without a device side, ignore it.
///
/// # Safety
/// `stream` is NULL or a stream of the device this process's group uses, and stays alive
/// until it is replaced or the group finalised.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_set_stream(stream: *mut c_void) -> std::ffi::c_int {
    guard(|| {
        with_global(|g| {
            g.stream = stream as usize;
            Ok(())
        })
    })
}

#[cfg(test)]
mod tests {
    //! The routing on the fake backend: a one-member group whose device side is the fake, and a
    //! classifier that calls a registered host range "device memory".

    use std::{
        ffi::c_void,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use ringrun_collectives::device::{
        DeviceBufs, DeviceFault,
        fake::{FakeBuf, FakeComm, FakeLog},
    };
    use ringrun_runtime::{
        GroupConfig,
        device::{DeviceBackend, DeviceSpec, UniqueIdBytes},
    };

    use super::*;
    use crate::{
        collectives::{
            ringrun_allgather, ringrun_allreduce, ringrun_broadcast, ringrun_reduce_scatter,
        },
        status::ringrun_status_t::*,
        types::{RINGRUN_AVG, RINGRUN_FLOAT32, RINGRUN_SUM},
    };

    /// Host ranges the fake classifier calls device memory.
    static DEVICE: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
    /// Calls that reached the fake device path, with the stream they saw.
    static RUNS: Mutex<Vec<(Call, usize)>> = Mutex::new(Vec::new());
    static LOGS: Mutex<Vec<Arc<Mutex<FakeLog>>>> = Mutex::new(Vec::new());

    struct Fake;

    impl DeviceBackend for Fake {
        type Comm = FakeComm;
        fn describe(&self) -> String {
            "fake".into()
        }
        fn unique_id(&mut self) -> Result<UniqueIdBytes, DeviceFault> {
            Ok([7; 128])
        }
        fn create(
            &mut self,
            _: &UniqueIdBytes,
            rank: usize,
            size: usize,
            _: u64,
        ) -> Result<FakeComm, DeviceFault> {
            let c = FakeComm::new(rank, size, []);
            LOGS.lock().unwrap().push(c.log());
            Ok(c)
        }
        fn stream(&self) -> &() {
            &()
        }
    }

    fn fake_classify(p: usize) -> Result<bool, String> {
        Ok(DEVICE
            .lock()
            .unwrap()
            .iter()
            .any(|(a, n)| (*a..a + n).contains(&p)))
    }

    /// The "device" memory is host memory here: copied into a `FakeBuf`, run on the group's
    /// fake communicator, copied back (a group of one: the result is the input).
    fn fake_run(group: &mut Group, stream: usize, call: Call) -> Result<(), Fail> {
        RUNS.lock().unwrap().push((call, stream));
        // SAFETY: the test's own live buffers.
        let bytes = |p: usize, n: usize| unsafe { std::slice::from_raw_parts_mut(p as *mut u8, n) };
        match call {
            Call::Allreduce {
                send,
                recv,
                bytes: n,
                dtype,
                op,
            } => {
                let mut b = FakeBuf(bytes(send, n).to_vec());
                group.allreduce_device(dtype, DeviceBufs::InPlace(&mut b), op, None)?;
                bytes(recv, n).copy_from_slice(&b.0);
            }
            Call::Broadcast {
                buf,
                bytes: n,
                dtype,
                root,
            } => {
                let mut b = FakeBuf(bytes(buf, n).to_vec());
                group.broadcast_device(dtype, DeviceBufs::InPlace(&mut b), root, None)?;
            }
            Call::Allgather {
                send,
                recv,
                send_bytes,
                recv_bytes,
                dtype,
            } => {
                let s = FakeBuf(bytes(send, send_bytes).to_vec());
                let mut r = FakeBuf(vec![0; recv_bytes]);
                let bufs = DeviceBufs::OutOfPlace {
                    send: &s,
                    recv: &mut r,
                };
                group.allgather_device(dtype, bufs, None)?;
                bytes(recv, recv_bytes).copy_from_slice(&s.0);
            }
            Call::ReduceScatter {
                send,
                recv,
                send_bytes,
                recv_bytes,
                dtype,
                op,
            } => {
                let s = FakeBuf(bytes(send, send_bytes).to_vec());
                let mut r = FakeBuf(vec![0; recv_bytes]);
                let bufs = DeviceBufs::OutOfPlace {
                    send: &s,
                    recv: &mut r,
                };
                group.reduce_scatter_device(dtype, bufs, op, None)?;
                bytes(recv, recv_bytes).copy_from_slice(&s.0);
            }
        }
        Ok(())
    }

    fn config(node: u64) -> GroupConfig {
        let mut c = GroupConfig::local(node, "ffi-device-test-secret-0123");
        c.initial_wait = Duration::from_millis(100);
        c
    }

    fn status(code: std::ffi::c_int) -> crate::status::ringrun_status_t {
        [
            RINGRUN_OK,
            RINGRUN_MEMBERSHIP_CHANGED,
            RINGRUN_PEER_LOST,
            RINGRUN_TIMEOUT,
            RINGRUN_INVALID_ARGUMENT,
            RINGRUN_NOT_INITIALIZED,
            RINGRUN_INTERNAL,
        ][code as usize]
    }

    /// One test, because the ABI's group is process-wide.
    #[test]
    fn device_pointers_are_routed_to_the_device_side_and_host_pointers_are_not() {
        // A CPU group: no route, so no pointer is ever classified (CUDA is never loaded).
        crate::group::join(Ok(config(1))).unwrap();
        assert!(with_global(|g| Ok(g.route.is_none())).unwrap());
        let mut v = vec![1.0f32; 8];
        let p = v.as_mut_ptr().cast::<c_void>();
        // SAFETY: a live buffer of 8 floats.
        assert_eq!(
            status(unsafe { ringrun_allreduce(p, p, 8, RINGRUN_FLOAT32, RINGRUN_SUM) }),
            RINGRUN_OK
        );
        assert_eq!(crate::group::ringrun_finalize(), 0);

        // A device group on the fake, with the fake classifier.
        let mut c = config(2);
        c.device = Some(DeviceSpec::custom("fake", |_: &GroupConfig| Ok(Fake)));
        crate::group::join(Ok(c)).unwrap();
        with_global(|g| {
            assert!(g.route.is_some(), "a device group routes");
            g.route = Some(DeviceRoute {
                classify: fake_classify,
                run: fake_run,
            });
            Ok(())
        })
        .unwrap();
        let log = LOGS.lock().unwrap().last().unwrap().clone();

        // Host buffers still take the host path.
        let mut host = vec![2.0f32; 8];
        let hp = host.as_mut_ptr().cast::<c_void>();
        // SAFETY: live buffers of the stated sizes, here and below.
        assert_eq!(
            status(unsafe { ringrun_allreduce(hp, hp, 8, RINGRUN_FLOAT32, RINGRUN_SUM) }),
            RINGRUN_OK
        );
        assert!(RUNS.lock().unwrap().is_empty());
        assert!(log.lock().unwrap().enqueued.is_empty());

        // "Device" buffers go to the device side, out of place and with the caller's stream.
        let mut dsend = vec![3.0f32; 8];
        let mut drecv = vec![0.0f32; 8];
        let (ds, dr) = (
            dsend.as_mut_ptr().cast::<c_void>(),
            drecv.as_mut_ptr().cast::<c_void>(),
        );
        DEVICE
            .lock()
            .unwrap()
            .extend([(ds as usize, 32), (dr as usize, 32)]);
        // SAFETY: any address: it is only stored.
        assert_eq!(
            status(unsafe { ringrun_set_stream(0x5000 as *mut c_void) }),
            RINGRUN_OK
        );
        assert_eq!(
            status(unsafe { ringrun_allreduce(ds, dr, 8, RINGRUN_FLOAT32, RINGRUN_SUM) }),
            RINGRUN_OK
        );
        assert_eq!(drecv, [3.0; 8], "a group of one: the sum is the input");
        let runs = RUNS.lock().unwrap().clone();
        assert_eq!(
            runs,
            [(
                Call::Allreduce {
                    send: ds as usize,
                    recv: dr as usize,
                    bytes: 32,
                    dtype: DType::F32,
                    op: ReduceOp::Sum
                },
                0x5000
            )]
        );
        assert_eq!(
            status(unsafe { ringrun_broadcast(dr, 8, RINGRUN_FLOAT32, 0) }),
            RINGRUN_OK
        );
        assert_eq!(
            status(unsafe { ringrun_allgather(ds, dr, 8, RINGRUN_FLOAT32) }),
            RINGRUN_OK
        );
        assert_eq!(
            status(unsafe { ringrun_reduce_scatter(ds, dr, 8, RINGRUN_FLOAT32, RINGRUN_AVG) }),
            RINGRUN_OK
        );
        assert_eq!(
            RUNS.lock().unwrap().last().map(|r| r.0),
            Some(Call::ReduceScatter {
                send: ds as usize,
                recv: dr as usize,
                send_bytes: 32,
                recv_bytes: 32,
                dtype: DType::F32,
                op: ReduceOp::Avg
            })
        );
        assert_eq!(
            log.lock().unwrap().enqueued,
            ["allreduce", "broadcast", "allgather", "reduce_scatter"]
        );
        // Mixed host and device buffers are refused before anything runs.
        assert_eq!(
            status(unsafe { ringrun_allreduce(hp, dr, 8, RINGRUN_FLOAT32, RINGRUN_SUM) }),
            RINGRUN_INVALID_ARGUMENT
        );
        assert_eq!(
            status(unsafe { ringrun_reduce_scatter(ds, hp, 8, RINGRUN_FLOAT32, RINGRUN_SUM) }),
            RINGRUN_INVALID_ARGUMENT
        );
        assert_eq!(log.lock().unwrap().enqueued.len(), 4);
        assert_eq!(crate::group::ringrun_finalize(), 0);

        // A CPU group in auto mode: host pointers stay on the host path and add nothing; the
        // first device pointer adds the device side, and it stays.
        crate::group::join(Ok(config(3))).unwrap();
        with_global(|g| {
            assert!(g.auto.is_some(), "auto unless RINGRUN_DEVICE=cpu");
            let spec = DeviceSpec::custom("fake", |_: &GroupConfig| Ok(Fake));
            let route = DeviceRoute {
                classify: fake_classify,
                run: fake_run,
            };
            g.auto = Some((route, spec));
            Ok(())
        })
        .unwrap();
        let made = LOGS.lock().unwrap().len();
        assert_eq!(
            status(unsafe { ringrun_allreduce(hp, hp, 8, RINGRUN_FLOAT32, RINGRUN_SUM) }),
            RINGRUN_OK
        );
        assert!(with_global(|g| Ok(g.group.device().is_none())).unwrap());
        assert_eq!(
            status(unsafe { ringrun_allreduce(ds, dr, 8, RINGRUN_FLOAT32, RINGRUN_SUM) }),
            RINGRUN_OK
        );
        assert_eq!(LOGS.lock().unwrap().len(), made + 1, "one communicator");
        let log = LOGS.lock().unwrap().last().unwrap().clone();
        assert_eq!(log.lock().unwrap().enqueued, ["allreduce"]);
        with_global(|g| {
            assert_eq!(g.group.device().as_deref(), Some("fake"));
            assert!(g.route.is_some() && g.auto.is_none());
            Ok(())
        })
        .unwrap();
        assert_eq!(crate::group::ringrun_finalize(), 0);
    }
}
