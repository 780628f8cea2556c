//! Setting up the bench's links: the authenticated TCP mesh, then `collectives::links` makes
//! what `--transport` asks for of it, exactly as the runtime does for every epoch (`auto`, the
//! default: shared memory within a host, TCP across, the hierarchical allreduce when the ranks
//! span hosts with several ranks on some). GPU buffers take `device`'s path instead.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Result;
use ringrun_collectives::{
    CommConfig, Communicator, LayoutComm,
    links::{self, HostLabel, LinkSpec},
    transport::{
        Transport, TransportKind,
        auth::{JobSecret, MeshSpec},
        quic,
        shm::{self, ShmConfig},
        tcp::{self, TcpTransport},
    },
};

use super::{BenchArgs, device, device_sweep, drive, rendezvous};

/// What a rank needs to form its links.
pub(super) struct Setup<'a> {
    pub(super) args: &'a BenchArgs,
    pub(super) rank: usize,
    pub(super) secret: JobSecret,
    pub(super) config: CommConfig,
    pub(super) bind: SocketAddr,
    pub(super) deadline: Instant,
}

impl Setup<'_> {
    fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.args.start_timeout)
    }

    fn peers(&self, mine: SocketAddr) -> Result<Vec<SocketAddr>> {
        match self.args.rendezvous {
            Some(server) => rendezvous::join(server, self.rank, mine, self.start_timeout()),
            None => Ok(self.args.peers.clone()),
        }
    }

    fn shm_config(&self) -> ShmConfig {
        ShmConfig {
            ring_bytes: self
                .args
                .shm_ring_bytes
                .unwrap_or(ShmConfig::default().ring_bytes),
            spin: self.config.spin,
            // Yield when the ranks sharing the segment outnumber the cores.
            spin_yield: None,
            arena_bytes: self
                .args
                .shm_arena_bytes
                .unwrap_or(ShmConfig::default().arena_bytes),
        }
    }

    /// Tunes spinning and reduce threads for `ranks` ranks on this host (an explicit
    /// `--reduce-threads` wins).
    fn localize(&mut self, ranks: usize) {
        self.config = self.config.clone().for_local_ranks(ranks);
        if let Some(t) = self.args.reduce_threads {
            self.config.reduce_threads = t;
        }
    }

    async fn tcp_mesh(&self) -> Result<TcpTransport> {
        Ok(self.boot().await?.0)
    }

    /// The authenticated TCP mesh and the spec it was formed from.
    async fn boot(&self) -> Result<(TcpTransport, MeshSpec)> {
        let listener = tokio::net::TcpListener::bind(self.bind).await?;
        let spec = MeshSpec {
            rank: self.rank,
            addrs: self.peers(listener.local_addr()?)?,
            epoch: 0,
        };
        let mesh = tcp::connect(&listener, &spec, &self.secret, self.deadline).await?;
        Ok((mesh, spec))
    }

    /// Forms the links and runs the bench over them; returns the number of wrong elements.
    pub(super) async fn run(mut self) -> Result<u64> {
        let (cuda, kind) = self.args.resolved();
        if cuda {
            return self.device(kind).await;
        }
        let (boot, mesh) = self.boot().await?;
        let host = match self.args.host_labels.len() {
            0 => HostLabel::Name(super::sweep::hostname()),
            _ => HostLabel::PerRank(self.args.host_labels.clone()),
        };
        let spec = LinkSpec {
            kind,
            mesh: &mesh,
            secret: &self.secret,
            shm: self.shm_config(),
            host,
            quic_ip: self.bind.ip(),
            deadline: self.deadline,
        };
        let (links, layout) = links::connect(boot, &spec).await?;
        self.localize(layout.local().len());
        let comm = LayoutComm::new(links, layout, 0, self.config.clone());
        let label = match kind {
            TransportKind::Auto => format!("auto ({})", comm.describe()),
            _ => comm.describe(),
        };
        drive(comm, self.args, &label).await
    }

    /// GPU buffers: NCCL, or staged through host memory over TCP or QUIC. The ranks need a
    /// CPU mesh either way, for NCCL's unique id and the bench's bookkeeping reductions.
    async fn device(self, transport: TransportKind) -> Result<u64> {
        let timeout = Duration::from_secs(self.args.timeout);
        let config = self.config.clone();
        match transport {
            TransportKind::Tcp | TransportKind::Nccl => {
                let comm = Communicator::new(self.tcp_mesh().await?, 0, config);
                let nccl = transport == TransportKind::Nccl;
                let engine = device::GpuEngine::new(comm, nccl, "tcp", timeout).await?;
                let algo = if nccl { "nccl" } else { "ring" };
                device_sweep::run(engine, self.args, algo).await
            }
            TransportKind::Quic => {
                let socket = std::net::UdpSocket::bind(self.bind)?;
                let spec = MeshSpec {
                    rank: self.rank,
                    addrs: self.peers(socket.local_addr()?)?,
                    epoch: 0,
                };
                let t = quic::connect(socket, &spec, &self.secret, self.deadline).await?;
                let comm = Communicator::new(t, 0, config);
                let engine = device::GpuEngine::new(comm, false, "quic", timeout).await?;
                device_sweep::run(engine, self.args, "ring").await
            }
            TransportKind::Shm => {
                let boot = self.tcp_mesh().await?;
                let t =
                    shm::connect(&boot, &self.secret, 0, &self.shm_config(), self.deadline).await?;
                let comm = Communicator::new(t, 0, config);
                let engine = device::GpuEngine::new(comm, false, "shm", timeout).await?;
                let r = device_sweep::run(engine, self.args, "ring").await;
                boot.close(self.start_timeout()).await;
                r
            }
            TransportKind::Auto => {
                let choice = device::auto_transport(self.args.np);
                Box::pin(self.device(choice)).await
            }
        }
    }
}
