//! The tokio shell around membership and agreement.
//!
//! One thread runs a current-thread runtime with two tasks' worth of work: the SWIM member
//! (from `ringrun-membership`) and this loop, which owns the [`Agreement`], feeds it the SWIM
//! view, control datagrams and ticks, sends what it asks for and publishes what it decides.
//! It runs on its own thread so that agreement goes on while the caller computes or blocks in
//! a collective. Aborts reach a collective in flight through the [`Cancel`] the group
//! registers for its current epoch.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ringrun_collectives::Cancel;
use ringrun_membership::{DriverConfig, MemberState, Membership};
use tokio::{
    net::UdpSocket,
    sync::{broadcast::error::RecvError, mpsc, watch},
};
use tracing::{debug, info, info_span, warn};

use crate::{
    agreement::{self, Agreement, Event, View},
    control::{Completion, Control, ControlCodec},
    member::{self, Advert, CONTROL_ENDPOINT, EpochAnnotation, MemberKey},
    progress::{Dropped, Progress},
};

/// How often the agreement's timers are evaluated.
const TICK: Duration = Duration::from_millis(10);
/// Every this many ticks the driver reads the SWIM member's drop counters (for reports).
const STATS_EVERY: u64 = 50;
/// How long a collective in flight may still finish after members of its epoch left
/// gracefully (see `Loop::apply`).
const LEAVE_GRACE: Duration = Duration::from_millis(500);

/// An agreed view of the group.
pub type GroupView = View<MemberKey, Advert>;

/// What the driver has decided, as the group reads it.
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// The installed view and when it was installed.
    pub view: Option<(Arc<GroupView>, Instant)>,
    /// The newest epoch whose members were lost, and when that was noticed.
    pub aborted: Option<(u64, Instant)>,
    /// Why no view can be formed now, if that is the case.
    pub blocked: Option<String>,
    /// Live workers not in the view, waiting for a commit boundary.
    pub waiting_to_join: usize,
    /// The driver stopped (its error, if any).
    pub stopped: Option<String>,
    /// The job completed: this member finished it, or a member that did said so.
    pub completed: Option<Completion>,
}

/// The collective in flight, for the driver to cancel on an abort.
pub(crate) type CancelSlot = Arc<Mutex<Option<(u64, Cancel)>>>;

pub(crate) enum Command {
    Admit(bool),
    Reform(u64),
    /// This member finished the job: announce it to every member and launcher known.
    Finish(Completion),
    Leave,
}

/// Handle to the driver thread.
pub(crate) struct Driver {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) published: watch::Receiver<Published>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub(crate) struct Setup {
    pub(crate) me: MemberKey,
    pub(crate) membership: DriverConfig,
    pub(crate) agreement: agreement::Config,
    pub(crate) control: std::net::UdpSocket,
    pub(crate) codec: ControlCodec,
    pub(crate) cancel: CancelSlot,
    pub(crate) progress: Progress,
}

impl Driver {
    pub(crate) fn spawn(setup: Setup) -> std::io::Result<Driver> {
        let (commands, rx) = mpsc::unbounded_channel();
        let (tx, published) = watch::channel(Published::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        setup.control.set_nonblocking(true)?;
        let thread = std::thread::Builder::new()
            .name("ringrun-group".into())
            .spawn(move || {
                let stopped = rt.block_on(run(setup, rx, &tx));
                tx.send_modify(|p| p.stopped = Some(stopped.err().unwrap_or_default()));
            })?;
        Ok(Driver {
            commands,
            published,
            thread: Some(thread),
        })
    }

    pub(crate) fn send(&self, c: Command) {
        let _ = self.commands.send(c);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Leave);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Loop {
    agreement: Agreement<MemberKey, Advert>,
    codec: ControlCodec,
    socket: UdpSocket,
    control_addrs: BTreeMap<MemberKey, SocketAddr>,
    /// The control sockets of every live member, launchers included (for `Command::Finish`).
    announce_to: BTreeSet<SocketAddr>,
    /// The job's completion, once known.
    completed: Option<Completion>,
    /// Members a launcher saw exit: never live again, and known to have exited.
    exited: BTreeSet<MemberKey>,
    members: Vec<ringrun_membership::MemberInfo>,
    cancel: CancelSlot,
    progress: Progress,
    start: Instant,
    /// Control datagrams dropped (unauthenticated or malformed).
    dropped: u64,
    /// Membership datagrams dropped, as of the newest look at the SWIM member's counters.
    membership_dropped: u64,
    /// An epoch whose collective in flight is cancelled at this instant, unless it ended.
    cancel_at: Option<(u64, Instant)>,
}

async fn run(
    setup: Setup,
    mut commands: mpsc::UnboundedReceiver<Command>,
    out: &watch::Sender<Published>,
) -> Result<(), String> {
    let (membership, mut events) = Membership::start(setup.membership)
        .await
        .map_err(|e| e.to_string())?;
    let view = membership.view();
    let now = Instant::now();
    let mut l = Loop {
        agreement: Agreement::new(
            setup.me,
            own_advert(&membership)?,
            setup.agreement,
            Duration::ZERO,
        ),
        codec: setup.codec,
        socket: UdpSocket::from_std(setup.control).map_err(|e| e.to_string())?,
        control_addrs: BTreeMap::new(),
        announce_to: BTreeSet::new(),
        completed: None,
        exited: BTreeSet::new(),
        members: Vec::new(),
        cancel: setup.cancel,
        progress: setup.progress,
        start: now,
        dropped: 0,
        membership_dropped: 0,
        cancel_at: None,
    };
    let mut tick = tokio::time::interval(TICK);
    let mut buf = vec![0u8; 64 * 1024];
    let mut annotated = 0;
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    l.members = view.borrow().to_vec();
                    l.refresh_live();
                }
                Err(RecvError::Closed) => break,
            },
            got = l.socket.recv_from(&mut buf) => match got {
                Ok((n, from)) => l.on_datagram(&buf[..n], from).await,
                Err(e) => debug!(error = %e, "control socket"),
            },
            _ = tick.tick() => {
                let now = l.now();
                l.agreement.tick(now);
                l.cancel_if_due(Instant::now());
                ticks += 1;
                if ticks.is_multiple_of(STATS_EVERY)
                    && let Ok(stats) = membership.stats().await
                {
                    l.membership_dropped = stats.dropped.values().sum();
                }
            }
            cmd = commands.recv() => {
                let now = l.now();
                match cmd {
                    Some(Command::Admit(open)) => l.agreement.set_admitting(now, open),
                    Some(Command::Reform(epoch)) => l.agreement.request_reform(now, epoch),
                    Some(Command::Finish(c)) => l.announce_completion(c).await,
                    Some(Command::Leave) | None => break,
                }
            }
        }
        l.flush().await;
        l.publish(out);
        if let Some(v) = l.agreement.installed()
            && v.epoch != annotated
        {
            annotated = v.epoch;
            let ranks = v.members.iter().map(|(k, _)| *k).collect();
            let _ = membership.annotate(
                EpochAnnotation {
                    epoch: v.epoch,
                    ranks,
                }
                .encode(),
            );
        }
    }
    if l.dropped > 0 {
        info!(
            dropped = l.dropped,
            "control datagrams dropped (unauthenticated or malformed)"
        );
    }
    if let Ok(stats) = membership.stats().await
        && !stats.dropped.is_empty()
    {
        info!(dropped = ?stats.dropped, "membership datagrams dropped");
    }
    membership.leave().await.map_err(|e| e.to_string())
}

fn own_advert(m: &Membership) -> Result<Advert, String> {
    Advert::from_meta(&m.identity().meta).ok_or_else(|| "no endpoints in own metadata".into())
}

impl Loop {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn refresh_live(&mut self) {
        let (mut live, mut left) = (BTreeMap::new(), self.exited.clone());
        self.announce_to = (self.members.iter())
            .filter(|info| info.state.is_active())
            .flat_map(|info| &info.id.meta.endpoints)
            .filter(|e| e.transport == CONTROL_ENDPOINT)
            .map(|e| e.addr)
            .collect();
        for info in &self.members {
            let Some((key, advert)) = member::advertised(&info.id) else {
                continue;
            };
            self.control_addrs.insert(key, advert.endpoints.control);
            match info.state {
                _ if self.exited.contains(&key) => {}
                s if s.is_active() => {
                    live.insert(key, advert);
                }
                MemberState::Left => {
                    left.insert(key);
                }
                _ => {}
            }
        }
        let now = self.now();
        self.agreement.set_live(now, live, left);
    }

    async fn on_datagram(&mut self, packet: &[u8], from: SocketAddr) {
        match self.codec.open(*self.agreement.id(), packet) {
            Ok(Control::Agreement(from, msg)) => {
                let now = self.now();
                self.agreement.handle(now, from, msg);
            }
            Ok(Control::Exited(member)) => {
                if member != *self.agreement.id() && self.exited.insert(member) {
                    info!(%member, "a launcher saw the member exit");
                    self.refresh_live();
                }
            }
            Ok(Control::ReportRequest { since }) => {
                let mut report = self.progress.report(*self.agreement.id(), since);
                report.dropped = Dropped {
                    membership: self.membership_dropped,
                    control: self.dropped,
                };
                let packet = self.codec.seal_report(&report);
                if let Err(e) = self.socket.send_to(&packet, from).await {
                    debug!(error = %e, "report send failed");
                }
            }
            Ok(Control::Completed(c)) => {
                if self.completed.is_none() {
                    info!(step = c.step, "the job completed");
                    self.completed = Some(c);
                }
            }
            Ok(Control::Report(_)) => self.dropped += 1,
            Err(reason) => {
                self.dropped += 1;
                debug!(%reason, "control datagram dropped");
            }
        }
    }

    /// Tells every member and launcher known that the job completed. Once: a member that
    /// misses it learns it from its launcher, which passes it on to workers it sees join.
    async fn announce_completion(&mut self, c: Completion) {
        self.completed = Some(c);
        let packet = self.codec.seal_completed(c);
        for addr in &self.announce_to {
            if let Err(e) = self.socket.send_to(&packet, addr).await {
                debug!(%addr, error = %e, "completion send failed");
            }
        }
    }

    async fn flush(&mut self) {
        while let Some((to, msg)) = self.agreement.poll_send() {
            let Some(addr) = self.control_addrs.get(&to) else {
                debug!(%to, "no control address yet; the agreement will retry");
                continue;
            };
            let packet = self.codec.seal(*self.agreement.id(), to, &msg);
            if let Err(e) = self.socket.send_to(&packet, addr).await {
                warn!(%to, error = %e, "control send failed");
            }
        }
    }

    fn publish(&mut self, out: &watch::Sender<Published>) {
        let waiting = self.agreement.waiting_to_join();
        let mut events = Vec::new();
        while let Some(ev) = self.agreement.poll_event() {
            events.push(ev);
        }
        let unchanged = {
            let p = out.borrow();
            p.waiting_to_join == waiting && p.completed == self.completed
        };
        if events.is_empty() && unchanged {
            return;
        }
        out.send_modify(|p| {
            p.waiting_to_join = waiting;
            p.completed = self.completed;
            for ev in events {
                self.apply(p, ev);
            }
        });
    }

    fn apply(&mut self, p: &mut Published, ev: Event<MemberKey, Advert>) {
        let now = Instant::now();
        match ev {
            Event::Installed(view) => {
                let _span = info_span!("view_change", epoch = view.epoch).entered();
                info!(size = view.members.len(), "epoch installed");
                self.cancel_older_than(view.epoch, "a newer epoch was installed");
                p.view = Some((Arc::new(view), now));
                p.blocked = None;
            }
            // Members that left gracefully closed their links, which their peers' transports see
            // at once; a collective in flight that needs them fails that way, and one that
            // does not (the last commit of a job whose other ranks finished and left) may
            // still finish. It is cancelled only if it has not after `LEAVE_GRACE`. Members
            // that failed, or went silent, are cancelled on at once. Either way the next
            // collective of the epoch is refused (`aborted`).
            Event::Abort { epoch, lost } if lost.iter().all(|k| self.left_gracefully(k)) => {
                let _span = info_span!("view_change", epoch).entered();
                info!(
                    ?lost,
                    "members left: the epoch ends after its collective in flight"
                );
                self.cancel_at = Some((epoch, now + LEAVE_GRACE));
                p.aborted = Some((epoch, now));
            }
            Event::Abort { epoch, lost } => {
                let _span = info_span!("view_change", epoch).entered();
                info!(?lost, "members lost: aborting the epoch's collectives");
                self.cancel_older_than(epoch + 1, "members of the epoch were lost");
                p.aborted = Some((epoch, now));
            }
            Event::Blocked(why) => p.blocked = Some(why),
        }
    }

    /// Whether `key` told the group it was leaving (not failed, not merely seen to exit).
    fn left_gracefully(&self, key: &MemberKey) -> bool {
        self.members.iter().any(|info| {
            info.state == MemberState::Left
                && member::advertised(&info.id).is_some_and(|(k, _)| k == *key)
        })
    }

    fn cancel_if_due(&mut self, now: Instant) {
        if let Some((epoch, _)) = self.cancel_at.take_if(|(_, at)| *at <= now) {
            self.cancel_older_than(epoch + 1, "members of the epoch left");
        }
    }

    fn cancel_older_than(&self, epoch: u64, why: &str) {
        let slot = self.cancel.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((e, cancel)) = slot.as_ref()
            && *e < epoch
        {
            cancel.cancel(why);
        }
    }
}
