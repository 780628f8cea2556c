//! The data ledger (pure): what every rank records of the indices it read, and the check that
//! the job read each index exactly once per pass.
//!
//! A rank appends a [`Record::Read`] when it takes its share of a global batch (before it
//! computes with it) and a [`Record::Commit`] when a step commits. Reads are not undone when a
//! step is rolled back; instead a later attempt at the same stream offset, necessarily in a
//! later membership epoch, supersedes the earlier one. So the job's history is, for every
//! offset below the newest commit, the attempt of the highest epoch, and [`check`] verifies
//! that history: every attempt complete (each rank of its world recorded its share), the
//! offsets contiguous from 0, each global batch equal to the one the sampler's parameters name
//! (the one-worker run's), and each index read exactly once per data epoch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ElasticSampler, SamplerSpec, share};

/// One line of a ledger file (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A rank took its share of the global batch at `offset`.
    Read {
        /// The sampler's parameters.
        spec: SpecRecord,
        /// Membership epoch of the attempt.
        epoch: u64,
        /// Rank in that epoch.
        rank: usize,
        /// World size of that epoch.
        size: usize,
        /// Stream offset of the global batch.
        offset: u64,
        /// The indices read, in order.
        indices: Vec<u64>,
    },
    /// A step committed with the sampler at `offset`.
    Commit {
        /// The sampler's parameters.
        spec: SpecRecord,
        /// Membership epoch of the commit.
        epoch: u64,
        /// The committed step.
        step: u64,
        /// The sampler's offset at the commit.
        offset: u64,
    },
}

/// [`SamplerSpec`] as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SpecRecord {
    /// Samples in the data.
    pub num_samples: u64,
    /// Indices per step.
    pub global_batch: u64,
    /// Permutation seed.
    pub seed: u64,
    /// Whether passes are shuffled.
    pub shuffle: bool,
}

impl From<SamplerSpec> for SpecRecord {
    fn from(s: SamplerSpec) -> SpecRecord {
        SpecRecord {
            num_samples: s.num_samples,
            global_batch: s.global_batch,
            seed: s.seed,
            shuffle: s.shuffle,
        }
    }
}

impl From<SpecRecord> for SamplerSpec {
    fn from(s: SpecRecord) -> SamplerSpec {
        SamplerSpec {
            num_samples: s.num_samples,
            global_batch: s.global_batch,
            seed: s.seed,
            shuffle: s.shuffle,
        }
    }
}

/// What [`check`] found for one sampler (one [`SpecRecord`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StreamReport {
    /// The sampler's parameters.
    pub spec: Option<SpecRecord>,
    /// Offset of the newest commit: the history's end.
    pub end: u64,
    /// Global batches in the history.
    pub batches: u64,
    /// Shares read by attempts that a later epoch superseded (rolled-back steps).
    pub superseded: u64,
    /// Offsets below `end` with no attempt.
    pub gaps: Vec<u64>,
    /// Offsets whose chosen attempt lacks some rank's share, with the ranks.
    pub incomplete: Vec<(u64, Vec<usize>)>,
    /// Offsets whose global batch differs from the one the parameters name.
    pub wrong_batches: Vec<u64>,
    /// Per data epoch touched by the history.
    pub data_epochs: Vec<DataEpochReport>,
}

/// Exactly-once accounting of one data epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DataEpochReport {
    /// The pass.
    pub data_epoch: u64,
    /// Stream positions of this pass inside the history (the whole pass unless it is the last).
    pub positions: u64,
    /// Indices read exactly once.
    pub once: u64,
    /// Positions of the pass no index was read for.
    pub missing: u64,
    /// Reads beyond the first of an index.
    pub repeated: u64,
}

impl StreamReport {
    /// Whether the history reads every index exactly once per pass, in the one-worker order.
    pub fn ok(&self) -> bool {
        self.gaps.is_empty()
            && self.incomplete.is_empty()
            && self.wrong_batches.is_empty()
            && self
                .data_epochs
                .iter()
                .all(|d| d.missing == 0 && d.repeated == 0)
    }
}

/// One attempt at a global batch: each rank's share (`None` until recorded).
struct Attempt {
    size: usize,
    shares: Vec<Option<Vec<u64>>>,
}

/// Checks every sampler's history in `records` (all ranks' ledgers, any order).
pub fn check(records: &[Record]) -> Vec<StreamReport> {
    let mut specs: BTreeMap<SpecRecord, Vec<&Record>> = BTreeMap::new();
    for r in records {
        let (Record::Read { spec, .. } | Record::Commit { spec, .. }) = r;
        specs.entry(*spec).or_default().push(r);
    }
    specs
        .into_iter()
        .map(|(spec, recs)| check_stream(spec, &recs))
        .collect()
}

fn check_stream(spec: SpecRecord, records: &[&Record]) -> StreamReport {
    let end = records
        .iter()
        .filter_map(|r| match r {
            Record::Commit { offset, .. } => Some(*offset),
            Record::Read { .. } => None,
        })
        .max()
        .unwrap_or(0);
    let mut attempts = attempts_by_offset(records);
    let mut report = StreamReport {
        spec: Some(spec),
        end,
        ..StreamReport::default()
    };
    let mut sampler = ElasticSampler::new(spec.into()).ok();
    let mut by_pass: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for offset in (0..end).step_by(spec.global_batch as usize) {
        let Some(mut tries) = attempts.remove(&offset) else {
            report.gaps.push(offset);
            continue;
        };
        let (_, chosen) = tries
            .pop_last()
            .expect("an offset's attempts are never empty");
        report.superseded += shares(tries.values());
        report.batches += 1;
        let missing: Vec<usize> = (0..chosen.size)
            .filter(|r| chosen.shares[*r].is_none())
            .collect();
        let global = chosen.global(spec.global_batch);
        for (pos, index) in global.iter().enumerate() {
            let pass = (offset + pos as u64) / spec.num_samples;
            by_pass.entry(pass).or_default().extend(index);
        }
        if let Some(s) = sampler.as_mut().filter(|_| missing.is_empty()) {
            s.restore(offset);
            if s.peek_global().into_iter().map(Some).ne(global) {
                report.wrong_batches.push(offset);
            }
        }
        if !missing.is_empty() {
            report.incomplete.push((offset, missing));
        }
    }
    report.superseded += shares(attempts.values().flat_map(|t| t.values()));
    report.data_epochs = pass_reports(spec.num_samples, end, by_pass);
    report
}

/// Every read, as attempts by offset, then by epoch.
fn attempts_by_offset(records: &[&Record]) -> BTreeMap<u64, BTreeMap<u64, Attempt>> {
    let mut attempts: BTreeMap<u64, BTreeMap<u64, Attempt>> = BTreeMap::new();
    for r in records {
        if let Record::Read {
            epoch,
            rank,
            size,
            offset,
            indices,
            ..
        } = r
        {
            let a = attempts
                .entry(*offset)
                .or_default()
                .entry(*epoch)
                .or_insert_with(|| Attempt {
                    size: *size,
                    shares: vec![None; *size],
                });
            if let Some(slot) = a.shares.get_mut(*rank) {
                *slot = Some(indices.clone());
            }
        }
    }
    attempts
}

/// Shares recorded by `attempts`.
fn shares<'a>(attempts: impl Iterator<Item = &'a Attempt>) -> u64 {
    attempts
        .map(|a| a.shares.iter().flatten().count() as u64)
        .sum()
}

impl Attempt {
    /// The global batch its shares make up, position by position (`None` where a share is
    /// missing or short).
    fn global(&self, batch: u64) -> Vec<Option<u64>> {
        let mut global = vec![None; batch as usize];
        for (rank, part) in self.shares.iter().enumerate() {
            let range = share(batch, rank, self.size);
            for (pos, index) in range.zip(part.iter().flatten()) {
                global[pos as usize] = Some(*index);
            }
        }
        global
    }
}

/// Exactly-once counts per pass, from the indices the history read in each.
fn pass_reports(n: u64, end: u64, by_pass: BTreeMap<u64, Vec<u64>>) -> Vec<DataEpochReport> {
    (0..end.div_ceil(n))
        .map(|d| {
            let mut read = by_pass.get(&d).cloned().unwrap_or_default();
            read.sort_unstable();
            let runs = read.chunk_by(|a, b| a == b);
            let (mut distinct, mut once) = (0, 0);
            for run in runs {
                distinct += 1;
                once += u64::from(run.len() == 1);
            }
            let positions = end.min((d + 1) * n) - d * n;
            DataEpochReport {
                data_epoch: d,
                positions,
                once,
                missing: positions.saturating_sub(distinct),
                repeated: read.len() as u64 - distinct,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
