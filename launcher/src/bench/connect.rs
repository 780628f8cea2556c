//! Setting up the bench's links: the authenticated TCP mesh, then `collectives::links` makes
//! what `--transport` asks for of it, exactly as the runtime does for every epoch (`auto`, the
//! default: shared memory within a host, TCP across, the hierarchical allreduce when the ranks
//! span hosts with several ranks on some). GPU buffers use the same links for staging, and for
//! NCCL's unique id and the bookkeeping reductions (over TCP when NCCL moves the data).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Result;
use ringrun_collectives::{
    CommConfig, Communicator, LayoutComm, Links,
    links::{self, HostLabel, Layout, LinkSpec},
    transport::{
        TransportKind,
        auth::{JobSecret, MeshSpec},
        shm::ShmConfig,
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

    /// Forms the links `kind` asks for over a fresh TCP mesh and fits the tuning to the ranks
    /// on this host.
    async fn links(&mut self, kind: TransportKind) -> Result<(Links, Layout)> {
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
        Ok((links, layout))
    }

    /// Forms the links and runs the bench over them; returns the number of wrong elements.
    pub(super) async fn run(mut self) -> Result<u64> {
        let (cuda, kind) = self.args.resolved();
        if cuda {
            return self.device(kind).await;
        }
        let (links, layout) = self.links(kind).await?;
        let comm = LayoutComm::new(links, layout, 0, self.config.clone());
        let label = match kind {
            TransportKind::Auto => format!("auto ({})", comm.describe()),
            _ => comm.describe(),
        };
        drive(comm, self.args, &label).await
    }

    /// GPU buffers: NCCL, or staged through host memory over TCP, QUIC or shared memory. The
    /// ranks need CPU links either way, for NCCL's unique id and the bench's bookkeeping
    /// reductions (NCCL's over TCP).
    async fn device(mut self, kind: TransportKind) -> Result<u64> {
        let kind = match kind {
            TransportKind::Auto => device::auto_transport(self.args.np),
            k => k,
        };
        let nccl = kind == TransportKind::Nccl;
        let (links, _) = self
            .links(if nccl { TransportKind::Tcp } else { kind })
            .await?;
        let name = links.name();
        let comm = Communicator::new(links, 0, self.config.clone());
        let timeout = Duration::from_secs(self.args.timeout);
        let engine = device::GpuEngine::new(comm, nccl, name, timeout).await?;
        device_sweep::run(engine, self.args, if nccl { "nccl" } else { "ring" }).await
    }
}
