//! Copies that write with streaming (non-temporal) stores: the lines go to memory without
//! being read first and without filling the cache.
//!
//! An ordinary store to a line not in the cache first reads it (read for ownership), so writing
//! a large result costs two passes over memory where one would do. Where a result is too large
//! to stay in the cache anyway, streaming stores save that pass; where it would stay, they
//! throw away the cache's help, so callers pick them by size.

/// `dst.copy_from_slice(src)`, with streaming stores for the 16-byte-aligned middle of `dst`
/// where the CPU has them (every x86-64 does); visible to other threads when this returns.
pub(crate) fn copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "streaming copy of unequal slices");
    #[cfg(target_arch = "x86_64")]
    {
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        let body = (dst.len() - head) / 64 * 64;
        dst[..head].copy_from_slice(&src[..head]);
        if body > 0 {
            x86::stream_body(&mut dst[head..head + body], &src[head..head + body]);
        }
        dst[head + body..].copy_from_slice(&src[head + body..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};

    /// Copies whole 64-byte lines into a 16-byte-aligned `dst`, then fences.
    pub(super) fn stream_body(dst: &mut [u8], src: &[u8]) {
        debug_assert!(dst.len() == src.len() && dst.len().is_multiple_of(64));
        debug_assert!(dst.as_ptr().align_offset(16) == 0);
        for (d, s) in dst.chunks_exact_mut(64).zip(src.chunks_exact(64)) {
            for k in 0..4 {
                // SAFETY: SSE2 is part of x86-64. `s` and `d` are 64 bytes each, so the four
                // 16-byte accesses at `16 k` are in bounds; the loads are unaligned loads, and
                // `d` is 16-byte aligned (its slice starts aligned and steps by 64) as the
                // streaming store requires.
                unsafe {
                    let v = _mm_loadu_si128(s.as_ptr().add(16 * k).cast::<__m128i>());
                    _mm_stream_si128(d.as_mut_ptr().add(16 * k).cast::<__m128i>(), v);
                }
            }
        }
        // Streaming stores are weakly ordered: fence them before anything that publishes the
        // buffer (this task may resume on another core).
        // SAFETY: SSE is part of x86-64; a fence has no other effect.
        unsafe { _mm_sfence() };
    }
}

#[cfg(test)]
mod tests {
    use super::copy;

    #[test]
    fn copies_every_byte_at_every_alignment_and_length() {
        let src: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for off in 0..17 {
            for len in [0, 1, 15, 16, 63, 64, 65, 130, 500, 983 - off] {
                let mut dst = vec![0u8; 1000];
                copy(&mut dst[off..off + len], &src[off..off + len]);
                assert_eq!(
                    &dst[off..off + len],
                    &src[off..off + len],
                    "off {off} len {len}"
                );
                assert!(dst[..off].iter().all(|b| *b == 0), "wrote before");
                assert!(dst[off + len..].iter().all(|b| *b == 0), "wrote after");
            }
        }
    }
}
