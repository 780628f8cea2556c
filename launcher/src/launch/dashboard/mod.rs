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
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use ring::hmac;
use ringrun_runtime::control::ControlCodec;

use super::watch::Seen;
use view::{JobView, Sighting};

/// How often live workers are asked for their reports.
const POLL: Duration = Duration::from_millis(250);

/// A running dashboard: what the launcher's loop feeds it.
pub(crate) struct Dashboard {
    view: Arc<Mutex<JobView>>,
    /// Where the page is, with the token when one is needed.
    pub(crate) url: String,
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
    /// Listens on `addr` and starts the collector, which sends from `bind`.
    pub(crate) fn start(
        addr: SocketAddr,
        bind: IpAddr,
        secret: &[u8],
        run_id: &str,
        codec: ControlCodec,
    ) -> Result<Dashboard> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("--dashboard: listening on {addr}"))?;
        let local = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let socket = std::net::UdpSocket::bind((bind, 0))?;
        socket.set_nonblocking(true)?;
        let view = Arc::new(Mutex::new(JobView::new(run_id, unix_ms())));
        let token = http::needs_token(local).then(|| token(secret));
        let url = match &token {
            Some(t) => format!("http://{local}/?token={t}"),
            None => format!("http://{local}/"),
        };
        let shared = http::Shared {
            view: view.clone(),
            token: token.map(Into::into),
        };
        let collected = view.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("ringrun-dashboard".into())
            .spawn(move || {
                rt.block_on(async move {
                    let (Ok(listener), Ok(socket)) = (
                        tokio::net::TcpListener::from_std(listener),
                        tokio::net::UdpSocket::from_std(socket),
                    ) else {
                        return eprintln!("ringrun: dashboard: could not register its sockets");
                    };
                    tokio::join!(
                        http::serve(listener, shared),
                        collect(socket, codec, collected)
                    );
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

/// Asks every live worker for its report every [`POLL`], and folds in what comes back.
async fn collect(socket: tokio::net::UdpSocket, codec: ControlCodec, view: Arc<Mutex<JobView>>) {
    let mut tick = tokio::time::interval(POLL);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let targets = view.lock().unwrap_or_else(|e| e.into_inner()).to_poll();
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
