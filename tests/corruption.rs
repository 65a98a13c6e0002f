//! A third party overwrites one side's state word while an exchanger and an agent (threads of
//! this process) are mid-protocol. The word says nothing a shmex process would write while the
//! role lock is held, so the observer must call it corrupt and both sides must end in a
//! defined state (docs/protocol.md §8), not wait forever.
//!
//! Every test runs under a watchdog that fails the process instead of letting it hang.
#![cfg(not(loom))]

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use shmex::control::control_block;
use shmex::frame::{DataKind, Dxo, ReturnCode};
use shmex::layout::Role;
use shmex::protocol::{
    AbortSignal, Agent, AgentConfig, Exchanger, ExchangerStatus, GetTaskError, Headers, SubmitError,
};
use shmex::segment::{Segment, SegmentName};

mod common;

use common::{eventually, quick_exchanger_config, quick_wait, unique_name};

/// How long any one test may take before the watchdog fails it.
const WATCHDOG: Duration = Duration::from_secs(60);

/// Fails the whole test process if it is not dropped within [`WATCHDOG`]: a hang is a failure,
/// never a stuck test run.
struct Watchdog(Option<mpsc::Sender<()>>);

impl Watchdog {
    fn arm(what: &'static str) -> Watchdog {
        let (disarm, armed) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = armed.recv_timeout(WATCHDOG) {
                // Straight to stderr: the test harness would swallow `eprintln!` output.
                let _ = writeln!(std::io::stderr(), "watchdog: {what} hung for {WATCHDOG:?}");
                std::process::exit(101);
            }
        });
        Watchdog(Some(disarm))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(disarm) = self.0.take() {
            let _ = disarm.send(());
        }
    }
}

const WEIGHTS: [f32; 4] = [1.0, 2.0, 3.0, 4.0];

fn model() -> Dxo<'static> {
    Dxo::new(DataKind::Weights)
        .with_tensor("w", &[4], &WEIGHTS)
        .unwrap()
}

fn agent_config() -> AgentConfig {
    AgentConfig::default()
        .attach_timeout(Duration::from_secs(10))
        .heartbeat_interval(Duration::from_millis(20))
        .wait(quick_wait())
}

/// Overwrites `role`'s state word through a mapping of our own, as a third process would.
fn corrupt_state_word(name: &SegmentName, role: Role, word: u32) {
    let segment = Segment::open(name, false).unwrap();
    let control = control_block(&segment).unwrap();
    let state = &control.sides[role.index()].state;
    let offset = state as *const _ as usize - segment.as_ptr() as usize;
    let expected = match role {
        Role::Exchanger => 260,
        Role::Agent => 516,
    };
    assert_eq!(offset, expected, "the {role:?} state word moved");
    state.store(word, Ordering::Release);
}

/// One task through the link, so that both sides are connected and bound.
fn round_trip(exchanger: &Exchanger, agent: &Agent, id: &str) {
    std::thread::scope(|s| {
        let execute = s
            .spawn(|| exchanger.execute("train", &model(), &Headers::new(id), &AbortSignal::new()));
        let task = agent.get_task(Some(WATCHDOG)).unwrap().expect("a task");
        assert_eq!(task.id, id);
        assert!(agent.submit_result(&model(), ReturnCode::Ok).unwrap());
        assert_eq!(execute.join().unwrap().rc, ReturnCode::Ok);
    });
}

/// The agent's side block is overwritten with `word` while a task is in flight and the agent
/// works on it: `execute` must return `TASK_ABORTED` with the exchanger `Stopped`, the agent's
/// `submit_result` must return, and its next `get_task` must report `Closed`.
fn agent_side_corrupted_mid_task(tag: &str, word: u32) {
    let _watchdog = Watchdog::arm("agent side corrupted mid-task");
    let name = unique_name("corrupt", tag);
    let exchanger = Arc::new(Exchanger::create(&name, quick_exchanger_config()).unwrap());
    let agent = Agent::attach(&name, agent_config()).unwrap();
    round_trip(&exchanger, &agent, "t1");
    let execute = {
        let exchanger = Arc::clone(&exchanger);
        std::thread::spawn(move || {
            exchanger.execute("train", &model(), &Headers::new("t2"), &AbortSignal::new())
        })
    };
    let task = agent.get_task(Some(WATCHDOG)).unwrap().expect("task t2");
    assert_eq!(task.id, "t2");
    corrupt_state_word(&name, Role::Agent, word);
    let reply = execute.join().expect("execute panicked");
    assert_eq!(reply.rc, ReturnCode::TaskAborted);
    assert_eq!(exchanger.status(), ExchangerStatus::Stopped);
    // The agent's result can no longer be accepted; the call returns instead of waiting for
    // an ack that never comes.
    match agent.submit_result(&model(), ReturnCode::Ok) {
        Ok(false) | Err(SubmitError::Closed) => {}
        other => panic!("submit_result after the link broke: {other:?}"),
    }
    eventually("the agent closed", || {
        matches!(
            agent.get_task(Some(Duration::from_millis(10))),
            Err(GetTaskError::Closed)
        )
    });
    drop(agent);
    drop(exchanger);
}

#[test]
fn a_zeroed_agent_state_word_ends_execute_and_the_agents_calls() {
    agent_side_corrupted_mid_task("agent-zero", 0);
}

#[test]
fn an_all_ones_agent_state_word_ends_execute_and_the_agents_calls() {
    agent_side_corrupted_mid_task("agent-ones", u32::MAX);
}

/// The exchanger's side block is overwritten with `word` while the agent waits in
/// `get_task`: the agent must end with `Closed`.
fn exchanger_side_corrupted_while_agent_waits(tag: &str, word: u32) {
    let _watchdog = Watchdog::arm("exchanger side corrupted while the agent waits");
    let name = unique_name("corrupt", tag);
    let exchanger = Exchanger::create(&name, quick_exchanger_config()).unwrap();
    let agent = Agent::attach(&name, agent_config()).unwrap();
    round_trip(&exchanger, &agent, "t1");
    std::thread::scope(|s| {
        let waiting = s.spawn(|| agent.get_task(Some(WATCHDOG)));
        std::thread::sleep(Duration::from_millis(20));
        corrupt_state_word(&name, Role::Exchanger, word);
        let got = waiting.join().expect("get_task panicked");
        assert!(
            matches!(got, Err(GetTaskError::Closed)),
            "get_task after the exchanger side broke: {got:?}"
        );
    });
    drop(agent);
    drop(exchanger);
}

#[test]
fn a_zeroed_exchanger_state_word_closes_the_agent() {
    exchanger_side_corrupted_while_agent_waits("ex-zero", 0);
}

#[test]
fn an_all_ones_exchanger_state_word_closes_the_agent() {
    exchanger_side_corrupted_while_agent_waits("ex-ones", u32::MAX);
}
