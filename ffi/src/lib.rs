//! The C ABI of ringrun: `libringrun.so` / `libringrun.a` with the header
//! `ffi/include/ringrun.h`, generated from this crate by cbindgen (`tests/header.rs` checks
//! the committed header against a fresh generation; `RINGRUN_BLESS=1` rewrites it).
//!
//! Conventions, stated once here and in the header:
//! - Every function returns a `ringrun_status_t` as an `int` (`RINGRUN_OK == 0`), except
//!   `ringrun_abi_version` and `ringrun_last_error`. Outputs go through pointers.
//! - `ringrun_last_error()` is per thread: the message of that thread's last failed call.
//! - No panic crosses the boundary: every entry point runs in [`status::guard`].
//! - Every pointer is checked (NULL, alignment for the dtype, overlap) before it becomes a
//!   slice; a bad one is `RINGRUN_INVALID_ARGUMENT`, never undefined behaviour.
//! - Thread safety: one group per process behind a mutex. Any thread may call; calls
//!   serialise. Collectives are blocking. `ringrun_rank`, `ringrun_size`, `ringrun_epoch` and
//!   `ringrun_initialized` never wait behind a call on another thread.

// The C ABI is the one place besides device code where `unsafe` is allowed (ARCHITECTURE.md).
#![allow(unsafe_code)]

pub mod collectives;
mod device;
pub mod group;
pub mod sampler;
pub mod state;
pub mod status;
pub mod types;

pub use collectives::*;
pub use device::ringrun_set_stream;
pub use group::*;
pub use sampler::*;
pub use state::*;
pub use status::*;
pub use types::*;

/// Version of the C ABI this header describes; bumped on any incompatible change. Compare
/// with `ringrun_abi_version()` at run time to catch a header/library mix-up.
pub const RINGRUN_ABI_VERSION: u32 = 3;

/// Returns the version of the C ABI this library implements.
#[unsafe(no_mangle)]
pub extern "C" fn ringrun_abi_version() -> u32 {
    RINGRUN_ABI_VERSION
}
