//! Committed state: what each member keeps, and how a new epoch agrees what to restore.
//!
//! The state is the *group's* state (the model and optimiser that data parallelism keeps
//! identical on every rank), so every member's own copy of a commit is also a replica of every
//! other member's: with `n` members a commit survives `n - 1` losses, more than the `k`
//! successors of rabit's scheme, without moving a byte. [`check_commit`] enforces the premise:
//! a commit whose bytes differ between ranks is refused.
//!
//! At the start of every epoch the members exchange one [`Record`] each and [`decide`] picks,
//! the same way on every member, the newest committed step anyone holds in memory (else the
//! newest on disk, when the whole group restarted) and one rank that holds it. Members that
//! already hold exactly those bytes keep them; if any does not (a joiner, or a member that
//! missed the last commit), the holder broadcasts them, so every rank resumes from identical
//! bytes.

use std::sync::Arc;

use ring::digest::{SHA256, digest};

/// Marks "nothing held" in a record.
pub(crate) const NONE: u64 = u64::MAX;

/// One committed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The step it was committed at.
    pub step: u64,
    /// The bytes.
    pub bytes: Arc<Vec<u8>>,
    pub(crate) digest: [u64; 2],
}

impl Committed {
    pub(crate) fn new(step: u64, bytes: Arc<Vec<u8>>) -> Committed {
        Committed {
            step,
            digest: digest_of(&bytes),
            bytes,
        }
    }
}

/// The first 16 bytes of the SHA-256 of `bytes`, as two words.
pub(crate) fn digest_of(bytes: &[u8]) -> [u64; 2] {
    let d = digest(&SHA256, bytes);
    let word = |i: usize| u64::from_le_bytes(d.as_ref()[i * 8..i * 8 + 8].try_into().unwrap());
    [word(0), word(1)]
}

/// What one member holds, as exchanged at the start of an epoch: `[memory step, digest word 0,
/// digest word 1, disk step, final]`, with [`NONE`] for nothing; `final` is 1 when the memory
/// (else the disk) holds the job's final state (`Group::finish`).
pub(crate) type Record = [u64; 5];

pub(crate) fn record(
    memory: Option<&Committed>,
    disk: Option<(u64, bool)>,
    final_: bool,
) -> Record {
    let (disk_step, disk_final) = disk.unwrap_or((NONE, false));
    match memory {
        Some(c) => [c.step, c.digest[0], c.digest[1], disk_step, final_ as u64],
        None => [NONE, 0, 0, disk_step, disk_final as u64],
    }
}

/// Whether the state [`decide`] chose is the job's final state: a member holding those bytes
/// (in memory, or on disk when they come from disk) says so.
pub(crate) fn decided_final(records: &[Record], decision: Decision) -> bool {
    let marked = |same: &dyn Fn(&Record) -> bool| records.iter().any(|r| same(r) && r[4] == 1);
    match decision {
        Decision::Fresh => false,
        Decision::Keep { .. } => marked(&|_| true),
        Decision::Broadcast {
            root,
            from_disk: false,
            ..
        } => marked(&|r| r[..3] == records[root][..3]),
        Decision::Broadcast {
            step,
            from_disk: true,
            ..
        } => marked(&|r| r[0] == NONE && r[3] == step),
    }
}

/// What a new epoch does about state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nobody holds any state: a fresh start.
    Fresh,
    /// Every member already holds `step` with identical bytes.
    Keep { step: u64 },
    /// `root` sends the bytes of `step` (from memory, or from disk if `from_disk`) to all.
    Broadcast {
        step: u64,
        root: usize,
        from_disk: bool,
    },
}

/// The same decision on every member, from everyone's records (indexed by rank).
pub(crate) fn decide(records: &[Record]) -> Decision {
    let newest = |field: usize| {
        records
            .iter()
            .map(|r| r[field])
            .filter(|s| *s != NONE)
            .max()
    };
    if let Some(step) = newest(0) {
        let root = records.iter().position(|r| r[0] == step).expect("a holder");
        let same = |r: &Record| r[..3] == records[root][..3];
        return match records.iter().all(same) {
            true => Decision::Keep { step },
            false => Decision::Broadcast {
                step,
                root,
                from_disk: false,
            },
        };
    }
    match newest(3) {
        Some(step) => Decision::Broadcast {
            step,
            root: records.iter().position(|r| r[3] == step).expect("a holder"),
            from_disk: true,
        },
        None => Decision::Fresh,
    }
}

/// A commit's record: `[step, digest word 0, digest word 1, joiners this member sees waiting]`.
pub(crate) fn commit_record(c: &Committed, waiting: usize) -> [u64; 4] {
    [c.step, c.digest[0], c.digest[1], waiting as u64]
}

/// Checks that every rank committed the same step and bytes; returns the most joiners any
/// member sees waiting.
pub(crate) fn check_commit(records: &[[u64; 4]]) -> Result<usize, String> {
    let first = records.first().ok_or("no records")?;
    for (rank, r) in records.iter().enumerate() {
        if r[0] != first[0] {
            return Err(format!(
                "rank 0 committed step {} but rank {rank} step {}",
                first[0], r[0]
            ));
        }
        if r[1..3] != first[1..3] {
            return Err(format!(
                "the state committed at step {} differs between rank 0 and rank {rank}",
                r[0]
            ));
        }
    }
    Ok(records.iter().map(|r| r[3] as usize).max().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(step: u64, tag: u64) -> Record {
        [step, tag, tag, NONE, 0]
    }

    #[test]
    fn nothing_anywhere_is_a_fresh_start() {
        assert_eq!(decide(&[record(None, None, false); 3]), Decision::Fresh);
    }

    #[test]
    fn identical_holdings_move_nothing() {
        assert_eq!(decide(&[held(7, 1); 3]), Decision::Keep { step: 7 });
    }

    #[test]
    fn the_newest_step_wins_and_its_lowest_holder_sends_it() {
        let joiner = record(None, None, false);
        let d = decide(&[held(6, 1), held(7, 2), held(7, 2), joiner]);
        assert_eq!(
            d,
            Decision::Broadcast {
                step: 7,
                root: 1,
                from_disk: false
            }
        );
    }

    #[test]
    fn memory_beats_disk_and_disk_is_the_fallback() {
        let mut disk_only = record(None, Some((9, false)), false);
        assert_eq!(
            decide(&[record(None, None, false), disk_only]),
            Decision::Broadcast {
                step: 9,
                root: 1,
                from_disk: true
            }
        );
        disk_only[3] = 20;
        assert_eq!(
            decide(&[held(10, 1), disk_only]),
            Decision::Broadcast {
                step: 10,
                root: 0,
                from_disk: false
            }
        );
    }

    #[test]
    fn the_final_mark_follows_the_chosen_holder() {
        let mut finished = held(9, 1);
        finished[4] = 1;
        let joiner = record(None, None, false);
        let rs = [finished, held(9, 1), joiner];
        assert!(decided_final(&rs, decide(&rs)));
        // A member that finished holds the newest step; one that did not holds an older one.
        let rs = [held(8, 2), finished];
        assert!(decided_final(&rs, decide(&rs)));
        let rs = [held(10, 2), finished];
        assert!(!decided_final(&rs, decide(&rs)));
        // From disk: the checkpoint's own mark.
        let rs = [record(None, Some((9, true)), false), joiner];
        assert!(decided_final(&rs, decide(&rs)));
    }

    #[test]
    fn a_commit_must_agree_on_step_and_bytes() {
        let a = Committed::new(3, Arc::new(vec![1, 2, 3]));
        let b = Committed::new(3, Arc::new(vec![1, 2, 4]));
        let c = Committed::new(4, Arc::new(vec![1, 2, 3]));
        assert_eq!(
            check_commit(&[commit_record(&a, 0), commit_record(&a, 2)]),
            Ok(2)
        );
        assert!(check_commit(&[commit_record(&a, 0), commit_record(&b, 0)]).is_err());
        assert!(check_commit(&[commit_record(&a, 0), commit_record(&c, 0)]).is_err());
    }
}
