//! Multi-process fault tests of the task protocol: the other side is a `shmex-testpeer`
//! process that is SIGKILLed, SIGSTOPped and restarted (`docs/protocol.md` §7). Every wait
//! has a watchdog; children are SIGKILLed when dropped. Elapsed times are printed, never
//! asserted against an upper bound (speed lives in benchmarks).
#![cfg(not(loom))]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    eventually, quick_exchanger_config, quick_wait, unique_name, watchdog_abort, Peer, WATCHDOG,
};
use rustix::process::Signal;
use shmex::frame::{DType, DataKind, Dxo, LoanSpec, ReturnCode};
use shmex::protocol::{
    AbortSignal, Agent, AgentConfig, AgentStatus, Exchanger, ExchangerConfig, ExchangerStatus,
    Headers, Reply, RestartPolicy,
};
use shmex::segment::SegmentName;
use shmex_test_support::pattern::checksum_all;

fn unique(tag: &str) -> SegmentName {
    unique_name("pf", tag)
}

fn config() -> ExchangerConfig {
    quick_exchanger_config()
}

fn shm_exists(name: &SegmentName) -> bool {
    std::path::Path::new("/dev/shm")
        .join(name.as_str())
        .exists()
}

fn watchdog() -> AbortSignal {
    watchdog_abort(WATCHDOG)
}

/// The checksum `shmex-testpeer` prints for a task's tensors.
fn tensors_checksum(tensors: &[&[u8]]) -> String {
    format!("{:016x}", checksum_all(tensors.iter().copied()))
}

fn execute_in_thread(
    exchanger: &Arc<Exchanger>,
    id: &str,
    weights: Arc<Vec<f32>>,
    abort: AbortSignal,
) -> std::thread::JoinHandle<Reply> {
    let exchanger = Arc::clone(exchanger);
    let id = id.to_string();
    std::thread::spawn(move || {
        let dxo = Dxo::new(DataKind::Weights)
            .with_tensor("w", &[weights.len() as u64], &weights[..])
            .unwrap();
        exchanger.execute("train", &dxo, &Headers::new(id), &abort)
    })
}

fn small_model() -> Arc<Vec<f32>> {
    Arc::new(vec![1.5f32; 256])
}

fn assert_echo(reply: &Reply, id: &str, weights: &[f32]) {
    assert_eq!(reply.rc, ReturnCode::Ok, "task {id}");
    let result = reply.result.as_ref().expect("a result DXO");
    assert_eq!(result.meta()["task"], id);
    let w = result.tensor_by_name("w").unwrap().to_vec::<f32>().unwrap();
    assert_eq!(w, weights, "task {id}: result tensors");
}

/// SIGKILLs the agent holding `t1`, waits for the exchanger to notice (printing how long it
/// took) and returns the pending `execute`.
fn kill_agent_holding_task(
    exchanger: &Arc<Exchanger>,
    policy_name: &str,
) -> std::thread::JoinHandle<Reply> {
    let name = exchanger.name().as_str().to_string();
    let mut holder = Peer::spawn(&["agent-hold-task", &name]);
    holder.expect_line("READY");
    let pending = execute_in_thread(exchanger, "t1", small_model(), watchdog());
    assert_eq!(holder.expect_line("TASK"), "TASK t1");
    let killed = Instant::now();
    holder.kill();
    eventually("the exchanger notices the death", || {
        !matches!(exchanger.status(), ExchangerStatus::Connected { .. })
    });
    let detected = killed.elapsed();
    println!("RESULT protocol agent-death-detection-{policy_name} {detected:?}");
    pending
}

// ---------------------------------------------------------------- agent killed

#[test]
fn killed_agent_is_detected_and_task_redelivered() {
    // ≤ 100 ms is a benchmark figure (printed by the helper); the test asserts detection and
    // that the in-flight task is redelivered to the next incarnation and completes there.
    let exchanger = Arc::new(Exchanger::create(&unique("killagent"), config()).unwrap());
    let pending = kill_agent_holding_task(&exchanger, "redeliver");
    let server = Peer::spawn(&["agent-serve", exchanger.name().as_str()]);
    server.expect_line("READY");
    let weights = small_model();
    let line = server.expect_line("TASK");
    assert_eq!(
        line,
        format!("TASK t1 {}", tensors_checksum(&[bytes_of(&weights)]))
    );
    let reply = pending.join().unwrap();
    assert_echo(&reply, "t1", &weights);
    assert_eq!(server.expect_line("SUBMIT"), "SUBMIT t1 true");
    assert_eq!(exchanger.redeliveries(), 1);
    exchanger.close().unwrap();
    server.expect_line("CLOSED");
    server.finish();
    assert!(!shm_exists(exchanger.name()));
}

/// An agent killed while it holds its task in the task ring (receive_in_place): the ring
/// space it held is not lost, and the task is redelivered to the next agent, in place again.
#[test]
fn agent_killed_holding_a_task_in_place_loses_no_ring_space() {
    let config = config().task_ring_capacity(1 << 20);
    let exchanger = Arc::new(Exchanger::create(&unique("killinplace"), config).unwrap());
    let name = exchanger.name().as_str().to_string();
    let mut holder = Peer::spawn(&["agent-hold-task-in-place", &name]);
    holder.expect_line("READY");
    // 600 KiB: the next such task only fits if the dead agent's hold is given back.
    let weights: &'static [f32] = Box::leak(vec![0.5f32; 150 << 10].into_boxed_slice());
    let model = Dxo::new(DataKind::Weights)
        .with_tensor("w", &[weights.len() as u64], weights)
        .unwrap();
    let send = |id: &'static str| {
        let exchanger = Arc::clone(&exchanger);
        let model = model.clone();
        std::thread::spawn(move || {
            exchanger.execute("train", &model, &Headers::new(id), &watchdog())
        })
    };
    let pending = send("t1");
    assert_eq!(holder.expect_line("TASK"), "TASK t1 in_ring=true");
    holder.kill();
    let agent = Agent::attach(
        exchanger.name(),
        AgentConfig::default()
            .attach_timeout(Duration::from_secs(60))
            .receive_in_place(true),
    )
    .unwrap();
    let mut pending = Some(pending);
    for id in ["t1", "t2", "t3"] {
        let pending = pending.take().unwrap_or_else(|| send(id));
        let task = agent.get_task(Some(WATCHDOG)).unwrap();
        let task = task.unwrap_or_else(|| panic!("{id} never arrived"));
        assert_eq!(task.id, id);
        assert!(task.message.is_in_ring(), "{id} read in place");
        let w = task.message.tensor_by_name("w").unwrap();
        assert!(w.as_slice::<f32>().unwrap() == weights);
        drop(task);
        assert!(agent.submit_result(&model, ReturnCode::Ok).unwrap());
        assert_eq!(pending.join().unwrap().rc, ReturnCode::Ok);
    }
    exchanger.close().unwrap();
}

fn bytes_of(weights: &[f32]) -> &[u8] {
    zerocopy::IntoBytes::as_bytes(weights)
}

#[test]
fn fail_policy_returns_execution_exception_on_agent_death() {
    let config = config().on_agent_restart(RestartPolicy::Fail);
    let exchanger = Arc::new(Exchanger::create(&unique("failpolicy"), config).unwrap());
    let pending = kill_agent_holding_task(&exchanger, "fail");
    assert_eq!(pending.join().unwrap().rc, ReturnCode::ExecutionException);
    assert_eq!(exchanger.redeliveries(), 0);
}

#[test]
fn result_committed_before_death_completes_task() {
    let exchanger = Arc::new(Exchanger::create(&unique("committed"), config()).unwrap());
    let mut agent = Peer::spawn(&["raw-result-then-hang", exchanger.name().as_str()]);
    agent.expect_line("READY");
    let weights = small_model();
    let pending = execute_in_thread(&exchanger, "t1", Arc::clone(&weights), watchdog());
    agent.expect_line("SENT");
    agent.kill();
    let reply = pending.join().unwrap();
    assert_echo(&reply, "t1", &weights);
    assert_eq!(
        exchanger.redeliveries(),
        0,
        "a committed result is not redelivered"
    );
}

#[test]
fn nothing_from_old_incarnation_reaches_new_agent() {
    // The first agent never reads: the 4 MiB task stalls half-streamed in the 1 MiB ring,
    // addressed to it. The next incarnation must drop those fragments and get the whole task.
    let exchanger = Arc::new(Exchanger::create(&unique("oldinc"), config()).unwrap());
    let name = exchanger.name().as_str().to_string();
    let mut stalled = Peer::spawn(&["raw-agent-stall", &name]);
    stalled.expect_line("READY");
    let weights: Arc<Vec<f32>> = Arc::new((0..(1 << 20)).map(|i| i as f32).collect());
    let pending = execute_in_thread(&exchanger, "t1", Arc::clone(&weights), watchdog());
    std::thread::sleep(Duration::from_millis(100));
    assert!(!pending.is_finished());
    stalled.kill();
    let server = Peer::spawn(&["agent-serve", &name]);
    server.expect_line("READY");
    assert_eq!(
        server.expect_line("TASK"),
        format!("TASK t1 {}", tensors_checksum(&[bytes_of(&weights)]))
    );
    assert_echo(&pending.join().unwrap(), "t1", &weights);
    exchanger.close().unwrap();
    server.expect_line("CLOSED");
    server.finish();
}

// ---------------------------------------------------------------- exchanger killed

/// Fetches the next task, checks it is `id`, and answers with its tensor `w` as a
/// WEIGHT_DIFF result (meta `task` = id), which must be accepted.
fn echo_next_task(agent: &Agent, id: &str) {
    let task = agent.get_task(Some(WATCHDOG)).unwrap().expect("a task");
    assert_eq!(task.id, id);
    let w = task
        .message
        .tensor_by_name("w")
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let result = Dxo::new(DataKind::WeightDiff)
        .with_tensor("w", &[w.len() as u64], &w)
        .unwrap()
        .with_meta("task", id);
    assert!(agent.submit_result(&result, ReturnCode::Ok).unwrap());
}

fn agent_config() -> AgentConfig {
    AgentConfig::default()
        .attach_timeout(Duration::from_secs(30))
        .heartbeat_interval(Duration::from_millis(20))
        .wait(quick_wait())
}

/// An agent holding task `t1` from an exchanger process that was then SIGKILLed.
fn agent_of_killed_exchanger(tag: &str) -> (Agent, SegmentName) {
    let name = unique(tag);
    let mut exchanger = Peer::spawn(&["exchanger-task", name.as_str()]);
    exchanger.expect_line("READY");
    let agent = Agent::attach(&name, agent_config()).unwrap();
    let task = agent.get_task(Some(WATCHDOG)).unwrap().expect("task t1");
    assert_eq!(task.id, "t1");
    let killed = Instant::now();
    exchanger.kill();
    eventually("the agent notices", || agent.status() == AgentStatus::Lost);
    println!(
        "RESULT protocol exchanger-death-detection {:?}",
        killed.elapsed()
    );
    (agent, name)
}

#[test]
fn dead_exchanger_makes_agent_disconnected() {
    let (agent, name) = agent_of_killed_exchanger("deadexch");
    assert!(agent.is_aborted());
    let result = Dxo::new(DataKind::WeightDiff)
        .with_tensor("w", &[1], &[1.0f32])
        .unwrap();
    assert!(!agent.submit_result(&result, ReturnCode::Ok).unwrap());
    // get_task keeps waiting for a new exchanger (no error).
    assert!(agent
        .get_task(Some(Duration::from_millis(50)))
        .unwrap()
        .is_none());
    drop(agent);
    // No new exchanger came to reclaim the dead one's segment: remove it.
    shmex::segment::reclaim(&name).unwrap();
    assert!(!shm_exists(&name));
}

#[test]
fn killed_exchanger_is_reclaimed_and_waiting_agent_serves_new_one() {
    let (agent, name) = agent_of_killed_exchanger("reclaim");
    assert!(shm_exists(&name), "the dead owner's segment is still there");
    let exchanger = Arc::new(Exchanger::create(&name, config()).unwrap());
    eventually("the agent reattaches", || {
        agent.status() == AgentStatus::Connected
    });
    let weights = small_model();
    let pending = execute_in_thread(&exchanger, "t2", Arc::clone(&weights), watchdog());
    echo_next_task(&agent, "t2");
    assert_echo(&pending.join().unwrap(), "t2", &weights);
    exchanger.close().unwrap();
    assert!(!shm_exists(&name));
    eventually("bye closes the agent", || {
        agent.status() == AgentStatus::Closed
    });
}

// ---------------------------------------------------------------- agent paused

#[test]
fn stopped_agent_is_disconnected_then_dead_after_heartbeat_timeout() {
    let config = config()
        .agent_connection_timeout(Duration::from_millis(300))
        .agent_heartbeat_timeout(Some(Duration::from_millis(1500)));
    let exchanger = Arc::new(Exchanger::create(&unique("sigstop"), config).unwrap());
    let mut agent = Peer::spawn(&["agent-serve", exchanger.name().as_str()]);
    agent.expect_line("READY");
    eventually("connected", || {
        matches!(exchanger.status(), ExchangerStatus::Connected { .. })
    });
    // Paused, then resumed before the heartbeat timeout: disconnected, then connected again.
    agent.signal(Signal::STOP);
    let stopped = Instant::now();
    eventually("disconnected", || {
        matches!(exchanger.status(), ExchangerStatus::Disconnected { .. })
    });
    assert!(stopped.elapsed() >= Duration::from_millis(250));
    agent.signal(Signal::CONT);
    eventually("connected again", || {
        matches!(exchanger.status(), ExchangerStatus::Connected { .. })
    });
    let weights = small_model();
    let reply = execute_in_thread(&exchanger, "t1", Arc::clone(&weights), watchdog());
    assert_echo(&reply.join().unwrap(), "t1", &weights);
    // Paused for good: the exchanger stops, execute returns TASK_ABORTED.
    agent.signal(Signal::STOP);
    let pending = execute_in_thread(&exchanger, "t2", Arc::clone(&weights), watchdog());
    assert_eq!(pending.join().unwrap().rc, ReturnCode::TaskAborted);
    assert_eq!(exchanger.status(), ExchangerStatus::Stopped);
    agent.signal(Signal::CONT);
    agent.kill();
}

// ---------------------------------------------------------------- soak

/// Collects every stdout line of a child until one starts with `prefix` (inclusive).
fn collect_until(peer: &Peer, prefix: &str, log: &mut Vec<String>) {
    let end = Instant::now() + WATCHDOG;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let line = peer
            .next_line(left)
            .unwrap_or_else(|| panic!("peer never printed {prefix:?}"));
        let done = line.starts_with(prefix);
        log.push(line);
        if done {
            return;
        }
    }
}

/// Collects what a killed child printed before it died.
fn collect_rest(peer: &Peer, log: &mut Vec<String>) {
    while let Some(line) = peer.next_line(Duration::from_millis(200)) {
        log.push(line);
    }
}

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn soak_thousand_tasks_with_aborts_duplicates_and_three_agent_restarts() {
    const TASKS: usize = 1000;
    const RESTARTS: [usize; 3] = [250, 500, 750];
    let name = unique("soak");
    let exchanger = Arc::new(Exchanger::create(&name, config()).unwrap());
    let mut random = 0x9E37_79B9_7F4A_7C15u64;
    let mut log = Vec::new();
    let mut agent = Peer::spawn(&["agent-serve", name.as_str(), "11"]);
    collect_until(&agent, "READY", &mut log);
    let mut replies: HashMap<String, ReturnCode> = HashMap::new();
    let mut aborted_ids = HashSet::new();
    let mut restart_ids = HashSet::new();
    let start = Instant::now();
    for i in 0..TASKS {
        let id = format!("t{i}");
        let weights = Arc::new(vec![i as f32; 64]);
        let abort = AbortSignal::new();
        if next(&mut random).is_multiple_of(10) {
            aborted_ids.insert(id.clone());
            // Some before execute starts, the others at a random point of the round trip.
            let after = Duration::from_micros(next(&mut random) % 800);
            if after < Duration::from_micros(100) {
                abort.abort();
            } else {
                let fire = abort.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(after - Duration::from_micros(100));
                    fire.abort();
                });
            }
        }
        let pending = execute_in_thread(&exchanger, &id, Arc::clone(&weights), abort.clone());
        if RESTARTS.contains(&i) && !aborted_ids.contains(&id) {
            // Kill the agent while it holds this task; a new incarnation takes over.
            restart_ids.insert(id.clone());
            collect_until(&agent, &format!("TASK {id} "), &mut log);
            agent.kill();
            collect_rest(&agent, &mut log);
            let seed = (i + 1).to_string();
            agent = Peer::spawn(&["agent-serve", name.as_str(), &seed]);
            collect_until(&agent, "READY", &mut log);
        }
        let reply = pending.join().unwrap();
        match reply.rc {
            ReturnCode::Ok => assert_echo(&reply, &id, &weights),
            ReturnCode::TaskAborted => assert!(abort.is_aborted(), "{id} aborted unasked"),
            other => panic!("{id}: unexpected {other:?}"),
        }
        assert!(replies.insert(id, reply.rc).is_none());
    }
    let elapsed = start.elapsed();
    exchanger.close().unwrap();
    collect_until(&agent, "CLOSED", &mut log);
    agent.finish();
    assert!(!shm_exists(&name), "segment left in /dev/shm");

    // Every task ended exactly once, with OK unless it was aborted.
    assert_eq!(replies.len(), TASKS);
    let ok: HashSet<&String> = replies
        .iter()
        .filter(|(_, rc)| **rc == ReturnCode::Ok)
        .map(|(id, _)| id)
        .collect();
    for (id, rc) in &replies {
        if !aborted_ids.contains(id) {
            assert_eq!(*rc, ReturnCode::Ok, "{id} was not aborted");
        }
    }
    // submit_result is true exactly for tasks whose execute returned the result; duplicate
    // submissions are false.
    let mut accepted = HashSet::new();
    let mut duplicates = 0;
    for line in &log {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["SUBMIT", id, "true"] => {
                assert!(ok.contains(&id.to_string()), "{id} accepted but not OK");
                assert!(accepted.insert(id.to_string()), "{id} accepted twice");
            }
            ["SUBMIT", id, "false"] => {
                assert!(
                    !ok.contains(&id.to_string()),
                    "{id} is OK but its submit was refused"
                );
            }
            ["DUP", id, verdict] => {
                duplicates += 1;
                assert_eq!(*verdict, "false", "duplicate submit of {id} accepted");
            }
            _ => {}
        }
    }
    for id in &ok {
        // A killed incarnation may have been acked before it could print.
        if !restart_ids.contains(*id) {
            assert!(
                accepted.contains(*id),
                "{id} is OK but its submit was not accepted"
            );
        }
    }
    println!(
        "RESULT protocol soak {TASKS} tasks {} ok {} aborted {duplicates} duplicates in {elapsed:?}",
        ok.len(),
        TASKS - ok.len()
    );
    assert!(
        duplicates > 0,
        "the soak exercised no duplicate submissions"
    );
    assert!(ok.len() < TASKS, "the soak exercised no aborts");
}

// ---------------------------------------------------------------- defects D5, D6

/// D5 (b): the agent held `t1` of an exchanger that was SIGKILLed; a new exchanger executes
/// `new0` and the agent reattaches: the trainer's result for the old task went out with an
/// empty id and completed `new0` with the old task's data. It must be refused.
#[test]
fn d5_result_of_killed_exchangers_task_never_completes_new_task() {
    let (agent, name) = agent_of_killed_exchanger("d5b");
    let exchanger = Arc::new(Exchanger::create(&name, config()).unwrap());
    let weights = small_model();
    let pending = execute_in_thread(&exchanger, "new0", Arc::clone(&weights), watchdog());
    eventually("the agent reattaches", || {
        agent.status() == AgentStatus::Connected
    });
    std::thread::sleep(Duration::from_millis(100));
    let old = Dxo::new(DataKind::WeightDiff)
        .with_tensor("w", &[1], &[-1.0f32])
        .unwrap()
        .with_meta("task", "t1");
    assert!(
        !agent.submit_result(&old, ReturnCode::Ok).unwrap(),
        "the old task's result was accepted by the new exchanger"
    );
    echo_next_task(&agent, "new0");
    assert_echo(&pending.join().unwrap(), "new0", &weights);
    exchanger.close().unwrap();
    drop(agent);
    assert!(!shm_exists(&name));
}

/// D6: an agent SIGKILLed in the middle of streaming its result, replaced at once by a new
/// incarnation (which holds the role lock again before the exchanger's next liveness probe):
/// the exchanger waited for the next fragment for a whole `agent_connection_timeout` (here an
/// hour). It must notice the new epoch, drop the partial result and redeliver the task.
#[test]
fn d6_agent_killed_mid_result_and_replaced_at_once_gets_the_task_again() {
    let name = unique("d6");
    // The ring wait probes the agent's role lock only every second: the replacement
    // attaches well within that.
    let config = config()
        .agent_connection_timeout(Duration::from_secs(3600))
        .wait(
            shmex::signal::WaitStrategy::default()
                .spin(Duration::from_micros(20))
                .poll_interval(Duration::from_secs(1)),
        );
    let exchanger = Arc::new(Exchanger::create(&name, config).unwrap());
    let mut old = Peer::spawn(&["raw-partial-result-then-hang", name.as_str()]);
    old.expect_line("READY");
    let weights = small_model();
    let pending = execute_in_thread(
        &exchanger,
        "t1",
        Arc::clone(&weights),
        watchdog_abort(Duration::from_secs(30)),
    );
    old.expect_line("SENT");
    // Let the pump take the first fragment and wait for the next one.
    std::thread::sleep(Duration::from_millis(100));
    old.kill();
    let agent = Agent::attach(&name, agent_config()).unwrap();
    let task = agent
        .get_task(Some(Duration::from_secs(30)))
        .unwrap()
        .expect("t1 redelivered to the new incarnation");
    assert_eq!(task.id, "t1");
    let w = task
        .message
        .tensor_by_name("w")
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let result = Dxo::new(DataKind::WeightDiff)
        .with_tensor("w", &[w.len() as u64], &w)
        .unwrap()
        .with_meta("task", "t1");
    assert!(agent.submit_result(&result, ReturnCode::Ok).unwrap());
    assert_echo(&pending.join().unwrap(), "t1", &weights);
    drop(agent);
    exchanger.close().unwrap();
    assert!(!shm_exists(&name));
}

// ---------------------------------------------------------------- loans (issue 9)

#[test]
fn agent_killed_mid_loan_leaves_nothing_and_loaned_task_is_redelivered() {
    let exchanger = Arc::new(Exchanger::create(&unique("killloan"), config()).unwrap());
    let name = exchanger.name().as_str().to_string();
    let mut holder = Peer::spawn(&["agent-loan-half-then-hang", &name]);
    holder.expect_line("READY");
    // The task itself goes by loan: its redelivery comes from its record in the ring.
    let weights = small_model();
    let spec = LoanSpec::new(DataKind::Weights).tensor("w", DType::F32, &[weights.len() as u64]);
    let mut loan = exchanger
        .loan_task("train", &spec, &Headers::new("t1"), &watchdog())
        .unwrap();
    loan.tensor_mut::<f32>(0).unwrap().copy_from_slice(&weights);
    let pending = std::thread::spawn(move || loan.execute(&watchdog()));
    assert_eq!(holder.expect_line("TASK"), "TASK t1");
    holder.expect_line("HALF");
    holder.kill();
    eventually("the exchanger notices the death", || {
        !matches!(exchanger.status(), ExchangerStatus::Connected { .. })
    });
    let server = Peer::spawn(&["agent-serve", exchanger.name().as_str()]);
    server.expect_line("READY");
    assert_eq!(
        server.expect_line("TASK"),
        format!("TASK t1 {}", tensors_checksum(&[bytes_of(&weights)]))
    );
    // The reply is the new agent's echo, never the half-filled loan.
    let reply = pending.join().unwrap();
    assert_echo(&reply, "t1", &weights);
    assert_eq!(server.expect_line("SUBMIT"), "SUBMIT t1 true");
    assert_eq!(exchanger.redeliveries(), 1);
    exchanger.close().unwrap();
    server.expect_line("CLOSED");
    server.finish();
    assert!(!shm_exists(exchanger.name()));
}
