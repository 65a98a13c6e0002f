//! Streams: moving one buffer larger than the ring as a header record followed by chunk
//! records, with sender and receiver copying concurrently.
//!
//! # Framing
//!
//! ```text
//! record 0      stream header, exactly 64 bytes, little-endian:
//!                 0  magic        b"SHMXSTRM"
//!                 8  total_len    bytes in the stream
//!                16  chunk_len    payload bytes of every chunk but the last
//!                24  chunk_count  ceil(total_len / chunk_len) (0 for an empty stream)
//!                32  reserved, zero
//! record 1..    chunks, in order: every chunk holds exactly min(chunk_len, bytes left)
//! ```
//!
//! The sender copies each chunk from its buffer straight into a write grant and commits it;
//! the receiver copies each chunk straight from its read grant into the destination and
//! releases it. With several chunks in flight both copies run at the same time (a two-stage
//! pipeline), so a transfer costs about one memcpy of the buffer on each side.
//!
//! # Deadlines
//!
//! The `deadline` of each function bounds the whole transfer: every blocking step (waiting
//! for ring space or for the next chunk) gives up at the same instant. A transfer that fails
//! part-way (timeout, lost peer, corruption) leaves the ring in the middle of a stream: the
//! remaining chunks are still in it (receiver) or were never sent (sender). The two sides are
//! then out of step and the link should be treated as broken (closed and re-established).
//! Errors found in the stream header ([`StreamRecvError::TooLarge`], a bad magic, inconsistent
//! counts) leave the header record unreleased, so a receiver may retry with a larger buffer.

use std::time::Instant;

use crate::ring::{Consumer, Producer, ReadGrant, RecvError, ReserveError, RingCorruption};
use crate::signal::PeerLost;

/// First eight bytes of a stream header: `b"SHMXSTRM"` as a little-endian `u64`.
pub const STREAM_MAGIC: u64 = u64::from_le_bytes(*b"SHMXSTRM");

/// Payload bytes of the stream header record.
pub const STREAM_HEADER_LEN: usize = 64;

/// The default chunk never makes a record larger than this (256 KiB).
const MAX_DEFAULT_RECORD: u64 = 256 << 10;

/// The default in-flight window never exceeds this (1 MiB: four default records).
const MAX_DEFAULT_WINDOW: u64 = 4 * MAX_DEFAULT_RECORD;

/// Why a stream could not be received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamRecvError {
    /// The deadline passed before the whole stream arrived.
    #[error("timed out receiving a stream")]
    Timeout,
    /// The producer is gone and the ring holds no more of the stream.
    #[error("producer lost: {0}")]
    PeerLost(#[from] PeerLost),
    /// The ring's shared memory is corrupt.
    #[error(transparent)]
    Corrupt(#[from] RingCorruption),
    /// The stream is longer than the caller accepts; nothing was allocated or consumed.
    #[error("stream of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// `total_len` announced by the stream header.
        len: u64,
        /// The caller's limit.
        max: u64,
    },
    /// The records do not form a valid stream.
    #[error("malformed stream: {0}")]
    Malformed(#[from] MalformedStream),
    /// This process could not allocate room for the announced stream; nothing was consumed
    /// but the header.
    #[error("cannot allocate {len} bytes for the stream")]
    OutOfMemory {
        /// `total_len` announced by the stream header.
        len: u64,
    },
}

impl From<RecvError> for StreamRecvError {
    fn from(error: RecvError) -> StreamRecvError {
        match error {
            RecvError::Timeout => StreamRecvError::Timeout,
            RecvError::PeerLost(lost) => StreamRecvError::PeerLost(lost),
            RecvError::Corrupt(corrupt) => StreamRecvError::Corrupt(corrupt),
        }
    }
}

/// What was wrong with a stream's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedStream {
    /// The first record is not a 64-byte stream header.
    #[error("stream header record has {len} bytes, {expected} expected")]
    HeaderLength {
        /// Payload bytes of the record found.
        len: usize,
        /// [`STREAM_HEADER_LEN`].
        expected: usize,
    },
    /// The first record does not start with [`STREAM_MAGIC`].
    #[error("stream magic {found:#018x} found, {expected:#018x} expected")]
    Magic {
        /// The word found.
        found: u64,
        /// [`STREAM_MAGIC`].
        expected: u64,
    },
    /// `chunk_count` does not match `total_len` and `chunk_len`.
    #[error(
        "stream of {total_len} bytes in chunks of {chunk_len} cannot have {chunk_count} chunks"
    )]
    ChunkCount {
        /// Announced stream length.
        total_len: u64,
        /// Announced chunk length.
        chunk_len: u64,
        /// Announced chunk count.
        chunk_count: u64,
    },
    /// A chunk record's length differs from what the header implies.
    #[error("stream chunk {index} has {found} bytes, {expected} expected")]
    ChunkLength {
        /// Index of the chunk (0-based, not counting the header).
        index: u64,
        /// Bytes expected: `min(chunk_len, bytes left)`.
        expected: u64,
        /// Bytes in the record.
        found: usize,
    },
}

/// A chunk size that pipelines well for a ring of `capacity` bytes.
///
/// Reasoning: a chunk record is a quarter of the ring, at most 256 KiB, so at least four
/// chunks can be in flight: the sender fills one while the receiver drains another and
/// neither waits for the other's whole copy. Chunk payload = record - 64 bytes of record
/// header, so records tile a ring whose capacity is a multiple of 256 exactly and no padding
/// is needed. 256 KiB keeps the per-record cost (one notify fence per side, a cached-index
/// reload) negligible against the copy while a chunk still fits in a core's L2 cache. The
/// result is at least 64 and at most the ring's largest record.
pub fn default_chunk(capacity: u64) -> usize {
    let record = (capacity / 4).min(MAX_DEFAULT_RECORD) & !63;
    let max_record = capacity.saturating_sub(64);
    record.saturating_sub(64).max(64).min(max_record) as usize
}

/// How many bytes [`send_stream`] lets the sender run ahead of the receiver: four default
/// records (1 MiB), or the whole ring if that is smaller.
///
/// Reasoning: a sender allowed to fill a large ring runs tens of MiB ahead, so the receiver
/// reads chunks back from DRAM instead of the cache they were just written to; measured on the
/// 2-vCPU reference machine, a 1 GiB stream through a 64 MiB ring went from about 3 to about
/// 5 GB/s when the lead was capped at 0.5-1 MiB. The ring beyond the window still absorbs
/// nothing in a stream, but a larger ring helps other traffic (and single large records).
pub fn default_window(capacity: u64) -> u64 {
    capacity.min(MAX_DEFAULT_WINDOW)
}

/// Sends `data` as one stream: a header record, then `data` in chunks of `chunk` bytes,
/// keeping at most [`default_window`] bytes in flight.
///
/// `chunk == 0` picks [`default_chunk`]. A `chunk` larger than [`Producer::max_record`] (or a
/// ring too small for the 64-byte header) fails with [`ReserveError::TooLarge`] before
/// anything is sent. `deadline` bounds the whole transfer (see the module docs).
pub fn send_stream(
    producer: &mut Producer,
    data: &[u8],
    chunk: usize,
    deadline: Option<Instant>,
) -> Result<(), ReserveError> {
    let window = default_window(producer.capacity());
    send_stream_within(producer, data, chunk, window, deadline)
}

/// [`send_stream`] with an explicit in-flight window: the sender waits until at most
/// `window` bytes of the ring (record headers included) are published but not yet released
/// before it commits the next chunk (see [`Producer::reserve_within`]); `u64::MAX` uses the
/// whole ring.
pub fn send_stream_within(
    producer: &mut Producer,
    data: &[u8],
    chunk: usize,
    window: u64,
    deadline: Option<Instant>,
) -> Result<(), ReserveError> {
    let chunk = if chunk == 0 {
        default_chunk(producer.capacity())
    } else {
        chunk
    };
    let max = producer.max_record();
    if chunk > max || STREAM_HEADER_LEN > max {
        return Err(ReserveError::TooLarge {
            len: chunk.max(STREAM_HEADER_LEN),
            max,
        });
    }
    let total_len = data.len() as u64;
    let chunk_count = data.len().div_ceil(chunk) as u64;
    let mut header = [0u8; STREAM_HEADER_LEN];
    header[0..8].copy_from_slice(&STREAM_MAGIC.to_le_bytes());
    header[8..16].copy_from_slice(&total_len.to_le_bytes());
    header[16..24].copy_from_slice(&(chunk as u64).to_le_bytes());
    header[24..32].copy_from_slice(&chunk_count.to_le_bytes());
    producer.push(&header, deadline)?;
    for piece in data.chunks(chunk) {
        let mut grant = producer.reserve_within(piece.len(), window, deadline)?;
        grant.as_mut_slice().copy_from_slice(piece);
        grant.commit();
    }
    Ok(())
}

/// Streams at least this long are written to their destination with non-temporal stores.
///
/// A destination larger than the last-level cache would be written back to memory anyway;
/// cache-bypassing stores save the read-for-ownership of every destination line, which is
/// what a large `memcpy` does too.
pub(crate) const NON_TEMPORAL_MIN: u64 = 8 << 20;

/// Copies `src` into `dst` (same length), bypassing the cache if `streaming`.
#[inline]
pub(crate) fn copy_out(dst: &mut [u8], src: &[u8], streaming: bool) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if streaming {
        copy_nontemporal(dst, src);
        return;
    }
    let _ = streaming;
    dst.copy_from_slice(src);
}

/// `dst.copy_from_slice(src)` with non-temporal 16-byte stores for the aligned middle part.
#[cfg(all(target_arch = "x86_64", not(miri)))]
fn copy_nontemporal(dst: &mut [u8], src: &[u8]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    assert_eq!(dst.len(), src.len());
    let head = dst.as_ptr().align_offset(16).min(dst.len());
    dst[..head].copy_from_slice(&src[..head]);
    let body = (dst.len() - head) & !63;
    let (d, s) = (&mut dst[head..head + body], &src[head..head + body]);
    for (d, s) in d.chunks_exact_mut(64).zip(s.chunks_exact(64)) {
        // Four 16-byte loads, then four streaming stores: each step its own block (one unsafe
        // operation each), compiled to the same straight-line code.
        let (dp, sp) = (d.as_mut_ptr() as *mut __m128i, s.as_ptr() as *const __m128i);
        // SAFETY: SSE2 is part of the x86_64 baseline; both chunks are 64 bytes long, so the
        // four 16-byte loads here and the four stores below (offsets 0..4 in units of 16
        // bytes, via `wrapping_add`, which stays inside them) are in bounds; `dp` is 16-aligned
        // (`head` aligned the destination and 64 keeps it aligned); loads tolerate any
        // alignment.
        let a = unsafe { _mm_loadu_si128(sp) };
        // SAFETY: as above.
        let b = unsafe { _mm_loadu_si128(sp.wrapping_add(1)) };
        // SAFETY: as above.
        let c = unsafe { _mm_loadu_si128(sp.wrapping_add(2)) };
        // SAFETY: as above.
        let e = unsafe { _mm_loadu_si128(sp.wrapping_add(3)) };
        // SAFETY: as above.
        unsafe { _mm_stream_si128(dp, a) };
        // SAFETY: as above.
        unsafe { _mm_stream_si128(dp.wrapping_add(1), b) };
        // SAFETY: as above.
        unsafe { _mm_stream_si128(dp.wrapping_add(2), c) };
        // SAFETY: as above.
        unsafe { _mm_stream_si128(dp.wrapping_add(3), e) };
    }
    // SAFETY: SSE2 baseline; orders the streaming stores before anything this thread does
    // next (releasing the ring record, returning the buffer to the caller).
    unsafe { _mm_sfence() };
    let rest = head + body;
    dst[rest..].copy_from_slice(&src[rest..]);
}

/// A validated stream header.
#[derive(Clone, Copy, Debug)]
struct StreamHeader {
    total_len: u64,
    chunk_len: u64,
    chunk_count: u64,
}

impl StreamHeader {
    fn parse(grant: &ReadGrant<'_>) -> Result<StreamHeader, MalformedStream> {
        let bytes = grant.as_slice();
        if bytes.len() != STREAM_HEADER_LEN {
            return Err(MalformedStream::HeaderLength {
                len: bytes.len(),
                expected: STREAM_HEADER_LEN,
            });
        }
        let word = |at: usize| {
            let mut le = [0u8; 8];
            le.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(le)
        };
        let magic = word(0);
        if magic != STREAM_MAGIC {
            return Err(MalformedStream::Magic {
                found: magic,
                expected: STREAM_MAGIC,
            });
        }
        let header = StreamHeader {
            total_len: word(8),
            chunk_len: word(16),
            chunk_count: word(24),
        };
        let consistent = match (header.total_len, header.chunk_len) {
            (0, _) => header.chunk_count == 0,
            (_, 0) => false,
            (total, chunk) => header.chunk_count == total.div_ceil(chunk),
        };
        if !consistent {
            return Err(MalformedStream::ChunkCount {
                total_len: header.total_len,
                chunk_len: header.chunk_len,
                chunk_count: header.chunk_count,
            });
        }
        Ok(header)
    }
}

/// Reads and validates the stream header, leaving it unreleased if it is refused or larger
/// than `max`.
fn recv_header(
    consumer: &mut Consumer,
    max: u64,
    deadline: Option<Instant>,
) -> Result<StreamHeader, StreamRecvError> {
    let grant = consumer.peek(deadline)?;
    let header = StreamHeader::parse(&grant)?;
    if header.total_len > max {
        return Err(StreamRecvError::TooLarge {
            len: header.total_len,
            max,
        });
    }
    grant.release();
    Ok(header)
}

/// Receives the chunks announced by `header`, handing each (with its offset in the stream)
/// to `sink` before releasing it.
fn recv_chunks(
    consumer: &mut Consumer,
    header: StreamHeader,
    deadline: Option<Instant>,
    mut sink: impl FnMut(usize, &[u8]),
) -> Result<(), StreamRecvError> {
    let mut received: u64 = 0;
    for index in 0..header.chunk_count {
        let grant = consumer.peek(deadline)?;
        let expected = header.chunk_len.min(header.total_len - received);
        if grant.len() as u64 != expected {
            return Err(MalformedStream::ChunkLength {
                index,
                expected,
                found: grant.len(),
            }
            .into());
        }
        // `received + expected <= total_len`, which the caller checked fits the destination.
        sink(received as usize, grant.as_slice());
        received += expected;
        grant.release();
    }
    Ok(())
}

/// Receives one stream into `out` (cleared first), refusing streams longer than `max_len`.
///
/// The header is validated before anything is allocated; each chunk is copied straight from
/// the ring into `out` and released. `deadline` bounds the whole transfer (see the module
/// docs).
pub fn recv_stream_into(
    consumer: &mut Consumer,
    out: &mut Vec<u8>,
    max_len: u64,
    deadline: Option<Instant>,
) -> Result<(), StreamRecvError> {
    let max = max_len.min(isize::MAX as u64);
    let header = recv_header(consumer, max, deadline)?;
    out.clear();
    // `total_len <= isize::MAX`, checked by `recv_header`. The reservation is fallible: a
    // peer's header must never abort this process. Pages are touched only as chunks arrive.
    out.try_reserve_exact(header.total_len as usize)
        .map_err(|_| StreamRecvError::OutOfMemory {
            len: header.total_len,
        })?;
    recv_chunks(consumer, header, deadline, |_, chunk| {
        out.extend_from_slice(chunk)
    })
}

/// Receives one stream into the front of `out`, returning its length; streams longer than
/// `out` are refused with [`StreamRecvError::TooLarge`] before anything is consumed.
///
/// Each chunk is copied straight from the ring into `out` and released. `deadline` bounds the
/// whole transfer (see the module docs).
pub fn recv_stream_to_slice(
    consumer: &mut Consumer,
    out: &mut [u8],
    deadline: Option<Instant>,
) -> Result<usize, StreamRecvError> {
    let header = recv_header(consumer, out.len() as u64, deadline)?;
    let streaming = header.total_len >= NON_TEMPORAL_MIN;
    recv_chunks(consumer, header, deadline, |at, chunk| {
        copy_out(&mut out[at..at + chunk.len()], chunk, streaming)
    })?;
    Ok(header.total_len as usize)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ring::in_process;
    use crate::signal::Signals;
    use std::thread;
    use std::time::Duration;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 % 251) as u8).collect()
    }

    #[test]
    fn default_chunk_fits_and_tiles_the_ring() {
        assert_eq!(default_chunk(128), 64);
        assert_eq!(default_chunk(256), 64);
        assert_eq!(default_chunk(4096), 1024 - 64);
        assert_eq!(default_chunk(64 << 20), (256 << 10) - 64);
        assert_eq!(default_window(64 << 20), 1 << 20);
        assert_eq!(default_window(4096), 4096);
        for capacity in [128u64, 192, 320, 4096, 1 << 20, 1 << 30] {
            let chunk = default_chunk(capacity) as u64;
            assert!(chunk >= 64 && chunk <= capacity - 64, "{capacity}");
        }
    }

    fn round_trip(capacity: u64, len: usize, chunk: usize) {
        let (mut p, mut c) = in_process(capacity, Signals::in_process()).unwrap();
        let sent = data(len);
        let sender = {
            let sent = sent.clone();
            thread::spawn(move || send_stream(&mut p, &sent, chunk, None))
        };
        let mut out = vec![0xFF; 3];
        recv_stream_into(&mut c, &mut out, len as u64, None).unwrap();
        sender.join().unwrap().unwrap();
        assert!(out == sent, "capacity {capacity} len {len} chunk {chunk}");
    }

    #[test]
    fn streams_round_trip_through_small_rings() {
        round_trip(128, 0, 0);
        round_trip(128, 1, 0);
        round_trip(256, 1000, 0);
        round_trip(256, 1000, 7);
        round_trip(1024, 100_000, 0);
        round_trip(1088, 100_001, 300);
        round_trip(64 * 1024, 10 << 20, 0);
    }

    #[test]
    fn windowed_streams_round_trip() {
        for window in [0u64, 64, 1000, 4096, u64::MAX] {
            let (mut p, mut c) = in_process(4096, Signals::in_process()).unwrap();
            let sent = data(100_000);
            let sender = {
                let sent = sent.clone();
                thread::spawn(move || send_stream_within(&mut p, &sent, 500, window, None))
            };
            let mut out = Vec::new();
            recv_stream_into(&mut c, &mut out, u64::MAX, None).unwrap();
            sender.join().unwrap().unwrap();
            assert!(out == sent, "window {window}");
        }
    }

    #[test]
    fn stream_into_slice_reports_length() {
        let (mut p, mut c) = in_process(4096, Signals::in_process()).unwrap();
        let sent = data(50_000);
        let sender = {
            let sent = sent.clone();
            thread::spawn(move || send_stream(&mut p, &sent, 0, None))
        };
        let mut out = vec![0u8; 60_000];
        let n = recv_stream_to_slice(&mut c, &mut out, None).unwrap();
        sender.join().unwrap().unwrap();
        assert_eq!(n, 50_000);
        assert!(out[..n] == sent[..]);
    }

    #[test]
    fn large_stream_into_unaligned_slice_uses_streaming_stores_correctly() {
        let (mut p, mut c) = in_process(1 << 20, Signals::in_process()).unwrap();
        let len = (NON_TEMPORAL_MIN + 12_345) as usize;
        let sent = data(len);
        let sender = {
            let sent = sent.clone();
            thread::spawn(move || send_stream(&mut p, &sent, 1000, None))
        };
        let mut out = vec![0u8; len + 8];
        let n = recv_stream_to_slice(&mut c, &mut out[3..], None).unwrap();
        sender.join().unwrap().unwrap();
        assert_eq!(n, len);
        assert!(out[3..3 + len] == sent[..]);
        assert_eq!(&out[..3], &[0, 0, 0]);
        assert!(out[3 + len..].iter().all(|&b| b == 0));
    }

    #[test]
    fn copy_out_handles_every_alignment_and_length() {
        let src = data(300);
        for offset in 0..17 {
            for len in [0usize, 1, 15, 16, 63, 64, 65, 200, 283] {
                let mut dst = vec![0xEEu8; 300 + 17];
                copy_out(&mut dst[offset..offset + len], &src[..len], true);
                assert_eq!(&dst[offset..offset + len], &src[..len]);
                assert!(dst[..offset].iter().all(|&b| b == 0xEE));
                assert!(dst[offset + len..].iter().all(|&b| b == 0xEE));
            }
        }
    }

    #[test]
    fn too_large_is_refused_before_consuming_and_can_be_retried() {
        let (mut p, mut c) = in_process(1 << 16, Signals::in_process()).unwrap();
        send_stream(&mut p, &data(1000), 0, None).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            recv_stream_into(&mut c, &mut out, 999, None),
            Err(StreamRecvError::TooLarge {
                len: 1000,
                max: 999
            })
        );
        let mut small = [0u8; 10];
        assert_eq!(
            recv_stream_to_slice(&mut c, &mut small, None),
            Err(StreamRecvError::TooLarge { len: 1000, max: 10 })
        );
        assert_eq!(out.capacity(), 0);
        recv_stream_into(&mut c, &mut out, 1000, None).unwrap();
        assert_eq!(out, data(1000));
    }

    #[test]
    fn oversized_chunk_is_refused_before_sending() {
        let (mut p, mut c) = in_process(256, Signals::in_process()).unwrap();
        assert_eq!(
            send_stream(&mut p, &data(1000), 193, None),
            Err(ReserveError::TooLarge { len: 193, max: 192 })
        );
        assert!(c.try_peek().unwrap().is_none());
    }

    fn header_bytes(total_len: u64, chunk_len: u64, chunk_count: u64) -> [u8; 64] {
        let mut h = [0u8; 64];
        h[0..8].copy_from_slice(&STREAM_MAGIC.to_le_bytes());
        h[8..16].copy_from_slice(&total_len.to_le_bytes());
        h[16..24].copy_from_slice(&chunk_len.to_le_bytes());
        h[24..32].copy_from_slice(&chunk_count.to_le_bytes());
        h
    }

    #[test]
    fn malformed_streams_are_reported() {
        let (mut p, mut c) = in_process(4096, Signals::in_process()).unwrap();
        let mut out = Vec::new();
        let now = Some(Instant::now());

        p.try_push(b"not a header").unwrap();
        assert_eq!(
            recv_stream_into(&mut c, &mut out, 100, now),
            Err(StreamRecvError::Malformed(MalformedStream::HeaderLength {
                len: 12,
                expected: 64
            }))
        );
        c.try_peek().unwrap().unwrap().release();

        p.try_push(&[0; 64]).unwrap();
        assert!(matches!(
            recv_stream_into(&mut c, &mut out, 100, now),
            Err(StreamRecvError::Malformed(MalformedStream::Magic {
                found: 0,
                ..
            }))
        ));
        c.try_peek().unwrap().unwrap().release();

        for (total, chunk, count) in [(10, 0, 1), (10, 4, 2), (0, 4, 1), (u64::MAX, 1, 0)] {
            p.try_push(&header_bytes(total, chunk, count)).unwrap();
            assert!(matches!(
                recv_stream_into(&mut c, &mut out, u64::MAX, now),
                Err(StreamRecvError::Malformed(
                    MalformedStream::ChunkCount { .. }
                ))
            ));
            c.try_peek().unwrap().unwrap().release();
        }

        // Chunks that do not add up: 10 bytes in chunks of 4 must be 4, 4, 2.
        p.try_push(&header_bytes(10, 4, 3)).unwrap();
        p.try_push(&[1; 4]).unwrap();
        p.try_push(&[1; 3]).unwrap();
        assert_eq!(
            recv_stream_into(&mut c, &mut out, 10, now),
            Err(StreamRecvError::Malformed(MalformedStream::ChunkLength {
                index: 1,
                expected: 4,
                found: 3
            }))
        );
    }

    #[test]
    fn missing_chunks_time_out() {
        let (mut p, mut c) = in_process(4096, Signals::in_process()).unwrap();
        p.try_push(&header_bytes(10, 4, 3)).unwrap();
        p.try_push(&[1; 4]).unwrap();
        let mut out = [0u8; 10];
        let deadline = Some(Instant::now() + Duration::from_millis(20));
        assert_eq!(
            recv_stream_to_slice(&mut c, &mut out, deadline),
            Err(StreamRecvError::Timeout)
        );
    }

    #[test]
    fn sender_times_out_without_a_receiver() {
        let (mut p, _c) = in_process(4096, Signals::in_process()).unwrap();
        let deadline = Some(Instant::now() + Duration::from_millis(20));
        assert_eq!(
            send_stream(&mut p, &data(100_000), 0, deadline),
            Err(ReserveError::Timeout)
        );
    }
}
