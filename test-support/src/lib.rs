//! Helpers shared by shmex's tests, benchmarks and comparison harness; not part of the
//! library.
//!
//! - [`pattern`]: deterministic data to send and the checksums that verify it;
//! - [`process`]: child processes started by a test or benchmark, read line by line with
//!   timeouts and killed on any error, and the patient wait for a peer's progress;
//! - [`load`]: the machine's load average, for reports and timeout messages.

pub mod load;
pub mod pattern;
pub mod process;
