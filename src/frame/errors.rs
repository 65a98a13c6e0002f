//! The frame layer's errors: sending, loans and views, receiving.

#[allow(unused_imports)]
use super::*;

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// A part of the message is too large for the format's field widths (u32 lengths and
    /// counts).
    #[error("message cannot be encoded: {part} is too large for the format")]
    TooLargeForFormat {
        /// The part that is too large.
        part: BodyPart,
    },
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
    /// No tensor has this index.
    #[error("no tensor {index} (the message has {count})")]
    NoSuchIndex {
        /// The index asked for.
        index: usize,
        /// How many tensors there are.
        count: usize,
    },
    /// No tensor has this name.
    #[error("no tensor named {name:?}")]
    NoSuchName {
        /// The name asked for.
        name: String,
    },
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
    /// A [`DetachedLoan`] was used after something else was published on its producer (or
    /// with another ring's producer): its ring space is no longer its own.
    #[error("the loan's ring space is no longer reserved for it")]
    StaleLoan,
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
    BadFragment(FragmentProblem),
    /// A fragment arrived out of order or belongs to another message.
    #[error("fragment out of order: {0}")]
    OutOfOrder(OrderProblem),
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
    Malformed(BodyProblem),
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

/// The parts of a message body, as named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyPart {
    /// The 64-byte body header.
    #[error("the body header")]
    Header,
    /// The task id.
    #[error("the task id")]
    TaskId,
    /// The task name.
    #[error("the task name")]
    TaskName,
    /// The meta dictionary (JSON).
    #[error("the meta")]
    Meta,
    /// The tensor table.
    #[error("the tensor table")]
    TensorTable,
    /// The tensor count.
    #[error("the tensor count")]
    TensorCount,
    /// The tensor names area.
    #[error("the tensor names")]
    TensorNames,
    /// The opaque bytes.
    #[error("the opaque bytes")]
    Opaque,
    /// The whole body.
    #[error("the body")]
    Body,
    /// One tensor's name.
    #[error("tensor {0}'s name")]
    TensorName(usize),
    /// One tensor's data.
    #[error("tensor {0}'s data")]
    TensorData(usize),
}

/// What is wrong with a fragment header ([`FrameError::BadFragment`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FragmentProblem {
    /// The record is shorter than a fragment header.
    #[error("a record of {record_len} bytes is shorter than a fragment header")]
    Short {
        /// The record's length.
        record_len: usize,
    },
    /// The magic word is not [`FRAME_MAGIC`].
    #[error("magic {found:#010x}, expected {FRAME_MAGIC:#010x}")]
    Magic {
        /// The word found.
        found: u32,
    },
    /// The format version is not [`FORMAT_VERSION`].
    #[error("format version {FORMAT_VERSION} expected, the fragment has {found}")]
    Version {
        /// The version found.
        found: u16,
    },
    /// The header length or a reserved word is not what the format says.
    #[error("header length or reserved words differ from the format")]
    HeaderWords,
    /// Flags this version does not define.
    #[error("unknown flags {flags:#x}")]
    Flags {
        /// The flags word.
        flags: u32,
    },
    /// The fragment's range does not match its record or lies past its message.
    #[error(
        "fragment [{offset}, +{len}) of a {message_len}-byte message in a record of {payload} \
         payload bytes"
    )]
    Bounds {
        /// The fragment's offset in its message.
        offset: u64,
        /// The fragment's length.
        len: u64,
        /// The message's length.
        message_len: u64,
        /// The record's payload bytes.
        payload: u64,
    },
    /// A first fragment at a non-zero offset.
    #[error("first fragment at a non-zero offset")]
    FirstNotAtZero,
    /// A fragment marked first and last that is shorter than its message.
    #[error("single fragment shorter than its message")]
    SingleShort,
    /// The payload's CRC32C differs from the one its sender wrote: the bytes changed in
    /// shared memory after they were sent.
    #[error(
        "fragment {index} of message {sequence}: payload checksum {computed:#010x}, the sender \
         wrote {expected:#010x}"
    )]
    Checksum {
        /// The message's sequence number.
        sequence: u64,
        /// The fragment's index.
        index: u32,
        /// The checksum in the header.
        expected: u32,
        /// The checksum of the bytes received.
        computed: u32,
    },
    /// A message kind this version does not define.
    #[error("unknown message kind {code}")]
    UnknownKind {
        /// The kind's code.
        code: u32,
    },
}

/// How fragments arrived out of order ([`FrameError::OutOfOrder`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OrderProblem {
    /// A continuation fragment arrived without its message's first fragment.
    #[error("fragment {index} of message {sequence} arrived without its first fragment")]
    MissingFirst {
        /// The message's sequence number.
        sequence: u64,
        /// The fragment's index.
        index: u32,
    },
    /// A message ended early: the next message's first fragment arrived.
    #[error("message {sequence} ended after {received} of {len} bytes; message {next} began")]
    Interrupted {
        /// The unfinished message.
        sequence: u64,
        /// Bytes received of it.
        received: u64,
        /// Its announced length.
        len: u64,
        /// The message that began.
        next: u64,
    },
    /// A fragment does not continue the message being received.
    #[error(
        "fragment (message {next}, index {index}, offset {offset}) does not continue message \
         {sequence} at offset {expected_offset}"
    )]
    NotContinuation {
        /// The message being received.
        sequence: u64,
        /// Where its next fragment should start.
        expected_offset: u64,
        /// The fragment's message.
        next: u64,
        /// The fragment's index.
        index: u32,
        /// The fragment's offset.
        offset: u64,
    },
    /// A record seen at the head of the ring was gone at the next look: the ring changed
    /// under its only consumer.
    #[error("a record vanished from the head of the ring between two looks")]
    Vanished,
}

/// What is wrong with a message body ([`FrameError::Malformed`]).
#[doc(alias = "malformed")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyProblem {
    /// A part lies (partly) past the end of the body.
    #[error("{part} [{start}, +{len}) lies past the body end {body_len}")]
    OutOfBounds {
        /// The part.
        part: BodyPart,
        /// Its start.
        start: u64,
        /// Its length.
        len: u64,
        /// The body's length.
        body_len: usize,
    },
    /// A string is not UTF-8.
    #[error("{part} is not UTF-8")]
    NotUtf8 {
        /// The string.
        part: BodyPart,
    },
    /// A return code this version does not define.
    #[error("unknown return code {code}")]
    UnknownReturnCode {
        /// The code.
        code: u32,
    },
    /// Body flags this version does not define.
    #[error("unknown body flags {flags:#x}")]
    UnknownFlags {
        /// The flags word.
        flags: u32,
    },
    /// A data kind this version does not define.
    #[error("unknown data kind {code}")]
    UnknownDataKind {
        /// The code.
        code: u32,
    },
    /// A message without a DXO carries DXO fields.
    #[error("a message without a DXO carries DXO fields")]
    FieldsWithoutDxo,
    /// The data region does not start where the layout puts it.
    #[error("data region at {found}, expected {expected}")]
    DataOffset {
        /// The offset found.
        found: u64,
        /// The offset the layout gives.
        expected: u64,
    },
    /// The data region does not end at the body's end.
    #[error("data region [{offset}, +{len}) does not end at the body end {body_len}")]
    DataEnd {
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The body's length.
        body_len: usize,
    },
    /// Opaque bytes in a DXO whose kind is not APP_DEFINED.
    #[error("opaque bytes in a DXO that is not APP_DEFINED")]
    OpaqueNotAppDefined,
    /// The meta is not a JSON object.
    #[error("meta is not a JSON object (line {line}, column {column})")]
    MetaNotJsonObject {
        /// Where the JSON parser stopped.
        line: usize,
        /// The column there.
        column: usize,
    },
    /// A tensor entry is wrong.
    #[error("tensor {index}: {problem}")]
    Tensor {
        /// The tensor's index.
        index: usize,
        /// What is wrong.
        problem: TensorProblem,
    },
    /// Two tensors share a name.
    #[error("tensors {first} and {second} share a name")]
    DuplicateTensorName {
        /// The first tensor with the name.
        first: usize,
        /// The second.
        second: usize,
    },
}

/// What is wrong with a tensor entry ([`BodyProblem::Tensor`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TensorProblem {
    /// A dtype this version does not define.
    #[error("unknown dtype code {code}")]
    UnknownDType {
        /// The code.
        code: u32,
    },
    /// More than [`MAX_DIMS`] dimensions.
    #[error("{ndim} dimensions, at most {MAX_DIMS}")]
    TooManyDims {
        /// The number given.
        ndim: usize,
    },
    /// A reserved word or an unused shape word is not zero.
    #[error("non-zero reserved or unused shape words")]
    ReservedWords,
    /// An empty name.
    #[error("empty name")]
    EmptyName,
    /// The data length does not match the shape and dtype.
    #[error("{len} bytes, the shape and dtype need {expected:?}")]
    DataLength {
        /// The length given.
        len: u64,
        /// What the shape needs (`None`: the product overflows).
        expected: Option<u64>,
    },
    /// The data does not start on a [`TENSOR_ALIGN`] boundary.
    #[error("data at {offset} is not {TENSOR_ALIGN}-byte aligned")]
    Misaligned {
        /// The data offset.
        offset: u64,
    },
    /// The data overlaps what precedes it.
    #[error("data at {offset} overlaps what precedes it (ends {previous_end})")]
    Overlap {
        /// The data offset.
        offset: u64,
        /// Where the previous region ends.
        previous_end: u64,
    },
}
