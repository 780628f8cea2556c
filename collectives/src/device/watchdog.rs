//! The abort state machine of one device operation, sans IO.
//!
//! A device collective is enqueued and then *watched*: completion, the backend's asynchronous
//! error, the caller's [`Cancel`](crate::Cancel) and the deadline are observed by a driver
//! ([`DeviceCommunicator`](super::DeviceCommunicator)) and fed to [`Watchdog::step`] with the
//! current time; the watchdog answers what to do next. It decides, the driver does the IO, so
//! the tests below replay every interleaving with made-up instants.
//!
//! ```text
//!   Running ──complete──────────────────────────────▶ Done(Ok)
//!      │ cancel / async error / enqueue error / deadline
//!      ▼
//!   Aborting(cause) ──abort finished──────────────▶ Done(Err(cause))
//!      └──────────────abort_grace elapsed────────────▶ Done(Err(cause)), leaked
//! ```
//!
//! The bound: once the cause is observed the error is returned within `abort_grace` (plus one
//! poll interval for causes that are polled rather than signalled). A cancel wakes the driver at
//! once; an async error or completion is seen within `poll`; the deadline is a wake-up time of
//! its own. An abort that does not finish in time is *leaked*: the error is returned anyway and
//! the communicator is never touched again (see `docs/GPU.md`).

use std::time::{Duration, Instant};

use super::DeviceFault;
use crate::error::CollectiveError;

/// What the driver saw since the last step.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// The cancellation handle fired, with its reason.
    pub cancelled: Option<String>,
    /// The backend reported a failure (async error, failed enqueue or completion query).
    pub fault: Option<DeviceFault>,
    /// The watched work finished on the device.
    pub complete: bool,
    /// The abort started by [`Step::Abort`] finished.
    pub abort_finished: bool,
}

/// What the driver does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Observe again at this instant at the latest (earlier if the cancel fires).
    WaitUntil(Instant),
    /// Start aborting the backend now, then step again at once.
    Abort,
    /// The operation is over.
    Done(Result<(), CollectiveError>),
}

#[derive(Debug)]
enum State {
    Running,
    Aborting {
        cause: CollectiveError,
        until: Instant,
    },
    Done,
}

/// The state machine of one watched operation.
#[derive(Debug)]
pub struct Watchdog {
    started: Instant,
    deadline: Instant,
    poll: Duration,
    abort_grace: Duration,
    state: State,
    leaked: bool,
}

impl Watchdog {
    /// Watches an operation enqueued at `started` that must end by `deadline`; observations are
    /// taken every `poll`, and an abort gets `abort_grace` to finish.
    pub fn new(started: Instant, deadline: Instant, poll: Duration, abort_grace: Duration) -> Self {
        Watchdog {
            started,
            deadline,
            poll,
            abort_grace,
            state: State::Running,
            leaked: false,
        }
    }

    /// Whether the operation ended with an abort that had not finished (the backend is leaked:
    /// the device may still run its kernels, so its buffers must not be reused or freed).
    pub fn leaked(&self) -> bool {
        self.leaked
    }

    /// Advances the machine with what was observed at `now`.
    pub fn step(&mut self, now: Instant, obs: Observation) -> Step {
        match &self.state {
            State::Running => {
                // Cancellation wins over completion, as in the CPU path: the epoch is over, and
                // the communicator must go even if this operation happened to finish.
                let cause = if let Some(reason) = obs.cancelled {
                    Some(CollectiveError::Aborted { reason })
                } else if let Some(fault) = obs.fault {
                    Some(fault.to_error(now - self.started))
                } else if obs.complete {
                    self.state = State::Done;
                    return Step::Done(Ok(()));
                } else if now >= self.deadline {
                    Some(CollectiveError::Timeout {
                        waiting_on: None,
                        waited: now - self.started,
                    })
                } else {
                    None
                };
                match cause {
                    Some(cause) => {
                        self.state = State::Aborting {
                            cause,
                            until: now + self.abort_grace,
                        };
                        Step::Abort
                    }
                    None => Step::WaitUntil((now + self.poll).min(self.deadline)),
                }
            }
            State::Aborting { until, .. } => {
                let until = *until;
                if !obs.abort_finished && now < until {
                    return Step::WaitUntil((now + self.poll).min(until));
                }
                self.leaked = !obs.abort_finished;
                let State::Aborting { cause, .. } = std::mem::replace(&mut self.state, State::Done)
                else {
                    unreachable!("matched above")
                };
                Step::Done(Err(cause))
            }
            State::Done => Step::Done(Err(CollectiveError::Poisoned(
                "operation already finished".into(),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::FaultKind;

    const POLL: Duration = Duration::from_millis(1);
    const GRACE: Duration = Duration::from_millis(500);

    fn dog(t0: Instant) -> Watchdog {
        Watchdog::new(t0, t0 + Duration::from_secs(10), POLL, GRACE)
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn completion_ends_the_operation() {
        let t0 = Instant::now();
        let mut w = dog(t0);
        assert_eq!(
            w.step(t0, Observation::default()),
            Step::WaitUntil(ms(t0, 1))
        );
        let done = Observation {
            complete: true,
            ..Default::default()
        };
        assert_eq!(w.step(ms(t0, 3), done), Step::Done(Ok(())));
        assert!(!w.leaked());
    }

    #[test]
    fn cancel_aborts_and_returns_aborted_once_the_abort_finishes() {
        let t0 = Instant::now();
        let mut w = dog(t0);
        let cancel = Observation {
            cancelled: Some("membership changed".into()),
            complete: true, // cancellation wins
            ..Default::default()
        };
        assert_eq!(w.step(ms(t0, 5), cancel), Step::Abort);
        assert_eq!(
            w.step(ms(t0, 5), Observation::default()),
            Step::WaitUntil(ms(t0, 6))
        );
        let finished = Observation {
            abort_finished: true,
            ..Default::default()
        };
        let Step::Done(Err(CollectiveError::Aborted { reason })) = w.step(ms(t0, 40), finished)
        else {
            panic!("expected Aborted")
        };
        assert_eq!(reason, "membership changed");
        assert!(!w.leaked());
    }

    #[test]
    fn an_abort_that_hangs_is_leaked_after_the_grace() {
        let t0 = Instant::now();
        let mut w = dog(t0);
        let cancel = Observation {
            cancelled: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(w.step(t0, cancel), Step::Abort);
        // The wake-ups never overshoot the grace.
        let mut now = t0;
        loop {
            match w.step(now, Observation::default()) {
                Step::WaitUntil(t) => {
                    assert!(t <= t0 + GRACE);
                    now = t;
                }
                Step::Done(r) => {
                    assert!(matches!(r, Err(CollectiveError::Aborted { .. })));
                    break;
                }
                Step::Abort => panic!("abort started twice"),
            }
        }
        assert_eq!(now, t0 + GRACE);
        assert!(w.leaked());
    }

    #[test]
    fn faults_map_to_typed_errors() {
        let cases = [
            (FaultKind::Remote { peer: Some(2) }, "PeerLost"),
            (FaultKind::Remote { peer: None }, "Aborted"),
            (FaultKind::Timeout, "Timeout"),
            (FaultKind::Local, "Aborted"),
        ];
        for (kind, want) in cases {
            let t0 = Instant::now();
            let mut w = dog(t0);
            let fault = Observation {
                fault: Some(DeviceFault {
                    kind,
                    detail: "d".into(),
                }),
                ..Default::default()
            };
            assert_eq!(w.step(ms(t0, 7), fault), Step::Abort);
            let fin = Observation {
                abort_finished: true,
                ..Default::default()
            };
            let Step::Done(Err(e)) = w.step(ms(t0, 8), fin) else {
                panic!("expected an error")
            };
            assert!(format!("{e:?}").starts_with(want), "{kind:?}: {e:?}");
            if let CollectiveError::Timeout { waited, .. } = e {
                assert_eq!(waited, Duration::from_millis(7));
            }
        }
    }

    #[test]
    fn deadline_is_a_wake_up_and_ends_in_timeout() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(t0, ms(t0, 10), Duration::from_millis(4), GRACE);
        assert_eq!(
            w.step(ms(t0, 8), Observation::default()),
            Step::WaitUntil(ms(t0, 10))
        );
        assert_eq!(w.step(ms(t0, 10), Observation::default()), Step::Abort);
        let fin = Observation {
            abort_finished: true,
            ..Default::default()
        };
        assert_eq!(
            w.step(ms(t0, 11), fin),
            Step::Done(Err(CollectiveError::Timeout {
                waiting_on: None,
                waited: Duration::from_millis(10)
            }))
        );
    }

    proptest::proptest! {
        /// Whatever is observed and whenever: at most one abort, an error once aborting, and
        /// the end within deadline + grace (+ one poll), never a wake-up past that bound.
        #[test]
        fn every_run_ends_within_the_bound(
            events in proptest::collection::vec((0u64..30, 0u8..8), 1..200),
        ) {
            let t0 = Instant::now();
            let (deadline, grace) = (Duration::from_millis(100), Duration::from_millis(50));
            let mut w = Watchdog::new(t0, t0 + deadline, Duration::from_millis(3), grace);
            // The driver wakes at the requested time at the latest (earlier on an event).
            let (mut now, mut wake) = (t0, t0);
            let (mut aborts, mut aborted, mut done) = (0, false, None);
            for (dt, what) in events {
                now = (now + Duration::from_millis(dt)).min(wake.max(now));
                let obs = Observation {
                    cancelled: (what == 1).then(|| "c".to_string()),
                    fault: (what == 2).then(|| DeviceFault::local("f")),
                    complete: what == 3,
                    abort_finished: what == 4,
                };
                match w.step(now, obs) {
                    Step::Abort => { aborts += 1; aborted = true; wake = now; }
                    Step::WaitUntil(t) => {
                        proptest::prop_assert!(t >= now);
                        proptest::prop_assert!(t <= t0 + deadline + grace);
                        wake = t;
                    }
                    Step::Done(r) => { done = Some(r); break; }
                }
            }
            proptest::prop_assert!(aborts <= 1);
            if let Some(r) = done {
                proptest::prop_assert!(!aborted || r.is_err());
                proptest::prop_assert!(now <= t0 + deadline + grace);
            }
        }
    }
}
