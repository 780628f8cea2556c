//! The transport of one epoch: which kind the group asked for, and how its links are formed.
//!
//! Every epoch starts with the TCP mesh on the member's advertised listener (the only address
//! the view carries); it is authenticated with the job secret and serves as the *boot* mesh
//! for the others. QUIC needs a fresh UDP socket per epoch (a quinn endpoint owns its socket
//! and drains after close), so its addresses are swapped over the boot mesh rather than
//! advertised in the membership metadata. Shared memory is set up over the boot mesh too (it
//! carries the segment names; see `collectives::transport::shm`).

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use ringrun_collectives::{
    CollectiveError, Communicator, Ctl,
    frame::ErrorCode,
    frame::Header,
    transport::{
        Transport,
        quic::{self, QuicTransport},
        shm::{self, ShmConfig, ShmTransport},
        tcp::{self, JobSecret, MeshSpec, TcpTransport},
    },
};
use tokio::net::TcpListener;

/// The transport a group's epochs run over (`RINGRUN_TRANSPORT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MeshKind {
    /// TCP (the default).
    #[default]
    Tcp,
    /// QUIC: encrypted, for untrusted networks.
    Quic,
    /// Shared memory: every member of the job on one host.
    Shm,
}

impl std::str::FromStr for MeshKind {
    type Err = String;

    fn from_str(s: &str) -> Result<MeshKind, String> {
        match s {
            // A device group's host-side mesh (its NCCL id, its state) runs over TCP.
            "auto" | "tcp" | "nccl" => Ok(MeshKind::Tcp),
            "quic" => Ok(MeshKind::Quic),
            "shm" => Ok(MeshKind::Shm),
            other => Err(format!(
                "unknown transport {other:?} (auto, tcp, quic, shm, nccl)"
            )),
        }
    }
}

/// One epoch's links, whichever kind they are.
pub enum EpochTransport {
    /// Over TCP.
    Tcp(TcpTransport),
    /// Over QUIC.
    Quic(QuicTransport),
    /// Over shared memory.
    Shm(ShmTransport),
}

/// Forms the links of `spec`'s epoch of kind `kind`, by `deadline`.
pub async fn connect(
    kind: MeshKind,
    listener: &TcpListener,
    spec: &MeshSpec,
    secret: &JobSecret,
    shm_config: &ShmConfig,
    deadline: Instant,
) -> Result<EpochTransport, CollectiveError> {
    let boot = tcp::connect(listener, spec, secret, deadline).await?;
    match kind {
        MeshKind::Tcp => Ok(EpochTransport::Tcp(boot)),
        MeshKind::Quic => {
            let ip = listener.local_addr().map_err(setup)?.ip();
            let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(setup)?;
            let addrs =
                swap_addrs(boot, spec, socket.local_addr().map_err(setup)?, deadline).await?;
            let quic_spec = MeshSpec {
                rank: spec.rank,
                addrs,
                epoch: spec.epoch,
            };
            Ok(EpochTransport::Quic(
                quic::connect(socket, &quic_spec, secret, deadline).await?,
            ))
        }
        MeshKind::Shm => {
            // The boot mesh authenticates the ranks and carries the segment names, then closes.
            let t = shm::connect(&boot, secret, spec.epoch, shm_config, deadline).await?;
            boot.close(Duration::from_secs(1)).await;
            Ok(EpochTransport::Shm(t))
        }
    }
}

/// Every rank's `mine`, by rank, gathered over the boot mesh (which is then closed).
async fn swap_addrs(
    boot: TcpTransport,
    spec: &MeshSpec,
    mine: SocketAddr,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, CollectiveError> {
    let mut comm = Communicator::new(boot, spec.epoch, Default::default());
    let mut all = vec![0i64; spec.size()];
    let ctl = Ctl::timeout(deadline.saturating_duration_since(Instant::now()));
    comm.allgather(&[i64::from(mine.port())], &mut all, &ctl)
        .await?;
    comm.close(Duration::from_secs(1)).await;
    spec.addrs
        .iter()
        .zip(all)
        .map(|(a, port)| {
            let port = u16::try_from(port).map_err(|_| setup(format!("port {port}")))?;
            Ok(SocketAddr::new(a.ip(), port))
        })
        .collect()
}

fn setup(e: impl std::fmt::Display) -> CollectiveError {
    CollectiveError::Setup(format!("epoch transport: {e}"))
}

macro_rules! each {
    ($self:ident, $t:ident => $e:expr) => {
        match $self {
            EpochTransport::Tcp($t) => $e,
            EpochTransport::Quic($t) => $e,
            EpochTransport::Shm($t) => $e,
        }
    };
}

impl Transport for EpochTransport {
    fn rank(&self) -> usize {
        each!(self, t => t.rank())
    }

    fn size(&self) -> usize {
        each!(self, t => t.size())
    }

    async fn send(
        &self,
        peer: usize,
        header: &Header,
        payload: &[u8],
    ) -> Result<(), CollectiveError> {
        each!(self, t => t.send(peer, header, payload).await)
    }

    // Delegated so that shared memory and TCP write a gather list where it lies.
    async fn send_parts(
        &self,
        peer: usize,
        header: &Header,
        parts: &[&[u8]],
    ) -> Result<(), CollectiveError> {
        each!(self, t => t.send_parts(peer, header, parts).await)
    }

    async fn recv(
        &self,
        peer: usize,
        expect: &Header,
        dst: &mut [u8],
    ) -> Result<(), CollectiveError> {
        each!(self, t => t.recv(peer, expect, dst).await)
    }

    // Delegated, not left to the trait's default: shared memory lends the bytes where they lie
    // in the ring, so a reduction reads them without a copy into scratch.
    async fn recv_with(
        &self,
        peer: usize,
        expect: &Header,
        scratch: &mut [u8],
        consume: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<(), CollectiveError> {
        each!(self, t => t.recv_with(peer, expect, scratch, consume).await)
    }

    async fn abort_all(
        &self,
        header: &Header,
        code: ErrorCode,
        subject: Option<usize>,
        message: &str,
        within: Duration,
    ) {
        each!(self, t => t.abort_all(header, code, subject, message, within).await)
    }

    async fn last_word(&self, peer: usize, within: Duration) -> Option<CollectiveError> {
        each!(self, t => t.last_word(peer, within).await)
    }

    fn waiting_on(&self) -> Option<usize> {
        each!(self, t => t.waiting_on())
    }

    fn arena(&self) -> Option<&shm::Arena> {
        each!(self, t => t.arena())
    }

    async fn close(&self, within: Duration) {
        each!(self, t => t.close(within).await)
    }
}

/// Drops a finished epoch's communicator without making the caller wait. A QUIC transport
/// lingers (up to `quic::LINGER`) until its peers acknowledge its last bytes, and a dead peer
/// never does, so it is dropped on a short-lived thread of its own; TCP drops at once.
pub fn discard(comm: Communicator<EpochTransport>) {
    if matches!(comm.transport(), EpochTransport::Quic(_)) {
        let _ = std::thread::Builder::new()
            .name("ringrun-epoch-drop".into())
            .spawn(move || drop(comm));
    }
}
