//! The device abort state machine (`DeviceCommunicator` over the watchdog) driven by the scripted
//! `FakeComm`: every way an NCCL operation can end, on any machine, each within a bound.

use std::time::{Duration, Instant};

use ringrun_collectives::{
    Cancel, CollectiveError, Ctl, DType, ReduceOp,
    device::{
        DeviceBufs, DeviceCommunicator, FaultKind, WatchConfig,
        fake::{AbortBehavior, Behavior, FakeBuf, FakeComm},
    },
};

const DEADLINE: Duration = Duration::from_millis(150);
const GRACE: Duration = Duration::from_millis(100);
/// Scheduling slack for a loaded 2-core CI machine.
const SLACK: Duration = Duration::from_millis(400);

fn config() -> WatchConfig {
    WatchConfig {
        poll: Duration::from_micros(200),
        abort_grace: GRACE,
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// One allreduce of 64 floats, in place, on a fresh communicator over `comm`; returns the
/// result, the time it took and the communicator.
fn allreduce(
    comm: FakeComm,
    ctl: Ctl,
) -> (
    Result<(), CollectiveError>,
    Duration,
    DeviceCommunicator<FakeComm>,
) {
    let mut dc = DeviceCommunicator::new(comm, 7, config());
    let mut buf = FakeBuf(vec![0; 256]);
    let t0 = Instant::now();
    let r = block_on(dc.allreduce(
        DType::F32,
        DeviceBufs::InPlace(&mut buf),
        ReduceOp::Sum,
        &(),
        &ctl,
    ));
    (r, t0.elapsed(), dc)
}

#[test]
fn a_hang_times_out_within_the_deadline_and_aborts_once() {
    let comm = FakeComm::new(0, 2, [Behavior::Hang]);
    let log = comm.log();
    let (r, took, dc) = allreduce(comm, Ctl::timeout(DEADLINE));
    assert!(matches!(r, Err(CollectiveError::Timeout { .. })), "{r:?}");
    assert!(took >= DEADLINE - Duration::from_millis(5), "{took:?}");
    assert!(took < DEADLINE + SLACK, "{took:?}");
    let log = log.lock().unwrap().clone();
    assert_eq!(log.aborts, 1);
    assert_eq!(log.calls_after_abort, 0);
    assert!(dc.poisoned().is_some());
    assert!(!dc.leaked());
}

#[test]
fn a_cancel_from_another_thread_aborts_promptly() {
    let comm = FakeComm::new(0, 2, [Behavior::Hang]);
    let log = comm.log();
    let cancel = Cancel::new();
    let c2 = cancel.clone();
    let firer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        c2.cancel("membership changed: epoch 8");
    });
    let ctl = Ctl::timeout(Duration::from_secs(30)).with_cancel(cancel);
    let (r, took, _) = allreduce(comm, ctl);
    firer.join().unwrap();
    let Err(CollectiveError::Aborted { reason }) = r else {
        panic!("expected Aborted, got {r:?}")
    };
    assert_eq!(reason, "membership changed: epoch 8");
    assert!(took < Duration::from_millis(20) + SLACK, "{took:?}");
    assert_eq!(log.lock().unwrap().aborts, 1);
}

#[test]
fn a_cancel_before_the_call_does_not_enqueue() {
    let comm = FakeComm::new(0, 2, []);
    let log = comm.log();
    let cancel = Cancel::new();
    cancel.cancel("epoch over");
    let (r, _, _) = allreduce(comm, Ctl::timeout(DEADLINE).with_cancel(cancel));
    assert!(matches!(r, Err(CollectiveError::Aborted { .. })), "{r:?}");
    let log = log.lock().unwrap().clone();
    assert!(log.enqueued.is_empty(), "{log:?}");
    assert_eq!(log.aborts, 1);
}

#[test]
fn async_errors_map_to_typed_errors() {
    type Want = fn(&CollectiveError) -> bool;
    let cases: [(FaultKind, Want); 4] = [
        (FaultKind::Remote { peer: Some(1) }, |e| {
            matches!(e, CollectiveError::PeerLost { rank: 1, .. })
        }),
        (
            FaultKind::Remote { peer: None },
            |e| matches!(e, CollectiveError::Aborted { reason } if reason.contains("remote peer")),
        ),
        (FaultKind::Timeout, |e| {
            matches!(e, CollectiveError::Timeout { .. })
        }),
        (FaultKind::Local, |e| {
            matches!(e, CollectiveError::Aborted { .. })
        }),
    ];
    for (kind, want) in cases {
        let comm = FakeComm::new(0, 2, [Behavior::AsyncError { polls: 3, kind }]);
        let log = comm.log();
        let (r, took, _) = allreduce(comm, Ctl::timeout(Duration::from_secs(30)));
        let e = r.unwrap_err();
        assert!(want(&e), "{kind:?} gave {e:?}");
        assert!(took < SLACK, "{took:?}");
        assert_eq!(log.lock().unwrap().aborts, 1, "{kind:?}");
    }
}

#[test]
fn an_enqueue_error_aborts_and_poisons() {
    let comm = FakeComm::new(0, 2, [Behavior::EnqueueError(FaultKind::Local)]);
    let log = comm.log();
    let (r, _, mut dc) = allreduce(comm, Ctl::timeout(DEADLINE));
    assert!(
        matches!(&r, Err(CollectiveError::Aborted { reason }) if reason.contains("enqueue failed")),
        "{r:?}"
    );
    assert_eq!(log.lock().unwrap().aborts, 1);
    // Poisoned: the next call fails fast and never reaches the backend.
    let mut buf = FakeBuf(vec![0; 4]);
    let again = block_on(dc.allreduce(
        DType::F32,
        DeviceBufs::InPlace(&mut buf),
        ReduceOp::Sum,
        &(),
        &Ctl::timeout(DEADLINE),
    ));
    assert!(
        matches!(again, Err(CollectiveError::Poisoned(_))),
        "{again:?}"
    );
    let log = log.lock().unwrap().clone();
    assert_eq!((log.enqueued.len(), log.calls_after_abort), (1, 0));
}

#[test]
fn a_mismatch_is_reported_as_mismatch() {
    let kind = FaultKind::Mismatch { rank: 1 };
    for b in [
        Behavior::EnqueueError(kind),
        Behavior::AsyncError { polls: 1, kind },
    ] {
        let (r, _, _) = allreduce(FakeComm::new(0, 2, [b]), Ctl::timeout(DEADLINE));
        assert!(
            matches!(r, Err(CollectiveError::Mismatch { rank: 1, .. })),
            "{r:?}"
        );
    }
}

#[test]
fn a_wrong_shape_is_rejected_before_the_backend() {
    let comm = FakeComm::new(0, 2, []);
    let log = comm.log();
    let mut dc = DeviceCommunicator::new(comm, 0, config());
    let mut buf = FakeBuf(vec![0; 6]); // not whole f32s
    let r = block_on(dc.allreduce(
        DType::F32,
        DeviceBufs::InPlace(&mut buf),
        ReduceOp::Sum,
        &(),
        &Ctl::timeout(DEADLINE),
    ));
    assert!(
        matches!(r, Err(CollectiveError::InvalidArgument(_))),
        "{r:?}"
    );
    assert!(dc.poisoned().is_none());
    assert!(log.lock().unwrap().enqueued.is_empty());
}

#[test]
fn a_hung_abort_is_leaked_after_the_grace() {
    let comm = FakeComm::new(0, 2, [Behavior::Hang]).abort_behavior(AbortBehavior::Hangs);
    let (r, took, dc) = allreduce(comm, Ctl::timeout(DEADLINE));
    assert!(matches!(r, Err(CollectiveError::Timeout { .. })), "{r:?}");
    assert!(
        took >= DEADLINE + GRACE - Duration::from_millis(5),
        "{took:?}"
    );
    assert!(took < DEADLINE + GRACE + SLACK, "{took:?}");
    assert!(dc.leaked());
}

#[test]
fn after_an_abort_a_fresh_communicator_serves_the_next_epoch() {
    let comm = FakeComm::new(0, 2, [Behavior::Hang]);
    let (r, _, old) = allreduce(comm, Ctl::timeout(DEADLINE));
    assert!(r.is_err());
    assert_eq!(old.epoch(), 7);
    drop(old);
    // The runtime builds a new backend (new NCCL unique id) for the next epoch.
    let next = FakeComm::new(0, 2, [Behavior::Complete { polls: 5 }]).init_polls(Some(3));
    let log = next.log();
    let mut dc = DeviceCommunicator::new(next, 8, config());
    block_on(dc.ready(&Ctl::timeout(Duration::from_secs(5)))).unwrap();
    let mut buf = FakeBuf(vec![0; 16]);
    block_on(dc.allreduce(
        DType::F32,
        DeviceBufs::InPlace(&mut buf),
        ReduceOp::Sum,
        &(),
        &Ctl::timeout(Duration::from_secs(5)),
    ))
    .unwrap();
    block_on(dc.close(&Ctl::timeout(Duration::from_secs(5)))).unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!((log.aborts, log.finalizes), (0, 1));
}

#[test]
fn an_initialisation_that_never_finishes_times_out() {
    let comm = FakeComm::new(0, 2, []).init_polls(None);
    let log = comm.log();
    let mut dc = DeviceCommunicator::new(comm, 0, config());
    let t0 = Instant::now();
    let r = block_on(dc.ready(&Ctl::timeout(DEADLINE)));
    assert!(matches!(r, Err(CollectiveError::Timeout { .. })), "{r:?}");
    assert!(t0.elapsed() < DEADLINE + SLACK);
    assert_eq!(log.lock().unwrap().aborts, 1);
}

#[test]
fn back_to_back_operations_wait_for_each_enqueue() {
    // `ncclInProgress` from an enqueue forbids the next call until the state clears.
    let script = (0..4).map(|_| Behavior::SlowEnqueue { polls: 3 });
    let comm = FakeComm::new(0, 2, script);
    let log = comm.log();
    let mut dc = DeviceCommunicator::new(comm, 0, config());
    let mut buf = FakeBuf(vec![0; 16]);
    block_on(dc.allreduce_n(
        DType::F32,
        DeviceBufs::InPlace(&mut buf),
        ReduceOp::Sum,
        &(),
        4,
        &Ctl::timeout(Duration::from_secs(5)),
    ))
    .unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(log.enqueued.len(), 4);
    assert_eq!(log.enqueues_while_enqueuing, 0);
}
