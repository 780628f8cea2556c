//! Committed state and the fault report: commit, restore (two calls: the step and size, then
//! the bytes), and the recoveries so far as JSON.

use std::{
    ffi::{c_char, c_int, c_void},
    time::Duration,
};

use ringrun_runtime::FaultEvent;

use crate::{
    group::{with_global, write_out},
    status::{guard, invalid},
};

/// The step `ringrun_restore` reports when no state was ever committed (a fresh start).
pub const RINGRUN_NO_STATE: u64 = u64::MAX;

/// Commits the state after `step`: `size` bytes at `data` (copied). Every rank must commit
/// the same step and bytes (checked: `RINGRUN_MISMATCH`). Waiting joiners are admitted here.
/// Under `RINGRUN_DATA_LEDGER`, each live sampler's offset is then recorded as committed with
/// the step (a failure to write it is `RINGRUN_INTERNAL`, the step being committed).
///
/// # Safety
/// `data` is readable for `size` bytes (NULL only with `size == 0`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_commit(step: u64, data: *const c_void, size: usize) -> c_int {
    guard(|| {
        if data.is_null() && size > 0 {
            return Err(invalid("data is NULL"));
        }
        if size > isize::MAX as usize {
            return Err(invalid("size is too large"));
        }
        with_global(|g| {
            let bytes = if size == 0 {
                Vec::new()
            } else {
                // SAFETY: non-null, readable for `size` bytes per the caller's contract.
                unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) }.to_vec()
            };
            g.group.commit(step, bytes)?;
            crate::sampler::on_commit(step, g.group.epoch())
        })
    })
}

/// Waits (up to `RINGRUN_RESTORE_TIMEOUT_MS`) until this process is in a working epoch and
/// agrees with the others on the state to resume from: the newest committed step any member
/// holds. Writes that step to `*step` (`RINGRUN_NO_STATE` on a fresh start) and its size in
/// bytes to `*size`; `ringrun_restored_copy` then copies the bytes. Returns at once when the
/// epoch is healthy. Call it after `ringrun_init` and after every
/// `RINGRUN_MEMBERSHIP_CHANGED`, `RINGRUN_PEER_LOST`, `RINGRUN_TIMEOUT` or `RINGRUN_MISMATCH`.
///
/// # Safety
/// `step` and `size` are valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_restore(step: *mut u64, size: *mut usize) -> c_int {
    guard(|| {
        if step.is_null() || size.is_null() {
            return Err(invalid("step or size is NULL"));
        }
        let (s, n) = with_global(|g| {
            g.restored = g.group.restore()?;
            Ok(g.restored
                .as_ref()
                .map_or((RINGRUN_NO_STATE, 0), |(s, b)| (*s, b.len())))
        })?;
        // SAFETY: see `write_out`.
        unsafe {
            write_out(step, s, "step")?;
            write_out(size, n, "size")
        }
    })
}

/// Copies the state returned by the last `ringrun_restore` into `buf` (`capacity` bytes,
/// at least the size it reported).
///
/// # Safety
/// `buf` is writable for `capacity` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_restored_copy(buf: *mut c_void, capacity: usize) -> c_int {
    guard(|| {
        with_global(|g| {
            let bytes = g.restored.as_ref().map_or(&[][..], |(_, b)| &b[..]);
            if capacity < bytes.len() {
                return Err(invalid(format!(
                    "capacity {capacity} < {} bytes of state",
                    bytes.len()
                )));
            }
            if bytes.is_empty() {
                return Ok(());
            }
            if buf.is_null() {
                return Err(invalid("buf is NULL"));
            }
            // SAFETY: `buf` is writable for `capacity >= len` bytes per the caller's
            // contract; the source is our own allocation, so they cannot overlap.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len()) };
            Ok(())
        })
    })
}

/// Marks the last commit as the job's final state: training is over. Every rank calls it after
/// its last `ringrun_commit`. Joiners waiting outside are admitted and receive the final state,
/// and every member and launcher of the job is told, so that a worker started later gets the
/// final state from `ringrun_restore` (with `ringrun_completed` set) or `RINGRUN_COMPLETED`,
/// instead of training again from the start. A second call does nothing.
#[unsafe(no_mangle)]
pub extern "C" fn ringrun_finish() -> c_int {
    guard(|| with_global(|g| Ok(g.group.finish()?)))
}

/// Writes the job's final step to `*step` once this process holds the job's final state (it
/// called `ringrun_finish`, or `ringrun_restore` returned the final state), else
/// `RINGRUN_NO_STATE`.
///
/// # Safety
/// `step` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_completed(step: *mut u64) -> c_int {
    guard(|| {
        if step.is_null() {
            return Err(invalid("step is NULL"));
        }
        let s = with_global(|g| Ok(g.group.completed().unwrap_or(RINGRUN_NO_STATE)))?;
        // SAFETY: see `write_out`.
        unsafe { write_out(step, s, "step") }
    })
}

/// Tells the group which step the caller is working on, so that the fault report can say
/// how many steps a recovery rolled back.
#[unsafe(no_mangle)]
pub extern "C" fn ringrun_set_step(step: u64) -> c_int {
    guard(|| {
        with_global(|g| {
            g.group.set_step(step);
            Ok(())
        })
    })
}

/// Logs `n` named values for `step` (a loss, a learning rate), for the dashboard's training
/// curves (`ringrun launch --dashboard`): `names[i]` (NUL-terminated UTF-8) is `values[i]`.
/// Kept in memory (the newest few thousand) until a dashboard asks; never waits for a
/// collective running on another thread.
///
/// # Safety
/// `names` and `values` are readable for `n` entries (NULL only with `n == 0`); each name is a
/// NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_log(
    step: u64,
    names: *const *const c_char,
    values: *const f64,
    n: usize,
) -> c_int {
    guard(|| {
        if n > 0 && (names.is_null() || values.is_null()) {
            return Err(invalid("names or values is NULL"));
        }
        if n > 1 << 20 {
            return Err(invalid("n is too large"));
        }
        let progress = crate::group::progress()?;
        let mut entries = Vec::with_capacity(n);
        for i in 0..n {
            // SAFETY: readable for `n` entries per the caller's contract.
            let (name, value) = unsafe { (*names.add(i), *values.add(i)) };
            if name.is_null() {
                return Err(invalid(format!("names[{i}] is NULL")));
            }
            // SAFETY: a NUL-terminated string per the contract.
            let name = unsafe { std::ffi::CStr::from_ptr(name) }
                .to_str()
                .map_err(|_| invalid(format!("names[{i}] is not UTF-8")))?;
            entries.push((name, value));
        }
        progress.log(step, entries);
        Ok(())
    })
}

/// Writes the number of recoveries this process has lived through to `*count`.
///
/// # Safety
/// `count` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_fault_count(count: *mut usize) -> c_int {
    guard(|| {
        let n = with_global(|g| Ok(g.group.faults().len()))?;
        // SAFETY: see `write_out`.
        unsafe { write_out(count, n, "count") }
    })
}

/// The fault report as a JSON array, oldest first: one object per recovery with
/// `from_epoch`, `to_epoch`, `size_before`, `size_after`, `reason`, `detected_unix_ms`,
/// `epoch_ms`, `restore_ms`, `resume_ms` (null while unknown) and `steps_rolled_back`.
/// Writes its length (without the NUL) to `*len`; copies it, NUL-terminated, into `buf` when
/// `buf` is not NULL. With `capacity <= *len` it fails with `RINGRUN_INVALID_ARGUMENT` but
/// still sets `*len`, so a first call with `buf == NULL` sizes the buffer.
///
/// # Safety
/// `buf` is NULL or writable for `capacity` bytes; `len` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_faults_json(
    buf: *mut c_char,
    capacity: usize,
    len: *mut usize,
) -> c_int {
    guard(|| {
        let json = with_global(|g| Ok(faults_json(&g.group.faults())))?;
        // SAFETY: see `write_out`.
        unsafe { write_out(len, json.len(), "len")? };
        if buf.is_null() {
            return Ok(());
        }
        if capacity <= json.len() {
            return Err(invalid(format!(
                "capacity {capacity} < {} bytes and a NUL",
                json.len()
            )));
        }
        // SAFETY: `buf` writable for `capacity > json.len()` bytes (caller's contract).
        unsafe {
            std::ptr::copy_nonoverlapping(json.as_ptr(), buf.cast::<u8>(), json.len());
            buf.add(json.len()).write(0);
        }
        Ok(())
    })
}

/// The fault report in the same shape as `ringrun train-worker`'s `fault` lines.
pub fn faults_json(faults: &[FaultEvent]) -> String {
    let ms =
        |d: Option<Duration>| d.map_or(serde_json::Value::Null, |d| (d.as_secs_f64() * 1e3).into());
    let all: Vec<serde_json::Value> = faults
        .iter()
        .map(|f| {
            serde_json::json!({
                "from_epoch": f.from_epoch,
                "to_epoch": f.to_epoch,
                "size_before": f.size_before,
                "size_after": f.size_after,
                "reason": f.reason,
                "detected_unix_ms": f.detected_unix_ms,
                "epoch_ms": ms(f.to_installed),
                "restore_ms": ms(f.to_restored),
                "resume_ms": ms(f.to_first_collective),
                "steps_rolled_back": f.steps_rolled_back,
            })
        })
        .collect();
    serde_json::Value::Array(all).to_string()
}
