//! Raw records → `stream::recv_stream_into` / `recv_stream_to_slice`, checked against a
//! small reference model of the stream framing (module docs of `shmex::stream`).
//!
//! Input: byte 0 selects the receive function (bit 0) and, for `recv_stream_to_slice`,
//! bytes 1..3 give the destination length (little-endian u16); the rest are records as in
//! `shmex_fuzz::split_records`.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use shmex::stream::{self, MalformedStream, StreamRecvError, STREAM_HEADER_LEN, STREAM_MAGIC};
use shmex_fuzz::{
    push_records, ring, ring_capacity_for, split_records, MAX_RECORDS, MAX_STREAM_LEN,
};

/// Ring bytes a record of `len` payload bytes takes (no wrap happens in this target).
fn record_size(len: usize) -> u64 {
    64 + (len as u64).next_multiple_of(64)
}

/// What the model predicts for one call: the result and how many records it consumes.
#[derive(Debug, PartialEq)]
enum Expect {
    Ok(Vec<u8>),
    Err(StreamRecvError),
}

fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Reference model of one receive over `records` (the records now in the ring, in order).
fn model(records: &[&[u8]], max: u64) -> (Expect, usize) {
    let Some(h) = records.first() else {
        return (Expect::Err(StreamRecvError::Timeout), 0);
    };
    if h.len() != STREAM_HEADER_LEN {
        let e = MalformedStream::HeaderLength {
            len: h.len(),
            expected: STREAM_HEADER_LEN,
        };
        return (Expect::Err(e.into()), 0);
    }
    if word(h, 0) != STREAM_MAGIC {
        let e = MalformedStream::Magic {
            found: word(h, 0),
            expected: STREAM_MAGIC,
        };
        return (Expect::Err(e.into()), 0);
    }
    let (total_len, chunk_len, chunk_count) = (word(h, 8), word(h, 16), word(h, 24));
    let consistent = match (total_len, chunk_len) {
        (0, _) => chunk_count == 0,
        (_, 0) => false,
        (t, c) => chunk_count == t.div_ceil(c),
    };
    if !consistent {
        let e = MalformedStream::ChunkCount {
            total_len,
            chunk_len,
            chunk_count,
        };
        return (Expect::Err(e.into()), 0);
    }
    if total_len > max {
        return (
            Expect::Err(StreamRecvError::TooLarge {
                len: total_len,
                max,
            }),
            0,
        );
    }
    let mut out = Vec::new();
    let mut consumed = 1;
    for index in 0..chunk_count {
        let Some(chunk) = records.get(consumed) else {
            return (Expect::Err(StreamRecvError::Timeout), consumed);
        };
        let expected = chunk_len.min(total_len - out.len() as u64);
        if chunk.len() as u64 != expected {
            let e = MalformedStream::ChunkLength {
                index,
                expected,
                found: chunk.len(),
            };
            return (Expect::Err(e.into()), consumed);
        }
        out.extend_from_slice(chunk);
        consumed += 1;
    }
    assert_eq!(out.len() as u64, total_len);
    (Expect::Ok(out), consumed)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let to_slice = mode & 1 == 1;
    let (slice_len, rest) = if to_slice && rest.len() >= 2 {
        (u16::from_le_bytes([rest[0], rest[1]]) as usize, &rest[2..])
    } else {
        (0, rest)
    };
    let records = split_records(rest);
    let (mut producer, mut consumer) = ring(ring_capacity_for(&records));
    let pushed = push_records(&mut producer, &records);
    // Records larger than the ring's largest record (only with inputs near 1 MiB) are
    // skipped; the model then works on the records that were pushed.
    let records: Vec<&[u8]> = if pushed == records.len() {
        records
    } else {
        let max = producer.max_record();
        records
            .into_iter()
            .filter(|r| r.len() <= max)
            .take(pushed)
            .collect()
    };
    let mut next = 0; // index of the first record still in the ring
    let mut out = Vec::new();
    let mut slice = vec![0u8; slice_len];
    for _ in 0..2 * MAX_RECORDS + 2 {
        let left: u64 = records[next..].iter().map(|r| record_size(r.len())).sum();
        assert_eq!(
            consumer.available_bytes().unwrap(),
            left,
            "ring holds other bytes than the model"
        );
        if next == records.len() {
            break;
        }
        let (expect, consumed) = if to_slice {
            model(&records[next..], slice_len as u64)
        } else {
            model(&records[next..], MAX_STREAM_LEN)
        };
        let got = if to_slice {
            stream::recv_stream_to_slice(&mut consumer, &mut slice, Some(Instant::now()))
                .map(|n| slice[..n].to_vec())
        } else {
            stream::recv_stream_into(
                &mut consumer,
                &mut out,
                MAX_STREAM_LEN,
                Some(Instant::now()),
            )
            .map(|()| out.clone())
        };
        let got = match got {
            Ok(v) => Expect::Ok(v),
            Err(e) => {
                let _ = e.to_string();
                Expect::Err(e)
            }
        };
        assert_eq!(got, expect, "stream receive differs from the model");
        next += consumed;
        if consumed == 0 {
            // Header refused and left in the ring (documented): a caller gives up on it.
            let grant = consumer
                .try_peek()
                .unwrap()
                .expect("the refused header is still there");
            assert_eq!(grant.as_slice(), records[next]);
            grant.release();
            next += 1;
        }
    }
});
