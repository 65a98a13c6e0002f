//! The wire's enumerations: message kinds, FLARE return codes, data kinds and tensor dtypes,
//! with their wire numbers and FLARE's names.

#[allow(unused_imports)]
use super::*;

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
