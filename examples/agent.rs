//! The trainer side of the federated-averaging-like loop of `examples/exchanger.rs`: attaches
//! to the link (waiting up to 60 s for the exchanger), and for each task computes a "local
//! update" (`-0.1 × w` per weight, into buffers reused from round to round) and submits it as
//! a WEIGHT_DIFF result, until the exchanger says `bye`.
//!
//! ```text
//! cargo run --release --example agent [-- --site example --agent trainer]
//! ```

use std::time::{Duration, Instant};

use shmex::frame::{DataKind, Dxo, ReturnCode};
use shmex::protocol::{Agent, AgentConfig, GetTaskError};
use shmex::segment::SegmentName;

type Error = Box<dyn std::error::Error>;

const LEARNING_RATE: f32 = 0.1;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: &str| -> String {
        match args.iter().position(|a| a == name) {
            Some(i) => args.get(i + 1).cloned().unwrap_or_default(),
            None => default.to_string(),
        }
    };
    let name = SegmentName::for_agent(&flag("--site", "example"), &flag("--agent", "trainer"))?;
    let agent = Agent::attach(&name, AgentConfig::default())?;
    println!("agent attached to {name}");
    let mut updates: Vec<Vec<f32>> = Vec::new();
    loop {
        let task = match agent.get_task(Some(Duration::from_secs(600))) {
            Ok(Some(task)) => task,
            Ok(None) => continue,
            Err(GetTaskError::Closed) => break,
            Err(e) => return Err(e.into()),
        };
        let start = Instant::now();
        let round = task.message.meta().get("current_round").cloned();
        updates.resize_with(task.message.tensor_count(), Vec::new);
        for (update, tensor) in updates.iter_mut().zip(task.message.tensors()) {
            let weights = tensor.as_slice::<f32>()?;
            update.resize(weights.len(), 0.0);
            for (u, w) in update.iter_mut().zip(weights) {
                *u = -LEARNING_RATE * w;
            }
        }
        let result = task
            .message
            .tensors()
            .zip(&updates)
            .try_fold(Dxo::new(DataKind::WeightDiff), |dxo, (tensor, update)| {
                dxo.with_tensor(tensor.name(), tensor.shape(), update)
            })?;
        let trained = start.elapsed();
        let accepted = agent.submit_result(&result, ReturnCode::Ok)?;
        println!(
            "task {} (round {}): update {:.1} ms, submitted, accepted = {accepted}",
            task.id,
            round.unwrap_or_default(),
            trained.as_secs_f64() * 1e3
        );
    }
    println!("exchanger said bye");
    Ok(())
}
