//! The elastic group: turns a SWIM view into agreed, numbered epochs.
//!
//! [`agreement::Agreement`] is the sans-IO epoch-agreement state machine (inputs: the local
//! membership view, messages, ticks; outputs: messages to send and events such as an installed
//! view; views list members by launch rank, see its "Rank order"). [`member`] names members
//! ([`member::MemberKey`], oldest first) and what they advertise ([`member::Advert`]);
//! [`control`] seals agreement messages with the job key. [`checkpoint`] is the durable on-disk
//! fallback for committed state. [`sampler`] decides which sample indices each step reads, so
//! that a pass over the data is read exactly once whatever the world does.

#![warn(missing_docs)]

mod acceptor;
pub mod agreement;
pub mod checkpoint;
pub mod config;
pub mod control;
pub mod device;
mod driver;
pub mod error;
pub mod failpoint;
mod group;
pub mod lifecycle;
pub mod member;
pub mod mesh;
pub mod plane;
pub mod progress;
mod report;
mod rtt;
pub mod sampler;
pub mod sim;
mod state;
pub mod straggler;

pub use config::GroupConfig;
pub use driver::{GroupView, Published};
pub use error::GroupError;
pub use group::Group;
pub use report::FaultEvent;
pub use state::Committed;
