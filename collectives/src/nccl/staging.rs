//! [`CudaStaging`]: pinned host memory and asynchronous copies for the staged fallback
//! ([`Staged`](crate::device::Staged)), for GPUs without NCCL and ranks that share a GPU.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, result,
};

use super::probe::probe_cuda;
use crate::device::{DeviceFault, Staging};

/// Pinned (page-locked) host memory on one context, grown on demand.
pub struct CudaStaging {
    ctx: Arc<CudaContext>,
    host: Option<cudarc::driver::PinnedHostSlice<u8>>,
}

/// A copy in flight: an event recorded after it.
pub struct CudaCopy(CudaEvent);

impl CudaStaging {
    /// Staging for buffers of `ctx`'s device.
    pub fn new(ctx: &Arc<CudaContext>) -> Result<CudaStaging, DeviceFault> {
        probe_cuda().map_err(|e| DeviceFault::local(e.to_string()))?;
        Ok(CudaStaging {
            ctx: ctx.clone(),
            host: None,
        })
    }

    fn copied(&self, stream: &CudaStream) -> Result<CudaCopy, DeviceFault> {
        let event = self.ctx.new_event(None).map_err(cuda)?;
        event.record(stream).map_err(cuda)?;
        Ok(CudaCopy(event))
    }

    fn host_ptr(&mut self, at: usize, len: usize) -> Result<*mut u8, DeviceFault> {
        let host = self
            .host
            .as_mut()
            .filter(|h| h.len() >= at + len)
            .ok_or_else(|| DeviceFault::local("staging area smaller than the copy"))?;
        // Never waits: the slice's own event is never recorded (copies use raw calls).
        let base = host.as_mut_ptr().map_err(cuda)?;
        Ok(base.wrapping_add(at))
    }
}

impl Staging for CudaStaging {
    type Buf = CudaSlice<u8>;
    type Stream = Arc<CudaStream>;
    type Copy = CudaCopy;

    fn reserve(&mut self, bytes: usize) -> Result<(), DeviceFault> {
        if self.host.as_ref().is_some_and(|h| h.len() >= bytes) {
            return Ok(());
        }
        self.host = None;
        // SAFETY: a fresh allocation of `bytes` (at least 1) plain bytes; flags 0 rather than
        // cudarc's default write-combined, which makes host reads of the result very slow.
        let host = unsafe { self.ctx.alloc_pinned_with_flags::<u8>(bytes.max(1), 0) };
        self.host = Some(host.map_err(cuda)?);
        Ok(())
    }

    fn host(&mut self) -> &mut [u8] {
        match self.host.as_mut() {
            Some(h) => h.as_mut_slice().unwrap_or_default(),
            None => &mut [],
        }
    }

    fn download(
        &mut self,
        src: &CudaSlice<u8>,
        src_at: usize,
        host_at: usize,
        len: usize,
        stream: &Arc<CudaStream>,
    ) -> Result<CudaCopy, DeviceFault> {
        if src_at + len > src.len() {
            return Err(DeviceFault::local("copy past the end of the device buffer"));
        }
        let dst = self.host_ptr(host_at, len)?;
        self.ctx.bind_to_thread().map_err(cuda)?;
        let (ptr, guard) = src.device_ptr(stream);
        // SAFETY: `dst..dst+len` lies in the pinned allocation (checked by `host_ptr`), which
        // outlives the copy (it is only freed on drop, which waits for its event, and the
        // staged path reads it only after the copy's event completed); the source range is in
        // bounds (checked above).
        let r = unsafe {
            let dst = std::slice::from_raw_parts_mut(dst, len);
            result::memcpy_dtoh_async(dst, ptr + src_at as u64, stream.cu_stream())
        };
        drop(guard);
        r.map_err(cuda)?;
        self.copied(stream)
    }

    fn upload(
        &mut self,
        dst: &mut CudaSlice<u8>,
        dst_at: usize,
        host_at: usize,
        len: usize,
        stream: &Arc<CudaStream>,
    ) -> Result<CudaCopy, DeviceFault> {
        if dst_at + len > dst.len() {
            return Err(DeviceFault::local("copy past the end of the device buffer"));
        }
        let src = self.host_ptr(host_at, len)?;
        self.ctx.bind_to_thread().map_err(cuda)?;
        let (ptr, guard) = dst.device_ptr_mut(stream);
        // SAFETY: as in `download`, the other way round.
        let r = unsafe {
            let src = std::slice::from_raw_parts(src as *const u8, len);
            result::memcpy_htod_async(ptr + dst_at as u64, src, stream.cu_stream())
        };
        drop(guard);
        r.map_err(cuda)?;
        self.copied(stream)
    }

    fn is_done(&mut self, copy: &mut CudaCopy) -> Result<bool, DeviceFault> {
        copy.0.try_is_complete().map_err(cuda)
    }
}

fn cuda(e: cudarc::driver::DriverError) -> DeviceFault {
    DeviceFault::local(format!("CUDA: {e:?}"))
}
