//! The tokio UDP shell around [`Node`]: the only module with sockets, clocks and tasks.
//!
//! One task owns the node and the socket. It feeds the node every datagram and every due
//! timeout, sends what the node emits, publishes events on a broadcast channel and a snapshot of
//! the view on a watch channel, and leaves gracefully when [`Membership::leave`] is called or the
//! [`Membership`] handle is dropped. It makes no membership decisions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::SecureRandom;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::MembershipConfig;
use crate::error::MembershipError;
use crate::identity::{Incarnation, MemberId, Metadata, NodeId};
use crate::node::{MembershipEvent, Node, Stats};
use crate::time::Time;
use crate::view::MemberInfo;
use crate::wire::{Authenticator, JobId};

/// Capacity of the event channel; slower subscribers see `Lagged` and should re-read the view.
pub const EVENT_CAPACITY: usize = 1024;

/// Everything needed to start a member.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Address to bind the membership socket to (port 0 picks one).
    pub bind: SocketAddr,
    /// Seed members' membership addresses (this member's own address is skipped).
    pub seeds: Vec<SocketAddr>,
    /// Stable node id.
    pub node: NodeId,
    /// Metadata gossiped with the identity.
    pub meta: Metadata,
    /// Job id (part of the MAC key).
    pub job: JobId,
    /// Job secret, at least [`crate::MIN_SECRET_LEN`] bytes.
    pub secret: Vec<u8>,
    /// Protocol parameters.
    pub membership: MembershipConfig,
    /// Restart incarnation; `None` takes the wall clock in microseconds.
    pub incarnation: Option<Incarnation>,
}

enum Command {
    Leave(oneshot::Sender<Result<(), MembershipError>>),
    Stats(oneshot::Sender<Stats>),
    Annotate(Vec<u8>),
}

/// Handle to a running member. Dropping it makes the member leave.
pub struct Membership {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<MembershipEvent>,
    view: watch::Receiver<Arc<Vec<MemberInfo>>>,
    identity: MemberId,
    task: JoinHandle<Result<(), MembershipError>>,
}

impl Membership {
    /// Binds the socket, builds the node, spawns the task (on the current tokio runtime) and
    /// joins through the seeds. Returns the handle and an event receiver that sees every event
    /// from the start.
    pub async fn start(
        config: DriverConfig,
    ) -> Result<(Self, broadcast::Receiver<MembershipEvent>), MembershipError> {
        let auth = Authenticator::new(config.job, &config.secret)?;
        let socket = UdpSocket::bind(config.bind).await?;
        let addr = socket.local_addr()?;
        let incarnation = config.incarnation.unwrap_or_else(wall_clock_incarnation);
        let identity = MemberId::new(config.node, addr, incarnation, config.meta);
        let mut node = Node::new(
            identity.clone(),
            config.membership.clone(),
            auth,
            random_seed(),
        )?;
        let start = Instant::now();
        node.join(Time::ZERO, &config.seeds)?;
        let (commands, command_rx) = mpsc::channel(16);
        let (events, event_rx) = broadcast::channel(EVENT_CAPACITY);
        let (view_tx, view) = watch::channel(Arc::new(node.members()));
        let task = tokio::spawn(run(
            node,
            socket,
            start,
            command_rx,
            events.clone(),
            view_tx,
        ));
        Ok((
            Self {
                commands,
                events,
                view,
                identity,
                task,
            },
            event_rx,
        ))
    }

    /// The identity this member started with (a rejoin after a false `Down` bumps `rejoin`).
    pub fn identity(&self) -> &MemberId {
        &self.identity
    }

    /// The bound membership address.
    pub fn local_addr(&self) -> SocketAddr {
        self.identity.addr
    }

    /// Another receiver of events, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events.subscribe()
    }

    /// The view, updated after every batch of events.
    pub fn view(&self) -> watch::Receiver<Arc<Vec<MemberInfo>>> {
        self.view.clone()
    }

    /// The node's counters.
    pub async fn stats(&self) -> Result<Stats, MembershipError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Stats(tx))
            .await
            .map_err(|_| MembershipError::DriverStopped)?;
        rx.await.map_err(|_| MembershipError::DriverStopped)
    }

    /// Publishes `bytes` to observers with this member's view (see [`Node::set_annotation`]).
    pub fn annotate(&self, bytes: Vec<u8>) -> Result<(), MembershipError> {
        self.commands
            .try_send(Command::Annotate(bytes))
            .map_err(|_| MembershipError::DriverStopped)
    }

    /// Leaves gracefully and waits for the task to end.
    pub async fn leave(self) -> Result<(), MembershipError> {
        let (tx, rx) = oneshot::channel();
        let sent = self.commands.send(Command::Leave(tx)).await;
        let left = match sent {
            Ok(()) => rx.await.unwrap_or(Err(MembershipError::DriverStopped)),
            Err(_) => Err(MembershipError::DriverStopped),
        };
        match self.task.await {
            Ok(Ok(())) => left,
            Ok(Err(err)) => Err(err),
            Err(_) => Err(MembershipError::DriverStopped),
        }
    }
}

async fn run(
    mut node: Node,
    socket: UdpSocket,
    start: Instant,
    mut commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<MembershipEvent>,
    view: watch::Sender<Arc<Vec<MemberInfo>>>,
) -> Result<(), MembershipError> {
    let span = tracing::info_span!("membership", node = %node.identity());
    let _guard = span.enter();
    let now = || Time::from_micros(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
    let mut buf = vec![0u8; 65_536];
    loop {
        flush(&mut node, &socket, &events, &view).await;
        let deadline = node
            .poll_timeout()
            .map_or(Instant::now() + Duration::from_secs(3600), |t| {
                start + t.since_epoch()
            });
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => {
                    // Errors are counted in the node's stats; nothing else to do here.
                    let _ = node.handle_packet(now(), from, &buf[..len]);
                }
                Err(err) if transient(&err) => {}
                Err(err) => return Err(err.into()),
            },
            () = tokio::time::sleep_until(deadline) => node.handle_timeout(now()),
            command = commands.recv() => match command {
                Some(Command::Stats(reply)) => {
                    let _ = reply.send(node.stats().clone());
                }
                Some(Command::Annotate(bytes)) => {
                    if let Err(e) = node.set_annotation(bytes) {
                        tracing::warn!(error = %e, "annotation refused");
                    }
                }
                Some(Command::Leave(reply)) => {
                    let result = node.leave(now());
                    flush(&mut node, &socket, &events, &view).await;
                    let _ = reply.send(result);
                    return Ok(());
                }
                None => {
                    let _ = node.leave(now());
                    flush(&mut node, &socket, &events, &view).await;
                    return Ok(());
                }
            },
        }
    }
}

async fn flush(
    node: &mut Node,
    socket: &UdpSocket,
    events: &broadcast::Sender<MembershipEvent>,
    view: &watch::Sender<Arc<Vec<MemberInfo>>>,
) {
    while let Some(transmit) = node.poll_transmit() {
        if let Err(err) = socket.send_to(&transmit.payload, transmit.dst).await {
            tracing::debug!(dst = %transmit.dst, %err, "send failed");
        }
    }
    let mut changed = false;
    while let Some(event) = node.poll_event() {
        changed = true;
        // No subscriber is fine: the view below is authoritative.
        let _ = events.send(event);
    }
    if changed {
        view.send_replace(Arc::new(node.members()));
    }
}

/// ICMP errors reported on a later receive (a peer's port closed); not fatal for UDP.
fn transient(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::Interrupted
            | ErrorKind::WouldBlock
    )
}

fn wall_clock_incarnation() -> Incarnation {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    Incarnation::from_unix_micros(micros)
}

pub(crate) fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    // SystemRandom only fails if the OS RNG is unavailable; fall back to the clock then.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return wall_clock_incarnation().0;
    }
    u64::from_le_bytes(bytes)
}
