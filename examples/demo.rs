//! The README's first command: moves a large buffer between two processes through a shmex
//! link and prints the figures.
//!
//! ```text
//! cargo run --release --example demo [-- --size-mib 1024 --ring-mib 16 --rounds 3]
//! ```
//!
//! This process creates the link (the exchanger) and starts itself again as the agent. Each
//! round the exchanger streams the buffer to the agent through the task ring, the agent checks
//! it (checksum) and streams it back on the result ring. Throughput counts one direction.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmex::link::{AttachOptions, CreateOptions, Link};
use shmex::pattern::{checksum, fill};
use shmex::segment::SegmentName;
use shmex::stream;

type Error = Box<dyn std::error::Error>;

const CHILD_FLAG: &str = "--agent-child";

fn deadline() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(300))
}

/// Options from the command line.
struct Options {
    size: usize,
    ring: u64,
    rounds: u32,
}

fn parse(args: &[String]) -> Result<Options, Error> {
    let mut options = Options {
        size: 1 << 30,
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
            "--ring-mib" => options.ring = value()? << 20,
            "--rounds" => options.rounds = u32::try_from(value()?)?.max(1),
            "--help" | "-h" => {
                println!("usage: demo [--size-mib N (1024)] [--ring-mib N (16)] [--rounds N (3)]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other} (try --help)").into()),
        }
    }
    if options.size == 0 {
        return Err("--size-mib must be at least 1".into());
    }
    Ok(options)
}

/// Fails with a clear message if /dev/shm cannot hold the segment plus the two buffers'
/// worth of headroom we want to leave other users.
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

fn agent(name: &str) -> Result<(), Error> {
    let name = SegmentName::new(name)?;
    let mut link = Link::attach(&name, &AttachOptions::default())?;
    println!("READY");
    let mut buf = Vec::new();
    loop {
        match stream::recv_stream_into(link.receiver(), &mut buf, u64::MAX, None) {
            Ok(()) => {}
            // The exchanger closing the link is the end of the demo.
            Err(stream::StreamRecvError::PeerLost(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        println!("CHECKSUM {:016x}", checksum(&buf));
        let chunk = stream::default_chunk(link.sender().capacity());
        stream::send_stream(link.sender(), &buf, chunk, deadline())?;
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
    println!(
        "shmex demo: {} MiB buffer, {} MiB rings, {} rounds, two processes (pids {} and {})",
        options.size >> 20,
        options.ring >> 20,
        options.rounds,
        std::process::id(),
        child.id()
    );
    let mut data = vec![0u8; options.size];
    fill(&mut data, 2026);
    let expected = checksum(&data);
    let mut back = vec![0u8; options.size];
    let chunk = stream::default_chunk(link.sender().capacity());
    let gb = options.size as f64 / 1e9;
    for round in 1..=options.rounds {
        let start = Instant::now();
        stream::send_stream(link.sender(), &data, chunk, deadline())?;
        let received = stream::recv_stream_to_slice(link.receiver(), &mut back, deadline())?;
        let elapsed = start.elapsed();
        let agent_sum = next_line()?;
        let ok = agent_sum == format!("CHECKSUM {expected:016x}")
            && received == options.size
            && checksum(&back) == expected;
        println!(
            "round {round}: there and back in {:8.1} ms = {:6.2} GB/s each way, data {}",
            elapsed.as_secs_f64() * 1e3,
            2.0 * gb / elapsed.as_secs_f64(),
            if ok { "verified" } else { "CORRUPTED" }
        );
        if !ok {
            let _ = child.kill();
            return Err("data did not survive the round trip".into());
        }
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
