//! FLARE's task protocol (`IPCExchanger`/`IPCAgent`) over one link: [`Exchanger`] (the
//! FL-client side, owns the link) and [`Agent`] (the trainer side).
//!
//! The exchanger hands one task at a time to the agent and blocks in [`Exchanger::execute`]
//! until the agent's result arrives, the caller aborts, or the agent is lost; the agent
//! fetches tasks with [`Agent::get_task`] and answers with [`Agent::submit_result`]. The
//! message kinds, the incarnation (epoch) rules and both state machines are specified in
//! `docs/protocol.md`; the behaviour list is DESIGN §5 (FLARE's semantics).
//!
//! Each side runs one *pump* thread that owns the receive half of the link: it answers
//! `task`/`result` messages with acks, applies `abort`/`bye`, and watches the peer's liveness
//! (heartbeat counter and OS-backed role lock) every [`WaitStrategy::poll_interval`]. User
//! calls coordinate with the pump through a mutex and a condition variable and send on the
//! shared producer half. Received tasks and results are taken out of the ring
//! ([`crate::frame::Message::into_owned`]: a reassembled large message keeps its buffer without
//! a copy), so a message held by user code never blocks the `abort` or `bye` behind it.
//!
//! Both sides can also send by **loan** (zero copies on the sending side): reserve the message
//! in the ring with a [`crate::frame::LoanSpec`], fill its tensors in place, then commit —
//! [`Exchanger::loan_task`] → [`TaskLoan::execute`], [`Agent::loan_result`] →
//! [`ResultLoan::commit`]. The loans are owned handles (a binding can keep them across calls);
//! while one is out the pump keeps receiving and queues the acks it owes
//! (`docs/protocol.md` §9).
//!
//! ```no_run
//! use shmex::frame::{DataKind, Dxo, ReturnCode};
//! use shmex::protocol::{Agent, AgentConfig, Exchanger, ExchangerConfig, Headers};
//! use shmex::segment::SegmentName;
//! use std::time::Duration;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let name = SegmentName::for_agent("site-1", "trainer-0")?;
//! // FL-client process:
//! let exchanger = Exchanger::create(&name, ExchangerConfig::default())?;
//! let weights = vec![0.5f32; 1024];
//! let task = Dxo::new(DataKind::Weights).with_tensor("w", &[1024], &weights)?;
//! let reply = exchanger.execute("train", &task, &Headers::new("task-1"), None);
//! assert_eq!(reply.rc, ReturnCode::Ok);
//!
//! // Trainer process:
//! let agent = Agent::attach(&name, AgentConfig::default())?;
//! if let Some(task) = agent.get_task(Some(Duration::from_secs(60)))? {
//!     let w = task.message.tensor_by_name("w").unwrap().to_vec::<f32>()?;
//!     let result = Dxo::new(DataKind::WeightDiff).with_tensor("w", &[1024], &w)?;
//!     let accepted = agent.submit_result(&result, ReturnCode::Ok)?;
//!     assert!(accepted);
//! }
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]

/// The accessors [`ResultLoan`] and [`TaskLoan`] share, written once: both hold the loan
/// (`loan: Option<DetachedLoan>`) and the producer it was reserved on
/// (`producer: Option<Producer>`), both `None` once the loan is committed or dropped.
/// `$opaque` says whose opaque bytes the loan may carry.
macro_rules! loan_accessors {
    ($opaque:literal) => {
        fn parts(&mut self) -> Result<(&DetachedLoan, &mut Producer), ViewError> {
            match (self.loan.as_ref(), self.producer.as_mut()) {
                (Some(loan), Some(producer)) => Ok((loan, producer)),
                _ => Err(ViewError::StaleLoan),
            }
        }

        /// Number of tensors.
        pub fn tensor_count(&self) -> usize {
            self.loan.as_ref().map_or(0, DetachedLoan::tensor_count)
        }

        /// Index of the tensor named `name`.
        pub fn index_of(&mut self, name: &str) -> Option<usize> {
            let (loan, producer) = self.parts().ok()?;
            loan.index_of(producer, name).ok().flatten()
        }

        /// Tensor `index` as mutable raw bytes in the ring (they hold whatever the ring held
        /// before: write all of them).
        pub fn tensor_bytes_mut(&mut self, index: usize) -> Result<&mut [u8], ViewError> {
            let (loan, producer) = self.parts()?;
            loan.tensor_bytes_mut(producer, index)
        }

        /// Tensor `index` as a mutable slice of `T` in the ring (the dtype must be `T`'s).
        pub fn tensor_mut<T: Element + FromBytes + KnownLayout>(
            &mut self,
            index: usize,
        ) -> Result<&mut [T], ViewError> {
            let (loan, producer) = self.parts()?;
            loan.tensor_mut(producer, index)
        }

        #[doc = concat!("The opaque bytes (", $opaque, " whose spec reserved some), in the ring.")]
        pub fn opaque_mut(&mut self) -> Result<&mut [u8], ViewError> {
            let (loan, producer) = self.parts()?;
            loan.opaque_mut(producer)
        }
    };
}

mod agent;
mod config;
mod exchanger;

pub use agent::{
    Agent, AgentAttachError, AgentStatus, GetTaskError, ResultLoan, SubmitError, Task,
};
pub use config::{AgentConfig, ExchangerConfig, RestartPolicy, IN_PLACE_KEEP_FREE};
pub use exchanger::{
    CloseError, Exchanger, ExchangerCreateError, ExchangerStatus, Reply, TaskLoan, TaskLoanError,
};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::frame::{DataKind, Dxo, Envelope, FrameSender, Message, SendError};
use crate::ring::Producer;
use crate::signal::WaitStrategy;
use serde_json::{Map, Value};

/// FLARE's meta key for the DXO's data kind.
pub const META_DATA_KIND: &str = "data_kind";
/// FLARE's meta key for the current round.
pub const META_CURRENT_ROUND: &str = "current_round";
/// FLARE's meta key for the total number of rounds (`MetaKey.TOTAL_ROUND`).
pub const META_TOTAL_ROUND: &str = "total_round";

/// The FLARE task headers [`Exchanger::execute`] carries: the task id (FLARE's `task_id`
/// header), and the round headers copied into the task's meta.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    /// The task id; must not be empty.
    pub task_id: String,
    /// FLARE's `current_round` header: becomes meta `current_round`.
    pub current_round: Option<i64>,
    /// FLARE's `num_rounds` header: becomes meta `total_round`.
    pub num_rounds: Option<i64>,
}

impl Headers {
    /// Headers naming task `task_id`, without round information.
    pub fn new(task_id: impl Into<String>) -> Headers {
        Headers {
            task_id: task_id.into(),
            ..Headers::default()
        }
    }

    /// The same headers for round `current_round` of `num_rounds`.
    pub fn with_rounds(mut self, current_round: i64, num_rounds: i64) -> Headers {
        self.current_round = Some(current_round);
        self.num_rounds = Some(num_rounds);
        self
    }
}

/// A flag the caller of [`Exchanger::execute`] (or of the agent's `*_abortable` calls) sets,
/// from any thread, to abort the task (the call). Clones share the flag; setting it is one
/// atomic store. A signal made with [`AbortSignal::with_check`] also asks a hook of the
/// caller's whenever it is polled.
#[derive(Clone, Default)]
pub struct AbortSignal(Arc<AbortState>);

#[derive(Default)]
struct AbortState {
    aborted: AtomicBool,
    check: Option<Box<dyn Fn() -> bool + Send + Sync>>,
}

impl AbortSignal {
    /// A signal not yet triggered.
    pub fn new() -> AbortSignal {
        AbortSignal::default()
    }

    /// A signal not yet triggered that also asks `check` whenever it is polled
    /// ([`AbortSignal::is_aborted`]); the first `true` triggers it for good. For a caller
    /// that learns of an abort only by running code of its own on the calling thread (a
    /// binding whose interpreter handles Ctrl-C there), without a second thread to set it.
    ///
    /// The calls that take a signal poll it on the calling thread at least once per slice of
    /// their waits ([`WaitStrategy::poll_interval`] clamped to 1..=100 ms), before each
    /// fragment they send, and while they wait for ring space: `check` must be quick, so
    /// rate-limit anything slow by time. A `check` that may only run on one thread should
    /// still compare thread ids, as a signal can be polled wherever it is cloned to. The
    /// calls never poll it while holding their side's state lock, so `check` may wait for a
    /// thread that is reading [`Exchanger::status`] or [`Agent::status`] (a Python hook taking
    /// the GIL); they may hold the side's sending half, so `check` must not call the exchanger
    /// or agent itself.
    ///
    /// ```
    /// use shmex::protocol::AbortSignal;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    ///
    /// let interrupted = Arc::new(AtomicBool::new(false));
    /// let seen = Arc::clone(&interrupted);
    /// let signal = AbortSignal::with_check(move || seen.load(Ordering::Relaxed));
    /// assert!(!signal.is_aborted());
    /// interrupted.store(true, Ordering::Relaxed);
    /// assert!(signal.is_aborted());
    /// interrupted.store(false, Ordering::Relaxed);
    /// assert!(signal.is_aborted()); // triggered for good
    /// ```
    pub fn with_check(check: impl Fn() -> bool + Send + Sync + 'static) -> AbortSignal {
        AbortSignal(Arc::new(AbortState {
            aborted: AtomicBool::new(false),
            check: Some(Box::new(check)),
        }))
    }

    /// Triggers the signal: a running or later `execute` given it returns `TASK_ABORTED`, an
    /// agent's call [`SubmitError::Aborted`].
    pub fn abort(&self) {
        self.0.aborted.store(true, Ordering::Release);
    }

    /// Whether the signal was triggered, by [`AbortSignal::abort`] or by its check.
    pub fn is_aborted(&self) -> bool {
        if self.0.aborted.load(Ordering::Acquire) {
            return true;
        }
        let checked = self.0.check.as_ref().is_some_and(|check| check());
        if checked {
            self.abort();
        }
        checked
    }
}

impl std::fmt::Debug for AbortSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbortSignal")
            .field("aborted", &self.0.aborted.load(Ordering::Relaxed))
            .field("check", &self.0.check.is_some())
            .finish()
    }
}

/// Whether a DXO carries any data (tensors or opaque bytes): FLARE's agent rejects a task
/// whose data is empty.
fn dxo_has_data(dxo: &Dxo<'_>) -> bool {
    !dxo.tensors().is_empty() || dxo.opaque().is_some_and(|o| !o.is_empty())
}

/// Whether a received message carries a DXO with data, and meta (`docs/protocol.md` §1.2,
/// "missing").
fn data_and_meta(message: &Message<'_>) -> (bool, bool) {
    let data = message.has_dxo() && (message.tensor_count() > 0 || !message.opaque().is_empty());
    (data, !message.meta().is_empty())
}

/// The meta entry `data_kind` FLARE writes for the DXO (its kind's name): set on top of the
/// DXO's own meta when it is sent (no copy of the DXO).
fn kind_meta(dxo: &Dxo<'_>) -> (&'static str, Value) {
    (META_DATA_KIND, Value::from(dxo.data_kind().as_str()))
}

/// A message without a DXO (an ack, `abort`, `bye`) that waits in a side's ordered outgoing
/// queue until the outbox is free.
trait Queued {
    /// The message to push.
    fn envelope(&self) -> Envelope<'_>;
}

/// Pushes `queued` in order, dropping those `current` rejects (addressed to a peer that is
/// gone), each waiting for ring space until `deadline()`. The first that finds no room is
/// returned with every current message after it, in order, for the caller to put back in front
/// of its queue; a message that fails otherwise (the peer gone, the ring corrupt) cannot matter
/// any more and is dropped. The result is the first error.
fn push_in_order<T: Queued>(
    sender: &mut FrameSender,
    producer: &mut Producer,
    queued: Vec<T>,
    current: impl Fn(&T) -> bool,
    deadline: impl Fn() -> Option<Instant>,
) -> (Vec<T>, Result<(), SendError>) {
    let mut left = Vec::new();
    let mut result = Ok(());
    for message in queued.into_iter().filter(|m| current(m)) {
        if !left.is_empty() {
            left.push(message);
            continue;
        }
        match sender.send(producer, &message.envelope(), None, deadline()) {
            Ok(_) => {}
            Err(SendError::Timeout) => {
                result = result.and(Err(SendError::Timeout));
                left.push(message);
            }
            Err(e) => result = result.and(Err(e)),
        }
    }
    (left, result)
}

/// Locks `mutex`, taking over a lock whose holder panicked (the protected state is kept
/// consistent between statements, so a panic elsewhere does not poison it for us).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`lock`] unless another thread holds `mutex`: never waits.
fn try_lock<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// The state both sides share between user calls and the pump: a mutex-guarded value, a
/// condition variable signalled on every change, and a change counter.
///
/// A waiting call sleeps on the condition variable, except where its side's
/// [`WaitStrategy::spin`] is not zero and it is pinned to the very CPU its pump is pinned to
/// (a process pinned to a core): there it first spins for `spin` (from the start of its
/// wait), watching the change counter and yielding the CPU between looks, and a notifier that
/// sees a spinning waiter yields to it at once. On one CPU that hand-off costs about half of a
/// futex wake-up's (0.5 against 0.9 µs measured), twice per task round trip. Never a
/// busy-poll: it would keep the pump off the CPU (measured: 8.5 ms instead of 7 µs per 4 KiB
/// round trip with both processes pinned); and never a yielding spin where the waiter may
/// share a CPU with another process's spinning thread, which a yield does not displace
/// (measured unpinned on 2 CPUs: round trips of milliseconds from the 90th percentile on).
#[derive(Debug)]
struct Shared<S> {
    state: Mutex<S>,
    changed: Condvar,
    /// Bumped by every [`Shared::notify`]: what a spinning waiter watches.
    changes: AtomicU64,
    /// Threads spinning in [`Shared::wait`]: [`Shared::notify`] yields to them.
    spinners: AtomicUsize,
    /// Threads asleep in [`Shared::wait`]: [`Shared::notify`] makes no system call (the
    /// condition variable's `notify_all` always makes one) when there are none.
    sleepers: AtomicUsize,
    /// How long a wait spins before it sleeps ([`WaitStrategy::spin`]).
    spin: Duration,
    /// The CPU the pump thread is pinned to, plus one (0: not pinned), as the pump last saw
    /// it ([`Shared::note_pump_cpu`]).
    pump_cpu: AtomicUsize,
}

impl<S> Shared<S> {
    fn new(state: S, wait: &WaitStrategy) -> Shared<S> {
        Shared {
            state: Mutex::new(state),
            changed: Condvar::new(),
            changes: AtomicU64::new(0),
            spinners: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            spin: wait.spin,
            pump_cpu: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, S> {
        lock(&self.state)
    }

    /// Called by the pump thread (when it starts and at each liveness check): records the
    /// CPU it is pinned to, if any.
    fn note_pump_cpu(&self) {
        let cpu = crate::sys::pinned_cpu().map_or(0, |cpu| cpu + 1);
        self.pump_cpu.store(cpu, Ordering::Relaxed);
    }

    /// Until when a wait that starts now on this thread may spin: `None` (it sleeps at once)
    /// unless the strategy spins and this thread is pinned to the pump's CPU.
    fn spin_until(&self) -> Option<Instant> {
        if self.spin.is_zero() {
            return None;
        }
        let pump = self.pump_cpu.load(Ordering::Relaxed);
        if pump == 0 || crate::sys::pinned_cpu().map(|cpu| cpu + 1) != Some(pump) {
            return None;
        }
        Instant::now().checked_add(self.spin)
    }

    /// Waits for a change, at most `slice` and not past `deadline`: spinning until
    /// `spin_until` (see [`Shared::spin_until`]), then asleep. Returns the state locked again;
    /// the caller re-checks it (the change may not be the one it waits for, or none came).
    fn wait<'g>(
        &'g self,
        guard: MutexGuard<'g, S>,
        slice: Duration,
        deadline: Option<Instant>,
        spin_until: Option<Instant>,
    ) -> MutexGuard<'g, S> {
        let now = Instant::now();
        let timeout = deadline.map_or(slice, |d| d.saturating_duration_since(now).min(slice));
        // SYNC (`changes` and both counters): read and counted under the lock, before the
        // wait lets go of it. A notifier changes the state under the lock, then bumps
        // `changes` and reads the counters: if it locked after us, the mutex orders our read
        // and counts before its bump and loads, so it sees us and we see its bump; if it
        // locked before us, our caller saw its change. Relaxed suffices for that.
        if let Some(until) = spin_until.filter(|&until| until > now) {
            let until = until.min(now + timeout);
            let seen = self.changes.load(Ordering::Relaxed);
            self.spinners.fetch_add(1, Ordering::Relaxed);
            drop(guard);
            while self.changes.load(Ordering::Relaxed) == seen && Instant::now() < until {
                std::thread::yield_now();
            }
            self.spinners.fetch_sub(1, Ordering::Relaxed);
            return self.lock();
        }
        self.sleepers.fetch_add(1, Ordering::Relaxed);
        let guard = self
            .changed
            .wait_timeout(guard, timeout)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        self.sleepers.fetch_sub(1, Ordering::Relaxed);
        guard
    }

    /// Tells the threads in [`Shared::wait`]. Call it after changing the state under the lock
    /// and letting go of it: a waiter either saw the change or was counted before it.
    fn notify(&self) {
        // SYNC: pairs with the reads and counts in `wait` through the state mutex (see there).
        self.changes.fetch_add(1, Ordering::Relaxed);
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            self.changed.notify_all();
        }
        if self.spinners.load(Ordering::Relaxed) > 0 {
            // The spinner shares the pump's CPU: let it run now, not when our slice ends.
            std::thread::yield_now();
        }
    }
}

/// The pump's receive slice: its liveness checks run at least this often.
fn pump_slice(wait: &WaitStrategy) -> Duration {
    wait.poll_interval
        .clamp(Duration::from_millis(1), Duration::from_millis(100))
}

/// `now + d`, or `None` (forever) when it overflows.
fn deadline_after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// The data kind of a result's DXO per DESIGN §5 item 8: `APP_DEFINED` if the task was, else
/// the result's meta `data_kind`, default `WEIGHTS`; `None` if meta names an unknown kind.
fn result_data_kind(task_app_defined: bool, meta: &Map<String, Value>) -> Option<DataKind> {
    if task_app_defined {
        return Some(DataKind::AppDefined);
    }
    match meta.get(META_DATA_KIND) {
        None => Some(DataKind::Weights),
        Some(v) => v.as_str().and_then(|s| s.parse().ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the calling thread to `cpu`.
    fn pin(cpu: usize) {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set).unwrap();
    }

    /// Waits (on `shared`, spinning as its strategy and pinning allow) until the value is
    /// `want`, with a watchdog against a lost wake-up.
    fn wait_for(shared: &Shared<u32>, want: u32) {
        let watchdog = Instant::now() + Duration::from_secs(60);
        let spin_until = shared.spin_until();
        let mut value = shared.lock();
        while *value != want {
            assert!(Instant::now() < watchdog, "lost wake-up");
            // A slice far longer than the test: only a notify ends the wait early.
            value = shared.wait(value, Duration::from_secs(30), None, spin_until);
        }
    }

    /// A waiter pinned to its pump's CPU spins (yielding); elsewhere it sleeps. Either way it
    /// sees every change: a ping-pong of changes between a "pump" and a "caller" thread.
    #[test]
    fn waits_spin_only_pinned_with_the_pump_and_lose_no_change() {
        let spinning = WaitStrategy::default().spin(Duration::from_secs(5));
        for (strategy, pinned) in [
            (spinning, true),
            (spinning, false),
            (WaitStrategy::default().spin(Duration::ZERO), true),
        ] {
            let shared = Shared::new(0u32, &strategy);
            let cpu = crate::sys::pinned_cpu().unwrap_or_else(rustix::thread::sched_getcpu);
            std::thread::scope(|s| {
                s.spawn(|| {
                    if pinned {
                        pin(cpu);
                    }
                    shared.note_pump_cpu();
                    for round in 0..200 {
                        wait_for(&shared, 2 * round + 1);
                        *shared.lock() += 1;
                        shared.notify();
                    }
                });
                s.spawn(|| {
                    if pinned {
                        pin(cpu);
                        // The "pump" notes its CPU first.
                        while shared.pump_cpu.load(Ordering::Relaxed) == 0 {
                            std::thread::yield_now();
                        }
                    }
                    let spins = shared.spin_until().is_some();
                    if strategy.spin.is_zero() {
                        assert!(!spins, "no spin configured");
                    } else if pinned {
                        assert_eq!(spins, cfg!(target_os = "linux"), "pinned with the pump");
                    } else if crate::sys::pinned_cpu().is_none() {
                        assert!(!spins, "free to run elsewhere");
                    }
                    for round in 0..200 {
                        *shared.lock() += 1;
                        shared.notify();
                        wait_for(&shared, 2 * round + 2);
                    }
                });
            });
            assert_eq!(*shared.lock(), 400);
        }
    }

    #[test]
    fn a_checked_signal_latches_and_its_clones_share_it() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let signal = AbortSignal::with_check(move || counted.fetch_add(1, Ordering::Relaxed) >= 2);
        let clone = signal.clone();
        assert!(!signal.is_aborted());
        assert!(!clone.is_aborted());
        assert!(signal.is_aborted(), "the third poll says abort");
        assert!(clone.is_aborted());
        assert!(signal.is_aborted());
        assert_eq!(calls.load(Ordering::Relaxed), 3, "not asked once triggered");
        assert!(format!("{signal:?}").contains("aborted: true"));
    }

    #[test]
    fn abort_triggers_a_checked_signal_without_asking_the_check() {
        let signal = AbortSignal::with_check(|| panic!("asked"));
        signal.abort();
        assert!(signal.is_aborted());
        assert!(!AbortSignal::new().is_aborted());
    }
}
