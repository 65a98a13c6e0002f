//! Criterion benchmarks of the shmex ring and link.
//!
//! - `throughput/<size>`: a message of 4 KiB … 1 GiB streamed through a link to a second
//!   process (`send_stream` → `recv_stream_to_slice`), timed until the peer's 1-byte
//!   acknowledgement arrives;
//! - `rtt_8B/{spin,futex}`: an 8-byte ping-pong with a second process, both sides busy-polling
//!   (`spin`) or both sleeping on the futex (`futex`);
//! - `in_process/*`: push/pop and grant round trips through `Link::in_process` on one thread —
//!   the pure ring overhead, no second process.
//!
//! The second process is this bench binary re-run with `SHMEX_BENCH_CHILD=<mode>` in its
//! environment (checked before criterion parses any argument); it is spawned lazily, once per
//! benchmark, so a filtered-out benchmark starts nothing. Comparisons with other transports
//! live in `examples/compare.rs`.
//!
//! `cargo bench --bench ring -- --test` runs every benchmark once (a smoke test for CI).

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use shmex::link::{AttachOptions, CreateOptions, Link};
use shmex::segment::SegmentName;
use shmex::signal::WaitStrategy;
use shmex::stream;
use shmex_test_support::pattern;

/// Environment variable that turns this binary into a benchmark peer.
const CHILD_ENV: &str = "SHMEX_BENCH_CHILD";
/// Environment variable naming the CPU the peer pins itself to.
const CHILD_CPU_ENV: &str = "SHMEX_BENCH_CHILD_CPU";
/// The CPU peers are pinned to (unset on a one-CPU machine).
static PEER_CPU: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
/// Ring capacity of the two-process throughput links: the library default (the same ring as
/// the headline `shmex` figure of `examples/compare.rs`; DESIGN.md §6 allows up to 64 MiB).
const RING_CAPACITY: u64 = shmex::link::DEFAULT_RING_CAPACITY;
/// How long any wait for the peer may take before the benchmark is declared broken.
const PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// The "active" wait strategy's spin: far longer than any gap between benchmark messages.
const ACTIVE_SPIN: Duration = Duration::from_secs(10);
/// The byte a finished transfer is acknowledged with.
const ACK: u8 = 0xA5;
/// The record that tells an echo peer to stop (real pings are 8 bytes).
const QUIT: &[u8] = b"q";

fn main() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        if let Some(cpu) = std::env::var(CHILD_CPU_ENV)
            .ok()
            .and_then(|c| c.parse().ok())
        {
            pin_to_cpu(cpu);
        }
        let args: Vec<String> = std::env::args().skip(1).collect();
        match child_main(&mode, &args) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("ring bench peer {mode}: error: {e}");
                std::process::exit(1);
            }
        }
    }
    // Two pinned processes (STYLE.md): this one on the first allowed CPU, peers on the second.
    if let Some((parent, child)) = pick_cpus() {
        pin_to_cpu(parent);
        let _ = PEER_CPU.set(child);
    }
    let mut criterion = Criterion::default().configure_from_args();
    throughput(&mut criterion);
    latency(&mut criterion);
    in_process(&mut criterion);
    criterion.final_summary();
}

type Error = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Error>;

/// The first two CPUs this process may run on, if there are two.
fn pick_cpus() -> Option<(usize, usize)> {
    let set = rustix::thread::sched_getaffinity(None).ok()?;
    let mut allowed = (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c));
    Some((allowed.next()?, allowed.next()?))
}

/// Pins the calling thread (and the threads it starts later) to `cpu`; best effort.
fn pin_to_cpu(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("ring bench: cannot pin to CPU {cpu}: {e}");
    }
}

fn size_label(len: usize) -> String {
    match len {
        l if l >= 1 << 30 => format!("{}GiB", l >> 30),
        l if l >= 1 << 20 => format!("{}MiB", l >> 20),
        l if l >= 1 << 10 => format!("{}KiB", l >> 10),
        l => format!("{l}B"),
    }
}

fn deadline() -> Option<Instant> {
    Some(Instant::now() + PEER_TIMEOUT)
}

fn unique_name(tag: &str) -> Res<SegmentName> {
    Ok(SegmentName::new(format!(
        "shmex.bench.{}.{tag}",
        std::process::id()
    ))?)
}

// ----- two-process throughput -------------------------------------------------------------

/// The exchanger end of a link whose agent is a sink process.
struct SinkSession {
    link: Link,
    peer: Peer,
    source: Vec<u8>,
    chunk: usize,
    ack: Vec<u8>,
}

impl SinkSession {
    fn start(len: usize) -> Res<SinkSession> {
        let mut source = vec![0u8; len];
        pattern::fill(&mut source, len as u64);
        let name = unique_name(&format!("sink{len}"))?;
        let mut link = Link::create(
            &name,
            &CreateOptions::default().ring_capacity(RING_CAPACITY),
        )?;
        let peer = Peer::spawn("sink", &[name.as_str().to_string(), len.to_string()])?;
        peer.expect("ready")?;
        let chunk = stream::default_chunk(link.sender().capacity());
        let mut session = SinkSession {
            link,
            peer,
            source,
            chunk,
            ack: Vec::with_capacity(16),
        };
        // Prove once, outside any timed region, that the bytes arrive intact.
        session.transfer(true)?;
        let sum = <[u8; 8]>::try_from(session.ack.as_slice())
            .map_err(|_| "checksum record is not 8 bytes")?;
        if u64::from_le_bytes(sum) != pattern::checksum(&session.source) {
            return Err(
                format!("{}: the peer's checksum differs from ours", size_label(len)).into(),
            );
        }
        Ok(session)
    }

    /// Sends the announcing header (untimed), then the message; returns the time from the
    /// start of the send to the acknowledgement.
    fn transfer(&mut self, verify: bool) -> Res<Duration> {
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&(self.source.len() as u64).to_le_bytes());
        header[8] = u8::from(verify);
        self.link.sender().push(&header, deadline())?;
        let start = Instant::now();
        let give_up = Some(start + PEER_TIMEOUT);
        stream::send_stream(self.link.sender(), &self.source, self.chunk, give_up)?;
        self.link.receiver().pop_into(&mut self.ack, give_up)?;
        let elapsed = start.elapsed();
        if !verify && self.ack.as_slice() != [ACK] {
            return Err(format!("bad acknowledgement {:?}", self.ack).into());
        }
        Ok(elapsed)
    }

    fn stop(mut self) -> Res<()> {
        self.link.sender().push(&[0u8; 16], deadline())?;
        self.peer.finish()
    }
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("throughput");
    group.warm_up_time(Duration::from_secs(1));
    for len in [4usize << 10, 1 << 20, 64 << 20, 1 << 30] {
        group.throughput(Throughput::Bytes(len as u64));
        if len >= 64 << 20 {
            // Each iteration takes milliseconds to a tenth of a second: the fewest samples
            // criterion allows, one flat batch each.
            group.sample_size(10);
            group.sampling_mode(SamplingMode::Flat);
            group.measurement_time(Duration::from_secs(if len >= 1 << 30 { 4 } else { 3 }));
        } else {
            group.sample_size(50);
            group.sampling_mode(SamplingMode::Auto);
            group.measurement_time(Duration::from_secs(3));
        }
        let mut session: Option<SinkSession> = None;
        group.bench_function(BenchmarkId::from_parameter(size_label(len)), |b| {
            b.iter_custom(|iters| {
                if session.is_none() {
                    session = Some(SinkSession::start(len).unwrap_or_else(|e| {
                        panic!(
                            "throughput {}: starting the sink peer: {e}",
                            size_label(len)
                        )
                    }));
                }
                let Some(s) = session.as_mut() else {
                    unreachable!("session was just started")
                };
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += s
                        .transfer(false)
                        .unwrap_or_else(|e| panic!("throughput {}: {e}", size_label(len)));
                }
                total
            });
        });
        if let Some(s) = session.take() {
            if let Err(e) = s.stop() {
                panic!(
                    "throughput {}: stopping the sink peer: {e}",
                    size_label(len)
                );
            }
        }
    }
    group.finish();
}

// ----- two-process latency ----------------------------------------------------------------

/// The exchanger end of a link whose agent echoes every record back.
struct EchoSession {
    link: Link,
    peer: Peer,
    reply: Vec<u8>,
    seq: u64,
}

impl EchoSession {
    fn start(tag: &str, spin: Duration) -> Res<EchoSession> {
        let name = unique_name(&format!("echo-{tag}"))?;
        let options = CreateOptions::default()
            .ring_capacity(1 << 20)
            .wait(WaitStrategy::default().spin(spin));
        let link = Link::create(&name, &options)?;
        let peer = Peer::spawn(
            "echo",
            &[name.as_str().to_string(), spin.as_nanos().to_string()],
        )?;
        peer.expect("ready")?;
        let mut session = EchoSession {
            link,
            peer,
            reply: Vec::with_capacity(16),
            seq: 0,
        };
        for _ in 0..100 {
            session.round_trip()?;
        }
        Ok(session)
    }

    fn round_trip(&mut self) -> Res<()> {
        self.seq += 1;
        let ping = self.seq.to_le_bytes();
        let give_up = Some(Instant::now() + PEER_TIMEOUT);
        self.link.sender().push(&ping, give_up)?;
        self.link.receiver().pop_into(&mut self.reply, give_up)?;
        if self.reply.as_slice() != ping {
            return Err(format!("echo {:?} for ping {ping:?}", self.reply).into());
        }
        Ok(())
    }

    fn stop(mut self) -> Res<()> {
        self.link.sender().push(QUIT, deadline())?;
        self.peer.finish()
    }
}

fn latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("rtt_8B");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for (tag, spin) in [("spin", ACTIVE_SPIN), ("futex", Duration::ZERO)] {
        let mut session: Option<EchoSession> = None;
        group.bench_function(tag, |b| {
            b.iter_custom(|iters| {
                if session.is_none() {
                    session = Some(
                        EchoSession::start(tag, spin)
                            .unwrap_or_else(|e| panic!("rtt {tag}: starting the echo peer: {e}")),
                    );
                }
                let Some(s) = session.as_mut() else {
                    unreachable!("session was just started")
                };
                let start = Instant::now();
                for _ in 0..iters {
                    s.round_trip().unwrap_or_else(|e| panic!("rtt {tag}: {e}"));
                }
                start.elapsed()
            });
        });
        if let Some(s) = session.take() {
            if let Err(e) = s.stop() {
                panic!("rtt {tag}: stopping the echo peer: {e}");
            }
        }
    }
    group.finish();
}

// ----- in-process ring overhead -----------------------------------------------------------

fn in_process(c: &mut Criterion) {
    let mut group = c.benchmark_group("in_process");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));
    let options = CreateOptions::default().ring_capacity(1 << 20);
    for len in [8usize, 4 << 10] {
        let (mut exchanger, mut agent) =
            Link::in_process(&options).unwrap_or_else(|e| panic!("in-process link: {e}"));
        let mut message = vec![0u8; len];
        pattern::fill(&mut message, 7);
        let mut out = Vec::with_capacity(len);
        // Correctness once, outside the timed loop.
        exchanger
            .sender()
            .try_push(&message)
            .unwrap_or_else(|e| panic!("in-process push: {e}"));
        let popped = agent
            .receiver()
            .try_pop_into(&mut out)
            .unwrap_or_else(|e| panic!("in-process pop: {e}"));
        assert!(popped, "in-process record was not there");
        assert_eq!(out, message, "in-process record came back different");

        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new("push_pop", size_label(len)), |b| {
            b.iter(|| {
                exchanger
                    .sender()
                    .try_push(black_box(&message))
                    .expect("ring has room");
                let popped = agent
                    .receiver()
                    .try_pop_into(&mut out)
                    .expect("ring is sound");
                assert!(popped, "record is there");
                black_box(&out);
            });
        });
        group.bench_function(BenchmarkId::new("grant", size_label(len)), |b| {
            b.iter(|| {
                let mut grant = exchanger.sender().try_reserve(len).expect("ring has room");
                grant.as_mut_slice().copy_from_slice(black_box(&message));
                grant.commit();
                let grant = agent
                    .receiver()
                    .try_peek()
                    .expect("ring is sound")
                    .expect("record is there");
                black_box(grant.as_slice());
                grant.release();
            });
        });
    }
    group.finish();
}

// ----- peer processes ---------------------------------------------------------------------

/// A peer process (this binary with [`CHILD_ENV`] set). Dropping it kills and reaps the
/// child, so a panicking benchmark leaves no process behind.
struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
    mode: String,
    reaped: bool,
}

impl Peer {
    fn spawn(mode: &str, args: &[String]) -> Res<Peer> {
        let mut command = Command::new(std::env::current_exe()?);
        command.env(CHILD_ENV, mode).args(args);
        if let Some(cpu) = PEER_CPU.get() {
            command.env(CHILD_CPU_ENV, cpu.to_string());
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("peer has no stdout")?;
        let lines = shmex_test_support::process::line_channel(stdout);
        Ok(Peer {
            child,
            lines,
            mode: mode.to_string(),
            reaped: false,
        })
    }

    /// Waits (with a timeout) for the peer to print `line`.
    fn expect(&self, line: &str) -> Res<()> {
        match self.lines.recv_timeout(PEER_TIMEOUT) {
            Ok(got) if got == line => Ok(()),
            Ok(got) => Err(format!("peer {}: expected {line:?}, got {got:?}", self.mode).into()),
            Err(_) => {
                Err(format!("peer {}: no {line:?} within {PEER_TIMEOUT:?}", self.mode).into())
            }
        }
    }

    /// Waits (with a timeout) for the peer to exit by itself, successfully.
    fn finish(&mut self) -> Res<()> {
        let give_up = Instant::now() + PEER_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.reaped = true;
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("peer {} failed: {status}", self.mode).into())
                };
            }
            if Instant::now() >= give_up {
                return Err(
                    format!("peer {} did not exit within {PEER_TIMEOUT:?}", self.mode).into(),
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn child_main(mode: &str, args: &[String]) -> Res<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    let arg = |i: usize| {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("{mode}: missing argument {i}"))
    };
    match mode {
        "sink" => child_sink(arg(0)?, arg(1)?.parse()?),
        "echo" => child_echo(arg(0)?, Duration::from_nanos(arg(1)?.parse()?)),
        other => Err(format!("unknown peer mode {other:?}").into()),
    }
}

fn child_attach(name: &str, wait: WaitStrategy) -> Res<Link> {
    let options = AttachOptions::default()
        .attach_timeout(Duration::from_secs(10))
        .wait(wait);
    let link = Link::attach(&SegmentName::new(name.to_string())?, &options)?;
    println!("ready");
    Ok(link)
}

/// Receives announced messages into a pre-faulted buffer and acknowledges each (with its
/// checksum when asked to verify); a zero length ends the session.
fn child_sink(name: &str, max: usize) -> Res<()> {
    let mut buf = vec![0u8; max];
    for i in (0..max).step_by(4096) {
        buf[i] = 1;
    }
    let mut link = child_attach(name, WaitStrategy::default())?;
    let mut header = Vec::with_capacity(16);
    loop {
        link.receiver().pop_into(&mut header, deadline())?;
        let header: [u8; 16] = header.as_slice().try_into().map_err(|_| "bad header")?;
        let len = usize::try_from(u64::from_le_bytes(header[..8].try_into()?))?;
        if len == 0 {
            return Ok(());
        }
        let target = buf.get_mut(..len).ok_or("message longer than announced")?;
        let got = stream::recv_stream_to_slice(link.receiver(), target, deadline())?;
        if got != len {
            return Err(format!("stream of {got} bytes, {len} announced").into());
        }
        if header[8] != 0 {
            link.sender()
                .push(&pattern::checksum(target).to_le_bytes(), deadline())?;
        } else {
            link.sender().push(&[ACK], deadline())?;
        }
    }
}

/// Echoes every record until [`QUIT`].
fn child_echo(name: &str, spin: Duration) -> Res<()> {
    let wait = WaitStrategy::default().spin(spin);
    let mut link = child_attach(name, wait)?;
    let mut ping = Vec::with_capacity(16);
    loop {
        link.receiver().pop_into(&mut ping, deadline())?;
        if ping.as_slice() == QUIT {
            return Ok(());
        }
        link.sender().push(&ping, deadline())?;
    }
}
