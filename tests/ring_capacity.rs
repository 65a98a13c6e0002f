//! Ring capacities at the edge of what a link accepts: a ring too small to carry a fragment is
//! refused when the link is created (it used to panic in `FrameSender` later), and a message
//! larger than a ring of the smallest accepted capacity crosses it in fragments, intact.
#![cfg(not(loom))]

use std::time::Duration;

use shmex::frame::{DataKind, Dxo, ReturnCode};
use shmex::link::{LinkCreateError, MIN_RING_CAPACITY};
use shmex::protocol::{Agent, AgentConfig, Exchanger, ExchangerCreateError, Headers};

mod common;

use common::{quick_exchanger_config, quick_wait, unique_name, watchdog_abort, WATCHDOG};

#[test]
fn a_ring_too_small_for_a_fragment_is_refused_at_create_with_a_typed_error() {
    for (tag, task, result) in [("task", 128, 1 << 20), ("result", 1 << 20, 128)] {
        let config = quick_exchanger_config()
            .task_ring_capacity(task)
            .result_ring_capacity(result);
        match Exchanger::create(&unique_name("cap", tag), config) {
            Err(ExchangerCreateError::Link(LinkCreateError::RingTooSmall {
                ring,
                capacity,
                min,
            })) => {
                assert_eq!(ring, tag);
                assert_eq!(capacity, 128);
                assert_eq!(min, MIN_RING_CAPACITY);
            }
            other => panic!("a 128-byte {tag} ring: expected RingTooSmall, got {other:?}"),
        }
    }
}

#[test]
fn a_multi_fragment_message_crosses_rings_of_the_minimum_capacity_intact() {
    let config = quick_exchanger_config()
        .task_ring_capacity(MIN_RING_CAPACITY)
        .result_ring_capacity(MIN_RING_CAPACITY);
    let exchanger = Exchanger::create(&unique_name("cap", "min"), config).unwrap();
    // 64 KiB of distinct values: sixteen times the ring, so many fragments each way.
    let weights: Vec<f32> = (0..16 * 1024).map(|i| i as f32).collect();
    let task = Dxo::new(DataKind::Weights)
        .with_tensor("w", &[weights.len() as u64], &weights)
        .unwrap();
    let agent_config = AgentConfig::default()
        .attach_timeout(Duration::from_secs(10))
        .heartbeat_interval(Duration::from_millis(20))
        .wait(quick_wait());
    let reply = std::thread::scope(|s| {
        let name = exchanger.name().clone();
        let agent = s.spawn(move || {
            let agent = Agent::attach(&name, agent_config).unwrap();
            let task = agent
                .get_task(Some(WATCHDOG))
                .unwrap()
                .expect("a task before the watchdog");
            let got = task
                .message
                .tensor_by_name("w")
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            let doubled: Vec<f32> = got.iter().map(|v| v * 2.0).collect();
            let result = Dxo::new(DataKind::Weights)
                .with_tensor("w", &[doubled.len() as u64], &doubled)
                .unwrap();
            assert!(agent.submit_result(&result, ReturnCode::Ok).unwrap());
            got
        });
        let reply = exchanger.execute(
            "train",
            &task,
            &Headers::new("t1"),
            &watchdog_abort(WATCHDOG),
        );
        let seen_by_agent = agent.join().expect("agent thread panicked");
        assert_eq!(seen_by_agent, weights, "the task arrived altered");
        reply
    });
    assert_eq!(reply.rc, ReturnCode::Ok);
    let back = reply
        .result
        .unwrap()
        .tensor_by_name("w")
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let expected: Vec<f32> = weights.iter().map(|v| v * 2.0).collect();
    assert_eq!(back, expected, "the result arrived altered");
}
