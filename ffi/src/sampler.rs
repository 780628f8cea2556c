//! The elastic sampler: which sample indices this rank reads at each step, so that every index
//! is read exactly once per pass over the data whatever the world does (see
//! `ringrun_runtime::sampler`).
//!
//! A sampler's whole state is its offset (`ringrun_sampler_offset`): commit it with the step's
//! state and set it back after `ringrun_restore` (`ringrun_sampler_set_offset`), and a
//! rolled-back step re-reads the same global batch, split over the ranks of the new epoch.
//! The first `ringrun_sampler_next` of every epoch checks, with one small allreduce, that all
//! ranks hold the same parameters and offset, so every rank must call it at the same point of
//! a step. With `RINGRUN_DATA_LEDGER=DIR` (as it was when the sampler was made) every share read and every commit is appended to a
//! JSON-lines file in DIR, which `ringrun data-check DIR` checks.

use std::{
    ffi::c_int,
    fs::File,
    io::Write,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use ringrun_collectives::{DType, ReduceOp};
use ringrun_runtime::{
    Group,
    sampler::{ElasticSampler, SamplerSpec, ledger::Record, share},
};

use crate::{
    group::{rank_size, with_global, write_out},
    status::{Fail, guard, invalid, ringrun_status_t::RINGRUN_INTERNAL},
    types::Raw,
};

/// An elastic sampler (opaque; `ringrun_sampler_new`, `ringrun_sampler_free`).
#[allow(non_camel_case_types)] // the C name
pub struct ringrun_sampler_t {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    sampler: ElasticSampler,
    /// The epoch whose ranks were last found to agree on the sampler.
    checked_epoch: Option<u64>,
    /// `RINGRUN_DATA_LEDGER` as the sampler was made (read once, not on every step).
    ledger_dir: Option<PathBuf>,
    /// The ledger file, opened at the first record.
    ledger: Option<File>,
}

/// Every live sampler, for the commit records of the ledger.
static SAMPLERS: Mutex<Vec<Weak<Mutex<Inner>>>> = Mutex::new(Vec::new());

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The sampler is consistent between statements (a panic leaves an offset, not half of one).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes a sampler of `num_samples` indices (1..=2^62), `global_batch` of them per step over
/// all ranks (1..=num_samples), with pass `e`'s order a permutation seeded by `seed` and `e`
/// (`shuffle` nonzero) or `0..num_samples` in order. Writes it to `*out`. Needs no group.
///
/// # Safety
/// `out` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_sampler_new(
    num_samples: u64,
    global_batch: u64,
    seed: u64,
    shuffle: c_int,
    out: *mut *mut ringrun_sampler_t,
) -> c_int {
    guard(|| {
        let spec = SamplerSpec {
            num_samples,
            global_batch,
            seed,
            shuffle: shuffle != 0,
        };
        let sampler = ElasticSampler::new(spec).map_err(|e| invalid(e.to_string()))?;
        let inner = Arc::new(Mutex::new(Inner {
            sampler,
            checked_epoch: None,
            ledger_dir: std::env::var_os("RINGRUN_DATA_LEDGER").map(PathBuf::from),
            ledger: None,
        }));
        let mut live = locked(&SAMPLERS);
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&inner));
        drop(live);
        let handle = Box::into_raw(Box::new(ringrun_sampler_t { inner }));
        // SAFETY: see `write_out`.
        unsafe { write_out(out, handle, "out") }
    })
}

/// Frees a sampler (NULL is ignored).
///
/// # Safety
/// `sampler` came from `ringrun_sampler_new` and is not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_sampler_free(sampler: *mut ringrun_sampler_t) {
    if !sampler.is_null() {
        // SAFETY: allocated by `ringrun_sampler_new` as a Box, freed once per the contract.
        drop(unsafe { Box::from_raw(sampler) });
    }
}

/// The sampler behind a handle.
///
/// # Safety
/// `p` is NULL or a live handle.
unsafe fn handle<'a>(p: *const ringrun_sampler_t) -> Result<&'a ringrun_sampler_t, Fail> {
    // SAFETY: NULL or a live handle per the caller's contract.
    unsafe { p.as_ref() }.ok_or_else(|| invalid("sampler is NULL"))
}

/// The output slice for at most `len` indices.
///
/// # Safety
/// `out` is writable for `capacity` int64 values.
unsafe fn out_slice<'a>(out: *mut i64, capacity: usize, len: usize) -> Result<&'a mut [i64], Fail> {
    if capacity < len {
        return Err(invalid(format!(
            "capacity {capacity} is too small for a share of {len} indices"
        )));
    }
    let raw = Raw::new(out.cast(), len, DType::I64, "out")?;
    // SAFETY: `Raw::new` checked null, alignment and size; writable for `capacity >= len`
    // values, not otherwise accessed during the call, per the caller's contract.
    Ok(unsafe { raw.slice_mut::<i64>() })
}

/// Takes this rank's share of the next global batch in the current epoch: writes its indices
/// to `out` (room for `capacity`; `global_batch` always suffices) and their number to `*n`, and
/// moves the sampler on by one global batch. Every rank must call it at the same point of a
/// step: the first call of each epoch checks that all ranks' samplers agree (their parameters,
/// else `RINGRUN_INVALID_ARGUMENT` on every rank naming them; their offsets, else
/// `RINGRUN_INVALID_ARGUMENT` asking for the sampler to be restored with the state). On any
/// error the sampler does not move.
///
/// # Safety
/// `sampler` is live; `out` is writable for `capacity` int64 values; `n` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_sampler_next(
    sampler: *mut ringrun_sampler_t,
    out: *mut i64,
    capacity: usize,
    n: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: live per the contract.
        let inner = &unsafe { handle(sampler) }?.inner;
        let len = with_global(|g| {
            let mut s = locked(inner);
            let (rank, size) = (g.group.rank(), g.group.size());
            let range = share(s.sampler.spec().global_batch, rank, size);
            // SAFETY: writable for `capacity` values per the contract.
            let dst = unsafe { out_slice(out, capacity, (range.end - range.start) as usize) }?;
            check_agreement(&mut g.group, &mut s)?;
            let offset = s.sampler.offset();
            let indices = s.sampler.next_share(rank, size);
            for (d, i) in dst.iter_mut().zip(&indices) {
                *d = *i as i64;
            }
            let epoch = g.group.epoch();
            let record = Record::Read {
                spec: (*s.sampler.spec()).into(),
                epoch,
                rank,
                size,
                offset,
                indices,
            };
            if let Err(e) = append(&mut s, &record) {
                s.sampler.restore(offset);
                return Err(e);
            }
            Ok(dst.len())
        })?;
        // SAFETY: see `write_out`.
        unsafe { write_out(n, len, "n") }
    })
}

/// Writes this rank's share, in the current epoch, of the global batch at stream offset
/// `offset` (`ringrun_sampler_offset` for the one `ringrun_sampler_next` takes next), without
/// moving the sampler or recording anything: for loaders that fetch batches ahead. Same output
/// rules as `ringrun_sampler_next`.
///
/// # Safety
/// As `ringrun_sampler_next`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_sampler_peek(
    sampler: *const ringrun_sampler_t,
    offset: u64,
    out: *mut i64,
    capacity: usize,
    n: *mut usize,
) -> c_int {
    guard(|| {
        let (rank, size) = rank_size()?;
        // SAFETY: live per the contract.
        let mut view = locked(&unsafe { handle(sampler) }?.inner).sampler.clone();
        let range = share(view.spec().global_batch, rank, size);
        // SAFETY: writable for `capacity` values per the contract.
        let dst = unsafe { out_slice(out, capacity, (range.end - range.start) as usize) }?;
        view.restore(offset);
        for (d, i) in dst.iter_mut().zip(view.next_share(rank, size)) {
            *d = i as i64;
        }
        // SAFETY: see `write_out`.
        unsafe { write_out(n, dst.len(), "n") }
    })
}

/// Writes the sampler's offset (indices handed out so far over all ranks: the state to
/// commit) to `*offset`.
///
/// # Safety
/// `sampler` is live; `offset` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_sampler_offset(
    sampler: *const ringrun_sampler_t,
    offset: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: live per the contract.
        let at = locked(&unsafe { handle(sampler) }?.inner).sampler.offset();
        // SAFETY: see `write_out`.
        unsafe { write_out(offset, at, "offset") }
    })
}

/// Sets the sampler's offset, e.g. to the committed one after `ringrun_restore`.
///
/// # Safety
/// `sampler` is live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_sampler_set_offset(
    sampler: *mut ringrun_sampler_t,
    offset: u64,
) -> c_int {
    guard(|| {
        // SAFETY: live per the contract.
        let mut s = locked(&unsafe { handle(sampler) }?.inner);
        s.sampler.restore(offset);
        // The ranks must agree again: one may have restored something else.
        s.checked_epoch = None;
        Ok(())
    })
}

/// Writes the pass over the data (data epoch) the next step starts in to `*data_epoch`.
///
/// # Safety
/// `sampler` is live; `data_epoch` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ringrun_sampler_data_epoch(
    sampler: *const ringrun_sampler_t,
    data_epoch: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: live per the contract.
        let e = locked(&unsafe { handle(sampler) }?.inner)
            .sampler
            .data_epoch();
        // SAFETY: see `write_out`.
        unsafe { write_out(data_epoch, e, "data_epoch") }
    })
}

/// Once per epoch: whether every rank's sampler has this one's parameters and offset (one
/// allreduce of the values and their complements under max, giving the maximum and minimum).
fn check_agreement(group: &mut Group, s: &mut Inner) -> Result<(), Fail> {
    let epoch = group.epoch();
    if s.checked_epoch == Some(epoch) {
        return Ok(());
    }
    let spec = *s.sampler.spec();
    let (fp, offset) = (spec.fingerprint() as i64, s.sampler.offset() as i64);
    let mut words = [fp, !fp, offset, !offset];
    group.allreduce(&mut words, ReduceOp::Max)?;
    if words[0] != fp || !words[1] != fp {
        return Err(invalid(format!(
            "the sampler's parameters differ across ranks (this rank: num_samples {}, \
             global_batch {}, seed {}, shuffle {}); every rank must build the same sampler",
            spec.num_samples, spec.global_batch, spec.seed, spec.shuffle
        )));
    }
    if words[2] != offset || !words[3] != offset {
        return Err(invalid(format!(
            "the sampler's offset differs across ranks (this rank {offset}, ranks hold {} to \
             {}); commit its offset with the state and set it back after a restore",
            !words[3], words[2]
        )));
    }
    s.checked_epoch = Some(epoch);
    Ok(())
}

/// After a commit: a commit record in the ledger of every live sampler.
pub(crate) fn on_commit(step: u64, epoch: u64) -> Result<(), Fail> {
    let live: Vec<_> = locked(&SAMPLERS).iter().filter_map(Weak::upgrade).collect();
    for inner in live {
        let mut s = locked(&inner);
        let record = Record::Commit {
            spec: (*s.sampler.spec()).into(),
            epoch,
            step,
            offset: s.sampler.offset(),
        };
        append(&mut s, &record)?;
    }
    Ok(())
}

/// Appends `record` to the ledger, when `RINGRUN_DATA_LEDGER` names one.
fn append(s: &mut Inner, record: &Record) -> Result<(), Fail> {
    if s.ledger.is_none() {
        let Some(dir) = &s.ledger_dir else {
            return Ok(());
        };
        s.ledger = Some(open_ledger(dir).map_err(|e| ledger_error(dir, e))?);
    }
    let file = s.ledger.as_mut().expect("opened above");
    let mut line = serde_json::to_vec(record).map_err(|e| Fail(RINGRUN_INTERNAL, e.to_string()))?;
    line.push(b'\n');
    // One write per record: a killed process leaves whole lines (a torn last line at worst,
    // which the checker skips with a warning).
    file.write_all(&line)
        .map_err(|e| Fail(RINGRUN_INTERNAL, format!("writing the data ledger: {e}")))
}

/// This process's ledger file: one per process and sampler, never shared.
fn open_ledger(dir: &std::path::Path) -> std::io::Result<File> {
    std::fs::create_dir_all(dir)?;
    static OPENED: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let host = std::env::var("RINGRUN_HOST").unwrap_or_else(|_| "host".into());
    let seq = OPENED.fetch_add(1, Ordering::Relaxed);
    let name = format!("{host}-{}-{nanos}-{seq}.jsonl", std::process::id());
    File::options()
        .create_new(true)
        .append(true)
        .open(dir.join(name))
}

fn ledger_error(dir: &std::path::Path, e: std::io::Error) -> Fail {
    Fail(
        RINGRUN_INTERNAL,
        format!("opening the data ledger in {}: {e}", dir.display()),
    )
}
