//! The host arena, a capability a transport may offer beside its framed links: staging
//! buffers that every rank of the communicator maps and reads, and per-rank phase counters.
//! Shared memory offers one (`shm::Arena`); `algo::arena` runs the allreduce on it through
//! this trait and knows nothing of how the memory is shared.
//!
//! Contract. A rank writes only its own buffers and reads everyone's. It *publishes* what it
//! wrote by advancing its phase, and reads what a phase covers only after every rank reached
//! that phase. Every rank publishes the same number of phases per operation, so a phase number
//! names the same step everywhere. Before anything else of an operation a rank *announces* its
//! header, so that a waiting peer that runs the same operation id with another signature fails
//! with `Mismatch`.

use std::{future::Future, ops::Range, pin::Pin};

use crate::{copy::StoreKind, error::Result, frame::Header, frame::OpSig};

/// Where [`HostArena::reduce_into`] finds this rank's operand.
#[derive(Clone, Copy)]
pub enum Own<'a> {
    /// Staged in this rank's buffer like everyone's.
    Staged,
    /// In this slice (as long as the output), not staged.
    In(&'a [u8]),
    /// In the output itself (in place), not staged.
    InOut,
}

/// A phase wait: completes when every rank reached the phase, or fails with the reason one
/// cannot (a peer that aborted, closed, died, or announced a differing call).
pub type PhaseWait<'a> = Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

/// This rank's view of an arena shared by every rank of a communicator.
pub trait HostArena {
    /// Ranks sharing the arena.
    fn size(&self) -> usize;

    /// Bytes of each staging buffer: the largest chunk one round moves.
    fn capacity(&self) -> usize;

    /// Tells the other ranks which operation this rank is in (call before anything else of it).
    fn announce(&self, header: &Header);

    /// `Mismatch` if a rank announced `expect`'s operation with another signature.
    fn verify(&self, expect: &Header) -> Result<()>;

    /// Which buffer the next round stages into.
    fn next_buffer(&self) -> usize;

    /// Copies `src` into this rank's buffer `buf` at byte `at`.
    fn stage(&self, buf: usize, at: usize, src: &[u8]);

    /// `out = x₀ ⊕ x₁ ⊕ …` over bytes `range` of every rank's buffer `buf`, in rank order (so
    /// every rank computing the same range gets the same bits), divided by the ranks for
    /// `Avg`. `own` says where this rank's operand is; where it was not staged, this rank owns
    /// the range and the result goes into its buffer too, for the others to fetch.
    fn reduce_into(
        &self,
        buf: usize,
        range: Range<usize>,
        sig: &OpSig,
        own: Own<'_>,
        out: &mut [u8],
        store: StoreKind,
    );

    /// Copies bytes `range` of `rank`'s buffer `buf` into `out`.
    fn fetch(&self, buf: usize, rank: usize, range: Range<usize>, out: &mut [u8], store: StoreKind);

    /// Publishes everything this rank wrote so far as its next phase; returns its number.
    fn publish(&self) -> u64;

    /// Waits until every rank has published `phase` (see [`PhaseWait`]).
    fn wait_all(&self, phase: u64, expect: &Header) -> PhaseWait<'_>;

    /// Marks this rank's arena unusable after a failed operation and wakes every peer.
    fn abort(&self);
}

/// Marks the arena aborted unless [`disarm`](Abandon::disarm)ed: a call abandoned midway (its
/// future dropped) leaves its peers waiting for phases it will never publish, and they should
/// hear of it at once rather than at their deadline. (A call that fails is not abandoned: its
/// `abort_all` aborts the arena after the error frames, which tell the peers why.)
pub(crate) struct Abandon<'a>(Option<&'a dyn HostArena>);

impl<'a> Abandon<'a> {
    /// Guards the call about to run on `arena` (none: nothing to guard).
    pub(crate) fn arm(arena: Option<&'a dyn HostArena>) -> Self {
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
