//! Arbitrary `Dxo` + envelope → `FrameSender::send` (on another thread, through a ring that is
//! sometimes much smaller than the message, so it is fragmented) → `FrameReceiver::recv`;
//! the received message must say exactly what was sent, and a second message must follow.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use shmex::frame::{
    DType, DataKind, Dxo, Envelope, FrameError, FrameReceiver, FrameSender, MessageKind,
    ReturnCode, MAX_DIMS,
};
use shmex_fuzz::{assert_same, exercise_message, ring, Snapshot, LIMITS};

#[derive(Arbitrary, Debug)]
enum Scalar {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
}

#[derive(Arbitrary, Debug)]
enum Meta {
    Scalar(Scalar),
    List(Vec<Scalar>),
    Object(Vec<(String, Scalar)>),
}

#[derive(Arbitrary, Debug)]
struct Tensor {
    name: String,
    dtype: u8,
    shape: Vec<u8>,
    seed: u8,
}

#[derive(Arbitrary, Debug)]
struct ArbDxo {
    data_kind: u8,
    meta: Vec<(String, Meta)>,
    tensors: Vec<Tensor>,
    opaque: Vec<u8>,
    /// Multiplies the first dimension of every tensor, to make messages larger than small rings.
    scale: u8,
}

#[derive(Arbitrary, Debug)]
struct Input {
    kind: u8,
    rc: u8,
    task_id: String,
    task_name: String,
    dxo: Option<ArbDxo>,
    ring: u8,
}

fn scalar(s: &Scalar) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Bool(b) => Value::from(*b),
        Scalar::I64(i) => Value::from(*i),
        Scalar::U64(u) => Value::from(*u),
        Scalar::F64(f) => Value::from(*f), // NaN and infinities become null
        Scalar::Str(s) => Value::from(s.as_str()),
    }
}

fn meta_value(m: &Meta) -> Value {
    match m {
        Meta::Scalar(s) => scalar(s),
        Meta::List(v) => Value::Array(v.iter().map(scalar).collect()),
        Meta::Object(v) => Value::Object(v.iter().map(|(k, s)| (k.clone(), scalar(s))).collect()),
    }
}

/// Most bytes of tensor data one input may ask for.
const MAX_DATA: u64 = 2 << 20;

fuzz_target!(|input: Input| {
    let kind = MessageKind::ALL[input.kind as usize % MessageKind::ALL.len()];
    let rc = ReturnCode::ALL[input.rc as usize % ReturnCode::ALL.len()];
    let envelope = Envelope::new(kind)
        .with_rc(rc)
        .with_task(&input.task_id, &input.task_name);

    // Tensor bytes must outlive the DXO that borrows them.
    let mut specs: Vec<(String, DType, Vec<u64>, Vec<u8>)> = Vec::new();
    let mut budget = MAX_DATA;
    if let Some(d) = &input.dxo {
        for t in d.tensors.iter().take(64) {
            let dtype = DType::ALL[t.dtype as usize % DType::ALL.len()];
            let mut shape: Vec<u64> = t
                .shape
                .iter()
                .take(MAX_DIMS)
                .map(|&d| u64::from(d % 17))
                .collect();
            if let Some(first) = shape.first_mut() {
                *first *= u64::from(d.scale).max(1);
            }
            let len = shape.iter().product::<u64>() * dtype.size() as u64;
            if len > budget {
                continue;
            }
            budget -= len;
            let bytes: Vec<u8> = (0..len)
                .map(|i| match dtype {
                    DType::Bool => ((i as u8) ^ t.seed) & 1,
                    _ => (i as u8).wrapping_mul(31) ^ t.seed,
                })
                .collect();
            specs.push((t.name.clone(), dtype, shape, bytes));
        }
    }
    let dxo: Option<Dxo<'_>> = input.dxo.as_ref().map(|d| {
        let data_kind = DataKind::ALL[d.data_kind as usize % DataKind::ALL.len()];
        let meta: Map<String, Value> = d
            .meta
            .iter()
            .take(32)
            .map(|(k, v)| (k.clone(), meta_value(v)))
            .collect();
        let mut dxo = Dxo::new(data_kind).with_meta_map(meta);
        for (name, dtype, shape, bytes) in &specs {
            match dxo
                .clone()
                .with_tensor_bytes(name.clone(), *dtype, shape, bytes)
            {
                Ok(next) => dxo = next,
                Err(e) => assert!(
                    name.is_empty()
                        || name.len() > usize::from(u16::MAX)
                        || dxo.tensors().iter().any(|t| t.name() == name),
                    "builder refused a valid tensor {name:?}: {e}"
                ),
            }
        }
        match dxo.clone().with_opaque(&d.opaque) {
            Ok(next) => dxo = next,
            Err(_) => assert_ne!(data_kind, DataKind::AppDefined),
        }
        dxo
    });

    let expected = Snapshot {
        kind,
        rc,
        task_id: input.task_id.clone(),
        task_name: input.task_name.clone(),
        data_kind: dxo.as_ref().map(|d| d.data_kind()),
        meta: dxo.as_ref().map(|d| d.meta().clone()).unwrap_or_default(),
        opaque: dxo
            .as_ref()
            .and_then(|d| d.opaque())
            .unwrap_or(&[])
            .to_vec(),
        tensors: dxo
            .as_ref()
            .map(|d| {
                d.tensors()
                    .iter()
                    .map(|t| {
                        (
                            t.name().to_string(),
                            t.dtype(),
                            t.shape().to_vec(),
                            t.bytes().to_vec(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    let over_limit = expected.task_id.len() > LIMITS.max_task_field_len as usize
        || expected.task_name.len() > LIMITS.max_task_field_len as usize
        || expected
            .tensors
            .iter()
            .any(|t| t.0.len() > LIMITS.max_name_len as usize);

    let capacity: u64 = [4 << 10, 64 << 10, 1 << 20][input.ring as usize % 3];
    let (mut producer, mut consumer) = ring(capacity);
    let deadline = Some(Instant::now() + Duration::from_secs(20));
    let mut receiver = FrameReceiver::new(LIMITS);
    std::thread::scope(|scope| {
        let sender = scope.spawn(move || {
            let mut sender = FrameSender::new();
            let first = sender.send(&mut producer, &envelope, dxo.as_ref(), deadline);
            let second = sender.send(
                &mut producer,
                &Envelope::new(MessageKind::Bye),
                None,
                deadline,
            );
            (first, second)
        });
        match receiver.recv(&mut consumer, deadline) {
            Ok(m) => {
                assert!(!over_limit, "a message over the limits was accepted");
                let got = exercise_message(&m, &LIMITS);
                assert_same(
                    &got,
                    &expected,
                    "received message differs from the one sent",
                );
                assert_eq!(m.sequence(), 1);
            }
            Err(FrameError::OverLimit { .. }) if over_limit => {}
            Err(e) => panic!("sent message not received: {e}"),
        }
        let bye = receiver
            .recv(&mut consumer, deadline)
            .expect("the link stays usable");
        assert_eq!(bye.kind(), MessageKind::Bye);
        assert_eq!(bye.sequence(), 2);
        drop(bye);
        let (first, second) = sender.join().unwrap();
        assert_eq!(first.expect("send"), 1);
        assert_eq!(second.expect("send"), 2);
    });
});
