//! The exchanger (FL-client side) and its abort flag.

use std::ffi::c_char;
use std::sync::Arc;

use shmex::protocol::{AbortSignal, Exchanger, ExchangerStatus, Headers, Reply};
use shmex::segment::SegmentName;

use crate::args::{dxo_arg, headers_arg, str_arg, Out};
use crate::config::{default_exchanger_options, exchanger_config};
use crate::handles::Registry;
use crate::received::{Received, ReplyObject, REPLIES};
use crate::status::{guard, shmex_status, Failure};
use crate::types::{
    shmex_abort, shmex_data, shmex_exchanger, shmex_exchanger_options, shmex_exchanger_state,
    shmex_headers, shmex_reply,
};

pub(crate) static EXCHANGERS: Registry<Exchanger> = Registry::new("shmex_exchanger");
pub(crate) static ABORTS: Registry<AbortSignal> = Registry::new("shmex_abort");

/// The segment name of a site and agent id given by C.
///
/// # Safety
/// As `str_arg` for both.
pub(crate) unsafe fn name_arg(
    site: *const c_char,
    agent_id: *const c_char,
) -> Result<SegmentName, Failure> {
    // SAFETY: the caller's contract.
    let site = unsafe { str_arg(site, "site") }?;
    // SAFETY: the caller's contract.
    let agent_id = unsafe { str_arg(agent_id, "agent_id") }?;
    SegmentName::for_agent(site, agent_id).map_err(|e| Failure::coded(&e))
}

/// The handle object of a reply.
pub(crate) fn reply_object(reply: Reply) -> Result<ReplyObject, Failure> {
    Ok(ReplyObject {
        rc: reply.rc,
        data_kind: reply.data_kind,
        received: reply.result.map(Received::new).transpose()?,
    })
}

/// The checked arguments every way of sending a task starts with (see [`task_args`]).
pub(crate) struct TaskArgs<'a, T> {
    pub(crate) out: Out<*mut T>,
    pub(crate) exchanger: Arc<Exchanger>,
    pub(crate) task_name: &'a str,
    pub(crate) headers: Headers,
}

/// What sending a task starts with (`shmex_exchanger_execute`, `shmex_exchanger_loan_task`),
/// checked in this order: the out-pointer `out` (set to NULL at once), the exchanger, the
/// task name and the headers.
///
/// # Safety
/// `out` is NULL or valid for writing a pointer; `task_name` is NULL or a NUL-terminated
/// string valid and unchanged for `'a`; `headers` as for [`headers_arg`].
pub(crate) unsafe fn task_args<'a, T>(
    out: *mut *mut T,
    what: &str,
    exchanger: *const shmex_exchanger,
    task_name: *const c_char,
    headers: *const shmex_headers,
) -> Result<TaskArgs<'a, T>, Failure> {
    // SAFETY: the caller's contract.
    let out = unsafe { Out::new(out, what) }?;
    out.write(std::ptr::null_mut());
    let exchanger = EXCHANGERS.get(exchanger.addr())?;
    // SAFETY: the caller's contract.
    let task_name = unsafe { str_arg(task_name, "task_name") }?;
    // SAFETY: the caller's contract.
    let headers = unsafe { headers_arg(headers) }?;
    Ok(TaskArgs {
        out,
        exchanger,
        task_name,
        headers,
    })
}

/// The signal of an optional abort handle (NULL: one nobody sets).
pub(crate) fn abort_arg(abort: *const shmex_abort) -> Result<AbortSignal, Failure> {
    if abort.is_null() {
        Ok(AbortSignal::new())
    } else {
        Ok(AbortSignal::clone(&*ABORTS.get(abort.addr())?))
    }
}

/// Fills `*out_options` with the defaults (FLARE's `IPCExchanger` defaults). Thread-safe.
///
/// # Safety
/// `out_options` is NULL or valid for writing a `shmex_exchanger_options`.
#[no_mangle]
pub unsafe extern "C" fn shmex_exchanger_options_default(
    out_options: *mut shmex_exchanger_options,
) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(out_options, "out_options") }?;
        out.write(default_exchanger_options());
        Ok(())
    })
}

/// Creates the link of `site` and `agent_id` (the segment `/dev/shm/shmex.<site>.<agent_id>`;
/// `site` may not contain '.') and starts the exchanger; `options` NULL means the defaults.
/// On success `*out_exchanger` is a new handle to free with `shmex_exchanger_free`; on
/// failure it is set to NULL. Thread-safe.
///
/// # Safety
/// `site` and `agent_id` are NULL or NUL-terminated strings; `options` is NULL or points to
/// a `shmex_exchanger_options`; `out_exchanger` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn shmex_exchanger_create(
    site: *const c_char,
    agent_id: *const c_char,
    options: *const shmex_exchanger_options,
    out_exchanger: *mut *mut shmex_exchanger,
) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(out_exchanger, "out_exchanger") }?;
        // A failure leaves NULL behind, not the caller's old value.
        out.write(std::ptr::null_mut());
        // SAFETY: the caller's contract.
        let name = unsafe { name_arg(site, agent_id) }?;
        let options = if options.is_null() {
            default_exchanger_options()
        } else {
            // SAFETY: the caller promises a valid `shmex_exchanger_options` (a plain C struct,
            // copied out here).
            *unsafe { crate::args::ref_arg(options, "options") }?
        };
        let exchanger = Exchanger::create(&name, exchanger_config(&options)?)
            .map_err(|e| Failure::coded(&e))?;
        out.write(std::ptr::without_provenance_mut(
            EXCHANGERS.insert(exchanger),
        ));
        Ok(())
    })
}

/// Sends task `task_name` with `headers` and `data` to the agent and waits for its reply;
/// on `SHMEX_OK`, `*out_reply` is a new reply handle (free it with `shmex_reply_free`) whose
/// return code says how the task ended: `SHMEX_RC_OK` with the result, or
/// `SHMEX_RC_TASK_ABORTED` (aborted through `abort`, or the exchanger closed),
/// `SHMEX_RC_TIMEOUT` (`result_timeout`), `SHMEX_RC_BAD_REQUEST_DATA` (no tensors, or a task
/// already in flight), ... Waits for an agent to attach if none is. Blocks until then; the
/// caller's tensor memory is read during the call only. `abort` may be NULL (then only
/// closing the exchanger from another thread ends the wait).
///
/// A non-OK status means nothing was sent: `SHMEX_NULL_POINTER`, `SHMEX_INVALID_ARGUMENT`
/// (bad strings, meta or numbers), `SHMEX_INVALID_DATA` (tensors that do not match their
/// shape, duplicate names), `SHMEX_INVALID_HANDLE`; `*out_reply` is then NULL.
///
/// Thread-safe; one task is in flight at a time (a second concurrent call gets
/// `SHMEX_RC_BAD_REQUEST_DATA`).
///
/// # Safety
/// `task_name` is NULL or a NUL-terminated string; `headers` and `data` are NULL or point to
/// valid structs whose pointers follow their contracts for the whole call; `out_reply` is
/// NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn shmex_exchanger_execute(
    exchanger: *const shmex_exchanger,
    task_name: *const c_char,
    headers: *const shmex_headers,
    data: *const shmex_data,
    abort: *const shmex_abort,
    out_reply: *mut *mut shmex_reply,
) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let args = unsafe { task_args(out_reply, "out_reply", exchanger, task_name, headers) }?;
        let TaskArgs {
            out,
            exchanger,
            task_name,
            headers: rust_headers,
        } = args;
        // SAFETY: the caller's contract.
        let dxo = unsafe { dxo_arg(data, "data") }?;
        let signal = abort_arg(abort)?;
        let reply = exchanger.execute(task_name, &dxo, &rust_headers, &signal);
        drop(dxo);
        let object = reply_object(reply)?;
        out.write(std::ptr::without_provenance_mut(REPLIES.insert(object)));
        Ok(())
    })
}

/// The exchanger's view of the agent (a `shmex_exchanger_state`). Thread-safe.
///
/// # Safety
/// `out_state` is NULL or valid for writing a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn shmex_exchanger_status(
    exchanger: *const shmex_exchanger,
    out_state: *mut u32,
) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(out_state, "out_state") }?;
        let state = match EXCHANGERS.get(exchanger.addr())?.status() {
            ExchangerStatus::NoAgent => shmex_exchanger_state::SHMEX_EXCHANGER_NO_AGENT,
            ExchangerStatus::Connected { .. } => shmex_exchanger_state::SHMEX_EXCHANGER_CONNECTED,
            ExchangerStatus::Disconnected { .. } => {
                shmex_exchanger_state::SHMEX_EXCHANGER_DISCONNECTED
            }
            ExchangerStatus::Stopped => shmex_exchanger_state::SHMEX_EXCHANGER_STOPPED,
            ExchangerStatus::Closed => shmex_exchanger_state::SHMEX_EXCHANGER_CLOSED,
        };
        out.write(state as u32);
        Ok(())
    })
}

/// Says bye to the agent and closes the link (its name is removed from /dev/shm): a waiting
/// or later execute returns a `SHMEX_RC_TASK_ABORTED` reply. The handle stays valid until
/// `shmex_exchanger_free`. A second call does nothing. A status other than `SHMEX_OK` means
/// the bye could not be delivered (the exchanger is closed all the same). Thread-safe.
#[no_mangle]
pub extern "C" fn shmex_exchanger_close(exchanger: *const shmex_exchanger) -> shmex_status {
    guard(|| {
        EXCHANGERS
            .get(exchanger.addr())?
            .close()
            .map_err(|e| Failure::coded(&e))
    })
}

/// Closes (as `shmex_exchanger_close`, ignoring an undelivered bye) and frees the
/// exchanger. NULL does nothing (`SHMEX_OK`); a handle freed already is
/// `SHMEX_INVALID_HANDLE`. An execute running in another thread returns
/// `SHMEX_RC_TASK_ABORTED`. Thread-safe.
#[no_mangle]
pub extern "C" fn shmex_exchanger_free(exchanger: *mut shmex_exchanger) -> shmex_status {
    guard(|| {
        if exchanger.is_null() {
            return Ok(());
        }
        let exchanger: Arc<Exchanger> = EXCHANGERS.remove(exchanger.addr())?;
        let _undelivered_bye = exchanger.close();
        Ok(())
    })
}

/// Makes an abort flag, not set. Free it with `shmex_abort_free` once no execute uses it.
/// Thread-safe.
///
/// # Safety
/// `out_abort` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn shmex_abort_new(out_abort: *mut *mut shmex_abort) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(out_abort, "out_abort") }?;
        out.write(std::ptr::without_provenance_mut(
            ABORTS.insert(AbortSignal::new()),
        ));
        Ok(())
    })
}

/// Sets the flag: an execute given it (running, or started later) sends abort to the agent
/// and returns a `SHMEX_RC_TASK_ABORTED` reply. The flag stays set. Thread-safe (meant to be
/// called from another thread than the one in execute; async-signal-safe it is not).
#[no_mangle]
pub extern "C" fn shmex_abort_trigger(abort: *const shmex_abort) -> shmex_status {
    guard(|| {
        ABORTS.get(abort.addr())?.abort();
        Ok(())
    })
}

/// Whether the flag is set. Thread-safe.
///
/// # Safety
/// `out_set` is NULL or valid for writing a `bool`.
#[no_mangle]
pub unsafe extern "C" fn shmex_abort_is_set(
    abort: *const shmex_abort,
    out_set: *mut bool,
) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(out_set, "out_set") }?;
        out.write(ABORTS.get(abort.addr())?.is_aborted());
        Ok(())
    })
}

/// Frees an abort flag. An execute still running with it keeps its own reference, so this
/// is safe at any time. NULL does nothing; a handle freed already is `SHMEX_INVALID_HANDLE`.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn shmex_abort_free(abort: *mut shmex_abort) -> shmex_status {
    guard(|| {
        if !abort.is_null() {
            drop(ABORTS.remove(abort.addr())?);
        }
        Ok(())
    })
}
