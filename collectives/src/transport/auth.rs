//! Job-secret authentication and the mesh set-up shared by the TCP and QUIC transports.
//!
//! Every process of a job holds the same [`JobSecret`]. The TCP transport proves possession of it
//! with HMAC-SHA256 over a handshake transcript; the QUIC transport derives an Ed25519 identity
//! from it and pins that key in TLS. A process without the secret cannot join the mesh.
//!
//! The secret is only as strong as its entropy: a transcript MAC lets an eavesdropper test
//! guesses offline, so use [`JobSecret::random`] (what the launcher does), not a passphrase.
//!
//! [`MeshSpec`] says who is who; `form_mesh` (crate-internal) runs the dials and accepts of one
//! rank until every peer is linked or the deadline passes, and names the missing ranks if not.

use std::{
    cell::RefCell,
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use ring::{
    hmac,
    rand::{SecureRandom, SystemRandom},
};
use tracing::warn;

use crate::error::{CollectiveError, Result};

/// Label under which arbitrary secret bytes are hashed into the key ([`JobSecret::from_bytes`]).
const SECRET_LABEL: &[u8] = b"ringrun job secret v1";
/// How long one accepted connection may take to finish its handshake. A stranger that connects
/// and stays silent is dropped after this, while other handshakes go on beside it.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared secret of one job: a 256-bit HMAC key.
///
/// `Debug` prints no key material.
#[derive(Clone, PartialEq, Eq)]
pub struct JobSecret {
    key: [u8; 32],
}

impl JobSecret {
    /// Hashes arbitrary secret bytes into a key (HMAC-SHA256 under a fixed label), so secrets of
    /// any length and format give a uniform key.
    pub fn from_bytes(secret: &[u8]) -> JobSecret {
        let label = hmac::Key::new(hmac::HMAC_SHA256, SECRET_LABEL);
        JobSecret {
            key: tag_bytes(hmac::sign(&label, secret)),
        }
    }

    /// Parses the key itself from 64 hex digits (what [`to_hex`](Self::to_hex) writes).
    pub fn from_hex(hex: &str) -> Result<JobSecret> {
        let hex = hex.trim();
        let bad = || CollectiveError::InvalidArgument("job secret is not 64 hex digits".into());
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut key = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            key[i] =
                (hex_digit(pair[0]).ok_or_else(bad)? << 4) | hex_digit(pair[1]).ok_or_else(bad)?;
        }
        Ok(JobSecret { key })
    }

    /// A fresh random key from the operating system's generator.
    pub fn random() -> Result<JobSecret> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| CollectiveError::Setup("no system randomness for a job secret".into()))?;
        Ok(JobSecret { key })
    }

    /// Reads a secret file: its contents, surrounding whitespace removed, hashed with
    /// [`from_bytes`](Self::from_bytes). This is the job-wide rule: every layer derives its keys
    /// from the same secret string, whatever it looks like.
    pub fn load(path: &Path) -> Result<JobSecret> {
        let raw = std::fs::read(path).map_err(|e| {
            CollectiveError::Setup(format!("reading job secret {}: {e}", path.display()))
        })?;
        let text = raw.trim_ascii();
        if text.is_empty() {
            return Err(CollectiveError::Setup(format!(
                "job secret file {} is empty",
                path.display()
            )));
        }
        Ok(JobSecret::from_bytes(text))
    }

    /// The key as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.key.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// HMAC-SHA256 under this secret of `label` and `parts`, each length-prefixed so that no two
    /// different transcripts encode the same bytes.
    pub fn mac(&self, label: &str, parts: &[&[u8]]) -> [u8; 32] {
        tag_bytes(hmac::sign(&self.hmac_key(), &transcript(label, parts)))
    }

    /// Whether `tag` is [`mac`](Self::mac)`(label, parts)`, compared in constant time.
    pub fn verify_mac(&self, label: &str, parts: &[&[u8]], tag: &[u8]) -> bool {
        hmac::verify(&self.hmac_key(), &transcript(label, parts), tag).is_ok()
    }

    /// A 32-byte key for one purpose, derived from the secret; different labels give
    /// independent keys.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        self.mac(label, &[])
    }

    fn hmac_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.key)
    }
}

impl fmt::Debug for JobSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobSecret(<redacted>)")
    }
}

fn tag_bytes(tag: hmac::Tag) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn transcript(label: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut t =
        Vec::with_capacity(label.len() + 4 + parts.iter().map(|p| p.len() + 4).sum::<usize>());
    for part in std::iter::once(label.as_bytes()).chain(parts.iter().copied()) {
        t.extend_from_slice(&(part.len() as u32).to_le_bytes());
        t.extend_from_slice(part);
    }
    t
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Where every rank of one epoch listens, and which one this process is.
/// Shared by the TCP and QUIC transports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshSpec {
    /// This process's rank, in `0..addrs.len()`.
    pub rank: usize,
    /// Every rank's listening address (TCP) or socket address (QUIC), indexed by rank.
    pub addrs: Vec<SocketAddr>,
    /// The epoch the mesh is built for; peers of another epoch are refused.
    pub epoch: u64,
}

impl MeshSpec {
    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.addrs.len()
    }

    pub(crate) fn check(&self) -> Result<()> {
        match self.rank < self.size() {
            true => Ok(()),
            false => Err(CollectiveError::Setup(format!(
                "rank {} outside a mesh of {} addresses",
                self.rank,
                self.size()
            ))),
        }
    }
}

/// Which ranks this process has linked; handshakes claim a rank before confirming it, so two
/// connections claiming one rank cannot both succeed.
pub(crate) struct Claims {
    taken: RefCell<Vec<bool>>,
}

impl Claims {
    pub(crate) fn new(spec: &MeshSpec) -> Claims {
        let mut taken = vec![false; spec.size()];
        taken[spec.rank] = true;
        Claims {
            taken: RefCell::new(taken),
        }
    }

    /// Takes `rank` for an accepted connection: it must be above ours (we dial the ones below),
    /// inside the mesh and not yet taken.
    pub(crate) fn claim_accepted(&self, me: usize, rank: usize) -> std::result::Result<(), String> {
        let mut taken = self.taken.borrow_mut();
        match taken.get(rank) {
            None => Err(format!("rank {rank} is outside the mesh")),
            Some(_) if rank <= me => Err(format!("rank {rank} should not dial rank {me}")),
            Some(true) => Err(format!("rank {rank} is already connected")),
            Some(false) => {
                taken[rank] = true;
                Ok(())
            }
        }
    }

    fn mark(&self, rank: usize) {
        self.taken.borrow_mut()[rank] = true;
    }

    fn missing(&self) -> Vec<usize> {
        let taken = self.taken.borrow();
        (0..taken.len()).filter(|r| !taken[*r]).collect()
    }
}

/// Links this rank to every other: `dial(j)` for every `j` below it (each retries on its own
/// until it succeeds or fails for good), and `handshake` on every connection `accept` yields
/// until every rank above it has arrived. Everything stops at `deadline`.
///
/// `handshake` resolves to the peer's rank and link, or to why the connection was refused; it
/// must claim the rank in `claims` before confirming it to the peer. Handshakes run side by side,
/// each bounded by [`HANDSHAKE_TIMEOUT`], and a refused one is logged and counted, not fatal: a
/// stranger must not stop the mesh.
pub(crate) async fn form_mesh<L, R, D, DF, A, AF, H, HF>(
    spec: &MeshSpec,
    deadline: Instant,
    claims: &Claims,
    dial: D,
    mut accept: A,
    handshake: H,
) -> Result<Vec<Option<L>>>
where
    D: Fn(usize) -> DF,
    DF: Future<Output = Result<L>>,
    A: FnMut() -> AF,
    AF: Future<Output = io::Result<(SocketAddr, R)>>,
    H: Fn(R) -> HF,
    HF: Future<Output = std::result::Result<(usize, L), String>>,
{
    let (me, n) = (spec.rank, spec.size());
    let dials = futures_util::future::try_join_all((0..me).map(|j| {
        let dial = &dial;
        async move {
            let link = dial(j).await?;
            claims.mark(j);
            Ok::<_, CollectiveError>((j, link))
        }
    }));
    let mut refused = 0usize;
    let accepts = async {
        let mut pending = FuturesUnordered::new();
        let mut got = Vec::new();
        while got.len() < n - me - 1 {
            tokio::select! {
                conn = accept() => match conn {
                    Ok((from, raw)) => {
                        let limit = deadline.min(Instant::now() + HANDSHAKE_TIMEOUT);
                        let hs = tokio::time::timeout_at(limit.into(), handshake(raw));
                        pending.push(async move { (from, hs.await) });
                    }
                    Err(e) => {
                        warn!(rank = me, error = %e, "accept failed");
                        // Errors such as running out of descriptors repeat at once; do not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some((from, res)) = pending.next(), if !pending.is_empty() => match res {
                    Ok(Ok((rank, link))) => got.push((rank, link)),
                    Ok(Err(why)) => {
                        refused += 1;
                        warn!(rank = me, %from, reason = %why, "refused a connection");
                    }
                    Err(_) => {
                        refused += 1;
                        warn!(rank = me, %from, "refused a connection: handshake timed out");
                    }
                },
            }
        }
        Ok(got)
    };
    let both = futures_util::future::try_join(dials, accepts);
    let (dialed, accepted) = match tokio::time::timeout_at(deadline.into(), both).await {
        Ok(res) => res?,
        Err(_) => return Err(incomplete(spec, claims, refused)),
    };
    let mut links: Vec<Option<L>> = (0..n).map(|_| None).collect();
    for (rank, link) in dialed.into_iter().chain(accepted) {
        links[rank] = Some(link);
    }
    Ok(links)
}

fn incomplete(spec: &MeshSpec, claims: &Claims, refused: usize) -> CollectiveError {
    let missing = claims.missing();
    let mut msg = format!(
        "rank {} (epoch {}): mesh incomplete at the deadline, missing rank(s) {missing:?}",
        spec.rank, spec.epoch
    );
    if refused > 0 {
        msg.push_str(&format!(
            "; refused {refused} connection(s) that failed the handshake (wrong job secret, \
             epoch or rank?)"
        ));
    }
    CollectiveError::Setup(msg)
}

/// Bytes of an encoded [`Hello`].
pub(crate) const HELLO_LEN: usize = 24;
const HELLO_VERSION: u16 = 1;

/// What each side of a handshake says about itself first (both transports).
///
/// Layout (little endian): magic (4) | version u16 | reserved u16 | world u32 | rank u32 |
/// epoch u64. Unauthenticated until the handshake that carries it completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) world: u32,
    pub(crate) rank: u32,
    pub(crate) epoch: u64,
}

impl Hello {
    pub(crate) fn of(spec: &MeshSpec) -> Hello {
        Hello {
            world: spec.size() as u32,
            rank: spec.rank as u32,
            epoch: spec.epoch,
        }
    }

    pub(crate) fn encode(&self, magic: [u8; 4]) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..4].copy_from_slice(&magic);
        b[4..6].copy_from_slice(&HELLO_VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.world.to_le_bytes());
        b[12..16].copy_from_slice(&self.rank.to_le_bytes());
        b[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        b
    }

    /// Parses a hello; refuses anything that is not this protocol and version.
    pub(crate) fn decode(
        magic: [u8; 4],
        b: &[u8; HELLO_LEN],
    ) -> std::result::Result<Hello, String> {
        if b[..4] != magic {
            return Err(format!("not a ringrun peer (magic {:02x?})", &b[..4]));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != HELLO_VERSION {
            return Err(format!(
                "handshake version {version}, expected {HELLO_VERSION}"
            ));
        }
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&b[16..24]);
        Ok(Hello {
            world: word(8),
            rank: word(12),
            epoch: u64::from_le_bytes(epoch),
        })
    }

    /// Whether the peer belongs to the same mesh: same world size and epoch.
    pub(crate) fn check_mesh(&self, spec: &MeshSpec) -> std::result::Result<(), String> {
        if self.epoch != spec.epoch {
            return Err(format!(
                "peer is in epoch {}, we are in {}",
                self.epoch, spec.epoch
            ));
        }
        if self.world as usize != spec.size() {
            return Err(format!(
                "peer expects {} ranks, we expect {}",
                self.world,
                spec.size()
            ));
        }
        Ok(())
    }
}

/// Fresh random bytes for a handshake nonce.
pub(crate) fn nonce() -> Result<[u8; 32]> {
    let mut n = [0u8; 32];
    SystemRandom::new()
        .fill(&mut n)
        .map_err(|_| CollectiveError::Setup("no system randomness for a handshake nonce".into()))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let s = JobSecret::random().unwrap();
        assert_eq!(JobSecret::from_hex(&s.to_hex()).unwrap(), s);
        assert_eq!(JobSecret::from_hex(&s.to_hex().to_uppercase()).unwrap(), s);
        assert!(JobSecret::from_hex("abc").is_err());
        assert!(JobSecret::from_hex(&"g".repeat(64)).is_err());
        assert_ne!(JobSecret::random().unwrap(), s);
    }

    #[test]
    fn from_bytes_is_a_keyed_hash() {
        let a = JobSecret::from_bytes(b"hunter2");
        assert_eq!(a, JobSecret::from_bytes(b"hunter2"));
        assert_ne!(a, JobSecret::from_bytes(b"hunter3"));
        assert_ne!(a.to_hex(), hex_of(b"hunter2"));
    }

    #[test]
    fn debug_hides_the_key() {
        let s = JobSecret::from_bytes(b"x");
        let shown = format!("{s:?}");
        assert!(!shown.contains(&s.to_hex()[..8]), "{shown}");
        assert_eq!(shown, "JobSecret(<redacted>)");
    }

    #[test]
    fn mac_binds_label_parts_and_key() {
        let s = JobSecret::from_bytes(b"k");
        let tag = s.mac("l", &[b"ab", b"c"]);
        assert!(s.verify_mac("l", &[b"ab", b"c"], &tag));
        assert!(
            !s.verify_mac("l", &[b"a", b"bc"], &tag),
            "part boundaries matter"
        );
        assert!(!s.verify_mac("m", &[b"ab", b"c"], &tag));
        assert!(!JobSecret::from_bytes(b"j").verify_mac("l", &[b"ab", b"c"], &tag));
        assert!(!s.verify_mac("l", &[b"ab", b"c"], &tag[..31]));
        assert_ne!(s.derive("a"), s.derive("b"));
    }

    #[test]
    fn load_hashes_the_trimmed_contents() {
        let dir = std::env::temp_dir().join(format!("ringrun-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hex = "ab".repeat(32);
        let hex_file = dir.join("hex");
        std::fs::write(&hex_file, format!("  {hex}\n")).unwrap();
        assert_eq!(
            JobSecret::load(&hex_file).unwrap(),
            JobSecret::from_bytes(hex.as_bytes())
        );
        let pass_file = dir.join("pass");
        std::fs::write(&pass_file, "correct horse\n").unwrap();
        assert_eq!(
            JobSecret::load(&pass_file).unwrap(),
            JobSecret::from_bytes(b"correct horse")
        );
        let empty = dir.join("empty");
        std::fs::write(&empty, " \n").unwrap();
        assert!(matches!(
            JobSecret::load(&empty),
            Err(CollectiveError::Setup(_))
        ));
        assert!(JobSecret::load(&dir.join("absent")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn claims_refuse_duplicates_and_lower_ranks() {
        let spec = MeshSpec {
            rank: 1,
            addrs: vec!["127.0.0.1:1".parse().unwrap(); 4],
            epoch: 0,
        };
        let c = Claims::new(&spec);
        assert!(c.claim_accepted(1, 0).is_err());
        assert!(c.claim_accepted(1, 1).is_err());
        assert!(c.claim_accepted(1, 4).is_err());
        assert!(c.claim_accepted(1, 2).is_ok());
        assert!(c.claim_accepted(1, 2).is_err());
        assert_eq!(c.missing(), vec![0, 3]);
    }

    #[test]
    fn hello_round_trip_and_checks() {
        let spec = MeshSpec {
            rank: 2,
            addrs: vec!["127.0.0.1:1".parse().unwrap(); 3],
            epoch: 7,
        };
        let h = Hello::of(&spec);
        let b = h.encode(*b"TEST");
        assert_eq!(Hello::decode(*b"TEST", &b).unwrap(), h);
        assert!(Hello::decode(*b"XXXX", &b).is_err());
        let mut v2 = b;
        v2[4] = 2;
        assert!(Hello::decode(*b"TEST", &v2).is_err());
        assert!(h.check_mesh(&spec).is_ok());
        assert!(Hello { epoch: 6, ..h }.check_mesh(&spec).is_err());
        assert!(Hello { world: 4, ..h }.check_mesh(&spec).is_err());
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }
}
