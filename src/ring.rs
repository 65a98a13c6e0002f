//! The single-producer single-consumer byte ring: variable-length records in a shared region,
//! written in place through write grants and read in place through read grants.
//!
//! # Algorithm
//!
//! A bounded SPSC queue with monotonic positions and cached peer positions, after rtrb (and
//! the classic Lamport ring): `tail` counts bytes the producer ever committed, `head` bytes
//! the consumer ever released. Both are `u64` counters that only grow; the byte offset of a
//! position is `position % capacity`, but neither side divides on the hot path: each tracks
//! its own offset incrementally. Each side keeps a copy of the peer's position and reloads it
//! from shared memory only when the copy says the ring is full (producer) or empty
//! (consumer).
//!
//! The data region holds records aligned to `RECORD_ALIGN`. A record is a 64-byte slot whose
//! first 16 bytes are a `RecordHeader` (`len`, `check = record_check(position, len)`),
//! followed by the payload padded to a multiple of 64, so every payload is 64-byte aligned. A
//! record never wraps: when it does not fit before the end of the region, the producer first
//! publishes a padding record (`len = RECORD_PADDING | bytes_to_end`) and continues at
//! offset 0. The consumer skips padding records itself.
//!
//! # Publication
//!
//! The producer writes the payload, then the record header with Relaxed atomic stores, then
//! the new tail with a Release store. The consumer loads tail with Acquire and only then the
//! record header (atomic loads) and the payload. Symmetrically the consumer releases a record
//! by a Release store of head, which the producer loads with Acquire before reusing the bytes.
//! After each publication the publisher calls [`signal::notify`] on the event word the peer
//! sleeps on.
//!
//! # A hostile peer
//!
//! The producer trusts only its own tail and the consumer only its own head. Every value
//! loaded from shared memory is validated before it is used: a head must satisfy
//! `tail - capacity <= head <= tail`, a tail `head <= tail <= head + capacity` (both checked
//! as one wrapping subtraction), a record header must carry the right check word, a length no
//! larger than [`Producer::max_record`], lie entirely inside `[head, tail)` and not cross the
//! end of the data region, and padding must reach exactly to the end of the region. Any
//! violation is a [`RingCorruption`]; pointers are only ever formed from the side's own offset,
//! which stays inside the region by construction, so a corrupt peer can cause an error but
//! never an out-of-bounds access, a panic or an unbounded loop.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Instant;

use crate::layout::{
    record_check, RecordHeader, RingHeader, RECORD_ALIGN, RECORD_HEADER_LEN, RECORD_PADDING,
    RING_MAGIC,
};
use crate::signal::{self, PeerLost, Signals};
use crate::sync::Ordering;

/// [`RECORD_ALIGN`] as a `u64`.
const ALIGN: u64 = RECORD_ALIGN as u64;
/// [`RECORD_HEADER_LEN`] as a `u64`: bytes in front of every payload.
const SLOT: u64 = RECORD_HEADER_LEN as u64;

/// Smallest ring capacity: room for one record with a 64-byte payload.
pub const MIN_CAPACITY: u64 = 2 * ALIGN;
/// Largest ring capacity (1 TiB).
pub const MAX_CAPACITY: u64 = 1 << 40;

/// Why a ring capacity was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    /// The capacity is zero.
    #[error("ring capacity must not be zero")]
    Zero,
    /// The capacity is not a multiple of the record alignment.
    #[error("ring capacity {capacity} is not a multiple of {align}")]
    Unaligned {
        /// The refused capacity.
        capacity: u64,
        /// The required alignment (`RECORD_ALIGN`).
        align: u64,
    },
    /// The capacity cannot hold a record with a 64-byte payload.
    #[error("ring capacity {capacity} is below the minimum of {min}")]
    TooSmall {
        /// The refused capacity.
        capacity: u64,
        /// [`MIN_CAPACITY`].
        min: u64,
    },
    /// The capacity exceeds what this build supports.
    #[error("ring capacity {capacity} exceeds the maximum of {max}")]
    TooLarge {
        /// The refused capacity.
        capacity: u64,
        /// [`MAX_CAPACITY`], or less where the address space is smaller.
        max: u64,
    },
}

/// Checks that `capacity` can be used as the data size of a ring: non-zero, a multiple of
/// `RECORD_ALIGN`, at least [`MIN_CAPACITY`] and at most [`MAX_CAPACITY`].
pub fn validate_capacity(capacity: u64) -> Result<(), CapacityError> {
    if capacity == 0 {
        return Err(CapacityError::Zero);
    }
    if !capacity.is_multiple_of(ALIGN) {
        return Err(CapacityError::Unaligned {
            capacity,
            align: ALIGN,
        });
    }
    if capacity < MIN_CAPACITY {
        return Err(CapacityError::TooSmall {
            capacity,
            min: MIN_CAPACITY,
        });
    }
    let max = MAX_CAPACITY.min(isize::MAX as u64);
    if capacity > max {
        return Err(CapacityError::TooLarge { capacity, max });
    }
    Ok(())
}

/// Writes a fresh ring header: magic, capacity, data offset, `head = tail = 0`, event words 0.
///
/// For the creator only, before the segment is published (the segment's publication provides
/// the ordering, so plain Relaxed stores suffice here).
pub fn init_header(header: &RingHeader, capacity: u64, data_offset: u64) {
    header.magic.store(RING_MAGIC, Ordering::Relaxed);
    header.capacity.store(capacity, Ordering::Relaxed);
    header.data_offset.store(data_offset, Ordering::Relaxed);
    header.tail.value.store(0, Ordering::Relaxed);
    header.head.value.store(0, Ordering::Relaxed);
    header.data_event.value.store(0, Ordering::Relaxed);
    header.space_event.value.store(0, Ordering::Relaxed);
}

/// Something in the ring's shared memory that no correct peer would have written.
///
/// Positions are byte counters (see the module docs); `capacity` is the ring's data size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingCorruption {
    /// The ring header does not start with [`RING_MAGIC`].
    #[error("ring magic {found:#018x} found, {expected:#018x} expected")]
    BadMagic {
        /// The word in the header.
        found: u64,
        /// [`RING_MAGIC`].
        expected: u64,
    },
    /// The capacity in the ring header differs from the one the caller laid out.
    #[error("ring header says capacity {header}, {expected} expected")]
    CapacityMismatch {
        /// The capacity stored in the ring header.
        header: u64,
        /// The capacity the caller expected.
        expected: u64,
    },
    /// The capacity (agreed by header and caller) is not usable.
    #[error("invalid ring capacity: {0}")]
    InvalidCapacity(#[source] CapacityError),
    /// The consumer's head is not within `[tail - capacity, tail]`.
    #[error("ring head {head} out of range (tail {tail}, capacity {capacity})")]
    HeadOutOfRange {
        /// The head loaded from shared memory.
        head: u64,
        /// The producer's tail.
        tail: u64,
        /// The ring's capacity.
        capacity: u64,
    },
    /// The producer's tail is not within `[head, head + capacity]`.
    #[error("ring tail {tail} out of range (head {head}, capacity {capacity})")]
    TailOutOfRange {
        /// The consumer's head.
        head: u64,
        /// The tail loaded from shared memory.
        tail: u64,
        /// The ring's capacity.
        capacity: u64,
    },
    /// A position loaded from shared memory is not a multiple of `RECORD_ALIGN`.
    #[error("ring position {position} is not a multiple of {align}")]
    MisalignedPosition {
        /// The position loaded from shared memory.
        position: u64,
        /// `RECORD_ALIGN`.
        align: u64,
    },
    /// The record header's check word does not match its position and length.
    #[error("bad record header at position {position}: len {len:#x}, check {check:#x}")]
    BadRecordHeader {
        /// Position of the record.
        position: u64,
        /// Length word found.
        len: u64,
        /// Check word found.
        check: u64,
    },
    /// A record's payload length exceeds the largest record the ring can hold.
    #[error("record at position {position} has length {len}, maximum is {max}")]
    RecordTooLarge {
        /// Position of the record.
        position: u64,
        /// Payload length found.
        len: u64,
        /// The ring's largest payload (capacity - 64).
        max: u64,
    },
    /// A record (including its header slot and padding) extends past the published tail.
    #[error("record at position {position} of {size} bytes extends past the tail {tail}")]
    RecordPastTail {
        /// Position of the record.
        position: u64,
        /// Bytes the record occupies.
        size: u64,
        /// The published tail.
        tail: u64,
    },
    /// A record would cross the end of the data region (records never wrap).
    #[error("record at position {position} of {size} bytes crosses the end of the ring ({to_end} bytes left)")]
    RecordPastEnd {
        /// Position of the record.
        position: u64,
        /// Bytes the record occupies.
        size: u64,
        /// Bytes from the record's offset to the end of the data region.
        to_end: u64,
    },
    /// A padding record does not reach exactly to the end of the data region.
    #[error("padding at position {position} covers {len} bytes, {expected} expected")]
    BadPadding {
        /// Position of the padding record.
        position: u64,
        /// Bytes the padding claims to cover.
        len: u64,
        /// Bytes from its offset to the end of the data region.
        expected: u64,
    },
    /// A padding record at offset 0 (a correct producer never pads an empty lap).
    #[error("padding record at the start of the ring (position {position})")]
    PaddingAtStart {
        /// Position of the padding record.
        position: u64,
    },
}

/// Why a non-blocking reserve failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TryReserveError {
    /// The record can never fit in this ring.
    #[error("record of {len} bytes exceeds the ring's maximum of {max}")]
    TooLarge {
        /// Requested payload length.
        len: usize,
        /// [`Producer::max_record`].
        max: usize,
    },
    /// Not enough free space right now.
    #[error("ring is full")]
    Full,
    /// The consumer's state in shared memory is corrupt.
    #[error(transparent)]
    Corrupt(#[from] RingCorruption),
}

/// Why a blocking reserve failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    /// The record can never fit in this ring.
    #[error("record of {len} bytes exceeds the ring's maximum of {max}")]
    TooLarge {
        /// Requested payload length.
        len: usize,
        /// [`Producer::max_record`].
        max: usize,
    },
    /// The deadline passed before enough space was freed.
    #[error("timed out waiting for ring space")]
    Timeout,
    /// The consumer is gone, so space will never be freed.
    #[error("consumer lost: {0}")]
    PeerLost(#[from] PeerLost),
    /// The consumer's state in shared memory is corrupt.
    #[error(transparent)]
    Corrupt(#[from] RingCorruption),
}

impl From<TryReserveError> for ReserveError {
    /// A try is a wait with no time: a full ring is that wait's timeout.
    fn from(e: TryReserveError) -> ReserveError {
        match e {
            TryReserveError::TooLarge { len, max } => ReserveError::TooLarge { len, max },
            TryReserveError::Full => ReserveError::Timeout,
            TryReserveError::Corrupt(c) => ReserveError::Corrupt(c),
        }
    }
}

/// Why a blocking receive failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The deadline passed before a record arrived.
    #[error("timed out waiting for a record")]
    Timeout,
    /// The producer is gone and the ring is drained.
    #[error("producer lost: {0}")]
    PeerLost(#[from] PeerLost),
    /// The producer's data in shared memory is corrupt.
    #[error(transparent)]
    Corrupt(#[from] RingCorruption),
}

/// [`WriteGrant::commit_len`] was asked to publish more than was reserved; nothing was
/// published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot commit {len} bytes of a {reserved}-byte grant")]
pub struct CommitError {
    /// The length asked for.
    pub len: usize,
    /// The length reserved.
    pub reserved: usize,
}

/// Bytes a record with a `len`-byte payload occupies: header slot plus payload rounded up to
/// [`RECORD_ALIGN`]. `len` is at most [`MAX_CAPACITY`], so this cannot overflow.
#[inline]
const fn record_size(len: u64) -> u64 {
    SLOT + ((len + (ALIGN - 1)) & !(ALIGN - 1))
}

/// The shared part of a ring as one half sees it: where it lives and how to signal.
#[derive(Clone)]
struct RingRef {
    header: NonNull<RingHeader>,
    data: NonNull<u8>,
    capacity: u64,
    /// Under loom record headers cannot live in plain bytes: one loom `RecordHeader` per slot.
    #[cfg(loom)]
    slots: NonNull<RecordHeader>,
    signals: Signals,
    _keep: Arc<dyn Send + Sync>,
}

impl RingRef {
    #[inline]
    fn header(&self) -> &RingHeader {
        // SAFETY: the constructor's contract: `header` points to a RingHeader valid for as long
        // as `_keep` lives, and `self` holds `_keep`. All fields are atomics, so shared access
        // with the peer is not a data race.
        unsafe { self.header.as_ref() }
    }

    /// The record header at `offset`, which must be a multiple of [`RECORD_ALIGN`] below
    /// `capacity` (every caller passes its own, locally maintained offset).
    #[inline]
    fn record_header(&self, offset: u64) -> &RecordHeader {
        debug_assert!(offset < self.capacity && offset.is_multiple_of(ALIGN));
        #[cfg(not(loom))]
        // SAFETY: `offset` is a multiple of 64 below `capacity` (the caller's invariant), so the
        // 16-byte header lies inside the `capacity`-byte data region, which is valid while
        // `_keep` lives; `data` is 64-aligned, so the header is 8-aligned. `RecordHeader` is
        // `FromBytes` (any bytes are a valid value) and all atomics (no data race with the
        // peer). Record headers are never covered by a grant's slice.
        unsafe {
            &*(self.data.as_ptr().wrapping_add(offset as usize) as *const RecordHeader)
        }
        #[cfg(loom)]
        // SAFETY: `slots` holds `capacity / 64` headers, one per 64-byte slot; `offset / 64`
        // is below that count (caller's invariant) and they live as long as `_keep`.
        unsafe {
            &*self.slots.as_ptr().add((offset / ALIGN) as usize)
        }
    }

    /// Pointer to the payload of the record at `offset`; `offset + 64 <= capacity`.
    #[inline]
    fn payload_ptr(&self, offset: u64) -> *mut u8 {
        debug_assert!(offset + SLOT <= self.capacity);
        // SAFETY: `offset + 64 <= capacity` (callers only pass offsets of records that fit), so
        // the result is inside the data region or one past its end.
        unsafe { self.data.as_ptr().add((offset + SLOT) as usize) }
    }

    /// Validates the magic and capacity in the header against `capacity`.
    #[cfg(not(loom))]
    fn validate_header(&self) -> Result<(), RingCorruption> {
        let header = self.header();
        // Relaxed: the segment's own handshake (its version word) published the header.
        let magic = header.magic.load(Ordering::Relaxed);
        if magic != RING_MAGIC {
            return Err(RingCorruption::BadMagic {
                found: magic,
                expected: RING_MAGIC,
            });
        }
        let stored = header.capacity.load(Ordering::Relaxed);
        if stored != self.capacity {
            return Err(RingCorruption::CapacityMismatch {
                header: stored,
                expected: self.capacity,
            });
        }
        validate_capacity(self.capacity).map_err(RingCorruption::InvalidCapacity)
    }

    /// Loads `(head, tail)` for a half that is attaching, and validates them.
    #[cfg(not(loom))]
    fn load_positions(&self) -> Result<(u64, u64), RingCorruption> {
        let header = self.header();
        // SYNC: pairs with the Release stores of head (Consumer) and tail (Producer) of a
        // previous incarnation of either half.
        let head = header.head.value.load(Ordering::Acquire);
        let tail = header.tail.value.load(Ordering::Acquire);
        if tail.wrapping_sub(head) > self.capacity {
            return Err(RingCorruption::TailOutOfRange {
                head,
                tail,
                capacity: self.capacity,
            });
        }
        for position in [head, tail] {
            if position % ALIGN != 0 {
                return Err(RingCorruption::MisalignedPosition {
                    position,
                    align: ALIGN,
                });
            }
        }
        Ok((head, tail))
    }
}

impl fmt::Debug for RingRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingRef")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// The producer's private view: its own position and its copy of the consumer's.
#[derive(Debug)]
struct ProducerCursor {
    /// Bytes committed so far (trusted: only this half writes it).
    tail: u64,
    /// `tail % capacity`, maintained incrementally: always a multiple of 64 below capacity.
    tail_offset: u64,
    /// Last validated head; `tail - cached_head <= capacity`.
    cached_head: u64,
    /// Position and length of the last padding record published: until the consumer passes
    /// it, it takes ring space but is not data in flight.
    last_padding: (u64, u64),
}

impl ProducerCursor {
    /// Whether `need` bytes are free after `tail` when at most `limit` (<= capacity) bytes
    /// may be in flight; reloads head only if the cached copy says no.
    #[inline]
    fn has_space(&mut self, ring: &RingRef, need: u64, limit: u64) -> Result<bool, RingCorruption> {
        if self.fits(ring.capacity, need, limit, self.cached_head) {
            return Ok(true);
        }
        // SYNC: pairs with the Release store of head in `ConsumerCursor::advance`.
        let head = ring.header().head.value.load(Ordering::Acquire);
        let used = self.tail.wrapping_sub(head);
        if used > ring.capacity {
            return Err(RingCorruption::HeadOutOfRange {
                head,
                tail: self.tail,
                capacity: ring.capacity,
            });
        }
        if !head.is_multiple_of(ALIGN) {
            return Err(RingCorruption::MisalignedPosition {
                position: head,
                align: ALIGN,
            });
        }
        self.cached_head = head;
        Ok(self.fits(ring.capacity, need, limit, head))
    }

    /// Whether `need` more bytes fit after `tail` with the consumer at `head` (a validated
    /// position): within the ring, and with at most `limit` bytes of data (padding the
    /// consumer has not passed yet excluded) in flight.
    #[inline]
    fn fits(&self, capacity: u64, need: u64, limit: u64, head: u64) -> bool {
        let used = self.tail.wrapping_sub(head);
        let (padding_at, padding_len) = self.last_padding;
        let unpassed_padding = if padding_at.wrapping_sub(head) < capacity {
            padding_len.min(used)
        } else {
            0
        };
        capacity - used >= need && limit.saturating_sub(used - unpassed_padding) >= need
    }

    /// Makes room for a record of `size` bytes at `tail_offset`, publishing a padding record
    /// first if it would not end within the first `lap` bytes of the region (`lap` is the
    /// capacity, or less to keep a bulk transfer in a cache-sized part of the ring).
    /// `Ok(false)`: not enough space with at most `limit` bytes in flight
    /// (`size <= limit <= capacity`, `size <= lap <= capacity`).
    #[inline]
    fn prepare(
        &mut self,
        ring: &RingRef,
        size: u64,
        limit: u64,
        lap: u64,
    ) -> Result<bool, RingCorruption> {
        if self.tail_offset != 0 && self.tail_offset + size > lap {
            // Padding is published on its own so that the consumer can skip it and free the
            // space at the end even while the record itself still waits for room. It is
            // checked against the ring's real free space, not the in-flight limit: the
            // consumer skips it at once, so it never holds data in flight.
            let to_end = ring.capacity - self.tail_offset;
            if !self.has_space(ring, to_end, ring.capacity)? {
                return Ok(false);
            }
            self.last_padding = (self.tail, to_end);
            self.publish(ring, RECORD_PADDING | to_end, to_end);
        }
        self.has_space(ring, size, limit)
    }

    /// Writes the header of the record at `tail` (`len` word, occupying `size` bytes) and
    /// publishes it.
    #[inline]
    fn publish(&mut self, ring: &RingRef, len_word: u64, size: u64) {
        let record = ring.record_header(self.tail_offset);
        record.len.store(len_word, Ordering::Relaxed);
        record
            .check
            .store(record_check(self.tail, len_word), Ordering::Relaxed);
        self.tail = self.tail.wrapping_add(size);
        self.tail_offset += size;
        if self.tail_offset == ring.capacity {
            self.tail_offset = 0;
        }
        let header = ring.header();
        // SYNC: pairs with the Acquire load of tail in `ConsumerCursor::next_record`; makes the
        // payload and the record header above visible to the consumer.
        header.tail.value.store(self.tail, Ordering::Release);
        signal::notify(&header.data_event.value, &*ring.signals.waiter);
    }
}

/// The writing half of a ring.
pub struct Producer {
    ring: RingRef,
    cursor: ProducerCursor,
}

// SAFETY: a Producer only holds pointers into memory kept alive by its `_keep` Arc (which is
// `Send + Sync`); it accesses shared words only through atomics and writes payload bytes only
// in regions the protocol hands to the producer, so which thread it runs on does not matter.
// Its `Signals` are `Send` (the trait objects are `Send + Sync`).
unsafe impl Send for Producer {}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.ring.capacity)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Attaches a producer to a ring in memory, resuming at the tail found there (so a
    /// restarted producer continues where its predecessor's last commit ended).
    ///
    /// Validates the ring magic, that the header's capacity equals `capacity`, and the head
    /// and tail found in shared memory.
    ///
    /// # Safety
    /// `header` must point to a [`RingHeader`] and `data` to `capacity` bytes aligned to
    /// [`RECORD_ALIGN`], both valid for reads and writes for as long as `keep` lives, with no
    /// Rust reference to the data bytes held elsewhere; at most one `Producer` may exist per
    /// ring at a time.
    #[cfg(not(loom))]
    pub(crate) unsafe fn from_raw(
        header: NonNull<RingHeader>,
        data: NonNull<u8>,
        capacity: u64,
        signals: Signals,
        keep: Arc<dyn Send + Sync>,
    ) -> Result<Producer, RingCorruption> {
        Producer::attach(RingRef {
            header,
            data,
            capacity,
            signals,
            _keep: keep,
        })
    }

    #[cfg(not(loom))]
    fn attach(ring: RingRef) -> Result<Producer, RingCorruption> {
        ring.validate_header()?;
        let (head, tail) = ring.load_positions()?;
        let cursor = ProducerCursor {
            tail,
            tail_offset: tail % ring.capacity,
            cached_head: head,
            last_padding: (0, 0),
        };
        Ok(Producer { ring, cursor })
    }

    /// Data bytes in the ring.
    pub fn capacity(&self) -> u64 {
        self.ring.capacity
    }

    /// The largest payload one record can carry: capacity - 64.
    pub fn max_record(&self) -> usize {
        (self.ring.capacity - SLOT) as usize
    }

    #[inline]
    fn check_len(&self, len: usize) -> Result<u64, (usize, usize)> {
        let max = self.max_record();
        if len > max {
            Err((len, max))
        } else {
            Ok(record_size(len as u64))
        }
    }

    #[inline]
    fn grant(&mut self, len: usize) -> WriteGrant<'_> {
        let ptr = self.ring.payload_ptr(self.cursor.tail_offset);
        WriteGrant {
            producer: self,
            ptr,
            len,
        }
    }

    /// Reserves room for a `len`-byte payload without waiting.
    ///
    /// If the record does not fit before the end of the region, a padding record is published
    /// first (also when the call then returns [`TryReserveError::Full`]).
    pub fn try_reserve(&mut self, len: usize) -> Result<WriteGrant<'_>, TryReserveError> {
        let size = self
            .check_len(len)
            .map_err(|(len, max)| TryReserveError::TooLarge { len, max })?;
        let capacity = self.ring.capacity;
        if self.cursor.prepare(&self.ring, size, capacity, capacity)? {
            Ok(self.grant(len))
        } else {
            Err(TryReserveError::Full)
        }
    }

    /// Reserves room for a `len`-byte payload, waiting for the consumer to free space until
    /// `deadline` (`None`: no deadline).
    ///
    /// Returns [`ReserveError::PeerLost`] if the consumer is gone while the ring is too full.
    pub fn reserve(
        &mut self,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<WriteGrant<'_>, ReserveError> {
        self.reserve_within(len, u64::MAX, deadline)
    }

    /// [`Producer::reserve`], but waits until at most `window` bytes (record headers
    /// included, this record too) are in flight, even if the ring has more room, and places
    /// records only in the first `2 × window` bytes of the region (wrapping early with a
    /// padding record).
    ///
    /// Both keep a bulk transfer in cache: the data in flight is small, and the lines it is
    /// written to were used a moment ago instead of cycling through a ring larger than the
    /// cache (which would fetch every line from memory before overwriting it). Measured on
    /// the 2-vCPU reference machine, a 1 GiB stream through a 64 MiB ring ran at 5.4 GB/s
    /// without the early wrap and at the speed of a 4 MiB ring with it. A `window` smaller
    /// than the record is raised to the record's size; one larger than the ring is the ring.
    pub fn reserve_within(
        &mut self,
        len: usize,
        window: u64,
        deadline: Option<Instant>,
    ) -> Result<WriteGrant<'_>, ReserveError> {
        let size = self
            .check_len(len)
            .map_err(|(len, max)| ReserveError::TooLarge { len, max })?;
        let limit = window.clamp(size, self.ring.capacity);
        let lap = limit.saturating_mul(2).min(self.ring.capacity);
        let ring = &self.ring;
        let cursor = &mut self.cursor;
        let ready = cursor.prepare(ring, size, limit, lap)?
            || signal::wait_until(
                &ring.header().space_event.value,
                &ring.signals,
                deadline,
                || Ok::<_, ReserveError>(cursor.prepare(ring, size, limit, lap)?.then_some(())),
            )?
            .is_some();
        if ready {
            Ok(self.grant(len))
        } else {
            Err(ReserveError::Timeout)
        }
    }

    /// Copies `bytes` into the ring as one record, without waiting.
    pub fn try_push(&mut self, bytes: &[u8]) -> Result<(), TryReserveError> {
        let mut grant = self.try_reserve(bytes.len())?;
        grant.as_mut_slice().copy_from_slice(bytes);
        grant.commit();
        Ok(())
    }

    /// Copies `bytes` into the ring as one record, waiting for space until `deadline`.
    pub fn push(&mut self, bytes: &[u8], deadline: Option<Instant>) -> Result<(), ReserveError> {
        let mut grant = self.reserve(bytes.len(), deadline)?;
        grant.as_mut_slice().copy_from_slice(bytes);
        grant.commit();
        Ok(())
    }

    /// [`Producer::reserve`], but returns a [`Reservation`] that does not borrow the producer:
    /// the record stays reserved until [`Producer::commit_reservation`], provided nothing else
    /// is published on this producer in between (which makes the reservation stale).
    pub fn reserve_detached(
        &mut self,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<Reservation, ReserveError> {
        let grant = self.reserve(len, deadline)?;
        // The grant only borrows the producer; letting it go publishes nothing. The space it
        // stood for is still free beyond the tail, which `check_reservation` re-verifies.
        drop(grant);
        Ok(Reservation {
            position: self.cursor.tail,
            len,
        })
    }

    /// Whether `reservation` is still this producer's next record and its space is free; the
    /// payload's start if so.
    fn check_reservation(
        &mut self,
        reservation: &Reservation,
    ) -> Result<*mut u8, StaleReservation> {
        let stale = StaleReservation {
            position: reservation.position,
            tail: self.cursor.tail,
        };
        let Ok(size) = self.check_len(reservation.len) else {
            return Err(stale);
        };
        let capacity = self.ring.capacity;
        // Re-verified rather than trusted from the reservation: a reservation made by another
        // producer (of another ring) must not lead to an access outside this one's free space.
        let placed = reservation.position == self.cursor.tail
            && self.cursor.tail_offset + size <= capacity
            && self
                .cursor
                .fits(capacity, size, capacity, self.cursor.cached_head);
        if placed {
            Ok(self.ring.payload_ptr(self.cursor.tail_offset))
        } else {
            Err(stale)
        }
    }

    /// The payload bytes of `reservation` (they hold whatever an earlier lap left there).
    pub fn reservation_mut(
        &mut self,
        reservation: &Reservation,
    ) -> Result<&mut [u8], StaleReservation> {
        let ptr = self.check_reservation(reservation)?;
        // SAFETY: `check_reservation` verified that the record starts at the published tail,
        // ends before the end of the data region, and fits in the space the consumer has
        // released (per the validated cached head, which only grows): these bytes belong to the
        // producer alone until it publishes them, and the `&mut self` borrow makes this slice
        // the only reference to them. They are initialised (zeroed or earlier laps' bytes).
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr, reservation.len) })
    }

    /// Publishes the whole payload of `reservation`. Fails (publishing nothing) if it is stale.
    pub fn commit_reservation(&mut self, reservation: Reservation) -> Result<(), StaleReservation> {
        self.check_reservation(&reservation)?;
        let len = reservation.len as u64;
        self.cursor.publish(&self.ring, len, record_size(len));
        Ok(())
    }

    /// Copies the payload of the record this producer published at `position` (a
    /// [`Reservation::position`] that was committed), `out.len()` bytes of it, into `out`.
    /// Returns `false`, copying nothing, if the producer has written over that record since
    /// (its later records reached the record's bytes again), if it was never published, or
    /// if `out` is longer than the record. The consumer never writes the data region, so the
    /// bytes are the producer's own until it reuses them, whether the consumer released the
    /// record or not.
    pub fn copy_committed(&self, position: u64, out: &mut [u8]) -> bool {
        let capacity = self.ring.capacity;
        let Ok(size) = self.check_len(out.len()) else {
            return false;
        };
        let written_since = self.cursor.tail.wrapping_sub(position);
        let offset = position % capacity;
        let intact = position.is_multiple_of(ALIGN)
            && written_since >= size
            && written_since <= capacity
            && offset + size <= capacity;
        if !intact {
            return false;
        }
        let src = self.ring.payload_ptr(offset);
        // SAFETY: the record lies inside the data region (`offset + size <= capacity`) and
        // was published by this producer, which has written less than one lap since
        // (`written_since <= capacity`), so its bytes are still the ones committed; the
        // consumer only reads the data region. `out` is a separate, caller-owned buffer of
        // `out.len()` bytes, not overlapping shared memory.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        true
    }

    /// Free bytes right now (informational: record headers and padding also take space).
    pub fn free_bytes(&mut self) -> Result<u64, RingCorruption> {
        self.cursor
            .has_space(&self.ring, u64::MAX, self.ring.capacity)?;
        Ok(self.ring.capacity - self.cursor.tail.wrapping_sub(self.cursor.cached_head))
    }
}

/// Room for one record reserved by [`Producer::reserve_detached`]: like a [`WriteGrant`], but
/// not a borrow of the producer, so that it can be kept across calls (a binding's loan) while
/// the producer lives elsewhere. Its bytes are reached through
/// [`Producer::reservation_mut`] and published by [`Producer::commit_reservation`]; both check
/// that the reservation is still the producer's next record. Dropping it abandons the record:
/// nothing becomes visible to the consumer.
#[must_use = "dropping a Reservation abandons the record"]
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The producer's tail when it was made: where the record starts.
    position: u64,
    len: usize,
}

impl Reservation {
    /// Reserved payload bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the reservation is for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ring position (bytes ever committed before it) where the record starts; after
    /// [`Producer::commit_reservation`], [`Producer::copy_committed`] reads it back from there.
    pub fn position(&self) -> u64 {
        self.position
    }
}

/// A [`Reservation`] was used after the producer published something else (its position is
/// no longer the producer's tail), or with another ring's producer; nothing was accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the reservation at ring position {position} is no longer the producer's next record (tail {tail})")]
pub struct StaleReservation {
    /// The reservation's position.
    pub position: u64,
    /// The producer's tail.
    pub tail: u64,
}

/// Room for one record, from reserve until [`commit`](WriteGrant::commit).
///
/// Dropping a grant without committing abandons it: nothing becomes visible to the consumer
/// (a padding record published by the reserve stays, which the consumer skips).
#[must_use = "dropping a WriteGrant abandons the record"]
pub struct WriteGrant<'a> {
    producer: &'a mut Producer,
    ptr: *mut u8,
    len: usize,
}

impl fmt::Debug for WriteGrant<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteGrant")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl WriteGrant<'_> {
    /// Reserved payload bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the reservation is for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the payload, aligned to `RECORD_ALIGN`; valid for `len()` bytes of writes.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    /// The payload bytes (they hold whatever an earlier lap left there).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `[ptr, ptr + len)` lies inside the data region (reserve checked the record
        // fits before the end) and beyond the published tail, in space the consumer has
        // released: the protocol gives these bytes to the producer alone until commit, and the
        // `&mut self` borrow makes this the only reference. The bytes are initialised (zeroed
        // or previously written shared memory).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Publishes the whole reserved payload.
    pub fn commit(self) {
        let len = self.len;
        self.publish(len);
    }

    /// Publishes only the first `len` bytes of the reservation.
    ///
    /// Fails with [`CommitError`] (publishing nothing: the grant is abandoned) if `len`
    /// exceeds the reserved length.
    pub fn commit_len(self, len: usize) -> Result<(), CommitError> {
        if len > self.len {
            return Err(CommitError {
                len,
                reserved: self.len,
            });
        }
        self.publish(len);
        Ok(())
    }

    #[inline]
    fn publish(self, len: usize) {
        let len = len as u64;
        let producer = self.producer;
        producer
            .cursor
            .publish(&producer.ring, len, record_size(len));
    }
}

/// The consumer's private view: its own position and its copy of the producer's.
#[derive(Debug)]
struct ConsumerCursor {
    /// Bytes released so far (trusted: only this half writes it).
    head: u64,
    /// `head % capacity`, maintained incrementally: always a multiple of 64 below capacity.
    head_offset: u64,
    /// Last validated tail: `head <= cached_tail <= head + capacity`, a multiple of 64.
    cached_tail: u64,
    /// Records read past but kept in the ring ([`ReadGrant::hold`]); created by the first hold.
    holds: Option<Arc<Holds>>,
}

/// A validated record at the consumer's head.
#[derive(Clone, Copy, Debug)]
struct Record {
    len: u64,
    size: u64,
}

impl ConsumerCursor {
    /// Finds the next record at head, skipping (and releasing) one padding record.
    #[inline]
    fn next_record(&mut self, ring: &RingRef) -> Result<Option<Record>, RingCorruption> {
        let capacity = ring.capacity;
        // At most two rounds: padding is only valid at a non-zero offset and moves head to
        // offset 0.
        loop {
            if self.cached_tail == self.head {
                // SYNC: pairs with the Release store of tail in `ProducerCursor::publish`.
                let tail = ring.header().tail.value.load(Ordering::Acquire);
                if tail.wrapping_sub(self.head) > capacity {
                    return Err(RingCorruption::TailOutOfRange {
                        head: self.head,
                        tail,
                        capacity,
                    });
                }
                if !tail.is_multiple_of(ALIGN) {
                    return Err(RingCorruption::MisalignedPosition {
                        position: tail,
                        align: ALIGN,
                    });
                }
                self.cached_tail = tail;
                if tail == self.head {
                    return Ok(None);
                }
            }
            // Both are multiples of 64 and differ, so at least one slot is published.
            let available = self.cached_tail.wrapping_sub(self.head);
            let position = self.head;
            let header = ring.record_header(self.head_offset);
            let len = header.len.load(Ordering::Relaxed);
            let check = header.check.load(Ordering::Relaxed);
            if check != record_check(position, len) {
                return Err(RingCorruption::BadRecordHeader {
                    position,
                    len,
                    check,
                });
            }
            let to_end = capacity - self.head_offset;
            if len & RECORD_PADDING != 0 {
                let pad = len & !RECORD_PADDING;
                if self.head_offset == 0 {
                    return Err(RingCorruption::PaddingAtStart { position });
                }
                if pad != to_end {
                    return Err(RingCorruption::BadPadding {
                        position,
                        len: pad,
                        expected: to_end,
                    });
                }
                if pad > available {
                    return Err(RingCorruption::RecordPastTail {
                        position,
                        size: pad,
                        tail: self.cached_tail,
                    });
                }
                self.advance(ring, pad);
                continue;
            }
            let max = capacity - SLOT;
            if len > max {
                return Err(RingCorruption::RecordTooLarge { position, len, max });
            }
            let size = record_size(len);
            if size > to_end {
                return Err(RingCorruption::RecordPastEnd {
                    position,
                    size,
                    to_end,
                });
            }
            if size > available {
                return Err(RingCorruption::RecordPastTail {
                    position,
                    size,
                    tail: self.cached_tail,
                });
            }
            return Ok(Some(Record { len, size }));
        }
    }

    /// Whether a valid padding record sits at `head`, which is at the non-zero offset
    /// `head_offset`, `to_end` bytes before the end of the region, and inside the cached tail.
    #[inline]
    fn padding_at_head(&self, ring: &RingRef, to_end: u64) -> bool {
        let header = ring.record_header(self.head_offset);
        let len = header.len.load(Ordering::Relaxed);
        len == RECORD_PADDING | to_end
            && header.check.load(Ordering::Relaxed) == record_check(self.head, len)
    }

    /// Releases `size` bytes at head (a validated record or padding) to the producer.
    ///
    /// If the released record is followed by an already published padding record, that is
    /// released too, so a producer waiting for room at the start of the region is not kept
    /// waiting until the consumer peeks again. Anything else about the next record is left for
    /// `next_record` to validate and report.
    #[inline]
    fn advance(&mut self, ring: &RingRef, size: u64) {
        self.head = self.head.wrapping_add(size);
        self.head_offset += size;
        if self.head_offset == ring.capacity {
            self.head_offset = 0;
        } else {
            let to_end = ring.capacity - self.head_offset;
            // Padding can only sit here if everything up to the end of the region is published.
            if self.cached_tail.wrapping_sub(self.head) >= to_end
                && self.padding_at_head(ring, to_end)
            {
                self.head = self.head.wrapping_add(to_end);
                self.head_offset = 0;
            }
        }
        match &self.holds {
            None => publish_head(ring, self.head),
            Some(holds) => {
                let mut state = holds.lock();
                state.read = Some(self.head);
                // Under the lock, so that a hold dropped on another thread cannot publish an
                // older head after this one.
                publish_head(ring, state.oldest(self.head));
            }
        }
    }
}

/// Publishes `head` (everything before it is free) to the producer and wakes it if it sleeps.
#[inline]
fn publish_head(ring: &RingRef, head: u64) {
    let header = ring.header();
    // SYNC: pairs with the Acquire load of head in `ProducerCursor::has_space`; the consumer's
    // reads of the released bytes happen before the producer reuses them.
    header.head.value.store(head, Ordering::Release);
    signal::notify(&header.space_event.value, &*ring.signals.waiter);
}

/// The consumer's record of held records, shared with every [`RingHold`].
///
/// The head published to the producer is the start of the oldest live hold, or the
/// consumer's read position when nothing is held; whoever changes either (the consumer
/// advancing, a hold dropped on any thread) republishes it under the lock.
#[derive(Debug, Default)]
struct Holds {
    state: crate::sync::Mutex<HoldState>,
}

#[derive(Debug, Default)]
struct HoldState {
    /// The consumer's read position, or `None` once the consumer is gone (a later consumer
    /// of the ring starts from the published head and owns it).
    read: Option<u64>,
    /// Start positions of the live holds.
    live: Vec<u64>,
}

impl Holds {
    fn lock(&self) -> crate::sync::MutexGuard<'_, HoldState> {
        // Nothing panics while the lock is held; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl HoldState {
    /// The head to publish when the consumer has read up to `read`: the oldest live hold (the
    /// one farthest behind `read`), else `read`.
    fn oldest(&self, read: u64) -> u64 {
        self.live
            .iter()
            .copied()
            .max_by_key(|&start| read.wrapping_sub(start))
            .unwrap_or(read)
    }
}

/// The reading half of a ring.
pub struct Consumer {
    ring: RingRef,
    cursor: ConsumerCursor,
}

// SAFETY: as for `Producer`: pointers into memory kept alive by the `Send + Sync` `_keep`,
// shared words accessed only through atomics, payload bytes read only in regions the protocol
// hands to the consumer.
unsafe impl Send for Consumer {}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.ring.capacity)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(holds) = &self.cursor.holds {
            // Holds that outlive the consumer no longer publish: the ring's next consumer
            // starts from the published head and owns it.
            holds.lock().read = None;
        }
    }
}

impl Consumer {
    /// Attaches a consumer to a ring in memory, resuming at the head found there (so a
    /// restarted consumer sees again a record its predecessor peeked but never released).
    ///
    /// Validates the ring magic, that the header's capacity equals `capacity`, and the head
    /// and tail found in shared memory.
    ///
    /// # Safety
    /// `header` must point to a [`RingHeader`] and `data` to `capacity` bytes aligned to
    /// [`RECORD_ALIGN`], both valid for reads and writes for as long as `keep` lives, with no
    /// Rust reference to the data bytes held elsewhere; at most one `Consumer` may exist per
    /// ring at a time, and none while a record held by an earlier consumer of the ring
    /// ([`RingHold`], which keeps that consumer's `keep`) is still live.
    #[cfg(not(loom))]
    pub(crate) unsafe fn from_raw(
        header: NonNull<RingHeader>,
        data: NonNull<u8>,
        capacity: u64,
        signals: Signals,
        keep: Arc<dyn Send + Sync>,
    ) -> Result<Consumer, RingCorruption> {
        Consumer::attach(RingRef {
            header,
            data,
            capacity,
            signals,
            _keep: keep,
        })
    }

    #[cfg(not(loom))]
    fn attach(ring: RingRef) -> Result<Consumer, RingCorruption> {
        ring.validate_header()?;
        let (head, tail) = ring.load_positions()?;
        let cursor = ConsumerCursor {
            head,
            head_offset: head % ring.capacity,
            cached_tail: tail,
            holds: None,
        };
        Ok(Consumer { ring, cursor })
    }

    /// Data bytes in the ring.
    pub fn capacity(&self) -> u64 {
        self.ring.capacity
    }

    #[inline]
    fn grant(&mut self, record: Record) -> ReadGrant<'_> {
        let ptr = self.ring.payload_ptr(self.cursor.head_offset);
        ReadGrant {
            consumer: self,
            ptr,
            len: record.len as usize,
            size: record.size,
        }
    }

    /// The next record, if one is published; padding records are skipped (and released).
    pub fn try_peek(&mut self) -> Result<Option<ReadGrant<'_>>, RingCorruption> {
        match self.cursor.next_record(&self.ring)? {
            Some(record) => Ok(Some(self.grant(record))),
            None => Ok(None),
        }
    }

    /// The next record, waiting for one until `deadline` (`None`: no deadline).
    ///
    /// Records already published are returned even if the producer is gone;
    /// [`RecvError::PeerLost`] comes only once the ring is empty.
    pub fn peek(&mut self, deadline: Option<Instant>) -> Result<ReadGrant<'_>, RecvError> {
        let ring = &self.ring;
        let cursor = &mut self.cursor;
        let found = match cursor.next_record(ring)? {
            Some(record) => Some(record),
            None => signal::wait_until(
                &ring.header().data_event.value,
                &ring.signals,
                deadline,
                || cursor.next_record(ring).map_err(RecvError::from),
            )?,
        };
        match found {
            Some(record) => Ok(self.grant(record)),
            None => Err(RecvError::Timeout),
        }
    }

    /// Copies the next record into `out` (cleared first) and releases it; `Ok(false)` if the
    /// ring is empty.
    pub fn try_pop_into(&mut self, out: &mut Vec<u8>) -> Result<bool, RingCorruption> {
        match self.try_peek()? {
            Some(grant) => {
                out.clear();
                out.extend_from_slice(grant.as_slice());
                grant.release();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Copies the next record into `out` (cleared first) and releases it, waiting for one
    /// until `deadline`.
    pub fn pop_into(
        &mut self,
        out: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvError> {
        let grant = self.peek(deadline)?;
        out.clear();
        out.extend_from_slice(grant.as_slice());
        grant.release();
        Ok(())
    }

    /// Published bytes not yet released (informational: includes record headers and padding).
    pub fn available_bytes(&mut self) -> Result<u64, RingCorruption> {
        // SYNC: pairs with the Release store of tail in `ProducerCursor::publish`.
        let tail = self.ring.header().tail.value.load(Ordering::Acquire);
        let available = tail.wrapping_sub(self.cursor.head);
        if available > self.ring.capacity {
            return Err(RingCorruption::TailOutOfRange {
                head: self.cursor.head,
                tail,
                capacity: self.ring.capacity,
            });
        }
        if !tail.is_multiple_of(ALIGN) {
            return Err(RingCorruption::MisalignedPosition {
                position: tail,
                align: ALIGN,
            });
        }
        self.cursor.cached_tail = tail;
        Ok(available)
    }
}

/// One record, from peek until [`release`](ReadGrant::release).
///
/// Dropping a grant without releasing it leaves the record in the ring: the next peek returns
/// it again.
#[must_use = "dropping a ReadGrant leaves the record in the ring"]
pub struct ReadGrant<'a> {
    consumer: &'a mut Consumer,
    ptr: *const u8,
    len: usize,
    size: u64,
}

impl fmt::Debug for ReadGrant<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadGrant")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<'a> ReadGrant<'a> {
    /// Payload bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the payload, aligned to `RECORD_ALIGN`; valid for `len()` bytes of reads
    /// until the grant is released or dropped.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// The payload.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `[ptr, ptr + len)` was validated to lie inside the data region and inside the
        // published range `[head, tail)`, which the protocol forbids the producer to touch
        // until head moves past it; head moves only through this grant's `release`, which
        // consumes the grant, so the bytes stay put for the borrow of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Gives the record's space back to the producer.
    pub fn release(self) {
        let consumer = self.consumer;
        consumer.cursor.advance(&consumer.ring, self.size);
    }

    /// Moves the consumer past the record but keeps the record in the ring, readable through
    /// the returned [`RingHold`] on any thread, until the hold is dropped: zero-copy receive of
    /// a record that outlives the consumer's borrow.
    ///
    /// The producer cannot reuse the held bytes (nor anything after them) until the hold is
    /// dropped, so holds shrink the room the producer has. A hold is refused (the grant comes
    /// back in `Err`) when, with it, fewer than `keep_free` bytes of the ring would be free
    /// now (counting everything published so far as taken): the caller copies the record out
    /// instead, and the records that must keep flowing behind it (control messages) still
    /// fit. `keep_free` is checked once, not reserved: records published later use the room
    /// too, and free room split by the end of the ring holds smaller records only.
    ///
    /// A hold keeps the ring's memory mapped and whatever the consumer was given to keep with
    /// it (a link's consumer: the role lock, so that no later consumer of the ring, in this
    /// process or another, can give the held bytes back to the producer).
    pub fn hold(self, keep_free: u64) -> Result<RingHold, ReadGrant<'a>> {
        let capacity = self.consumer.ring.capacity;
        let cursor = &mut self.consumer.cursor;
        let start = cursor.head;
        // Bytes the producer cannot write into while this record is held: from the oldest
        // hold to the last record published so far (everything behind a hold stays taken,
        // records read later and padding too). Measured now: records published later take
        // more, until the holds are dropped. Only this thread adds holds (others only drop
        // them, which frees room), so the check and the push need not share one lock.
        let oldest = cursor
            .holds
            .as_ref()
            .map_or(start, |h| h.lock().oldest(start));
        if cursor.cached_tail.wrapping_sub(oldest) > capacity.saturating_sub(keep_free) {
            return Err(self);
        }
        let holds = Arc::clone(cursor.holds.get_or_insert_with(Arc::default));
        holds.lock().live.push(start);
        let ring = self.consumer.ring.clone();
        let (ptr, len) = (self.ptr, self.len);
        self.consumer.cursor.advance(&ring, self.size);
        Ok(RingHold {
            ring,
            holds,
            start,
            ptr,
            len,
        })
    }
}

/// A record the consumer has read past but that stays in the ring until this is dropped
/// ([`ReadGrant::hold`]). Owned: it can move to another thread and outlive the consumer; it
/// keeps the ring's memory mapped.
pub struct RingHold {
    ring: RingRef,
    holds: Arc<Holds>,
    start: u64,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the held bytes are only read (through `&self`), the producer does not write them
// while the hold is live (the published head stays at or before `start`), the memory is kept
// mapped by `ring._keep` (`Send + Sync`), and the shared bookkeeping is behind a mutex.
unsafe impl Send for RingHold {}
// SAFETY: as above; `&RingHold` only gives read access to bytes nobody writes.
unsafe impl Sync for RingHold {}

impl fmt::Debug for RingHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingHold")
            .field("position", &self.start)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl RingHold {
    /// Payload bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The payload, aligned to `RECORD_ALIGN`.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `[ptr, ptr + len)` was validated (as for the grant it came from) to lie
        // inside the data region and the published range; the published head stays at or
        // before `start` while this hold is in `live`, so the producer does not write these
        // bytes, and `ring._keep` keeps them mapped for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for RingHold {
    fn drop(&mut self) {
        let mut state = self.holds.lock();
        if let Some(i) = state.live.iter().position(|&s| s == self.start) {
            state.live.swap_remove(i);
        }
        if let Some(read) = state.read {
            publish_head(&self.ring, state.oldest(read));
        }
    }
}

/// Heap memory for one ring, freed when both halves are gone.
struct InProcessRing {
    header: NonNull<RingHeader>,
    data: NonNull<u8>,
    data_layout: std::alloc::Layout,
    #[cfg(loom)]
    slots: NonNull<RecordHeader>,
    #[cfg(loom)]
    slot_count: usize,
}

// SAFETY: the struct only owns two heap allocations; all concurrent access to them goes through
// the ring protocol (atomics for shared words, grants for payload bytes).
unsafe impl Send for InProcessRing {}
// SAFETY: as above; `&InProcessRing` gives no access to the memory by itself.
unsafe impl Sync for InProcessRing {}

/// Page alignment of the in-process allocations (like a mapping).
const IN_PROCESS_ALIGN: usize = crate::layout::PAGE;

impl InProcessRing {
    fn new(capacity: u64) -> Result<InProcessRing, CapacityError> {
        validate_capacity(capacity)?;
        let too_large = CapacityError::TooLarge {
            capacity,
            max: isize::MAX as u64,
        };
        let size = usize::try_from(capacity).map_err(|_| too_large)?;
        let data_layout =
            std::alloc::Layout::from_size_align(size, IN_PROCESS_ALIGN).map_err(|_| too_large)?;
        // SAFETY: `data_layout` has a non-zero size (capacity >= MIN_CAPACITY).
        let data = unsafe { std::alloc::alloc_zeroed(data_layout) };
        let data =
            NonNull::new(data).unwrap_or_else(|| std::alloc::handle_alloc_error(data_layout));

        #[cfg(not(loom))]
        let header = {
            let layout = Self::header_layout();
            // SAFETY: the layout has a non-zero size (one page).
            let header = unsafe { std::alloc::alloc_zeroed(layout) } as *mut RingHeader;
            // All-zero bytes are a valid `RingHeader` (it is `FromBytes`: atomics of value 0).
            NonNull::new(header).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
        };
        #[cfg(loom)]
        let header = NonNull::from(Box::leak(Box::new(loom_ring_header())));
        #[cfg(loom)]
        let slot_count = (capacity / ALIGN) as usize;
        #[cfg(loom)]
        let slots = {
            let slots: Box<[RecordHeader]> = (0..slot_count)
                .map(|_| RecordHeader {
                    len: crate::sync::AtomicU64::new(0),
                    check: crate::sync::AtomicU64::new(0),
                })
                .collect();
            // SAFETY: a boxed slice pointer is never null.
            unsafe { NonNull::new_unchecked(Box::into_raw(slots) as *mut RecordHeader) }
        };

        Ok(InProcessRing {
            header,
            data,
            data_layout,
            #[cfg(loom)]
            slots,
            #[cfg(loom)]
            slot_count,
        })
    }

    #[cfg(not(loom))]
    fn header_layout() -> std::alloc::Layout {
        std::alloc::Layout::new::<RingHeader>()
            .align_to(IN_PROCESS_ALIGN)
            .expect("page alignment is a valid alignment")
    }
}

impl Drop for InProcessRing {
    fn drop(&mut self) {
        // SAFETY: `data` was allocated in `new` with `data_layout` and is freed only here; both
        // halves (the only users) are gone because they hold the Arc this value lives in.
        unsafe { std::alloc::dealloc(self.data.as_ptr(), self.data_layout) };
        #[cfg(not(loom))]
        // SAFETY: `header` was allocated in `new` with `header_layout()`; freed only here.
        unsafe {
            std::alloc::dealloc(self.header.as_ptr() as *mut u8, Self::header_layout())
        };
        #[cfg(loom)]
        // SAFETY: `header` and `slots` come from `Box::leak` / `Box::into_raw` in `new` with
        // these exact types and lengths; reclaimed only here.
        unsafe {
            drop(Box::from_raw(self.header.as_ptr()));
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.slots.as_ptr(),
                self.slot_count,
            )));
        }
    }
}

/// A ring header made of loom atomics (loom atomics cannot be conjured from zeroed bytes).
#[cfg(loom)]
fn loom_ring_header() -> RingHeader {
    use crate::layout::{PaddedU32, PaddedU64};
    use crate::sync::{AtomicU32, AtomicU64};
    fn words<const N: usize>() -> [AtomicU64; N] {
        std::array::from_fn(|_| AtomicU64::new(0))
    }
    fn padded64() -> PaddedU64 {
        PaddedU64 {
            value: AtomicU64::new(0),
            pad: words(),
        }
    }
    fn padded32() -> PaddedU32 {
        PaddedU32 {
            value: AtomicU32::new(0),
            pad: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
    RingHeader {
        magic: AtomicU64::new(0),
        capacity: AtomicU64::new(0),
        data_offset: AtomicU64::new(0),
        reserved: words(),
        tail: padded64(),
        head: padded64(),
        data_event: padded32(),
        space_event: padded32(),
        reserved_tail: words(),
    }
}

/// A ring on the heap, for tests, benchmarks and the in-process backend: returns its two
/// halves; the memory is freed when both are dropped.
pub fn in_process(capacity: u64, signals: Signals) -> Result<(Producer, Consumer), CapacityError> {
    let storage = Arc::new(InProcessRing::new(capacity)?);
    // SAFETY: `storage.header` points to a live RingHeader (allocated just above) that nothing
    // else references yet.
    let header = unsafe { storage.header.as_ref() };
    init_header(header, capacity, crate::layout::RING_HEADER_LEN as u64);
    let make_ref = |signals: Signals| RingRef {
        header: storage.header,
        data: storage.data,
        capacity,
        #[cfg(loom)]
        slots: storage.slots,
        signals,
        _keep: storage.clone(),
    };
    // Fresh ring: both positions are 0, nothing to validate.
    let producer = Producer {
        ring: make_ref(signals.clone()),
        cursor: ProducerCursor {
            tail: 0,
            tail_offset: 0,
            cached_head: 0,
            last_padding: (0, 0),
        },
    };
    let consumer = Consumer {
        ring: make_ref(signals),
        cursor: ConsumerCursor {
            head: 0,
            head_offset: 0,
            cached_tail: 0,
            holds: None,
        },
    };
    Ok((producer, consumer))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::signal::{PeerCheck, WaitStrategy};
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicBool;
    use std::thread;
    use std::time::Duration;

    fn ring(capacity: u64) -> (Producer, Consumer) {
        in_process(capacity, Signals::in_process()).unwrap()
    }

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (seed.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8)
            .collect()
    }

    fn pop(consumer: &mut Consumer) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        consumer.try_pop_into(&mut out).unwrap().then_some(out)
    }

    fn header(p: &Producer) -> &RingHeader {
        p.ring.header()
    }

    /// A detached reservation publishes nothing until committed, survives being carried
    /// around, goes stale when something else is published, and its bytes can be read back
    /// after commit until the producer writes over them.
    #[test]
    fn detached_reservation_commits_later_and_reads_back() {
        let (mut p, mut c) = ring(4096);
        let r = p.reserve_detached(100, None).unwrap();
        p.reservation_mut(&r)
            .unwrap()
            .copy_from_slice(&pattern(1, 100));
        assert_eq!(pop(&mut c), None, "not visible before commit");
        let position = r.position();
        p.commit_reservation(r).unwrap();
        assert_eq!(pop(&mut c), Some(pattern(1, 100)));
        let mut back = vec![0u8; 100];
        assert!(
            p.copy_committed(position, &mut back),
            "released but not overwritten"
        );
        assert_eq!(back, pattern(1, 100));
        // Abandoned, then another record published: the reservation is stale.
        let stale = p.reserve_detached(10, None).unwrap();
        p.push(&pattern(2, 10), None).unwrap();
        assert!(p.reservation_mut(&stale).is_err());
        assert!(p.commit_reservation(stale).is_err());
        assert_eq!(pop(&mut c), Some(pattern(2, 10)));
        assert_eq!(pop(&mut c), None);
        // A lap later the first record's bytes are gone.
        for i in 0..40 {
            p.push(&pattern(i, 100), None).unwrap();
            pop(&mut c).unwrap();
        }
        assert!(!p.copy_committed(position, &mut back));
        let never = p.reserve_detached(10, None).unwrap();
        assert!(
            !p.copy_committed(never.position(), &mut back[..10]),
            "not committed"
        );
    }

    /// A held record stays readable while the consumer reads on; the producer cannot write
    /// over it, and gets the room back when the hold is dropped on another thread.
    #[test]
    fn held_record_stays_put_while_later_records_flow() {
        let (mut p, mut c) = ring(4096);
        p.push(&pattern(1, 1000), None).unwrap();
        let hold = c.try_peek().unwrap().unwrap().hold(512).unwrap();
        assert_eq!(hold.as_slice(), pattern(1, 1000));
        // 1,088 bytes are pinned: small records behind it still flow, lap after lap of the
        // rest of the ring would not.
        let mut pushed = 0;
        while p.try_push(&pattern(2, 100)).is_ok() {
            pushed += 1;
            assert_eq!(pop(&mut c), Some(pattern(2, 100)));
            assert!(pushed < 100, "the producer wrote over the held record");
        }
        assert_eq!(hold.as_slice(), pattern(1, 1000), "held bytes unchanged");
        assert_eq!(pop(&mut c), None);
        // The producer blocks for room until another thread drops the hold.
        let dropper = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            drop(hold);
        });
        p.push(
            &pattern(3, 100),
            Some(Instant::now() + Duration::from_secs(30)),
        )
        .unwrap();
        dropper.join().unwrap();
        assert_eq!(pop(&mut c), Some(pattern(3, 100)));
    }

    /// A hold is refused when it would leave less than `keep_free` bytes for new records,
    /// counting the holds already live; the refused grant can still be read and released.
    #[test]
    fn hold_is_refused_when_too_little_room_would_remain() {
        let (mut p, mut c) = ring(4096);
        p.push(&pattern(1, 2000), None).unwrap();
        let grant = c.try_peek().unwrap().unwrap();
        let grant = grant
            .hold(4096 - 2048)
            .expect_err("2,112 pinned > 2,048 allowed");
        let first = grant.hold(4096 - 2112).unwrap();
        p.push(&pattern(2, 900), None).unwrap();
        let grant = c.try_peek().unwrap().unwrap();
        // With the first hold, 2,112 + 1,024 bytes would be pinned.
        let grant = grant.hold(961).expect_err("only 960 would remain");
        assert_eq!(grant.as_slice(), pattern(2, 900));
        let second = grant.hold(960).unwrap();
        assert_eq!(first.as_slice(), pattern(1, 2000));
        assert_eq!(second.as_slice(), pattern(2, 900));
        assert!(c.try_peek().unwrap().is_none());
        assert_eq!(header(&p).head.value.load(Ordering::Relaxed), 0);
        // Dropping the newer hold first frees nothing; dropping the oldest frees both.
        drop(second);
        assert_eq!(header(&p).head.value.load(Ordering::Relaxed), 0);
        drop(first);
        assert_eq!(header(&p).head.value.load(Ordering::Relaxed), 2112 + 1024);
        assert_eq!(p.free_bytes().unwrap(), 4096, "the whole ring is free");
    }

    /// Everything published behind a record counts against `keep_free`: records read after
    /// the held one do not give their room back while it is held.
    #[test]
    fn hold_counts_records_published_behind_it() {
        let (mut p, mut c) = ring(4096);
        p.push(&pattern(1, 1000), None).unwrap();
        p.push(&pattern(2, 2000), None).unwrap();
        let grant = c.try_peek().unwrap().unwrap();
        // 1,088 + 2,112 bytes published: only 896 would stay free.
        let grant = grant.hold(1024).expect_err("896 < 1,024 free");
        let hold = grant.hold(896).unwrap();
        assert_eq!(pop(&mut c), Some(pattern(2, 2000)));
        assert_eq!(p.free_bytes().unwrap(), 896);
        drop(hold);
        assert_eq!(p.free_bytes().unwrap(), 4096);
        assert!(c.cursor.holds.is_some());
        // A refused hold on a fresh consumer does not switch it to the locked path.
        let (mut p, mut c) = ring(4096);
        p.push(&pattern(3, 100), None).unwrap();
        c.try_peek()
            .unwrap()
            .unwrap()
            .hold(4096)
            .unwrap_err()
            .release();
        assert!(c.cursor.holds.is_none());
    }

    /// A hold that outlives its consumer stops publishing: the ring's next consumer starts at
    /// the held record and owns the head from then on.
    #[test]
    fn hold_outliving_its_consumer_leaves_the_head_to_the_next_consumer() {
        let (mut p, mut c) = ring(4096);
        p.push(&pattern(1, 100), None).unwrap();
        p.push(&pattern(2, 100), None).unwrap();
        let hold = c.try_peek().unwrap().unwrap().hold(0).unwrap();
        assert_eq!(pop(&mut c), Some(pattern(2, 100)));
        let ring = c.ring.clone();
        drop(c);
        let mut next = Consumer {
            cursor: ConsumerCursor {
                head: 0,
                head_offset: 0,
                cached_tail: 0,
                holds: None,
            },
            ring,
        };
        drop(hold);
        assert_eq!(
            header(&p).head.value.load(Ordering::Relaxed),
            0,
            "not published"
        );
        assert_eq!(pop(&mut next), Some(pattern(1, 100)), "seen again");
        assert_eq!(pop(&mut next), Some(pattern(2, 100)));
    }

    /// A second view of a ring's memory, to scribble on it like a hostile peer would.
    fn spy(p: &Producer) -> RingRef {
        RingRef {
            header: p.ring.header,
            data: p.ring.data,
            capacity: p.ring.capacity,
            signals: Signals::in_process(),
            _keep: p.ring._keep.clone(),
        }
    }

    /// Small deterministic generator for the tests (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    fn checksum(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    #[test]
    fn capacity_validation() {
        assert_eq!(validate_capacity(0), Err(CapacityError::Zero));
        assert_eq!(
            validate_capacity(100),
            Err(CapacityError::Unaligned {
                capacity: 100,
                align: 64
            })
        );
        assert_eq!(
            validate_capacity(64),
            Err(CapacityError::TooSmall {
                capacity: 64,
                min: 128
            })
        );
        assert!(matches!(
            validate_capacity((1 << 40) + 64),
            Err(CapacityError::TooLarge { .. })
        ));
        assert_eq!(validate_capacity(128), Ok(()));
        assert_eq!(validate_capacity(192), Ok(()));
        assert_eq!(validate_capacity(1 << 40), Ok(()));
        assert!(in_process(100, Signals::in_process()).is_err());
    }

    #[test]
    fn push_then_pop_round_trips() {
        let (mut p, mut c) = ring(4096);
        assert_eq!(p.capacity(), 4096);
        assert_eq!(c.capacity(), 4096);
        assert_eq!(p.max_record(), 4032);
        assert!(pop(&mut c).is_none());
        p.try_push(b"hello").unwrap();
        p.try_push(b"").unwrap();
        p.try_push(&[7; 64]).unwrap();
        assert_eq!(c.available_bytes().unwrap(), 128 + 64 + 128);
        assert_eq!(pop(&mut c).unwrap(), b"hello");
        assert_eq!(pop(&mut c).unwrap(), b"");
        assert_eq!(pop(&mut c).unwrap(), vec![7; 64]);
        assert!(pop(&mut c).is_none());
        assert_eq!(c.available_bytes().unwrap(), 0);
        assert_eq!(p.free_bytes().unwrap(), 4096);
    }

    #[test]
    fn payloads_are_aligned() {
        let (mut p, mut c) = ring(1024);
        for len in [0usize, 1, 63, 64, 65, 200, 500] {
            let mut g = p.try_reserve(len).unwrap();
            assert_eq!(g.len(), len);
            assert_eq!(g.is_empty(), len == 0);
            assert_eq!(g.as_mut_ptr() as usize % RECORD_ALIGN, 0);
            g.commit();
            let g = c.try_peek().unwrap().unwrap();
            assert_eq!(g.as_ptr() as usize % RECORD_ALIGN, 0);
            assert_eq!(g.len(), len);
            g.release();
        }
    }

    #[test]
    fn every_size_up_to_300_bytes_round_trips_at_every_offset() {
        // 1088 is not a power of two, so offsets and wrap points keep shifting.
        for capacity in [1024u64, 1088] {
            let (mut p, mut c) = ring(capacity);
            let mut in_flight = VecDeque::new();
            for len in 0..=300usize {
                let data = pattern(len as u64, len);
                loop {
                    match p.try_push(&data) {
                        Ok(()) => break,
                        Err(TryReserveError::Full) => {
                            let expected: Vec<u8> = in_flight.pop_front().unwrap();
                            assert_eq!(pop(&mut c).unwrap(), expected);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                in_flight.push_back(data);
            }
            while let Some(expected) = in_flight.pop_front() {
                assert_eq!(pop(&mut c).unwrap(), expected);
            }
            assert!(pop(&mut c).is_none());
        }
    }

    #[test]
    fn wrap_around_publishes_padding_and_continues_at_offset_zero() {
        let (mut p, mut c) = ring(256);
        p.try_push(&[1; 64]).unwrap(); // 128 bytes at 0
        p.try_push(&[]).unwrap(); // 64 bytes at 128
        assert_eq!(pop(&mut c).unwrap(), vec![1; 64]);
        // Needs 128 bytes; only 64 left before the end: padding at 192, record at 0.
        p.try_push(&[3; 64]).unwrap();
        assert_eq!(header(&p).tail.value.load(Ordering::Relaxed), 384);
        assert_eq!(pop(&mut c).unwrap(), Vec::<u8>::new());
        assert_eq!(pop(&mut c).unwrap(), vec![3; 64]);
        assert_eq!(header(&p).head.value.load(Ordering::Relaxed), 384);
        assert!(pop(&mut c).is_none());
    }

    #[test]
    fn padding_is_published_even_when_the_record_then_does_not_fit() {
        let (mut p, mut c) = ring(256);
        p.try_push(&[1; 64]).unwrap(); // [0, 128)
        p.try_push(&[2; 1]).unwrap(); // [128, 256)
        assert_eq!(pop(&mut c).unwrap(), vec![1; 64]);
        assert_eq!(pop(&mut c).unwrap(), vec![2; 1]);
        p.try_push(&[3; 100]).unwrap(); // [256, 448)
        assert_eq!(
            p.try_reserve(100).map(|_| ()),
            Err(TryReserveError::Full),
            "64 bytes free before the end and at the start together, 192 needed"
        );
        assert_eq!(pop(&mut c).unwrap(), vec![3; 100]);
        // The consumer skipped the padding published above; the record now fits at offset 0.
        p.try_push(&[4; 192]).unwrap();
        assert_eq!(pop(&mut c).unwrap(), vec![4; 192]);
    }

    #[test]
    fn a_record_can_fill_the_whole_ring() {
        let (mut p, mut c) = ring(256);
        assert_eq!(p.max_record(), 192);
        p.try_push(&[9; 192]).unwrap();
        assert_eq!(p.free_bytes().unwrap(), 0);
        assert_eq!(p.try_push(&[]), Err(TryReserveError::Full));
        assert_eq!(pop(&mut c).unwrap(), vec![9; 192]);
        // Empty again, at offset 0: a full-size record fits again, repeatedly.
        for round in 0..5u8 {
            p.try_push(&[round; 192]).unwrap();
            assert_eq!(pop(&mut c).unwrap(), vec![round; 192]);
        }
        // From a non-zero offset, a full-size record needs the consumer to skip the padding.
        p.try_push(&[]).unwrap();
        assert_eq!(pop(&mut c).unwrap(), Vec::<u8>::new());
        assert_eq!(p.try_push(&[5; 192]), Err(TryReserveError::Full));
        assert!(pop(&mut c).is_none()); // skips the padding
        p.try_push(&[5; 192]).unwrap();
        assert_eq!(pop(&mut c).unwrap(), vec![5; 192]);
    }

    #[test]
    fn sizes_near_capacity() {
        let capacity = 64 * 1024;
        let (mut p, mut c) = ring(capacity);
        let max = p.max_record();
        for len in [max - 129, max - 128, max - 65, max - 64, max - 1, max] {
            let data = pattern(len as u64, len);
            let mut pushed = false;
            for _ in 0..3 {
                match p.try_push(&data) {
                    Ok(()) => {
                        pushed = true;
                        break;
                    }
                    Err(TryReserveError::Full) => {
                        let _ = pop(&mut c);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(pushed);
            assert_eq!(pop(&mut c).unwrap(), data);
        }
        assert_eq!(
            p.try_reserve(max + 1).map(|_| ()),
            Err(TryReserveError::TooLarge { len: max + 1, max })
        );
        assert_eq!(
            p.reserve(usize::MAX, None).map(|_| ()),
            Err(ReserveError::TooLarge {
                len: usize::MAX,
                max
            })
        );
    }

    #[test]
    fn full_ring_reports_full() {
        let (mut p, mut c) = ring(1024);
        let mut pushed = 0;
        while p.try_push(&[0; 100]).is_ok() {
            pushed += 1;
        }
        assert_eq!(pushed, 1024 / 192);
        assert_eq!(p.try_push(&[0; 100]), Err(TryReserveError::Full));
        assert!(pop(&mut c).is_some());
        p.try_push(&[0; 100]).unwrap();
    }

    #[test]
    fn reserve_within_caps_the_bytes_in_flight() {
        let (mut p, mut c) = ring(4096);
        p.try_push(&[1; 100]).unwrap(); // 192 bytes in flight
        let now = Some(Instant::now());
        // 192 + 128 > 256: must wait (and time out).
        assert_eq!(
            p.reserve_within(10, 256, now).map(|_| ()),
            Err(ReserveError::Timeout)
        );
        p.reserve_within(10, 320, now).unwrap().commit();
        // A window below the record's size is raised to it, once the ring has drained.
        assert_eq!(pop(&mut c).unwrap(), vec![1; 100]);
        assert_eq!(pop(&mut c).unwrap(), vec![0; 10]);
        p.reserve_within(1000, 0, now).unwrap().commit();
        assert_eq!(pop(&mut c).unwrap().len(), 1000);
    }

    #[test]
    fn abandoned_grant_publishes_nothing() {
        let (mut p, mut c) = ring(512);
        {
            let mut g = p.try_reserve(10).unwrap();
            g.as_mut_slice().fill(1);
        }
        assert!(pop(&mut c).is_none());
        assert_eq!(header(&p).tail.value.load(Ordering::Relaxed), 0);
        p.try_push(b"real").unwrap(); // [0, 128)
        assert_eq!(pop(&mut c).unwrap(), b"real");
        p.try_push(&[1; 192]).unwrap(); // [128, 384)
        assert_eq!(pop(&mut c).unwrap(), vec![1; 192]);
        // Abandon after a padding record was needed: only the padding [384, 512) is published.
        drop(p.try_reserve(100).unwrap());
        assert_eq!(header(&p).tail.value.load(Ordering::Relaxed), 512);
        assert!(pop(&mut c).is_none());
        assert_eq!(header(&p).head.value.load(Ordering::Relaxed), 512);
        p.try_push(b"after").unwrap();
        assert_eq!(pop(&mut c).unwrap(), b"after");
    }

    #[test]
    fn unreleased_read_grant_is_seen_again() {
        let (mut p, mut c) = ring(256);
        p.try_push(b"one").unwrap();
        p.try_push(b"two").unwrap();
        {
            let g = c.try_peek().unwrap().unwrap();
            assert_eq!(g.as_slice(), b"one");
        }
        let g = c.try_peek().unwrap().unwrap();
        assert_eq!(g.as_slice(), b"one");
        g.release();
        assert_eq!(pop(&mut c).unwrap(), b"two");
    }

    #[test]
    fn commit_len_shrinks_and_refuses_to_grow() {
        let (mut p, mut c) = ring(1024);
        let mut g = p.try_reserve(500).unwrap();
        g.as_mut_slice()[..3].copy_from_slice(b"abc");
        g.commit_len(3).unwrap();
        assert_eq!(c.available_bytes().unwrap(), 128);
        assert_eq!(pop(&mut c).unwrap(), b"abc");
        let g = p.try_reserve(10).unwrap();
        assert_eq!(
            g.commit_len(11),
            Err(CommitError {
                len: 11,
                reserved: 10
            })
        );
        assert!(pop(&mut c).is_none());
        let g = p.try_reserve(10).unwrap();
        g.commit_len(0).unwrap();
        assert_eq!(pop(&mut c).unwrap(), b"");
    }

    #[test]
    fn two_threads_move_100k_random_records_intact() {
        const RECORDS: u64 = 100_000;
        let (mut p, mut c) = ring(16 * 1024);
        let max = p.max_record();
        let producer = thread::spawn(move || {
            let mut rng = Rng(0x1234_5678);
            for seq in 0..RECORDS {
                let len = match rng.next() % 16 {
                    0 => (rng.next() % (max as u64 + 1)) as usize,
                    _ => (rng.next() % 300) as usize,
                };
                let mut g = p.reserve(len, None).unwrap();
                let bytes = g.as_mut_slice();
                let mut fill = Rng(seq + 1);
                for b in bytes.iter_mut() {
                    *b = fill.next() as u8;
                }
                if len >= 16 {
                    let sum = checksum(&bytes[16..]);
                    bytes[..8].copy_from_slice(&seq.to_le_bytes());
                    bytes[8..16].copy_from_slice(&sum.to_le_bytes());
                }
                g.commit();
            }
        });
        let mut out = Vec::new();
        let mut lens = Rng(0x1234_5678);
        for seq in 0..RECORDS {
            c.pop_into(&mut out, None).unwrap();
            let len = match lens.next() % 16 {
                0 => (lens.next() % (max as u64 + 1)) as usize,
                _ => (lens.next() % 300) as usize,
            };
            assert_eq!(out.len(), len, "record {seq}");
            if len >= 16 {
                assert_eq!(u64::from_le_bytes(out[..8].try_into().unwrap()), seq);
                let sum = u64::from_le_bytes(out[8..16].try_into().unwrap());
                assert_eq!(checksum(&out[16..]), sum, "record {seq}");
            }
        }
        producer.join().unwrap();
        assert!(!c.try_pop_into(&mut out).unwrap());
    }

    #[test]
    fn blocking_peek_times_out() {
        let (_p, mut c) = ring(256);
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(c.peek(Some(deadline)).map(|_| ()), Err(RecvError::Timeout));
        assert!(Instant::now() >= deadline);
        let mut out = Vec::new();
        assert_eq!(
            c.pop_into(&mut out, Some(Instant::now())),
            Err(RecvError::Timeout)
        );
    }

    #[test]
    fn blocking_reserve_times_out_on_a_full_ring() {
        let (mut p, _c) = ring(256);
        p.try_push(&[0; 192]).unwrap();
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            p.reserve(1, Some(deadline)).map(|_| ()),
            Err(ReserveError::Timeout)
        );
    }

    fn blocking_calls_unblock(signals: Signals) {
        let (mut p, mut c) = in_process(256, signals).unwrap();
        p.try_push(&[1; 192]).unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let consumer = {
            let released = released.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(30));
                let g = c.try_peek().unwrap().unwrap();
                assert_eq!(g.len(), 192);
                released.store(true, std::sync::atomic::Ordering::SeqCst);
                g.release();
                // Now block on an empty ring until the producer pushes again.
                let mut out = Vec::new();
                c.pop_into(&mut out, None).unwrap();
                out
            })
        };
        p.push(&[2; 100], None).unwrap();
        assert!(released.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(consumer.join().unwrap(), vec![2; 100]);
    }

    #[test]
    fn blocking_reserve_unblocks_when_consumer_releases() {
        blocking_calls_unblock(Signals::in_process());
    }

    #[test]
    fn blocking_calls_unblock_without_spinning_and_with_sleep_poll() {
        let no_spin = WaitStrategy {
            spin: Duration::ZERO,
            poll_interval: Duration::from_secs(60),
        };
        blocking_calls_unblock(Signals {
            strategy: no_spin,
            ..Signals::in_process()
        });
        blocking_calls_unblock(Signals {
            waiter: Arc::new(crate::signal::SleepPoll),
            strategy: no_spin,
            ..Signals::in_process()
        });
    }

    struct DeadPeer;
    impl PeerCheck for DeadPeer {
        fn check(&self) -> Result<(), PeerLost> {
            Err(PeerLost::Dead { pid: 7 })
        }
    }

    #[test]
    fn lost_peer_is_reported_after_draining() {
        let signals = Signals {
            peer: Arc::new(DeadPeer),
            ..Signals::in_process()
        };
        let (mut p, mut c) = in_process(1024, signals).unwrap();
        p.try_push(b"last words").unwrap();
        let mut out = Vec::new();
        c.pop_into(&mut out, None).unwrap();
        assert_eq!(out, b"last words");
        assert_eq!(
            c.pop_into(&mut out, None),
            Err(RecvError::PeerLost(PeerLost::Dead { pid: 7 }))
        );
        p.push(&[0; 800], None).unwrap(); // 864 of 1024 bytes
        assert_eq!(
            p.push(&[0; 200], None),
            Err(ReserveError::PeerLost(PeerLost::Dead { pid: 7 }))
        );
    }

    #[test]
    fn from_raw_resumes_where_the_previous_halves_stopped() {
        let (mut p, c) = ring(512);
        p.try_push(b"first").unwrap();
        p.try_push(b"second").unwrap();
        let header = p.ring.header;
        let data = p.ring.data;
        let keep = p.ring._keep.clone();
        drop(c);
        // SAFETY: the memory lives as long as `keep`; the old consumer is gone.
        let mut c = unsafe {
            Consumer::from_raw(header, data, 512, Signals::in_process(), keep.clone()).unwrap()
        };
        assert_eq!(pop(&mut c).unwrap(), b"first");
        drop(p);
        // SAFETY: as above; the old producer is gone.
        let mut p = unsafe {
            Producer::from_raw(header, data, 512, Signals::in_process(), keep.clone()).unwrap()
        };
        p.try_push(b"third").unwrap();
        assert_eq!(pop(&mut c).unwrap(), b"second");
        assert_eq!(pop(&mut c).unwrap(), b"third");
        // SAFETY: as above (only validation runs; the result is dropped at once).
        let wrong =
            unsafe { Producer::from_raw(header, data, 448, Signals::in_process(), keep.clone()) };
        assert_eq!(
            wrong.map(|_| ()),
            Err(RingCorruption::CapacityMismatch {
                header: 512,
                expected: 448
            })
        );
        header_store_magic(&p, 0);
        drop(p);
        // SAFETY: as above.
        let bad = unsafe { Producer::from_raw(header, data, 512, Signals::in_process(), keep) };
        assert!(matches!(
            bad,
            Err(RingCorruption::BadMagic { found: 0, .. })
        ));
    }

    fn header_store_magic(p: &Producer, magic: u64) {
        header(p).magic.store(magic, Ordering::Relaxed);
    }

    // ---- hostile peer ------------------------------------------------------------------

    #[test]
    fn hostile_tail_values_are_reported() {
        let (p, mut c) = ring(1024);
        let tail = &header(&p).tail.value;
        for bad in [u64::MAX, 1025 + 63, 2048, u64::MAX - 63] {
            tail.store(bad, Ordering::Relaxed);
            assert!(
                matches!(
                    c.try_peek().map(|_| ()),
                    Err(RingCorruption::TailOutOfRange { .. })
                ),
                "tail {bad}"
            );
            assert!(c.available_bytes().is_err());
        }
        tail.store(65, Ordering::Relaxed);
        assert_eq!(
            c.try_peek().map(|_| ()),
            Err(RingCorruption::MisalignedPosition {
                position: 65,
                align: 64
            })
        );
        // A tail ahead with no valid record header behind it.
        tail.store(128, Ordering::Relaxed);
        assert!(matches!(
            c.try_peek().map(|_| ()),
            Err(RingCorruption::BadRecordHeader { position: 0, .. })
        ));
    }

    #[test]
    fn hostile_head_values_are_reported() {
        let (mut p, c) = ring(1024);
        let head = &c.ring.header().head.value;
        p.try_push(&[0; 900]).unwrap();
        for bad in [u64::MAX, 4096, 1025] {
            head.store(bad, Ordering::Relaxed);
            assert!(
                matches!(
                    p.try_reserve(100).map(|_| ()),
                    Err(TryReserveError::Corrupt(
                        RingCorruption::HeadOutOfRange { .. }
                    ))
                ),
                "head {bad}"
            );
            assert!(p.free_bytes().is_err());
            assert!(matches!(
                p.reserve(100, None).map(|_| ()),
                Err(ReserveError::Corrupt(RingCorruption::HeadOutOfRange { .. }))
            ));
        }
        // A head moved back within range is accepted (it only hurts the consumer).
        head.store(0, Ordering::Relaxed);
        assert_eq!(p.try_reserve(100).map(|_| ()), Err(TryReserveError::Full));
        // A head in range but not on a record boundary is corruption.
        head.store(100, Ordering::Relaxed);
        assert_eq!(
            p.try_reserve(100).map(|_| ()),
            Err(TryReserveError::Corrupt(
                RingCorruption::MisalignedPosition {
                    position: 100,
                    align: 64
                }
            ))
        );
    }

    #[test]
    fn hostile_record_headers_are_reported() {
        let (mut p, mut c) = ring(1024);
        p.try_push(&[1; 10]).unwrap(); // [0, 128)
        let spy = spy(&p);
        let tail = &spy.header().tail.value;
        let rec = spy.record_header(0);

        // Check mismatch.
        rec.check.store(0, Ordering::Relaxed);
        assert_eq!(
            c.try_peek().map(|_| ()),
            Err(RingCorruption::BadRecordHeader {
                position: 0,
                len: 10,
                check: 0
            })
        );
        // Huge length with a matching check.
        let forge = |len: u64| {
            rec.len.store(len, Ordering::Relaxed);
            rec.check.store(record_check(0, len), Ordering::Relaxed);
        };
        forge(u64::MAX >> 1);
        assert!(matches!(
            c.try_peek().map(|_| ()),
            Err(RingCorruption::RecordTooLarge { .. })
        ));
        // Plausible length, but past the tail.
        forge(200);
        assert_eq!(
            c.try_peek().map(|_| ()),
            Err(RingCorruption::RecordPastTail {
                position: 0,
                size: 320,
                tail: 128
            })
        );
        // Padding at offset 0.
        forge(RECORD_PADDING | 1024);
        assert_eq!(
            c.try_peek().map(|_| ()),
            Err(RingCorruption::PaddingAtStart { position: 0 })
        );
        forge(10);
        assert_eq!(pop(&mut c).unwrap(), vec![1; 10]);

        // Padding of the wrong length, and a record crossing the end.
        p.try_push(&[2; 700]).unwrap(); // [128, 896)
        assert_eq!(pop(&mut c).unwrap(), vec![2; 700]);
        p.try_push(&[3; 100]).unwrap(); // padding [896, 1024), record [1024, 1216)
        let pad = spy.record_header(896);
        let forge_pad = |len: u64| {
            pad.len.store(len, Ordering::Relaxed);
            pad.check.store(record_check(896, len), Ordering::Relaxed);
        };
        forge_pad(RECORD_PADDING | 64);
        assert_eq!(
            c.try_peek().map(|_| ()),
            Err(RingCorruption::BadPadding {
                position: 896,
                len: 64,
                expected: 128
            })
        );
        forge_pad(100);
        assert_eq!(
            c.try_peek().map(|_| ()),
            Err(RingCorruption::RecordPastEnd {
                position: 896,
                size: 192,
                to_end: 128
            })
        );
        forge_pad(RECORD_PADDING | 128);
        assert_eq!(pop(&mut c).unwrap(), vec![3; 100]);
        assert_eq!(tail.load(Ordering::Relaxed), 1216);
    }

    #[test]
    fn consumer_attach_rejects_garbage_positions() {
        let (p, c) = ring(512);
        let (header_ptr, data, keep) = (p.ring.header, p.ring.data, p.ring._keep.clone());
        drop(c);
        let h = header(&p);
        let attach = || {
            // SAFETY: memory kept alive by `keep`; no other consumer exists.
            unsafe {
                Consumer::from_raw(header_ptr, data, 512, Signals::in_process(), keep.clone())
            }
            .map(|_| ())
        };
        h.head.value.store(64, Ordering::Relaxed);
        assert!(matches!(
            attach(),
            Err(RingCorruption::TailOutOfRange { .. })
        ));
        h.tail.value.store(64 + 512 + 64, Ordering::Relaxed);
        assert!(matches!(
            attach(),
            Err(RingCorruption::TailOutOfRange { .. })
        ));
        h.tail.value.store(100, Ordering::Relaxed);
        assert!(matches!(
            attach(),
            Err(RingCorruption::MisalignedPosition { .. })
        ));
        h.tail.value.store(128, Ordering::Relaxed);
        assert_eq!(attach(), Ok(()));
    }

    mod hostile_props {
        use super::*;
        use proptest::prelude::*;

        fn scribble(
            p: &Producer,
            head: u64,
            tail: u64,
            bytes: &[(u16, u8)],
            headers: &[(u8, u64, bool)],
        ) {
            let capacity = p.ring.capacity;
            let h = header(p);
            h.head.value.store(head, Ordering::Relaxed);
            h.tail.value.store(tail, Ordering::Relaxed);
            for &(at, value) in bytes {
                let at = u64::from(at) % capacity;
                // Skip the record headers: those are atomics and written below.
                if at % ALIGN < 16 {
                    continue;
                }
                // SAFETY: `at < capacity`; single-threaded test, nothing else reads the byte now.
                unsafe { p.ring.data.as_ptr().wrapping_add(at as usize).write(value) };
            }
            for &(slot, len, valid) in headers {
                let offset = (u64::from(slot) * ALIGN) % capacity;
                let rec = p.ring.record_header(offset);
                rec.len.store(len, Ordering::Relaxed);
                let position = head.wrapping_add(offset.wrapping_sub(head % capacity) % capacity);
                let check = if valid {
                    record_check(position, len)
                } else {
                    len.rotate_left(7)
                };
                rec.check.store(check, Ordering::Relaxed);
            }
        }

        fn len_strategy() -> impl Strategy<Value = u64> {
            prop_oneof![
                0u64..2048,
                any::<u64>(),
                (0u64..2048).prop_map(|l| l | RECORD_PADDING),
                Just(RECORD_PADDING | 64),
            ]
        }

        fn position_strategy() -> impl Strategy<Value = u64> {
            prop_oneof![
                (0u64..64).prop_map(|x| x * 64),
                any::<u64>(),
                (0u64..4096),
                (u64::MAX - 4096..=u64::MAX),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn garbage_in_shared_memory_never_panics(
                head in position_strategy(),
                tail in position_strategy(),
                bytes in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..64),
                headers in proptest::collection::vec((any::<u8>(), len_strategy(), any::<bool>()), 0..16),
                ops in proptest::collection::vec((0u8..6, 0usize..1200), 1..40),
            ) {
                let (mut p, mut c) = ring(1024);
                p.try_push(&[1; 100]).unwrap();
                p.try_push(&[2; 10]).unwrap();
                scribble(&p, head, tail, &bytes, &headers);
                let mut out = Vec::new();
                for (op, len) in ops {
                    match op {
                        0 => { let _ = c.try_peek().map(|g| g.map(|g| g.as_slice().len())); }
                        1 => { let _ = c.try_pop_into(&mut out); }
                        2 => { let _ = c.available_bytes(); let _ = p.free_bytes(); }
                        3 => {
                            if let Ok(mut g) = p.try_reserve(len) {
                                g.as_mut_slice().fill(0xAB);
                                g.commit();
                            }
                        }
                        4 => { let _ = p.try_push(&[5; 64]); }
                        _ => {
                            let _ = c.peek(Some(Instant::now())).map(|g| g.release());
                            let _ = p.reserve(len, Some(Instant::now())).map(|g| g.commit());
                        }
                    }
                    // Keep scribbling between operations, as a live hostile peer would.
                    if len % 7 == 0 {
                        scribble(&p, tail, head, &bytes, &headers);
                    }
                }
                // Attaching new halves over the garbage must not panic either.
                let (hp, dp, keep) = (p.ring.header, p.ring.data, p.ring._keep.clone());
                drop((p, c));
                // SAFETY: memory kept alive by `keep`; the old halves are gone.
                let _ = unsafe { Producer::from_raw(hp, dp, 1024, Signals::in_process(), keep.clone()) };
                // SAFETY: as above.
                let _ = unsafe { Consumer::from_raw(hp, dp, 1024, Signals::in_process(), keep) };
            }
        }
    }
}
