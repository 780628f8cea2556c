//! The launcher's own view of the job: it joins the job's SWIM group as a member without
//! collective endpoints (so the runtime never puts it in an epoch), prints one line per
//! membership event, and serves as a seed the workers announce to. It advertises its control
//! socket, where the job's members announce its completion. It also catches SIGINT and
//! SIGTERM for the supervisor to forward.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicI32, Ordering},
        mpsc::{Receiver, Sender, channel},
    },
    time::Instant,
};

use anyhow::Result;
use ringrun_membership::{
    DriverConfig, Endpoint, JobId, Membership, MembershipConfig, MembershipEvent, Metadata, NodeId,
};
use ringrun_runtime::member::{self, MemberKey};

/// A membership event as the launcher reports it.
#[derive(Debug)]
pub(crate) struct Seen {
    pub(crate) at: Instant,
    pub(crate) what: &'static str,
    pub(crate) addr: SocketAddr,
    pub(crate) node: u64,
    /// The worker's key and control address (none for members that are not workers).
    pub(crate) worker: Option<(MemberKey, SocketAddr)>,
    /// The member's host name and launch rank, as it advertises them.
    pub(crate) host: String,
    pub(crate) launch_rank: Option<u32>,
}

/// Starts the watcher thread; returns its membership address and the events.
pub(crate) fn start(
    bind: SocketAddr,
    job: JobId,
    secret: Vec<u8>,
    host: String,
    node: u64,
    control: SocketAddr,
) -> Result<(SocketAddr, Receiver<Seen>)> {
    let (tx, rx) = channel();
    let (addr_tx, addr_rx) = channel();
    std::thread::Builder::new()
        .name("ringrun-launch-watch".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return drop(addr_tx.send(Err(e.to_string()))),
            };
            rt.block_on(async move {
                let config = DriverConfig {
                    bind,
                    seeds: Vec::new(),
                    node: NodeId(node),
                    meta: Metadata {
                        host,
                        endpoints: vec![Endpoint {
                            transport: member::CONTROL_ENDPOINT,
                            addr: control,
                        }],
                        ..Metadata::default()
                    },
                    job,
                    secret,
                    membership: MembershipConfig::default(),
                    incarnation: None,
                };
                match Membership::start(config).await {
                    Ok((m, events)) => {
                        let _ = addr_tx.send(Ok(m.local_addr()));
                        forward(events, tx).await;
                        let _ = m.leave().await;
                    }
                    Err(e) => drop(addr_tx.send(Err(e.to_string()))),
                }
            });
        })?;
    let addr = addr_rx.recv()?.map_err(anyhow::Error::msg)?;
    Ok((addr, rx))
}

async fn forward(mut events: tokio::sync::broadcast::Receiver<MembershipEvent>, tx: Sender<Seen>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let (what, id) = match events.recv().await {
            Ok(MembershipEvent::Up(id)) => ("up", id),
            Ok(MembershipEvent::Down(id)) => ("down", id),
            Ok(MembershipEvent::Left(id)) => ("left", id),
            Ok(MembershipEvent::Suspect(id)) => ("suspect", id),
            Ok(MembershipEvent::Local(_)) | Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        let seen = Seen {
            at: Instant::now(),
            what,
            addr: id.addr,
            node: id.node.0,
            worker: member::worker(&id).map(|(k, e)| (k, e.control)),
            host: id.meta.host.clone(),
            launch_rank: id.meta.launch_rank,
        };
        if tx.send(seen).is_err() {
            return;
        }
    }
}

/// The last SIGINT or SIGTERM received (0: none), set by a watcher thread.
pub(crate) fn signals() -> Result<Arc<AtomicI32>> {
    let last = Arc::new(AtomicI32::new(0));
    let flag = last.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ringrun-launch-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                loop {
                    let sig = tokio::select! {
                        _ = int.recv() => 2,
                        _ = term.recv() => 15,
                    };
                    flag.store(sig, Ordering::SeqCst);
                }
            })
        })?;
    Ok(last)
}
