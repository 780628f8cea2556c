//! A buffer cut into pipeline segments, shared by one task's reader and writer futures.
//!
//! The buffer is one slice, or a gather list: several slices that the algorithm treats as one
//! buffer laid end to end (the tensors of a fused bucket, reduced where they lie instead of
//! being packed into a fusion buffer and unpacked again). A segment may then span several
//! slices; [`Seg`] holds its pieces and maps offsets within the segment onto them.

use std::{
    cell::{Ref, RefCell, RefMut},
    collections::VecDeque,
    ops::Range,
};

use crate::{
    error::{CollectiveError, Result},
    schedule,
};

/// One pipeline segment: its bytes, in one piece or (within a gather list) several.
pub(crate) struct Seg<'b> {
    parts: Vec<&'b mut [u8]>,
    len: usize,
}

impl<'b> Seg<'b> {
    /// Total bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The pieces, in order (none for an empty segment).
    pub(crate) fn parts(&self) -> impl Iterator<Item = &[u8]> {
        self.parts.iter().map(|p| &**p)
    }

    /// The pieces, mutably.
    pub(crate) fn parts_mut(&mut self) -> impl Iterator<Item = &mut [u8]> {
        self.parts.iter_mut().map(|p| &mut **p)
    }

    /// The segment as one slice, if it is one.
    pub(crate) fn single(&self) -> Option<&[u8]> {
        match &self.parts[..] {
            [] => Some(&[]),
            [one] => Some(one),
            _ => None,
        }
    }

    /// The segment as one mutable slice, if it is one.
    pub(crate) fn single_mut(&mut self) -> Option<&mut [u8]> {
        match &mut self.parts[..] {
            [] => Some(&mut []),
            [one] => Some(one),
            _ => None,
        }
    }

    /// Lays `src` over the segment from byte `off`: calls `f(dst, src_piece, at)` for each piece
    /// of the segment it overlaps, `at` being the piece's offset within the segment.
    pub(crate) fn overlay(
        &mut self,
        off: usize,
        src: &[u8],
        mut f: impl FnMut(&mut [u8], &[u8], usize),
    ) {
        let end = off + src.len();
        let mut start = 0;
        for part in &mut self.parts {
            let (lo, hi) = (start.max(off), (start + part.len()).min(end));
            if lo < hi {
                f(
                    &mut part[lo - start..hi - start],
                    &src[lo - off..hi - off],
                    lo,
                );
            }
            start += part.len();
            if start >= end {
                break;
            }
        }
    }
}

/// The segments of one buffer (see the module docs).
///
/// Algorithms guarantee that the writer only reads segments the reader has finished with, so a
/// borrow conflict is a bug; it surfaces as an error, not a panic.
pub(crate) struct Segments<'b> {
    cells: Vec<RefCell<Seg<'b>>>,
    lens: Vec<usize>,
    starts: Vec<usize>,
    /// `first[c]..first[c + 1]` are the segment ids of chunk `c`.
    first: Vec<usize>,
}

impl<'b> Segments<'b> {
    /// Cuts one contiguous buffer.
    pub(crate) fn new(buf: &'b mut [u8], chunks: &[Range<usize>], seg_bytes: usize) -> Self {
        Self::gather(vec![buf], chunks, seg_bytes)
    }

    /// Cuts the buffer that `parts` make laid end to end; `chunks` must tile it.
    pub(crate) fn gather(
        parts: Vec<&'b mut [u8]>,
        chunks: &[Range<usize>],
        seg_bytes: usize,
    ) -> Self {
        let mut rest: VecDeque<&'b mut [u8]> = parts.into();
        let (mut cells, mut lens, mut starts, mut first, mut offset) =
            (Vec::new(), Vec::new(), Vec::new(), vec![0], 0);
        for chunk in chunks {
            debug_assert_eq!(chunk.start, offset, "chunks must tile the buffer");
            for seg in schedule::segments(chunk.clone(), seg_bytes) {
                starts.push(seg.start);
                lens.push(seg.len());
                cells.push(RefCell::new(take(&mut rest, seg.len())));
                offset = seg.end;
            }
            first.push(cells.len());
        }
        debug_assert!(
            rest.iter().all(|p| p.is_empty()),
            "chunks must tile the buffer"
        );
        Segments {
            cells,
            lens,
            starts,
            first,
        }
    }

    pub(crate) fn of_chunk(&self, c: usize) -> Range<usize> {
        self.first[c]..self.first[c + 1]
    }

    /// The byte range of every segment within the buffer, by id.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.starts.iter().zip(&self.lens).map(|(s, l)| *s..s + l)
    }

    pub(crate) fn count(&self) -> usize {
        self.cells.len()
    }

    pub(crate) fn len(&self, id: usize) -> usize {
        self.lens[id]
    }

    pub(crate) fn get(&self, id: usize) -> Result<Ref<'_, Seg<'b>>> {
        self.cells[id].try_borrow().map_err(|_| overlap(id))
    }

    pub(crate) fn get_mut(&self, id: usize) -> Result<RefMut<'_, Seg<'b>>> {
        self.cells[id].try_borrow_mut().map_err(|_| overlap(id))
    }
}

/// Takes the next `len` bytes off the front of `rest`, splitting a slice where needed.
fn take<'b>(rest: &mut VecDeque<&'b mut [u8]>, mut len: usize) -> Seg<'b> {
    let mut seg = Seg {
        parts: Vec::with_capacity(1),
        len,
    };
    while len > 0 {
        let Some(head) = rest.pop_front() else {
            debug_assert!(false, "chunks run past the buffer");
            seg.len -= len;
            break;
        };
        if head.len() > len {
            let (now, later) = head.split_at_mut(len);
            rest.push_front(later);
            seg.parts.push(now);
            break;
        }
        len -= head.len();
        if !head.is_empty() {
            seg.parts.push(head);
        }
    }
    seg
}

fn overlap(id: usize) -> CollectiveError {
    CollectiveError::Poisoned(format!(
        "internal: segment {id} used by reader and writer at once"
    ))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Cutting a gather list gives the same segments, byte for byte, as cutting the packed
        /// buffer, and `overlay` writes exactly where a slice of the packed buffer would.
        #[test]
        fn a_gather_list_cuts_like_its_packed_buffer(
            lens in proptest::collection::vec(0usize..40, 0..12),
            n in 1usize..5,
            seg in 1usize..30,
            at in 0usize..1000,
        ) {
            let total: usize = lens.iter().sum();
            let packed: Vec<u8> = (0..total).map(|i| i as u8).collect();
            let mut copy = packed.clone();
            let mut parts = Vec::new();
            let mut rest = &mut copy[..];
            for l in &lens {
                let (a, b) = std::mem::take(&mut rest).split_at_mut(*l);
                parts.push(a);
                rest = b;
            }
            let chunks: Vec<Range<usize>> = schedule::chunks(total, n);
            let segs = Segments::gather(parts, &chunks, seg);
            let mut plain = packed.clone();
            let whole = Segments::new(&mut plain, &chunks, seg);
            prop_assert_eq!(segs.count(), whole.count());
            prop_assert_eq!(segs.ranges().collect::<Vec<_>>(), whole.ranges().collect::<Vec<_>>());
            for (id, r) in segs.ranges().enumerate() {
                let got: Vec<u8> = segs.get(id)?.parts().flatten().copied().collect();
                prop_assert_eq!(&got[..], &packed[r.clone()]);
                let mut s = segs.get_mut(id)?;
                let off = at % (r.len() + 1);
                let src: Vec<u8> = (off..r.len()).map(|i| !(i as u8)).collect();
                s.overlay(off, &src, |d, p, _| d.copy_from_slice(p));
                let mut w = whole.get_mut(id)?;
                w.single_mut().expect("one slice")[off..].copy_from_slice(&src);
                let got: Vec<u8> = s.parts().flatten().copied().collect();
                let want: Vec<u8> = w.parts().flatten().copied().collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
