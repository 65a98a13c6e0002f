//! Throughput comparison of shmex with the transports it has to beat, shared by
//! `shmex bench` and `examples/compare.rs`.
//!
//! Every two-process transport talks to a second process that is the calling executable
//! re-run in a child mode (see [`shmex_test_support::process`]): the child calls
//! `child_prologue` and then [`run_child`] (or its own modes).
//!
//! Every transport moves the same bytes and is verified once per size with a checksum
//! computed by the receiver before it is timed. The timing loop ([`measure_throughput`])
//! lets the transports take turns, so a slow phase of a shared machine hits all alike and
//! their same-run ratios hold even when absolute figures drift.
//!
//! This is a measuring harness, not part of the transport API: its errors are boxed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout};
use std::time::{Duration, Instant};

use shmex_test_support::pattern;
pub use shmex_test_support::process::{
    child_prologue, deadline, line_channel, pick_cpus, pin_to_cpu, wait_timeout, Error, Launcher,
    Peer, PeerWait, Res, PEER_TIMEOUT,
};

use shmex::frame::{
    DType, DataKind, Envelope, FrameReceiver, FrameSender, LoanSpec, MessageKind, PreparedLoan,
};
use shmex::link::{AttachOptions, CreateOptions, Link};
use shmex::segment::SegmentName;
use shmex::signal::WaitStrategy;
use shmex::stream;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
const PAGE: usize = 4096;

/// Socket buffer size requested for the socket transports (the kernel doubles it).
pub const SOCKET_BUFFER: usize = 4 * MIB;
/// Bytes per `write`/`read` call on sockets and pipes (the kernel splits larger ones anyway).
pub const SOCKET_IO_CHUNK: usize = MIB;
/// The byte a finished transfer is acknowledged with.
pub const ACK: u8 = 0xA5;

/// Runs one of this module's child modes (`uds-sink`, `tcp-sink`, `pipe-sink`, `shmex-sink`,
/// `loan-sink`, and `demo-agent` of [`crate::model`]); `None` if `mode` is not one of them.
pub fn run_child(mode: &str, args: &[String]) -> Option<Res<()>> {
    let arg = |i: usize| -> Res<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("{mode}: missing argument {i}").into())
    };
    let max = || -> Res<usize> { Ok(arg(1)?.parse()?) };
    Some(match mode {
        "uds-sink" => (|| socket_sink(&uds_child_connect(arg(0)?)?, max()?))(),
        "tcp-sink" => (|| socket_sink(&tcp_child_connect(arg(0)?)?, max()?))(),
        "pipe-sink" => (|| pipe_sink(arg(0)?.parse()?))(),
        "shmex-sink" => (|| child_shmex_sink(arg(0)?, max()?))(),
        "loan-sink" => (|| child_loan_sink(arg(0)?))(),
        "demo-agent" => {
            (|| crate::model::agent_child(arg(0)?, crate::model::parse_expected(arg(1)?)?))()
        }
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------------------

/// A socket path that is removed when dropped.
pub struct SocketPath(pub PathBuf);

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Listens on a fresh socket path, starts a child in `mode` (given the path, then `args`)
/// that connects to it, and returns the accepted connection.
pub fn uds_connect(
    launcher: &Launcher,
    mode: &str,
    args: &[String],
) -> Res<(Peer, UnixStream, SocketPath)> {
    let path = SocketPath(
        std::env::temp_dir().join(format!("shmex-bench-{}-{mode}.sock", std::process::id())),
    );
    let _ = std::fs::remove_file(&path.0);
    let listener = UnixListener::bind(&path.0)?;
    listener.set_nonblocking(true)?;
    let mut child_args = vec![path_string(&path.0)?];
    child_args.extend_from_slice(args);
    let peer = Peer::spawn(launcher, mode, &child_args)?;
    let socket = accept_within(mode, || listener.accept().map(|(s, _)| s))?;
    socket.set_nonblocking(false)?;
    set_socket_buffers(&socket)?;
    socket.set_read_timeout(Some(PEER_TIMEOUT))?;
    socket.set_write_timeout(Some(PEER_TIMEOUT))?;
    Ok((peer, socket, path))
}

/// An agent child's next task, waiting at most [`PEER_TIMEOUT`]: `None` once the exchanger
/// said `bye` (the child's normal end); no task in time is an error naming `who`.
pub fn next_task(agent: &shmex::protocol::Agent, who: &str) -> Res<Option<shmex::protocol::Task>> {
    match agent.get_task(Some(PEER_TIMEOUT)) {
        Ok(Some(task)) => Ok(Some(task)),
        Ok(None) => Err(format!("{who}: no task").into()),
        Err(shmex::protocol::GetTaskError::Closed) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Polls a non-blocking `accept` until a child connects or [`PEER_TIMEOUT`] passes.
fn accept_within<S>(mode: &str, mut accept: impl FnMut() -> std::io::Result<S>) -> Res<S> {
    let give_up = deadline();
    loop {
        match accept() {
            Ok(socket) => return Ok(socket),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= give_up {
                    return Err(format!("child {mode} did not connect").into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A path as a `String` (the child gets it as an argument).
pub fn path_string(path: &Path) -> Res<String> {
    Ok(path
        .to_str()
        .ok_or("temp dir path is not UTF-8")?
        .to_string())
}

/// Requests [`SOCKET_BUFFER`] for both socket buffers.
pub fn set_socket_buffers(socket: &impl AsRawFd) -> Res<()> {
    let value = libc::c_int::try_from(SOCKET_BUFFER)?;
    for option in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: a valid socket descriptor, and a pointer to a live c_int with its length.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

/// The socket's (send, receive) buffer sizes as the kernel reports them.
pub fn socket_buffers(socket: &impl AsRawFd) -> Res<(usize, usize)> {
    let get = |option: libc::c_int| -> Res<usize> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket descriptor, and pointers to a live c_int and its length.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::from_mut(&mut value).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(usize::try_from(value)?)
    };
    Ok((get(libc::SO_SNDBUF)?, get(libc::SO_RCVBUF)?))
}

/// The child's end of a Unix socket: connected, buffers set, timeouts on.
pub fn uds_child_connect(path: &str) -> Res<UnixStream> {
    let socket = UnixStream::connect(path)?;
    set_socket_buffers(&socket)?;
    socket.set_read_timeout(Some(PEER_TIMEOUT))?;
    socket.set_write_timeout(Some(PEER_TIMEOUT))?;
    Ok(socket)
}

fn tcp_child_connect(address: &str) -> Res<TcpStream> {
    let socket = TcpStream::connect(address)?;
    set_socket_buffers(&socket)?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(PEER_TIMEOUT))?;
    socket.set_write_timeout(Some(PEER_TIMEOUT))?;
    Ok(socket)
}

/// The header announcing a transfer on a byte stream: its length and whether the receiver
/// answers with a checksum (else with [`ACK`]). A length of 0 tells the receiver to stop.
fn transfer_header(len: usize, verify: bool) -> [u8; 16] {
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&(len as u64).to_le_bytes());
    header[8] = u8::from(verify);
    header
}

fn parse_header(header: &[u8]) -> Res<(usize, bool)> {
    let header: &[u8; 16] = header.try_into().map_err(|_| "bad transfer header")?;
    let len = usize::try_from(u64::from_le_bytes(header[..8].try_into()?))?;
    Ok((len, header[8] != 0))
}

/// Receives announced transfers from `input` into a pre-faulted buffer of `max` bytes and
/// answers each on `output`, until a zero-length header.
fn byte_stream_sink(input: &mut impl Read, output: &mut impl Write, max: usize) -> Res<()> {
    let mut buf = prefaulted(max);
    loop {
        let mut header = [0u8; 16];
        input.read_exact(&mut header)?;
        let (len, verify) = parse_header(&header)?;
        if len == 0 {
            return Ok(());
        }
        let target = buf
            .get_mut(..len)
            .ok_or("sink: message longer than announced")?;
        let mut filled = 0;
        while filled < len {
            let end = (filled + SOCKET_IO_CHUNK).min(len);
            let n = input.read(&mut target[filled..end])?;
            if n == 0 {
                return Err("sink: sender closed mid-message".into());
            }
            filled += n;
        }
        if verify {
            output.write_all(&pattern::checksum(target).to_le_bytes())?;
        } else {
            output.write_all(&[ACK])?;
        }
        output.flush()?;
    }
}

/// The child side of a socket transport: reads announced transfers, answers each.
fn socket_sink<S>(socket: &S, max: usize) -> Res<()>
where
    for<'s> &'s S: Read + Write,
{
    let (mut input, mut output) = (socket, socket);
    byte_stream_sink(&mut input, &mut output, max)
}

fn pipe_sink(max: usize) -> Res<()> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    byte_stream_sink(&mut stdin.lock(), &mut stdout.lock(), max)
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A zeroed buffer whose every page has been written, so no page fault lands in a timed region.
pub fn prefaulted(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    for i in (0..len).step_by(PAGE) {
        buf[i] = 1;
    }
    buf
}

/// Median rate, in GB/s (10^9 bytes per second), of moving `len` bytes in each sample's time.
pub fn median_gbps(len: usize, samples: &[Duration]) -> f64 {
    let mut rates: Vec<f64> = samples
        .iter()
        .map(|d| len as f64 / d.as_secs_f64().max(1e-12) / 1e9)
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied().unwrap_or(0.0)
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// An error naming the transport and size if the receiver's checksum is not the sender's.
pub fn check_checksum(transport: &str, len: usize, got: u64, want: u64) -> Res<()> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{transport}: checksum of {} received {got:#018x}, sent {want:#018x}",
            size_label(len)
        )
        .into())
    }
}

/// A compact size label: `4KiB`, `64MiB`, `1GiB`, `1000B`.
pub fn size_label(len: usize) -> String {
    if len >= GIB && len.is_multiple_of(GIB) {
        format!("{}GiB", len / GIB)
    } else if len >= MIB && len.is_multiple_of(MIB) {
        format!("{}MiB", len / MIB)
    } else if len >= KIB && len.is_multiple_of(KIB) {
        format!("{}KiB", len / KIB)
    } else {
        format!("{len}B")
    }
}

/// Parses a size such as `4096`, `4KiB`, `64MiB`, `1GiB` (also `K`, `M`, `G`, `KB`, ...:
/// binary multiples all).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 4096, 4KiB, 64MiB, 1GiB)"))?;
    let multiple = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    value
        .checked_mul(multiple)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("size {text:?} must be positive and fit in memory"))
}

/// A segment name unique to this process: `shmex.<tool>.<pid>.<tag>`.
pub fn unique_name(tool: &str, tag: &str) -> Res<SegmentName> {
    Ok(SegmentName::new(format!(
        "shmex.{tool}.{}.{tag}",
        std::process::id()
    ))?)
}

// ---------------------------------------------------------------------------------------
// Transfers
// ---------------------------------------------------------------------------------------

/// An extra figure a transfer reports for a size, beyond its median rate.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtraFigure {
    /// Metric name, e.g. `cold_gbps`.
    pub metric: &'static str,
    /// The value.
    pub value: f64,
    /// Its unit, e.g. `GB/s`.
    pub unit: &'static str,
}

/// One way of moving a buffer from this process to a receiver.
pub trait Transfer {
    /// The transport's name in the report.
    fn transport(&self) -> &str;
    /// One untimed transfer of `source` that proves the receiver got exactly those bytes.
    fn verify(&mut self, source: &[u8]) -> Res<()>;
    /// One timed transfer of `source`, until the receiver has all of it.
    fn timed(&mut self, source: &[u8]) -> Res<Duration>;
    /// Tells the receiver (if any) to stop and waits for it to exit.
    fn stop(self: Box<Self>) -> Res<()>;
    /// Whether this contestant moves messages of `len` bytes.
    fn accepts(&self, _len: usize) -> bool {
        true
    }
    /// Figures beyond the median rate, asked for after the size's samples are in.
    fn extra_figures(&self, _len: usize) -> Vec<ExtraFigure> {
        Vec::new()
    }
}

/// Single-thread `copy_from_slice` into a pre-faulted buffer.
pub struct MemcpyTransfer {
    destination: Vec<u8>,
}

impl MemcpyTransfer {
    /// A destination of `max` bytes, pre-faulted.
    pub fn new(max: usize) -> MemcpyTransfer {
        MemcpyTransfer {
            destination: prefaulted(max),
        }
    }
}

impl Transfer for MemcpyTransfer {
    fn transport(&self) -> &str {
        "memcpy"
    }

    fn verify(&mut self, source: &[u8]) -> Res<()> {
        let len = source.len();
        self.destination[..len].copy_from_slice(source);
        check_checksum(
            "memcpy",
            len,
            pattern::checksum(&self.destination[..len]),
            pattern::checksum(source),
        )
    }

    fn timed(&mut self, source: &[u8]) -> Res<Duration> {
        let len = source.len();
        // Batch small copies so one sample is long enough for the clock.
        let batch = (256 * KIB / len.max(1)).max(1);
        let start = Instant::now();
        for _ in 0..batch {
            self.destination[..len].copy_from_slice(std::hint::black_box(source));
            std::hint::black_box(&mut self.destination[..len]);
        }
        Ok(start.elapsed() / u32::try_from(batch)?)
    }

    fn stop(self: Box<Self>) -> Res<()> {
        Ok(())
    }
}

/// A byte stream (Unix socket, TCP, pipe) to a child that reads each transfer into a
/// pre-faulted buffer and answers 1 byte (or, when verifying, an 8-byte checksum).
pub struct ByteStreamTransfer<W: Write, R: Read> {
    transport: String,
    peer: Peer,
    output: W,
    input: R,
    _path: Option<SocketPath>,
}

impl<W: Write, R: Read> ByteStreamTransfer<W, R> {
    /// The sending end (the socket, for socket transports).
    pub fn output(&self) -> &W {
        &self.output
    }

    fn send(&mut self, len: usize, verify: bool, bytes: &[u8]) -> Res<()> {
        self.output.write_all(&transfer_header(len, verify))?;
        for chunk in bytes.chunks(SOCKET_IO_CHUNK) {
            self.output.write_all(chunk)?;
        }
        self.output.flush()?;
        Ok(())
    }
}

/// A Unix stream socket transfer to a `uds-sink` child of up to `max` bytes.
pub fn uds_transfer(
    launcher: &Launcher,
    transport: &str,
    max: usize,
) -> Res<ByteStreamTransfer<UnixStream, UnixStream>> {
    let (peer, socket, path) = uds_connect(launcher, "uds-sink", &[max.to_string()])?;
    Ok(ByteStreamTransfer {
        transport: transport.to_string(),
        peer,
        input: socket.try_clone()?,
        output: socket,
        _path: Some(path),
    })
}

/// A TCP loopback transfer (127.0.0.1, `TCP_NODELAY`, buffers as for sockets) to a
/// `tcp-sink` child of up to `max` bytes.
pub fn tcp_transfer(
    launcher: &Launcher,
    transport: &str,
    max: usize,
) -> Res<ByteStreamTransfer<TcpStream, TcpStream>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?.to_string();
    let peer = Peer::spawn(launcher, "tcp-sink", &[address, max.to_string()])?;
    let socket = accept_within("tcp-sink", || listener.accept().map(|(s, _)| s))?;
    socket.set_nonblocking(false)?;
    set_socket_buffers(&socket)?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(PEER_TIMEOUT))?;
    socket.set_write_timeout(Some(PEER_TIMEOUT))?;
    Ok(ByteStreamTransfer {
        transport: transport.to_string(),
        peer,
        input: socket.try_clone()?,
        output: socket,
        _path: None,
    })
}

/// A pipe transfer: the data goes down the child's stdin (default pipe buffer), the answer
/// comes back on its stdout.
pub fn pipe_transfer(
    launcher: &Launcher,
    transport: &str,
    max: usize,
) -> Res<ByteStreamTransfer<ChildStdin, ChildStdout>> {
    let (peer, stdin, stdout) = Peer::spawn_piped(launcher, "pipe-sink", &[max.to_string()])?;
    Ok(ByteStreamTransfer {
        transport: transport.to_string(),
        peer,
        output: stdin,
        input: stdout,
        _path: None,
    })
}

impl<W: Write, R: Read> Transfer for ByteStreamTransfer<W, R> {
    fn transport(&self) -> &str {
        &self.transport
    }

    fn verify(&mut self, source: &[u8]) -> Res<()> {
        self.send(source.len(), true, source)?;
        let mut sum = [0u8; 8];
        self.input.read_exact(&mut sum)?;
        check_checksum(
            &self.transport,
            source.len(),
            u64::from_le_bytes(sum),
            pattern::checksum(source),
        )
    }

    fn timed(&mut self, source: &[u8]) -> Res<Duration> {
        self.output
            .write_all(&transfer_header(source.len(), false))?;
        let start = Instant::now();
        for chunk in source.chunks(SOCKET_IO_CHUNK) {
            self.output.write_all(chunk)?;
        }
        self.output.flush()?;
        let mut ack = [0u8; 1];
        self.input.read_exact(&mut ack)?;
        let elapsed = start.elapsed();
        if ack[0] != ACK {
            return Err(format!("{}: bad acknowledgement {:#x}", self.transport, ack[0]).into());
        }
        Ok(elapsed)
    }

    fn stop(mut self: Box<Self>) -> Res<()> {
        self.send(0, false, &[])?;
        self.peer.finish()
    }
}

/// A shmex link to an agent child: `send_stream` on the task ring, `recv_stream_to_slice`
/// into a pre-faulted buffer (the copy-out), then a 1-byte record back on the result ring.
pub struct ShmexTransfer {
    transport: String,
    link: Link,
    peer: Peer,
    chunk: usize,
    ack: Vec<u8>,
}

impl ShmexTransfer {
    /// Creates a link with rings of `capacity` bytes and starts a `shmex-sink` child for
    /// streams of up to `max` bytes; `chunk` defaults to [`stream::default_chunk`].
    pub fn start(
        launcher: &Launcher,
        transport: String,
        capacity: usize,
        chunk: Option<usize>,
        max: usize,
    ) -> Res<ShmexTransfer> {
        let name = unique_name("bench", &transport)?;
        let options = CreateOptions::default().ring_capacity(capacity as u64);
        let mut link = Link::create(&name, &options)?;
        let mut peer = Peer::spawn(
            launcher,
            "shmex-sink",
            &[name.as_str().to_string(), max.to_string()],
        )?;
        peer.expect("ready")?;
        let chunk = chunk.unwrap_or_else(|| stream::default_chunk(link.sender().capacity()));
        Ok(ShmexTransfer {
            transport,
            link,
            peer,
            chunk,
            ack: Vec::with_capacity(64),
        })
    }

    fn header(&mut self, len: usize, verify: bool) -> Res<()> {
        self.link
            .sender()
            .push(&transfer_header(len, verify), Some(deadline()))?;
        Ok(())
    }
}

impl Transfer for ShmexTransfer {
    fn transport(&self) -> &str {
        &self.transport
    }

    fn verify(&mut self, source: &[u8]) -> Res<()> {
        self.header(source.len(), true)?;
        stream::send_stream(self.link.sender(), source, self.chunk, Some(deadline()))?;
        expect_checksum(&mut self.link, &mut self.ack, &self.transport, source)
    }

    fn timed(&mut self, source: &[u8]) -> Res<Duration> {
        self.header(source.len(), false)?;
        let start = Instant::now();
        stream::send_stream(
            self.link.sender(),
            source,
            self.chunk,
            Some(start + PEER_TIMEOUT),
        )?;
        expect_ack(&mut self.link, &mut self.ack, &self.transport, start)
    }

    fn stop(mut self: Box<Self>) -> Res<()> {
        self.header(0, false)?;
        self.peer.finish()
    }
}

/// Waits for the receiver's 8-byte checksum record on `link`'s result ring and compares it
/// with `source`'s.
fn expect_checksum(link: &mut Link, ack: &mut Vec<u8>, transport: &str, source: &[u8]) -> Res<()> {
    link.receiver().pop_into(ack, Some(deadline()))?;
    let sum = <[u8; 8]>::try_from(ack.as_slice())
        .map_err(|_| format!("{transport}: checksum record is not 8 bytes"))?;
    check_checksum(
        transport,
        source.len(),
        u64::from_le_bytes(sum),
        pattern::checksum(source),
    )
}

/// Waits for the receiver's 1-byte acknowledgement on `link`'s result ring; returns the time
/// since `start`.
fn expect_ack(
    link: &mut Link,
    ack: &mut Vec<u8>,
    transport: &str,
    start: Instant,
) -> Res<Duration> {
    link.receiver().pop_into(ack, Some(start + PEER_TIMEOUT))?;
    let elapsed = start.elapsed();
    if ack.as_slice() != [ACK] {
        return Err(format!("{transport}: bad acknowledgement {ack:?}").into());
    }
    Ok(elapsed)
}

/// Tells a frame-speaking child that we are done (a `bye` message) and waits for it to exit.
pub fn say_bye(sender: &mut FrameSender, link: &mut Link, peer: &mut Peer) -> Res<()> {
    sender.send(
        link.sender(),
        &Envelope::new(MessageKind::Bye),
        None,
        Some(deadline()),
    )?;
    peer.finish()
}

/// Attaches to segment `name` as the agent with `wait`, and prints `ready`.
pub fn child_attach(name: &str, wait: WaitStrategy) -> Res<Link> {
    let name = SegmentName::new(name.to_string())?;
    let options = AttachOptions::default()
        .attach_timeout(PEER_TIMEOUT)
        .wait(wait);
    let link = Link::attach(&name, &options)?;
    println!("ready");
    Ok(link)
}

fn child_shmex_sink(name: &str, max: usize) -> Res<()> {
    let mut buf = prefaulted(max);
    let mut link = child_attach(name, WaitStrategy::default())?;
    let mut header = Vec::with_capacity(16);
    loop {
        link.receiver().pop_into(&mut header, Some(deadline()))?;
        let (len, verify) = parse_header(&header)?;
        if len == 0 {
            return Ok(());
        }
        let target = buf
            .get_mut(..len)
            .ok_or("shmex-sink: message longer than announced")?;
        let got = stream::recv_stream_to_slice(link.receiver(), target, Some(deadline()))?;
        if got != len {
            return Err(format!("shmex-sink: stream of {got} bytes, {len} announced").into());
        }
        if verify {
            link.sender()
                .push(&pattern::checksum(target).to_le_bytes(), Some(deadline()))?;
        } else {
            link.sender().push(&[ACK], Some(deadline()))?;
        }
    }
}

/// Task name of a loaned message whose receiver answers with a checksum.
const LOAN_VERIFY: &str = "verify";

/// Zero-copy hand-off of whole messages: the sender loans ring space for a DXO with one `u8`
/// tensor of the transfer's size (`FrameSender::loan_prepared`, its layout prepared once per
/// size), writes the source into it in place
/// (the one copy; a producer computing its tensors there would save even that), commits; the
/// child views the tensor in the ring without copying and answers with a 1-byte record. The
/// ring holds the largest message whole.
pub struct LoanTransfer {
    transport: String,
    link: Link,
    peer: Peer,
    sender: FrameSender,
    /// Message layouts by (size, verify), laid out once so a timed loan only reserves and
    /// copies the prefix.
    layouts: Vec<((usize, bool), PreparedLoan)>,
    ack: Vec<u8>,
}

/// Ring capacity for whole loaned messages of up to `largest` bytes: the smallest power of
/// two holding one with room for its headers.
pub fn loan_ring(largest: usize) -> usize {
    (largest + MIB).next_power_of_two()
}

impl LoanTransfer {
    /// Creates a link whose task ring holds a `max`-byte message whole and starts a
    /// `loan-sink` child.
    pub fn start(launcher: &Launcher, transport: &str, max: usize) -> Res<LoanTransfer> {
        let name = unique_name("bench", transport)?;
        let options = CreateOptions::default()
            .ring_capacity(loan_ring(max) as u64)
            .result_ring_capacity(64 * KIB as u64);
        let link = Link::create(&name, &options)?;
        let mut peer = Peer::spawn(launcher, "loan-sink", &[name.as_str().to_string()])?;
        peer.expect("ready")?;
        Ok(LoanTransfer {
            transport: transport.to_string(),
            link,
            peer,
            sender: FrameSender::new(),
            layouts: Vec::new(),
            ack: Vec::with_capacity(64),
        })
    }

    /// Loans, fills and commits one message carrying `source`.
    fn send(&mut self, source: &[u8], verify: bool, give_up: Option<Instant>) -> Res<()> {
        let key = (source.len(), verify);
        let index = match self.layouts.iter().position(|(k, _)| *k == key) {
            Some(index) => index,
            None => {
                let spec = LoanSpec::new(DataKind::Weights).tensor(
                    "weights",
                    DType::U8,
                    &[source.len() as u64],
                );
                let envelope = if verify {
                    Envelope::new(MessageKind::Data).with_task("", LOAN_VERIFY)
                } else {
                    Envelope::new(MessageKind::Data)
                };
                let prepared = FrameSender::prepare(&envelope, &spec)?;
                self.layouts.push((key, prepared));
                self.layouts.len() - 1
            }
        };
        let mut loan =
            self.sender
                .loan_prepared(self.link.sender(), &self.layouts[index].1, give_up)?;
        loan.tensor_bytes_mut(0)?.copy_from_slice(source);
        loan.commit();
        Ok(())
    }
}

impl Transfer for LoanTransfer {
    fn transport(&self) -> &str {
        &self.transport
    }

    fn verify(&mut self, source: &[u8]) -> Res<()> {
        self.send(source, true, Some(deadline()))?;
        expect_checksum(&mut self.link, &mut self.ack, &self.transport, source)
    }

    fn timed(&mut self, source: &[u8]) -> Res<Duration> {
        let start = Instant::now();
        self.send(source, false, Some(start + PEER_TIMEOUT))?;
        expect_ack(&mut self.link, &mut self.ack, &self.transport, start)
    }

    fn stop(mut self: Box<Self>) -> Res<()> {
        say_bye(&mut self.sender, &mut self.link, &mut self.peer)
    }
}

fn child_loan_sink(name: &str) -> Res<()> {
    let mut link = child_attach(name, WaitStrategy::default())?;
    let mut receiver = FrameReceiver::default();
    loop {
        let (producer, consumer) = link.split();
        let message = receiver.recv(consumer, Some(deadline()))?;
        if message.kind() == MessageKind::Bye {
            return Ok(());
        }
        if !message.is_in_ring() {
            return Err("loan-sink: a loaned message was not received in place".into());
        }
        let tensor = message
            .tensor(0)
            .ok_or("loan-sink: message has no tensor")?;
        if message.task_name() == LOAN_VERIFY {
            let sum = pattern::checksum(tensor.bytes());
            message.release();
            producer.push(&sum.to_le_bytes(), Some(deadline()))?;
        } else {
            message.release();
            producer.push(&[ACK], Some(deadline()))?;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The timing loop
// ---------------------------------------------------------------------------------------

/// How the timing loop samples each size.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// Minimum time spent on each transport per size.
    pub min_total: Duration,
    /// Minimum number of rounds (each transport gets at least one sample per round).
    pub min_samples: usize,
}

/// How long one contestant keeps the machine per turn when timing small messages.
pub const THROUGHPUT_TURN: Duration = Duration::from_millis(2);

/// For each size in `sizes`: verifies every contestant that accepts it once (untimed), then
/// times them in turns (each turn: one untimed transfer to wake the receiver for sizes below
/// 64 MiB, then samples for [`THROUGHPUT_TURN`]), round after round, until each has
/// `min_samples` rounds and the size has had `min_total` per contestant. `progress` is called
/// after every round with the size and the round number; `done` once per size and contestant
/// with its samples. `source` must hold the largest size.
pub fn measure_throughput(
    sizes: &[usize],
    transfers: &mut [Box<dyn Transfer>],
    source: &[u8],
    sampling: Sampling,
    mut progress: impl FnMut(usize, usize),
    mut done: impl FnMut(usize, &dyn Transfer, &[Duration]),
) -> Res<()> {
    for &len in sizes {
        let source = source
            .get(..len)
            .ok_or_else(|| format!("source buffer shorter than {}", size_label(len)))?;
        let mut contestants: Vec<&mut Box<dyn Transfer>> =
            transfers.iter_mut().filter(|t| t.accepts(len)).collect();
        for transfer in &mut contestants {
            transfer.verify(source)?;
        }
        let mut samples: Vec<Vec<Duration>> = contestants.iter().map(|_| Vec::new()).collect();
        let started = Instant::now();
        let budget = sampling.min_total * u32::try_from(contestants.len())?;
        let mut rounds = 0;
        while rounds < sampling.min_samples || started.elapsed() < budget {
            for (transfer, samples) in contestants.iter_mut().zip(&mut samples) {
                if len < 64 * MIB {
                    transfer.timed(source)?;
                }
                let turn = Instant::now();
                loop {
                    samples.push(transfer.timed(source)?);
                    if turn.elapsed() >= THROUGHPUT_TURN {
                        break;
                    }
                }
            }
            rounds += 1;
            progress(len, rounds);
        }
        for (transfer, samples) in contestants.iter().zip(&samples) {
            done(len, transfer.as_ref(), samples);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units_and_label_back() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("KiB").is_err());
        assert_eq!(size_label(64 << 20), "64MiB");
        assert_eq!(size_label(1000), "1000B");
    }

    #[test]
    fn median_and_percentiles_of_samples() {
        let ms = Duration::from_millis;
        assert_eq!(median_gbps(1_000_000, &[ms(1), ms(2), ms(4)]), 0.5);
        assert_eq!(median_gbps(1, &[]), 0.0);
        let sorted = [ms(1), ms(2), ms(3), ms(4)];
        assert_eq!(percentile(&sorted, 50.0), ms(2));
        assert_eq!(percentile(&sorted, 99.0), ms(4));
    }
}
