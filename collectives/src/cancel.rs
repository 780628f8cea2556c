//! A cancellation handle that any thread can fire and any operation can wait on.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use tokio::sync::Notify;

/// Fires once; every operation holding a clone returns [`Aborted`](crate::CollectiveError::Aborted)
/// promptly. Cheap to clone and to check (one atomic load), so spinning transports can poll it.
#[derive(Clone, Debug, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    fired: AtomicBool,
    reason: Mutex<String>,
    notify: Notify,
}

impl Cancel {
    /// A handle that has not fired.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Fires the handle with a reason; later calls keep the first reason.
    pub fn cancel(&self, reason: impl Into<String>) {
        let mut r = self.inner.reason.lock().unwrap_or_else(|e| e.into_inner());
        if !self.inner.fired.swap(true, Ordering::SeqCst) {
            *r = reason.into();
        }
        drop(r);
        self.inner.notify.notify_waiters();
    }

    /// Whether the handle has fired.
    pub fn is_cancelled(&self) -> bool {
        self.inner.fired.load(Ordering::Acquire)
    }

    /// The reason given to [`cancel`](Self::cancel), if it fired.
    pub fn reason(&self) -> Option<String> {
        self.is_cancelled().then(|| {
            self.inner
                .reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }

    /// Completes when the handle fires (at once if it already has).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a cancel between the check and the await is seen.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_across_threads() {
        let c = Cancel::new();
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.cancel("membership changed"));
        c.cancelled().await;
        t.join().unwrap();
        assert_eq!(c.reason().as_deref(), Some("membership changed"));
        c.cancel("second");
        assert_eq!(c.reason().as_deref(), Some("membership changed"));
    }
}
