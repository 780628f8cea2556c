//! How the runtime names members and reaches them.
//!
//! A [`MemberKey`] orders members by *seniority*: the restart incarnation (the wall clock at
//! start, in microseconds) comes first, so the coordinator (the lowest live key) is the oldest
//! live member, and a joiner or a restarted worker never takes over coordination of a group
//! that is already training. The node id breaks ties.
//!
//! Seniority picks the coordinator, not the ranks: a view lists its members by the launch rank
//! each one advertises ([`Advert::launch_rank`], see `crate::agreement`), so that the first
//! epoch's ranks are the launcher's `RANK`s whatever order the workers started in.

use std::net::SocketAddr;

use ringrun_membership::{Endpoint, EndpointKind, MemberId, Metadata};
use serde::{Deserialize, Serialize};

/// The tag of the agreement (control) endpoint in [`Metadata::endpoints`].
pub const CONTROL_ENDPOINT: EndpointKind = EndpointKind::Other(1);

/// One life of one worker, ordered oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberKey {
    /// Restart incarnation (wall clock at start, µs).
    pub incarnation: u64,
    /// Stable node id.
    pub node: u64,
}

impl std::fmt::Display for MemberKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "n{}.{}", self.node, self.incarnation % 1_000_000)
    }
}

/// Where a member listens: the agreement's control socket and its collective transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoints {
    /// UDP socket for agreement messages.
    pub control: SocketAddr,
    /// TCP listener for the collective mesh.
    pub tcp: SocketAddr,
}

impl Endpoints {
    /// The metadata endpoints that advertise these.
    pub fn to_meta(self) -> Vec<Endpoint> {
        vec![
            Endpoint {
                transport: CONTROL_ENDPOINT,
                addr: self.control,
            },
            Endpoint {
                transport: EndpointKind::Tcp,
                addr: self.tcp,
            },
        ]
    }

    /// The endpoints a member advertises; `None` for members that take no part in collectives
    /// (observers, launchers).
    pub fn from_meta(meta: &Metadata) -> Option<Endpoints> {
        let find = |t| meta.endpoints.iter().find(|e| e.transport == t);
        Some(Endpoints {
            control: find(CONTROL_ENDPOINT)?.addr,
            tcp: find(EndpointKind::Tcp)?.addr,
        })
    }
}

/// What a worker advertises in its membership metadata: where it listens, and the rank its
/// launcher gave it. This is what a view carries for each member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Advert {
    /// Where it listens.
    pub endpoints: Endpoints,
    /// The launcher's global rank of this worker's slot (`RANK`), if it was given one.
    pub launch_rank: Option<u32>,
}

impl Advert {
    /// A worker's advert; `None` for members that take no part in collectives.
    pub fn from_meta(meta: &Metadata) -> Option<Advert> {
        Some(Advert {
            endpoints: Endpoints::from_meta(meta)?,
            launch_rank: meta.launch_rank,
        })
    }
}

impl crate::agreement::Placement for Advert {
    fn launch_rank(&self) -> Option<u32> {
        self.launch_rank
    }
}

/// What a worker publishes to observers (`ringrun status`) with its SWIM view: its installed
/// epoch and the members in rank order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochAnnotation {
    /// The installed epoch.
    pub epoch: u64,
    /// Members in rank order; empty when the list would not fit in one datagram.
    pub ranks: Vec<MemberKey>,
}

impl EpochAnnotation {
    /// The encoding, within the membership layer's annotation limit.
    pub fn encode(&self) -> Vec<u8> {
        let full = postcard::to_allocvec(self).unwrap_or_default();
        if full.len() <= ringrun_membership::MAX_ANNOTATION {
            return full;
        }
        let short = EpochAnnotation {
            epoch: self.epoch,
            ranks: Vec::new(),
        };
        postcard::to_allocvec(&short).unwrap_or_default()
    }

    /// Decodes an annotation; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<EpochAnnotation> {
        postcard::from_bytes(bytes).ok()
    }

    /// The rank of the life `(node, incarnation)`, if listed.
    pub fn rank_of(&self, node: u64, incarnation: u64) -> Option<usize> {
        self.ranks
            .iter()
            .position(|k| k.node == node && k.incarnation == incarnation)
    }
}

/// The key and endpoints of a membership identity, if it is a worker.
pub fn worker(id: &MemberId) -> Option<(MemberKey, Endpoints)> {
    advertised(id).map(|(k, a)| (k, a.endpoints))
}

/// The key and advert of a membership identity, if it is a worker.
pub fn advertised(id: &MemberId) -> Option<(MemberKey, Advert)> {
    let key = MemberKey {
        incarnation: id.incarnation.0,
        node: id.node.0,
    };
    Advert::from_meta(&id.meta).map(|a| (key, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_lives_sort_first_whatever_their_node_id() {
        let old = MemberKey {
            incarnation: 10,
            node: 9,
        };
        let young = MemberKey {
            incarnation: 11,
            node: 1,
        };
        assert!(old < young);
    }

    #[test]
    fn endpoints_round_trip_through_metadata() {
        let e = Endpoints {
            control: "127.0.0.1:1000".parse().unwrap(),
            tcp: "127.0.0.1:2000".parse().unwrap(),
        };
        let meta = Metadata {
            endpoints: e.to_meta(),
            launch_rank: Some(3),
            ..Metadata::default()
        };
        assert_eq!(Endpoints::from_meta(&meta), Some(e));
        assert_eq!(Endpoints::from_meta(&Metadata::default()), None);
        let advert = Advert::from_meta(&meta).unwrap();
        assert_eq!((advert.endpoints, advert.launch_rank), (e, Some(3)));
        assert_eq!(Advert::from_meta(&Metadata::default()), None);
    }
}
