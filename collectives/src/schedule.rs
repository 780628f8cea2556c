//! Pure partition math shared by the algorithms: how a buffer splits into per-rank chunks and
//! how a chunk splits into pipeline segments.

use std::ops::Range;

/// Splits `count` elements into `parts` contiguous chunks; the first `count % parts` chunks are
/// one element longer. Always returns `parts` ranges (some empty when `count < parts`).
pub fn chunks(count: usize, parts: usize) -> Vec<Range<usize>> {
    assert!(parts > 0, "cannot split into zero parts");
    let (base, extra) = (count / parts, count % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            start += len;
            start - len..start
        })
        .collect()
}

/// Splits `range` into segments of at most `seg` units. An empty range yields one empty
/// segment, so that every step of an algorithm still exchanges a frame (and with it, the
/// header that lets ranks detect a mismatch).
pub fn segments(range: Range<usize>, seg: usize) -> Vec<Range<usize>> {
    assert!(seg > 0, "segment size must be positive");
    if range.is_empty() {
        return std::iter::once(range.start..range.start).collect();
    }
    range
        .clone()
        .step_by(seg)
        .map(|s| s..(s + seg).min(range.end))
        .collect()
}

/// The largest power of two not above `n` (`n >= 1`).
pub fn pow2_floor(n: usize) -> usize {
    assert!(n > 0);
    1 << (usize::BITS - 1 - n.leading_zeros())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn small_cases() {
        assert_eq!(chunks(7, 3), vec![0..3, 3..5, 5..7]);
        assert_eq!(chunks(1, 3), vec![0..1, 1..1, 1..1]);
        assert_eq!(segments(0..0, 4), vec![0..0]);
        assert_eq!(segments(2..11, 4), vec![2..6, 6..10, 10..11]);
        assert_eq!((pow2_floor(1), pow2_floor(6), pow2_floor(8)), (1, 4, 8));
    }

    proptest! {
        #[test]
        fn chunks_tile_the_buffer(count in 0usize..10_000, parts in 1usize..64) {
            let c = chunks(count, parts);
            prop_assert_eq!(c.len(), parts);
            prop_assert_eq!(c[0].start, 0);
            prop_assert_eq!(c[parts - 1].end, count);
            for w in c.windows(2) {
                prop_assert_eq!(w[0].end, w[1].start);
                prop_assert!(w[0].len() >= w[1].len() && w[0].len() - w[1].len() <= 1);
            }
        }

        #[test]
        fn segments_tile_the_range(start in 0usize..100, len in 0usize..5000, seg in 1usize..700) {
            let s = segments(start..start + len, seg);
            prop_assert_eq!(s[0].start, start);
            prop_assert_eq!(s.last().unwrap().end, start + len);
            prop_assert!(s.iter().all(|r| r.len() <= seg));
            for w in s.windows(2) { prop_assert_eq!(w[0].end, w[1].start); }
        }
    }
}
