//! Serde-serialisable view of the membership, for the runtime and for `ringrun status`.

use serde::{Deserialize, Serialize};

use crate::identity::MemberId;

/// State of a member as seen by one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Answers probes.
    Alive,
    /// Failed a probe; will be declared down unless it refutes in time.
    Suspect,
    /// Declared down (crashed, partitioned away, or replaced by a newer life).
    Down,
    /// Left gracefully.
    Left,
}

impl MemberState {
    /// Alive or suspect: still part of the group.
    pub const fn is_active(self) -> bool {
        matches!(self, Self::Alive | Self::Suspect)
    }
}

/// One member as seen by one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Identity: node id, address, restart incarnation, rejoin counter, metadata.
    pub id: MemberId,
    /// Current state.
    pub state: MemberState,
    /// foca's suspicion-refutation incarnation for this identity.
    pub swim_incarnation: u16,
    /// Time since the observing node saw the member enter `state`, in milliseconds.
    pub time_in_state_ms: u64,
}

/// One datagram of an answer to an observer's view request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChunk {
    /// The request this answers.
    pub request: u64,
    /// The answering member.
    pub responder: MemberId,
    /// Index of this chunk, from 0.
    pub part: u16,
    /// Number of chunks in the answer.
    pub parts: u16,
    /// Members in this chunk.
    pub members: Vec<MemberInfo>,
    /// Opaque bytes the layer above published with [`crate::Node::set_annotation`] (the
    /// runtime: its installed epoch and ranks); in part 0 only.
    pub annotation: Vec<u8>,
}
