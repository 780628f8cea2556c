//! Loopback UDP ports for a test to hand to processes (or sockets) that bind them later.
//!
//! A port from `bind(…:0)`, once released, can go to any socket bound with port 0 before its
//! intended owner binds it (a QUIC endpoint, another test's worker), and the owner then fails
//! with "address in use". Ports below the kernel's ephemeral range never go out that way, so
//! only tests that pick ports themselves can collide; a counter in this process, started at an
//! offset from its pid, keeps those apart, and each port is checked free when picked.

use std::{
    net::UdpSocket,
    sync::atomic::{AtomicU32, Ordering},
};

/// Lowest port handed out.
const FIRST: u32 = 10_000;

/// First port of the kernel's ephemeral range (32768 where it cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A loopback UDP port that nothing holds now and that no `bind(…:0)` will be given.
pub fn free_udp_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = ephemeral_start().saturating_sub(FIRST).max(1_000);
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (offset + k) % span) as u16;
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback UDP port from {FIRST}");
}
