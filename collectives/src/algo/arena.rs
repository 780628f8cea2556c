//! Allreduce through the host arena (`transport::HostArena`): every rank stages a round of
//! its input in its own arena buffer, and after a barrier every rank reads the others'.
//!
//! - *One-shot* (rounds up to `one_shot_bytes`): each rank reduces the whole round from all
//!   buffers. One barrier per round, `n` reads of the round per rank: the latency path.
//! - *Two-shot*, pipelined: each rank reduces its `1/n` part of round `t` from all buffers and
//!   writes the result back into that part of its own buffer, stages round `t + 1`, and after
//!   one barrier copies the other parts of round `t` out and reduces its part of round `t + 1`.
//!   One barrier per round (and one to start), about three passes over the data per rank,
//!   however many ranks.
//!
//! The ring needs `2 (n - 1)` hand-offs between neighbours, each of which waits for the
//! scheduler where ranks outnumber cores; here a rank waits once per round. Every element is
//! reduced in rank order, so every rank ends with the same bits, run after run.

use std::ops::Range;

use crate::{
    copy::StoreKind,
    error::Result,
    frame::Header,
    transport::{HostArena, Transport, arena::Own},
};

use super::OpCx;

/// Sizes at which the arena allreduce changes how it works (see `CommConfig`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tuning {
    /// Rounds up to this many bytes are one-shot.
    pub one_shot_bytes: usize,
    /// Out-of-place calls whose buffers, summed over the host's ranks, reach this many bytes
    /// write their results with streaming stores.
    pub stream_bytes: usize,
}

/// In-place allreduce of `buf` (reading `input` instead of `buf` where given) over `arena`.
pub(crate) async fn arena<T: Transport>(
    cx: &OpCx<'_, T>,
    arena: &dyn HostArena,
    buf: &mut [u8],
    input: Option<&[u8]>,
    tuning: Tuning,
) -> Result<()> {
    let elem = cx.sig.dtype.size();
    let round = (arena.capacity() / elem).max(1) * elem;
    // Results this large would leave the cache before anyone reads them again. In place, the
    // lines were read moments before (staging the input), so a store finds them cached.
    let large = buf.len().saturating_mul(arena.size()) >= tuning.stream_bytes;
    let store = match input.is_some() && large {
        true => StoreKind::Streaming,
        false => StoreKind::Cached,
    };
    let run = Run {
        cx,
        arena,
        expect: cx.header(0, 0),
        store,
        round,
        // At least one round, so that every rank meets the others once and compares calls.
        rounds: buf.len().div_ceil(round).max(1),
    };
    let one_shot = tuning.one_shot_bytes;
    match buf.len() <= one_shot || round <= one_shot {
        true => run.one_shot(buf, input).await,
        false => run.two_shot(buf, input).await,
    }
}

/// One arena allreduce: what every round of it shares.
struct Run<'a, T: Transport> {
    cx: &'a OpCx<'a, T>,
    arena: &'a dyn HostArena,
    expect: Header,
    store: StoreKind,
    /// Bytes per round (a whole number of elements).
    round: usize,
    rounds: usize,
}

impl<T: Transport> Run<'_, T> {
    fn range(&self, i: usize, len: usize) -> Range<usize> {
        i * self.round..((i + 1) * self.round).min(len)
    }

    /// Publishes what this rank staged and waits for every rank to do the same; the first
    /// barrier of a call also compares every rank's call with this one.
    async fn barrier(&self, first: bool) -> Result<()> {
        let phase = self.arena.publish();
        self.arena.wait_all(phase, &self.expect).await?;
        match first {
            true => self.arena.verify(&self.expect),
            false => Ok(()),
        }
    }

    async fn one_shot(&self, buf: &mut [u8], input: Option<&[u8]>) -> Result<()> {
        let sig = &self.cx.sig;
        for i in 0..self.rounds {
            let range = self.range(i, buf.len());
            let b = self.arena.next_buffer();
            self.arena
                .stage(b, 0, &input.unwrap_or(&*buf)[range.clone()]);
            self.barrier(i == 0).await?;
            let out = &mut buf[range.clone()];
            self.arena
                .reduce_into(b, 0..range.len(), sig, Own::Staged, out, self.store);
        }
        Ok(())
    }

    /// Stages round `i` of the input in buffer `b`, all but this rank's part: only this rank
    /// reads its part, so it stays where it is.
    fn stage_input(&self, b: usize, src: &[u8]) {
        let mine = self.cx.byte_chunks(src.len())[self.cx.rank].clone();
        self.arena.stage(b, 0, &src[..mine.start]);
        self.arena.stage(b, mine.end, &src[mine.end..]);
    }

    async fn two_shot(&self, buf: &mut [u8], input: Option<&[u8]>) -> Result<()> {
        let sig = &self.cx.sig;
        let mut b = self.arena.next_buffer();
        self.stage_input(b, &input.unwrap_or(&*buf)[self.range(0, buf.len())]);
        self.barrier(true).await?;
        for i in 0..self.rounds {
            let range = self.range(i, buf.len());
            let parts = self.cx.byte_chunks(range.len());
            let mine = parts[self.cx.rank].clone();
            let at = range.start + mine.start..range.start + mine.end;
            let own = match input {
                Some(x) => Own::In(&x[at.clone()]),
                None => Own::InOut,
            };
            // Also writes the result into this rank's part of `b`, for the others.
            let out = &mut buf[at];
            self.arena
                .reduce_into(b, mine.clone(), sig, own, out, self.store);
            let cur = b;
            if i + 1 < self.rounds {
                b = self.arena.next_buffer();
                let src = &input.unwrap_or(&*buf)[self.range(i + 1, buf.len())];
                self.stage_input(b, src);
            }
            // Round `i`'s results and round `i + 1`'s inputs, published together.
            self.barrier(false).await?;
            let out = &mut buf[range];
            for (r, p) in parts
                .into_iter()
                .enumerate()
                .filter(|(r, _)| *r != self.cx.rank)
            {
                self.arena.fetch(cur, r, p.clone(), &mut out[p], self.store);
            }
        }
        Ok(())
    }
}
