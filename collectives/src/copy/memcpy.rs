//! `copy_from_slice` without memcpy's slow case on AMD Zen.
//!
//! From about 2 KiB glibc's memcpy copies with `rep movsb`. On Zen 4 that instruction runs at a
//! sixteenth of its speed when the destination sits 1–15 bytes above the source modulo 4 KiB
//! (64 KiB copies: 3.2 against 53 GB/s on this project's machines, `benches/compare/
//! skew_copy.c`; glibc bug 30994, fixed in 2.39, while Debian 12 ships 2.36). A skew that is a
//! multiple of 16 never meets it, as with the benchmark's aligned buffers and frames. A caller's
//! tensor need not be aligned: a view at an odd offset meets it on about one ring frame in 270
//! (15 skews in 4096, as frames move the write position), and on every arena copy if its offset
//! against the arena slot is unlucky. Those copies go through a plain vector loop, which runs at
//! about 40 GB/s there.

/// Destination minus source modulo 4 KiB, in this band: `rep movsb` slows down.
const SLOW_BAND: std::ops::Range<usize> = 1..16;

/// Below this glibc does not use `rep movsb` at all, so nothing is worth checking.
const CHECK_FROM: usize = 2048;

/// `dst.copy_from_slice(src)`.
pub(crate) fn copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy of unequal slices");
    let skew = (dst.as_ptr() as usize).wrapping_sub(src.as_ptr() as usize) & 4095;
    if dst.len() < CHECK_FROM || !SLOW_BAND.contains(&skew) {
        dst.copy_from_slice(src);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let body = dst.len() / 64 * 64;
        x86::copy_lines(&mut dst[..body], &src[..body]);
        dst[body..].copy_from_slice(&src[body..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128};

    /// Copies whole 64-byte blocks with 16-byte loads and stores. Not a loop of `copy_from_slice`
    /// or plain element copies: the compiler would turn either back into one memcpy call.
    #[inline(never)]
    pub(super) fn copy_lines(dst: &mut [u8], src: &[u8]) {
        debug_assert!(dst.len() == src.len() && dst.len().is_multiple_of(64));
        for (d, s) in dst.chunks_exact_mut(64).zip(src.chunks_exact(64)) {
            // SAFETY: SSE2 is part of x86-64. `s` and `d` are 64 bytes each, so the four
            // 16-byte accesses at 0, 16, 32, 48 are in bounds; all are unaligned accesses, and
            // `d` (a `&mut`) does not overlap `s`.
            unsafe {
                let v0 = _mm_loadu_si128(s.as_ptr().cast::<__m128i>());
                let v1 = _mm_loadu_si128(s.as_ptr().add(16).cast::<__m128i>());
                let v2 = _mm_loadu_si128(s.as_ptr().add(32).cast::<__m128i>());
                let v3 = _mm_loadu_si128(s.as_ptr().add(48).cast::<__m128i>());
                _mm_storeu_si128(d.as_mut_ptr().cast::<__m128i>(), v0);
                _mm_storeu_si128(d.as_mut_ptr().add(16).cast::<__m128i>(), v1);
                _mm_storeu_si128(d.as_mut_ptr().add(32).cast::<__m128i>(), v2);
                _mm_storeu_si128(d.as_mut_ptr().add(48).cast::<__m128i>(), v3);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::copy;

    /// Every skew in and around the slow band, at lengths on both sides of the check and of a
    /// 64-byte block, copies exactly the bytes asked for.
    #[test]
    fn copies_every_byte_at_every_skew() {
        let src: Vec<u8> = (0..12_000u32).map(|i| (i * 7 + 3) as u8).collect();
        for skew in [0, 1, 8, 15, 16, 17, 64, 4095] {
            for len in [0, 1, 63, 2047, 2048, 2049, 4096 + 7, 8000] {
                let mut dst = vec![0u8; 12_000 + 4096];
                // Place the destination `skew` bytes above the source, modulo 4 KiB.
                let base = (src.as_ptr() as usize + skew).wrapping_sub(dst.as_ptr() as usize);
                let at = base & 4095;
                copy(&mut dst[at..at + len], &src[..len]);
                assert_eq!(&dst[at..at + len], &src[..len], "skew {skew} len {len}");
                assert!(dst[..at].iter().all(|b| *b == 0), "wrote before");
                assert!(dst[at + len..].iter().all(|b| *b == 0), "wrote after");
            }
        }
    }
}
