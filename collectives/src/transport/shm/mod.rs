//! Shared-memory transport for ranks on one host: one lock-free byte ring per directed pair in
//! memory-mapped `/dev/shm` segments, framed by [`StreamTransport`] like every other transport.
//!
//! Set-up ([`connect`]) runs over an already authenticated *boot* transport (the TCP mesh, or
//! any [`Transport`]):
//!
//! 1. every rank creates its segment (`/dev/shm/ringrun-<pid>-<random>`, exclusive create, mode
//!    0600) holding the rings *into* it, and signs its header with the job secret (`segment`);
//! 2. ranks swap segment names over the boot transport; each opens every peer's segment,
//!    checks that it is a private file of the same user whose header MAC verifies and names the
//!    expected rank, world size and epoch, maps it, and opens a pidfd on the peer's process;
//! 3. ranks acknowledge each other, and every rank unlinks its own segment. From then on the
//!    segments have no name: the kernel frees them when the last mapping goes, so a SIGKILL
//!    leaks nothing. (A rank killed *during* set-up can leave its file; names carry the pid.)
//!
//! A process without the secret can neither learn a name (the boot transport refuses it) nor
//! forge a segment that a rank accepts. As with TCP, data bytes are not MAC'd: a process of the
//! same user that opens a segment in its short named window could corrupt a reduction, but such
//! a process could equally attach a debugger.
//!
//! Waiting and peer death are described in `wake`; the ring protocol in `ring`. Deadlines and
//! cancellation are the communicator's, exactly as for the stream transports: every wait here
//! returns `Pending` to the collective's task.

#![allow(unsafe_code)] // mmap, raw ring copies and pidfd polling; each block has a SAFETY note.

mod arena;
mod ring;
pub(crate) mod segment;
mod wake;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

pub use arena::Arena;
use futures_util::future::try_join_all;
pub use ring::{ShmReader, ShmWriter};
pub use segment::remove_leftovers_of;

use self::{
    segment::{Identity, Owned},
    wake::{Local, Peer},
};
use super::{
    Transport,
    auth::JobSecret,
    stream::{Link, StreamTransport},
};
use crate::{
    dtype::{DType, ReduceOp},
    error::{CollectiveError, Result},
    frame::{Algo, Collective, FrameKind, Header, OpSig},
};

/// One rank's end of a shared-memory mesh.
pub type ShmTransport = StreamTransport<ShmReader, ShmWriter>;

/// Tuning of the shared-memory transport.
#[derive(Clone, Debug)]
pub struct ShmConfig {
    /// Bytes of each ring (rounded up to a power of two, at least 4 KiB). A rank's segment
    /// holds `size` of them; tmpfs only allocates the pages that are touched.
    pub ring_bytes: usize,
    /// How long a waiting link polls before it parks on its doorbell (see
    /// [`CommConfig::spin`](crate::CommConfig::spin), which it should match).
    pub spin: Duration,
    /// Whether spinning yields the CPU between rounds; `None`: when the ranks of the mesh
    /// outnumber this host's cores (see [`CommConfig::spin_yield`](crate::CommConfig::spin_yield)).
    pub spin_yield: Option<bool>,
    /// Bytes of each of a rank's three arena buffers (rounded up to a page; 0: no arena, so
    /// `Algo::Arena` is never picked). An arena allreduce moves at most this much per round.
    pub arena_bytes: usize,
}

impl Default for ShmConfig {
    fn default() -> Self {
        ShmConfig {
            ring_bytes: 1 << 20,
            spin: Duration::from_micros(50),
            spin_yield: None,
            arena_bytes: 256 * 1024,
        }
    }
}

/// Bytes of a segment name on the boot transport (zero-padded).
const NAME_LEN: usize = 64;
/// Operation id of the set-up frames on the boot transport, which no collective uses.
const SETUP_OP: u64 = u64::MAX;

/// Forms this rank's shared-memory links to every rank of `boot`, which must be idle and
/// authenticated (it carries the segment names). Fails with [`CollectiveError::Setup`] on a
/// peer whose segment does not verify under `secret`, or if set-up is not done by `deadline`.
/// `boot` can be closed afterwards.
pub async fn connect<B: Transport>(
    boot: &B,
    secret: &JobSecret,
    epoch: u64,
    config: &ShmConfig,
    deadline: Instant,
) -> Result<ShmTransport> {
    let (me, n) = (boot.rank(), boot.size());
    let work = form(boot, secret, epoch, config);
    match tokio::time::timeout_at(deadline.into(), work).await {
        Ok(r) => r,
        Err(_) => Err(CollectiveError::Setup(format!(
            "shared memory: rank {me} of {n}: set-up not done by the deadline"
        ))),
    }
}

async fn form<B: Transport>(
    boot: &B,
    secret: &JobSecret,
    epoch: u64,
    config: &ShmConfig,
) -> Result<ShmTransport> {
    let (me, n) = (boot.rank(), boot.size());
    if n == 1 {
        return Ok(StreamTransport::new(0, vec![None], None));
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let spin_yield = config.spin_yield.unwrap_or(n > cores);
    let local = Arc::new(Local::bind(config.spin, spin_yield)?);
    let id = Identity {
        rank: me as u32,
        size: n as u32,
        epoch,
        pid: std::process::id(),
        ring_bytes: config.ring_bytes.max(4096).next_power_of_two() as u64,
        doorbell: local.name,
        arena_bytes: config.arena_bytes.next_multiple_of(4096) as u64,
    };
    let mut own = Owned::create(&id, secret)?;
    let peers: Vec<usize> = (0..n).filter(|p| *p != me).collect();

    // 1. Swap names.
    let mut name = [0u8; NAME_LEN];
    name[..own.name.len()].copy_from_slice(own.name.as_bytes());
    let names = exchange(boot, &peers, epoch, 0, &name).await?;

    // 2. Attach and verify every peer's segment. Every rank tries all of them before anyone
    //    unlinks, so each reports what it found (a forged segment, not a vanished file).
    let mut theirs = Vec::new();
    let mut failed = None;
    for (p, raw) in peers.iter().copied().zip(&names) {
        match attach_peer(&local, &own, secret, p, n, epoch, raw) {
            Ok(t) => theirs.push(t),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }

    // 3. Everyone has tried to map everything: tell each other, then drop the names.
    let ok = [u8::from(failed.is_none())];
    let acks = exchange(boot, &peers, epoch, 1, &ok).await;
    own.unlink();
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some((p, _)) = peers.iter().zip(acks?).find(|(_, a)| a[0] != 1) {
        return Err(CollectiveError::Setup(format!(
            "shared memory: rank {p} could not attach the segment of rank {me}"
        )));
    }

    let own_map = own.map.clone();
    let mut links: Vec<Option<Link<ShmReader, ShmWriter>>> = (0..n).map(|_| None).collect();
    let mut maps = vec![own_map.clone(); n];
    let mut arena_peers = vec![None; n];
    for (map, peer) in theirs {
        let p = peer.rank;
        maps[p] = map.clone();
        arena_peers[p] = Some(peer.clone());
        let (reader, writer) = ring::link(&own_map, &map, me, peer, &local);
        links[p] = Some(Link { reader, writer });
    }
    let transport = StreamTransport::new(me, links, None);
    Ok(match id.arena_bytes {
        0 => transport,
        _ => transport.with_arena(Arena::new(me, maps, arena_peers, local)),
    })
}

/// Opens, verifies and maps peer `p`'s segment, named by `raw` (zero-padded).
fn attach_peer(
    local: &Local,
    own: &Owned,
    secret: &JobSecret,
    p: usize,
    n: usize,
    epoch: u64,
    raw: &[u8],
) -> Result<(Arc<segment::Mapping>, Arc<Peer>)> {
    let len = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    let text = std::str::from_utf8(&raw[..len]).unwrap_or("");
    let (map, their) = segment::attach(text, own.uid, secret)?;
    let expect = (p as u32, n as u32, epoch);
    let got = (their.rank, their.size, their.epoch);
    if got != expect {
        return Err(CollectiveError::Setup(format!(
            "shared memory: rank {p} sent the segment of (rank, size, epoch) {got:?}, \
             expected {expect:?}"
        )));
    }
    let peer = Peer::new(local, p, their.pid, &their.doorbell)?;
    Ok((Arc::new(map), Arc::new(peer)))
}

/// Sends `payload` to every peer as set-up frame `seq` and receives theirs (same length).
async fn exchange<B: Transport>(
    boot: &B,
    peers: &[usize],
    epoch: u64,
    seq: u32,
    payload: &[u8],
) -> Result<Vec<Vec<u8>>> {
    let header = Header {
        kind: FrameKind::Data,
        epoch,
        op_id: SETUP_OP,
        sig: OpSig {
            coll: Collective::Barrier,
            dtype: DType::U8,
            op: ReduceOp::Sum,
            algo: Algo::Dissemination,
            count: 0,
            root: 0,
        },
        seq,
        len: payload.len() as u32,
    };
    let fail = |e: CollectiveError| CollectiveError::Setup(format!("shared memory set-up: {e}"));
    let sends = try_join_all(peers.iter().map(|p| boot.send(*p, &header, payload)));
    let recvs = try_join_all(peers.iter().map(|p| {
        let header = &header;
        async move {
            let mut got = vec![0u8; payload.len()];
            boot.recv(*p, header, &mut got).await.map(|()| got)
        }
    }));
    let ((), got) = futures_util::future::try_join(async { sends.await.map(drop) }, recvs)
        .await
        .map_err(fail)?;
    Ok(got)
}
