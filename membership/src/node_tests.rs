//! Unit, script and fuzz tests of the sans-IO node.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::identity::{Incarnation, Metadata, NodeId, loopback};
use crate::wire::JobId;

const SECRET: &[u8] = b"node-test-secret-0123456789";

fn auth() -> Authenticator {
    Authenticator::new(JobId(9), SECRET).unwrap()
}

fn node(i: u16) -> Node {
    let id = MemberId::new(
        NodeId(u64::from(i)),
        loopback(30_000 + i),
        Incarnation(1),
        Metadata::default(),
    );
    Node::new(id, MembershipConfig::default(), auth(), u64::from(i)).unwrap()
}

/// Moves datagrams between nodes until none is left, returning the events per node.
fn pump(nodes: &mut [Node], now: Time) -> Vec<Vec<MembershipEvent>> {
    let mut events = vec![Vec::new(); nodes.len()];
    for _ in 0..1000 {
        let mut moved = false;
        for i in 0..nodes.len() {
            while let Some(t) = nodes[i].poll_transmit() {
                moved = true;
                let from = nodes[i].identity().addr;
                if let Some(j) = nodes.iter().position(|n| n.identity().addr == t.dst) {
                    let _ = nodes[j].handle_packet(now, from, &t.payload);
                }
            }
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            while let Some(e) = node.poll_event() {
                events[i].push(e);
            }
        }
        if !moved {
            break;
        }
    }
    events
}

fn pair() -> (Vec<Node>, Time) {
    let mut nodes = vec![node(1), node(2)];
    let a = nodes[0].identity().addr;
    nodes[0].join(Time::ZERO, &[a]).unwrap();
    nodes[1].join(Time::ZERO, &[a]).unwrap();
    let events = pump(&mut nodes, Time::ZERO);
    let b_id = nodes[1].identity().clone();
    let a_id = nodes[0].identity().clone();
    assert_eq!(
        events[0],
        vec![
            MembershipEvent::Up(b_id),
            MembershipEvent::Local(LocalEvent::Joined)
        ]
    );
    assert_eq!(
        events[1],
        vec![
            MembershipEvent::Up(a_id),
            MembershipEvent::Local(LocalEvent::Joined)
        ]
    );
    (nodes, Time::ZERO)
}

#[test]
fn two_nodes_join_and_one_leaves() {
    let (mut nodes, now) = pair();
    let b_id = nodes[1].identity().clone();
    let now = now + Duration::from_millis(10);
    nodes[1].leave(now).unwrap();
    let events = pump(&mut nodes, now);
    assert!(
        events[0].contains(&MembershipEvent::Left(b_id.clone())),
        "{events:?}"
    );
    assert!(!events[0].contains(&MembershipEvent::Down(b_id)));
    let view = nodes[0].members();
    assert_eq!(view.len(), 2);
    assert_eq!(view[1].state, MemberState::Left);
}

#[test]
fn silent_member_is_suspected_then_declared_down() {
    let (mut nodes, mut now) = pair();
    let b_id = nodes[1].identity().clone();
    let mut events = Vec::new();
    // Node 1 goes silent: only node 0 runs its timers, and its datagrams are dropped.
    for _ in 0..200 {
        now += Duration::from_millis(10);
        nodes[0].handle_timeout(now);
        while nodes[0].poll_transmit().is_some() {}
        while let Some(e) = nodes[0].poll_event() {
            events.push(e);
        }
    }
    let suspect = events
        .iter()
        .position(|e| *e == MembershipEvent::Suspect(b_id.clone()));
    let down = events
        .iter()
        .position(|e| *e == MembershipEvent::Down(b_id.clone()));
    assert!(
        suspect.is_some() && down.is_some() && suspect < down,
        "{events:?}"
    );
}

#[test]
fn rejected_packets_leave_the_state_unchanged() {
    let (mut nodes, now) = pair();
    let before = nodes[0].members();
    let from = nodes[1].identity().addr;
    let other = Authenticator::new(JobId(10), SECRET).unwrap();
    let mut packet = Vec::new();
    other.seal(PacketKind::Swim, b"whatever", &mut packet);
    let err = nodes[0].handle_packet(now, from, &packet).unwrap_err();
    assert!(matches!(
        err,
        MembershipError::Dropped(DropReason::WrongJob)
    ));
    assert!(nodes[0].poll_transmit().is_none());
    assert!(nodes[0].poll_event().is_none());
    assert_eq!(nodes[0].members(), before);
    assert_eq!(nodes[0].stats().dropped_total(), 1);
}

#[test]
fn view_requests_are_answered_in_chunks() {
    let (mut nodes, now) = pair();
    let observer = loopback(40_000);
    let mut packet = Vec::new();
    auth().seal(
        PacketKind::ViewRequest,
        &postcard::to_allocvec(&5u64).unwrap(),
        &mut packet,
    );
    nodes[0].handle_packet(now, observer, &packet).unwrap();
    let reply = nodes[0].poll_transmit().unwrap();
    assert_eq!(reply.dst, observer);
    let (kind, body) = auth().open(&reply.payload).unwrap();
    assert_eq!(kind, PacketKind::ViewReply);
    let chunk: ViewChunk = postcard::from_bytes(body).unwrap();
    assert_eq!((chunk.request, chunk.part, chunk.parts), (5, 0, 1));
    assert_eq!(chunk.members.len(), 2);
}

fn kind_of(k: u8) -> PacketKind {
    match k % 4 {
        0 => PacketKind::Swim,
        1 => PacketKind::Leave,
        2 => PacketKind::ViewRequest,
        _ => PacketKind::ViewReply,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_datagrams_are_dropped_without_side_effects(
        bytes in proptest::collection::vec(any::<u8>(), 0..1600),
    ) {
        let mut n = node(1);
        n.join(Time::ZERO, &[]).unwrap();
        let err = n.handle_packet(Time::ZERO, loopback(1), &bytes).unwrap_err();
        prop_assert!(matches!(err, MembershipError::Dropped(_)));
        prop_assert!(n.poll_transmit().is_none());
        prop_assert!(n.poll_event().is_none());
    }

    #[test]
    fn authenticated_garbage_never_panics(
        kind in any::<u8>(),
        payload in proptest::collection::vec(any::<u8>(), 0..1300),
    ) {
        let (mut nodes, now) = pair();
        let mut packet = Vec::new();
        auth().seal(kind_of(kind), &payload, &mut packet);
        let from = nodes[1].identity().addr;
        let _ = nodes[0].handle_packet(now, from, &packet);
        nodes[0].handle_timeout(now + Duration::from_secs(1));
    }

    #[test]
    fn mutated_real_packets_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let (mut nodes, now) = pair();
        // A real SWIM payload: node 1 pings node 0 after its first probe period.
        let later = now + Duration::from_millis(150);
        nodes[1].handle_timeout(later);
        let Some(t) = nodes[1].poll_transmit() else { return Ok(()) };
        let (_, body) = auth().open(&t.payload).unwrap();
        let mut body = body.to_vec();
        for (at, x) in flips {
            if !body.is_empty() {
                let i = at % body.len();
                body[i] ^= x;
            }
        }
        body.truncate(cut % (body.len() + 1));
        let mut packet = Vec::new();
        auth().seal(PacketKind::Swim, &body, &mut packet);
        let from = nodes[1].identity().addr;
        let _ = nodes[0].handle_packet(later, from, &packet);
        nodes[0].handle_timeout(later + Duration::from_secs(1));
    }
}

/// The sans-IO boundary: only the driver and the observer may touch sockets, clocks or tasks.
#[test]
fn core_modules_do_no_io() {
    let core = [
        ("config.rs", include_str!("config.rs")),
        ("error.rs", include_str!("error.rs")),
        ("identity.rs", include_str!("identity.rs")),
        ("node.rs", include_str!("node.rs")),
        ("sim.rs", include_str!("sim.rs")),
        ("time.rs", include_str!("time.rs")),
        ("view.rs", include_str!("view.rs")),
        ("wire.rs", include_str!("wire.rs")),
    ];
    let forbidden = [
        "tokio::",
        "UdpSocket",
        "Instant::now",
        "SystemTime::now",
        "thread_rng",
        "rand::rng()",
        "std::thread",
        "std::fs",
    ];
    for (file, text) in core {
        for word in forbidden {
            assert!(!text.contains(word), "{file} mentions {word}");
        }
    }
}
