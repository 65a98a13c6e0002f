//! Side-by-side comparison of shmex with the transports it has to beat, measured in the same
//! run on the same machine (DESIGN.md §6).
//!
//! ```text
//! cargo run --release --example compare            # full run (sizes up to 1 GiB)
//! cargo run --release --example compare -- --quick # smoke run for CI (max 64 MiB, 1,000 RTTs,
//!                                                  # a 64 MiB model of 20 tensors, hand-offs
//!                                                  # of 1 MiB and 16 MiB)
//! cargo run --release --example compare -- --tasks # only the 4 KiB task round trips (raw frame
//!                                                  # echo, protocol, futex-raw) and their ratios
//! ```
//!
//! Every two-process figure uses a second process that is this same executable re-run with a
//! hidden `--child <mode> <cpu> <args..>` argument (never `fork()`). The parent talks to it
//! over its stdout (one line per event), waits for it with a timeout, and kills it on any
//! error; every blocking wait in the child has a deadline, and the child asks the kernel to
//! kill it if the parent dies (`PR_SET_PDEATHSIG`), so no run leaves a process behind.
//!
//! A loaded machine makes a run slower, never failed: the deadlines are minutes
//! (`PEER_TIMEOUT`), and the two sides that poll shared memory for each other (`spin-raw`,
//! `futex-raw`) wait with a `PeerWait`, which stops spinning and yields, then sleeps, when the
//! peer is late. The run reports the machine's CPUs and its load average at the start and the
//! end (`RESULT host - load1_start ...`, and the first line of the table).
//!
//! Measured:
//! - `memcpy`: one thread, `copy_from_slice` between two pre-faulted buffers;
//! - `uds`: a Unix stream socket, parent writes SIZE bytes, child reads them and answers 1 byte;
//! - `shmex`: a link (ring of at most 64 MiB), `send_stream` → `recv_stream_to_slice`, then a
//!   small acknowledgement record on the result ring;
//! - 8-byte round trips: shmex busy-polling, shmex sleeping on the futex, a raw futex
//!   ping-pong, a Unix socket, and two processes busy-polling a shared atomic (the floor);
//! - how long a blocked shmex receive takes to report a SIGKILLed peer;
//! - DXO frames (`shmex::frame`), at the largest size only:
//!   - `shmex-model`: a model of ~100 f32 tensors (the largest size's bytes, 1 GiB) copy-sent
//!     with `FrameSender::send` through the default ring, received by `FrameReceiver::recv`
//!     into the caller's pre-faulted buffer with `FrameReceiver::recv_into` (each fragment
//!     copied there as it arrives; the tensors are viewed there), then acknowledged;
//!     `shmex-model-view` receives with `FrameReceiver::recv` instead (fragments reassembled
//!     into the receiver's own reused buffer). Both take turns with `memcpy` and `uds` on the same bytes, and
//!     their first (cold: the reassembly buffer is still unmapped) transfer is reported apart;
//!   - `shmex-loan`: hand-off latency of loaned messages (`FrameSender::loan_prepared`, one f32 tensor
//!     of 1 MiB or 256 MiB, only its first element written) viewed in place by the peer, which
//!     answers with a loaned message of the same size: hand-off = round trip / 2;
//!   - `shmex-task-{spin,futex}`: round trip of a 4 KiB task DXO answered by a 4 KiB result
//!     (copy-send, in-place receive; the agent sends its result straight from the task's view).
//! - the first round against the second (`RATIO demo-round1/round2`): `shmex demo`'s exchange
//!   (the largest size's model of `model_tensors` tensors through the default 16 MiB rings,
//!   task and result verified) run by a fresh exchanger process (not pinned) with a fresh
//!   agent process, once with both sides told the model size up front
//!   (`expected_message_len`, as the demo does: `demo`) and once not (`demo-no-reserve`).
//!
//! Output: a human table, then `RESULT <transport> <size> <metric> <value> <unit>` lines and
//! `RATIO` lines for scripts (`scripts/benchmarks.py` turns several runs into
//! `docs/benchmarks.md`).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmex::frame::{
    AlignedBuf, DataKind, Dxo, Envelope, FrameReceiver, FrameSender, LoanSpec, Message,
    MessageKind, PreparedLoan,
};
use shmex::link::{CreateOptions, Link};
use shmex::protocol::{
    AbortSignal, Agent, AgentConfig, Exchanger, ExchangerConfig, Headers, IN_PLACE_KEEP_FREE,
};
use shmex::ring::RecvError;
use shmex::segment::SegmentName;
use shmex::signal::{PeerLost, WaitStrategy};
use shmex::{stream, sys};
use shmex_test_support::load::LoadAverage;
use shmex_test_support::pattern;
use zerocopy::{FromBytes, IntoBytes};

use shmex_cli::harness::{
    check_checksum, child_attach, deadline, median_gbps, next_task, percentile, pick_cpus,
    pin_to_cpu, say_bye, size_label, socket_buffers, uds_child_connect, uds_connect, Launcher,
    MemcpyTransfer, Peer, PeerWait, Res, Sampling, ShmexTransfer, Transfer, ACK, PEER_TIMEOUT,
    SOCKET_BUFFER, SOCKET_IO_CHUNK,
};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
const PAGE: usize = 4096;

/// The "active" wait strategy: spin for far longer than any gap in a benchmark.
const ACTIVE_SPIN: Duration = Duration::from_secs(10);
/// Ring capacity of the headline `shmex` throughput figure: the library's default (the target
/// is "through a ring of at most 64 MiB"); other capacities are measured as context.
const SHMEX_RING: usize = shmex::link::DEFAULT_RING_CAPACITY as usize;
/// The round-trip payload that tells an echo child to stop (real pings are 8 bytes).
const QUIT: &[u8] = b"q";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let code = match child_main(&args[2..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("compare child {:?}: error: {e}", &args[2..]);
                1
            }
        };
        std::process::exit(code);
    }
    let quick = args.iter().skip(1).any(|a| a == "--quick");
    let tasks_only = args.iter().skip(1).any(|a| a == "--tasks");
    if let Some(other) = args
        .iter()
        .skip(1)
        .find(|a| *a != "--quick" && *a != "--tasks" && *a != "--bench")
    {
        eprintln!("compare: unknown argument {other:?} (only --quick and --tasks are accepted)");
        std::process::exit(2);
    }
    if let Err(e) = run(quick, tasks_only) {
        eprintln!("compare: error: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------------------

/// What one run measures.
struct Config {
    quick: bool,
    sizes: Vec<usize>,
    /// Minimum total time spent on each throughput figure.
    min_total: Duration,
    /// Minimum number of samples of each throughput figure.
    min_samples: usize,
    round_trips: usize,
    warmup_round_trips: usize,
    /// Minimum warm-up time of each round-trip transport.
    warmup: Duration,
    detection_repeats: usize,
    /// Tensors of the `shmex-model` DXO (whose bytes are the largest size's).
    model_tensors: usize,
    /// Tensor sizes of the loan hand-off test (the first is the reference of the ratio).
    handoff_sizes: Vec<usize>,
    /// CPUs this process may run on.
    cpu_count: usize,
    /// (parent CPU, child CPU) when the machine has at least two.
    cpus: Option<(usize, usize)>,
    /// How child processes are started: this executable with `--child`, on the child CPU.
    launcher: Launcher,
}

/// One measured number.
struct Figure {
    transport: String,
    size: String,
    metric: &'static str,
    value: f64,
    unit: &'static str,
}

#[derive(Default)]
struct Report {
    figures: Vec<Figure>,
    notes: Vec<String>,
}

impl Report {
    fn add(
        &mut self,
        transport: &str,
        size: &str,
        metric: &'static str,
        value: f64,
        unit: &'static str,
    ) {
        eprintln!("  {transport:<18} {size:>6} {metric:<16} {value:>10.3} {unit}");
        self.figures.push(Figure {
            transport: transport.to_string(),
            size: size.to_string(),
            metric,
            value,
            unit,
        });
    }

    fn get(&self, transport: &str, size: &str, metric: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.transport == transport && f.size == size && f.metric == metric)
            .map(|f| f.value)
    }
}

fn run(quick: bool, tasks_only: bool) -> Res<()> {
    let started = Instant::now();
    let load_at_start = LoadAverage::now();
    let (cpu_count, cpus) = pick_cpus()?;
    let config = Config {
        quick,
        sizes: if quick {
            vec![4 * KIB, MIB, 64 * MIB]
        } else {
            vec![4 * KIB, MIB, 64 * MIB, GIB]
        },
        min_total: if quick {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(200)
        },
        min_samples: if quick { 3 } else { 5 },
        round_trips: if quick { 1_000 } else { 20_000 },
        warmup_round_trips: if quick { 200 } else { 2_000 },
        warmup: if quick {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(500)
        },
        detection_repeats: if quick { 3 } else { 10 },
        model_tensors: if quick { 20 } else { 100 },
        handoff_sizes: if quick {
            vec![MIB, 16 * MIB]
        } else {
            vec![MIB, 256 * MIB]
        },
        cpu_count,
        cpus,
        launcher: Launcher::current_exe(&["--child"], cpus.map(|(_, child)| child))?,
    };
    if let Some((parent, _)) = config.cpus {
        pin_to_cpu(parent)?;
    }
    let mut report = Report::default();
    report.notes.push(host_description(&config));
    eprintln!("{}", report.notes[0]);
    report.add("host", "-", "cpus", config.cpu_count as f64, "count");
    report_load(
        &mut report,
        ["load1_start", "load5_start", "load15_start"],
        load_at_start,
    );

    if tasks_only {
        bench_task_round_trips(&config, &mut report)?;
        report_load(
            &mut report,
            ["load1_end", "load5_end", "load15_end"],
            LoadAverage::now(),
        );
        report.add(
            "host",
            "-",
            "run_time_s",
            started.elapsed().as_secs_f64(),
            "s",
        );
        print_report(&config, &report);
        return Ok(());
    }

    let max = *config.sizes.iter().max().ok_or("no sizes")?;
    eprintln!("preparing a {} source buffer...", size_label(max));
    // f32 words, so the model's tensors can borrow the same bytes the other transports move.
    let mut source = vec![0f32; max.div_ceil(4)];
    pattern::fill(source.as_mut_bytes(), 0x5eed);
    let transfers = start_transfers(&config, max, &mut report)?;
    measure_throughput(&config, transfers, &source.as_bytes()[..max], &mut report)?;
    drop(source);

    eprintln!(
        "loan hand-off ({} per size after {} warm-up, both sides spinning):",
        config.round_trips, config.warmup_round_trips
    );
    bench_handoff(&config, &mut report)?;

    eprintln!(
        "round trips ({} after {} warm-up):",
        config.round_trips, config.warmup_round_trips
    );
    // The sleeping transports take turns (their ratio is a target); the busy-polling ones run
    // alone, each after its own warm-up.
    let sleeping = vec![
        ShmexPingPong::start(&config, "shmex-futex", Duration::ZERO)?,
        FutexPingPong::start(&config)?,
        UdsPingPong::start(&config)?,
        TaskPingPong::start(&config, "shmex-task-futex", Duration::ZERO)?,
    ];
    measure_round_trips(&config, sleeping, &mut report)?;
    let shmex_spin = ShmexPingPong::start(&config, "shmex-spin", ACTIVE_SPIN)?;
    measure_round_trips(&config, vec![shmex_spin], &mut report)?;
    let task_spin = TaskPingPong::start(&config, "shmex-task-spin", ACTIVE_SPIN)?;
    measure_round_trips(&config, vec![task_spin], &mut report)?;
    measure_round_trips(&config, vec![SpinPingPong::start(&config)?], &mut report)?;
    bench_protocol(&config, &mut report)?;
    bench_demo_rounds(&config, &mut report)?;
    report.notes.push(format!(
        "round trips: {} per transport after a warm-up of at least {:?} and {} round trips; \
         shmex-futex, futex-raw, uds and shmex-task-futex measured in alternating batches of \
         {ROUND_TRIP_BATCH}; \
         futex-raw = store + futex_wake, futex_wait until answered (no spinning, a wake syscall \
         every time); shmex-spin = WaitStrategy spin {ACTIVE_SPIN:?} on both sides, shmex-futex = spin 0; \
         shmex-task-*: a Task DXO with one 4 KiB f32 tensor (FrameSender::send) answered by a \
         Result DXO of the same size that the agent sends from its in-place view of the task",
        config.round_trips, config.warmup, config.warmup_round_trips
    ));

    eprintln!(
        "dead-peer detection ({} repeats):",
        config.detection_repeats
    );
    bench_detection(&config, &mut report)?;

    report_load(
        &mut report,
        ["load1_end", "load5_end", "load15_end"],
        LoadAverage::now(),
    );
    report.add(
        "host",
        "-",
        "run_time_s",
        started.elapsed().as_secs_f64(),
        "s",
    );
    print_report(&config, &report);
    Ok(())
}

/// The load averages at the start or the end of the run as `host` figures (`metrics` names
/// the 1, 5 and 15 minute averages); nothing where `/proc/loadavg` cannot be read.
fn report_load(report: &mut Report, metrics: [&'static str; 3], load: Option<LoadAverage>) {
    let Some(load) = load else {
        eprintln!("  (no /proc/loadavg: the load is not reported)");
        return;
    };
    for (metric, value) in metrics.into_iter().zip([load.one, load.five, load.fifteen]) {
        report.add("host", "-", metric, value, "tasks");
    }
}

/// The line at the top of the human table: CPUs, load at the start and the end, run time.
fn load_line(report: &Report) -> String {
    let averages = |when: &str| {
        let get = |minutes: &str| report.get("host", "-", &format!("load{minutes}_{when}"));
        match (get("1"), get("5"), get("15")) {
            (Some(one), Some(five), Some(fifteen)) => {
                format!("{one:.2} {five:.2} {fifteen:.2}")
            }
            _ => "unknown".to_string(),
        }
    };
    format!(
        "host load: {} CPUs; load average (1, 5, 15 min) {} at the start, {} at the end \
         (it counts this run's own processes too: up to 2 while both sides spin); the run took \
         {:.0} s",
        report.get("host", "-", "cpus").unwrap_or(0.0),
        averages("start"),
        averages("end"),
        report.get("host", "-", "run_time_s").unwrap_or(0.0),
    )
}

fn host_description(config: &Config) -> String {
    let cpus = config.cpu_count;
    let pinning = match config.cpus {
        Some((p, c)) => format!("parent pinned to CPU {p}, child to CPU {c} (sched_setaffinity)"),
        None => "not pinned (fewer than 2 CPUs available)".to_string(),
    };
    format!(
        "host: {cpus} CPUs; {pinning}; mode: {}",
        if config.quick {
            "QUICK (--quick: max 64 MiB, fewer samples and round trips, a 64 MiB model of 20 \
             tensors, hand-offs of 1 MiB and 16 MiB)"
        } else {
            "full"
        }
    )
}

fn print_report(config: &Config, report: &Report) {
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "=== shmex compare{} ===",
        if config.quick { " (QUICK MODE)" } else { "" }
    );
    let _ = writeln!(out, "{}", load_line(report));
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    // Throughput table: one row per transport, one column per size.
    let mut transports: Vec<&str> = Vec::new();
    for f in report.figures.iter().filter(|f| f.metric == "gbps") {
        if !transports.contains(&f.transport.as_str()) {
            transports.push(&f.transport);
        }
    }
    let _ = writeln!(out);
    let _ = write!(out, "{:<20}", "throughput GB/s");
    for &size in &config.sizes {
        let _ = write!(out, "{:>10}", size_label(size));
    }
    let _ = writeln!(out);
    for t in &transports {
        let _ = write!(out, "{t:<20}");
        for &size in &config.sizes {
            match report.get(t, &size_label(size), "gbps") {
                Some(v) => {
                    let _ = write!(out, "{v:>10.2}");
                }
                None => {
                    let _ = write!(out, "{:>10}", "-");
                }
            }
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<20}{:>12}{:>12}",
        "8-byte round trip", "median us", "p99 us"
    );
    for t in ["shmex-spin", "shmex-futex", "futex-raw", "uds", "spin-raw"] {
        if let (Some(m), Some(p)) = (
            report.get(t, "8B", "rtt_median_us"),
            report.get(t, "8B", "rtt_p99_us"),
        ) {
            let _ = writeln!(out, "{t:<20}{m:>12.3}{p:>12.3}");
        }
    }
    let _ = writeln!(out);
    let largest = size_label(*config.sizes.iter().max().unwrap_or(&GIB));
    let _ = writeln!(
        out,
        "{:<20}{:>12}{:>12}",
        format!("{largest} model"),
        "warm GB/s",
        "cold GB/s"
    );
    for t in ["shmex-model", "shmex-model-view"] {
        if let (Some(w), Some(c)) = (
            report.get(t, &largest, "gbps"),
            report.get(t, &largest, "cold_gbps"),
        ) {
            let _ = writeln!(out, "{t:<20}{w:>12.2}{c:>12.2}");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<20}{:>12}{:>12}",
        "loan hand-off", "median us", "p99 us"
    );
    for &size in &config.handoff_sizes {
        let label = size_label(size);
        if let (Some(m), Some(p)) = (
            report.get("shmex-loan", &label, "handoff_median_us"),
            report.get("shmex-loan", &label, "handoff_p99_us"),
        ) {
            let _ = writeln!(
                out,
                "{:<20}{m:>12.3}{p:>12.3}",
                format!("shmex-loan {label}")
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<20}{:>12}{:>12}",
        "4 KiB task round trip", "median us", "p99 us"
    );
    for t in [
        "shmex-task-spin",
        "shmex-task-futex",
        "protocol-task-spin",
        "protocol-task-futex",
    ] {
        if let (Some(m), Some(p)) = (
            report.get(t, "4KiB", "rtt_median_us"),
            report.get(t, "4KiB", "rtt_p99_us"),
        ) {
            let _ = writeln!(out, "{t:<20}{m:>12.3}{p:>12.3}");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<20}{:>12}{:>12}{:>12}",
        format!("{largest} demo rounds"),
        "round 1 ms",
        "round 2 ms",
        "ratio"
    );
    for t in DEMO_TRANSPORTS {
        if let (Some(first), Some(second)) = (
            report.get(t, &largest, "round1_ms"),
            report.get(t, &largest, "round2_ms"),
        ) {
            let _ = writeln!(
                out,
                "{t:<20}{first:>12.1}{second:>12.1}{:>12.2}",
                first / second
            );
        }
    }
    let _ = writeln!(out);
    if let (Some(m), Some(x)) = (
        report.get("shmex", "-", "detect_median_ms"),
        report.get("shmex", "-", "detect_max_ms"),
    ) {
        let _ = writeln!(
            out,
            "dead-peer detection (SIGKILL -> PeerLost::Dead): median {m:.2} ms, max {x:.2} ms"
        );
    }
    let _ = writeln!(out);
    for f in &report.figures {
        let _ = writeln!(
            out,
            "RESULT {} {} {} {:.4} {}",
            f.transport, f.size, f.metric, f.value, f.unit
        );
    }
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.3}", a / b),
        _ => "nan".to_string(),
    };
    let shmex = report.get("shmex", &largest, "gbps");
    let _ = writeln!(
        out,
        "RATIO shmex/memcpy {largest} {}",
        ratio(shmex, report.get("memcpy", &largest, "gbps"))
    );
    let _ = writeln!(
        out,
        "RATIO shmex/uds {largest} {}",
        ratio(shmex, report.get("uds", &largest, "gbps"))
    );
    let _ = writeln!(
        out,
        "RATIO shmex-futex/futex-raw 8B {}",
        ratio(
            report.get("shmex-futex", "8B", "rtt_median_us"),
            report.get("futex-raw", "8B", "rtt_median_us")
        )
    );
    for model in ["shmex-model", "shmex-model-view"] {
        let gbps = report.get(model, &largest, "gbps");
        for base in ["memcpy", "uds"] {
            let _ = writeln!(
                out,
                "RATIO {model}/{base} {largest} {}",
                ratio(gbps, report.get(base, &largest, "gbps"))
            );
        }
    }
    let _ = writeln!(
        out,
        "RATIO protocol-model/memcpy-x2 {largest} {}",
        ratio(
            report.get("protocol-model", &largest, "round_trip_ms"),
            report.get("memcpy-x2", &largest, "time_ms")
        )
    );
    // How many times faster the zero-copy model exchange is than two memcpys of the model.
    let _ = writeln!(
        out,
        "RATIO memcpy-x2/protocol-model-zero-copy {largest} {}",
        ratio(
            report.get("memcpy-x2", &largest, "time_ms"),
            report.get("protocol-model-zero-copy", &largest, "round_trip_ms")
        )
    );
    // The protocol's small-task round trip over the raw 4 KiB task frame echo (same run):
    // spinning, and on the futex path (against the frame echo and against two raw futex
    // ping-pongs, the floor of a round trip that needs two wake-ups each way).
    let task = |t: &str| report.get(t, "4KiB", "rtt_median_us");
    let _ = writeln!(
        out,
        "RATIO protocol-task-4KiB/frame-echo-4KiB spin {}",
        ratio(task("protocol-task-spin"), task("shmex-task-spin"))
    );
    let _ = writeln!(
        out,
        "RATIO protocol-task-futex-4KiB/frame-echo-futex-4KiB futex {}",
        ratio(task("protocol-task-futex"), task("shmex-task-futex"))
    );
    let _ = writeln!(
        out,
        "RATIO protocol-task-futex-4KiB/futex-raw-x2 futex {}",
        ratio(
            task("protocol-task-futex"),
            report
                .get("futex-raw", "8B", "rtt_median_us")
                .map(|v| 2.0 * v)
        )
    );
    for t in DEMO_TRANSPORTS {
        let _ = writeln!(
            out,
            "RATIO {t}-round1/round2 {largest} {}",
            ratio(
                report.get(t, &largest, "round1_ms"),
                report.get(t, &largest, "round2_ms")
            )
        );
    }
    if let [small, large, ..] = config.handoff_sizes.as_slice() {
        let (small, large) = (size_label(*small), size_label(*large));
        let _ = writeln!(
            out,
            "RATIO shmex-loan {large}/{small} {}",
            ratio(
                report.get("shmex-loan", &large, "handoff_median_us"),
                report.get("shmex-loan", &small, "handoff_median_us")
            )
        );
    }
    print!("{out}");
}

// ----- throughput -----------------------------------------------------------------------

/// One tensor of the benchmark model: its name, shape and elements of the f32 source.
struct ModelTensor {
    name: String,
    shape: Vec<u64>,
    elements: std::ops::Range<usize>,
}

/// Column counts the model's 2-D tensors cycle through (all multiples of 256).
const MODEL_COLUMNS: [usize; 5] = [1024, 4096, 768, 2048, 3072];
/// Tensor sizes cycle through these quarters of the mean (0.5× … 1.5×, averaging 1×).
const MODEL_QUARTERS: [usize; 5] = [2, 3, 4, 5, 6];
/// The meta entry every model DXO carries, as FLARE's do.
const MODEL_ROUND: i64 = 7;

/// A model of `count` f32 tensors covering `total` bytes exactly, with varied sizes (0.5× to
/// 1.5× the mean) and shapes: `[rows, columns]`, the last one taking the remainder. Parent and
/// child both derive it from (`total`, `count`), so the child can pre-fault its buffers.
fn model_layout(total: usize, count: usize) -> Res<Vec<ModelTensor>> {
    let elements = total / 4;
    if !total.is_multiple_of(4) || count == 0 || elements / count < 2 * 4096 {
        return Err(format!("no model of {count} tensors in {total} bytes").into());
    }
    let mean = elements / count;
    let mut tensors = Vec::with_capacity(count);
    let mut start = 0;
    for i in 0..count {
        let (len, shape) = if i + 1 == count {
            let rest = elements - start;
            if rest.is_multiple_of(256) {
                (rest, vec![(rest / 256) as u64, 256])
            } else {
                (rest, vec![rest as u64])
            }
        } else {
            let columns = MODEL_COLUMNS[i % MODEL_COLUMNS.len()];
            let rows = (mean * MODEL_QUARTERS[i % MODEL_QUARTERS.len()] / 4 / columns).max(1);
            (rows * columns, vec![rows as u64, columns as u64])
        };
        tensors.push(ModelTensor {
            name: format!("model.layers.{i}.weight"),
            shape,
            elements: start..start + len,
        });
        start += len;
    }
    if start != elements {
        return Err("model layout does not cover its bytes".into());
    }
    Ok(tensors)
}

/// A checksum of a received (or sent) model: every tensor's name, shape and bytes, in order,
/// and the `current_round` meta entry.
fn model_digest<'a>(
    round: Option<i64>,
    tensors: impl Iterator<Item = (&'a str, &'a [u64], &'a [u8])>,
) -> u64 {
    digest_of_checksums(
        round,
        tensors.map(|(name, shape, bytes)| (name, shape, pattern::checksum(bytes))),
    )
}

/// [`model_digest`] from each tensor's name, shape and the checksum of its bytes.
fn digest_of_checksums<'a>(
    round: Option<i64>,
    tensors: impl Iterator<Item = (&'a str, &'a [u64], u64)>,
) -> u64 {
    let mut summary = Vec::with_capacity(4096);
    summary.extend_from_slice(&round.unwrap_or(i64::MIN).to_le_bytes());
    for (name, shape, checksum) in tensors {
        summary.extend_from_slice(&pattern::checksum(name.as_bytes()).to_le_bytes());
        summary.extend_from_slice(&(shape.len() as u64).to_le_bytes());
        for &dim in shape {
            summary.extend_from_slice(&dim.to_le_bytes());
        }
        summary.extend_from_slice(&checksum.to_le_bytes());
    }
    pattern::checksum(&summary)
}

/// Task names telling the model sink what to answer: a checksum, or one acknowledgement byte.
const MODEL_VERIFY: &str = "verify";
const MODEL_TIMED: &str = "timed";

/// A model DXO copy-sent with `FrameSender::send` on a default-ring link to an agent child
/// that receives it, if `copy_out`, into its own pre-faulted buffer
/// (`FrameReceiver::recv_into`), else into the receiver's reassembly buffer
/// (`FrameReceiver::recv`); then a 1-byte record back on the result ring.
struct ModelTransfer {
    transport: &'static str,
    link: Link,
    peer: Peer,
    sender: FrameSender,
    layout: Vec<ModelTensor>,
    total: usize,
    ack: Vec<u8>,
    /// The first timed transfer (the receiver's reassembly buffer not yet mapped).
    cold: Option<Duration>,
}

impl ModelTransfer {
    fn start(
        config: &Config,
        transport: &'static str,
        copy_out: bool,
        total: usize,
    ) -> Res<ModelTransfer> {
        let layout = model_layout(total, config.model_tensors)?;
        let name = unique_name(transport)?;
        let options = CreateOptions::default().ring_capacity(SHMEX_RING as u64);
        let link = Link::create(&name, &options)?;
        let mut peer = Peer::spawn(
            &config.launcher,
            "model-sink",
            &[
                name.as_str().to_string(),
                total.to_string(),
                config.model_tensors.to_string(),
                if copy_out { "copy" } else { "view" }.to_string(),
            ],
        )?;
        peer.expect("ready")?;
        Ok(ModelTransfer {
            transport,
            link,
            peer,
            sender: FrameSender::new(),
            layout,
            total,
            ack: Vec::with_capacity(64),
            cold: None,
        })
    }

    fn dxo<'a>(&self, source: &'a [u8]) -> Res<Dxo<'a>> {
        let words = <[f32]>::ref_from_bytes(source).map_err(|_| "model source is misaligned")?;
        let mut dxo = Dxo::new(DataKind::Weights).with_meta("current_round", MODEL_ROUND);
        for tensor in &self.layout {
            dxo = dxo.with_tensor(
                tensor.name.as_str(),
                &tensor.shape,
                &words[tensor.elements.clone()],
            )?;
        }
        Ok(dxo)
    }

    /// Sends the model and waits for the child's answer (into `self.ack`); returns the time
    /// from the start of the send to the answer.
    fn send(&mut self, source: &[u8], task_name: &str) -> Res<Duration> {
        if source.len() != self.total {
            return Err(format!("{}: model of {} bytes only", self.transport, self.total).into());
        }
        let dxo = self.dxo(source)?;
        let envelope = Envelope::new(MessageKind::Task).with_task("model", task_name);
        let start = Instant::now();
        let give_up = Some(start + PEER_TIMEOUT);
        self.sender
            .send(self.link.sender(), &envelope, Some(&dxo), give_up)?;
        self.link.receiver().pop_into(&mut self.ack, give_up)?;
        Ok(start.elapsed())
    }
}

impl Transfer for ModelTransfer {
    fn transport(&self) -> &str {
        self.transport
    }

    fn accepts(&self, len: usize) -> bool {
        len == self.total
    }

    fn verify(&mut self, source: &[u8]) -> Res<()> {
        if self.cold.is_none() {
            let cold = self.timed(source)?;
            self.cold = Some(cold);
        }
        self.send(source, MODEL_VERIFY)?;
        let got = <[u8; 8]>::try_from(self.ack.as_slice())
            .map_err(|_| format!("{}: checksum record is not 8 bytes", self.transport))?;
        let want = model_digest(
            Some(MODEL_ROUND),
            self.layout.iter().map(|t| {
                (
                    t.name.as_str(),
                    t.shape.as_slice(),
                    &source[t.elements.start * 4..t.elements.end * 4],
                )
            }),
        );
        check_checksum(self.transport, source.len(), u64::from_le_bytes(got), want)
    }

    fn timed(&mut self, source: &[u8]) -> Res<Duration> {
        let elapsed = self.send(source, MODEL_TIMED)?;
        if self.ack.as_slice() != [ACK] {
            return Err(format!("{}: bad acknowledgement {:?}", self.transport, self.ack).into());
        }
        Ok(elapsed)
    }

    fn stop(mut self: Box<Self>) -> Res<()> {
        say_bye(&mut self.sender, &mut self.link, &mut self.peer)
    }

    fn extra_figures(&self, len: usize) -> Vec<shmex_cli::harness::ExtraFigure> {
        self.cold
            .map(|cold| shmex_cli::harness::ExtraFigure {
                metric: "cold_gbps",
                value: median_gbps(len, &[cold]),
                unit: "GB/s",
            })
            .into_iter()
            .collect()
    }
}

/// Starts every throughput contestant: memcpy, the Unix socket, and the shmex variants (the
/// first, `shmex`, is the headline figure: the library's default ring and chunk; the others
/// vary one of the two, as context for tuning).
fn start_transfers(
    config: &Config,
    max: usize,
    report: &mut Report,
) -> Res<Vec<Box<dyn Transfer>>> {
    let mut transfers: Vec<Box<dyn Transfer>> = vec![Box::new(MemcpyTransfer::new(max))];
    let uds = shmex_cli::harness::uds_transfer(&config.launcher, "uds", max)?;
    let (sndbuf, rcvbuf) = socket_buffers(uds.output())?;
    report.notes.push(format!(
        "uds: SO_SNDBUF/SO_RCVBUF requested {} each (kernel reports {sndbuf} / {rcvbuf} bytes), \
         {} per write()",
        size_label(SOCKET_BUFFER),
        size_label(SOCKET_IO_CHUNK)
    ));
    transfers.push(Box::new(uds));
    let mut variants = vec![("shmex".to_string(), SHMEX_RING, None)];
    if !config.quick {
        variants.push((format!("shmex-ring{}", size_label(4 * MIB)), 4 * MIB, None));
        variants.push((
            format!("shmex-ring{}", size_label(64 * MIB)),
            64 * MIB,
            None,
        ));
        variants.push((
            format!("shmex-chunk{}", size_label(64 * KIB)),
            SHMEX_RING,
            Some(64 * KIB),
        ));
    }
    for (transport, capacity, chunk) in variants {
        transfers.push(Box::new(ShmexTransfer::start(
            &config.launcher,
            transport,
            capacity,
            chunk,
            max,
        )?));
    }
    for (transport, copy_out) in [("shmex-model", true), ("shmex-model-view", false)] {
        transfers.push(Box::new(ModelTransfer::start(
            config, transport, copy_out, max,
        )?));
    }
    report.notes.push(format!(
        "shmex: `shmex` = ring of {} (the library default) with stream::default_chunk ({} bytes), \
         default WaitStrategy (spin 50 us, then futex); shmex-ringN / shmex-chunkN vary one of \
         the two; 'gbps' includes the 1-record acknowledgement",
        size_label(SHMEX_RING),
        stream::default_chunk(SHMEX_RING as u64),
    ));
    report.notes.push(format!(
        "shmex-model: a {} Weights DXO of {} f32 tensors (shapes [rows, cols], 0.5x-1.5x the \
         mean size, meta current_round) made of the same bytes memcpy and uds move, \
         FrameSender::send through a {} ring ({}-byte fragments) -> FrameReceiver::recv_into \
         the caller's pre-faulted buffer (each fragment copied there as it arrives) -> 1-byte \
         ack; shmex-model-view receives with FrameReceiver::recv (reassembled into the \
         receiver's own reused buffer); both view every tensor; timed from the start of send \
         to the ack; cold_gbps = the first transfer (shmex-model-view: reassembly buffer not \
         yet mapped)",
        size_label(max),
        config.model_tensors,
        size_label(SHMEX_RING),
        stream::default_chunk(SHMEX_RING as u64),
    ));
    Ok(transfers)
}

/// For each size: every contestant takes turns (see `shmex_cli::harness::measure_throughput`) until
/// each has `min_samples` and the size has had `min_total` per contestant. Taking turns makes
/// a slow phase of this shared machine hit all contestants alike, so their ratios hold even
/// when absolute figures drift.
fn measure_throughput(
    config: &Config,
    mut transfers: Vec<Box<dyn Transfer>>,
    source: &[u8],
    report: &mut Report,
) -> Res<()> {
    let sampling = Sampling {
        min_total: config.min_total,
        min_samples: config.min_samples,
    };
    let mut announced = None;
    shmex_cli::harness::measure_throughput(
        &config.sizes,
        &mut transfers,
        source,
        sampling,
        |len, _| {
            if announced.replace(len) != Some(len) {
                eprintln!("throughput {}:", size_label(len));
            }
        },
        |len, transfer, samples| {
            let label = size_label(len);
            let transport = transfer.transport();
            report.add(transport, &label, "gbps", median_gbps(len, samples), "GB/s");
            for extra in transfer.extra_figures(len) {
                report.add(transport, &label, extra.metric, extra.value, extra.unit);
            }
        },
    )?;
    for transfer in transfers {
        transfer.stop()?;
    }
    Ok(())
}

// ----- round trips ----------------------------------------------------------------------

/// One side of an 8-byte ping-pong with a child process.
trait PingPong {
    /// The transport's name in the report.
    fn transport(&self) -> &'static str;
    /// The size label of its messages in the report.
    fn size(&self) -> &'static str {
        "8B"
    }
    /// One timed round trip (the session numbers its pings itself).
    fn round_trip(&mut self) -> Res<Duration>;
    /// Tells the child to stop and waits for it to exit.
    fn stop(self: Box<Self>) -> Res<()>;
}

/// shmex: 8-byte records on the task ring, echoed back on the result ring.
struct ShmexPingPong {
    transport: &'static str,
    link: Link,
    peer: Peer,
    reply: Vec<u8>,
    seq: u64,
}

/// A link with a 1 MiB ring whose blocking calls spin for `spin`, and a child running `mode`
/// (an echo loop with the same wait strategy) attached to it and ready.
fn echo_session(
    config: &Config,
    transport: &'static str,
    spin: Duration,
    mode: &str,
) -> Res<(Link, Peer)> {
    let name = unique_name(transport)?;
    let wait = WaitStrategy::default().spin(spin);
    let options = CreateOptions::default()
        .ring_capacity(MIB as u64)
        .wait(wait);
    let link = Link::create(&name, &options)?;
    let mut peer = Peer::spawn(
        &config.launcher,
        mode,
        &[name.as_str().to_string(), spin.as_nanos().to_string()],
    )?;
    peer.expect("ready")?;
    Ok((link, peer))
}

impl ShmexPingPong {
    fn start(config: &Config, transport: &'static str, spin: Duration) -> Res<Box<dyn PingPong>> {
        let (link, peer) = echo_session(config, transport, spin, "shmex-echo")?;
        Ok(Box::new(ShmexPingPong {
            transport,
            link,
            peer,
            reply: Vec::with_capacity(64),
            seq: 0,
        }))
    }
}

impl PingPong for ShmexPingPong {
    fn transport(&self) -> &'static str {
        self.transport
    }

    fn round_trip(&mut self) -> Res<Duration> {
        self.seq += 1;
        let ping = self.seq.to_le_bytes();
        let start = Instant::now();
        let give_up = Some(start + PEER_TIMEOUT);
        self.link.sender().push(&ping, give_up)?;
        self.link.receiver().pop_into(&mut self.reply, give_up)?;
        let elapsed = start.elapsed();
        if self.reply.as_slice() != ping {
            return Err(format!(
                "{}: echo {:?} for ping {ping:?}",
                self.transport, self.reply
            )
            .into());
        }
        Ok(elapsed)
    }

    fn stop(mut self: Box<Self>) -> Res<()> {
        self.link.sender().push(QUIT, Some(deadline()))?;
        self.peer.finish()
    }
}

/// A page shared with the child through an inherited memfd: two futex words and two spin
/// words, each on its own 128-byte line.
struct SharedPage {
    map: memmap2::MmapMut,
    fd: std::os::fd::OwnedFd,
}

const FUTEX_PING: usize = 0;
const FUTEX_PONG: usize = 128;
const SPIN_PING: usize = 256;
const SPIN_PONG: usize = 384;

impl SharedPage {
    fn create() -> Res<SharedPage> {
        // Not CLOEXEC: the child inherits the descriptor and maps the same pages.
        let fd = rustix::fs::memfd_create("shmex-compare", rustix::fs::MemfdFlags::empty())?;
        rustix::fs::ftruncate(&fd, PAGE as u64)?;
        let file = File::from(fd.try_clone()?);
        // SAFETY: the memfd is private to this run; its only other user is our child, which
        // touches the page only through the atomics below.
        let map = unsafe { memmap2::MmapMut::map_mut(&file)? };
        Ok(SharedPage { map, fd })
    }

    fn open(fd_number: &str) -> Res<SharedPage> {
        let fd_number: i32 = fd_number.parse()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{fd_number}"))?;
        if file.metadata()?.len() < PAGE as u64 {
            return Err("shared page is shorter than a page".into());
        }
        // SAFETY: as in `create`; the parent only touches the page through the atomics.
        let map = unsafe { memmap2::MmapMut::map_mut(&file)? };
        let fd = std::os::fd::OwnedFd::from(file);
        Ok(SharedPage { map, fd })
    }

    fn fd_number(&self) -> String {
        self.fd.as_fd().as_raw_fd().to_string()
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(offset.is_multiple_of(128) && offset + 4 <= self.map.len());
        // SAFETY: the offset is inside the mapping and 4-aligned (the mapping is page-aligned);
        // both processes access these bytes only atomically.
        unsafe { &*self.map.as_ptr().wrapping_add(offset).cast::<AtomicU32>() }
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(128) && offset + 8 <= self.map.len());
        // SAFETY: as in `u32_at`, 8-aligned.
        unsafe { &*self.map.as_ptr().wrapping_add(offset).cast::<AtomicU64>() }
    }
}

/// The raw futex baseline: store, `futex_wake`, then `futex_wait` until answered; no spinning
/// and a wake system call every time.
struct FutexPingPong {
    page: SharedPage,
    peer: Peer,
    seq: u32,
}

impl FutexPingPong {
    fn start(config: &Config) -> Res<Box<dyn PingPong>> {
        let page = SharedPage::create()?;
        let mut peer = Peer::spawn(&config.launcher, "futex-echo", &[page.fd_number()])?;
        peer.expect("ready")?;
        Ok(Box::new(FutexPingPong { page, peer, seq: 0 }))
    }
}

impl PingPong for FutexPingPong {
    fn transport(&self) -> &'static str {
        "futex-raw"
    }

    fn round_trip(&mut self) -> Res<Duration> {
        self.seq += 1;
        let seq = self.seq;
        let (ping, pong) = (self.page.u32_at(FUTEX_PING), self.page.u32_at(FUTEX_PONG));
        let mut wait = PeerWait::new("futex-raw: no answer from the child");
        let start = Instant::now();
        ping.store(seq, Ordering::Release);
        sys::futex_wake(ping);
        while pong.load(Ordering::Acquire) != seq {
            sys::futex_wait(pong, seq - 1, Some(Duration::from_millis(100)));
            wait.check()?;
        }
        Ok(start.elapsed())
    }

    fn stop(mut self: Box<Self>) -> Res<()> {
        let ping = self.page.u32_at(FUTEX_PING);
        ping.store(u32::MAX, Ordering::Release);
        sys::futex_wake(ping);
        self.peer.finish()
    }
}

/// The busy-poll floor: each process spins on the other's shared `AtomicU64`.
struct SpinPingPong {
    page: SharedPage,
    peer: Peer,
    seq: u64,
}

impl SpinPingPong {
    fn start(config: &Config) -> Res<Box<dyn PingPong>> {
        let page = SharedPage::create()?;
        let mut peer = Peer::spawn(&config.launcher, "spin-echo", &[page.fd_number()])?;
        peer.expect("ready")?;
        Ok(Box::new(SpinPingPong { page, peer, seq: 0 }))
    }
}

impl PingPong for SpinPingPong {
    fn transport(&self) -> &'static str {
        "spin-raw"
    }

    fn round_trip(&mut self) -> Res<Duration> {
        self.seq += 1;
        let seq = self.seq;
        let (ping, pong) = (self.page.u64_at(SPIN_PING), self.page.u64_at(SPIN_PONG));
        let mut wait = PeerWait::new("spin-raw: no answer from the child");
        let start = Instant::now();
        ping.store(seq, Ordering::Release);
        while pong.load(Ordering::Acquire) != seq {
            wait.idle()?;
        }
        Ok(start.elapsed())
    }

    fn stop(mut self: Box<Self>) -> Res<()> {
        self.page
            .u64_at(SPIN_PING)
            .store(u64::MAX, Ordering::Release);
        self.peer.finish()
    }
}

/// 8 bytes written to a Unix stream socket and echoed back.
struct UdsPingPong {
    peer: Peer,
    socket: UnixStream,
    _path: shmex_cli::harness::SocketPath,
    seq: u64,
}

impl UdsPingPong {
    fn start(config: &Config) -> Res<Box<dyn PingPong>> {
        let (peer, socket, path) = uds_connect(&config.launcher, "uds-echo", &[])?;
        Ok(Box::new(UdsPingPong {
            peer,
            socket,
            _path: path,
            seq: 0,
        }))
    }
}

impl PingPong for UdsPingPong {
    fn transport(&self) -> &'static str {
        "uds"
    }

    fn round_trip(&mut self) -> Res<Duration> {
        self.seq += 1;
        let ping = self.seq.to_le_bytes();
        let mut reply = [0u8; 8];
        let start = Instant::now();
        self.socket.write_all(&ping)?;
        self.socket.read_exact(&mut reply)?;
        let elapsed = start.elapsed();
        if reply != ping {
            return Err("uds: wrong echo".into());
        }
        Ok(elapsed)
    }

    fn stop(mut self: Box<Self>) -> Res<()> {
        self.socket.shutdown(std::net::Shutdown::Write)?;
        self.peer.finish()
    }
}

/// Round trips per turn when several sessions are measured in alternation.
const ROUND_TRIP_BATCH: usize = 500;

/// Warms every session up (for at least `warmup` and `warmup_round_trips`), then measures
/// `round_trips` of each, taking turns in batches so that a slow phase of this shared machine
/// hits all of them alike. Sessions whose children busy-poll must be measured alone: their
/// spinning child would steal the CPU from the others.
fn measure_round_trips(
    config: &Config,
    mut sessions: Vec<Box<dyn PingPong>>,
    report: &mut Report,
) -> Res<()> {
    for session in &mut sessions {
        let started = Instant::now();
        let mut done = 0;
        while done < config.warmup_round_trips || started.elapsed() < config.warmup {
            session.round_trip()?;
            done += 1;
        }
    }
    let mut samples: Vec<Vec<Duration>> = sessions
        .iter()
        .map(|_| Vec::with_capacity(config.round_trips))
        .collect();
    while samples[0].len() < config.round_trips {
        let batch = ROUND_TRIP_BATCH.min(config.round_trips - samples[0].len());
        for (session, samples) in sessions.iter_mut().zip(&mut samples) {
            for _ in 0..batch {
                samples.push(session.round_trip()?);
            }
        }
    }
    for (session, samples) in sessions.into_iter().zip(samples) {
        report_rtt(report, session.transport(), session.size(), samples);
        session.stop()?;
    }
    Ok(())
}

fn report_rtt(report: &mut Report, transport: &str, size: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    report.add(
        transport,
        size,
        "rtt_median_us",
        us(percentile(&samples, 50.0)),
        "us",
    );
    report.add(
        transport,
        size,
        "rtt_p99_us",
        us(percentile(&samples, 99.0)),
        "us",
    );
}

/// A Result/Task/Data envelope's task name telling the echo child to answer with a checksum.
const VERIFY_TASK: &str = "verify";

/// The exchanger side of the loan hand-off: loans a message of one f32 tensor, writes its
/// first element, commits; the child views it in place, answers with a loaned message of the
/// same size carrying that element; this side views the answer and releases it.
struct LoanSession {
    link: Link,
    peer: Peer,
    sender: FrameSender,
    receiver: FrameReceiver,
    /// One spec per size, built once (as an application sending the same tensors would).
    specs: Vec<LoanSpec>,
    /// The same, laid out once for the timed hand-offs ([`FrameSender::prepare`]).
    prepared: Vec<PreparedLoan>,
    seq: u32,
}

impl LoanSession {
    fn start(config: &Config, sizes: &[usize]) -> Res<LoanSession> {
        let largest = *sizes.iter().max().ok_or("no hand-off sizes")?;
        let name = unique_name("loan")?;
        let options = CreateOptions::default()
            .ring_capacity(shmex_cli::harness::loan_ring(largest) as u64)
            .wait(WaitStrategy::default().spin(ACTIVE_SPIN));
        let link = Link::create(&name, &options)?;
        let mut peer = Peer::spawn(&config.launcher, "loan-echo", &[name.as_str().to_string()])?;
        peer.expect("ready")?;
        let specs = sizes
            .iter()
            .map(|&size| {
                LoanSpec::new(DataKind::Weights).tensor(
                    "weights",
                    shmex::frame::DType::F32,
                    &[(size / 4) as u64],
                )
            })
            .collect::<Vec<_>>();
        let envelope = Envelope::new(MessageKind::Data);
        let prepared = specs
            .iter()
            .map(|spec| FrameSender::prepare(&envelope, spec))
            .collect::<Result<_, _>>()?;
        Ok(LoanSession {
            link,
            peer,
            sender: FrameSender::new(),
            receiver: FrameReceiver::default(),
            specs,
            prepared,
            seq: 0,
        })
    }

    /// One timed round trip of two loaned messages of size `index`.
    fn round_trip(&mut self, index: usize) -> Res<Duration> {
        self.seq = self.seq.wrapping_add(1);
        let token = self.seq;
        let prepared = &self.prepared[index];
        let (producer, consumer) = self.link.split();
        let start = Instant::now();
        let give_up = Some(start + PEER_TIMEOUT);
        let mut loan = self.sender.loan_prepared(producer, prepared, give_up)?;
        loan.tensor_mut::<f32>(0)?[0] = f32::from_bits(token);
        loan.commit();
        let answer = self.receiver.recv(consumer, give_up)?;
        let first = first_element(&answer)?;
        let in_ring = answer.is_in_ring();
        answer.release();
        let elapsed = start.elapsed();
        if !in_ring || first.to_bits() != token {
            return Err(format!(
                "shmex-loan: answer in_ring={in_ring}, first element {:#x}, expected {token:#x}",
                first.to_bits()
            )
            .into());
        }
        Ok(elapsed)
    }

    /// Untimed: a message of size `index` filled completely with a pattern; the child answers
    /// with its checksum in the meta of a loaned message of the same size.
    fn verify(&mut self, index: usize) -> Res<()> {
        let envelope = Envelope::new(MessageKind::Data).with_task("", VERIFY_TASK);
        let spec = &self.specs[index];
        let (producer, consumer) = self.link.split();
        let mut loan = self
            .sender
            .loan(producer, &envelope, spec, Some(deadline()))?;
        let bytes = loan.tensor_bytes_mut(0)?;
        pattern::fill(bytes, index as u64 + 11);
        let want = pattern::checksum(bytes);
        loan.commit();
        let answer = self.receiver.recv(consumer, Some(deadline()))?;
        let got = answer.meta().get("checksum").and_then(|v| v.as_u64());
        let (in_ring, len) = (
            answer.is_in_ring(),
            answer.tensor(0).map(|t| t.bytes().len()),
        );
        answer.release();
        let size = self.specs[index].tensors[0].2[0] as usize * 4;
        if !in_ring || len != Some(size) {
            return Err(
                format!("shmex-loan: verify answer in_ring={in_ring}, {len:?} bytes").into(),
            );
        }
        check_checksum("shmex-loan", size, got.unwrap_or(0), want)
    }

    fn stop(mut self) -> Res<()> {
        say_bye(&mut self.sender, &mut self.link, &mut self.peer)
    }
}

/// The first f32 of a message's first tensor.
fn first_element(message: &Message<'_>) -> Res<f32> {
    let tensor = message.tensor(0).ok_or("message has no tensor")?;
    tensor
        .as_slice::<f32>()?
        .first()
        .copied()
        .ok_or_else(|| "tensor is empty".into())
}

/// Loan hand-off latency per size: both sides spin; sizes take turns in batches so a slow
/// phase of the machine hits all alike; hand-off = round trip / 2.
fn bench_handoff(config: &Config, report: &mut Report) -> Res<()> {
    let sizes = &config.handoff_sizes;
    let mut session = LoanSession::start(config, sizes)?;
    for index in 0..sizes.len() {
        session.verify(index)?;
    }
    for index in 0..sizes.len() {
        let started = Instant::now();
        let mut done = 0;
        while done < config.warmup_round_trips || started.elapsed() < config.warmup {
            session.round_trip(index)?;
            done += 1;
        }
    }
    let mut samples: Vec<Vec<Duration>> = sizes
        .iter()
        .map(|_| Vec::with_capacity(config.round_trips))
        .collect();
    while samples[0].len() < config.round_trips {
        let batch = ROUND_TRIP_BATCH.min(config.round_trips - samples[0].len());
        for (index, samples) in samples.iter_mut().enumerate() {
            for _ in 0..batch {
                samples.push(session.round_trip(index)?);
            }
        }
    }
    session.stop()?;
    let us = |d: Duration| d.as_secs_f64() * 1e6 / 2.0;
    for (&size, mut samples) in sizes.iter().zip(samples) {
        samples.sort_unstable();
        let label = size_label(size);
        let (median, p99) = (percentile(&samples, 50.0), percentile(&samples, 99.0));
        report.add("shmex-loan", &label, "handoff_median_us", us(median), "us");
        report.add("shmex-loan", &label, "handoff_p99_us", us(p99), "us");
    }
    report.notes.push(format!(
        "shmex-loan: ping-pong of loaned messages (FrameSender::loan_prepared of a layout \
         prepared once, one f32 tensor of the given size, only its first element written, \
         commit) viewed in place by the peer \
         (recv, is_in_ring, first element, release), which answers the same way; \
         WaitStrategy spin {ACTIVE_SPIN:?} on both sides; rings of {}; hand-off = round trip / 2; \
         sizes alternate in batches of {ROUND_TRIP_BATCH}",
        size_label(shmex_cli::harness::loan_ring(
            *sizes.iter().max().unwrap_or(&MIB)
        )),
    ));
    Ok(())
}

/// A 4 KiB task DXO copy-sent to an agent that answers with a result DXO of the same size,
/// sent straight from its in-place view of the task.
struct TaskPingPong {
    transport: &'static str,
    link: Link,
    peer: Peer,
    sender: FrameSender,
    receiver: FrameReceiver,
    payload: Vec<f32>,
    seq: u32,
}

/// Elements of the task's tensor (4 KiB of f32).
const TASK_ELEMENTS: usize = 1024;

impl TaskPingPong {
    fn start(config: &Config, transport: &'static str, spin: Duration) -> Res<Box<dyn PingPong>> {
        let (link, peer) = echo_session(config, transport, spin, "task-echo")?;
        let mut payload = vec![0f32; TASK_ELEMENTS];
        pattern::fill(payload.as_mut_bytes(), 0x7a5c);
        let mut session = TaskPingPong {
            transport,
            link,
            peer,
            sender: FrameSender::new(),
            receiver: FrameReceiver::default(),
            payload,
            seq: 0,
        };
        session.verify()?;
        Ok(Box::new(session))
    }

    /// Untimed: the whole result must equal the task.
    fn verify(&mut self) -> Res<()> {
        let dxo = Dxo::new(DataKind::Weights)
            .with_meta("current_round", 0)
            .with_tensor("weights", &[TASK_ELEMENTS as u64], &self.payload)?;
        let envelope = Envelope::new(MessageKind::Task).with_task("task-0", VERIFY_TASK);
        let (producer, consumer) = self.link.split();
        self.sender
            .send(producer, &envelope, Some(&dxo), Some(deadline()))?;
        let result = self.receiver.recv(consumer, Some(deadline()))?;
        let tensor = result.tensor(0).ok_or("task result has no tensor")?;
        let same = result.kind() == MessageKind::Result
            && result.task_id() == "task-0"
            && tensor.name() == "weights"
            && tensor.as_slice::<f32>()?.as_bytes() == self.payload.as_bytes();
        result.release();
        if !same {
            return Err(format!("{}: the result differs from the task", self.transport).into());
        }
        Ok(())
    }
}

impl PingPong for TaskPingPong {
    fn transport(&self) -> &'static str {
        self.transport
    }

    fn size(&self) -> &'static str {
        "4KiB"
    }

    fn round_trip(&mut self) -> Res<Duration> {
        self.seq = self.seq.wrapping_add(1);
        let token = self.seq;
        self.payload[0] = f32::from_bits(token);
        let dxo = Dxo::new(DataKind::Weights)
            .with_meta("current_round", token)
            .with_tensor("weights", &[TASK_ELEMENTS as u64], &self.payload)?;
        let envelope = Envelope::new(MessageKind::Task).with_task("task-1", "train");
        let (producer, consumer) = self.link.split();
        let start = Instant::now();
        let give_up = Some(start + PEER_TIMEOUT);
        self.sender.send(producer, &envelope, Some(&dxo), give_up)?;
        let result = self.receiver.recv(consumer, give_up)?;
        let first = first_element(&result)?;
        result.release();
        let elapsed = start.elapsed();
        if first.to_bits() != token {
            return Err(format!("{}: result for another task", self.transport).into());
        }
        Ok(elapsed)
    }

    fn stop(mut self: Box<Self>) -> Res<()> {
        say_bye(&mut self.sender, &mut self.link, &mut self.peer)
    }
}

// ----- dead-peer detection --------------------------------------------------------------

fn bench_detection(config: &Config, report: &mut Report) -> Res<()> {
    let mut times = Vec::with_capacity(config.detection_repeats);
    for repeat in 0..config.detection_repeats {
        let name = unique_name(&format!("detect{repeat}"))?;
        let mut link = Link::create(
            &name,
            &CreateOptions::default().ring_capacity(64 * KIB as u64),
        )?;
        let mut peer = Peer::spawn(&config.launcher, "idle-agent", &[name.as_str().to_string()])?;
        peer.expect("ready")?;
        let child_pid = peer.id();
        let mut buf = Vec::new();
        let (killed_at, outcome, returned_at) = std::thread::scope(|scope| {
            let child = &mut peer;
            let killer = scope.spawn(move || {
                // Long enough for the receiver to be past its spin phase and asleep, plus a
                // jitter that spreads the kill over the receiver's 10 ms sleep slice (a fixed
                // delay would always land at the same point of the slice and bias the figure).
                let jitter = Duration::from_micros((repeat as u64 * 7_919) % 10_000);
                std::thread::sleep(Duration::from_millis(100) + jitter);
                let at = Instant::now();
                let killed = child.kill();
                (at, killed)
            });
            let outcome = link.receiver().pop_into(&mut buf, Some(deadline()));
            let returned_at = Instant::now();
            let (killed_at, killed) = killer.join().map_err(|_| "killer thread panicked")?;
            killed?;
            Ok::<_, shmex_cli::harness::Error>((killed_at, outcome, returned_at))
        })?;
        match outcome {
            Err(RecvError::PeerLost(PeerLost::Dead { pid })) if pid == child_pid => {}
            other => {
                return Err(format!(
                    "detection: expected PeerLost::Dead {{ pid: {child_pid} }}, got {other:?}"
                )
                .into())
            }
        }
        let took = returned_at.saturating_duration_since(killed_at);
        eprintln!("  repeat {repeat}: {:.2} ms", took.as_secs_f64() * 1e3);
        times.push(took);
        drop(link);
    }
    times.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    report.add(
        "shmex",
        "-",
        "detect_median_ms",
        ms(percentile(&times, 50.0)),
        "ms",
    );
    report.add(
        "shmex",
        "-",
        "detect_max_ms",
        ms(*times.last().ok_or("no repeats")?),
        "ms",
    );
    report.notes.push(
        "detection: parent blocked in receiver().pop_into (default WaitStrategy), child SIGKILLed; \
         time from kill() to PeerLost::Dead"
            .to_string(),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Child side
// ---------------------------------------------------------------------------------------

fn child_main(args: &[String]) -> Res<()> {
    let (mode, cpu, rest) = match args {
        [mode, cpu, rest @ ..] => (mode.as_str(), cpu.as_str(), rest),
        _ => return Err("usage: --child <mode> <cpu|-> <args..>".into()),
    };
    shmex_cli::harness::child_prologue(cpu)?;
    if let Some(outcome) = shmex_cli::harness::run_child(mode, rest) {
        return outcome;
    }
    let arg = |i: usize| {
        rest.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("{mode}: missing argument {i}"))
    };
    match mode {
        "uds-echo" => child_uds_echo(arg(0)?),
        "shmex-echo" => child_shmex_echo(arg(0)?, Duration::from_nanos(arg(1)?.parse()?)),
        "futex-echo" => child_futex_echo(arg(0)?),
        "spin-echo" => child_spin_echo(arg(0)?),
        "idle-agent" => child_idle_agent(arg(0)?),
        "model-sink" => child_model_sink(arg(0)?, arg(1)?.parse()?, arg(2)?.parse()?, arg(3)?),
        "loan-echo" => child_loan_echo(arg(0)?),
        "task-echo" => child_task_echo(arg(0)?, Duration::from_nanos(arg(1)?.parse()?)),
        "protocol-agent" => child_protocol_agent(arg(0)?, Duration::from_nanos(arg(1)?.parse()?)),
        "zero-copy-agent" => child_zero_copy_agent(arg(0)?),
        "demo-exchanger" => child_demo_exchanger(arg(0)?.parse()?, arg(1)?.parse()?, arg(2)?),
        other => Err(format!("unknown child mode {other:?}").into()),
    }
}

fn child_uds_echo(path: &str) -> Res<()> {
    let mut socket = uds_child_connect(path)?;
    let mut ping = [0u8; 8];
    loop {
        match socket.read_exact(&mut ping) {
            Ok(()) => socket.write_all(&ping)?,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

fn child_shmex_echo(name: &str, spin: Duration) -> Res<()> {
    let wait = WaitStrategy::default().spin(spin);
    let mut link = child_attach(name, wait)?;
    let mut ping = Vec::with_capacity(64);
    loop {
        link.receiver().pop_into(&mut ping, Some(deadline()))?;
        if ping.as_slice() == QUIT {
            return Ok(());
        }
        link.sender().push(&ping, Some(deadline()))?;
    }
}

fn child_model_sink(name: &str, total: usize, count: usize, variant: &str) -> Res<()> {
    let copy_out = match variant {
        "copy" => true,
        "view" => false,
        other => return Err(format!("model-sink: unknown variant {other:?}").into()),
    };
    let layout = model_layout(total, count)?;
    // The caller's buffer, room for the model and its headers, pre-faulted so that no page
    // fault lands in a timed transfer.
    let mut buffer = AlignedBuf::zeroed(if copy_out { total + MIB } else { 0 })?;
    for page in buffer.as_mut_slice().chunks_mut(PAGE) {
        page[0] = 1;
    }
    let mut link = child_attach(name, WaitStrategy::default())?;
    let mut receiver = FrameReceiver::default();
    loop {
        let (producer, consumer) = link.split();
        let message = if copy_out {
            receiver.recv_into(consumer, Some(deadline()), buffer.as_mut_slice())?
        } else {
            receiver.recv(consumer, Some(deadline()))?
        };
        match message.kind() {
            MessageKind::Bye => return Ok(()),
            MessageKind::Task => {}
            other => return Err(format!("model-sink: unexpected {other} message").into()),
        }
        if message.tensor_count() != layout.len() {
            return Err(format!(
                "model-sink: {} tensors, expected {}",
                message.tensor_count(),
                layout.len()
            )
            .into());
        }
        let mut firsts = 0f32;
        for tensor in message.tensors() {
            firsts += tensor.as_slice::<f32>()?.first().copied().unwrap_or(0.0);
        }
        std::hint::black_box(firsts);
        if message.task_name() == MODEL_VERIFY {
            let round = message.meta().get("current_round").and_then(|v| v.as_i64());
            let digest = model_digest(
                round,
                message.tensors().map(|t| (t.name(), t.shape(), t.bytes())),
            );
            drop(message);
            producer.push(&digest.to_le_bytes(), Some(deadline()))?;
        } else {
            drop(message);
            producer.push(&[ACK], Some(deadline()))?;
        }
    }
}

fn child_loan_echo(name: &str) -> Res<()> {
    let wait = WaitStrategy::default().spin(ACTIVE_SPIN);
    let mut link = child_attach(name, wait)?;
    let mut sender = FrameSender::new();
    let mut receiver = FrameReceiver::default();
    let envelope = Envelope::new(MessageKind::Data);
    // Answer specs by tensor length, built and laid out on first sight (during the warm-up).
    let mut specs: Vec<(usize, LoanSpec, PreparedLoan)> = Vec::new();
    loop {
        // One clock read per message: the answer's deadline is the request's.
        let give_up = Some(deadline());
        let (producer, consumer) = link.split();
        let message = receiver.recv(consumer, give_up)?;
        if message.kind() == MessageKind::Bye {
            return Ok(());
        }
        if !message.is_in_ring() {
            return Err("loan-echo: a loaned message was not received in place".into());
        }
        let first = first_element(&message)?;
        let len = message.tensor(0).map_or(0, |t| t.len());
        let checksum = (message.task_name() == VERIFY_TASK)
            .then(|| message.tensor(0).map(|t| pattern::checksum(t.bytes())))
            .flatten();
        message.release();
        let index = match specs.iter().position(|(l, _, _)| *l == len) {
            Some(index) => index,
            None => {
                let spec = LoanSpec::new(DataKind::Weights).tensor(
                    "weights",
                    shmex::frame::DType::F32,
                    &[len as u64],
                );
                let prepared = FrameSender::prepare(&envelope, &spec)?;
                specs.push((len, spec, prepared));
                specs.len() - 1
            }
        };
        let mut loan = match checksum {
            Some(sum) => {
                let spec = specs[index].1.clone().meta("checksum", sum);
                sender.loan(producer, &envelope, &spec, give_up)?
            }
            None => sender.loan_prepared(producer, &specs[index].2, give_up)?,
        };
        loan.tensor_mut::<f32>(0)?[0] = first;
        loan.commit();
    }
}

fn child_task_echo(name: &str, spin: Duration) -> Res<()> {
    let wait = WaitStrategy::default().spin(spin);
    let mut link = child_attach(name, wait)?;
    let mut sender = FrameSender::new();
    let mut receiver = FrameReceiver::default();
    loop {
        let give_up = Some(deadline());
        let (producer, consumer) = link.split();
        let task = receiver.recv(consumer, give_up)?;
        match task.kind() {
            MessageKind::Bye => return Ok(()),
            MessageKind::Task => {}
            other => return Err(format!("task-echo: unexpected {other} message").into()),
        }
        let tensor = task.tensor(0).ok_or("task-echo: task has no tensor")?;
        let result = Dxo::new(DataKind::WeightDiff).with_tensor(
            tensor.name(),
            tensor.shape(),
            tensor.as_slice::<f32>()?,
        )?;
        let envelope =
            Envelope::new(MessageKind::Result).with_task(task.task_id(), task.task_name());
        sender.send(producer, &envelope, Some(&result), give_up)?;
        drop(result);
        task.release();
    }
}

fn child_futex_echo(fd: &str) -> Res<()> {
    let page = SharedPage::open(fd)?;
    let (ping, pong) = (page.u32_at(FUTEX_PING), page.u32_at(FUTEX_PONG));
    // The word before the first ping, read before `ready`: the parent pings only after it,
    // so reading it later could take the first ping for the starting value and wait for a
    // second one while the parent waits for its answer (both sides stuck; it happened on a
    // loaded machine, where the child can lose its CPU right after printing).
    let mut last = ping.load(Ordering::Acquire);
    println!("ready");
    loop {
        let mut wait = PeerWait::new("futex-echo: no ping from the parent");
        let seen = loop {
            let seen = ping.load(Ordering::Acquire);
            if seen != last {
                break seen;
            }
            sys::futex_wait(ping, last, Some(Duration::from_secs(1)));
            wait.check()?;
        };
        if seen == u32::MAX {
            return Ok(());
        }
        last = seen;
        pong.store(seen, Ordering::Release);
        sys::futex_wake(pong);
    }
}

fn child_spin_echo(fd: &str) -> Res<()> {
    let page = SharedPage::open(fd)?;
    let (ping, pong) = (page.u64_at(SPIN_PING), page.u64_at(SPIN_PONG));
    // The word before the first ping, read before `ready`: the parent pings only after it,
    // so reading it later could take the first ping for the starting value and wait for a
    // second one while the parent waits for its answer (both sides stuck; it happened on a
    // loaded machine, where the child can lose its CPU right after printing).
    let mut last = ping.load(Ordering::Acquire);
    println!("ready");
    loop {
        let mut wait = PeerWait::new("spin-echo: no ping from the parent");
        let seen = loop {
            let seen = ping.load(Ordering::Acquire);
            if seen != last {
                break seen;
            }
            wait.idle()?;
        };
        if seen == u64::MAX {
            return Ok(());
        }
        last = seen;
        pong.store(seen, Ordering::Release);
    }
}

fn child_idle_agent(name: &str) -> Res<()> {
    let mut link = child_attach(name, WaitStrategy::default())?;
    // Blocks until the parent kills us; if it never does, give up and exit by ourselves.
    let mut buf = Vec::new();
    match link.receiver().pop_into(&mut buf, Some(deadline())) {
        Ok(()) => Err("idle-agent: unexpected record".into()),
        Err(e) => Err(format!(
            "idle-agent: not killed within {} s ({e}); {}",
            PEER_TIMEOUT.as_secs(),
            shmex_test_support::load::describe()
        )
        .into()),
    }
}

// ---------------------------------------------------------------------------------------
// Process and socket plumbing
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

fn unique_name(tag: &str) -> Res<SegmentName> {
    shmex_cli::harness::unique_name("compare", tag)
}

// ---------------------------------------------------------------------------------------
// Task protocol (`shmex::protocol`): Exchanger::execute -> Agent -> result
// ---------------------------------------------------------------------------------------

/// Measures the protocol's small-task round trip (spin and futex) and the round trip of a
/// model of the largest size, against two memcpys of that size in the same run.
fn bench_protocol(config: &Config, report: &mut Report) -> Res<()> {
    bench_protocol_tasks(config, report)?;
    bench_protocol_model(config, report)?;
    bench_protocol_zero_copy(config, report)?;
    report.notes.push(format!(
        "protocol: protocol-task-* = Exchanger::execute of a 4 KiB f32 task answered by an Agent \
         child with a 4 KiB result (ring waits spin {ACTIVE_SPIN:?} or 0; each side hands off \
         between its caller and its pump thread); protocol-model = execute of a {}-tensor model \
         of the largest size answered by a result of the same size (the agent sends it from its \
         received task), median of {} rounds after a verified one, against two memcpys of the \
         same size into a pre-faulted buffer timed alternately",
        config.model_tensors,
        protocol_rounds(config)
    ));
    Ok(())
}

/// The protocol's 4 KiB task round trips, spinning and on the futex path.
fn bench_protocol_tasks(config: &Config, report: &mut Report) -> Res<()> {
    eprintln!("task protocol (Exchanger::execute -> Agent::get_task/submit_result):");
    for (transport, spin) in [
        ("protocol-task-spin", ACTIVE_SPIN),
        ("protocol-task-futex", Duration::ZERO),
    ] {
        measure_round_trips(
            config,
            vec![ProtocolPingPong::start(config, transport, spin)?],
            report,
        )?;
    }
    Ok(())
}

/// `--tasks`: only what the small-task ratios need, in the full run's order: the raw futex
/// ping-pong and the futex-path frame echo taking turns, the spinning frame echo alone, then
/// the protocol's task round trips.
fn bench_task_round_trips(config: &Config, report: &mut Report) -> Res<()> {
    eprintln!(
        "4 KiB task round trips ({} after {} warm-up):",
        config.round_trips, config.warmup_round_trips
    );
    let sleeping = vec![
        FutexPingPong::start(config)?,
        TaskPingPong::start(config, "shmex-task-futex", Duration::ZERO)?,
    ];
    measure_round_trips(config, sleeping, report)?;
    let task_spin = TaskPingPong::start(config, "shmex-task-spin", ACTIVE_SPIN)?;
    measure_round_trips(config, vec![task_spin], report)?;
    bench_protocol_tasks(config, report)?;
    report.notes.push(format!(
        "--tasks: only the 4 KiB task round trips: {} per transport after a warm-up of at least \
         {:?} and {} round trips; futex-raw and shmex-task-futex in alternating batches of \
         {ROUND_TRIP_BATCH}; shmex-task-* = the raw task frame echo (FrameSender/FrameReceiver), \
         protocol-task-* = Exchanger::execute answered by an Agent child; spin = WaitStrategy \
         spin {ACTIVE_SPIN:?} on both sides, futex = spin 0",
        config.round_trips, config.warmup, config.warmup_round_trips
    ));
    Ok(())
}

/// Timed rounds of the protocol model round trip.
fn protocol_rounds(config: &Config) -> usize {
    if config.quick {
        2
    } else {
        5
    }
}

/// An exchanger on a new name whose waits spin for `spin`, and a `protocol-agent` child
/// attached to it.
fn protocol_session(
    config: &Config,
    transport: &str,
    spin: Duration,
    ring: u64,
) -> Res<(Exchanger, Peer)> {
    let name = unique_name(transport)?;
    let exchanger_config = ExchangerConfig::default()
        .wait(WaitStrategy::default().spin(spin))
        .task_ring_capacity(ring)
        .result_ring_capacity(ring);
    let exchanger = Exchanger::create(&name, exchanger_config)?;
    let mut peer = Peer::spawn(
        &config.launcher,
        "protocol-agent",
        &[name.as_str().to_string(), spin.as_nanos().to_string()],
    )?;
    peer.expect("ready")?;
    Ok((exchanger, peer))
}

/// A 4 KiB task through the protocol, answered with a 4 KiB result.
struct ProtocolPingPong {
    transport: &'static str,
    exchanger: Exchanger,
    peer: Peer,
    payload: Vec<f32>,
    seq: u32,
}

impl ProtocolPingPong {
    fn start(config: &Config, transport: &'static str, spin: Duration) -> Res<Box<dyn PingPong>> {
        let (exchanger, peer) = protocol_session(config, transport, spin, MIB as u64)?;
        let mut payload = vec![0f32; TASK_ELEMENTS];
        pattern::fill(payload.as_mut_bytes(), 0x9a70);
        Ok(Box::new(ProtocolPingPong {
            transport,
            exchanger,
            peer,
            payload,
            seq: 0,
        }))
    }
}

impl PingPong for ProtocolPingPong {
    fn transport(&self) -> &'static str {
        self.transport
    }

    fn size(&self) -> &'static str {
        "4KiB"
    }

    fn round_trip(&mut self) -> Res<Duration> {
        self.seq = self.seq.wrapping_add(1);
        let token = self.seq;
        self.payload[0] = f32::from_bits(token);
        let dxo = Dxo::new(DataKind::Weights).with_tensor(
            "weights",
            &[TASK_ELEMENTS as u64],
            &self.payload,
        )?;
        let headers = Headers::new(format!("task-{token}"));
        let abort = AbortSignal::new();
        let start = Instant::now();
        let reply = self.exchanger.execute("train", &dxo, &headers, &abort);
        let elapsed = start.elapsed();
        let result = reply
            .result
            .ok_or_else(|| format!("{}: reply {}", self.transport, reply.rc))?;
        let first = result
            .tensor_by_name("weights")
            .ok_or("protocol: result has no tensor")?
            .as_slice::<f32>()?[0];
        if first.to_bits() != token {
            return Err(format!("{}: result for another task", self.transport).into());
        }
        Ok(elapsed)
    }

    fn stop(mut self: Box<Self>) -> Res<()> {
        self.exchanger.close()?;
        self.peer.finish()
    }
}

/// The model of the largest size through the protocol and back, against two memcpys.
fn bench_protocol_model(config: &Config, report: &mut Report) -> Res<()> {
    let total = *config.sizes.iter().max().ok_or("no sizes")?;
    let label = size_label(total);
    let layout = model_layout(total, config.model_tensors)?;
    let mut source = vec![0f32; total / 4];
    pattern::fill(source.as_mut_bytes(), 0x90de1);
    let dxo = layout
        .iter()
        .try_fold(Dxo::new(DataKind::Weights), |dxo, t| {
            dxo.with_tensor(t.name.as_str(), &t.shape, &source[t.elements.clone()])
        })?;
    let sent_digest = model_digest(
        None,
        dxo.tensors()
            .iter()
            .map(|t| (t.name(), t.shape(), t.bytes())),
    );
    let (exchanger, mut peer) = protocol_session(
        config,
        "protocol-model",
        WaitStrategy::DEFAULT_SPIN,
        SHMEX_RING as u64,
    )?;
    let execute = |id: String| {
        let reply = exchanger.execute("train", &dxo, &Headers::new(id), &AbortSignal::new());
        match reply.result {
            Some(result) => Ok(result),
            None => Err(format!("protocol-model: reply {}", reply.rc)),
        }
    };
    // Untimed: the result must carry the model back intact (and pages get faulted in).
    let result = execute("verify".into())?;
    let got = model_digest(
        None,
        result.tensors().map(|t| (t.name(), t.shape(), t.bytes())),
    );
    drop(result);
    if got != sent_digest {
        return Err("protocol-model: the result differs from the task".into());
    }
    let mut destination = vec![1u8; total];
    let bytes = source.as_bytes();
    let (mut protocol, mut memcpy) = (Vec::new(), Vec::new());
    for round in 0..protocol_rounds(config) {
        let start = Instant::now();
        let result = execute(format!("round-{round}"))?;
        protocol.push(start.elapsed());
        drop(result);
        let start = Instant::now();
        for _ in 0..2 {
            destination.copy_from_slice(std::hint::black_box(bytes));
            std::hint::black_box(&mut destination);
        }
        memcpy.push(start.elapsed());
    }
    protocol.sort_unstable();
    memcpy.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    report.add(
        "protocol-model",
        &label,
        "round_trip_ms",
        ms(percentile(&protocol, 50.0)),
        "ms",
    );
    report.add(
        "memcpy-x2",
        &label,
        "time_ms",
        ms(percentile(&memcpy, 50.0)),
        "ms",
    );
    exchanger.close()?;
    peer.finish()
}

/// Rounds of the zero-copy model exchange (each is a hand-off, not a copy: cheap).
fn zero_copy_rounds(config: &Config) -> usize {
    if config.quick {
        10
    } else {
        30
    }
}

/// `protocol-model-zero-copy`: the model of the largest size sent as a task loan and read in
/// place by the agent (`receive_in_place`), answered by a result loan of the same layout read
/// in place by the exchanger; rings just large enough for one model each. Two untimed rounds
/// verify the data both ways (the agent copies the task into its result; both halves of the
/// ring's positions are used); the timed rounds fill nothing (the task is filled before the
/// clock starts in real use, and the agent's work is its own): the time from
/// `TaskLoan::execute` to the reply is the hand-off of the loan to a view, both ways.
fn bench_protocol_zero_copy(config: &Config, report: &mut Report) -> Res<()> {
    const TRANSPORT: &str = "protocol-model-zero-copy";
    let total = *config.sizes.iter().max().ok_or("no sizes")?;
    let label = size_label(total);
    let layout = model_layout(total, config.model_tensors)?;
    let spec = layout
        .iter()
        .fold(LoanSpec::new(DataKind::Weights), |spec, t| {
            spec.tensor(t.name.as_str(), shmex::frame::DType::F32, &t.shape)
        });
    // The record (tensor bytes, plus room for headers, table and alignment) and the room kept
    // free behind it.
    let ring =
        (total + total / 128 + MIB + IN_PLACE_KEEP_FREE as usize).next_multiple_of(PAGE) as u64;
    eprintln!(
        "zero-copy model ({label}, rings of {} MiB, loan -> in-place view both ways):",
        ring >> 20
    );
    let name = unique_name(TRANSPORT)?;
    let exchanger_config = ExchangerConfig::default()
        .task_ring_capacity(ring)
        .result_ring_capacity(ring)
        .receive_in_place(true);
    let exchanger = Exchanger::create(&name, exchanger_config)?;
    let mut peer = Peer::spawn(
        &config.launcher,
        "zero-copy-agent",
        &[name.as_str().to_string()],
    )?;
    peer.expect("ready")?;
    let round = |task_name: &str, id: String, seed: Option<u64>| -> Res<(Duration, u64)> {
        let mut loan = exchanger.loan_task(task_name, &spec, &Headers::new(id), None)?;
        let mut sent = 0;
        if let Some(seed) = seed {
            for index in 0..loan.tensor_count() {
                pattern::fill(loan.tensor_bytes_mut(index)?, seed + index as u64);
            }
            sent = loan_digest(&mut loan, &layout)?;
        }
        let start = Instant::now();
        let reply = loan.execute(None);
        let elapsed = start.elapsed();
        let result = reply
            .result
            .ok_or_else(|| format!("{TRANSPORT}: reply {}", reply.rc))?;
        if !result.is_in_ring() {
            return Err(format!("{TRANSPORT}: the result was copied out of the ring").into());
        }
        if seed.is_some() {
            let got = model_digest(
                None,
                result.tensors().map(|t| (t.name(), t.shape(), t.bytes())),
            );
            if got != sent {
                return Err(format!("{TRANSPORT}: the result differs from the task").into());
            }
        }
        Ok((elapsed, sent))
    };
    for verify in 0..2 {
        round(
            MODEL_VERIFY,
            format!("verify-{verify}"),
            Some(0x2e40 + verify),
        )?;
    }
    let mut times = Vec::new();
    for i in 0..zero_copy_rounds(config) {
        times.push(round(MODEL_TIMED, format!("round-{i}"), None)?.0);
    }
    times.sort_unstable();
    report.add(
        TRANSPORT,
        &label,
        "round_trip_ms",
        percentile(&times, 50.0).as_secs_f64() * 1e3,
        "ms",
    );
    report.notes.push(format!(
        "zero-copy: {TRANSPORT} = a {label} task built by Exchanger::loan_task, read in place by \
         the agent (receive_in_place), answered by an Agent::loan_result of the same layout read \
         in place by the exchanger; task and result rings of {} MiB each; median of {} rounds \
         from TaskLoan::execute to the reply (fills outside the clock), after 2 rounds that \
         verify the data both ways",
        ring >> 20,
        zero_copy_rounds(config)
    ));
    exchanger.close()?;
    peer.finish()
}

/// The digest [`model_digest`] gives for a task loan of `layout`, filled.
fn loan_digest(loan: &mut shmex::protocol::TaskLoan, layout: &[ModelTensor]) -> Res<u64> {
    let mut checksums = Vec::with_capacity(layout.len());
    for index in 0..layout.len() {
        checksums.push(pattern::checksum(loan.tensor_bytes_mut(index)?));
    }
    Ok(digest_of_checksums(
        None,
        layout
            .iter()
            .zip(checksums)
            .map(|(t, checksum)| (t.name.as_str(), t.shape.as_slice(), checksum)),
    ))
}

/// An `Agent` that reads each task in place (`receive_in_place`) and answers it with a result
/// loan of the task's layout: a copy of the task for `MODEL_VERIFY` tasks, unfilled otherwise.
fn child_zero_copy_agent(name: &str) -> Res<()> {
    let config = AgentConfig::default()
        .attach_timeout(PEER_TIMEOUT)
        .receive_in_place(true);
    let agent = Agent::attach(&SegmentName::new(name)?, config)?;
    println!("ready");
    loop {
        let Some(task) = next_task(&agent, "zero-copy-agent")? else {
            return Ok(());
        };
        if !task.message.is_in_ring() {
            return Err("zero-copy-agent: the task was copied out of the ring".into());
        }
        let spec = task
            .message
            .tensors()
            .fold(LoanSpec::new(DataKind::WeightDiff), |spec, t| {
                spec.tensor(t.name(), t.dtype(), t.shape())
            });
        let mut loan = agent.loan_result(&spec)?;
        if task.name == MODEL_VERIFY {
            for (index, tensor) in task.message.tensors().enumerate() {
                loan.tensor_bytes_mut(index)?
                    .copy_from_slice(tensor.bytes());
            }
        }
        // Released before the answer, so that the next task finds the ring free.
        drop(task);
        if !loan.commit(shmex::frame::ReturnCode::Ok)? {
            return Err("zero-copy-agent: result refused".into());
        }
    }
}

/// An `Agent` answering every task with a WEIGHT_DIFF result of the task's own tensors (sent
/// from the received task, no copy first) until the exchanger says `bye`.
fn child_protocol_agent(name: &str, spin: Duration) -> Res<()> {
    let config = AgentConfig::default()
        .attach_timeout(PEER_TIMEOUT)
        .wait(WaitStrategy::default().spin(spin));
    let agent = Agent::attach(&SegmentName::new(name)?, config)?;
    println!("ready");
    loop {
        let Some(task) = next_task(&agent, "protocol-agent")? else {
            return Ok(());
        };
        let result = task.message.tensors_dxo(DataKind::WeightDiff)?;
        if !agent.submit_result(&result, shmex::frame::ReturnCode::Ok)? {
            return Err(format!("protocol-agent: result of {} refused", task.id).into());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The demo's first round against its later ones
// ---------------------------------------------------------------------------------------

/// The demo runs measured: told the model size up front (as `shmex demo`), and not.
const DEMO_TRANSPORTS: [&str; 2] = ["demo", "demo-no-reserve"];
/// Rounds per demo run (the first, and the second it is compared with, and one more).
const DEMO_ROUNDS: u32 = 3;

/// `demo-round1/round2`: each demo run in a fresh `demo-exchanger` child (which starts its
/// own fresh agent), so that neither side has memory left over from other figures.
fn bench_demo_rounds(config: &Config, report: &mut Report) -> Res<()> {
    let total = *config.sizes.iter().max().ok_or("no sizes")?;
    let label = size_label(total);
    eprintln!("demo rounds ({label} model, fresh exchanger and agent processes):");
    // Not pinned, as the demo is not: the child widens the affinity it inherits.
    let launcher = Launcher::current_exe(&["--child"], None)?;
    for transport in DEMO_TRANSPORTS {
        let mut peer = Peer::spawn(
            &launcher,
            "demo-exchanger",
            &[
                total.to_string(),
                config.model_tensors.to_string(),
                transport.to_string(),
            ],
        )?;
        let line = peer.next_line(shmex_cli::model::ROUND_TIMEOUT * (DEMO_ROUNDS + 1))?;
        peer.finish()?;
        let rounds: Vec<f64> = line
            .strip_prefix("ROUNDS ")
            .ok_or_else(|| format!("demo-exchanger: unexpected line {line:?}"))?
            .split(' ')
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let [first, second, ..] = rounds.as_slice() else {
            return Err(format!("demo-exchanger: too few rounds in {line:?}").into());
        };
        eprintln!("  {transport}: rounds {rounds:.1?} ms");
        report.add(transport, &label, "round1_ms", *first, "ms");
        report.add(transport, &label, "round2_ms", *second, "ms");
    }
    report.notes.push(format!(
        "demo rounds: shmex demo's exchange of a {label} model of {} tensors (16 MiB rings, \
         task and result verified), {DEMO_ROUNDS} rounds on a freshly created exchanger in a \
         fresh process with a fresh agent process, not pinned; demo = both sides given \
         expected_message_len (the model size) as shmex demo does, demo-no-reserve = not \
         (shmex demo --no-reserve); round1/round2 = the first round's time over the second's",
        config.model_tensors
    ));
    Ok(())
}

/// A fresh exchanger running the demo's rounds with a fresh `demo-agent` child; prints
/// `ROUNDS <ms> <ms> ...`.
fn child_demo_exchanger(size: usize, tensors: usize, transport: &str) -> Res<()> {
    use shmex_cli::model::{exchange_round, expected_arg, Model, ROUND_TIMEOUT};
    // Inherited from the pinned parent; the demo runs on every CPU.
    let mut every_cpu = rustix::thread::CpuSet::new();
    for cpu in 0..rustix::thread::CpuSet::MAX_CPU {
        every_cpu.set(cpu);
    }
    rustix::thread::sched_setaffinity(None, &every_cpu)?;
    let expected = match transport {
        "demo" => Some(size as u64),
        "demo-no-reserve" => None,
        other => return Err(format!("demo-exchanger: unknown variant {other:?}").into()),
    };
    let name = unique_name(transport)?;
    let exchanger = Exchanger::create(
        &name,
        ExchangerConfig::default().expected_message_len(expected),
    )?;
    let launcher = Launcher::current_exe(&["--child"], None)?;
    let mut agent = Peer::spawn(
        &launcher,
        "demo-agent",
        &[name.as_str().to_string(), expected_arg(expected)],
    )?;
    let model = Model::new(size, tensors);
    let checksum = model.checksum();
    agent.expect("ready")?;
    let mut rounds = Vec::new();
    for round in 1..=DEMO_ROUNDS {
        let outcome = exchange_round(&exchanger, &model, checksum, round, DEMO_ROUNDS)?;
        let agent_line = agent.next_line(ROUND_TIMEOUT)?;
        if !outcome.result_verified || agent_line != format!("CHECKSUM {checksum:016x}") {
            return Err(format!("demo-exchanger: round {round} not verified").into());
        }
        rounds.push(format!("{:.3}", outcome.elapsed.as_secs_f64() * 1e3));
    }
    exchanger.close()?;
    agent.finish()?;
    drop(exchanger);
    println!("ROUNDS {}", rounds.join(" "));
    Ok(())
}
