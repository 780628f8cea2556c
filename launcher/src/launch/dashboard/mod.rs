//! `ringrun launch --dashboard [ADDR:]PORT`: a live web page of the job, `/api/status` and
//! Prometheus' `/metrics`, served by the launcher.
//!
//! The launcher is a SWIM member, so it sees every member of the job, on every host; the
//! collector asks each live worker for its report (`Control::ReportRequest`, sealed with the
//! job key, answered on the worker's control socket by its driver thread) four times a second
//! and folds the answers into the [`JobView`]. Any host's launcher therefore shows the whole
//! job. Off loopback, every request needs a token derived from the job secret.

mod http;
mod metrics;
mod view;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use ring::hmac;
use ringrun_runtime::{control::ControlCodec, progress::unix_ms, straggler::Straggler};

use super::watch::Seen;
use view::{JobView, Sighting};

/// How often live workers are asked for their reports while a page may be watching, and
/// otherwise (the straggler log only).
const POLL_PAGE: Duration = Duration::from_millis(250);
const POLL_LOG: Duration = Duration::from_secs(1);

/// The job as this launcher sees it: what the launcher's loop feeds it.
pub(crate) struct Dashboard {
    view: Arc<Mutex<JobView>>,
    /// Where the page is, with the token when one is needed (`None`: no page).
    pub(crate) url: Option<String>,
}

/// What [`Dashboard::start`] needs.
pub(crate) struct Options<'a> {
    /// Where to serve the page (`None`: no page, only the straggler log).
    pub(crate) listen: Option<SocketAddr>,
    /// The address the collector sends from.
    pub(crate) bind: IpAddr,
    pub(crate) secret: &'a [u8],
    pub(crate) run_id: &'a str,
    pub(crate) codec: ControlCodec,
    pub(crate) straggler_factor: f64,
    pub(crate) straggler_steps: u32,
}

/// `[ADDR:]PORT`; a bare port listens on `bind` (the launcher's, loopback by default).
pub(crate) fn parse_addr(spec: &str, bind: IpAddr) -> Result<SocketAddr> {
    if let Ok(port) = spec.parse::<u16>() {
        return Ok(SocketAddr::new(bind, port));
    }
    spec.parse()
        .with_context(|| format!("--dashboard {spec}: expected [ADDR:]PORT"))
}

/// The token a dashboard beyond loopback requires: derived from the job secret, so that
/// anybody holding the secret can compute it and nobody else can.
fn token(secret: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, b"ringrun dashboard token");
    tag.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Dashboard {
    /// Starts the collector (and the page, when `o.listen` names where).
    pub(crate) fn start(o: Options<'_>) -> Result<Dashboard> {
        let listener = match o.listen {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("--dashboard: listening on {addr}"))?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        };
        let socket = std::net::UdpSocket::bind((o.bind, 0))?;
        socket.set_nonblocking(true)?;
        let mut job = JobView::new(o.run_id, unix_ms());
        job.straggler_rule = (o.straggler_factor, o.straggler_steps);
        let view = Arc::new(Mutex::new(job));
        let mut url = None;
        let page = match listener {
            Some(l) => {
                let local = l.local_addr()?;
                let token = http::needs_token(local).then(|| token(o.secret));
                url = Some(match &token {
                    Some(t) => format!("http://{local}/?token={t}"),
                    None => format!("http://{local}/"),
                });
                let shared = http::Shared {
                    view: view.clone(),
                    token: token.map(Into::into),
                };
                Some((l, shared))
            }
            None => None,
        };
        let poll = if page.is_some() { POLL_PAGE } else { POLL_LOG };
        let (collected, codec) = (view.clone(), o.codec);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("ringrun-dashboard".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(socket) = tokio::net::UdpSocket::from_std(socket) else {
                        return eprintln!("ringrun: dashboard: could not register its socket");
                    };
                    let serve = async {
                        if let Some((l, shared)) = page {
                            match tokio::net::TcpListener::from_std(l) {
                                Ok(l) => http::serve(l, shared).await,
                                Err(e) => eprintln!("ringrun: dashboard: {e}"),
                            }
                        }
                    };
                    tokio::join!(serve, collect(socket, codec, collected, poll));
                })
            })?;
        Ok(Dashboard { view, url })
    }

    fn view(&self) -> std::sync::MutexGuard<'_, JobView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A membership event the launcher's watcher saw.
    pub(crate) fn saw(&self, s: &Seen) {
        let Some((key, control)) = s.worker else {
            return;
        };
        let state = match s.what {
            "up" => "up",
            "suspect" => "suspect",
            "down" => "down",
            _ => "left",
        };
        let sighting = Sighting {
            key,
            state,
            host: s.host.clone(),
            launch_rank: s.launch_rank,
            addr: s.addr,
            control,
        };
        self.view().saw(sighting, unix_ms());
    }

    /// The launcher restarted a worker (`total` restarts so far).
    pub(crate) fn restarts(&self, total: u32) {
        self.view().restarts = total;
    }
}

/// Asks every live worker for its report every `poll`, folds in what comes back, and logs
/// each straggler flag when it is raised or cleared.
async fn collect(
    socket: tokio::net::UdpSocket,
    codec: ControlCodec,
    view: Arc<Mutex<JobView>>,
    poll: Duration,
) {
    let mut tick = tokio::time::interval(poll);
    let mut buf = vec![0u8; 64 * 1024];
    let mut flagged = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (targets, now) = {
                    let v = view.lock().unwrap_or_else(|e| e.into_inner());
                    (v.to_poll(), v.stragglers())
                };
                log_changes(&mut flagged, now);
                for (_, control, since) in targets {
                    let _ = socket.send_to(&codec.seal_report_request(since), control).await;
                }
            }
            got = socket.recv_from(&mut buf) => {
                let Ok((n, _)) = got else { continue };
                // Anything that is not a report sealed with the job key is dropped.
                if let Ok(report) = codec.open_report(&buf[..n]) {
                    view.lock().unwrap_or_else(|e| e.into_inner()).reported(report);
                }
            }
        }
    }
}

/// Prints a line for every flag raised since `flagged` and every one cleared.
fn log_changes(flagged: &mut Vec<Straggler>, now: Vec<Straggler>) {
    let same = |a: &Straggler, b: &Straggler| a.rank == b.rank && a.blame == b.blame;
    for s in now.iter().filter(|s| !flagged.iter().any(|f| same(f, s))) {
        eprintln!("ringrun: straggler: {s}");
    }
    for f in flagged.iter().filter(|f| !now.iter().any(|s| same(f, s))) {
        eprintln!("ringrun: straggler cleared: rank {}", f.rank);
    }
    *flagged = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_tokens() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            parse_addr("8080", lo).unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            parse_addr("10.0.0.1:9", lo).unwrap(),
            "10.0.0.1:9".parse().unwrap()
        );
        assert!(parse_addr("nope", lo).is_err());
        assert_eq!(token(b"s1"), token(b"s1"));
        assert_ne!(token(b"s1"), token(b"s2"));
        assert_eq!(token(b"s1").len(), 32);
    }
}
