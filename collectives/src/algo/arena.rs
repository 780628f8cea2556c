//! Allreduce through the host arena (`transport::shm::Arena`): every rank stages a chunk of
//! its input in its own arena buffer, and after one barrier every rank reads the others'.
//!
//! - *One-shot* (chunks up to `one_shot_bytes`): each rank reduces the whole chunk from all
//!   buffers. One barrier per chunk, `n` reads of the chunk per rank: the latency path.
//! - *Two-shot*: each rank reduces its `1/n` part from all buffers, writes the result back
//!   into that part of its own buffer, and after a second barrier copies the other parts out.
//!   Two barriers per chunk and about three passes over the data per rank, however many ranks.
//!
//! The ring needs `2 (n - 1)` hand-offs between neighbours, each of which waits for the
//! scheduler where ranks outnumber cores; here a rank waits twice per chunk. Every element is
//! reduced in rank order, so every rank ends with the same bits, run after run.

use crate::{
    dtype::ReduceOp,
    error::Result,
    reduce::finish_avg,
    transport::{
        Transport,
        shm::{Arena, Own},
    },
};

use super::OpCx;

/// In-place allreduce of `buf` (reading `input` instead of `buf` where given) over `arena`.
pub(crate) async fn arena<T: Transport>(
    cx: &OpCx<'_, T>,
    arena: &Arena,
    buf: &mut [u8],
    input: Option<&[u8]>,
    op: ReduceOp,
    one_shot_bytes: usize,
) -> Result<()> {
    let expect = cx.header(0, 0);
    let dtype = cx.sig.dtype;
    let elem = dtype.size();
    let chunk = (arena.capacity() / elem).max(1) * elem;
    // At least one round, so that every rank meets the others once and compares calls.
    let rounds = buf.len().div_ceil(chunk).max(1);
    for i in 0..rounds {
        let range = i * chunk..((i + 1) * chunk).min(buf.len());
        let len = range.len();
        let one_shot = len <= one_shot_bytes;
        let parts = cx.byte_chunks(len);
        let mine = parts[cx.rank].clone();
        let b = arena.next_buffer();
        let src = &input.unwrap_or(&*buf)[range.clone()];
        match one_shot {
            true => arena.stage(b, 0, src),
            // Only this rank reads its own part: it stays where it is.
            false => {
                arena.stage(b, 0, &src[..mine.start]);
                arena.stage(b, mine.end, &src[mine.end..]);
            }
        }
        arena.wait_all(arena.publish(), &expect).await?;
        if i == 0 {
            arena.verify(&expect)?;
        }
        let out = &mut buf[range.clone()];
        if one_shot {
            arena.reduce_into(b, 0..len, dtype, op, Own::Staged, out);
            if op == ReduceOp::Avg {
                finish_avg(dtype, out, cx.size);
            }
            continue;
        }
        let own = match input {
            Some(i) => Own::In(&i[range.start + mine.start..range.start + mine.end]),
            None => Own::InOut,
        };
        let part = &mut out[mine.clone()];
        arena.reduce_into(b, mine.clone(), dtype, op, own, part);
        if op == ReduceOp::Avg {
            finish_avg(dtype, part, cx.size);
        }
        arena.stage(b, mine.start, part);
        arena.wait_all(arena.publish(), &expect).await?;
        for (r, p) in parts.into_iter().enumerate().filter(|(r, _)| *r != cx.rank) {
            arena.fetch(b, r, p.clone(), &mut out[p]);
        }
    }
    Ok(())
}
