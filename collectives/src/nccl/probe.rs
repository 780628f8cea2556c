//! Whether CUDA and NCCL can be used here, answered without a panic.

use std::sync::OnceLock;

use cudarc::{driver, nccl::sys as nccl};

/// Oldest NCCL with non-blocking communicators, `ncclCommFinalize` and `ncclCommGetAsyncError`
/// reporting in-progress state (2.14.0, in NCCL's `X*10000 + Y*100 + Z` code).
const NCCL_MIN_VERSION: i32 = 21400;

/// Every driver function cudarc calls on our behalf (context, stream, event, memory, copies).
const CUDA_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetAttribute",
    "cuDevicePrimaryCtxRetain",
    "cuCtxSetCurrent",
    "cuStreamCreate",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventQuery",
    "cuMemHostAlloc",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyHtoDAsync_v2",
    "cuPointerGetAttribute",
    "cuStreamWaitEvent",
];

/// Every NCCL function this module calls.
const NCCL_SYMBOLS: &[&str] = &[
    "ncclGetVersion",
    "ncclGetUniqueId",
    "ncclGetErrorString",
    "ncclGetLastError",
    "ncclCommInitRankConfig",
    "ncclCommGetAsyncError",
    "ncclCommAbort",
    "ncclCommFinalize",
    "ncclCommDestroy",
    "ncclAllReduce",
    "ncclBroadcast",
    "ncclAllGather",
    "ncclReduceScatter",
];

/// Why the GPU backend cannot run on this machine.
/// State: nothing was created. Recovery: install the named library, or use the CPU path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// A shared library could not be loaded.
    #[error("{name} not found{}", hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    Library {
        /// The library, as the dynamic loader would name it.
        name: &'static str,
        /// What to do about it, when there is more to say.
        hint: Option<&'static str>,
    },
    /// The library loaded but lacks a function this backend calls (too old).
    #[error("{library} lacks {symbol} (too old for ringrun's GPU backend)")]
    Symbol {
        /// The library.
        library: &'static str,
        /// The missing function.
        symbol: &'static str,
    },
    /// NCCL is older than the non-blocking API this backend needs.
    #[error("NCCL {found} is too old: non-blocking communicators need NCCL 2.14 or newer")]
    NcclTooOld {
        /// The version found, as NCCL prints it.
        found: String,
    },
    /// The driver loaded but there is no usable device.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
}

/// Loads the CUDA driver (`libcuda.so.1`), checks its functions and counts devices.
/// Cached: the answer is computed once per process.
pub fn probe_cuda() -> Result<usize, Unavailable> {
    static ONCE: OnceLock<Result<usize, Unavailable>> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: only tries to dlopen the driver's well-known names; loading the NVIDIA driver
        // library runs its initialisers, which is what every CUDA program does.
        if !unsafe { driver::sys::is_culib_present() } {
            return Err(Unavailable::Library {
                name: "libcuda.so.1",
                hint: Some("no NVIDIA driver on this machine; use the CPU transports"),
            });
        }
        // SAFETY: `is_culib_present` just loaded one of the names `culib` tries, so it cannot
        // panic; looking a symbol up does not call it.
        let lib = unsafe { driver::sys::culib() };
        for &symbol in CUDA_SYMBOLS {
            // SAFETY: the symbol is only looked up, as an untyped pointer, never called.
            if unsafe { lib.get::<*const ()>(symbol.as_bytes()) }.is_err() {
                return Err(Unavailable::Symbol {
                    library: "libcuda.so.1",
                    symbol,
                });
            }
        }
        // Every symbol `init` and `device_count` reach was checked above, so these cannot
        // panic; `catch_unwind` is the last line should cudarc reach for another one.
        let count = std::panic::catch_unwind(|| {
            driver::result::init()?;
            driver::CudaContext::device_count()
        })
        .map_err(|_| Unavailable::NoDevice("the CUDA driver panicked in cuInit".into()))?;
        match count {
            Ok(n) if n > 0 => Ok(n as usize),
            Ok(_) => Err(Unavailable::NoDevice("the driver reports 0 devices".into())),
            Err(e) => Err(Unavailable::NoDevice(format!("cuInit failed: {e:?}"))),
        }
    })
    .clone()
}

/// Loads NCCL, checks its functions and version; returns the version code (e.g. 22703).
/// Cached: the answer is computed once per process.
pub fn probe_nccl() -> Result<i32, Unavailable> {
    static ONCE: OnceLock<Result<i32, Unavailable>> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: as in `probe_cuda`: loading NCCL runs only its own initialisers.
        if !unsafe { nccl::is_culib_present() } {
            // SAFETY: as above; the handle is dropped at once.
            let soname_only = unsafe { libloading::Library::new("libnccl.so.2") }.is_ok();
            return Err(Unavailable::Library {
                name: "libnccl.so",
                hint: Some(if soname_only {
                    "libnccl.so.2 is installed, but cudarc loads only libnccl.so: link libnccl.so to it in a directory on LD_LIBRARY_PATH"
                } else {
                    "install NCCL 2.14 or newer, or use --transport tcp to stage through host memory"
                }),
            });
        }
        // SAFETY: `is_culib_present` succeeded with the same candidate names, so no panic.
        let lib = unsafe { nccl::culib() };
        for &symbol in NCCL_SYMBOLS {
            // SAFETY: looked up, never called.
            if unsafe { lib.get::<*const ()>(symbol.as_bytes()) }.is_err() {
                return Err(Unavailable::Symbol {
                    library: "libnccl.so",
                    symbol,
                });
            }
        }
        let mut version = 0;
        // SAFETY: the symbol exists (checked above) and `version` is a valid out pointer.
        let r = unsafe { nccl::ncclGetVersion(&mut version) };
        if r != nccl::ncclResult_t::ncclSuccess || version < NCCL_MIN_VERSION {
            return Err(Unavailable::NcclTooOld {
                found: format!(
                    "{}.{}.{}",
                    version / 10000,
                    version / 100 % 100,
                    version % 100
                ),
            });
        }
        Ok(version)
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without the driver (CI), the probe fails cleanly and names the library;
    /// on a GPU machine it finds at least one device.
    #[test]
    fn the_cuda_probe_never_panics_and_names_the_library() {
        match probe_cuda() {
            Ok(n) => assert!(n > 0),
            Err(e @ Unavailable::Library { .. }) => {
                let msg = e.to_string();
                assert!(msg.starts_with("libcuda.so.1 not found"), "{msg}");
                assert!(!msg.contains('\n'), "{msg}");
            }
            Err(e) => println!("CUDA present but unusable: {e}"),
        }
        // Cached: the same answer again, without loading anything.
        assert_eq!(probe_cuda(), probe_cuda());
    }

    #[test]
    fn the_nccl_probe_never_panics_and_names_the_library() {
        match probe_nccl() {
            Ok(v) => assert!(v >= NCCL_MIN_VERSION),
            Err(e @ Unavailable::Library { .. }) => {
                assert!(e.to_string().starts_with("libnccl.so not found"), "{e}")
            }
            Err(e) => println!("NCCL present but unusable: {e}"),
        }
    }
}
