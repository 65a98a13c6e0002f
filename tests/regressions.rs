//! Regression tests for defects found in review: each fails without its fix.
#![cfg(not(loom))]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmex::frame::{DType, DataKind, Dxo, FrameError, FrameReceiver, FrameSender, ViewError};
use shmex::link::{CreateOptions, Link};
use shmex::ring::{self, Producer, RecvError};
use shmex::segment::{Segment, SegmentName};
use shmex::signal::{PeerCheck, PeerLost, Signals, WaitStrategy};
use shmex::stream::{self, StreamRecvError};

fn soon() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(30))
}

/// A peer that publishes one last record and then reports itself closed, in the window
/// between the consumer's last look at the ring and its liveness check.
struct LeavesAfterLastRecord(Mutex<Option<Producer>>);

impl PeerCheck for LeavesAfterLastRecord {
    fn check(&self) -> Result<(), PeerLost> {
        if let Some(mut producer) = self.0.lock().unwrap().take() {
            producer.try_push(b"last result").unwrap();
        }
        Err(PeerLost::Closed)
    }
}

#[test]
fn a_record_published_just_before_the_peer_leaves_is_delivered_not_lost() {
    let check = Arc::new(LeavesAfterLastRecord(Mutex::new(None)));
    let signals = Signals {
        peer: check.clone(),
        strategy: WaitStrategy::default()
            .spin(Duration::ZERO)
            .poll_interval(Duration::from_millis(1)),
        ..Signals::in_process()
    };
    let (producer, mut consumer) = ring::in_process(4096, signals).unwrap();
    *check.0.lock().unwrap() = Some(producer);
    let mut out = Vec::new();
    consumer.pop_into(&mut out, soon()).unwrap();
    assert_eq!(out, b"last result");
    // With the ring empty, the departure is reported.
    assert!(matches!(
        consumer.pop_into(&mut out, soon()),
        Err(RecvError::PeerLost(PeerLost::Closed))
    ));
}

#[test]
fn a_stream_header_announcing_exabytes_is_an_error_not_an_abort() {
    let (mut tx, mut rx) = ring::in_process(4096, Signals::in_process()).unwrap();
    let mut header = [0u8; stream::STREAM_HEADER_LEN];
    header[0..8].copy_from_slice(&stream::STREAM_MAGIC.to_le_bytes());
    header[8..16].copy_from_slice(&(1u64 << 62).to_le_bytes());
    header[16..24].copy_from_slice(&(1u64 << 62).to_le_bytes());
    header[24..32].copy_from_slice(&1u64.to_le_bytes());
    tx.push(&header, soon()).unwrap();
    let mut out = Vec::new();
    assert!(matches!(
        stream::recv_stream_into(&mut rx, &mut out, u64::MAX, soon()),
        Err(StreamRecvError::OutOfMemory { len }) if len == 1 << 62
    ));
}

/// Sends `dxo` through an in-process ring and returns what arrived.
fn through_a_ring(dxo: &Dxo<'_>) -> shmex::frame::OwnedMessage {
    let (mut tx, mut rx) = ring::in_process(1 << 16, Signals::in_process()).unwrap();
    let data = shmex::frame::Envelope::new(shmex::frame::MessageKind::Data);
    FrameSender::new()
        .send(&mut tx, &data, Some(dxo), soon())
        .unwrap();
    let mut receiver = FrameReceiver::default();
    let msg = receiver.recv(&mut rx, soon()).unwrap();
    msg.to_owned_message().unwrap()
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn an_announced_huge_message_costs_no_memory_until_its_bytes_arrive() {
    // Encode a real message, then rewrite its first fragment to announce 8 GiB.
    let (mut tx, mut rx) = ring::in_process(1 << 20, Signals::in_process()).unwrap();
    let data = [1.0f32; 4];
    let dxo = Dxo::new(DataKind::Weights)
        .with_tensor("w", &[4], &data)
        .unwrap();
    let task = shmex::frame::Envelope::new(shmex::frame::MessageKind::Task);
    FrameSender::new()
        .send(&mut tx, &task, Some(&dxo), soon())
        .unwrap();
    let mut raw = Vec::new();
    rx.try_pop_into(&mut raw).unwrap();
    raw[8..12].copy_from_slice(&1u32.to_le_bytes()); // first fragment only
    raw[32..40].copy_from_slice(&(8u64 << 30).to_le_bytes()); // message_len
    tx.push(&raw, soon()).unwrap();
    let before = resident_bytes();
    let mut receiver = FrameReceiver::default();
    assert!(matches!(
        receiver.recv(&mut rx, Some(Instant::now() + Duration::from_millis(20))),
        Err(FrameError::Timeout)
    ));
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown < 256 << 20,
        "receiving one fragment made {grown} bytes resident"
    );
}

#[test]
fn bool_tensors_are_validated_copies() {
    let bytes = [0u8, 1, 2];
    let dxo = Dxo::new(DataKind::Weights)
        .with_tensor_bytes("b", DType::Bool, &[3], &bytes)
        .unwrap();
    let msg = through_a_ring(&dxo);
    assert_eq!(
        msg.tensor_by_name("b").unwrap().to_bools(),
        Err(ViewError::InvalidBool)
    );
    assert_eq!(msg.tensor_by_name("b").unwrap().bytes(), &bytes);
}

#[test]
fn unlink_leaves_a_segment_created_since_under_the_same_name() {
    let name = SegmentName::new(format!("shmex.test.reg.unlink.{}", std::process::id())).unwrap();
    let first = Segment::create(&name, 8192, true, false).unwrap();
    // The name is removed (as a reclaimer would) and another process creates a segment there.
    first.unlink().unwrap();
    let second = Segment::create(&name, 8192, true, false).unwrap();
    // The first owner cleaning up must not remove the second's name.
    first.unlink().unwrap();
    assert_eq!(shmex::segment::owner_lock_held(&name).unwrap(), Some(true));
    second.unlink().unwrap();
    assert_eq!(shmex::segment::owner_lock_held(&name).unwrap(), None);
}

#[test]
fn a_zero_heartbeat_interval_is_raised_not_spun_on() {
    let options = CreateOptions::default()
        .ring_capacity(64 * 1024)
        .heartbeat_interval(Duration::ZERO);
    let (exchanger, _agent) = Link::in_process(&options).unwrap();
    let side = exchanger.side(shmex::layout::Role::Exchanger).unwrap();
    assert_eq!(
        side.heartbeat_interval,
        shmex::control::MIN_HEARTBEAT_INTERVAL
    );
}

#[test]
fn meta_floats_arrive_bit_for_bit() {
    // Found by the frame_roundtrip fuzz target: without serde_json's exact float parsing this
    // value came back one ULP off.
    let values = [
        5.064714298140929e-306,
        0.1,
        1.0 / 3.0,
        f64::MAX,
        f64::MIN_POSITIVE,
        -0.0,
    ];
    let mut dxo = Dxo::new(DataKind::Metrics);
    for (i, v) in values.iter().enumerate() {
        dxo = dxo.with_meta(format!("m{i}"), *v);
    }
    let msg = through_a_ring(&dxo);
    for (i, v) in values.iter().enumerate() {
        let got = msg.meta()[&format!("m{i}")].as_f64().unwrap();
        assert_eq!(got.to_bits(), v.to_bits(), "meta m{i}");
    }
}
