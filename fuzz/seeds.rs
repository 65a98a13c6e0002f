//! Writes a seed corpus for the fuzz targets (nothing binary is committed):
//!
//!     cargo +nightly run --example seeds   # from fuzz/, writes corpus/<target>/seed-*
//!
//! Seeds are real encodings: messages sent by `FrameSender` (whole and fragmented, with every
//! dtype, meta, opaque bytes and no DXO) and streams sent by `stream::send_stream`, popped
//! from the ring and written in the targets' record format.

use std::fs;
use std::path::Path;

use shmex::frame::{DataKind, Dxo, Envelope, FrameSender, MessageKind, ReturnCode, BF16, F16};
use shmex::ring::Consumer;
use shmex::stream;
use shmex_fuzz::{drain_frames, join_records, push_records, ring, ring_capacity_for, LIMITS};

fn drain(consumer: &mut Consumer) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut buf = Vec::new();
    while consumer.try_pop_into(&mut buf).unwrap() {
        records.push(buf.clone());
    }
    records
}

fn write(dir: &Path, name: &str, records: &[Vec<u8>], prefix: &[u8]) {
    let mut bytes = prefix.to_vec();
    bytes.extend(join_records(records.iter().map(|r| r.as_slice())));
    fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let frames = root.join("frame_decode");
    let streams = root.join("stream_decode");
    fs::create_dir_all(&frames).unwrap();
    fs::create_dir_all(&streams).unwrap();

    let f32s: Vec<f32> = (0..40).map(|i| i as f32 * 0.5).collect();
    let f64s = [1.0f64, -2.5, 3.25];
    let i8s = [-1i8, 2, -3, 4];
    let i16s = [-300i16, 7];
    let i32s = [1i32 << 20, -5];
    let i64s = [-(1i64 << 40)];
    let u8s = [1u8, 2, 3, 250];
    let u16s = [65535u16];
    let u32s = [7u32, 8, 9];
    let u64s = [u64::MAX];
    let bools = [true, false, true];
    let f16s = [F16(0x3c00), F16(0xc000)];
    let bf16s = [BF16(0x3f80)];
    let every_dtype = Dxo::new(DataKind::Weights)
        .with_meta("current_round", 3)
        .with_meta("lr", 0.01)
        .with_meta("tags", serde_json::json!(["a", {"b": null}]))
        .with_tensor("fc.weight", &[4, 10], &f32s)
        .unwrap()
        .with_tensor("f64", &[3], &f64s)
        .unwrap()
        .with_tensor("i8", &[2, 2], &i8s)
        .unwrap()
        .with_tensor("i16", &[2], &i16s)
        .unwrap()
        .with_tensor("i32", &[2, 1], &i32s)
        .unwrap()
        .with_tensor("i64", &[1], &i64s)
        .unwrap()
        .with_tensor("u8", &[4], &u8s)
        .unwrap()
        .with_tensor("u16", &[1], &u16s)
        .unwrap()
        .with_tensor("u32", &[3], &u32s)
        .unwrap()
        .with_tensor("u64", &[], &u64s)
        .unwrap()
        .with_tensor("mask", &[3], &bools)
        .unwrap()
        .with_tensor("half", &[2], &f16s)
        .unwrap()
        .with_tensor("bf", &[1, 1, 1], &bf16s)
        .unwrap()
        .with_tensor("empty", &[0, 5], &[] as &[f32])
        .unwrap();
    let opaque = b"application-defined bytes".to_vec();
    let app = Dxo::new(DataKind::AppDefined)
        .with_opaque(&opaque)
        .unwrap()
        .with_tensor("x", &[2], &f32s[..2])
        .unwrap();
    let big: Vec<f32> = (0..1500).map(|i| i as f32).collect();
    let fragmented = Dxo::new(DataKind::WeightDiff)
        .with_meta("n", 1500)
        .with_tensor("big", &[1500], &big)
        .unwrap()
        .with_tensor("small", &[3], &f64s)
        .unwrap();
    let task = Envelope::new(MessageKind::Task).with_task("task-42", "train");
    let result = Envelope::new(MessageKind::Result)
        .with_task("task-42", "train")
        .with_rc(ReturnCode::ExecutionException);

    // Whole messages in a large ring; a fragmented one in a 4 KiB ring (960-byte fragments).
    let cases: Vec<(&str, u64, Vec<(Envelope<'_>, Option<&Dxo<'_>>)>)> = vec![
        ("every-dtype", 1 << 20, vec![(task, Some(&every_dtype))]),
        ("app-defined", 1 << 20, vec![(result, Some(&app))]),
        (
            "no-dxo",
            1 << 20,
            vec![(Envelope::new(MessageKind::Bye), None)],
        ),
        ("fragmented", 4 << 10, vec![(task, Some(&fragmented))]),
        (
            "sequence",
            1 << 20,
            vec![
                (
                    Envelope::new(MessageKind::TaskAck)
                        .with_task("t", "n")
                        .with_epoch(3)
                        .with_reply_to(9),
                    None,
                ),
                (result, Some(&app)),
                (Envelope::new(MessageKind::Abort), None),
            ],
        ),
    ];
    for (name, capacity, messages) in &cases {
        let (mut producer, mut consumer) = ring(*capacity);
        let mut sender = FrameSender::new();
        let mut records = Vec::new();
        for (envelope, dxo) in messages {
            if *capacity < 1 << 20 {
                // The fragmented message does not fit at once: send from another thread.
                std::thread::scope(|s| {
                    let h = s.spawn(|| sender.send(&mut producer, envelope, *dxo, None).unwrap());
                    let mut buf = Vec::new();
                    while !h.is_finished() || consumer.available_bytes().unwrap() > 0 {
                        if consumer.try_pop_into(&mut buf).unwrap() {
                            records.push(buf.clone());
                        }
                    }
                    h.join().unwrap();
                });
            } else {
                sender.send(&mut producer, envelope, *dxo, None).unwrap();
                records.extend(drain(&mut consumer));
            }
        }
        write(&frames, name, &records, &[]);
        // The seed decodes: every message comes out, and survives a re-encode.
        let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
        let (mut p, mut c) = ring(ring_capacity_for(&refs));
        assert_eq!(push_records(&mut p, &refs), refs.len());
        assert_eq!(
            drain_frames(&mut c, &LIMITS, true),
            messages.len(),
            "seed {name}"
        );
    }

    // Streams: empty, one chunk, several chunks with a short last one.
    let data: Vec<u8> = (0..2500u32).map(|i| (i * 7) as u8).collect();
    for (name, len, chunk) in [
        ("empty", 0, 64),
        ("one-chunk", 100, 128),
        ("chunks", 2500, 1000),
    ] {
        let (mut producer, mut consumer) = ring(1 << 20);
        stream::send_stream(&mut producer, &data[..len], chunk, None).unwrap();
        let records = drain(&mut consumer);
        let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
        let (mut p, mut c) = ring(ring_capacity_for(&refs));
        push_records(&mut p, &refs);
        let mut out = Vec::new();
        stream::recv_stream_into(&mut c, &mut out, 1 << 20, None).unwrap();
        assert_eq!(out, &data[..len], "stream seed {name}");
        write(&streams, &format!("{name}-vec"), &records, &[0]);
        let mut slice_len = (len as u16).to_le_bytes().to_vec();
        slice_len.insert(0, 1);
        write(&streams, &format!("{name}-slice"), &records, &slice_len);
    }
    println!("seeds written under {}", root.display());
}
