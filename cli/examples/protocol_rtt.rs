//! The Rust figure beside `python -m shmex.bench`: a model task round trip through the
//! protocol, done exactly as the Python benchmark does it, from Rust.
//!
//! ```text
//! cargo run --release --example protocol_rtt -- [--sizes 8B,16MiB,256MiB,1GiB] [--repeat 5]
//!                                                [--ring 64MiB]
//! ```
//!
//! For each size: a model of 100 f32 tensors (one for sizes under 400 KiB, as the Python
//! benchmark's `model()`), each tensor filled with its index, is sent with
//! [`Exchanger::execute`] (one copy into the ring) to an [`Agent`] in a second process (this
//! executable re-run with `--agent <site> <id>`), which fetches it ([`Agent::get_task`],
//! viewed in place) and answers with a result of the task's own tensors
//! ([`Agent::submit_result`], one copy). Default configurations (as the Python binding's),
//! both rings `--ring` bytes. One warm-up, then `--repeat` timed round trips (at least 1,000
//! below 1 MiB). Prints `RESULT shmex-rust <size> rtt_median_us <v> us` lines.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmex::frame::{DType, DataKind, Dxo, ReturnCode};
use shmex::protocol::{Agent, AgentConfig, Exchanger, ExchangerConfig, Headers};
use shmex::segment::SegmentName;
use shmex_cli::harness::next_task;

use shmex_cli::harness::Res;

const PEER_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    if let Err(e) = run() {
        eprintln!("protocol_rtt: {e}");
        std::process::exit(1);
    }
}

fn parse_size(text: &str) -> Res<usize> {
    for (unit, factor) in [
        ("GiB", 1usize << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ] {
        if let Some(number) = text.strip_suffix(unit) {
            return Ok(number.parse::<usize>()? * factor);
        }
    }
    Ok(text.parse()?)
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--agent") {
        let (site, id) = (args.get(1).ok_or("site")?, args.get(2).ok_or("id")?);
        return agent(site, id);
    }
    let mut sizes = "8B,16MiB,256MiB".to_string();
    let mut repeat = 5usize;
    let mut ring = 64usize << 20;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = it.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--sizes" => sizes = value.clone(),
            "--repeat" => repeat = value.parse()?,
            "--ring" => ring = parse_size(value)?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    for label in sizes.split(',') {
        let size = parse_size(label)?;
        let times = round_trips(size, repeat, ring as u64)?;
        let median = median(times);
        println!(
            "RESULT shmex-rust {label} rtt_median_us {:.1} us",
            median.as_secs_f64() * 1e6
        );
    }
    Ok(())
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// The Python benchmark's model: `(name, f32 values)` of 100 tensors, or 1 when tiny.
fn model(size: usize) -> Vec<(String, Vec<f32>)> {
    let count = if size >= 100 * 4 * 1024 { 100 } else { 1 };
    let per = (size / count / 4).max(1);
    (0..count)
        .map(|i| (format!("layer{i:03}"), vec![i as f32; per]))
        .collect()
}

fn round_trips(size: usize, repeat: usize, ring: u64) -> Res<Vec<Duration>> {
    let site = format!("rustbench{}", std::process::id());
    let name = SegmentName::for_agent(&site, "peer")?;
    let config = ExchangerConfig::default()
        .task_ring_capacity(ring)
        .result_ring_capacity(ring);
    let exchanger = Exchanger::create(&name, config)?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--agent", &site, "peer"])
        .stdout(Stdio::piped())
        .spawn()?;
    let outcome = (|| -> Res<Vec<Duration>> {
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let mut ready = String::new();
        BufReader::new(stdout).read_line(&mut ready)?;
        let tensors = model(size);
        let mut dxo = Dxo::new(DataKind::Weights);
        for (name, values) in &tensors {
            let bytes: &[u8] = zerocopy::IntoBytes::as_bytes(values.as_slice());
            dxo = dxo.with_tensor_bytes(name.clone(), DType::F32, &[values.len() as u64], bytes)?;
        }
        let repeat = if size < 1 << 20 {
            repeat.max(1000)
        } else {
            repeat
        };
        let mut times = Vec::with_capacity(repeat);
        for i in 0..=repeat {
            let headers = Headers {
                task_id: format!("t{i}"),
                current_round: None,
                num_rounds: None,
            };
            let start = Instant::now();
            let reply = exchanger.execute("echo", &dxo, &headers, None);
            let elapsed = start.elapsed();
            if reply.rc != ReturnCode::Ok {
                return Err(format!("round trip failed: {}", reply.rc.as_str()).into());
            }
            drop(reply);
            if i > 0 {
                times.push(elapsed);
            }
        }
        Ok(times)
    })();
    exchanger.close()?;
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("agent exited with {status}").into());
    }
    outcome
}

/// Answers every task with its own tensors until the exchanger says `bye`.
fn agent(site: &str, id: &str) -> Res<()> {
    let config = AgentConfig::default().attach_timeout(PEER_TIMEOUT);
    let agent = Agent::attach(&SegmentName::for_agent(site, id)?, config)?;
    println!("ready");
    loop {
        let Some(task) = next_task(&agent, "agent")? else {
            return Ok(());
        };
        let result = task.message.tensors_dxo(DataKind::Weights)?;
        if !agent.submit_result(&result, ReturnCode::Ok)? {
            return Err(format!("agent: result of {} refused", task.id).into());
        }
    }
}
