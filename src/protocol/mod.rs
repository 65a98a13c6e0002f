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
pub use config::{AgentConfig, ExchangerConfig, RestartPolicy};
pub use exchanger::{
    CloseError, Exchanger, ExchangerCreateError, ExchangerStatus, Reply, TaskLoan, TaskLoanError,
};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// A flag the caller of [`Exchanger::execute`] sets, from any thread, to abort the task.
/// Clones share the flag; setting it is one atomic store.
#[derive(Clone, Debug, Default)]
pub struct AbortSignal(Arc<AtomicBool>);

impl AbortSignal {
    /// A signal not yet triggered.
    pub fn new() -> AbortSignal {
        AbortSignal::default()
    }

    /// Triggers the signal: a running or later `execute` given it returns `TASK_ABORTED`.
    pub fn abort(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the signal was triggered.
    pub fn is_aborted(&self) -> bool {
        self.0.load(Ordering::Acquire)
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

/// The state both sides share between user calls and the pump: a mutex-guarded value and a
/// condition variable signalled on every change.
///
/// Waiters sleep on the condition variable, never spin: a side's calls and its pump often
/// share one CPU (a process pinned to a core), where a caller spinning for the pump's hand-off
/// keeps the pump from running at all (measured: 8.5 ms instead of 7 µs per 4 KiB task round
/// trip with both processes pinned).
#[derive(Debug)]
struct Shared<S> {
    state: Mutex<S>,
    changed: Condvar,
    /// Threads asleep in [`Shared::wait`]: [`Shared::notify`] makes no system call (the
    /// condition variable's `notify_all` always makes one) when there are none.
    sleepers: AtomicUsize,
}

impl<S> Shared<S> {
    fn new(state: S) -> Shared<S> {
        Shared {
            state: Mutex::new(state),
            changed: Condvar::new(),
            sleepers: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, S> {
        lock(&self.state)
    }

    /// Waits for a change, at most `slice` and not past `deadline`.
    fn wait<'g>(
        &self,
        guard: MutexGuard<'g, S>,
        slice: Duration,
        deadline: Option<Instant>,
    ) -> MutexGuard<'g, S> {
        let now = Instant::now();
        let timeout = deadline.map_or(slice, |d| d.saturating_duration_since(now).min(slice));
        // SYNC: counted under the lock, before the wait lets go of it: a notifier that changes
        // the state under the lock after that sees the count (the mutex orders the two), and a
        // change made before it was seen by our caller's check. Relaxed suffices for that.
        self.sleepers.fetch_add(1, Ordering::Relaxed);
        let guard = self
            .changed
            .wait_timeout(guard, timeout)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        self.sleepers.fetch_sub(1, Ordering::Relaxed);
        guard
    }

    /// Wakes the threads in [`Shared::wait`]. Call it after changing the state under the lock
    /// (and letting go of it): a waiter either saw the change or was counted before it.
    fn notify(&self) {
        // SYNC: pairs with the increment in `wait` through the state mutex (see there).
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            self.changed.notify_all();
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
