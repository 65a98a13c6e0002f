//! The C types: opaque handles, the enumerations (numbers equal to the wire's), and the
//! structs the caller fills or reads. Every enumeration travels as `uint32_t`; the Rust side
//! decodes numbers from C with a check, never by transmuting into a Rust enum.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void};

use shmex::frame::{DType, DataKind, ReturnCode};

use crate::status::Failure;

/// An exchanger: the FL-client side; owns the link. Made by `shmex_exchanger_create`, freed
/// by `shmex_exchanger_free`.
pub struct shmex_exchanger {
    _opaque: [u8; 0],
}

/// An agent: the trainer side; attaches to an exchanger's link. Made by
/// `shmex_agent_attach`, freed by `shmex_agent_free`.
pub struct shmex_agent {
    _opaque: [u8; 0],
}

/// A task fetched by `shmex_agent_get_task`: id, name, meta, tensors. Freed by
/// `shmex_task_free`; every pointer read from it stays valid until then.
pub struct shmex_task {
    _opaque: [u8; 0],
}

/// The reply of `shmex_exchanger_execute`: return code and, on success, the result's data.
/// Freed by `shmex_reply_free`; every pointer read from it stays valid until then.
pub struct shmex_reply {
    _opaque: [u8; 0],
}

/// An abort flag for `shmex_exchanger_execute`, settable from any thread
/// (`shmex_abort_trigger`). Made by `shmex_abort_new`, freed by `shmex_abort_free`.
pub struct shmex_abort {
    _opaque: [u8; 0],
}

/// A result being written in place in the result ring (`shmex_agent_loan_result`): fill its
/// tensors through `shmex_result_loan_tensor`, then `shmex_result_loan_commit` it, or
/// `shmex_result_loan_abandon` it. Either ends the handle.
pub struct shmex_result_loan {
    _opaque: [u8; 0],
}

/// A task being written in place in the task ring (`shmex_exchanger_loan_task`): fill its
/// tensors through `shmex_task_loan_tensor`, then `shmex_task_loan_execute` it, or
/// `shmex_task_loan_abandon` it. Either ends the handle.
pub struct shmex_task_loan {
    _opaque: [u8; 0],
}

/// Tensor element types (the wire's numbers).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum shmex_dtype {
    /// IEEE 754 half precision (its 16 bits).
    SHMEX_DTYPE_F16 = 1,
    /// bfloat16 (its 16 bits).
    SHMEX_DTYPE_BF16 = 2,
    /// 32-bit float (`float`, Fortran `real(c_float)`).
    SHMEX_DTYPE_F32 = 3,
    /// 64-bit float (`double`, Fortran `real(c_double)`).
    SHMEX_DTYPE_F64 = 4,
    /// `int8_t`.
    SHMEX_DTYPE_I8 = 5,
    /// `int16_t`.
    SHMEX_DTYPE_I16 = 6,
    /// `int32_t`.
    SHMEX_DTYPE_I32 = 7,
    /// `int64_t`.
    SHMEX_DTYPE_I64 = 8,
    /// `uint8_t`.
    SHMEX_DTYPE_U8 = 9,
    /// `uint16_t`.
    SHMEX_DTYPE_U16 = 10,
    /// `uint32_t`.
    SHMEX_DTYPE_U32 = 11,
    /// `uint64_t`.
    SHMEX_DTYPE_U64 = 12,
    /// One byte holding 0 or 1.
    SHMEX_DTYPE_BOOL = 13,
}

/// What a DXO carries (FLARE's `DataKind`, the wire's numbers); `SHMEX_DATA_KIND_NONE` is
/// what a bare reply reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum shmex_data_kind {
    /// No data (a bare reply).
    SHMEX_DATA_KIND_NONE = 0,
    /// FL_MODEL.
    SHMEX_DATA_KIND_FL_MODEL = 1,
    /// WEIGHTS.
    SHMEX_DATA_KIND_WEIGHTS = 2,
    /// WEIGHT_DIFF.
    SHMEX_DATA_KIND_WEIGHT_DIFF = 3,
    /// METRICS.
    SHMEX_DATA_KIND_METRICS = 4,
    /// ANALYTIC.
    SHMEX_DATA_KIND_ANALYTIC = 5,
    /// COLLECTION.
    SHMEX_DATA_KIND_COLLECTION = 6,
    /// STATISTICS.
    SHMEX_DATA_KIND_STATISTICS = 7,
    /// PSI.
    SHMEX_DATA_KIND_PSI = 8,
    /// APP_DEFINED.
    SHMEX_DATA_KIND_APP_DEFINED = 9,
}

/// FLARE's return codes (`nvflare.apis.fl_constant.ReturnCode`, the wire's numbers).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum shmex_rc {
    /// OK.
    SHMEX_RC_OK = 0,
    /// BAD_PEER_CONTEXT.
    SHMEX_RC_BAD_PEER_CONTEXT = 1,
    /// BAD_REQUEST_DATA: a task without data, or sent while another is in flight.
    SHMEX_RC_BAD_REQUEST_DATA = 2,
    /// BAD_TASK_DATA: an empty task id.
    SHMEX_RC_BAD_TASK_DATA = 3,
    /// COMMUNICATION_ERROR.
    SHMEX_RC_COMMUNICATION_ERROR = 4,
    /// TIMEOUT: `result_timeout` passed.
    SHMEX_RC_TIMEOUT = 5,
    /// ERROR.
    SHMEX_RC_ERROR = 6,
    /// EXECUTION_EXCEPTION.
    SHMEX_RC_EXECUTION_EXCEPTION = 7,
    /// EXECUTION_RESULT_ERROR.
    SHMEX_RC_EXECUTION_RESULT_ERROR = 8,
    /// HANDLER_EXCEPTION.
    SHMEX_RC_HANDLER_EXCEPTION = 9,
    /// MISSING_PEER_CONTEXT.
    SHMEX_RC_MISSING_PEER_CONTEXT = 10,
    /// RUN_MISMATCH.
    SHMEX_RC_RUN_MISMATCH = 11,
    /// TASK_ABORTED: aborted, or the exchanger closed or stopped.
    SHMEX_RC_TASK_ABORTED = 12,
    /// TASK_DATA_FILTER_ERROR.
    SHMEX_RC_TASK_DATA_FILTER_ERROR = 13,
    /// TASK_RESULT_FILTER_ERROR.
    SHMEX_RC_TASK_RESULT_FILTER_ERROR = 14,
    /// TASK_UNKNOWN.
    SHMEX_RC_TASK_UNKNOWN = 15,
    /// TASK_UNSUPPORTED.
    SHMEX_RC_TASK_UNSUPPORTED = 16,
    /// TOPIC_UNKNOWN.
    SHMEX_RC_TOPIC_UNKNOWN = 17,
    /// MODEL_UNRECOGNIZED.
    SHMEX_RC_MODEL_UNRECOGNIZED = 18,
    /// VALIDATE_TYPE_UNKNOWN.
    SHMEX_RC_VALIDATE_TYPE_UNKNOWN = 19,
    /// EMPTY_RESULT.
    SHMEX_RC_EMPTY_RESULT = 20,
    /// UNSAFE_JOB.
    SHMEX_RC_UNSAFE_JOB = 21,
    /// EARLY_TERMINATION: training stopped early; still a valid result.
    SHMEX_RC_EARLY_TERMINATION = 22,
    /// SERVER_NOT_READY.
    SHMEX_RC_SERVER_NOT_READY = 23,
    /// SERVICE_UNAVAILABLE.
    SHMEX_RC_SERVICE_UNAVAILABLE = 24,
}

/// What the exchanger does with the in-flight task when the agent process it went to ends
/// before answering (`shmex_exchanger_options.on_agent_restart`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum shmex_restart_policy {
    /// Send it again to the next agent incarnation (default).
    SHMEX_RESTART_REDELIVER = 0,
    /// End `shmex_exchanger_execute` with `SHMEX_RC_EXECUTION_EXCEPTION`.
    SHMEX_RESTART_FAIL = 1,
}

/// The exchanger's view of the agent (`shmex_exchanger_status`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum shmex_exchanger_state {
    /// No agent is attached.
    SHMEX_EXCHANGER_NO_AGENT = 0,
    /// An agent is attached and beating.
    SHMEX_EXCHANGER_CONNECTED = 1,
    /// An agent is attached but silent for `agent_connection_timeout`.
    SHMEX_EXCHANGER_DISCONNECTED = 2,
    /// The agent was silent for `agent_heartbeat_timeout` or the link is corrupt: every
    /// execute returns `SHMEX_RC_TASK_ABORTED`.
    SHMEX_EXCHANGER_STOPPED = 3,
    /// `shmex_exchanger_close` was called.
    SHMEX_EXCHANGER_CLOSED = 4,
}

/// The agent's view of the exchanger (`shmex_agent_status`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum shmex_agent_state {
    /// The exchanger is alive and beating.
    SHMEX_AGENT_CONNECTED = 0,
    /// The exchanger is silent for `flare_site_connection_timeout`.
    SHMEX_AGENT_DISCONNECTED = 1,
    /// The exchanger's process died; the agent waits for a new one on the same name.
    SHMEX_AGENT_LOST = 2,
    /// Bye arrived, the exchanger detached or fell silent, or `shmex_agent_close` was called.
    SHMEX_AGENT_CLOSED = 3,
}

/// One tensor: given by the caller to send (execute, submit), or filled by shmex to describe
/// a received one (a view in place: nothing is copied).
///
/// Received: `name`, `shape` and `data` point into the task or reply they came from and stay
/// valid until that handle is freed; `data` is 64-byte aligned; for `len == 0` it is some
/// non-NULL address that must not be read. Elements are row-major (C order): Fortran sees
/// the shape reversed.
///
/// Sent: `name` is a NUL-terminated UTF-8 string; `shape` holds `ndim` (at most 8) extents
/// (may be NULL when `ndim` is 0, a scalar); `data` holds `len` bytes (may be NULL when
/// `len` is 0), which must equal the product of the shape times the dtype's size. shmex
/// reads them during the call only.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct shmex_tensor {
    /// The tensor's name (NUL-terminated; a received name with a NUL byte inside ends there).
    pub name: *const c_char,
    /// The element type, a `shmex_dtype`.
    pub dtype: u32,
    /// The number of dimensions (0 to 8).
    pub ndim: usize,
    /// The extents, `ndim` of them, outermost first.
    pub shape: *const u64,
    /// The bytes.
    pub data: *const c_void,
    /// The number of bytes.
    pub len: usize,
}

/// The data of a task or a result (a DXO): its kind, meta as a JSON object, and tensors. The
/// caller owns everything it points to; shmex reads it during the call only.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct shmex_data {
    /// The data kind, a `shmex_data_kind` other than `SHMEX_DATA_KIND_NONE`.
    pub data_kind: u32,
    /// Meta: a NUL-terminated JSON object (FLARE keys such as `"NUM_STEPS_CURRENT_ROUND"`),
    /// or NULL for none.
    pub meta_json: *const c_char,
    /// The tensors, `tensor_count` of them (NULL when `tensor_count` is 0).
    pub tensors: *const shmex_tensor,
    /// The number of tensors.
    pub tensor_count: usize,
}

/// One tensor of a loan: its name, dtype and shape; shmex reserves its bytes in the ring.
/// shmex reads it during the call only.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct shmex_tensor_spec {
    /// The tensor's name (NUL-terminated UTF-8, not empty, unique within the loan).
    pub name: *const c_char,
    /// The element type, a `shmex_dtype`.
    pub dtype: u32,
    /// The number of dimensions (0 to 8).
    pub ndim: usize,
    /// The extents, `ndim` of them, outermost first (may be NULL when `ndim` is 0).
    pub shape: *const u64,
}

/// What a loan will hold (`shmex_agent_loan_result`, `shmex_exchanger_loan_task`): its kind,
/// meta as a JSON object, and the layout of each tensor. shmex reads it during the call only.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct shmex_loan_spec {
    /// The data kind, a `shmex_data_kind` other than `SHMEX_DATA_KIND_NONE`.
    pub data_kind: u32,
    /// Meta: a NUL-terminated JSON object, or NULL for none.
    pub meta_json: *const c_char,
    /// The tensors, `tensor_count` of them (NULL when `tensor_count` is 0).
    pub tensors: *const shmex_tensor_spec,
    /// The number of tensors.
    pub tensor_count: usize,
}

/// A loaned tensor (`shmex_result_loan_tensor`, `shmex_task_loan_tensor`): writable bytes in
/// shared memory, to be filled in place.
///
/// `data` points into the ring and stays valid until the loan is committed, executed or
/// abandoned (whichever ends its handle); writing through it after that corrupts later
/// messages. It holds whatever the ring held before: write every byte. `data` is aligned
/// for the dtype (64-byte aligned); for `len == 0` it is some non-NULL address that must not
/// be used. `name` and `shape` belong to the loan and stay valid as long. Row-major (C
/// order), as every shmex tensor.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct shmex_tensor_mut {
    /// The tensor's name (NUL-terminated).
    pub name: *const c_char,
    /// The element type, a `shmex_dtype`.
    pub dtype: u32,
    /// The number of dimensions (0 to 8).
    pub ndim: usize,
    /// The extents, `ndim` of them, outermost first.
    pub shape: *const u64,
    /// The bytes, in shared memory: write them.
    pub data: *mut c_void,
    /// The number of bytes.
    pub len: usize,
}

/// FLARE's task headers for `shmex_exchanger_execute`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct shmex_headers {
    /// The task id (NUL-terminated, not empty).
    pub task_id: *const c_char,
    /// FLARE's `current_round` header, copied into the task's meta; negative: none.
    pub current_round: i64,
    /// FLARE's `num_rounds` header, copied into meta `total_round`; negative: none.
    pub num_rounds: i64,
}

/// Options of `shmex_exchanger_create`, named and defaulted as FLARE's `IPCExchanger`
/// (`shmex_exchanger_options_default` fills the defaults). Durations are in seconds.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct shmex_exchanger_options {
    /// Accepted for FLARE parity, not read (5 s).
    pub send_task_timeout: f64,
    /// Accepted for FLARE parity, not read (2 s).
    pub resend_task_interval: f64,
    /// Heartbeat silence after which the agent counts as disconnected (60 s).
    pub agent_connection_timeout: f64,
    /// Heartbeat silence after which the agent is declared dead and the exchanger stops;
    /// negative: off (default).
    pub agent_heartbeat_timeout: f64,
    /// Period of our heartbeat (5 s).
    pub agent_heartbeat_interval: f64,
    /// Deadline for pushing abort and bye to the agent (5 s).
    pub agent_ack_timeout: f64,
    /// Longest wait for a result (then `SHMEX_RC_TIMEOUT`); negative: forever (default).
    pub result_timeout: f64,
    /// A `shmex_restart_policy` (default `SHMEX_RESTART_REDELIVER`).
    pub on_agent_restart: u32,
    /// Data bytes of the task ring (16 MiB).
    pub task_ring_capacity: u64,
    /// Data bytes of the result ring (16 MiB).
    pub result_ring_capacity: u64,
    /// Non-zero: replace a segment of the same name whose owner died (default 1).
    pub reclaim_stale: c_int,
    /// Non-zero: a result that arrived whole (it fit in the result ring) is read in place in
    /// the ring instead of being copied out: zero copies on this side (default 0, off). Its
    /// ring space stays taken until its reply is freed (`shmex_reply_free`), so the agent
    /// cannot send another result that needs that space before then: free each reply before
    /// the next execute, or give the ring room for two. With a result ring at least as large
    /// as the largest result plus `SHMEX_IN_PLACE_KEEP_FREE`, a result built by loan is copied
    /// on neither side; a result too large to hold with that much of the ring left free is
    /// copied out as when this is off. `shmex_reply_is_in_place` tells which happened.
    pub receive_in_place: c_int,
    /// The length in bytes of the largest result expected (a model's tensor bytes will do;
    /// room for headers and the tensor table is added: 1/128 of it plus 1 MiB), or 0: unknown
    /// (default). When set, `shmex_exchanger_create` maps and faults in a receive buffer of
    /// that size before returning (about as long as writing that much memory once), so that
    /// not even the first result larger than the ring takes a page fault; the buffer stays
    /// resident for the life of the exchanger. 0: it is mapped when the first result larger
    /// than the ring arrives.
    pub expected_message_len: u64,
}

/// Options of `shmex_agent_attach`, named and defaulted as FLARE's `IPCAgent`
/// (`shmex_agent_options_default` fills the defaults). Durations are in seconds.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct shmex_agent_options {
    /// Bound on pushing an answer into the exchanger's ring (30 s).
    pub submit_result_timeout: f64,
    /// Exchanger heartbeat silence after which it counts as disconnected (60 s).
    pub flare_site_connection_timeout: f64,
    /// Exchanger heartbeat silence after which the agent closes; negative: off (default).
    pub flare_site_heartbeat_timeout: f64,
    /// Accepted for FLARE parity, not read (2 s).
    pub resend_result_interval: f64,
    /// How long `shmex_agent_attach` waits for a live exchanger (60 s).
    pub attach_timeout: f64,
    /// Period of our heartbeat (5 s).
    pub heartbeat_interval: f64,
    /// Non-zero: a task that arrived whole (it fit in the task ring) is read in place in the
    /// ring instead of being copied out: zero copies on this side (default 0, off). Its ring
    /// space stays taken until the task is freed (`shmex_task_free`), so the exchanger cannot
    /// send another task that needs that space before then: free each task before waiting
    /// for the next (`shmex_agent_get_task`), or give the ring room for two. Aborts and bye
    /// still arrive while a task is held. With a task ring at least as large as the largest
    /// task plus `SHMEX_IN_PLACE_KEEP_FREE`, a task built by loan
    /// (`shmex_exchanger_loan_task`) and answered by loan (`shmex_agent_loan_result`) is
    /// copied on neither side; a task too large to hold with that much of the ring left free
    /// is copied out as when this is off. `shmex_task_is_in_place` tells which happened.
    pub receive_in_place: c_int,
    /// The length in bytes of the largest task expected (a model's tensor bytes will do; room
    /// for headers and the tensor table is added: 1/128 of it plus 1 MiB), or 0: unknown
    /// (default). When set, `shmex_agent_attach` maps and faults in a receive buffer of that
    /// size before returning (about as long as writing that much memory once), so that not
    /// even the first task larger than the ring takes a page fault; the buffer stays resident
    /// for the life of the agent. 0: it is mapped when the first task larger than the ring
    /// arrives.
    pub expected_message_len: u64,
}

/// Bytes of a ring that `receive_in_place` keeps free behind a message it holds, for the
/// messages that must still get through (acks, abort, bye): a message is read in place only
/// if it leaves this much of its ring free (`shmex::protocol::IN_PLACE_KEEP_FREE`, 64 KiB).
/// Size a ring for in-place reading as the largest message plus this.
// A literal, not the Rust constant: cbindgen writes only literals into the header (the
// assertion below keeps the two equal).
pub const SHMEX_IN_PLACE_KEEP_FREE: u64 = 65536;

const _: () = assert!(SHMEX_IN_PLACE_KEEP_FREE == shmex::protocol::IN_PLACE_KEEP_FREE);

/// The C number of a dtype (exhaustive: a new dtype does not compile until it is here).
pub(crate) fn dtype_to_c(dtype: DType) -> shmex_dtype {
    use shmex_dtype::*;
    match dtype {
        DType::F16 => SHMEX_DTYPE_F16,
        DType::BF16 => SHMEX_DTYPE_BF16,
        DType::F32 => SHMEX_DTYPE_F32,
        DType::F64 => SHMEX_DTYPE_F64,
        DType::I8 => SHMEX_DTYPE_I8,
        DType::I16 => SHMEX_DTYPE_I16,
        DType::I32 => SHMEX_DTYPE_I32,
        DType::I64 => SHMEX_DTYPE_I64,
        DType::U8 => SHMEX_DTYPE_U8,
        DType::U16 => SHMEX_DTYPE_U16,
        DType::U32 => SHMEX_DTYPE_U32,
        DType::U64 => SHMEX_DTYPE_U64,
        DType::Bool => SHMEX_DTYPE_BOOL,
    }
}

/// The C number of a data kind (exhaustive).
pub(crate) fn data_kind_to_c(kind: Option<DataKind>) -> shmex_data_kind {
    use shmex_data_kind::*;
    match kind {
        None => SHMEX_DATA_KIND_NONE,
        Some(DataKind::FlModel) => SHMEX_DATA_KIND_FL_MODEL,
        Some(DataKind::Weights) => SHMEX_DATA_KIND_WEIGHTS,
        Some(DataKind::WeightDiff) => SHMEX_DATA_KIND_WEIGHT_DIFF,
        Some(DataKind::Metrics) => SHMEX_DATA_KIND_METRICS,
        Some(DataKind::Analytic) => SHMEX_DATA_KIND_ANALYTIC,
        Some(DataKind::Collection) => SHMEX_DATA_KIND_COLLECTION,
        Some(DataKind::Statistics) => SHMEX_DATA_KIND_STATISTICS,
        Some(DataKind::Psi) => SHMEX_DATA_KIND_PSI,
        Some(DataKind::AppDefined) => SHMEX_DATA_KIND_APP_DEFINED,
    }
}

/// The C number of a return code (exhaustive).
pub(crate) fn rc_to_c(rc: ReturnCode) -> shmex_rc {
    use shmex_rc::*;
    match rc {
        ReturnCode::Ok => SHMEX_RC_OK,
        ReturnCode::BadPeerContext => SHMEX_RC_BAD_PEER_CONTEXT,
        ReturnCode::BadRequestData => SHMEX_RC_BAD_REQUEST_DATA,
        ReturnCode::BadTaskData => SHMEX_RC_BAD_TASK_DATA,
        ReturnCode::CommunicationError => SHMEX_RC_COMMUNICATION_ERROR,
        ReturnCode::Timeout => SHMEX_RC_TIMEOUT,
        ReturnCode::Error => SHMEX_RC_ERROR,
        ReturnCode::ExecutionException => SHMEX_RC_EXECUTION_EXCEPTION,
        ReturnCode::ExecutionResultError => SHMEX_RC_EXECUTION_RESULT_ERROR,
        ReturnCode::HandlerException => SHMEX_RC_HANDLER_EXCEPTION,
        ReturnCode::MissingPeerContext => SHMEX_RC_MISSING_PEER_CONTEXT,
        ReturnCode::RunMismatch => SHMEX_RC_RUN_MISMATCH,
        ReturnCode::TaskAborted => SHMEX_RC_TASK_ABORTED,
        ReturnCode::TaskDataFilterError => SHMEX_RC_TASK_DATA_FILTER_ERROR,
        ReturnCode::TaskResultFilterError => SHMEX_RC_TASK_RESULT_FILTER_ERROR,
        ReturnCode::TaskUnknown => SHMEX_RC_TASK_UNKNOWN,
        ReturnCode::TaskUnsupported => SHMEX_RC_TASK_UNSUPPORTED,
        ReturnCode::TopicUnknown => SHMEX_RC_TOPIC_UNKNOWN,
        ReturnCode::ModelUnrecognized => SHMEX_RC_MODEL_UNRECOGNIZED,
        ReturnCode::ValidateTypeUnknown => SHMEX_RC_VALIDATE_TYPE_UNKNOWN,
        ReturnCode::EmptyResult => SHMEX_RC_EMPTY_RESULT,
        ReturnCode::UnsafeJob => SHMEX_RC_UNSAFE_JOB,
        ReturnCode::EarlyTermination => SHMEX_RC_EARLY_TERMINATION,
        ReturnCode::ServerNotReady => SHMEX_RC_SERVER_NOT_READY,
        ReturnCode::ServiceUnavailable => SHMEX_RC_SERVICE_UNAVAILABLE,
    }
}

/// A dtype number from C.
pub(crate) fn dtype_from_c(number: u32) -> Result<DType, Failure> {
    DType::ALL
        .iter()
        .copied()
        .find(|d| dtype_to_c(*d) as u32 == number)
        .ok_or_else(|| Failure::invalid(format!("unknown dtype number {number}")))
}

/// A data kind number from C (`SHMEX_DATA_KIND_NONE` is not a kind to send).
pub(crate) fn data_kind_from_c(number: u32) -> Result<DataKind, Failure> {
    DataKind::ALL
        .iter()
        .copied()
        .find(|k| data_kind_to_c(Some(*k)) as u32 == number)
        .ok_or_else(|| Failure::invalid(format!("unknown data kind number {number}")))
}

/// A return code number from C.
pub(crate) fn rc_from_c(number: u32) -> Result<ReturnCode, Failure> {
    ReturnCode::ALL
        .iter()
        .copied()
        .find(|rc| rc_to_c(*rc) as u32 == number)
        .ok_or_else(|| Failure::invalid(format!("unknown return code number {number}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_numbers_are_the_wire_numbers() {
        for d in DType::ALL {
            assert_eq!(dtype_to_c(*d) as u32, d.code());
            assert_eq!(dtype_from_c(d.code()).unwrap(), *d);
        }
        for k in DataKind::ALL {
            assert_eq!(data_kind_to_c(Some(*k)) as u32, k.code());
            assert_eq!(data_kind_from_c(k.code()).unwrap(), *k);
        }
        for rc in ReturnCode::ALL {
            assert_eq!(rc_to_c(*rc) as u32, rc.code());
            assert_eq!(rc_from_c(rc.code()).unwrap(), *rc);
        }
        assert!(dtype_from_c(0).is_err() && dtype_from_c(14).is_err());
        assert!(data_kind_from_c(0).is_err());
        assert!(rc_from_c(25).is_err());
    }
}
