//! Forming a communicator's links: the TCP mesh first, then the host layout, then what the
//! [`TransportKind`] and the layout call for.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::Arc,
    time::{Duration, Instant},
};

use super::Links;
use crate::{
    comm::{CommConfig, Communicator, Ctl},
    error::{CollectiveError, Result},
    transport::{
        Transport, TransportKind,
        auth::{JobSecret, MeshSpec},
        quic,
        shm::{self, ShmConfig},
        subset::{Routed, Subset},
        tcp::TcpTransport,
    },
};

/// How long closing the boot mesh may take once its successor is up.
const BOOT_CLOSE: Duration = Duration::from_secs(1);

/// How a rank names its host.
#[derive(Clone, Debug)]
pub enum HostLabel {
    /// A host name (the runtime's `RINGRUN_HOST`, the bench's host name), combined by
    /// [`host_key`] with what tells machines and containers apart.
    Name(String),
    /// Every rank's label, in rank order (tests that pretend to span hosts).
    PerRank(Vec<u64>),
}

/// What [`connect`] needs besides the boot mesh.
pub struct LinkSpec<'a> {
    /// The links asked for.
    pub kind: TransportKind,
    /// The boot mesh's ranks, addresses and epoch (QUIC reuses the addresses' IPs).
    pub mesh: &'a MeshSpec,
    /// The job secret (shared memory's segment headers, QUIC's keys).
    pub secret: &'a JobSecret,
    /// Shared memory's rings and arena.
    pub shm: ShmConfig,
    /// This rank's host.
    pub host: HostLabel,
    /// The IP a QUIC socket binds.
    pub quic_ip: IpAddr,
    /// Set-up fails with a timeout after this.
    pub deadline: Instant,
}

/// Which ranks share a host: a label per rank (equal labels, one host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    rank: usize,
    hosts: Vec<u64>,
}

impl Layout {
    /// Rank `rank` of ranks whose hosts are labelled `hosts`.
    pub fn new(rank: usize, hosts: Vec<u64>) -> Layout {
        assert!(rank < hosts.len(), "rank {rank} of {}", hosts.len());
        Layout { rank, hosts }
    }

    /// Every rank's host label.
    pub fn hosts(&self) -> &[u64] {
        &self.hosts
    }

    /// The ranks on this rank's host, in rank order.
    pub fn local(&self) -> Vec<usize> {
        let mine = self.hosts[self.rank];
        (0..self.hosts.len())
            .filter(|r| self.hosts[*r] == mine)
            .collect()
    }

    /// Number of distinct hosts.
    pub fn host_count(&self) -> usize {
        (0..self.hosts.len())
            .filter(|r| !self.hosts[..*r].contains(&self.hosts[*r]))
            .count()
    }

    /// Whether no two ranks share a host.
    pub fn one_per_host(&self) -> bool {
        self.host_count() == self.hosts.len()
    }

    /// Whether some hosts have several ranks and there is more than one host: the case for
    /// shared memory in the host under the hierarchical allreduce.
    pub fn is_hierarchical(&self) -> bool {
        let h = self.host_count();
        h > 1 && h < self.hosts.len()
    }
}

/// Forms the links `spec.kind` asks for over the authenticated TCP mesh `boot` (which is
/// consumed: kept as the TCP links, or closed once its successor is up).
pub async fn connect(boot: TcpTransport, spec: &LinkSpec<'_>) -> Result<(Links, Layout)> {
    let boot = Arc::new(boot);
    let layout = Layout::new(boot.rank(), host_labels(&boot, spec).await?);
    let n = layout.hosts.len();
    let links = match spec.kind {
        TransportKind::Tcp => Links::Tcp(sole(boot)?),
        TransportKind::Quic => Links::Quic(quic(boot, spec).await?),
        TransportKind::Shm if layout.host_count() > 1 => {
            return Err(CollectiveError::Setup(format!(
                "transport shm needs every rank on one host; these {n} ranks are on {} hosts \
                 (auto uses shared memory within each)",
                layout.host_count()
            )));
        }
        TransportKind::Auto | TransportKind::Nccl if n == 1 || layout.one_per_host() => {
            Links::Tcp(sole(boot)?)
        }
        TransportKind::Shm | TransportKind::Auto | TransportKind::Nccl
            if layout.host_count() == 1 =>
        {
            let t = shm::connect(
                &*boot,
                spec.secret,
                spec.mesh.epoch,
                &spec.shm,
                spec.deadline,
            );
            let t = t.await?;
            boot.close(BOOT_CLOSE).await;
            Links::Shm(t)
        }
        TransportKind::Shm | TransportKind::Auto | TransportKind::Nccl => {
            let local = layout.local();
            let sub = Subset::new(boot.clone(), local.clone());
            let t = shm::connect(&sub, spec.secret, spec.mesh.epoch, &spec.shm, spec.deadline);
            Links::Hosts(Arc::new(Routed::new(t.await?, local, boot)))
        }
    };
    Ok((links, layout))
}

/// The boot mesh, no longer shared.
fn sole(boot: Arc<TcpTransport>) -> Result<TcpTransport> {
    Arc::try_unwrap(boot).map_err(|_| CollectiveError::Setup("boot mesh still shared".into()))
}

/// Every rank's host label, gathered over the boot mesh (given labels are only checked).
async fn host_labels(boot: &Arc<TcpTransport>, spec: &LinkSpec<'_>) -> Result<Vec<u64>> {
    let n = boot.size();
    match &spec.host {
        HostLabel::PerRank(all) if all.len() == n => Ok(all.clone()),
        HostLabel::PerRank(all) => Err(CollectiveError::InvalidArgument(format!(
            "{} host labels for {n} ranks",
            all.len()
        ))),
        // The label's bits travel as an i64; `as` keeps them both ways.
        HostLabel::Name(name) => {
            let all = gather_word(boot, spec, host_key(name) as i64).await?;
            Ok(all.into_iter().map(|k| k as u64).collect())
        }
    }
}

/// Every rank's `word`, by rank, gathered over the boot mesh.
async fn gather_word(boot: &Arc<TcpTransport>, spec: &LinkSpec<'_>, word: i64) -> Result<Vec<i64>> {
    let mut comm = Communicator::new(boot.clone(), spec.mesh.epoch, CommConfig::default());
    let mut all = vec![0i64; boot.size()];
    let ctl = Ctl {
        deadline: spec.deadline,
        cancel: None,
    };
    comm.allgather(&[word], &mut all, &ctl).await?;
    Ok(all)
}

/// A host's label: FNV-1a of `name`, the kernel's boot id, and what shared memory needs in
/// common: the network namespace (the doorbells are abstract Unix sockets), the PID namespace
/// (peers are watched through their pids) and the `/dev/shm` mount (the segments live there).
/// Containers of one machine that differ in any of these are different hosts.
pub fn host_key(name: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let ns = |kind: &str| std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap_or_default();
    let shm = std::fs::metadata("/dev/shm").map_or((0, 0), |m| (m.dev(), m.ino()));
    let text = format!(
        "{name}\n{}\n{}\n{}\n{shm:?}",
        boot_id.trim(),
        ns("net").display(),
        ns("pid").display()
    );
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// QUIC links: a fresh UDP socket per communicator (a quinn endpoint owns its socket and
/// drains after close), its port swapped over the boot mesh, which then closes.
async fn quic(boot: Arc<TcpTransport>, spec: &LinkSpec<'_>) -> Result<quic::QuicTransport> {
    let socket = UdpSocket::bind(SocketAddr::new(spec.quic_ip, 0)).map_err(setup)?;
    let port = socket.local_addr().map_err(setup)?.port();
    let ports = gather_word(&boot, spec, i64::from(port)).await?;
    boot.close(BOOT_CLOSE).await;
    let addrs = spec
        .mesh
        .addrs
        .iter()
        .zip(ports)
        .map(|(a, p)| {
            let p = u16::try_from(p).map_err(|_| setup(format!("port {p}")))?;
            Ok(SocketAddr::new(a.ip(), p))
        })
        .collect::<Result<_>>()?;
    let quic_spec = MeshSpec {
        rank: spec.mesh.rank,
        addrs,
        epoch: spec.mesh.epoch,
    };
    quic::connect(socket, &quic_spec, spec.secret, spec.deadline).await
}

fn setup(e: impl std::fmt::Display) -> CollectiveError {
    CollectiveError::Setup(format!("links: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_say_where_the_ranks_are() {
        let one = Layout::new(1, vec![7, 7, 7]);
        assert_eq!((one.host_count(), one.local()), (1, vec![0, 1, 2]));
        assert!(!one.is_hierarchical() && !one.one_per_host());
        let spread = Layout::new(0, vec![1, 2, 3]);
        assert!(spread.one_per_host() && !spread.is_hierarchical());
        let two = Layout::new(2, vec![5, 9, 5, 9]);
        assert_eq!((two.host_count(), two.local()), (2, vec![0, 2]));
        assert!(two.is_hierarchical());
    }

    #[test]
    fn host_keys_differ_by_name_on_one_machine() {
        assert_eq!(host_key("a"), host_key("a"));
        assert_ne!(host_key("a"), host_key("b"));
    }
}
