//! Helpers shared by the multi-process test files: a `shmex-testpeer` child process.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use shmex::protocol::{AbortSignal, ExchangerConfig};
use shmex::segment::SegmentName;
use shmex::signal::WaitStrategy;

/// How long any wait on a child may take before the test fails.
pub const WATCHDOG: Duration = Duration::from_secs(120);

/// A segment name unique to this test process: `shmex.test.<family>.<tag>.<pid>`.
pub fn unique_name(family: &str, tag: &str) -> SegmentName {
    SegmentName::new(format!("shmex.test.{family}.{tag}.{}", std::process::id())).unwrap()
}

/// Short waits for protocol tests: spin 20 µs, liveness checked every 5 ms.
pub fn quick_wait() -> WaitStrategy {
    WaitStrategy::default()
        .spin(Duration::from_micros(20))
        .poll_interval(Duration::from_millis(5))
}

/// An exchanger with 1 MiB rings, a 20 ms heartbeat and [`quick_wait`].
pub fn quick_exchanger_config() -> ExchangerConfig {
    ExchangerConfig::default()
        .agent_heartbeat_interval(Duration::from_millis(20))
        .wait(quick_wait())
        .task_ring_capacity(1 << 20)
        .result_ring_capacity(1 << 20)
}

/// An abort signal that fires after `after`, so a hung `execute` fails the test instead of
/// hanging it.
pub fn watchdog_abort(after: Duration) -> AbortSignal {
    let abort = AbortSignal::new();
    let fire = abort.clone();
    std::thread::spawn(move || {
        std::thread::sleep(after);
        fire.abort();
    });
    abort
}

/// Polls `condition` every millisecond until it holds (panics after [`WATCHDOG`]).
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + WATCHDOG;
    while !condition() {
        assert!(Instant::now() < end, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The `shmex-testpeer` helper: an example of this package (so that it may use the
/// test-support member), which `cargo test` builds beside the test executables.
pub fn testpeer_path() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/shmex-testpeer
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("shmex-testpeer"))
        .expect("the test executable lies in target/<profile>/deps");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test` (which builds examples) or build it with \
         `cargo build --example shmex-testpeer`",
        path.display()
    );
    path
}

/// A child process whose stdout lines arrive on a channel; SIGKILLed and reaped on drop.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Peer {
    pub fn spawn(args: &[&str]) -> Peer {
        let mut child = Command::new(testpeer_path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shmex-testpeer");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let lines = shmex_test_support::process::line_channel(stdout);
        Peer {
            child,
            stdin,
            lines,
        }
    }

    /// The next stdout line that starts with `prefix` (watchdog: panics after WATCHDOG).
    pub fn expect_line(&self, prefix: &str) -> String {
        let end = Instant::now() + WATCHDOG;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(e) => panic!("peer never printed {prefix:?}: {e}"),
            }
        }
    }

    /// The next stdout line, whatever it is, if one arrives within `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Sends `signal` to the child (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("child pid");
        rustix::process::kill_process(pid, signal).expect("signal the child");
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes the child's stdin (its cue to exit) and waits for a zero exit status.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let end = Instant::now() + WATCHDOG;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "peer exited with {status}");
                return;
            }
            assert!(Instant::now() < end, "peer did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill();
        }
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
    }
}
