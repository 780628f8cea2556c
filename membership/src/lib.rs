//! Authenticated SWIM membership for ringrun jobs, built on [`foca`].
//!
//! # Layout
//!
//! - [`identity`]: [`MemberId`] (node id, address, restart incarnation, rejoin counter,
//!   metadata), foca's `Identity`.
//! - [`wire`]: datagram framing with an HMAC-SHA256 tag keyed by the job secret and job id.
//! - [`config`]: [`MembershipConfig`], the tuned LAN defaults and the detection bound.
//! - [`node`]: [`Node`], the sans-IO core (foca + authentication + timers + events + view).
//! - [`driver`]: the tokio UDP shell ([`Membership`]), the only module with sockets, clocks and
//!   tasks.
//! - [`observer`]: read-only view collection for `ringrun status`.
//! - `sim` (with `cfg(test)` or the `sim` cargo feature): a seeded deterministic simulator
//!   with an in-memory network, a virtual clock and invariant checks. It is a crate module, not
//!   a separate crate, so it drives the real [`Node`] without exposing internals; the
//!   integration tests enable it through a dev-dependency on this crate with `features =
//!   ["sim"]`.
//!
//! # Time and randomness
//!
//! The core takes [`Time`] (microseconds since a caller-chosen epoch) on every input and owns a
//! seeded RNG; it never reads a clock or the OS RNG. The driver maps `tokio::time::Instant` to
//! [`Time`] and seeds the node from `ring::rand::SystemRandom`.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
mod departed;
pub mod driver;
pub mod error;
pub mod identity;
pub mod node;
pub mod observer;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod time;
pub mod view;
pub mod wire;

pub use config::MembershipConfig;
pub use driver::{DriverConfig, Membership};
pub use error::MembershipError;
pub use identity::{
    Endpoint, EndpointKind, Incarnation, Life, MAX_IDENTITY_LEN, MemberId, Metadata, NodeId,
};
pub use node::{LocalEvent, MAX_ANNOTATION, MembershipEvent, Node, Stats, Transmit};
pub use observer::{ObserverConfig, observe};
pub use time::Time;
pub use view::{MemberInfo, MemberState, ViewChunk};
pub use wire::{Authenticator, DropReason, JobId, MIN_SECRET_LEN};
