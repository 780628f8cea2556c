//! Waiting for a ring: spin, then park on a doorbell; and noticing that a peer died.
//!
//! A waiting endpoint first re-polls for `spin` (yielding the CPU each round only where the
//! ranks outnumber the cores, so that oversubscribed ranks still run), because a wake-up through the kernel costs tens of
//! microseconds on a virtual machine. Then it raises its ring's `waiting` flag and parks on
//! this rank's *doorbell*, an abstract-namespace Unix datagram socket registered with the tokio
//! reactor (no file, so nothing to leak). The other side of the ring, after publishing bytes
//! or space, sees the flag and sends one datagram. A Dekker-style pair of `SeqCst` fences
//! (flag then re-check here; publish then flag there) means a wake-up cannot be missed between
//! the check and the park.
//!
//! Parking is also bounded by a short timer, doubling up to [`PARK_MAX`]: every expiry checks
//! whether the peer process is still alive (a pidfd, so a zombie counts as dead and a reused
//! pid is never confused with the peer). A SIGKILLed peer therefore surfaces within a few
//! milliseconds as a reset link, which the stream framing turns into `PeerLost`.
//!
//! One doorbell serves all of a rank's links; tokio keeps only the latest waker of a socket's
//! readiness. All links of one communicator are polled from one task (the collective's), so
//! that is enough; a link polled from another task still wakes within the park timer.

use std::{
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram as StdDatagram},
    },
    pin::Pin,
    sync::atomic::{AtomicU32, Ordering, fence},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{net::UnixDatagram, time::Sleep};

use super::segment::DOORBELL_LEN;
use crate::{
    error::{CollectiveError, Result},
    transport::auth,
};

/// First park before a liveness check; the timer then doubles up to [`PARK_MAX`].
const PARK_MIN: Duration = Duration::from_micros(500);
/// Longest park between liveness checks: a dead peer is noticed within about this.
const PARK_MAX: Duration = Duration::from_millis(4);
/// Busy checks between two yields while spinning (each a pause instruction and a load).
const SPIN_CHECKS: usize = 64;

/// This rank's doorbell and the socket it rings others' with.
pub(super) struct Local {
    bell: UnixDatagram,
    out: StdDatagram,
    pub(super) name: [u8; DOORBELL_LEN],
    pub(super) spin: Duration,
    spin_yield: bool,
    pid: u32,
}

impl Local {
    /// Binds a fresh doorbell (must run inside a tokio runtime with I/O enabled).
    pub(super) fn bind(spin: Duration, spin_yield: bool) -> Result<Local> {
        let fail = |e: io::Error| CollectiveError::Setup(format!("shared memory doorbell: {e}"));
        let hex: String = auth::nonce()?[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let text = format!("ringrun-bell-{}-{hex}", std::process::id());
        let mut name = [0u8; DOORBELL_LEN];
        name[..text.len()].copy_from_slice(text.as_bytes());
        let addr = SocketAddr::from_abstract_name(text.as_bytes()).map_err(fail)?;
        let bell = StdDatagram::bind_addr(&addr).map_err(fail)?;
        bell.set_nonblocking(true).map_err(fail)?;
        let out = StdDatagram::unbound().map_err(fail)?;
        out.set_nonblocking(true).map_err(fail)?;
        Ok(Local {
            bell: UnixDatagram::from_std(bell).map_err(fail)?,
            out,
            name,
            spin,
            spin_yield,
            pid: std::process::id(),
        })
    }

    /// Sends one wake-up to `peer` (best effort: a full socket buffer already holds one).
    pub(super) fn ring(&self, peer: &Peer) {
        let _ = self.out.send_to_addr(&[1], &peer.bell);
    }

    /// Rings `peer` if the flag says it parked, clearing the flag. Call after publishing.
    pub(super) fn notify(&self, peer: &Peer, waiting: &AtomicU32) {
        fence(Ordering::SeqCst);
        if waiting.load(Ordering::Relaxed) != 0 && waiting.swap(0, Ordering::AcqRel) != 0 {
            self.ring(peer);
        }
    }

    fn drain(&self) {
        let mut sink = [0u8; 16];
        while self.bell.try_recv(&mut sink).is_ok() {}
    }
}

/// A peer as its endpoints see it: where its doorbell is and how to tell that it died.
pub(super) struct Peer {
    pub(super) rank: usize,
    pid: u32,
    bell: SocketAddr,
    /// `None` when the peer is this process (ranks on threads): its links close on drop.
    pidfd: Option<OwnedFd>,
}

impl Peer {
    pub(super) fn new(
        local: &Local,
        rank: usize,
        pid: u32,
        doorbell: &[u8; DOORBELL_LEN],
    ) -> Result<Peer> {
        let fail = |what: String| {
            CollectiveError::Setup(format!("shared memory: rank {rank} (pid {pid}): {what}"))
        };
        let len = doorbell
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(DOORBELL_LEN);
        let bell =
            SocketAddr::from_abstract_name(&doorbell[..len]).map_err(|e| fail(e.to_string()))?;
        let pidfd = match pid == local.pid {
            true => None,
            false => Some(pidfd_open(pid).map_err(|e| fail(format!("pidfd_open: {e}")))?),
        };
        Ok(Peer {
            rank,
            pid,
            bell,
            pidfd,
        })
    }

    /// `Err` once the peer process has exited (its pidfd turned readable).
    pub(super) fn check_alive(&self) -> io::Result<()> {
        let Some(fd) = &self.pidfd else { return Ok(()) };
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack for the length of the call; zero timeout.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        if r > 0 && p.revents & libc::POLLIN != 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("rank {} (pid {}) exited", self.rank, self.pid),
            ));
        }
        Ok(())
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor the kernel just gave us, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One endpoint's progress through spin, park and liveness checks while its ring is not ready.
pub(super) struct Waiter {
    since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    step: Duration,
}

impl Waiter {
    pub(super) fn new() -> Waiter {
        Waiter {
            since: None,
            timer: None,
            step: PARK_MIN,
        }
    }

    /// Called when the ring became ready: the next wait starts afresh. Lowers our flag, so the
    /// other side stops ringing for a wait that is over.
    pub(super) fn done(&mut self, flag: &AtomicU32) {
        if self.since.take().is_some() {
            self.timer = None;
            self.step = PARK_MIN;
            flag.store(0, Ordering::Relaxed);
        }
    }

    /// Waits a little for `ready`: `Ready(Ok)` when it holds, `Pending` with a wake-up
    /// arranged, or the error of `alive` (checked at every park timeout) once a peer is dead.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        local: &Local,
        alive: impl Fn() -> io::Result<()>,
        flag: &AtomicU32,
        ready: impl Fn() -> bool,
    ) -> Poll<io::Result<()>> {
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() < local.spin {
            for _ in 0..SPIN_CHECKS {
                std::hint::spin_loop();
                if ready() {
                    return Poll::Ready(Ok(()));
                }
            }
            if local.spin_yield || since.elapsed() > crate::spin::PURE_SPIN {
                std::thread::yield_now();
            }
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        flag.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if ready() {
            return Poll::Ready(Ok(()));
        }
        if local.bell.poll_recv_ready(cx).is_ready() {
            local.drain();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(self.step)));
        if timer.as_mut().poll(cx).is_ready() {
            alive()?;
            self.step = (self.step * 2).min(PARK_MAX);
            self.timer = None;
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}
