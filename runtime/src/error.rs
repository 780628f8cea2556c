//! What the group's calls can fail with.

use ringrun_collectives::CollectiveError;

/// An error from a [`crate::Group`] call.
///
/// Each variant says whether state changed and whether the caller can recover.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The group's membership changed (a member was lost, or the epoch was re-formed) while or
    /// before this call ran. State: the call's output buffers hold unspecified data; the
    /// committed state is intact. Recovery: call [`crate::Group::restore`], which waits for the
    /// new epoch, and redo the work since the restored step.
    #[error("membership changed: epoch {epoch} is over ({reason})")]
    MembershipChanged {
        /// The epoch that ended.
        epoch: u64,
        /// What ended it.
        reason: String,
    },
    /// A collective did not finish in time and no member was found missing. State: output
    /// buffers unspecified; the epoch is re-formed. Recovery: [`crate::Group::restore`].
    #[error("timed out: {0}")]
    Timeout(String),
    /// Ranks disagreed about a call (size, dtype, op, step); every rank of the call gets it.
    /// State: nothing committed, output buffers unspecified, the epoch's connections are
    /// discarded (the next call returns `MembershipChanged`). Recovery: fix the caller; then
    /// [`crate::Group::restore`].
    #[error("mismatch across ranks: {0}")]
    Mismatch(String),
    /// Invalid input to this call (nothing was sent). State unchanged; recoverable by the
    /// caller.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No new epoch could be formed in time (too few members, no majority of the last view, or
    /// the coordinator unreachable). State unchanged; retrying later may succeed.
    #[error("no epoch formed in time: {0}")]
    NoQuorum(String),
    /// The group was configured for a device (`RINGRUN_TRANSPORT=nccl`, `RINGRUN_DEVICE=cuda`)
    /// and the device backend cannot run here; the message names the missing library (from
    /// the NCCL probe). State: nothing was created, the member never joined. Not recoverable
    /// in-process: install the library, or run on the CPU transports.
    #[error("device group unavailable: {0}")]
    DeviceUnavailable(String),
    /// The job completed at step `step` without this member: the others finished it and left,
    /// and no final state reached this member (neither from a peer nor from a checkpoint
    /// marked final). State: nothing changed. Not recoverable: the job is over, exit.
    #[error("the job completed at step {step} without this member")]
    Completed {
        /// The job's final committed step.
        step: u64,
    },
    /// Set-up or I/O failure of the group itself (sockets, threads, the checkpoint store).
    /// State: the group may be unusable. Not recoverable in-process: leave and rejoin.
    #[error("group failure: {0}")]
    Internal(String),
}

impl GroupError {
    /// True when restoring and retrying may succeed.
    pub fn recoverable(&self) -> bool {
        !matches!(
            self,
            GroupError::Internal(_)
                | GroupError::DeviceUnavailable(_)
                | GroupError::Completed { .. }
        )
    }

    pub(crate) fn from_collective(epoch: u64, e: CollectiveError) -> GroupError {
        match e {
            CollectiveError::PeerLost { .. } | CollectiveError::Aborted { .. } => {
                GroupError::MembershipChanged {
                    epoch,
                    reason: e.to_string(),
                }
            }
            CollectiveError::Timeout { .. } => GroupError::Timeout(e.to_string()),
            CollectiveError::Mismatch { .. } => GroupError::Mismatch(e.to_string()),
            CollectiveError::InvalidArgument(m) => GroupError::InvalidArgument(m),
            other => GroupError::MembershipChanged {
                epoch,
                reason: other.to_string(),
            },
        }
    }
}
