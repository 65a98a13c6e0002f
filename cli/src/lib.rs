//! The machinery behind the `shmex` command that its comparison runner
//! (`examples/compare.rs`) shares: the transport comparison harness and the demo's model
//! exchange. Not part of the `shmex` library.

pub mod harness;
pub mod model;
