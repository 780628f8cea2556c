//! The host arena: each rank's three staging buffers, in its own segment and readable by every
//! rank of the host, and a phase counter per rank.
//!
//! On it `algo::arena` runs an allreduce as one barrier per round instead of the ring's
//! `2 (n - 1)` hand-offs, which is what wins where ranks outnumber cores and every hand-off
//! waits for the scheduler. This module owns the memory and the synchronisation; the algorithm
//! (which round, which part, when to wait) lives in `algo::arena`.
//!
//! Protocol. A rank writes only its own buffers and control page, and everyone reads them. A
//! rank *publishes* by bumping its phase counter (`Release`) after writing; a reader waits until
//! every rank's counter reaches the phase it needs (`Acquire`) before reading what that phase
//! covers. Every rank publishes the same number of phases per operation, so a phase number
//! names the same step on every rank. The three buffers take rounds in turn (`next_buffer`),
//! and a rank reads a peer's buffer for round `t` only until it publishes the phase that follows
//! the one its reads of round `t` waited for. A rank stages round `t` (into the buffer of round
//! `t - 3`) only after the wait that opens round `t - 1`, and every rank published that phase
//! after it finished reading round `t - 3`, so the buffer is free. (Two buffers would not do:
//! the pipelined allreduce stages round `t + 1` while peers still copy out round `t`.)
//!
//! Agreement. At the start of every operation a rank *announces* its operation header
//! (seqlock-protected, so a reader never acts on a torn copy). A waiting rank that finds a peer
//! announcing the same operation id with another signature fails with `Mismatch`, whichever
//! algorithm that peer runs, and each rank compares all headers after its first wait.
//!
//! Failure. A rank whose operation fails marks its arena aborted (after its error frames went
//! out on the rings, so `last_word` finds them); a dropped arena marks itself closed; both ring
//! every peer. A waiter sees either as `PeerLost` for that rank, and a dead process through
//! the pidfd check of `wake::Waiter`, within milliseconds.

use std::{
    cell::Cell,
    future::Future,
    ops::Range,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering, fence},
    },
    task::{Context, Poll},
};

use super::{
    segment::{ARENA_BUFFERS, ARENA_CTL_BYTES, Mapping},
    wake::{Local, Peer, Waiter},
};
use crate::{
    copy::{self, StoreKind},
    dtype::ReduceOp,
    error::{CollectiveError, Result},
    frame::{HEADER_LEN, Header, OpSig},
    reduce::{self, Order},
    transport::arena::{HostArena, Own, PhaseWait},
};

/// Bytes reduced per pass over the inputs: the accumulator stays in the L1 cache.
const BLOCK: usize = 16 * 1024;
const ABORTED: u32 = 1;
const CLOSED: u32 = 2;

/// One rank's arena control page; each group on its own cache line.
#[repr(C, align(64))]
struct Ctl {
    /// Phases the owner has published.
    phase: AtomicU64,
    _phase_line: [u8; 56],
    /// The owner parked waiting for the others.
    waiting: AtomicU32,
    /// 0 while usable, then [`ABORTED`] or [`CLOSED`].
    state: AtomicU32,
    _state_line: [u8; 56],
    /// Seqlock over `header`: odd while the owner rewrites it.
    seq: AtomicU64,
    header: [AtomicU64; HEADER_LEN / 8],
    _header_line: [u8; 8],
}

const _: () = assert!(std::mem::size_of::<Ctl>() <= ARENA_CTL_BYTES);

/// This rank's view of the arenas of every rank on the host.
pub struct Arena {
    rank: usize,
    /// Every rank's segment by rank, this rank's own included.
    maps: Vec<Arc<Mapping>>,
    /// Every other rank (`None` at this rank's index).
    peers: Vec<Option<Arc<Peer>>>,
    local: Arc<Local>,
    bytes: usize,
    rounds: AtomicU64,
}

impl Arena {
    pub(super) fn new(
        rank: usize,
        maps: Vec<Arc<Mapping>>,
        peers: Vec<Option<Arc<Peer>>>,
        local: Arc<Local>,
    ) -> Arena {
        let bytes = maps.iter().map(|m| m.arena_buf(0).1).min().unwrap_or(0);
        Arena {
            rank,
            maps,
            peers,
            local,
            bytes,
            rounds: AtomicU64::new(0),
        }
    }

    fn ctl(&self, rank: usize) -> &Ctl {
        // SAFETY: the control page is page-aligned inside a live mapping (`self.maps`), zero-filled
        // by the kernel when the file was sized; all-zero bytes are valid atomics, and every
        // process only touches it through these atomics.
        unsafe { self.maps[rank].arena_ctl().cast::<Ctl>().as_ref() }
    }

    /// The header `rank` announced last, if it is not being rewritten right now.
    fn announced(&self, rank: usize) -> Option<Header> {
        let ctl = self.ctl(rank);
        let before = ctl.seq.load(Ordering::Acquire);
        let mut raw = [0u8; HEADER_LEN];
        for (word, bytes) in ctl.header.iter().zip(raw.chunks_exact_mut(8)) {
            bytes.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        fence(Ordering::Acquire);
        let stable =
            before.is_multiple_of(2) && before != 0 && ctl.seq.load(Ordering::Relaxed) == before;
        stable.then(|| Header::decode(&raw).ok()).flatten()
    }

    /// Bytes `range` of `rank`'s buffer `buf`.
    fn view(&self, rank: usize, buf: usize, range: Range<usize>) -> &[u8] {
        let (base, len) = self.maps[rank].arena_buf(buf);
        assert!(
            range.start <= range.end && range.end <= len,
            "outside the arena"
        );
        // SAFETY: inside the live mapping of `rank`'s segment. The caller waited for the phase in
        // which `rank` published these bytes, and `rank` does not write them again before every
        // rank has published a later phase (the protocol above), so they do not change under
        // this borrow.
        unsafe { std::slice::from_raw_parts(base.as_ptr().add(range.start), range.len()) }
    }

    fn reached(&self, phase: u64) -> bool {
        (0..self.size()).all(|r| self.ctl(r).phase.load(Ordering::Acquire) >= phase)
    }

    /// Why the wait for `phase` cannot end: a peer that has not reached it aborted or closed
    /// (one that has can close freely: its part of the wait is done), or a peer's call differs.
    fn trouble(&self, phase: u64, expect: &Header) -> Result<()> {
        // A differing call first: it is the cause, and a peer that saw it may close at once.
        self.verify(expect)?;
        for r in (0..self.size()).filter(|r| *r != self.rank) {
            let ctl = self.ctl(r);
            if ctl.phase.load(Ordering::Acquire) >= phase {
                continue;
            }
            let reason = match ctl.state.load(Ordering::Acquire) {
                0 => continue,
                ABORTED => format!("rank {r} gave up on the operation"),
                _ => format!("rank {r} closed its end"),
            };
            return Err(CollectiveError::PeerLost { rank: r, reason });
        }
        Ok(())
    }

    fn set_state(&self, state: u32) {
        self.ctl(self.rank).state.store(state, Ordering::Release);
        for peer in self.peers.iter().flatten() {
            self.local.ring(peer);
        }
    }
}

impl HostArena for Arena {
    fn size(&self) -> usize {
        self.maps.len()
    }

    fn capacity(&self) -> usize {
        self.bytes
    }

    fn announce(&self, header: &Header) {
        let ctl = self.ctl(self.rank);
        let s = ctl.seq.load(Ordering::Relaxed);
        ctl.seq.store(s | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        for (word, bytes) in ctl.header.iter().zip(header.encode().chunks_exact(8)) {
            let v = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
            word.store(v, Ordering::Relaxed);
        }
        ctl.seq.store((s | 1) + 1, Ordering::Release);
    }

    fn verify(&self, expect: &Header) -> Result<()> {
        for r in (0..self.size()).filter(|r| *r != self.rank) {
            match self.announced(r) {
                Some(h) if h.op_id == expect.op_id => {
                    Header::check(expect, &h).map_err(|detail| CollectiveError::Mismatch {
                        rank: r,
                        detail: format!("rank {r}'s call differs: {detail}"),
                    })?
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn next_buffer(&self) -> usize {
        (self.rounds.fetch_add(1, Ordering::Relaxed) % ARENA_BUFFERS as u64) as usize
    }

    fn stage(&self, buf: usize, at: usize, src: &[u8]) {
        let (base, len) = self.maps[self.rank].arena_buf(buf);
        assert!(at + src.len() <= len, "staging past the arena buffer");
        // SAFETY: inside this rank's own buffer, which no rank reads until this rank publishes
        // the phase covering it (the protocol above), so it may be borrowed mutably; `src` is
        // ordinary memory of this process.
        let dst = unsafe { std::slice::from_raw_parts_mut(base.as_ptr().add(at), src.len()) };
        copy::copy(dst, src);
    }

    fn reduce_into(
        &self,
        buf: usize,
        range: Range<usize>,
        sig: &OpSig,
        own: Own<'_>,
        out: &mut [u8],
        store: StoreKind,
    ) {
        assert_eq!(out.len(), range.len(), "reduction output of another length");
        let mut acc = vec![0u64; BLOCK / 8];
        let acc: &mut [u8] = bytemuck::cast_slice_mut(&mut acc);
        for start in (0..out.len()).step_by(BLOCK) {
            let at = start..(start + BLOCK).min(out.len());
            let acc = &mut acc[..at.len()];
            let theirs = range.start + at.start..range.start + at.end;
            for r in 0..self.size() {
                // Views are taken block by block: this rank's own buffer is written below
                // wherever its operand lies elsewhere, so no borrow of it may be held then.
                let x = match own {
                    Own::In(mine) if r == self.rank => &mine[at.clone()],
                    Own::InOut if r == self.rank => &out[at.clone()],
                    _ => self.view(r, buf, theirs.clone()),
                };
                match r {
                    0 => acc.copy_from_slice(x),
                    _ => reduce::reduce(sig.dtype, sig.op, Order::DstFirst, acc, x),
                }
            }
            if sig.op == ReduceOp::Avg {
                reduce::finish_avg(sig.dtype, acc, self.size());
            }
            store.copy(&mut out[at], acc);
            if !matches!(own, Own::Staged) {
                self.stage(buf, theirs.start, acc);
            }
        }
    }

    fn fetch(
        &self,
        buf: usize,
        rank: usize,
        range: Range<usize>,
        out: &mut [u8],
        store: StoreKind,
    ) {
        store.copy(out, self.view(rank, buf, range));
    }

    fn publish(&self) -> u64 {
        let phase = self.ctl(self.rank).phase.fetch_add(1, Ordering::Release) + 1;
        for (r, peer) in self.peers.iter().enumerate() {
            if let Some(peer) = peer {
                self.local.notify(peer, &self.ctl(r).waiting);
            }
        }
        phase
    }

    fn wait_all(&self, phase: u64, expect: &Header) -> PhaseWait<'_> {
        Box::pin(WaitAll {
            arena: self,
            phase,
            expect: *expect,
            wait: Waiter::new(),
            dead: Cell::new(None),
        })
    }

    fn abort(&self) {
        self.set_state(ABORTED);
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        self.set_state(CLOSED);
    }
}

/// `Arena`'s phase wait.
pub(crate) struct WaitAll<'a> {
    arena: &'a Arena,
    phase: u64,
    expect: Header,
    wait: Waiter,
    dead: Cell<Option<usize>>,
}

impl Future for WaitAll<'_> {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = &mut *self;
        let arena = this.arena;
        let flag = &arena.ctl(arena.rank).waiting;
        if arena.reached(this.phase) {
            this.wait.done(flag);
            return Poll::Ready(Ok(()));
        }
        if let Err(e) = arena.trouble(this.phase, &this.expect) {
            this.wait.done(flag);
            return Poll::Ready(Err(e));
        }
        let alive = || {
            for peer in arena.peers.iter().flatten() {
                if let Err(e) = peer.check_alive() {
                    this.dead.set(Some(peer.rank));
                    return Err(e);
                }
            }
            Ok(())
        };
        let phase = this.phase;
        match this
            .wait
            .poll(cx, &arena.local, alive, flag, || arena.reached(phase))
        {
            Poll::Ready(Ok(())) => {
                this.wait.done(flag);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(CollectiveError::PeerLost {
                rank: this.dead.get().unwrap_or(arena.rank),
                reason: e.to_string(),
            })),
            Poll::Pending => Poll::Pending,
        }
    }
}
