//! Member identity: what travels in every gossip packet.
//!
//! A [`MemberId`] names one *life* of one worker. It combines the stable [`NodeId`], the
//! membership (UDP) address, an [`Incarnation`] that changes when the process restarts, a
//! `rejoin` counter that foca bumps when this life is wrongly declared down and rejoins, and
//! small [`Metadata`] for the layers above (collective endpoints, local rank, host, device).
//!
//! Contract:
//! - Two identities with the same [`MemberId::addr`] are two lives of the same slot; the one with
//!   the larger `(incarnation, rejoin, node)` wins (foca's `win_addr_conflict`), so a restarted
//!   worker replaces its old life, and the node reports the old life as down.
//! - The postcard encoding must stay at most [`MAX_IDENTITY_LEN`] bytes ([`MemberId::validate`]):
//!   foca puts the source and destination identities in every packet header.

use std::fmt;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::MembershipError;

/// Largest postcard encoding of a [`MemberId`] that [`MemberId::validate`] accepts, in bytes.
///
/// Two identities sit in every packet header, so 2 x 192 bytes out of a 1,400-byte datagram
/// leaves room for a handful of piggybacked updates even in the worst case.
pub const MAX_IDENTITY_LEN: usize = 192;

/// Longest host name or device string accepted in [`Metadata`], in bytes.
pub const MAX_LABEL_LEN: usize = 48;

/// Most collective endpoints accepted in [`Metadata::endpoints`].
pub const MAX_ENDPOINTS: usize = 4;

/// Stable identifier of a worker slot (for example its global rank or a hash of its name).
///
/// It stays the same across restarts; [`Incarnation`] tells the lives apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// Restart incarnation of a worker: strictly larger for every new process of the same slot.
///
/// The tokio driver derives it from the wall clock at start-up ([`Incarnation::from_unix_micros`]);
/// the simulator uses a restart counter. It is unrelated to foca's internal suspicion
/// incarnation, which the view reports separately as `swim_incarnation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Incarnation(pub u64);

impl Incarnation {
    /// An incarnation taken from a wall-clock reading in microseconds since the Unix epoch.
    pub const fn from_unix_micros(micros: u64) -> Self {
        Self(micros)
    }
}

/// What is behind an endpoint advertised in [`Metadata`] (named apart from the collectives'
/// `Transport` trait and `TransportKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EndpointKind {
    /// QUIC.
    Quic,
    /// Plain TCP.
    Tcp,
    /// NCCL bootstrap (the address where the unique id is exchanged).
    Nccl,
    /// Anything else, tagged by the layer that uses it.
    Other(u8),
}

/// One collective endpoint: where to reach this member for a given transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// What is behind it.
    pub transport: EndpointKind,
    /// Socket address of the endpoint.
    pub addr: SocketAddr,
}

/// Small metadata that other layers need, gossiped with the identity.
///
/// Keep it small: see [`MAX_IDENTITY_LEN`], [`MAX_LABEL_LEN`] and [`MAX_ENDPOINTS`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Metadata {
    /// Collective endpoints, one per transport.
    pub endpoints: Vec<Endpoint>,
    /// Rank of the worker on its host.
    pub local_rank: u32,
    /// Host name.
    pub host: String,
    /// Device description, for example `cuda:0` or `cpu`.
    pub device: String,
    /// The global rank a launcher gave this worker's slot (torchrun's `RANK`), if any; the
    /// runtime orders its views' ranks by it.
    pub launch_rank: Option<u32>,
}

/// Identity of one life of one member; foca's `Identity`. Its fields ([`Life`]) are shared
/// by every clone: each member holds every other member's identity, twice (foca's list and
/// the node's shadow), so a clone costs a pointer, not the fields (with 10,000 members, a
/// simulator holding every member's view needs 10^8 of them). Reads go through `Deref`;
/// `DerefMut` copies the fields first if they are shared. Encodes exactly as its fields.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemberId(Arc<Life>);

/// The fields of a [`MemberId`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Life {
    /// Stable node id.
    pub node: NodeId,
    /// Membership (UDP) address; foca's `Identity::Addr`.
    pub addr: SocketAddr,
    /// Restart incarnation.
    pub incarnation: Incarnation,
    /// Bumped each time this life rejoins after being declared down (foca `renew`).
    pub rejoin: u16,
    /// Metadata for other layers.
    pub meta: Metadata,
}

impl MemberId {
    /// A new identity with `rejoin = 0`.
    pub fn new(node: NodeId, addr: SocketAddr, incarnation: Incarnation, meta: Metadata) -> Self {
        Self(Arc::new(Life {
            node,
            addr,
            incarnation,
            rejoin: 0,
            meta,
        }))
    }

    /// The identity used to address an announce to a seed whose identity is not known yet.
    ///
    /// foca accepts an announce whose destination has the receiver's address, whatever the
    /// rest of the identity says.
    pub fn placeholder(addr: SocketAddr) -> Self {
        Self::new(NodeId(0), addr, Incarnation(0), Metadata::default())
    }

    /// Checks the size limits. Does not change anything.
    pub fn validate(&self) -> Result<(), MembershipError> {
        let meta = &self.meta;
        if meta.host.len() > MAX_LABEL_LEN
            || meta.device.len() > MAX_LABEL_LEN
            || meta.endpoints.len() > MAX_ENDPOINTS
        {
            return Err(MembershipError::IdentityTooLarge {
                len: self.encoded_len(),
                max: MAX_IDENTITY_LEN,
            });
        }
        let len = self.encoded_len();
        if len > MAX_IDENTITY_LEN {
            return Err(MembershipError::IdentityTooLarge {
                len,
                max: MAX_IDENTITY_LEN,
            });
        }
        Ok(())
    }

    /// Length of the postcard encoding, in bytes.
    pub fn encoded_len(&self) -> usize {
        postcard_len(self)
    }

    /// The order that decides address conflicts: later lives win.
    fn life(&self) -> (Incarnation, u16, NodeId) {
        (self.incarnation, self.rejoin, self.node)
    }
}

impl Deref for MemberId {
    type Target = Life;

    fn deref(&self) -> &Life {
        &self.0
    }
}

impl DerefMut for MemberId {
    fn deref_mut(&mut self) -> &mut Life {
        Arc::make_mut(&mut self.0)
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}#{}.{}",
            self.node, self.addr, self.incarnation.0, self.rejoin
        )
    }
}

impl foca::Identity for MemberId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        let mut renewed = self.clone();
        renewed.rejoin = self.rejoin.checked_add(1)?;
        Some(renewed)
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.life() > adversary.life()
    }
}

/// Length of the postcard encoding of `id` as foca writes it; `usize::MAX` if it does not fit.
fn postcard_len(id: &MemberId) -> usize {
    use foca::Codec;
    let member = foca::Member::new(id.clone(), 0, foca::State::Alive);
    let mut buf = [0u8; 1024];
    let cap = buf.len();
    let mut slice = &mut buf[..];
    match foca::PostcardCodec.encode_member(&member, &mut slice) {
        // The member adds its incarnation (1 byte) and its state (1 byte) after the identity.
        Ok(()) => cap - slice.len() - 2,
        Err(_) => usize::MAX,
    }
}

/// A loopback socket address, used in tests and the simulator.
#[cfg(any(test, feature = "sim"))]
pub(crate) const fn loopback(port: u16) -> SocketAddr {
    use std::net::{IpAddr, Ipv4Addr};
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn id(port: u16) -> MemberId {
        MemberId::new(
            NodeId(7),
            loopback(port),
            Incarnation(1_700_000_000_000_000),
            Metadata {
                endpoints: vec![Endpoint {
                    transport: EndpointKind::Quic,
                    addr: loopback(port + 1),
                }],
                local_rank: 3,
                host: "gpu-node-017".into(),
                device: "cuda:3 H100".into(),
                launch_rank: Some(1023),
            },
        )
    }

    #[test]
    fn typical_identity_is_small() {
        let len = id(4000).encoded_len();
        assert!(len < 64, "typical identity takes {len} bytes");
        id(4000).validate().unwrap();
    }

    #[test]
    fn oversized_metadata_is_rejected() {
        let mut big = id(4000);
        big.meta.host = "h".repeat(MAX_LABEL_LEN + 1);
        assert!(matches!(
            big.validate(),
            Err(MembershipError::IdentityTooLarge { .. })
        ));
    }

    #[test]
    fn later_lives_win_conflicts() {
        let old = id(4000);
        let renewed = old.renew().unwrap();
        assert!(renewed.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&renewed));
        let mut restarted = old.clone();
        restarted.incarnation = Incarnation(old.incarnation.0 + 1);
        assert!(restarted.win_addr_conflict(&renewed));
    }
}
