//! Every structure that lives in shared memory, and the one audited cast from segment bytes to
//! them.
//!
//! The segment is laid out as (see `docs/layout.md` for the field-by-field description):
//!
//! ```text
//! offset 0                      control block (CONTROL_LEN bytes)
//!                                 segment header, side block "exchanger", side block "agent"
//! CONTROL_LEN                   ring header "tasks"   (RING_HEADER_LEN bytes)
//!   + RING_HEADER_LEN           ring data "tasks"     (task capacity, page-rounded)
//! ...                           ring header "results" and ring data "results"
//! ```
//!
//! Rules (DESIGN §3): `#[repr(C)]`, fixed-width fields only, every field an atomic so that no
//! plain reference ever covers a word the peer may write, explicit 128-byte alignment for
//! lines with different writers. Under `cfg(not(loom))` the `zerocopy` derives prove there is
//! no padding and that any bit pattern a corrupt peer leaves is still a valid value. Any change
//! to these structs bumps [`LAYOUT_VERSION`].

use crate::sync::{AtomicU32, AtomicU64};
#[cfg(not(loom))]
use zerocopy::{FromBytes, IntoBytes, KnownLayout};

/// First eight bytes of every shmex segment: `b"SHMEXSEG"` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMEXSEG");

/// Version of the layout described in this module. Written last by the creator; an opener
/// refuses a segment with any other value.
pub const LAYOUT_VERSION: u32 = 1;

/// Marker in every ring header: `b"SHMXRING"` as a little-endian `u64`.
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"SHMXRING");

/// Size of one cache line as the layout pads it (two 64-byte lines, to defeat the adjacent-line
/// prefetcher that pairs lines on current x86 parts).
pub const LINE: usize = 128;

/// Granularity of the regions in a segment.
pub const PAGE: usize = 4096;

/// Bytes the control block occupies at the start of the segment.
pub const CONTROL_LEN: usize = PAGE;

/// Bytes a ring header occupies in front of its data region.
pub const RING_HEADER_LEN: usize = PAGE;

/// Alignment of every record in a ring, and of every record's payload.
pub const RECORD_ALIGN: usize = 64;

/// Bytes of the header in front of each record's payload (one record slot).
pub const RECORD_HEADER_LEN: usize = RECORD_ALIGN;

/// Flag bit in [`RecordHeader::len`] marking a padding record that fills the ring to its end.
pub const RECORD_PADDING: u64 = 1 << 63;

/// Salt mixed into [`RecordHeader::check`], so that zeroed or stale bytes never pass as a
/// record header.
pub const RECORD_CHECK_SALT: u64 = 0x5348_4d58_5245_4331; // "SHMXREC1"

/// The check word a producer writes next to a record's length at ring position `position`.
pub const fn record_check(position: u64, len: u64) -> u64 {
    position.rotate_left(17) ^ len ^ RECORD_CHECK_SALT
}

/// Byte of the segment file the process that created the segment holds an OFD write lock on
/// for as long as it has the segment open: a segment whose owner lock is free has a dead (or
/// departed) owner and may be reclaimed.
pub const OWNER_LOCK_BYTE: u64 = 2;

/// Index of a role's side block, lock byte and ring direction.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that creates and owns the link (the FL client).
    Exchanger = 0,
    /// The side that attaches to the link (the trainer).
    Agent = 1,
}

impl Role {
    /// Both roles, in side-block order.
    pub const ALL: [Role; 2] = [Role::Exchanger, Role::Agent];

    /// The other role.
    pub const fn peer(self) -> Role {
        match self {
            Role::Exchanger => Role::Agent,
            Role::Agent => Role::Exchanger,
        }
    }

    /// Index of this role's side block in the control block's `sides`.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Byte of the segment file this role holds an OFD write lock on while it is attached
    /// (0 for the exchanger, 1 for the agent; `OWNER_LOCK_BYTE` is the segment owner's).
    pub const fn lock_byte(self) -> u64 {
        self as u64
    }

    /// Lower-case name, as used in messages and by the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Exchanger => "exchanger",
            Role::Agent => "agent",
        }
    }
}

/// Values of `SideBlock::state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SideState {
    /// No process of this role has attached yet.
    Absent,
    /// A process of this role is attached (its pid, epoch and heartbeat are valid).
    Attached,
    /// The process of this role detached cleanly.
    Closed,
}

impl SideState {
    /// The word stored in shared memory.
    pub const fn to_word(self) -> u32 {
        match self {
            SideState::Absent => 0,
            SideState::Attached => 1,
            SideState::Closed => 2,
        }
    }

    /// Decodes a word read from shared memory; `None` for a value no shmex process writes.
    pub const fn from_word(word: u32) -> Option<SideState> {
        match word {
            0 => Some(SideState::Absent),
            1 => Some(SideState::Attached),
            2 => Some(SideState::Closed),
            _ => None,
        }
    }
}

/// The first 256 bytes of a segment: what it is and where its parts are.
///
/// Written once by the creator; [`SegmentHeader::layout_version`] last, with Release.
#[cfg_attr(not(loom), derive(FromBytes, IntoBytes, KnownLayout))]
#[repr(C, align(128))]
pub struct SegmentHeader {
    /// [`MAGIC`].
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`]; 0 while the creator is still initialising.
    pub layout_version: AtomicU32,
    /// Bytes of the control block ([`CONTROL_LEN`]).
    pub control_len: AtomicU32,
    /// Total bytes of the segment; must equal the file's length.
    pub segment_len: AtomicU64,
    /// Offset of the task ring's header (exchanger → agent).
    pub task_ring_offset: AtomicU64,
    /// Data bytes of the task ring.
    pub task_ring_capacity: AtomicU64,
    /// Offset of the result ring's header (agent → exchanger).
    pub result_ring_offset: AtomicU64,
    /// Data bytes of the result ring.
    pub result_ring_capacity: AtomicU64,
    /// Wall-clock creation time, milliseconds since the Unix epoch (informational).
    pub created_unix_ms: AtomicU64,
    /// Pid of the creating process (informational; liveness uses locks).
    pub creator_pid: AtomicU32,
    /// Reserved, zero.
    pub reserved0: AtomicU32,
    /// Reserved, zero.
    pub reserved: [AtomicU64; 23],
}

/// One role's state in the control block: written only by the process holding that role.
#[cfg_attr(not(loom), derive(FromBytes, IntoBytes, KnownLayout))]
#[repr(C, align(128))]
pub struct SideBlock {
    /// Pid of the attached process (0 if none has attached).
    pub pid: AtomicU32,
    /// A [`SideState`] word.
    pub state: AtomicU32,
    /// Incarnation counter: incremented by each process that takes this role.
    pub epoch: AtomicU64,
    /// The interval at which this side's heartbeat advances, in nanoseconds.
    pub heartbeat_interval_ns: AtomicU64,
    /// Wall-clock attach time, milliseconds since the Unix epoch (informational).
    pub attached_unix_ms: AtomicU64,
    /// Reserved, zero.
    pub reserved: [AtomicU64; 12],
    /// Heartbeat counter, advanced by the side's background beater; on its own line because it
    /// is the only word written periodically.
    pub heartbeat: AtomicU64,
    /// Reserved, zero.
    pub reserved_heartbeat_line: [AtomicU64; 15],
}

/// The control block: the first [`CONTROL_LEN`] bytes of every segment.
#[cfg_attr(not(loom), derive(FromBytes, IntoBytes, KnownLayout))]
#[repr(C, align(128))]
pub struct ControlBlock {
    /// What the segment is and where its parts are.
    pub header: SegmentHeader,
    /// Side blocks, indexed by [`Role::index`].
    pub sides: [SideBlock; 2],
    /// Reserved, zero, up to [`CONTROL_LEN`].
    pub reserved: [AtomicU64; 416],
}

/// A 128-byte line holding one 64-bit word, so that words with different writers never share
/// a line.
#[cfg_attr(not(loom), derive(FromBytes, IntoBytes, KnownLayout))]
#[repr(C, align(128))]
pub struct PaddedU64 {
    /// The word.
    pub value: AtomicU64,
    /// Padding to the end of the line.
    pub pad: [AtomicU64; 15],
}

/// A 128-byte line holding one futex word.
#[cfg_attr(not(loom), derive(FromBytes, IntoBytes, KnownLayout))]
#[repr(C, align(128))]
pub struct PaddedU32 {
    /// The word.
    pub value: AtomicU32,
    /// Padding to the end of the line.
    pub pad: [AtomicU32; 31],
}

/// The header page in front of a ring's data region.
///
/// Line 0 is written once by the creator. `tail` is written only by the producer, `head`
/// only by the consumer; each sits on its own line. `data_event` is the futex word the
/// consumer sleeps on (the producer bumps it), `space_event` the one the producer sleeps on.
/// Event words use bit 0 as "a sleeper announced itself" and count in steps of 2 above it
/// (see the `signal` module).
#[cfg_attr(not(loom), derive(FromBytes, IntoBytes, KnownLayout))]
#[repr(C, align(128))]
pub struct RingHeader {
    /// [`RING_MAGIC`].
    pub magic: AtomicU64,
    /// Data bytes in the ring: a non-zero multiple of [`RECORD_ALIGN`].
    pub capacity: AtomicU64,
    /// Offset of the data region from the start of the segment.
    pub data_offset: AtomicU64,
    /// Reserved, zero.
    pub reserved: [AtomicU64; 13],
    /// Producer position: bytes ever committed (monotonic).
    pub tail: PaddedU64,
    /// Consumer position: bytes ever released (monotonic).
    pub head: PaddedU64,
    /// Futex word the consumer sleeps on while the ring is empty.
    pub data_event: PaddedU32,
    /// Futex word the producer sleeps on while the ring is full.
    pub space_event: PaddedU32,
    /// Reserved, zero, up to [`RING_HEADER_LEN`].
    pub reserved_tail: [AtomicU64; 432],
}

/// The header at the start of every record slot in a ring's data region.
///
/// Only the first 16 bytes are used; the payload starts [`RECORD_HEADER_LEN`] bytes after the
/// header so that it is [`RECORD_ALIGN`]-aligned.
#[cfg_attr(not(loom), derive(FromBytes, IntoBytes, KnownLayout))]
#[repr(C, align(8))]
pub struct RecordHeader {
    /// Payload length in bytes, or [`RECORD_PADDING`] | bytes to the end of the ring.
    pub len: AtomicU64,
    /// [`record_check`] of the record's position and `len`.
    pub check: AtomicU64,
}

#[cfg(not(loom))]
mod asserts {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    const _: () = assert!(size_of::<SegmentHeader>() == 2 * LINE);
    const _: () = assert!(size_of::<SideBlock>() == 2 * LINE);
    const _: () = assert!(offset_of!(SideBlock, heartbeat) == LINE);
    const _: () = assert!(size_of::<ControlBlock>() == CONTROL_LEN);
    const _: () = assert!(offset_of!(ControlBlock, sides) == 2 * LINE);
    const _: () = assert!(align_of::<ControlBlock>() == LINE);
    const _: () = assert!(offset_of!(SegmentHeader, layout_version) == 8);
    const _: () = assert!(size_of::<RingHeader>() == RING_HEADER_LEN);
    const _: () = assert!(offset_of!(RingHeader, tail) == LINE);
    const _: () = assert!(offset_of!(RingHeader, head) == 2 * LINE);
    const _: () = assert!(offset_of!(RingHeader, data_event) == 3 * LINE);
    const _: () = assert!(offset_of!(RingHeader, space_event) == 4 * LINE);
    const _: () = assert!(size_of::<RecordHeader>() == 16);
    const _: () = assert!(RECORD_HEADER_LEN >= size_of::<RecordHeader>());
    const _: () = assert!(PAGE.is_multiple_of(RECORD_ALIGN) && PAGE.is_multiple_of(LINE));
}

/// A struct that lives in shared memory and whose every field is an atomic, so that a shared
/// reference to it never covers a plain word the peer may write. Only the layout structs
/// implement it; [`shared_ref`] accepts nothing else (not even `u64`).
#[cfg(not(loom))]
pub(crate) trait SharedStruct: FromBytes + KnownLayout + sealed::Sealed {}

#[cfg(not(loom))]
mod sealed {
    pub trait Sealed {}
}

#[cfg(not(loom))]
macro_rules! shared_structs {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl SharedStruct for $t {}
    )*};
}

#[cfg(not(loom))]
shared_structs!(ControlBlock, RingHeader, PaddedU64);

/// Reinterprets `len` bytes at `base + offset` as a `&T`, after checking bounds and alignment.
///
/// This is the one cast from segment bytes to the atomics-bearing structs. `T: FromBytes`
/// guarantees every bit pattern is a valid `T`, so whatever a peer wrote is a value, never UB;
/// all fields are atomics, so concurrent writes by the peer are not data races.
///
/// Returns `None` if the struct would not lie entirely inside `[base, base + len)` or would be
/// misaligned.
///
/// # Safety
/// `base` must point to `len` bytes that are valid for reads and writes and stay mapped for
/// the lifetime `'a`, and no `&mut` reference to any of those bytes may exist during `'a`.
#[cfg(not(loom))]
pub(crate) unsafe fn shared_ref<'a, T: SharedStruct>(
    base: *const u8,
    len: usize,
    offset: usize,
) -> Option<&'a T> {
    let size = core::mem::size_of::<T>();
    let end = offset.checked_add(size)?;
    if end > len {
        return None;
    }
    // SAFETY: `offset + size <= len`, so the result stays inside the caller's mapping.
    let ptr = unsafe { base.add(offset) };
    if !(ptr as usize).is_multiple_of(core::mem::align_of::<T>()) {
        return None;
    }
    // SAFETY: in bounds and aligned (checked above); valid for reads and mapped for 'a (caller);
    // every bit pattern is a valid `T` (`FromBytes`); all fields are atomics, so shared access
    // from another process is not a data race; no `&mut` aliases exist (caller).
    Some(unsafe { &*(ptr as *const T) })
}

/// Rounds `value` up to a multiple of `align` (a power of two); `None` on overflow.
pub const fn align_up(value: u64, align: u64) -> Option<u64> {
    match value.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Where each part of a segment lies, computed from the two ring capacities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentPlan {
    /// Offset of the task ring header.
    pub task_ring_offset: u64,
    /// Data bytes of the task ring.
    pub task_ring_capacity: u64,
    /// Offset of the result ring header.
    pub result_ring_offset: u64,
    /// Data bytes of the result ring.
    pub result_ring_capacity: u64,
    /// Total bytes of the segment.
    pub segment_len: u64,
}

impl SegmentPlan {
    /// Lays out a segment whose rings hold `task_capacity` and `result_capacity` data bytes.
    /// Capacities must already be validated; `None` if the total overflows.
    pub const fn new(task_capacity: u64, result_capacity: u64) -> Option<SegmentPlan> {
        let task_ring_offset = CONTROL_LEN as u64;
        let task_data = match align_up(task_capacity, PAGE as u64) {
            Some(v) => v,
            None => return None,
        };
        let result_ring_offset =
            match (task_ring_offset + RING_HEADER_LEN as u64).checked_add(task_data) {
                Some(v) => v,
                None => return None,
            };
        let result_data = match align_up(result_capacity, PAGE as u64) {
            Some(v) => v,
            None => return None,
        };
        let segment_len =
            match (result_ring_offset + RING_HEADER_LEN as u64).checked_add(result_data) {
                Some(v) => v,
                None => return None,
            };
        Some(SegmentPlan {
            task_ring_offset,
            task_ring_capacity: task_capacity,
            result_ring_offset,
            result_ring_capacity: result_capacity,
            segment_len,
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn plan_places_rings_after_control_block_on_page_boundaries() {
        let plan = SegmentPlan::new(64 * 1024, 4096 + 64).unwrap();
        assert_eq!(plan.task_ring_offset, CONTROL_LEN as u64);
        assert_eq!(
            plan.result_ring_offset,
            (CONTROL_LEN + RING_HEADER_LEN + 64 * 1024) as u64
        );
        assert_eq!(
            plan.segment_len,
            plan.result_ring_offset + RING_HEADER_LEN as u64 + 2 * PAGE as u64
        );
    }

    #[test]
    fn plan_overflow_is_none() {
        assert!(SegmentPlan::new(u64::MAX - 10, 64).is_none());
        assert!(SegmentPlan::new(64, u64::MAX - 10).is_none());
    }

    #[test]
    fn shared_ref_rejects_out_of_bounds_and_misaligned() {
        // Heap memory obtained as a raw allocation (not an immutable local), as a segment is.
        let layout = std::alloc::Layout::from_size_align(512, 128).unwrap();
        // SAFETY: non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!raw.is_null());
        let base = raw as *const u8;
        for (offset, fits) in [
            (0, true),
            (384, true),
            (385, false),
            (8, false),
            (usize::MAX, false),
        ] {
            // SAFETY: the allocation is 512 bytes, alive until the dealloc below, and no `&mut`
            // to it exists.
            let got = unsafe { shared_ref::<PaddedU64>(base, 512, offset) };
            assert_eq!(got.is_some(), fits, "offset {offset}");
        }
        // SAFETY: allocated above with this layout; the references are gone.
        unsafe { std::alloc::dealloc(raw, layout) };
    }

    #[test]
    fn record_check_depends_on_position_and_length() {
        assert_ne!(record_check(0, 8), record_check(64, 8));
        assert_ne!(record_check(0, 8), record_check(0, 16));
        assert_ne!(record_check(0, 0), 0);
    }

    #[test]
    fn side_state_words_round_trip_and_reject_unknown() {
        for s in [SideState::Absent, SideState::Attached, SideState::Closed] {
            assert_eq!(SideState::from_word(s.to_word()), Some(s));
        }
        assert_eq!(SideState::from_word(7), None);
    }
}
