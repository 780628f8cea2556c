//! Setting up the bench's links: TCP, QUIC, shared memory, or `auto`, which finds out which
//! ranks share a host and uses shared memory between them and TCP to the others.
//!
//! `auto` first forms the authenticated TCP mesh (it is needed anyway: it carries the segment
//! names and the links between hosts), then every rank learns every rank's host key (hostname
//! and kernel boot id, so two containers with one hostname on different machines differ):
//! - one host: shared memory between all ranks, the TCP mesh closes;
//! - one rank per host: the TCP mesh;
//! - otherwise: shared memory inside each host ([`Subset`] of the mesh carries its set-up),
//!   routed beside TCP to the other hosts ([`Routed`]), under the hierarchical allreduce.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use ringrun_collectives::{
    Bufs, CommConfig, Communicator, Ctl, DType, Hierarchical,
    transport::{
        Transport,
        auth::{JobSecret, MeshSpec},
        quic,
        shm::{self, ShmConfig},
        subset::{Routed, Subset},
        tcp::{self, TcpTransport},
    },
};

use super::{BenchArgs, TransportKind, device, device_sweep, drive, rendezvous};

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
            spin_yield: Some(self.config.spin_yield),
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
        let listener = tokio::net::TcpListener::bind(self.bind).await?;
        let spec = MeshSpec {
            rank: self.rank,
            addrs: self.peers(listener.local_addr()?)?,
            epoch: 0,
        };
        Ok(tcp::connect(&listener, &spec, &self.secret, self.deadline).await?)
    }

    /// Forms the links and runs the bench over them; returns the number of wrong elements.
    pub(super) async fn run(mut self) -> Result<u64> {
        if self.args.rendezvous.is_some() {
            // Every rank runs on this host: spinning yields only if they outnumber its cores.
            self.localize(self.args.np);
        }
        let config = self.config.clone();
        let (cuda, transport) = self.args.resolved();
        if cuda {
            return self.device(transport).await;
        }
        match transport {
            TransportKind::Tcp => {
                drive(
                    Communicator::new(self.tcp_mesh().await?, 0, config),
                    self.args,
                    "tcp",
                )
                .await
            }
            TransportKind::Quic => {
                let socket = std::net::UdpSocket::bind(self.bind)?;
                let spec = MeshSpec {
                    rank: self.rank,
                    addrs: self.peers(socket.local_addr()?)?,
                    epoch: 0,
                };
                let t = quic::connect(socket, &spec, &self.secret, self.deadline).await?;
                drive(Communicator::new(t, 0, config), self.args, "quic").await
            }
            TransportKind::Shm => {
                // The TCP mesh authenticates the ranks and carries the segment names, then closes.
                let boot = self.tcp_mesh().await?;
                let t =
                    shm::connect(&boot, &self.secret, 0, &self.shm_config(), self.deadline).await?;
                boot.close(self.start_timeout()).await;
                drive(Communicator::new(t, 0, config), self.args, "shm").await
            }
            TransportKind::Auto => self.auto().await,
            TransportKind::Nccl => unreachable!("nccl implies --device cuda"),
        }
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

    async fn auto(mut self) -> Result<u64> {
        let boot = Arc::new(self.tcp_mesh().await?);
        let n = boot.size();
        let hosts = match self.args.host_labels.len() {
            0 => host_keys(&boot, self.deadline).await?,
            _ => self.args.host_labels.clone(),
        };
        anyhow::ensure!(hosts.len() == n, "--host-labels needs one label per rank");
        let local: Vec<usize> = (0..n).filter(|r| hosts[*r] == hosts[self.rank]).collect();
        let distinct = (0..n).all(|r| (0..r).all(|q| hosts[q] != hosts[r]));
        self.localize(local.len());
        let config = self.config.clone();
        if local.len() == n {
            let t =
                shm::connect(&*boot, &self.secret, 0, &self.shm_config(), self.deadline).await?;
            boot.close(self.start_timeout()).await;
            return drive(Communicator::new(t, 0, config), self.args, "auto (shm)").await;
        }
        if distinct {
            return drive(Communicator::new(boot, 0, config), self.args, "auto (tcp)").await;
        }
        let sub = Subset::new(boot.clone(), local.clone());
        let t = shm::connect(&sub, &self.secret, 0, &self.shm_config(), self.deadline).await?;
        let routed = Routed::new(t, local, boot);
        let h = Hierarchical::new(Arc::new(routed), &hosts, 0, config);
        drive(h, self.args, "auto (shm in host, tcp across)").await
    }
}

/// Every rank's host key, in rank order, gathered over the boot mesh.
async fn host_keys(boot: &Arc<TcpTransport>, deadline: Instant) -> Result<Vec<u64>> {
    let n = boot.size();
    let all: Vec<usize> = (0..n).collect();
    let mut c = Communicator::new(Subset::new(boot.clone(), all), 0, CommConfig::default());
    let mine = host_key().to_le_bytes();
    let mut keys = vec![0u8; 8 * n];
    let ctl = Ctl {
        deadline,
        cancel: None,
    };
    let bufs = Bufs::OutOfPlace {
        send: &mine,
        recv: &mut keys,
    };
    c.allgather_bytes(DType::U8, bufs, &ctl).await?;
    Ok(keys
        .chunks(8)
        .map(|k| u64::from_le_bytes(k.try_into().expect("8 bytes")))
        .collect())
}

/// This host's key: FNV-1a of the hostname and the kernel's boot id.
fn host_key() -> u64 {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let text = format!("{}\n{}", super::sweep::hostname(), boot_id.trim());
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
