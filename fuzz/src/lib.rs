//! The fuzz targets' bodies: every decoder that takes bytes from the network or from disk.
//!
//! Each function takes one input and must return: no panic, no hang (AFL's per-input timeout),
//! no unbounded allocation (its memory limit). Where a decoder sits behind authentication, the
//! first byte of the input chooses between the raw bytes (which the MAC check must refuse)
//! and the rest sealed with the job's key, so that the fuzzer reaches the decoder behind it.
//! `seeds.rs` writes valid inputs of each target to start from.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use ringrun_collectives::{
    CommConfig, Communicator, Ctl, ReduceOp, fuzzing,
    transport::{
        mem::MemTransport,
        stream::{Link, StreamTransport},
    },
};
use ringrun_membership::{
    Authenticator, Incarnation, JobId, MemberId, MembershipConfig, Metadata, Node, NodeId, Time,
    ViewChunk, wire::PacketKind,
};
use ringrun_runtime::{
    checkpoint::Checkpoint,
    control::ControlCodec,
    member::{EpochAnnotation, MemberKey},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

pub mod tee;

const SECRET: &[u8] = b"ringrun fuzzing secret 0123456789";
/// Longest input the targets look at (AFL's inputs are far shorter).
const MAX_INPUT: usize = 1 << 16;

// Made once per process: AFL runs thousands of inputs in one (persistent mode).
fn auth() -> Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| Authenticator::new(JobId(7), SECRET).expect("a valid secret"))
        .clone()
}

/// The input raw (first byte even) or, after its first two bytes, sealed with the job's key
/// as a packet of the kind the second byte picks.
fn maybe_sealed(data: &[u8], kinds: &[PacketKind]) -> Vec<u8> {
    match data {
        [mode, kind, rest @ ..] if mode & 1 == 1 => {
            let mut out = Vec::new();
            auth().seal(kinds[*kind as usize % kinds.len()], rest, &mut out);
            out
        }
        _ => data.to_vec(),
    }
}

// ---- frame: a peer's byte stream into a collective ----

/// The element count of the allreduce the frame target runs (the seeds are its real frames).
pub const FRAME_COUNT: usize = 64;

/// Rank 0 of a two-rank communicator runs an allreduce and a broadcast while "rank 1" is the
/// input: whatever it holds arrives on the link, then the link closes.
pub fn frame(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    let (near, far) = tokio::io::duplex(4 * MAX_INPUT);
    let (reader, writer) = tokio::io::split(near);
    let links = vec![None, Some(Link { reader, writer })];
    let transport: MemTransport = StreamTransport::new(0, links, None);
    let mut comm = Communicator::new(transport, 1, CommConfig::default());
    let (mut far_read, mut far_write) = tokio::io::split(far);
    let rank0 = async {
        let ctl = Ctl::timeout(Duration::from_secs(1));
        let mut buf = [1.0f32; FRAME_COUNT];
        if comm.allreduce(&mut buf, ReduceOp::Sum, &ctl).await.is_ok() {
            let _ = comm.broadcast(&mut buf, 1, &ctl).await;
        }
    };
    let peer = async {
        let _ = far_write.write_all(data).await;
        let _ = far_write.shutdown().await;
    };
    // What rank 0 sends is read and dropped, so that it never waits on a full pipe.
    let drain = async {
        let mut sink = vec![0u8; 4096];
        while matches!(far_read.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    RUNTIME.with(|rt| {
        rt.block_on(async {
            tokio::select! {
                _ = async { tokio::join!(rank0, peer) } => {}
                _ = drain => {}
            }
        })
    });
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = runtime();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

/// What rank 1 of a real two-rank job sends rank 0 during [`frame`]'s collectives: its seed.
pub fn frame_seed() -> Vec<u8> {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let (a, b) = tokio::io::duplex(4 * MAX_INPUT);
    let ((ar, aw), (br, bw)) = (tokio::io::split(a), tokio::io::split(b));
    let rank0: StreamTransport<ReadHalf<DuplexStream>, WriteHalf<DuplexStream>> =
        StreamTransport::new(
            0,
            vec![
                None,
                Some(Link {
                    reader: ar,
                    writer: aw,
                }),
            ],
            None,
        );
    let writer = tee::Tee::new(bw, sent.clone());
    let rank1 = StreamTransport::new(1, vec![Some(Link { reader: br, writer }), None], None);
    let mut c0 = Communicator::new(rank0, 1, CommConfig::default());
    let mut c1 = Communicator::new(rank1, 1, CommConfig::default());
    let ctl = Ctl::timeout(Duration::from_secs(5));
    runtime().block_on(async {
        let mut x = [1.0f32; FRAME_COUNT];
        let mut y = [2.0f32; FRAME_COUNT];
        let (r0, r1) = tokio::join!(
            async {
                c0.allreduce(&mut x, ReduceOp::Sum, &ctl).await?;
                c0.broadcast(&mut x, 1, &ctl).await
            },
            async {
                c1.allreduce(&mut y, ReduceOp::Sum, &ctl).await?;
                c1.broadcast(&mut y, 1, &ctl).await
            }
        );
        r0.and(r1).expect("a clean two-rank run");
    });
    sent.lock().expect("not poisoned").clone()
}

// ---- membership: datagrams at a SWIM member ----

fn member(i: u16) -> Node {
    let addr = SocketAddr::from(([127, 0, 0, 1], 30_000 + i));
    let id = MemberId::new(
        NodeId(u64::from(i)),
        addr,
        Incarnation(1),
        Metadata::default(),
    );
    Node::new(id, MembershipConfig::default(), auth(), u64::from(i)).expect("a valid node")
}

/// Two members that joined each other; returns them.
fn joined_pair() -> [Node; 2] {
    let mut nodes = [member(1), member(2)];
    let seed = nodes[0].identity().addr;
    for n in &mut nodes {
        n.join(Time::ZERO, &[seed]).expect("join");
    }
    for _ in 0..16 {
        let mut moved = false;
        for i in 0..2 {
            while let Some(t) = nodes[i].poll_transmit() {
                moved = true;
                let from = nodes[i].identity().addr;
                let _ = nodes[1 - i].handle_packet(Time::ZERO, from, &t.payload);
            }
        }
        if !moved {
            break;
        }
    }
    nodes
}

/// A datagram from member 2 at member 1 of a joined pair, then a second of timers; also
/// decoded as a view reply, as an observer decodes one.
pub fn membership(data: &[u8]) {
    let kinds = [
        PacketKind::Swim,
        PacketKind::Leave,
        PacketKind::ViewRequest,
        PacketKind::ViewReply,
        PacketKind::Control,
    ];
    let packet = maybe_sealed(data, &kinds);
    let [mut a, b] = joined_pair();
    let from = b.identity().addr;
    let _ = a.handle_packet(Time::ZERO, from, &packet);
    a.handle_timeout(Time::ZERO + Duration::from_secs(1));
    while a.poll_transmit().is_some() || a.poll_event().is_some() {}
    if let Ok((PacketKind::ViewReply, body)) = auth().open(&packet) {
        let _ = postcard::from_bytes::<ViewChunk>(body);
    }
}

/// A real SWIM datagram (member 2's first probe of member 1), unsealed, for the seeds.
pub fn membership_seed() -> Vec<u8> {
    let [_, mut b] = joined_pair();
    b.handle_timeout(Time::ZERO + Duration::from_millis(300));
    unsealed_seed(&b.poll_transmit().expect("a probe").payload)
}

// ---- control: agreement, exits, reports, completions ----

/// The addressee of [`control`] datagrams.
pub const ME: MemberKey = MemberKey {
    incarnation: 2,
    node: 2,
};

/// A control datagram, opened as a member, a dashboard and a launcher open one; and the bytes
/// as a membership annotation.
pub fn control(data: &[u8]) {
    let packet = maybe_sealed(data, &[PacketKind::Control]);
    static CODEC: OnceLock<ControlCodec> = OnceLock::new();
    let codec = CODEC.get_or_init(control_codec);
    let _ = codec.open(ME, &packet);
    let _ = codec.open_report(&packet);
    let _ = codec.open_completed(&packet);
    let _ = EpochAnnotation::decode(data);
}

/// The codec the seeds are sealed with (they are written unsealed, behind the mode bytes).
pub fn control_codec() -> ControlCodec {
    ControlCodec::new(auth())
}

/// Opens `sealed` and returns its payload behind the mode bytes that reseal it.
pub fn unsealed_seed(sealed: &[u8]) -> Vec<u8> {
    let (_, body) = auth().open(sealed).expect("sealed with the job's key");
    let mut seed = vec![1, 0];
    seed.extend_from_slice(body);
    seed
}

// ---- checkpoint files ----

/// A checkpoint file's bytes, decoded as read; with an odd first byte, the rest gets a valid
/// length and checksum first, so that the fuzzer reaches the fields behind them.
pub fn checkpoint(data: &[u8]) {
    let _ = Checkpoint::decode(data);
    if let [mode, rest @ ..] = data
        && mode & 1 == 1
    {
        let _ = Checkpoint::decode(&with_checksum(rest));
    }
}

/// `file` with its header's length and SHA-256 made to match its payload.
pub fn with_checksum(file: &[u8]) -> Vec<u8> {
    let mut f = file.to_vec();
    if f.len() >= 64 {
        let len = (f.len() - 64) as u64;
        f[16..24].copy_from_slice(&len.to_le_bytes());
        let d = ring::digest::digest(&ring::digest::SHA256, &f[64..]);
        f[24..56].copy_from_slice(d.as_ref());
    }
    f
}

// ---- shared-memory segment headers, handshakes ----

/// A segment header: `[mode, file length (8 bytes), header bytes...]`; an odd mode signs it.
pub fn shm_segment(data: &[u8]) {
    if let [mode, rest @ ..] = data
        && rest.len() >= 8
    {
        let file_len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
        let _ = fuzzing::shm_segment_header(&rest[8..], mode & 1 == 1, file_len);
    }
}

/// A handshake greeting.
pub fn handshake(data: &[u8]) {
    let _ = fuzzing::handshake_hello(data);
}
