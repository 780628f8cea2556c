//! The errors a collective returns.

use std::time::Duration;

/// Why a collective or a transport set-up failed.
///
/// Every variant documents two things: whether the caller's buffers or the communicator changed
/// ("state"), and whether the job can go on ("recovery"). After a failed call the
/// communicator is *poisoned*: its links may hold half-sent frames (or, after
/// [`InvalidArgument`](Self::InvalidArgument), the peers were told to give the call up), so
/// every later call fails fast with [`Poisoned`](Self::Poisoned) and the caller (the elastic
/// runtime) builds a new communicator for a new epoch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectiveError {
    /// The connection to `rank` broke or was closed (the process died or left).
    /// State: output buffers hold partial data; communicator poisoned.
    /// Recovery: re-form the group without that rank and restore the last commit.
    #[error("peer rank {rank} lost: {reason}")]
    PeerLost {
        /// The peer whose link failed.
        rank: usize,
        /// What the transport saw (reset, end of stream, ...).
        reason: String,
    },
    /// The deadline passed; `waiting_on` is the peer this rank was blocked on, if known
    /// (a stopped or partitioned process shows up here, not as [`PeerLost`](Self::PeerLost)).
    /// State: output buffers hold partial data; communicator poisoned.
    /// Recovery: re-form the group; the silent peer should be suspected.
    #[error("timed out after {waited:?}{}", waiting_on.map(|r| format!(" waiting on rank {r}")).unwrap_or_default())]
    Timeout {
        /// The peer this rank was waiting for.
        waiting_on: Option<usize>,
        /// How long the operation ran.
        waited: Duration,
    },
    /// The caller's cancellation handle fired, or a peer gave up on this operation.
    /// State: output buffers hold partial data; communicator poisoned.
    /// Recovery: as the canceller decides (the runtime re-forms on a membership change).
    #[error("aborted: {reason}")]
    Aborted {
        /// Who aborted and why.
        reason: String,
    },
    /// Ranks called different collectives, or with different sizes, types, ops, roots or
    /// algorithms; `rank` is the rank whose frame disagreed (or that reported it).
    /// State: output buffers hold partial data; communicator poisoned.
    /// Recovery: a programming error in the caller; fix the call, then re-form.
    #[error("mismatch with rank {rank}: {detail}")]
    Mismatch {
        /// The peer that disagreed or reported a disagreement.
        rank: usize,
        /// What differed.
        detail: String,
    },
    /// The arguments are unusable locally (wrong lengths, bad root, misaligned buffer).
    /// State: the caller's buffers are unchanged and no data was sent; the peers got an abort
    /// notice, so that their matching calls fail at once; communicator poisoned.
    /// Recovery: fix the call, in a new epoch.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An earlier error poisoned this communicator.
    /// State: nothing changed. Recovery: build a new communicator.
    #[error("communicator unusable after an earlier error: {0}")]
    Poisoned(String),
    /// Setting up links failed: no listener, handshake refused, wrong job secret.
    /// State: no communicator exists. Recovery: retry set-up, or fix the configuration.
    #[error("transport set-up failed: {0}")]
    Setup(String),
    /// A peer sent bytes that are not a ringrun frame.
    /// State: output buffers hold partial data; communicator poisoned.
    /// Recovery: re-form without the peer; it is not speaking our protocol.
    #[error("protocol error from rank {rank}: {detail}")]
    Protocol {
        /// The peer that sent garbage.
        rank: usize,
        /// What was wrong with it.
        detail: String,
    },
}

impl CollectiveError {
    /// Whether the caller's buffers and the communicator are exactly as before the call.
    pub fn state_unchanged(&self) -> bool {
        matches!(
            self,
            Self::InvalidArgument(_) | Self::Poisoned(_) | Self::Setup(_)
        )
    }

    /// Whether the job can go on by re-forming the group (as opposed to fixing the caller's code).
    pub fn recoverable(&self) -> bool {
        !matches!(self, Self::Mismatch { .. } | Self::InvalidArgument(_))
    }

    /// The peer this error names, if any.
    pub fn peer(&self) -> Option<usize> {
        match self {
            Self::PeerLost { rank, .. }
            | Self::Mismatch { rank, .. }
            | Self::Protocol { rank, .. } => Some(*rank),
            Self::Timeout { waiting_on, .. } => *waiting_on,
            _ => None,
        }
    }
}

impl CollectiveError {
    /// The same error with every rank it names renumbered by `f` (sub-communicators).
    pub(crate) fn renumber(self, f: impl Fn(usize) -> usize) -> Self {
        match self {
            Self::PeerLost { rank, reason } => Self::PeerLost {
                rank: f(rank),
                reason,
            },
            Self::Mismatch { rank, detail } => Self::Mismatch {
                rank: f(rank),
                detail,
            },
            Self::Protocol { rank, detail } => Self::Protocol {
                rank: f(rank),
                detail,
            },
            Self::Timeout { waiting_on, waited } => Self::Timeout {
                waiting_on: waiting_on.map(f),
                waited,
            },
            other => other,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = CollectiveError> = std::result::Result<T, E>;
