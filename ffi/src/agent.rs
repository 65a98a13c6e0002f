//! The agent (trainer side).

use std::ffi::c_char;
use std::time::Duration;

use shmex::protocol::{Agent, AgentStatus};

use crate::args::{dxo_arg, write_optional, Out};
use crate::config::{agent_config, default_agent_options};
use crate::exchanger::name_arg;
use crate::handles::Registry;
use crate::received::{nul_terminated, Received, TaskObject, TASKS};
use crate::status::{guard, shmex_status, Failure};
use crate::types::{
    rc_from_c, shmex_agent, shmex_agent_options, shmex_agent_state, shmex_data, shmex_task,
};

pub(crate) static AGENTS: Registry<Agent> = Registry::new("shmex_agent");

/// Fills `*out_options` with the defaults (FLARE's `IPCAgent` defaults). Thread-safe.
///
/// # Safety
/// `out_options` is NULL or valid for writing a `shmex_agent_options`.
#[no_mangle]
pub unsafe extern "C" fn shmex_agent_options_default(
    out_options: *mut shmex_agent_options,
) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(out_options, "out_options") }?;
        out.write(default_agent_options());
        Ok(())
    })
}

/// Attaches to the link of `site` and `agent_id`, waiting up to `attach_timeout` for a live
/// exchanger (`SHMEX_TIMEOUT` or `SHMEX_NOT_FOUND` when none comes); `options` NULL means
/// the defaults. On success `*out_agent` is a new handle to free with `shmex_agent_free`; on
/// failure it is set to NULL. Thread-safe.
///
/// # Safety
/// `site` and `agent_id` are NULL or NUL-terminated strings; `options` is NULL or points to
/// a `shmex_agent_options`; `out_agent` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn shmex_agent_attach(
    site: *const c_char,
    agent_id: *const c_char,
    options: *const shmex_agent_options,
    out_agent: *mut *mut shmex_agent,
) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(out_agent, "out_agent") }?;
        out.write(std::ptr::null_mut());
        // SAFETY: the caller's contract.
        let name = unsafe { name_arg(site, agent_id) }?;
        let options = if options.is_null() {
            default_agent_options()
        } else {
            // SAFETY: the caller promises a valid `shmex_agent_options` (a plain C struct,
            // copied out here).
            *unsafe { crate::args::ref_arg(options, "options") }?
        };
        let agent =
            Agent::attach(&name, agent_config(&options)?).map_err(|e| Failure::coded(&e))?;
        out.write(std::ptr::without_provenance_mut(AGENTS.insert(agent)));
        Ok(())
    })
}

/// Fetches the next task, waiting up to `timeout_ms` milliseconds (-1: forever; 0: only
/// look). On `SHMEX_OK`, `*out_task` is a new task handle (free it with `shmex_task_free`
/// after reading it; its tensors stay valid until then). `SHMEX_TIMEOUT` when none arrived
/// in time, `SHMEX_CLOSED` once the exchanger said bye or the agent was closed,
/// `SHMEX_CALL_STATE` while the previous task's result is not submitted; `*out_task` is NULL
/// then. Aborted tasks are skipped. Thread-safe (one fetching thread is the normal use).
///
/// # Safety
/// `out_task` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn shmex_agent_get_task(
    agent: *const shmex_agent,
    timeout_ms: i64,
    out_task: *mut *mut shmex_task,
) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(out_task, "out_task") }?;
        out.write(std::ptr::null_mut());
        let agent = AGENTS.get(agent.addr())?;
        let timeout = match timeout_ms {
            -1 => None,
            ms if ms >= 0 => Some(Duration::from_millis(ms.unsigned_abs())),
            ms => {
                return Err(Failure::invalid(format!(
                    "timeout_ms must be -1 (forever) or >= 0, got {ms}"
                )))
            }
        };
        let task = match agent.get_task(timeout).map_err(|e| Failure::coded(&e))? {
            Some(task) => task,
            None => {
                return Err(Failure::new(
                    shmex_status::SHMEX_TIMEOUT,
                    format!("no task arrived within {timeout_ms} ms"),
                ))
            }
        };
        let object = TaskObject {
            id: nul_terminated(&task.id),
            name: nul_terminated(&task.name),
            received: Received::new(task.message)?,
        };
        out.write(std::ptr::without_provenance_mut(TASKS.insert(object)));
        Ok(())
    })
}

/// Whether the current task was aborted by the exchanger (a trainer may poll this and stop
/// early; its submission will then not be accepted). Thread-safe.
///
/// # Safety
/// `out_aborted` is NULL or valid for writing a `bool`.
#[no_mangle]
pub unsafe extern "C" fn shmex_agent_is_aborted(
    agent: *const shmex_agent,
    out_aborted: *mut bool,
) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(out_aborted, "out_aborted") }?;
        out.write(AGENTS.get(agent.addr())?.is_aborted());
        Ok(())
    })
}

/// Submits the result of the fetched task by copy: `result`'s tensors are copied into the
/// link during the call (the caller keeps its memory), with FLARE return code `rc` (a
/// `shmex_rc`). `result` may be NULL for a result without data (e.g. with an error `rc`).
/// Blocks until the exchanger answers; `*out_accepted` (may be NULL) tells whether it
/// accepted the result: false if the task was aborted, never fetched, already answered, or
/// the exchanger was lost. `SHMEX_CLOSED` once the agent is closed. Thread-safe.
///
/// # Safety
/// `result` is NULL or points to a valid `shmex_data` whose pointers follow its contract for
/// the whole call; `out_accepted` is NULL or valid for writing a `bool`.
#[no_mangle]
pub unsafe extern "C" fn shmex_agent_submit_result(
    agent: *const shmex_agent,
    result: *const shmex_data,
    rc: u32,
    out_accepted: *mut bool,
) -> shmex_status {
    guard(|| {
        let agent = AGENTS.get(agent.addr())?;
        let rc = rc_from_c(rc)?;
        let dxo = if result.is_null() {
            shmex::frame::Dxo::new(shmex::frame::DataKind::Weights)
        } else {
            // SAFETY: the caller's contract.
            unsafe { dxo_arg(result, "result") }?
        };
        let accepted = agent
            .submit_result(&dxo, rc)
            .map_err(|e| Failure::coded(&e))?;
        // SAFETY: the caller's contract.
        unsafe { write_optional(out_accepted, accepted, "out_accepted") }
    })
}

/// The agent's view of the exchanger (a `shmex_agent_state`). Thread-safe.
///
/// # Safety
/// `out_state` is NULL or valid for writing a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn shmex_agent_status(
    agent: *const shmex_agent,
    out_state: *mut u32,
) -> shmex_status {
    guard(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(out_state, "out_state") }?;
        let state = match AGENTS.get(agent.addr())?.status() {
            AgentStatus::Connected => shmex_agent_state::SHMEX_AGENT_CONNECTED,
            AgentStatus::Disconnected => shmex_agent_state::SHMEX_AGENT_DISCONNECTED,
            AgentStatus::Lost => shmex_agent_state::SHMEX_AGENT_LOST,
            AgentStatus::Closed => shmex_agent_state::SHMEX_AGENT_CLOSED,
        };
        out.write(state as u32);
        Ok(())
    })
}

/// Detaches from the link: blocked and later calls return `SHMEX_CLOSED`. The handle stays
/// valid until `shmex_agent_free`. A second call does nothing. Thread-safe.
#[no_mangle]
pub extern "C" fn shmex_agent_close(agent: *const shmex_agent) -> shmex_status {
    guard(|| {
        AGENTS.get(agent.addr())?.close();
        Ok(())
    })
}

/// Closes and frees the agent. Tasks fetched from it stay readable until freed. NULL does
/// nothing (`SHMEX_OK`); a handle freed already is `SHMEX_INVALID_HANDLE`. Thread-safe.
#[no_mangle]
pub extern "C" fn shmex_agent_free(agent: *mut shmex_agent) -> shmex_status {
    guard(|| {
        if !agent.is_null() {
            AGENTS.remove(agent.addr())?.close();
        }
        Ok(())
    })
}
