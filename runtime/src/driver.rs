//! The tokio shell around the [`ControlPlane`]: the thread that owns the worker's two UDP
//! sockets (membership and control) and the clock.
//!
//! It feeds the plane every datagram, every due timeout and the group's commands, and carries
//! out what the plane outputs: datagrams, the [`Published`] state the group reads, reports.
//! It runs on its own thread so that agreement goes on while the caller computes or blocks in
//! a collective. Aborts reach a collective in flight through the [`Cancel`] the group
//! registers for its current epoch. It makes no decisions of its own.

use std::{
    sync::{Arc, Mutex},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use ring::rand::SecureRandom;
use ringrun_collectives::Cancel;
use ringrun_membership::{Authenticator, DriverConfig, Incarnation, MemberId, Node, Time};
use tokio::{
    net::UdpSocket,
    sync::{mpsc, watch},
};
use tracing::{debug, info, warn};

use crate::{
    agreement::{self, View},
    control::{Completion, ControlCodec},
    lifecycle::{self, FrontEvent},
    member::{Advert, MemberKey},
    plane::{ControlPlane, Output, Socket},
    progress::{Dropped, Progress},
    report::FaultEvent,
};

/// An agreed view of the group.
pub type GroupView = View<MemberKey, Advert>;

/// What the plane has decided, as the group reads it.
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// The installed view.
    pub view: Option<Arc<GroupView>>,
    /// The newest epoch that is over for this member, and why.
    pub ended: Option<(u64, String)>,
    /// Admission windows that closed without a newer view, so far.
    pub admissions_closed: u64,
    /// Recoveries so far, oldest first.
    pub faults: Vec<FaultEvent>,
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
    /// What happened to the group's epoch.
    Front(FrontEvent),
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
    pub(crate) membership: DriverConfig,
    pub(crate) agreement: agreement::Config,
    pub(crate) lifecycle: lifecycle::Config,
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

/// The driver's side of one worker: the plane, the sockets, and what it publishes to.
struct Shell {
    plane: ControlPlane,
    membership: UdpSocket,
    control: UdpSocket,
    codec: ControlCodec,
    cancel: CancelSlot,
    progress: Progress,
    start: Instant,
}

async fn run(
    setup: Setup,
    mut commands: mpsc::UnboundedReceiver<Command>,
    out: &watch::Sender<Published>,
) -> Result<(), String> {
    let mut shell = Shell::start(setup).await?;
    let (mut buf, mut control_buf) = (vec![0u8; 65_536], vec![0u8; 65_536]);
    loop {
        shell.carry_out(out).await;
        let wake = shell.start + shell.plane.poll_timeout().since_epoch();
        tokio::select! {
            got = shell.membership.recv_from(&mut buf) => match got {
                Ok((n, from)) => shell.plane.membership_datagram(shell.now(), from, &buf[..n]),
                Err(e) => debug!(error = %e, "membership socket"),
            },
            got = shell.control.recv_from(&mut control_buf) => match got {
                Ok((n, from)) => shell.plane.control_datagram(shell.now(), from, &control_buf[..n]),
                Err(e) => debug!(error = %e, "control socket"),
            },
            () = tokio::time::sleep_until(wake.into()) => shell.plane.tick(shell.now()),
            cmd = commands.recv() => {
                let now = shell.now();
                match cmd {
                    Some(Command::Front(event)) => shell.plane.front(now, event),
                    Some(Command::Finish(c)) => shell.plane.finish(now, c),
                    Some(Command::Leave) | None => break,
                }
            }
        }
    }
    let dropped = shell.dropped();
    if dropped.control > 0 || dropped.membership > 0 {
        info!(?dropped, "datagrams dropped (unauthenticated or malformed)");
    }
    shell.plane.leave(shell.now());
    shell.carry_out(out).await;
    Ok(())
}

impl Shell {
    /// Binds the membership socket, makes this life's identity and SWIM member, and joins.
    async fn start(setup: Setup) -> Result<Shell, String> {
        let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
        let config = setup.membership;
        let membership = UdpSocket::bind(config.bind)
            .await
            .map_err(|e| err("membership socket", &e))?;
        let addr = membership
            .local_addr()
            .map_err(|e| err("membership socket", &e))?;
        let incarnation = config.incarnation.unwrap_or_else(|| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            Incarnation::from_unix_micros(now.as_micros() as u64)
        });
        let id = MemberId::new(config.node, addr, incarnation, config.meta);
        let auth = Authenticator::new(config.job, &config.secret).map_err(|e| err("secret", &e))?;
        let node = Node::new(id, config.membership, auth, random_seed())
            .map_err(|e| err("membership", &e))?;
        let start = Instant::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let life = lifecycle::Config {
            wall_origin_ms: wall.as_millis() as u64,
            ..setup.lifecycle
        };
        let plane = ControlPlane::start(
            node,
            &config.seeds,
            setup.codec.clone(),
            setup.agreement,
            life,
            Time::ZERO,
        )
        .map_err(|e| err("membership", &e))?;
        Ok(Shell {
            plane,
            membership,
            control: UdpSocket::from_std(setup.control).map_err(|e| err("control socket", &e))?,
            codec: setup.codec,
            cancel: setup.cancel,
            progress: setup.progress,
            start,
        })
    }

    fn now(&self) -> Time {
        Time::from_micros(self.start.elapsed().as_micros() as u64)
    }

    fn dropped(&self) -> Dropped {
        Dropped {
            membership: self.plane.node().stats().dropped.values().sum(),
            control: self.plane.control_dropped(),
        }
    }

    /// Carries out everything the plane asked for. What the group reads is published in one
    /// change, so that it never sees a newer view without the end of its epoch.
    async fn carry_out(&mut self, out: &watch::Sender<Published>) {
        let mut publish = Vec::new();
        while let Some(output) = self.plane.poll_output() {
            match output {
                Output::Transmit { socket, to, bytes } => {
                    let s = match socket {
                        Socket::Membership => &self.membership,
                        Socket::Control => &self.control,
                    };
                    if let Err(e) = s.send_to(&bytes, to).await {
                        warn!(%to, error = %e, "send failed");
                    }
                }
                Output::Cancel { below, why } => self.cancel_below(below, why),
                Output::ReportRequested { to, since } => {
                    let mut report = self.progress.report(self.plane.me(), since);
                    report.dropped = self.dropped();
                    let packet = self.codec.seal_report(&report);
                    if let Err(e) = self.control.send_to(&packet, to).await {
                        debug!(error = %e, "report send failed");
                    }
                }
                Output::Fault(f) => {
                    self.progress.fault(&f);
                    publish.push(Output::Fault(f));
                }
                other => publish.push(other),
            }
        }
        if !publish.is_empty() {
            out.send_modify(|p| publish.into_iter().for_each(|o| apply(p, o)));
        }
    }

    /// Cancels the collective in flight if its epoch is below `below`.
    fn cancel_below(&self, below: u64, why: &str) {
        let slot = self.cancel.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((e, cancel)) = slot.as_ref()
            && *e < below
        {
            cancel.cancel(why);
        }
    }
}

/// What the group reads of one output.
fn apply(p: &mut Published, output: Output) {
    match output {
        Output::Installed(view) => {
            p.view = Some(Arc::new(view));
            p.blocked = None;
        }
        Output::Ended { epoch, why } => p.ended = Some((epoch, why)),
        Output::Blocked(why) => p.blocked = Some(why),
        Output::Completed(c) => p.completed = Some(c),
        Output::Waiting(n) => p.waiting_to_join = n,
        Output::AdmissionClosed => p.admissions_closed += 1,
        Output::Fault(f) => p.faults.push(f),
        Output::Transmit { .. } | Output::Cancel { .. } | Output::ReportRequested { .. } => {}
    }
}

/// A seed for the SWIM member's random choices, from the OS (the clock if that fails).
fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        }
    }
}
