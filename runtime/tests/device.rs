//! The device side of a group, end to end on the fake backend: one communicator per epoch, its
//! unique id made by rank 0 and carried by the epoch's TCP mesh, a member leaving while the
//! others' device allreduce hangs (the fake never completes), the typed error within a bound,
//! one abort, and a fresh communicator with a new id for the next epoch. Also: a device group
//! on a machine without CUDA fails at join, naming the library.

use std::{
    sync::{
        Arc, Barrier, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use ringrun_collectives::{
    DType, ReduceOp,
    device::{
        DeviceBufs, DeviceFault,
        fake::{Behavior, FakeBuf, FakeComm, FakeLog, HostStaging},
    },
    testdata::{count_wrong, inputs},
};
use ringrun_runtime::{
    Group, GroupConfig, GroupError,
    device::{DeviceBackend, DeviceSpec, StagingBackend, UniqueIdBytes},
};

const SECRET: &str = "device-test-secret-0123456789";

/// One communicator the fake backend created.
#[derive(Clone, Debug)]
struct Created {
    node: u64,
    epoch: u64,
    rank: usize,
    size: usize,
    id: UniqueIdBytes,
    log: Arc<Mutex<FakeLog>>,
}

type Registry = Arc<Mutex<Vec<Created>>>;

/// A fake backend: in an epoch of 3 the second operation hangs; otherwise everything completes.
struct Fake {
    node: u64,
    created: Registry,
}

static IDS: AtomicU64 = AtomicU64::new(1);

impl DeviceBackend for Fake {
    type Comm = FakeComm;

    fn describe(&self) -> String {
        "fake".into()
    }

    fn unique_id(&mut self) -> Result<UniqueIdBytes, DeviceFault> {
        let mut id = [0u8; 128];
        id[..8].copy_from_slice(&IDS.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        id[8..16].copy_from_slice(&self.node.to_le_bytes());
        Ok(id)
    }

    fn create(
        &mut self,
        id: &UniqueIdBytes,
        rank: usize,
        size: usize,
        epoch: u64,
    ) -> Result<FakeComm, DeviceFault> {
        let script = match size {
            3 => vec![Behavior::Complete { polls: 2 }, Behavior::Hang],
            _ => vec![],
        };
        let comm = FakeComm::new(rank, size, script);
        self.created.lock().unwrap().push(Created {
            node: self.node,
            epoch,
            rank,
            size,
            id: *id,
            log: comm.log(),
        });
        Ok(comm)
    }

    fn stream(&self) -> &() {
        &()
    }
}

fn base_config(node: u64, seeds: &[std::net::SocketAddr], port: u16) -> GroupConfig {
    let mut c = GroupConfig::local(node, SECRET);
    c.member_port = port;
    c.seeds = seeds.to_vec();
    c.initial_size = 3;
    c.restore_timeout = Duration::from_secs(20);
    c.op_timeout = Duration::from_secs(20);
    c
}

fn config(node: u64, seeds: &[std::net::SocketAddr], port: u16, created: &Registry) -> GroupConfig {
    let mut c = base_config(node, seeds, port);
    let created = created.clone();
    c.device = Some(DeviceSpec::custom("fake", move |c: &GroupConfig| {
        Ok(Fake {
            node: c.node,
            created: created.clone(),
        })
    }));
    c
}

#[path = "../../tests/common/ports.rs"]
#[allow(unreachable_pub)]
mod ports;
use ports::free_udp_port;

/// What a survivor saw.
struct Seen {
    node: u64,
    first_epoch: u64,
    second_epoch: u64,
    error_after: Duration,
}

#[test]
fn a_member_leaving_aborts_the_hung_device_op_and_the_next_epoch_gets_a_fresh_communicator() {
    let created: Registry = Arc::default();
    let port = free_udp_port();
    let seed = vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))];
    let ready = Arc::new(Barrier::new(3));
    let threads: Vec<_> = (0..3u64)
        .map(|node| {
            let (seed, ready, created) = (seed.clone(), ready.clone(), created.clone());
            thread::spawn(move || -> Option<Seen> {
                let p = if node == 0 { port } else { 0 };
                let mut g = Group::join(config(node, &seed, p, &created)).expect("join");
                assert_eq!(g.size(), 3);
                assert_eq!(g.device().as_deref(), Some("fake"));
                let first_epoch = g.epoch();
                let mut buf = FakeBuf(vec![0; 64]);
                g.allreduce_device(DType::F32, DeviceBufs::InPlace(&mut buf), ReduceOp::Sum, None)
                    .expect("the first device allreduce completes");
                g.barrier().unwrap();
                ready.wait();
                if node == 2 {
                    // Leave while the others are inside a device allreduce that never ends.
                    thread::sleep(Duration::from_millis(300));
                    g.leave();
                    return None;
                }
                let start = Instant::now();
                let e = g
                    .allreduce_device(DType::F32, DeviceBufs::InPlace(&mut buf), ReduceOp::Sum, None)
                    .unwrap_err();
                let error_after = start.elapsed();
                assert!(
                    matches!(e, GroupError::MembershipChanged { epoch, .. } if epoch == first_epoch),
                    "member {node}: {e}"
                );
                // The group refuses device calls until restore, as it does host calls.
                let again = g.allreduce_device(
                    DType::F32,
                    DeviceBufs::InPlace(&mut buf),
                    ReduceOp::Sum,
                    None,
                );
                assert!(matches!(again, Err(GroupError::MembershipChanged { .. })));
                g.restore().unwrap();
                assert_eq!(g.size(), 2, "member {node}");
                let second_epoch = g.epoch();
                assert!(second_epoch > first_epoch);
                // The new epoch's communicator works, for every collective.
                g.allreduce_device(DType::F32, DeviceBufs::InPlace(&mut buf), ReduceOp::Sum, None)
                    .unwrap();
                g.broadcast_device(DType::F32, DeviceBufs::InPlace(&mut buf), 1, None)
                    .unwrap();
                let send = FakeBuf(vec![0; 32]);
                g.allgather_device(
                    DType::F32,
                    DeviceBufs::OutOfPlace {
                        send: &send,
                        recv: &mut buf,
                    },
                    None,
                )
                .unwrap();
                g.reduce_scatter_device(
                    DType::F32,
                    DeviceBufs::InPlace(&mut buf),
                    ReduceOp::Max,
                    None,
                )
                .unwrap();
                // Shapes are checked before anything is enqueued, and nothing breaks.
                let odd = g.allgather_device(
                    DType::F32,
                    DeviceBufs::InPlace(&mut FakeBuf(vec![0; 12])),
                    None,
                );
                assert!(matches!(odd, Err(GroupError::InvalidArgument(_))), "{odd:?}");
                g.barrier().unwrap();
                g.leave();
                Some(Seen {
                    node,
                    first_epoch,
                    second_epoch,
                    error_after,
                })
            })
        })
        .collect();
    let seen: Vec<Seen> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(seen.len(), 2);
    let created = created.lock().unwrap().clone();
    let of = |node: u64, epoch: u64| {
        created
            .iter()
            .find(|c| c.node == node && c.epoch == epoch)
            .unwrap_or_else(|| panic!("no communicator for member {node} in epoch {epoch}"))
            .clone()
    };
    for s in &seen {
        // Bounded: far inside the 20 s op timeout (the leave is seen in well under a second).
        assert!(
            s.error_after < Duration::from_secs(5),
            "member {}: MembershipChanged after {:?}",
            s.node,
            s.error_after
        );
        let old = of(s.node, s.first_epoch);
        let log = old.log.lock().unwrap().clone();
        assert_eq!(
            log.enqueued,
            ["allreduce", "allreduce"],
            "member {}",
            s.node
        );
        assert_eq!(log.aborts, 1, "member {}: one abort", s.node);
        assert_eq!(log.calls_after_abort, 0);
        assert_eq!(old.size, 3);
        let new = of(s.node, s.second_epoch);
        assert_eq!(new.size, 2);
        assert_ne!(new.id, old.id, "a new unique id for the new epoch");
        let log = new.log.lock().unwrap().clone();
        assert_eq!(
            log.enqueued,
            ["allreduce", "broadcast", "allgather", "reduce_scatter"]
        );
        assert_eq!(log.aborts, 0);
    }
    // Every rank of an epoch got rank 0's id over the mesh, and ranks are distinct.
    for epoch in [seen[0].first_epoch, seen[0].second_epoch] {
        let members: Vec<_> = created.iter().filter(|c| c.epoch == epoch).collect();
        assert!(members.iter().all(|c| c.id == members[0].id), "{members:?}");
        let mut ranks: Vec<_> = members.iter().map(|c| c.rank).collect();
        ranks.sort();
        assert_eq!(ranks, (0..members.len()).collect::<Vec<_>>());
    }
}

/// The staged side over plain host memory, counting the staging areas it made.
struct FakeStaging {
    made: Arc<AtomicU64>,
}

impl StagingBackend for FakeStaging {
    type Staging = HostStaging;

    fn describe(&self) -> String {
        "fake staged".into()
    }

    fn staging(&mut self) -> Result<HostStaging, DeviceFault> {
        self.made.fetch_add(1, Ordering::Relaxed);
        Ok(HostStaging::default())
    }

    fn stream(&self) -> &() {
        &()
    }
}

/// The staged side (what ranks sharing a GPU, or GPUs without NCCL, get): device buffers go
/// through the epoch's host collectives, exactly; a member leaving mid-collective gives the
/// survivors `MembershipChanged` within a bound, and the next epoch's calls work on the new
/// host mesh with the same staging area.
#[test]
fn the_staged_side_reduces_exactly_and_survives_a_member_leaving() {
    let port = free_udp_port();
    let seed = vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))];
    let made = Arc::new(AtomicU64::new(0));
    let (dt, op, count) = (DType::F32, ReduceOp::Sum, 10_000);
    let threads: Vec<_> = (0..3u64)
        .map(|node| {
            let (seed, made) = (seed.clone(), made.clone());
            thread::spawn(move || -> Option<Duration> {
                let mut c = base_config(50 + node, &seed, if node == 0 { port } else { 0 });
                c.device = Some(DeviceSpec::custom_staged("fake staged", move |_| {
                    Ok(FakeStaging { made: made.clone() })
                }));
                let mut g = Group::join(c).expect("join");
                assert_eq!(g.device().as_deref(), Some("fake staged"));
                let mut buf = FakeBuf(inputs(dt, op, g.rank(), count).bytes().to_vec());
                g.allreduce_device(dt, DeviceBufs::InPlace(&mut buf), op, None)
                    .expect("the first staged allreduce");
                assert_eq!(count_wrong(dt, op, 3, &buf.0), 0);
                if node == 2 {
                    g.barrier().unwrap();
                    thread::sleep(Duration::from_millis(300));
                    g.leave();
                    return None;
                }
                g.barrier().unwrap();
                // Member 2 never joins this one: the host collective waits on it until the
                // membership change cancels it.
                let start = Instant::now();
                let e = g
                    .allreduce_device(dt, DeviceBufs::InPlace(&mut buf), op, None)
                    .unwrap_err();
                let after = start.elapsed();
                assert!(matches!(e, GroupError::MembershipChanged { .. }), "{e}");
                g.restore().unwrap();
                assert_eq!(g.size(), 2);
                let mut buf = FakeBuf(inputs(dt, op, g.rank(), count).bytes().to_vec());
                g.allreduce_device(dt, DeviceBufs::InPlace(&mut buf), op, None)
                    .unwrap();
                assert_eq!(count_wrong(dt, op, 2, &buf.0), 0);
                let mut all = FakeBuf(vec![0; 8]);
                let mine = FakeBuf(vec![g.rank() as u8 + 1; 4]);
                let bufs = DeviceBufs::OutOfPlace {
                    send: &mine,
                    recv: &mut all,
                };
                g.allgather_device(DType::U8, bufs, None).unwrap();
                assert_eq!(all.0, [1, 1, 1, 1, 2, 2, 2, 2]);
                g.broadcast_device(DType::U8, DeviceBufs::InPlace(&mut all), 1, None)
                    .unwrap();
                g.reduce_scatter_device(DType::U8, DeviceBufs::InPlace(&mut all), op, None)
                    .unwrap();
                let mine = g.rank() * 4;
                assert_eq!(all.0[mine..mine + 4], [2 * (mine as u8 / 4 + 1); 4]);
                g.barrier().unwrap();
                g.leave();
                Some(after)
            })
        })
        .collect();
    let afters: Vec<Duration> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(afters.len(), 2);
    for a in afters {
        assert!(a < Duration::from_secs(5), "MembershipChanged after {a:?}");
    }
    assert_eq!(
        made.load(Ordering::Relaxed),
        3,
        "one staging area per member"
    );
}

/// A CPU group has no device side: device calls are an invalid argument, nothing else.
#[test]
fn a_cpu_group_refuses_device_calls() {
    let mut c = GroupConfig::local(40, SECRET);
    c.initial_wait = Duration::from_millis(100);
    let mut g = Group::join(c).expect("join");
    assert_eq!(g.device(), None);
    let e = g
        .allreduce_device(
            DType::F32,
            DeviceBufs::InPlace(&mut FakeBuf(vec![0; 8])),
            ReduceOp::Sum,
            None,
        )
        .unwrap_err();
    assert!(matches!(e, GroupError::InvalidArgument(_)), "{e}");
    let mut v = [1.0f32; 4];
    g.allreduce(&mut v, ReduceOp::Sum).unwrap();
    g.leave();
}

/// `RINGRUN_TRANSPORT=nccl`: on a machine without CUDA the join fails at once, with an error
/// that names the library, and no panic; where CUDA and NCCL load, the device group forms.
#[test]
fn a_device_group_forms_with_cuda_and_fails_at_join_naming_the_library_without() {
    let mut c = GroupConfig::local(41, SECRET);
    c.initial_wait = Duration::from_millis(100);
    c.device = ringrun_runtime::config::device_from(
        ringrun_collectives::transport::TransportKind::Nccl,
        None,
    )
    .unwrap();
    assert!(c.device.is_some());
    let start = Instant::now();
    #[cfg(feature = "nccl")]
    let present = ringrun_collectives::nccl::probe_cuda().is_ok_and(|n| n > 0)
        && ringrun_collectives::nccl::probe_nccl().is_ok();
    #[cfg(not(feature = "nccl"))]
    let present = false;
    match Group::join(c) {
        Ok(g) if present => {
            println!("CUDA and NCCL are present: the device group formed, as it must");
            g.leave();
        }
        Ok(_) => panic!("a device group formed without CUDA and NCCL"),
        Err(e) if present => panic!("CUDA and NCCL are present, yet the join failed: {e}"),
        Err(e @ GroupError::DeviceUnavailable(_)) => {
            let msg = e.to_string();
            println!("join failed as expected: {msg}");
            #[cfg(feature = "nccl")]
            assert!(
                msg.contains("libcuda.so.1") || msg.contains("libnccl.so") || msg.contains("CUDA"),
                "{msg}"
            );
            #[cfg(not(feature = "nccl"))]
            assert!(msg.contains("nccl"), "{msg}");
            assert!(!e.recoverable());
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
    assert!(start.elapsed() < Duration::from_secs(10));
}
