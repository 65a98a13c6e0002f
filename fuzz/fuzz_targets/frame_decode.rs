//! Raw records → `FrameReceiver::recv`, until the ring is empty.
//!
//! Input: records as in `shmex_fuzz::split_records`, pushed raw into an in-process ring
//! of 64 KiB - 1 MiB (`shmex_fuzz::ring_capacity_for`).
//! Checks: no panic, no unbounded allocation (small `Limits`), every `recv` that does not
//! time out consumes ring bytes, every decoded message keeps the format's promises through
//! every accessor, `to_owned_message` says the same, and decode → encode → decode is the
//! identity.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmex_fuzz::{drain_frames, push_records, ring, ring_capacity_for, split_records, LIMITS};

fuzz_target!(|data: &[u8]| {
    let records = split_records(data);
    let (mut producer, mut consumer) = ring(ring_capacity_for(&records));
    push_records(&mut producer, &records);
    drain_frames(&mut consumer, &LIMITS, true);
});
