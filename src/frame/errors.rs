//! The frame layer's errors: sending, loans and views, receiving.

#[allow(unused_imports)]
use super::*;

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

/// Why a message could not be received. After any error other than `Timeout`, `PeerLost` and
/// `Corrupt`, the offending records have been consumed and the link is usable for the next
/// message; `Corrupt` means the ring itself is unusable.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// No message arrived before the deadline (nothing was consumed, or a partly received
    /// message was dropped).
    #[error("timed out waiting for a message")]
    Timeout,
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

pub(super) fn malformed(what: impl Into<String>) -> FrameError {
    FrameError::Malformed(what.into())
}
