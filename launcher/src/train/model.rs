//! A small deterministic training problem: logistic regression on generated data.
//!
//! Every step's global batch is split into a fixed number of *shards*; rank `r` of `n`
//! computes the shards `s` with `s % n == r` and writes each one's gradient into the shard's
//! own slot of a zeroed buffer. After an allreduce (sum) every slot holds exactly one rank's
//! contribution plus zeros, which floating point adds exactly, and the slots are summed in shard
//! order. So the result is bitwise the same for any world size and any schedule of failures:
//! a faulty run can be checked against a fault-free one for equality, not closeness.

use ringrun_runtime::sampler::splitmix64;

/// The problem's shape and seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Problem {
    pub(crate) dim: usize,
    pub(crate) shards: usize,
    pub(crate) per_shard: usize,
    pub(crate) seed: u64,
    pub(crate) lr: f64,
}

impl Default for Problem {
    fn default() -> Self {
        Problem {
            dim: 16,
            shards: 16,
            per_shard: 8,
            seed: 2026,
            lr: 0.5,
        }
    }
}

/// Data is a pure function of (seed, sample, feature).
fn uniform(seed: u64, i: u64, j: u64) -> f64 {
    let bits = splitmix64(seed ^ splitmix64(i.wrapping_mul(0x1000_0000_01b3) ^ splitmix64(j)));
    (bits >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

impl Problem {
    /// Values per slot: the gradient and the loss.
    pub(crate) fn slot_len(&self) -> usize {
        self.dim + 1
    }

    /// Length of the buffer one step allreduces.
    pub(crate) fn buffer_len(&self) -> usize {
        self.shards * self.slot_len()
    }

    fn sample(&self, index: u64) -> (Vec<f64>, f64) {
        let x: Vec<f64> = (0..self.dim as u64)
            .map(|j| uniform(self.seed, index, j))
            .collect();
        // The hidden model: alternating weights; labels with 10 % noise.
        let margin: f64 = x
            .iter()
            .enumerate()
            .map(|(j, v)| if j % 2 == 0 { *v } else { -0.5 * v })
            .sum();
        let flip = uniform(self.seed ^ 0xdead, index, 0) > 0.8;
        let y = if (margin > 0.0) != flip { 1.0 } else { 0.0 };
        (x, y)
    }

    /// Writes the gradient and loss of shard `shard` at `step` into its slot of `buf`.
    pub(crate) fn shard_gradient(&self, w: &[f64], step: u64, shard: usize, buf: &mut [f64]) {
        let slot = &mut buf[shard * self.slot_len()..(shard + 1) * self.slot_len()];
        slot.fill(0.0);
        let batch = (self.shards * self.per_shard) as u64;
        for k in 0..self.per_shard as u64 {
            let index = step * batch + (shard * self.per_shard) as u64 + k;
            let (x, y) = self.sample(index % 100_000);
            let z: f64 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
            let p = 1.0 / (1.0 + (-z).exp());
            for (g, xj) in slot[..self.dim].iter_mut().zip(&x) {
                *g += (p - y) * xj;
            }
            let eps = 1e-12;
            slot[self.dim] -= y * (p + eps).ln() + (1.0 - y) * (1.0 - p + eps).ln();
        }
    }

    /// The slots rank `rank` of `size` fills at `step` (the others stay zero).
    pub(crate) fn local_gradients(
        &self,
        w: &[f64],
        step: u64,
        rank: usize,
        size: usize,
    ) -> Vec<f64> {
        let mut buf = vec![0.0; self.buffer_len()];
        for shard in (0..self.shards).filter(|s| s % size == rank) {
            self.shard_gradient(w, step, shard, &mut buf);
        }
        buf
    }

    /// Applies the summed slots to `w`; returns the step's mean loss.
    pub(crate) fn apply(&self, w: &mut [f64], reduced: &[f64]) -> f64 {
        let mut total = vec![0.0; self.slot_len()];
        for slot in reduced.chunks_exact(self.slot_len()) {
            for (t, v) in total.iter_mut().zip(slot) {
                *t += v;
            }
        }
        let batch = (self.shards * self.per_shard) as f64;
        for (wj, g) in w.iter_mut().zip(&total) {
            *wj -= self.lr * g / batch;
        }
        total[self.dim] / batch
    }

    /// The fault-free result of `steps` steps, computed in one process.
    pub(crate) fn reference(&self, steps: u64) -> (Vec<f64>, Vec<f64>) {
        let mut w = vec![0.0; self.dim];
        let mut losses = Vec::new();
        for step in 0..steps {
            let g = self.local_gradients(&w, step, 0, 1);
            losses.push(self.apply(&mut w, &g));
        }
        (w, losses)
    }
}

/// The committed state: the step completed and the weights.
pub(crate) fn encode(step: u64, w: &[f64]) -> Vec<u8> {
    let mut out = step.to_le_bytes().to_vec();
    w.iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    out
}

/// Inverse of [`encode`]; `None` if the bytes do not fit `dim` weights.
pub(crate) fn decode(bytes: &[u8], dim: usize) -> Option<(u64, Vec<f64>)> {
    if bytes.len() != 8 + 8 * dim {
        return None;
    }
    let word = |c: &[u8]| c.try_into().ok();
    let step = u64::from_le_bytes(word(&bytes[..8])?);
    let w = bytes[8..]
        .chunks_exact(8)
        .map(|c| word(c).map(f64::from_le_bytes))
        .collect::<Option<_>>()?;
    Some((step, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_world_size_gives_bitwise_the_same_model() {
        let p = Problem::default();
        let (reference, losses) = p.reference(20);
        assert!(losses[19] < losses[0], "it learns: {losses:?}");
        for size in [2, 3, 5] {
            let mut w = vec![0.0; p.dim];
            for step in 0..20 {
                let mut sum = vec![0.0; p.buffer_len()];
                for rank in 0..size {
                    let g = p.local_gradients(&w, step, rank, size);
                    sum.iter_mut().zip(&g).for_each(|(s, v)| *s += v);
                }
                p.apply(&mut w, &sum);
            }
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&w), bits(&reference), "world size {size}");
        }
    }

    #[test]
    fn state_round_trips() {
        let w = vec![1.5, -2.0, 0.25];
        assert_eq!(decode(&encode(7, &w), 3), Some((7, w)));
        assert_eq!(decode(&[0; 5], 3), None);
    }
}
