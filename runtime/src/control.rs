//! Agreement messages on the wire: postcard inside a datagram sealed with the job key.
//!
//! Each message names its sender and its addressee, so a message meant for an older life of a
//! member (same address, earlier incarnation) is dropped. Decoding never panics: a datagram
//! from outside the job, truncated, or garbage is rejected with a reason and counted by the
//! caller. Replays inside the job are harmless by construction: agreement messages carry epoch
//! numbers and the state machine ignores stale ones.

use ringrun_membership::{Authenticator, DropReason, wire::PacketKind};
use serde::{Deserialize, Serialize};

use crate::{
    agreement::Msg,
    member::{Endpoints, MemberKey},
};

/// An agreement message between two members.
pub type ControlMsg = Msg<MemberKey, Endpoints>;

#[derive(Serialize, Deserialize)]
struct Envelope {
    from: MemberKey,
    to: MemberKey,
    msg: ControlMsg,
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
        let env = EnvelopeRef { from, to, msg };
        let payload = postcard::to_allocvec(&env).expect("agreement messages always encode");
        let mut out = Vec::new();
        self.auth.seal(PacketKind::Control, &payload, &mut out);
        out
    }

    /// Opens a datagram addressed to `me`: `(sender, message)`.
    pub fn open(
        &self,
        me: MemberKey,
        packet: &[u8],
    ) -> Result<(MemberKey, ControlMsg), DropReason> {
        let (kind, payload) = self.auth.open(packet)?;
        if kind != PacketKind::Control {
            return Err(DropReason::BadKind);
        }
        let env: Envelope = postcard::from_bytes(payload).map_err(|_| DropReason::Malformed)?;
        match env.to == me {
            true => Ok((env.from, env.msg)),
            false => Err(DropReason::Malformed),
        }
    }
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    from: MemberKey,
    to: MemberKey,
    msg: &'a ControlMsg,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use ringrun_membership::JobId;

    use super::*;
    use crate::agreement::View;

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
        let e = Endpoints {
            control: "127.0.0.1:1".parse().unwrap(),
            tcp: "127.0.0.1:2".parse().unwrap(),
        };
        Msg::Propose(View {
            epoch: 3,
            members: vec![(key(1), e), (key(2), e)],
        })
    }

    #[test]
    fn round_trips_and_checks_the_addressee() {
        let c = codec(b"0123456789abcdef");
        let packet = c.seal(key(1), key(2), &propose());
        assert_eq!(c.open(key(2), &packet), Ok((key(1), propose())));
        assert_eq!(c.open(key(3), &packet), Err(DropReason::Malformed));
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
