//! # shmex
//!
//! Move tasks, results and multi-gigabyte tensors between two processes on one host through a
//! shared-memory segment: two single-producer single-consumer byte rings (one per direction)
//! with futex wake-ups, and a control block with per-side pid, state, restart epoch and
//! heartbeat, so a dead or restarted peer is detected.
//!
//! Most users need only [`protocol`]: an [`protocol::Exchanger`] (the FL-client side, which
//! creates the link and hands out tasks) and an [`protocol::Agent`] (the trainer side, which
//! attaches, fetches tasks and submits results), with [`frame::Dxo`] for the data and
//! [`error::Coded`] for the kind of any error.
//!
//! Layers, lowest first; each uses only the ones before it:
//! - `sys` (internal): the only module that calls the OS (shm, mmap, futex, OFD locks);
//! - `layout` (internal): every `#[repr(C)]` struct that lives in shared memory;
//! - [`segment`]: named segments (create, open, reclaim, unlink), validated names, and
//!   heap-backed segments for tests;
//! - [`signal`]: wait/notify on a shared futex word, spinning first;
//! - `control` (internal): the init handshake, side attach, heartbeats and liveness verdicts;
//! - [`ring`]: the SPSC byte ring with write and read grants;
//! - [`stream`]: a buffer larger than the ring, copied through it in chunks while the receiver
//!   drains it;
//! - [`frame`]: the wire format: DXO messages with named tensors, loans and in-place views,
//!   fragmentation of messages larger than the ring;
//! - [`link`]: the exchanger/agent pair of rings and roles over one segment;
//! - [`protocol`]: FLARE's task protocol (`IPCExchanger`/`IPCAgent`) over a link;
//! - [`inspect`]: read-only decoding and checking of a segment for tools (`shmex list`,
//!   `inspect`, `clean`);
//! - [`error`]: a stable code for every error of every layer, for the bindings.
//!
//! The `shmex` command (`shmex demo`, `bench`, `list`, `inspect`, `clean`) and its comparison
//! runner live in the workspace member `cli/`, test helpers in `test-support/`.
// Lints: `[workspace.lints]` in the root `Cargo.toml`.

// Internals: the OS calls, the structs that live in shared memory and the control block.
// They are not public API; the `internals` feature (for shmex's own tests and tools, which
// corrupt segments on purpose) makes them reachable, hidden from the docs.
#[cfg(all(not(loom), feature = "internals"))]
#[doc(hidden)]
pub mod control;
#[cfg(all(not(loom), not(feature = "internals")))]
#[allow(dead_code, unreachable_pub)]
pub(crate) mod control;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod layout;
#[cfg(not(feature = "internals"))]
#[allow(dead_code, unreachable_pub)]
pub(crate) mod layout;
#[cfg(all(not(loom), feature = "internals"))]
#[doc(hidden)]
pub mod sys;
#[cfg(all(not(loom), not(feature = "internals")))]
#[allow(dead_code, unreachable_pub)]
pub(crate) mod sys;

#[cfg(not(loom))]
pub mod error;
pub mod ring;
pub mod signal;
pub mod stream;
pub(crate) mod sync;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

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
