//! The NCCL backend (feature `nccl`): [`NcclComm`], a non-blocking NCCL communicator behind the
//! [`DeviceComm`](crate::device::DeviceComm) trait, and [`CudaStaging`], pinned host memory for
//! the staged fallback. CUDA and NCCL are reached through `cudarc` and loaded at run time.
//!
//! `cudarc` panics when a library it needs cannot be loaded (its loader is a `OnceLock` that
//! panics on a miss, and every missing symbol panics at its first call). Every entry point of
//! this module therefore goes through [`probe_cuda`] / [`probe_nccl`] first: they load the
//! libraries themselves, check every symbol this module calls, and turn a miss into
//! [`Unavailable`], whose message names the library. Nothing else in the crate touches cudarc.
//!
//! What cudarc lacks, and how this module copes:
//! - Its safe `nccl::Comm` is blocking only (no `ncclConfig_t`), has no `ncclCommGetAsyncError`
//!   loop, aborts in `Drop` with `expect` and cannot be built from a raw handle, so [`NcclComm`]
//!   uses `cudarc::nccl::sys` directly.
//! - Its NCCL loader looks for `libnccl.so`, `libnccl.so.12` and so on but not `libnccl.so.2`,
//!   NCCL's real soname (all the pip wheel ships). [`probe_nccl`] detects that case and says to
//!   add a `libnccl.so` link.
//! - Its `ncclResult_t` is a Rust enum, so a code newer than its bindings (NCCL > 2.30) would be
//!   undefined behaviour; the 2.30 bindings are used to cover every code known today.

mod comm;
mod pointer;
mod probe;
mod staging;

pub use comm::{NcclComm, NcclPending, UniqueId};
pub use pointer::{is_device_pointer, wait_for_foreign_stream};
pub use probe::{Unavailable, probe_cuda, probe_nccl};
pub use staging::{CudaCopy, CudaStaging};

/// Re-exported so that callers can name streams, contexts and buffers without depending on
/// cudarc themselves (and so get the same version).
pub use cudarc::driver::{CudaContext, CudaSlice, CudaStream};

impl crate::device::DeviceBuffer for CudaSlice<u8> {
    fn len_bytes(&self) -> usize {
        self.len()
    }
}
