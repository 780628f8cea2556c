//! Read-only view collection for `ringrun status`.
//!
//! The observer does not join the SWIM group: a join would make every member report it `Up`
//! and then `Left`, and the runtime would re-form its ring twice for a status query. Instead it
//! sends an authenticated view request (same job secret and MAC as the members) to the seeds
//! and collects the first complete answer: every member the answering seed knows, with id,
//! address, state, restart and SWIM incarnations, metadata and time in state. Then it drops its
//! socket; members keep no state about it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::error::MembershipError;
use crate::identity::MemberId;
use crate::view::{MemberInfo, ViewChunk};
use crate::wire::{Authenticator, JobId, PacketKind};

/// What the observer needs.
#[derive(Clone, Debug)]
pub struct ObserverConfig {
    /// Members to ask.
    pub seeds: Vec<SocketAddr>,
    /// Job id.
    pub job: JobId,
    /// Job secret.
    pub secret: Vec<u8>,
    /// Local address to bind (`127.0.0.1:0` or `0.0.0.0:0`).
    pub bind: SocketAddr,
    /// Give up after this long.
    pub timeout: Duration,
}

/// One seed's view of the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedView {
    /// The member that answered.
    pub responder: MemberId,
    /// Every member it knows, itself first.
    pub members: Vec<MemberInfo>,
    /// What the responder's upper layer published (see [`crate::Node::set_annotation`]).
    pub annotation: Vec<u8>,
}

/// Asks the seeds for their view; returns the first complete answer.
///
/// Requests are re-sent to every seed four times within `timeout`. Packets that fail
/// authentication or decoding are ignored.
pub async fn observe(config: &ObserverConfig) -> Result<ObservedView, MembershipError> {
    let auth = Authenticator::new(config.job, &config.secret)?;
    let socket = UdpSocket::bind(config.bind).await?;
    let request = crate::driver::random_seed();
    let payload =
        postcard::to_allocvec(&request).map_err(|e| MembershipError::Foca(e.to_string()))?;
    let mut sealed = Vec::new();
    auth.seal(PacketKind::ViewRequest, &payload, &mut sealed);
    let deadline = Instant::now() + config.timeout;
    let resend = config.timeout / 4;
    let mut partial: BTreeMap<SocketAddr, BTreeMap<u16, ViewChunk>> = BTreeMap::new();
    let mut buf = vec![0u8; 65_536];
    let mut next_send = Instant::now();
    loop {
        if Instant::now() >= next_send {
            for seed in &config.seeds {
                if let Err(err) = socket.send_to(&sealed, seed).await {
                    tracing::debug!(%seed, %err, "view request not sent");
                }
            }
            next_send = Instant::now() + resend;
        }
        let wake = next_send.min(deadline);
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            () = tokio::time::sleep_until(wake) => {
                if Instant::now() >= deadline {
                    return Err(MembershipError::NoAnswer(config.timeout));
                }
                continue;
            }
        };
        let Ok((len, from)) = received else {
            continue;
        };
        let Ok((PacketKind::ViewReply, body)) = auth.open(&buf[..len]) else {
            continue;
        };
        let Ok(chunk) = postcard::from_bytes::<ViewChunk>(body) else {
            continue;
        };
        if chunk.request != request || chunk.parts == 0 || chunk.part >= chunk.parts {
            continue;
        }
        let parts = chunk.parts;
        let chunks = partial.entry(from).or_default();
        chunks.insert(chunk.part, chunk);
        if chunks.len() == usize::from(parts) {
            let chunks = partial.remove(&from).unwrap_or_default();
            let mut responder = None;
            let (mut members, mut annotation) = (Vec::new(), Vec::new());
            for (_, chunk) in chunks {
                responder.get_or_insert(chunk.responder);
                members.extend(chunk.members);
                if chunk.part == 0 {
                    annotation = chunk.annotation;
                }
            }
            if let Some(responder) = responder {
                return Ok(ObservedView {
                    responder,
                    members,
                    annotation,
                });
            }
        }
    }
}
