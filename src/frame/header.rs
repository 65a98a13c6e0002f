//! The fixed-size headers of the wire format (fragment, body, tensor entry), the routing
//! envelope of a message, and the receiver's limits.

#[allow(unused_imports)]
use super::*;

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

pub(super) const FLAG_FIRST: u32 = 1;
pub(super) const FLAG_LAST: u32 = 2;
/// The fragment header's `checksum` word holds the CRC32C of the fragment's payload.
pub(super) const FLAG_CHECKSUM: u32 = 4;
/// Byte offset of the `checksum` word in a fragment header.
pub(super) const CHECKSUM_OFFSET: usize = 28;
pub(super) const BODY_FLAG_HAS_DXO: u32 = 1;

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
#[non_exhaustive]
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

/// Setters, one per field (the struct is `#[non_exhaustive]`: build it from `default()`).
impl Limits {
    /// The default limits (also `Limits::default()`), usable in constants:
    /// `const MINE: Limits = Limits::DEFAULT.max_tensors(4096);`.
    pub const DEFAULT: Limits = Limits {
        max_message_len: 16 << 30,
        max_tensors: 100_000,
        max_name_len: 1024,
        max_meta_len: 16 << 20,
        max_task_field_len: 1024,
    };

    /// Sets [`Limits::max_message_len`].
    #[must_use]
    pub const fn max_message_len(mut self, max_message_len: u64) -> Self {
        self.max_message_len = max_message_len;
        self
    }

    /// Sets [`Limits::max_tensors`].
    #[must_use]
    pub const fn max_tensors(mut self, max_tensors: u32) -> Self {
        self.max_tensors = max_tensors;
        self
    }

    /// Sets [`Limits::max_name_len`].
    #[must_use]
    pub const fn max_name_len(mut self, max_name_len: u32) -> Self {
        self.max_name_len = max_name_len;
        self
    }

    /// Sets [`Limits::max_meta_len`].
    #[must_use]
    pub const fn max_meta_len(mut self, max_meta_len: u32) -> Self {
        self.max_meta_len = max_meta_len;
        self
    }

    /// Sets [`Limits::max_task_field_len`].
    #[must_use]
    pub const fn max_task_field_len(mut self, max_task_field_len: u32) -> Self {
        self.max_task_field_len = max_task_field_len;
        self
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// The fragment header (64 bytes) at the start of every record a message uses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(super) struct FragmentHeader {
    pub(super) magic: u32,
    pub(super) version: u16,
    pub(super) kind: u16,
    pub(super) flags: u32,
    pub(super) header_len: u32,
    pub(super) sequence: u64,
    pub(super) fragment_index: u32,
    /// CRC32C of the payload when `flags` has [`FLAG_CHECKSUM`], else 0.
    pub(super) checksum: u32,
    pub(super) message_len: u64,
    pub(super) fragment_offset: u64,
    pub(super) fragment_len: u64,
    pub(super) epoch: u64,
}

impl FragmentHeader {
    /// The header of the fragment carrying `body` bytes of a `message_len`-byte message.
    pub(super) fn new(
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
            checksum: 0,
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
pub(super) struct BodyHeader {
    pub(super) rc: u32,
    pub(super) data_kind: u32,
    pub(super) task_id_len: u32,
    pub(super) task_name_len: u32,
    pub(super) meta_len: u32,
    pub(super) tensor_count: u32,
    pub(super) names_len: u32,
    pub(super) flags: u32,
    pub(super) opaque_len: u64,
    pub(super) data_offset: u64,
    pub(super) data_len: u64,
    pub(super) reply_to: u64,
}

/// One entry (96 bytes) of the tensor table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(super) struct TensorEntry {
    pub(super) data_offset: u64,
    pub(super) data_len: u64,
    pub(super) name_offset: u32,
    pub(super) name_len: u16,
    pub(super) dtype: u8,
    pub(super) ndim: u8,
    pub(super) reserved0: u64,
    pub(super) shape: [u64; MAX_DIMS],
}

const _: () = assert!(std::mem::size_of::<FragmentHeader>() == FRAGMENT_HEADER_LEN);
const _: () = assert!(std::mem::offset_of!(FragmentHeader, checksum) == CHECKSUM_OFFSET);

/// The checksum a fragment header carries for `payload`: CRC32C (Castagnoli), computed with
/// the CPU's CRC instruction where it has one.
pub(super) fn payload_checksum(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}
const _: () = assert!(std::mem::size_of::<BodyHeader>() == BODY_HEADER_LEN);
const _: () = assert!(std::mem::size_of::<TensorEntry>() == TENSOR_ENTRY_LEN);

pub(super) const fn align_to(value: u64, align: u64) -> Option<u64> {
    match value.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}
