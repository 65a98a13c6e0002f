//! Loom models of the ring's publication protocol and of the sleep/wake protocol.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=/work/target-loom cargo test --release --test loom`
#![cfg(loom)]

use std::sync::Arc;
use std::time::Duration;

use loom::thread;
use shmex::ring::{in_process, Consumer, Producer};
use shmex::signal::{LoomFutex, NoPeerCheck, Signals, WaitStrategy};

fn signals() -> Signals {
    Signals {
        waiter: Arc::new(LoomFutex::new()),
        peer: Arc::new(NoPeerCheck),
        strategy: WaitStrategy::default()
            .spin(Duration::ZERO)
            .poll_interval(Duration::from_millis(10)),
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(4);
    }
    builder.check(f);
}

/// Pops one record, blocking, and checks its length and first byte.
fn expect(consumer: &mut Consumer, len: usize, first: u8) {
    let grant = consumer.peek(None).unwrap();
    assert_eq!(grant.len(), len);
    if len > 0 {
        assert_eq!(grant.as_slice()[0], first);
    }
    grant.release();
}

fn push(producer: &mut Producer, len: usize, first: u8) {
    let mut grant = producer.reserve(len, None).unwrap();
    if len > 0 {
        grant.as_mut_slice()[0] = first;
    }
    grant.commit();
}

/// Three records through a 4-slot ring; the third needs a padding record and a wrap:
/// [0,128) [128,192) pad [192,256) then [256,384).
#[test]
fn records_are_published_and_consumed_in_order_across_a_wrap() {
    model(|| {
        let (mut producer, mut consumer) = in_process(256, signals()).unwrap();
        let writer = thread::spawn(move || {
            push(&mut producer, 64, 1);
            push(&mut producer, 0, 2);
            push(&mut producer, 100, 3);
        });
        expect(&mut consumer, 64, 1);
        expect(&mut consumer, 0, 2);
        expect(&mut consumer, 100, 3);
        writer.join().unwrap();
        assert!(consumer.try_peek().unwrap().is_none());
    });
}

/// The consumer sleeps on an empty ring; one commit must wake it (a lost wake-up would show
/// as a deadlock, since loom's futex model ignores timeouts).
#[test]
fn a_sleeping_consumer_is_woken_by_a_commit() {
    model(|| {
        let (mut producer, mut consumer) = in_process(256, signals()).unwrap();
        let reader = thread::spawn(move || expect(&mut consumer, 8, 42));
        push(&mut producer, 8, 42);
        reader.join().unwrap();
    });
}

/// The producer sleeps on a full ring; one release must wake it.
#[test]
fn a_producer_blocked_on_a_full_ring_is_woken_by_a_release() {
    model(|| {
        let (mut producer, mut consumer) = in_process(128, signals()).unwrap();
        // One record fills the ring (64-byte header slot + 64-byte payload).
        producer.try_push(&[7; 64]).unwrap();
        let reader = thread::spawn(move || {
            expect(&mut consumer, 64, 7);
            expect(&mut consumer, 1, 9);
        });
        push(&mut producer, 1, 9);
        reader.join().unwrap();
    });
}

/// A record held in place (`ReadGrant::hold`) and dropped on another thread, while the
/// consumer reads on and the producer waits for room: the producer never writes over the
/// held bytes, and the drop wakes it (a lost wake-up would deadlock the model).
#[test]
fn a_hold_dropped_on_another_thread_frees_its_room_and_wakes_the_producer() {
    model(|| {
        let (mut producer, mut consumer) = in_process(256, signals()).unwrap();
        // Two records fill the ring: A [0,128), B [128,256).
        producer.try_push(&[1; 64]).unwrap();
        producer.try_push(&[2; 1]).unwrap();
        let hold = consumer.try_peek().unwrap().unwrap().hold(0).unwrap();
        let dropper = thread::spawn(move || {
            assert_eq!(hold.as_slice()[0], 1, "the held bytes are intact");
            drop(hold);
        });
        let writer = thread::spawn(move || {
            // Needs A's room: only there once B is read and the hold is dropped.
            push(&mut producer, 64, 3);
        });
        expect(&mut consumer, 1, 2);
        expect(&mut consumer, 64, 3);
        dropper.join().unwrap();
        writer.join().unwrap();
    });
}
