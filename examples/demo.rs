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

use shmex::demo::{exchange_round, Model};
use shmex::frame::{FrameReceiver, FrameSender};
use shmex::link::{CreateOptions, Link};
use shmex::segment::SegmentName;

type Error = Box<dyn std::error::Error + Send + Sync>;

const CHILD_FLAG: &str = "--agent-child";

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
    if next_line()? != "ready" {
        return Err("agent did not start".into());
    }
    let model = Model::new(options.size, options.tensors);
    let expected = model.checksum();
    println!(
        "shmex demo: model of {} tensors, {} MiB; {} MiB rings; {} rounds; exchanger pid {}, agent pid {}",
        model.tensors.len(),
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
        let result = exchange_round(
            &mut link,
            &mut sender,
            &mut receiver,
            &model,
            expected,
            round,
            options.rounds,
        )?;
        let elapsed = result.elapsed;
        let agent_sum = next_line()?;
        let ok = agent_sum == format!("CHECKSUM {expected:016x}") && result.result_verified;
        println!(
            "round {round}: task + result ({} tensors each way) in {:7.1} ms = {:5.2} GB/s each way, data {}",
            result.tensors,
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some(CHILD_FLAG) {
        match args.get(1) {
            Some(name) => shmex::demo::agent_child(name),
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
