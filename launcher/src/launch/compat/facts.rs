//! The host facts [`super::rewrite`] reads, gathered from this machine.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};

use super::Facts;

/// This machine's facts, for the command line rewrite.
pub(crate) fn gather<R>(with: impl FnOnce(&Facts) -> R) -> R {
    let python = std::env::var("PYTHON_EXEC")
        .or_else(|_| std::env::var("PYTHON"))
        .unwrap_or_else(|_| "python3".into());
    let facts = Facts {
        python,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        gpus: gpus(),
        is_local: &is_local,
        route_from: &route_from,
        read: &|path| std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}")),
    };
    with(&facts)
}

/// GPUs this process may use: `CUDA_VISIBLE_DEVICES` where set, else the NVIDIA device nodes
/// (what torch's `cuda.device_count()` would find, without loading CUDA).
fn gpus() -> usize {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        // CUDA stops at the first invalid entry ("-1" hides every GPU).
        return v
            .split(',')
            .take_while(|d| !d.trim().is_empty() && !d.trim().starts_with('-'))
            .count();
    }
    std::fs::read_dir("/dev").map_or(0, |dir| {
        dir.filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.strip_prefix("nvidia")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .count()
    })
}

fn addresses(host: &str) -> Vec<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![ip];
    }
    (host, 0)
        .to_socket_addrs()
        .map(|a| a.map(|s| s.ip()).collect())
        .unwrap_or_default()
}

/// A name of this host: `localhost`, its host name, or a name of one of its addresses (an
/// address this process can bind).
fn is_local(host: &str) -> bool {
    let me = super::super::hostname();
    if host == "localhost" || host == me || me.split('.').next() == Some(host) {
        return true;
    }
    addresses(host)
        .into_iter()
        .any(|ip| ip.is_loopback() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok())
}

/// The source address of the route to `host` (no packet is sent).
fn route_from(host: &str) -> Option<IpAddr> {
    addresses(host).into_iter().find_map(|ip| {
        let any: IpAddr = match ip {
            IpAddr::V4(_) => [0, 0, 0, 0].into(),
            IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        let s = UdpSocket::bind((any, 0)).ok()?;
        s.connect((ip, 9)).ok()?;
        Some(s.local_addr().ok()?.ip())
    })
}
