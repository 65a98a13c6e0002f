//! The exchanger: creates the link, hands tasks to the agent and waits for their results
//! (`docs/protocol.md` §3.1).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{
    dxo_has_data, kind_meta, pump_slice, result_data_kind, AbortSignal, ExchangerConfig, Headers,
    RestartPolicy, Shared, META_CURRENT_ROUND, META_DATA_KIND, META_TOTAL_ROUND,
};
use crate::control::Liveness;
use crate::frame::{
    CommittedLoan, DataKind, DetachedLoan, DroppedMessage, Dxo, Element, Envelope, ExtraMeta,
    FrameError, FrameReceiver, FrameSender, LoanError, LoanSpec, Message, MessageKind,
    OwnedMessage, RecordCopy, ReturnCode, SendError, ViewError,
};
use crate::link::{CreateOptions, Link, LinkControl, LinkCreateError, LinkParts};
use crate::ring::{Consumer, Producer};
use crate::segment::SegmentName;
use serde_json::Value;
use zerocopy::{FromBytes, KnownLayout};

/// What [`Exchanger::execute`] returns: FLARE's return code and, for a successful result,
/// the result's DXO.
#[derive(Debug)]
pub struct Reply {
    /// The return code (`OK`, `TASK_ABORTED`, `BAD_REQUEST_DATA`, ... or the result's own).
    pub rc: ReturnCode,
    /// The result DXO's data kind (DESIGN §5 item 8); `None` for a bare reply.
    pub data_kind: Option<DataKind>,
    /// The result message (tensors, meta, opaque bytes); `None` for a bare reply.
    pub result: Option<OwnedMessage>,
}

impl Reply {
    /// A reply with only a return code.
    pub fn bare(rc: ReturnCode) -> Reply {
        Reply {
            rc,
            data_kind: None,
            result: None,
        }
    }
}

/// The exchanger's view of the agent (`docs/protocol.md` §3.1, agent status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangerStatus {
    /// No agent incarnation is attached.
    NoAgent,
    /// Agent incarnation `epoch` is attached and beating.
    Connected {
        /// The incarnation's epoch.
        epoch: u64,
    },
    /// Agent incarnation `epoch` is attached but its heartbeat has been still for
    /// `agent_connection_timeout` or longer.
    Disconnected {
        /// The incarnation's epoch.
        epoch: u64,
    },
    /// The agent was silent for `agent_heartbeat_timeout`, or the link is corrupt: every
    /// `execute` returns `TASK_ABORTED`.
    Stopped,
    /// [`Exchanger::close`] was called.
    Closed,
}

/// Why [`Exchanger::create`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangerCreateError {
    /// The link could not be created.
    #[error(transparent)]
    Link(#[from] LinkCreateError),
    /// The pump thread could not be started.
    #[error("cannot start the pump thread: {0}")]
    Spawn(std::io::Error),
}

/// Why [`Exchanger::close`] could not say `bye`.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    /// Pushing `bye` failed (the agent may not learn that the exchanger closed before it
    /// notices the side state).
    #[error("bye not delivered: {0}")]
    Bye(#[from] SendError),
}

/// Where a task is (`docs/protocol.md` §3.1, execute).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A [`TaskLoan`] is being filled: nothing is in the ring yet.
    Loaned,
    WaitAgent,
    /// Pushed (or being pushed) to incarnation `epoch`, not acked yet.
    Sending {
        epoch: u64,
    },
    /// Accepted by incarnation `epoch`.
    Running {
        epoch: u64,
    },
}

impl Phase {
    /// The agent incarnation the task was (being) pushed to.
    fn epoch(self) -> Option<u64> {
        match self {
            Phase::Loaned | Phase::WaitAgent => None,
            Phase::Sending { epoch } | Phase::Running { epoch } => Some(epoch),
        }
    }
}

#[derive(Debug)]
struct InFlight {
    id: String,
    app_defined: bool,
    phase: Phase,
    /// Set by the pump together with queueing the `result_ack` it owes (under the same lock):
    /// a next task is pushed after the queue, so it follows the ack in the ring (the agent
    /// would otherwise see the next task first and take its own task as superseded).
    outcome: Option<Reply>,
    /// The sequence number of the task message last pushed: an agent that could not read the
    /// task answers it by this number alone.
    sequence: Option<u64>,
}

#[derive(Debug)]
struct State {
    status: ExchangerStatus,
    task: Option<InFlight>,
    /// The id of the last task whose result completed `execute` (duplicates are acked ok).
    last_completed: Option<String>,
    /// Tasks pushed again to a new agent incarnation.
    redeliveries: u64,
    /// Messages without DXO (`abort`, `result_ack`, `bye`) not yet pushed, in order: the
    /// pump and `execute`'s abort never wait for the outbox (another thread may be pushing,
    /// or a [`TaskLoan`] may hold the producer).
    outgoing: Vec<Control>,
}

/// A queued message without DXO.
#[derive(Debug)]
struct Control {
    kind: MessageKind,
    id: String,
    rc: ReturnCode,
    /// The agent incarnation addressed: dropped if it is no longer the bound one.
    epoch: u64,
    reply_to: u64,
}

impl super::Queued for Control {
    fn envelope(&self) -> Envelope<'_> {
        Envelope::new(self.kind)
            .with_task(&self.id, "")
            .with_rc(self.rc)
            .with_epoch(self.epoch)
            .with_reply_to(self.reply_to)
    }
}

struct Outbox {
    /// `None` while a [`TaskLoan`] holds it.
    producer: Option<Producer>,
    sender: FrameSender,
}

struct Inner {
    shared: Shared<State>,
    outbox: Mutex<Option<Outbox>>,
    config: ExchangerConfig,
    /// The agent epoch tasks are pushed to (0: none); read by a streaming push to stop when
    /// that incarnation ends.
    bound: AtomicU64,
    /// Set by `close` or when the exchanger stops: pushes in progress stop.
    halted: AtomicBool,
    /// Tells the pump to exit.
    stop: AtomicBool,
    /// The segment's name, for the log.
    name: SegmentName,
}

/// The FL-client side of the task protocol: creates the link, sends one task at a time and
/// waits for its result (FLARE's `IPCExchanger`). Share it between threads by reference (all
/// calls take `&self`); [`Exchanger::close`] (or dropping it) says `bye` and removes the
/// segment.
pub struct Exchanger {
    inner: Arc<Inner>,
    pump: Mutex<Option<JoinHandle<(Consumer, LinkControl)>>>,
    name: SegmentName,
}

impl std::fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchanger")
            .field("name", &self.name)
            .field("status", &self.status())
            .finish()
    }
}

/// FLARE warns when the heartbeat cannot keep the agent from looking disconnected (or dead):
/// an interval not shorter than the timeouts it feeds.
fn warn_heartbeat_settings(name: &SegmentName, config: &ExchangerConfig) {
    let interval = config.agent_heartbeat_interval;
    let timeouts = [
        (
            "agent_connection_timeout",
            Some(config.agent_connection_timeout),
        ),
        ("agent_heartbeat_timeout", config.agent_heartbeat_timeout),
    ];
    for (what, timeout) in timeouts {
        if let Some(timeout) = timeout.filter(|t| interval >= *t) {
            log::warn!(
                "shmex exchanger {name}: agent_heartbeat_interval ({interval:?}) is not shorter \
                 than {what} ({timeout:?}): a live agent may be taken for a silent one"
            );
        }
    }
}

impl Exchanger {
    /// Creates the link `name` (reclaiming a dead owner's segment) and starts the pump.
    pub fn create(
        name: &SegmentName,
        config: ExchangerConfig,
    ) -> Result<Exchanger, ExchangerCreateError> {
        let options = CreateOptions {
            task_ring_capacity: config.task_ring_capacity,
            result_ring_capacity: config.result_ring_capacity,
            heartbeat_interval: config.agent_heartbeat_interval,
            wait: config.wait,
            reclaim_stale: config.reclaim_stale,
            populate: true,
        };
        warn_heartbeat_settings(name, &config);
        // Before the link exists, so no agent waits on a link without a pump meanwhile.
        let mut receiver = FrameReceiver::new(config.limits);
        super::config::reserve_receiver(&mut receiver, config.expected_message_len, "exchanger");
        let LinkParts {
            producer,
            consumer,
            control,
        } = Link::create(name, &options)?.into_parts();
        let inner = Arc::new(Inner {
            shared: Shared::new(
                State {
                    status: ExchangerStatus::NoAgent,
                    task: None,
                    last_completed: None,
                    redeliveries: 0,
                    outgoing: Vec::new(),
                },
                &config.wait,
            ),
            outbox: Mutex::new(Some(Outbox {
                producer: Some(producer),
                sender: FrameSender::new(),
            })),
            bound: AtomicU64::new(0),
            halted: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            name: name.clone(),
            config,
        });
        let mut pump = Pump {
            receiver,
            consumer,
            core: PumpCore {
                inner: Arc::clone(&inner),
                control,
                bound: 0,
                min_epoch: 1,
                last_alive: Instant::now(),
            },
        };
        let handle = std::thread::Builder::new()
            .name("shmex-exchanger-pump".into())
            .spawn(move || {
                pump.run();
                (pump.consumer, pump.core.control)
            })
            .map_err(ExchangerCreateError::Spawn)?;
        Ok(Exchanger {
            inner,
            pump: Mutex::new(Some(handle)),
            name: name.clone(),
        })
    }

    /// The segment's name.
    pub fn name(&self) -> &SegmentName {
        &self.name
    }

    /// The exchanger's view of the agent.
    pub fn status(&self) -> ExchangerStatus {
        self.inner.shared.lock().status
    }

    /// How many times a task was pushed again to a new agent incarnation.
    pub fn redeliveries(&self) -> u64 {
        self.inner.shared.lock().redeliveries
    }

    /// Sends task `task_name` with data `dxo` to the agent and waits for its result; returns
    /// FLARE's return code and, on success, the result. Blocks until the result, `abort`
    /// (set from any thread: the agent is sent `abort`, `TASK_ABORTED`), [`Exchanger::close`]
    /// (`TASK_ABORTED`), the optional `result_timeout` (`TIMEOUT`), or the loss of the agent
    /// under [`RestartPolicy::Fail`] (`EXECUTION_EXCEPTION`). While no agent is attached it
    /// waits for one. A second call while a task is in flight returns `BAD_REQUEST_DATA`; an
    /// empty task id `BAD_TASK_DATA`; a DXO without tensors or opaque bytes
    /// `BAD_REQUEST_DATA`.
    ///
    /// The task's meta is the DXO's plus `data_kind`, and `current_round`/`total_round`
    /// from `headers`. `abort` is `None` when the caller never aborts (the common case) or
    /// `&signal` for an [`AbortSignal`] another thread may trigger:
    /// `exchanger.execute("train", &dxo, &headers, None)`.
    pub fn execute<'a>(
        &self,
        task_name: &str,
        dxo: &Dxo<'_>,
        headers: &Headers,
        abort: impl Into<Option<&'a AbortSignal>>,
    ) -> Reply {
        let never = AbortSignal::new();
        let abort = abort.into().unwrap_or(&never);
        if headers.task_id.is_empty() {
            return Reply::bare(ReturnCode::BadTaskData);
        }
        if !dxo_has_data(dxo) {
            return Reply::bare(ReturnCode::BadRequestData);
        }
        // In key order (the sender's rule): current_round, data_kind, total_round.
        let mut meta = Vec::with_capacity(3);
        if let Some(round) = headers.current_round {
            meta.push((META_CURRENT_ROUND, Value::from(round)));
        }
        meta.push(kind_meta(dxo));
        if let Some(rounds) = headers.num_rounds {
            meta.push((META_TOTAL_ROUND, Value::from(rounds)));
        }
        let id = headers.task_id.as_str();
        let app_defined = dxo.data_kind() == DataKind::AppDefined;
        if let Err(rc) = self.inner.begin_task(id, app_defined, Phase::WaitAgent) {
            return Reply::bare(rc);
        }
        self.inner
            .run_task(task_name, id, TaskSource::Copy(dxo, &meta), abort, None)
    }

    /// Lends ring space for a task laid out by `spec` (data kind, meta, and the name, dtype
    /// and shape of each tensor): fill its tensors in place through the returned
    /// [`TaskLoan`], then [`TaskLoan::execute`] it (zero copies on this side). The task must
    /// fit in one record of the task ring. The task's meta is the spec's plus `data_kind` and
    /// the round headers, as [`Exchanger::execute`].
    ///
    /// The task is in flight from this call on (a second `execute` or loan returns
    /// `BAD_REQUEST_DATA`); it reaches the agent only at [`TaskLoan::execute`], stamped with
    /// the agent incarnation attached then, so a loan may be taken and filled before any
    /// agent attaches. Waits for ring space only if the ring is still full of messages the
    /// agent has not read; `abort` and [`Exchanger::close`] end that wait. Fails (nothing
    /// sent, no task in flight) with a [`TaskLoanError`], whose [`TaskLoanError::rc`] is the
    /// return code `execute` would give.
    pub fn loan_task<'a>(
        &self,
        task_name: &str,
        spec: &LoanSpec,
        headers: &Headers,
        abort: impl Into<Option<&'a AbortSignal>>,
    ) -> Result<TaskLoan, TaskLoanError> {
        let never = AbortSignal::new();
        let abort = abort.into().unwrap_or(&never);
        if headers.task_id.is_empty() {
            return Err(TaskLoanError::EmptyTaskId);
        }
        if spec.tensors.is_empty() && spec.opaque_len == 0 {
            return Err(TaskLoanError::NoData);
        }
        let mut task = spec.clone().meta(META_DATA_KIND, spec.data_kind.as_str());
        if let Some(round) = headers.current_round {
            task = task.meta(META_CURRENT_ROUND, round);
        }
        if let Some(rounds) = headers.num_rounds {
            task = task.meta(META_TOTAL_ROUND, rounds);
        }
        let id = headers.task_id.as_str();
        // The epoch is stamped when the task is sent (`TaskLoan::execute`).
        let envelope = Envelope::new(MessageKind::Task).with_task(id, task_name);
        let prepared = FrameSender::prepare(&envelope, &task).map_err(TaskLoanError::Spec)?;
        let app_defined = spec.data_kind == DataKind::AppDefined;
        self.inner
            .begin_task(id, app_defined, Phase::Loaned)
            .map_err(|rc| match rc {
                ReturnCode::TaskAborted => TaskLoanError::Closed,
                _ => TaskLoanError::Busy,
            })?;
        let inner = &self.inner;
        let slice = pump_slice(&inner.config.wait);
        let taken = {
            let mut outbox = inner.lock_outbox();
            // What is queued goes before the task in the ring.
            let _ = inner.flush_outgoing(&mut outbox, slice);
            outbox
                .as_mut()
                .and_then(|o| Some((o.producer.take()?, o.sender.ticket())))
        };
        let Some((mut producer, ticket)) = taken else {
            inner.abandon_task();
            return Err(TaskLoanError::Closed);
        };
        let cancelled = || abort.is_aborted() || inner.halted.load(Ordering::Acquire);
        let reserved = DetachedLoan::reserve(
            &mut producer,
            &prepared,
            ticket,
            None,
            Some((&cancelled, slice)),
        );
        match reserved {
            Ok(loan) => Ok(TaskLoan {
                inner: Arc::clone(inner),
                producer: Some(producer),
                loan: Some(loan),
                task_name: task_name.to_string(),
                id: id.to_string(),
            }),
            Err(e) => {
                inner.return_producer(producer);
                inner.abandon_task();
                Err(match e {
                    LoanError::Send(SendError::Cancelled) if abort.is_aborted() => {
                        TaskLoanError::Aborted
                    }
                    LoanError::Send(SendError::Cancelled) => TaskLoanError::Closed,
                    e => TaskLoanError::Spec(e),
                })
            }
        }
    }
}

/// Why [`Exchanger::loan_task`] failed; nothing was sent and no task is in flight.
#[derive(Debug, thiserror::Error)]
pub enum TaskLoanError {
    /// A task is in flight already (`BAD_REQUEST_DATA`, DESIGN §5 E1).
    #[error("a task is in flight already")]
    Busy,
    /// The task id is empty (`BAD_TASK_DATA`).
    #[error("the task id is empty")]
    EmptyTaskId,
    /// The spec has no tensors and no opaque bytes (`BAD_REQUEST_DATA`, DESIGN §5 E3).
    #[error("the task has no data")]
    NoData,
    /// The spec is not a valid DXO, the task does not fit in one record of the task ring
    /// (`BAD_TASK_DATA`), or the ring is corrupt (`COMMUNICATION_ERROR`).
    #[error(transparent)]
    Spec(LoanError),
    /// The abort signal was set while waiting for ring space (`TASK_ABORTED`).
    #[error("aborted while waiting for ring space")]
    Aborted,
    /// The exchanger is stopped or closed (`TASK_ABORTED`).
    #[error("the exchanger is stopped or closed")]
    Closed,
}

impl TaskLoanError {
    /// The return code [`Exchanger::execute`] gives in the same case.
    pub fn rc(&self) -> ReturnCode {
        match self {
            TaskLoanError::Busy | TaskLoanError::NoData => ReturnCode::BadRequestData,
            TaskLoanError::EmptyTaskId => ReturnCode::BadTaskData,
            TaskLoanError::Spec(LoanError::Send(SendError::Corrupt(_))) => {
                ReturnCode::CommunicationError
            }
            TaskLoanError::Spec(_) => ReturnCode::BadTaskData,
            TaskLoanError::Aborted | TaskLoanError::Closed => ReturnCode::TaskAborted,
        }
    }
}

/// A task being built in place in the task ring ([`Exchanger::loan_task`]): fill its
/// tensors, then [`TaskLoan::execute`] it. An owned handle (it keeps the exchanger's state
/// alive and holds its sending half), so a binding can keep it across calls and threads.
///
/// The task is in flight while the loan is out: the pump keeps receiving and queues what it
/// must send (acks, `bye`) until the loan is executed or dropped. Dropping the loan abandons
/// the task: nothing of it ever becomes visible to the agent (also if this process dies) and
/// no task is in flight any more.
///
/// Redelivery (`RestartPolicy::Redeliver`): if the agent incarnation the task was sent to
/// ends before answering, the task's record is copied back out of the ring (the agent never
/// writes the ring, and the exchanger writes over the record only after a whole lap of
/// later messages) and sent to the next incarnation; if it was written over meanwhile,
/// `execute` returns `EXECUTION_EXCEPTION` (`docs/protocol.md` §9).
#[must_use = "a task loan sends nothing until it is executed; dropping it abandons the task"]
pub struct TaskLoan {
    inner: Arc<Inner>,
    /// `Some` until executed or dropped.
    producer: Option<Producer>,
    loan: Option<DetachedLoan>,
    task_name: String,
    id: String,
}

impl std::fmt::Debug for TaskLoan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskLoan")
            .field("task_id", &self.id)
            .field("loan", &self.loan)
            .finish_non_exhaustive()
    }
}

impl TaskLoan {
    loan_accessors!("APP_DEFINED tasks");

    /// The task id.
    pub fn task_id(&self) -> &str {
        &self.id
    }

    /// Sends the task and waits for its result, as [`Exchanger::execute`] (same return
    /// codes). Waits for an agent first if none is attached; the task is stamped with the
    /// incarnation it goes to. If `abort` is set or the exchanger closes before the task is
    /// sent, nothing is sent and the answer is `TASK_ABORTED`.
    pub fn execute<'a>(mut self, abort: impl Into<Option<&'a AbortSignal>>) -> Reply {
        let never = AbortSignal::new();
        let abort = abort.into().unwrap_or(&never);
        let inner = Arc::clone(&self.inner);
        let (Some(loan), Some(mut producer)) = (self.loan.take(), self.producer.take()) else {
            return Reply::bare(ReturnCode::Error);
        };
        let slice = pump_slice(&inner.config.wait);
        let epoch = loop {
            // Polled before locking: the signal's check may wait (see `AbortSignal::with_check`).
            let aborted = abort.is_aborted();
            let mut st = inner.shared.lock();
            let status = st.status;
            let halted = matches!(status, ExchangerStatus::Stopped | ExchangerStatus::Closed);
            let Some(t) = st.task.as_mut() else {
                break None;
            };
            if t.outcome.is_some() || aborted || halted {
                break None;
            }
            if let ExchangerStatus::Connected { epoch } = status {
                t.phase = Phase::Sending { epoch };
                break Some(epoch);
            }
            // Waiting for an agent to attach: asleep at once.
            drop(inner.shared.wait(st, slice, None, None));
        };
        let Some(epoch) = epoch else {
            // Not sent: the outcome (a result that came first), the abort or the close
            // decides; the record is abandoned.
            drop(loan);
            inner.return_producer(producer);
            let abandoned = TaskSource::Loaned {
                committed: None,
                copy: None,
            };
            return inner.run_task(&self.task_name, &self.id, abandoned, abort, None);
        };
        let committed = loan
            .set_epoch(&mut producer, epoch)
            .and_then(|()| loan.commit(&mut producer));
        inner.return_producer(producer);
        let source = TaskSource::Loaned {
            committed: committed.ok(),
            copy: None,
        };
        inner.run_task(
            &self.task_name,
            &self.id,
            source,
            abort,
            Some(Instant::now()),
        )
    }
}

impl Drop for TaskLoan {
    fn drop(&mut self) {
        // Not executed: abandon the record, give the producer back, end the task.
        self.loan = None;
        if let Some(producer) = self.producer.take() {
            self.inner.return_producer(producer);
            self.inner.abandon_task();
        }
    }
}

/// What a task's bytes come from, for its first push and its redeliveries.
enum TaskSource<'a> {
    /// The caller's DXO (`execute`) and the meta entries set on top of its own: copied into
    /// the ring at each push.
    Copy(&'a Dxo<'a>, ExtraMeta<'a>),
    /// A committed [`TaskLoan`]: redelivered from its record, copied out of the ring (or from
    /// the copy made for an earlier redelivery).
    Loaned {
        /// `None`: never committed.
        committed: Option<CommittedLoan>,
        copy: Option<RecordCopy>,
    },
}

impl Inner {
    /// Makes task `id` the one in flight; `Err(rc)` if one already is (`BAD_REQUEST_DATA`) or
    /// the exchanger stopped or closed (`TASK_ABORTED`).
    fn begin_task(&self, id: &str, app_defined: bool, phase: Phase) -> Result<(), ReturnCode> {
        let mut st = self.shared.lock();
        if st.task.is_some() {
            return Err(ReturnCode::BadRequestData);
        }
        if matches!(
            st.status,
            ExchangerStatus::Stopped | ExchangerStatus::Closed
        ) {
            return Err(ReturnCode::TaskAborted);
        }
        st.task = Some(InFlight {
            id: id.to_string(),
            app_defined,
            phase,
            outcome: None,
            sequence: None,
        });
        Ok(())
    }

    /// A loaned task that never reached the ring is no longer in flight.
    fn abandon_task(&self) {
        let mut st = self.shared.lock();
        if st.task.as_ref().is_some_and(|t| t.phase == Phase::Loaned) {
            st.task = None;
        }
        drop(st);
        self.shared.notify();
    }

    /// Gives a loan's producer back to the outbox and pushes what was queued meanwhile.
    fn return_producer(&self, producer: Producer) {
        let mut outbox = self.lock_outbox();
        if let Some(o) = outbox.as_mut().filter(|o| o.producer.is_none()) {
            o.producer = Some(producer);
        }
        let _ = self.flush_outgoing(&mut outbox, pump_slice(&self.config.wait));
    }

    /// Waits for the in-flight task's outcome, pushing it (again) whenever it waits for an
    /// agent (`docs/protocol.md` §3.1, execute). `first_push` is when it was first pushed.
    fn run_task(
        &self,
        task_name: &str,
        id: &str,
        mut source: TaskSource<'_>,
        abort: &AbortSignal,
        mut first_push: Option<Instant>,
    ) -> Reply {
        let slice = pump_slice(&self.config.wait);
        // `result_timeout` counts from the first push, so a task whose ack never comes (a
        // stalled agent, a lost ack) ends too.
        let mut warned_late_ack = false;
        let spin_until = self.shared.spin_until();
        loop {
            // Polled before locking, as in `TaskLoan::execute`.
            let aborted = abort.is_aborted();
            let mut st = self.shared.lock();
            let status = st.status;
            let Some(t) = st.task.as_mut() else {
                // Only this call clears the task while it runs.
                return Reply::bare(ReturnCode::Error);
            };
            if t.outcome.is_some() {
                let reply = st.task.take().and_then(|t| t.outcome);
                return reply.unwrap_or_else(|| Reply::bare(ReturnCode::Error));
            }
            let halted = matches!(status, ExchangerStatus::Stopped | ExchangerStatus::Closed);
            if aborted || halted {
                return self.end_task(st, ReturnCode::TaskAborted);
            }
            if let (Some(limit), Some(pushed)) = (self.config.result_timeout, first_push) {
                if pushed.elapsed() >= limit {
                    return self.end_task(st, ReturnCode::Timeout);
                }
            }
            match t.phase {
                Phase::WaitAgent => {
                    if let ExchangerStatus::Connected { epoch } = status {
                        t.phase = Phase::Sending { epoch };
                        first_push.get_or_insert_with(Instant::now);
                        drop(st);
                        let sent = self.push_task(task_name, id, &mut source, epoch, abort);
                        let st = self.shared.lock();
                        if st.task.is_none() {
                            continue;
                        }
                        match sent {
                            // Pushed, or stopped by an abort, a close or the end of the
                            // incarnation: the loop decides.
                            Ok(())
                            | Err(PushError::Send(
                                SendError::Cancelled | SendError::PeerLost(_) | SendError::Timeout,
                            )) => {}
                            Err(PushError::Send(
                                SendError::TooLargeForFormat { .. }
                                | SendError::TooLargeForLoan { .. },
                            )) => return self.end_task(st, ReturnCode::BadTaskData),
                            Err(PushError::Send(SendError::Corrupt(_))) => {
                                return self.end_task(st, ReturnCode::CommunicationError)
                            }
                            // A loaned task's record was written over before it could be
                            // redelivered (`docs/protocol.md` §9).
                            Err(PushError::Overwritten) => {
                                return self.end_task(st, ReturnCode::ExecutionException)
                            }
                        }
                        continue;
                    }
                }
                // A late ack only makes us keep checking (docs/protocol.md §5); FLARE logs it.
                Phase::Sending { .. } => {
                    let late =
                        first_push.is_some_and(|p| p.elapsed() >= self.config.send_task_timeout);
                    if late && !warned_late_ack {
                        warned_late_ack = true;
                        log::warn!(
                            "shmex exchanger {}: no task_ack for task {id:?} after \
                             send_task_timeout ({:?}); still waiting",
                            self.name,
                            self.config.send_task_timeout
                        );
                    }
                }
                // A loaned task is in the caller's hands.
                Phase::Running { .. } | Phase::Loaned => {}
            }
            drop(self.shared.wait(st, slice, None, spin_until));
        }
    }

    /// Ends the in-flight task with `rc` (abort, close, stop, timeout), telling the agent
    /// incarnation it was pushed to.
    fn end_task(&self, mut st: std::sync::MutexGuard<'_, State>, rc: ReturnCode) -> Reply {
        let Some(task) = st.task.take() else {
            return Reply::bare(rc);
        };
        if let Some(epoch) = task.phase.epoch() {
            // Pushed by the pump (or before the next task), so that a stalled agent with a
            // full ring cannot delay the caller's answer.
            st.outgoing.push(Control {
                kind: MessageKind::Abort,
                id: task.id,
                rc: ReturnCode::TaskAborted,
                epoch,
                reply_to: 0,
            });
        }
        drop(st);
        self.shared.notify();
        // Never behind a held outbox (the pump pushing an ack into a full ring): then the
        // pump, or the next task's push, sends the queued abort.
        self.flush_outgoing_if_idle(pump_slice(&self.config.wait));
        Reply::bare(rc)
    }

    fn push_task(
        &self,
        task_name: &str,
        id: &str,
        source: &mut TaskSource<'_>,
        epoch: u64,
        abort: &AbortSignal,
    ) -> Result<(), PushError> {
        let cancelled = || {
            abort.is_aborted()
                || self.halted.load(Ordering::Acquire)
                || self.bound.load(Ordering::Acquire) != epoch
        };
        let slice = pump_slice(&self.config.wait);
        let mut outbox = self.lock_outbox();
        let _ = self.flush_outgoing(&mut outbox, slice);
        let Some(Outbox {
            producer: Some(producer),
            sender,
        }) = outbox.as_mut()
        else {
            return Err(PushError::Send(SendError::Cancelled));
        };
        // Known before the push, so that an answer arriving at once finds it.
        let sequence = sender.next_sequence();
        if let Some(t) = self.shared.lock().task.as_mut().filter(|t| t.id == id) {
            t.sequence = Some(sequence);
        }
        match source {
            TaskSource::Copy(task, meta) => {
                let envelope = Envelope::new(MessageKind::Task)
                    .with_task(id, task_name)
                    .with_epoch(epoch);
                sender
                    .send_with_meta(
                        producer,
                        &envelope,
                        Some(task),
                        meta,
                        None,
                        Some((&cancelled, slice)),
                    )
                    .map(|_| ())
                    .map_err(PushError::Send)
            }
            TaskSource::Loaned { committed, copy } => {
                if copy.is_none() {
                    *copy = committed.and_then(|c| DetachedLoan::copy_committed(producer, c));
                }
                let Some(copy) = copy.as_mut() else {
                    return Err(PushError::Overwritten);
                };
                sender
                    .resend(producer, copy, epoch, None, Some((&cancelled, slice)))
                    .map(|_| ())
                    .map_err(PushError::Send)
            }
        }
    }
}

/// Why a task could not be pushed.
enum PushError {
    Send(SendError),
    /// A loaned task's record was written over in the ring before it could be redelivered.
    Overwritten,
}

impl Exchanger {
    /// Says `bye` to the agent and closes: a waiting or later `execute` returns
    /// `TASK_ABORTED`, the pump stops, and the segment's name is removed. Calling it again
    /// does nothing. While a [`TaskLoan`] is outstanding, `bye` is queued and pushed when the
    /// loan is dropped or executed (which returns `TASK_ABORTED`).
    pub fn close(&self) -> Result<(), CloseError> {
        let Some(pump) = super::lock(&self.pump).take() else {
            return Ok(());
        };
        self.inner.halted.store(true, Ordering::Release);
        {
            let mut st = self.inner.shared.lock();
            st.status = ExchangerStatus::Closed;
        }
        self.inner.shared.notify();
        let bound = self.inner.bound.load(Ordering::Acquire);
        let bye = if bound != 0 {
            self.inner.queue(Control {
                kind: MessageKind::Bye,
                id: String::new(),
                rc: ReturnCode::Ok,
                epoch: bound,
                reply_to: 0,
            });
            let mut outbox = self.inner.lock_outbox();
            self.inner
                .flush_outgoing(&mut outbox, self.inner.config.agent_ack_timeout)
        } else {
            Ok(())
        };
        self.inner.stop.store(true, Ordering::Release);
        let parts = pump.join();
        // Ring halves first, then the control (which marks our side closed and unlinks). A
        // producer lent to a loan comes back to the outbox (which stays) to push the `bye`.
        {
            let mut outbox = self.inner.lock_outbox();
            if outbox.as_ref().is_some_and(|o| o.producer.is_some()) {
                drop(outbox.take());
            }
        }
        if let Ok((consumer, control)) = parts {
            drop(consumer);
            drop(control);
        }
        bye.map_err(CloseError::from)
    }
}

impl Drop for Exchanger {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl Inner {
    fn lock_outbox(&self) -> std::sync::MutexGuard<'_, Option<Outbox>> {
        super::lock(&self.outbox)
    }

    /// The outbox, unless another thread holds it.
    fn try_lock_outbox(&self) -> Option<std::sync::MutexGuard<'_, Option<Outbox>>> {
        super::try_lock(&self.outbox)
    }

    /// Queues a message without DXO and pushes the queue if the outbox is free.
    fn queue(&self, control: Control) {
        self.queue_with(self.shared.lock(), control);
    }

    /// [`Inner::queue`] for a message owed for a change just made under `st`: it joins the
    /// queue under the same lock, so whoever sees the change finds it queued (and a next task
    /// is pushed after it). The waiting calls are told after the push: a caller woken on this
    /// CPU would run first and leave the peer waiting for the message (an agent then handles
    /// its `result_ack` only when the next task comes, in that task's round trip).
    fn queue_with(&self, mut st: std::sync::MutexGuard<'_, State>, control: Control) {
        st.outgoing.push(control);
        drop(st);
        self.flush_outgoing_if_idle(pump_slice(&self.config.wait));
        self.shared.notify();
    }

    /// [`Inner::flush_outgoing`], unless nothing is queued or another thread holds the outbox
    /// (it pushes the queue itself before its own message or when it gives the outbox back).
    fn flush_outgoing_if_idle(&self, slice: Duration) {
        if self.shared.lock().outgoing.is_empty() {
            return;
        }
        if let Some(mut outbox) = self.try_lock_outbox() {
            let _ = self.flush_outgoing(&mut outbox, slice);
        }
    }

    /// Pushes the queued messages in order, waiting at most `wait` for ring space each; what
    /// does not fit stays queued (with everything after it), what is addressed to an
    /// incarnation that ended is dropped. Nothing is pushed while a loan holds the producer.
    /// Returns the first error of a message that could not be pushed.
    fn flush_outgoing(&self, outbox: &mut Option<Outbox>, wait: Duration) -> Result<(), SendError> {
        let Some(Outbox {
            producer: Some(producer),
            sender,
        }) = outbox.as_mut()
        else {
            return Ok(());
        };
        let queued = std::mem::take(&mut self.shared.lock().outgoing);
        if queued.is_empty() {
            return Ok(());
        }
        let bound = self.bound.load(Ordering::Acquire);
        let (mut left, result) = super::push_in_order(
            sender,
            producer,
            queued,
            |control| control.epoch == bound,
            || Some(Instant::now() + wait),
        );
        if !left.is_empty() {
            let mut st = self.shared.lock();
            left.append(&mut st.outgoing);
            st.outgoing = left;
        }
        result
    }
}

/// The pump thread: the receive half, the control block, and the incarnation bookkeeping.
struct Pump {
    receiver: FrameReceiver,
    consumer: Consumer,
    core: PumpCore,
}

struct PumpCore {
    inner: Arc<Inner>,
    control: LinkControl,
    /// The agent epoch adopted (0: none).
    bound: u64,
    /// Fragments of older epochs are dropped unparsed.
    min_epoch: u64,
    /// When the agent was last seen beating (or the exchanger was created).
    last_alive: Instant,
}

impl Pump {
    fn run(&mut self) {
        let slice = pump_slice(&self.core.inner.config.wait);
        let stall = Some(self.core.inner.config.agent_connection_timeout);
        let mut next_check = Instant::now();
        self.core.inner.shared.note_pump_cpu();
        // A corrupt result ring cannot be read again; a Stopped exchanger still reads (and
        // answers) results, so that no agent waits for an ack.
        let mut corrupt = false;
        while !self.core.inner.stop.load(Ordering::Acquire) {
            let mut peer_lost = false;
            if corrupt {
                std::thread::sleep(slice);
            } else {
                let control = &self.core.control;
                let stop = &self.core.inner.stop;
                let abandoned = |epoch: u64| abandoned(control, stop, epoch);
                let failed = match self.receiver.recv_with_stall_cancellable(
                    &mut self.consumer,
                    Some(Instant::now() + slice),
                    stall,
                    (&abandoned, slice),
                ) {
                    Ok(message) => {
                        self.core.handle(message);
                        None
                    }
                    Err(e) => Some(e),
                };
                let dropped = self.receiver.dropped();
                match failed {
                    None => {}
                    Some(FrameError::Timeout) if dropped.is_none() => {}
                    // The partial message's sender was replaced (or we are closing): the
                    // liveness check ends its incarnation now.
                    Some(FrameError::Cancelled) => next_check = Instant::now(),
                    Some(FrameError::PeerLost(_)) => peer_lost = true,
                    Some(FrameError::Corrupt(c)) => {
                        log::error!(
                            "shmex exchanger {}: result ring corrupt ({c})",
                            self.core.inner.name
                        );
                        corrupt = true;
                        self.core.stop();
                    }
                    // A message that began and was refused (over the limits, malformed): a
                    // result is answered `invalid`, so the agent's submit_result returns
                    // false; its task (if any) is unaffected. A result whose sender went quiet
                    // mid-message for `agent_connection_timeout` likewise.
                    Some(e) => self.core.on_dropped(dropped, &e),
                }
            }
            if peer_lost {
                // The agent is gone and the ring is empty: the liveness check decides; sleep
                // rather than spin until something changes.
                self.check_liveness();
                std::thread::sleep(slice);
            }
            self.receiver.set_min_epoch(self.core.min_epoch);
            self.core.inner.flush_outgoing_if_idle(slice);
            if Instant::now() >= next_check {
                // Checked as often: where this thread is pinned (the calls' waits use it).
                self.core.inner.shared.note_pump_cpu();
                self.check_liveness();
                next_check = Instant::now() + slice;
            }
        }
    }

    /// `docs/protocol.md` §3.1, agent status.
    fn check_liveness(&mut self) {
        let inner = Arc::clone(&self.core.inner);
        let config = &inner.config;
        let verdict = self
            .core
            .control
            .peer_liveness(config.agent_connection_timeout);
        let (epoch, _) = self.core.control.peer_epoch_and_pid();
        let now = Instant::now();
        match verdict {
            Liveness::Alive | Liveness::Stale { .. } => {
                if epoch != self.core.bound {
                    // The bound incarnation ended and a new one attached.
                    self.drain_and_end();
                    self.core.adopt(epoch);
                }
                if verdict == Liveness::Alive {
                    self.core.last_alive = now;
                    self.core.set_status(ExchangerStatus::Connected { epoch });
                } else {
                    if self.core.lock_status() == (ExchangerStatus::Connected { epoch }) {
                        log::warn!(
                            "shmex exchanger {}: agent silent for {:?} or more: disconnected",
                            inner.name,
                            config.agent_connection_timeout
                        );
                    }
                    self.core
                        .set_status(ExchangerStatus::Disconnected { epoch });
                }
            }
            Liveness::Dead { pid } => {
                if self.core.bound != 0 {
                    log::warn!(
                        "shmex exchanger {}: agent pid {pid} died; noticed {:?} after its last \
                         heartbeat",
                        inner.name,
                        now.saturating_duration_since(self.core.last_alive)
                    );
                }
                self.drain_and_end();
                self.core.set_status(ExchangerStatus::NoAgent);
            }
            Liveness::Closed => {
                if self.core.bound != 0 {
                    log::info!("shmex exchanger {}: agent detached", inner.name);
                }
                self.drain_and_end();
                self.core.set_status(ExchangerStatus::NoAgent);
            }
            // The agent's side contradicts its role lock: the link is corrupt. Stop (execute
            // returns TASK_ABORTED) and say `bye`, so the agent's blocked calls end too
            // (docs/protocol.md §8).
            Liveness::Corrupt { .. } => {
                if !matches!(
                    self.core.lock_status(),
                    ExchangerStatus::Stopped | ExchangerStatus::Closed
                ) {
                    log::error!(
                        "shmex exchanger {}: the agent's side of the segment contradicts its \
                         role lock: corrupt",
                        inner.name
                    );
                    self.core.stop();
                    self.core.say_bye(self.core.bound);
                }
            }
            Liveness::Absent => self.core.set_status(ExchangerStatus::NoAgent),
        }
        if let Some(limit) = config.agent_heartbeat_timeout {
            if now.saturating_duration_since(self.core.last_alive) >= limit {
                self.core.stop();
            }
        }
        self.receiver.set_min_epoch(self.core.min_epoch);
    }

    /// Processes what the bound incarnation committed before it ended, then ends it
    /// (`docs/protocol.md` §2).
    fn drain_and_end(&mut self) {
        let ended = self.core.bound;
        if ended == 0 {
            return;
        }
        let stall = Some(self.core.inner.config.agent_connection_timeout);
        let slice = pump_slice(&self.core.inner.config.wait);
        loop {
            let deadline = Some(Instant::now() + Duration::from_millis(1));
            let control = &self.core.control;
            let stop = &self.core.inner.stop;
            let abandoned = |epoch: u64| abandoned(control, stop, epoch);
            match self.receiver.recv_with_stall_cancellable(
                &mut self.consumer,
                deadline,
                stall,
                (&abandoned, slice),
            ) {
                Ok(message) => self.core.handle(message),
                Err(
                    FrameError::Timeout
                    | FrameError::Cancelled
                    | FrameError::PeerLost(_)
                    | FrameError::Corrupt(_),
                ) => break,
                Err(_) => {}
            }
            self.receiver.set_min_epoch(self.core.min_epoch);
        }
        // A message of a newer incarnation read above already ended `ended` and adopted its
        // successor: that one is live and must not be ended.
        if self.core.bound == ended {
            self.core.end(ended);
        }
    }
}

/// Whether a message of agent incarnation `epoch` that has begun arriving will never be
/// completed: another incarnation attached since (the sender died; its successor holds the
/// role, so the ring wait cannot see the death), or the exchanger is closing.
fn abandoned(control: &LinkControl, stop: &AtomicBool, epoch: u64) -> bool {
    stop.load(Ordering::Acquire) || control.peer_epoch_and_pid().0 != epoch
}

impl PumpCore {
    fn lock_status(&self) -> ExchangerStatus {
        self.inner.shared.lock().status
    }

    fn set_status(&self, status: ExchangerStatus) {
        let mut st = self.inner.shared.lock();
        if !matches!(
            st.status,
            ExchangerStatus::Stopped | ExchangerStatus::Closed
        ) && st.status != status
        {
            st.status = status;
            drop(st);
            self.inner.shared.notify();
        }
    }

    /// Enters Stopped; on entering it, says `bye` to the bound incarnation, so that an agent
    /// waiting for an ack (or a task) returns "closed" instead of waiting for our process to
    /// exit.
    fn stop(&self) {
        self.inner.halted.store(true, Ordering::Release);
        let mut st = self.inner.shared.lock();
        let entered = !matches!(
            st.status,
            ExchangerStatus::Stopped | ExchangerStatus::Closed
        );
        if entered {
            st.status = ExchangerStatus::Stopped;
            log::error!(
                "shmex exchanger {}: stopped (agent silent past agent_heartbeat_timeout, or \
                 the link is corrupt); execute returns TASK_ABORTED",
                self.inner.name
            );
        }
        drop(st);
        self.inner.shared.notify();
        if entered {
            self.say_bye(self.bound);
        }
    }

    /// Pushes `bye` to incarnation `epoch` (none: 0), best effort, without waiting for the
    /// outbox (queued if it is busy).
    fn say_bye(&self, epoch: u64) {
        if epoch != 0 {
            self.inner.queue(Control {
                kind: MessageKind::Bye,
                id: String::new(),
                rc: ReturnCode::Ok,
                epoch,
                reply_to: 0,
            });
        }
    }

    fn adopt(&mut self, epoch: u64) {
        let (_, pid) = self.control.peer_epoch_and_pid();
        log::info!(
            "shmex exchanger {}: agent incarnation {epoch} (pid {pid}) attached",
            self.inner.name
        );
        self.bound = epoch;
        self.min_epoch = epoch.max(self.min_epoch);
        self.inner.bound.store(epoch, Ordering::Release);
        self.set_status(ExchangerStatus::Connected { epoch });
        if self.lock_status() == ExchangerStatus::Stopped {
            // An agent attaching to a stopped exchanger learns it at once.
            self.say_bye(epoch);
        }
    }

    /// Incarnation `epoch` ended: its in-flight task is redelivered or failed.
    fn end(&mut self, epoch: u64) {
        self.bound = 0;
        self.min_epoch = self.min_epoch.max(epoch.saturating_add(1));
        self.inner.bound.store(0, Ordering::Release);
        let mut st = self.inner.shared.lock();
        if let Some(t) = st.task.as_mut() {
            if t.outcome.is_none() && t.phase.epoch() == Some(epoch) {
                match self.inner.config.on_agent_restart {
                    RestartPolicy::Redeliver => {
                        log::warn!(
                            "shmex exchanger {}: agent incarnation {epoch} ended with task \
                             {:?} unanswered; it goes to the next incarnation",
                            self.inner.name,
                            t.id
                        );
                        t.phase = Phase::WaitAgent;
                        st.redeliveries += 1;
                    }
                    RestartPolicy::Fail => {
                        log::warn!(
                            "shmex exchanger {}: agent incarnation {epoch} ended with task \
                             {:?} unanswered: EXECUTION_EXCEPTION",
                            self.inner.name,
                            t.id
                        );
                        t.outcome = Some(Reply::bare(ReturnCode::ExecutionException));
                    }
                }
            }
        }
        if !matches!(
            st.status,
            ExchangerStatus::Stopped | ExchangerStatus::Closed
        ) {
            st.status = ExchangerStatus::NoAgent;
        }
        drop(st);
        self.inner.shared.notify();
    }

    fn handle(&mut self, message: Message<'_>) {
        let epoch = message.epoch();
        if epoch < self.bound || epoch < self.min_epoch {
            return;
        }
        if epoch > self.bound {
            // A message from a newer incarnation: the bound one ended before it (ring order).
            if self.bound != 0 {
                let bound = self.bound;
                self.end(bound);
            }
            self.adopt(epoch);
        }
        match message.kind() {
            MessageKind::TaskAck => self.on_task_ack(&message),
            MessageKind::Result => self.on_result(message),
            // Not ours to receive: consumed and ignored.
            _ => {}
        }
    }

    /// A receive failed after a message began: a result is answered `invalid` (by its
    /// sequence number: its task id could not be read) and, as an invalid result for the task
    /// in flight (DESIGN §5 item 6), ends that task with EXECUTION_EXCEPTION; anything else is
    /// logged.
    fn on_dropped(&self, dropped: Option<DroppedMessage>, e: &FrameError) {
        match dropped {
            Some(d) if d.kind == Some(MessageKind::Result) && d.epoch == self.bound => {
                log::warn!(
                    "shmex exchanger {}: result message {} refused ({e}); answered invalid",
                    self.inner.name,
                    d.sequence
                );
                let mut st = self.inner.shared.lock();
                if let Some(t) = st
                    .task
                    .as_mut()
                    .filter(|t| t.outcome.is_none() && t.phase.epoch() == Some(d.epoch))
                {
                    t.outcome = Some(Reply::bare(ReturnCode::ExecutionException));
                }
                // As for any result: queued with the outcome.
                self.inner.queue_with(
                    st,
                    Control {
                        kind: MessageKind::ResultAck,
                        id: String::new(),
                        rc: ReturnCode::ExecutionResultError,
                        epoch: d.epoch,
                        reply_to: d.sequence,
                    },
                );
            }
            Some(d) => log::warn!(
                "shmex exchanger {}: message {} dropped ({e})",
                self.inner.name,
                d.sequence
            ),
            None => log::warn!("shmex exchanger {}: record dropped ({e})", self.inner.name),
        }
    }

    fn on_task_ack(&self, message: &Message<'_>) {
        let epoch = message.epoch();
        let mut st = self.inner.shared.lock();
        let Some(t) = st.task.as_mut() else { return };
        let sent_here = matches!(
            t.phase,
            Phase::Sending { epoch: e } if e == epoch
        );
        // An agent that could not read the task answers with an empty id and the task
        // message's sequence number.
        let ours = t.id == message.task_id()
            || (message.task_id().is_empty() && t.sequence == Some(message.reply_to()));
        if !sent_here || !ours || t.outcome.is_some() {
            return;
        }
        if message.rc() == ReturnCode::Ok {
            // Nothing a waiting `execute` acts on: it is not woken.
            t.phase = Phase::Running { epoch };
            return;
        }
        log::warn!(
            "shmex exchanger {}: agent refused task {:?} ({}): BAD_REQUEST_DATA",
            self.inner.name,
            t.id,
            message.rc()
        );
        t.outcome = Some(Reply::bare(ReturnCode::BadRequestData));
        drop(st);
        self.inner.shared.notify();
    }

    /// `docs/protocol.md` §3.1, result handling.
    fn on_result(&self, message: Message<'_>) {
        let epoch = message.epoch();
        let sequence = message.sequence();
        let id = message.task_id().to_string();
        // A result's DXO may hold no tensors (docs/protocol.md §1.2): only its absence is
        // "missing data".
        let (has_data, has_meta) = (message.has_dxo(), !message.meta().is_empty());
        let mut st = self.inner.shared.lock();
        // A stopped exchanger completes nothing (its `execute` answers TASK_ABORTED), but
        // still answers, so that no agent waits for an ack.
        let stopped = matches!(
            st.status,
            ExchangerStatus::Stopped | ExchangerStatus::Closed
        );
        let in_flight = st
            .task
            .as_ref()
            .filter(|t| !stopped && t.outcome.is_none() && (id.is_empty() || id == t.id))
            .map(|t| (t.id.clone(), t.app_defined));
        let (attributed, ack_rc) = match in_flight {
            None if stopped => (id, ReturnCode::TaskAborted),
            Some((task_id, app_defined)) => {
                let kind = result_data_kind(app_defined, message.meta());
                let rc = message.rc();
                let (outcome, ack_rc) = match kind {
                    // DESIGN §5 E7: an error rc is the reply, whatever the DXO holds.
                    _ if rc != ReturnCode::Ok && rc != ReturnCode::EarlyTermination => {
                        (Reply::bare(rc), ReturnCode::Ok)
                    }
                    Some(kind) if has_data && has_meta => match super::config::own_message(
                        message,
                        self.inner.config.receive_in_place,
                    ) {
                        Ok(owned) => (
                            Reply {
                                rc,
                                data_kind: Some(kind),
                                result: Some(owned),
                            },
                            ReturnCode::Ok,
                        ),
                        Err(_) => (
                            Reply::bare(ReturnCode::ExecutionException),
                            ReturnCode::ExecutionResultError,
                        ),
                    },
                    _ => (
                        Reply::bare(ReturnCode::ExecutionException),
                        ReturnCode::ExecutionResultError,
                    ),
                };
                if let Some(t) = st.task.as_mut() {
                    t.outcome = Some(outcome);
                }
                // Only an accepted result makes a resubmission a harmless duplicate; after an
                // invalid one, a corrected resubmission must not be acked as accepted.
                if ack_rc == ReturnCode::Ok {
                    st.last_completed = Some(task_id.clone());
                }
                (task_id, ack_rc)
            }
            None if !id.is_empty() && st.last_completed.as_deref() == Some(id.as_str()) => {
                (id, ReturnCode::Ok)
            }
            None if id.is_empty() && st.task.is_none() => (id, ReturnCode::Ok),
            None => (id, ReturnCode::TaskUnknown),
        };
        // Queued with the outcome, and pushed now unless the outbox is busy (a push, a loan):
        // any later task is pushed after the queue, so it still follows this ack in the ring.
        // Best effort: an agent that died meanwhile needs no ack.
        self.inner.queue_with(
            st,
            Control {
                kind: MessageKind::ResultAck,
                id: attributed,
                rc: ack_rc,
                epoch,
                reply_to: sequence,
            },
        );
    }
}
