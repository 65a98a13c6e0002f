//! The wire format: messages carrying FLARE-style DXO data (a data kind, a meta dictionary and
//! named tensors) over a ring, with zero-copy loan on the send side and in-place views on the
//! receive side, and fragmentation of messages larger than the ring.
//!
//! A message is a 64-byte body header, the task id and name, the meta dictionary (JSON), a
//! table of fixed-size tensor entries, the tensor names, and then the data region: opaque
//! bytes (APP_DEFINED only) and every tensor, each starting on a 64-byte boundary. It travels
//! as one or more ring records ("fragments"), each a 64-byte fragment header followed by a
//! slice of the body. A message that fits in one record travels whole, so the receiver can
//! view its tensors in place in the ring; a larger one is cut into fragments that the receiver
//! copies into its destination as they arrive, so memory stays bounded by the ring and both
//! processes copy at once. `docs/wire-format.md` describes every byte.
//!
//! Everything a peer wrote is untrusted: [`Limits`] are checked before any allocation, every
//! offset and length is bounds-checked, and a malformed message is a typed [`FrameError`] that
//! leaves the link usable for the next message.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::ring::{
    Consumer, Producer, ReadGrant, RecvError, ReserveError, RingCorruption, WriteGrant,
};
use crate::signal::PeerLost;

/// `b"SHXF"` as a little-endian `u32`: the first word of every fragment.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"SHXF");
/// Version of the format described here; any change to it increments this.
pub const FORMAT_VERSION: u16 = 2;
/// Bytes of the header in front of each fragment.
pub const FRAGMENT_HEADER_LEN: usize = 64;
/// Bytes of the header at the start of each message body.
pub const BODY_HEADER_LEN: usize = 64;
/// Bytes of one entry in the tensor table.
pub const TENSOR_ENTRY_LEN: usize = 96;
/// Most dimensions a tensor may have.
pub const MAX_DIMS: usize = 8;
/// Alignment of every tensor (and of opaque bytes) within a message body.
pub const TENSOR_ALIGN: usize = 64;

const FLAG_FIRST: u32 = 1;
const FLAG_LAST: u32 = 2;
const BODY_FLAG_HAS_DXO: u32 = 1;

macro_rules! wire_enum {
    (
        $(#[$doc:meta])* $name:ident, $err_doc:literal, $err:ident {
            $( $(#[$vdoc:meta])* $variant:ident = $code:literal, $text:literal; )*
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vdoc])* $variant, )*
        }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The number carried on the wire.
            pub const fn code(self) -> u32 {
                match self { $($name::$variant => $code,)* }
            }

            /// Decodes a wire number; `None` for a number this version does not define.
            pub const fn from_code(code: u32) -> Option<$name> {
                match code { $($code => Some($name::$variant),)* _ => None }
            }

            /// The name, as FLARE spells it.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        #[doc = $err_doc]
        #[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
        #[error("unknown {kind} {0:?}", kind = stringify!($name))]
        pub struct $err(pub String);

        impl FromStr for $name {
            type Err = $err;
            fn from_str(s: &str) -> Result<$name, $err> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| $err(s.to_string()))
            }
        }
    };
}

wire_enum! {
    /// What a DXO carries (FLARE's `DataKind`).
    DataKind, "A string that names no [`DataKind`].", UnknownDataKind {
        /// A whole FL model.
        FlModel = 1, "FL_MODEL";
        /// Model weights.
        Weights = 2, "WEIGHTS";
        /// A difference of weights.
        WeightDiff = 3, "WEIGHT_DIFF";
        /// Metrics.
        Metrics = 4, "METRICS";
        /// Analytics.
        Analytic = 5, "ANALYTIC";
        /// A collection of DXOs.
        Collection = 6, "COLLECTION";
        /// Statistics.
        Statistics = 7, "STATISTICS";
        /// Private set intersection data.
        Psi = 8, "PSI";
        /// Application-defined data; may carry opaque bytes.
        AppDefined = 9, "APP_DEFINED";
    }
}

wire_enum! {
    /// Return codes, with FLARE's names (`nvflare.apis.fl_constant.ReturnCode`).
    ReturnCode, "A string that names no [`ReturnCode`].", UnknownReturnCode {
        /// Success.
        Ok = 0, "OK";
        /// Bad peer context.
        BadPeerContext = 1, "BAD_PEER_CONTEXT";
        /// The request's data is bad.
        BadRequestData = 2, "BAD_REQUEST_DATA";
        /// The task's data is bad.
        BadTaskData = 3, "BAD_TASK_DATA";
        /// Communication failed.
        CommunicationError = 4, "COMMUNICATION_ERROR";
        /// Timed out.
        Timeout = 5, "TIMEOUT";
        /// Generic error.
        Error = 6, "ERROR";
        /// The task raised an exception.
        ExecutionException = 7, "EXECUTION_EXCEPTION";
        /// The task's result is erroneous.
        ExecutionResultError = 8, "EXECUTION_RESULT_ERROR";
        /// A handler raised an exception.
        HandlerException = 9, "HANDLER_EXCEPTION";
        /// The peer context is missing.
        MissingPeerContext = 10, "MISSING_PEER_CONTEXT";
        /// Run mismatch.
        RunMismatch = 11, "RUN_MISMATCH";
        /// The task was aborted.
        TaskAborted = 12, "TASK_ABORTED";
        /// A task data filter failed.
        TaskDataFilterError = 13, "TASK_DATA_FILTER_ERROR";
        /// A task result filter failed.
        TaskResultFilterError = 14, "TASK_RESULT_FILTER_ERROR";
        /// Unknown task.
        TaskUnknown = 15, "TASK_UNKNOWN";
        /// Unsupported task.
        TaskUnsupported = 16, "TASK_UNSUPPORTED";
        /// Unknown topic.
        TopicUnknown = 17, "TOPIC_UNKNOWN";
        /// The model is not recognised.
        ModelUnrecognized = 18, "MODEL_UNRECOGNIZED";
        /// Unknown validation type.
        ValidateTypeUnknown = 19, "VALIDATE_TYPE_UNKNOWN";
        /// The result is empty.
        EmptyResult = 20, "EMPTY_RESULT";
        /// The job is unsafe.
        UnsafeJob = 21, "UNSAFE_JOB";
        /// Training stopped early (a valid result).
        EarlyTermination = 22, "EARLY_TERMINATION";
        /// The server is not ready.
        ServerNotReady = 23, "SERVER_NOT_READY";
        /// The service is unavailable.
        ServiceUnavailable = 24, "SERVICE_UNAVAILABLE";
    }
}

wire_enum! {
    /// The kind of a message (DESIGN §5's vocabulary; [`MessageKind::Data`] for plain DXO
    /// traffic outside the task protocol).
    MessageKind, "A string that names no [`MessageKind`].", UnknownMessageKind {
        /// Exchanger → agent: a task.
        Task = 1, "task";
        /// Exchanger → agent: abort the named task.
        Abort = 2, "abort";
        /// Exchanger → agent: the exchanger is closing.
        Bye = 3, "bye";
        /// Agent → exchanger: a task was accepted or rejected.
        TaskAck = 4, "task_ack";
        /// Agent → exchanger: a task's result.
        Result = 5, "result";
        /// Exchanger → agent: a result was accepted (ok) or not (invalid).
        ResultAck = 6, "result_ack";
        /// Plain data.
        Data = 7, "data";
    }
}

wire_enum! {
    /// Element types of tensors.
    DType, "A string that names no [`DType`].", UnknownDType {
        /// IEEE 754 half precision (stored as its 16 bits, see [`F16`]).
        F16 = 1, "f16";
        /// bfloat16 (stored as its 16 bits, see [`BF16`]).
        BF16 = 2, "bf16";
        /// 32-bit float.
        F32 = 3, "f32";
        /// 64-bit float.
        F64 = 4, "f64";
        /// 8-bit signed integer.
        I8 = 5, "i8";
        /// 16-bit signed integer.
        I16 = 6, "i16";
        /// 32-bit signed integer.
        I32 = 7, "i32";
        /// 64-bit signed integer.
        I64 = 8, "i64";
        /// 8-bit unsigned integer.
        U8 = 9, "u8";
        /// 16-bit unsigned integer.
        U16 = 10, "u16";
        /// 32-bit unsigned integer.
        U32 = 11, "u32";
        /// 64-bit unsigned integer.
        U64 = 12, "u64";
        /// Boolean, one byte holding 0 or 1.
        Bool = 13, "bool";
    }
}

impl DType {
    /// Bytes of one element.
    pub const fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }
}

/// The bits of an IEEE 754 half-precision float (shmex moves them; it does no arithmetic).
#[repr(transparent)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct F16(pub u16);

/// The bits of a bfloat16 (shmex moves them; it does no arithmetic).
#[repr(transparent)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct BF16(pub u16);

mod sealed {
    pub trait Sealed {}
}

/// A Rust type that is the element type of a [`DType`]. Sealed: implemented for the primitive
/// numbers, [`F16`], [`BF16`] and `bool`.
pub trait Element: sealed::Sealed + IntoBytes + Immutable + Copy + 'static {
    /// The dtype of this element type.
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = DType::$d;
        }
    )*};
}

element!(F16 => F16, BF16 => BF16, f32 => F32, f64 => F64, i8 => I8, i16 => I16, i32 => I32,
    i64 => I64, u8 => U8, u16 => U16, u32 => U32, u64 => U64, bool => Bool);

/// A tensor to send: a name, a dtype, a shape and the caller's bytes (borrowed, not copied
/// until the message is sent).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef<'a> {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    bytes: &'a [u8],
}

impl<'a> TensorRef<'a> {
    fn desc(&self) -> TensorDesc<'_> {
        TensorDesc {
            name: &self.name,
            dtype: self.dtype,
            shape: &self.shape,
            len: self.bytes.len() as u64,
        }
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The shape.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }
    /// The raw bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Why a [`Dxo`] could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DxoError {
    /// Two tensors share a name.
    #[error("duplicate tensor name {0:?}")]
    DuplicateName(String),
    /// A tensor has an empty name.
    #[error("tensor names must not be empty")]
    EmptyName,
    /// A tensor name is longer than the format allows ([`u16::MAX`] bytes).
    #[error("tensor name of {len} bytes is longer than {max}")]
    NameTooLong {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A tensor has more than [`MAX_DIMS`] dimensions.
    #[error("tensor {name:?} has {ndim} dimensions, at most {MAX_DIMS} are allowed")]
    TooManyDims {
        /// The tensor.
        name: String,
        /// Its number of dimensions.
        ndim: usize,
    },
    /// A tensor's bytes do not match its shape and dtype.
    #[error("tensor {name:?}: shape {shape:?} of {dtype} needs {expected:?} bytes, got {actual}")]
    ShapeMismatch {
        /// The tensor.
        name: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Its dtype.
        dtype: DType,
        /// Bytes the shape needs (`None` if the product overflows).
        expected: Option<u64>,
        /// Bytes given.
        actual: usize,
    },
    /// Opaque bytes were given for a data kind other than APP_DEFINED.
    #[error("opaque bytes need data kind APP_DEFINED, this DXO is {0}")]
    OpaqueNotAppDefined(DataKind),
    /// A meta value could not be encoded.
    #[error("meta: {0}")]
    Meta(String),
}

/// A DXO to send: a data kind, a meta dictionary, named tensors borrowed from the caller and,
/// for APP_DEFINED, optional opaque bytes.
///
/// ```
/// use shmex::frame::{DataKind, Dxo};
/// # fn main() -> Result<(), shmex::frame::DxoError> {
/// let weights = vec![0.5f32; 64 * 10];
/// let bias = vec![0.0f32; 10];
/// let dxo = Dxo::new(DataKind::Weights)
///     .with_meta("current_round", 3)
///     .with_tensor("fc.weight", &[10, 64], &weights)?
///     .with_tensor("fc.bias", &[10], &bias)?;
/// assert_eq!(dxo.tensors().len(), 2);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Dxo<'a> {
    data_kind: DataKind,
    meta: Map<String, Value>,
    tensors: Vec<TensorRef<'a>>,
    names: HashSet<String>,
    opaque: Option<&'a [u8]>,
}

impl<'a> Dxo<'a> {
    /// An empty DXO of this kind.
    pub fn new(data_kind: DataKind) -> Dxo<'a> {
        Dxo {
            data_kind,
            meta: Map::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            opaque: None,
        }
    }

    /// Adds (or replaces) a meta entry.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<Value>) -> Dxo<'a> {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// Replaces the whole meta dictionary.
    pub fn with_meta_map(mut self, meta: Map<String, Value>) -> Dxo<'a> {
        self.meta = meta;
        self
    }

    /// Adds a tensor of elements `T` (its dtype is `T`'s).
    pub fn with_tensor<T: Element>(
        self,
        name: impl Into<String>,
        shape: &[u64],
        data: &'a [T],
    ) -> Result<Dxo<'a>, DxoError> {
        self.with_tensor_bytes(name, T::DTYPE, shape, data.as_bytes())
    }

    /// Adds a tensor given as raw bytes of `dtype` elements.
    pub fn with_tensor_bytes(
        mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: &[u64],
        bytes: &'a [u8],
    ) -> Result<Dxo<'a>, DxoError> {
        let name = name.into();
        check_tensor_spec(&name, dtype, shape, Some(bytes.len()))?;
        if !self.names.insert(name.clone()) {
            return Err(DxoError::DuplicateName(name));
        }
        self.tensors.push(TensorRef {
            name,
            dtype,
            shape: shape.to_vec(),
            bytes,
        });
        Ok(self)
    }

    /// Attaches opaque bytes (APP_DEFINED only).
    pub fn with_opaque(mut self, bytes: &'a [u8]) -> Result<Dxo<'a>, DxoError> {
        if self.data_kind != DataKind::AppDefined {
            return Err(DxoError::OpaqueNotAppDefined(self.data_kind));
        }
        self.opaque = Some(bytes);
        Ok(self)
    }

    /// The data kind.
    pub fn data_kind(&self) -> DataKind {
        self.data_kind
    }
    /// The meta dictionary.
    pub fn meta(&self) -> &Map<String, Value> {
        &self.meta
    }
    /// The tensors, in the order they were added.
    pub fn tensors(&self) -> &[TensorRef<'a>] {
        &self.tensors
    }
    /// The opaque bytes, if any.
    pub fn opaque(&self) -> Option<&'a [u8]> {
        self.opaque
    }
}

/// Checks a tensor's name, dimensions and (if given) byte length; returns its byte length.
fn check_tensor_spec(
    name: &str,
    dtype: DType,
    shape: &[u64],
    actual: Option<usize>,
) -> Result<u64, DxoError> {
    if name.is_empty() {
        return Err(DxoError::EmptyName);
    }
    if name.len() > u16::MAX as usize {
        return Err(DxoError::NameTooLong {
            len: name.len(),
            max: u16::MAX as usize,
        });
    }
    if shape.len() > MAX_DIMS {
        return Err(DxoError::TooManyDims {
            name: name.to_string(),
            ndim: shape.len(),
        });
    }
    let expected = tensor_len(dtype, shape);
    match (expected, actual) {
        (Some(e), Some(a)) if e == a as u64 => Ok(e),
        (Some(e), None) => Ok(e),
        _ => Err(DxoError::ShapeMismatch {
            name: name.to_string(),
            shape: shape.to_vec(),
            dtype,
            expected,
            actual: actual.unwrap_or(0),
        }),
    }
}

/// Bytes of a tensor of `shape` and `dtype`; `None` on overflow.
fn tensor_len(dtype: DType, shape: &[u64]) -> Option<u64> {
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))?
        .checked_mul(dtype.size() as u64)
}

/// The routing part of a message: its kind, return code and task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The message kind.
    pub kind: MessageKind,
    /// The return code.
    pub rc: ReturnCode,
    /// The task id ("" for none).
    pub task_id: &'a str,
    /// The task name ("" for none).
    pub task_name: &'a str,
    /// The epoch of the agent incarnation the message comes from or is addressed to (0: none).
    /// Carried in every fragment, so a receiver can drop a stale incarnation's fragments
    /// before parsing them ([`FrameReceiver::set_min_epoch`]).
    pub epoch: u64,
    /// The sequence number of the message this one answers (0: none).
    pub reply_to: u64,
}

impl<'a> Envelope<'a> {
    /// A message of `kind` with rc OK and no task.
    pub const fn new(kind: MessageKind) -> Envelope<'static> {
        Envelope {
            kind,
            rc: ReturnCode::Ok,
            task_id: "",
            task_name: "",
            epoch: 0,
            reply_to: 0,
        }
    }

    /// The same envelope about task `task_id` named `task_name`.
    pub fn with_task<'b>(self, task_id: &'b str, task_name: &'b str) -> Envelope<'b> {
        Envelope {
            kind: self.kind,
            rc: self.rc,
            task_id,
            task_name,
            epoch: self.epoch,
            reply_to: self.reply_to,
        }
    }

    /// The same envelope with return code `rc`.
    pub fn with_rc(mut self, rc: ReturnCode) -> Envelope<'a> {
        self.rc = rc;
        self
    }

    /// The same envelope stamped with agent incarnation `epoch`.
    pub fn with_epoch(mut self, epoch: u64) -> Envelope<'a> {
        self.epoch = epoch;
        self
    }

    /// The same envelope answering message `sequence`.
    pub fn with_reply_to(mut self, sequence: u64) -> Envelope<'a> {
        self.reply_to = sequence;
        self
    }
}

/// Limits a receiver enforces on incoming messages, before allocating anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message body, in bytes (default 16 GiB).
    pub max_message_len: u64,
    /// Most tensors in one message (default 100,000).
    pub max_tensors: u32,
    /// Longest tensor name, in bytes (default 1,024).
    pub max_name_len: u32,
    /// Longest meta dictionary, in bytes of JSON (default 16 MiB).
    pub max_meta_len: u32,
    /// Longest task id or task name, in bytes (default 1,024).
    pub max_task_field_len: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_len: 16 << 30,
            max_tensors: 100_000,
            max_name_len: 1024,
            max_meta_len: 16 << 20,
            max_task_field_len: 1024,
        }
    }
}

/// The fragment header (64 bytes) at the start of every record a message uses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct FragmentHeader {
    magic: u32,
    version: u16,
    kind: u16,
    flags: u32,
    header_len: u32,
    sequence: u64,
    fragment_index: u32,
    reserved0: u32,
    message_len: u64,
    fragment_offset: u64,
    fragment_len: u64,
    epoch: u64,
}

impl FragmentHeader {
    /// The header of the fragment carrying `body` bytes of a `message_len`-byte message.
    fn new(
        kind: MessageKind,
        flags: u32,
        sequence: u64,
        fragment_index: u32,
        message_len: u64,
        body: Range<u64>,
        epoch: u64,
    ) -> FragmentHeader {
        FragmentHeader {
            magic: FRAME_MAGIC,
            version: FORMAT_VERSION,
            kind: kind.code() as u16,
            flags,
            header_len: FRAGMENT_HEADER_LEN as u32,
            sequence,
            fragment_index,
            reserved0: 0,
            message_len,
            fragment_offset: body.start,
            fragment_len: body.end - body.start,
            epoch,
        }
    }
}

/// The body header (64 bytes) at the start of every message body.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct BodyHeader {
    rc: u32,
    data_kind: u32,
    task_id_len: u32,
    task_name_len: u32,
    meta_len: u32,
    tensor_count: u32,
    names_len: u32,
    flags: u32,
    opaque_len: u64,
    data_offset: u64,
    data_len: u64,
    reply_to: u64,
}

/// One entry (96 bytes) of the tensor table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct TensorEntry {
    data_offset: u64,
    data_len: u64,
    name_offset: u32,
    name_len: u16,
    dtype: u8,
    ndim: u8,
    reserved0: u64,
    shape: [u64; MAX_DIMS],
}

const _: () = assert!(std::mem::size_of::<FragmentHeader>() == FRAGMENT_HEADER_LEN);
const _: () = assert!(std::mem::size_of::<BodyHeader>() == BODY_HEADER_LEN);
const _: () = assert!(std::mem::size_of::<TensorEntry>() == TENSOR_ENTRY_LEN);

const fn align_to(value: u64, align: u64) -> Option<u64> {
    match value.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// A tensor of a body being built: borrowed description, no copies.
#[derive(Clone, Copy, Debug)]
struct TensorDesc<'a> {
    name: &'a str,
    dtype: DType,
    shape: &'a [u64],
    len: u64,
}

/// Where the parts of one message body go (offsets from the body start), computed before
/// anything is written.
#[derive(Debug)]
struct BodyLayout {
    /// The meta dictionary, encoded (empty if none).
    meta: Vec<u8>,
    table_offset: usize,
    names_offset: usize,
    names_len: usize,
    /// Start of the data region; also the length of the prefix (headers, strings, meta,
    /// table, names, padding).
    data_offset: u64,
    opaque: Range<u64>,
    total: u64,
}

/// The data offset of each tensor, in order: after the opaque bytes, each on a
/// [`TENSOR_ALIGN`] boundary after the previous one's end. `None` on overflow.
fn tensor_starts<'t>(
    opaque_end: u64,
    tensors: &'t [TensorDesc<'t>],
) -> impl Iterator<Item = Option<u64>> + 't {
    let mut cursor = Some(opaque_end);
    tensors.iter().map(move |t| {
        let start = align_to(cursor?, TENSOR_ALIGN as u64)?;
        cursor = start.checked_add(t.len);
        cursor.map(|_| start)
    })
}

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The message cannot be encoded (over a format limit such as a field's width).
    #[error("message cannot be encoded: {0}")]
    Encode(String),
    /// A loan was asked for a message that does not fit in one ring record.
    #[error(
        "a loaned message must fit one ring record: it needs {needed} bytes, the ring takes {max}"
    )]
    TooLargeForLoan {
        /// Bytes the record would need.
        needed: u64,
        /// The ring's largest record.
        max: usize,
    },
    /// The deadline passed before the ring had room.
    #[error("timed out waiting for ring space")]
    Timeout,
    /// The caller's cancel check said stop ([`FrameSender::send_cancellable`]); the fragments
    /// already committed stay in the ring (the receiver drops the unfinished message when the
    /// next message's first fragment arrives).
    #[error("send cancelled")]
    Cancelled,
    /// The receiver died or detached.
    #[error(transparent)]
    PeerLost(#[from] PeerLost),
    /// The ring is corrupt.
    #[error(transparent)]
    Corrupt(#[from] RingCorruption),
}

impl From<ReserveError> for SendError {
    fn from(e: ReserveError) -> Self {
        match e {
            ReserveError::Timeout => SendError::Timeout,
            ReserveError::PeerLost(p) => SendError::PeerLost(p),
            ReserveError::Corrupt(c) => SendError::Corrupt(c),
            ReserveError::TooLarge { len, max } => SendError::TooLargeForLoan {
                needed: len as u64,
                max,
            },
        }
    }
}

fn layout_body(
    envelope: &Envelope<'_>,
    meta: Option<&Map<String, Value>>,
    tensors: &[TensorDesc<'_>],
    opaque_len: u64,
) -> Result<BodyLayout, SendError> {
    let too_big = |what: &str| SendError::Encode(format!("{what} is too large for the format"));
    let meta = match meta {
        Some(meta) if !meta.is_empty() => {
            serde_json::to_vec(meta).map_err(|e| SendError::Encode(format!("meta: {e}")))?
        }
        _ => Vec::new(),
    };
    u32::try_from(envelope.task_id.len()).map_err(|_| too_big("task id"))?;
    u32::try_from(envelope.task_name.len()).map_err(|_| too_big("task name"))?;
    u32::try_from(meta.len()).map_err(|_| too_big("meta"))?;
    u32::try_from(tensors.len()).map_err(|_| too_big("tensor count"))?;
    let names_len: usize = tensors.iter().map(|t| t.name.len()).sum();
    u32::try_from(names_len).map_err(|_| too_big("tensor names"))?;

    let strings_end =
        BODY_HEADER_LEN + envelope.task_id.len() + envelope.task_name.len() + meta.len();
    let table_offset = strings_end.next_multiple_of(8);
    let names_offset = table_offset + tensors.len() * TENSOR_ENTRY_LEN;
    let data_offset = align_to((names_offset + names_len) as u64, TENSOR_ALIGN as u64)
        .ok_or_else(|| too_big("body"))?;
    let opaque_end = data_offset
        .checked_add(opaque_len)
        .ok_or_else(|| too_big("opaque bytes"))?;
    let mut total = opaque_end;
    for (tensor, start) in tensors.iter().zip(tensor_starts(opaque_end, tensors)) {
        total = start
            .and_then(|s| s.checked_add(tensor.len))
            .ok_or_else(|| too_big("body"))?;
    }
    Ok(BodyLayout {
        meta,
        table_offset,
        names_offset,
        names_len,
        data_offset,
        opaque: data_offset..opaque_end,
        total,
    })
}

/// Writes a body's prefix — body header, task id and name, meta, tensor table, names, and
/// zero padding up to the data region — into `out` (exactly `layout.data_offset` bytes,
/// zeroed by the caller: the padding between the parts is left as it is).
fn write_prefix(
    layout: &BodyLayout,
    envelope: &Envelope<'_>,
    data_kind: Option<DataKind>,
    tensors: &[TensorDesc<'_>],
    out: &mut [u8],
) {
    let header = BodyHeader {
        rc: envelope.rc.code(),
        data_kind: data_kind.map_or(0, DataKind::code),
        task_id_len: envelope.task_id.len() as u32,
        task_name_len: envelope.task_name.len() as u32,
        meta_len: layout.meta.len() as u32,
        tensor_count: tensors.len() as u32,
        names_len: layout.names_len as u32,
        flags: if data_kind.is_some() {
            BODY_FLAG_HAS_DXO
        } else {
            0
        },
        opaque_len: layout.opaque.end - layout.opaque.start,
        data_offset: layout.data_offset,
        data_len: layout.total - layout.data_offset,
        reply_to: envelope.reply_to,
    };
    out[..BODY_HEADER_LEN].copy_from_slice(header.as_bytes());
    let mut at = BODY_HEADER_LEN;
    for part in [
        envelope.task_id.as_bytes(),
        envelope.task_name.as_bytes(),
        &layout.meta,
    ] {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    let mut name_cursor = 0usize;
    let starts = tensor_starts(layout.opaque.end, tensors);
    for (i, (tensor, start)) in tensors.iter().zip(starts).enumerate() {
        let mut shape = [0u64; MAX_DIMS];
        shape[..tensor.shape.len()].copy_from_slice(tensor.shape);
        let entry = TensorEntry {
            // `layout_body` checked every start for overflow.
            data_offset: start.unwrap_or_default(),
            data_len: tensor.len,
            name_offset: name_cursor as u32,
            name_len: tensor.name.len() as u16,
            dtype: tensor.dtype.code() as u8,
            ndim: tensor.shape.len() as u8,
            reserved0: 0,
            shape,
        };
        let entry_at = layout.table_offset + i * TENSOR_ENTRY_LEN;
        out[entry_at..entry_at + TENSOR_ENTRY_LEN].copy_from_slice(entry.as_bytes());
        let name_at = layout.names_offset + name_cursor;
        out[name_at..name_at + tensor.name.len()].copy_from_slice(tensor.name.as_bytes());
        name_cursor += tensor.name.len();
    }
}

/// Writes bytes `[start, start + out.len())` of a body: the layout's prefix, then the given
/// pieces (opaque bytes and tensors) at their offsets, zeros in between.
fn write_body_range(prefix: &[u8], pieces: &[(u64, &[u8])], start: u64, out: &mut [u8]) {
    let end = start + out.len() as u64;
    let mut filled = start;
    let fill_to = |out: &mut [u8], from: u64, to: u64, src: Option<&[u8]>| {
        let (a, b) = ((from - start) as usize, (to - start) as usize);
        match src {
            Some(src) => out[a..b].copy_from_slice(src),
            None => out[a..b].fill(0),
        }
    };
    let prefix_len = prefix.len() as u64;
    if filled < prefix_len {
        let to = end.min(prefix_len);
        fill_to(out, filled, to, Some(&prefix[filled as usize..to as usize]));
        filled = to;
    }
    let first = pieces.partition_point(|(offset, bytes)| offset + bytes.len() as u64 <= filled);
    for &(offset, bytes) in &pieces[first..] {
        if filled >= end {
            break;
        }
        if offset >= end {
            break;
        }
        if offset > filled {
            fill_to(out, filled, offset, None);
            filled = offset;
        }
        let to = end.min(offset + bytes.len() as u64);
        if to > filled {
            let src = &bytes[(filled - offset) as usize..(to - offset) as usize];
            fill_to(out, filled, to, Some(src));
            filled = to;
        }
    }
    if filled < end {
        fill_to(out, filled, end, None);
    }
}

/// Sends messages on a ring: assigns sequence numbers, fragments large messages, and lends
/// ring space for zero-copy sends.
#[derive(Debug, Default)]
pub struct FrameSender {
    next_sequence: u64,
}

impl FrameSender {
    /// A sender whose first message gets sequence number 1.
    pub fn new() -> FrameSender {
        FrameSender { next_sequence: 1 }
    }

    fn take_sequence(&mut self) -> u64 {
        let sequence = self.next_sequence.max(1);
        self.next_sequence = sequence.wrapping_add(1);
        sequence
    }

    /// Sends a message, copying the DXO's tensors from the caller's memory into the ring.
    /// A message that fits in one ring record is sent whole (the receiver can view it in
    /// place); a larger one as fragments, while the receiver drains them. `deadline` bounds
    /// the whole message. Returns its sequence number.
    pub fn send(
        &mut self,
        producer: &mut Producer,
        envelope: &Envelope<'_>,
        dxo: Option<&Dxo<'_>>,
        deadline: Option<Instant>,
    ) -> Result<u64, SendError> {
        self.send_cancellable(producer, envelope, dxo, deadline, None)
    }

    /// [`FrameSender::send`] that asks `cancel.0()` before each fragment and at least every
    /// `cancel.1` while waiting for ring space, and stops with [`SendError::Cancelled`] when it
    /// answers `true` (an abort while a large message streams to a slow or stalled receiver).
    pub fn send_cancellable(
        &mut self,
        producer: &mut Producer,
        envelope: &Envelope<'_>,
        dxo: Option<&Dxo<'_>>,
        deadline: Option<Instant>,
        cancel: Option<(&dyn Fn() -> bool, Duration)>,
    ) -> Result<u64, SendError> {
        let descs: Vec<TensorDesc<'_>> = dxo
            .map(|d| d.tensors.iter().map(TensorRef::desc).collect())
            .unwrap_or_default();
        let opaque = dxo.and_then(|d| d.opaque).unwrap_or(&[]);
        let layout = layout_body(envelope, dxo.map(|d| &d.meta), &descs, opaque.len() as u64)?;
        let mut prefix = vec![0u8; layout.data_offset as usize];
        write_prefix(
            &layout,
            envelope,
            dxo.map(|d| d.data_kind),
            &descs,
            &mut prefix,
        );
        let mut pieces: Vec<(u64, &[u8])> = Vec::with_capacity(descs.len() + 1);
        if !opaque.is_empty() {
            pieces.push((layout.opaque.start, opaque));
        }
        if let Some(d) = dxo {
            let starts = tensor_starts(layout.opaque.end, &descs);
            for (t, start) in d.tensors.iter().zip(starts) {
                if !t.bytes.is_empty() {
                    pieces.push((start.unwrap_or_default(), t.bytes));
                }
            }
        }
        let sequence = self.take_sequence();
        let max_fragment = (producer.max_record() - FRAGMENT_HEADER_LEN) as u64;
        let fragment_len = if layout.total <= max_fragment {
            layout.total
        } else {
            (crate::stream::default_chunk(producer.capacity()) as u64)
                .clamp(TENSOR_ALIGN as u64, max_fragment)
        };
        let fragmented = fragment_len < layout.total;
        // Fragments of a large message keep the data in flight small and in a cache-sized
        // part of the ring, as streams do (see `Producer::reserve_within`); a whole message
        // may use all of it.
        let window = if fragmented {
            crate::stream::default_window(producer.capacity())
        } else {
            u64::MAX
        };
        let mut offset = 0u64;
        let mut index = 0u32;
        loop {
            let len = fragment_len.min(layout.total - offset);
            let mut flags = 0;
            if offset == 0 {
                flags |= FLAG_FIRST;
            }
            if offset + len == layout.total {
                flags |= FLAG_LAST;
            }
            let header = FragmentHeader::new(
                envelope.kind,
                flags,
                sequence,
                index,
                layout.total,
                offset..offset + len,
                envelope.epoch,
            );
            let record = FRAGMENT_HEADER_LEN + len as usize;
            let mut grant = match cancel {
                None => producer.reserve_within(record, window, deadline)?,
                Some((cancelled, slice)) => loop {
                    if cancelled() {
                        return Err(SendError::Cancelled);
                    }
                    let now = Instant::now();
                    let slice_end = deadline.map_or(now + slice, |d| d.min(now + slice));
                    match producer.reserve_within(record, window, Some(slice_end)) {
                        Err(ReserveError::Timeout)
                            if deadline.is_none_or(|d| Instant::now() < d) => {}
                        other => break other?,
                    }
                },
            };
            let slot = grant.as_mut_slice();
            slot[..FRAGMENT_HEADER_LEN].copy_from_slice(header.as_bytes());
            write_body_range(&prefix, &pieces, offset, &mut slot[FRAGMENT_HEADER_LEN..]);
            grant.commit();
            offset += len;
            index = index.wrapping_add(1);
            if offset == layout.total {
                return Ok(sequence);
            }
        }
    }

    /// Reserves ring space for a whole message whose tensors the caller then fills in place
    /// (zero copies on the send side), and writes its headers, meta and tensor table. The
    /// message must fit in one ring record. Nothing is visible to the receiver until
    /// [`Loan::commit`]; dropping the loan abandons it. To send the same layout repeatedly,
    /// [`FrameSender::prepare`] it once and use [`FrameSender::loan_prepared`].
    pub fn loan<'p>(
        &mut self,
        producer: &'p mut Producer,
        envelope: &Envelope<'_>,
        spec: &LoanSpec,
        deadline: Option<Instant>,
    ) -> Result<Loan<'p>, LoanError> {
        let prepared = FrameSender::prepare(envelope, spec)?;
        self.loan_prepared(producer, &prepared, deadline)
    }

    /// Checks a loan's spec and lays out its message once: headers, meta, tensor table and
    /// names are encoded here, so that each [`FrameSender::loan_prepared`] only reserves ring
    /// space and copies them.
    pub fn prepare(envelope: &Envelope<'_>, spec: &LoanSpec) -> Result<PreparedLoan, LoanError> {
        let mut descs = Vec::with_capacity(spec.tensors.len());
        for (name, dtype, shape) in &spec.tensors {
            let len = check_tensor_spec(name, *dtype, shape, None)?;
            descs.push(TensorDesc {
                name,
                dtype: *dtype,
                shape,
                len,
            });
        }
        if let Some(name) = first_duplicate(&descs, |d| d.name.as_bytes()) {
            return Err(DxoError::DuplicateName(String::from_utf8_lossy(name).into_owned()).into());
        }
        if spec.opaque_len > 0 && spec.data_kind != DataKind::AppDefined {
            return Err(DxoError::OpaqueNotAppDefined(spec.data_kind).into());
        }
        let layout = layout_body(envelope, Some(&spec.meta), &descs, spec.opaque_len as u64)?;
        let mut prefix = vec![0u8; layout.data_offset as usize];
        write_prefix(&layout, envelope, Some(spec.data_kind), &descs, &mut prefix);
        Ok(PreparedLoan {
            kind: envelope.kind,
            epoch: envelope.epoch,
            prefix,
            total: layout.total,
            opaque: layout.opaque,
            table: layout.table_offset,
            names: layout.names_offset,
            count: descs.len(),
        })
    }

    /// Lends ring space for one message of a prepared layout (see [`FrameSender::loan`]).
    pub fn loan_prepared<'p>(
        &mut self,
        producer: &'p mut Producer,
        prepared: &PreparedLoan,
        deadline: Option<Instant>,
    ) -> Result<Loan<'p>, LoanError> {
        let needed = prepared.total + FRAGMENT_HEADER_LEN as u64;
        if needed > producer.max_record() as u64 {
            return Err(SendError::TooLargeForLoan {
                needed,
                max: producer.max_record(),
            }
            .into());
        }
        let sequence = self.take_sequence();
        let header = FragmentHeader::new(
            prepared.kind,
            FLAG_FIRST | FLAG_LAST,
            sequence,
            0,
            prepared.total,
            0..prepared.total,
            prepared.epoch,
        );
        let mut grant = producer
            .reserve(needed as usize, deadline)
            .map_err(SendError::from)?;
        let slot = grant.as_mut_slice();
        slot[..FRAGMENT_HEADER_LEN].copy_from_slice(header.as_bytes());
        slot[FRAGMENT_HEADER_LEN..FRAGMENT_HEADER_LEN + prepared.prefix.len()]
            .copy_from_slice(&prepared.prefix);
        let at = |offset: u64| offset as usize + FRAGMENT_HEADER_LEN;
        Ok(Loan {
            grant,
            sequence,
            opaque: at(prepared.opaque.start)..at(prepared.opaque.end),
            table: at(prepared.table as u64),
            names: at(prepared.names as u64),
            count: prepared.count,
        })
    }
}

/// A loan's message laid out once ([`FrameSender::prepare`]): its envelope, meta and tensor
/// table encoded, ready to be copied into each loan of the same layout.
#[derive(Clone, Debug)]
pub struct PreparedLoan {
    kind: MessageKind,
    epoch: u64,
    /// The body up to the data region.
    prefix: Vec<u8>,
    total: u64,
    opaque: Range<u64>,
    table: usize,
    names: usize,
    count: usize,
}

impl PreparedLoan {
    /// Bytes the message body takes (a ring record also holds a 64-byte fragment header).
    pub fn body_len(&self) -> u64 {
        self.total
    }
}

/// What a loaned message will hold: its data kind, meta, and the name, dtype and shape of each
/// tensor (filled in place later), plus the number of opaque bytes (APP_DEFINED only).
#[derive(Clone, Debug, PartialEq)]
pub struct LoanSpec {
    /// The data kind.
    pub data_kind: DataKind,
    /// The meta dictionary.
    pub meta: Map<String, Value>,
    /// Name, dtype and shape of each tensor.
    pub tensors: Vec<(String, DType, Vec<u64>)>,
    /// Opaque bytes to reserve.
    pub opaque_len: usize,
}

impl LoanSpec {
    /// A spec of this kind with no meta, tensors or opaque bytes.
    pub fn new(data_kind: DataKind) -> LoanSpec {
        LoanSpec {
            data_kind,
            meta: Map::new(),
            tensors: Vec::new(),
            opaque_len: 0,
        }
    }

    /// Adds a tensor to be filled in place.
    pub fn tensor(mut self, name: impl Into<String>, dtype: DType, shape: &[u64]) -> LoanSpec {
        self.tensors.push((name.into(), dtype, shape.to_vec()));
        self
    }

    /// Adds a meta entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<Value>) -> LoanSpec {
        self.meta.insert(key.into(), value.into());
        self
    }
}

/// Why a loan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoanError {
    /// The spec is not a valid DXO.
    #[error(transparent)]
    Dxo(#[from] DxoError),
    /// The ring could not take it.
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Ring space lent for one message: fill the tensors in place, then [`Loan::commit`].
///
/// Tensor bytes the caller does not write hold whatever the ring held before.
pub struct Loan<'p> {
    grant: WriteGrant<'p>,
    sequence: u64,
    opaque: Range<usize>,
    /// Where the tensor table and the names start in the grant (this side wrote them: they
    /// are read back instead of being kept twice).
    table: usize,
    names: usize,
    count: usize,
}

impl fmt::Debug for Loan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan")
            .field("sequence", &self.sequence)
            .field("tensors", &self.count)
            .finish()
    }
}

/// Why a tensor cannot be viewed as the asked-for type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// No tensor has this index or name.
    #[error("no tensor {0}")]
    NoSuchTensor(String),
    /// The tensor's dtype is not the type asked for.
    #[error("tensor is {actual}, asked for {asked}")]
    WrongDType {
        /// The tensor's dtype.
        actual: DType,
        /// The dtype asked for.
        asked: DType,
    },
    /// The bytes are not aligned for, or not a whole number of, the element type.
    #[error("tensor bytes are misaligned or not a whole number of elements")]
    Misaligned,
    /// A bool tensor holds a byte other than 0 or 1.
    #[error("bool tensor holds a byte other than 0 or 1")]
    InvalidBool,
}

impl<'p> Loan<'p> {
    /// The message's sequence number.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.count
    }

    /// Entry `index` of the tensor table this loan wrote.
    fn entry(&mut self, index: usize) -> Result<TensorEntry, ViewError> {
        if index >= self.count {
            return Err(ViewError::NoSuchTensor(index.to_string()));
        }
        let at = self.table + index * TENSOR_ENTRY_LEN;
        let bytes = &self.grant.as_mut_slice()[at..at + TENSOR_ENTRY_LEN];
        TensorEntry::read_from_bytes(bytes).map_err(|_| ViewError::NoSuchTensor(index.to_string()))
    }

    /// Index of the tensor named `name`.
    pub fn index_of(&mut self, name: &str) -> Option<usize> {
        (0..self.count).find(|&i| {
            self.entry(i).is_ok_and(|e| {
                let at = self.names + e.name_offset as usize;
                &self.grant.as_mut_slice()[at..at + usize::from(e.name_len)] == name.as_bytes()
            })
        })
    }

    /// Tensor `index` as mutable raw bytes in the ring.
    pub fn tensor_bytes_mut(&mut self, index: usize) -> Result<&mut [u8], ViewError> {
        let entry = self.entry(index)?;
        let start = FRAGMENT_HEADER_LEN + entry.data_offset as usize;
        Ok(&mut self.grant.as_mut_slice()[start..start + entry.data_len as usize])
    }

    /// Tensor `index` as a mutable slice of `T` in the ring (the dtype must be `T`'s).
    pub fn tensor_mut<T: Element + FromBytes + KnownLayout>(
        &mut self,
        index: usize,
    ) -> Result<&mut [T], ViewError> {
        let code = u32::from(self.entry(index)?.dtype);
        let actual =
            DType::from_code(code).ok_or_else(|| ViewError::NoSuchTensor(index.to_string()))?;
        if actual != T::DTYPE {
            return Err(ViewError::WrongDType {
                actual,
                asked: T::DTYPE,
            });
        }
        let bytes = self.tensor_bytes_mut(index)?;
        <[T]>::mut_from_bytes(bytes).map_err(|_| ViewError::Misaligned)
    }

    /// The opaque bytes, in the ring.
    pub fn opaque_mut(&mut self) -> &mut [u8] {
        let range = self.opaque.clone();
        &mut self.grant.as_mut_slice()[range]
    }

    /// Publishes the message.
    pub fn commit(self) {
        self.grant.commit();
    }
}

/// Why a message could not be received. After any error other than `Timeout`, `PeerLost` and
/// `Corrupt`, the offending records have been consumed and the link is usable for the next
/// message; `Corrupt` means the ring itself is unusable.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// No message arrived before the deadline (nothing was consumed, or a partly received
    /// message was dropped).
    #[error("timed out waiting for a message")]
    Timeout,
    /// The cancel predicate of [`FrameReceiver::recv_with_stall_cancellable`] answered `true`
    /// while a fragmented message was arriving: the fragments received so far were consumed
    /// and dropped; later fragments of that message are dropped by the next receive (as out
    /// of order, or as stale by epoch).
    #[error("receive cancelled in the middle of a message")]
    Cancelled,
    /// The sender died or detached.
    #[error(transparent)]
    PeerLost(#[from] PeerLost),
    /// The ring is corrupt.
    #[error(transparent)]
    Corrupt(#[from] RingCorruption),
    /// A fragment header is malformed.
    #[error("bad fragment header: {0}")]
    BadFragment(String),
    /// A fragment arrived out of order or belongs to another message.
    #[error("fragment out of order: {0}")]
    OutOfOrder(String),
    /// The message exceeds one of the receiver's [`Limits`].
    #[error("message exceeds a limit: {what} is {value}, at most {max} allowed")]
    OverLimit {
        /// Which limit.
        what: &'static str,
        /// The value found.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// The message body is malformed.
    #[error("malformed message body: {0}")]
    Malformed(String),
    /// This process could not allocate room for the announced message (it was consumed).
    #[error("cannot allocate {len} bytes for a message")]
    OutOfMemory {
        /// The message's announced length.
        len: u64,
    },
    /// A caller-provided buffer is too small.
    #[error("destination holds {capacity} bytes, the message needs {needed}")]
    BufferTooSmall {
        /// Bytes the message needs.
        needed: u64,
        /// Bytes the buffer holds.
        capacity: usize,
    },
}

impl From<RecvError> for FrameError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Timeout => FrameError::Timeout,
            RecvError::PeerLost(p) => FrameError::PeerLost(p),
            RecvError::Corrupt(c) => FrameError::Corrupt(c),
        }
    }
}

fn malformed(what: impl Into<String>) -> FrameError {
    FrameError::Malformed(what.into())
}

/// A tensor's description, parsed and checked.
#[derive(Clone, Debug)]
struct ParsedTensor {
    name: Range<usize>,
    dtype: DType,
    ndim: usize,
    shape: [u64; MAX_DIMS],
    data: Range<usize>,
}

/// A message body, parsed and checked; `opaque` and tensor `data` ranges index into the body
/// bytes, string ranges into `strings`.
#[derive(Clone, Debug)]
struct ParsedBody {
    rc: ReturnCode,
    /// From the fragment header: the agent incarnation concerned.
    epoch: u64,
    reply_to: u64,
    /// Body bytes before the data region.
    prefix_len: usize,
    data_kind: Option<DataKind>,
    /// Task id, task name and tensor names, copied out of the body and validated as UTF-8
    /// after copying: a `&str` into bytes a faulty peer could still rewrite would break
    /// `str`'s invariant. `task_id`, `task_name` and tensor `name` ranges index into it.
    strings: String,
    task_id: Range<usize>,
    task_name: Range<usize>,
    meta: Map<String, Value>,
    opaque: Range<usize>,
    tensors: Vec<ParsedTensor>,
}

impl ParsedBody {
    /// A placeholder left behind when a message's parse results move elsewhere (the only
    /// `ParsedBody` with `prefix_len` 0: a real body has at least its header).
    fn empty() -> ParsedBody {
        ParsedBody {
            rc: ReturnCode::Ok,
            epoch: 0,
            reply_to: 0,
            prefix_len: 0,
            data_kind: None,
            strings: String::new(),
            task_id: 0..0,
            task_name: 0..0,
            meta: Map::new(),
            opaque: 0..0,
            tensors: Vec::new(),
        }
    }
}

fn checked_range(
    start: u64,
    len: u64,
    within: usize,
    what: &str,
) -> Result<Range<usize>, FrameError> {
    let end = start
        .checked_add(len)
        .filter(|&end| end <= within as u64)
        .ok_or_else(|| {
            malformed(format!(
                "{what} [{start}, +{len}) lies past the body end {within}"
            ))
        })?;
    Ok(start as usize..end as usize)
}

fn over(what: &'static str, value: u64, max: u64) -> Result<(), FrameError> {
    if value > max {
        Err(FrameError::OverLimit { what, value, max })
    } else {
        Ok(())
    }
}

/// Parses `body`, or, when its prefix (everything before the data region: headers, strings,
/// meta, tensor table, names) and length are byte for byte those of the last body parsed in
/// full, hands back that parse: a sender repeating the same layout (the common case: the same
/// model every round) costs a compare instead of a parse. The parse depends only on the prefix
/// and the body length, so this is the same check, memoised.
fn parse_cached(
    body: &[u8],
    limits: &Limits,
    spare: &mut Scratch,
) -> Result<ParsedBody, FrameError> {
    let (mut tensors, mut strings) = (Vec::new(), String::new());
    if let Some(last) = spare.parsed.take() {
        let prefix = &spare.prefix[..];
        if body.len() == spare.len && body.get(..prefix.len()) == Some(prefix) {
            return Ok(last);
        }
        (tensors, strings) = (last.tensors, last.strings);
    }
    spare.prefix.clear();
    let parsed = parse_body(body, limits, tensors, strings)?;
    spare.prefix.extend_from_slice(&body[..parsed.prefix_len]);
    spare.len = body.len();
    Ok(parsed)
}

/// Parses and checks a whole message body (untrusted bytes).
///
/// `tensors` and `strings` are allocations to reuse (their contents are discarded).
fn parse_body(
    body: &[u8],
    limits: &Limits,
    mut tensors: Vec<ParsedTensor>,
    strings: String,
) -> Result<ParsedBody, FrameError> {
    let mut text = strings.into_bytes();
    text.clear();
    // Copies `body[range]` to the end of `text` and checks the copy is UTF-8.
    let mut copy_str = |range: Range<usize>, what: &dyn Fn() -> String| {
        let start = text.len();
        text.extend_from_slice(&body[range]);
        std::str::from_utf8(&text[start..])
            .map_err(|e| malformed(format!("{} is not UTF-8: {e}", what())))?;
        Ok::<_, FrameError>(start..text.len())
    };
    let header = BodyHeader::read_from_prefix(body)
        .map_err(|_| {
            malformed(format!(
                "body of {} bytes has no room for its header",
                body.len()
            ))
        })?
        .0;
    let rc = ReturnCode::from_code(header.rc)
        .ok_or_else(|| malformed(format!("unknown return code {}", header.rc)))?;
    let has_dxo = header.flags & BODY_FLAG_HAS_DXO != 0;
    if header.flags & !BODY_FLAG_HAS_DXO != 0 {
        return Err(malformed(format!("unknown body flags {:#x}", header.flags)));
    }
    let data_kind = if has_dxo {
        Some(
            DataKind::from_code(header.data_kind)
                .ok_or_else(|| malformed(format!("unknown data kind {}", header.data_kind)))?,
        )
    } else if header.data_kind != 0
        || header.tensor_count != 0
        || header.opaque_len != 0
        || header.meta_len != 0
    {
        return Err(malformed("a message without a DXO carries DXO fields"));
    } else {
        None
    };
    over(
        "task id length",
        header.task_id_len.into(),
        limits.max_task_field_len.into(),
    )?;
    over(
        "task name length",
        header.task_name_len.into(),
        limits.max_task_field_len.into(),
    )?;
    over(
        "meta length",
        header.meta_len.into(),
        limits.max_meta_len.into(),
    )?;
    over(
        "tensor count",
        header.tensor_count.into(),
        limits.max_tensors.into(),
    )?;
    over(
        "tensor names length",
        header.names_len.into(),
        u64::from(limits.max_name_len) * u64::from(header.tensor_count),
    )?;

    let len = body.len();
    let task_id = checked_range(
        BODY_HEADER_LEN as u64,
        header.task_id_len.into(),
        len,
        "task id",
    )?;
    let task_name = checked_range(
        task_id.end as u64,
        header.task_name_len.into(),
        len,
        "task name",
    )?;
    let meta_range = checked_range(task_name.end as u64, header.meta_len.into(), len, "meta")?;
    let task_id = copy_str(task_id, &|| "task id".into())?;
    let task_name = copy_str(task_name, &|| "task name".into())?;
    let table_offset = (meta_range.end as u64).next_multiple_of(8);
    let table_len = u64::from(header.tensor_count) * TENSOR_ENTRY_LEN as u64;
    let table = checked_range(table_offset, table_len, len, "tensor table")?;
    let names = checked_range(
        table.end as u64,
        header.names_len.into(),
        len,
        "tensor names",
    )?;
    let data_offset = align_to(names.end as u64, TENSOR_ALIGN as u64).unwrap_or(u64::MAX);
    if header.data_offset != data_offset {
        return Err(malformed(format!(
            "data region at {}, expected {data_offset}",
            header.data_offset
        )));
    }
    if data_offset.checked_add(header.data_len) != Some(len as u64) {
        return Err(malformed(format!(
            "data region [{}, +{}) does not end at the body end {len}",
            header.data_offset, header.data_len
        )));
    }
    let opaque = checked_range(data_offset, header.opaque_len, len, "opaque bytes")?;
    if !opaque.is_empty() && data_kind != Some(DataKind::AppDefined) {
        return Err(malformed("opaque bytes in a DXO that is not APP_DEFINED"));
    }

    let meta = if meta_range.is_empty() {
        Map::new()
    } else {
        serde_json::from_slice::<Map<String, Value>>(&body[meta_range])
            .map_err(|e| malformed(format!("meta is not a JSON object: {e}")))?
    };

    tensors.clear();
    tensors.reserve(header.tensor_count as usize);
    let mut previous_end = opaque.end as u64;
    for i in 0..header.tensor_count as usize {
        let at = table.start + i * TENSOR_ENTRY_LEN;
        let entry = TensorEntry::read_from_bytes(&body[at..at + TENSOR_ENTRY_LEN])
            .map_err(|_| malformed("tensor entry"))?;
        let bad = |what: String| malformed(format!("tensor {i}: {what}"));
        let dtype = u32::from(entry.dtype);
        let dtype =
            DType::from_code(dtype).ok_or_else(|| bad(format!("unknown dtype code {dtype}")))?;
        let ndim = usize::from(entry.ndim);
        if ndim > MAX_DIMS {
            return Err(bad(format!("{ndim} dimensions")));
        }
        if entry.shape[ndim..].iter().any(|&d| d != 0) || entry.reserved0 != 0 {
            return Err(bad("non-zero reserved or unused shape words".into()));
        }
        let name_len = u64::from(entry.name_len);
        if name_len == 0 {
            return Err(bad("empty name".into()));
        }
        over("tensor name length", name_len, limits.max_name_len.into())?;
        let name = checked_range(
            u64::from(entry.name_offset),
            name_len,
            names.len(),
            "tensor name",
        )
        .map_err(|_| bad("name outside the names area".into()))?;
        let name = (name.start + names.start)..(name.end + names.start);
        let name = copy_str(name, &|| format!("tensor {i}: name"))?;
        let expected = tensor_len(dtype, &entry.shape[..ndim]);
        if expected != Some(entry.data_len) {
            return Err(bad(format!(
                "{} bytes for shape {:?} of {dtype}",
                entry.data_len,
                &entry.shape[..ndim]
            )));
        }
        if entry.data_offset % TENSOR_ALIGN as u64 != 0 {
            return Err(bad(format!(
                "data at {} is not {TENSOR_ALIGN}-byte aligned",
                entry.data_offset
            )));
        }
        if entry.data_offset < previous_end {
            return Err(bad(format!(
                "data at {} overlaps what precedes it (ends {previous_end})",
                entry.data_offset
            )));
        }
        let data = checked_range(entry.data_offset, entry.data_len, len, "tensor data")?;
        previous_end = data.end as u64;
        tensors.push(ParsedTensor {
            name,
            dtype,
            ndim,
            shape: entry.shape,
            data,
        });
    }
    if let Some(name) = first_duplicate(&tensors, |t| &text[t.name.clone()]) {
        let name = String::from_utf8_lossy(name);
        return Err(malformed(format!("duplicate tensor name {name:?}")));
    }
    // Every field was checked as UTF-8 on its own, so their concatenation is UTF-8.
    let strings = String::from_utf8(text).map_err(|_| malformed("names are not UTF-8"))?;
    Ok(ParsedBody {
        rc,
        epoch: 0,
        reply_to: header.reply_to,
        prefix_len: data_offset as usize,
        data_kind,
        strings,
        task_id,
        task_name,
        meta,
        opaque,
        tensors,
    })
}

/// The first name that occurs twice among `items`, if any. Small tables are compared pairwise (no
/// allocation, no hashing: this is on the hot path of every message); large ones through a
/// hash set, whose size the tensor-count limit bounds.
fn first_duplicate<'b, T>(items: &[T], name: impl Fn(&T) -> &'b [u8]) -> Option<&'b [u8]> {
    const PAIRWISE_MAX: usize = 32;
    if items.len() <= PAIRWISE_MAX {
        return items.iter().enumerate().find_map(|(i, a)| {
            let a = name(a);
            items[..i].iter().any(|b| name(b) == a).then_some(a)
        });
    }
    let mut seen = HashSet::with_capacity(items.len());
    items.iter().map(&name).find(|n| !seen.insert(*n))
}

/// A buffer whose start is page-aligned (so every tensor in it is 64-byte aligned), used to
/// reassemble fragmented messages and to copy messages out of the ring.
///
/// It is an anonymous memory map: its pages come from the OS zeroed, on first touch, so
/// reserving room for a large announced message costs nothing until its bytes arrive, and a
/// failed allocation is an error, not an abort.
#[derive(Default)]
pub struct AlignedBuf {
    map: Option<memmap2::MmapMut>,
    len: usize,
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl Clone for AlignedBuf {
    /// A copy of the bytes in a new buffer.
    ///
    /// # Panics
    /// If the OS refuses the memory for the copy.
    fn clone(&self) -> Self {
        let mut copy = AlignedBuf::zeroed(self.len).expect("memory for a copy of a buffer");
        copy.as_mut_slice().copy_from_slice(self.as_slice());
        copy
    }
}

impl AlignedBuf {
    /// An empty buffer (no memory mapped).
    pub fn new() -> AlignedBuf {
        AlignedBuf::default()
    }

    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> std::io::Result<AlignedBuf> {
        let mut buf = AlignedBuf::new();
        buf.reset(len)?;
        Ok(buf)
    }

    /// Bytes the buffer holds without mapping new memory.
    pub fn capacity(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// Sets the length to `len`. Within the current capacity the bytes are kept (they are
    /// whatever was there); beyond it, a new zeroed map replaces the old one and the old
    /// contents are gone.
    pub fn reset(&mut self, len: usize) -> std::io::Result<()> {
        if len > self.capacity() {
            self.map = Some(memmap2::MmapMut::map_anon(len)?);
        }
        self.len = len;
        Ok(())
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.map.as_ref().map_or(&[], |m| &m[..self.len])
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self.map.as_mut() {
            Some(m) => &mut m[..self.len],
            None => &mut [],
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Receives messages from a ring, enforcing [`Limits`], reassembling fragments into a reused
/// buffer.
#[derive(Debug, Default)]
pub struct FrameReceiver {
    limits: Limits,
    assembly: AlignedBuf,
    /// The parsed tensor table and strings of the last message, kept for the next one.
    spare: Scratch,
    /// Fragments stamped with an older epoch are dropped unparsed.
    min_epoch: u64,
    stale_dropped: u64,
    /// Where an [`OwnedMessage`] taken from the reassembly buffer returns that buffer when
    /// dropped, so the next large message reuses its pages instead of faulting in new ones.
    returned: Arc<Mutex<AlignedBuf>>,
}

/// What a receiver keeps from one message to the next: the last body parsed in full (a copy
/// of its prefix, its length) and, while no message holds it, its parse (see
/// [`parse_cached`]); on a different body, the parse's allocations are reused.
#[derive(Debug, Default)]
struct Scratch {
    prefix: Vec<u8>,
    len: usize,
    parsed: Option<ParsedBody>,
}

/// Where a received message's bytes are.
enum Storage<'c> {
    /// In the ring, viewed in place until the message is dropped or released.
    Ring(Option<ReadGrant<'c>>),
    /// In the receiver's reassembly buffer.
    Assembled(&'c mut AlignedBuf, &'c Arc<Mutex<AlignedBuf>>),
    /// In the caller's buffer ([`FrameReceiver::recv_into`]).
    Caller(&'c [u8]),
}

/// A received message. Its tensors can be viewed in place; dropping it (or
/// [`Message::release`]) frees its ring space.
pub struct Message<'c> {
    storage: Storage<'c>,
    kind: MessageKind,
    sequence: u64,
    parsed: ParsedBody,
    /// Where the parsed tensor table and strings go back to when the message is dropped.
    spare: &'c mut Scratch,
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("kind", &self.kind)
            .field("sequence", &self.sequence)
            .field("in_ring", &matches!(self.storage, Storage::Ring(_)))
            .finish()
    }
}

impl FrameReceiver {
    /// A receiver enforcing `limits`.
    pub fn new(limits: Limits) -> FrameReceiver {
        FrameReceiver {
            limits,
            ..FrameReceiver::default()
        }
    }

    /// The limits enforced.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// From now on, consumes and drops without parsing every fragment stamped with an epoch
    /// below `epoch` (a dead agent incarnation's traffic; see [`Envelope::epoch`]).
    pub fn set_min_epoch(&mut self, epoch: u64) {
        self.min_epoch = epoch;
    }

    /// How many fragments were dropped for a stale epoch so far.
    pub fn stale_dropped(&self) -> u64 {
        self.stale_dropped
    }

    /// Receives the next message, waiting until `deadline` (`None`: forever). A message that
    /// arrived whole is viewed in place in the ring; a fragmented one is reassembled into this
    /// receiver's buffer as its fragments arrive (the buffer is kept for the next message).
    pub fn recv<'c>(
        &'c mut self,
        consumer: &'c mut Consumer,
        deadline: Option<Instant>,
    ) -> Result<Message<'c>, FrameError> {
        self.receive(consumer, deadline, None, None, None)
    }

    /// [`FrameReceiver::recv`] whose `deadline` bounds only the wait for a message to begin:
    /// once a fragmented message has started, each further fragment may take up to `stall`
    /// (`None`: until `deadline`). A receiver that polls with short deadlines (to do other
    /// work between waits) thus never drops a message that is still streaming in.
    pub fn recv_with_stall<'c>(
        &'c mut self,
        consumer: &'c mut Consumer,
        deadline: Option<Instant>,
        stall: Option<Duration>,
    ) -> Result<Message<'c>, FrameError> {
        self.receive(consumer, deadline, None, stall, None)
    }

    /// [`FrameReceiver::recv_with_stall`] whose wait for each further fragment of a started
    /// message asks `cancel.0(epoch)` (with the message's `agent_epoch`) every `cancel.1` it
    /// has waited without a fragment arriving, and stops with [`FrameError::Cancelled`] when
    /// it answers `true` (fragments already published are always taken): a sender that gave
    /// up mid-message (its process died and a new incarnation holds its role, or the receiver
    /// is shutting down) need not be waited for until `stall` passes.
    pub fn recv_with_stall_cancellable<'c>(
        &'c mut self,
        consumer: &'c mut Consumer,
        deadline: Option<Instant>,
        stall: Option<Duration>,
        cancel: (&dyn Fn(u64) -> bool, Duration),
    ) -> Result<Message<'c>, FrameError> {
        self.receive(consumer, deadline, None, stall, Some(cancel))
    }

    /// Receives the next message into the caller's buffer: its body is copied there, fragment
    /// by fragment as it arrives (large destinations with cache-bypassing stores), and the
    /// returned message views its tensors there. One copy, no buffer of the receiver's own:
    /// the copy-out for callers who keep the data. Tensors are 64-byte aligned relative to
    /// the buffer's start; align the buffer to 64 bytes (e.g. an [`AlignedBuf`]) to view
    /// them as typed slices. A message longer than the buffer is consumed and refused with
    /// [`FrameError::OverLimit`].
    pub fn recv_into<'c>(
        &'c mut self,
        consumer: &'c mut Consumer,
        deadline: Option<Instant>,
        buffer: &'c mut [u8],
    ) -> Result<Message<'c>, FrameError> {
        self.receive(consumer, deadline, Some(buffer), None, None)
    }

    fn receive<'c>(
        &'c mut self,
        consumer: &'c mut Consumer,
        deadline: Option<Instant>,
        caller: Option<&'c mut [u8]>,
        stall: Option<Duration>,
        cancel: Option<(&dyn Fn(u64) -> bool, Duration)>,
    ) -> Result<Message<'c>, FrameError> {
        let FrameReceiver {
            limits,
            assembly,
            spare,
            min_epoch,
            stale_dropped,
            returned,
        } = self;
        let limits = *limits;
        let first = loop {
            let grant = consumer.peek(deadline)?;
            match fragment_header(&grant) {
                Ok(h) if h.epoch < *min_epoch => {
                    grant.release();
                    *stale_dropped += 1;
                }
                Ok(h) => break h,
                Err(e) => {
                    grant.release();
                    return Err(e);
                }
            }
        };
        if first.flags & FLAG_FIRST == 0 {
            discard_next(consumer)?;
            return Err(FrameError::OutOfOrder(format!(
                "fragment {} of message {} arrived without its first fragment",
                first.fragment_index, first.sequence
            )));
        }
        let kind = MessageKind::from_code(first.kind.into())
            .ok_or_else(|| FrameError::BadFragment(format!("unknown message kind {}", first.kind)))
            .and_then(|k| {
                over("message length", first.message_len, limits.max_message_len).map(|()| k)
            });
        let kind = kind.and_then(|k| match &caller {
            Some(buffer) => {
                over("message length", first.message_len, buffer.len() as u64).map(|()| k)
            }
            None => Ok(k),
        });
        let kind = match kind {
            Ok(kind) => kind,
            Err(e) => {
                discard_next(consumer)?;
                return Err(e);
            }
        };
        if first.flags & FLAG_LAST != 0 && caller.is_none() {
            // The record is still at the head: take it again, this time for the caller.
            let grant = consumer
                .try_peek()?
                .ok_or_else(|| FrameError::Malformed("record vanished between two peeks".into()))?;
            let parsed = parse_cached(&grant.as_slice()[FRAGMENT_HEADER_LEN..], &limits, spare);
            return match parsed {
                Ok(mut parsed) => {
                    parsed.epoch = first.epoch;
                    Ok(Message {
                        storage: Storage::Ring(Some(grant)),
                        kind,
                        sequence: first.sequence,
                        parsed,
                        spare,
                    })
                }
                Err(e) => {
                    grant.release();
                    Err(e)
                }
            };
        }
        let grant = consumer
            .try_peek()?
            .ok_or_else(|| FrameError::Malformed("record vanished between two peeks".into()))?;
        // Fragmented: the length was checked against the limit above, before this allocation.
        let total = usize::try_from(first.message_len).map_err(|_| FrameError::OverLimit {
            what: "message length",
            value: first.message_len,
            max: usize::MAX as u64,
        });
        let total = match total {
            Ok(t) => t,
            Err(e) => {
                grant.release();
                return Err(e);
            }
        };
        let mut caller = caller;
        let out: &mut [u8] = match caller.as_mut() {
            // Checked against the buffer's length above.
            Some(buffer) => &mut buffer[..total],
            None => {
                if assembly.capacity() < total {
                    // A buffer an owned message gave back, if it is larger.
                    let mut given_back = returned.lock().unwrap_or_else(|e| e.into_inner());
                    if given_back.capacity() > assembly.capacity() {
                        std::mem::swap(assembly, &mut *given_back);
                    }
                }
                // Lazily zeroed pages: room is reserved now, memory used only as fragments
                // arrive.
                if assembly.reset(total).is_err() {
                    grant.release();
                    return Err(FrameError::OutOfMemory {
                        len: first.message_len,
                    });
                }
                assembly.as_mut_slice()
            }
        };
        let mut received = copy_fragment(grant, out, 0)?;
        let mut index = 0u32;
        while (received as u64) < first.message_len {
            index = index.wrapping_add(1);
            let fragment_deadline = match stall {
                Some(stall) => Instant::now().checked_add(stall),
                None => deadline,
            };
            let grant = match cancel {
                None => consumer.peek(fragment_deadline)?,
                Some((cancelled, slice)) => loop {
                    // A fragment already published is taken whatever the predicate says:
                    // only a wait for one is cancelled.
                    let now = Instant::now();
                    let slice_end = fragment_deadline.map_or(now + slice, |d| d.min(now + slice));
                    match consumer.peek(Some(slice_end)) {
                        Err(RecvError::Timeout)
                            if fragment_deadline.is_none_or(|d| Instant::now() < d) =>
                        {
                            if cancelled(first.epoch) {
                                return Err(FrameError::Cancelled);
                            }
                        }
                        other => break other?,
                    }
                },
            };
            let next = match fragment_header(&grant) {
                Ok(h) => h,
                Err(e) => {
                    grant.release();
                    return Err(e);
                }
            };
            if next.flags & FLAG_FIRST != 0 {
                // The start of another message: leave it for the next call.
                return Err(FrameError::OutOfOrder(format!(
                    "message {} ended after {received} of {} bytes; message {} began",
                    first.sequence, first.message_len, next.sequence
                )));
            }
            let consistent = next.sequence == first.sequence
                && next.kind == first.kind
                && next.epoch == first.epoch
                && next.message_len == first.message_len
                && next.fragment_offset == received as u64
                && next.fragment_index == index
                && ((next.flags & FLAG_LAST != 0)
                    == (received as u64 + next.fragment_len == first.message_len));
            if !consistent {
                grant.release();
                return Err(FrameError::OutOfOrder(format!(
                    "fragment (message {}, index {}, offset {}) does not continue message {} at index {index}, offset {received}",
                    next.sequence, next.fragment_index, next.fragment_offset, first.sequence
                )));
            }
            received = copy_fragment(grant, out, received)?;
        }
        let body: &[u8] = match &caller {
            Some(buffer) => &buffer[..total],
            None => assembly.as_slice(),
        };
        let mut parsed = parse_cached(body, &limits, spare)?;
        parsed.epoch = first.epoch;
        let storage = match caller {
            Some(buffer) => {
                let buffer: &'c [u8] = buffer;
                Storage::Caller(&buffer[..total])
            }
            None => Storage::Assembled(assembly, returned),
        };
        Ok(Message {
            storage,
            kind,
            sequence: first.sequence,
            parsed,
            spare,
        })
    }
}

/// Consumes the record at the head of the ring (a rejected fragment).
fn discard_next(consumer: &mut Consumer) -> Result<(), FrameError> {
    if let Some(grant) = consumer.try_peek()? {
        grant.release();
    }
    Ok(())
}

/// Reads and checks a fragment header (a copy of the bytes, not a reference into the ring).
fn fragment_header(grant: &ReadGrant<'_>) -> Result<FragmentHeader, FrameError> {
    let bytes = grant.as_slice();
    let header = FragmentHeader::read_from_prefix(bytes)
        .map_err(|_| {
            FrameError::BadFragment(format!(
                "record of {} bytes is shorter than a fragment header",
                bytes.len()
            ))
        })?
        .0;
    if header.magic != FRAME_MAGIC {
        return Err(FrameError::BadFragment(format!(
            "magic {:#010x}, expected {FRAME_MAGIC:#010x}",
            header.magic
        )));
    }
    if header.version != FORMAT_VERSION {
        return Err(FrameError::BadFragment(format!(
            "format version {FORMAT_VERSION} expected, fragment has {}",
            header.version
        )));
    }
    if header.header_len != FRAGMENT_HEADER_LEN as u32 || header.reserved0 != 0 {
        return Err(FrameError::BadFragment(
            "header length or reserved words".into(),
        ));
    }
    if header.flags & !(FLAG_FIRST | FLAG_LAST) != 0 {
        return Err(FrameError::BadFragment(format!(
            "unknown flags {:#x}",
            header.flags
        )));
    }
    let payload = (bytes.len() - FRAGMENT_HEADER_LEN) as u64;
    let end = header.fragment_offset.checked_add(header.fragment_len);
    if header.fragment_len != payload || end.is_none_or(|end| end > header.message_len) {
        return Err(FrameError::BadFragment(format!(
            "fragment [{}, +{}) of a {}-byte message in a record of {payload} payload bytes",
            header.fragment_offset, header.fragment_len, header.message_len
        )));
    }
    if header.flags & FLAG_FIRST != 0 && header.fragment_offset != 0 {
        return Err(FrameError::BadFragment(
            "first fragment at a non-zero offset".into(),
        ));
    }
    if header.flags & (FLAG_FIRST | FLAG_LAST) == (FLAG_FIRST | FLAG_LAST)
        && header.fragment_len != header.message_len
    {
        return Err(FrameError::BadFragment(
            "single fragment shorter than its message".into(),
        ));
    }
    Ok(header)
}

/// Copies a checked fragment's body bytes into `out` at `at`, releases it, returns the new end.
fn copy_fragment(grant: ReadGrant<'_>, out: &mut [u8], at: usize) -> Result<usize, FrameError> {
    let bytes = &grant.as_slice()[FRAGMENT_HEADER_LEN..];
    let end = at + bytes.len();
    if end > out.len() {
        grant.release();
        return Err(FrameError::BadFragment(
            "fragment runs past its message".into(),
        ));
    }
    // Into a destination larger than the cache, bypass the cache (as streams do).
    let streaming = out.len() as u64 >= crate::stream::NON_TEMPORAL_MIN;
    crate::stream::copy_out(&mut out[at..end], bytes, streaming);
    grant.release();
    Ok(end)
}

/// The accessors [`Message`] and [`OwnedMessage`] share, written once: both hold `kind`,
/// `sequence` and the parse (`parsed`) and have a private `body()`.
macro_rules! received_accessors {
    () => {
        /// The message kind.
        pub fn kind(&self) -> MessageKind {
            self.kind
        }

        /// The sender's sequence number.
        pub fn sequence(&self) -> u64 {
            self.sequence
        }

        /// The agent incarnation the message comes from or is addressed to (0: none).
        pub fn epoch(&self) -> u64 {
            self.parsed.epoch
        }

        /// The sequence number of the message this one answers (0: none).
        pub fn reply_to(&self) -> u64 {
            self.parsed.reply_to
        }

        /// The return code.
        pub fn rc(&self) -> ReturnCode {
            self.parsed.rc
        }

        /// The task id ("" for none).
        pub fn task_id(&self) -> &str {
            &self.parsed.strings[self.parsed.task_id.clone()]
        }

        /// The task name ("" for none).
        pub fn task_name(&self) -> &str {
            &self.parsed.strings[self.parsed.task_name.clone()]
        }

        /// Whether the message carries a DXO.
        pub fn has_dxo(&self) -> bool {
            self.parsed.data_kind.is_some()
        }

        /// The DXO's data kind (`None` if the message carries no DXO).
        pub fn data_kind(&self) -> Option<DataKind> {
            self.parsed.data_kind
        }

        /// The DXO's meta dictionary (empty if none).
        pub fn meta(&self) -> &Map<String, Value> {
            &self.parsed.meta
        }

        /// The opaque bytes (empty if none).
        pub fn opaque(&self) -> &[u8] {
            &self.body()[self.parsed.opaque.clone()]
        }

        /// Number of tensors.
        pub fn tensor_count(&self) -> usize {
            self.parsed.tensors.len()
        }

        /// The tensors, in order.
        pub fn tensors(&self) -> impl ExactSizeIterator<Item = TensorView<'_>> + '_ {
            (0..self.parsed.tensors.len()).map(move |i| self.view(i))
        }

        /// Tensor `index`.
        pub fn tensor(&self, index: usize) -> Option<TensorView<'_>> {
            (index < self.parsed.tensors.len()).then(|| self.view(index))
        }

        /// The tensor named `name`.
        pub fn tensor_by_name(&self, name: &str) -> Option<TensorView<'_>> {
            self.tensors().find(|t| t.name() == name)
        }

        fn view(&self, index: usize) -> TensorView<'_> {
            let t = &self.parsed.tensors[index];
            TensorView {
                name: &self.parsed.strings[t.name.clone()],
                dtype: t.dtype,
                shape: &t.shape[..t.ndim],
                bytes: &self.body()[t.data.clone()],
            }
        }

        /// A new DXO of `data_kind` (no meta) whose tensors are this message's, viewed where
        /// they lie: send it on to answer or forward them without copying them first.
        pub fn tensors_dxo(&self, data_kind: DataKind) -> Result<Dxo<'_>, DxoError> {
            self.tensors().try_fold(Dxo::new(data_kind), |dxo, t| {
                dxo.with_tensor_bytes(t.name(), t.dtype(), t.shape(), t.bytes())
            })
        }
    };
}

impl<'c> Message<'c> {
    fn body(&self) -> &[u8] {
        match &self.storage {
            Storage::Ring(Some(grant)) => &grant.as_slice()[FRAGMENT_HEADER_LEN..],
            Storage::Ring(None) => &[],
            Storage::Assembled(buf, _) => buf.as_slice(),
            Storage::Caller(body) => body,
        }
    }

    received_accessors!();

    /// Whether the message is viewed in place in the ring (it arrived whole) rather than
    /// reassembled from fragments.
    pub fn is_in_ring(&self) -> bool {
        matches!(self.storage, Storage::Ring(_))
    }

    /// Copies the whole message out into an owned value (for keeping it past the ring).
    pub fn to_owned_message(&self) -> std::io::Result<OwnedMessage> {
        let body = self.body();
        let mut buf = AlignedBuf::zeroed(body.len())?;
        buf.as_mut_slice().copy_from_slice(body);
        Ok(OwnedMessage {
            body: buf,
            kind: self.kind,
            sequence: self.sequence,
            parsed: self.parsed.clone(),
            give_back: None,
        })
    }

    /// Turns the message into an owned value. A reassembled message keeps its buffer (no
    /// copy): the receiver's next large message gets a new one, or this one back once the
    /// owned message is dropped. A message in the ring is copied out and its space freed.
    pub fn into_owned(mut self) -> std::io::Result<OwnedMessage> {
        let Storage::Assembled(buf, returned) = &mut self.storage else {
            return self.to_owned_message();
        };
        Ok(OwnedMessage {
            body: std::mem::take(*buf),
            kind: self.kind,
            sequence: self.sequence,
            parsed: std::mem::replace(&mut self.parsed, ParsedBody::empty()),
            give_back: Some(Arc::downgrade(returned)),
        })
    }

    /// Frees the message's ring space now (dropping it does the same).
    pub fn release(mut self) {
        self.release_grant();
    }

    fn release_grant(&mut self) {
        if let Storage::Ring(grant) = &mut self.storage {
            if let Some(grant) = grant.take() {
                grant.release();
            }
        }
    }
}

impl Drop for Message<'_> {
    fn drop(&mut self) {
        self.release_grant();
        let parsed = std::mem::replace(&mut self.parsed, ParsedBody::empty());
        // `into_owned` leaves the placeholder behind (no body prefix): nothing to keep then.
        self.spare.parsed = (parsed.prefix_len != 0).then_some(parsed);
    }
}

/// A message copied out of the ring: the same accessors as [`Message`], owning its bytes.
#[derive(Clone, Debug)]
pub struct OwnedMessage {
    body: AlignedBuf,
    kind: MessageKind,
    sequence: u64,
    parsed: ParsedBody,
    /// The receiver's slot for a reassembly buffer to reuse.
    give_back: Option<Weak<Mutex<AlignedBuf>>>,
}

impl Drop for OwnedMessage {
    fn drop(&mut self) {
        let Some(slot) = self.give_back.as_ref().and_then(Weak::upgrade) else {
            return;
        };
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if self.body.capacity() > slot.capacity() {
            *slot = std::mem::take(&mut self.body);
        }
    }
}

impl OwnedMessage {
    fn body(&self) -> &[u8] {
        self.body.as_slice()
    }

    received_accessors!();
}

/// A tensor of a received message, viewed where it lies (ring or buffer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorView<'a> {
    name: &'a str,
    dtype: DType,
    shape: &'a [u64],
    bytes: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// The name.
    pub fn name(&self) -> &'a str {
        self.name
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The shape.
    pub fn shape(&self) -> &'a [u64] {
        self.shape
    }
    /// The raw bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }
    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The elements as `&[T]`, in place; the dtype must be `T`'s. (For bool tensors use
    /// [`TensorView::to_bools`].)
    pub fn as_slice<T: Element + FromBytes + KnownLayout>(&self) -> Result<&'a [T], ViewError> {
        if self.dtype != T::DTYPE {
            return Err(ViewError::WrongDType {
                actual: self.dtype,
                asked: T::DTYPE,
            });
        }
        <[T]>::ref_from_bytes(self.bytes).map_err(|_| ViewError::Misaligned)
    }

    /// A bool tensor's elements, copied out after checking every byte is 0 or 1.
    ///
    /// Not a view in place: a `&[bool]` over ring bytes that a faulty peer could overwrite
    /// with another value would be undefined behaviour; a copy cannot be changed under us.
    /// The raw bytes are available in place through [`TensorView::bytes`].
    pub fn to_bools(&self) -> Result<Vec<bool>, ViewError> {
        if self.dtype != DType::Bool {
            return Err(ViewError::WrongDType {
                actual: self.dtype,
                asked: DType::Bool,
            });
        }
        self.bytes
            .iter()
            .map(|&b| match b {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(ViewError::InvalidBool),
            })
            .collect()
    }

    /// Copies the elements into a caller-provided slice of exactly [`TensorView::len`]
    /// elements.
    pub fn copy_to<T: Element + FromBytes + KnownLayout>(
        &self,
        out: &mut [T],
    ) -> Result<(), ViewError> {
        if self.dtype != T::DTYPE {
            return Err(ViewError::WrongDType {
                actual: self.dtype,
                asked: T::DTYPE,
            });
        }
        let out = out.as_mut_bytes();
        if out.len() != self.bytes.len() {
            return Err(ViewError::Misaligned);
        }
        out.copy_from_slice(self.bytes);
        Ok(())
    }

    /// Copies the elements into a new vector.
    pub fn to_vec<T: Element + FromBytes + KnownLayout>(&self) -> Result<Vec<T>, ViewError> {
        if self.dtype != T::DTYPE {
            return Err(ViewError::WrongDType {
                actual: self.dtype,
                asked: T::DTYPE,
            });
        }
        <[T]>::ref_from_bytes(self.bytes)
            .map(|s| s.to_vec())
            .or_else(|_| {
                // Unaligned (only possible for caller-built views): copy element by element.
                let mut v = vec![T::new_zeroed(); self.len()];
                v.as_mut_bytes().copy_from_slice(self.bytes);
                Ok(v)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::Signals;
    use std::time::Duration;

    /// An owned message taken from the reassembly buffer gives that buffer back to the
    /// receiver's slot when dropped, and the next large message takes it from there.
    #[test]
    fn dropped_owned_message_returns_its_buffer_to_the_receiver() {
        let (mut tx, mut rx) = crate::ring::in_process(64 * 1024, Signals::in_process()).unwrap();
        let data = vec![1.5f32; 100_000];
        let dxo = Dxo::new(DataKind::Weights)
            .with_tensor("w", &[100_000], &data)
            .unwrap();
        let soon = || Some(Instant::now() + Duration::from_secs(30));
        let slot = |r: &FrameReceiver| r.returned.lock().unwrap().capacity();
        let mut receiver = FrameReceiver::default();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut sender = FrameSender::new();
                for _ in 0..2 {
                    let task = Envelope::new(MessageKind::Task);
                    sender.send(&mut tx, &task, Some(&dxo), soon()).unwrap();
                }
            });
            let owned = receiver
                .recv(&mut rx, soon())
                .unwrap()
                .into_owned()
                .unwrap();
            assert_eq!(slot(&receiver), 0);
            drop(owned);
            assert!(slot(&receiver) >= 400_000, "the buffer came back");
            let again = receiver.recv(&mut rx, soon()).unwrap();
            assert!(!again.is_in_ring());
            drop(again);
            assert_eq!(slot(&receiver), 0, "the next message took it");
        });
    }
}
