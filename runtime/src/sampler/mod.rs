//! The elastic sampler's core (sans-IO): which sample indices each step reads, so that the data
//! is read exactly once per pass however the world changes.
//!
//! The data is a stream of passes (*data epochs*), pass `e` being a seeded permutation of
//! `0..num_samples` ([`permutation`]). A step takes the next `global_batch` positions of the
//! stream, so a batch may end one pass and begin the next; the global batch is the same size at
//! every step, and every index is read exactly once per pass. The sampler's whole state is its
//! [`offset`](ElasticSampler::offset) in the stream: committed with the step's state, it makes
//! a rolled-back step re-read the same global batch, and after a membership change the same
//! global batch is split over the new ranks ([`share`]). Nothing depends on the world size but
//! the split.

pub mod ledger;
mod permutation;

use std::ops::Range;

use permutation::Permutation;
pub use permutation::splitmix64;

/// What a sampler's arguments got wrong. Nothing was built and no state changed; the call
/// fails the same way until its arguments change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SamplerError {
    /// `global_batch` is zero.
    #[error("global_batch must be positive")]
    EmptyBatch,
    /// `global_batch` exceeds `num_samples`.
    #[error("global_batch {global_batch} is larger than num_samples {num_samples}")]
    BatchLargerThanData {
        /// Asked-for global batch.
        global_batch: u64,
        /// Samples in the data.
        num_samples: u64,
    },
    /// `num_samples` is zero or above 2^62.
    #[error("num_samples must be in 1..=2^62, not {0}")]
    Samples(u64),
}

/// A sampler's parameters; every rank must use the same ([`fingerprint`](Self::fingerprint)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplerSpec {
    /// Samples in the data (indices `0..num_samples`).
    pub num_samples: u64,
    /// Indices per step, over all ranks.
    pub global_batch: u64,
    /// Seed of every pass's permutation.
    pub seed: u64,
    /// Whether passes are shuffled (else every pass is `0..num_samples` in order).
    pub shuffle: bool,
}

impl SamplerSpec {
    /// The parameters' errors, if any.
    pub fn check(&self) -> Result<(), SamplerError> {
        if self.num_samples == 0 || self.num_samples > 1 << 62 {
            return Err(SamplerError::Samples(self.num_samples));
        }
        if self.global_batch == 0 {
            return Err(SamplerError::EmptyBatch);
        }
        if self.global_batch > self.num_samples {
            return Err(SamplerError::BatchLargerThanData {
                global_batch: self.global_batch,
                num_samples: self.num_samples,
            });
        }
        Ok(())
    }

    /// A digest of the parameters, for checking that every rank's agree.
    pub fn fingerprint(&self) -> u64 {
        let words = [
            self.num_samples,
            self.global_batch,
            self.seed,
            u64::from(self.shuffle),
        ];
        words
            .iter()
            .fold(0x5eed, |h, w| splitmix64(h ^ splitmix64(*w)))
    }
}

/// Rank `rank`'s part of a global batch of `global_batch` indices over `size` ranks: contiguous
/// positions, the parts' sizes differing by at most one.
pub fn share(global_batch: u64, rank: usize, size: usize) -> Range<u64> {
    assert!(rank < size, "rank {rank} of {size}");
    let (r, n) = (rank as u64, size as u64);
    global_batch * r / n..global_batch * (r + 1) / n
}

/// The sampler: its parameters, its offset in the stream of passes, and the current pass's
/// permutation (O(1) memory, whatever `num_samples`).
#[derive(Clone, Debug)]
pub struct ElasticSampler {
    spec: SamplerSpec,
    offset: u64,
    pass: Option<(u64, Permutation)>,
}

impl ElasticSampler {
    /// A sampler at the start of the first pass.
    pub fn new(spec: SamplerSpec) -> Result<ElasticSampler, SamplerError> {
        spec.check()?;
        Ok(ElasticSampler {
            spec,
            offset: 0,
            pass: None,
        })
    }

    /// Its parameters.
    pub fn spec(&self) -> &SamplerSpec {
        &self.spec
    }

    /// Indices handed out so far, over all ranks: the state to commit.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Goes back (or forward) to a committed offset.
    pub fn restore(&mut self, offset: u64) {
        self.offset = offset;
    }

    /// The pass the next step starts in.
    pub fn data_epoch(&self) -> u64 {
        self.offset / self.spec.num_samples
    }

    /// Rank `rank` of `size`'s indices of the next global batch, in order; the sampler moves on
    /// by one global batch (every rank does the same, so their offsets stay equal).
    pub fn next_share(&mut self, rank: usize, size: usize) -> Vec<u64> {
        let part = share(self.spec.global_batch, rank, size);
        let start = self.offset;
        let out = part.map(|p| self.index_at(start + p)).collect();
        self.offset += self.spec.global_batch;
        out
    }

    /// The whole next global batch, without moving on.
    pub fn peek_global(&mut self) -> Vec<u64> {
        let start = self.offset;
        (0..self.spec.global_batch)
            .map(|p| self.index_at(start + p))
            .collect()
    }

    /// The sample at stream position `at`.
    fn index_at(&mut self, at: u64) -> u64 {
        let n = self.spec.num_samples;
        let (epoch, i) = (at / n, at % n);
        if !self.spec.shuffle {
            return i;
        }
        let perm = match &self.pass {
            Some((e, p)) if *e == epoch => p,
            _ => {
                let seed = splitmix64(self.spec.seed ^ splitmix64(epoch));
                &self.pass.insert((epoch, Permutation::new(n, seed))).1
            }
        };
        perm.apply(i)
    }
}

#[cfg(test)]
mod tests;
