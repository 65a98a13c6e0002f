//! The agent: attaches to the exchanger's link, fetches tasks and submits results
//! (`docs/protocol.md` §3.2).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{data_and_meta, deadline_after, kind_meta, pump_slice, AgentConfig, Shared};
use crate::control::Liveness;
use crate::frame::{
    Dxo, Envelope, FrameError, FrameReceiver, FrameSender, Message, MessageKind, OwnedMessage,
    ReturnCode, SendError,
};
use crate::link::{AttachOptions, Link, LinkAttachError, LinkControl, LinkParts};
use crate::ring::{Consumer, Producer};
use crate::segment::SegmentName;
use crate::signal::PeerLost;

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
    producer: Producer,
    sender: FrameSender,
    epoch: u64,
    generation: u64,
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
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
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
        producer,
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
        let link = Link::attach(name, &attach_options(&config, config.attach_timeout))?;
        let (outbox, receive_half) = split_link(link, 0);
        let epoch = outbox.epoch;
        log::info!("shmex agent {name}: attached as incarnation {epoch}");
        let inner = Arc::new(Inner {
            shared: Shared::new(State {
                status: AgentStatus::Connected,
                generation: 0,
                current: None,
                pending: None,
                submitted_any: false,
                fetched_any: false,
                last_ack: None,
            }),
            outbox: Mutex::new(Some(outbox)),
            config,
            name: name.clone(),
            stop: AtomicBool::new(false),
        });
        let mut receiver = FrameReceiver::new(inner.config.limits);
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
                    st = self.inner.shared.wait(st, slice, deadline);
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
    pub fn submit_result(&self, dxo: &Dxo<'_>, rc: ReturnCode) -> Result<bool, SubmitError> {
        let slice = pump_slice(&self.inner.config.wait);
        let (id, name, generation) = {
            let mut st = self.inner.shared.lock();
            if st.is_closed() {
                return Err(SubmitError::Closed);
            }
            let submitted_before = std::mem::replace(&mut st.submitted_any, true);
            let fetched_any = st.fetched_any;
            let target = match st.current.as_mut() {
                // Another thread is submitting for this task: it alone may be accepted.
                Some(c) if c.fetched && c.answered => return Ok(false),
                Some(c) if c.fetched && !c.aborted => {
                    c.answered = true;
                    (c.id.clone(), c.name.clone())
                }
                Some(c) if c.fetched => {
                    st.promote();
                    return Ok(false);
                }
                // Only a trainer that (re)started without a task may answer with an empty id;
                // an agent that fetched a task which was then aborted or lost answers for that
                // task, and the answer is `false`.
                _ if !submitted_before && !fetched_any => (String::new(), String::new()),
                _ => return Ok(false),
            };
            (target.0, target.1, st.generation)
        };
        let result = kind_meta(dxo);
        let inner = &*self.inner;
        let cancelled = || {
            let st = inner.shared.lock();
            st.status == AgentStatus::Lost
                || st.is_closed()
                || st.generation != generation
                || (!id.is_empty()
                    && !st
                        .current
                        .as_ref()
                        .is_some_and(|c| c.id == id && !c.aborted))
        };
        let sent = {
            let mut outbox = inner.lock_outbox();
            match outbox.as_mut() {
                Some(outbox) if outbox.generation == generation => {
                    let envelope = Envelope::new(MessageKind::Result)
                        .with_task(&id, &name)
                        .with_rc(rc)
                        .with_epoch(outbox.epoch);
                    outbox.sender.send_cancellable(
                        &mut outbox.producer,
                        &envelope,
                        Some(&result),
                        None,
                        Some((&cancelled, slice)),
                    )
                }
                _ => Err(SendError::Cancelled),
            }
        };
        let sequence = match sent {
            Ok(sequence) => sequence,
            Err(SendError::Cancelled | SendError::PeerLost(_) | SendError::Timeout) => {
                return self.finish_submit(&id, false);
            }
            Err(e) => {
                // Nothing went out: the task may be answered again.
                if let Some(c) = inner.shared.lock().current.as_mut().filter(|c| c.id == id) {
                    c.answered = false;
                }
                return Err(SubmitError::Send(e));
            }
        };
        let sent_at = Instant::now();
        let mut warned_late = false;
        let mut st = inner.shared.lock();
        loop {
            // The ack first: an exchanger that answered and then said `bye` accepted it.
            if let Some(ack) = st
                .last_ack
                .as_ref()
                .filter(|a| a.generation == generation && a.reply_to == sequence)
            {
                let accepted = ack.rc == ReturnCode::Ok;
                drop(st);
                return self.finish_submit(&id, accepted);
            }
            if st.is_closed() {
                return Err(SubmitError::Closed);
            }
            let gone = st.status == AgentStatus::Lost || st.generation != generation;
            let aborted =
                !id.is_empty() && st.current.as_ref().is_some_and(|c| c.id == id && c.aborted);
            if gone || aborted {
                drop(st);
                return self.finish_submit(&id, false);
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
            st = inner.shared.wait(st, slice, None);
        }
    }

    /// After a submission: the answered task is no longer current; the pending one is.
    fn finish_submit(&self, id: &str, accepted: bool) -> Result<bool, SubmitError> {
        let mut st = self.inner.shared.lock();
        if st
            .current
            .as_ref()
            .is_some_and(|c| c.fetched && (c.id == id || c.aborted))
        {
            st.promote();
        }
        Ok(accepted)
    }

    /// Detaches: blocked and later calls return `Closed`; the pump stops. Calling it again
    /// does nothing.
    pub fn close(&self) {
        let Some(pump) = self.pump.lock().unwrap_or_else(|e| e.into_inner()).take() else {
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
            if Instant::now() >= next_check {
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
        self.receiver = FrameReceiver::new(self.inner.config.limits);
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
        MessageKind::Task => on_task(inner, epoch, message),
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

fn on_task(inner: &Inner, epoch: u64, message: Message<'_>) {
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
            match message.into_owned() {
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
    send_task_ack(inner, epoch, &id, rc, sequence);
}

/// Answers the task message `reply_to` (task `id`, empty if it could not be read) with `rc`.
fn send_task_ack(inner: &Inner, epoch: u64, id: &str, rc: ReturnCode, reply_to: u64) {
    let ack = Envelope::new(MessageKind::TaskAck)
        .with_task(id, "")
        .with_rc(rc)
        .with_epoch(epoch)
        .with_reply_to(reply_to);
    let mut outbox = inner.lock_outbox();
    if let Some(outbox) = outbox.as_mut() {
        // Best effort: an exchanger that died needs no ack.
        let _ = outbox.sender.send(
            &mut outbox.producer,
            &ack,
            None,
            deadline_after(inner.config.submit_result_timeout),
        );
    }
}
