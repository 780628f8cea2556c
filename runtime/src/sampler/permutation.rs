//! A seeded permutation of `0..n` that is never materialised: a balanced Feistel network on the
//! smallest even power of two not below `n`, walked until it lands inside `0..n` (cycle
//! walking). It is a bijection for any keys, costs O(1) memory whatever `n`, and each step
//! expects fewer than four walks, since the domain is under four times `n`.

/// Feistel rounds; four make the round functions' outputs look independent for shuffling.
const ROUNDS: usize = 4;

/// A permutation of `0..n`, fixed by its seed.
#[derive(Clone, Debug)]
pub(crate) struct Permutation {
    n: u64,
    half: u32,
    keys: [u64; ROUNDS],
}

impl Permutation {
    /// The permutation of `0..n` (`n` at most 2^62) that `seed` names.
    pub(crate) fn new(n: u64, seed: u64) -> Permutation {
        assert!(n > 0 && n <= 1 << 62, "permutation of {n} elements");
        let bits = (64 - (n - 1).leading_zeros()).max(2).next_multiple_of(2);
        let mut keys = [0; ROUNDS];
        for (i, k) in keys.iter_mut().enumerate() {
            *k = splitmix64(seed ^ splitmix64(i as u64 + 1));
        }
        Permutation {
            n,
            half: bits / 2,
            keys,
        }
    }

    /// Where `i` (in `0..n`) goes.
    pub(crate) fn apply(&self, i: u64) -> u64 {
        debug_assert!(i < self.n);
        let mut x = self.encrypt(i);
        while x >= self.n {
            x = self.encrypt(x);
        }
        x
    }

    fn encrypt(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half) - 1;
        let (mut left, mut right) = (x >> self.half, x & mask);
        for k in self.keys {
            (left, right) = (right, left ^ (splitmix64(k ^ right) & mask));
        }
        (left << self.half) | right
    }
}

/// splitmix64 of `z`: a cheap 64-bit mixing function (also what the demo trainer's data is
/// made of).
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::Permutation;

    proptest! {
        #[test]
        fn is_a_bijection(n in 1u64..3000, seed: u64) {
            let p = Permutation::new(n, seed);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let j = p.apply(i);
                prop_assert!(j < n && !seen[j as usize], "{i} -> {j}");
                seen[j as usize] = true;
            }
        }
    }

    #[test]
    fn seeds_give_different_orders_and_large_domains_work() {
        let (a, b) = (Permutation::new(1000, 1), Permutation::new(1000, 2));
        let moved = (0..1000).filter(|i| a.apply(*i) != b.apply(*i)).count();
        assert!(moved > 900, "{moved}");
        let big = Permutation::new(1 << 62, 7);
        assert!((0..1000).all(|i| big.apply(i) < 1 << 62));
        assert_eq!(Permutation::new(1, 9).apply(0), 0);
    }
}
