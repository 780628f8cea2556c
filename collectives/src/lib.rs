//! Collectives for ringrun: allreduce, broadcast, allgather, reduce-scatter and barrier over
//! pluggable transports.
//!
//! A [`Communicator`] runs collectives on one epoch's fixed list of ranks over a [`Transport`](transport::Transport)
//! (in-memory, TCP or QUIC). It knows nothing of membership: when a peer dies, the operation in
//! flight fails with a typed [`CollectiveError`] and the caller (the elastic runtime) builds a
//! new communicator for the next epoch. Every operation carries a deadline and a cancellation
//! handle ([`Ctl`]), so nothing waits forever.
//!
//! Algorithms (`algo`): a pipelined ring for large buffers, recursive doubling for small ones,
//! and an opt-in deterministic mode whose result depends only on the ranks' inputs.
//! Frames carry the operation's signature (`frame`), so ranks that disagree about a call get
//! [`CollectiveError::Mismatch`] rather than wrong data.
//!
//! Device (GPU) buffers go through [`device`]: the same contract over a backend such as NCCL
//! (module `nccl`, feature `nccl`), or staged through host memory over these transports.
//!
//! Operations are `async` and are meant to run on a current-thread tokio runtime owned by the
//! calling thread (`block_on`): the thread that calls the collective does its I/O, with no hand-off
//! to another thread.

#![warn(missing_docs)]

mod algo;
mod cancel;
mod comm;
pub mod copy;
pub mod device;
mod dtype;
mod error;
pub mod exec;
pub mod frame;
pub mod fusion;
#[doc(hidden)]
pub mod fuzzing;
mod hier;
pub mod links;
mod par;
// Raw NCCL and CUDA calls, each with a SAFETY note (with `copy` and `transport::shm`, the only
// modules of this crate with `unsafe`).
#[cfg(feature = "nccl")]
#[allow(unsafe_code)]
pub mod nccl;
pub mod reduce;
pub mod schedule;
mod spin;
pub mod testdata;
pub mod transport;

pub use cancel::Cancel;
pub use comm::{AlgoChoice, Bufs, CommConfig, Communicator, Ctl};
pub use dtype::{DType, Element, ReduceOp};
pub use error::{CollectiveError, Result};
pub use frame::Algo;
pub use fusion::TensorMut;
pub use half::{bf16, f16};
pub use hier::Hierarchical;
pub use links::{LayoutComm, Links};
