//! Receiving: fragments read from the ring, checked, and viewed in place or reassembled
//! ([`FrameReceiver`]).

#[allow(unused_imports)]
use super::*;

/// A buffer whose start is 64-byte aligned (so every tensor in it is), used to reassemble
/// fragmented messages and to copy messages out of the ring.
///
/// Up to [`AlignedBuf::HEAP_MAX`] bytes it is an allocation from the global allocator: a
/// message copied out of the ring (a task or result through the protocol) takes one per
/// message, and the allocator hands back memory freed a moment ago. Larger, it is an anonymous
/// memory map (page-aligned): its pages come from the OS zeroed, on first touch (or all at
/// once with [`AlignedBuf::prefault`]), so reserving room for a large announced message costs
/// nothing until its bytes arrive. Either way a failed allocation is an error, not an abort.
#[derive(Default)]
pub struct AlignedBuf {
    pub(super) map: Option<memmap2::MmapMut>,
    /// The memory of a buffer of at most [`AlignedBuf::HEAP_MAX`] bytes (`map` is `None`).
    heap: Vec<Line>,
    pub(super) len: usize,
    /// Bytes from the start known to be faulted in by [`AlignedBuf::prefault`].
    pub(super) prefaulted: usize,
}

/// The unit of a heap-backed [`AlignedBuf`]: its alignment is the buffer's.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(64))]
struct Line([u8; TENSOR_ALIGN]);
const _: () = assert!(std::mem::align_of::<Line>() == TENSOR_ALIGN);

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
    /// The largest buffer taken from the global allocator; larger ones are anonymous maps.
    /// A map costs a syscall, a page fault per page touched and, when dropped, an unmap that
    /// flushes the TLB: about 5 µs for a 4 KiB message copied out and dropped (measured on the
    /// 2-vCPU reference machine), against well under 1 µs from the allocator.
    pub const HEAP_MAX: usize = 64 << 10;

    /// An empty buffer (no memory held).
    pub fn new() -> AlignedBuf {
        AlignedBuf::default()
    }

    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> std::io::Result<AlignedBuf> {
        let mut buf = AlignedBuf::new();
        buf.reset(len)?;
        Ok(buf)
    }

    /// Bytes the buffer holds without taking new memory.
    pub fn capacity(&self) -> usize {
        self.map
            .as_ref()
            .map_or(self.heap.len() * TENSOR_ALIGN, |m| m.len())
    }

    /// Sets the length to `len`. Within the current capacity the bytes are kept (they are
    /// whatever was there); beyond it, new zeroed memory replaces the old and the old
    /// contents are gone.
    pub fn reset(&mut self, len: usize) -> std::io::Result<()> {
        if len > self.capacity() {
            // The old memory goes first, so that its pages can serve the new one.
            self.map = None;
            self.heap = Vec::new();
            self.prefaulted = 0;
            if len <= Self::HEAP_MAX {
                let lines = len.div_ceil(TENSOR_ALIGN);
                self.heap
                    .try_reserve_exact(lines)
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
                self.heap.resize(lines, Line([0; TENSOR_ALIGN]));
            } else {
                self.map = Some(crate::sys::map_anonymous(len)?);
            }
        }
        self.len = len;
        Ok(())
    }

    /// Makes room for `len` bytes (as [`AlignedBuf::reset`] would, the length unchanged when
    /// the capacity suffices, else set to `len`) and faults the first `len` bytes' pages in
    /// now, in one batch (`MADV_POPULATE_WRITE` on Linux), so that writing them later takes
    /// no page faults. This commits `len` bytes of memory until the buffer is dropped. Bytes
    /// already held are kept. (Heap-backed memory was written when it was zeroed: nothing to
    /// fault in.)
    pub fn prefault(&mut self, len: usize) -> std::io::Result<()> {
        if len > self.capacity() {
            self.reset(len)?;
        }
        if len > self.prefaulted {
            if let Some(map) = self.map.as_mut() {
                // Only what is not in yet (the bytes before were populated earlier).
                crate::sys::populate_write(&mut map[self.prefaulted..len])?;
            }
            self.prefaulted = len;
        }
        Ok(())
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self.map.as_ref() {
            Some(m) => &m[..self.len],
            None => &self.heap.as_bytes()[..self.len],
        }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self.map.as_mut() {
            Some(m) => &mut m[..self.len],
            None => &mut self.heap.as_mut_bytes()[..self.len],
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
    pub(super) limits: Limits,
    pub(super) assembly: AlignedBuf,
    /// The parsed tensor table and strings of the last message, kept for the next one.
    pub(super) spare: Scratch,
    /// Fragments stamped with an older epoch are dropped unparsed.
    pub(super) min_epoch: u64,
    pub(super) stale_dropped: u64,
    /// Where an [`OwnedMessage`] taken from the reassembly buffer returns that buffer when
    /// dropped, so the next large message reuses its pages instead of faulting in new ones.
    pub(super) returned: Arc<Mutex<AlignedBuf>>,
    /// The buffer [`Message::into_owned`] copies a message that arrived whole into (apart
    /// from the reassembly buffer, so that a small message kept by the caller never takes the
    /// large buffer away from the next large message), and where it comes back.
    pub(super) copies: AlignedBuf,
    pub(super) copies_returned: Arc<Mutex<AlignedBuf>>,
    /// The message the last receive began and did not deliver.
    pub(super) dropped: Option<DroppedMessage>,
}

/// A message a receive began (its first fragment was read) and then refused or gave up:
/// what the receiver knows of it, so that a protocol can answer its sender
/// ([`FrameReceiver::dropped`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DroppedMessage {
    /// Its sequence number.
    pub sequence: u64,
    /// Its kind (`None`: a kind this version does not define).
    pub kind: Option<MessageKind>,
    /// The agent epoch it carried.
    pub epoch: u64,
}

/// What a receiver keeps from one message to the next: the last body parsed in full (a copy
/// of its prefix, its length) and, while no message holds it, its parse (see
/// [`parse_cached`]); on a different body, the parse's allocations are reused.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    pub(super) prefix: Vec<u8>,
    pub(super) len: usize,
    pub(super) parsed: Option<ParsedBody>,
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

    /// Makes the reassembly buffer hold at least `len` bytes with every page faulted in now,
    /// so that no fragmented message of up to `len` bytes received later takes a page fault
    /// (and messages too large for the ring are reassembled at copy speed from the first
    /// one). Costs `len` bytes of memory, committed until the receiver is dropped.
    pub fn reserve(&mut self, len: usize) -> std::io::Result<()> {
        {
            let mut given_back = self.returned.lock().unwrap_or_else(|e| e.into_inner());
            if given_back.capacity() > self.assembly.capacity() {
                std::mem::swap(&mut self.assembly, &mut *given_back);
            }
        }
        self.assembly.prefault(len)
    }

    /// Forgets the stream it was reading (minimum epoch, stale count, the last dropped
    /// message, the cached parse), as a new receiver would, but keeps its buffers and their
    /// faulted-in pages: for a receiver moved to a new link.
    pub fn restart(&mut self) {
        self.min_epoch = 0;
        self.stale_dropped = 0;
        self.dropped = None;
        self.spare = Scratch::default();
    }

    /// After a receive that failed: the message it had begun and dropped (over a limit,
    /// malformed, its sender gone quiet or replaced mid-message), if it had begun one. `None`
    /// after a receive that delivered a message, or that failed before a message began.
    pub fn dropped(&self) -> Option<DroppedMessage> {
        self.dropped
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

    pub(super) fn receive<'c>(
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
            copies,
            copies_returned,
            dropped,
        } = self;
        let limits = *limits;
        *dropped = None;
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
        if first.flags & FLAG_FIRST != 0 {
            *dropped = Some(DroppedMessage {
                sequence: first.sequence,
                kind: MessageKind::from_code(first.kind.into()),
                epoch: first.epoch,
            });
        } else {
            discard_next(consumer)?;
            return Err(FrameError::OutOfOrder(OrderProblem::MissingFirst {
                sequence: first.sequence,
                index: first.fragment_index,
            }));
        }
        let kind = MessageKind::from_code(first.kind.into())
            .ok_or(FrameError::BadFragment(FragmentProblem::UnknownKind {
                code: first.kind.into(),
            }))
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
                .ok_or(FrameError::OutOfOrder(OrderProblem::Vanished))?;
            let parsed = parse_cached(&grant.as_slice()[FRAGMENT_HEADER_LEN..], &limits, spare);
            return match parsed {
                Ok(mut parsed) => {
                    parsed.epoch = first.epoch;
                    *dropped = None;
                    Ok(Message {
                        storage: Storage::Ring(
                            Some(grant),
                            Buffers {
                                assembly: copies,
                                returned: copies_returned,
                            },
                        ),
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
            .ok_or(FrameError::OutOfOrder(OrderProblem::Vanished))?;
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
        // Whether each fragment's pages are faulted in (one batch) before it is copied: in a
        // new map they are all missing, and one call per fragment costs far less than a fault
        // per page in the middle of the copy (while the sender keeps filling the ring).
        let mut populate = false;
        let out: &mut [u8] = match caller.as_mut() {
            // Checked against the buffer's length above.
            Some(buffer) => &mut buffer[..total],
            None => {
                // Lazily zeroed pages: room is reserved now, memory used only as fragments
                // arrive (a new map's pages are faulted in a fragment at a time, below).
                let mut buffers = Buffers {
                    assembly: &mut *assembly,
                    returned,
                };
                populate = match buffers.ready(total) {
                    Ok(fresh) => fresh,
                    Err(_) => {
                        grant.release();
                        return Err(FrameError::OutOfMemory {
                            len: first.message_len,
                        });
                    }
                };
                assembly.as_mut_slice()
            }
        };
        let mut received = copy_fragment(grant, out, 0, populate)?;
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
                return Err(FrameError::OutOfOrder(OrderProblem::Interrupted {
                    sequence: first.sequence,
                    received: received as u64,
                    len: first.message_len,
                    next: next.sequence,
                }));
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
                return Err(FrameError::OutOfOrder(OrderProblem::NotContinuation {
                    sequence: first.sequence,
                    expected_offset: received as u64,
                    next: next.sequence,
                    index: next.fragment_index,
                    offset: next.fragment_offset,
                }));
            }
            received = copy_fragment(grant, out, received, populate)?;
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
            None => Storage::Assembled(Buffers { assembly, returned }),
        };
        *dropped = None;
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
pub(super) fn discard_next(consumer: &mut Consumer) -> Result<(), FrameError> {
    if let Some(grant) = consumer.try_peek()? {
        grant.release();
    }
    Ok(())
}

/// Reads and checks a fragment header (a copy of the bytes, not a reference into the ring).
pub(super) fn fragment_header(grant: &ReadGrant<'_>) -> Result<FragmentHeader, FrameError> {
    let bytes = grant.as_slice();
    let header = FragmentHeader::read_from_prefix(bytes)
        .map_err(|_| {
            FrameError::BadFragment(FragmentProblem::Short {
                record_len: bytes.len(),
            })
        })?
        .0;
    if header.magic != FRAME_MAGIC {
        return Err(FrameError::BadFragment(FragmentProblem::Magic {
            found: header.magic,
        }));
    }
    if header.version != FORMAT_VERSION {
        return Err(FrameError::BadFragment(FragmentProblem::Version {
            found: header.version,
        }));
    }
    if header.header_len != FRAGMENT_HEADER_LEN as u32
        || (header.flags & FLAG_CHECKSUM == 0 && header.checksum != 0)
    {
        return Err(FrameError::BadFragment(FragmentProblem::HeaderWords));
    }
    if header.flags & !(FLAG_FIRST | FLAG_LAST | FLAG_CHECKSUM) != 0 {
        return Err(FrameError::BadFragment(FragmentProblem::Flags {
            flags: header.flags,
        }));
    }
    let payload = (bytes.len() - FRAGMENT_HEADER_LEN) as u64;
    let end = header.fragment_offset.checked_add(header.fragment_len);
    if header.fragment_len != payload || end.is_none_or(|end| end > header.message_len) {
        return Err(FrameError::BadFragment(FragmentProblem::Bounds {
            offset: header.fragment_offset,
            len: header.fragment_len,
            message_len: header.message_len,
            payload,
        }));
    }
    if header.flags & FLAG_FIRST != 0 && header.fragment_offset != 0 {
        return Err(FrameError::BadFragment(FragmentProblem::FirstNotAtZero));
    }
    if header.flags & (FLAG_FIRST | FLAG_LAST) == (FLAG_FIRST | FLAG_LAST)
        && header.fragment_len != header.message_len
    {
        return Err(FrameError::BadFragment(FragmentProblem::SingleShort));
    }
    if header.flags & FLAG_CHECKSUM != 0 {
        let computed = payload_checksum(&bytes[FRAGMENT_HEADER_LEN..]);
        if computed != header.checksum {
            return Err(FrameError::BadFragment(FragmentProblem::Checksum {
                sequence: header.sequence,
                index: header.fragment_index,
                expected: header.checksum,
                computed,
            }));
        }
    }
    Ok(header)
}

/// Copies a checked fragment's body bytes into `out` at `at` (first faulting in the pages
/// they go to, in one batch, if `populate`), releases it, returns the new end.
pub(super) fn copy_fragment(
    grant: ReadGrant<'_>,
    out: &mut [u8],
    at: usize,
    populate: bool,
) -> Result<usize, FrameError> {
    let bytes = &grant.as_slice()[FRAGMENT_HEADER_LEN..];
    let end = at + bytes.len();
    if end > out.len() {
        let problem = FragmentProblem::Bounds {
            offset: at as u64,
            len: bytes.len() as u64,
            message_len: out.len() as u64,
            payload: bytes.len() as u64,
        };
        grant.release();
        return Err(FrameError::BadFragment(problem));
    }
    if populate && crate::sys::populate_write(&mut out[at..end]).is_err() {
        grant.release();
        return Err(FrameError::OutOfMemory {
            len: out.len() as u64,
        });
    }
    // Into a destination larger than the cache, bypass the cache (as streams do).
    let streaming = out.len() as u64 >= crate::stream::NON_TEMPORAL_MIN;
    crate::stream::copy_out(&mut out[at..end], bytes, streaming);
    grant.release();
    Ok(end)
}
