//! # shmex
//!
//! Move tasks, results and multi-gigabyte tensors between two processes on one host through a
//! shared-memory segment: two single-producer single-consumer byte rings (one per direction)
//! with futex wake-ups, and a control block with per-side pid, state, restart epoch and
//! heartbeat, so a dead or restarted peer is detected.
//!
//! Layers, lowest first (each knows nothing of the ones above it):
//! - [`sys`]: the only module that calls the OS (shm, mmap, futex, OFD locks);
//! - [`layout`]: every `#[repr(C)]` struct that lives in shared memory;
//! - [`segment`]: named segments (create, open, reclaim, unlink) and heap-backed ones for tests;
//! - [`control`]: the init handshake, side attach, heartbeats and liveness verdicts;
//! - [`signal`]: wait/notify on a shared futex word, spinning first;
//! - [`ring`]: the SPSC byte ring with write and read grants;
//! - [`stream`]: moving a buffer larger than the ring while the receiver drains it;
//! - [`frame`]: DXO messages with named tensors, loans and in-place views, fragmentation;
//! - [`link`]: a bidirectional link between the exchanger and the agent;
//! - [`protocol`]: FLARE's task protocol over a link: [`protocol::Exchanger`] and
//!   [`protocol::Agent`];
//! - [`inspect`]: reading, judging and cleaning up segments from outside (`shmex list`,
//!   `inspect`, `clean`);
//!
//! The `shmex` command (`shmex demo`, `bench`, `list`, `inspect`, `clean`) and its comparison
//! runner live in the workspace member `cli/`, test helpers in `test-support/`.
// Lints: `[workspace.lints]` in the root `Cargo.toml`.

#[cfg(not(loom))]
pub mod error;
pub mod layout;
pub mod ring;
pub mod signal;
pub mod stream;
pub(crate) mod sync;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(not(loom))]
pub mod control;
#[cfg(not(loom))]
pub mod frame;
#[cfg(not(loom))]
pub mod inspect;
#[cfg(not(loom))]
pub mod link;
#[cfg(not(loom))]
pub mod protocol;
#[cfg(not(loom))]
pub mod segment;
#[cfg(not(loom))]
pub mod sys;
