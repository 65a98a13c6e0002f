//! The agent: attaches to the exchanger's link, fetches tasks and submits results
//! (`docs/protocol.md` §3.2).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{
    data_and_meta, deadline_after, kind_meta, pump_slice, AbortSignal, AgentConfig, Shared,
    META_DATA_KIND,
};
use crate::control::Liveness;
use crate::frame::{
    DetachedLoan, Dxo, DxoError, Element, Envelope, FrameError, FrameReceiver, FrameSender,
    LoanError, LoanSpec, Message, MessageKind, OwnedMessage, ReturnCode, SendError, ViewError,
};
use crate::link::{AttachOptions, Link, LinkAttachError, LinkControl, LinkParts};
use crate::ring::{Consumer, Producer};
use crate::segment::SegmentName;
use crate::signal::PeerLost;
use zerocopy::{FromBytes, KnownLayout};

/// A task handed out by [`Agent::get_task`].
#[derive(Debug)]
pub struct Task {
    /// The task id.
    pub id: String,
    /// The task name (e.g. `train`).
    pub name: String,
    /// The task's DXO: data kind, meta (with `current_round`, `total_round`, `data_kind` when
    /// the exchanger set them) and tensors.
    pub message: OwnedMessage,
}

/// The agent's view of the exchanger (`docs/protocol.md` §3.2, connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentStatus {
    /// The exchanger is alive and beating.
    Connected,
    /// The exchanger's heartbeat has been still for `flare_site_connection_timeout` or longer.
    Disconnected,
    /// The exchanger's process died: the current task was aborted; the agent watches the
    /// name for a new exchanger and attaches to it.
    Lost,
    /// `bye` arrived, the exchanger detached, it was silent for
    /// `flare_site_heartbeat_timeout`, or [`Agent::close`] was called.
    Closed,
}

/// Why [`Agent::attach`] failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentAttachError {
    /// No live exchanger within `attach_timeout`, or the segment is unusable.
    #[error(transparent)]
    Link(#[from] LinkAttachError),
    /// The pump thread could not be started.
    #[error("cannot start the pump thread: {0}")]
    Spawn(std::io::Error),
}

/// Why [`Agent::get_task`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GetTaskError {
    /// The agent is closed (`bye`, exchanger detached or silent, or [`Agent::close`]).
    #[error("the agent is closed")]
    Closed,
    /// The current task was fetched and its result not yet submitted.
    #[error("the current task's result must be submitted before the next task is fetched")]
    CallState,
}

/// Why [`Agent::submit_result`] failed (a rejected result is `Ok(false)`, not an error).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The agent is closed.
    #[error("the agent is closed")]
    Closed,
    /// The result cannot be encoded, or the ring is corrupt.
    #[error(transparent)]
    Send(SendError),
    /// [`Agent::loan_result`] only: the loan's spec is not a valid DXO (the result would not
    /// be sent; the task stays answerable).
    #[error(transparent)]
    Spec(DxoError),
    /// [`Agent::loan_result`] only: there is nothing to answer — `submit_result` would return
    /// `false` without sending (no fetched task, the task was aborted or lost, or it is
    /// already answered or being answered).
    #[error("no task to answer: none fetched, it was aborted, or it is already answered")]
    NotAnswerable,
    /// A [`ResultLoan`] of this agent is outstanding (it holds the agent's sending half):
    /// commit or drop it first. Nothing was sent.
    #[error("a result loan of this agent is outstanding")]
    LoanOutstanding,
    /// The caller's [`AbortSignal`] ended the call ([`Agent::submit_result_abortable`],
    /// [`Agent::loan_result_abortable`], [`ResultLoan::commit_abortable`]).
    #[error("aborted by the caller ({})", if *sent { "result sent" } else { "nothing sent" })]
    Aborted {
        /// `true`: the result is in the ring and counts as the task's answer (the next task
        /// can be fetched); whether the exchanger accepts it is not known. `false`: nothing
        /// was sent and the task may be answered again.
        sent: bool,
    },
}

impl From<LoanError> for SubmitError {
    fn from(e: LoanError) -> SubmitError {
        match e {
            LoanError::Dxo(e) => SubmitError::Spec(e),
            LoanError::Send(e) => SubmitError::Send(e),
        }
    }
}

#[derive(Debug)]
struct Slot {
    id: String,
    name: String,
    /// The task's data until it is fetched.
    message: Option<OwnedMessage>,
    fetched: bool,
    aborted: bool,
    /// A `submit_result` for this task is under way or done: exactly one submission per task
    /// may be accepted, so another one answers `false` at once.
    answered: bool,
}

#[derive(Clone, Debug)]
struct AckSeen {
    generation: u64,
    reply_to: u64,
    rc: ReturnCode,
}

#[derive(Debug)]
struct State {
    status: AgentStatus,
    /// Incremented by each reattach (a new exchanger).
    generation: u64,
    current: Option<Slot>,
    pending: Option<Slot>,
    /// Whether this agent submitted anything yet (the first submission without a fetched
    /// task goes out with an empty id).
    submitted_any: bool,
    /// Whether this agent ever fetched a task: one that did (and whose task was then aborted
    /// or lost with its exchanger) is not a restarted trainer, and its result must never be
    /// taken for another task's.
    fetched_any: bool,
    last_ack: Option<AckSeen>,
    /// `task_ack`s not yet pushed (the outbox was busy or its producer lent to a loan), in
    /// the order the tasks arrived: the pump never waits for the outbox.
    acks: Vec<QueuedAck>,
}

/// A `task_ack` waiting for the outbox.
#[derive(Debug)]
struct QueuedAck {
    id: String,
    rc: ReturnCode,
    epoch: u64,
    reply_to: u64,
    generation: u64,
}

impl super::Queued for QueuedAck {
    fn envelope(&self) -> Envelope<'_> {
        Envelope::new(MessageKind::TaskAck)
            .with_task(&self.id, "")
            .with_rc(self.rc)
            .with_epoch(self.epoch)
            .with_reply_to(self.reply_to)
    }
}

impl State {
    fn promote(&mut self) {
        self.current = self.pending.take();
    }

    fn is_closed(&self) -> bool {
        self.status == AgentStatus::Closed
    }
}

struct Outbox {
    /// `None` while a [`ResultLoan`] holds it.
    producer: Option<Producer>,
    sender: FrameSender,
    epoch: u64,
    generation: u64,
}

/// The task a submission answers, marked answered by [`Agent::claim`].
#[derive(Debug)]
struct Claim {
    /// The task's id (empty: a first submission without a fetched task).
    id: String,
    name: String,
    generation: u64,
    /// Whether this was the agent's first submission (undone if nothing is sent).
    first_submission: bool,
}

/// A result being built in place in the result ring ([`Agent::loan_result`]): fill its
/// tensors, then [`ResultLoan::commit`] it with a return code. An owned handle (it keeps the
/// agent's state alive and holds the agent's sending half), so a binding can keep it across
/// calls and threads.
///
/// While it is out, the agent's pump keeps receiving and applying `abort`, `bye` and new
/// tasks; the `task_ack`s it owes are queued and pushed when the loan is committed or
/// dropped. Other submissions of the agent fail with [`SubmitError::LoanOutstanding`].
/// Dropping the loan abandons it: nothing is sent (nothing of it ever becomes visible to the
/// exchanger, also if this process dies) and the task stays answerable.
#[must_use = "a result loan sends nothing until it is committed; dropping it abandons it"]
pub struct ResultLoan {
    inner: Arc<Inner>,
    /// `Some` until committed or dropped.
    producer: Option<Producer>,
    loan: Option<DetachedLoan>,
    claim: Claim,
}

impl std::fmt::Debug for ResultLoan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultLoan")
            .field("task_id", &self.claim.id)
            .field("loan", &self.loan)
            .finish_non_exhaustive()
    }
}

impl ResultLoan {
    loan_accessors!("APP_DEFINED results");

    /// The id of the task this result answers (empty: a first submission without a fetched
    /// task, attributed by the exchanger to its in-flight task).
    pub fn task_id(&self) -> &str {
        &self.claim.id
    }

    /// Sends the result with return code `rc` and waits for the exchanger's `result_ack`;
    /// returns whether it was accepted, as [`Agent::submit_result`]. If the task was aborted
    /// (or the exchanger lost) while the loan was out, nothing is sent and the answer is
    /// `false`; if the agent was closed, `Err(Closed)`.
    pub fn commit(self, rc: ReturnCode) -> Result<bool, SubmitError> {
        self.commit_abortable(rc, &AbortSignal::new())
    }

    /// [`ResultLoan::commit`] whose wait for the `result_ack` `abort` ends, with
    /// [`SubmitError::Aborted`] `{ sent: true }` (the commit itself does not wait: the result
    /// is always sent).
    pub fn commit_abortable(
        mut self,
        rc: ReturnCode,
        abort: &AbortSignal,
    ) -> Result<bool, SubmitError> {
        let inner = Arc::clone(&self.inner);
        let (Some(loan), Some(mut producer)) = (self.loan.take(), self.producer.take()) else {
            return Ok(false);
        };
        let generation = self.claim.generation;
        if inner.shared.lock().is_closed() {
            drop(loan);
            inner.return_producer(producer, generation);
            return Err(SubmitError::Closed);
        }
        if inner.claim_cancelled(&self.claim) {
            drop(loan);
            inner.return_producer(producer, generation);
            return inner.finish_submit(&self.claim.id, false);
        }
        let sequence = loan.sequence();
        let committed = loan
            .set_rc(&mut producer, rc)
            .and_then(|()| loan.commit(&mut producer));
        inner.return_producer(producer, generation);
        match committed {
            Ok(_) => inner.await_result_ack(&self.claim, sequence, abort),
            // Not reachable: the producer was this loan's alone. Nothing was sent.
            Err(_) => inner.finish_submit(&self.claim.id, false),
        }
    }
}

impl Drop for ResultLoan {
    fn drop(&mut self) {
        // Not committed: abandon the record, give the producer back, and leave the task
        // answerable.
        self.loan = None;
        if let Some(producer) = self.producer.take() {
            self.inner.return_producer(producer, self.claim.generation);
            self.inner.unclaim(&self.claim);
        }
    }
}

/// `spec` with meta `data_kind` set to its data kind (as [`Agent::submit_result`] does).
fn with_data_kind(spec: &LoanSpec) -> LoanSpec {
    spec.clone().meta(META_DATA_KIND, spec.data_kind.as_str())
}

struct Inner {
    shared: Shared<State>,
    outbox: Mutex<Option<Outbox>>,
    config: AgentConfig,
    name: SegmentName,
    stop: AtomicBool,
}

impl Inner {
    fn lock_outbox(&self) -> MutexGuard<'_, Option<Outbox>> {
        super::lock(&self.outbox)
    }

    /// The outbox, unless another thread holds it.
    fn try_lock_outbox(&self) -> Option<MutexGuard<'_, Option<Outbox>>> {
        super::try_lock(&self.outbox)
    }

    /// [`Inner::flush_acks`] if acks are queued and the outbox is free (never waits for it).
    fn flush_acks_if_free(&self) {
        if self.shared.lock().acks.is_empty() {
            return;
        }
        if let Some(mut outbox) = self.try_lock_outbox() {
            self.flush_acks(&mut outbox, self.config.submit_result_timeout);
        }
    }

    /// Pushes the queued `task_ack`s in order, unless the producer is lent to a loan (whose
    /// commit or drop flushes them). Acks for an exchanger that is gone are dropped; what
    /// does not fit within `wait` stays queued. User calls wait one slice (they cannot be
    /// aborted meanwhile) and leave the rest to the pump, which waits up to
    /// `submit_result_timeout`.
    fn flush_acks(&self, outbox: &mut Option<Outbox>, wait: Duration) {
        let Some(Outbox {
            producer: Some(producer),
            sender,
            generation,
            ..
        }) = outbox.as_mut()
        else {
            if outbox.is_none() {
                self.shared.lock().acks.clear();
            }
            return;
        };
        let acks = std::mem::take(&mut self.shared.lock().acks);
        // An exchanger that died needs no ack; one whose ring stays full gets it later.
        let (mut left, _) = super::push_in_order(
            sender,
            producer,
            acks,
            |ack| ack.generation == *generation,
            || deadline_after(wait),
        );
        if !left.is_empty() {
            let mut st = self.shared.lock();
            left.append(&mut st.acks);
            st.acks = left;
        }
    }

    /// Waits for the `result_ack` of the submission `sequence` of `claim`, or for `abort`.
    fn await_result_ack(
        &self,
        claim: &Claim,
        sequence: u64,
        abort: &AbortSignal,
    ) -> Result<bool, SubmitError> {
        let inner = self;
        let slice = pump_slice(&inner.config.wait);
        let (id, generation) = (&claim.id, claim.generation);
        let sent_at = Instant::now();
        let mut warned_late = false;
        let spin_until = inner.shared.spin_until();
        loop {
            // Polled before locking: the signal's check may wait (see `AbortSignal::with_check`).
            let aborted_by_caller = abort.is_aborted();
            let st = inner.shared.lock();
            // The ack first: an exchanger that answered and then said `bye` accepted it.
            if let Some(ack) = st
                .last_ack
                .as_ref()
                .filter(|a| a.generation == generation && a.reply_to == sequence)
            {
                let accepted = ack.rc == ReturnCode::Ok;
                drop(st);
                return self.finish_submit(id, accepted);
            }
            if st.is_closed() {
                return Err(SubmitError::Closed);
            }
            let gone = st.status == AgentStatus::Lost || st.generation != generation;
            let aborted = !id.is_empty()
                && st
                    .current
                    .as_ref()
                    .is_some_and(|c| &c.id == id && c.aborted);
            if gone || aborted {
                drop(st);
                return self.finish_submit(id, false);
            }
            if aborted_by_caller {
                drop(st);
                self.finish_submit(id, false)?;
                return Err(SubmitError::Aborted { sent: true });
            }
            // A late ack only makes us keep checking (the ring is lossless); FLARE logs it.
            if !warned_late && sent_at.elapsed() >= inner.config.submit_result_timeout {
                warned_late = true;
                log::warn!(
                    "shmex agent {}: no result_ack for task {id:?} after submit_result_timeout \
                     ({:?}); still waiting",
                    inner.name,
                    inner.config.submit_result_timeout
                );
            }
            drop(inner.shared.wait(st, slice, None, spin_until));
        }
    }

    /// After a submission: the answered task is no longer current; the pending one is.
    fn finish_submit(&self, id: &str, accepted: bool) -> Result<bool, SubmitError> {
        let mut st = self.shared.lock();
        if st
            .current
            .as_ref()
            .is_some_and(|c| c.fetched && (c.id == id || c.aborted))
        {
            st.promote();
        }
        Ok(accepted)
    }

    /// Whether a submission for `claim` can no longer be accepted (stop sending it).
    fn claim_cancelled(&self, claim: &Claim) -> bool {
        let st = self.shared.lock();
        st.status == AgentStatus::Lost
            || st.is_closed()
            || st.generation != claim.generation
            || (!claim.id.is_empty()
                && !st
                    .current
                    .as_ref()
                    .is_some_and(|c| c.id == claim.id && !c.aborted))
    }

    /// Nothing was sent for `claim`: the task may be answered again.
    fn unclaim(&self, claim: &Claim) {
        let mut st = self.shared.lock();
        if let Some(c) = st
            .current
            .as_mut()
            .filter(|c| !claim.id.is_empty() && c.id == claim.id)
        {
            c.answered = false;
        }
        if claim.first_submission && claim.generation == st.generation {
            st.submitted_any = false;
        }
    }

    /// Gives a loan's producer back to the outbox of generation `generation` (or drops it if
    /// the link was replaced or closed meanwhile) and pushes the acks queued while it was out.
    fn return_producer(&self, producer: Producer, generation: u64) {
        let mut outbox = self.lock_outbox();
        if let Some(o) = outbox
            .as_mut()
            .filter(|o| o.generation == generation && o.producer.is_none())
        {
            o.producer = Some(producer);
        }
        self.flush_acks(&mut outbox, pump_slice(&self.config.wait));
    }

    fn set_status(&self, status: AgentStatus) {
        let mut st = self.shared.lock();
        if st.status != AgentStatus::Closed && st.status != status {
            if status == AgentStatus::Lost {
                // No result can reach an exchanger that never sent the task.
                if let Some(c) = st.current.as_mut() {
                    c.aborted = true;
                }
                st.pending = None;
            }
            let was = st.status;
            st.status = status;
            drop(st);
            self.shared.notify();
            let name = &self.name;
            match status {
                AgentStatus::Connected => log::info!("shmex agent {name}: exchanger connected"),
                AgentStatus::Disconnected => log::warn!(
                    "shmex agent {name}: exchanger silent for {:?} or more: disconnected",
                    self.config.flare_site_connection_timeout
                ),
                AgentStatus::Lost => log::warn!(
                    "shmex agent {name}: exchanger process died ({was:?} before); the current \
                     task is aborted, waiting for a new exchanger"
                ),
                AgentStatus::Closed => log::info!("shmex agent {name}: closed ({was:?} before)"),
            }
        }
    }
}

/// The trainer side of the task protocol (FLARE's `IPCAgent`): attaches to an exchanger's
/// link, fetches tasks and submits results. All calls take `&self`; [`Agent::close`] (or
/// dropping it) detaches. When the exchanger's process dies the agent waits for a new
/// exchanger on the same name and serves it.
pub struct Agent {
    inner: Arc<Inner>,
    pump: Mutex<Option<JoinHandle<Option<ReceiveHalf>>>>,
}

/// The pump's part of a link: the consumer half and the control.
type ReceiveHalf = (Consumer, LinkControl);

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.inner.name)
            .field("status", &self.status())
            .finish()
    }
}

/// A fresh link's sending side (a new frame sender, stamped with the link's epoch) and the
/// pump's receive half.
fn split_link(link: Link, generation: u64) -> (Outbox, ReceiveHalf) {
    let epoch = link.epoch();
    let LinkParts {
        producer,
        consumer,
        control,
    } = link.into_parts();
    let outbox = Outbox {
        producer: Some(producer),
        sender: FrameSender::new(),
        epoch,
        generation,
    };
    (outbox, (consumer, control))
}

fn attach_options(config: &AgentConfig, timeout: Duration) -> AttachOptions {
    AttachOptions {
        attach_timeout: timeout,
        heartbeat_interval: config.heartbeat_interval,
        wait: config.wait,
        populate: true,
    }
}

impl Agent {
    /// Attaches to the link `name`, waiting up to [`AgentConfig::attach_timeout`] for a live
    /// exchanger, and starts the pump.
    pub fn attach(name: &SegmentName, config: AgentConfig) -> Result<Agent, AgentAttachError> {
        // Before attaching, so the exchanger never sees an attached agent without a pump.
        let mut receiver = FrameReceiver::new(config.limits);
        super::config::reserve_receiver(&mut receiver, config.expected_message_len, "agent");
        let link = Link::attach(name, &attach_options(&config, config.attach_timeout))?;
        let (outbox, receive_half) = split_link(link, 0);
        let epoch = outbox.epoch;
        log::info!("shmex agent {name}: attached as incarnation {epoch}");
        let inner = Arc::new(Inner {
            shared: Shared::new(
                State {
                    status: AgentStatus::Connected,
                    generation: 0,
                    current: None,
                    pending: None,
                    submitted_any: false,
                    fetched_any: false,
                    last_ack: None,
                    acks: Vec::new(),
                },
                &config.wait,
            ),
            outbox: Mutex::new(Some(outbox)),
            config,
            name: name.clone(),
            stop: AtomicBool::new(false),
        });
        receiver.set_min_epoch(epoch);
        let mut pump = Pump {
            receiver,
            link: Some(receive_half),
            epoch,
            generation: 0,
            last_alive: Instant::now(),
            inner: Arc::clone(&inner),
        };
        let handle = std::thread::Builder::new()
            .name("shmex-agent-pump".into())
            .spawn(move || {
                pump.run();
                pump.link.take()
            })
            .map_err(AgentAttachError::Spawn)?;
        Ok(Agent {
            inner,
            pump: Mutex::new(Some(handle)),
        })
    }

    /// The agent's view of the exchanger.
    pub fn status(&self) -> AgentStatus {
        self.inner.shared.lock().status
    }

    /// Whether the current task was aborted by the exchanger (or lost with it): a trainer
    /// may poll this mid-task and stop early.
    pub fn is_aborted(&self) -> bool {
        self.inner
            .shared
            .lock()
            .current
            .as_ref()
            .is_some_and(|c| c.aborted)
    }

    /// Fetches the next task, waiting up to `timeout` (`None`: forever); `Ok(None)` when
    /// none arrived in time. Aborted tasks are skipped. Fails with
    /// [`GetTaskError::CallState`] while the previously fetched task's result is not
    /// submitted, and with [`GetTaskError::Closed`] once the agent is closed.
    pub fn get_task(&self, timeout: Option<Duration>) -> Result<Option<Task>, GetTaskError> {
        let deadline = timeout.and_then(deadline_after);
        let slice = pump_slice(&self.inner.config.wait);
        let spin_until = self.inner.shared.spin_until();
        let mut st = self.inner.shared.lock();
        loop {
            if st.is_closed() {
                return Err(GetTaskError::Closed);
            }
            match st.current.as_mut() {
                Some(c) if c.aborted => st.promote(),
                Some(c) if c.fetched => return Err(GetTaskError::CallState),
                Some(c) => {
                    if let Some(message) = c.message.take() {
                        c.fetched = true;
                        let task = Task {
                            id: c.id.clone(),
                            name: c.name.clone(),
                            message,
                        };
                        st.fetched_any = true;
                        return Ok(Some(task));
                    }
                    // A slot without data was never fetched; drop it.
                    st.promote();
                }
                None => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(None);
                    }
                    st = self.inner.shared.wait(st, slice, deadline, spin_until);
                }
            }
        }
    }

    /// Submits the result of the fetched task: `dxo` (its meta gets `data_kind` added) with
    /// return code `rc`. Returns whether the exchanger accepted it: `false` if the task was
    /// aborted (before or while submitting), never fetched, already answered, or the
    /// exchanger was lost. The first submission of an agent without a fetched task goes out
    /// with an empty task id (a restarted trainer resuming from a checkpoint); the exchanger
    /// attributes it to its in-flight task. Blocks until the exchanger's `result_ack`.
    /// Fails with [`SubmitError::LoanOutstanding`], sending nothing, while a [`ResultLoan`]
    /// of this agent is outstanding.
    pub fn submit_result(&self, dxo: &Dxo<'_>, rc: ReturnCode) -> Result<bool, SubmitError> {
        self.submit_result_abortable(dxo, rc, &AbortSignal::new())
    }

    /// [`Agent::submit_result`] that `abort` (set from any thread, or by its check) ends with
    /// [`SubmitError::Aborted`]: while it waits for ring space, nothing is sent (`sent:
    /// false`, the task may be answered again; the fragments of a large result already in
    /// the ring are dropped by the receiver); while it waits for the `result_ack`, the result
    /// counts as sent (`sent: true`).
    pub fn submit_result_abortable(
        &self,
        dxo: &Dxo<'_>,
        rc: ReturnCode,
        abort: &AbortSignal,
    ) -> Result<bool, SubmitError> {
        let claim = match self.claim()? {
            Ok(claim) => claim,
            Err(()) => return Ok(false),
        };
        let slice = pump_slice(&self.inner.config.wait);
        let meta = [kind_meta(dxo)];
        let inner = &*self.inner;
        let cancelled = || abort.is_aborted() || self.inner.claim_cancelled(&claim);
        let sent = {
            let mut outbox = inner.lock_outbox();
            let sent = match outbox.as_mut() {
                Some(Outbox {
                    producer: None,
                    generation,
                    ..
                }) if *generation == claim.generation => {
                    drop(outbox);
                    self.inner.unclaim(&claim);
                    return Err(SubmitError::LoanOutstanding);
                }
                Some(Outbox {
                    producer: Some(producer),
                    sender,
                    epoch,
                    generation,
                }) if *generation == claim.generation => {
                    let envelope = Envelope::new(MessageKind::Result)
                        .with_task(&claim.id, &claim.name)
                        .with_rc(rc)
                        .with_epoch(*epoch);
                    sender.send_with_meta(
                        producer,
                        &envelope,
                        Some(dxo),
                        &meta,
                        None,
                        Some((&cancelled, slice)),
                    )
                }
                _ => Err(SendError::Cancelled),
            };
            // The pump queued its acks while we held the outbox.
            inner.flush_acks(&mut outbox, slice);
            sent
        };
        match sent {
            Ok(sequence) => self.inner.await_result_ack(&claim, sequence, abort),
            Err(SendError::Cancelled)
                if abort.is_aborted() && !self.inner.claim_cancelled(&claim) =>
            {
                self.inner.unclaim(&claim);
                Err(SubmitError::Aborted { sent: false })
            }
            Err(SendError::Cancelled | SendError::PeerLost(_) | SendError::Timeout) => {
                self.inner.finish_submit(&claim.id, false)
            }
            Err(e) => {
                // Nothing went out: the task may be answered again.
                self.inner.unclaim(&claim);
                Err(SubmitError::Send(e))
            }
        }
    }

    /// Lends ring space for the fetched task's result, laid out by `spec` (data kind, meta,
    /// and the name, dtype and shape of each tensor): fill the tensors in place through the
    /// returned [`ResultLoan`], then [`ResultLoan::commit`] it with a return code (zero copies
    /// on this side). The result must fit in one record of the result ring.
    ///
    /// The rules are [`Agent::submit_result`]'s: the loan answers the fetched task (or, for
    /// an agent that never fetched nor submitted anything, goes out with an empty id), and
    /// marks it answered, so a concurrent `submit_result` or second loan for it is refused.
    /// Fails with [`SubmitError::NotAnswerable`] where `submit_result` would return `false`
    /// without sending, [`SubmitError::Closed`], [`SubmitError::LoanOutstanding`] while
    /// another loan is outstanding, [`SubmitError::Spec`] for an invalid spec and
    /// [`SubmitError::Send`] if the ring cannot hold it (in all these cases nothing is sent
    /// and the task stays answerable). Waits for ring space while the exchanger drains the
    /// ring; an abort, the exchanger's loss or `close` end that wait.
    ///
    /// While the loan is out, the pump keeps receiving (tasks, `abort`, `bye`); the
    /// `task_ack`s it owes are queued and pushed when the loan is committed or dropped.
    ///
    /// ```no_run
    /// use shmex::frame::{DType, DataKind, LoanSpec, ReturnCode};
    /// use shmex::protocol::{Agent, AgentConfig};
    /// use shmex::segment::SegmentName;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let agent = Agent::attach(&SegmentName::for_agent("site-1", "trainer-0")?, AgentConfig::default())?;
    /// if let Some(_task) = agent.get_task(None)? {
    ///     let spec = LoanSpec::new(DataKind::WeightDiff).tensor("w", DType::F32, &[1024]);
    ///     let mut loan = agent.loan_result(&spec)?;
    ///     let w = loan.index_of("w").ok_or("no w")?;
    ///     loan.tensor_mut::<f32>(w)?.fill(0.5); // written in place in the ring
    ///     let accepted = loan.commit(ReturnCode::Ok)?;
    /// #   let _ = accepted;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn loan_result(&self, spec: &LoanSpec) -> Result<ResultLoan, SubmitError> {
        self.loan_result_abortable(spec, &AbortSignal::new())
    }

    /// [`Agent::loan_result`] whose wait for ring space `abort` ends with
    /// [`SubmitError::Aborted`] `{ sent: false }` (nothing lent, the task stays answerable).
    pub fn loan_result_abortable(
        &self,
        spec: &LoanSpec,
        abort: &AbortSignal,
    ) -> Result<ResultLoan, SubmitError> {
        let claim = match self.claim()? {
            Ok(claim) => claim,
            Err(()) => return Err(SubmitError::NotAnswerable),
        };
        let inner = &self.inner;
        // Lent out of the outbox for the loan's lifetime: the loan is an owned handle a
        // binding can keep across calls, and no lock is held while it is filled.
        let taken = {
            let mut outbox = inner.lock_outbox();
            match outbox.as_mut() {
                Some(o) if o.generation == claim.generation => match o.producer.take() {
                    Some(producer) => {
                        let spec = with_data_kind(spec);
                        let envelope = Envelope::new(MessageKind::Result)
                            .with_task(&claim.id, &claim.name)
                            .with_epoch(o.epoch);
                        let prepared = FrameSender::prepare(&envelope, &spec);
                        let ticket = o.sender.ticket();
                        Ok((producer, prepared, ticket))
                    }
                    None => Err(SubmitError::LoanOutstanding),
                },
                _ => Err(SubmitError::NotAnswerable),
            }
        };
        let (mut producer, prepared, ticket) = match taken {
            Ok(taken) => taken,
            Err(e) => {
                inner.unclaim(&claim);
                return Err(e);
            }
        };
        let slice = pump_slice(&inner.config.wait);
        let cancelled = || abort.is_aborted() || inner.claim_cancelled(&claim);
        let loan = prepared.map_err(SubmitError::from).and_then(|prepared| {
            DetachedLoan::reserve(
                &mut producer,
                &prepared,
                ticket,
                None,
                Some((&cancelled, slice)),
            )
            .map_err(SubmitError::from)
        });
        match loan {
            Ok(loan) => Ok(ResultLoan {
                inner: Arc::clone(inner),
                producer: Some(producer),
                loan: Some(loan),
                claim,
            }),
            Err(e) => {
                inner.return_producer(producer, claim.generation);
                inner.unclaim(&claim);
                Err(match e {
                    SubmitError::Send(SendError::Cancelled) if !inner.claim_cancelled(&claim) => {
                        SubmitError::Aborted { sent: false }
                    }
                    SubmitError::Send(SendError::Cancelled) => SubmitError::NotAnswerable,
                    e => e,
                })
            }
        }
    }

    /// Marks the task a submission answers (`docs/protocol.md` §3.2, calls): `Ok(Err(()))`
    /// when the answer is `false` without sending.
    fn claim(&self) -> Result<Result<Claim, ()>, SubmitError> {
        let mut st = self.inner.shared.lock();
        if st.is_closed() {
            return Err(SubmitError::Closed);
        }
        let submitted_before = std::mem::replace(&mut st.submitted_any, true);
        let fetched_any = st.fetched_any;
        let generation = st.generation;
        let target = match st.current.as_mut() {
            // Another thread is submitting for this task: it alone may be accepted.
            Some(c) if c.fetched && c.answered => return Ok(Err(())),
            Some(c) if c.fetched && !c.aborted => {
                c.answered = true;
                (c.id.clone(), c.name.clone())
            }
            Some(c) if c.fetched => {
                st.promote();
                return Ok(Err(()));
            }
            // Only a trainer that (re)started without a task may answer with an empty id; an
            // agent that fetched a task which was then aborted or lost answers for that task,
            // and the answer is `false`.
            _ if !submitted_before && !fetched_any => (String::new(), String::new()),
            _ => return Ok(Err(())),
        };
        Ok(Ok(Claim {
            id: target.0,
            name: target.1,
            generation,
            first_submission: !submitted_before,
        }))
    }

    /// Detaches: blocked and later calls return `Closed`; the pump stops. Calling it again
    /// does nothing.
    pub fn close(&self) {
        let Some(pump) = super::lock(&self.pump).take() else {
            return;
        };
        self.inner.set_status(AgentStatus::Closed);
        self.inner.stop.store(true, Ordering::Release);
        let link = pump.join().ok().flatten();
        drop(self.inner.lock_outbox().take());
        drop(link);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.close();
    }
}

struct Pump {
    receiver: FrameReceiver,
    /// The receive half and control of the current link (`None` while lost).
    link: Option<ReceiveHalf>,
    epoch: u64,
    generation: u64,
    last_alive: Instant,
    inner: Arc<Inner>,
}

impl Pump {
    fn run(&mut self) {
        let slice = pump_slice(&self.inner.config.wait);
        // A message that has begun may take this long per fragment (a peer stalled longer
        // mid-message is disconnected anyway); liveness checks wait until it is complete.
        let stall = Some(self.inner.config.flare_site_connection_timeout);
        let mut next_check = Instant::now();
        self.inner.shared.note_pump_cpu();
        while !self.inner.stop.load(Ordering::Acquire) {
            let status = self.inner.shared.lock().status;
            match status {
                AgentStatus::Closed => {
                    std::thread::sleep(slice);
                    continue;
                }
                AgentStatus::Lost => {
                    self.reattach(slice);
                    self.check_heartbeat_timeout();
                    continue;
                }
                AgentStatus::Connected | AgentStatus::Disconnected => {}
            }
            let Some((consumer, _)) = self.link.as_mut() else {
                self.inner.set_status(AgentStatus::Lost);
                continue;
            };
            let stop = &self.inner.stop;
            let stopping = |_epoch: u64| stop.load(Ordering::Acquire);
            let failed = match self.receiver.recv_with_stall_cancellable(
                consumer,
                Some(Instant::now() + slice),
                stall,
                (&stopping, slice),
            ) {
                Ok(message) => {
                    handle(&self.inner, self.epoch, self.generation, message);
                    None
                }
                Err(e) => Some(e),
            };
            if let Some(e) = failed {
                self.on_receive_error(e);
            }
            self.inner.flush_acks_if_free();
            if Instant::now() >= next_check {
                // Checked as often: where this thread is pinned (the calls' waits use it).
                self.inner.shared.note_pump_cpu();
                self.check_liveness();
                next_check = Instant::now() + slice;
            }
        }
    }

    /// A receive failed: the peer's loss ends or suspends the link; a message that began and
    /// was refused (over the limits, malformed, its sender gone quiet mid-message) is logged,
    /// and a task is answered BAD_REQUEST_DATA so that the exchanger's `execute` ends (FLARE's
    /// agent answers an invalid request).
    fn on_receive_error(&mut self, e: FrameError) {
        match e {
            FrameError::PeerLost(PeerLost::Dead { .. }) => self.inner.set_status(AgentStatus::Lost),
            FrameError::PeerLost(PeerLost::Closed) => self.inner.set_status(AgentStatus::Closed),
            FrameError::Corrupt(ref c) => {
                log::error!(
                    "shmex agent {}: task ring corrupt ({c}); closing",
                    self.inner.name
                );
                self.inner.set_status(AgentStatus::Closed)
            }
            _ => {}
        }
        match self.receiver.dropped() {
            Some(d) if d.kind == Some(MessageKind::Task) && d.epoch == self.epoch => {
                log::warn!(
                    "shmex agent {}: task message {} refused ({e}); answered BAD_REQUEST_DATA",
                    self.inner.name,
                    d.sequence
                );
                send_task_ack(
                    &self.inner,
                    self.epoch,
                    self.generation,
                    "",
                    ReturnCode::BadRequestData,
                    d.sequence,
                );
            }
            Some(d) => log::warn!(
                "shmex agent {}: message {} dropped ({e})",
                self.inner.name,
                d.sequence
            ),
            None if matches!(e, FrameError::Timeout | FrameError::Cancelled) => {}
            None => log::warn!("shmex agent {}: record dropped ({e})", self.inner.name),
        }
    }

    fn check_liveness(&mut self) {
        let Some((_, control)) = self.link.as_mut() else {
            return;
        };
        match control.peer_liveness(self.inner.config.flare_site_connection_timeout) {
            Liveness::Alive => {
                self.last_alive = Instant::now();
                self.inner.set_status(AgentStatus::Connected);
            }
            Liveness::Stale { .. } => self.inner.set_status(AgentStatus::Disconnected),
            Liveness::Dead { pid } => {
                log::warn!(
                    "shmex agent {}: exchanger pid {pid} died; last heartbeat seen {:?} ago",
                    self.inner.name,
                    self.last_alive.elapsed()
                );
                self.inner.set_status(AgentStatus::Lost)
            }
            // The exchanger's side contradicts its role lock: the link is corrupt, and
            // re-attaching would find the same segment (docs/protocol.md §8).
            Liveness::Corrupt { .. } => {
                log::error!(
                    "shmex agent {}: the exchanger's side of the segment is corrupt; closing",
                    self.inner.name
                );
                self.inner.set_status(AgentStatus::Closed)
            }
            Liveness::Closed => self.inner.set_status(AgentStatus::Closed),
            Liveness::Absent => {}
        }
        self.check_heartbeat_timeout();
    }

    fn check_heartbeat_timeout(&self) {
        if let Some(limit) = self.inner.config.flare_site_heartbeat_timeout {
            if self.last_alive.elapsed() >= limit && !self.inner.shared.lock().is_closed() {
                log::warn!(
                    "shmex agent {}: exchanger silent past flare_site_heartbeat_timeout \
                     ({limit:?}); closing",
                    self.inner.name
                );
                self.inner.set_status(AgentStatus::Closed);
            }
        }
    }

    /// Lost: watch the name for a new exchanger and attach to it.
    fn reattach(&mut self, slice: Duration) {
        // Let go of the dead exchanger's segment first.
        drop(self.inner.lock_outbox().take());
        self.link = None;
        let options = attach_options(&self.inner.config, slice);
        let started = Instant::now();
        let Ok(link) = Link::attach(&self.inner.name, &options) else {
            // An attach can fail at once (a segment of another version, the role taken):
            // wait out the slice rather than retry in a busy loop.
            std::thread::sleep(slice.saturating_sub(started.elapsed()));
            return;
        };
        self.generation += 1;
        let (outbox, receive_half) = split_link(link, self.generation);
        let epoch = outbox.epoch;
        log::info!(
            "shmex agent {}: attached to a new exchanger as incarnation {epoch}",
            self.inner.name
        );
        self.epoch = epoch;
        self.last_alive = Instant::now();
        // A new stream, the same buffers (their pages stay faulted in).
        self.receiver.restart();
        self.receiver.set_min_epoch(epoch);
        *self.inner.lock_outbox() = Some(outbox);
        self.link = Some(receive_half);
        let mut st = self.inner.shared.lock();
        if st.status == AgentStatus::Lost {
            st.generation = self.generation;
            st.status = AgentStatus::Connected;
            st.current = None;
            st.pending = None;
        }
        drop(st);
        self.inner.shared.notify();
    }
}

/// One message of our epoch (`docs/protocol.md` §3.2, incoming).
fn handle(inner: &Inner, epoch: u64, generation: u64, message: Message<'_>) {
    if message.epoch() != epoch {
        return;
    }
    match message.kind() {
        MessageKind::Task => on_task(inner, epoch, generation, message),
        MessageKind::Abort => {
            let id = message.task_id();
            let mut st = inner.shared.lock();
            if let Some(c) = st.current.as_mut().filter(|c| c.id == id) {
                c.aborted = true;
            } else if st.pending.as_ref().is_some_and(|p| p.id == id) {
                st.pending = None;
            }
            drop(st);
            inner.shared.notify();
        }
        MessageKind::Bye => inner.set_status(AgentStatus::Closed),
        MessageKind::ResultAck => {
            let attributed = message.task_id();
            let mut st = inner.shared.lock();
            if message.rc() == ReturnCode::Ok && !attributed.is_empty() {
                // The answered task is done, whether it was fetched here or not (a restarted
                // agent's empty-id result answers the redelivered task).
                if st
                    .current
                    .as_ref()
                    .is_some_and(|c| c.id == attributed && !c.fetched)
                {
                    st.promote();
                }
                if st.pending.as_ref().is_some_and(|p| p.id == attributed) {
                    st.pending = None;
                }
            }
            st.last_ack = Some(AckSeen {
                generation,
                reply_to: message.reply_to(),
                rc: message.rc(),
            });
            drop(st);
            inner.shared.notify();
        }
        // Not ours to receive: consumed and ignored.
        _ => {}
    }
}

fn on_task(inner: &Inner, epoch: u64, generation: u64, message: Message<'_>) {
    let (has_data, has_meta) = data_and_meta(&message);
    let id = message.task_id().to_string();
    let name = message.task_name().to_string();
    let sequence = message.sequence();
    let mut accepted = has_data && has_meta && !id.is_empty();
    if accepted {
        let mut st = inner.shared.lock();
        let duplicate = st.pending.as_ref().is_some_and(|p| p.id == id)
            || (st.pending.is_none()
                && st
                    .current
                    .as_ref()
                    .is_some_and(|c| c.id == id && !c.aborted));
        if !duplicate {
            match super::config::own_message(message, inner.config.receive_in_place) {
                Ok(owned) => {
                    let slot = Slot {
                        id: id.clone(),
                        name,
                        message: Some(owned),
                        fetched: false,
                        aborted: false,
                        answered: false,
                    };
                    if st.pending.is_some() {
                        st.pending = Some(slot);
                    } else if let Some(c) = st.current.as_mut() {
                        c.aborted = true;
                        st.pending = Some(slot);
                    } else {
                        st.current = Some(slot);
                    }
                }
                Err(_) => accepted = false,
            }
        }
        drop(st);
        inner.shared.notify();
    }
    let rc = if accepted {
        ReturnCode::Ok
    } else {
        ReturnCode::BadRequestData
    };
    send_task_ack(inner, epoch, generation, &id, rc, sequence);
}

/// Answers the task message `reply_to` (task `id`, empty if it could not be read) with `rc`:
/// queued, never waited for (the outbox may be busy with a submission, or its producer lent
/// to a loan that is being filled); the acks keep their order.
fn send_task_ack(
    inner: &Inner,
    epoch: u64,
    generation: u64,
    id: &str,
    rc: ReturnCode,
    reply_to: u64,
) {
    inner.shared.lock().acks.push(QueuedAck {
        id: id.to_string(),
        rc,
        epoch,
        reply_to,
        generation,
    });
    inner.flush_acks_if_free();
}
