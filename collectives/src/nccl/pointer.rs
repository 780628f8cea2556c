//! Raw CUDA pointers and streams from foreign callers (the C ABI): is an address device memory,
//! and ordering our stream after the caller's.

use std::{ffi::c_void, sync::Arc};

use cudarc::driver::{CudaStream, sys};

use super::probe::{Unavailable, probe_cuda};
use crate::device::DeviceFault;

/// Whether `ptr` is device memory (`CU_MEMORYTYPE_DEVICE`, as `cudaMalloc` returns). Host memory,
/// pinned or not, and managed memory are not (the host path can read them). Probes CUDA first,
/// so that a machine without the driver gets [`Unavailable`], never a panic.
pub fn is_device_pointer(ptr: usize) -> Result<bool, Unavailable> {
    probe_cuda()?;
    let mut kind: std::ffi::c_uint = 0;
    // SAFETY: the driver is loaded and has the symbol (probe); `kind` is a valid out pointer of
    // the attribute's type (an unsigned int). The call only inspects the address: an address
    // CUDA does not know is answered with an error, which means host memory.
    let r = unsafe {
        sys::cuPointerGetAttribute(
            (&raw mut kind).cast::<c_void>(),
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
            ptr as sys::CUdeviceptr,
        )
    };
    Ok(r == sys::CUresult::CUDA_SUCCESS
        && kind == sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as std::ffi::c_uint)
}

/// Makes `stream` wait (on the device, not the host) for the work the caller enqueued so far on
/// its raw stream `foreign` (a `CUstream` / `cudaStream_t`, 0 for the legacy default stream).
///
/// # Safety
/// `foreign` is 0 or a live stream of `stream`'s context.
pub unsafe fn wait_for_foreign_stream(
    stream: &Arc<CudaStream>,
    foreign: usize,
) -> Result<(), DeviceFault> {
    probe_cuda().map_err(|e| DeviceFault::local(e.to_string()))?;
    let cuda = |e| DeviceFault::local(format!("CUDA: {e:?}"));
    stream.context().bind_to_thread().map_err(cuda)?;
    let event = stream.context().new_event(None).map_err(cuda)?;
    // SAFETY: the event is live (owned here until after the wait is enqueued); `foreign` is a
    // live stream per the caller's contract. Recording and waiting enqueue, they never block.
    unsafe {
        cudarc::driver::result::event::record(event.cu_event(), foreign as sys::CUstream)
            .map_err(cuda)?;
    }
    stream.wait(&event).map_err(cuda)
}
