//! Frame layer tests over in-process rings: round trips of every dtype, empty and zero
//! tensors, opaque bytes, large meta, loans, fragmentation; typed errors for malformed input
//! with the link still usable afterwards; limits enforced; property tests.
#![cfg(not(loom))]

use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::json;
use shmex::frame::{
    AlignedBuf, DType, DataKind, Dxo, DxoError, Envelope, FrameError, FrameReceiver, FrameSender,
    Limits, LoanSpec, MessageKind, ReturnCode, ViewError, BF16, F16,
};
use shmex::ring::{self, Consumer, Producer};
use shmex::signal::Signals;

fn soon() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(30))
}

fn ring_pair(capacity: u64) -> (Producer, Consumer) {
    ring::in_process(capacity, Signals::in_process()).unwrap()
}

fn task<'a>(id: &'a str) -> Envelope<'a> {
    Envelope::new(MessageKind::Task).with_task(id, "train")
}

#[test]
fn every_dtype_round_trips_in_place() {
    let (mut tx, mut rx) = ring_pair(1 << 20);
    let f16s = [F16(0x3c00), F16(0xc000)];
    let bf16s = [BF16(0x3f80)];
    let f32s = [1.5f32, -2.0, 3.25];
    let f64s = [1e300f64, -0.0];
    let i8s = [-128i8, 127];
    let i16s = [-300i16];
    let i32s = [i32::MIN, 7];
    let i64s = [i64::MAX];
    let u8s = [0u8, 255, 9];
    let u16s = [65535u16];
    let u32s = [u32::MAX, 1];
    let u64s = [u64::MAX, 0, 42];
    let bools = [true, false, true, true];
    let dxo = Dxo::new(DataKind::Weights)
        .with_tensor("f16", &[2], &f16s)
        .unwrap()
        .with_tensor("bf16", &[1], &bf16s)
        .unwrap()
        .with_tensor("f32", &[3], &f32s)
        .unwrap()
        .with_tensor("f64", &[2], &f64s)
        .unwrap()
        .with_tensor("i8", &[2], &i8s)
        .unwrap()
        .with_tensor("i16", &[1], &i16s)
        .unwrap()
        .with_tensor("i32", &[2], &i32s)
        .unwrap()
        .with_tensor("i64", &[1], &i64s)
        .unwrap()
        .with_tensor("u8", &[3], &u8s)
        .unwrap()
        .with_tensor("u16", &[1], &u16s)
        .unwrap()
        .with_tensor("u32", &[2], &u32s)
        .unwrap()
        .with_tensor("u64", &[3], &u64s)
        .unwrap()
        .with_tensor("bool", &[2, 2], &bools)
        .unwrap();
    let mut sender = FrameSender::new();
    let seq = sender
        .send(&mut tx, &task("t1"), Some(&dxo), soon())
        .unwrap();
    let mut receiver = FrameReceiver::default();
    let msg = receiver.recv(&mut rx, soon()).unwrap();
    assert!(msg.is_in_ring());
    assert_eq!(msg.sequence(), seq);
    assert_eq!(msg.kind(), MessageKind::Task);
    assert_eq!(msg.task_id(), "t1");
    assert_eq!(msg.task_name(), "train");
    assert_eq!(msg.data_kind(), Some(DataKind::Weights));
    assert_eq!(msg.tensor_count(), 13);
    let t = |name: &str| msg.tensor_by_name(name).unwrap();
    assert_eq!(t("f16").as_slice::<F16>().unwrap(), &f16s);
    assert_eq!(t("bf16").as_slice::<BF16>().unwrap(), &bf16s);
    assert_eq!(t("f32").as_slice::<f32>().unwrap(), &f32s);
    assert_eq!(t("f64").as_slice::<f64>().unwrap(), &f64s);
    assert_eq!(t("i8").as_slice::<i8>().unwrap(), &i8s);
    assert_eq!(t("i16").as_slice::<i16>().unwrap(), &i16s);
    assert_eq!(t("i32").as_slice::<i32>().unwrap(), &i32s);
    assert_eq!(t("i64").as_slice::<i64>().unwrap(), &i64s);
    assert_eq!(t("u8").as_slice::<u8>().unwrap(), &u8s);
    assert_eq!(t("u16").as_slice::<u16>().unwrap(), &u16s);
    assert_eq!(t("u32").as_slice::<u32>().unwrap(), &u32s);
    assert_eq!(t("u64").as_slice::<u64>().unwrap(), &u64s);
    assert_eq!(t("bool").to_bools().unwrap(), bools.to_vec());
    assert_eq!(t("bool").shape(), &[2, 2]);
    for view in msg.tensors() {
        assert_eq!(
            view.bytes().as_ptr() as usize % 64,
            0,
            "{} is 64-byte aligned",
            view.name()
        );
    }
    assert_eq!(
        t("f32").as_slice::<u32>(),
        Err(ViewError::WrongDType {
            actual: DType::F32,
            asked: DType::U32
        })
    );
    let mut out = [0f32; 3];
    t("f32").copy_to(&mut out).unwrap();
    assert_eq!(out, f32s);
    assert_eq!(t("u64").to_vec::<u64>().unwrap(), u64s.to_vec());
    let owned = msg.to_owned_message().unwrap();
    msg.release();
    assert_eq!(
        owned
            .tensor_by_name("i32")
            .unwrap()
            .as_slice::<i32>()
            .unwrap(),
        &i32s
    );
    assert_eq!(owned.task_id(), "t1");
}

#[test]
fn empty_tensors_no_tensors_no_dxo_and_opaque_bytes() {
    let (mut tx, mut rx) = ring_pair(1 << 16);
    let mut sender = FrameSender::new();
    let mut receiver = FrameReceiver::default();
    let empty: [f32; 0] = [];
    let dxo = Dxo::new(DataKind::Metrics)
        .with_tensor("nothing", &[0, 5], &empty)
        .unwrap()
        .with_meta("accuracy", 0.93);
    sender
        .send(&mut tx, &task("a"), Some(&dxo), soon())
        .unwrap();
    let msg = receiver.recv(&mut rx, soon()).unwrap();
    let view = msg.tensor(0).unwrap();
    assert!(view.is_empty());
    assert_eq!(view.shape(), &[0, 5]);
    assert_eq!(view.as_slice::<f32>().unwrap(), &empty);
    assert_eq!(msg.meta()["accuracy"], json!(0.93));
    drop(msg);

    sender
        .send(
            &mut tx,
            &task("b"),
            Some(&Dxo::new(DataKind::Weights)),
            soon(),
        )
        .unwrap();
    let msg = receiver.recv(&mut rx, soon()).unwrap();
    assert_eq!(msg.tensor_count(), 0);
    assert!(msg.has_dxo());
    drop(msg);

    let bye = Envelope::new(MessageKind::Bye);
    sender.send(&mut tx, &bye, None, soon()).unwrap();
    let msg = receiver.recv(&mut rx, soon()).unwrap();
    assert_eq!(msg.kind(), MessageKind::Bye);
    assert!(!msg.has_dxo());
    assert_eq!(msg.data_kind(), None);
    drop(msg);

    let blob: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let dxo = Dxo::new(DataKind::AppDefined).with_opaque(&blob).unwrap();
    let reply = Envelope::new(MessageKind::Result)
        .with_task("c", "train")
        .with_rc(ReturnCode::EarlyTermination);
    sender.send(&mut tx, &reply, Some(&dxo), soon()).unwrap();
    let msg = receiver.recv(&mut rx, soon()).unwrap();
    assert_eq!(msg.opaque(), &blob[..]);
    assert_eq!(msg.rc(), ReturnCode::EarlyTermination);
    assert_eq!(msg.data_kind(), Some(DataKind::AppDefined));
}

#[test]
fn large_meta_round_trips() {
    let (mut tx, mut rx) = ring_pair(4 << 20);
    let mut dxo = Dxo::new(DataKind::Weights)
        .with_meta("current_round", 7)
        .with_meta("total_round", 100);
    let history: Vec<f64> = (0..50_000).map(|i| i as f64 * 0.5).collect();
    dxo = dxo.with_meta(
        "initial_metrics",
        json!({ "history": history, "nested": {"a": [1, 2, {"b": null}]} }),
    );
    let mut sender = FrameSender::new();
    sender
        .send(&mut tx, &task("m"), Some(&dxo), soon())
        .unwrap();
    let mut receiver = FrameReceiver::default();
    let msg = receiver.recv(&mut rx, soon()).unwrap();
    assert_eq!(msg.meta(), dxo.meta());
}

#[test]
fn builder_rejects_bad_tensors() {
    let data = [1.0f32; 6];
    let dxo = Dxo::new(DataKind::Weights)
        .with_tensor("w", &[2, 3], &data)
        .unwrap();
    assert_eq!(
        dxo.clone().with_tensor("w", &[6], &data).unwrap_err(),
        DxoError::DuplicateName("w".into())
    );
    assert!(matches!(
        Dxo::new(DataKind::Weights).with_tensor("w", &[2, 4], &data),
        Err(DxoError::ShapeMismatch {
            expected: Some(32),
            actual: 24,
            ..
        })
    ));
    assert!(matches!(
        Dxo::new(DataKind::Weights).with_tensor("w", &[u64::MAX, 2], &data),
        Err(DxoError::ShapeMismatch { expected: None, .. })
    ));
    assert_eq!(
        Dxo::new(DataKind::Weights)
            .with_tensor("", &[6], &data)
            .unwrap_err(),
        DxoError::EmptyName
    );
    assert!(matches!(
        Dxo::new(DataKind::Weights).with_tensor("w", &[1; 9], &data[..1]),
        Err(DxoError::TooManyDims { ndim: 9, .. })
    ));
    assert_eq!(
        Dxo::new(DataKind::Weights).with_opaque(b"x").unwrap_err(),
        DxoError::OpaqueNotAppDefined(DataKind::Weights)
    );
    assert_eq!("bf16".parse::<DType>(), Ok(DType::BF16));
    assert!("complex64".parse::<DType>().is_err());
    assert_eq!("WEIGHT_DIFF".parse::<DataKind>(), Ok(DataKind::WeightDiff));
    assert_eq!(
        ReturnCode::ExecutionException.to_string(),
        "EXECUTION_EXCEPTION"
    );
    assert_eq!(
        "TASK_ABORTED".parse::<ReturnCode>(),
        Ok(ReturnCode::TaskAborted)
    );
}

#[test]
fn message_larger_than_the_ring_is_fragmented_and_reassembled() {
    let (mut tx, mut rx) = ring_pair(256 * 1024);
    let tensors: Vec<Vec<f32>> = (0..10)
        .map(|i| (0..100_000).map(|j| (i * 1_000_000 + j) as f32).collect())
        .collect();
    let mut dxo = Dxo::new(DataKind::Weights).with_meta("current_round", 1);
    for (i, t) in tensors.iter().enumerate() {
        dxo = dxo
            .with_tensor(format!("layer{i}"), &[100, 1000], t)
            .unwrap();
    }
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut sender = FrameSender::new();
            for _ in 0..3 {
                sender
                    .send(&mut tx, &task("big"), Some(&dxo), soon())
                    .unwrap();
            }
        });
        let mut receiver = FrameReceiver::default();
        for _ in 0..3 {
            let msg = receiver.recv(&mut rx, soon()).unwrap();
            assert!(!msg.is_in_ring(), "4 MB cannot fit a 256 KiB ring");
            assert_eq!(msg.tensor_count(), 10);
            for (i, view) in msg.tensors().enumerate() {
                assert_eq!(view.name(), format!("layer{i}"));
                assert_eq!(view.as_slice::<f32>().unwrap(), &tensors[i][..]);
            }
        }
    });
}

#[test]
fn loan_fills_in_place_and_receiver_views_in_place() {
    let (mut tx, mut rx) = ring_pair(1 << 20);
    let mut sender = FrameSender::new();
    let spec = LoanSpec::new(DataKind::WeightDiff)
        .meta("current_round", 2)
        .tensor("w", DType::F32, &[16, 16])
        .tensor("mask", DType::U8, &[7]);
    let mut loan = sender.loan(&mut tx, &task("l"), &spec, soon()).unwrap();
    for (i, x) in loan.tensor_mut::<f32>(0).unwrap().iter_mut().enumerate() {
        *x = i as f32;
    }
    loan.tensor_mut::<u8>(1).unwrap().fill(3);
    assert!(matches!(
        loan.tensor_mut::<f64>(0),
        Err(ViewError::WrongDType { .. })
    ));
    assert_eq!(loan.index_of("mask"), Some(1));
    loan.commit();
    let mut receiver = FrameReceiver::default();
    let msg = receiver.recv(&mut rx, soon()).unwrap();
    assert!(msg.is_in_ring());
    let w = msg.tensor_by_name("w").unwrap().as_slice::<f32>().unwrap();
    assert_eq!(w.len(), 256);
    assert_eq!(w[255], 255.0);
    assert_eq!(
        msg.tensor_by_name("mask")
            .unwrap()
            .as_slice::<u8>()
            .unwrap(),
        &[3; 7]
    );
    assert_eq!(msg.meta()["current_round"], json!(2));
}

#[test]
fn abandoned_loan_sends_nothing_and_too_large_loan_is_refused() {
    let (mut tx, mut rx) = ring_pair(64 * 1024);
    let mut sender = FrameSender::new();
    let spec = LoanSpec::new(DataKind::Weights).tensor("w", DType::F32, &[10]);
    {
        // Taken and never committed: abandoned when it goes out of scope.
        let _abandoned = sender.loan(&mut tx, &task("x"), &spec, soon()).unwrap();
    }
    assert!(rx.try_peek().unwrap().is_none());
    let huge = LoanSpec::new(DataKind::Weights).tensor("w", DType::F32, &[1 << 20]);
    assert!(matches!(
        sender.loan(&mut tx, &task("x"), &huge, soon()),
        Err(shmex::frame::LoanError::Send(
            shmex::frame::SendError::TooLargeForLoan { .. }
        ))
    ));
    let dup = LoanSpec::new(DataKind::Weights)
        .tensor("w", DType::F32, &[1])
        .tensor("w", DType::F32, &[1]);
    assert!(matches!(
        sender.loan(&mut tx, &task("x"), &dup, soon()),
        Err(shmex::frame::LoanError::Dxo(DxoError::DuplicateName(_)))
    ));
}

/// Encodes one valid message and returns its raw record bytes.
fn encoded(dxo: Option<&Dxo<'_>>) -> Vec<u8> {
    let (mut tx, mut rx) = ring_pair(1 << 20);
    FrameSender::new()
        .send(&mut tx, &task("raw"), dxo, soon())
        .unwrap();
    let mut raw = Vec::new();
    assert!(rx.try_pop_into(&mut raw).unwrap());
    raw
}

fn sample_dxo(data: &[f32]) -> Dxo<'_> {
    Dxo::new(DataKind::Weights)
        .with_meta("current_round", 1)
        .with_tensor("a", &[2], &data[..2])
        .unwrap()
        .with_tensor("b", &[2], &data[2..4])
        .unwrap()
}

/// Pushes `raw` then a valid message; the first must fail with an error `check` accepts, the
/// second must arrive intact.
fn assert_rejected_then_usable(raw: &[u8], check: impl Fn(&FrameError) -> bool) {
    let data = [1.0f32, 2.0, 3.0, 4.0];
    let (mut tx, mut rx) = ring_pair(1 << 20);
    tx.push(raw, soon()).unwrap();
    FrameSender::new()
        .send(&mut tx, &task("next"), Some(&sample_dxo(&data)), soon())
        .unwrap();
    let mut receiver = FrameReceiver::default();
    match receiver.recv(&mut rx, soon()) {
        Err(e) => assert!(check(&e), "unexpected error {e:?}"),
        Ok(m) => panic!("malformed message accepted: {m:?}"),
    }
    let msg = receiver.recv(&mut rx, soon()).unwrap();
    assert_eq!(msg.task_id(), "next");
    assert_eq!(
        msg.tensor_by_name("b").unwrap().as_slice::<f32>().unwrap(),
        &[3.0, 4.0]
    );
}

fn put_u32(raw: &mut [u8], at: usize, v: u32) {
    raw[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(raw: &mut [u8], at: usize, v: u64) {
    raw[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

// Offsets inside a record: fragment header 0..64, body header 64..128, task id at 128.
const BODY: usize = 64;

#[test]
fn malformed_messages_are_typed_errors_and_the_link_stays_usable() {
    let data = [1.0f32, 2.0, 3.0, 4.0];
    let good = encoded(Some(&sample_dxo(&data)));
    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut raw = good.clone();
        f(&mut raw);
        raw
    };
    let bad_fragment = |e: &FrameError| matches!(e, FrameError::BadFragment(_));
    let is_malformed = |e: &FrameError| matches!(e, FrameError::Malformed(_));

    assert_rejected_then_usable(&mutate(&|r| put_u32(r, 0, 0xdead)), bad_fragment);
    assert_rejected_then_usable(&mutate(&|r| r[4] = 9), bad_fragment);
    assert_rejected_then_usable(&mutate(&|r| put_u64(r, 48, 5)), bad_fragment);
    assert_rejected_then_usable(&mutate(&|r| r.truncate(100)), bad_fragment);
    assert_rejected_then_usable(&[1, 2, 3], bad_fragment);
    // Unknown message kind.
    assert_rejected_then_usable(&mutate(&|r| r[6] = 99), bad_fragment);
    // Unknown return code, data kind.
    assert_rejected_then_usable(&mutate(&|r| put_u32(r, BODY, 999)), is_malformed);
    assert_rejected_then_usable(&mutate(&|r| put_u32(r, BODY + 4, 77)), is_malformed);
    // Task id past the end, and not UTF-8.
    assert_rejected_then_usable(&mutate(&|r| put_u32(r, BODY + 8, 1000)), |e| {
        matches!(e, FrameError::Malformed(_) | FrameError::OverLimit { .. })
    });
    assert_rejected_then_usable(&mutate(&|r| r[BODY + 64] = 0xff), is_malformed);
    // Invalid JSON meta: meta starts after "raw" + "train" (8 bytes).
    assert_rejected_then_usable(&mutate(&|r| r[BODY + 64 + 8] = b'['), is_malformed);
    // Tensor table: first entry starts at the 8-aligned end of the meta.
    let meta_len = u32::from_le_bytes(good[BODY + 16..BODY + 20].try_into().unwrap()) as usize;
    let table = BODY + (64 + 8 + meta_len).next_multiple_of(8);
    // Misaligned tensor, overlapping tensors, wrong byte length, bad dtype, too many dims.
    assert_rejected_then_usable(&mutate(&|r| put_u64(r, table, 8)), is_malformed);
    let second = table + 96;
    let first_offset = u64::from_le_bytes(good[table..table + 8].try_into().unwrap());
    assert_rejected_then_usable(&mutate(&|r| put_u64(r, second, first_offset)), is_malformed);
    assert_rejected_then_usable(&mutate(&|r| put_u64(r, table + 8, 12)), is_malformed);
    assert_rejected_then_usable(&mutate(&|r| r[table + 22] = 0), is_malformed);
    assert_rejected_then_usable(&mutate(&|r| r[table + 23] = 9), is_malformed);
    // Duplicate name: point the second tensor's name at the first's.
    assert_rejected_then_usable(&mutate(&|r| put_u32(r, second + 16, 0)), is_malformed);
    // Tensor data past the end.
    assert_rejected_then_usable(&mutate(&|r| put_u64(r, second, 1 << 40)), is_malformed);
}

#[test]
fn fragments_out_of_order_or_mixed_are_rejected_and_the_link_recovers() {
    // Build a two-fragment message by hand from a valid single-record message.
    let data = [1.0f32, 2.0, 3.0, 4.0];
    let good = encoded(Some(&sample_dxo(&data)));
    let body = &good[64..];
    let half = (body.len() / 2) as u64;
    let fragment = |flags: u32, seq: u64, index: u32, offset: u64, bytes: &[u8]| {
        let mut raw = good[..64].to_vec();
        put_u32(&mut raw, 8, flags);
        put_u64(&mut raw, 16, seq);
        put_u32(&mut raw, 24, index);
        put_u64(&mut raw, 40, offset);
        put_u64(&mut raw, 48, bytes.len() as u64);
        raw.extend_from_slice(bytes);
        raw
    };
    let first = fragment(1, 50, 0, 0, &body[..half as usize]);
    let last = fragment(2, 50, 1, half, &body[half as usize..]);
    let wrong_seq = fragment(2, 51, 1, half, &body[half as usize..]);

    // In order: reassembled.
    let (mut tx, mut rx) = ring_pair(1 << 20);
    tx.push(&first, soon()).unwrap();
    tx.push(&last, soon()).unwrap();
    let mut receiver = FrameReceiver::default();
    let msg = receiver.recv(&mut rx, soon()).unwrap();
    assert!(!msg.is_in_ring());
    assert_eq!(
        msg.tensor_by_name("a").unwrap().as_slice::<f32>().unwrap(),
        &[1.0, 2.0]
    );
    drop(msg);

    let out_of_order = |e: &FrameError| matches!(e, FrameError::OutOfOrder(_));
    // A continuation with no start.
    assert_rejected_then_usable(&last, out_of_order);
    // A continuation of another message.
    let (mut tx, mut rx) = ring_pair(1 << 20);
    tx.push(&first, soon()).unwrap();
    tx.push(&wrong_seq, soon()).unwrap();
    FrameSender::new()
        .send(&mut tx, &task("next"), Some(&sample_dxo(&data)), soon())
        .unwrap();
    assert!(matches!(
        receiver.recv(&mut rx, soon()),
        Err(FrameError::OutOfOrder(_))
    ));
    assert_eq!(receiver.recv(&mut rx, soon()).unwrap().task_id(), "next");
    // A new message starting before the last one ended: the new one is kept.
    let (mut tx, mut rx) = ring_pair(1 << 20);
    tx.push(&first, soon()).unwrap();
    FrameSender::new()
        .send(&mut tx, &task("next"), Some(&sample_dxo(&data)), soon())
        .unwrap();
    assert!(matches!(
        receiver.recv(&mut rx, soon()),
        Err(FrameError::OutOfOrder(_))
    ));
    assert_eq!(receiver.recv(&mut rx, soon()).unwrap().task_id(), "next");
    // A sender that stops mid-message: the receiver times out rather than hanging.
    let (mut tx, mut rx) = ring_pair(1 << 20);
    tx.push(&first, soon()).unwrap();
    assert!(matches!(
        receiver.recv(&mut rx, Some(Instant::now() + Duration::from_millis(20))),
        Err(FrameError::Timeout)
    ));
}

#[test]
fn limits_are_enforced_before_allocating() {
    let data = [1.0f32, 2.0, 3.0, 4.0];
    let good = encoded(Some(&sample_dxo(&data)));
    // A first fragment announcing a 1 TiB message: refused by the length limit, not allocated.
    let mut huge = good[..64].to_vec();
    put_u32(&mut huge, 8, 1);
    put_u64(&mut huge, 32, 1 << 40);
    put_u64(&mut huge, 48, 64);
    huge.extend_from_slice(&good[64..128]);
    assert_rejected_then_usable(&huge, |e| {
        matches!(
            e,
            FrameError::OverLimit {
                what: "message length",
                ..
            }
        )
    });

    let small = Limits::default().max_tensors(1);
    let (mut tx, mut rx) = ring_pair(1 << 20);
    FrameSender::new()
        .send(&mut tx, &task("t"), Some(&sample_dxo(&data)), soon())
        .unwrap();
    let mut receiver = FrameReceiver::new(small);
    assert!(matches!(
        receiver.recv(&mut rx, soon()),
        Err(FrameError::OverLimit {
            what: "tensor count",
            value: 2,
            max: 1
        })
    ));
    let limits = Limits::default().max_meta_len(4);
    FrameSender::new()
        .send(&mut tx, &task("t"), Some(&sample_dxo(&data)), soon())
        .unwrap();
    let mut receiver = FrameReceiver::new(limits);
    assert!(matches!(
        receiver.recv(&mut rx, soon()),
        Err(FrameError::OverLimit {
            what: "meta length",
            ..
        })
    ));
}

#[test]
fn aligned_buf_is_aligned_and_resizes() {
    let mut buf = AlignedBuf::zeroed(100).unwrap();
    assert_eq!(buf.as_slice().as_ptr() as usize % 64, 0);
    assert_eq!(buf.len(), 100);
    assert!(buf.as_slice().iter().all(|&b| b == 0));
    buf.as_mut_slice()[99] = 1;
    buf.reset(10).unwrap();
    assert_eq!(buf.len(), 10);
    assert!(buf.capacity() >= 100);
    assert!(AlignedBuf::new().as_slice().is_empty());
    let copy = buf.clone();
    assert_eq!(copy.as_slice(), buf.as_slice());
}

fn arb_dtype() -> impl Strategy<Value = DType> {
    proptest::sample::select(DType::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_dxos_round_trip(
        kind in proptest::sample::select(DataKind::ALL.to_vec()),
        specs in proptest::collection::vec((arb_dtype(), proptest::collection::vec(0u64..5, 0..4)), 0..8),
        meta in proptest::collection::btree_map("[a-z_]{1,12}", any::<i64>(), 0..6),
        task_id in "[ -~]{0,40}",
        seed in any::<u64>(),
        ring_kib in 4u64..64,
    ) {
        let buffers: Vec<Vec<u8>> = specs.iter().enumerate().map(|(i, (dtype, shape))| {
            let n: u64 = shape.iter().product::<u64>() * dtype.size() as u64;
            let mut v = vec![0u8; n as usize];
            shmex_test_support::pattern::fill(&mut v, seed ^ i as u64);
            if *dtype == DType::Bool { v.iter_mut().for_each(|b| *b &= 1); }
            v
        }).collect();
        let mut dxo = Dxo::new(kind);
        for (k, v) in &meta { dxo = dxo.with_meta(k.clone(), *v); }
        for (i, ((dtype, shape), bytes)) in specs.iter().zip(&buffers).enumerate() {
            dxo = dxo.with_tensor_bytes(format!("t{i}"), *dtype, shape, bytes).unwrap();
        }
        let (mut tx, mut rx) = ring_pair(ring_kib * 1024);
        let envelope = task(&task_id);
        let mut receiver = FrameReceiver::default();
        let msg = std::thread::scope(|scope| {
            scope.spawn(|| {
                FrameSender::new().send(&mut tx, &envelope, Some(&dxo), soon()).unwrap();
            });
            receiver.recv(&mut rx, soon()).unwrap().to_owned_message().unwrap()
        });
        prop_assert_eq!(msg.task_id(), envelope.task_id);
        prop_assert_eq!(msg.data_kind(), Some(kind));
        prop_assert_eq!(msg.meta(), dxo.meta());
        prop_assert_eq!(msg.tensors().len(), specs.len());
        for (view, sent) in msg.tensors().zip(dxo.tensors()) {
            prop_assert_eq!(view.name(), sent.name());
            prop_assert_eq!(view.dtype(), sent.dtype());
            prop_assert_eq!(view.shape(), sent.shape());
            prop_assert_eq!(view.bytes(), sent.bytes());
            prop_assert_eq!(view.bytes().as_ptr() as usize % 64, 0);
        }
    }

    #[test]
    fn arbitrary_records_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (mut tx, mut rx) = ring_pair(1 << 16);
        tx.push(&raw, soon()).unwrap();
        let mut receiver = FrameReceiver::default();
        let _ = receiver.recv(&mut rx, Some(Instant::now()));
    }

    #[test]
    fn mutated_messages_never_panic_and_never_break_the_link(
        flips in proptest::collection::vec((0usize..4096, any::<u8>()), 1..8),
    ) {
        let data = [1.0f32, 2.0, 3.0, 4.0];
        let mut raw = encoded(Some(&sample_dxo(&data)));
        for (at, value) in flips {
            let len = raw.len();
            raw[at % len] = value;
        }
        let (mut tx, mut rx) = ring_pair(1 << 20);
        tx.push(&raw, soon()).unwrap();
        FrameSender::new().send(&mut tx, &task("next"), Some(&sample_dxo(&data)), soon()).unwrap();
        let mut receiver = FrameReceiver::default();
        // Ok if the mutation was harmless; either way the next message must still arrive.
        let first_ok = receiver.recv(&mut rx, soon()).is_ok();
        // Whatever the first record did, a valid message follows it and must be received
        // (possibly as the first result, if the mutated record was a non-first fragment).
        let mut found = false;
        for _ in 0..2 {
            match receiver.recv(&mut rx, Some(Instant::now() + Duration::from_millis(50))) {
                Ok(m) if m.task_id() == "next" => { found = true; break; }
                _ => {}
            }
        }
        prop_assert!(found || first_ok);
    }
}

#[test]
fn epoch_and_reply_to_travel_and_stale_epochs_are_dropped_unparsed() {
    let (mut tx, mut rx) = ring_pair(256 * 1024);
    let data: Vec<f32> = (0..200_000).map(|i| i as f32).collect();
    let big = Dxo::new(DataKind::Weights)
        .with_tensor("w", &[200_000], &data)
        .unwrap();
    let mut sender = FrameSender::new();
    let mut receiver = FrameReceiver::default();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Epoch 3: a small message and a fragmented one (800 KB through a 256 KiB ring),
            // both for an incarnation the receiver will have moved past.
            let old = task("old").with_epoch(3);
            sender.send(&mut tx, &old, None, soon()).unwrap();
            sender.send(&mut tx, &old, Some(&big), soon()).unwrap();
            let ack = Envelope::new(MessageKind::TaskAck)
                .with_task("new", "train")
                .with_epoch(4)
                .with_reply_to(17);
            sender.send(&mut tx, &ack, None, soon()).unwrap();
        });
        receiver.set_min_epoch(4);
        let msg = receiver.recv(&mut rx, soon()).unwrap();
        assert_eq!(msg.kind(), MessageKind::TaskAck);
        assert_eq!((msg.task_id(), msg.epoch(), msg.reply_to()), ("new", 4, 17));
    });
    assert!(
        receiver.stale_dropped() >= 4,
        "one small message and at least three fragments dropped, counted {}",
        receiver.stale_dropped()
    );
    // Without a minimum, epoch-0 messages arrive and carry no reply.
    sender.send(&mut tx, &task("plain"), None, soon()).unwrap();
    let mut plain = FrameReceiver::default();
    let msg = plain.recv(&mut rx, soon()).unwrap();
    assert_eq!((msg.epoch(), msg.reply_to()), (0, 0));
}

#[test]
fn owned_reassembled_message_keeps_its_buffer_and_gives_it_back() {
    let (mut tx, mut rx) = ring_pair(256 * 1024);
    let data: Vec<f32> = (0..300_000).map(|i| i as f32 * 0.5).collect();
    let dxo = Dxo::new(DataKind::Weights)
        .with_tensor("w", &[300, 1000], &data)
        .unwrap();
    let mut receiver = FrameReceiver::default();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut sender = FrameSender::new();
            for _ in 0..3 {
                sender
                    .send(&mut tx, &task("t"), Some(&dxo), soon())
                    .unwrap();
            }
        });
        let first = receiver
            .recv(&mut rx, soon())
            .unwrap()
            .into_owned()
            .unwrap();
        let first_ptr = first.tensors().next().unwrap().bytes().as_ptr();
        // The receiver needs a new buffer while `first` is alive.
        let second = receiver
            .recv(&mut rx, soon())
            .unwrap()
            .into_owned()
            .unwrap();
        let second_ptr = second.tensors().next().unwrap().bytes().as_ptr();
        assert_ne!(first_ptr, second_ptr);
        for owned in [&first, &second] {
            assert_eq!(owned.task_id(), "t");
            assert_eq!(
                owned
                    .tensor_by_name("w")
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap(),
                &data[..]
            );
        }
        drop(first);
        drop(second);
        // A buffer came back: the third message lands in one of the two earlier buffers.
        let third = receiver.recv(&mut rx, soon()).unwrap();
        let third_ptr = third.tensors().next().unwrap().bytes().as_ptr();
        assert!(third_ptr == first_ptr || third_ptr == second_ptr);
        assert_eq!(
            third.tensor(0).unwrap().as_slice::<f32>().unwrap(),
            &data[..]
        );
    });
}

#[test]
fn repeated_layouts_see_each_message_own_data_and_fields() {
    let (mut tx, mut rx) = ring_pair(1 << 20);
    let mut sender = FrameSender::new();
    let mut receiver = FrameReceiver::default();
    let rounds: Vec<Vec<f32>> = (0..3)
        .map(|r| (0..1000).map(|i| (r * 1000 + i) as f32).collect())
        .collect();
    // Same layout three times (only the data changes), then a different task id, then a
    // different length, then the first layout again.
    let cases: Vec<(&str, &[f32])> = vec![
        ("a", &rounds[0]),
        ("a", &rounds[1]),
        ("a", &rounds[2]),
        ("b", &rounds[0]),
        ("b", &rounds[1][..999]),
        ("a", &rounds[1]),
    ];
    for (id, data) in cases {
        let dxo = Dxo::new(DataKind::Weights)
            .with_tensor("w", &[data.len() as u64], data)
            .unwrap();
        sender.send(&mut tx, &task(id), Some(&dxo), soon()).unwrap();
        let msg = receiver.recv(&mut rx, soon()).unwrap();
        assert_eq!(msg.task_id(), id);
        let view = msg.tensor_by_name("w").unwrap();
        assert_eq!(view.shape(), &[data.len() as u64]);
        assert_eq!(view.as_slice::<f32>().unwrap(), data);
    }
}

#[test]
fn recv_into_copies_whole_and_fragmented_messages_into_the_callers_buffer() {
    let (mut tx, mut rx) = ring_pair(256 * 1024);
    let small: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let large: Vec<f32> = (0..300_000).map(|i| i as f32 * 2.0).collect();
    let mut receiver = FrameReceiver::default();
    let mut buffer = AlignedBuf::zeroed(2 << 20).unwrap();
    let mut tiny = vec![0u8; 256];
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut sender = FrameSender::new();
            for data in [&small, &large, &small] {
                let dxo = Dxo::new(DataKind::Weights)
                    .with_tensor("w", &[data.len() as u64], data)
                    .unwrap();
                sender
                    .send(&mut tx, &task("t"), Some(&dxo), soon())
                    .unwrap();
            }
        });
        for data in [&small, &large] {
            let start = buffer.as_slice().as_ptr() as usize;
            let msg = receiver
                .recv_into(&mut rx, soon(), buffer.as_mut_slice())
                .unwrap();
            assert!(!msg.is_in_ring());
            let view = msg.tensor_by_name("w").unwrap();
            let at = view.bytes().as_ptr() as usize;
            assert!(
                at >= start && at < start + (2 << 20),
                "tensor lies in the caller's buffer"
            );
            assert_eq!(view.as_slice::<f32>().unwrap(), &data[..]);
        }
        // Too long for the buffer: refused, consumed, and the next message arrives.
        let err = receiver.recv_into(&mut rx, soon(), &mut tiny).unwrap_err();
        assert!(matches!(err, FrameError::OverLimit { .. }), "{err:?}");
    });
    let (mut tx2, mut rx2) = (tx, rx);
    FrameSender::new()
        .send(&mut tx2, &task("after"), None, soon())
        .unwrap();
    assert_eq!(receiver.recv(&mut rx2, soon()).unwrap().task_id(), "after");
}

#[test]
fn prepared_loans_repeat_one_layout_and_bad_specs_are_refused() {
    let (mut tx, mut rx) = ring_pair(1 << 20);
    let envelope = task("p").with_epoch(7);
    let spec = LoanSpec::new(DataKind::WeightDiff)
        .tensor("a", DType::F32, &[4, 4])
        .tensor("b", DType::I64, &[3])
        .meta("current_round", 2);
    let prepared = FrameSender::prepare(&envelope, &spec).unwrap();
    assert!(prepared.body_len() > 16 * 4 + 3 * 8);
    let mut sender = FrameSender::new();
    let mut receiver = FrameReceiver::default();
    for round in 0..3i64 {
        let mut loan = sender.loan_prepared(&mut tx, &prepared, soon()).unwrap();
        loan.tensor_mut::<f32>(0).unwrap().fill(round as f32);
        loan.tensor_mut::<i64>(1).unwrap().fill(-round);
        loan.commit();
        let msg = receiver.recv(&mut rx, soon()).unwrap();
        assert!(msg.is_in_ring());
        assert_eq!((msg.task_id(), msg.epoch()), ("p", 7));
        assert_eq!(msg.data_kind(), Some(DataKind::WeightDiff));
        assert_eq!(msg.meta()["current_round"], json!(2));
        assert_eq!(
            msg.tensor(0).unwrap().as_slice::<f32>().unwrap(),
            &[round as f32; 16]
        );
        assert_eq!(
            msg.tensor(1).unwrap().as_slice::<i64>().unwrap(),
            &[-round; 3]
        );
    }
    let duplicate = LoanSpec::new(DataKind::Weights)
        .tensor("x", DType::U8, &[1])
        .tensor("x", DType::U8, &[1]);
    assert!(matches!(
        FrameSender::prepare(&envelope, &duplicate),
        Err(shmex::frame::LoanError::Dxo(DxoError::DuplicateName(_)))
    ));
    let huge = LoanSpec::new(DataKind::Weights).tensor("x", DType::U8, &[2 << 20]);
    let prepared = FrameSender::prepare(&envelope, &huge).unwrap();
    assert!(sender.loan_prepared(&mut tx, &prepared, soon()).is_err());
}

/// A sender with checksums: whole, fragmented and loaned messages arrive intact; a payload
/// byte changed in shared memory after sending is refused with a typed error (without a
/// checksum the same change arrives unnoticed) and the link stays usable.
#[test]
fn checksummed_messages_round_trip_and_changed_bytes_are_refused() {
    use shmex::frame::FragmentProblem;
    let data: Vec<f32> = (0..50_000).map(|i| i as f32).collect();
    let dxo = Dxo::new(DataKind::Weights)
        .with_tensor("w", &[50_000], &data)
        .unwrap();
    // Fragmented (200 KB through a 64 KiB ring) and whole, with checksums.
    for capacity in [64 << 10, 1 << 20] {
        let (mut tx, mut rx) = ring_pair(capacity);
        let mut sender = FrameSender::new().with_checksum(true);
        assert!(sender.checksum());
        let receive = std::thread::spawn(move || {
            let mut receiver = FrameReceiver::default();
            let m = receiver.recv(&mut rx, soon()).unwrap();
            m.tensor_by_name("w").unwrap().to_vec::<f32>().unwrap()
        });
        sender
            .send(&mut tx, &task("t"), Some(&dxo), soon())
            .unwrap();
        assert_eq!(receive.join().unwrap(), data);
    }
    // A loan is sealed at commit.
    let (mut tx, mut rx) = ring_pair(1 << 20);
    let mut sender = FrameSender::new().with_checksum(true);
    let spec = LoanSpec::new(DataKind::Weights).tensor("x", DType::F32, &[4]);
    let mut loan = sender.loan(&mut tx, &task("loan"), &spec, soon()).unwrap();
    loan.tensor_mut::<f32>(0)
        .unwrap()
        .copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
    loan.commit();
    let mut receiver = FrameReceiver::default();
    let m = receiver.recv(&mut rx, soon()).unwrap();
    assert_eq!(
        m.tensor(0).unwrap().as_slice::<f32>().unwrap(),
        &[1.0, 2.0, 3.0, 4.0]
    );
    drop(m);

    // One payload byte changed after sending: refused with a checksum, unnoticed without.
    let small = [1.0f32, 2.0, 3.0, 4.0];
    for checksum in [true, false] {
        let (mut tx, mut rx) = ring_pair(1 << 20);
        FrameSender::new()
            .with_checksum(checksum)
            .send(&mut tx, &task("raw"), Some(&sample_dxo(&small)), soon())
            .unwrap();
        let mut raw = Vec::new();
        assert!(rx.try_pop_into(&mut raw).unwrap());
        let last = raw.len() - 1;
        raw[last] ^= 0x40; // the last byte of tensor "b"
        if checksum {
            assert_rejected_then_usable(&raw, |e| {
                matches!(e, FrameError::BadFragment(FragmentProblem::Checksum { .. }))
            });
        } else {
            let (mut tx, mut rx) = ring_pair(1 << 20);
            tx.push(&raw, soon()).unwrap();
            let mut receiver = FrameReceiver::default();
            let m = receiver.recv(&mut rx, soon()).unwrap();
            assert_ne!(
                m.tensor_by_name("b").unwrap().as_slice::<f32>().unwrap(),
                &small[2..4]
            );
        }
    }
}
