//! `shmex._shmex`: the compiled half of the `shmex` Python package.
//!
//! A thin layer over [`shmex::protocol`]: the pure-Python package (`python/shmex/`) checks
//! and converts arguments (numpy arrays, meta dicts, FLARE's names) and calls the private
//! classes here, which only
//! - build a [`Dxo`] over the caller's array memory (no copy until the ring),
//! - run each blocking protocol call with the GIL released, in slices of `SLICE` so that
//!   Ctrl-C (Python's signal handlers) and the caller's abort event are answered,
//! - hand received messages back as `Message` objects that own the [`OwnedMessage`]; the
//!   Python side views its tensors as numpy arrays whose base keeps that object alive,
//! - map every Rust error to a Python exception by an exhaustive `match`.
//!
//! No panic crosses into Python: every entry point runs under `guarded`, and every helper
//! thread under `catch_unwind`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use serde_json::{Map, Value};
use shmex::frame::{DType, DataKind, Dxo, DxoError, OwnedMessage, ReturnCode, SendError};
use shmex::link::LinkAttachError;
use shmex::protocol::{
    AbortSignal, Agent, AgentAttachError, AgentConfig, AgentStatus, CloseError, Exchanger,
    ExchangerConfig, ExchangerCreateError, ExchangerStatus, GetTaskError, Headers, RestartPolicy,
    SubmitError,
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

/// The longest the GIL is released in one go by a blocking call: signal handlers (Ctrl-C)
/// and the caller's abort event are looked at least this often.
const SLICE: Duration = Duration::from_millis(50);

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

/// A duration in seconds from Python: finite and not negative.
fn seconds(what: &str, secs: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| {
        PyValueError::new_err(format!(
            "{what} must be a finite number of seconds >= 0, got {secs}"
        ))
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
    SegmentName::for_agent(site, agent_id).map_err(|e| PyValueError::new_err(e.to_string()))
}

fn parse_meta(meta_json: &str) -> PyResult<Map<String, Value>> {
    serde_json::from_str(meta_json)
        .map_err(|e| PyValueError::new_err(format!("meta is not a JSON object: {e}")))
}

fn parse_kind(data_kind: &str) -> PyResult<DataKind> {
    data_kind
        .parse()
        .map_err(|_| PyValueError::new_err(format!("unknown data kind {data_kind:?}")))
}

fn dxo_error(e: DxoError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

// ---------------------------------------------------------------------------------------
// Outgoing data: a DXO over the memory of the caller's arrays.

/// One tensor to send: its spec and where its bytes are.
struct OutTensor {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    address: usize,
    len: usize,
}

/// What is sent: the DXO's parts, with the Python objects whose memory the tensors (and the
/// opaque bytes) are, so that this memory stays valid as long as the payload lives — also
/// on a helper thread that outlives an interrupted call.
struct Payload {
    data_kind: DataKind,
    meta: Map<String, Value>,
    tensors: Vec<OutTensor>,
    opaque: Option<(usize, usize)>,
    /// Owned references to the arrays; dropped with the payload.
    _keep_alive: Vec<Py<PyAny>>,
}

/// The address and byte length of a C-contiguous array, read from numpy's array interface
/// (`__array_interface__`: `strides` is `None` for a C-contiguous array).
fn array_memory(array: &Bound<'_, PyAny>, what: &str) -> PyResult<(usize, usize)> {
    let interface = array.getattr("__array_interface__")?;
    let interface = interface.cast::<PyDict>()?;
    let strides = interface.get_item("strides")?;
    if strides.is_some_and(|s| !s.is_none()) {
        return Err(PyValueError::new_err(format!("{what} is not C-contiguous")));
    }
    let data = interface
        .get_item("data")?
        .ok_or_else(|| PyTypeError::new_err(format!("{what} has no data pointer")))?;
    let address: usize = data.cast::<PyTuple>()?.get_item(0)?.extract()?;
    let len: usize = array.getattr("nbytes")?.extract()?;
    Ok((address, len))
}

impl Payload {
    /// `tensors`: `(name, dtype, shape, array)` with `array` C-contiguous; `opaque`: a
    /// contiguous uint8 array.
    fn new(
        data_kind: &str,
        meta_json: &str,
        tensors: Vec<(String, String, Vec<u64>, Bound<'_, PyAny>)>,
        opaque: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Payload> {
        let mut keep_alive = Vec::with_capacity(tensors.len() + 1);
        let mut out = Vec::with_capacity(tensors.len());
        for (name, dtype, shape, array) in tensors {
            let dtype: DType = dtype.parse().map_err(|_| {
                PyTypeError::new_err(format!("tensor {name:?}: unknown dtype {dtype:?}"))
            })?;
            let (address, len) = array_memory(&array, &format!("tensor {name:?}"))?;
            keep_alive.push(array.unbind());
            out.push(OutTensor {
                name,
                dtype,
                shape,
                address,
                len,
            });
        }
        let opaque = match opaque {
            Some(array) => {
                let memory = array_memory(&array, "the opaque data")?;
                keep_alive.push(array.unbind());
                Some(memory)
            }
            None => None,
        };
        let payload = Payload {
            data_kind: parse_kind(data_kind)?,
            meta: parse_meta(meta_json)?,
            tensors: out,
            opaque,
            _keep_alive: keep_alive,
        };
        // Checks names, shapes and lengths now, so that a bad input raises before anything
        // is sent.
        payload.dxo().map_err(dxo_error)?;
        Ok(payload)
    }

    /// The DXO, borrowing the arrays' memory for as long as `self` is borrowed.
    fn dxo(&self) -> Result<Dxo<'_>, DxoError> {
        let mut dxo = Dxo::new(self.data_kind).with_meta_map(self.meta.clone());
        for t in &self.tensors {
            dxo = dxo.with_tensor_bytes(
                t.name.clone(),
                t.dtype,
                &t.shape,
                self.bytes(t.address, t.len),
            )?;
        }
        if let Some((address, len)) = self.opaque {
            dxo = dxo.with_opaque(self.bytes(address, len))?;
        }
        Ok(dxo)
    }

    fn bytes(&self, address: usize, len: usize) -> &[u8] {
        if len == 0 {
            return &[];
        }
        // SAFETY: `address`/`len` are the data pointer and `nbytes` numpy reported for a
        // C-contiguous array that `_keep_alive` holds a reference to, so the allocation is
        // live for as long as `self` (numpy refuses to resize an array someone else
        // references, and a u8 slice has no alignment requirement). The slice is only read
        // (copied into the ring); the package documents that arrays must not be written by
        // another thread while they are being sent, as for any numpy call that releases the
        // GIL.
        unsafe { std::slice::from_raw_parts(address as *const u8, len) }
    }
}

// ---------------------------------------------------------------------------------------
// Blocking calls: on a helper thread, waited for in slices with the GIL released.

/// What happens to the helper thread when the caller is interrupted (`KeyboardInterrupt`,
/// or any exception raised between slices).
enum OnInterrupt {
    /// Trigger this signal (the call then returns promptly) and wait for it to finish.
    Abort(AbortSignal),
    /// Leave the call running to its own end; its outcome is dropped.
    Abandon,
}

/// Runs `work` on a helper thread and waits for it with the GIL released, at most [`SLICE`]
/// at a time; between slices runs Python's signal handlers and `between` (which may trigger
/// an abort, or raise).
fn run_blocking<T: Send + 'static>(
    py: Python<'_>,
    work: impl FnOnce() -> T + Send + 'static,
    mut between: impl FnMut(Python<'_>) -> PyResult<()>,
    on_interrupt: OnInterrupt,
) -> PyResult<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("shmex-python-call".into())
        .spawn(move || {
            let outcome = catch_unwind(AssertUnwindSafe(work));
            // The receiver is gone only when the caller abandoned the call.
            let _ = tx.send(outcome);
        })
        .map_err(|e| ShmexError::new_err(format!("cannot start a helper thread: {e}")))?;
    let mut rx = rx;
    loop {
        // The receiver is not `Sync`: it travels into the GIL-free closure and back.
        let (back, received) = py.detach(move || {
            let received = rx.recv_timeout(SLICE);
            (rx, received)
        });
        rx = back;
        match received {
            Ok(outcome) => return outcome.map_err(|p| panic_error(&*p)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(ShmexError::new_err(
                    "internal error in shmex: the helper thread vanished",
                ))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Err(e) = py.check_signals().and_then(|()| between(py)) {
            if let OnInterrupt::Abort(signal) = &on_interrupt {
                signal.abort();
                // The call ends promptly once aborted; its outcome is superseded by `e`.
                let _ = py.detach(move || rx.recv());
            }
            return Err(e);
        }
    }
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
    exchanger: Arc<Exchanger>,
}

fn create_error(e: ExchangerCreateError) -> PyErr {
    match e {
        ExchangerCreateError::Link(e) => {
            ShmexError::new_err(format!("cannot create the link: {e}"))
        }
        ExchangerCreateError::Spawn(e) => {
            ShmexError::new_err(format!("cannot start the exchanger: {e}"))
        }
    }
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
        result_ring_capacity, reclaim_stale))]
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
    ) -> PyResult<PyExchanger> {
        guarded(|| {
            let name = segment_name(site, agent_id)?;
            let on_agent_restart = match on_agent_restart {
                "redeliver" => RestartPolicy::Redeliver,
                "fail" => RestartPolicy::Fail,
                other => {
                    return Err(PyValueError::new_err(format!(
                        "on_agent_restart must be 'redeliver' or 'fail', got {other:?}"
                    )))
                }
            };
            // Struct update from the default: fields the binding does not set keep it.
            let config = ExchangerConfig {
                send_task_timeout: seconds("send_task_timeout", send_task_timeout)?,
                resend_task_interval: seconds("resend_task_interval", resend_task_interval)?,
                agent_connection_timeout: seconds(
                    "agent_connection_timeout",
                    agent_connection_timeout,
                )?,
                agent_heartbeat_timeout: optional_seconds(
                    "agent_heartbeat_timeout",
                    agent_heartbeat_timeout,
                )?,
                agent_heartbeat_interval: seconds(
                    "agent_heartbeat_interval",
                    agent_heartbeat_interval,
                )?,
                agent_ack_timeout: seconds("agent_ack_timeout", agent_ack_timeout)?,
                result_timeout: optional_seconds("result_timeout", result_timeout)?,
                on_agent_restart,
                task_ring_capacity,
                result_ring_capacity,
                reclaim_stale,
                ..ExchangerConfig::default()
            };
            let exchanger = py
                .detach(|| Exchanger::create(&name, config))
                .map_err(create_error)?;
            Ok(PyExchanger {
                exchanger: Arc::new(exchanger),
            })
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
        task_name: String,
        task_id: String,
        data_kind: &str,
        meta_json: &str,
        tensors: Vec<(String, String, Vec<u64>, Bound<'_, PyAny>)>,
        opaque: Option<Bound<'_, PyAny>>,
        current_round: Option<i64>,
        total_round: Option<i64>,
        abort: Option<Py<PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<(&'static str, Option<&'static str>, Option<Message>)> {
        guarded(|| {
            let deadline =
                optional_seconds("timeout", timeout)?.and_then(|t| Instant::now().checked_add(t));
            let payload = Payload::new(data_kind, meta_json, tensors, opaque)?;
            let headers = Headers {
                task_id,
                current_round,
                num_rounds: total_round,
            };
            let signal = AbortSignal::new();
            if abort_requested(&abort, py)? {
                signal.abort();
            }
            let exchanger = Arc::clone(&self.exchanger);
            let worker_signal = signal.clone();
            let work = move || {
                let dxo = payload.dxo();
                dxo.map(|dxo| exchanger.execute(&task_name, &dxo, &headers, &worker_signal))
            };
            let mut timed_out = false;
            let between = |py: Python<'_>| {
                if abort_requested(&abort, py)? {
                    signal.abort();
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    timed_out = true;
                    signal.abort();
                }
                Ok(())
            };
            let reply = run_blocking(py, work, between, OnInterrupt::Abort(signal.clone()))?
                .map_err(dxo_error)?;
            let rc = match reply.rc {
                ReturnCode::TaskAborted if timed_out => ReturnCode::Timeout,
                rc => rc,
            };
            Ok((
                rc.as_str(),
                reply.data_kind.map(DataKind::as_str),
                reply.result.map(|message| Message { message }),
            ))
        })
    }

    /// Says bye to the agent and removes the segment; later calls do nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        guarded(|| {
            py.detach(|| self.exchanger.close()).map_err(|e| match e {
                CloseError::Bye(e) => {
                    ShmexError::new_err(format!("closed, but the agent was not told: {e}"))
                }
            })
        })
    }
}

// ---------------------------------------------------------------------------------------
// The agent.

/// The trainer side (`shmex.Agent` wraps it).
#[pyclass(name = "_Agent", module = "shmex._shmex", frozen)]
struct PyAgent {
    agent: Arc<Agent>,
}

fn attach_error(e: AgentAttachError) -> PyErr {
    match e {
        AgentAttachError::Link(e) => match e {
            LinkAttachError::Timeout { .. } => {
                ShmexError::new_err(format!("no exchanger to attach to: {e}"))
            }
            LinkAttachError::Open(_)
            | LinkAttachError::Layout(_)
            | LinkAttachError::Attach(_)
            | LinkAttachError::Ring(_)
            | LinkAttachError::RingTooSmall { .. } => {
                ShmexError::new_err(format!("cannot attach: {e}"))
            }
        },
        AgentAttachError::Spawn(e) => ShmexError::new_err(format!("cannot start the agent: {e}")),
    }
}

fn agent_status(status: AgentStatus) -> &'static str {
    match status {
        AgentStatus::Connected => "connected",
        AgentStatus::Disconnected => "disconnected",
        AgentStatus::Lost => "lost",
        AgentStatus::Closed => "closed",
    }
}

fn send_error(e: SendError) -> PyErr {
    match e {
        SendError::TooLargeForFormat { .. } | SendError::TooLargeForLoan { .. } => {
            PyValueError::new_err(e.to_string())
        }
        SendError::Corrupt(_)
        | SendError::PeerLost(_)
        | SendError::Timeout
        | SendError::Cancelled => ShmexError::new_err(e.to_string()),
    }
}

#[pymethods]
impl PyAgent {
    /// Attaches to the link `shmex.<site>.<agent_id>`, waiting up to `attach_timeout` for a
    /// live exchanger (see `shmex.Agent` for the options).
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (site, agent_id, submit_result_timeout, flare_site_connection_timeout,
        flare_site_heartbeat_timeout, resend_result_interval, attach_timeout, heartbeat_interval))]
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
    ) -> PyResult<PyAgent> {
        guarded(|| {
            let name = segment_name(site, agent_id)?;
            let config = AgentConfig {
                submit_result_timeout: seconds("submit_result_timeout", submit_result_timeout)?,
                flare_site_connection_timeout: seconds(
                    "flare_site_connection_timeout",
                    flare_site_connection_timeout,
                )?,
                flare_site_heartbeat_timeout: optional_seconds(
                    "flare_site_heartbeat_timeout",
                    flare_site_heartbeat_timeout,
                )?,
                resend_result_interval: seconds("resend_result_interval", resend_result_interval)?,
                attach_timeout: seconds("attach_timeout", attach_timeout)?,
                heartbeat_interval: seconds("heartbeat_interval", heartbeat_interval)?,
                ..AgentConfig::default()
            };
            // Interrupted: the attach finishes on its own (within attach_timeout) and the
            // agent it made is dropped, which detaches.
            let agent = run_blocking(
                py,
                move || Agent::attach(&name, config),
                |_| Ok(()),
                OnInterrupt::Abandon,
            )?
            .map_err(attach_error)?;
            Ok(PyAgent {
                agent: Arc::new(agent),
            })
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
                let slice = deadline.map_or(SLICE, |d| {
                    d.saturating_duration_since(Instant::now()).min(SLICE)
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
                    Err(e) => {
                        return Err(match e {
                            GetTaskError::Closed => AgentClosed::new_err(e.to_string()),
                            GetTaskError::CallState => CallStateError::new_err(e.to_string()),
                        })
                    }
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
            let rc: ReturnCode = return_code.parse().map_err(|_| {
                PyValueError::new_err(format!("unknown return code {return_code:?}"))
            })?;
            let payload = Payload::new(data_kind, meta_json, tensors, opaque)?;
            let agent = Arc::clone(&self.agent);
            let work = move || {
                let dxo = payload.dxo();
                dxo.map(|dxo| agent.submit_result(&dxo, rc))
            };
            // Interrupted: the submission cannot be taken back once it is in the ring; it
            // completes (or fails) on its own.
            let submitted =
                run_blocking(py, work, |_| Ok(()), OnInterrupt::Abandon)?.map_err(dxo_error)?;
            submitted.map_err(|e| match e {
                SubmitError::Closed => AgentClosed::new_err(e.to_string()),
                SubmitError::Send(e) => send_error(e),
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

/// The compiled module; `shmex/__init__.py` re-exports what users see.
#[pymodule]
fn _shmex(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ShmexError", py.get_type::<ShmexError>())?;
    m.add("AgentClosed", py.get_type::<AgentClosed>())?;
    m.add("CallStateError", py.get_type::<CallStateError>())?;
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
    Ok(())
}
