//! Helpers shared by the shmex fuzz targets and the seed generator.
//!
//! Input format of the decode targets: a sequence of ring records, each a little-endian
//! `u16` length followed by that many bytes (the last record is cut short if the input ends
//! first). At most [`MAX_RECORDS`] records are taken.

use std::time::Instant;

use serde_json::{Map, Value};
use shmex::frame::{
    DType, DataKind, Dxo, Envelope, FrameError, FrameReceiver, FrameSender, Limits, Message,
    MessageKind, OwnedMessage, ReturnCode, TensorView, ViewError, BF16, F16, MAX_DIMS,
};
use shmex::ring::{self, Consumer, Producer};
use shmex::signal::Signals;

/// Capacity of the ring the decode targets push records into.
pub const RING_CAPACITY: u64 = 1 << 20;
/// Most records taken from one input.
pub const MAX_RECORDS: usize = 64;
/// The largest stream `stream_decode` accepts.
pub const MAX_STREAM_LEN: u64 = 16 << 20;

/// Small limits, so that no input can make the decoder allocate gigabytes.
pub const LIMITS: Limits = Limits::DEFAULT
    .max_message_len(16 << 20)
    .max_tensors(4096)
    .max_name_len(1024)
    .max_meta_len(1 << 20)
    .max_task_field_len(1024);

/// Splits a fuzz input into records (see the module docs).
pub fn split_records(mut data: &[u8]) -> Vec<&[u8]> {
    let mut records = Vec::new();
    while data.len() >= 2 && records.len() < MAX_RECORDS {
        let len = u16::from_le_bytes([data[0], data[1]]) as usize;
        data = &data[2..];
        let len = len.min(data.len());
        records.push(&data[..len]);
        data = &data[len..];
    }
    records
}

/// The inverse of [`split_records`] (for seeds). Records longer than `u16::MAX` are not
/// representable and panic.
pub fn join_records<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let len = u16::try_from(r.len()).expect("record fits a u16 length");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// An in-process ring.
pub fn ring(capacity: u64) -> (Producer, Consumer) {
    ring::in_process(capacity, Signals::in_process()).expect("valid ring capacity")
}

/// Capacity of the ring an input's records are pushed into: room for all of them (records
/// have a 64-byte header and are 64-byte aligned), a power of two between 64 KiB and
/// [`RING_CAPACITY`]. Sized by the input (not always 1 MiB) because zeroing a fresh 1 MiB
/// ring under ASan was half the run time; records larger than the ring's largest record
/// are still skipped.
pub fn ring_capacity_for(records: &[&[u8]]) -> u64 {
    let needed: u64 = records
        .iter()
        .map(|r| 64 + (r.len() as u64).next_multiple_of(64))
        .sum();
    needed
        .saturating_add(64)
        .next_power_of_two()
        .clamp(64 << 10, RING_CAPACITY)
}

/// Pushes the records raw, skipping those larger than the ring's largest record and stopping
/// when the ring is full. Returns how many were pushed.
pub fn push_records(producer: &mut Producer, records: &[&[u8]]) -> usize {
    let mut pushed = 0;
    for r in records {
        if r.len() > producer.max_record() {
            continue;
        }
        if producer.try_push(r).is_err() {
            break;
        }
        pushed += 1;
    }
    pushed
}

/// Bytes a tensor of `dtype` and `shape` needs; `None` on overflow.
fn tensor_len(dtype: DType, shape: &[u64]) -> Option<u64> {
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))?
        .checked_mul(dtype.size() as u64)
}

/// Touches every accessor of one tensor view and checks what the format promises.
fn exercise_tensor(t: &TensorView<'_>, limits: &Limits) {
    let name = t.name();
    assert!(!name.is_empty(), "decoded tensor with an empty name");
    assert!(
        name.len() <= limits.max_name_len as usize,
        "name over the limit"
    );
    let shape = t.shape();
    assert!(shape.len() <= MAX_DIMS);
    let bytes = t.bytes();
    assert_eq!(
        tensor_len(t.dtype(), shape),
        Some(bytes.len() as u64),
        "tensor {name:?}: bytes do not match shape {shape:?} of {}",
        t.dtype()
    );
    assert_eq!(t.len(), bytes.len() / t.dtype().size());
    assert_eq!(t.is_empty(), bytes.is_empty());
    // Every typed view: the right one must succeed (the format aligns tensors to 64 bytes in
    // an aligned body), every other one must be a WrongDType error.
    macro_rules! typed {
        ($($ty:ty),*) => {$(
            let view = t.as_slice::<$ty>();
            let copied = t.to_vec::<$ty>();
            let mut out = vec![<$ty>::default(); t.len()];
            let copy_to = t.copy_to::<$ty>(&mut out);
            if t.dtype() == <$ty as shmex::frame::Element>::DTYPE {
                let view = view.expect("in-place view of a decoded tensor");
                assert_eq!(view.len(), t.len());
                let copied = copied.expect("to_vec of a decoded tensor");
                assert_eq!(zerocopy_bytes(&copied), bytes);
                copy_to.expect("copy_to of a decoded tensor");
                assert_eq!(zerocopy_bytes(&out), bytes);
            } else {
                assert!(matches!(view, Err(ViewError::WrongDType { .. })));
                assert!(matches!(copied, Err(ViewError::WrongDType { .. })));
                assert!(matches!(copy_to, Err(ViewError::WrongDType { .. })));
            }
        )*};
    }
    typed!(f32, f64, i8, i16, i32, i64, u8, u16, u32, u64, F16, BF16);
    match t.to_bools() {
        Ok(v) => {
            assert_eq!(t.dtype(), DType::Bool);
            assert_eq!(v.len(), bytes.len());
            assert!(v.iter().zip(bytes).all(|(&b, &raw)| u8::from(b) == raw));
        }
        Err(ViewError::InvalidBool) => {
            assert_eq!(t.dtype(), DType::Bool);
            assert!(bytes.iter().any(|&b| b > 1));
        }
        Err(ViewError::WrongDType { .. }) => assert_ne!(t.dtype(), DType::Bool),
        Err(e) => panic!("unexpected to_bools error {e:?}"),
    }
}

/// The raw bytes of a slice of tensor elements (zerocopy proves the types have no padding).
fn zerocopy_bytes<T: shmex::frame::Element>(v: &[T]) -> &[u8] {
    zerocopy::IntoBytes::as_bytes(v)
}

/// Everything a decoded message says, owned, for comparisons.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub kind: MessageKind,
    pub rc: ReturnCode,
    pub task_id: String,
    pub task_name: String,
    pub data_kind: Option<DataKind>,
    pub meta: Map<String, Value>,
    pub opaque: Vec<u8>,
    pub tensors: Vec<(String, DType, Vec<u64>, Vec<u8>)>,
}

fn snapshot_tensors<'t>(
    it: impl Iterator<Item = TensorView<'t>>,
) -> Vec<(String, DType, Vec<u64>, Vec<u8>)> {
    it.map(|t| {
        (
            t.name().to_string(),
            t.dtype(),
            t.shape().to_vec(),
            t.bytes().to_vec(),
        )
    })
    .collect()
}

/// A snapshot of anything with the accessors of a received message (`Message` and
/// `OwnedMessage` share them).
macro_rules! snapshot_of {
    ($m:expr) => {
        Snapshot {
            kind: $m.kind(),
            rc: $m.rc(),
            task_id: $m.task_id().to_string(),
            task_name: $m.task_name().to_string(),
            data_kind: $m.data_kind(),
            meta: $m.meta().clone(),
            opaque: $m.opaque().to_vec(),
            tensors: snapshot_tensors($m.tensors()),
        }
    };
}

/// Snapshot of a received message.
pub fn snapshot(m: &Message<'_>) -> Snapshot {
    snapshot_of!(m)
}

/// Snapshot of an owned message.
pub fn snapshot_owned(m: &OwnedMessage) -> Snapshot {
    snapshot_of!(m)
}

/// Touches every accessor of a decoded message, checks the promises of the format, and
/// returns its snapshot.
pub fn exercise_message(m: &Message<'_>, limits: &Limits) -> Snapshot {
    let _ = (m.sequence(), m.is_in_ring(), format!("{m:?}"));
    assert!(m.task_id().len() <= limits.max_task_field_len as usize);
    assert!(m.task_name().len() <= limits.max_task_field_len as usize);
    assert_eq!(m.has_dxo(), m.data_kind().is_some());
    if !m.has_dxo() {
        assert!(m.meta().is_empty() && m.opaque().is_empty() && m.tensor_count() == 0);
    }
    if !m.opaque().is_empty() {
        assert_eq!(m.data_kind(), Some(DataKind::AppDefined));
    }
    assert!(m.tensor_count() <= limits.max_tensors as usize);
    assert_eq!(m.tensors().len(), m.tensor_count());
    let mut names = std::collections::HashSet::new();
    for (i, t) in m.tensors().enumerate() {
        exercise_tensor(&t, limits);
        assert!(
            names.insert(t.name()),
            "duplicate tensor name {:?}",
            t.name()
        );
        assert_eq!(m.tensor(i), Some(t));
        // Names are unique, so lookup by name finds this very tensor.
        assert_eq!(m.tensor_by_name(t.name()), Some(t));
    }
    assert!(m.tensor(m.tensor_count()).is_none());
    let snap = snapshot(m);
    let owned = m
        .to_owned_message()
        .expect("memory for a copy of a decoded message");
    assert_eq!(owned.sequence(), m.sequence());
    for t in owned.tensors() {
        exercise_tensor(&t, limits);
        assert_eq!(owned.tensor_by_name(t.name()), Some(t));
    }
    let owned_snap = snapshot_owned(&owned);
    assert_eq!(
        owned_snap, snap,
        "to_owned_message differs from the message"
    );
    let cloned = owned.clone();
    assert_eq!(snapshot_owned(&cloned), snap);
    snap
}

/// Whether float meta values must survive a round trip bit for bit: yes, unless
/// `SHMEX_FUZZ_LOOSE_FLOATS=1`. The first fuzz runs found serde_json's default float parser
/// changing values by an ULP; the crate now enables `float_roundtrip` (see README.md), so exact
/// is the default and the loose mode only exists to fuzz an older build past that finding.
pub fn strict_floats() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("SHMEX_FUZZ_LOOSE_FLOATS").is_none_or(|v| v != "1"))
}

/// JSON values equal, floats within a few ULPs unless [`strict_floats`].
pub fn json_close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x != y && !strict_floats() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) if a.is_f64() && b.is_f64() => {
                    x.is_sign_negative() == y.is_sign_negative()
                        && x.to_bits().abs_diff(y.to_bits()) <= 4
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y))
        }
        (Value::Object(x), Value::Object(y)) => meta_close(x, y),
        _ => a == b,
    }
}

/// Meta dictionaries equal, floats within a few ULPs unless [`strict_floats`].
pub fn meta_close(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && json_close(va, vb))
}

/// Asserts two snapshots say the same (meta compared with [`meta_close`]).
pub fn assert_same(got: &Snapshot, want: &Snapshot, what: &str) {
    let got_no_meta = Snapshot {
        meta: Map::new(),
        ..got.clone()
    };
    let want_no_meta = Snapshot {
        meta: Map::new(),
        ..want.clone()
    };
    assert_eq!(got_no_meta, want_no_meta, "{what}");
    assert!(
        meta_close(&got.meta, &want.meta),
        "{what}: meta differs\n  got: {:?}\n want: {:?}",
        got.meta,
        want.meta
    );
}

/// Builds the DXO a snapshot describes (borrowing its bytes).
pub fn dxo_of(s: &Snapshot) -> Option<Dxo<'_>> {
    let kind = s.data_kind?;
    let mut dxo = Dxo::new(kind).with_meta_map(s.meta.clone());
    for (name, dtype, shape, bytes) in &s.tensors {
        dxo = dxo
            .with_tensor_bytes(name.clone(), *dtype, shape, bytes)
            .expect("a decoded tensor is a valid DXO tensor");
    }
    if kind == DataKind::AppDefined {
        dxo = dxo
            .with_opaque(&s.opaque)
            .expect("APP_DEFINED takes opaque bytes");
    }
    Some(dxo)
}

/// The envelope a snapshot describes.
pub fn envelope_of(s: &Snapshot) -> Envelope<'_> {
    Envelope::new(s.kind)
        .with_rc(s.rc)
        .with_task(&s.task_id, &s.task_name)
}

/// Sends a snapshot again through a fresh ring large enough for it to travel as one record
/// and decodes it; the result must equal the snapshot (decode → encode → decode is the
/// identity on everything a message says).
pub fn reencode_and_compare(s: &Snapshot, limits: &Limits) {
    let dxo = dxo_of(s);
    let approx: usize = 4096
        + s.task_id.len()
        + s.task_name.len()
        + s.opaque.len()
        + serde_json::to_vec(&s.meta).map_or(0, |v| v.len())
        + s.tensors
            .iter()
            .map(|t| 96 + 64 + t.0.len() + t.3.len())
            .sum::<usize>();
    let capacity = (2 * approx as u64).next_power_of_two();
    let (mut producer, mut consumer) = ring(capacity);
    FrameSender::new()
        .send(
            &mut producer,
            &envelope_of(s),
            dxo.as_ref(),
            Some(Instant::now()),
        )
        .expect("a decoded message can be sent again");
    let mut receiver = FrameReceiver::new(*limits);
    let m = receiver
        .recv(&mut consumer, Some(Instant::now()))
        .expect("a re-encoded decoded message decodes");
    assert!(m.is_in_ring());
    let again = snapshot(&m);
    assert_same(&again, s, "decode -> encode -> decode changed the message");
}

/// Runs the frame receiver over everything in `consumer`, checking each decoded message.
/// Every call that does not time out must consume something (no livelock for a caller that
/// loops on `recv`). Returns the number of messages decoded.
pub fn drain_frames(consumer: &mut Consumer, limits: &Limits, reencode: bool) -> usize {
    let mut receiver = FrameReceiver::new(*limits);
    let mut own = shmex::frame::AlignedBuf::zeroed(1 << 20).expect("1 MiB buffer");
    let mut decoded = 0;
    // Each successful or failing call consumes at least one record; the bound is a backstop.
    for call in 0..4 * MAX_RECORDS + 8 {
        let before = consumer
            .available_bytes()
            .expect("in-process ring is never corrupt");
        if before == 0 {
            break;
        }
        // Every other call receives into a caller's buffer instead of in place.
        let timed_out = {
            let received = if call % 2 == 0 {
                receiver.recv(consumer, Some(Instant::now()))
            } else {
                receiver.recv_into(consumer, Some(Instant::now()), own.as_mut_slice())
            };
            match received {
                Ok(m) => {
                    let snap = exercise_message(&m, limits);
                    drop(m);
                    if reencode {
                        reencode_and_compare(&snap, limits);
                    }
                    decoded += 1;
                    false
                }
                Err(FrameError::Timeout) => true,
                Err(FrameError::Corrupt(e)) => panic!("in-process ring reported corrupt: {e}"),
                Err(FrameError::PeerLost(e)) => panic!("in-process peer lost: {e}"),
                Err(e) => {
                    let _ = e.to_string();
                    false
                }
            }
        };
        if timed_out {
            break;
        }
        let after = consumer
            .available_bytes()
            .expect("in-process ring is never corrupt");
        assert!(
            after < before,
            "recv made no progress ({before} bytes left)"
        );
    }
    decoded
}
