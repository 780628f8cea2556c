//! Helpers shared by the workspace's multi-process tests. Each test binary uses a part.
#![allow(dead_code, unreachable_pub)]

pub mod job;
pub mod launched;
pub mod netns;
pub mod ports;
pub mod shm;
