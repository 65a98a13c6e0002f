//! The Rust side of `tests/run.sh`: an exchanger or an agent over `shmex::protocol` speaking
//! the examples' contract, checking every element it receives.
//!
//! ```text
//! ffi-peer exchanger SITE AGENT_ID ROUNDS ELEMENTS   sends ROUNDS tasks, checks the results
//! ffi-peer agent SITE AGENT_ID                       answers tasks until bye
//! ffi-peer bench-exchanger SITE AGENT_ID LABEL WARMUP ROUNDS BYTES RING
//! ffi-peer bench-agent SITE AGENT_ID
//! ```
//!
//! The bench modes are `ffi/bench/run.sh`'s (a benchmark, not a test): the exchanger sends
//! WARMUP + ROUNDS tasks of one f32 tensor of BYTES bytes by copy, over rings of RING bytes,
//! times each round trip and prints `RESULT LABEL median_us=.. p99_us=.. rounds=..`; the agent
//! answers each task by loan, writing every element plus one into the loan (as
//! `ffi/bench/bench.c agent`).
//!
//! The contract (also in `examples/*.c`): a task is a WEIGHTS DXO of f32 tensors `weight`
//! (ELEMENTS elements, shape [ELEMENTS / 16, 16]) and `bias` ([16]) whose element `i` in
//! round `r` is `(i % 1000) * 0.5 + r`; meta carries `current_round`. The agent answers each
//! element plus one, same names and shapes, meta `NUM_STEPS_CURRENT_ROUND: 1`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use shmex::frame::{DataKind, Dxo, LoanSpec, ReturnCode};
use shmex::protocol::{
    AbortSignal, Agent, AgentConfig, Exchanger, ExchangerConfig, GetTaskError, Headers,
};
use shmex::segment::SegmentName;

type Error = Box<dyn std::error::Error>;

fn pattern(i: usize, round: i64) -> f32 {
    (i % 1000) as f32 * 0.5 + round as f32
}

fn check(what: &str, got: &[f32], round: i64, plus: f32) -> Result<(), Error> {
    for (i, v) in got.iter().enumerate() {
        let want = pattern(i, round) + plus;
        if *v != want {
            return Err(format!("{what}[{i}] = {v}, expected {want}").into());
        }
    }
    Ok(())
}

fn exchanger(name: &SegmentName, rounds: i64, elements: usize) -> Result<(), Error> {
    let exchanger = Exchanger::create(name, ExchangerConfig::default())?;
    let abort = AbortSignal::new();
    for round in 0..rounds {
        let weight: Vec<f32> = (0..elements).map(|i| pattern(i, round)).collect();
        let bias: Vec<f32> = (0..16).map(|i| pattern(i, round)).collect();
        let task = Dxo::new(DataKind::Weights)
            .with_tensor("weight", &[elements as u64 / 16, 16], &weight)?
            .with_tensor("bias", &[16], &bias)?;
        let headers = Headers::new(format!("task-{round}")).with_rounds(round, rounds);
        let reply = exchanger.execute("train", &task, &headers, &abort);
        let result = match (reply.rc, reply.result) {
            (ReturnCode::Ok, Some(result)) => result,
            (rc, _) => return Err(format!("round {round}: rc {rc}").into()),
        };
        for (tensor, len) in [("weight", elements), ("bias", 16)] {
            let view = result
                .tensor_by_name(tensor)
                .ok_or_else(|| format!("round {round}: no tensor {tensor}"))?;
            let values = view.as_slice::<f32>()?;
            if values.len() != len {
                return Err(
                    format!("round {round}: {tensor} has {} elements", values.len()).into(),
                );
            }
            check(tensor, values, round, 1.0)?;
        }
        if result.meta().get("NUM_STEPS_CURRENT_ROUND") != Some(&1.into()) {
            return Err(format!("round {round}: meta {:?}", result.meta()).into());
        }
    }
    exchanger.close()?;
    println!("rust exchanger: {rounds} rounds of {elements} + 16 elements checked");
    Ok(())
}

fn agent(name: &SegmentName) -> Result<(), Error> {
    let agent = Agent::attach(name, AgentConfig::default())?;
    let mut tasks = 0;
    loop {
        let task = match agent.get_task(Some(Duration::from_secs(120))) {
            Ok(Some(task)) => task,
            Ok(None) => return Err("no task for 120 s".into()),
            Err(GetTaskError::Closed) => break,
            Err(e) => return Err(e.into()),
        };
        let round = task
            .message
            .meta()
            .get("current_round")
            .and_then(|v| v.as_i64())
            .ok_or("the task has no current_round")?;
        let mut updated = Vec::new();
        for tensor in task.message.tensors() {
            let values = tensor.as_slice::<f32>()?;
            check(tensor.name(), values, round, 0.0)?;
            updated.push(values.iter().map(|v| v + 1.0).collect::<Vec<f32>>());
        }
        let result = task.message.tensors().zip(&updated).try_fold(
            Dxo::new(DataKind::Weights).with_meta("NUM_STEPS_CURRENT_ROUND", 1),
            |dxo, (tensor, values)| dxo.with_tensor(tensor.name(), tensor.shape(), values),
        )?;
        if !agent.submit_result(&result, ReturnCode::Ok)? {
            return Err(format!("task {}: result not accepted", task.id).into());
        }
        tasks += 1;
    }
    println!("rust agent: {tasks} tasks checked and answered");
    Ok(())
}

/// `RESULT` line of round-trip times.
fn report(label: &str, mut times: Vec<Duration>) {
    times.sort_unstable();
    let at = |q: f64| {
        let i = ((times.len() as f64 - 1.0) * q).round() as usize;
        times[i].as_secs_f64() * 1e6
    };
    println!(
        "RESULT {label} median_us={:.3} p99_us={:.3} rounds={}",
        at(0.5),
        at(0.99),
        times.len()
    );
}

fn bench_exchanger(
    name: &SegmentName,
    label: &str,
    warmup: usize,
    rounds: usize,
    bytes: usize,
    ring: u64,
) -> Result<(), Error> {
    let config = ExchangerConfig::default()
        .task_ring_capacity(ring)
        .result_ring_capacity(ring);
    let exchanger = Exchanger::create(name, config)?;
    let abort = AbortSignal::new();
    let elements = (bytes / 4).max(1);
    let model: Vec<f32> = (0..elements).map(|i| pattern(i, 0)).collect();
    let task = Dxo::new(DataKind::Weights).with_tensor("weight", &[elements as u64], &model)?;
    let mut times = Vec::with_capacity(rounds);
    for round in 0..warmup + rounds {
        let headers = Headers::new(format!("task-{round}"));
        let start = Instant::now();
        let reply = exchanger.execute("train", &task, &headers, &abort);
        let elapsed = start.elapsed();
        let result = match (reply.rc, reply.result) {
            (ReturnCode::Ok, Some(result)) => result,
            (rc, _) => return Err(format!("round {round}: rc {rc}").into()),
        };
        let values = result
            .tensor(0)
            .ok_or("no tensor in the result")?
            .as_slice::<f32>()?;
        if values.len() != elements || values[elements - 1] != model[elements - 1] + 1.0 {
            return Err(format!("round {round}: not the update").into());
        }
        if round >= warmup {
            times.push(elapsed);
        }
    }
    exchanger.close()?;
    report(label, times);
    Ok(())
}

fn bench_agent(name: &SegmentName) -> Result<(), Error> {
    let agent = Agent::attach(name, AgentConfig::default())?;
    loop {
        let task = match agent.get_task(Some(Duration::from_secs(120))) {
            Ok(Some(task)) => task,
            Ok(None) => return Err("no task for 120 s".into()),
            Err(GetTaskError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let spec = task.message.tensors().fold(
            LoanSpec::new(DataKind::Weights).meta("NUM_STEPS_CURRENT_ROUND", 1),
            |spec, t| spec.tensor(t.name(), t.dtype(), t.shape()),
        );
        let mut loan = agent.loan_result(&spec)?;
        for (index, tensor) in task.message.tensors().enumerate() {
            let values = tensor.as_slice::<f32>()?;
            for (out, v) in loan.tensor_mut::<f32>(index)?.iter_mut().zip(values) {
                *out = v + 1.0;
            }
        }
        if !loan.commit(ReturnCode::Ok)? {
            return Err(format!("task {}: result not accepted", task.id).into());
        }
    }
}

fn run() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or("missing argument");
    let name = SegmentName::for_agent(arg(1)?, arg(2)?)?;
    match arg(0)? {
        "exchanger" => exchanger(&name, arg(3)?.parse()?, arg(4)?.parse()?),
        "agent" => agent(&name),
        "bench-exchanger" => bench_exchanger(
            &name,
            arg(3)?,
            arg(4)?.parse()?,
            arg(5)?.parse()?,
            arg(6)?.parse()?,
            arg(7)?.parse()?,
        ),
        "bench-agent" => bench_agent(&name),
        other => Err(format!("unknown role {other}").into()),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ffi-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
