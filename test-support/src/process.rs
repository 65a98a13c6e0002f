//! Child processes for tests and benchmarks: start this executable (or a helper) in a child
//! mode, read its stdout line by line with timeouts, and kill and reap it on any error.
//!
//! Every two-process measurement or test talks to a second process that is an executable
//! re-run in a child mode (never `fork()`): [`Launcher`] says how to start it, and the child
//! calls [`child_prologue`] first. The parent reads the child's stdout line by line, waits
//! for it with a timeout ([`PEER_TIMEOUT`]) and kills it on any error; the child asks the
//! kernel to kill it if the parent dies. Two processes that poll shared memory for each
//! other's progress wait with a [`PeerWait`], which stops spinning when the peer is slow.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Any error of the harness (boxed: a benchmark reports and stops, it does not recover).
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// Result of the harness.
pub type Res<T> = Result<T, Error>;

/// How long any single wait for the peer may go without progress before the run is declared
/// broken. Minutes, not milliseconds: on a loaded machine (another build running) a peer can
/// be off its CPU for long stretches, and a benchmark must then finish slower, not fail.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(300);

/// A deadline [`PEER_TIMEOUT`] from now.
pub fn deadline() -> Instant {
    Instant::now() + PEER_TIMEOUT
}

/// How long a [`PeerWait`] busy-polls before it starts yielding its CPU.
pub const WAIT_SPIN: Duration = Duration::from_millis(1);
/// How long a [`PeerWait`] has waited when it stops yielding and starts sleeping.
pub const WAIT_YIELD: Duration = Duration::from_millis(10);
/// The first and the longest sleep between two polls of a [`PeerWait`].
const WAIT_SLEEP: (Duration, Duration) = (Duration::from_micros(50), Duration::from_millis(1));
/// Polls between two clock reads while spinning (no clock read at all when the peer answers
/// within this many polls, which is every round trip of an unloaded machine).
const POLLS_PER_CLOCK_READ: u32 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WaitPhase {
    Spin,
    Yield,
    Sleep,
}

/// A wait for the peer's progress on memory both processes poll (a shared atomic): busy-polls
/// for [`WAIT_SPIN`], then yields its CPU until [`WAIT_YIELD`], then sleeps between polls
/// (50 µs doubling to 1 ms), and gives up with an error naming the machine's load only after
/// [`PEER_TIMEOUT`]. A peer that answers at once meets a plain spin loop; a peer that was
/// descheduled by other work on a loaded machine gets this process's CPU back instead of
/// competing with a spinner for it.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use shmex_test_support::process::PeerWait;
///
/// let pong = AtomicU64::new(7);
/// let mut wait = PeerWait::new("example: no answer from the peer");
/// while pong.load(Ordering::Acquire) != 7 {
///     wait.idle()?;
/// }
/// # Ok::<(), shmex_test_support::process::Error>(())
/// ```
#[derive(Debug)]
pub struct PeerWait {
    what: &'static str,
    polls: u32,
    since: Option<Instant>,
    phase: WaitPhase,
    sleep: Duration,
}

impl PeerWait {
    /// A new wait; `what` starts its error message ("spin-raw: no answer from the child").
    pub fn new(what: &'static str) -> PeerWait {
        PeerWait {
            what,
            polls: 0,
            since: None,
            phase: WaitPhase::Spin,
            sleep: WAIT_SLEEP.0,
        }
    }

    /// One step of waiting after a poll that saw no progress: spin, yield or sleep, depending
    /// on how long this wait has lasted; an error once it has lasted [`PEER_TIMEOUT`].
    pub fn idle(&mut self) -> Res<()> {
        self.polls = self.polls.saturating_add(1);
        match self.phase {
            WaitPhase::Spin => {
                std::hint::spin_loop();
                if self.polls.is_multiple_of(POLLS_PER_CLOCK_READ) && self.waited() >= WAIT_SPIN {
                    self.phase = WaitPhase::Yield;
                }
            }
            WaitPhase::Yield => {
                std::thread::yield_now();
                if self.waited() >= WAIT_YIELD {
                    self.phase = WaitPhase::Sleep;
                }
            }
            WaitPhase::Sleep => {
                self.check()?;
                std::thread::sleep(self.sleep);
                self.sleep = (self.sleep * 2).min(WAIT_SLEEP.1);
            }
        }
        Ok(())
    }

    /// For a loop that blocks by itself between polls (a `futex_wait` with a timeout): an
    /// error once [`PEER_TIMEOUT`] has passed since the first call.
    pub fn check(&mut self) -> Res<()> {
        let waited = self.waited();
        if waited > PEER_TIMEOUT {
            return Err(format!(
                "{} for {:.1} s (the limit is {} s); {}",
                self.what,
                waited.as_secs_f64(),
                PEER_TIMEOUT.as_secs(),
                crate::load::describe()
            )
            .into());
        }
        Ok(())
    }

    /// Time since the wait's first clock read (taken on the first call that needed one).
    fn waited(&mut self) -> Duration {
        self.since.get_or_insert_with(Instant::now).elapsed()
    }
}

/// A child's stdout as a channel of lines, read by a thread of its own (which ends with the
/// stream or when the receiver is dropped), so that a parent can wait for a line with a
/// timeout.
pub fn line_channel(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// How to start a child: this executable with a fixed argument prefix, then the mode, the CPU
/// to pin to (`-` for none) and the mode's arguments.
#[derive(Clone, Debug)]
pub struct Launcher {
    /// The executable (normally `std::env::current_exe()`).
    pub exe: PathBuf,
    /// Arguments before the mode, e.g. `["--child"]`.
    pub prefix: Vec<String>,
    /// CPU the child pins itself to.
    pub cpu: Option<usize>,
}

impl Launcher {
    /// This executable, children selected by `prefix`, pinned to `cpu`.
    pub fn current_exe(prefix: &[&str], cpu: Option<usize>) -> Res<Launcher> {
        Ok(Launcher {
            exe: std::env::current_exe()?,
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
            cpu,
        })
    }

    fn command(&self, mode: &str, args: &[String]) -> Command {
        let cpu = self.cpu.map_or_else(|| "-".to_string(), |c| c.to_string());
        let mut command = Command::new(&self.exe);
        command.args(&self.prefix).arg(mode).arg(cpu).args(args);
        command
    }
}

/// A child process running one mode. Dropping it kills and reaps the child, so an error
/// anywhere in the parent leaves no process behind.
pub struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
    mode: String,
    reaped: bool,
}

impl Peer {
    /// Starts the child in `mode`; its stdout lines arrive for [`Peer::expect`].
    pub fn spawn(launcher: &Launcher, mode: &str, args: &[String]) -> Res<Peer> {
        let mut child = launcher
            .command(mode, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("child has no stdout")?;
        let lines = line_channel(stdout);
        Ok(Peer {
            child,
            lines,
            mode: mode.to_string(),
            reaped: false,
        })
    }

    /// Starts the child in `mode` with its stdin and stdout as raw pipes, handed back.
    pub fn spawn_piped(
        launcher: &Launcher,
        mode: &str,
        args: &[String],
    ) -> Res<(Peer, ChildStdin, ChildStdout)> {
        let mut child = launcher
            .command(mode, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("child has no stdin")?;
        let stdout = child.stdout.take().ok_or("child has no stdout")?;
        let (_, lines) = mpsc::channel();
        let peer = Peer {
            child,
            lines,
            mode: mode.to_string(),
            reaped: false,
        };
        Ok((peer, stdin, stdout))
    }

    /// Waits (with a timeout) for the child to print `line`.
    pub fn expect(&mut self, line: &str) -> Res<()> {
        let got = self.next_line(PEER_TIMEOUT)?;
        if got == line {
            Ok(())
        } else {
            Err(format!("child {}: expected {line:?}, got {got:?}", self.mode).into())
        }
    }

    /// The child's next stdout line, waiting up to `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Res<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(_) => {
                let status = self.child.try_wait()?;
                Err(format!(
                    "child {}: no line within {timeout:?} (exit status {status:?})",
                    self.mode
                )
                .into())
            }
        }
    }

    /// Waits (with a timeout) for the child to exit by itself, successfully.
    pub fn finish(&mut self) -> Res<()> {
        let status = wait_timeout(&mut self.child, PEER_TIMEOUT)?;
        self.reaped = true;
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!("child {} failed: {s}", self.mode).into()),
            None => Err(format!("child {} did not exit within {PEER_TIMEOUT:?}", self.mode).into()),
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(&mut self) -> Res<()> {
        self.child.kill()?;
        self.child.wait()?;
        self.reaped = true;
        Ok(())
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

/// Waits up to `timeout` for `child` to exit; kills it and returns `None` if it does not.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Res<Option<ExitStatus>> {
    let give_up = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= give_up {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What a child does first: die with its parent, and pin itself to `cpu` (`-` for none).
pub fn child_prologue(cpu: &str) -> Res<()> {
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
    if cpu != "-" {
        pin_to_cpu(cpu.parse()?)?;
    }
    Ok(())
}

/// The CPUs this process may run on, and the (parent, child) pair to pin to if there are two.
pub fn pick_cpus() -> Res<(usize, Option<(usize, usize)>)> {
    let set = rustix::thread::sched_getaffinity(None)?;
    let allowed: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect();
    let pair = match allowed.as_slice() {
        [first, second, ..] => Some((*first, *second)),
        _ => None,
    };
    Ok((allowed.len(), pair))
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Res<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_without_progress_stops_spinning_then_stops_yielding() {
        let mut wait = PeerWait::new("test: no progress");
        while wait.phase == WaitPhase::Spin {
            wait.idle().unwrap();
        }
        assert_eq!(wait.phase, WaitPhase::Yield);
        while wait.phase == WaitPhase::Yield {
            wait.idle().unwrap();
        }
        wait.idle().unwrap();
        assert_eq!(wait.phase, WaitPhase::Sleep);
        assert!(wait.sleep > WAIT_SLEEP.0, "sleeps grow");
    }
}
