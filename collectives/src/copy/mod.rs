//! Copy kernels, beside the reduce kernels (`reduce`): every large copy into, out of and between
//! transports' buffers goes through [`copy`] (glibc's memcpy without its slow case on AMD Zen)
//! or, where a result is too large to stay in the cache, through streaming stores. Algorithms
//! say which with a [`StoreKind`].

#![allow(unsafe_code)] // SIMD loads and (streaming) stores; each block has a SAFETY note.

mod memcpy;
mod stream;

pub(crate) use memcpy::copy;

/// How results reach the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// Ordinary stores: the result stays in the cache for whoever reads it next.
    Cached,
    /// Streaming stores (`stream`): for results too large to stay in the cache, whose lines
    /// would otherwise be read from memory before being overwritten.
    Streaming,
}

impl StoreKind {
    /// `dst.copy_from_slice(src)`, with this kind of store.
    pub fn copy(self, dst: &mut [u8], src: &[u8]) {
        match self {
            StoreKind::Cached => memcpy::copy(dst, src),
            StoreKind::Streaming => stream::copy(dst, src),
        }
    }
}
