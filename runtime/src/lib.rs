//! The elastic group: turns a SWIM view into agreed, numbered epochs.
//!
//! [`agreement::Agreement`] is the sans-IO epoch-agreement state machine (inputs: the local
//! membership view, messages, ticks; outputs: messages to send and events such as an installed
//! view). [`checkpoint`] is the durable on-disk fallback for committed state. The tokio driver, state replication and the `Group` API come with the rest of the
//! elastic runtime issue.

#![warn(missing_docs)]

pub mod agreement;
pub mod checkpoint;
