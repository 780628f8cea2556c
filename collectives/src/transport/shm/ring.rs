//! Lock-free single-producer, single-consumer byte rings in shared memory, as tokio byte
//! streams ([`ShmReader`], [`ShmWriter`]), so that the stream framing runs over them unchanged.
//!
//! `head` and `tail` count bytes ever written and read; the producer owns `head` and the bytes
//! in `[tail, head)` belong to the consumer. Publishing is a `Release` store of the counter after
//! the copy; the other side `Acquire`-loads it before touching the bytes. Each side caches the
//! other's counter and reloads it only when its cached view says full (or empty), so the shared
//! cache lines move only when needed. Copies go in pieces of at most [`PIECE`] bytes, each
//! published at once, so the consumer copies out while the producer is still copying in.
//!
//! Closing: each side sets its `closed` flag (on shutdown or drop) and rings the other. A reader
//! that finds the ring empty and the producer closed sees end of stream; a writer whose consumer
//! closed gets a broken pipe. A producer that dies without closing is found by the liveness
//! check while the reader waits; bytes it published before dying are still delivered first.

use std::{
    io,
    pin::Pin,
    ptr::NonNull,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    super::stream::Lend,
    segment::{CTL_BYTES, Mapping},
    wake::{Local, Peer, Waiter},
};

/// Largest copy published at once.
const PIECE: usize = 64 * 1024;

/// One ring's control block: the producer's cache line, then the consumer's.
#[repr(C, align(64))]
struct Ctl {
    head: AtomicU64,
    producer_closed: AtomicU32,
    /// The producer parked waiting for space.
    producer_waiting: AtomicU32,
    _producer_line: [u8; 48],
    tail: AtomicU64,
    consumer_closed: AtomicU32,
    /// The consumer parked waiting for bytes.
    consumer_waiting: AtomicU32,
    _consumer_line: [u8; 48],
}

const _: () = assert!(std::mem::size_of::<Ctl>() == CTL_BYTES);

/// Where one ring lives, and what keeps that memory mapped.
struct Ring {
    _map: Arc<Mapping>,
    ctl: NonNull<Ctl>,
    data: NonNull<u8>,
    /// A power of two.
    cap: usize,
}

// SAFETY: the pointers target the shared mapping kept alive by `map`; all shared state is
// atomics, and data bytes are handed between the two sides by the head/tail protocol.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    /// The ring from rank `from` inside `map` (the consumer's segment).
    fn new(map: Arc<Mapping>, from: usize) -> Ring {
        let ctl = map.ctl(from).cast::<Ctl>();
        let (data, cap) = map.data(from);
        assert!(cap.is_power_of_two(), "ring of {cap} bytes");
        Ring {
            _map: map,
            ctl,
            data,
            cap,
        }
    }

    fn ctl(&self) -> &Ctl {
        // SAFETY: `ctl` is CTL_BYTES-aligned inside the live mapping (`self._map`), zero-filled by
        // the kernel when the file was sized, and all-zero bytes are valid atomics. Both
        // processes only ever access it through these atomics.
        unsafe { self.ctl.as_ref() }
    }

    /// Copies `src` into the ring at byte position `pos` (wrapping).
    ///
    /// # Safety
    /// The caller is the producer and owns `[pos, pos + src.len())`: that many bytes are free.
    unsafe fn copy_in(&self, pos: u64, src: &[u8]) {
        let at = pos as usize & (self.cap - 1);
        let first = src.len().min(self.cap - at);
        // SAFETY: both pieces lie inside the data area (at + first <= cap, rest <= at), which no
        // one else reads or writes until the caller publishes them (the caller's contract), so
        // they may be borrowed mutably; `src` is the caller's memory, not the ring's.
        let (tail, head) = unsafe {
            (
                std::slice::from_raw_parts_mut(self.data.as_ptr().add(at), first),
                std::slice::from_raw_parts_mut(self.data.as_ptr(), src.len() - first),
            )
        };
        crate::copy::copy(tail, &src[..first]);
        crate::copy::copy(head, &src[first..]);
    }

    /// Copies ring bytes from position `pos` (wrapping) into `dst`.
    ///
    /// # Safety
    /// The caller is the consumer and `[pos, pos + dst.len())` was published to it.
    unsafe fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        let at = pos as usize & (self.cap - 1);
        let first = dst.len().min(self.cap - at);
        // SAFETY: inside the data area (as in `copy_in`); the producer does not touch
        // published, unconsumed bytes, so they may be borrowed while read.
        let (tail, head) = unsafe {
            (
                std::slice::from_raw_parts(self.data.as_ptr().add(at), first),
                std::slice::from_raw_parts(self.data.as_ptr(), dst.len() - first),
            )
        };
        let (into_tail, into_head) = dst.split_at_mut(first);
        crate::copy::copy(into_tail, tail);
        crate::copy::copy(into_head, head);
    }
}

/// The consumer end of the ring from a peer into this rank.
pub struct ShmReader {
    ring: Ring,
    local: Arc<Local>,
    peer: Arc<Peer>,
    tail: u64,
    seen_head: u64,
    wait: Waiter,
}

/// The producer end of the ring from this rank into a peer.
pub struct ShmWriter {
    ring: Ring,
    local: Arc<Local>,
    peer: Arc<Peer>,
    head: u64,
    seen_tail: u64,
    wait: Waiter,
}

/// The reader of ring `from` in `own` (our segment) and the writer of ring `me` in `theirs`.
pub(super) fn link(
    own: &Arc<Mapping>,
    theirs: &Arc<Mapping>,
    me: usize,
    peer: Arc<Peer>,
    local: &Arc<Local>,
) -> (ShmReader, ShmWriter) {
    let reader = ShmReader {
        ring: Ring::new(own.clone(), peer.rank),
        local: local.clone(),
        peer: peer.clone(),
        tail: 0,
        seen_head: 0,
        wait: Waiter::new(),
    };
    let writer = ShmWriter {
        ring: Ring::new(theirs.clone(), me),
        local: local.clone(),
        peer,
        head: 0,
        seen_tail: 0,
        wait: Waiter::new(),
    };
    (reader, writer)
}

impl ShmReader {
    /// Waits until the ring holds unread bytes; `Ready(Ok(n))` with `n` of them (0: the
    /// producer closed and everything was read).
    fn poll_filled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let ctl = self.ring.ctl();
        if self.seen_head == self.tail {
            self.seen_head = ctl.head.load(Ordering::Acquire);
        }
        while self.seen_head == self.tail {
            if ctl.producer_closed.load(Ordering::Acquire) != 0 {
                // The flag is set after the last publish: one more look, then end of stream.
                self.seen_head = ctl.head.load(Ordering::Acquire);
                if self.seen_head == self.tail {
                    return Poll::Ready(Ok(0));
                }
                break;
            }
            let tail = self.tail;
            let ready = || ctl.head.load(Ordering::Acquire) != tail;
            let (local, peer) = (&self.local, &self.peer);
            match self.wait.poll(
                cx,
                local,
                || peer.check_alive(),
                &ctl.consumer_waiting,
                ready,
            ) {
                Poll::Ready(Ok(())) => self.seen_head = ctl.head.load(Ordering::Acquire),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.wait.done(&ctl.consumer_waiting);
        Poll::Ready(Ok((self.seen_head - self.tail) as usize))
    }

    /// Marks `n` more bytes consumed and tells a producer waiting for space.
    fn advance(&mut self, n: usize) {
        self.tail += n as u64;
        let ctl = self.ring.ctl();
        ctl.tail.store(self.tail, Ordering::Release);
        self.local.notify(&self.peer, &ctl.producer_waiting);
    }
}

impl AsyncRead for ShmReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let filled = match this.poll_filled(cx) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let n = filled.min(buf.remaining()).min(PIECE);
        let dst = &mut buf.initialize_unfilled_to(n)[..n];
        // SAFETY: we are the only consumer and `[tail, tail + n)` lies below the published head.
        unsafe { this.ring.copy_out(this.tail, dst) };
        buf.advance(n);
        this.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Lending: the consumer reads (reduces from) the ring's bytes where they lie, then gives them
/// back, which is when the producer may overwrite them.
impl Lend for ShmReader {
    const LENDS: bool = true;

    fn poll_lend(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match self.poll_filled(cx) {
            Poll::Ready(Ok(n)) => {
                // Up to the end of the data area; the rest comes after the wrap.
                let at = self.tail as usize & (self.ring.cap - 1);
                Poll::Ready(Ok(n.min(self.ring.cap - at).min(PIECE)))
            }
            other => other,
        }
    }

    fn lent(&self, n: usize) -> &[u8] {
        let at = self.tail as usize & (self.ring.cap - 1);
        assert!(
            at + n <= self.ring.cap && self.tail + n as u64 <= self.seen_head,
            "lending beyond the published bytes"
        );
        // SAFETY: `[tail, tail + n)` was published to us (below `seen_head`) and lies inside the
        // data area without wrapping (checked above). The producer does not write published,
        // unconsumed bytes, and `tail` only moves in `give_back`, which takes `&mut self` and so
        // cannot run while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.ring.data.as_ptr().add(at), n) }
    }

    fn give_back(&mut self, n: usize) {
        self.advance(n);
    }
}

impl AsyncWrite for ShmWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        src: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let ctl = this.ring.ctl();
        let cap = this.ring.cap as u64;
        if ctl.consumer_closed.load(Ordering::Acquire) != 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("rank {} closed its end", this.peer.rank),
            )));
        }
        if src.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.head - this.seen_tail == cap {
            this.seen_tail = ctl.tail.load(Ordering::Acquire);
        }
        while this.head - this.seen_tail == cap {
            let head = this.head;
            let ready = || head - ctl.tail.load(Ordering::Acquire) < cap;
            let (local, peer) = (&this.local, &this.peer);
            match this.wait.poll(
                cx,
                local,
                || peer.check_alive(),
                &ctl.producer_waiting,
                ready,
            ) {
                Poll::Ready(Ok(())) => this.seen_tail = ctl.tail.load(Ordering::Acquire),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            if ctl.consumer_closed.load(Ordering::Acquire) != 0 {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
        }
        this.wait.done(&ctl.producer_waiting);
        let free = (cap - (this.head - this.seen_tail)) as usize;
        let n = free.min(src.len()).min(PIECE);
        // SAFETY: we are the only producer and `[head, head + n)` is free (below tail + cap).
        unsafe { this.ring.copy_in(this.head, &src[..n]) };
        this.head += n as u64;
        ctl.head.store(this.head, Ordering::Release);
        this.local.notify(&this.peer, &ctl.consumer_waiting);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // One piece at a time is as cheap here as a gather: each is a memcpy.
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
        self.poll_write(cx, first)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.ring.ctl().producer_closed.store(1, Ordering::Release);
        this.local.ring(&this.peer);
        Poll::Ready(Ok(()))
    }
}

impl Drop for ShmWriter {
    fn drop(&mut self) {
        self.ring.ctl().producer_closed.store(1, Ordering::Release);
        self.local.ring(&self.peer);
    }
}

impl Drop for ShmReader {
    fn drop(&mut self) {
        self.ring.ctl().consumer_closed.store(1, Ordering::Release);
        self.local.ring(&self.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctl_fields_sit_on_separate_lines() {
        assert_eq!(std::mem::offset_of!(Ctl, tail), 64);
        assert_eq!(std::mem::align_of::<Ctl>(), 64);
    }
}
