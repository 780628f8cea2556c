//! All-to-all of equal blocks, each sent straight to its rank, noting when each block arrived.
//!
//! The arrival times are what the runtime measures links with (`ringrun_runtime::rtt`): a
//! block's arrival is known only where this rank was already waiting for it when it came; a
//! block that was there before the receive began arrived at some unknown earlier time.

use std::{future::Future, pin::pin, time::Instant};

use futures_util::future::try_join_all;

use super::OpCx;
use crate::{error::Result, transport::Transport};

/// Sends block `j` of `send` to rank `j` and receives rank `j`'s block into block `j` of
/// `recv` (this rank's own is copied). `arrived[j]` becomes when rank `j`'s block arrived, if
/// this rank was waiting for it; `None` otherwise.
pub(crate) async fn alltoall<T: Transport>(
    cx: &OpCx<'_, T>,
    send: &[u8],
    recv: &mut [u8],
    arrived: &mut [Option<Instant>],
) -> Result<()> {
    let block = send.len() / cx.size;
    let me = cx.rank * block..(cx.rank + 1) * block;
    recv[me.clone()].copy_from_slice(&send[me]);
    let others = |j: &usize| *j != cx.rank;
    let sends = (0..cx.size)
        .filter(others)
        .map(|j| cx.send(j, &send[j * block..(j + 1) * block]));
    let recvs = recv
        .chunks_mut(block)
        .zip(arrived.iter_mut())
        .enumerate()
        .filter(|(j, _)| others(j))
        .map(|(j, (dst, at))| async move {
            *at = timed(cx.recv(j, dst)).await?;
            Ok(())
        });
    tokio::try_join!(try_join_all(sends), try_join_all(recvs))?;
    Ok(())
}

/// Runs `fut`; when it was not ready at its first poll (the bytes had not come yet), also
/// returns the instant it completed.
async fn timed(fut: impl Future<Output = Result<()>>) -> Result<Option<Instant>> {
    let mut fut = pin!(fut);
    let mut first = true;
    let mut waited = false;
    std::future::poll_fn(|cx| {
        let poll = fut.as_mut().poll(cx);
        if std::mem::take(&mut first) {
            waited = poll.is_pending();
        }
        poll
    })
    .await?;
    Ok(waited.then(Instant::now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ready_future_has_no_arrival_and_a_pending_one_has() {
        assert_eq!(timed(async { Ok(()) }).await.unwrap(), None);
        let before = Instant::now();
        let late = timed(async {
            tokio::task::yield_now().await;
            Ok(())
        });
        assert!(late.await.unwrap().is_some_and(|at| at >= before));
    }
}
