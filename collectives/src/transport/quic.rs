//! QUIC transport: a full mesh of QUIC connections whose TLS identity comes from the job secret.
//!
//! # Shape
//!
//! One quinn [`Endpoint`] per rank serves as client and server on the caller's
//! UDP socket. Rank `i` dials every rank `j < i` and accepts every `j > i`; each pair shares one
//! connection carrying **one bidirectional stream** (opened by the dialer), which becomes the
//! link's reader and writer. The stream starts with a hello each way (magic `RRQ1`, version,
//! world size, rank, epoch), which names the rank; then [`StreamTransport`] frames take over.
//!
//! # Authentication
//!
//! Every rank derives the same Ed25519 key from the [`JobSecret`] (HMAC label → 32-byte seed →
//! PKCS#8 v1) and presents a self-signed certificate for it. Custom rustls verifiers on both
//! sides accept a peer only if its end-entity certificate carries exactly that public key and its
//! TLS 1.3 handshake signature verifies; client authentication is mandatory. A process without
//! the secret cannot sign the handshake, so it cannot join. TLS then protects every data frame
//! (AES-GCM), unlike the TCP transport.
//!
//! # Drivers on the caller's runtime
//!
//! quinn's endpoint and connection drivers are tasks on the runtime that formed the mesh: the
//! caller's, which drives them inside every collective, so that a rank's writes leave and its
//! peers' bytes arrive without a hop to another thread (a driver thread of its own cost a
//! 2-rank 8 B allreduce about 2× and halved large ones). quinn also has work between
//! collectives: the last segments of a collective that returned before they left, the peer's
//! acknowledgements, retransmissions, keep-alives through long compute phases. That runtime
//! should therefore be an [`Executor`](crate::exec::Executor), whose keeper thread drives it
//! while the caller is away; on a plain runtime that work waits for the next `block_on`.
//! When the transport is dropped, each send stream is finished and kept until the peer has
//! acknowledged its data (at most [`LINGER`]); a dropped `Executor` drives those tasks to
//! their end.
//!
//! # Tuning (see the measurements in the crate-check notes, section 4)
//!
//! - MTU discovery up to **6500** bytes with GSO on, and `EndpointConfig::max_udp_payload_size`
//!   6500 on every endpoint (peers otherwise cap each other at 1472). Loopback throughput is
//!   bound by per-packet CPU cost, so bigger packets roughly doubled it (≈1 → ≈2.1 GB/s). Never
//!   raise it above 65535/10 with GSO on: quinn batches up to 10 segments per `sendmsg`, the
//!   kernel rejects batches over 64 KiB and quinn drops them silently (7000 stalls outright).
//! - Cipher suites AES-256-GCM, then AES-128-GCM (ring; the latter is required for Initial
//!   packets). ChaCha20 measured 35 % slower where AES-NI exists.
//! - Cubic (quinn's default); NewReno and BBR were no better.
//! - Stream and connection windows and the send window left at quinn's defaults: raising them
//!   measured the same or worse (more burst loss).
//! - UDP receive buffer raised to 4 MiB (best effort; capped by `net.core.rmem_max`). With
//!   ranks that reduce while they receive, the drivers do not always have a core;
//!   the default 208 KiB buffer then overflowed: a 64 MiB allreduce at N=2 on a 2-core machine
//!   lost ~5 % of packets, went through ~300 congestion events and ran at 0.1–0.5 GB/s. With
//!   4 MiB: no loss, a steady ~0.3–0.4 GB/s (TCP on the same machine: ~0.8–1.4 GB/s).
//! - Idle timeout 2 s with a keep-alive every 300 ms: the executor's keeper keeps idle links
//!   alive through long compute phases, and a silently dead peer (killed process, cut network)
//!   is noticed within 2 s even without the membership layer (which usually notices first).
//! - TLS session resumption off: every epoch builds new connections anyway.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use quinn::{
    ClientConfig, Connection, ConnectionError, Endpoint, EndpointConfig, IdleTimeout, Incoming,
    MtuDiscoveryConfig, RecvStream, SendStream, ServerConfig, TokioRuntime, TransportConfig,
    VarInt,
    crypto::rustls::{QuicClientConfig, QuicServerConfig},
};
use tokio::{io::AsyncWrite, runtime::Handle};

pub use super::auth::{JobSecret, MeshSpec};
use super::{
    auth::{self, Claims, HELLO_LEN, Hello},
    stream::{Link, StreamTransport},
};
use crate::error::{CollectiveError, Result};

/// One rank's end of a QUIC mesh.
pub type QuicTransport = StreamTransport<RecvStream, QuicSend>;

/// Largest UDP payload (and MTU discovery bound); at most 65535/10 while GSO is on.
const MTU_UPPER_BOUND: u16 = 6500;
/// UDP socket receive buffer to ask for.
const UDP_RECV_BUFFER: usize = 4 << 20;
/// A peer silent this long is lost. UDP carries no reset from a killed process, so this is how
/// fast QUIC alone notices one (the membership layer usually notices first); the executor's
/// keeper keeps healthy links alive however long the caller computes between collectives.
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const KEEP_ALIVE: Duration = Duration::from_millis(300);
/// How long a dropped transport keeps a connection open for its unacknowledged data.
pub const LINGER: Duration = Duration::from_secs(3);
/// One dial attempt; a peer whose socket was not yet served gets a fresh attempt after this.
const DIAL_ATTEMPT: Duration = Duration::from_secs(2);
const MAGIC: [u8; 4] = *b"RRQ1";
/// Application close code for a connection refused after TLS (epoch, size or rank mismatch).
const REFUSED: u32 = 1;

/// The writing half of a link: a quinn send stream that, when dropped, finishes the stream and
/// keeps it open (a task on the caller's runtime) until the peer has acknowledged its data, so
/// that the last frames of the last collective are not lost to an early close.
pub struct QuicSend {
    stream: Option<SendStream>,
    io: Handle,
}

impl AsyncWrite for QuicSend {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream.as_mut() {
            Some(s) => AsyncWrite::poll_write(Pin::new(s), cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream.as_mut() {
            Some(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream.as_mut() {
            Some(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for QuicSend {
    fn drop(&mut self) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        // Already finished or reset streams refuse; either way there is nothing left to wait for.
        if stream.finish().is_err() {
            return;
        }
        // On a runtime that has shut down, the task is dropped at once: the stream closes now.
        self.io.spawn(async move {
            let _ = tokio::time::timeout(LINGER, stream.stopped()).await;
        });
    }
}

/// Forms this rank's links of the mesh `spec` over QUIC on `socket`.
///
/// `socket` must be bound to `spec.addrs[spec.rank]` before the address is published, so that
/// early handshakes from peers wait in its buffer. Fails with [`CollectiveError::Setup`] if a
/// peer fails authentication, disagrees about epoch or size, or, by `deadline`, has not
/// connected (the message names the missing ranks).
pub async fn connect(
    socket: UdpSocket,
    spec: &MeshSpec,
    secret: &JobSecret,
    deadline: Instant,
) -> Result<QuicTransport> {
    spec.check()?;
    if spec.size() == 1 {
        return Ok(StreamTransport::new(0, vec![None], None));
    }
    let (server, client) = configs(secret)?;
    // Built first, so that whatever fails below still closes its connections properly.
    let mut drivers = Drivers::start(socket, server)?;
    let ep = &drivers.endpoint;
    let claims = Claims::new(spec);
    let links = auth::form_mesh(
        spec,
        deadline,
        &claims,
        |j| dial(ep, &client, spec, j, deadline),
        move || async move {
            match ep.accept().await {
                Some(incoming) => Ok((incoming.remote_address(), incoming)),
                None => Err(io::Error::other("QUIC endpoint closed")),
            }
        },
        |incoming| accept(incoming, spec, &claims),
    )
    .await?;
    // The mesh is complete: late or stray handshakes are refused from here on.
    ep.set_server_config(None);
    let links = links
        .into_iter()
        .enumerate()
        .map(|(rank, peer)| {
            peer.map(|(conn, recv, send)| {
                drivers.conns.push((rank, conn));
                let writer = QuicSend {
                    stream: Some(send),
                    io: drivers.handle.clone(),
                };
                Link {
                    reader: recv,
                    writer,
                }
            })
        })
        .collect();
    Ok(StreamTransport::new(
        spec.rank,
        links,
        Some(Box::new(drivers)),
    ))
}

/// A linked peer: its connection and the link's stream.
type Peer = (Connection, RecvStream, SendStream);

/// Dials rank `j`, retrying attempts that time out (its socket may not be served yet), then
/// opens the link's stream and exchanges hellos.
async fn dial(
    ep: &Endpoint,
    client: &ClientConfig,
    spec: &MeshSpec,
    j: usize,
    deadline: Instant,
) -> Result<Peer> {
    let addr = spec.addrs[j];
    let fail = |what: String| {
        CollectiveError::Setup(format!(
            "rank {} (epoch {}): QUIC handshake with rank {j} at {addr}: {what}",
            spec.rank, spec.epoch
        ))
    };
    let conn = connect_retrying(ep, client, addr, deadline)
        .await
        .map_err(&fail)?;
    let refused = |e: &dyn std::fmt::Display| match conn.close_reason() {
        Some(ConnectionError::ApplicationClosed(c)) => fail(format!(
            "refused by the peer: {}",
            String::from_utf8_lossy(&c.reason)
        )),
        _ => fail(e.to_string()),
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| refused(&e))?;
    send.write_all(&Hello::of(spec).encode(MAGIC))
        .await
        .map_err(|e| refused(&e))?;
    let mut theirs = [0u8; HELLO_LEN];
    recv.read_exact(&mut theirs)
        .await
        .map_err(|e| refused(&e))?;
    let hello = Hello::decode(MAGIC, &theirs).map_err(&fail)?;
    hello.check_mesh(spec).map_err(&fail)?;
    if hello.rank as usize != j {
        return Err(fail(format!("the peer says it is rank {}", hello.rank)));
    }
    Ok((conn, recv, send))
}

async fn connect_retrying(
    ep: &Endpoint,
    client: &ClientConfig,
    addr: SocketAddr,
    deadline: Instant,
) -> std::result::Result<Connection, String> {
    loop {
        let connecting = ep
            .connect_with(client.clone(), addr, tls::SERVER_NAME)
            .map_err(|e| format!("cannot start a connection: {e}"))?;
        let attempt_end = deadline.min(Instant::now() + DIAL_ATTEMPT);
        match tokio::time::timeout_at(attempt_end.into(), connecting).await {
            Ok(res) => return res.map_err(|e| describe(&e)),
            Err(_) if Instant::now() < deadline => {
                tracing::debug!(%addr, "QUIC dial attempt timed out; retrying");
            }
            Err(_) => return Err("no answer by the deadline".into()),
        }
    }
}

/// The acceptor's side on one incoming connection: TLS (which checks the peer's key), then the
/// dialer's hello on the stream it opens. A refused peer gets the reason in the close frame.
async fn accept(
    incoming: Incoming,
    spec: &MeshSpec,
    claims: &Claims,
) -> std::result::Result<(usize, Peer), String> {
    let conn = incoming
        .await
        .map_err(|e| format!("TLS handshake failed: {}", describe(&e)))?;
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    let mut theirs = [0u8; HELLO_LEN];
    recv.read_exact(&mut theirs)
        .await
        .map_err(|e| e.to_string())?;
    let checked = Hello::decode(MAGIC, &theirs).and_then(|h| {
        h.check_mesh(spec)?;
        claims.claim_accepted(spec.rank, h.rank as usize)?;
        Ok(h.rank as usize)
    });
    let rank = match checked {
        Ok(rank) => rank,
        Err(why) => {
            let reason = format!(
                "rank {} (epoch {}) refused it: {why}",
                spec.rank, spec.epoch
            );
            conn.close(VarInt::from_u32(REFUSED), reason.as_bytes());
            return Err(why);
        }
    };
    send.write_all(&Hello::of(spec).encode(MAGIC))
        .await
        .map_err(|e| e.to_string())?;
    Ok((rank, (conn, recv, send)))
}

/// A connection error, with a hint where it is TLS refusing a certificate.
fn describe(e: &ConnectionError) -> String {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        ConnectionError::TransportError(t) if crypto(t.code) => {
            format!("{e} (TLS authentication failed: different job secret?)")
        }
        ConnectionError::ConnectionClosed(c) if crypto(c.error_code) => {
            format!("{e} (the peer refused our certificate: different job secret?)")
        }
        _ => e.to_string(),
    }
}

/// The configurations this transport runs quinn with (server, client, endpoint), for tools
/// that measure quinn alone beside it (`examples/quic_ceiling.rs`).
pub fn quinn_configs(secret: &JobSecret) -> Result<(ServerConfig, ClientConfig, EndpointConfig)> {
    let (server, client) = configs(secret)?;
    Ok((server, client, endpoint_config()?))
}

fn endpoint_config() -> Result<EndpointConfig> {
    let mut config = EndpointConfig::default();
    config
        .max_udp_payload_size(MTU_UPPER_BOUND)
        .map_err(setup)?;
    Ok(config)
}

/// quinn configuration for both roles: the pinned-key TLS and the transport tuning above.
fn configs(secret: &JobSecret) -> Result<(ServerConfig, ClientConfig)> {
    let (server_tls, client_tls) = tls::configs(secret)?;
    let transport = Arc::new(transport_config()?);
    let server_tls = QuicServerConfig::try_from(server_tls).map_err(setup)?;
    let mut server = ServerConfig::with_crypto(Arc::new(server_tls));
    server.transport_config(transport.clone());
    server.migration(false);
    let client_tls = QuicClientConfig::try_from(client_tls).map_err(setup)?;
    let mut client = ClientConfig::new(Arc::new(client_tls));
    client.transport_config(transport);
    Ok((server, client))
}

fn transport_config() -> Result<TransportConfig> {
    let mut t = TransportConfig::default();
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    t.mtu_discovery_config(Some(mtu));
    t.enable_segmentation_offload(true);
    t.max_idle_timeout(Some(IdleTimeout::try_from(IDLE_TIMEOUT).map_err(setup)?));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // One bidirectional stream per connection, opened by the dialer; nothing else is allowed.
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    Ok(t)
}

fn setup(e: impl std::fmt::Display) -> CollectiveError {
    CollectiveError::Setup(format!("QUIC configuration: {e}"))
}

/// The endpoint whose drivers run on the caller's runtime; what a [`QuicTransport`] keeps
/// alive.
struct Drivers {
    endpoint: Endpoint,
    handle: Handle,
    /// The peers' connections, for their statistics at the end.
    conns: Vec<(usize, Connection)>,
}

impl Drivers {
    /// An endpoint on `socket` whose drivers run on the current runtime.
    fn start(socket: UdpSocket, server: ServerConfig) -> Result<Drivers> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            CollectiveError::Setup(format!("QUIC {what}: {e}"))
        };
        let handle = Handle::current();
        let config = endpoint_config()?;
        grow_recv_buffer(&socket);
        socket
            .set_nonblocking(true)
            .map_err(|e| fail("socket", &e))?;
        let endpoint = Endpoint::new(config, Some(server), socket, Arc::new(TokioRuntime))
            .map_err(|e| fail("endpoint", &e))?;
        Ok(Drivers {
            endpoint,
            handle,
            conns: Vec::new(),
        })
    }
}

impl Drop for Drivers {
    fn drop(&mut self) {
        for (peer, conn) in &self.conns {
            let s = conn.stats();
            tracing::debug!(
                peer,
                mtu = s.path.current_mtu,
                rtt = ?s.path.rtt,
                cwnd = s.path.cwnd,
                sent_packets = s.path.sent_packets,
                lost_packets = s.path.lost_packets,
                congestion_events = s.path.congestion_events,
                "QUIC link statistics"
            );
        }
        // Our handles would keep the connections open; the drivers end once they drain.
        self.conns.clear();
        let endpoint = self.endpoint.clone();
        self.handle.spawn(async move {
            let drain = LINGER + Duration::from_secs(1);
            let _ = tokio::time::timeout(drain, endpoint.wait_idle()).await;
        });
    }
}

/// Best effort: asks for a [`UDP_RECV_BUFFER`] receive buffer on `socket` (the kernel caps it at
/// `net.core.rmem_max`), so that bursts wait in the kernel while the drivers wait for a core
/// instead of being dropped.
pub fn grow_recv_buffer(socket: &UdpSocket) {
    let grown = quinn::udp::UdpSocketState::new(socket.into())
        .and_then(|udp| udp.set_recv_buffer_size(socket.into(), UDP_RECV_BUFFER));
    if let Err(e) = grown {
        tracing::debug!(error = %e, "could not grow the UDP receive buffer");
    }
}

/// TLS credentials and verifiers derived from the job secret.
mod tls {
    use std::sync::Arc;

    use rustls::{
        CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring as provider},
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
        server::danger::{ClientCertVerified, ClientCertVerifier},
    };

    use crate::{
        error::{CollectiveError, Result},
        transport::auth::JobSecret,
    };

    /// The name clients ask for; the verifiers ignore names and pin the key instead.
    pub(super) const SERVER_NAME: &str = "ringrun";
    const ALPN: &[u8] = b"ringrun-collectives/1";
    const KEY_LABEL: &str = "ringrun quic ed25519 v1";
    /// PKCS#8 v1 `PrivateKeyInfo` for Ed25519 (RFC 8410), up to the 32-byte seed.
    const PKCS8_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    /// `SubjectPublicKeyInfo` for Ed25519, up to the 32-byte public key.
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];

    /// This job's identity: the same key pair and certificate in every process that holds the
    /// secret.
    pub(super) struct Identity {
        pub(super) cert: CertificateDer<'static>,
        pub(super) key: PrivatePkcs8KeyDer<'static>,
        pub(super) spki: Vec<u8>,
    }

    pub(super) fn identity(secret: &JobSecret) -> Result<Identity> {
        let seed = secret.derive(KEY_LABEL);
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| fail(format!("deriving the Ed25519 key: {e}")))?;
        let spki = [
            &SPKI_PREFIX[..],
            ring::signature::KeyPair::public_key(&pair).as_ref(),
        ]
        .concat();
        let key = PrivatePkcs8KeyDer::from([&PKCS8_PREFIX[..], &seed[..]].concat());
        let signer = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key, &rcgen::PKCS_ED25519)
            .map_err(|e| fail(format!("loading the Ed25519 key: {e}")))?;
        let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .and_then(|p| p.self_signed(&signer))
            .map_err(|e| fail(format!("making the certificate: {e}")))?;
        Ok(Identity {
            cert: cert.der().clone(),
            key,
            spki,
        })
    }

    /// rustls configurations for both roles: TLS 1.3 only, AES-GCM suites, our certificate,
    /// peers pinned to our key, client authentication required, no resumption.
    pub(super) fn configs(
        secret: &JobSecret,
    ) -> Result<(rustls::ServerConfig, rustls::ClientConfig)> {
        let id = identity(secret)?;
        let provider = Arc::new(CryptoProvider {
            cipher_suites: vec![
                provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
                provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
            ],
            ..provider::default_provider()
        });
        let verifier = Arc::new(PinnedKey {
            spki: id.spki.clone(),
            algs: provider.signature_verification_algorithms,
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(fail)?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(
                vec![id.cert.clone()],
                PrivateKeyDer::Pkcs8(id.key.clone_key()),
            )
            .map_err(fail)?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(fail)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![id.cert], PrivateKeyDer::Pkcs8(id.key))
            .map_err(fail)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.resumption = rustls::client::Resumption::disabled();
        Ok((server, client))
    }

    fn fail(e: impl std::fmt::Display) -> CollectiveError {
        CollectiveError::Setup(format!("QUIC TLS: {e}"))
    }

    /// Accepts exactly one public key, in both roles.
    #[derive(Debug)]
    struct PinnedKey {
        spki: Vec<u8>,
        algs: WebPkiSupportedAlgorithms,
    }

    impl PinnedKey {
        fn check_cert(&self, end_entity: &CertificateDer<'_>) -> std::result::Result<(), Error> {
            let cert = webpki::EndEntityCert::try_from(end_entity)
                .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
            match cert.subject_public_key_info().as_ref() == self.spki.as_slice() {
                true => Ok(()),
                false => Err(Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                )),
            }
        }

        fn check_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, Error> {
            // The certificate was pinned already; checking again keeps this method sound alone.
            self.check_cert(cert)?;
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }
    }

    impl ServerCertVerifier for PinnedKey {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> std::result::Result<ServerCertVerified, Error> {
            self.check_cert(end_entity)?;
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, Error> {
            Err(tls12_refused())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, Error> {
            self.check_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    }

    impl ClientCertVerifier for PinnedKey {
        fn client_auth_mandatory(&self) -> bool {
            true
        }

        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            &[]
        }

        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _now: UnixTime,
        ) -> std::result::Result<ClientCertVerified, Error> {
            self.check_cert(end_entity)?;
            Ok(ClientCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, Error> {
            Err(tls12_refused())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, Error> {
            self.check_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    }

    fn tls12_refused() -> Error {
        Error::General("TLS 1.2 is not offered".into())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn identity_is_deterministic_and_pinned() {
            let a = identity(&JobSecret::from_bytes(b"job")).unwrap();
            let b = identity(&JobSecret::from_bytes(b"job")).unwrap();
            let other = identity(&JobSecret::from_bytes(b"other")).unwrap();
            assert_eq!(a.spki, b.spki);
            assert_ne!(a.spki, other.spki);
            let pin = PinnedKey {
                spki: a.spki.clone(),
                algs: provider::default_provider().signature_verification_algorithms,
            };
            pin.check_cert(&b.cert).unwrap();
            assert!(pin.check_cert(&other.cert).is_err());
            assert!(
                pin.check_cert(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]))
                    .is_err()
            );
        }
    }
}
