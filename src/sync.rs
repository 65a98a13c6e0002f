//! Atomics used in shared memory, swapped for `loom`'s model-checked atomics under `cfg(loom)`.
//!
//! Everything that the ring and signal protocols touch concurrently goes through this module,
//! so that the same algorithm runs on real shared memory and inside a loom model.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64};

/// The mutex of the ring's shared hold bookkeeping (process-local, never in shared memory).
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

pub(crate) use std::sync::atomic::Ordering;
