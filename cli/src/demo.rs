//! `shmex demo`: an exchanger (this process) and an agent (this executable re-run) run a few
//! rounds of the task protocol (`Exchanger::execute` → `Agent::get_task` /
//! `submit_result`) with a model of many named tensors, task and result, each round verified
//! and timed.

use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use shmex::protocol::{Exchanger, ExchangerConfig};
use shmex::segment::SegmentName;
use shmex_cli::harness::{self, parse_size, size_label, Launcher, Peer};
use shmex_cli::model::{exchange_round, expected_arg, Model};

use crate::bench::CHILD_COMMAND;
use crate::format;
use crate::host::{memory_available, shm_free};
use crate::Failure;

/// Smallest ring the demo shrinks to when `/dev/shm` is short of space.
const MIN_RING: usize = 1 << 20;

/// Arguments of `shmex demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Bytes of tensor data in the model (units B, KiB, MiB, GiB); made smaller, with a
    /// message, if this machine's free memory cannot hold it three times over.
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    size: usize,
    /// Number of tensors in the model.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    tensors: u32,
    /// Rounds of task and result.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Capacity of each ring: the shared memory used, whatever the model's size; made
    /// smaller, with a message, if `/dev/shm` cannot hold two.
    #[arg(long, value_parser = parse_size, default_value = "16MiB")]
    ring: usize,
    /// Do not tell the library the model's size up front (`expected_message_len`): each
    /// side then maps and faults in its receive buffer during the first round, as a user who
    /// does not set it sees.
    #[arg(long)]
    no_reserve: bool,
}

/// The ring capacity to use: `wanted`, halved until two rings fit in `free` bytes.
fn fit_ring(wanted: usize, free: u64) -> Result<usize, Failure> {
    let mut ring = wanted;
    while 2 * ring as u64 + (1 << 20) > free {
        if ring / 2 < MIN_RING {
            return Err(Failure::new(format!(
                "/dev/shm has {} free, too little for two rings of {} (the demo's minimum)",
                format::bytes(free),
                size_label(MIN_RING)
            )));
        }
        ring /= 2;
    }
    Ok(ring)
}

/// `shmex demo`.
pub fn run(args: &DemoArgs) -> Result<(), Failure> {
    let free = shm_free()?;
    let ring = fit_ring(args.ring, free)?;
    if ring != args.ring {
        eprintln!(
            "note: /dev/shm has {} free, not enough for two {} rings: using {} rings (the \
             model streams through them, so its size is unchanged)",
            format::bytes(free),
            size_label(args.ring),
            size_label(ring)
        );
    }
    let tensors = args.tensors as usize;
    let mut size = args.size;
    // The model, the agent's copy of the task and the exchanger's copy of the result.
    if let Some(available) = memory_available() {
        let fits = usize::try_from(available / 4).unwrap_or(usize::MAX) & !((1 << 20) - 1);
        if size > fits {
            eprintln!(
                "note: {} of memory available, too little for a {} model held three times: \
                 using a {} model",
                format::bytes(available),
                size_label(size),
                size_label(fits)
            );
            size = fits;
        }
    }
    if size / 4 < tensors {
        return Err(Failure::new(format!(
            "a {} model cannot give each of {tensors} tensors one f32: use a larger --size or \
             fewer --tensors",
            size_label(size)
        )));
    }

    let name = SegmentName::new(format!("shmex.demo.{}", std::process::id()))?;
    // Both sides know the model's size, so each faults in its receive buffer before the
    // first round rather than during it.
    let expected_len = (!args.no_reserve).then_some(size as u64);
    let config = ExchangerConfig::default()
        .task_ring_capacity(ring as u64)
        .result_ring_capacity(ring as u64)
        .expected_message_len(expected_len);
    let reserved = config.reserved_receive_buffer();
    let exchanger = Exchanger::create(&name, config)?;
    let (_, cpus) = harness::pick_cpus().map_err(|e| Failure::new(e.to_string()))?;
    let launcher = Launcher::current_exe(&[CHILD_COMMAND], None).map_err(child_error)?;
    let mut agent = Peer::spawn(
        &launcher,
        "demo-agent",
        &[name.as_str().to_string(), expected_arg(expected_len)],
    )
    .map_err(child_error)?;
    // The agent reserves its buffer while the model is built.
    eprintln!("building the model...");
    let model = Model::new(size, tensors);
    agent.expect("ready").map_err(child_error)?;
    let expected = model.checksum();
    println!(
        "shmex demo: model of {} tensors, {}; rings of {}; {} rounds; exchanger pid {}, agent \
         pid {}{}",
        model.tensors.len(),
        size_label(model.bytes()),
        size_label(ring),
        args.rounds,
        std::process::id(),
        agent.id(),
        if cpus.is_some() { "" } else { " (one CPU)" }
    );
    let progress = ProgressBar::new(u64::from(args.rounds));
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] round {pos}/{len} {msg}")
            .map_err(|e| Failure::new(e.to_string()))?
            .progress_chars("=> "),
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    let gigabytes = model.bytes() as f64 / 1e9;
    for round in 1..=args.rounds {
        progress.set_message("task out, result back...");
        let outcome = exchange_round(&exchanger, &model, expected, round, args.rounds)
            .map_err(|e| Failure::new(format!("round {round}: {e}")))?;
        let agent_line = agent
            .next_line(shmex_cli::model::ROUND_TIMEOUT)
            .map_err(child_error)?;
        let verified = outcome.result_verified && agent_line == format!("CHECKSUM {expected:016x}");
        let seconds = outcome.elapsed.as_secs_f64();
        progress.inc(1);
        let line = format!(
            "round {round}: task + result ({} tensors each way) in {:8.1} ms = {:6.2} GB/s each \
             way, data {}",
            outcome.tensors,
            seconds * 1e3,
            2.0 * gigabytes / seconds,
            if verified { "verified" } else { "CORRUPTED" }
        );
        // Printed on stdout whether or not the bar is shown (it is not when stderr is no
        // terminal).
        progress.suspend(|| println!("{line}"));
        if !verified {
            progress.abandon();
            return Err(Failure::new(format!(
                "round {round}: the model did not survive the round trip"
            )));
        }
    }
    progress.finish_and_clear();
    if args.rounds > 1 {
        if let Some(reserved) = reserved {
            println!(
                "(both sides reserved a receive buffer for the model before round 1 \
                 (expected_message_len): {} of memory each, held until they exit)",
                format::bytes(reserved)
            );
        } else {
            println!(
                "(--no-reserve: round 1 includes mapping and faulting in both sides' receive \
                 buffers; later rounds reuse them)"
            );
        }
    }
    exchanger.close()?;
    agent.finish().map_err(child_error)?;
    drop(exchanger);
    println!(
        "done: segment {} removed, agent exited cleanly",
        name.as_str()
    );
    Ok(())
}

fn child_error(e: harness::Error) -> Failure {
    Failure::new(format!("agent: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_shrink_to_fit_dev_shm_down_to_a_minimum() {
        assert_eq!(fit_ring(16 << 20, 1 << 40).unwrap(), 16 << 20);
        assert_eq!(fit_ring(16 << 20, 20 << 20).unwrap(), 8 << 20);
        assert!(fit_ring(16 << 20, 2 << 20).is_err());
    }
}
