//! Dissemination barrier: in round `k` every rank signals rank `r + 2^k` and waits for rank
//! `r - 2^k`; after `ceil(log2 n)` rounds every rank has heard, transitively, from all.

use super::OpCx;
use crate::{error::Result, transport::Transport};

pub(crate) async fn dissemination<T: Transport>(cx: &OpCx<'_, T>) -> Result<()> {
    let mut dist = 1;
    while dist < cx.size {
        let (to, from) = (cx.rel(dist as isize), cx.rel(-(dist as isize)));
        tokio::try_join!(cx.send(to, &[]), cx.recv(from, &mut []))?;
        dist <<= 1;
    }
    Ok(())
}
