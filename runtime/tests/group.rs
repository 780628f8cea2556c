//! Groups of threads in one process, over loopback: forming, collectives, a graceful leave, a
//! join at a commit boundary with state transfer. Crashes (SIGKILL) are in the workspace's
//! multi-process tests.

use std::{
    sync::{Arc, Barrier, mpsc},
    thread,
    time::{Duration, Instant},
};

use ringrun_collectives::{DType, ReduceOp, TensorMut};
use ringrun_runtime::{Group, GroupConfig, GroupError};

const SECRET: &str = "group-test-secret-0123456789";

fn config(node: u64, seeds: &[std::net::SocketAddr], port: u16, initial: usize) -> GroupConfig {
    let mut c = GroupConfig::local(node, SECRET);
    c.member_port = port;
    c.seeds = seeds.to_vec();
    c.initial_size = initial;
    c.restore_timeout = Duration::from_secs(20);
    c.op_timeout = Duration::from_secs(20);
    c
}

#[path = "../../tests/common/ports.rs"]
#[allow(unreachable_pub)]
mod ports;
use ports::free_udp_port;

/// Retries a step after a membership change, as a training loop does.
fn step(g: &mut Group, v: &mut [f32]) -> Result<(), GroupError> {
    let start = Instant::now();
    loop {
        match g.allreduce(v, ReduceOp::Sum) {
            Ok(()) => return Ok(()),
            Err(e @ GroupError::MembershipChanged { .. })
                if start.elapsed() < Duration::from_secs(30) =>
            {
                eprintln!("member {}: {e}; restoring", g.id());
                g.restore()?;
                v.fill(1.0);
            }
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn form_reduce_leave_and_join_with_state() {
    let port = free_udp_port();
    let seed = vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))];
    let all_formed = Arc::new(Barrier::new(3));
    let (done_tx, done_rx) = mpsc::channel();
    let mut threads = Vec::new();
    for node in 0..3u64 {
        let (seed, all_formed, done_tx) = (seed.clone(), all_formed.clone(), done_tx.clone());
        threads.push(thread::spawn(move || {
            let p = if node == 0 { port } else { 0 };
            let mut g = Group::join(config(node, &seed, p, 3)).expect("join");
            assert_eq!(g.size(), 3);
            assert_eq!(g.restore().unwrap(), None, "a fresh start has no state");
            let mut v = vec![1.0f32; 1000];
            g.allreduce(&mut v, ReduceOp::Sum).unwrap();
            assert!(v.iter().all(|x| *x == 3.0));
            // Grouped allreduce of mixed dtypes through the fused path.
            let (mut a, mut b, mut c) = (vec![1.0f32; 300], vec![2i64; 7], vec![0.5f64; 5000]);
            let mut tensors = [
                TensorMut::new(&mut a),
                TensorMut::new(&mut b),
                TensorMut::new(&mut c),
            ];
            g.allreduce_grouped(&mut tensors, ReduceOp::Sum).unwrap();
            assert!(a.iter().all(|x| *x == 3.0) && b.iter().all(|x| *x == 6));
            assert!(c.iter().all(|x| *x == 1.5));
            let (mut d, mut e) = (vec![1i32; 3], vec![2i32; 100]);
            g.allreduce_many(&mut [&mut d[..], &mut e[..]], ReduceOp::Max)
                .unwrap();
            assert!(d.iter().all(|x| *x == 1) && e.iter().all(|x| *x == 2));
            // Reduce-scatter: rank r receives the sum of every rank's block r.
            let (r, n) = (g.rank(), g.size());
            let send: Vec<i64> = (0..n * 4)
                .map(|j| (r as i64 + 1) * (10 * (j / 4) + j % 4) as i64)
                .collect();
            let mut mine = vec![0i64; 4];
            g.reduce_scatter(&send, &mut mine, ReduceOp::Sum).unwrap();
            let want: Vec<i64> = (0..4).map(|i| 6 * (10 * r + i) as i64).collect();
            assert_eq!(mine, want, "member {node}");
            g.commit(1, b"state after step 1".to_vec()).unwrap();
            all_formed.wait();
            if node == 2 {
                g.leave();
                return;
            }
            // The survivors see the leave as a membership change and go on with two.
            let mut v = vec![1.0f32; 1000];
            step(&mut g, &mut v).unwrap();
            assert_eq!(g.size(), 2, "member {node}");
            assert!(v.iter().all(|x| *x == 2.0));
            g.commit(2, b"state after step 2".to_vec()).unwrap();
            done_tx.send(node).unwrap();
            // Keep committing until the joiner is in: it is admitted at a commit boundary.
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut s = 3;
            while g.size() < 3 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
                match g.commit(s, format!("state after step {s}").into_bytes()) {
                    Ok(()) => s += 1,
                    // The admission raced a commit: roll back to the last commit, as a loop does.
                    Err(GroupError::MembershipChanged { .. }) => {
                        let (restored, _) = g.restore().unwrap().expect("state");
                        s = restored + 1;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(g.size(), 3, "the joiner was admitted");
            let mut v = vec![1.0f32; 10];
            step(&mut g, &mut v).unwrap();
            assert!(v.iter().all(|x| *x == 3.0));
            g.leave();
        }));
    }
    for _ in 0..2 {
        done_rx.recv_timeout(Duration::from_secs(40)).unwrap();
    }
    let mut joiner = Group::join(config(7, &seed, 0, 1)).expect("join");
    let (step_no, bytes) = joiner
        .restore()
        .unwrap()
        .expect("the joiner receives the state");
    assert_eq!(
        bytes.as_slice(),
        format!("state after step {step_no}").as_bytes()
    );
    assert_eq!(joiner.size(), 3);
    let mut v = vec![1.0f32; 10];
    step(&mut joiner, &mut v).unwrap();
    assert!(v.iter().all(|x| *x == 3.0));
    for t in threads {
        t.join().unwrap();
    }
}

/// Ranks that pass different sizes all get `Mismatch` (not a membership change), and then
/// `restore` gives them a working epoch again.
#[test]
fn mismatched_sizes_fail_on_every_rank_and_the_group_recovers() {
    let port = free_udp_port();
    let seed = vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))];
    let done = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2u64)
        .map(|node| {
            let (seed, done) = (seed.clone(), done.clone());
            thread::spawn(move || {
                let p = if node == 0 { port } else { 0 };
                let mut g = Group::join(config(node, &seed, p, 2)).expect("join");
                g.restore().unwrap();
                let mut v = vec![1.0f32; 10 * (g.rank() + 1)];
                let e = g.allreduce(&mut v, ReduceOp::Sum).unwrap_err();
                assert!(matches!(e, GroupError::Mismatch(_)), "member {node}: {e}");
                g.restore().unwrap();
                let mut v = vec![1.0f32; 10];
                step(&mut g, &mut v).unwrap();
                assert!(v.iter().all(|x| *x == 2.0));
                done.wait();
                g.leave();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Sizes that reach every algorithm of the selection on 2 and 4 ranks.
const SIZES: [usize; 5] = [8, 1024, 64 << 10, 512 << 10, 4 << 20];

/// Allreduces a pattern at each of `SIZES` and checks the exact sums; returns the algorithms
/// the epoch's selection picked, in order of first use.
fn reduce_each_size(g: &mut Group) -> Vec<&'static str> {
    let (n, r) = (g.size(), g.rank());
    let total = (n * (n + 1) / 2) as f32;
    let mut seen = Vec::new();
    for bytes in SIZES {
        let mut v: Vec<f32> = (0..bytes / 4).map(|i| ((r + 1) * (i % 7)) as f32).collect();
        let algo = g.allreduce_algo(DType::F32, bytes).expect("in an epoch");
        g.allreduce(&mut v, ReduceOp::Sum).unwrap();
        let right = v
            .iter()
            .enumerate()
            .all(|(i, x)| *x == total * (i % 7) as f32);
        assert!(right, "{algo} on {n} ranks at {bytes} B");
        if !seen.contains(&algo) {
            seen.push(algo);
        }
    }
    seen
}

/// Under the default transport (`auto`), members on one host talk over shared memory, and the
/// runtime's allreduce picks `ringrun bench`'s algorithms: recursive doubling and the ring on
/// two ranks, the arena and halving-doubling on four.
#[test]
fn auto_uses_shared_memory_on_one_host_and_the_benchs_algorithms() {
    for (n, want) in [(2, ["rd", "ring"]), (4, ["arena", "hd"])] {
        let port = free_udp_port();
        let seed = vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))];
        let done = Arc::new(Barrier::new(n));
        let threads: Vec<_> = (0..n as u64)
            .map(|node| {
                let (seed, done) = (seed.clone(), done.clone());
                thread::spawn(move || {
                    let p = if node == 0 { port } else { 0 };
                    let mut g = Group::join(config(node, &seed, p, n)).expect("join");
                    g.restore().unwrap();
                    assert_eq!(g.links(), Some("shm"), "member {node}");
                    let seen = reduce_each_size(&mut g);
                    done.wait();
                    g.leave();
                    seen
                })
            })
            .collect();
        for t in threads {
            let seen = t.join().unwrap();
            assert!(want.iter().all(|a| seen.contains(a)), "{n} ranks: {seen:?}");
        }
    }
}

/// Each epoch lays its links out afresh from its members' hosts: two pretend hosts of two
/// members run the hierarchical allreduce (above the small sizes); after one member leaves, hosts of two and one still
/// do (the leaders' form); after another, one member per host is plain TCP. Every sum is exact,
/// so each layout's result equals a flat run's.
#[test]
fn every_epoch_lays_out_its_links_from_its_members_hosts() {
    let port = free_udp_port();
    let seed = vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))];
    let four = Arc::new(Barrier::new(4));
    let three = Arc::new(Barrier::new(3));
    let threads: Vec<_> = (0..4u64)
        .map(|node| {
            let (seed, four, three) = (seed.clone(), four.clone(), three.clone());
            thread::spawn(move || {
                let p = if node == 0 { port } else { 0 };
                let mut c = config(node, &seed, p, 4);
                c.host = ["a", "a", "b", "b"][node as usize].into();
                let mut g = Group::join(c).expect("join");
                g.restore().unwrap();
                assert_eq!(g.links(), Some("hierarchical"), "member {node}");
                // Small sizes run recursive doubling over the same links.
                assert_eq!(reduce_each_size(&mut g), ["rd", "hierarchical"]);
                four.wait();
                if node == 3 {
                    return g.leave();
                }
                let mut v = vec![1.0f32; 100];
                step(&mut g, &mut v).unwrap();
                assert_eq!((g.size(), g.links()), (3, Some("hierarchical")));
                assert_eq!(reduce_each_size(&mut g), ["rd", "hierarchical"]);
                three.wait();
                if node == 1 {
                    return g.leave();
                }
                step(&mut g, &mut v).unwrap();
                assert_eq!((g.size(), g.links()), (2, Some("tcp")));
                assert!(reduce_each_size(&mut g).contains(&"ring"));
                g.leave();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
