use std::{net::SocketAddr, time::Duration};

use ringrun_membership::Time;

use super::*;
use crate::member::{Advert, Endpoints};

fn key(node: u64) -> MemberKey {
    MemberKey {
        incarnation: 1,
        node,
    }
}

fn advert(ip: [u8; 4], port: u16) -> Advert {
    Advert {
        endpoints: Endpoints {
            control: SocketAddr::from((ip, port)),
            tcp: SocketAddr::from((ip, port + 1)),
        },
        launch_rank: None,
    }
}

fn view(epoch: u64, nodes: &[u64]) -> GroupView {
    GroupView {
        epoch,
        members: nodes
            .iter()
            .map(|&n| (key(n), advert([127, 0, 0, 1], 1000 + n as u16 * 2)))
            .collect(),
    }
}

/// The group entered `epoch` of `size` members, `rolled_back` steps behind.
fn entered_event(epoch: u64, size: usize, rolled_back: u64) -> FrontEvent {
    FrontEvent::Entered {
        epoch,
        size,
        rolled_back,
        holds_final: false,
    }
}

fn at(ms: u64) -> Time {
    Time::ZERO + Duration::from_millis(ms)
}

/// A member of epoch 1 (of nodes 0, 1, 2) that entered it at 10 ms.
fn entered() -> Lifecycle {
    let mut l = Lifecycle::new(key(0), Config::default());
    l.installed(at(0), &view(1, &[0, 1, 2]));
    l.front(at(5), FrontEvent::MeshUp { epoch: 1 });
    l.front(at(10), entered_event(1, 3, 0));
    l.front(at(11), FrontEvent::Resumed { epoch: 1 });
    assert_eq!(l.take_actions(), vec![]);
    l
}

fn ended(actions: &[Action]) -> Vec<u64> {
    (actions.iter())
        .filter_map(|a| match a {
            Action::Ended { epoch, .. } => Some(*epoch),
            _ => None,
        })
        .collect()
}

#[test]
fn a_lost_member_ends_the_epoch_and_the_recovery_is_reported_in_phases() {
    let mut l = entered();
    l.aborted(at(100), 1);
    assert_eq!(ended(&l.take_actions()), vec![1]);
    // The front's collective fails on the broken link after the abort: no second report.
    l.front(
        at(101),
        FrontEvent::Failed {
            epoch: 1,
            why: "link closed".into(),
            mismatch: false,
        },
    );
    assert_eq!(l.take_actions(), vec![Action::Reform(1)]);
    l.installed(at(150), &view(2, &[0, 1]));
    l.front(at(160), entered_event(2, 2, 3));
    l.front(at(170), FrontEvent::Resumed { epoch: 2 });
    let [Action::Fault(f)] = &l.take_actions()[..] else {
        panic!("one fault report");
    };
    assert_eq!((f.from_epoch, f.to_epoch), (1, 2));
    assert_eq!((f.size_before, f.size_after), (3, 2));
    assert_eq!(f.to_installed, Some(Duration::from_millis(50)));
    assert_eq!(f.to_restored, Some(Duration::from_millis(60)));
    assert_eq!(f.to_first_collective, Some(Duration::from_millis(70)));
    assert_eq!(f.steps_rolled_back, 3);
    assert_eq!(f.reason, "members of the epoch were lost");
}

#[test]
fn a_mismatch_ends_the_epoch_at_once_and_asks_for_a_new_one_after_the_grace() {
    let mut l = entered();
    let why = "allreduce: rank 1 passed 4 elements".to_string();
    l.front(
        at(100),
        FrontEvent::Failed {
            epoch: 1,
            why: why.clone(),
            mismatch: true,
        },
    );
    assert_eq!(l.take_actions(), vec![Action::Ended { epoch: 1, why }]);
    assert_eq!(l.poll_timeout(), Some(at(200)));
    l.tick(at(199));
    assert_eq!(l.take_actions(), vec![]);
    l.tick(at(200));
    assert_eq!(l.take_actions(), vec![Action::Reform(1)]);
    // A caller's bug is not a recovery: no fault report.
    l.installed(at(250), &view(2, &[0, 1, 2]));
    l.front(at(260), entered_event(2, 3, 0));
    l.front(at(261), FrontEvent::Resumed { epoch: 2 });
    assert_eq!(l.take_actions(), vec![]);
}

#[test]
fn a_mesh_that_does_not_form_in_time_is_given_up() {
    let mut l = Lifecycle::new(key(0), Config::default());
    l.installed(at(0), &view(1, &[0, 1]));
    assert_eq!(l.poll_timeout(), Some(at(10_000)));
    l.tick(at(10_000));
    let actions = l.take_actions();
    assert_eq!(ended(&actions), vec![1]);
    assert!(actions.contains(&Action::Reform(1)));
    // A mesh that did form clears its deadline.
    l.installed(at(10_100), &view(2, &[0, 1]));
    l.front(at(10_200), FrontEvent::MeshUp { epoch: 2 });
    assert_eq!(l.poll_timeout(), None);
}

#[test]
fn admission_closes_on_the_newer_view_without_a_fault_or_after_the_wait() {
    let mut l = entered();
    l.front(at(100), FrontEvent::Admit);
    assert_eq!(l.take_actions(), vec![Action::Admitting(true)]);
    l.installed(at(200), &view(2, &[0, 1, 2, 3]));
    let actions = l.take_actions();
    assert_eq!(actions[0], Action::Admitting(false));
    assert_eq!(ended(&actions), vec![1]);
    l.front(at(210), entered_event(2, 4, 0));
    l.front(at(211), FrontEvent::Resumed { epoch: 2 });
    assert_eq!(l.take_actions(), vec![]);

    l.front(at(300), FrontEvent::Admit);
    l.take_actions();
    l.tick(at(300) + Config::default().admit_wait);
    assert_eq!(
        l.take_actions(),
        vec![Action::Admitting(false), Action::AdmissionClosed]
    );
}

#[test]
fn a_newer_view_the_member_did_not_ask_for_is_a_fault() {
    let mut l = entered();
    l.installed(at(100), &view(2, &[0, 1]));
    assert_eq!(ended(&l.take_actions()), vec![1]);
    l.front(at(120), entered_event(2, 2, 0));
    l.front(at(130), FrontEvent::Resumed { epoch: 2 });
    assert!(
        matches!(&l.take_actions()[..], [Action::Fault(f)] if f.reason == "epoch 2 was installed")
    );
}

#[test]
fn completion_ends_the_epoch_unless_this_member_holds_the_final_state() {
    let mut l = entered();
    l.completed(at(100), 7);
    assert_eq!(ended(&l.take_actions()), vec![1]);

    let mut l = entered();
    l.finished();
    l.completed(at(100), 7);
    assert_eq!(l.take_actions(), vec![]);
}

#[test]
fn a_new_epoch_is_asked_for_once_per_epoch() {
    let mut l = entered();
    for t in [100, 101] {
        l.front(
            at(t),
            FrontEvent::Failed {
                epoch: 1,
                why: "timeout".into(),
                mismatch: false,
            },
        );
    }
    let reforms = (l.take_actions().into_iter())
        .filter(|a| matches!(a, Action::Reform(_)))
        .count();
    assert_eq!(reforms, 1);
}

#[test]
fn one_checkpoint_writer_per_host() {
    let mut v = view(1, &[0, 1, 2]);
    v.members[1].1 = advert([10, 0, 0, 2], 1000);
    assert!(writes_checkpoints(&v, 0));
    assert!(writes_checkpoints(&v, 1));
    assert!(!writes_checkpoints(&v, 2));
    assert!(!writes_checkpoints(&v, 3));
}
