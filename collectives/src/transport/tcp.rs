//! TCP transport: a full mesh of TCP connections, authenticated with the job secret.
//!
//! Rank `i` dials every rank `j < i` and accepts a connection from every rank `j > i`, so each
//! pair has exactly one connection. Every connection starts with a mutual handshake bound to the
//! [`JobSecret`]:
//!
//! 1. the dialer sends its hello (magic `RRT1`, version, world size, rank, epoch) and a fresh
//!    32-byte nonce; the acceptor answers with its own;
//! 2. the dialer sends `HMAC(secret, label | dialer hello | acceptor hello | "dialer")`;
//! 3. the acceptor checks it, claims the dialer's rank, and answers with the same MAC over
//!    `"acceptor"`, which the dialer checks.
//!
//! Nonces make every transcript fresh (no replay), the role in the MAC stops reflection, and the
//! acceptor proves nothing to a peer that has not proved itself first. Wrong magic, epoch, world
//! size or MAC, and unknown, duplicate or self ranks close the connection. The acceptor runs
//! handshakes side by side, each bounded by a timeout, so a stranger that connects and stays
//! silent (or sends garbage) is logged and dropped without holding up the mesh.
//!
//! **Scope:** this authenticates set-up only. Data frames afterwards are neither encrypted nor
//! MAC'd: anyone who can inject into or hijack a TCP connection can corrupt a reduction. Use the
//! QUIC transport ([`super::quic`]) on networks that are not trusted.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufReader},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

pub use super::auth::{JobSecret, MeshSpec};
use super::{
    auth::{self, Claims, HELLO_LEN, Hello},
    stream::{Link, StreamTransport},
};
use crate::error::{CollectiveError, Result};

/// One rank's end of a TCP mesh.
pub type TcpTransport = StreamTransport<BufReader<OwnedReadHalf>, OwnedWriteHalf>;

/// Read buffer per peer. A header and a small frame arrive in one read; a large payload
/// bypasses the buffer and lands straight in its destination, so only the part of it that came
/// in with the header (at most this much) is copied twice.
const READ_BUF: usize = 4 * 1024;
const MAGIC: [u8; 4] = *b"RRT1";
const MAC_LABEL: &str = "ringrun tcp handshake v1";
/// A hello followed by its nonce.
const GREETING_LEN: usize = HELLO_LEN + 32;
const MAC_LEN: usize = 32;
/// Redial pause while a peer's listener is not up yet, doubling up to the cap.
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// Forms this rank's links of the mesh `spec` over TCP.
///
/// `listener` must already listen on `spec.addrs[spec.rank]` (bind it before publishing the
/// address, so peers that dial early are queued rather than refused). Fails with
/// [`CollectiveError::Setup`] if a peer cannot be authenticated or reached, or if by `deadline`
/// some ranks have not connected (the message names them).
pub async fn connect(
    listener: &TcpListener,
    spec: &MeshSpec,
    secret: &JobSecret,
    deadline: Instant,
) -> Result<TcpTransport> {
    let next = move || async move { listener.accept().await.map(|(s, from)| (from, s)) };
    connect_accepting(next, spec, secret, deadline).await
}

/// [`connect`], with the incoming connections taken from `next` instead of a listener (a
/// worker keeps accepting between epochs, on a thread of its own, so that strangers cannot
/// fill its listener's backlog while no mesh is being formed).
pub async fn connect_accepting<A, AF>(
    next: A,
    spec: &MeshSpec,
    secret: &JobSecret,
    deadline: Instant,
) -> Result<TcpTransport>
where
    A: FnMut() -> AF,
    AF: Future<Output = std::io::Result<(SocketAddr, TcpStream)>>,
{
    spec.check()?;
    let claims = Claims::new(spec);
    let links = auth::form_mesh(
        spec,
        deadline,
        &claims,
        |j| dial(spec, secret, j, deadline),
        next,
        |stream| accept(stream, spec, secret, &claims),
    )
    .await?;
    let links = links.into_iter().map(|l| l.map(split)).collect();
    Ok(StreamTransport::new(spec.rank, links, None))
}

fn split(stream: TcpStream) -> Link<BufReader<OwnedReadHalf>, OwnedWriteHalf> {
    let (r, w) = stream.into_split();
    Link {
        reader: BufReader::with_capacity(READ_BUF, r),
        writer: w,
    }
}

/// Connects to rank `j` (retrying while its listener is not up) and runs the dialer's side of
/// the handshake. Every failure after the TCP connect is final: retrying cannot fix a wrong
/// secret or epoch.
async fn dial(
    spec: &MeshSpec,
    secret: &JobSecret,
    j: usize,
    deadline: Instant,
) -> Result<TcpStream> {
    let addr = spec.addrs[j];
    let mut stream = connect_retrying(spec.rank, j, addr, deadline).await?;
    let fail = |what: String| {
        CollectiveError::Setup(format!(
            "rank {} (epoch {}): handshake with rank {j} at {addr}: {what}",
            spec.rank, spec.epoch
        ))
    };
    stream.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
    let ours = greeting(spec).map_err(|e| fail(e.to_string()))?;
    stream
        .write_all(&ours)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut theirs = [0u8; GREETING_LEN];
    stream
        .read_exact(&mut theirs)
        .await
        .map_err(|e| fail(format!("no greeting ({e})")))?;
    let hello = parse_greeting(&theirs).map_err(&fail)?;
    hello.check_mesh(spec).map_err(&fail)?;
    if hello.rank as usize != j {
        return Err(fail(format!("the peer says it is rank {}", hello.rank)));
    }
    let our_mac = secret.mac(MAC_LABEL, &[&ours, &theirs, b"dialer"]);
    stream
        .write_all(&our_mac)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut their_mac = [0u8; MAC_LEN];
    if let Err(e) = stream.read_exact(&mut their_mac).await {
        return Err(fail(format!(
            "refused by the peer ({e}): different job secret, or rank {} already connected",
            spec.rank
        )));
    }
    if !secret.verify_mac(MAC_LABEL, &[&ours, &theirs, b"acceptor"], &their_mac) {
        return Err(fail(
            "authentication failed: the peer does not hold this job's secret".into(),
        ));
    }
    Ok(stream)
}

async fn connect_retrying(
    me: usize,
    j: usize,
    addr: SocketAddr,
    deadline: Instant,
) -> Result<TcpStream> {
    let mut backoff = BACKOFF_START;
    loop {
        let err = match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        let transient = matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted
        );
        if !transient || Instant::now() + backoff >= deadline {
            return Err(CollectiveError::Setup(format!(
                "rank {me}: cannot connect to rank {j} at {addr}: {err}"
            )));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The acceptor's side of the handshake on one incoming connection; `Err` says why it was
/// refused (the connection is then dropped, which closes it).
async fn accept(
    mut stream: TcpStream,
    spec: &MeshSpec,
    secret: &JobSecret,
    claims: &Claims,
) -> std::result::Result<(usize, TcpStream), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut theirs = [0u8; GREETING_LEN];
    stream
        .read_exact(&mut theirs)
        .await
        .map_err(|e| format!("no greeting ({e})"))?;
    let hello = parse_greeting(&theirs)?;
    // Answer before judging epoch and size, so that an honest peer can report the mismatch.
    let ours = greeting(spec).map_err(|e| e.to_string())?;
    stream.write_all(&ours).await.map_err(|e| e.to_string())?;
    hello.check_mesh(spec)?;
    let mut their_mac = [0u8; MAC_LEN];
    stream
        .read_exact(&mut their_mac)
        .await
        .map_err(|e| format!("no handshake MAC ({e})"))?;
    if !secret.verify_mac(MAC_LABEL, &[&theirs, &ours, b"dialer"], &their_mac) {
        return Err(format!(
            "wrong handshake MAC from a peer claiming rank {}: it does not hold this job's secret",
            hello.rank
        ));
    }
    let rank = hello.rank as usize;
    claims.claim_accepted(spec.rank, rank)?;
    let our_mac = secret.mac(MAC_LABEL, &[&theirs, &ours, b"acceptor"]);
    stream
        .write_all(&our_mac)
        .await
        .map_err(|e| e.to_string())?;
    Ok((rank, stream))
}

fn greeting(spec: &MeshSpec) -> Result<[u8; GREETING_LEN]> {
    let mut g = [0u8; GREETING_LEN];
    g[..HELLO_LEN].copy_from_slice(&Hello::of(spec).encode(MAGIC));
    g[HELLO_LEN..].copy_from_slice(&auth::nonce()?);
    Ok(g)
}

fn parse_greeting(g: &[u8; GREETING_LEN]) -> std::result::Result<Hello, String> {
    let mut hello = [0u8; HELLO_LEN];
    hello.copy_from_slice(&g[..HELLO_LEN]);
    Hello::decode(MAGIC, &hello)
}
