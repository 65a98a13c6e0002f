//! The demo's model and its exchange, behind `shmex demo` (feature `bench`): an
//! [`Exchanger`] executes a task carrying a WEIGHTS DXO of many named f32 tensors, an
//! [`Agent`] in another process answers with a WEIGHT_DIFF result of the same tensors (sent
//! from where it received them, no copy first), and both sides verify every byte.
//!
//! One round is one call on each side: [`exchange_round`] and [`answer_task`].

use std::time::{Duration, Instant};

use crate::harness::Res;
use shmex::frame::{DataKind, Dxo, ReturnCode};
use shmex::protocol::{AbortSignal, Agent, AgentConfig, Exchanger, GetTaskError, Headers};
use shmex::segment::SegmentName;
use shmex_test_support::pattern::{checksum_all, fill};

/// How long one step of a round may take before the demo gives up.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(300);

/// One tensor of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelTensor {
    /// Its name, `layerNNN.weight`.
    pub name: String,
    /// Its shape: `[rows, 256]` or `[elements]`.
    pub shape: Vec<u64>,
    /// Its elements.
    pub data: Vec<f32>,
}

/// A model: f32 tensors of varied sizes, filled with a reproducible pattern.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// The tensors, in order.
    pub tensors: Vec<ModelTensor>,
}

impl Model {
    /// `count` tensors adding up to `size` bytes (rounded down to whole f32s), alternately
    /// larger and smaller; the last takes what is left.
    ///
    /// # Panics
    /// If `count` is zero or `size` cannot give every tensor one f32.
    pub fn new(size: usize, count: usize) -> Model {
        assert!(count > 0 && size / 4 >= count, "every tensor needs an f32");
        let elements = size / 4;
        let cols = 256u64;
        let mut left = elements;
        let tensors = (0..count)
            .map(|i| {
                let share = if i + 1 == count {
                    left
                } else {
                    let base = elements / count;
                    let n = if i % 2 == 0 {
                        base + base / 4
                    } else {
                        base - base / 4
                    };
                    n.min(left - (count - i - 1))
                };
                left -= share;
                let shape = if (share as u64).is_multiple_of(cols) {
                    vec![share as u64 / cols, cols]
                } else {
                    vec![share as u64]
                };
                let mut data = vec![0f32; share];
                fill(
                    zerocopy::IntoBytes::as_mut_bytes(data.as_mut_slice()),
                    i as u64 + 1,
                );
                ModelTensor {
                    name: format!("layer{i:03}.weight"),
                    shape,
                    data,
                }
            })
            .collect();
        Model { tensors }
    }

    /// Total bytes of tensor data.
    pub fn bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.data.len() * 4).sum()
    }

    /// [`model_checksum`] of this model's tensors.
    pub fn checksum(&self) -> u64 {
        model_checksum(
            self.tensors
                .iter()
                .map(|t| zerocopy::IntoBytes::as_bytes(t.data.as_slice())),
        )
    }

    /// The model as a WEIGHTS DXO borrowing the tensors (the exchanger adds the round meta
    /// from the task's headers).
    pub fn dxo(&self) -> Res<Dxo<'_>> {
        let mut dxo = Dxo::new(DataKind::Weights);
        for tensor in &self.tensors {
            dxo = dxo.with_tensor(tensor.name.as_str(), &tensor.shape, &tensor.data)?;
        }
        Ok(dxo)
    }
}

/// Checksum of every tensor's bytes, in order ([`checksum_all`]).
pub fn model_checksum<'a>(tensors: impl Iterator<Item = &'a [u8]>) -> u64 {
    checksum_all(tensors)
}

/// The agent child's argument for [`AgentConfig::expected_message_len`] (`0`: none).
pub fn expected_arg(expected: Option<u64>) -> String {
    expected.unwrap_or(0).to_string()
}

/// Reads an [`expected_arg`] back.
pub fn parse_expected(arg: &str) -> Res<Option<u64>> {
    let bytes: u64 = arg.parse()?;
    Ok((bytes != 0).then_some(bytes))
}

/// What one round of the exchange showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    /// From the call to [`Exchanger::execute`] to its return with the result.
    pub elapsed: Duration,
    /// Tensors in the result.
    pub tensors: usize,
    /// Whether the result is the task's (return code, data kind, tensor count) and carries
    /// exactly the model's bytes.
    pub result_verified: bool,
}

/// The exchanger's side of one round: executes task `task-<round>` carrying `model` and
/// checks the agent's result against `expected` (the model's checksum).
pub fn exchange_round(
    exchanger: &Exchanger,
    model: &Model,
    expected: u64,
    round: u32,
    total_rounds: u32,
) -> Res<Round> {
    let dxo = model.dxo()?;
    let headers = Headers::new(format!("task-{round}"))
        .with_rounds(i64::from(round), i64::from(total_rounds));
    let start = Instant::now();
    let reply = exchanger.execute("train", &dxo, &headers, &AbortSignal::new());
    let elapsed = start.elapsed();
    if reply.rc != ReturnCode::Ok {
        return Err(format!("round {round}: the agent answered {}", reply.rc).into());
    }
    let result = reply
        .result
        .ok_or_else(|| format!("round {round}: an OK reply without a result"))?;
    let result_verified = reply.data_kind == Some(DataKind::WeightDiff)
        && result.tensor_count() == model.tensors.len()
        && model_checksum(result.tensors().map(|t| t.bytes())) == expected;
    Ok(Round {
        elapsed,
        tensors: result.tensor_count(),
        result_verified,
    })
}

/// The agent's side of one round: takes the next task, answers with a WEIGHT_DIFF result of
/// the same tensors (sent from where they were received), and returns the task's
/// [`model_checksum`], computed after answering so the exchanger times the exchange alone.
/// `None` once the exchanger has said bye.
pub fn answer_task(agent: &Agent) -> Res<Option<u64>> {
    let task = loop {
        match agent.get_task(Some(ROUND_TIMEOUT)) {
            Ok(Some(task)) => break task,
            Ok(None) => continue,
            Err(GetTaskError::Closed) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    };
    let result = task.message.tensors_dxo(DataKind::WeightDiff)?;
    if !agent.submit_result(&result, ReturnCode::Ok)? {
        return Err(format!("the exchanger refused the result of {}", task.id).into());
    }
    Ok(Some(model_checksum(
        task.message.tensors().map(|t| t.bytes()),
    )))
}

/// The demo's agent process: attaches to the exchanger on segment `name` (with
/// [`AgentConfig::expected_message_len`] `expected`), prints `ready`, then answers tasks
/// until the exchanger says bye, printing `CHECKSUM <hex>` of each task after answering it.
pub fn agent_child(name: &str, expected: Option<u64>) -> Res<()> {
    let config = AgentConfig::default().expected_message_len(expected);
    let agent = Agent::attach(&SegmentName::new(name)?, config)?;
    println!("ready");
    while let Some(sum) = answer_task(&agent)? {
        println!("CHECKSUM {sum:016x}");
    }
    agent.close();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmex::protocol::ExchangerConfig;

    #[test]
    fn a_model_has_the_size_and_count_asked_for_and_varied_tensors() {
        let model = Model::new(1 << 20, 10);
        assert_eq!(model.tensors.len(), 10);
        assert_eq!(model.bytes(), 1 << 20);
        assert_ne!(model.tensors[0].data.len(), model.tensors[1].data.len());
        assert_eq!(model.checksum(), Model::new(1 << 20, 10).checksum());
        assert_ne!(model.checksum(), Model::new(1 << 20, 9).checksum());
    }

    #[test]
    fn a_round_through_the_protocol_is_verified() {
        let name = SegmentName::new(format!("shmex.test.demo.{}", std::process::id())).unwrap();
        let config = ExchangerConfig::default()
            .task_ring_capacity(64 * 1024)
            .result_ring_capacity(64 * 1024);
        let exchanger = Exchanger::create(&name, config).unwrap();
        let agent = Agent::attach(&name, AgentConfig::default()).unwrap();
        let model = Model::new(256 * 1024, 7);
        let expected = model.checksum();
        let answer = std::thread::spawn(move || answer_task(&agent).unwrap());
        let round = exchange_round(&exchanger, &model, expected, 1, 1).unwrap();
        assert!(round.result_verified);
        assert_eq!(round.tensors, 7);
        assert_eq!(answer.join().unwrap(), Some(expected));
        exchanger.close().unwrap();
    }
}
