//! Spin briefly before parking.
//!
//! A blocking wake-up through epoll costs tens of microseconds on a virtual machine (the peers'
//! reference host: 62–79 µs TCP round trip blocking, 7–9 µs busy-polling). An operation that is
//! about to wait re-polls itself instead for up to a budget (yielding the CPU to other processes
//! on each round where ranks outnumber cores, so that oversubscribed ranks still make progress);
//! only then does it let the runtime park. On a current-thread runtime a self-woken `block_on` future makes the runtime
//! poll its I/O driver without blocking, so each round also picks up newly arrived data.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

/// How long a rank that does not share cores spins without yielding.
pub(crate) const PURE_SPIN: Duration = Duration::from_micros(5);

/// Wraps `inner`; see the module docs.
pub(crate) struct Spin<F> {
    inner: F,
    budget: Duration,
    yield_cpu: bool,
    spinning_since: Option<Instant>,
    self_woken: bool,
}

impl<F> Spin<F> {
    pub(crate) fn new(inner: F, budget: Duration, yield_cpu: bool) -> Self {
        Spin {
            inner,
            budget,
            yield_cpu,
            spinning_since: None,
            self_woken: false,
        }
    }
}

impl<F: Future + Unpin> Future for Spin<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if let Poll::Ready(v) = Pin::new(&mut self.inner).poll(cx) {
            return Poll::Ready(v);
        }
        if !self.self_woken {
            // Woken by real I/O (or first poll): a fresh budget for this wait.
            self.spinning_since = None;
        }
        let since = *self.spinning_since.get_or_insert_with(Instant::now);
        self.self_woken = since.elapsed() < self.budget;
        if self.self_woken {
            // Past the first microseconds the peer may well be descheduled (other processes
            // share the cores): from then on give the CPU away on every round.
            if self.yield_cpu || since.elapsed() > PURE_SPIN {
                std::thread::yield_now();
            }
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}
