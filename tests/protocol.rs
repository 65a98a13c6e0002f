//! In-process behaviour tests of `protocol::Exchanger` and `protocol::Agent`: one test per
//! item of DESIGN §5, named as in `docs/protocol.md` §4. Protocol violations are driven with a
//! raw `Link` + `FrameSender` as the peer. Tests that need a second process (SIGKILL) are in
//! `tests/protocol_faults.rs`. Every blocking call has a deadline or a watchdog abort.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmex::error::{Coded, ErrorCode};
use shmex::frame::{
    DType, DataKind, Dxo, Envelope, FrameError, FrameReceiver, FrameSender, LoanSpec, MessageKind,
    OwnedMessage, ReturnCode,
};
use shmex::link::{AttachOptions, CreateOptions, Link};
use shmex::protocol::{
    AbortSignal, Agent, AgentConfig, AgentStatus, Exchanger, ExchangerConfig, ExchangerStatus,
    GetTaskError, Headers, Reply, RestartPolicy, ResultLoan, SubmitError, TaskLoan, TaskLoanError,
};
use shmex::segment::SegmentName;

mod common;

use common::{eventually, quick_exchanger_config as exchanger_config, quick_wait, unique_name};

const WATCHDOG: Duration = Duration::from_secs(60);

fn deadline() -> Option<Instant> {
    Some(Instant::now() + WATCHDOG)
}

fn unique(tag: &str) -> SegmentName {
    unique_name("proto", tag)
}

fn agent_config() -> AgentConfig {
    AgentConfig::default()
        .attach_timeout(Duration::from_secs(10))
        .heartbeat_interval(Duration::from_millis(20))
        .wait(quick_wait())
}

fn create(tag: &str) -> Exchanger {
    create_with(tag, exchanger_config())
}

fn create_with(tag: &str, config: ExchangerConfig) -> Exchanger {
    Exchanger::create(&unique(tag), config).unwrap()
}

fn attach(exchanger: &Exchanger) -> Agent {
    Agent::attach(exchanger.name(), agent_config()).unwrap()
}

/// An abort signal that fires after the watchdog period.
fn watchdog() -> AbortSignal {
    common::watchdog_abort(WATCHDOG)
}

const WEIGHTS: [f32; 4] = [1.0, 2.0, 3.0, 4.0];

fn model() -> Dxo<'static> {
    Dxo::new(DataKind::Weights)
        .with_tensor("w", &[4], &WEIGHTS)
        .unwrap()
}

/// Runs `execute` on a thread (with a watchdog abort); the reply arrives on the handle.
fn spawn_execute(
    exchanger: &Arc<Exchanger>,
    id: &str,
    abort: AbortSignal,
) -> std::thread::JoinHandle<Reply> {
    let exchanger = Arc::clone(exchanger);
    let id = id.to_string();
    std::thread::spawn(move || exchanger.execute("train", &model(), &Headers::new(id), &abort))
}

fn join(handle: std::thread::JoinHandle<Reply>) -> Reply {
    handle.join().expect("execute thread panicked")
}

/// Waits for the agent to be closed, then checks that `get_task` says so.
fn assert_closed(agent: &Agent) {
    eventually("closed", || agent.status() == AgentStatus::Closed);
    assert_eq!(
        agent.get_task(Some(WATCHDOG)).unwrap_err(),
        GetTaskError::Closed
    );
}

/// Asserts that no task arrives within `ms` milliseconds.
fn assert_no_task(agent: &Agent, ms: u64) {
    let got = agent.get_task(Some(Duration::from_millis(ms))).unwrap();
    assert!(got.is_none(), "unexpected task {got:?}");
}

fn get(agent: &Agent) -> shmex::protocol::Task {
    agent
        .get_task(Some(WATCHDOG))
        .unwrap()
        .expect("a task before the watchdog")
}

fn diff() -> Dxo<'static> {
    Dxo::new(DataKind::WeightDiff)
        .with_tensor("w", &[4], &WEIGHTS)
        .unwrap()
}

/// A hand-driven agent: a raw link and frame codec, to send what a real agent would not.
struct RawAgent {
    link: Link,
    sender: FrameSender,
    receiver: FrameReceiver,
}

impl RawAgent {
    fn attach(exchanger: &Exchanger) -> RawAgent {
        let options = AttachOptions::default().heartbeat_interval(Duration::from_millis(20));
        let link = Link::attach(exchanger.name(), &options).unwrap();
        let mut receiver = FrameReceiver::default();
        receiver.set_min_epoch(link.epoch());
        RawAgent {
            link,
            sender: FrameSender::new(),
            receiver,
        }
    }

    fn recv(&mut self) -> OwnedMessage {
        self.receiver
            .recv(self.link.receiver(), deadline())
            .unwrap()
            .into_owned()
            .unwrap()
    }

    fn send(&mut self, envelope: Envelope<'_>, dxo: Option<&Dxo<'_>>) -> u64 {
        let envelope = envelope.with_epoch(self.link.epoch());
        self.sender
            .send(self.link.sender(), &envelope, dxo, deadline())
            .unwrap()
    }

    /// The next message of `kind` within `within` (others are skipped), as (task id, sequence).
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

    /// Receives a task and acks it with `rc`.
    fn take_task(&mut self, rc: ReturnCode) -> OwnedMessage {
        let task = self.recv();
        assert_eq!(task.kind(), MessageKind::Task);
        let ack = Envelope::new(MessageKind::TaskAck)
            .with_task(task.task_id(), "")
            .with_rc(rc)
            .with_reply_to(task.sequence());
        self.send(ack, None);
        task
    }

    /// Sends a result and returns the exchanger's `result_ack`.
    fn result(&mut self, id: &str, rc: ReturnCode, dxo: Option<&Dxo<'_>>) -> OwnedMessage {
        let envelope = Envelope::new(MessageKind::Result)
            .with_task(id, "train")
            .with_rc(rc);
        let sequence = self.send(envelope, dxo);
        let ack = self.recv();
        assert_eq!(ack.kind(), MessageKind::ResultAck);
        assert_eq!(ack.reply_to(), sequence);
        ack
    }
}

/// An exchanger executing task `t1` (on a thread) and a raw agent that took and accepted it.
fn task_taken(tag: &str) -> (Arc<Exchanger>, std::thread::JoinHandle<Reply>, RawAgent) {
    let exchanger = Arc::new(create(tag));
    let pending = spawn_execute(&exchanger, "t1", watchdog());
    let mut raw = RawAgent::attach(&exchanger);
    raw.take_task(ReturnCode::Ok);
    (exchanger, pending, raw)
}

/// A hand-driven exchanger for the agent tests.
struct RawExchanger {
    link: Link,
    sender: FrameSender,
    receiver: FrameReceiver,
}

impl RawExchanger {
    fn create(tag: &str, heartbeat_interval: Duration) -> RawExchanger {
        let options = CreateOptions::default()
            .ring_capacity(1 << 20)
            .heartbeat_interval(heartbeat_interval);
        RawExchanger {
            link: Link::create(&unique(tag), &options).unwrap(),
            sender: FrameSender::new(),
            receiver: FrameReceiver::default(),
        }
    }

    fn name(&self) -> SegmentName {
        self.link.name().unwrap().clone()
    }

    fn attach(&self) -> Agent {
        Agent::attach(&self.name(), agent_config()).unwrap()
    }

    fn send(&mut self, envelope: Envelope<'_>, dxo: Option<&Dxo<'_>>) -> u64 {
        let (epoch, _) = self.link.peer_epoch_and_pid();
        self.sender
            .send(
                self.link.sender(),
                &envelope.with_epoch(epoch),
                dxo,
                deadline(),
            )
            .unwrap()
    }

    fn recv(&mut self) -> OwnedMessage {
        self.receiver
            .recv(self.link.receiver(), deadline())
            .unwrap()
            .into_owned()
            .unwrap()
    }

    /// Sends task `id` (with meta) and returns the agent's `task_ack`.
    fn task(&mut self, id: &str) -> OwnedMessage {
        let dxo = model().with_meta("current_round", 1);
        let envelope = Envelope::new(MessageKind::Task).with_task(id, "train");
        let sequence = self.send(envelope, Some(&dxo));
        let ack = self.recv();
        assert_eq!(ack.kind(), MessageKind::TaskAck);
        assert_eq!(ack.reply_to(), sequence);
        ack
    }

    fn abort(&mut self, id: &str) {
        let envelope = Envelope::new(MessageKind::Abort)
            .with_task(id, "")
            .with_rc(ReturnCode::TaskAborted);
        self.send(envelope, None);
    }

    /// Receives a result and acks it with `rc`, attributed to `attributed`.
    fn answer_result(&mut self, rc: ReturnCode, attributed: &str) -> OwnedMessage {
        let result = self.recv();
        assert_eq!(result.kind(), MessageKind::Result);
        let ack = Envelope::new(MessageKind::ResultAck)
            .with_task(attributed, "")
            .with_rc(rc)
            .with_reply_to(result.sequence());
        self.send(ack, None);
        result
    }
}

/// A raw exchanger, an agent attached to it, and task `t1` sent and fetched.
fn fetched(tag: &str) -> (RawExchanger, Agent) {
    let (mut raw, agent) = raw_pair(tag);
    raw.task("t1");
    get(&agent);
    (raw, agent)
}

/// A raw exchanger (20 ms heartbeat) and an agent attached to it.
fn raw_pair(tag: &str) -> (RawExchanger, Agent) {
    let raw = RawExchanger::create(tag, Duration::from_millis(20));
    let agent = raw.attach();
    (raw, agent)
}

/// Submits on a thread while the raw exchanger answers; returns (verdict, result sent).
fn submit_answered(
    agent: &Agent,
    exchanger: &mut RawExchanger,
    ack_rc: ReturnCode,
    attributed: &str,
) -> (bool, OwnedMessage) {
    std::thread::scope(|s| {
        let submit = s.spawn(|| agent.submit_result(&diff(), ReturnCode::Ok));
        let result = exchanger.answer_result(ack_rc, attributed);
        (submit.join().unwrap().unwrap(), result)
    })
}

// ---------------------------------------------------------------- E1

#[test]
fn second_execute_while_busy_is_bad_request_data() {
    let exchanger = Arc::new(create("e1"));
    let first = spawn_execute(&exchanger, "t1", watchdog());
    let mut raw = RawAgent::attach(&exchanger);
    let task = raw.take_task(ReturnCode::Ok);
    assert_eq!(task.task_id(), "t1");
    let second = exchanger.execute("train", &model(), &Headers::new("t2"), &watchdog());
    assert_eq!(second.rc, ReturnCode::BadRequestData);
    // The first task is unaffected.
    raw.result("t1", ReturnCode::Ok, Some(&diff().with_meta("k", 1)));
    assert_eq!(join(first).rc, ReturnCode::Ok);
}

// ---------------------------------------------------------------- E2

#[test]
fn execute_waits_for_agent_then_delivers() {
    let exchanger = Arc::new(create("e2-wait"));
    let pending = spawn_execute(&exchanger, "t1", watchdog());
    std::thread::sleep(Duration::from_millis(50));
    assert!(!pending.is_finished(), "execute returned without an agent");
    let agent = attach(&exchanger);
    let task = get(&agent);
    assert_eq!(task.id, "t1");
    assert_eq!(
        task.message
            .tensor_by_name("w")
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        WEIGHTS
    );
    assert!(agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    let reply = join(pending);
    assert_eq!(reply.rc, ReturnCode::Ok);
    assert_eq!(reply.data_kind, Some(DataKind::WeightDiff));
}

/// The task's meta is the DXO's own with `data_kind` and the round headers set on top (a
/// stale `data_kind` of the DXO's is replaced); the result's likewise gets its `data_kind`.
#[test]
fn execute_sets_data_kind_and_rounds_on_top_of_the_dxo_meta() {
    let exchanger = Arc::new(create("e2-meta"));
    let agent = attach(&exchanger);
    let pending = {
        let exchanger = Arc::clone(&exchanger);
        std::thread::spawn(move || {
            let dxo = model()
                .with_meta("data_kind", "METRICS")
                .with_meta("lr", 0.5)
                .with_meta("zeta", "kept");
            let headers = Headers::new("t1").with_rounds(3, 7);
            exchanger.execute("train", &dxo, &headers, &watchdog())
        })
    };
    let task = get(&agent);
    let meta = task.message.meta();
    assert_eq!(meta["data_kind"], "WEIGHTS");
    assert_eq!(meta["current_round"], 3);
    assert_eq!(meta["total_round"], 7);
    assert_eq!(meta["lr"], 0.5);
    assert_eq!(meta["zeta"], "kept");
    assert_eq!(meta.len(), 5);
    let result = diff()
        .with_meta("data_kind", "WEIGHTS")
        .with_meta("loss", 1.5);
    assert!(agent.submit_result(&result, ReturnCode::Ok).unwrap());
    let reply = join(pending);
    assert_eq!(reply.rc, ReturnCode::Ok);
    assert_eq!(reply.data_kind, Some(DataKind::WeightDiff));
    let meta = reply.result.unwrap().meta().clone();
    assert_eq!(meta["data_kind"], "WEIGHT_DIFF");
    assert_eq!(meta["loss"], 1.5);
}

#[test]
fn abort_while_waiting_for_agent_is_task_aborted() {
    let exchanger = Arc::new(create("e2-abort"));
    let abort = AbortSignal::new();
    let pending = spawn_execute(&exchanger, "t1", abort.clone());
    std::thread::sleep(Duration::from_millis(30));
    abort.abort();
    assert_eq!(join(pending).rc, ReturnCode::TaskAborted);
    // Nothing was sent: a late agent finds no task.
    let agent = attach(&exchanger);
    assert_no_task(&agent, 100);
}

#[test]
fn close_while_waiting_for_agent_is_task_aborted() {
    let exchanger = Arc::new(create("e2-close"));
    let pending = spawn_execute(&exchanger, "t1", watchdog());
    std::thread::sleep(Duration::from_millis(30));
    exchanger.close().unwrap();
    assert_eq!(join(pending).rc, ReturnCode::TaskAborted);
    assert_eq!(exchanger.status(), ExchangerStatus::Closed);
}

// ---------------------------------------------------------------- E3

#[test]
fn task_without_data_is_bad_request_data() {
    let exchanger = create("e3-nodata");
    let empty = Dxo::new(DataKind::Weights).with_meta("current_round", 1);
    let reply = exchanger.execute("train", &empty, &Headers::new("t1"), &watchdog());
    assert_eq!(reply.rc, ReturnCode::BadRequestData);
    assert!(reply.result.is_none());
}

#[test]
fn task_rejected_by_agent_is_bad_request_data() {
    let exchanger = Arc::new(create("e3-rejected"));
    let pending = spawn_execute(&exchanger, "t1", watchdog());
    let mut raw = RawAgent::attach(&exchanger);
    raw.take_task(ReturnCode::BadRequestData);
    assert_eq!(join(pending).rc, ReturnCode::BadRequestData);
}

#[test]
fn task_with_empty_id_is_bad_task_data() {
    let exchanger = create("e3-emptyid");
    let reply = exchanger.execute("train", &model(), &Headers::new(""), &watchdog());
    assert_eq!(reply.rc, ReturnCode::BadTaskData);
}

// ---------------------------------------------------------------- E4

#[test]
fn abort_while_sending_sends_abort_and_returns_task_aborted() {
    let exchanger = Arc::new(create("e4-sending"));
    let mut raw = RawAgent::attach(&exchanger);
    let abort = AbortSignal::new();
    let pending = spawn_execute(&exchanger, "t1", abort.clone());
    // The task is pushed but never acked: the exchanger is still sending.
    let task = raw.recv();
    assert_eq!(task.kind(), MessageKind::Task);
    abort.abort();
    assert_eq!(join(pending).rc, ReturnCode::TaskAborted);
    let told = raw.recv();
    assert_eq!(told.kind(), MessageKind::Abort);
    assert_eq!(told.task_id(), "t1");
    assert_eq!(told.epoch(), raw.link.epoch());
}

#[test]
fn abort_while_waiting_for_result_sends_abort_and_returns_task_aborted() {
    let exchanger = Arc::new(create("e4-waiting"));
    let agent = attach(&exchanger);
    let abort = AbortSignal::new();
    let pending = spawn_execute(&exchanger, "t1", abort.clone());
    let task = get(&agent);
    assert_eq!(task.id, "t1");
    abort.abort();
    assert_eq!(join(pending).rc, ReturnCode::TaskAborted);
    eventually("the agent learns of the abort", || agent.is_aborted());
    assert!(!agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
}

#[test]
fn abort_while_streaming_large_task_returns_task_aborted() {
    let exchanger = Arc::new(create("e4-streaming"));
    // An agent that attaches but never reads: a 64 MiB task through a 1 MiB ring stalls.
    let raw = RawAgent::attach(&exchanger);
    let big = vec![0.5f32; 16 << 20];
    let abort = AbortSignal::new();
    let reply = std::thread::scope(|s| {
        let running = s.spawn(|| {
            let dxo = Dxo::new(DataKind::Weights)
                .with_tensor("big", &[16 << 20], &big)
                .unwrap();
            exchanger.execute("train", &dxo, &Headers::new("t1"), &abort)
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!running.is_finished());
        abort.abort();
        running.join().unwrap()
    });
    assert_eq!(reply.rc, ReturnCode::TaskAborted);
    drop(raw);
}

// ---------------------------------------------------------------- E5

#[test]
fn result_for_in_flight_task_completes_execute() {
    let (_exchanger, pending, mut raw) = task_taken("e5-inflight");
    let ack = raw.result("t1", ReturnCode::Ok, Some(&diff().with_meta("n", 3)));
    assert_eq!((ack.rc(), ack.task_id()), (ReturnCode::Ok, "t1"));
    let reply = join(pending);
    assert_eq!(reply.rc, ReturnCode::Ok);
    let result = reply.result.unwrap();
    assert_eq!(result.meta()["n"], 3);
    assert_eq!(
        result.tensor_by_name("w").unwrap().to_vec::<f32>().unwrap(),
        WEIGHTS
    );
}

#[test]
fn duplicate_result_is_acked_ok_and_ignored() {
    let (exchanger, pending, mut raw) = task_taken("e5-dup");
    let result = diff().with_meta("n", 1);
    raw.result("t1", ReturnCode::Ok, Some(&result));
    assert_eq!(join(pending).rc, ReturnCode::Ok);
    let again = raw.result("t1", ReturnCode::Ok, Some(&result));
    assert_eq!((again.rc(), again.task_id()), (ReturnCode::Ok, "t1"));
    // And the exchanger still works: the duplicate did not complete anything else.
    let next = spawn_execute(&exchanger, "t2", watchdog());
    raw.take_task(ReturnCode::Ok);
    raw.result("t2", ReturnCode::Ok, Some(&result));
    assert_eq!(join(next).rc, ReturnCode::Ok);
}

#[test]
fn result_for_other_task_is_invalid() {
    let (_exchanger, pending, mut raw) = task_taken("e5-other");
    let result = diff().with_meta("n", 1);
    let ack = raw.result("t9", ReturnCode::Ok, Some(&result));
    assert_eq!(ack.rc(), ReturnCode::TaskUnknown);
    assert!(!pending.is_finished());
    raw.result("t1", ReturnCode::Ok, Some(&result));
    assert_eq!(join(pending).rc, ReturnCode::Ok);
}

#[test]
fn result_while_idle_is_invalid() {
    let exchanger = create("e5-idle");
    let mut raw = RawAgent::attach(&exchanger);
    let ack = raw.result("t1", ReturnCode::Ok, Some(&diff().with_meta("n", 1)));
    assert_eq!(ack.rc(), ReturnCode::TaskUnknown);
}

#[test]
fn empty_id_result_while_idle_is_acked_and_ignored() {
    let exchanger = create("e5-emptyidle");
    let mut raw = RawAgent::attach(&exchanger);
    let ack = raw.result("", ReturnCode::Ok, Some(&diff().with_meta("n", 1)));
    assert_eq!((ack.rc(), ack.task_id()), (ReturnCode::Ok, ""));
}

#[test]
fn empty_id_result_completes_in_flight_task() {
    let (_exchanger, pending, mut raw) = task_taken("e5-emptyinflight");
    let ack = raw.result("", ReturnCode::Ok, Some(&diff().with_meta("n", 1)));
    assert_eq!((ack.rc(), ack.task_id()), (ReturnCode::Ok, "t1"));
    assert_eq!(join(pending).rc, ReturnCode::Ok);
}

// ---------------------------------------------------------------- E6

#[test]
fn result_missing_data_is_invalid_and_execution_exception() {
    let (_exchanger, pending, mut raw) = task_taken("e6-data");
    let ack = raw.result("t1", ReturnCode::Ok, None);
    assert_eq!(ack.rc(), ReturnCode::ExecutionResultError);
    assert_eq!(join(pending).rc, ReturnCode::ExecutionException);
}

#[test]
fn result_missing_meta_is_invalid_and_execution_exception() {
    let (_exchanger, pending, mut raw) = task_taken("e6-meta");
    let ack = raw.result("t1", ReturnCode::Ok, Some(&diff()));
    assert_eq!(ack.rc(), ReturnCode::ExecutionResultError);
    assert_eq!(join(pending).rc, ReturnCode::ExecutionException);
}

// ---------------------------------------------------------------- E7

#[test]
fn result_rc_other_than_ok_is_bare_reply() {
    let (_exchanger, pending, mut raw) = task_taken("e7-bare");
    let ack = raw.result(
        "t1",
        ReturnCode::ExecutionException,
        Some(&diff().with_meta("n", 1)),
    );
    assert_eq!(ack.rc(), ReturnCode::Ok);
    let reply = join(pending);
    assert_eq!(reply.rc, ReturnCode::ExecutionException);
    assert!(reply.result.is_none() && reply.data_kind.is_none());
}

#[test]
fn early_termination_result_keeps_its_dxo() {
    let exchanger = Arc::new(create("e7-early"));
    let pending = spawn_execute(&exchanger, "t1", watchdog());
    let agent = attach(&exchanger);
    get(&agent);
    assert!(agent
        .submit_result(&diff(), ReturnCode::EarlyTermination)
        .unwrap());
    let reply = join(pending);
    assert_eq!(reply.rc, ReturnCode::EarlyTermination);
    assert!(reply.result.unwrap().tensor_by_name("w").is_some());
}

// ---------------------------------------------------------------- E8

fn kind_of_reply(tag: &str, task: Dxo<'static>, result: Dxo<'static>) -> Option<DataKind> {
    let exchanger = Arc::new(create(tag));
    let pending = {
        let exchanger = Arc::clone(&exchanger);
        let abort = watchdog();
        std::thread::spawn(move || exchanger.execute("train", &task, &Headers::new("t1"), &abort))
    };
    let mut raw = RawAgent::attach(&exchanger);
    raw.take_task(ReturnCode::Ok);
    raw.result("t1", ReturnCode::Ok, Some(&result));
    let reply = join(pending);
    assert_eq!(reply.rc, ReturnCode::Ok);
    reply.data_kind
}

#[test]
fn result_data_kind_is_app_defined_when_task_was() {
    let task = Dxo::new(DataKind::AppDefined)
        .with_opaque(b"app bytes")
        .unwrap();
    let result = diff().with_meta("data_kind", "METRICS");
    assert_eq!(
        kind_of_reply("e8-app", task, result),
        Some(DataKind::AppDefined)
    );
}

#[test]
fn result_data_kind_comes_from_meta() {
    let result = diff().with_meta("data_kind", "METRICS");
    assert_eq!(
        kind_of_reply("e8-meta", model(), result),
        Some(DataKind::Metrics)
    );
}

#[test]
fn result_data_kind_defaults_to_weights() {
    let result = diff().with_meta("n", 1);
    assert_eq!(
        kind_of_reply("e8-default", model(), result),
        Some(DataKind::Weights)
    );
}

// ---------------------------------------------------------------- E9

/// An agent whose heartbeat never moves after attaching (its beater sleeps for an hour).
fn stalled_agent(exchanger: &Exchanger) -> Link {
    let options = AttachOptions::default().heartbeat_interval(Duration::from_secs(3600));
    Link::attach(exchanger.name(), &options).unwrap()
}

#[test]
fn stalled_agent_is_disconnected_after_connection_timeout() {
    let exchanger = create_with(
        "e9-stalled",
        exchanger_config().agent_connection_timeout(Duration::from_millis(200)),
    );
    let stalled = stalled_agent(&exchanger);
    let epoch = stalled.epoch();
    eventually("connected", || {
        exchanger.status() == ExchangerStatus::Connected { epoch }
    });
    let since = Instant::now();
    eventually("disconnected", || {
        exchanger.status() == ExchangerStatus::Disconnected { epoch }
    });
    assert!(since.elapsed() >= Duration::from_millis(100));
}

#[test]
fn stalled_agent_is_dead_after_heartbeat_timeout() {
    let exchanger = Arc::new(create_with(
        "e9-dead",
        exchanger_config()
            .agent_connection_timeout(Duration::from_millis(100))
            .agent_heartbeat_timeout(Some(Duration::from_millis(300))),
    ));
    let stalled = stalled_agent(&exchanger);
    let pending = spawn_execute(&exchanger, "t1", watchdog());
    assert_eq!(join(pending).rc, ReturnCode::TaskAborted);
    assert_eq!(exchanger.status(), ExchangerStatus::Stopped);
    let later = exchanger.execute("train", &model(), &Headers::new("t2"), &watchdog());
    assert_eq!(later.rc, ReturnCode::TaskAborted);
    drop(stalled);
}

/// An exchanger executing `t1`, whose first agent fetched it and went away (it detaches;
/// tests/protocol_faults.rs SIGKILLs one), and the agent attached after it.
fn restarted_mid_task(tag: &str) -> (Arc<Exchanger>, std::thread::JoinHandle<Reply>, Agent) {
    let exchanger = Arc::new(create(tag));
    let pending = spawn_execute(&exchanger, "t1", watchdog());
    let first = attach(&exchanger);
    assert_eq!(get(&first).id, "t1");
    first.close();
    drop(first);
    let second = attach(&exchanger);
    (exchanger, pending, second)
}

#[test]
fn in_flight_task_is_redelivered_to_restarted_agent() {
    let (exchanger, pending, second) = restarted_mid_task("e9-redeliver");
    let task = get(&second);
    assert_eq!(task.id, "t1");
    assert!(second.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert_eq!(join(pending).rc, ReturnCode::Ok);
    assert_eq!(exchanger.redeliveries(), 1);
}

#[test]
fn result_timeout_returns_timeout_and_aborts_agent() {
    let exchanger = Arc::new(create_with(
        "e9-timeout",
        exchanger_config().result_timeout(Some(Duration::from_millis(100))),
    ));
    let agent = attach(&exchanger);
    let pending = spawn_execute(&exchanger, "t1", watchdog());
    get(&agent);
    assert_eq!(join(pending).rc, ReturnCode::Timeout);
    eventually("the agent learns of the abort", || agent.is_aborted());
    assert!(!agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
}

// ---------------------------------------------------------------- E10

#[test]
fn close_sends_bye_and_agent_calls_return_closed() {
    let exchanger = create("e10");
    let agent = attach(&exchanger);
    let name = exchanger.name().clone();
    std::thread::scope(|s| {
        let blocked = s.spawn(|| agent.get_task(Some(WATCHDOG)));
        std::thread::sleep(Duration::from_millis(30));
        exchanger.close().unwrap();
        assert_eq!(blocked.join().unwrap().unwrap_err(), GetTaskError::Closed);
    });
    assert_eq!(agent.status(), AgentStatus::Closed);
    assert!(matches!(
        agent.submit_result(&diff(), ReturnCode::Ok),
        Err(SubmitError::Closed)
    ));
    assert!(!std::path::Path::new("/dev/shm")
        .join(name.as_str())
        .exists());
}

// ---------------------------------------------------------------- A1

#[test]
fn get_task_times_out_with_none() {
    let exchanger = create("a1-timeout");
    let agent = attach(&exchanger);
    let start = Instant::now();
    let got = agent.get_task(Some(Duration::from_millis(50))).unwrap();
    assert!(got.is_none());
    assert!(start.elapsed() >= Duration::from_millis(50));
}

#[test]
fn get_task_after_bye_is_closed() {
    let (mut raw, agent) = raw_pair("a1-bye");
    raw.send(Envelope::new(MessageKind::Bye), None);
    assert_closed(&agent);
}

#[test]
fn get_task_never_returns_aborted_task() {
    let (mut raw, agent) = raw_pair("a1-aborted");
    assert_eq!(raw.task("t1").rc(), ReturnCode::Ok);
    raw.abort("t1");
    assert_eq!(raw.task("t2").rc(), ReturnCode::Ok);
    assert_eq!(get(&agent).id, "t2");
}

#[test]
fn get_task_twice_without_submit_is_call_state_error() {
    let (_raw, agent) = fetched("a1-twice");
    assert_eq!(
        agent.get_task(Some(Duration::from_millis(10))).unwrap_err(),
        GetTaskError::CallState
    );
}

// ---------------------------------------------------------------- A2

#[test]
fn submit_result_returns_exchanger_verdict() {
    let (mut raw, agent) = fetched("a2-verdict");
    let (accepted, result) = submit_answered(&agent, &mut raw, ReturnCode::Ok, "t1");
    assert!(accepted);
    assert_eq!(result.task_id(), "t1");
    raw.task("t2");
    get(&agent);
    let (accepted, _) = submit_answered(&agent, &mut raw, ReturnCode::TaskUnknown, "t2");
    assert!(!accepted);
}

#[test]
fn submit_after_abort_is_false() {
    let (mut raw, agent) = fetched("a2-abort");
    raw.abort("t1");
    eventually("aborted", || agent.is_aborted());
    assert!(!agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
}

#[test]
fn submit_without_task_is_false() {
    let (mut raw, agent) = raw_pair("a2-notask");
    // The first submission goes out with an empty id (see below); after it, a submission
    // without a fetched task is refused locally.
    submit_answered(&agent, &mut raw, ReturnCode::Ok, "");
    raw.task("t1"); // delivered but never fetched
    assert!(!agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
}

#[test]
fn submit_twice_is_false() {
    let (mut raw, agent) = fetched("a2-twice");
    assert!(submit_answered(&agent, &mut raw, ReturnCode::Ok, "t1").0);
    assert!(!agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
}

#[test]
fn first_submit_after_start_has_empty_task_id() {
    let (mut raw, agent) = raw_pair("a2-first");
    let (accepted, result) = submit_answered(&agent, &mut raw, ReturnCode::Ok, "");
    assert!(accepted);
    assert_eq!(result.task_id(), "");
    assert_eq!(result.meta()["data_kind"], "WEIGHT_DIFF");
}

#[test]
fn restarted_agent_checkpoint_result_completes_redelivered_task() {
    let (_exchanger, pending, second) = restarted_mid_task("a2-checkpoint");
    // The restarted trainer resumes from its checkpoint and submits without fetching.
    assert!(second.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert_eq!(join(pending).rc, ReturnCode::Ok);
    // The redelivered copy of t1 was answered by that result: no task is left.
    assert_no_task(&second, 100);
}

// ---------------------------------------------------------------- A3

#[test]
fn second_task_becomes_pending_and_aborts_current() {
    let (mut raw, agent) = fetched("a3-pending");
    assert_eq!(raw.task("t2").rc(), ReturnCode::Ok);
    assert!(agent.is_aborted());
    assert!(!agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert_eq!(get(&agent).id, "t2");
}

#[test]
fn same_task_twice_is_duplicate() {
    let (mut raw, agent) = raw_pair("a3-dup");
    raw.task("t1");
    assert_eq!(raw.task("t1").rc(), ReturnCode::Ok);
    assert_eq!(get(&agent).id, "t1");
    assert!(!agent.is_aborted());
    let (accepted, _) = submit_answered(&agent, &mut raw, ReturnCode::Ok, "t1");
    assert!(accepted);
    assert_no_task(&agent, 50);
}

#[test]
fn new_task_replaces_pending_task() {
    let (mut raw, agent) = fetched("a3-replace");
    raw.task("t2");
    raw.task("t3");
    assert!(!agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert_eq!(get(&agent).id, "t3");
}

// ---------------------------------------------------------------- A4

#[test]
fn abort_marks_current_task_aborted() {
    let (mut raw, agent) = fetched("a4-current");
    assert!(!agent.is_aborted());
    raw.abort("t1");
    eventually("aborted", || agent.is_aborted());
}

#[test]
fn abort_drops_pending_task() {
    let (mut raw, agent) = fetched("a4-pending");
    raw.task("t2");
    raw.abort("t2");
    // A marker task after the abort: once it is pending, the abort was applied.
    raw.task("t3");
    assert!(!agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert_eq!(get(&agent).id, "t3");
    assert!(agent
        .get_task(Some(Duration::from_millis(10)))
        .is_err_and(|e| e == GetTaskError::CallState));
}

// ---------------------------------------------------------------- A5

#[test]
fn stalled_exchanger_makes_agent_disconnected() {
    let raw = RawExchanger::create("a5-stalled", Duration::from_secs(3600));
    let agent = Agent::attach(
        &raw.name(),
        agent_config().flare_site_connection_timeout(Duration::from_millis(150)),
    )
    .unwrap();
    eventually("disconnected", || {
        agent.status() == AgentStatus::Disconnected
    });
}

#[test]
fn exchanger_silence_past_heartbeat_timeout_closes_agent() {
    let raw = RawExchanger::create("a5-silence", Duration::from_secs(3600));
    let agent = Agent::attach(
        &raw.name(),
        agent_config()
            .flare_site_connection_timeout(Duration::from_millis(100))
            .flare_site_heartbeat_timeout(Some(Duration::from_millis(250))),
    )
    .unwrap();
    assert_closed(&agent);
}

#[test]
fn restart_policy_default_is_redeliver_and_config_defaults_are_flares() {
    let e = ExchangerConfig::default();
    assert_eq!(e.send_task_timeout, Duration::from_secs(5));
    assert_eq!(e.resend_task_interval, Duration::from_secs(2));
    assert_eq!(e.agent_connection_timeout, Duration::from_secs(60));
    assert_eq!(e.agent_heartbeat_timeout, None);
    assert_eq!(e.agent_heartbeat_interval, Duration::from_secs(5));
    assert_eq!(e.agent_ack_timeout, Duration::from_secs(5));
    assert_eq!(e.result_timeout, None);
    assert_eq!(e.on_agent_restart, RestartPolicy::Redeliver);
    let a = AgentConfig::default();
    assert_eq!(a.submit_result_timeout, Duration::from_secs(30));
    assert_eq!(a.flare_site_connection_timeout, Duration::from_secs(60));
    assert_eq!(a.flare_site_heartbeat_timeout, None);
    assert_eq!(a.resend_result_interval, Duration::from_secs(2));
    for rc in [
        ReturnCode::Ok,
        ReturnCode::BadRequestData,
        ReturnCode::TaskAborted,
    ] {
        assert_eq!(rc.as_str().parse::<ReturnCode>().unwrap(), rc);
    }
}

// Defects found by a review of the protocol; each test failed before its fix.

// ------------------------------------------------------------------------------------------
// R1: a result whose DXO carries meta but no tensors (FLARE METRICS results, or an error rc
// with an empty DXO) is treated as "missing data": the agent is told `invalid` and the
// caller gets EXECUTION_EXCEPTION. docs/protocol.md §1.2: result DXO "required (may hold 0
// tensors)"; DESIGN §5 E7: rc other than OK/EARLY_TERMINATION -> bare reply with that rc.

/// Submits `result` with `rc` for a fetched task; returns the caller's reply and the agent's
/// verdict.
fn answer_with(tag: &str, result: &Dxo<'_>, rc: ReturnCode) -> (Reply, bool) {
    let ex = Arc::new(create(tag));
    let pending = spawn_execute(&ex, "t1", watchdog());
    let agent = attach(&ex);
    let _task = get(&agent);
    let accepted = agent.submit_result(result, rc).unwrap();
    (join(pending), accepted)
}

#[test]
fn r1_metrics_only_result_is_accepted() {
    let metrics = Dxo::new(DataKind::Metrics).with_meta("accuracy", 0.93);
    let (reply, accepted) = answer_with("r1a", &metrics, ReturnCode::Ok);
    assert_eq!(reply.rc, ReturnCode::Ok, "metrics-only result rejected");
    assert!(accepted);
}

#[test]
fn r1_error_rc_with_empty_dxo_is_bare_reply_with_that_rc() {
    // The trainer failed: nothing to send but the rc.
    let empty = Dxo::new(DataKind::Weights);
    let (reply, accepted) = answer_with("r1b", &empty, ReturnCode::BadTaskData);
    assert_eq!(reply.rc, ReturnCode::BadTaskData);
    assert!(accepted);
}

// ------------------------------------------------------------------------------------------
// R2: re-executing a task id after aborting it: the agent takes the new push as a duplicate
// of its aborted current task, acks it, and `get_task` never returns it: `execute` hangs
// (no result_timeout by default).

#[test]
fn r2_same_id_after_abort_is_delivered_again() {
    let ex = Arc::new(Exchanger::create(&unique("r2"), exchanger_config()).unwrap());
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
    let second = spawn_execute(&ex, "t1", common::watchdog_abort(Duration::from_secs(5)));
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

#[test]
fn r3_new_incarnation_seen_during_drain_is_not_ended() {
    let config = ExchangerConfig::default()
        .agent_heartbeat_interval(Duration::from_millis(20))
        .wait(
            shmex::signal::WaitStrategy::default()
                .spin(Duration::from_micros(20))
                .poll_interval(Duration::from_millis(100)),
        )
        .task_ring_capacity(4096)
        .result_ring_capacity(1 << 20)
        .agent_ack_timeout(Duration::from_millis(300));
    let ex = Arc::new(Exchanger::create(&unique("r3"), config).unwrap());
    let result = model().with_meta("n", 1);
    // Incarnation 1 sends results for unknown tasks and never reads: its acks fill the
    // 4 KiB task ring, after which each ack push blocks the pump for agent_ack_timeout.
    let mut b = RawAgent::attach(&ex);
    assert_eq!(b.link.epoch(), 1);
    for _ in 0..22 {
        b.send(
            Envelope::new(MessageKind::Result).with_task("junk", "train"),
            Some(&result),
        );
    }
    // Incarnation 1 ends, 2 attaches and sends its first (empty-id) result.
    drop(b);
    let mut b2 = RawAgent::attach(&ex);
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
    let pending = spawn_execute(&ex, "t2", common::watchdog_abort(Duration::from_secs(5)));
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
    let config = exchanger_config().result_timeout(Some(Duration::from_millis(500)));
    let ex = Arc::new(Exchanger::create(&unique("r7"), config).unwrap());
    let _silent = RawAgent::attach(&ex); // attached and beating, never reads or acks
    let start = Instant::now();
    let reply = spawn_execute(&ex, "t1", common::watchdog_abort(Duration::from_secs(5)))
        .join()
        .unwrap();
    assert_eq!(reply.rc, ReturnCode::Timeout, "after {:?}", start.elapsed());
}

// Defects listed in docs/protocol.md §8 and found by new users (D1-D6); each test failed
// before its fix. A call that used to hang is waited for with a watchdog that fails the test.

/// How long a call that used to hang may take before the test fails.
const HANG_WATCHDOG: Duration = Duration::from_secs(20);

/// Waits for `handle` to finish, failing the test (with `what`) after [`HANG_WATCHDOG`].
fn finished_within_watchdog<T>(handle: std::thread::JoinHandle<T>, what: &str) -> T {
    let end = Instant::now() + HANG_WATCHDOG;
    while !handle.is_finished() {
        assert!(Instant::now() < end, "still blocked: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.join().expect("thread panicked")
}

/// A raw agent attached with `heartbeat_interval` (an hour: its heartbeat never moves).
fn raw_agent_with_heartbeat(exchanger: &Exchanger, heartbeat_interval: Duration) -> RawAgent {
    let options = AttachOptions::default().heartbeat_interval(heartbeat_interval);
    let link = Link::attach(exchanger.name(), &options).unwrap();
    let mut receiver = FrameReceiver::default();
    receiver.set_min_epoch(link.epoch());
    RawAgent {
        link,
        sender: FrameSender::new(),
        receiver,
    }
}

fn stopping_config() -> ExchangerConfig {
    exchanger_config()
        .agent_connection_timeout(Duration::from_millis(100))
        .agent_heartbeat_timeout(Some(Duration::from_millis(300)))
}

// ------------------------------------------------------------------------------------------
// D1: a Stopped exchanger (agent_heartbeat_timeout passed) stopped reading results and sent
// no `bye`: the agent's submit_result waited until the exchanger process exited.

#[test]
fn d1_stopped_exchanger_says_bye_and_a_submitting_agent_returns() {
    let ex = Arc::new(create_with("d1a", stopping_config()));
    let agent = Arc::new(
        Agent::attach(
            ex.name(),
            agent_config().heartbeat_interval(Duration::from_secs(3600)),
        )
        .unwrap(),
    );
    eventually("stopped", || ex.status() == ExchangerStatus::Stopped);
    let submitting = Arc::clone(&agent);
    let submit = std::thread::spawn(move || submitting.submit_result(&diff(), ReturnCode::Ok));
    let verdict = finished_within_watchdog(submit, "submit_result to a stopped exchanger");
    assert!(
        matches!(verdict, Ok(false) | Err(SubmitError::Closed)),
        "{verdict:?}"
    );
    eventually("bye closes the agent", || {
        agent.status() == AgentStatus::Closed
    });
}

#[test]
fn d1_stopped_exchanger_answers_results_invalid() {
    let ex = create_with("d1b", stopping_config());
    let mut raw = raw_agent_with_heartbeat(&ex, Duration::from_secs(3600));
    eventually("stopped", || ex.status() == ExchangerStatus::Stopped);
    assert!(
        raw.wait_for(MessageKind::Bye, HANG_WATCHDOG).is_some(),
        "no bye from the stopped exchanger"
    );
    let sequence = raw.send(
        Envelope::new(MessageKind::Result).with_task("t9", "train"),
        Some(&diff().with_meta("k", 1)),
    );
    let end = Instant::now() + HANG_WATCHDOG;
    let ack = loop {
        assert!(Instant::now() < end, "the stopped exchanger never answered");
        if let Ok(m) = raw.receiver.recv(
            raw.link.receiver(),
            Some(Instant::now() + Duration::from_millis(50)),
        ) {
            if m.kind() == MessageKind::ResultAck {
                break (m.reply_to(), m.rc());
            }
        }
    };
    assert_eq!(ack.0, sequence);
    assert_ne!(ack.1, ReturnCode::Ok);
}

// ------------------------------------------------------------------------------------------
// D2: `abort` took the outbox lock blocking; while the pump held it pushing an ack into a
// full ring, the caller's `execute` waited up to agent_ack_timeout (here an hour).

#[test]
fn d2_abort_returns_while_the_pump_is_blocked_pushing_an_ack() {
    let config = exchanger_config()
        .task_ring_capacity(4096)
        .agent_ack_timeout(Duration::from_secs(3600));
    let ex = Arc::new(create_with("d2", config));
    let mut raw = RawAgent::attach(&ex);
    let abort = AbortSignal::new();
    let pending = spawn_execute(&ex, "t1", abort.clone());
    eventually("t1 pushed", || {
        raw.link.receiver().try_peek().unwrap().is_some()
    });
    // Results for an unknown task, never reading the acks: they fill the 4 KiB task ring,
    // and the pump blocks in an ack push, holding the outbox.
    let junk = model().with_meta("n", 1);
    for _ in 0..22 {
        raw.send(
            Envelope::new(MessageKind::Result).with_task("junk", "train"),
            Some(&junk),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    abort.abort();
    let reply = finished_within_watchdog(pending, "execute after abort");
    assert_eq!(reply.rc, ReturnCode::TaskAborted);
    // Once the agent reads again, the queued abort follows the acks.
    let aborted = raw.wait_for(MessageKind::Abort, HANG_WATCHDOG);
    assert_eq!(aborted.map(|(id, _)| id).as_deref(), Some("t1"));
}

// ------------------------------------------------------------------------------------------
// D3: an invalid result set the "last completed" id, so the corrected resubmission was acked
// ok as a duplicate (and went nowhere).

#[test]
fn d3_corrected_result_after_an_invalid_one_is_not_acked_as_duplicate() {
    let (_ex, pending, mut raw) = task_taken("d3");
    let ack = raw.result("t1", ReturnCode::Ok, None);
    assert_eq!(ack.rc(), ReturnCode::ExecutionResultError);
    assert_eq!(join(pending).rc, ReturnCode::ExecutionException);
    let again = raw.result("t1", ReturnCode::Ok, Some(&diff().with_meta("k", 1)));
    assert_ne!(
        again.rc(),
        ReturnCode::Ok,
        "a resubmission for a task that failed was acked as accepted"
    );
}

// ------------------------------------------------------------------------------------------
// D4: two threads submitting for the same task both got `true`.

#[test]
fn d4_concurrent_submissions_for_one_task_accept_exactly_one() {
    let (mut raw, agent) = fetched("d4");
    let verdicts = std::thread::scope(|s| {
        let first = s.spawn(|| agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
        // The first result is received but not yet acked while the second thread submits.
        let result = raw.recv();
        assert_eq!(result.kind(), MessageKind::Result);
        let second = s.spawn(|| agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
        let end = Instant::now() + HANG_WATCHDOG;
        while !second.is_finished() {
            assert!(Instant::now() < end, "second submission never returned");
            let deadline = Some(Instant::now() + Duration::from_millis(10));
            let seen = raw
                .receiver
                .recv(raw.link.receiver(), deadline)
                .ok()
                .filter(|m| m.kind() == MessageKind::Result)
                .map(|m| m.sequence());
            if let Some(seq) = seen {
                // What the exchanger answers to a duplicate of its last completed task.
                raw.send(
                    Envelope::new(MessageKind::ResultAck)
                        .with_task("t1", "")
                        .with_rc(ReturnCode::Ok)
                        .with_reply_to(seq),
                    None,
                );
            }
        }
        raw.send(
            Envelope::new(MessageKind::ResultAck)
                .with_task("t1", "")
                .with_rc(ReturnCode::Ok)
                .with_reply_to(result.sequence()),
            None,
        );
        [first.join().unwrap(), second.join().unwrap()]
    });
    assert_eq!(
        verdicts.iter().filter(|v| **v).count(),
        1,
        "verdicts {verdicts:?}"
    );
}

// ------------------------------------------------------------------------------------------
// D5 (a): the agent fetched a1, a1 was aborted, get_task returned nothing, the exchanger
// executed a2: the trainer's late result for a1 went out with an empty id, was taken as a2's
// result, and a2's `execute` returned a1's data.

#[test]
fn d5_result_of_an_aborted_task_never_completes_the_next_task() {
    let ex = Arc::new(create("d5a"));
    let agent = attach(&ex);
    let abort = AbortSignal::new();
    let a1 = spawn_execute(&ex, "a1", abort.clone());
    assert_eq!(get(&agent).id, "a1");
    abort.abort();
    assert_eq!(join(a1).rc, ReturnCode::TaskAborted);
    eventually("the agent saw the abort", || agent.is_aborted());
    assert_no_task(&agent, 50);
    let a2 = spawn_execute(&ex, "a2", watchdog());
    // A probe with its abort already set: BAD_REQUEST_DATA while a2 is in flight, and
    // TASK_ABORTED (nothing sent) before.
    let probe_abort = AbortSignal::new();
    probe_abort.abort();
    eventually("a2 in flight", || {
        ex.execute("train", &model(), &Headers::new("probe"), &probe_abort)
            .rc
            == ReturnCode::BadRequestData
    });
    let stale = Dxo::new(DataKind::WeightDiff)
        .with_tensor("w", &[1], &[-1.0f32])
        .unwrap();
    assert!(
        !agent.submit_result(&stale, ReturnCode::Ok).unwrap(),
        "a1's late result was accepted"
    );
    let task = get(&agent);
    assert_eq!(task.id, "a2");
    assert!(agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    let reply = join(a2);
    assert_eq!(reply.rc, ReturnCode::Ok);
    let w = reply
        .result
        .unwrap()
        .tensor_by_name("w")
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(w, WEIGHTS, "a2 completed with another task's data");
}

// ------------------------------------------------------------------------------------------
// D6 (close): a receive waiting for the next fragment of a message its sender gave up
// ignored the stop flag: close/drop waited for the connection timeout (here an hour).

/// Sends only the first fragment of a 4 MiB message on `producer`.
fn send_first_fragment(
    sender: &mut FrameSender,
    producer: &mut shmex::ring::Producer,
    envelope: &Envelope<'_>,
) {
    let big = vec![0.5f32; 1 << 20];
    let dxo = Dxo::new(DataKind::Weights)
        .with_tensor("w", &[big.len() as u64], &big)
        .unwrap()
        .with_meta("k", 1);
    let asked = std::cell::Cell::new(0u32);
    let give_up = || {
        asked.set(asked.get() + 1);
        asked.get() > 1
    };
    let sent = sender.send_cancellable(
        producer,
        envelope,
        Some(&dxo),
        deadline(),
        Some((&give_up, Duration::from_millis(5))),
    );
    assert!(
        matches!(sent, Err(shmex::frame::SendError::Cancelled)),
        "{sent:?}"
    );
}

#[test]
fn d6_exchanger_close_returns_while_a_result_is_half_received() {
    let config = exchanger_config().agent_connection_timeout(Duration::from_secs(3600));
    let ex = Arc::new(create_with("d6x", config));
    let mut raw = RawAgent::attach(&ex);
    eventually("bound", || {
        matches!(ex.status(), ExchangerStatus::Connected { .. })
    });
    let envelope = Envelope::new(MessageKind::Result)
        .with_task("t1", "train")
        .with_epoch(raw.link.epoch());
    send_first_fragment(&mut raw.sender, raw.link.sender(), &envelope);
    std::thread::sleep(Duration::from_millis(200));
    let closing = Arc::clone(&ex);
    let close = std::thread::spawn(move || closing.close());
    finished_within_watchdog(close, "Exchanger::close").unwrap();
}

#[test]
fn d6_agent_close_returns_while_a_task_is_half_received() {
    let mut raw = RawExchanger::create("d6a", Duration::from_millis(20));
    let agent = Arc::new(
        Agent::attach(
            &raw.name(),
            agent_config().flare_site_connection_timeout(Duration::from_secs(3600)),
        )
        .unwrap(),
    );
    let (epoch, _) = raw.link.peer_epoch_and_pid();
    let envelope = Envelope::new(MessageKind::Task)
        .with_task("t1", "train")
        .with_epoch(epoch);
    send_first_fragment(&mut raw.sender, raw.link.sender(), &envelope);
    std::thread::sleep(Duration::from_millis(200));
    let closing = Arc::clone(&agent);
    let close = std::thread::spawn(move || closing.close());
    finished_within_watchdog(close, "Agent::close");
}

/// Task fields over the agent's limits (a task id or a tensor name longer than it takes, meta
/// nested deeper than JSON parsing allows, meta longer than its limit, more tensors than it
/// takes): the agent refuses the task and answers, and `execute` returns BAD_REQUEST_DATA
/// (before, the agent dropped what it could not parse and `execute` waited forever; the
/// watchdog's TASK_ABORTED would show that). The link stays usable for the next task.
#[test]
fn tasks_over_the_agents_limits_are_answered_bad_request_data() {
    let ex = Arc::new(create("overlimit"));
    let limits = shmex::frame::Limits::default()
        .max_meta_len(64 << 10)
        .max_tensors(1_000);
    let agent = Agent::attach(ex.name(), agent_config().limits(limits)).unwrap();
    let long_id = "i".repeat(5_000);
    let long_name = "n".repeat(2_000);
    let mut nested = serde_json::json!(1);
    for _ in 0..300 {
        nested = serde_json::json!([nested]);
    }
    let big_meta = "m".repeat(100 << 10);
    let many: Vec<String> = (0..1_001).map(|i| format!("t{i}")).collect();
    let one = [0.5f32];
    let mut too_many = Dxo::new(DataKind::Weights);
    for name in &many {
        too_many.push_tensor(name.as_str(), &[1], &one).unwrap();
    }
    let cases: Vec<(&str, Dxo<'_>, String)> = vec![
        ("long task id", model(), long_id),
        (
            "long tensor name",
            Dxo::new(DataKind::Weights)
                .with_tensor(long_name.as_str(), &[4], &WEIGHTS)
                .unwrap(),
            "t-name".into(),
        ),
        (
            "nested meta",
            model().with_meta("deep", nested),
            "t-nested".into(),
        ),
        (
            "long meta",
            model().with_meta("big", big_meta),
            "t-meta".into(),
        ),
        ("too many tensors", too_many, "t-many".into()),
    ];
    for (what, dxo, id) in cases {
        let reply = ex.execute("train", &dxo, &Headers::new(id), &watchdog());
        assert_eq!(reply.rc, ReturnCode::BadRequestData, "{what}");
    }
    // The next valid task goes through.
    let pending = spawn_execute(&ex, "ok", watchdog());
    let task = get(&agent);
    assert_eq!(task.id, "ok");
    assert!(agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert_eq!(join(pending).rc, ReturnCode::Ok);
}

/// A result over the exchanger's limits is refused and answered `invalid`: `submit_result`
/// returns false instead of waiting forever, and `execute` returns EXECUTION_EXCEPTION (an
/// invalid result, DESIGN §5 item 6) instead of waiting forever.
#[test]
fn result_over_the_exchangers_limits_is_answered_invalid() {
    let config = exchanger_config().limits(shmex::frame::Limits::default().max_meta_len(1_024));
    let ex = Arc::new(create_with("overlimit-result", config));
    let agent = attach(&ex);
    let pending = spawn_execute(&ex, "t1", watchdog());
    let task = get(&agent);
    assert_eq!(task.id, "t1");
    // On a thread, with a watchdog: before the fix, this submission waited forever.
    let agent = Arc::new(agent);
    let submitter = Arc::clone(&agent);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let too_big = diff().with_meta("notes", "x".repeat(4_096));
        let _ = tx.send(submitter.submit_result(&too_big, ReturnCode::Ok).unwrap());
    });
    let accepted = rx
        .recv_timeout(WATCHDOG)
        .expect("submit_result returned before the watchdog");
    assert!(!accepted);
    assert_eq!(join(pending).rc, ReturnCode::ExecutionException);
    // The link stays usable.
    let pending = spawn_execute(&ex, "t2", watchdog());
    assert_eq!(get(&agent).id, "t2");
    assert!(agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert_eq!(join(pending).rc, ReturnCode::Ok);
}

// ---------------------------------------------------------------- loans (issue 9)

fn result_spec() -> LoanSpec {
    LoanSpec::new(DataKind::WeightDiff)
        .tensor("w", DType::F32, &[4])
        .meta("loaned", true)
}

/// Takes a loan for the fetched task and fills `w` with `values`.
fn filled_loan(agent: &Agent, values: [f32; 4]) -> ResultLoan {
    let mut loan = agent.loan_result(&result_spec()).unwrap();
    let w = loan.index_of("w").unwrap();
    loan.tensor_mut::<f32>(w).unwrap().copy_from_slice(&values);
    loan
}

/// Whether a message of `kind` arrives at the raw exchanger within `ms` milliseconds.
fn raw_sees(raw: &mut RawExchanger, kind: MessageKind, ms: u64) -> bool {
    let end = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < end {
        if let Ok(m) = raw.receiver.recv(raw.link.receiver(), Some(end)) {
            if m.kind() == kind {
                return true;
            }
        }
    }
    false
}

#[test]
fn loaned_result_is_accepted_and_its_tensors_arrive() {
    let exchanger = Arc::new(create("loanres"));
    let pending = spawn_execute(&exchanger, "t1", watchdog());
    let agent = attach(&exchanger);
    let task = get(&agent);
    let mut loan = filled_loan(&agent, [9.0, 8.0, 7.0, 6.0]);
    assert_eq!(loan.task_id(), "t1");
    assert_eq!(loan.tensor_count(), 1);
    assert!(loan.tensor_mut::<f64>(0).is_err(), "dtype checked");
    assert!(loan.commit(ReturnCode::Ok).unwrap());
    let reply = join(pending);
    assert_eq!(reply.rc, ReturnCode::Ok);
    assert_eq!(reply.data_kind, Some(DataKind::WeightDiff));
    let result = reply.result.unwrap();
    assert_eq!(result.task_id(), task.id);
    assert_eq!(result.meta()["loaned"], true);
    assert_eq!(result.meta()["data_kind"], "WEIGHT_DIFF");
    let w = result.tensor_by_name("w").unwrap().to_vec::<f32>().unwrap();
    assert_eq!(w, [9.0, 8.0, 7.0, 6.0]);
}

#[test]
fn loaned_result_with_error_rc_is_the_bare_reply() {
    let exchanger = Arc::new(create("loanrc"));
    let pending = spawn_execute(&exchanger, "t1", watchdog());
    let agent = attach(&exchanger);
    get(&agent);
    let loan = filled_loan(&agent, [0.0; 4]);
    assert!(loan.commit(ReturnCode::ExecutionException).unwrap());
    assert_eq!(join(pending).rc, ReturnCode::ExecutionException);
}

#[test]
fn loaned_result_for_aborted_task_is_false_and_sends_nothing() {
    let (mut raw, agent) = fetched("loanabort");
    let loan = filled_loan(&agent, [1.0; 4]);
    raw.abort("t1");
    eventually("the agent learns of the abort", || agent.is_aborted());
    assert!(!loan.commit(ReturnCode::Ok).unwrap());
    assert!(
        !raw_sees(&mut raw, MessageKind::Result, 200),
        "nothing sent"
    );
    assert!(
        !agent.submit_result(&diff(), ReturnCode::Ok).unwrap(),
        "the aborted task stays unanswerable"
    );
}

#[test]
fn loan_and_copy_submission_for_one_task_accept_exactly_one() {
    // Loan first: the copy submission and a second loan are refused without sending.
    let (mut raw, agent) = fetched("loancopy");
    let loan = filled_loan(&agent, [1.0; 4]);
    assert!(!agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert!(matches!(
        agent.loan_result(&result_spec()),
        Err(SubmitError::NotAnswerable)
    ));
    let verdict = std::thread::scope(|s| {
        let commit = s.spawn(|| loan.commit(ReturnCode::Ok).unwrap());
        raw.answer_result(ReturnCode::Ok, "t1");
        commit.join().unwrap()
    });
    assert!(verdict);
    assert!(
        !raw_sees(&mut raw, MessageKind::Result, 100),
        "one result only"
    );
    assert!(!agent.submit_result(&diff(), ReturnCode::Ok).unwrap());

    // Copy first (sent, not yet acked): the loan is refused.
    let (mut raw, agent) = fetched("copyloan");
    std::thread::scope(|s| {
        let submit = s.spawn(|| agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
        let result = raw.recv();
        assert_eq!(result.kind(), MessageKind::Result);
        assert!(matches!(
            agent.loan_result(&result_spec()),
            Err(SubmitError::NotAnswerable)
        ));
        raw.send(
            Envelope::new(MessageKind::ResultAck)
                .with_task("t1", "")
                .with_rc(ReturnCode::Ok)
                .with_reply_to(result.sequence()),
            None,
        );
        assert!(submit.join().unwrap());
    });
}

#[test]
fn concurrent_loans_and_copies_for_one_task_accept_exactly_one() {
    let exchanger = Arc::new(create("loanrace"));
    let pending = spawn_execute(&exchanger, "t1", watchdog());
    let agent = attach(&exchanger);
    get(&agent);
    let verdicts: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let agent = &agent;
                s.spawn(move || {
                    if i % 2 == 0 {
                        match agent.loan_result(&result_spec()) {
                            Ok(loan) => loan.commit(ReturnCode::Ok).unwrap(),
                            Err(SubmitError::NotAnswerable | SubmitError::LoanOutstanding) => false,
                            Err(e) => panic!("{e}"),
                        }
                    } else {
                        match agent.submit_result(&diff(), ReturnCode::Ok) {
                            Ok(v) => v,
                            Err(SubmitError::LoanOutstanding) => false,
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(verdicts.iter().filter(|v| **v).count(), 1, "{verdicts:?}");
    assert_eq!(join(pending).rc, ReturnCode::Ok);
}

#[test]
fn dropped_loan_leaves_the_task_answerable_by_copy() {
    let exchanger = Arc::new(create("loandrop"));
    let pending = spawn_execute(&exchanger, "t1", watchdog());
    let agent = attach(&exchanger);
    get(&agent);
    drop(filled_loan(&agent, [5.0; 4]));
    assert!(agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    let reply = join(pending);
    assert_eq!(reply.rc, ReturnCode::Ok);
    let w = reply
        .result
        .unwrap()
        .tensor_by_name("w")
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(w, WEIGHTS, "the copy's data, not the abandoned loan's");
}

#[test]
fn pump_applies_abort_tasks_and_bye_while_a_loan_is_held() {
    let exchanger = Arc::new(create("loanpump"));
    let abort = AbortSignal::new();
    let pending = spawn_execute(&exchanger, "t1", abort.clone());
    let agent = attach(&exchanger);
    get(&agent);
    let loan = filled_loan(&agent, [1.0; 4]);
    // The exchanger's abort reaches the agent while the loan is out.
    abort.abort();
    assert_eq!(join(pending).rc, ReturnCode::TaskAborted);
    eventually("the agent learns of the abort", || agent.is_aborted());
    // A new task is received (its ack queued) while the loan is still out.
    let second = spawn_execute(&exchanger, "t2", watchdog());
    let t2 = get(&agent);
    assert_eq!(t2.id, "t2");
    assert!(matches!(
        agent.submit_result(&diff(), ReturnCode::Ok),
        Err(SubmitError::LoanOutstanding)
    ));
    assert!(!loan.commit(ReturnCode::Ok).unwrap(), "aborted meanwhile");
    assert!(agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert_eq!(join(second).rc, ReturnCode::Ok);
    // `bye` while a loan is out closes the agent; the loan's commit says so.
    let third = spawn_execute(&exchanger, "t3", watchdog());
    get(&agent);
    let loan = filled_loan(&agent, [1.0; 4]);
    exchanger.close().unwrap();
    assert_eq!(join(third).rc, ReturnCode::TaskAborted);
    eventually("closed", || agent.status() == AgentStatus::Closed);
    assert!(matches!(
        loan.commit(ReturnCode::Ok),
        Err(SubmitError::Closed)
    ));
}

#[test]
fn first_loaned_result_without_a_task_has_empty_id() {
    let (mut raw, agent) = raw_pair("loanempty");
    let loan = agent.loan_result(&result_spec()).unwrap();
    assert_eq!(loan.task_id(), "");
    let (verdict, result) = std::thread::scope(|s| {
        let commit = s.spawn(|| loan.commit(ReturnCode::Ok).unwrap());
        let result = raw.answer_result(ReturnCode::Ok, "");
        (commit.join().unwrap(), result)
    });
    assert!(verdict);
    assert_eq!(result.task_id(), "");
    assert!(matches!(
        agent.loan_result(&result_spec()),
        Err(SubmitError::NotAnswerable)
    ));
}

fn task_spec() -> LoanSpec {
    LoanSpec::new(DataKind::Weights)
        .tensor("w", DType::F32, &[4])
        .tensor("b", DType::I64, &[2])
}

/// A task loan with `w` = `values` and `b` = [7, 8].
fn filled_task(exchanger: &Exchanger, id: &str, values: [f32; 4]) -> TaskLoan {
    let headers = Headers::new(id).with_rounds(2, 5);
    let mut loan = exchanger
        .loan_task("train", &task_spec(), &headers, &watchdog())
        .unwrap();
    let w = loan.index_of("w").unwrap();
    loan.tensor_mut::<f32>(w).unwrap().copy_from_slice(&values);
    let b = loan.index_of("b").unwrap();
    loan.tensor_mut::<i64>(b).unwrap().copy_from_slice(&[7, 8]);
    loan
}

#[test]
fn loaned_task_is_executed_and_answered() {
    let exchanger = Arc::new(create("loantask"));
    // Taken and filled before any agent attaches: the epoch is stamped when it is sent.
    let loan = filled_task(&exchanger, "t1", [4.0, 3.0, 2.0, 1.0]);
    assert_eq!(loan.task_id(), "t1");
    assert_eq!(
        exchanger
            .execute("train", &model(), &Headers::new("t2"), &watchdog())
            .rc,
        ReturnCode::BadRequestData,
        "the loaned task is in flight"
    );
    let pending = std::thread::spawn(move || loan.execute(&watchdog()));
    let agent = attach(&exchanger);
    let task = get(&agent);
    assert_eq!((task.id.as_str(), task.name.as_str()), ("t1", "train"));
    let meta = task.message.meta();
    assert_eq!(meta["current_round"], 2);
    assert_eq!(meta["total_round"], 5);
    assert_eq!(meta["data_kind"], "WEIGHTS");
    let w = task.message.tensor_by_name("w").unwrap().to_vec::<f32>();
    assert_eq!(w.unwrap(), [4.0, 3.0, 2.0, 1.0]);
    let b = task.message.tensor_by_name("b").unwrap().to_vec::<i64>();
    assert_eq!(b.unwrap(), [7, 8]);
    // Answered by a loan too: zero copies on both sending sides.
    let loan = filled_loan(&agent, [1.5; 4]);
    assert!(loan.commit(ReturnCode::Ok).unwrap());
    let reply = join(pending);
    assert_eq!(reply.rc, ReturnCode::Ok);
    let w = reply
        .result
        .unwrap()
        .tensor_by_name("w")
        .unwrap()
        .to_vec::<f32>();
    assert_eq!(w.unwrap(), [1.5; 4]);
    // The next task goes by copy as usual.
    let next = spawn_execute(&exchanger, "t2", watchdog());
    get(&agent);
    assert!(agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert_eq!(join(next).rc, ReturnCode::Ok);
}

#[test]
fn loan_task_refusals_have_execute_return_codes() {
    let exchanger = create("loantaskerr");
    let headers = Headers::new("t1");
    let refused = |spec: &LoanSpec, headers: &Headers| {
        exchanger
            .loan_task("train", spec, headers, &watchdog())
            .unwrap_err()
    };
    assert_eq!(
        refused(&task_spec(), &Headers::new("")).rc(),
        ReturnCode::BadTaskData
    );
    assert_eq!(
        refused(&LoanSpec::new(DataKind::Weights), &headers).rc(),
        ReturnCode::BadRequestData
    );
    let huge = LoanSpec::new(DataKind::Weights).tensor("w", DType::U8, &[64 << 20]);
    assert_eq!(refused(&huge, &headers).rc(), ReturnCode::BadTaskData);
    let loan = filled_task(&exchanger, "t1", [0.0; 4]);
    assert!(matches!(
        refused(&task_spec(), &Headers::new("t2")),
        TaskLoanError::Busy
    ));
    drop(loan);
    // Dropped: no task in flight any more.
    let again = filled_task(&exchanger, "t3", [0.0; 4]);
    let abort = AbortSignal::new();
    abort.abort();
    assert_eq!(again.execute(&abort).rc, ReturnCode::TaskAborted);
}

#[test]
fn loaned_task_aborted_before_an_agent_attaches_sends_nothing() {
    let exchanger = Arc::new(create("loantaskabort"));
    let loan = filled_task(&exchanger, "t1", [1.0; 4]);
    let abort = AbortSignal::new();
    let pending = {
        let abort = abort.clone();
        std::thread::spawn(move || loan.execute(&abort))
    };
    abort.abort();
    assert_eq!(join(pending).rc, ReturnCode::TaskAborted);
    let agent = attach(&exchanger);
    assert_no_task(&agent, 200);
}

#[test]
fn results_and_close_are_handled_while_a_task_loan_is_held() {
    // A stray result arrives while the task loan is out: the pump answers it (queued, pushed
    // when the loan is executed) instead of waiting for the outbox.
    let (exchanger, pending, mut raw) = task_taken("loantaskpump");
    raw.result("t1", ReturnCode::Ok, Some(&diff().with_meta("k", 1)));
    assert_eq!(join(pending).rc, ReturnCode::Ok);
    let loan = filled_task(&exchanger, "t2", [1.0; 4]);
    let envelope = Envelope::new(MessageKind::Result)
        .with_task("t1", "train")
        .with_rc(ReturnCode::Ok);
    let duplicate = raw.send(envelope, Some(&diff().with_meta("k", 1)));
    // Give the pump time to read it and answer while the loan is out (not a time bound: the
    // order asserted below holds either way, the wait makes the queued path the likely one).
    std::thread::sleep(Duration::from_millis(100));
    let pending = std::thread::spawn(move || loan.execute(&watchdog()));
    // The task comes first (it was reserved first), then the ack of the duplicate.
    let task = raw.recv();
    assert_eq!((task.kind(), task.task_id()), (MessageKind::Task, "t2"));
    let ack = raw.recv();
    assert_eq!(
        (ack.kind(), ack.reply_to()),
        (MessageKind::ResultAck, duplicate)
    );
    assert_eq!(ack.rc(), ReturnCode::Ok);
    raw.send(
        Envelope::new(MessageKind::TaskAck)
            .with_task("t2", "")
            .with_reply_to(task.sequence()),
        None,
    );
    raw.result("t2", ReturnCode::Ok, Some(&diff().with_meta("k", 1)));
    assert_eq!(join(pending).rc, ReturnCode::Ok);
    // `close` while a loan is out returns; the loan then answers TASK_ABORTED and pushes `bye`.
    let loan = filled_task(&exchanger, "t3", [1.0; 4]);
    exchanger.close().unwrap();
    assert_eq!(loan.execute(&watchdog()).rc, ReturnCode::TaskAborted);
    assert!(raw.wait_for(MessageKind::Bye, WATCHDOG).is_some());
}

#[test]
fn loaned_task_is_redelivered_to_a_restarted_agent() {
    let exchanger = Arc::new(create("loantaskredeliver"));
    let loan = filled_task(&exchanger, "t1", [2.0, 4.0, 6.0, 8.0]);
    let agent = attach(&exchanger);
    let pending = std::thread::spawn(move || loan.execute(&watchdog()));
    get(&agent);
    agent.close();
    drop(agent);
    let agent = attach(&exchanger);
    let task = get(&agent);
    assert_eq!(task.id, "t1");
    let w = task.message.tensor_by_name("w").unwrap().to_vec::<f32>();
    assert_eq!(w.unwrap(), [2.0, 4.0, 6.0, 8.0]);
    assert!(agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert_eq!(join(pending).rc, ReturnCode::Ok);
    assert_eq!(exchanger.redeliveries(), 1);
}

/// A result whose sender goes quiet mid-message for `agent_connection_timeout` (its process
/// alive) is given up, answered `invalid` by its sequence number, and ends the task with
/// EXECUTION_EXCEPTION: neither side is left waiting for a message that was lost (before, the
/// message was dropped silently and `execute` waited until the watchdog).
#[test]
fn result_stalled_mid_message_is_answered_invalid_and_ends_the_task() {
    let config = exchanger_config().agent_connection_timeout(Duration::from_millis(300));
    let exchanger = Arc::new(create_with("stalled-result", config));
    let mut raw = RawAgent::attach(&exchanger);
    let pending = spawn_execute(&exchanger, "t1", watchdog());
    raw.take_task(ReturnCode::Ok);
    let envelope = Envelope::new(MessageKind::Result)
        .with_task("t1", "train")
        .with_epoch(raw.link.epoch());
    let sequence = raw.sender.next_sequence();
    send_first_fragment(&mut raw.sender, raw.link.sender(), &envelope);
    assert_eq!(join(pending).rc, ReturnCode::ExecutionException);
    let end = Instant::now() + WATCHDOG;
    let ack = loop {
        assert!(Instant::now() < end, "no result_ack for the stalled result");
        if let Ok(m) = raw.receiver.recv(raw.link.receiver(), Some(end)) {
            if m.kind() == MessageKind::ResultAck {
                break (m.reply_to(), m.rc());
            }
        }
    };
    assert_eq!(ack.0, sequence);
    assert_ne!(ack.1, ReturnCode::Ok);
}

/// Both sides told the model size up front (`expected_message_len`) exchange models larger
/// than their rings, task and result intact, round after round; the reservation is the
/// expected size plus room for headers.
#[test]
fn expected_message_len_reserves_and_large_models_round_trip() {
    const ELEMENTS: usize = 200_000;
    let expected = Some((ELEMENTS * 4) as u64);
    let config = exchanger_config()
        .task_ring_capacity(64 * 1024)
        .result_ring_capacity(64 * 1024)
        .expected_message_len(expected);
    let reserved = config.reserved_receive_buffer().unwrap();
    assert!(reserved >= (ELEMENTS * 4) as u64 + (1 << 20));
    assert_eq!(ExchangerConfig::default().reserved_receive_buffer(), None);
    let ex = Arc::new(create_with("expected-len", config));
    let agent = Agent::attach(ex.name(), agent_config().expected_message_len(expected)).unwrap();
    let data: Vec<f32> = (0..ELEMENTS).map(|i| i as f32).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..2 {
                let task = get(&agent);
                let result = task.message.tensors_dxo(DataKind::WeightDiff).unwrap();
                assert!(agent.submit_result(&result, ReturnCode::Ok).unwrap());
            }
        });
        for round in 0..2 {
            let dxo = Dxo::new(DataKind::Weights)
                .with_tensor("w", &[ELEMENTS as u64], &data)
                .unwrap();
            let reply = ex.execute(
                "train",
                &dxo,
                &Headers::new(format!("t{round}")),
                &watchdog(),
            );
            assert_eq!(reply.rc, ReturnCode::Ok);
            let result = reply.result.unwrap();
            let w = result.tensor_by_name("w").unwrap().to_vec::<f32>().unwrap();
            assert_eq!(w, data, "round {round}");
        }
    });
    agent.close();
    ex.close().unwrap();
}

// ---------------------------------------------------------------- receive in place (issue 12)

fn in_place_pair(tag: &str, ring: u64) -> (Arc<Exchanger>, Agent) {
    let config = exchanger_config()
        .task_ring_capacity(ring)
        .result_ring_capacity(ring)
        .receive_in_place(true);
    let exchanger = Arc::new(create_with(tag, config));
    let agent = Agent::attach(exchanger.name(), agent_config().receive_in_place(true)).unwrap();
    (exchanger, agent)
}

/// A task loan of one f32 tensor `w` of `len` elements, each `value`.
fn big_task(exchanger: &Exchanger, id: &str, len: u64, value: f32) -> TaskLoan {
    let spec = LoanSpec::new(DataKind::Weights).tensor("w", DType::F32, &[len]);
    let mut loan = exchanger
        .loan_task("train", &spec, &Headers::new(id), &watchdog())
        .unwrap();
    loan.tensor_mut::<f32>(0).unwrap().fill(value);
    loan
}

/// The f32 tensor `w` of a message, viewed in place.
fn w_of(message: &OwnedMessage) -> &[f32] {
    message
        .tensor_by_name("w")
        .unwrap()
        .as_slice::<f32>()
        .unwrap()
}

fn all_equal(message: &OwnedMessage, value: f32) -> bool {
    w_of(message).iter().all(|&x| x == value)
}

#[test]
fn with_receive_in_place_loaned_tasks_and_results_are_read_in_the_ring() {
    let (exchanger, agent) = in_place_pair("inplace", 1 << 20);
    let loan = filled_task(&exchanger, "t1", [4.0, 3.0, 2.0, 1.0]);
    let pending = std::thread::spawn(move || loan.execute(&watchdog()));
    let task = get(&agent);
    assert!(task.message.is_in_ring(), "task read in place");
    let w = task.message.tensor_by_name("w").unwrap().to_vec::<f32>();
    assert_eq!(w.unwrap(), [4.0, 3.0, 2.0, 1.0]);
    let loan = filled_loan(&agent, [1.5; 4]);
    assert!(loan.commit(ReturnCode::Ok).unwrap());
    let result = join(pending).result.unwrap();
    assert!(result.is_in_ring(), "result read in place");
    let w = result.tensor_by_name("w").unwrap().to_vec::<f32>();
    assert_eq!(w.unwrap(), [1.5; 4]);
    // A copy sent task is held too, and the default copies out.
    drop((task, result));
    let pending = spawn_execute(&exchanger, "t2", watchdog());
    assert!(get(&agent).message.is_in_ring());
    assert!(agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert!(join(pending).result.unwrap().is_in_ring());
    let exchanger = Arc::new(create("inplace-off"));
    let pending = spawn_execute(&exchanger, "t1", watchdog());
    let agent = attach(&exchanger);
    assert!(!get(&agent).message.is_in_ring());
    assert!(agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert!(!join(pending).result.unwrap().is_in_ring());
}

#[test]
fn abort_and_bye_reach_an_agent_that_holds_its_task_in_place() {
    let (exchanger, agent) = in_place_pair("inplace-abort", 1 << 20);
    // 700 KiB of the 1 MiB ring stays held while the agent works.
    let loan = big_task(&exchanger, "t1", 175 << 10, 2.0);
    let abort = AbortSignal::new();
    let stop = abort.clone();
    let pending = std::thread::spawn(move || loan.execute(&abort));
    let task = get(&agent);
    assert!(task.message.is_in_ring());
    stop.abort();
    assert_eq!(join(pending).rc, ReturnCode::TaskAborted);
    eventually("the abort arrives behind the held task", || {
        agent.is_aborted()
    });
    exchanger.close().unwrap();
    eventually("the bye arrives behind the held task", || {
        agent.status() == AgentStatus::Closed
    });
    assert!(all_equal(&task.message, 2.0), "the held task is intact");
}

/// A task read in place keeps the agent's role after the agent is closed: no later agent can
/// attach (and let the exchanger write over the task) until the task is dropped.
#[test]
fn a_task_held_in_place_keeps_the_role_until_dropped() {
    let (exchanger, agent) = in_place_pair("inplace-role", 1 << 20);
    let pending = spawn_execute(&exchanger, "t1", watchdog());
    let task = get(&agent);
    assert!(task.message.is_in_ring());
    assert!(agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert_eq!(join(pending).rc, ReturnCode::Ok);
    agent.close();
    drop(agent);
    let quick = agent_config().attach_timeout(Duration::from_millis(300));
    assert!(
        Agent::attach(exchanger.name(), quick.clone()).is_err(),
        "the role is still held by the task"
    );
    assert!(w_of(&task.message) == WEIGHTS);
    drop(task);
    let next = Agent::attach(exchanger.name(), quick.attach_timeout(WATCHDOG)).unwrap();
    let pending = spawn_execute(&exchanger, "t2", watchdog());
    assert_eq!(get(&next).id, "t2");
    assert!(next.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert_eq!(join(pending).rc, ReturnCode::Ok);
}

#[test]
fn a_held_task_keeps_the_next_one_out_until_dropped_and_a_task_too_large_to_hold_is_copied() {
    let (exchanger, agent) = in_place_pair("inplace-next", 1 << 20);
    let first = big_task(&exchanger, "t1", 150 << 10, 1.0);
    let pending = std::thread::spawn(move || first.execute(&watchdog()));
    let task = get(&agent);
    assert!(task.message.is_in_ring());
    assert!(agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert_eq!(join(pending).rc, ReturnCode::Ok);
    // 600 KiB held: the next 600 KiB task does not fit until the first is dropped.
    let exchanger2 = Arc::clone(&exchanger);
    let pending = std::thread::spawn(move || {
        big_task(&exchanger2, "t2", 150 << 10, 3.0).execute(&watchdog())
    });
    assert_no_task(&agent, 200);
    drop(task);
    let task = get(&agent);
    assert_eq!(task.id, "t2");
    assert!(task.message.is_in_ring() && all_equal(&task.message, 3.0));
    assert!(agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert_eq!(join(pending).rc, ReturnCode::Ok);
    drop(task);
    // 1,000 KiB would leave less than IN_PLACE_KEEP_FREE of the ring: copied out.
    let pending = std::thread::spawn({
        let exchanger = Arc::clone(&exchanger);
        move || big_task(&exchanger, "t3", 250 << 10, 5.0).execute(&watchdog())
    });
    let task = get(&agent);
    assert!(!task.message.is_in_ring() && all_equal(&task.message, 5.0));
    assert!(agent.submit_result(&diff(), ReturnCode::Ok).unwrap());
    assert_eq!(join(pending).rc, ReturnCode::Ok);
}

// ---------------------------------------------------------------- abort checks (issue 10)

/// A signal whose check says "abort" once `after` has passed since it was made, and whether
/// the check ever ran on another thread than the one that made it.
fn abort_check_after(after: Duration) -> (AbortSignal, Arc<AtomicBool>) {
    let caller = std::thread::current().id();
    let elsewhere = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&elsewhere);
    let start = Instant::now();
    let signal = AbortSignal::with_check(move || {
        if std::thread::current().id() != caller {
            seen.store(true, Ordering::Relaxed);
        }
        start.elapsed() >= after
    });
    (signal, elsewhere)
}

/// A signal whose check, at each poll, waits for another thread to read a side's status (as
/// a check that takes Python's GIL waits for a thread holding it: polled under the side's
/// state lock, it would hang), and says "abort" at the fifth poll.
struct StatusProbe {
    signal: AbortSignal,
    reader: std::thread::JoinHandle<()>,
    polls: Arc<AtomicUsize>,
    stuck: Arc<AtomicBool>,
    elsewhere: Arc<AtomicBool>,
}

impl StatusProbe {
    fn new(read_status: impl Fn() + Send + 'static) -> StatusProbe {
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (read, done) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            for () in asked {
                read_status();
                let _ = read.send(());
            }
        });
        let caller = std::thread::current().id();
        let polls = Arc::new(AtomicUsize::new(0));
        let stuck = Arc::new(AtomicBool::new(false));
        let elsewhere = Arc::new(AtomicBool::new(false));
        let signal = {
            let (polls, stuck, elsewhere) = (
                Arc::clone(&polls),
                Arc::clone(&stuck),
                Arc::clone(&elsewhere),
            );
            let (ask, done) = (Mutex::new(ask), Mutex::new(done));
            AbortSignal::with_check(move || {
                if std::thread::current().id() != caller {
                    elsewhere.store(true, Ordering::Relaxed);
                    return false;
                }
                let _ = ask.lock().unwrap().send(());
                if done
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10))
                    .is_err()
                {
                    stuck.store(true, Ordering::Relaxed);
                    return true;
                }
                polls.fetch_add(1, Ordering::Relaxed) + 1 >= 5
            })
        };
        StatusProbe {
            signal,
            reader,
            polls,
            stuck,
            elsewhere,
        }
    }

    /// Ends the reader and checks that every poll was on this thread, outside the lock.
    fn assert_polled_well(self) {
        assert!(self.signal.is_aborted(), "a true check triggers the signal");
        drop(self.signal);
        self.reader.join().unwrap();
        assert!(
            !self.stuck.load(Ordering::Relaxed),
            "the check was polled under the state lock"
        );
        assert!(
            !self.elsewhere.load(Ordering::Relaxed),
            "the check ran on another thread"
        );
        assert!(self.polls.load(Ordering::Relaxed) >= 5);
    }
}

#[test]
fn abort_check_is_polled_on_the_calling_thread_outside_the_state_lock() {
    let exchanger = Arc::new(create("chk-lock"));
    let agent = attach(&exchanger);
    let probe = {
        let exchanger = Arc::clone(&exchanger);
        StatusProbe::new(move || {
            let _ = exchanger.status();
        })
    };
    // The agent never answers: execute waits for the result until the check aborts it.
    let reply = exchanger.execute("train", &model(), &Headers::new("t1"), &probe.signal);
    assert_eq!(reply.rc, ReturnCode::TaskAborted);
    probe.assert_polled_well();
    eventually("the agent learns of the abort", || agent.is_aborted());
    // The agent's wait for a result_ack polls the same way.
    let (mut raw, agent) = fetched("chk-lock-agent");
    let agent = Arc::new(agent);
    let probe = {
        let agent = Arc::clone(&agent);
        StatusProbe::new(move || {
            let _ = agent.status();
        })
    };
    assert!(matches!(
        agent.submit_result_abortable(&diff(), ReturnCode::Ok, &probe.signal),
        Err(SubmitError::Aborted { sent: true })
    ));
    probe.assert_polled_well();
    assert_eq!(raw.recv().kind(), MessageKind::Result);
}

#[test]
fn abort_check_ends_a_send_blocked_on_ring_space() {
    let exchanger = Arc::new(create("chk-send"));
    // An agent that attaches but never reads: a 64 MiB task through a 1 MiB ring stalls.
    let _raw = RawAgent::attach(&exchanger);
    let big = vec![0.5f32; 16 << 20];
    let dxo = Dxo::new(DataKind::Weights)
        .with_tensor("big", &[16 << 20], &big)
        .unwrap();
    let (signal, elsewhere) = abort_check_after(Duration::from_millis(100));
    let reply = exchanger.execute("train", &dxo, &Headers::new("t1"), &signal);
    assert_eq!(reply.rc, ReturnCode::TaskAborted);
    assert!(
        !elsewhere.load(Ordering::Relaxed),
        "the check ran on another thread"
    );
}

#[test]
fn abort_check_ends_a_loaned_tasks_wait_for_an_agent() {
    let exchanger = create("chk-loan");
    let loan = exchanger
        .loan_task("train", &task_spec(), &Headers::new("t1"), &watchdog())
        .unwrap();
    let (signal, _) = abort_check_after(Duration::from_millis(50));
    assert_eq!(loan.execute(&signal).rc, ReturnCode::TaskAborted);
    // Nothing was sent: a late agent finds no task, and the exchanger is free again.
    let agent = attach(&exchanger);
    assert_no_task(&agent, 100);
    let loan = exchanger.loan_task("train", &task_spec(), &Headers::new("t2"), &watchdog());
    assert!(loan.is_ok());
}

#[test]
fn aborted_wait_for_the_result_ack_counts_the_result_as_sent() {
    let (mut raw, agent) = fetched("chk-ack");
    let (signal, elsewhere) = abort_check_after(Duration::from_millis(50));
    // The raw exchanger never acks.
    let submitted = agent.submit_result_abortable(&diff(), ReturnCode::Ok, &signal);
    assert!(matches!(
        submitted,
        Err(SubmitError::Aborted { sent: true })
    ));
    assert_eq!(submitted.unwrap_err().code(), ErrorCode::Cancelled);
    assert!(
        !elsewhere.load(Ordering::Relaxed),
        "the check ran on another thread"
    );
    assert_eq!(raw.recv().kind(), MessageKind::Result);
    // The task counts as answered: the next one can be fetched.
    raw.task("t2");
    assert_eq!(get(&agent).id, "t2");
    // The same for a loan's commit.
    let loan = filled_loan(&agent, [1.0; 4]);
    let (signal, _) = abort_check_after(Duration::from_millis(50));
    assert!(matches!(
        loan.commit_abortable(ReturnCode::Ok, &signal),
        Err(SubmitError::Aborted { sent: true })
    ));
    assert_eq!(raw.recv().kind(), MessageKind::Result);
    assert_eq!(
        agent
            .get_task(Some(Duration::from_millis(50)))
            .unwrap()
            .map(|t| t.id),
        None
    );
}

#[test]
fn aborted_wait_for_ring_space_sends_nothing_and_the_task_stays_answerable() {
    let (mut raw, agent) = fetched("chk-space");
    // 4 MiB through the 1 MiB result ring of an exchanger that does not read: it stalls.
    let big = vec![0.5f32; 1 << 20];
    let large = Dxo::new(DataKind::WeightDiff)
        .with_tensor("w", &[1 << 20], &big)
        .unwrap();
    let (signal, elsewhere) = abort_check_after(Duration::from_millis(100));
    assert!(matches!(
        agent.submit_result_abortable(&large, ReturnCode::Ok, &signal),
        Err(SubmitError::Aborted { sent: false })
    ));
    assert!(
        !elsewhere.load(Ordering::Relaxed),
        "the check ran on another thread"
    );
    // The ring is still full of the unfinished result: a loan waits for space, and is aborted.
    let (signal, _) = abort_check_after(Duration::from_millis(100));
    let spec = LoanSpec::new(DataKind::WeightDiff).tensor("w", DType::F32, &[64 << 10]);
    assert!(matches!(
        agent.loan_result_abortable(&spec, &signal),
        Err(SubmitError::Aborted { sent: false })
    ));
    // The task is still answerable; the exchanger drops the unfinished result, saying so.
    let (verdict, result) = std::thread::scope(|s| {
        let submit = s.spawn(|| agent.submit_result(&diff(), ReturnCode::Ok));
        let result = loop {
            match raw.receiver.recv(raw.link.receiver(), deadline()) {
                Ok(message) => break message.into_owned().unwrap(),
                Err(e) => assert!(matches!(e, FrameError::OutOfOrder(_)), "{e}"),
            }
        };
        let ack = Envelope::new(MessageKind::ResultAck)
            .with_task("t1", "")
            .with_rc(ReturnCode::Ok)
            .with_reply_to(result.sequence());
        raw.send(ack, None);
        (submit.join().unwrap().unwrap(), result)
    });
    assert!(verdict);
    assert_eq!(result.task_id(), "t1");
    assert_eq!(
        result.tensor_by_name("w").unwrap().to_vec::<f32>().unwrap(),
        WEIGHTS
    );
}
