//! The README's first command: an exchanger and an agent in two processes exchange a model of
//! many named tensors through a shmex link, and the figures are printed.
//!
//! ```text
//! cargo run --release --example demo [-- --size-mib 1024 --tensors 100 --ring-mib 16 --rounds 3]
//! ```
//!
//! This process creates the link (the exchanger) and starts itself again as the agent. Each
//! round the exchanger sends a task carrying a WEIGHTS DXO (the model); the agent checks every
//! tensor and answers with a WEIGHT_DIFF result of the same size, built from the tensors it
//! received without copying them first; the exchanger checks the result.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmex::frame::{DataKind, Dxo, Envelope, FrameError, FrameReceiver, FrameSender, MessageKind};
use shmex::link::{AttachOptions, CreateOptions, Link};
use shmex::pattern::{checksum, fill};
use shmex::segment::SegmentName;

type Error = Box<dyn std::error::Error>;

const CHILD_FLAG: &str = "--agent-child";

fn deadline() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(300))
}

/// Options from the command line.
struct Options {
    size: usize,
    tensors: usize,
    ring: u64,
    rounds: u32,
}

fn parse(args: &[String]) -> Result<Options, Error> {
    let mut options = Options {
        size: 1 << 30,
        tensors: 100,
        ring: 16 << 20,
        rounds: 3,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || -> Result<u64, Error> {
            let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            Ok(v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"))?)
        };
        match flag.as_str() {
            "--size-mib" => options.size = usize::try_from(value()? << 20)?,
            "--tensors" => options.tensors = usize::try_from(value()?)?,
            "--ring-mib" => options.ring = value()? << 20,
            "--rounds" => options.rounds = u32::try_from(value()?)?.max(1),
            "--help" | "-h" => {
                println!(
                    "usage: demo [--size-mib N (1024)] [--tensors N (100)] [--ring-mib N (16)] [--rounds N (3)]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other} (try --help)").into()),
        }
    }
    if options.size < 4 * options.tensors.max(1) || options.tensors == 0 {
        return Err(
            "--size-mib must give every tensor at least one f32 (and --tensors >= 1)".into(),
        );
    }
    Ok(options)
}

/// Fails with a clear message if /dev/shm cannot hold the link's segment.
fn check_shm_space(ring: u64) -> Result<(), Error> {
    let stat = rustix::fs::statvfs("/dev/shm").map_err(|e| format!("statvfs /dev/shm: {e}"))?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let need = 2 * ring + (1 << 20);
    if free < need {
        return Err(format!(
            "/dev/shm has {} MiB free, the link needs {} MiB: use a smaller --ring-mib",
            free >> 20,
            need >> 20
        )
        .into());
    }
    Ok(())
}

/// A model: `count` f32 tensors of varied sizes adding up to `size` bytes, filled with a
/// reproducible pattern. Returns the tensors' names, shapes and data.
fn make_model(size: usize, count: usize) -> Vec<(String, Vec<u64>, Vec<f32>)> {
    let elements = size / 4;
    let cols = 256u64;
    let mut left = elements;
    (0..count)
        .map(|i| {
            // Alternate larger and smaller layers; the last takes what is left.
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
            (format!("layer{i:03}.weight"), shape, data)
        })
        .collect()
}

/// Checksum of every tensor's bytes, in order.
fn model_checksum<'a>(tensors: impl Iterator<Item = &'a [u8]>) -> u64 {
    tensors.fold(0u64, |acc, bytes| acc.rotate_left(7) ^ checksum(bytes))
}

fn agent(name: &str) -> Result<(), Error> {
    let name = SegmentName::new(name)?;
    let mut link = Link::attach(&name, &AttachOptions::default())?;
    println!("READY");
    let mut receiver = FrameReceiver::default();
    let mut sender = FrameSender::new();
    loop {
        let (tx, rx) = link.split();
        let task = match receiver.recv(rx, None) {
            Ok(task) => task,
            // The exchanger closing the link is the end of the demo.
            Err(FrameError::PeerLost(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // The result reuses the received tensors where they lie: no copy before sending.
        let result = task.tensors_dxo(DataKind::WeightDiff)?.with_meta(
            "current_round",
            task.meta()
                .get("current_round")
                .cloned()
                .unwrap_or_default(),
        );
        let reply = Envelope::new(MessageKind::Result).with_task(task.task_id(), task.task_name());
        sender.send(tx, &reply, Some(&result), deadline())?;
        // Verified after replying, so the exchanger's timing is the transfer alone.
        let sum = model_checksum(task.tensors().map(|t| t.bytes()));
        println!("CHECKSUM {sum:016x}");
    }
}

fn exchanger(options: &Options) -> Result<(), Error> {
    check_shm_space(options.ring)?;
    let name = SegmentName::new(format!("shmex.demo.{}", std::process::id()))?;
    let mut link = Link::create(&name, &CreateOptions::default().ring_capacity(options.ring))?;
    let mut child = Command::new(std::env::current_exe()?)
        .args([CHILD_FLAG, name.as_str()])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no child stdout")?).lines();
    let mut next_line =
        || -> Result<String, Error> { Ok(lines.next().ok_or("agent exited early")??) };
    if next_line()? != "READY" {
        return Err("agent did not start".into());
    }
    let model = make_model(options.size, options.tensors);
    let expected = model_checksum(model.iter().map(|(_, _, d)| f32_bytes(d)));
    println!(
        "shmex demo: model of {} tensors, {} MiB; {} MiB rings; {} rounds; exchanger pid {}, agent pid {}",
        model.len(),
        options.size >> 20,
        options.ring >> 20,
        options.rounds,
        std::process::id(),
        child.id()
    );
    let mut sender = FrameSender::new();
    let mut receiver = FrameReceiver::default();
    let gb = options.size as f64 / 1e9;
    for round in 1..=options.rounds {
        let mut dxo = Dxo::new(DataKind::Weights)
            .with_meta("current_round", round)
            .with_meta("total_round", options.rounds);
        for (name, shape, data) in &model {
            dxo = dxo.with_tensor(name.as_str(), shape, data)?;
        }
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
        let agent_sum = next_line()?;
        let ok = agent_sum == format!("CHECKSUM {expected:016x}")
            && result.task_id() == task_id
            && result.data_kind() == Some(DataKind::WeightDiff)
            && result.tensor_count() == model.len()
            && model_checksum(result.tensors().map(|t| t.bytes())) == expected;
        println!(
            "round {round}: task + result ({} tensors each way) in {:7.1} ms = {:5.2} GB/s each way, data {}",
            result.tensor_count(),
            elapsed.as_secs_f64() * 1e3,
            2.0 * gb / elapsed.as_secs_f64(),
            if ok { "verified" } else { "CORRUPTED" }
        );
        if !ok {
            let _ = child.kill();
            return Err("the model did not survive the round trip".into());
        }
    }
    if options.rounds > 1 {
        println!(
            "(round 1 includes the first touch of both sides' receive buffers: fresh memory \
             costs about 1 s per GiB to fault in on a VM; later rounds reuse it)"
        );
    }
    drop(link);
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("agent exited with {status}").into());
    }
    println!("done: segment {name} removed, agent exited cleanly");
    Ok(())
}

/// The bytes of an f32 slice.
fn f32_bytes(data: &[f32]) -> &[u8] {
    zerocopy::IntoBytes::as_bytes(data)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some(CHILD_FLAG) {
        match args.get(1) {
            Some(name) => agent(name),
            None => Err("missing segment name".into()),
        }
    } else {
        parse(&args).and_then(|options| exchanger(&options))
    };
    if let Err(e) = result {
        eprintln!("demo: {e}");
        std::process::exit(1);
    }
}
