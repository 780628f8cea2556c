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
    memcpy,
    segment::{ARENA_BUFFERS, ARENA_CTL_BYTES, Mapping},
    stream,
    wake::{Local, Peer, Waiter},
};
use crate::{
    dtype::ReduceOp,
    error::{CollectiveError, Result},
    frame::{HEADER_LEN, Header, OpSig},
    reduce::{self, Order},
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

/// How results reach the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Store {
    /// Ordinary stores: the result stays in the cache for whoever reads it next.
    Cached,
    /// Streaming stores (`stream`): for results too large to stay in the cache, whose lines
    /// would otherwise be read from memory before being overwritten.
    Streaming,
}

impl Store {
    /// `dst.copy_from_slice(src)`, with this kind of store.
    pub(crate) fn copy(self, dst: &mut [u8], src: &[u8]) {
        match self {
            Store::Cached => memcpy::copy(dst, src),
            Store::Streaming => stream::copy(dst, src),
        }
    }
}

/// Where [`Arena::reduce_into`] finds this rank's operand.
#[derive(Clone, Copy)]
pub(crate) enum Own<'a> {
    /// Staged in this rank's buffer like everyone's.
    Staged,
    /// In this slice (as long as the output), not staged.
    In(&'a [u8]),
    /// In the output itself (in place), not staged.
    InOut,
}

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

    /// Ranks sharing the arena.
    pub fn size(&self) -> usize {
        self.maps.len()
    }

    /// Bytes of each staging buffer: the largest chunk one round moves.
    pub fn capacity(&self) -> usize {
        self.bytes
    }

    fn ctl(&self, rank: usize) -> &Ctl {
        // SAFETY: the control page is page-aligned inside a live mapping (`self.maps`), zero-filled
        // by the kernel when the file was sized; all-zero bytes are valid atomics, and every
        // process only touches it through these atomics.
        unsafe { self.maps[rank].arena_ctl().cast::<Ctl>().as_ref() }
    }

    /// Tells the other ranks which operation this rank is in (call before anything else of it).
    pub(crate) fn announce(&self, header: &Header) {
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

    /// `Mismatch` if a rank announced `expect`'s operation with another signature.
    pub(crate) fn verify(&self, expect: &Header) -> Result<()> {
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

    /// Which buffer the next round stages into.
    pub(crate) fn next_buffer(&self) -> usize {
        (self.rounds.fetch_add(1, Ordering::Relaxed) % ARENA_BUFFERS as u64) as usize
    }

    /// Copies `src` into this rank's buffer `buf` at byte `at`.
    pub(crate) fn stage(&self, buf: usize, at: usize, src: &[u8]) {
        let (base, len) = self.maps[self.rank].arena_buf(buf);
        assert!(at + src.len() <= len, "staging past the arena buffer");
        // SAFETY: inside this rank's own buffer, which no rank reads until this rank publishes
        // the phase covering it (the protocol above), so it may be borrowed mutably; `src` is
        // ordinary memory of this process.
        let dst = unsafe { std::slice::from_raw_parts_mut(base.as_ptr().add(at), src.len()) };
        memcpy::copy(dst, src);
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

    /// `out = x₀ ⊕ x₁ ⊕ …` over bytes `range` of every rank's buffer `buf`, in rank order (so
    /// every rank computing the same range gets the same bits), divided by the ranks for
    /// `Avg`. `own` says where this rank's operand is; where it was not staged, this rank owns
    /// the range and the result goes into its buffer too, for the others to fetch.
    pub(crate) fn reduce_into(
        &self,
        buf: usize,
        range: Range<usize>,
        sig: &OpSig,
        own: Own<'_>,
        out: &mut [u8],
        store: Store,
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

    /// Copies bytes `range` of `rank`'s buffer `buf` into `out`.
    pub(crate) fn fetch(
        &self,
        buf: usize,
        rank: usize,
        range: Range<usize>,
        out: &mut [u8],
        store: Store,
    ) {
        store.copy(out, self.view(rank, buf, range));
    }

    /// Publishes everything this rank wrote so far as its next phase; returns its number.
    pub(crate) fn publish(&self) -> u64 {
        let phase = self.ctl(self.rank).phase.fetch_add(1, Ordering::Release) + 1;
        for (r, peer) in self.peers.iter().enumerate() {
            if let Some(peer) = peer {
                self.local.notify(peer, &self.ctl(r).waiting);
            }
        }
        phase
    }

    /// Waits until every rank has published `phase`; fails on a peer that aborted, closed, died
    /// or announced `expect`'s operation with another signature.
    pub(crate) fn wait_all(&self, phase: u64, expect: &Header) -> WaitAll<'_> {
        WaitAll {
            arena: self,
            phase,
            expect: *expect,
            wait: Waiter::new(),
            dead: Cell::new(None),
        }
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

    /// Marks this rank's arena unusable after a failed operation and wakes every peer.
    pub(crate) fn abort(&self) {
        self.set_state(ABORTED);
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        self.set_state(CLOSED);
    }
}

/// Marks the arena aborted unless [`disarm`](Abandon::disarm)ed: a call abandoned midway (its
/// future dropped) leaves its peers waiting for phases it will never publish, and they should
/// hear of it at once rather than at their deadline. (A call that fails is not abandoned: its
/// `abort_all` aborts the arena after the error frames, which tell the peers why.)
pub(crate) struct Abandon<'a>(Option<&'a Arena>);

impl<'a> Abandon<'a> {
    /// Guards the call about to run on `arena` (none: nothing to guard).
    pub(crate) fn arm(arena: Option<&'a Arena>) -> Self {
        Abandon(arena)
    }

    /// The call ended, well or not: it was not abandoned.
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.abort();
        }
    }
}

/// [`Arena::wait_all`]'s future.
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
