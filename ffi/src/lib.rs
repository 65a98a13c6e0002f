//! `libshmex`: the C ABI of shmex, over `shmex::protocol` (the exchanger and the agent),
//! never below it. `include/shmex.h` is generated from this crate by cbindgen
//! (`cbindgen.toml`) and committed; `include/shmex.hpp` (C++17) and `include/shmex.f90`
//! (Fortran 2008) wrap it.
//!
//! Conventions of every function:
//! - it returns a `shmex_status` (`SHMEX_OK` or the kind of failure) and writes its results
//!   through out-pointers; `shmex_last_error_message()` gives the failure's text;
//! - no panic crosses the boundary: every body runs under `status::guard`, which turns a
//!   panic into `SHMEX_PANIC`;
//! - every pointer is checked (NULL, alignment, byte sizes that overflow) before use;
//! - handles are numbers in a registry (`handles.rs`), so a freed or foreign handle is
//!   `SHMEX_INVALID_HANDLE`, not undefined behaviour;
//! - enumerations from C are `uint32_t` decoded with a check (`types.rs`).
//!
//! Loans (`loans.rs`) bind the protocol's: `shmex_agent_loan_result` over
//! `Agent::loan_result`, `shmex_exchanger_loan_task` over `Exchanger::loan_task`; C writes
//! tensors in place through pointers into the ring.

mod agent;
mod args;
mod config;
mod exchanger;
mod handles;
mod loans;
mod received;
mod status;
mod types;

pub use agent::*;
pub use exchanger::*;
pub use loans::*;
pub use received::{
    shmex_reply_data_kind, shmex_reply_free, shmex_reply_is_in_place, shmex_reply_meta,
    shmex_reply_rc, shmex_reply_tensor, shmex_reply_tensor_by_name, shmex_reply_tensor_count,
    shmex_task_data_kind, shmex_task_free, shmex_task_id, shmex_task_is_in_place, shmex_task_meta,
    shmex_task_name, shmex_task_tensor, shmex_task_tensor_by_name, shmex_task_tensor_count,
};
pub use status::{shmex_last_error_message, shmex_status, shmex_status_name};
pub use types::*;

use std::ffi::c_char;

use args::Out;
use status::guard;

/// The library's version, e.g. `"0.1.0"` (static: never freed, always valid). Thread-safe.
#[no_mangle]
pub extern "C" fn shmex_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The size in bytes of one element of `dtype` (a `shmex_dtype`); `SHMEX_INVALID_ARGUMENT`
/// for a number that is no dtype. Thread-safe.
///
/// # Safety
/// `out_size` is NULL or valid for writing a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn shmex_dtype_size(dtype: u32, out_size: *mut usize) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(out_size, "out_size") }?;
        out.write(types::dtype_from_c(dtype)?.size());
        Ok(())
    })
}
