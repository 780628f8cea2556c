//! Broadcast: a binomial tree for small buffers (`log2 n` hops, one frame per hop) and a
//! pipelined chain for large ones (each rank forwards a segment as soon as it has it, so the
//! time approaches one buffer transfer however many ranks there are).
//!
//! Ranks are numbered relative to the root (`v = rank - root mod n`), so the root is `v = 0`.

use tokio::sync::mpsc;

use super::{
    OpCx, Segments,
    direct::{recv_all, send_all},
};
use crate::{copy::StoreKind, error::Result, transport::Transport};

fn virt<T>(cx: &OpCx<'_, T>, root: usize) -> usize {
    (cx.rank + cx.size - root) % cx.size
}

fn real<T>(cx: &OpCx<'_, T>, root: usize, v: usize) -> usize {
    (v + root) % cx.size
}

pub(crate) async fn tree<T: Transport>(
    cx: &OpCx<'_, T>,
    buf: &mut [u8],
    root: usize,
) -> Result<()> {
    let (n, v) = (cx.size, virt(cx, root));
    // The parent of v clears v's lowest set bit; v's children are v + 2^k below that bit.
    let low = if v == 0 {
        n.next_power_of_two()
    } else {
        1 << v.trailing_zeros()
    };
    if v != 0 {
        recv_all(cx, real(cx, root, v - low), buf).await?;
    }
    let mut bit = low >> 1;
    while bit > 0 {
        if v + bit < n {
            send_all(cx, real(cx, root, v + bit), buf).await?;
        }
        bit >>= 1;
    }
    Ok(())
}

// Segments hands out RefCell borrows that live across sends and receives by design: the reader
// and writer futures never hold the same segment (see `Segments`), and a conflict is an error.
#[expect(
    clippy::await_holding_refcell_ref,
    reason = "disjoint segments, see Segments"
)]
pub(crate) async fn chain<T: Transport>(
    cx: &OpCx<'_, T>,
    buf: &mut [u8],
    root: usize,
) -> Result<()> {
    let (n, v) = (cx.size, virt(cx, root));
    let len = buf.len();
    let segs = &Segments::new(buf, std::slice::from_ref(&(0..len)), cx.seg_bytes);
    let ids = segs.of_chunk(0);
    let has_next = v + 1 < n;
    let (tx, mut rx) = mpsc::unbounded_channel::<usize>();
    let writer = async {
        while let Some(id) = rx.recv().await {
            let seg = segs.get(id)?;
            cx.send_seg(real(cx, root, v + 1), &seg).await?;
        }
        Ok(())
    };
    let reader = async move {
        for id in ids {
            if v != 0 {
                // One contiguous buffer: its segments are single slices and need no scratch.
                let mut seg = segs.get_mut(id)?;
                cx.recv_seg(real(cx, root, v - 1), &mut seg, &mut [], StoreKind::Cached)
                    .await?;
            }
            if has_next {
                let _ = tx.send(id);
            }
        }
        Ok(())
    };
    tokio::try_join!(writer, reader).map(|_| ())
}
