//! Agreement messages on the wire: postcard inside a datagram sealed with the job key.
//!
//! Each message names its sender and its addressee, so a message meant for an older life of a
//! member (same address, earlier incarnation) is dropped. Decoding never panics: a datagram
//! from outside the job, truncated, or garbage is rejected with a reason and counted by the
//! caller. Replays inside the job are harmless by construction: agreement messages carry epoch
//! numbers and the state machine ignores stale ones.
//!
//! Besides agreement messages, a launcher that reaped a worker sends [`Control::Exited`]: proof
//! that the member is gone, which lets the group re-form without waiting for SWIM's suspicion
//! timeout and lets the majority rule leave the member out (it cannot be on the other side of a
//! partition). A dashboard or `ringrun status` sends [`Control::ReportRequest`]; a member
//! answers the sender with its [`Report`] (see `progress.rs`). Members that finished the job
//! send [`Control::Completed`] to every member and launcher they know: a worker that was not
//! with them learns that the job is over instead of training alone, and a launcher does not
//! restart workers of a completed job.

use ringrun_membership::{Authenticator, DropReason, wire::PacketKind};
use serde::{Deserialize, Serialize};

use crate::{
    agreement::Msg,
    member::{Advert, MemberKey},
    progress::Report,
};

/// An agreement message between two members.
pub type ControlMsg = Msg<MemberKey, Advert>;

#[derive(Serialize, Deserialize)]
enum Envelope {
    Agreement {
        from: MemberKey,
        to: MemberKey,
        msg: ControlMsg,
    },
    Exited {
        member: MemberKey,
    },
    ReportRequest {
        since: u64,
    },
    Report(Report),
    Completed(Completion),
}

/// The job's end, as its members announce it: the final committed step and the first 16
/// bytes of the SHA-256 of its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The final committed step.
    pub step: u64,
    /// The state's digest (as `state::digest_of`).
    pub digest: [u64; 2],
}

/// What a control datagram says.
#[derive(Clone, Debug, PartialEq)]
pub enum Control {
    /// An agreement message from a member.
    Agreement(MemberKey, ControlMsg),
    /// A launcher saw this member's process exit.
    Exited(MemberKey),
    /// Somebody with the job's secret asks for this member's report, with the scalars from
    /// sequence number `since` on.
    ReportRequest {
        /// The first scalar wanted.
        since: u64,
    },
    /// A member's report.
    Report(Box<Report>),
    /// The job completed (see [`Completion`]).
    Completed(Completion),
}

/// Seals and opens control datagrams.
#[derive(Clone, Debug)]
pub struct ControlCodec {
    auth: Authenticator,
}

impl ControlCodec {
    /// A codec keyed like the job's membership packets.
    pub fn new(auth: Authenticator) -> Self {
        ControlCodec { auth }
    }

    /// The sealed datagram for `msg`.
    pub fn seal(&self, from: MemberKey, to: MemberKey, msg: &ControlMsg) -> Vec<u8> {
        let env = EnvelopeRef::Agreement { from, to, msg };
        self.seal_envelope(&env)
    }

    /// The sealed datagram saying `member`'s process has exited.
    pub fn seal_exited(&self, member: MemberKey) -> Vec<u8> {
        self.seal_envelope(&EnvelopeRef::Exited { member })
    }

    /// The sealed request for a member's report.
    pub fn seal_report_request(&self, since: u64) -> Vec<u8> {
        self.seal_envelope(&EnvelopeRef::ReportRequest { since })
    }

    /// The sealed report.
    pub fn seal_report(&self, report: &Report) -> Vec<u8> {
        self.seal_envelope(&EnvelopeRef::Report(report))
    }

    /// The sealed announcement that the job completed.
    pub fn seal_completed(&self, completion: Completion) -> Vec<u8> {
        self.seal_envelope(&EnvelopeRef::Completed(completion))
    }

    fn seal_envelope(&self, env: &EnvelopeRef<'_>) -> Vec<u8> {
        let payload = postcard::to_allocvec(env).expect("control messages always encode");
        let mut out = Vec::new();
        self.auth.seal(PacketKind::Control, &payload, &mut out);
        out
    }

    /// Opens a datagram for `me`.
    pub fn open(&self, me: MemberKey, packet: &[u8]) -> Result<Control, DropReason> {
        match self.open_envelope(packet)? {
            Envelope::Agreement { from, to, msg } if to == me => Ok(Control::Agreement(from, msg)),
            Envelope::Agreement { .. } => Err(DropReason::Malformed),
            Envelope::Exited { member } => Ok(Control::Exited(member)),
            Envelope::ReportRequest { since } => Ok(Control::ReportRequest { since }),
            Envelope::Report(r) => Ok(Control::Report(Box::new(r))),
            Envelope::Completed(c) => Ok(Control::Completed(c)),
        }
    }

    /// Opens a datagram that announces the job's completion (for a launcher).
    pub fn open_completed(&self, packet: &[u8]) -> Result<Completion, DropReason> {
        match self.open_envelope(packet)? {
            Envelope::Completed(c) => Ok(c),
            _ => Err(DropReason::Malformed),
        }
    }

    /// Opens a datagram that is not addressed to a member (a report, for a dashboard).
    pub fn open_report(&self, packet: &[u8]) -> Result<Report, DropReason> {
        match self.open_envelope(packet)? {
            Envelope::Report(r) => Ok(r),
            _ => Err(DropReason::Malformed),
        }
    }

    fn open_envelope(&self, packet: &[u8]) -> Result<Envelope, DropReason> {
        let (kind, payload) = self.auth.open(packet)?;
        if kind != PacketKind::Control {
            return Err(DropReason::BadKind);
        }
        postcard::from_bytes(payload).map_err(|_| DropReason::Malformed)
    }
}

/// Serialises like [`Envelope`] without cloning the message.
#[derive(Serialize)]
enum EnvelopeRef<'a> {
    Agreement {
        from: MemberKey,
        to: MemberKey,
        msg: &'a ControlMsg,
    },
    Exited {
        member: MemberKey,
    },
    ReportRequest {
        since: u64,
    },
    Report(&'a Report),
    Completed(Completion),
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use ringrun_membership::JobId;

    use super::*;
    use crate::{agreement::View, member::Endpoints};

    fn codec(secret: &[u8]) -> ControlCodec {
        ControlCodec::new(Authenticator::new(JobId(7), secret).unwrap())
    }

    fn key(n: u64) -> MemberKey {
        MemberKey {
            incarnation: n,
            node: n,
        }
    }

    fn propose() -> ControlMsg {
        let endpoints = Endpoints {
            control: "127.0.0.1:1".parse().unwrap(),
            tcp: "127.0.0.1:2".parse().unwrap(),
        };
        let advert = |launch_rank| Advert {
            endpoints,
            launch_rank,
        };
        Msg::Propose(View {
            epoch: 3,
            members: vec![(key(1), advert(Some(0))), (key(2), advert(None))],
        })
    }

    #[test]
    fn round_trips_and_checks_the_addressee() {
        let c = codec(b"0123456789abcdef");
        let packet = c.seal(key(1), key(2), &propose());
        assert_eq!(
            c.open(key(2), &packet),
            Ok(Control::Agreement(key(1), propose()))
        );
        assert_eq!(
            c.open(key(2), &c.seal_exited(key(5))),
            Ok(Control::Exited(key(5)))
        );
        assert_eq!(c.open(key(3), &packet), Err(DropReason::Malformed));
        assert_eq!(
            c.open(key(2), &c.seal_report_request(9)),
            Ok(Control::ReportRequest { since: 9 })
        );
        let report = Report {
            member: Some(key(4)),
            step: 12,
            ..Report::default()
        };
        assert_eq!(c.open_report(&c.seal_report(&report)), Ok(report));
        let done = Completion {
            step: 99,
            digest: [1, 2],
        };
        assert_eq!(
            c.open(key(2), &c.seal_completed(done)),
            Ok(Control::Completed(done))
        );
        assert_eq!(c.open_report(&packet), Err(DropReason::Malformed));
    }

    #[test]
    fn another_secret_cannot_speak() {
        let packet = codec(b"a stranger's secret").seal(key(1), key(2), &propose());
        assert_eq!(
            codec(b"0123456789abcdef").open(key(2), &packet),
            Err(DropReason::BadMac)
        );
    }

    proptest! {
        #[test]
        fn garbage_is_rejected_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert!(codec(b"0123456789abcdef").open(key(2), &bytes).is_err());
        }
    }
}
