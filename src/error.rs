//! Error codes: one stable number per kind of error, for the C and Python bindings.
//!
//! Every error type of the crate implements [`Coded`]: its [`Coded::code`] maps each variant
//! to an [`ErrorCode`] by an exhaustive `match` (all of them are in this file, so the whole
//! table can be read in one place), and a new variant does not compile until it has a code.
//! The bindings map [`ErrorCode`] exhaustively in turn (a C status, a Python exception), so a
//! new code breaks their build instead of becoming "unknown". The text of an error travels
//! separately (`Display`).
//!
//! ```
//! use shmex::error::{Coded, ErrorCode};
//! use shmex::segment::SegmentName;
//!
//! let err = SegmentName::new("not-shmex").unwrap_err();
//! assert_eq!(err.code(), ErrorCode::InvalidName);
//! assert_eq!(ErrorCode::InvalidName as u32, 21);
//! assert!(!err.is_timeout());
//! ```

use crate::frame::{DxoError, FrameError, LoanError, SendError, ViewError};
use crate::protocol::{
    AgentAttachError, CloseError, ExchangerCreateError, GetTaskError, SubmitError, TaskLoanError,
};
use crate::ring::{
    CapacityError, RecvError, ReserveError, RingCorruption, StaleReservation, TryReserveError,
};
use crate::segment::{CreateError, NameError, OpenError};
use crate::signal::PeerLost;
use crate::stream::{MalformedStream, StreamRecvError};
use crate::{control, link, sys};

/// The kind of an error, with a number that stays the same across releases (new kinds get new
/// numbers; a number is never reused).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A deadline or timeout passed.
    Timeout = 1,
    /// The other side closed (said `bye`, detached), or this object was closed.
    Closed = 2,
    /// The other side's process died.
    PeerDead = 3,
    /// Shared memory holds values no shmex process writes (a ring, the control block).
    Corrupt = 4,
    /// A message the peer sent is malformed; it was dropped and the link stays usable.
    Malformed = 5,
    /// A received message exceeds one of the receiver's limits.
    OverLimit = 6,
    /// This process could not allocate memory.
    OutOfMemory = 7,
    /// A buffer the caller gave is too small.
    BufferTooSmall = 8,
    /// Something to send does not fit (the wire format's field widths, or one ring record).
    TooLarge = 9,
    /// The operation was cancelled by the caller.
    Cancelled = 10,
    /// A tensor or DXO the caller built is invalid (names, shape, dtype, opaque bytes).
    InvalidData = 11,
    /// No tensor has the index or name asked for.
    NoSuchTensor = 12,
    /// A tensor's dtype is not the one asked for.
    WrongDType = 13,
    /// Tensor bytes are not aligned for, or not a whole number of, the element type.
    Misaligned = 14,
    /// A bool tensor holds a byte other than 0 or 1.
    InvalidBool = 15,
    /// A call made in the wrong state (e.g. fetching a task before answering the last one).
    CallState = 16,
    /// A segment of this name exists already.
    AlreadyExists = 17,
    /// No segment of this name exists.
    NotFound = 18,
    /// The OS refused access, or the segment belongs to someone else.
    PermissionDenied = 19,
    /// `/dev/shm` or memory cannot hold the segment.
    NoSpace = 20,
    /// A segment name (or a site or agent name) is invalid.
    InvalidName = 21,
    /// The segment was made by another layout or format version.
    VersionMismatch = 22,
    /// The role (or the name) is held by another live process.
    InUse = 23,
    /// A configuration value is invalid (a ring capacity, a size).
    InvalidConfig = 24,
    /// An OS call failed in another way (the text names the call and the errno).
    Os = 25,
}

impl ErrorCode {
    /// Every code, in number order.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::Timeout,
        ErrorCode::Closed,
        ErrorCode::PeerDead,
        ErrorCode::Corrupt,
        ErrorCode::Malformed,
        ErrorCode::OverLimit,
        ErrorCode::OutOfMemory,
        ErrorCode::BufferTooSmall,
        ErrorCode::TooLarge,
        ErrorCode::Cancelled,
        ErrorCode::InvalidData,
        ErrorCode::NoSuchTensor,
        ErrorCode::WrongDType,
        ErrorCode::Misaligned,
        ErrorCode::InvalidBool,
        ErrorCode::CallState,
        ErrorCode::AlreadyExists,
        ErrorCode::NotFound,
        ErrorCode::PermissionDenied,
        ErrorCode::NoSpace,
        ErrorCode::InvalidName,
        ErrorCode::VersionMismatch,
        ErrorCode::InUse,
        ErrorCode::InvalidConfig,
        ErrorCode::Os,
    ];

    /// The code's name in `SCREAMING_SNAKE_CASE`, as the bindings spell it.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Closed => "CLOSED",
            ErrorCode::PeerDead => "PEER_DEAD",
            ErrorCode::Corrupt => "CORRUPT",
            ErrorCode::Malformed => "MALFORMED",
            ErrorCode::OverLimit => "OVER_LIMIT",
            ErrorCode::OutOfMemory => "OUT_OF_MEMORY",
            ErrorCode::BufferTooSmall => "BUFFER_TOO_SMALL",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::InvalidData => "INVALID_DATA",
            ErrorCode::NoSuchTensor => "NO_SUCH_TENSOR",
            ErrorCode::WrongDType => "WRONG_DTYPE",
            ErrorCode::Misaligned => "MISALIGNED",
            ErrorCode::InvalidBool => "INVALID_BOOL",
            ErrorCode::CallState => "CALL_STATE",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::NoSpace => "NO_SPACE",
            ErrorCode::InvalidName => "INVALID_NAME",
            ErrorCode::VersionMismatch => "VERSION_MISMATCH",
            ErrorCode::InUse => "IN_USE",
            ErrorCode::InvalidConfig => "INVALID_CONFIG",
            ErrorCode::Os => "OS",
        }
    }

    /// The code with number `number`, if there is one.
    pub fn from_number(number: u32) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| *c as u32 == number)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An error with an [`ErrorCode`], and predicates over it. Implemented by every error type of
/// the crate.
pub trait Coded: std::error::Error {
    /// The error's kind.
    fn code(&self) -> ErrorCode;

    /// Whether a deadline or timeout passed (the call may be retried).
    fn is_timeout(&self) -> bool {
        self.code() == ErrorCode::Timeout
    }

    /// Whether the other side closed or this object was closed.
    fn is_closed(&self) -> bool {
        self.code() == ErrorCode::Closed
    }

    /// Whether the other side is gone: closed, or its process died.
    fn is_peer_lost(&self) -> bool {
        matches!(self.code(), ErrorCode::Closed | ErrorCode::PeerDead)
    }

    /// Whether shared memory was found corrupt.
    fn is_corrupt(&self) -> bool {
        self.code() == ErrorCode::Corrupt
    }
}

impl Coded for PeerLost {
    fn code(&self) -> ErrorCode {
        match self {
            PeerLost::Dead { .. } => ErrorCode::PeerDead,
            PeerLost::Closed => ErrorCode::Closed,
        }
    }
}

impl Coded for RingCorruption {
    fn code(&self) -> ErrorCode {
        ErrorCode::Corrupt
    }
}

impl Coded for StaleReservation {
    fn code(&self) -> ErrorCode {
        ErrorCode::CallState
    }
}

impl Coded for CapacityError {
    fn code(&self) -> ErrorCode {
        match self {
            CapacityError::Zero
            | CapacityError::Unaligned { .. }
            | CapacityError::TooSmall { .. }
            | CapacityError::TooLarge { .. } => ErrorCode::InvalidConfig,
        }
    }
}

impl Coded for TryReserveError {
    fn code(&self) -> ErrorCode {
        match self {
            TryReserveError::TooLarge { .. } => ErrorCode::TooLarge,
            // A try is a wait with no time: "full" is its timeout.
            TryReserveError::Full => ErrorCode::Timeout,
            TryReserveError::Corrupt(_) => ErrorCode::Corrupt,
        }
    }
}

impl Coded for ReserveError {
    fn code(&self) -> ErrorCode {
        match self {
            ReserveError::TooLarge { .. } => ErrorCode::TooLarge,
            ReserveError::Timeout => ErrorCode::Timeout,
            ReserveError::PeerLost(lost) => lost.code(),
            ReserveError::Corrupt(_) => ErrorCode::Corrupt,
        }
    }
}

impl Coded for RecvError {
    fn code(&self) -> ErrorCode {
        match self {
            RecvError::Timeout => ErrorCode::Timeout,
            RecvError::PeerLost(lost) => lost.code(),
            RecvError::Corrupt(_) => ErrorCode::Corrupt,
        }
    }
}

impl Coded for MalformedStream {
    fn code(&self) -> ErrorCode {
        ErrorCode::Malformed
    }
}

impl Coded for StreamRecvError {
    fn code(&self) -> ErrorCode {
        match self {
            StreamRecvError::Timeout => ErrorCode::Timeout,
            StreamRecvError::PeerLost(lost) => lost.code(),
            StreamRecvError::Corrupt(_) => ErrorCode::Corrupt,
            StreamRecvError::TooLarge { .. } => ErrorCode::OverLimit,
            StreamRecvError::Malformed(_) => ErrorCode::Malformed,
            StreamRecvError::OutOfMemory { .. } => ErrorCode::OutOfMemory,
        }
    }
}

impl Coded for DxoError {
    fn code(&self) -> ErrorCode {
        match self {
            DxoError::DuplicateName(_)
            | DxoError::EmptyName
            | DxoError::NameTooLong { .. }
            | DxoError::TooManyDims { .. }
            | DxoError::ShapeMismatch { .. }
            | DxoError::OpaqueNotAppDefined(_) => ErrorCode::InvalidData,
        }
    }
}

impl Coded for SendError {
    fn code(&self) -> ErrorCode {
        match self {
            SendError::TooLargeForFormat { .. } | SendError::TooLargeForLoan { .. } => {
                ErrorCode::TooLarge
            }
            SendError::Timeout => ErrorCode::Timeout,
            SendError::Cancelled => ErrorCode::Cancelled,
            SendError::PeerLost(lost) => lost.code(),
            SendError::Corrupt(_) => ErrorCode::Corrupt,
        }
    }
}

impl Coded for LoanError {
    fn code(&self) -> ErrorCode {
        match self {
            LoanError::Dxo(e) => e.code(),
            LoanError::Send(e) => e.code(),
        }
    }
}

impl Coded for ViewError {
    fn code(&self) -> ErrorCode {
        match self {
            ViewError::NoSuchIndex { .. } | ViewError::NoSuchName { .. } => ErrorCode::NoSuchTensor,
            ViewError::WrongDType { .. } => ErrorCode::WrongDType,
            ViewError::Misaligned => ErrorCode::Misaligned,
            ViewError::InvalidBool => ErrorCode::InvalidBool,
            ViewError::StaleLoan => ErrorCode::CallState,
        }
    }
}

impl Coded for FrameError {
    fn code(&self) -> ErrorCode {
        match self {
            FrameError::Timeout => ErrorCode::Timeout,
            FrameError::Cancelled => ErrorCode::Cancelled,
            FrameError::PeerLost(lost) => lost.code(),
            FrameError::Corrupt(_) => ErrorCode::Corrupt,
            FrameError::BadFragment(_) | FrameError::OutOfOrder(_) | FrameError::Malformed(_) => {
                ErrorCode::Malformed
            }
            FrameError::OverLimit { .. } => ErrorCode::OverLimit,
            FrameError::OutOfMemory { .. } => ErrorCode::OutOfMemory,
            FrameError::BufferTooSmall { .. } => ErrorCode::BufferTooSmall,
        }
    }
}

impl Coded for sys::SysError {
    fn code(&self) -> ErrorCode {
        match self {
            sys::SysError::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            sys::SysError::NotFound { .. } => ErrorCode::NotFound,
            sys::SysError::PermissionDenied { .. } => ErrorCode::PermissionDenied,
            sys::SysError::NoSpace { .. } => ErrorCode::NoSpace,
            sys::SysError::SymlinkRefused { .. } => ErrorCode::PermissionDenied,
            sys::SysError::Os { .. } => ErrorCode::Os,
        }
    }
}

impl Coded for NameError {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidName
    }
}

impl Coded for CreateError {
    fn code(&self) -> ErrorCode {
        match self {
            CreateError::InUse { .. } | CreateError::Contended { .. } => ErrorCode::InUse,
            CreateError::Exists { .. } => ErrorCode::AlreadyExists,
            CreateError::NoSpace { .. } => ErrorCode::NoSpace,
            CreateError::Sys { source, .. } => source.code(),
        }
    }
}

impl Coded for OpenError {
    fn code(&self) -> ErrorCode {
        match self {
            OpenError::NotFound { .. } => ErrorCode::NotFound,
            OpenError::BadLength { .. } => ErrorCode::Corrupt,
            OpenError::SymlinkRefused { .. } | OpenError::NotOwner { .. } => {
                ErrorCode::PermissionDenied
            }
            OpenError::Sys { source, .. } => source.code(),
        }
    }
}

impl Coded for control::LayoutError {
    fn code(&self) -> ErrorCode {
        use control::LayoutError as E;
        match self {
            E::NotInitialized { .. } => ErrorCode::Timeout,
            E::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            E::TooSmall { .. }
            | E::BadMagic { .. }
            | E::LengthMismatch { .. }
            | E::BadControlLen { .. }
            | E::BadCapacity { .. }
            | E::BadOffsets { .. }
            | E::BadRingHeader { .. } => ErrorCode::Corrupt,
        }
    }
}

impl Coded for control::AttachError {
    fn code(&self) -> ErrorCode {
        use control::AttachError as E;
        match self {
            E::RoleTaken { .. } => ErrorCode::InUse,
            E::NoControlBlock => ErrorCode::Corrupt,
            E::Sys(e) => e.code(),
            E::Beater(_) => ErrorCode::Os,
        }
    }
}

impl Coded for link::LinkCreateError {
    fn code(&self) -> ErrorCode {
        use link::LinkCreateError as E;
        match self {
            E::Capacity { source, .. } => source.code(),
            E::TooLarge | E::RingTooSmall { .. } => ErrorCode::InvalidConfig,
            E::Segment(e) => e.code(),
            E::Attach(e) => e.code(),
            E::Ring(_) => ErrorCode::Corrupt,
        }
    }
}

impl Coded for link::LinkAttachError {
    fn code(&self) -> ErrorCode {
        use link::LinkAttachError as E;
        match self {
            E::Timeout { .. } => ErrorCode::Timeout,
            E::RingTooSmall { .. } => ErrorCode::Corrupt,
            E::Open(e) => e.code(),
            E::Layout(e) => e.code(),
            E::Attach(e) => e.code(),
            E::Ring(_) => ErrorCode::Corrupt,
        }
    }
}

impl Coded for ExchangerCreateError {
    fn code(&self) -> ErrorCode {
        match self {
            ExchangerCreateError::Link(e) => e.code(),
            ExchangerCreateError::Spawn(_) => ErrorCode::Os,
        }
    }
}

impl Coded for CloseError {
    fn code(&self) -> ErrorCode {
        match self {
            CloseError::Bye(e) => e.code(),
        }
    }
}

impl Coded for TaskLoanError {
    fn code(&self) -> ErrorCode {
        match self {
            TaskLoanError::Busy => ErrorCode::CallState,
            TaskLoanError::EmptyTaskId | TaskLoanError::NoData => ErrorCode::InvalidData,
            TaskLoanError::Spec(e) => e.code(),
            TaskLoanError::Aborted => ErrorCode::Cancelled,
            TaskLoanError::Closed => ErrorCode::Closed,
        }
    }
}

impl Coded for AgentAttachError {
    fn code(&self) -> ErrorCode {
        match self {
            AgentAttachError::Link(e) => e.code(),
            AgentAttachError::Spawn(_) => ErrorCode::Os,
        }
    }
}

impl Coded for GetTaskError {
    fn code(&self) -> ErrorCode {
        match self {
            GetTaskError::Closed => ErrorCode::Closed,
            GetTaskError::CallState => ErrorCode::CallState,
        }
    }
}

impl Coded for SubmitError {
    fn code(&self) -> ErrorCode {
        match self {
            SubmitError::Closed => ErrorCode::Closed,
            SubmitError::Send(e) => e.code(),
            SubmitError::Spec(e) => e.code(),
            SubmitError::NotAnswerable | SubmitError::LoanOutstanding => ErrorCode::CallState,
            SubmitError::Aborted { .. } => ErrorCode::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_distinct_dense_and_round_trip() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as u32, i as u32 + 1, "{code:?}");
            assert_eq!(ErrorCode::from_number(*code as u32), Some(*code));
        }
        assert_eq!(ErrorCode::from_number(0), None);
        assert_eq!(
            ErrorCode::from_number(ErrorCode::ALL.len() as u32 + 1),
            None
        );
    }

    #[test]
    fn wrapped_errors_keep_the_inner_kind() {
        let lost = SendError::PeerLost(PeerLost::Dead { pid: 7 });
        assert_eq!(lost.code(), ErrorCode::PeerDead);
        assert!(lost.is_peer_lost() && !lost.is_closed());
        let closed = FrameError::from(RecvError::PeerLost(PeerLost::Closed));
        assert!(closed.is_closed() && closed.is_peer_lost());
        assert!(FrameError::Timeout.is_timeout());
        assert_eq!(
            LoanError::Send(SendError::Timeout).code(),
            ErrorCode::Timeout
        );
    }
}
