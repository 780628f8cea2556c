//! The process-wide group behind the ABI: joining, leaving, rank, size, epoch.
//!
//! One group per process, behind a mutex: calls from several threads are safe and serialise
//! (a collective holds the lock until it returns), so collectives run in the order their
//! threads take the lock. `ringrun_rank`, `ringrun_size`, `ringrun_epoch` and
//! `ringrun_initialized` never take that lock: they read a snapshot that every call refreshes
//! before it releases the group, so they answer at once, with the epoch the process is in,
//! while a collective (or a restore) runs on another thread. Nothing else is tied to a thread
//! except `ringrun_last_error`, which is per thread.

use std::{
    ffi::{CStr, c_char, c_int},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use ringrun_membership::MIN_SECRET_LEN;
use ringrun_runtime::{
    Group, GroupConfig,
    config::{device_from, parse_seeds},
    device::DeviceSpec,
    progress::Progress,
};

use crate::{
    device::DeviceRoute,
    status::{Fail, guard, invalid, ringrun_status_t::*},
};

/// What the ABI keeps between calls.
pub struct Global {
    pub group: Group,
    /// The state the last `ringrun_restore` returned, for `ringrun_restored_copy`.
    pub restored: Option<(u64, Arc<Vec<u8>>)>,
    /// How device pointers are recognised and run; `None` for a CPU group (then no pointer is
    /// ever handed to CUDA).
    pub(crate) route: Option<DeviceRoute>,
    /// For a CPU group unless `RINGRUN_DEVICE=cpu`: the route that classifies pointers and the
    /// device side to add at the first collective on device memory (see `device::on_device`).
    pub(crate) auto: Option<(DeviceRoute, DeviceSpec)>,
    /// The caller's CUDA stream (`ringrun_set_stream`), 0 for none.
    pub(crate) stream: usize,
}

static GLOBAL: Mutex<Option<Global>> = Mutex::new(None);

/// What `ringrun_rank`, `ringrun_size` and `ringrun_epoch` report: the group's values as the
/// last call left them (`None`: not initialised). Its lock is held only to copy it, never
/// across a call, so reading it never waits for a collective.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snapshot {
    rank: c_int,
    size: c_int,
    epoch: u64,
}

static SNAPSHOT: Mutex<Option<Snapshot>> = Mutex::new(None);

/// The group's progress record, for `ringrun_log`, which must not wait behind a collective.
static PROGRESS: Mutex<Option<Progress>> = Mutex::new(None);

/// The group's progress record, or `RINGRUN_NOT_INITIALIZED`.
pub(crate) fn progress() -> Result<Progress, Fail> {
    PROGRESS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(not_initialized)
}

fn set_progress(p: Option<Progress>) {
    *PROGRESS.lock().unwrap_or_else(|e| e.into_inner()) = p;
}

/// Records the group's current rank, size and epoch (`None` after finalize). Called with the
/// group's lock held, so snapshots are published in the order the calls ran.
fn publish(group: Option<&Group>) {
    let snap = group.map(|g| Snapshot {
        rank: g.rank() as c_int,
        size: g.size() as c_int,
        epoch: g.epoch(),
    });
    *SNAPSHOT.lock().unwrap_or_else(|e| e.into_inner()) = snap;
}

/// The snapshot, or `RINGRUN_NOT_INITIALIZED`.
fn snapshot() -> Result<Snapshot, Fail> {
    SNAPSHOT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .ok_or_else(not_initialized)
}

/// This process's rank and size in the epoch it is in, without waiting for a call on another
/// thread.
pub(crate) fn rank_size() -> Result<(usize, usize), Fail> {
    let s = snapshot()?;
    Ok((s.rank as usize, s.size as usize))
}

fn not_initialized() -> Fail {
    Fail(
        RINGRUN_NOT_INITIALIZED,
        "ringrun is not initialised: call ringrun_init first".into(),
    )
}

fn lock() -> MutexGuard<'static, Option<Global>> {
    // A panic inside a call poisons the mutex; the group itself is still consistent (the
    // runtime re-forms after any failed call), so the lock is taken over rather than lost.
    GLOBAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on the initialised global state, then refreshes the rank/size/epoch snapshot
/// (the call may have entered a new epoch), whether `f` failed or not.
pub fn with_global<R>(f: impl FnOnce(&mut Global) -> Result<R, Fail>) -> Result<R, Fail> {
    let mut g = lock();
    let global = g.as_mut().ok_or_else(not_initialized)?;
    let r = f(global);
    publish(Some(&global.group));
    r
}

/// A write to the socket of a peer that just died raises SIGPIPE, whose default action kills
/// the process: Rust programs ignore it from `main`, but a C or Python host may not have. The
/// runtime needs EPIPE instead (it turns it into a membership change), so ignore SIGPIPE
/// unless the host installed a handler of its own.
fn ignore_sigpipe() {
    // SAFETY: `sigaction` with a NULL new action only reads the current one into `old`, a
    // zeroed, valid `sigaction`; `signal(SIGPIPE, SIG_IGN)` is async-signal-safe and only
    // changes the disposition of a signal nobody handles.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_DFL
        {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    }
}

pub(crate) fn join(config: Result<GroupConfig, Fail>) -> Result<(), Fail> {
    let mut g = lock();
    if g.is_some() {
        return Err(invalid("already initialised: call ringrun_finalize first"));
    }
    ignore_sigpipe();
    let mut group = Group::join(config?)?;
    // A device group (whose join already loaded CUDA) asks CUDA about every pointer; a CPU group
    // only where the driver loads, and gains a device side at its first device pointer.
    let route = group.device().map(|_| DeviceRoute::cuda());
    let cpu_only = std::env::var("RINGRUN_DEVICE").is_ok_and(|d| d == "cpu");
    let auto = (route.is_none() && !cpu_only).then(|| (DeviceRoute::cuda(), DeviceSpec::Cuda));
    publish(Some(&group));
    set_progress(Some(group.progress()));
    *g = Some(Global {
        group,
        restored: None,
        route,
        auto,
        stream: 0,
    });
    Ok(())
}

/// Joins (or starts) the group described by the launcher's `RINGRUN_*` environment
/// (`RINGRUN_SECRET`, `RINGRUN_SEEDS`, `RINGRUN_MIN_SIZE`, ...). Blocks until this process is
/// a member of an agreed epoch. Call `ringrun_restore` next to learn the state to start from.
/// With `RINGRUN_TRANSPORT=nccl` (or `RINGRUN_DEVICE=cuda`) the group also gets a device side
/// at join: one NCCL communicator per epoch on GPU `RINGRUN_LOCAL_RANK % devices` (with
/// `RINGRUN_DEVICE=cuda`, staged through pinned host memory where NCCL is missing or workers
/// share a GPU), and the collectives accept device pointers; without CUDA this fails
/// (`RINGRUN_INTERNAL`, the message names the missing library). Otherwise, unless
/// `RINGRUN_DEVICE=cpu`, the first collective on device pointers adds that device side
/// (collectively: every member passes device pointers to the same call).
/// If SIGPIPE has its default disposition it is set to ignored (a peer dying mid-write must
/// be an error, not the end of this process).
#[unsafe(no_mangle)]
pub extern "C" fn ringrun_init() -> c_int {
    guard(|| join(GroupConfig::from_env().map_err(Fail::from)))
}

/// Explicit configuration for `ringrun_init_config`. Zero / NULL fields take the default
/// shown; start from `ringrun_config_t c = {0};` so that fields added later stay default.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ringrun_config_t {
    /// Job secret, NUL-terminated, at least 16 bytes. Required.
    pub secret: *const c_char,
    /// Run id; members of different runs never talk. NULL: `"ringrun"`.
    pub run_id: *const c_char,
    /// Stable node id of this worker slot. 0 is a valid id.
    pub node_id: u64,
    /// Address to bind. NULL: `"127.0.0.1"`.
    pub bind: *const c_char,
    /// Membership (UDP) port. 0: any free port.
    pub member_port: u16,
    /// Membership seeds, `"HOST:PORT,HOST:PORT"`. NULL: start a new group.
    pub seeds: *const c_char,
    /// No epoch with fewer members is formed. 0: 1.
    pub min_size: u32,
    /// At most this many members. 0: unbounded.
    pub max_size: u32,
    /// The first epoch waits for this many members. 0: `min_size`.
    pub initial_size: u32,
    /// Deadline of one collective in ms. 0: 60000.
    pub op_timeout_ms: u64,
    /// How long init and restore wait for an epoch, in ms. 0: 60000.
    pub restore_timeout_ms: u64,
    /// Directory for durable checkpoints. NULL: none.
    pub checkpoint_dir: *const c_char,
    /// The epochs' links: `"auto"` (shared memory within a host, TCP across), `"tcp"`,
    /// `"quic"`, `"shm"` (one host), or `"nccl"` (a device group). NULL: `"auto"`.
    pub transport: *const c_char,
}

/// Reads an optional C string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for the call.
unsafe fn opt_str(p: *const c_char, what: &str) -> Result<Option<String>, Fail> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null and NUL-terminated per the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(|s| Some(s.to_owned()))
        .map_err(|_| invalid(format!("{what} is not UTF-8")))
}

fn config_from(c: &ringrun_config_t) -> Result<GroupConfig, Fail> {
    // SAFETY: the strings are NULL or NUL-terminated per the documented contract of
    // `ringrun_config_t`.
    let (secret, run_id, bind, seeds, dir, transport) = unsafe {
        (
            opt_str(c.secret, "secret")?,
            opt_str(c.run_id, "run_id")?,
            opt_str(c.bind, "bind")?,
            opt_str(c.seeds, "seeds")?,
            opt_str(c.checkpoint_dir, "checkpoint_dir")?,
            opt_str(c.transport, "transport")?,
        )
    };
    let secret = secret.ok_or_else(|| invalid("config.secret is NULL"))?;
    if secret.len() < MIN_SECRET_LEN {
        return Err(invalid(format!(
            "the job secret needs at least {MIN_SECRET_LEN} bytes"
        )));
    }
    let mut g = GroupConfig::local(c.node_id, secret.into_bytes());
    if let Some(r) = run_id {
        g.run_id = r;
    }
    if let Some(b) = bind {
        g.bind = b.parse().map_err(|e| invalid(format!("bind {b:?}: {e}")))?;
    }
    g.member_port = c.member_port;
    if let Some(s) = seeds {
        g.seeds = parse_seeds(&s)?;
    }
    g.min_size = (c.min_size as usize).max(1);
    if c.max_size > 0 {
        g.max_size = c.max_size as usize;
    }
    g.initial_size = match c.initial_size {
        0 => g.min_size,
        n => n as usize,
    };
    if c.op_timeout_ms > 0 {
        g.op_timeout = Duration::from_millis(c.op_timeout_ms);
    }
    if c.restore_timeout_ms > 0 {
        g.restore_timeout = Duration::from_millis(c.restore_timeout_ms);
    }
    g.checkpoint_dir = dir.map(PathBuf::from);
    if let Some(t) = transport {
        g.transport = t
            .parse()
            .map_err(|e| invalid(format!("config.transport: {e}")))?;
        g.device = device_from(g.transport, None)?;
    }
    Ok(g)
}

/// Joins (or starts) the group described by `config` instead of the environment.
///
/// # Safety
/// `config` is NULL (an error) or points to a valid `ringrun_config_t` whose strings are
/// NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_init_config(config: *const ringrun_config_t) -> c_int {
    guard(|| {
        // SAFETY: NULL is checked; otherwise valid per the caller's contract.
        let c = unsafe { config.as_ref() }.ok_or_else(|| invalid("config is NULL"))?;
        join(config_from(c))
    })
}

/// Leaves the group gracefully (the others re-form without this process at once) and frees
/// it. Collective, like `MPI_Finalize`: it first waits at a barrier (best effort, bounded by
/// the op timeout, errors ignored) so that no member leaves while another is still finishing
/// its last collective, which would abort it. Succeeds when not initialised, so it is safe
/// to call twice.
#[unsafe(no_mangle)]
pub extern "C" fn ringrun_finalize() -> c_int {
    guard(|| {
        let mut global = lock();
        if let Some(mut g) = global.take() {
            publish(None);
            set_progress(None);
            let _ = g.group.barrier();
            g.group.leave();
        }
        Ok(())
    })
}

/// Writes 1 to `*initialized` when `ringrun_init` succeeded and `ringrun_finalize` was not
/// called since, else 0. Never waits for a call running on another thread.
///
/// # Safety
/// `initialized` is NULL (an error) or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_initialized(initialized: *mut c_int) -> c_int {
    guard(|| {
        let v = c_int::from(snapshot().is_ok());
        // SAFETY: checked for NULL in `write_out`; valid per the caller's contract.
        unsafe { write_out(initialized, v, "initialized") }
    })
}

/// Writes `v` through an out-pointer.
///
/// # Safety
/// `p` is NULL (an error) or valid and aligned for a write of `T`.
pub unsafe fn write_out<T>(p: *mut T, v: T, what: &str) -> Result<(), Fail> {
    if p.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    if !p.is_aligned() {
        return Err(invalid(format!("{what} is misaligned")));
    }
    // SAFETY: non-null and aligned (checked), valid for writes per the caller's contract.
    unsafe { p.write(v) };
    Ok(())
}

/// This process's rank in the current epoch. The first epoch's ranks are the launcher's
/// `RANK`s; after a membership change ranks may move (survivors keep their order, compacted;
/// see README, "Ranks"). Like `ringrun_size` and `ringrun_epoch`, it never waits for a
/// collective running on another thread: it reports the epoch this process is in.
///
/// # Safety
/// `rank` is NULL (an error) or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_rank(rank: *mut c_int) -> c_int {
    guard(|| {
        let r = snapshot()?.rank;
        // SAFETY: see `write_out`.
        unsafe { write_out(rank, r, "rank") }
    })
}

/// Members in the current epoch.
///
/// # Safety
/// `size` is NULL (an error) or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_size(size: *mut c_int) -> c_int {
    guard(|| {
        let s = snapshot()?.size;
        // SAFETY: see `write_out`.
        unsafe { write_out(size, s, "size") }
    })
}

/// The current epoch number (it grows with every membership change).
///
/// # Safety
/// `epoch` is NULL (an error) or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_epoch(epoch: *mut u64) -> c_int {
    guard(|| {
        let e = snapshot()?.epoch;
        // SAFETY: see `write_out`.
        unsafe { write_out(epoch, e, "epoch") }
    })
}
