//! `shmex`: see shmex work on this machine, measure it, and look after the segments on this
//! host. Run `shmex --help` (and `shmex SUBCOMMAND --help`) for the details.

mod bench;
mod demo;
mod format;
mod host;
mod plot;
mod segments;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Move tasks, results and multi-GiB tensors between two processes through shared memory:
/// see it work, measure it, and look after the segments on this host.
#[derive(Parser, Debug)]
#[command(name = "shmex", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log what the library does to stderr: -v for attach/detach, lost peers, redeliveries and
    /// dropped messages; -vv for more. `RUST_LOG` (e.g. `RUST_LOG=shmex=debug`) overrides.
    /// Without either, only warnings and errors are shown.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Watch shmex work: two processes exchange a model, each round verified and timed.
    ///
    /// This process (the exchanger) creates a link and starts an agent process; each round
    /// it sends a task carrying a model of named f32 tensors and the agent answers with a
    /// result of the same size. Both sides check every byte.
    Demo(demo::DemoArgs),
    /// Every shmex segment on this host: owners, states, liveness, heartbeat age, ring fill.
    List(segments::ListArgs),
    /// The control block and ring headers of one segment, decoded and checked.
    ///
    /// Exit status: 0 if the segment is consistent, 3 if corruption was found (the report
    /// lists every problem), 1 on other errors (for example, no such segment).
    Inspect(segments::InspectArgs),
    /// Remove segments whose owner and both sides are dead, never one with a live side.
    ///
    /// Liveness is the operating system's: each side and the owner hold a lock on the segment
    /// that the kernel drops when their process dies.
    Clean(segments::CleanArgs),
    /// Measure shmex against memcpy, Unix socket, TCP and pipe, side by side.
    ///
    /// Prints a table of median throughputs and their ratios to memcpy and to the Unix
    /// socket, or JSON with `--json`; `--plot FILE.svg` draws throughput against size.
    ///
    /// Every two-process transport sends from this process to a child process (this same
    /// executable), each pinned to its own CPU when there are two; every transport is first
    /// verified with a checksum, then timed in turns with the others.
    Bench(bench::BenchArgs),
    /// Internal: a child process of `bench` or `demo`.
    #[command(name = "__bench-child", hide = true)]
    BenchChild {
        /// Mode, CPU and the mode's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// A failure of a subcommand: one line for stderr and the exit status.
#[derive(Debug)]
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    /// An ordinary error (exit status 1).
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 1,
        }
    }
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::new(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
    let outcome = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::List(args) => segments::list(&args),
        Command::Inspect(args) => segments::inspect(&args),
        Command::Clean(args) => segments::clean(&args),
        Command::Bench(args) => bench::run(&args),
        Command::BenchChild { args } => bench::child(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // One line, whatever the error text holds.
            eprintln!("shmex: error: {}", failure.message.replace('\n', " "));
            ExitCode::from(failure.code)
        }
    }
}
