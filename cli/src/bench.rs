//! `shmex bench`: throughput of shmex against memcpy, a Unix socket, TCP loopback and a pipe,
//! measured side by side in one run over [`shmex_cli::harness`].

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use shmex_cli::harness::{
    self as harness, median_gbps, parse_size, size_label, Launcher, LoanTransfer, MemcpyTransfer,
    Sampling, ShmexTransfer, Transfer,
};

use crate::format;
use crate::host::{memory_available, shm_free};
use crate::Failure;

/// The argument that selects a child mode of this executable (hidden from `--help`).
pub const CHILD_COMMAND: &str = "__bench-child";

/// A transport `shmex bench` can measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// Single-thread memcpy between two pre-faulted buffers in this process (the ceiling).
    Memcpy,
    /// shmex stream: copy-send into the ring, the receiver copies out into its own buffer.
    ShmexCopy,
    /// shmex loan: the sender writes the message in the ring in place, the receiver views it
    /// without copying.
    ShmexLoan,
    /// A Unix stream socket.
    Uds,
    /// TCP over the loopback interface.
    Tcp,
    /// An anonymous pipe (the child's stdin).
    Pipe,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Memcpy => "memcpy",
            Transport::ShmexCopy => "shmex-copy",
            Transport::ShmexLoan => "shmex-loan",
            Transport::Uds => "uds",
            Transport::Tcp => "tcp",
            Transport::Pipe => "pipe",
        }
    }

    fn all() -> Vec<Transport> {
        Transport::value_variants().to_vec()
    }
}

/// Sizes measured by default: 4 KiB to 1 GiB in steps of 4.
const DEFAULT_SIZES: &str = "4KiB,16KiB,64KiB,256KiB,1MiB,4MiB,16MiB,64MiB,256MiB,1GiB";

/// Arguments of `shmex bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Message sizes, comma-separated (units B, KiB, MiB, GiB).
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = DEFAULT_SIZES)]
    sizes: Vec<usize>,
    /// Transports to measure, comma-separated [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    transports: Vec<Transport>,
    /// Minimum rounds per size; in each round every transport is timed at least once.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    reps: u32,
    /// Minimum time spent on each transport per size, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    min_time_ms: u64,
    /// Ring capacity of shmex-copy (units as for sizes) [default: the library's default].
    #[arg(long, value_parser = parse_size)]
    ring: Option<usize>,
    /// Print the results as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Also draw throughput against size for every transport into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// One median figure.
struct Figure {
    transport: &'static str,
    size: usize,
    gbps: f64,
    samples: usize,
}

/// `shmex bench`.
pub fn run(args: &BenchArgs) -> Result<(), Failure> {
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let max = *sizes.last().ok_or_else(|| Failure::new("no sizes given"))?;
    let transports = if args.transports.is_empty() {
        Transport::all()
    } else {
        let mut chosen = args.transports.clone();
        chosen.dedup();
        chosen
    };
    let (cpu_count, cpus) = harness::pick_cpus().map_err(boxed)?;
    if let Some((parent, _)) = cpus {
        harness::pin_to_cpu(parent).map_err(boxed)?;
    }
    let launcher =
        Launcher::current_exe(&[CHILD_COMMAND], cpus.map(|(_, child)| child)).map_err(boxed)?;
    let ring = args
        .ring
        .unwrap_or(shmex::link::DEFAULT_RING_CAPACITY as usize);
    check_room(&transports, max, ring)?;
    eprintln!(
        "shmex bench: {} on {cpu_count} CPUs{}, sizes {} to {}, at least {} rounds and {} ms \
         per transport and size",
        transports
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", "),
        match cpus {
            Some((p, c)) => format!(" (sender on CPU {p}, receiver on CPU {c})"),
            None => String::new(),
        },
        size_label(sizes[0]),
        size_label(max),
        args.reps,
        args.min_time_ms
    );
    let mut transfers: Vec<Box<dyn Transfer>> = Vec::new();
    for &transport in &transports {
        let name = transport.name();
        let started: harness::Res<Box<dyn Transfer>> = match transport {
            Transport::Memcpy => Ok(Box::new(MemcpyTransfer::new(max))),
            Transport::ShmexCopy => {
                ShmexTransfer::start(&launcher, name.to_string(), ring, None, max)
                    .map(|t| Box::new(t) as Box<dyn Transfer>)
            }
            Transport::ShmexLoan => {
                LoanTransfer::start(&launcher, name, max).map(|t| Box::new(t) as Box<dyn Transfer>)
            }
            Transport::Uds => harness::uds_transfer(&launcher, name, max)
                .map(|t| Box::new(t) as Box<dyn Transfer>),
            Transport::Tcp => harness::tcp_transfer(&launcher, name, max)
                .map(|t| Box::new(t) as Box<dyn Transfer>),
            Transport::Pipe => harness::pipe_transfer(&launcher, name, max)
                .map(|t| Box::new(t) as Box<dyn Transfer>),
        };
        transfers.push(started.map_err(|e| Failure::new(format!("starting {name}: {e}")))?);
    }
    let mut source = vec![0u8; max];
    shmex_test_support::pattern::fill(&mut source, 0x5eed);

    let progress = ProgressBar::new(sizes.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} sizes  {msg}")
            .map_err(boxed)?
            .progress_chars("=> "),
    );
    let mut figures = Vec::new();
    let mut current = None;
    let outcome = harness::measure_throughput(
        &sizes,
        &mut transfers,
        &source,
        Sampling {
            min_total: Duration::from_millis(args.min_time_ms),
            min_samples: args.reps as usize,
        },
        |len, round| {
            if current.replace(len) != Some(len) && round == 1 {
                progress.set_position(sizes.iter().position(|&s| s == len).unwrap_or(0) as u64);
            }
            progress.set_message(format!("{}: round {round}", size_label(len)));
        },
        |len, transfer, samples| {
            let transport = transports
                .iter()
                .map(|t| t.name())
                .find(|n| *n == transfer.transport())
                .unwrap_or("?");
            figures.push(Figure {
                transport,
                size: len,
                gbps: median_gbps(len, samples),
                samples: samples.len(),
            });
        },
    );
    progress.finish_and_clear();
    let stopped: Vec<_> = transfers.into_iter().map(|t| t.stop()).collect();
    outcome.map_err(boxed)?;
    for result in stopped {
        result.map_err(boxed)?;
    }
    if args.json {
        println!("{}", to_json(&figures, &sizes, &transports, cpu_count));
    } else {
        print!("{}", table(&figures, &sizes, &transports));
    }
    if let Some(path) = &args.plot {
        crate::plot::throughput(path, &figures_by_transport(&figures, &transports))
            .map_err(|e| Failure::new(format!("drawing {}: {e}", path.display())))?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}

/// Fails with one clear line, before anything starts, if this host lacks the memory or the
/// `/dev/shm` space the run needs: the source, memcpy's destination, one receive buffer per
/// child, and the rings (which live in `/dev/shm`, and so in memory too).
fn check_room(transports: &[Transport], max: usize, ring: usize) -> Result<(), Failure> {
    let max = max as u64;
    let mut shm = 0u64;
    let mut memory = max;
    for transport in transports {
        match transport {
            Transport::Memcpy => memory += max,
            Transport::ShmexCopy => {
                shm += 2 * ring as u64;
                memory += max;
            }
            Transport::ShmexLoan => shm += harness::loan_ring(max as usize) as u64,
            Transport::Uds | Transport::Tcp | Transport::Pipe => memory += max,
        }
    }
    memory += shm;
    let free = shm_free()?;
    if shm > free {
        return Err(Failure::new(format!(
            "these sizes need {} of /dev/shm for rings, {} is free: use smaller --sizes, or \
             leave out shmex-loan (its ring holds the largest message whole)",
            format::bytes(shm),
            format::bytes(free)
        )));
    }
    if let Some(available) = memory_available() {
        if memory > available {
            return Err(Failure::new(format!(
                "these sizes need about {} of memory, {} is available: use smaller --sizes \
                 or fewer --transports",
                format::bytes(memory),
                format::bytes(available)
            )));
        }
    }
    Ok(())
}

fn boxed(e: impl std::fmt::Display) -> Failure {
    Failure::new(e.to_string())
}

fn gbps(figures: &[Figure], transport: &str, size: usize) -> Option<f64> {
    figures
        .iter()
        .find(|f| f.transport == transport && f.size == size)
        .map(|f| f.gbps)
}

/// The per-size table of medians, then ratios against memcpy and the Unix socket.
fn table(figures: &[Figure], sizes: &[usize], transports: &[Transport]) -> String {
    let mut out = String::new();
    let names: Vec<&str> = transports.iter().map(|t| t.name()).collect();
    let _ = write!(out, "\nthroughput, GB/s (median)\n{:>8}", "size");
    for name in &names {
        let _ = write!(out, " {name:>11}");
    }
    out.push('\n');
    for &size in sizes {
        let _ = write!(out, "{:>8}", size_label(size));
        for name in &names {
            match gbps(figures, name, size) {
                Some(v) => {
                    let _ = write!(out, " {v:>11.3}");
                }
                None => {
                    let _ = write!(out, " {:>11}", "-");
                }
            }
        }
        out.push('\n');
    }
    for baseline in ["memcpy", "uds"] {
        let others: Vec<&str> = names.iter().copied().filter(|n| *n != baseline).collect();
        if !names.contains(&baseline) || others.is_empty() {
            continue;
        }
        let _ = write!(out, "\nratio to {baseline} (same run)\n{:>8}", "size");
        for name in &others {
            let _ = write!(out, " {name:>11}");
        }
        out.push('\n');
        for &size in sizes {
            let _ = write!(out, "{:>8}", size_label(size));
            for name in &others {
                match (gbps(figures, name, size), gbps(figures, baseline, size)) {
                    (Some(v), Some(base)) if base > 0.0 => {
                        let _ = write!(out, " {:>11.3}", v / base);
                    }
                    _ => {
                        let _ = write!(out, " {:>11}", "-");
                    }
                }
            }
            out.push('\n');
        }
    }
    out
}

fn to_json(
    figures: &[Figure],
    sizes: &[usize],
    transports: &[Transport],
    cpu_count: usize,
) -> serde_json::Value {
    let results: Vec<_> = figures
        .iter()
        .map(|f| {
            let mut entry = json!({
                "transport": f.transport,
                "size_bytes": f.size,
                "size": size_label(f.size),
                "gbps": f.gbps,
                "samples": f.samples,
            });
            for baseline in ["memcpy", "uds"] {
                if let Some(base) = gbps(figures, baseline, f.size).filter(|b| *b > 0.0) {
                    entry[format!("ratio_to_{baseline}")] = json!(f.gbps / base);
                }
            }
            entry
        })
        .collect();
    json!({
        "unit": "GB/s (10^9 bytes per second), median of the samples",
        "cpus": cpu_count,
        "sizes": sizes,
        "transports": transports.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "results": results,
    })
}

/// (transport, [(size, GB/s)]) in the order asked for.
fn figures_by_transport(
    figures: &[Figure],
    transports: &[Transport],
) -> Vec<(&'static str, Vec<(usize, f64)>)> {
    transports
        .iter()
        .map(|t| {
            let points = figures
                .iter()
                .filter(|f| f.transport == t.name())
                .map(|f| (f.size, f.gbps))
                .collect();
            (t.name(), points)
        })
        .collect()
}

/// The hidden child mode: `shmex __bench-child MODE CPU ARGS..`.
pub fn child(args: &[String]) -> Result<(), Failure> {
    let (mode, cpu, rest) = match args {
        [mode, cpu, rest @ ..] => (mode.as_str(), cpu.as_str(), rest),
        _ => return Err(Failure::new("usage: __bench-child MODE CPU ARGS..")),
    };
    harness::child_prologue(cpu).map_err(boxed)?;
    match harness::run_child(mode, rest) {
        Some(outcome) => outcome.map_err(|e| Failure::new(format!("bench child {mode}: {e}"))),
        None => Err(Failure::new(format!("unknown bench child mode {mode:?}"))),
    }
}
