//! The FL-client side of a federated-averaging-like loop over `shmex::protocol`: run it and
//! `examples/agent.rs` in two terminals (either may start first).
//!
//! ```text
//! cargo run --release --example exchanger -- --size 1024 --tensors 100 --rounds 5
//! cargo run --release --example agent
//! ```
//!
//! Options: `--size MIB` (model size, default 256), `--tensors N` (default 100), `--rounds N`
//! (default 5), `--site NAME` and `--agent ID` (the link's name `shmex.<site>.<agent>`,
//! default `example`, `trainer`). Each round sends the global model (f32 tensors) as a WEIGHTS
//! task with `current_round`/`num_rounds`, waits for the agent's WEIGHT_DIFF result, adds it
//! to the model, and prints the round's times.

use std::time::{Duration, Instant};

use shmex::frame::{DataKind, Dxo, ReturnCode};
use shmex::protocol::{AbortSignal, Exchanger, ExchangerConfig, Headers};
use shmex::segment::SegmentName;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let size_mib: usize = value("--size", "256").parse()?;
    let tensors: usize = value("--tensors", "100").parse()?;
    let rounds: i64 = value("--rounds", "5").parse()?;
    let name = SegmentName::for_agent(&value("--site", "example"), &value("--agent", "trainer"))?;

    let elements = (size_mib << 20) / 4;
    let per_tensor = elements / tensors.max(1);
    if per_tensor == 0 {
        return Err("the model must hold at least one element per tensor".into());
    }
    let mut model = vec![0.5f32; per_tensor * tensors];
    let exchanger = Exchanger::create(&name, ExchangerConfig::default())?;
    println!(
        "exchanger on {name}: {tensors} tensors, {} MiB; waiting for the agent",
        (model.len() * 4) >> 20
    );
    let mut total = Duration::ZERO;
    for round in 0..rounds {
        let dxo = model.chunks(per_tensor).enumerate().try_fold(
            Dxo::new(DataKind::Weights),
            |dxo, (i, chunk)| {
                dxo.with_tensor(format!("layer.{i}.weight"), &[chunk.len() as u64], chunk)
            },
        )?;
        let headers = Headers::new(format!("round-{round}")).with_rounds(round, rounds);
        let start = Instant::now();
        let reply = exchanger.execute("train", &dxo, &headers, &AbortSignal::new());
        let exchanged = start.elapsed();
        drop(dxo);
        let result = match (reply.rc, reply.result) {
            (ReturnCode::Ok, Some(result)) => result,
            (rc, _) => return Err(format!("round {round}: {rc}").into()),
        };
        // Aggregate: one client, so the new global model is the old one plus its update.
        let start = Instant::now();
        for (i, chunk) in model.chunks_mut(per_tensor).enumerate() {
            let diff = result
                .tensor_by_name(&format!("layer.{i}.weight"))
                .ok_or("result misses a tensor")?
                .as_slice::<f32>()?;
            for (w, d) in chunk.iter_mut().zip(diff) {
                *w += d;
            }
        }
        let aggregated = start.elapsed();
        total += exchanged;
        println!(
            "round {round}: task -> result {:8.1} ms, aggregation {:7.1} ms, w[0] = {}",
            exchanged.as_secs_f64() * 1e3,
            aggregated.as_secs_f64() * 1e3,
            model[0]
        );
    }
    println!(
        "{rounds} rounds, mean task -> result {:.1} ms",
        total.as_secs_f64() * 1e3 / rounds.max(1) as f64
    );
    exchanger.close()?;
    Ok(())
}
