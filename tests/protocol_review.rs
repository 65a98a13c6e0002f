//! Defects a review of the protocol found (each test failed before its fix): a result
//! without tensors, a task re-executed after its abort, a new agent incarnation seen while
//! the old one's results drain, and `result_timeout` while no ack comes.
#![cfg(not(loom))]

use std::sync::Arc;
use std::time::{Duration, Instant};

use shmex::frame::{DataKind, Dxo, Envelope, FrameReceiver, FrameSender, MessageKind, ReturnCode};
use shmex::link::{AttachOptions, Link};
use shmex::protocol::{
    AbortSignal, Agent, AgentConfig, Exchanger, ExchangerConfig, ExchangerStatus, Headers, Reply,
};
use shmex::signal::WaitStrategy;

mod common;
use common::{eventually, quick_exchanger_config, quick_wait, unique_name, watchdog_abort};

const WEIGHTS: [f32; 4] = [1.0, 2.0, 3.0, 4.0];

fn model() -> Dxo<'static> {
    Dxo::new(DataKind::Weights)
        .with_tensor("w", &[4], &WEIGHTS)
        .unwrap()
}

fn agent_config() -> AgentConfig {
    AgentConfig {
        attach_timeout: Duration::from_secs(10),
        heartbeat_interval: Duration::from_millis(20),
        wait: quick_wait(),
        ..AgentConfig::default()
    }
}

fn spawn_execute(
    ex: &Arc<Exchanger>,
    id: &str,
    abort: AbortSignal,
) -> std::thread::JoinHandle<Reply> {
    let ex = Arc::clone(ex);
    let id = id.to_string();
    std::thread::spawn(move || ex.execute("train", &model(), &Headers::new(id), &abort))
}

// ------------------------------------------------------------------------------------------
// R1: a result whose DXO carries meta but no tensors (FLARE METRICS results, or an error rc
// with an empty DXO) is treated as "missing data": the agent is told `invalid` and the
// caller gets EXECUTION_EXCEPTION. docs/protocol.md §1.2: result DXO "required (may hold 0
// tensors)"; DESIGN §5 E7: rc other than OK/EARLY_TERMINATION -> bare reply with that rc.

#[test]
fn r1_metrics_only_result_is_accepted() {
    let ex =
        Arc::new(Exchanger::create(&unique_name("rev", "r1a"), quick_exchanger_config()).unwrap());
    let pending = spawn_execute(&ex, "t1", watchdog_abort(Duration::from_secs(20)));
    let agent = Agent::attach(ex.name(), agent_config()).unwrap();
    let _task = agent
        .get_task(Some(Duration::from_secs(10)))
        .unwrap()
        .unwrap();
    let metrics = Dxo::new(DataKind::Metrics).with_meta("accuracy", 0.93);
    let accepted = agent.submit_result(&metrics, ReturnCode::Ok).unwrap();
    let reply = pending.join().unwrap();
    assert_eq!(reply.rc, ReturnCode::Ok, "metrics-only result rejected");
    assert!(accepted);
}

#[test]
fn r1_error_rc_with_empty_dxo_is_bare_reply_with_that_rc() {
    let ex =
        Arc::new(Exchanger::create(&unique_name("rev", "r1b"), quick_exchanger_config()).unwrap());
    let pending = spawn_execute(&ex, "t1", watchdog_abort(Duration::from_secs(20)));
    let agent = Agent::attach(ex.name(), agent_config()).unwrap();
    let _task = agent
        .get_task(Some(Duration::from_secs(10)))
        .unwrap()
        .unwrap();
    // The trainer failed: nothing to send but the rc.
    let accepted = agent
        .submit_result(&Dxo::new(DataKind::Weights), ReturnCode::BadTaskData)
        .unwrap();
    let reply = pending.join().unwrap();
    assert_eq!(reply.rc, ReturnCode::BadTaskData);
    assert!(accepted);
}

// ------------------------------------------------------------------------------------------
// R2: re-executing a task id after aborting it: the agent takes the new push as a duplicate
// of its aborted current task, acks it, and `get_task` never returns it: `execute` hangs
// (no result_timeout by default).

#[test]
fn r2_same_id_after_abort_is_delivered_again() {
    let ex =
        Arc::new(Exchanger::create(&unique_name("rev", "r2"), quick_exchanger_config()).unwrap());
    let agent = Agent::attach(ex.name(), agent_config()).unwrap();
    let abort = AbortSignal::new();
    let first = spawn_execute(&ex, "t1", abort.clone());
    let _task = agent
        .get_task(Some(Duration::from_secs(10)))
        .unwrap()
        .unwrap();
    abort.abort();
    assert_eq!(first.join().unwrap().rc, ReturnCode::TaskAborted);
    eventually("agent saw the abort", || agent.is_aborted());
    // The caller retries the same task while the trainer is still winding down the aborted
    // one (it has not called get_task yet).
    let second = spawn_execute(&ex, "t1", watchdog_abort(Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(300));
    let again = agent.get_task(Some(Duration::from_secs(3))).unwrap();
    assert!(again.is_some(), "retried task t1 never reached the trainer");
    agent.submit_result(&model(), ReturnCode::Ok).unwrap();
    assert_eq!(second.join().unwrap().rc, ReturnCode::Ok);
}

// ------------------------------------------------------------------------------------------
// R3: Pump::drain_and_end ends whatever incarnation is bound when its drain loop finishes.
// When the drain itself reads the first message of the new incarnation B+1 (handle() then
// ends B and adopts B+1), the final `end(bound)` ends B+1 too: min_epoch becomes B+2, and
// adopt(B+1) binds an incarnation whose every message is dropped. The live agent is shown as
// Connected, its task_ack/result never count: `execute` hangs.

struct Raw {
    link: Link,
    sender: FrameSender,
    receiver: FrameReceiver,
}

impl Raw {
    fn attach(ex: &Exchanger) -> Raw {
        let options = AttachOptions {
            heartbeat_interval: Duration::from_millis(20),
            ..AttachOptions::default()
        };
        let link = Link::attach(ex.name(), &options).unwrap();
        let mut receiver = FrameReceiver::default();
        receiver.set_min_epoch(link.epoch());
        Raw {
            link,
            sender: FrameSender::new(),
            receiver,
        }
    }

    fn send(&mut self, envelope: Envelope<'_>, dxo: Option<&Dxo<'_>>) -> u64 {
        let envelope = envelope.with_epoch(self.link.epoch());
        self.sender
            .send(
                self.link.sender(),
                &envelope,
                dxo,
                Some(Instant::now() + Duration::from_secs(10)),
            )
            .unwrap()
    }

    /// Next message of `kind`, within `within`.
    fn wait_for(&mut self, kind: MessageKind, within: Duration) -> Option<(String, u64)> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(m) = self.receiver.recv(self.link.receiver(), Some(end)) {
                if m.kind() == kind {
                    return Some((m.task_id().to_string(), m.sequence()));
                }
            }
        }
        None
    }
}

#[test]
fn r3_new_incarnation_seen_during_drain_is_not_ended() {
    let config = ExchangerConfig {
        agent_heartbeat_interval: Duration::from_millis(20),
        wait: WaitStrategy {
            spin: Duration::from_micros(20),
            poll_interval: Duration::from_millis(100),
        },
        task_ring_capacity: 4096,
        result_ring_capacity: 1 << 20,
        agent_ack_timeout: Duration::from_millis(300),
        ..ExchangerConfig::default()
    };
    let ex = Arc::new(Exchanger::create(&unique_name("rev", "r3"), config).unwrap());
    let result = model().with_meta("n", 1);
    // Incarnation 1 sends results for unknown tasks and never reads: its acks fill the
    // 4 KiB task ring, after which each ack push blocks the pump for agent_ack_timeout.
    let mut b = Raw::attach(&ex);
    assert_eq!(b.link.epoch(), 1);
    for _ in 0..22 {
        b.send(
            Envelope::new(MessageKind::Result).with_task("junk", "train"),
            Some(&result),
        );
    }
    // Incarnation 1 ends, 2 attaches and sends its first (empty-id) result.
    drop(b);
    let mut b2 = Raw::attach(&ex);
    assert_eq!(b2.link.epoch(), 2);
    b2.send(
        Envelope::new(MessageKind::Result).with_task("", "train"),
        Some(&result),
    );
    // Let the pump work through the backlog (6 acks x 300 ms), then drain the task ring.
    std::thread::sleep(Duration::from_secs(3));
    let _ = b2.wait_for(MessageKind::Task, Duration::from_millis(500));
    eventually("bound to 2", || {
        ex.status() == ExchangerStatus::Connected { epoch: 2 }
    });
    // A task for the live incarnation 2.
    let pending = spawn_execute(&ex, "t2", watchdog_abort(Duration::from_secs(5)));
    let (id, seq) = b2
        .wait_for(MessageKind::Task, Duration::from_secs(4))
        .expect("task t2");
    assert_eq!(id, "t2");
    b2.send(
        Envelope::new(MessageKind::TaskAck)
            .with_task("t2", "")
            .with_rc(ReturnCode::Ok)
            .with_reply_to(seq),
        None,
    );
    b2.send(
        Envelope::new(MessageKind::Result).with_task("t2", "train"),
        Some(&result),
    );
    let reply = pending.join().unwrap();
    assert_eq!(
        reply.rc,
        ReturnCode::Ok,
        "live incarnation 2's result was dropped"
    );
}

// ------------------------------------------------------------------------------------------
// R7: result_timeout only runs in Running (after a task_ack). A task whose ack never comes
// (stalled agent, ack push that timed out on a full ring, or an agent that swallowed the
// task) keeps `execute` in AwaitAck forever, even with result_timeout set.

#[test]
fn r7_result_timeout_bounds_execute_without_task_ack() {
    let config = ExchangerConfig {
        result_timeout: Some(Duration::from_millis(500)),
        ..quick_exchanger_config()
    };
    let ex = Arc::new(Exchanger::create(&unique_name("rev", "r7"), config).unwrap());
    let _silent = Raw::attach(&ex); // attached and beating, never reads or acks
    let start = Instant::now();
    let reply = spawn_execute(&ex, "t1", watchdog_abort(Duration::from_secs(5)))
        .join()
        .unwrap();
    assert_eq!(reply.rc, ReturnCode::Timeout, "after {:?}", start.elapsed());
}
