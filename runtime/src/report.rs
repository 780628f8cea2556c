//! The fault report: for every membership change the group lived through, how long each phase
//! of the recovery took.
//!
//! The runtime cannot see the failure itself, only its first sign: a collective failing on a
//! broken link, or SWIM declaring a member down, whichever came first. Times are measured from
//! that moment; `detected_unix_ms` lets a tool that knows when the failure happened (a test
//! that sent SIGKILL, a launcher that reaped a worker) add the detection delay. Sans-IO: the
//! lifecycle (`lifecycle.rs`) passes every time in, on the plane's clock.

use std::time::Duration;

use ringrun_membership::Time;
use tracing::info;

/// One recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultEvent {
    /// The epoch that ended.
    pub from_epoch: u64,
    /// The epoch the group resumed in.
    pub to_epoch: u64,
    /// Members before and after.
    pub size_before: usize,
    /// Members after.
    pub size_after: usize,
    /// What ended the epoch.
    pub reason: String,
    /// Wall clock of the first sign, in ms since the Unix epoch.
    pub detected_unix_ms: u64,
    /// First sign → new epoch installed on this member.
    pub to_installed: Option<Duration>,
    /// First sign → state restored on this member.
    pub to_restored: Option<Duration>,
    /// First sign → first collective completed in the new epoch.
    pub to_first_collective: Option<Duration>,
    /// Steps of work lost: the newest step this member reached minus the restored step.
    pub steps_rolled_back: u64,
}

/// An event being recorded.
#[derive(Clone, Debug)]
pub(crate) struct Open {
    event: FaultEvent,
    detected: Time,
}

impl Open {
    /// A fault first seen at `detected`; `unix_ms` is the wall clock then.
    pub(crate) fn new(
        epoch: u64,
        size: usize,
        reason: String,
        detected: Time,
        unix_ms: u64,
    ) -> Open {
        Open {
            event: FaultEvent {
                from_epoch: epoch,
                to_epoch: epoch,
                size_before: size,
                size_after: size,
                reason,
                detected_unix_ms: unix_ms,
                to_installed: None,
                to_restored: None,
                to_first_collective: None,
                steps_rolled_back: 0,
            },
            detected,
        }
    }

    /// The group resumed in `epoch` at `now`, installed at `installed`.
    pub(crate) fn restored(
        &mut self,
        epoch: u64,
        size: usize,
        installed: Time,
        now: Time,
        rolled: u64,
    ) {
        let e = &mut self.event;
        e.to_epoch = epoch;
        e.size_after = size;
        e.to_installed = Some(installed.saturating_since(self.detected));
        e.to_restored = Some(now.saturating_since(self.detected));
        e.steps_rolled_back = rolled;
    }

    pub(crate) fn is_restored(&self) -> bool {
        self.event.to_restored.is_some()
    }

    /// The first collective of the new epoch completed at `now`: the event is complete.
    pub(crate) fn finish(mut self, now: Time) -> FaultEvent {
        self.event.to_first_collective = Some(now.saturating_since(self.detected));
        let e = &self.event;
        info!(
            from_epoch = e.from_epoch,
            to_epoch = e.to_epoch,
            size_before = e.size_before,
            size_after = e.size_after,
            to_installed_ms = ms(e.to_installed),
            to_restored_ms = ms(e.to_restored),
            to_first_collective_ms = ms(e.to_first_collective),
            steps_rolled_back = e.steps_rolled_back,
            reason = %e.reason,
            "fault report"
        );
        self.event
    }
}

/// A phase's duration in milliseconds, NaN while unknown.
pub(crate) fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}
