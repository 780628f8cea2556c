//! The crate's error type.

use std::io;

use crate::wire::DropReason;

/// Errors of the membership crate.
///
/// Each variant says whether the state of the [`crate::Node`] changed and whether the caller can
/// recover. Problems caused by network input are values, never panics.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// A datagram was dropped before it reached foca: not from this job, tampered with,
    /// truncated or random.
    ///
    /// State: unchanged except for the drop counter in [`crate::Stats`]. Recoverable: expected
    /// on any open port; the caller just carries on.
    #[error("packet dropped: {0}")]
    Dropped(DropReason),

    /// An authenticated packet was rejected by foca (malformed payload, a message that claims
    /// to come from ourselves, ...).
    ///
    /// State: foca may have applied the membership updates decoded before the fault (it decodes
    /// all updates before applying any, so for decode faults nothing changed). Recoverable:
    /// only a member holding the job secret can cause it; the event is counted and logged.
    #[error("packet rejected by the SWIM layer: {0}")]
    Protocol(String),

    /// The identity's postcard encoding, or one of its metadata fields, is too large.
    ///
    /// State: nothing was created or changed. Recoverable: shorten the metadata.
    #[error("identity takes {len} bytes, at most {max} allowed")]
    IdentityTooLarge {
        /// Encoded length (or `usize::MAX` when it did not fit the scratch buffer).
        len: usize,
        /// Limit, [`crate::MAX_IDENTITY_LEN`].
        max: usize,
    },

    /// The job secret is shorter than [`crate::MIN_SECRET_LEN`] bytes.
    ///
    /// State: nothing was created. Recoverable: supply a longer secret.
    #[error("job secret has {0} bytes, at least {min} required", min = crate::MIN_SECRET_LEN)]
    WeakSecret(usize),

    /// The configuration is inconsistent (for example the probe timeout is not shorter than the
    /// probe period, or the packet size cannot hold two identities).
    ///
    /// State: nothing was created or changed. Recoverable: fix the configuration.
    #[error("invalid membership configuration: {0}")]
    InvalidConfig(&'static str),

    /// foca refused an operation that is not about network input (for example leaving twice).
    ///
    /// State: unchanged. Recoverable: usually a caller bug; the node keeps running.
    #[error("foca refused the operation: {0}")]
    Foca(String),

    /// A socket operation failed in the driver or the observer.
    ///
    /// State: for the driver, the membership task stops and the node is gone; not recoverable
    /// without starting a new driver. For the observer, nothing was joined.
    #[error("membership socket error: {0}")]
    Io(#[from] io::Error),

    /// The driver task has stopped (after [`crate::driver::Membership::leave`] or an I/O error).
    ///
    /// State: the node is gone. Recoverable only by starting a new driver.
    #[error("membership driver has stopped")]
    DriverStopped,

    /// The observer got no answer from any seed within its timeout.
    ///
    /// State: nothing changed anywhere. Recoverable: retry, check the seeds and the secret.
    #[error("no seed answered within {0:?}")]
    NoAnswer(std::time::Duration),
}

impl From<DropReason> for MembershipError {
    fn from(reason: DropReason) -> Self {
        Self::Dropped(reason)
    }
}
