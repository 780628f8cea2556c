//! Authenticated datagram framing.
//!
//! Every datagram is `magic "RR" | version | kind | job id (u64 LE) | payload | tag`, where the
//! tag is HMAC-SHA256 over everything before it, keyed by a key derived from the job secret and
//! the job id (`HMAC(secret, "ringrun-membership/v1" || job_id)`). A packet from another job
//! (even with the same secret), a truncated, tampered or random packet is rejected by
//! [`Authenticator::open`] with a [`DropReason`]; nothing here can panic on input.
//!
//! Replays inside a job are not filtered: SWIM messages are idempotent (pings are answered
//! again, stale membership updates lose to newer incarnations, `Down` is terminal for an
//! identity), so a replay can at worst cost one extra reply.

use std::fmt;

use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::error::MembershipError;

/// Magic bytes at the start of every datagram.
pub const MAGIC: [u8; 2] = *b"RR";
/// Wire format version.
pub const VERSION: u8 = 1;
/// Length of the clear-text header (magic, version, kind, job id).
pub const HEADER_LEN: usize = 2 + 1 + 1 + 8;
/// Length of the authentication tag (full HMAC-SHA256).
pub const TAG_LEN: usize = 32;
/// Bytes added to every payload.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Shortest job secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Identifier of a training job; part of the MAC key, so packets never cross jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl JobId {
    /// The job id of a run id string (the first 8 bytes of its SHA-256).
    pub fn from_run_id(run_id: &str) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, run_id.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&d.as_ref()[..8]);
        Self(u64::from_le_bytes(first))
    }
}

/// What a datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// A foca SWIM message.
    Swim,
    /// A graceful-leave notice: postcard of the leaving [`crate::MemberId`].
    Leave,
    /// An observer asks for the sender's view: postcard of a request id (u64).
    ViewRequest,
    /// One part of a view reply: postcard of [`crate::ViewChunk`].
    ViewReply,
    /// A message of a layer above (the runtime's epoch agreement), on that layer's own socket;
    /// opaque here. Sealed with the same job key, so it is just as authenticated.
    Control,
}

impl PacketKind {
    const fn to_byte(self) -> u8 {
        match self {
            Self::Swim => 0,
            Self::Leave => 1,
            Self::ViewRequest => 2,
            Self::ViewReply => 3,
            Self::Control => 4,
        }
    }

    const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Swim),
            1 => Some(Self::Leave),
            2 => Some(Self::ViewRequest),
            3 => Some(Self::ViewReply),
            4 => Some(Self::Control),
            _ => None,
        }
    }
}

/// Why an incoming datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than header plus tag.
    Truncated,
    /// Larger than the configured maximum packet size.
    Oversized,
    /// Does not start with [`MAGIC`].
    BadMagic,
    /// Unknown wire version.
    BadVersion,
    /// Unknown packet kind.
    BadKind,
    /// Carries another job id.
    WrongJob,
    /// The tag does not verify: wrong secret, tampering or corruption.
    BadMac,
    /// Authenticated, but the payload does not decode.
    Malformed,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::Truncated => "truncated",
            Self::Oversized => "oversized",
            Self::BadMagic => "bad magic",
            Self::BadVersion => "unsupported version",
            Self::BadKind => "unknown packet kind",
            Self::WrongJob => "wrong job id",
            Self::BadMac => "authentication failed",
            Self::Malformed => "malformed payload",
        };
        f.write_str(text)
    }
}

/// Seals and opens datagrams for one job.
pub struct Authenticator {
    job: JobId,
    key: hmac::Key,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("job", &self.job)
            .finish_non_exhaustive()
    }
}

impl Clone for Authenticator {
    fn clone(&self) -> Self {
        // hmac::Key is Clone; spelled out so the secret never appears in Debug output.
        Self {
            job: self.job,
            key: self.key.clone(),
        }
    }
}

impl Authenticator {
    /// Derives the job key. Fails with [`MembershipError::WeakSecret`] for short secrets.
    pub fn new(job: JobId, secret: &[u8]) -> Result<Self, MembershipError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(MembershipError::WeakSecret(secret.len()));
        }
        let master = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let mut ctx = hmac::Context::with_key(&master);
        ctx.update(b"ringrun-membership/v1");
        ctx.update(&job.0.to_le_bytes());
        let derived = ctx.sign();
        Ok(Self {
            job,
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        })
    }

    /// The job this authenticator seals for.
    pub const fn job(&self) -> JobId {
        self.job
    }

    /// Appends a sealed datagram carrying `payload` to `out` (which is cleared first).
    pub fn seal(&self, kind: PacketKind, payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(payload.len() + OVERHEAD);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(kind.to_byte());
        out.extend_from_slice(&self.job.0.to_le_bytes());
        out.extend_from_slice(payload);
        let tag = hmac::sign(&self.key, out);
        out.extend_from_slice(tag.as_ref());
    }

    /// Verifies a datagram and returns its kind and payload. Never panics.
    pub fn open<'a>(&self, packet: &'a [u8]) -> Result<(PacketKind, &'a [u8]), DropReason> {
        if packet.len() < OVERHEAD {
            return Err(DropReason::Truncated);
        }
        if packet[..2] != MAGIC {
            return Err(DropReason::BadMagic);
        }
        if packet[2] != VERSION {
            return Err(DropReason::BadVersion);
        }
        let kind = PacketKind::from_byte(packet[3]).ok_or(DropReason::BadKind)?;
        let mut job = [0u8; 8];
        job.copy_from_slice(&packet[4..HEADER_LEN]);
        if u64::from_le_bytes(job) != self.job.0 {
            return Err(DropReason::WrongJob);
        }
        let (signed, tag) = packet.split_at(packet.len() - TAG_LEN);
        hmac::verify(&self.key, signed, tag).map_err(|_| DropReason::BadMac)?;
        Ok((kind, &signed[HEADER_LEN..]))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(JobId(42), b"0123456789abcdef-secret").unwrap()
    }

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        auth().seal(PacketKind::Swim, b"hello", &mut out);
        assert_eq!(out.len(), 5 + OVERHEAD);
        assert_eq!(auth().open(&out), Ok((PacketKind::Swim, &b"hello"[..])));
    }

    #[test]
    fn other_job_or_secret_is_rejected() {
        let mut out = Vec::new();
        auth().seal(PacketKind::Swim, b"hello", &mut out);
        let other_job = Authenticator::new(JobId(43), b"0123456789abcdef-secret").unwrap();
        assert_eq!(other_job.open(&out), Err(DropReason::WrongJob));
        // A packet replayed from another job with its job id rewritten still fails the MAC,
        // because the job id is part of the key.
        let mut replayed = out.clone();
        replayed[4..12].copy_from_slice(&43u64.to_le_bytes());
        assert_eq!(other_job.open(&replayed), Err(DropReason::BadMac));
        let other_secret = Authenticator::new(JobId(42), b"another-secret-0123456").unwrap();
        assert_eq!(other_secret.open(&out), Err(DropReason::BadMac));
        assert!(matches!(
            Authenticator::new(JobId(1), b"short"),
            Err(MembershipError::WeakSecret(5))
        ));
    }

    #[test]
    fn truncation_and_bit_flips_are_rejected() {
        let mut out = Vec::new();
        auth().seal(PacketKind::Leave, b"payload bytes", &mut out);
        for len in 0..out.len() {
            assert!(
                auth().open(&out[..len]).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
        for i in 0..out.len() {
            let mut flipped = out.clone();
            flipped[i] ^= 0x01;
            assert!(auth().open(&flipped).is_err(), "bit flip at {i} accepted");
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            prop_assert!(auth().open(&bytes).is_err());
        }

        #[test]
        fn random_bytes_with_valid_header_never_open(
            tail in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut bytes = Vec::from(&MAGIC[..]);
            bytes.push(VERSION);
            bytes.push(0);
            bytes.extend_from_slice(&42u64.to_le_bytes());
            bytes.extend_from_slice(&tail);
            prop_assert!(auth().open(&bytes).is_err());
        }
    }
}
