//! Status codes, the per-thread last error, and [`guard`]: the wrapper every entry point runs
//! its body in, so that no panic and no Rust error crosses the C boundary.

use std::{
    cell::RefCell,
    ffi::{CString, c_char, c_int},
    panic::{AssertUnwindSafe, catch_unwind},
};

use ringrun_runtime::GroupError;

/// What a call returned. Every function of the ABI except `ringrun_abi_version` and
/// `ringrun_last_error` returns one of these (as an `int`); on anything but
/// `RINGRUN_OK`, `ringrun_last_error()` says what happened.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ringrun_status_t {
    /// Success.
    RINGRUN_OK = 0,
    /// The group's membership changed before or during the call. Output buffers hold
    /// unspecified data; the committed state is intact. Call `ringrun_restore` and redo the
    /// work since the restored step.
    RINGRUN_MEMBERSHIP_CHANGED = 1,
    /// A peer of the current epoch was lost during the call (its link broke). A refinement of
    /// `RINGRUN_MEMBERSHIP_CHANGED` with the same recovery.
    RINGRUN_PEER_LOST = 2,
    /// A collective missed its deadline (`RINGRUN_OP_TIMEOUT_MS`) with no member found
    /// missing. Same recovery as `RINGRUN_MEMBERSHIP_CHANGED`.
    RINGRUN_TIMEOUT = 3,
    /// An argument is unusable (null or misaligned pointer, unknown dtype or op, overlapping
    /// buffers, a buffer too small). Nothing was sent; fix the call.
    RINGRUN_INVALID_ARGUMENT = 4,
    /// `ringrun_init` has not succeeded (or `ringrun_finalize` was called).
    RINGRUN_NOT_INITIALIZED = 5,
    /// The library or the group failed (sockets, threads, a bug; or, at init, a device group
    /// (`RINGRUN_TRANSPORT=nccl`) on a machine without CUDA or NCCL: the message names the
    /// library). Not recoverable in-process: finalize and exit.
    RINGRUN_INTERNAL = 6,
    /// Ranks disagreed about a call (count, dtype, op, root, committed step or bytes). A bug
    /// in the caller; `ringrun_restore` re-forms the group.
    RINGRUN_MISMATCH = 7,
    /// No epoch could be formed in time (too few members, no majority). Retrying
    /// `ringrun_restore` later may succeed.
    RINGRUN_NO_QUORUM = 8,
    /// The job completed without this process: its members finished it (`ringrun_finish`) and
    /// left, and no final state reached this process. Nothing changed; not recoverable: exit.
    RINGRUN_COMPLETED = 9,
}

use ringrun_status_t::*;

/// A failed call: its status and message.
#[derive(Debug)]
pub struct Fail(pub ringrun_status_t, pub String);

/// Shorthand for an invalid-argument failure.
pub fn invalid(what: impl Into<String>) -> Fail {
    Fail(RINGRUN_INVALID_ARGUMENT, what.into())
}

impl From<GroupError> for Fail {
    fn from(e: GroupError) -> Fail {
        let status = match &e {
            // The runtime folds a broken link into MembershipChanged; its reason still carries
            // the collective's `PeerLost` text, which is the only place the distinction lives.
            GroupError::MembershipChanged { reason, .. } if reason.starts_with("peer rank ") => {
                RINGRUN_PEER_LOST
            }
            GroupError::MembershipChanged { .. } => RINGRUN_MEMBERSHIP_CHANGED,
            GroupError::Timeout(_) => RINGRUN_TIMEOUT,
            GroupError::Mismatch(_) => RINGRUN_MISMATCH,
            GroupError::InvalidArgument(_) => RINGRUN_INVALID_ARGUMENT,
            GroupError::NoQuorum(_) => RINGRUN_NO_QUORUM,
            GroupError::Completed { .. } => RINGRUN_COMPLETED,
            GroupError::Internal(_) | GroupError::DeviceUnavailable(_) => RINGRUN_INTERNAL,
        };
        Fail(status, e.to_string())
    }
}

thread_local! {
    /// The message of the last failed call on this thread (empty after a success).
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    LAST_ERROR.with(|e| {
        let mut last = e.borrow_mut();
        // Success after success (the common case) leaves the empty string as it is.
        if msg.is_empty() && last.is_empty() {
            return;
        }
        // Interior NULs would truncate the message in C; replace them rather than lose it.
        *last = CString::new(msg.replace('\0', "?")).unwrap_or_default();
    });
}

/// Runs one entry point's body: catches panics, records the message, returns the status.
pub fn guard(body: impl FnOnce() -> Result<(), Fail>) -> c_int {
    // AssertUnwindSafe: after a panic the only shared state is the group behind its mutex,
    // which is recovered from poisoning and reported as internal; nothing else is observed.
    let (status, msg) = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => (RINGRUN_OK, String::new()),
        Ok(Err(Fail(status, msg))) => (status, msg),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            (RINGRUN_INTERNAL, format!("internal error (panic): {what}"))
        }
    };
    set_last_error(&msg);
    status as c_int
}

/// The message of the last failed ringrun call on the calling thread, or `""` when it
/// succeeded. The string belongs to the library and stays valid until the next ringrun call
/// on this thread. Never returns NULL.
#[unsafe(no_mangle)]
pub extern "C" fn ringrun_last_error() -> *const c_char {
    catch_unwind(|| LAST_ERROR.with(|e| e.borrow().as_ptr())).unwrap_or(c"internal error".as_ptr())
}
