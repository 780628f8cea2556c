//! Allreduce between two ranks: the ring's two steps, interleaved segment by segment.
//!
//! With two ranks the ring sends the half the peer reduces, reduces the other half, then swaps
//! the reduced halves. In the ring's own order a link carries the whole input half before the
//! first reduced segment, so at large sizes a reduced segment has left this core's cache by the
//! time it is sent, and it is read back from memory. Here reduced segment `j` goes out right
//! after input segment `j + LAG`, while it is still cached. Both ranks know the order
//! ([`order`]), so each reads the peer's frames in the order they were written.
//!
//! Out of place and large, the half that arrives already reduced is written with streaming
//! stores: nothing reads it again here, and an ordinary store would first read every output
//! line from memory (see `copy::StoreKind`).
//!
//! No deadlock: a frame waits only on frames earlier in the order (reduced segment `j` on the
//! peer's input segment `j`), and a reader waits on its own writer only for a segment that the
//! writer must already have sent, since the peer's reduction of it has arrived.

use tokio::sync::watch;

use super::{OpCx, Scratch, Segments, ring::recv_reduce};
use crate::{copy::StoreKind, dtype::ReduceOp, error::Result, transport::Transport};

/// How many input segments a rank sends ahead of its first reduced one: enough to keep the
/// peer reducing while this rank reduces, few enough that a reduced segment is still cached.
const LAG: usize = 2;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Frame {
    /// Segment `j` of the half the peer reduces, from this rank's input.
    Input(usize),
    /// Segment `j` of the half this rank reduced.
    Reduced(usize),
}

/// The order of a rank's frames: `inputs` input segments, `reduced` reduced ones, each reduced
/// segment `j` after input segment `j + LAG` (or after the last input).
fn order(inputs: usize, reduced: usize) -> Vec<Frame> {
    let mut keyed: Vec<(usize, Frame)> = (0..inputs)
        .map(|j| (2 * j, Frame::Input(j)))
        .chain((0..reduced).map(|j| (2 * (j + LAG) + 1, Frame::Reduced(j))))
        .collect();
    keyed.sort_unstable_by_key(|(key, _)| *key);
    keyed.into_iter().map(|(_, f)| f).collect()
}

/// Two-rank allreduce of `segs`; chunk `base` is the half the peer reduces. With `inputs`, out
/// of place: this rank's contribution is read from there, and a buffer of at least
/// `stream_bytes` gets its peer-reduced half written with streaming stores.
#[expect(
    clippy::await_holding_refcell_ref,
    reason = "disjoint segments, see Segments"
)]
pub(super) async fn pair<T: Transport>(
    cx: &OpCx<'_, T>,
    segs: &Segments<'_>,
    inputs: &[&[u8]],
    op: ReduceOp,
    base: usize,
    scratch: &mut Scratch,
) -> Result<()> {
    let peer = cx.rel(1);
    let theirs = segs.of_chunk(base % 2);
    let own = segs.of_chunk((base + 1) % 2);
    let sends = order(theirs.len(), own.len());
    let arrivals = order(own.len(), theirs.len());
    // Where each input segment stands in this rank's send order (counting from 1).
    let mut sent_at = vec![0; theirs.len()];
    for (k, f) in sends.iter().enumerate() {
        if let Frame::Input(j) = f {
            sent_at[*j] = k + 1;
        }
    }
    let bytes: usize = (0..segs.count()).map(|id| segs.len(id)).sum();
    let store = match !inputs.is_empty() && bytes >= cx.stream_bytes {
        true => StoreKind::Streaming,
        false => StoreKind::Cached,
    };
    let (reduced_tx, mut reduced_rx) = watch::channel(0usize);
    let (sent_tx, mut sent_rx) = watch::channel(0usize);

    let writer = async {
        for f in &sends {
            match *f {
                Frame::Input(j) => match inputs.get(theirs.start + j) {
                    Some(i) => cx.send(peer, i).await?,
                    None => cx.send_seg(peer, &*segs.get(theirs.start + j)?).await?,
                },
                Frame::Reduced(j) => {
                    let _ = reduced_rx.wait_for(|r| *r > j).await;
                    cx.send_seg(peer, &*segs.get(own.start + j)?).await?;
                }
            }
            sent_tx.send_modify(|n| *n += 1);
        }
        Ok(())
    };
    let reader = async move {
        for f in &arrivals {
            match *f {
                Frame::Input(j) => {
                    let id = own.start + j;
                    let space = scratch.bytes(segs.len(id));
                    recv_reduce(cx, peer, segs, id, inputs.get(id), op, true, space).await?;
                    reduced_tx.send_modify(|r| *r += 1);
                }
                Frame::Reduced(j) => {
                    // In place, the segment still lends the input the writer sent from it;
                    // that send is complete (the peer reduced it) but may not be let go yet.
                    let _ = sent_rx.wait_for(|n| *n >= sent_at[j]).await;
                    let mut seg = segs.get_mut(theirs.start + j)?;
                    let space = scratch.bytes(seg.len());
                    cx.recv_seg(peer, &mut seg, space, store).await?;
                }
            }
        }
        Ok(())
    };
    tokio::try_join!(writer, reader).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::{Frame, LAG, order};

    #[test]
    fn each_reduced_segment_follows_the_input_lag_segments_later() {
        let o = order(5, 4);
        let at = |f| o.iter().position(|x| *x == f).unwrap();
        assert_eq!(o.len(), 9);
        for j in 0..4 {
            assert!(
                at(Frame::Reduced(j)) > at(Frame::Input((j + LAG).min(4))),
                "{o:?}"
            );
            assert!(j + LAG + 1 > 4 || at(Frame::Reduced(j)) < at(Frame::Input(j + LAG + 1)));
        }
    }

    /// Reduced segment `j` needs the peer's input segment `j`; an input segment needs only the
    /// frames before it. So the order cannot deadlock if the input a rank's frame `k` needs
    /// stands at most at `k` in the peer's order: every chain of waits then runs to earlier
    /// positions or to an input, whose own waits run strictly earlier. For any split.
    #[test]
    fn no_frame_waits_on_a_later_one() {
        for a in 0..9 {
            for b in 0..9 {
                let (mine, peers) = (order(a, b), order(b, a));
                for (k, f) in mine.iter().enumerate() {
                    if let Frame::Reduced(j) = f {
                        let needed = peers.iter().position(|x| *x == Frame::Input(*j)).unwrap();
                        assert!(needed <= k, "a {a} b {b}: {mine:?} / {peers:?}");
                    }
                }
            }
        }
    }
}
