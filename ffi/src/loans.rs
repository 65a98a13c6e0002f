//! Loans: a result (agent) or a task (exchanger) written in place in shared memory. C gets
//! a handle and, per tensor, a pointer into the ring; committing or executing the loan sends
//! it, abandoning it sends nothing.
//!
//! The tensor pointers are taken once, when the loan is made (the loan is ours alone then),
//! and kept in the handle object: handing one out later touches neither the loan nor the
//! ring, so C may write one tensor in a thread while another thread asks for the next.

use std::ffi::{c_char, c_void};
use std::sync::{Mutex, PoisonError};

use shmex::frame::{LoanSpec, ViewError};
use shmex::protocol::{ResultLoan, TaskLoan};

use crate::agent::AGENTS;
use crate::args::{loan_spec_arg, read_handle, read_handle_by_name, write_optional, Out};
use crate::exchanger::{abort_arg, reply_object, task_args, TaskArgs};
use crate::handles::Registry;
use crate::received::{nul_terminated, REPLIES};
use crate::status::{guard, shmex_status, Failure};
use crate::types::{
    dtype_to_c, rc_from_c, shmex_abort, shmex_agent, shmex_exchanger, shmex_headers,
    shmex_loan_spec, shmex_reply, shmex_result_loan, shmex_task_loan, shmex_tensor_mut,
};

static RESULT_LOANS: Registry<LoanObject<ResultLoan>> = Registry::new("shmex_result_loan");
static TASK_LOANS: Registry<LoanObject<TaskLoan>> = Registry::new("shmex_task_loan");

/// The two kinds of loan, seen alike.
trait Lent {
    fn tensor_bytes_mut(&mut self, index: usize) -> Result<&mut [u8], ViewError>;
}

impl Lent for ResultLoan {
    fn tensor_bytes_mut(&mut self, index: usize) -> Result<&mut [u8], ViewError> {
        ResultLoan::tensor_bytes_mut(self, index)
    }
}

impl Lent for TaskLoan {
    fn tensor_bytes_mut(&mut self, index: usize) -> Result<&mut [u8], ViewError> {
        TaskLoan::tensor_bytes_mut(self, index)
    }
}

/// Where a loaned tensor's bytes lie in the ring.
struct RingBytes {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the pointer addresses ring memory reserved for the loan that owns this value; Rust
// never reads or writes through it (it is only handed to C), so moving or sharing the value
// between threads shares no Rust-visible state.
unsafe impl Send for RingBytes {}
// SAFETY: as for `Send`: `&RingBytes` gives only the address and length.
unsafe impl Sync for RingBytes {}

/// One loaned tensor as C sees it.
struct LoanedTensor {
    name: Vec<u8>,
    dtype: u32,
    shape: Vec<u64>,
    bytes: RingBytes,
}

/// What a loan handle holds: the loan (`None` once committed, executed or abandoned) and its
/// tensors.
struct LoanObject<L> {
    loan: Mutex<Option<L>>,
    tensors: Vec<LoanedTensor>,
}

impl<L: Lent> LoanObject<L> {
    fn new(mut loan: L, spec: &LoanSpec) -> Result<LoanObject<L>, Failure> {
        let mut tensors = Vec::with_capacity(spec.tensors.len());
        // The ring's tensor table keeps the spec's order.
        for (index, (name, dtype, shape)) in spec.tensors.iter().enumerate() {
            let bytes = loan
                .tensor_bytes_mut(index)
                .map_err(|e| Failure::coded(&e))?;
            tensors.push(LoanedTensor {
                name: nul_terminated(name),
                dtype: dtype_to_c(*dtype) as u32,
                shape: shape.clone(),
                bytes: RingBytes {
                    ptr: bytes.as_mut_ptr(),
                    len: bytes.len(),
                },
            });
        }
        Ok(LoanObject {
            loan: Mutex::new(Some(loan)),
            tensors,
        })
    }

    fn tensor(&self, index: usize) -> Result<shmex_tensor_mut, Failure> {
        let t = self.tensors.get(index).ok_or_else(|| {
            Failure::new(
                shmex_status::SHMEX_NO_SUCH_TENSOR,
                format!("no tensor {index}: the loan has {}", self.tensors.len()),
            )
        })?;
        Ok(shmex_tensor_mut {
            name: t.name.as_ptr().cast::<c_char>(),
            dtype: t.dtype,
            ndim: t.shape.len(),
            shape: t.shape.as_ptr(),
            data: t.bytes.ptr.cast::<c_void>(),
            len: t.bytes.len,
        })
    }

    fn index_of(&self, name: &str) -> Result<usize, Failure> {
        self.tensors
            .iter()
            .position(|t| t.name.strip_suffix(&[0]) == Some(name.as_bytes()))
            .ok_or_else(|| {
                Failure::new(
                    shmex_status::SHMEX_NO_SUCH_TENSOR,
                    format!("no tensor of the loan is named {name:?}"),
                )
            })
    }

    /// Takes the loan out to end it (it is `None` only if another thread ended it at once).
    fn take(&self) -> Result<L, Failure> {
        self.loan
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| {
                Failure::new(
                    shmex_status::SHMEX_INVALID_HANDLE,
                    "the loan was committed or abandoned already",
                )
            })
    }
}

// ---------------------------------------------------------------------------------------
// The agent's result loans.

/// Lends ring space for the result of the fetched task, laid out by `spec` (data kind,
/// meta, and the name, dtype and shape of each tensor): write the tensors in place through
/// `shmex_result_loan_tensor`, then send them with `shmex_result_loan_commit` (no copy on
/// this side), or `shmex_result_loan_abandon` the loan (nothing is sent; the task can still
/// be answered, by copy or by another loan).
///
/// The result must fit in one record of the result ring (`result_ring_capacity`); waits for
/// ring space while the exchanger drains the ring (an abort, the exchanger's loss or
/// `shmex_agent_close` end that wait). On `SHMEX_OK`, `*out_loan` is a new handle; on
/// failure it is NULL and nothing was sent: `SHMEX_CALL_STATE` when there is nothing to
/// answer (no fetched task, it was aborted or lost, or it is answered already) or another
/// loan of this agent is outstanding; `SHMEX_CLOSED` once the agent is closed;
/// `SHMEX_INVALID_DATA` / `SHMEX_INVALID_ARGUMENT` / `SHMEX_NULL_POINTER` for a bad spec;
/// `SHMEX_TOO_LARGE` when the result cannot fit in the ring. (A trainer that starts without
/// a task may, once, answer with an empty task id, as with `shmex_agent_submit_result`.)
///
/// While the loan is out, the agent keeps receiving (abort, bye, the next task); other
/// submissions of this agent fail with `SHMEX_CALL_STATE`. Thread-safe.
///
/// # Safety
/// `spec` is NULL or points to a valid `shmex_loan_spec` whose pointers follow its contract
/// during the call; `out_loan` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn shmex_agent_loan_result(
    agent: *const shmex_agent,
    spec: *const shmex_loan_spec,
    out_loan: *mut *mut shmex_result_loan,
) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(out_loan, "out_loan") }?;
        out.write(std::ptr::null_mut());
        let agent = AGENTS.get(agent.addr())?;
        // SAFETY: the caller's contract.
        let spec = unsafe { loan_spec_arg(spec) }?;
        let loan = agent.loan_result(&spec).map_err(|e| Failure::coded(&e))?;
        // On failure the loan is dropped here: abandoned, the task stays answerable.
        let object = LoanObject::new(loan, &spec)?;
        out.write(std::ptr::without_provenance_mut(
            RESULT_LOANS.insert(object),
        ));
        Ok(())
    })
}

/// The number of tensors of the loan. Thread-safe.
///
/// # Safety
/// `out_count` is NULL or valid for writing a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn shmex_result_loan_tensor_count(
    loan: *const shmex_result_loan,
    out_count: *mut usize,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&RESULT_LOANS, loan.addr(), out_count, "out_count", |o| {
            Ok(o.tensors.len())
        })
    }
}

/// Describes tensor `index` (0-based, the spec's order) of the loan in `*out_tensor`: its
/// bytes in shared memory, to be written in place. Every pointer in it stays valid until the
/// loan is committed or abandoned. `SHMEX_NO_SUCH_TENSOR` when `index` is out of range.
/// Thread-safe (threads may write different tensors of one loan at once), but not to be
/// called while another thread commits or abandons the loan.
///
/// # Safety
/// `out_tensor` is NULL or valid for writing a `shmex_tensor_mut`.
#[no_mangle]
pub unsafe extern "C" fn shmex_result_loan_tensor(
    loan: *const shmex_result_loan,
    index: usize,
    out_tensor: *mut shmex_tensor_mut,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&RESULT_LOANS, loan.addr(), out_tensor, "out_tensor", |o| {
            o.tensor(index)
        })
    }
}

/// As `shmex_result_loan_tensor`, for the tensor named `name`. Thread-safe.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `out_tensor` is NULL or valid for writing a
/// `shmex_tensor_mut`.
#[no_mangle]
pub unsafe extern "C" fn shmex_result_loan_tensor_by_name(
    loan: *const shmex_result_loan,
    name: *const c_char,
    out_tensor: *mut shmex_tensor_mut,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle_by_name(
            &RESULT_LOANS,
            loan.addr(),
            name,
            out_tensor,
            "out_tensor",
            |o, name| o.tensor(o.index_of(name)?),
        )
    }
}

/// Sends the loaned result with FLARE return code `rc` (a `shmex_rc`) and waits for the
/// exchanger's answer, as `shmex_agent_submit_result`: `*out_accepted` (may be NULL) tells
/// whether it accepted the result (false, with nothing sent, if the task was aborted or the
/// exchanger lost while the loan was out).
///
/// Ends the loan: once the arguments are checked (a bad `rc` is `SHMEX_INVALID_ARGUMENT`, a
/// NULL loan `SHMEX_NULL_POINTER`, and the loan stays), the handle is invalid whatever the
/// outcome, and so is every pointer read from it; a second commit, or any use after, is
/// `SHMEX_INVALID_HANDLE`. `SHMEX_CLOSED` if the agent was closed (nothing was sent).
/// Thread-safe, but no other thread may still use the loan's tensors.
///
/// # Safety
/// `out_accepted` is NULL or valid for writing a `bool`.
#[no_mangle]
pub unsafe extern "C" fn shmex_result_loan_commit(
    loan: *mut shmex_result_loan,
    rc: u32,
    out_accepted: *mut bool,
) -> shmex_status {
    guard(|| {
        if loan.is_null() {
            return Err(Failure::null("the shmex_result_loan handle"));
        }
        let rc = rc_from_c(rc)?;
        if !out_accepted.is_aligned() {
            return Err(Failure::invalid("out_accepted is not aligned for its type"));
        }
        let lent = RESULT_LOANS.remove(loan.addr())?.take()?;
        let accepted = lent.commit(rc).map_err(|e| Failure::coded(&e))?;
        // SAFETY: the caller's contract.
        unsafe { write_optional(out_accepted, accepted, "out_accepted") }
    })
}

/// Abandons the loan: nothing of it is sent, and the task can still be answered (by copy or
/// by another loan). The handle and every pointer read from it become invalid. NULL does
/// nothing (`SHMEX_OK`); a loan committed or abandoned already is `SHMEX_INVALID_HANDLE`.
/// Thread-safe, but no other thread may still use the loan's tensors.
#[no_mangle]
pub extern "C" fn shmex_result_loan_abandon(loan: *mut shmex_result_loan) -> shmex_status {
    guard(|| {
        if !loan.is_null() {
            drop(RESULT_LOANS.remove(loan.addr())?.take()?);
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// The exchanger's task loans.

/// Lends ring space for task `task_name` with `headers`, laid out by `spec`: write its
/// tensors in place through `shmex_task_loan_tensor`, then send it and wait for the reply
/// with `shmex_task_loan_execute` (no copy on this side), or `shmex_task_loan_abandon` it.
/// The task's meta is the spec's plus `data_kind` and the round headers, as
/// `shmex_exchanger_execute`; it must fit in one record of the task ring
/// (`task_ring_capacity`).
///
/// The task is in flight from this call on (an execute or another loan meanwhile gets
/// `SHMEX_RC_BAD_REQUEST_DATA` / `SHMEX_CALL_STATE`); it reaches the agent only at execute,
/// so a loan may be made and filled before an agent attaches. Waits for ring space only
/// while the ring is still full of messages the agent has not read; `abort` (may be NULL)
/// and `shmex_exchanger_close` end that wait.
///
/// On `SHMEX_OK`, `*out_loan` is a new handle; on failure it is NULL, nothing was sent and
/// no task is in flight: `SHMEX_CALL_STATE` (a task is in flight already),
/// `SHMEX_INVALID_DATA` (an empty task id, a spec without tensors, an invalid spec),
/// `SHMEX_TOO_LARGE` (it cannot fit in the ring), `SHMEX_CANCELLED` (`abort` was set while
/// waiting), `SHMEX_CLOSED` (the exchanger is stopped or closed), `SHMEX_NULL_POINTER`,
/// `SHMEX_INVALID_ARGUMENT`, `SHMEX_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
/// `task_name` is NULL or a NUL-terminated string; `headers` and `spec` are NULL or point to
/// valid structs whose pointers follow their contracts during the call; `out_loan` is NULL
/// or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn shmex_exchanger_loan_task(
    exchanger: *const shmex_exchanger,
    task_name: *const c_char,
    headers: *const shmex_headers,
    spec: *const shmex_loan_spec,
    abort: *const shmex_abort,
    out_loan: *mut *mut shmex_task_loan,
) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let args = unsafe { task_args(out_loan, "out_loan", exchanger, task_name, headers) }?;
        let TaskArgs {
            out,
            exchanger,
            task_name,
            headers,
        } = args;
        // SAFETY: the caller's contract.
        let spec = unsafe { loan_spec_arg(spec) }?;
        let signal = abort_arg(abort)?;
        let loan = exchanger
            .loan_task(task_name, &spec, &headers, &signal)
            .map_err(|e| Failure::coded(&e))?;
        // On failure the loan is dropped here: abandoned, no task in flight.
        let object = LoanObject::new(loan, &spec)?;
        out.write(std::ptr::without_provenance_mut(TASK_LOANS.insert(object)));
        Ok(())
    })
}

/// The number of tensors of the loan. Thread-safe.
///
/// # Safety
/// `out_count` is NULL or valid for writing a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn shmex_task_loan_tensor_count(
    loan: *const shmex_task_loan,
    out_count: *mut usize,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&TASK_LOANS, loan.addr(), out_count, "out_count", |o| {
            Ok(o.tensors.len())
        })
    }
}

/// Describes tensor `index` (0-based, the spec's order) of the loan in `*out_tensor`: its
/// bytes in shared memory, to be written in place; every pointer in it stays valid until the
/// loan is executed or abandoned. `SHMEX_NO_SUCH_TENSOR` when `index` is out of range.
/// Thread-safe, but not to be called while another thread executes or abandons the loan.
///
/// # Safety
/// `out_tensor` is NULL or valid for writing a `shmex_tensor_mut`.
#[no_mangle]
pub unsafe extern "C" fn shmex_task_loan_tensor(
    loan: *const shmex_task_loan,
    index: usize,
    out_tensor: *mut shmex_tensor_mut,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle(&TASK_LOANS, loan.addr(), out_tensor, "out_tensor", |o| {
            o.tensor(index)
        })
    }
}

/// As `shmex_task_loan_tensor`, for the tensor named `name`. Thread-safe.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; `out_tensor` is NULL or valid for writing a
/// `shmex_tensor_mut`.
#[no_mangle]
pub unsafe extern "C" fn shmex_task_loan_tensor_by_name(
    loan: *const shmex_task_loan,
    name: *const c_char,
    out_tensor: *mut shmex_tensor_mut,
) -> shmex_status {
    // SAFETY: the caller's contract.
    unsafe {
        read_handle_by_name(
            &TASK_LOANS,
            loan.addr(),
            name,
            out_tensor,
            "out_tensor",
            |o, name| o.tensor(o.index_of(name)?),
        )
    }
}

/// Sends the loaned task and waits for its reply, as `shmex_exchanger_execute` (same reply
/// return codes; waits for an agent first if none is attached). `abort` may be NULL. If
/// `abort` is set or the exchanger closes before the task is sent, nothing is sent and the
/// reply is `SHMEX_RC_TASK_ABORTED`. On `SHMEX_OK`, `*out_reply` is a new reply handle (free
/// it with `shmex_reply_free`).
///
/// Ends the loan: once the arguments are checked (`SHMEX_NULL_POINTER` for a NULL loan or
/// `out_reply`, `SHMEX_INVALID_HANDLE` for a dead `abort`; the loan stays), the handle is
/// invalid whatever the outcome, and so is every pointer read from it; a second execute, or
/// any use after, is `SHMEX_INVALID_HANDLE`. Thread-safe, but no other thread may still use
/// the loan's tensors.
///
/// # Safety
/// `out_reply` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn shmex_task_loan_execute(
    loan: *mut shmex_task_loan,
    abort: *const shmex_abort,
    out_reply: *mut *mut shmex_reply,
) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(out_reply, "out_reply") }?;
        out.write(std::ptr::null_mut());
        if loan.is_null() {
            return Err(Failure::null("the shmex_task_loan handle"));
        }
        let signal = abort_arg(abort)?;
        let lent = TASK_LOANS.remove(loan.addr())?.take()?;
        let object = reply_object(lent.execute(&signal))?;
        out.write(std::ptr::without_provenance_mut(REPLIES.insert(object)));
        Ok(())
    })
}

/// Abandons the loan: nothing of the task is sent and no task is in flight any more. The
/// handle and every pointer read from it become invalid. NULL does nothing (`SHMEX_OK`); a
/// loan executed or abandoned already is `SHMEX_INVALID_HANDLE`. Thread-safe, but no other
/// thread may still use the loan's tensors.
#[no_mangle]
pub extern "C" fn shmex_task_loan_abandon(loan: *mut shmex_task_loan) -> shmex_status {
    guard(|| {
        if !loan.is_null() {
            drop(TASK_LOANS.remove(loan.addr())?.take()?);
        }
        Ok(())
    })
}
