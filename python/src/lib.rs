//! `shmex._shmex`: the compiled half of the `shmex` Python package.
//!
//! A thin layer over [`shmex::protocol`]: the pure-Python package (`python/shmex/`) checks
//! and converts arguments (numpy arrays, meta dicts, FLARE's names) and calls the private
//! classes here, which only
//! - build a [`Dxo`] over the caller's array memory (no copy until the ring),
//! - run each blocking protocol call on the calling thread with the GIL released, taking it
//!   back every `CHECK_INTERVAL` or so so that Ctrl-C (Python's signal handlers), the
//!   caller's abort event and timeout abort the call,
//! - hand received messages back as `Message` objects that own the [`OwnedMessage`]; the
//!   Python side views its tensors as numpy arrays whose base keeps that object alive,
//! - map every Rust error to a Python exception by an exhaustive `match`.
//!
//! No panic crosses into Python: every entry point runs under `guarded`, and the attach
//! thread under `catch_unwind`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use serde_json::{Map, Value};
use shmex::error::{Coded, ErrorCode};
use shmex::frame::{DType, DataKind, Dxo, DxoError, LoanError, LoanSpec, OwnedMessage, ReturnCode};
use shmex::protocol::{
    AbortSignal, Agent, AgentAttachError, AgentConfig, AgentStatus, Exchanger, ExchangerConfig,
    ExchangerCreateError, ExchangerStatus, Headers, Reply, RestartPolicy, ResultLoan, SubmitError,
    TaskLoan, TaskLoanError,
};
use shmex::segment::SegmentName;

create_exception!(
    shmex,
    ShmexError,
    PyException,
    "Base class of the errors shmex raises (link creation and attach failures, a corrupt \
     segment, an internal error)."
);
create_exception!(
    shmex,
    AgentClosed,
    ShmexError,
    "The agent is closed: the exchanger said bye, detached or fell silent, or close() was \
     called (FLARE's AgentClosed)."
);
create_exception!(
    shmex,
    CallStateError,
    ShmexError,
    "A call made in the wrong state: get_task while the fetched task's result is not yet \
     submitted (FLARE's CallStateError)."
);

/// Runs `f`, turning a panic into a `ShmexError` so that none reaches Python.
fn guarded<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| Err(panic_error(&*payload)))
}

fn panic_error(payload: &(dyn std::any::Any + Send)) -> PyErr {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    ShmexError::new_err(format!("internal error in shmex (a bug): {text}"))
}

/// Sets the exception's `code` attribute to `code`'s name (`shmex.ErrorCode`).
fn coded(err: PyErr, code: ErrorCode) -> PyErr {
    Python::attach(|py| {
        // Best effort: an exception object that refuses attributes keeps its text.
        let _ = err.value(py).setattr("code", code.name());
    });
    err
}

/// A `ValueError` with code `code`.
fn value_error(text: String, code: ErrorCode) -> PyErr {
    coded(PyValueError::new_err(text), code)
}

/// A `TypeError` with code `INVALID_DATA`.
fn type_error(text: String) -> PyErr {
    coded(PyTypeError::new_err(text), ErrorCode::InvalidData)
}

/// A duration in seconds from Python: finite and not negative.
fn seconds(what: &str, secs: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| {
        value_error(
            format!("{what} must be a finite number of seconds >= 0, got {secs}"),
            ErrorCode::InvalidConfig,
        )
    })
}

/// An optional duration: `None` or infinity means "no limit".
fn optional_seconds(what: &str, secs: Option<f64>) -> PyResult<Option<Duration>> {
    match secs {
        Some(s) if s == f64::INFINITY => Ok(None),
        Some(s) => seconds(what, s).map(Some),
        None => Ok(None),
    }
}

fn segment_name(site: &str, agent_id: &str) -> PyResult<SegmentName> {
    SegmentName::for_agent(site, agent_id).map_err(|e| coded_error("invalid link name", &e))
}

fn parse_meta(meta_json: &str) -> PyResult<Map<String, Value>> {
    serde_json::from_str(meta_json).map_err(|e| {
        value_error(
            format!("meta is not a JSON object: {e}"),
            ErrorCode::InvalidData,
        )
    })
}

fn parse_kind(data_kind: &str) -> PyResult<DataKind> {
    data_kind.parse().map_err(|_| {
        value_error(
            format!("unknown data kind {data_kind:?}"),
            ErrorCode::InvalidData,
        )
    })
}

fn dxo_error(e: DxoError) -> PyErr {
    coded_error("invalid data", &e)
}

fn parse_dtype(name: &str, dtype: &str) -> PyResult<DType> {
    dtype
        .parse()
        .map_err(|_| type_error(format!("tensor {name:?}: unknown dtype {dtype:?}")))
}

fn parse_return_code(return_code: &str) -> PyResult<ReturnCode> {
    return_code.parse().map_err(|_| {
        value_error(
            format!("unknown return code {return_code:?}"),
            ErrorCode::InvalidData,
        )
    })
}

// ---------------------------------------------------------------------------------------
// Outgoing data: a DXO over the memory of the caller's arrays.

/// A tensor to send from Python: `(name, shmex dtype, shape, C-contiguous numpy array)`.
type OutTensor<'py> = (String, String, Vec<u64>, Bound<'py, PyAny>);

/// The address and byte length of a C-contiguous array, read from numpy's array interface
/// (`__array_interface__`: `strides` is `None` for a C-contiguous array). Only a real
/// `numpy.ndarray` is accepted: its interface describes memory it owns or keeps alive, which
/// an arbitrary object's need not (the address becomes a slice in `array_bytes`).
fn array_memory(array: &Bound<'_, PyAny>, what: &str) -> PyResult<(usize, usize)> {
    let ndarray = array.py().import("numpy")?.getattr("ndarray")?;
    if !array.is_instance(&ndarray)? {
        return Err(type_error(format!("{what} is not a numpy.ndarray")));
    }
    let interface = array.getattr("__array_interface__")?;
    let interface = interface.cast::<PyDict>()?;
    let strides = interface.get_item("strides")?;
    if strides.is_some_and(|s| !s.is_none()) {
        return Err(value_error(
            format!("{what} is not C-contiguous"),
            ErrorCode::InvalidData,
        ));
    }
    let data = interface
        .get_item("data")?
        .ok_or_else(|| type_error(format!("{what} has no data pointer")))?;
    let address: usize = data.cast::<PyTuple>()?.get_item(0)?.extract()?;
    let len: usize = array.getattr("nbytes")?.extract()?;
    Ok((address, len))
}

/// The bytes of a C-contiguous `numpy.ndarray`, for as long as `array` is borrowed.
fn array_bytes<'a>(array: &'a Bound<'_, PyAny>, what: &str) -> PyResult<&'a [u8]> {
    let (address, len) = array_memory(array, what)?;
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: `address`/`len` are the data pointer and `nbytes` numpy reported for a
    // C-contiguous `numpy.ndarray` (`array_memory` refuses any other object), and the
    // borrowed `array` holds a reference to it for `'a`, so the allocation is live that long
    // (numpy refuses to resize an array someone else references, and a u8 slice has no
    // alignment requirement). The slice is only read (copied into the ring); the package
    // documents that arrays must not be written by another thread while they are being sent,
    // as for any numpy call that releases the GIL.
    Ok(unsafe { std::slice::from_raw_parts(address as *const u8, len) })
}

/// The DXO to send, over the memory of the caller's arrays (`tensors`, and `opaque`: a
/// contiguous uint8 array). Checks names, shapes and lengths, so that a bad input raises
/// before anything is sent.
fn outgoing_dxo<'a>(
    data_kind: &str,
    meta_json: &str,
    tensors: &'a [OutTensor<'_>],
    opaque: Option<&'a Bound<'_, PyAny>>,
) -> PyResult<Dxo<'a>> {
    let mut dxo = Dxo::new(parse_kind(data_kind)?).with_meta_map(parse_meta(meta_json)?);
    for (name, dtype, shape, array) in tensors {
        let dtype = parse_dtype(name, dtype)?;
        let bytes = array_bytes(array, &format!("tensor {name:?}"))?;
        dxo = dxo
            .with_tensor_bytes(name.clone(), dtype, shape, bytes)
            .map_err(dxo_error)?;
    }
    if let Some(array) = opaque {
        dxo = dxo
            .with_opaque(array_bytes(array, "the opaque data")?)
            .map_err(dxo_error)?;
    }
    Ok(dxo)
}

// ---------------------------------------------------------------------------------------
// Blocking calls: on the calling thread with the GIL released. The protocol polls the
// call's `AbortSignal` at least every wait slice (`WaitStrategy::poll_interval`, 10 ms by
// default); its check takes the GIL back at most every `CHECK_INTERVAL` to run Python's
// signal handlers (Ctrl-C) and the caller's abort event. `get_task` waits in slices of
// `CHECK_INTERVAL` instead, and `attach` on a thread of its own.

/// How often a blocking call takes the GIL back to run Python's signal handlers and the
/// caller's abort event: Ctrl-C is answered within about this plus one wait slice.
const CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// What a blocking call's abort signal watches besides its own flag.
struct Interrupts {
    /// Only this thread takes the GIL in the check: another thread polling the signal (none
    /// does today) could hold a lock that a Python thread holding the GIL waits for.
    caller: ThreadId,
    start: Instant,
    /// Nanoseconds after `start` before which the GIL is not taken again.
    next_check: AtomicU64,
    /// The caller's abort object: anything with `is_set()`, such as `threading.Event`.
    abort: Option<Py<PyAny>>,
    deadline: Option<Instant>,
    timed_out: AtomicBool,
    /// What a signal handler or the abort object raised; raised when the call returns.
    raised: Mutex<Option<PyErr>>,
}

impl Interrupts {
    /// Whether the call is to be aborted now.
    fn check(&self) -> bool {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            self.timed_out.store(true, Ordering::Relaxed);
            return true;
        }
        let elapsed = u64::try_from(now.duration_since(self.start).as_nanos()).unwrap_or(u64::MAX);
        if elapsed < self.next_check.load(Ordering::Relaxed)
            || std::thread::current().id() != self.caller
        {
            return false;
        }
        self.next_check.store(
            elapsed.saturating_add(CHECK_INTERVAL.as_nanos() as u64),
            Ordering::Relaxed,
        );
        // An interpreter that can no longer be attached to is finalizing: nothing waits for
        // the outcome any more.
        Python::try_attach(|py| {
            py.check_signals()
                .and_then(|()| abort_requested(&self.abort, py))
                .unwrap_or_else(|e| {
                    *self.raised.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    true
                })
        })
        .unwrap_or(true)
    }
}

/// Runs `call` on this thread with the GIL released, giving it an abort signal triggered by
/// an exception from Python's signal handlers (`KeyboardInterrupt`), by `abort` (anything
/// with `is_set()`), and at `deadline`. The exception, if any, supersedes the call's outcome
/// (the call returns promptly once aborted); otherwise the outcome comes back with whether
/// the deadline triggered the signal.
fn run_abortable<T: Send>(
    py: Python<'_>,
    abort: Option<Py<PyAny>>,
    deadline: Option<Instant>,
    call: impl FnOnce(&AbortSignal) -> T + Send,
) -> PyResult<(T, bool)> {
    let aborted = abort_requested(&abort, py)?;
    let interrupts = Arc::new(Interrupts {
        caller: std::thread::current().id(),
        start: Instant::now(),
        next_check: AtomicU64::new(CHECK_INTERVAL.as_nanos() as u64),
        abort,
        deadline,
        timed_out: AtomicBool::new(false),
        raised: Mutex::new(None),
    });
    let signal = AbortSignal::with_check({
        let interrupts = Arc::clone(&interrupts);
        move || interrupts.check()
    });
    if aborted {
        signal.abort();
    }
    let outcome = py.detach(|| call(&signal));
    let raised = interrupts
        .raised
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    match raised {
        Some(e) => Err(e),
        None => Ok((outcome, interrupts.timed_out.load(Ordering::Relaxed))),
    }
}

/// Attaches on a thread of its own, waited for with the GIL released, running Python's
/// signal handlers every [`CHECK_INTERVAL`]. [`Agent::attach`] cannot be aborted (it maps
/// the rings, populating them), so an interrupted attach finishes on its own (within
/// `attach_timeout`) and the agent it made is dropped, which detaches.
fn attach(py: Python<'_>, name: SegmentName, config: AgentConfig) -> PyResult<Agent> {
    let (tx, mut rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("shmex-python-attach".into())
        .spawn(move || {
            let outcome = catch_unwind(AssertUnwindSafe(|| Agent::attach(&name, config)));
            // The receiver is gone only when the caller was interrupted.
            let _ = tx.send(outcome);
        })
        .map_err(|e| {
            coded(
                ShmexError::new_err(format!("cannot start the attach thread: {e}")),
                ErrorCode::Os,
            )
        })?;
    loop {
        // The receiver is not `Sync`: it travels into the GIL-free closure and back.
        let (back, received) = py.detach(move || {
            let received = rx.recv_timeout(CHECK_INTERVAL);
            (rx, received)
        });
        rx = back;
        match received {
            Ok(outcome) => return outcome.map_err(|p| panic_error(&*p))?.map_err(attach_error),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(ShmexError::new_err(
                    "internal error in shmex: the attach thread vanished",
                ))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => py.check_signals()?,
        }
    }
}

/// [`run_abortable`] for a call that runs a task (`execute` of the exchanger or of a task
/// loan): its reply as `(rc, data_kind, message)`, with `TIMEOUT` when `timeout` ended it.
fn run_task(
    py: Python<'_>,
    abort: Option<Py<PyAny>>,
    timeout: Option<Duration>,
    task: impl FnOnce(&AbortSignal) -> Reply + Send,
) -> PyResult<(&'static str, Option<&'static str>, Option<Message>)> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let (reply, timed_out) = run_abortable(py, abort, deadline, task)?;
    Ok(reply_parts(reply, timed_out))
}

/// Whether the caller's abort object (anything with `is_set()`, such as
/// `threading.Event`) is set.
fn abort_requested(abort: &Option<Py<PyAny>>, py: Python<'_>) -> PyResult<bool> {
    match abort {
        Some(event) => event.bind(py).call_method0("is_set")?.is_truthy(),
        None => Ok(false),
    }
}

// ---------------------------------------------------------------------------------------
// Received messages.

/// A received task or result: owns the message; its tensors are viewed in place.
#[pyclass(name = "_Message", module = "shmex._shmex", frozen, weakref)]
struct Message {
    message: OwnedMessage,
}

#[pymethods]
impl Message {
    /// Whether the message is read in place in the ring (`receive_in_place`).
    fn in_ring(&self) -> bool {
        self.message.is_in_ring()
    }

    /// The data kind name, or `None` when the message carries no DXO.
    fn data_kind(&self) -> Option<&'static str> {
        self.message.data_kind().map(DataKind::as_str)
    }

    /// The meta dictionary as JSON text.
    fn meta_json(&self) -> PyResult<String> {
        guarded(|| {
            serde_json::to_string(self.message.meta())
                .map_err(|e| ShmexError::new_err(format!("meta cannot be encoded: {e}")))
        })
    }

    /// The opaque bytes (a copy; empty when there are none).
    fn opaque<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.message.opaque())
    }

    /// The tensors as `(name, dtype, shape, address, nbytes)`: where each lies in this
    /// object's memory, valid for as long as this object lives.
    fn tensors(&self) -> Vec<(String, &'static str, Vec<u64>, usize, usize)> {
        self.message
            .tensors()
            .map(|t| {
                let bytes = t.bytes();
                (
                    t.name().to_string(),
                    t.dtype().as_str(),
                    t.shape().to_vec(),
                    bytes.as_ptr() as usize,
                    bytes.len(),
                )
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// The exchanger.

/// The FL-client side (`shmex.Exchanger` wraps it).
#[pyclass(name = "_Exchanger", module = "shmex._shmex", frozen)]
struct PyExchanger {
    exchanger: Exchanger,
}

/// The Python exception for a core error: its class chosen by the error's code (an
/// exhaustive match, so a new code does not build until it has a class), its text
/// `"{context}: {error}"`, and the code's name in its `code` attribute.
fn coded_error(context: &str, e: &dyn Coded) -> PyErr {
    let code = e.code();
    let text = format!("{context}: {e}");
    let err = match code {
        ErrorCode::InvalidData
        | ErrorCode::TooLarge
        | ErrorCode::InvalidName
        | ErrorCode::InvalidConfig
        | ErrorCode::NoSuchTensor
        | ErrorCode::WrongDType
        | ErrorCode::Misaligned
        | ErrorCode::InvalidBool => PyValueError::new_err(text),
        ErrorCode::Closed => AgentClosed::new_err(text),
        ErrorCode::CallState => CallStateError::new_err(text),
        ErrorCode::Timeout
        | ErrorCode::PeerDead
        | ErrorCode::Corrupt
        | ErrorCode::Malformed
        | ErrorCode::OverLimit
        | ErrorCode::OutOfMemory
        | ErrorCode::BufferTooSmall
        | ErrorCode::Cancelled
        | ErrorCode::AlreadyExists
        | ErrorCode::NotFound
        | ErrorCode::PermissionDenied
        | ErrorCode::NoSpace
        | ErrorCode::VersionMismatch
        | ErrorCode::InUse
        | ErrorCode::Os => ShmexError::new_err(text),
    };
    coded(err, code)
}

fn create_error(e: ExchangerCreateError) -> PyErr {
    coded_error("cannot create the exchanger", &e)
}

fn exchanger_status(status: ExchangerStatus) -> &'static str {
    match status {
        ExchangerStatus::NoAgent => "no_agent",
        ExchangerStatus::Connected { .. } => "connected",
        ExchangerStatus::Disconnected { .. } => "disconnected",
        ExchangerStatus::Stopped => "stopped",
        ExchangerStatus::Closed => "closed",
    }
}

#[pymethods]
impl PyExchanger {
    /// Creates the link `shmex.<site>.<agent_id>` (see `shmex.Exchanger` for the options).
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (site, agent_id, send_task_timeout, resend_task_interval,
        agent_connection_timeout, agent_heartbeat_timeout, agent_heartbeat_interval,
        agent_ack_timeout, result_timeout, on_agent_restart, task_ring_capacity,
        result_ring_capacity, reclaim_stale, receive_in_place, expected_message_len))]
    fn new(
        py: Python<'_>,
        site: &str,
        agent_id: &str,
        send_task_timeout: f64,
        resend_task_interval: f64,
        agent_connection_timeout: f64,
        agent_heartbeat_timeout: Option<f64>,
        agent_heartbeat_interval: f64,
        agent_ack_timeout: f64,
        result_timeout: Option<f64>,
        on_agent_restart: &str,
        task_ring_capacity: u64,
        result_ring_capacity: u64,
        reclaim_stale: bool,
        receive_in_place: bool,
        expected_message_len: Option<u64>,
    ) -> PyResult<PyExchanger> {
        guarded(|| {
            let name = segment_name(site, agent_id)?;
            let on_agent_restart = match on_agent_restart {
                "redeliver" => RestartPolicy::Redeliver,
                "fail" => RestartPolicy::Fail,
                other => {
                    return Err(value_error(
                        format!("on_agent_restart must be 'redeliver' or 'fail', got {other:?}"),
                        ErrorCode::InvalidConfig,
                    ))
                }
            };
            // Struct update from the default: fields the binding does not set keep it.
            let config = ExchangerConfig::default()
                .send_task_timeout(seconds("send_task_timeout", send_task_timeout)?)
                .resend_task_interval(seconds("resend_task_interval", resend_task_interval)?)
                .agent_connection_timeout(seconds(
                    "agent_connection_timeout",
                    agent_connection_timeout,
                )?)
                .agent_heartbeat_timeout(optional_seconds(
                    "agent_heartbeat_timeout",
                    agent_heartbeat_timeout,
                )?)
                .agent_heartbeat_interval(seconds(
                    "agent_heartbeat_interval",
                    agent_heartbeat_interval,
                )?)
                .agent_ack_timeout(seconds("agent_ack_timeout", agent_ack_timeout)?)
                .result_timeout(optional_seconds("result_timeout", result_timeout)?)
                .on_agent_restart(on_agent_restart)
                .task_ring_capacity(task_ring_capacity)
                .result_ring_capacity(result_ring_capacity)
                .reclaim_stale(reclaim_stale)
                .receive_in_place(receive_in_place)
                .expected_message_len(expected_message_len);
            let exchanger = py
                .detach(|| Exchanger::create(&name, config))
                .map_err(create_error)?;
            Ok(PyExchanger { exchanger })
        })
    }

    /// The segment's name.
    fn name(&self) -> String {
        self.exchanger.name().to_string()
    }

    /// The exchanger's view of the agent.
    fn status(&self) -> &'static str {
        exchanger_status(self.exchanger.status())
    }

    /// How many times a task was sent again to a restarted agent.
    fn redeliveries(&self) -> u64 {
        self.exchanger.redeliveries()
    }

    /// Sends a task and waits for its result; returns `(rc, data_kind, message)`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (task_name, task_id, data_kind, meta_json, tensors, opaque,
        current_round, total_round, abort, timeout))]
    fn execute(
        &self,
        py: Python<'_>,
        task_name: &str,
        task_id: String,
        data_kind: &str,
        meta_json: &str,
        tensors: Vec<OutTensor<'_>>,
        opaque: Option<Bound<'_, PyAny>>,
        current_round: Option<i64>,
        total_round: Option<i64>,
        abort: Option<Py<PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<(&'static str, Option<&'static str>, Option<Message>)> {
        guarded(|| {
            let timeout = optional_seconds("timeout", timeout)?;
            let dxo = outgoing_dxo(data_kind, meta_json, &tensors, opaque.as_ref())?;
            let headers = Headers {
                task_id,
                current_round,
                num_rounds: total_round,
            };
            let exchanger = &self.exchanger;
            run_task(py, abort, timeout, |signal| {
                exchanger.execute(task_name, &dxo, &headers, signal)
            })
        })
    }

    /// Lends task-ring space for a task laid out by the spec. When nothing can be lent, raises
    /// with the error's `code` and, in `rc`, the return code `execute` would give.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (task_name, task_id, data_kind, meta_json, tensors, opaque_len,
        current_round, total_round, abort))]
    fn task_loan(
        &self,
        py: Python<'_>,
        task_name: &str,
        task_id: String,
        data_kind: &str,
        meta_json: &str,
        tensors: Vec<SpecTensor>,
        opaque_len: usize,
        current_round: Option<i64>,
        total_round: Option<i64>,
        abort: Option<Py<PyAny>>,
    ) -> PyResult<PyTaskLoan> {
        guarded(|| {
            let spec = loan_spec(data_kind, meta_json, tensors, opaque_len)?;
            let headers = Headers {
                task_id: task_id.clone(),
                current_round,
                num_rounds: total_round,
            };
            let exchanger = &self.exchanger;
            let (loaned, _) = run_abortable(py, abort, None, |signal| {
                exchanger.loan_task(task_name, &spec, &headers, signal)
            })?;
            let mut loan = match loaned {
                Ok(loan) => loan,
                // A spec the core refuses is the caller's error, as in `execute`'s checks
                // before sending; the other failures are return codes.
                Err(TaskLoanError::Spec(LoanError::Dxo(e))) => return Err(dxo_error(e)),
                Err(TaskLoanError::Spec(LoanError::Send(e))) if e.code() == ErrorCode::TooLarge => {
                    return Err(coded_error("cannot lend a task", &e))
                }
                Err(e) => return Err(task_loan_error(e)),
            };
            let memory = LoanMemory::of(&mut loan, &spec)?;
            Ok(PyTaskLoan {
                cell: Arc::new(LoanCell::new(loan)),
                memory,
                task_id,
            })
        })
    }

    /// Says bye to the agent and removes the segment; later calls do nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        guarded(|| {
            py.detach(|| self.exchanger.close())
                .map_err(|e| coded_error("closed, but the agent was not told", &e))
        })
    }
}

// ---------------------------------------------------------------------------------------
// The agent.

/// The trainer side (`shmex.Agent` wraps it).
#[pyclass(name = "_Agent", module = "shmex._shmex", frozen)]
struct PyAgent {
    agent: Agent,
}

fn attach_error(e: AgentAttachError) -> PyErr {
    let context = if e.is_timeout() {
        "no exchanger to attach to"
    } else {
        "cannot attach"
    };
    coded_error(context, &e)
}

fn agent_status(status: AgentStatus) -> &'static str {
    match status {
        AgentStatus::Connected => "connected",
        AgentStatus::Disconnected => "disconnected",
        AgentStatus::Lost => "lost",
        AgentStatus::Closed => "closed",
    }
}

fn submit_error(context: &str, e: SubmitError) -> PyErr {
    match e {
        // The exception's text says what the core's does not: a loan holds the sending half.
        SubmitError::LoanOutstanding => coded_error(
            &format!("{context} (commit or abandon the outstanding result loan first)"),
            &e,
        ),
        e => coded_error(context, &e),
    }
}

#[pymethods]
impl PyAgent {
    /// Attaches to the link `shmex.<site>.<agent_id>`, waiting up to `attach_timeout` for a
    /// live exchanger (see `shmex.Agent` for the options).
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (site, agent_id, submit_result_timeout, flare_site_connection_timeout,
        flare_site_heartbeat_timeout, resend_result_interval, attach_timeout, heartbeat_interval,
        receive_in_place, expected_message_len))]
    fn new(
        py: Python<'_>,
        site: &str,
        agent_id: &str,
        submit_result_timeout: f64,
        flare_site_connection_timeout: f64,
        flare_site_heartbeat_timeout: Option<f64>,
        resend_result_interval: f64,
        attach_timeout: f64,
        heartbeat_interval: f64,
        receive_in_place: bool,
        expected_message_len: Option<u64>,
    ) -> PyResult<PyAgent> {
        guarded(|| {
            let name = segment_name(site, agent_id)?;
            let config = AgentConfig::default()
                .submit_result_timeout(seconds("submit_result_timeout", submit_result_timeout)?)
                .flare_site_connection_timeout(seconds(
                    "flare_site_connection_timeout",
                    flare_site_connection_timeout,
                )?)
                .flare_site_heartbeat_timeout(optional_seconds(
                    "flare_site_heartbeat_timeout",
                    flare_site_heartbeat_timeout,
                )?)
                .resend_result_interval(seconds("resend_result_interval", resend_result_interval)?)
                .attach_timeout(seconds("attach_timeout", attach_timeout)?)
                .heartbeat_interval(seconds("heartbeat_interval", heartbeat_interval)?)
                .receive_in_place(receive_in_place)
                .expected_message_len(expected_message_len);
            let agent = attach(py, name, config)?;
            Ok(PyAgent { agent })
        })
    }

    /// The agent's view of the exchanger.
    fn status(&self) -> &'static str {
        agent_status(self.agent.status())
    }

    /// Whether the current task was aborted.
    fn is_aborted(&self) -> bool {
        self.agent.is_aborted()
    }

    /// Fetches the next task: `(task_id, task_name, message)` or `None` after `timeout`.
    #[pyo3(signature = (timeout))]
    fn get_task(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
    ) -> PyResult<Option<(String, String, Message)>> {
        guarded(|| {
            let deadline =
                optional_seconds("timeout", timeout)?.and_then(|t| Instant::now().checked_add(t));
            // In slices on this thread: get_task takes a timeout, and leaves nothing behind
            // when it returns without a task.
            loop {
                let slice = deadline.map_or(CHECK_INTERVAL, |d| {
                    d.saturating_duration_since(Instant::now())
                        .min(CHECK_INTERVAL)
                });
                let got = py.detach(|| self.agent.get_task(Some(slice)));
                match got {
                    Ok(Some(task)) => {
                        return Ok(Some((
                            task.id,
                            task.name,
                            Message {
                                message: task.message,
                            },
                        )))
                    }
                    Ok(None) => {}
                    Err(e) => return Err(coded_error("cannot get a task", &e)),
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(None);
                }
                py.check_signals()?;
            }
        })
    }

    /// Submits the current task's result; returns whether the exchanger accepted it.
    #[pyo3(signature = (return_code, data_kind, meta_json, tensors, opaque))]
    fn submit_result(
        &self,
        py: Python<'_>,
        return_code: &str,
        data_kind: &str,
        meta_json: &str,
        tensors: Vec<(String, String, Vec<u64>, Bound<'_, PyAny>)>,
        opaque: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        guarded(|| {
            let rc = parse_return_code(return_code)?;
            let dxo = outgoing_dxo(data_kind, meta_json, &tensors, opaque.as_ref())?;
            let agent = &self.agent;
            let (submitted, _) = run_abortable(py, None, None, |signal| {
                agent.submit_result_abortable(&dxo, rc, signal)
            })?;
            submitted.map_err(|e| submit_error("cannot submit", e))
        })
    }

    /// Lends result-ring space for the current task's result, laid out by the spec.
    #[pyo3(signature = (data_kind, meta_json, tensors, opaque_len))]
    fn result_loan(
        &self,
        py: Python<'_>,
        data_kind: &str,
        meta_json: &str,
        tensors: Vec<SpecTensor>,
        opaque_len: usize,
    ) -> PyResult<PyResultLoan> {
        guarded(|| {
            let spec = loan_spec(data_kind, meta_json, tensors, opaque_len)?;
            let agent = &self.agent;
            let (loaned, _) = run_abortable(py, None, None, |signal| {
                agent.loan_result_abortable(&spec, signal)
            })?;
            let mut loan = loaned.map_err(|e| submit_error("cannot lend a result", e))?;
            let memory = LoanMemory::of(&mut loan, &spec)?;
            let task_id = loan.task_id().to_string();
            Ok(PyResultLoan {
                cell: Arc::new(LoanCell::new(loan)),
                memory,
                task_id,
            })
        })
    }

    /// Detaches; later calls raise `AgentClosed`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        guarded(|| {
            py.detach(|| self.agent.close());
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------
// Loans: messages built in place in the ring.
//
// Safety design. A loan's tensors are handed to Python as writable numpy arrays over ring
// memory. A numpy array cannot be revoked, so the ring space must stay the loan's for as long
// as any array views it. Every array's base object holds a `_LoanLease`; numpy keeps the base
// of an array, and of every view, slice, memoryview, DLPack capsule or `torch.from_numpy`
// tensor made from it, alive, so "a lease is alive" covers "some Python object can reach the
// memory". The loan counts its live leases under its lock:
// - `commit`/`execute` hands the ring space to the peer, after which writes would race with
//   its reads and later messages: it is refused (`CallStateError`, code `CALL_STATE`) while
//   any lease is alive, and no lease can be taken once it has begun;
// - abandoning (`abandon`, leaving the `with` block, dropping the loan object) with leases
//   alive keeps the reservation (the core `ResultLoan`/`TaskLoan`) until the last lease is
//   gone, so the space is never reused under a live array; meanwhile the agent's other
//   submissions raise `CALL_STATE` (the loan still holds its sending half) and the
//   exchanger's task stays in flight.
// The addresses of the tensors are taken once, when the loan is made; Rust never forms a
// reference over them again until the commit, when no array exists any more.

/// A loan's lifecycle.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LoanPhase {
    /// Arrays may be leased; it may be committed or abandoned.
    Open,
    /// Abandoned: the reservation is dropped when the last lease is.
    Abandoned,
    /// Committed (`ResultLoan`) or executed (`TaskLoan`).
    Committed,
}

/// The state a loan object shares with the leases it handed out.
struct LoanState<L> {
    /// The core loan: `Some` until committed, or abandoned with no lease alive.
    loan: Option<L>,
    phase: LoanPhase,
    /// Leases alive.
    leases: usize,
}

struct LoanCell<L> {
    state: std::sync::Mutex<LoanState<L>>,
}

impl<L> LoanCell<L> {
    fn new(loan: L) -> LoanCell<L> {
        LoanCell {
            state: std::sync::Mutex::new(LoanState {
                loan: Some(loan),
                phase: LoanPhase::Open,
                leases: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LoanState<L>> {
        // Nothing panics while the lock is held; a poisoned lock still holds a valid state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more lease, if the loan is open.
    fn lease(&self) -> PyResult<()> {
        let mut state = self.lock();
        match state.phase {
            LoanPhase::Open => {
                state.leases += 1;
                Ok(())
            }
            phase => Err(loan_state_error(phase)),
        }
    }

    /// Takes the loan to commit it: only while open and with no lease alive.
    fn take_for_commit(&self) -> PyResult<L> {
        let mut state = self.lock();
        if state.phase != LoanPhase::Open {
            return Err(loan_state_error(state.phase));
        }
        if state.leases > 0 {
            return Err(coded(
                CallStateError::new_err(format!(
                    "{} array(s) viewing this loan are still referenced: delete them (del) \
                     before committing, the ring space they view goes to the peer",
                    state.leases
                )),
                ErrorCode::CallState,
            ));
        }
        let loan = state
            .loan
            .take()
            .ok_or_else(|| loan_state_error(state.phase))?;
        state.phase = LoanPhase::Committed;
        Ok(loan)
    }

    /// Abandons an open loan; its reservation goes with the last lease.
    fn abandon(&self) {
        let dropped = {
            let mut state = self.lock();
            if state.phase == LoanPhase::Open {
                state.phase = LoanPhase::Abandoned;
            }
            Self::reservation_to_drop(&mut state)
        };
        // Dropped outside the lock: dropping a core loan takes the core's locks.
        drop(dropped);
    }

    fn reservation_to_drop(state: &mut LoanState<L>) -> Option<L> {
        if state.phase == LoanPhase::Abandoned && state.leases == 0 {
            state.loan.take()
        } else {
            None
        }
    }

    fn phase_name(&self) -> &'static str {
        let state = self.lock();
        match state.phase {
            LoanPhase::Open => "open",
            LoanPhase::Abandoned if state.loan.is_some() => "abandoned (arrays alive)",
            LoanPhase::Abandoned => "abandoned",
            LoanPhase::Committed => "committed",
        }
    }

    fn leases(&self) -> usize {
        self.lock().leases
    }
}

fn loan_state_error(phase: LoanPhase) -> PyErr {
    let text = match phase {
        LoanPhase::Open => "the loan is open",
        LoanPhase::Abandoned => "the loan was abandoned (or its with block left)",
        LoanPhase::Committed => "the loan was already committed",
    };
    coded(CallStateError::new_err(text), ErrorCode::CallState)
}

/// What a lease gives back when it dies.
trait LeaseRelease: Send + Sync {
    fn release(&self);
}

impl<L: Send> LeaseRelease for LoanCell<L> {
    fn release(&self) {
        let dropped = {
            let mut state = self.lock();
            state.leases = state.leases.saturating_sub(1);
            Self::reservation_to_drop(&mut state)
        };
        drop(dropped);
    }
}

/// Held by the base object of each array a loan hands out: while it lives, the loan's ring
/// space stays reserved and the loan cannot be committed.
#[pyclass(name = "_LoanLease", module = "shmex._shmex", frozen)]
struct LoanLease {
    cell: Arc<dyn LeaseRelease>,
}

impl Drop for LoanLease {
    fn drop(&mut self) {
        self.cell.release();
    }
}

/// The core loans' in-place accessors, for taking the addresses once.
trait InPlace {
    fn index(&mut self, name: &str) -> Option<usize>;
    fn bytes(&mut self, index: usize) -> Result<&mut [u8], shmex::frame::ViewError>;
    fn opaque(&mut self) -> Result<&mut [u8], shmex::frame::ViewError>;
}

impl InPlace for ResultLoan {
    fn index(&mut self, name: &str) -> Option<usize> {
        self.index_of(name)
    }
    fn bytes(&mut self, index: usize) -> Result<&mut [u8], shmex::frame::ViewError> {
        self.tensor_bytes_mut(index)
    }
    fn opaque(&mut self) -> Result<&mut [u8], shmex::frame::ViewError> {
        self.opaque_mut()
    }
}

impl InPlace for TaskLoan {
    fn index(&mut self, name: &str) -> Option<usize> {
        self.index_of(name)
    }
    fn bytes(&mut self, index: usize) -> Result<&mut [u8], shmex::frame::ViewError> {
        self.tensor_bytes_mut(index)
    }
    fn opaque(&mut self) -> Result<&mut [u8], shmex::frame::ViewError> {
        self.opaque_mut()
    }
}

/// A tensor spec from Python: `(name, shmex dtype, shape)`.
type SpecTensor = (String, String, Vec<u64>);

fn loan_spec(
    data_kind: &str,
    meta_json: &str,
    tensors: Vec<SpecTensor>,
    opaque_len: usize,
) -> PyResult<LoanSpec> {
    let mut spec = LoanSpec::new(parse_kind(data_kind)?);
    spec.meta = parse_meta(meta_json)?;
    for (name, dtype, shape) in tensors {
        let dtype = parse_dtype(&name, &dtype)?;
        spec = spec.tensor(name, dtype, &shape);
    }
    spec.opaque_len = opaque_len;
    Ok(spec)
}

/// Where a loan's tensors and opaque bytes lie in the ring: `(name, dtype, shape, address,
/// nbytes)` in spec order, and `(address, nbytes)` of the opaque bytes.
struct LoanMemory {
    tensors: Vec<(String, &'static str, Vec<u64>, usize, usize)>,
    opaque: (usize, usize),
}

impl LoanMemory {
    /// `(name, dtype, shape, nbytes)` of each tensor, in spec order (what `tensors()` of
    /// either loan returns).
    fn describe(&self) -> Vec<(String, &'static str, Vec<u64>, usize)> {
        self.tensors
            .iter()
            .map(|t| (t.0.clone(), t.1, t.2.clone(), t.4))
            .collect()
    }

    fn of(loan: &mut impl InPlace, spec: &LoanSpec) -> PyResult<LoanMemory> {
        let mut tensors = Vec::with_capacity(spec.tensors.len());
        for (name, dtype, shape) in &spec.tensors {
            let index = loan.index(name).ok_or_else(|| {
                coded(
                    ShmexError::new_err(format!("internal error: tensor {name:?} not in the loan")),
                    ErrorCode::NoSuchTensor,
                )
            })?;
            let bytes = loan
                .bytes(index)
                .map_err(|e| coded_error("cannot view the loan", &e))?;
            tensors.push((
                name.clone(),
                dtype.as_str(),
                shape.clone(),
                bytes.as_mut_ptr() as usize,
                bytes.len(),
            ));
        }
        let opaque = if spec.opaque_len > 0 {
            let bytes = loan
                .opaque()
                .map_err(|e| coded_error("cannot view the loan", &e))?;
            (bytes.as_mut_ptr() as usize, bytes.len())
        } else {
            (0, 0)
        };
        Ok(LoanMemory { tensors, opaque })
    }

    /// `(lease, address, nbytes)` of tensor `index` (`None`: the opaque bytes).
    fn lease<L: Send + 'static>(
        &self,
        cell: &Arc<LoanCell<L>>,
        index: Option<usize>,
    ) -> PyResult<(LoanLease, usize, usize)> {
        let (address, len) = match index {
            Some(i) => self.tensors.get(i).map(|t| (t.3, t.4)).ok_or_else(|| {
                value_error(
                    format!("no tensor {i} (the loan has {})", self.tensors.len()),
                    ErrorCode::NoSuchTensor,
                )
            })?,
            None => self.opaque,
        };
        cell.lease()?;
        let cell: Arc<dyn LeaseRelease> = Arc::clone(cell) as Arc<dyn LeaseRelease>;
        Ok((LoanLease { cell }, address, len))
    }
}

/// A result being built in place (`shmex.ResultLoan` wraps it).
#[pyclass(name = "_ResultLoan", module = "shmex._shmex", frozen)]
struct PyResultLoan {
    cell: Arc<LoanCell<ResultLoan>>,
    memory: LoanMemory,
    task_id: String,
}

impl Drop for PyResultLoan {
    fn drop(&mut self) {
        self.cell.abandon();
    }
}

#[pymethods]
impl PyResultLoan {
    /// The id of the task this result answers.
    fn task_id(&self) -> String {
        self.task_id.clone()
    }

    /// `(name, dtype, shape, nbytes)` of each tensor, in spec order.
    fn tensors(&self) -> Vec<(String, &'static str, Vec<u64>, usize)> {
        self.memory.describe()
    }

    /// `(lease, address, nbytes)` of tensor `index` (`None`: the opaque bytes); the memory
    /// stays this loan's while the lease lives.
    #[pyo3(signature = (index))]
    fn lease(&self, index: Option<usize>) -> PyResult<(LoanLease, usize, usize)> {
        guarded(|| self.memory.lease(&self.cell, index))
    }

    /// Leases alive.
    fn leases(&self) -> usize {
        self.cell.leases()
    }

    /// `open`, `committed`, `abandoned` or `abandoned (arrays alive)`.
    fn state(&self) -> &'static str {
        self.cell.phase_name()
    }

    /// Sends the result with `return_code`; whether the exchanger accepted it.
    fn commit(&self, py: Python<'_>, return_code: &str) -> PyResult<bool> {
        guarded(|| {
            let rc = parse_return_code(return_code)?;
            let loan = self.cell.take_for_commit()?;
            let (committed, _) = run_abortable(py, None, None, move |signal| {
                loan.commit_abortable(rc, signal)
            })?;
            committed.map_err(|e| submit_error("cannot commit the result loan", e))
        })
    }

    /// Abandons the loan (nothing is sent); does nothing once committed or abandoned.
    fn abandon(&self) {
        self.cell.abandon();
    }
}

/// A task being built in place (`shmex.TaskLoan` wraps it).
#[pyclass(name = "_TaskLoan", module = "shmex._shmex", frozen)]
struct PyTaskLoan {
    cell: Arc<LoanCell<TaskLoan>>,
    memory: LoanMemory,
    task_id: String,
}

impl Drop for PyTaskLoan {
    fn drop(&mut self) {
        self.cell.abandon();
    }
}

#[pymethods]
impl PyTaskLoan {
    /// The task id.
    fn task_id(&self) -> String {
        self.task_id.clone()
    }

    /// `(name, dtype, shape, nbytes)` of each tensor, in spec order.
    fn tensors(&self) -> Vec<(String, &'static str, Vec<u64>, usize)> {
        self.memory.describe()
    }

    /// As `_ResultLoan.lease`.
    #[pyo3(signature = (index))]
    fn lease(&self, index: Option<usize>) -> PyResult<(LoanLease, usize, usize)> {
        guarded(|| self.memory.lease(&self.cell, index))
    }

    /// Leases alive.
    fn leases(&self) -> usize {
        self.cell.leases()
    }

    /// As `_ResultLoan.state`.
    fn state(&self) -> &'static str {
        self.cell.phase_name()
    }

    /// Sends the task and waits for its result: `(rc, data_kind, message)`.
    #[pyo3(signature = (abort, timeout))]
    fn execute(
        &self,
        py: Python<'_>,
        abort: Option<Py<PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<(&'static str, Option<&'static str>, Option<Message>)> {
        guarded(|| {
            let timeout = optional_seconds("timeout", timeout)?;
            let loan = self.cell.take_for_commit()?;
            run_task(py, abort, timeout, move |signal| loan.execute(signal))
        })
    }

    /// Abandons the loan (nothing is sent, the task ends); does nothing once executed or
    /// abandoned.
    fn abandon(&self) {
        self.cell.abandon();
    }
}

/// Why no task loan was made, with the return code `execute` would give in `rc`.
fn task_loan_error(e: TaskLoanError) -> PyErr {
    let context = "cannot lend a task";
    let err = match e {
        // The exchanger's own state, not the agent's: not `AgentClosed`.
        TaskLoanError::Closed | TaskLoanError::Aborted => {
            coded(ShmexError::new_err(format!("{context}: {e}")), e.code())
        }
        _ => coded_error(context, &e),
    };
    Python::attach(|py| {
        let _ = err.value(py).setattr("rc", e.rc().as_str());
    });
    err
}

/// `(rc, data_kind, message)` of a reply; `TASK_ABORTED` becomes `TIMEOUT` when the caller's
/// timeout aborted it.
fn reply_parts(
    reply: Reply,
    timed_out: bool,
) -> (&'static str, Option<&'static str>, Option<Message>) {
    let rc = match reply.rc {
        ReturnCode::TaskAborted if timed_out => ReturnCode::Timeout,
        rc => rc,
    };
    (
        rc.as_str(),
        reply.data_kind.map(DataKind::as_str),
        reply.result.map(|message| Message { message }),
    )
}

/// The compiled module; `shmex/__init__.py` re-exports what users see.
#[pymodule]
fn _shmex(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ShmexError", py.get_type::<ShmexError>())?;
    m.add("AgentClosed", py.get_type::<AgentClosed>())?;
    m.add("CallStateError", py.get_type::<CallStateError>())?;
    // Errors made without a code (an internal error) still have the attribute.
    py.get_type::<ShmexError>().setattr("code", py.None())?;
    m.add(
        "ERROR_CODES",
        ErrorCode::ALL.iter().map(|c| c.name()).collect::<Vec<_>>(),
    )?;
    m.add("SEGMENT_PREFIX", shmex::segment::NAME_PREFIX)?;
    m.add("DEFAULT_RING_CAPACITY", shmex::link::DEFAULT_RING_CAPACITY)?;
    m.add(
        "RETURN_CODES",
        ReturnCode::ALL
            .iter()
            .map(|rc| rc.as_str())
            .collect::<Vec<_>>(),
    )?;
    m.add(
        "DATA_KINDS",
        DataKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
    )?;
    m.add_class::<PyExchanger>()?;
    m.add_class::<PyAgent>()?;
    m.add_class::<Message>()?;
    m.add_class::<PyResultLoan>()?;
    m.add_class::<PyTaskLoan>()?;
    m.add_class::<LoanLease>()?;
    Ok(())
}
