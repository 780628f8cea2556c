//! The C ABI of ringrun (`libringrun.so`, `ffi/include/ringrun.h`).
//!
//! Not written yet: see the C ABI issue. Only [`ringrun_abi_version`] exists, so that the
//! library and its name are in place.

// The C ABI is the one place besides device code where `unsafe` is allowed (ARCHITECTURE.md).
#![allow(unsafe_code)]

/// Version of the C ABI; bumped on any incompatible change.
pub const ABI_VERSION: u32 = 0;

/// Returns the version of the C ABI this library implements.
#[unsafe(no_mangle)]
pub extern "C" fn ringrun_abi_version() -> u32 {
    ABI_VERSION
}
