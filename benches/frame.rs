//! Criterion benchmarks of the DXO framing cost (`shmex::frame`): encoding and decoding the
//! header, meta and tensor table of a message with 1,000 one-element f32 tensors, so that the
//! bytes moved are negligible and the per-tensor bookkeeping is what is measured.
//!
//! Everything runs on one thread through an in-process ring
//! (`shmex::ring::in_process`), no second process:
//! - `frame_1000_tensors/send`: `FrameSender::send` of the DXO (timed), then the raw record
//!   drained with `Consumer::try_peek` + `release` (untimed, no decoding);
//! - `frame_1000_tensors/loan`: `FrameSender::loan` of the same layout + `Loan::commit`
//!   (timed; the one-element tensors are written in place), drained as above;
//! - `frame_1000_tensors/recv`: the pre-encoded message pushed as raw bytes with
//!   `Producer::try_push` (untimed), then `FrameReceiver::recv` + a look at every tensor
//!   (`TensorView::as_slice`) + `Message::release` (timed); two messages differing in their
//!   task id alternate, so every receive parses in full;
//! - `frame_1000_tensors/recv_same_layout`: the same message every time, so the receiver
//!   finds its prefix identical to the last one's and reuses that parse (a compare of the
//!   ~110 KiB prefix instead of a parse);
//! - `frame_1000_tensors/send_recv`: both, timed together (alternating task ids);
//! - `one_tensor/loan_recv_1MiB`: the CPU cost of one loan hand-off without the second
//!   process: loan a message of one 1 MiB f32 tensor, write its first element, commit, then
//!   recv it in place, read the first element, release (compare `examples/compare.rs`'s
//!   `shmex-loan`, which adds the cross-CPU cache traffic and the wake-up of a spinning peer);
//! - `one_tensor/loan_prepared_recv_1MiB`: the same with the layout prepared once
//!   (`FrameSender::prepare` + `loan_prepared`), as `shmex-loan` does;
//! - `one_tensor/send_recv_4KiB`: the same for a copy-sent 4 KiB tensor (half of
//!   `shmex-task-*`'s round trip).
//!
//! - `checksum/send_recv_1MiB/{off,on}`: one copy-sent 1 MiB tensor through the ring and
//!   received in place, without and with `FrameSender::with_checksum` (CRC32C of the payload
//!   written by the sender, checked by the receiver): the checksum's cost per MiB, both sides
//!   together, in the same run (throughput in bytes).
//!
//! Each iteration is one message; criterion reports time per message, and the throughput in
//! tensors per second.
//!
//! `cargo bench --bench frame -- --test` runs every benchmark once (a smoke test for CI).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use shmex::frame::{
    DType, DataKind, Dxo, Envelope, FrameReceiver, FrameSender, LoanSpec, MessageKind,
};
use shmex::ring::{self, Consumer, Producer};
use shmex::signal::Signals;

/// Tensors in the benchmark message.
const TENSORS: usize = 1_000;
/// Ring capacity: room for one encoded message (about 170 KiB) with plenty to spare.
const RING_CAPACITY: u64 = 4 << 20;

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    framing(&mut criterion);
    one_tensor(&mut criterion);
    checksum(&mut criterion);
    criterion.final_summary();
}

/// Names like a model's, of typical length.
fn tensor_names() -> Vec<String> {
    (0..TENSORS)
        .map(|i| format!("model.layers.{}.block{}.weight", i / 10, i % 10))
        .collect()
}

/// Consumes the record at the head of the ring without decoding it.
fn drain(consumer: &mut Consumer) {
    let grant = consumer
        .try_peek()
        .expect("ring intact")
        .expect("a record to drain");
    grant.release();
}

fn in_process_ring() -> (Producer, Consumer) {
    ring::in_process(RING_CAPACITY, Signals::in_process()).expect("valid ring capacity")
}

fn framing(c: &mut Criterion) {
    let names = tensor_names();
    let values: Vec<f32> = (0..TENSORS).map(|i| i as f32).collect();
    let mut dxo = Dxo::new(DataKind::Weights)
        .with_meta("current_round", 3)
        .with_meta("total_round", 100);
    for (name, value) in names.iter().zip(&values) {
        dxo = dxo
            .with_tensor(name.as_str(), &[1], std::slice::from_ref(value))
            .expect("valid tensor");
    }
    let mut spec = LoanSpec::new(DataKind::Weights)
        .meta("current_round", 3)
        .meta("total_round", 100);
    for name in &names {
        spec = spec.tensor(name.as_str(), DType::F32, &[1]);
    }
    // Two task ids: a receiver memoises the parse of a body identical (up to the data) to the
    // last one, so the decode benchmarks alternate between two to measure a full parse.
    let envelopes = [
        Envelope::new(MessageKind::Task).with_task("task-1", "train"),
        Envelope::new(MessageKind::Task).with_task("task-2", "train"),
    ];
    let envelope = envelopes[0];

    // The encoded messages, captured once as raw ring bytes (checked to decode as sent).
    let (mut producer, mut consumer) = in_process_ring();
    let mut sender = FrameSender::new();
    let mut receiver = FrameReceiver::default();
    let raws = envelopes.map(|envelope| {
        sender
            .send(&mut producer, &envelope, Some(&dxo), None)
            .expect("message fits the ring");
        let mut raw = Vec::new();
        assert!(consumer.try_pop_into(&mut raw).expect("ring intact"));
        raw
    });
    let raw = &raws[0];
    producer.try_push(raw).expect("room for the raw message");
    {
        let message = receiver
            .recv(&mut consumer, None)
            .expect("the encoded message decodes");
        assert!(message.is_in_ring());
        assert_eq!(message.tensor_count(), TENSORS);
        for (i, tensor) in message.tensors().enumerate() {
            assert_eq!(tensor.name(), names[i]);
            assert_eq!(tensor.as_slice::<f32>().expect("f32 tensor"), &[i as f32]);
        }
        message.release();
    }

    let mut group = c.benchmark_group(format!("frame_{TENSORS}_tensors"));
    group.throughput(Throughput::Elements(TENSORS as u64));
    eprintln!(
        "frame bench: one message = {} bytes in the ring ({TENSORS} tensors)",
        raws[0].len()
    );

    group.bench_function("send", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                sender
                    .send(&mut producer, &envelope, Some(black_box(&dxo)), None)
                    .expect("message fits the ring");
                total += start.elapsed();
                drain(&mut consumer);
            }
            total
        });
    });

    group.bench_function("loan", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let mut loan = sender
                    .loan(&mut producer, &envelope, black_box(&spec), None)
                    .expect("message fits the ring");
                for (i, value) in values.iter().enumerate() {
                    loan.tensor_mut::<f32>(i).expect("f32 tensor")[0] = *value;
                }
                loan.commit();
                total += start.elapsed();
                drain(&mut consumer);
            }
            total
        });
    });

    let mut recv_bench = |label: &str, alternate: bool| {
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let raw = &raws[if alternate { (i % 2) as usize } else { 0 }];
                    producer.try_push(raw).expect("room for the raw message");
                    let start = Instant::now();
                    receive_and_touch(&mut receiver, &mut consumer);
                    total += start.elapsed();
                }
                total
            });
        });
    };
    recv_bench("recv", true);
    recv_bench("recv_same_layout", false);

    let mut turn = 0usize;
    group.bench_function("send_recv", |b| {
        b.iter(|| {
            turn += 1;
            sender
                .send(
                    &mut producer,
                    &envelopes[turn % 2],
                    Some(black_box(&dxo)),
                    None,
                )
                .expect("message fits the ring");
            receive_and_touch(&mut receiver, &mut consumer);
        });
    });
    group.finish();
}

/// Receives one message in place and reads the first element of every tensor.
fn receive_and_touch(receiver: &mut FrameReceiver, consumer: &mut Consumer) {
    let message = receiver
        .recv(consumer, None)
        .expect("the encoded message decodes");
    let mut sum = 0f32;
    for tensor in message.tensors() {
        sum += tensor.as_slice::<f32>().expect("f32 tensor")[0];
    }
    black_box(sum);
    message.release();
}

fn one_tensor(c: &mut Criterion) {
    let (mut producer, mut consumer) = in_process_ring();
    let mut sender = FrameSender::new();
    let mut receiver = FrameReceiver::default();
    let envelope = Envelope::new(MessageKind::Data);
    let mut group = c.benchmark_group("one_tensor");
    group.throughput(Throughput::Elements(1));

    let spec = LoanSpec::new(DataKind::Weights).tensor("weights", DType::F32, &[(1 << 20) / 4]);
    let prepared = FrameSender::prepare(&envelope, &spec).expect("valid spec");
    let mut token = 0f32;
    for (label, use_prepared) in [("loan_recv_1MiB", false), ("loan_prepared_recv_1MiB", true)] {
        group.bench_function(label, |b| {
            b.iter(|| {
                token += 1.0;
                let mut loan = if use_prepared {
                    sender.loan_prepared(&mut producer, black_box(&prepared), None)
                } else {
                    sender.loan(&mut producer, &envelope, black_box(&spec), None)
                }
                .expect("message fits the ring");
                loan.tensor_mut::<f32>(0).expect("f32 tensor")[0] = token;
                loan.commit();
                let message = receiver
                    .recv(&mut consumer, None)
                    .expect("the loaned message decodes");
                let tensor = message.tensor(0).expect("one tensor");
                assert_eq!(tensor.as_slice::<f32>().expect("f32 tensor")[0], token);
                message.release();
            });
        });
    }

    let payload = vec![0.5f32; 1024];
    group.bench_function("send_recv_4KiB", |b| {
        b.iter(|| {
            let dxo = Dxo::new(DataKind::Weights)
                .with_meta("current_round", 3)
                .with_tensor("weights", &[1024], black_box(&payload))
                .expect("valid tensor");
            sender
                .send(&mut producer, &envelope, Some(&dxo), None)
                .expect("message fits the ring");
            let message = receiver
                .recv(&mut consumer, None)
                .expect("the message decodes");
            let tensor = message.tensor(0).expect("one tensor");
            black_box(tensor.as_slice::<f32>().expect("f32 tensor")[0]);
            message.release();
        });
    });
    group.finish();
}

fn checksum(c: &mut Criterion) {
    let (mut producer, mut consumer) = in_process_ring();
    let mut receiver = FrameReceiver::default();
    let envelope = Envelope::new(MessageKind::Data);
    let payload = vec![0.25f32; (1 << 20) / 4];
    let mut group = c.benchmark_group("checksum");
    group.throughput(Throughput::Bytes(1 << 20));
    for (label, on) in [("send_recv_1MiB/off", false), ("send_recv_1MiB/on", true)] {
        let mut sender = FrameSender::new().with_checksum(on);
        group.bench_function(label, |b| {
            b.iter(|| {
                let dxo = Dxo::new(DataKind::Weights)
                    .with_tensor("weights", &[payload.len() as u64], black_box(&payload))
                    .expect("valid tensor");
                sender
                    .send(&mut producer, &envelope, Some(&dxo), None)
                    .expect("message fits the ring");
                let message = receiver
                    .recv(&mut consumer, None)
                    .expect("the message decodes");
                black_box(message.tensor(0).expect("one tensor").bytes()[0]);
                message.release();
            });
        });
    }
    group.finish();
}
