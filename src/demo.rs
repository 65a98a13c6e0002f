//! The demo's model and its exchange, shared by `shmex demo` and `examples/demo.rs`
//! (feature `bench`): an exchanger sends a task carrying a WEIGHTS DXO of many named f32
//! tensors, the agent answers with a WEIGHT_DIFF result of the same tensors (sent from where
//! it received them, no copy first), and both sides verify every byte.
//!
//! One round is one call, [`exchange_round`] on the exchanger and [`answer_task`] on the
//! agent, so the demo can move to the exchanger/agent protocol by swapping these two.

use std::time::{Duration, Instant};

use crate::bench::Res;
use crate::frame::{DataKind, Dxo, Envelope, FrameError, FrameReceiver, FrameSender, MessageKind};
use crate::link::Link;
use crate::pattern::{checksum, fill};

/// How long one step of a round may take before the demo gives up.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(300);

fn deadline() -> Option<Instant> {
    Some(Instant::now() + ROUND_TIMEOUT)
}

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
                let mut bytes = vec![0u8; share * 4];
                fill(&mut bytes, i as u64 + 1);
                let data = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
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

    /// The model as a WEIGHTS DXO borrowing the tensors, with FLARE's round meta.
    pub fn dxo(&self, round: u32, total_rounds: u32) -> Res<Dxo<'_>> {
        let mut dxo = Dxo::new(DataKind::Weights)
            .with_meta("current_round", round)
            .with_meta("total_round", total_rounds);
        for tensor in &self.tensors {
            dxo = dxo.with_tensor(tensor.name.as_str(), &tensor.shape, &tensor.data)?;
        }
        Ok(dxo)
    }
}

/// Checksum of every tensor's bytes, in order.
pub fn model_checksum<'a>(tensors: impl Iterator<Item = &'a [u8]>) -> u64 {
    tensors.fold(0u64, |acc, bytes| acc.rotate_left(7) ^ checksum(bytes))
}

/// What one round of the exchange showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    /// From the start of sending the task to the whole result received.
    pub elapsed: Duration,
    /// Tensors in the result.
    pub tensors: usize,
    /// Whether the result is the task's (id, data kind, tensor count) and carries exactly the
    /// model's bytes.
    pub result_verified: bool,
}

/// The exchanger's side of one round: sends `model` as task `task-<round>` on `link` and
/// waits for the agent's result, which it checks against `expected` (the model's checksum).
pub fn exchange_round(
    link: &mut Link,
    sender: &mut FrameSender,
    receiver: &mut FrameReceiver,
    model: &Model,
    expected: u64,
    round: u32,
    total_rounds: u32,
) -> Res<Round> {
    let dxo = model.dxo(round, total_rounds)?;
    let task_id = format!("task-{round}");
    let start = Instant::now();
    let (tx, rx) = link.split();
    sender.send(
        tx,
        &Envelope::new(MessageKind::Task).with_task(&task_id, "train"),
        Some(&dxo),
        deadline(),
    )?;
    let result = receiver.recv(rx, deadline())?;
    let elapsed = start.elapsed();
    let result_verified = result.task_id() == task_id
        && result.data_kind() == Some(DataKind::WeightDiff)
        && result.tensor_count() == model.tensors.len()
        && model_checksum(result.tensors().map(|t| t.bytes())) == expected;
    Ok(Round {
        elapsed,
        tensors: result.tensor_count(),
        result_verified,
    })
}

/// The agent's side of one round: receives a task on `link`, answers with a WEIGHT_DIFF
/// result of the same tensors (sent from where they were received), and returns the task's
/// [`model_checksum`], computed after replying so the exchanger times the transfer alone.
/// `None` once the exchanger has closed the link.
pub fn answer_task(
    link: &mut Link,
    sender: &mut FrameSender,
    receiver: &mut FrameReceiver,
) -> Res<Option<u64>> {
    let (tx, rx) = link.split();
    let task = match receiver.recv(rx, None) {
        Ok(task) => task,
        Err(FrameError::PeerLost(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let result = task.tensors_dxo(DataKind::WeightDiff)?.with_meta(
        "current_round",
        task.meta()
            .get("current_round")
            .cloned()
            .unwrap_or_default(),
    );
    let reply = Envelope::new(MessageKind::Result).with_task(task.task_id(), task.task_name());
    sender.send(tx, &reply, Some(&result), deadline())?;
    Ok(Some(model_checksum(task.tensors().map(|t| t.bytes()))))
}

/// The demo's agent process: attaches to segment `name`, prints `ready`, then answers tasks
/// until the exchanger closes the link, printing `CHECKSUM <hex>` of each task after replying.
pub fn agent_child(name: &str) -> Res<()> {
    let mut link = crate::bench::child_attach(name, crate::signal::WaitStrategy::default())?;
    let (mut sender, mut receiver) = (FrameSender::new(), FrameReceiver::default());
    while let Some(sum) = answer_task(&mut link, &mut sender, &mut receiver)? {
        println!("CHECKSUM {sum:016x}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_round_through_an_in_process_link_is_verified() {
        let options = crate::link::CreateOptions::default().ring_capacity(64 * 1024);
        let (mut exchanger, mut agent) = Link::in_process(&options).unwrap();
        let model = Model::new(256 * 1024, 7);
        let expected = model.checksum();
        let answer = std::thread::spawn(move || {
            answer_task(
                &mut agent,
                &mut FrameSender::new(),
                &mut FrameReceiver::default(),
            )
            .unwrap()
        });
        let round = exchange_round(
            &mut exchanger,
            &mut FrameSender::new(),
            &mut FrameReceiver::default(),
            &model,
            expected,
            1,
            1,
        )
        .unwrap();
        assert!(round.result_verified);
        assert_eq!(round.tensors, 7);
        assert_eq!(answer.join().unwrap(), Some(expected));
    }
}
