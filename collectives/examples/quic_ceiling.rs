//! QUIC's ceiling on this machine with quinn alone, for comparison with the QUIC transport:
//! two endpoints with the transport's own configuration (TLS, MTU, GSO, windows, receive
//! buffer), one bidirectional stream, and both sides writing `S` bytes while reading `S`
//! bytes, which is what a two-rank ring allreduce of `S` bytes moves each way. Each side runs on
//! a thread of its own with quinn's drivers on that thread (quinn's ordinary use). Prints, per
//! size, the median time of the exchange and `S / t`, which compares with the busbw column of
//! `ringrun bench --np 2 --transport quic` (at N = 2, busbw = S / t).
//!
//! ```sh
//! cargo run --release -p ringrun-collectives --example quic_ceiling -- 8 1M 16M 64M
//! ```

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use quinn::{Endpoint, RecvStream, SendStream, TokioRuntime};
// An async barrier: a blocking one would stall the quinn drivers on the waiting thread.
use ringrun_collectives::transport::{auth::JobSecret, quic};
use tokio::sync::Barrier;

const SERVER_NAME: &str = "ringrun";

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).map(|a| parse_size(&a)).collect();
    let sizes = if sizes.is_empty() {
        vec![8, 1 << 20, 16 << 20, 64 << 20]
    } else {
        sizes
    };
    let secret = JobSecret::from_bytes(b"quic-ceiling-secret-0123456789");
    let (addr_tx, addr_rx) = mpsc::channel();
    let barrier = Arc::new(Barrier::new(2));
    let server = {
        let (secret, sizes, barrier) = (secret.clone(), sizes.clone(), barrier.clone());
        std::thread::spawn(move || side(&secret, &sizes, &barrier, None, addr_tx))
    };
    let peer = addr_rx.recv().expect("the server's address");
    let (tx, _) = mpsc::channel();
    let times = side(&secret, &sizes, &barrier, Some(peer), tx);
    server.join().expect("server side");
    println!("{:>12} {:>12} {:>10}", "bytes", "time_us", "GB/s");
    for (size, t) in sizes.iter().zip(times) {
        let gbs = *size as f64 / t.as_secs_f64() / 1e9;
        println!("{size:>12} {:>12.1} {gbs:>10.3}", t.as_secs_f64() * 1e6);
    }
}

/// One side: serves (`peer` none; sends its address on `addr`) or dials `peer`, then runs the
/// exchanges; returns the median time of each size.
fn side(
    secret: &JobSecret,
    sizes: &[usize],
    barrier: &Barrier,
    peer: Option<SocketAddr>,
    addr: mpsc::Sender<SocketAddr>,
) -> Vec<Duration> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (server, client, config) = quic::quinn_configs(secret).expect("configs");
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("socket");
        quic::grow_recv_buffer(&socket);
        let ep =
            Endpoint::new(config, Some(server), socket, Arc::new(TokioRuntime)).expect("endpoint");
        let (mut send, mut recv) = match peer {
            None => {
                addr.send(ep.local_addr().expect("address"))
                    .expect("main thread");
                let conn = ep
                    .accept()
                    .await
                    .expect("incoming")
                    .await
                    .expect("handshake");
                conn.accept_bi().await.expect("stream")
            }
            Some(peer) => {
                let conn = ep.connect_with(client, peer, SERVER_NAME).expect("dial");
                let (mut s, r) = conn
                    .await
                    .expect("handshake")
                    .open_bi()
                    .await
                    .expect("stream");
                s.write_all(&[0]).await.expect("opening byte");
                (s, r)
            }
        };
        if peer.is_none() {
            let mut first = [0u8];
            recv.read_exact(&mut first).await.expect("opening byte");
        }
        let mut times = Vec::new();
        for &size in sizes {
            let reps = (256 << 20) / size.max(1 << 16);
            times.push(median(
                exchange(&mut send, &mut recv, size, reps.clamp(5, 2000), barrier).await,
            ));
        }
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
        times
    })
}

async fn exchange(
    send: &mut SendStream,
    recv: &mut RecvStream,
    size: usize,
    reps: usize,
    barrier: &Barrier,
) -> Vec<Duration> {
    let out = vec![1u8; size];
    let mut inp = vec![0u8; size];
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        barrier.wait().await;
        let t = Instant::now();
        let (w, r) = tokio::join!(send.write_all(&out), recv.read_exact(&mut inp));
        w.expect("write");
        r.expect("read");
        times.push(t.elapsed());
    }
    times
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn parse_size(s: &str) -> usize {
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<usize>().expect("a size") * mult
}
