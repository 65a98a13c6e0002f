//! The wire format: messages carrying FLARE-style DXO data (a data kind, a meta dictionary and
//! named tensors) over a ring, with zero-copy loan on the send side and in-place views on the
//! receive side, and fragmentation of messages larger than the ring.
//!
//! A message is a 64-byte body header, the task id and name, the meta dictionary (JSON), a
//! table of fixed-size tensor entries, the tensor names, and then the data region: opaque
//! bytes (APP_DEFINED only) and every tensor, each starting on a 64-byte boundary. It travels
//! as one or more ring records ("fragments"), each a 64-byte fragment header followed by a
//! slice of the body. A message that fits in one record travels whole, so the receiver can
//! view its tensors in place in the ring; a larger one is cut into fragments that the receiver
//! copies into its destination as they arrive, so memory stays bounded by the ring and both
//! processes copy at once. `docs/wire-format.md` describes every byte.
//!
//! Everything a peer wrote is untrusted: [`Limits`] are checked before any allocation, every
//! offset and length is bounds-checked, and a malformed message is a typed [`FrameError`] that
//! leaves the link usable for the next message.
//!
//! The files follow the wire format's parts: `kinds` (message kinds, return codes, data kinds,
//! dtypes), `dxo` (what a sender builds), `header` (fixed headers, envelope, limits), `send`
//! (layout and fragmentation), `loan` (messages built in place), `parse` (the only code that
//! decodes a body the peer wrote: audit it on its own), `receive` (fragments, reassembly),
//! `message` (received messages and tensor views) and `errors`.
#![deny(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::ring::{
    Consumer, Producer, ReadGrant, RecvError, Reservation, ReserveError, RingCorruption, RingHold,
    WriteGrant,
};
use crate::signal::PeerLost;

mod dxo;
mod errors;
mod header;
mod kinds;
mod loan;
mod message;
mod parse;
mod receive;
mod send;

pub use dxo::*;
pub use errors::*;
pub use header::*;
pub use kinds::*;
pub use loan::*;
pub use message::*;
use parse::*;
pub use receive::*;
pub use send::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::Signals;
    use std::time::Duration;

    /// A detached loan is filled across calls with its producer beside it, is invisible
    /// until committed, and its committed record can be copied back and sent again to
    /// another incarnation.
    #[test]
    fn detached_loan_commits_and_resends_to_another_epoch() {
        let (mut tx, mut rx) = crate::ring::in_process(64 * 1024, Signals::in_process()).unwrap();
        let mut sender = FrameSender::new().with_checksum(true);
        let spec = LoanSpec::new(DataKind::Weights)
            .tensor("w", DType::F32, &[4])
            .meta("k", 1);
        let envelope = Envelope::new(MessageKind::Task)
            .with_task("t1", "train")
            .with_epoch(3);
        let prepared = FrameSender::prepare(&envelope, &spec).unwrap();
        let loan = sender
            .loan_detached(&mut tx, &prepared, None, None)
            .unwrap();
        let index = loan.index_of(&mut tx, "w").unwrap().unwrap();
        loan.tensor_mut::<f32>(&mut tx, index)
            .unwrap()
            .copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
        let mut receiver = FrameReceiver::default();
        let soon = Some(Instant::now() + Duration::from_millis(20));
        assert!(matches!(
            receiver.recv(&mut rx, soon),
            Err(FrameError::Timeout)
        ));
        loan.set_epoch(&mut tx, 4).unwrap();
        let committed = loan.commit(&mut tx).unwrap();
        let first = receiver.recv(&mut rx, None).unwrap();
        assert_eq!((first.epoch(), first.task_id()), (4, "t1"));
        let w = first.tensor_by_name("w").unwrap().to_vec::<f32>().unwrap();
        assert_eq!(w, [1.0, 2.0, 3.0, 4.0]);
        let sequence = first.sequence();
        drop(first);
        let mut copy = DetachedLoan::copy_committed(&tx, committed).unwrap();
        let again = sender.resend(&mut tx, &mut copy, 5, None, None).unwrap();
        let second = receiver.recv(&mut rx, None).unwrap();
        assert_eq!((second.epoch(), second.sequence()), (5, again));
        assert_ne!(again, sequence);
        let w = second.tensor_by_name("w").unwrap().to_vec::<f32>().unwrap();
        assert_eq!(w, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(second.meta()["k"], 1);
    }

    /// An owned message taken from the reassembly buffer gives that buffer back to the
    /// receiver's slot when dropped, and the next large message takes it from there.
    #[test]
    fn dropped_owned_message_returns_its_buffer_to_the_receiver() {
        let (mut tx, mut rx) = crate::ring::in_process(64 * 1024, Signals::in_process()).unwrap();
        let data = vec![1.5f32; 100_000];
        let dxo = Dxo::new(DataKind::Weights)
            .with_tensor("w", &[100_000], &data)
            .unwrap();
        let soon = || Some(Instant::now() + Duration::from_secs(30));
        let slot = |r: &FrameReceiver| r.returned.lock().unwrap().capacity();
        let mut receiver = FrameReceiver::default();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut sender = FrameSender::new();
                for _ in 0..2 {
                    let task = Envelope::new(MessageKind::Task);
                    sender.send(&mut tx, &task, Some(&dxo), soon()).unwrap();
                }
            });
            let owned = receiver
                .recv(&mut rx, soon())
                .unwrap()
                .into_owned()
                .unwrap();
            assert_eq!(slot(&receiver), 0);
            drop(owned);
            assert!(slot(&receiver) >= 400_000, "the buffer came back");
            let again = receiver.recv(&mut rx, soon()).unwrap();
            assert!(!again.is_in_ring());
            drop(again);
            assert_eq!(slot(&receiver), 0, "the next message took it");
        });
    }

    /// Messages that arrive whole and are kept (`into_owned`) are copied into one buffer the
    /// receiver reuses once the owned message is dropped (no new map per message), apart from
    /// the reassembly buffer: a small message kept does not take the large buffer.
    #[test]
    fn owned_copies_reuse_one_buffer_apart_from_the_reassembly_buffer() {
        let (mut tx, mut rx) = crate::ring::in_process(64 * 1024, Signals::in_process()).unwrap();
        let small: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let large: Vec<f32> = (0..100_000).map(|i| i as f32).collect();
        let dxo = |data: &'static [f32]| {
            Dxo::new(DataKind::Weights)
                .with_tensor("w", &[data.len() as u64], data)
                .unwrap()
        };
        let small: &'static [f32] = Box::leak(small.into_boxed_slice());
        let large: &'static [f32] = Box::leak(large.into_boxed_slice());
        let soon = || Some(Instant::now() + Duration::from_secs(30));
        let mut receiver = FrameReceiver::default();
        receiver.reserve(1 << 20).unwrap();
        let reserved = receiver.assembly.map.as_ref().unwrap().as_ptr();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut sender = FrameSender::new();
                for data in [small, small, large, small] {
                    let task = Envelope::new(MessageKind::Task);
                    sender
                        .send(&mut tx, &task, Some(&dxo(data)), soon())
                        .unwrap();
                }
            });
            let first = receiver.recv(&mut rx, soon()).unwrap();
            assert!(first.is_in_ring());
            let first = first.into_owned().unwrap();
            let w = |m: &OwnedMessage| m.tensor_by_name("w").unwrap().to_vec::<f32>().unwrap();
            assert_eq!(w(&first), small);
            let first_at = first.body().as_ptr();
            drop(first);
            let second = receiver
                .recv(&mut rx, soon())
                .unwrap()
                .into_owned()
                .unwrap();
            assert_eq!(second.body().as_ptr(), first_at, "the same buffer again");
            assert_eq!(w(&second), small);
            // Kept while a large message arrives: the reserved buffer is still there for it.
            let third = receiver
                .recv(&mut rx, soon())
                .unwrap()
                .into_owned()
                .unwrap();
            assert_eq!(
                third.body().as_ptr(),
                reserved,
                "reassembled in the reserved buffer"
            );
            assert_eq!(w(&third), large);
            assert_eq!(w(&second), small);
            drop((second, third));
            let fourth = receiver
                .recv(&mut rx, soon())
                .unwrap()
                .into_owned()
                .unwrap();
            assert_eq!(fourth.body().as_ptr(), first_at);
            assert_eq!(w(&fourth), small);
        });
    }

    /// A receiver that reserved its buffer up front reassembles a larger-than-ring message
    /// into that buffer (no new map), and keeps it across a restart for a new link.
    #[test]
    fn reserved_buffer_receives_without_a_new_map_and_survives_restart() {
        let (mut tx, mut rx) = crate::ring::in_process(64 * 1024, Signals::in_process()).unwrap();
        let data: Vec<f32> = (0..100_000).map(|i| i as f32).collect();
        let dxo = Dxo::new(DataKind::Weights)
            .with_tensor("w", &[100_000], &data)
            .unwrap();
        let soon = || Some(Instant::now() + Duration::from_secs(30));
        let mut receiver = FrameReceiver::default();
        receiver.reserve(1 << 20).unwrap();
        let reserved = receiver.assembly.map.as_ref().unwrap().as_ptr();
        assert_eq!(receiver.assembly.prefaulted, 1 << 20);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut sender = FrameSender::new();
                for _ in 0..2 {
                    let task = Envelope::new(MessageKind::Task);
                    sender.send(&mut tx, &task, Some(&dxo), soon()).unwrap();
                }
            });
            for round in 0..2 {
                let message = receiver.recv(&mut rx, soon()).unwrap();
                assert!(!message.is_in_ring());
                let w = message
                    .tensor_by_name("w")
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap();
                assert_eq!(w, data);
                drop(message);
                let map = receiver.assembly.map.as_ref().unwrap();
                assert_eq!(map.as_ptr(), reserved, "round {round}: the reserved buffer");
                receiver.set_min_epoch(7);
                receiver.restart();
                assert_eq!(receiver.min_epoch, 0);
            }
        });
    }

    /// Meta entries set on top of a DXO's own encode to the bytes of the merged map: added
    /// before, between and after the DXO's keys, replacing one, or alone.
    #[test]
    fn extra_meta_encodes_as_the_merged_map() {
        let own: Map<String, Value> = serde_json::from_str(
            r#"{"b": 1, "data_kind": "OLD", "m": [1, 2], "z": {"q": "\"x\""}}"#,
        )
        .unwrap();
        let extras: [&[(&str, Value)]; 4] = [
            &[],
            &[("a", Value::from(0)), ("data_kind", Value::from("WEIGHTS"))],
            &[("c", Value::from(3.5)), ("zz", Value::Null)],
            &[("data_kind", Value::from("WEIGHTS"))],
        ];
        for base in [None, Some(Map::new()), Some(own)] {
            for extra in extras {
                let mut merged = base.clone().unwrap_or_default();
                for (key, value) in extra {
                    merged.insert(key.to_string(), value.clone());
                }
                let expected = if merged.is_empty() {
                    Vec::new()
                } else {
                    serde_json::to_vec(&merged).unwrap()
                };
                let got = encode_meta(base.as_ref(), extra);
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    String::from_utf8(expected).unwrap(),
                    "base {base:?}, extra {extra:?}"
                );
            }
        }
    }

    /// Small buffers come from the allocator, larger ones are maps; both are 64-byte aligned
    /// and zeroed, and growing from one to the other keeps working.
    #[test]
    fn aligned_buf_is_heap_backed_up_to_heap_max() {
        let mut buf = AlignedBuf::zeroed(4096 + 100).unwrap();
        assert!(buf.map.is_none());
        assert_eq!(buf.capacity(), 4096 + 128);
        assert_eq!(buf.as_slice().as_ptr() as usize % TENSOR_ALIGN, 0);
        assert!(buf.as_slice().iter().all(|&b| b == 0));
        buf.as_mut_slice()[4195] = 7;
        buf.reset(AlignedBuf::HEAP_MAX).unwrap();
        assert!(buf.map.is_none());
        assert!(buf.as_slice().iter().all(|&b| b == 0));
        buf.reset(AlignedBuf::HEAP_MAX + 1).unwrap();
        assert!(buf.map.is_some());
        assert_eq!(buf.as_slice().as_ptr() as usize % TENSOR_ALIGN, 0);
        assert!(buf.as_slice().iter().all(|&b| b == 0));
        buf.reset(10).unwrap();
        assert!(buf.map.is_some(), "shrinking keeps the memory");
        assert_eq!(buf.len(), 10);
    }
}
