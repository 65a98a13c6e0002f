//! Configuration of both roles, with FLARE's parameter names and defaults
//! (`ipc_exchanger.py`, `ipc_agent.py`) plus the options FLARE does not have.

use std::time::Duration;

use crate::frame::Limits;
use crate::link::{DEFAULT_ATTACH_TIMEOUT, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_RING_CAPACITY};
use crate::signal::WaitStrategy;

/// What the exchanger does with the in-flight task when the agent incarnation it was sent to
/// ends (its process died or it detached) before answering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Send the task again to the next agent incarnation (FLARE loses it). Default.
    #[default]
    Redeliver,
    /// End `execute` at once with `EXECUTION_EXCEPTION`.
    Fail,
}

/// Options of [`super::Exchanger::create`]. `Default` gives FLARE's `IPCExchanger` defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExchangerConfig {
    /// FLARE's wait for the agent's `task_ack` before the ack counts as late
    /// (`send_task_timeout`, 5 s). Accepted for FLARE parity and not read: a late ack is not
    /// reported (the crate has no logging) and the task is never pushed twice to one agent
    /// incarnation (the ring is lossless); `execute` keeps waiting, checking the agent's
    /// liveness every `wait.poll_interval` (bound it with `result_timeout`).
    pub send_task_timeout: Duration,
    /// FLARE's re-send period while a `task_ack` is late (`resend_task_interval`, 2 s).
    /// Accepted for FLARE parity and not read (see `send_task_timeout`).
    pub resend_task_interval: Duration,
    /// Heartbeat silence after which the agent counts as disconnected (FLARE:
    /// `agent_connection_timeout`, 60 s). A disconnected agent keeps its task.
    pub agent_connection_timeout: Duration,
    /// Heartbeat silence (or absence since creation) after which the agent is declared dead
    /// and the exchanger stops: `execute` returns `TASK_ABORTED` (FLARE:
    /// `agent_heartbeat_timeout`, off = `None`).
    pub agent_heartbeat_timeout: Option<Duration>,
    /// Period of our heartbeat in the control block (FLARE: `agent_heartbeat_interval`, 5 s,
    /// how often it sends heartbeats to the agent).
    pub agent_heartbeat_interval: Duration,
    /// Deadline for pushing `abort` and `bye` into the task ring (FLARE: `agent_ack_timeout`,
    /// 5 s, the wait for heartbeat and bye acks).
    pub agent_ack_timeout: Duration,
    /// Longest time `execute` waits for the result after first pushing the task (the wait
    /// for the agent's ack included, so a task that is never acked ends too); then the agent
    /// is sent `abort` and `execute` returns `TIMEOUT`. `None` (default): wait forever, as
    /// FLARE.
    pub result_timeout: Option<Duration>,
    /// What happens to the in-flight task when its agent incarnation ends (default
    /// [`RestartPolicy::Redeliver`]).
    pub on_agent_restart: RestartPolicy,
    /// How blocking calls wait: busy-poll for `spin`, then sleep in slices of
    /// `poll_interval`, checking the agent's liveness each slice (default 50 µs, 10 ms).
    pub wait: WaitStrategy,
    /// Data bytes of the task ring (default 16 MiB).
    pub task_ring_capacity: u64,
    /// Data bytes of the result ring (default 16 MiB).
    pub result_ring_capacity: u64,
    /// Limits enforced on received results before anything is allocated (default
    /// [`Limits::default`]).
    pub limits: Limits,
    /// Replace a segment of the same name whose owner died (default `true`).
    pub reclaim_stale: bool,
    /// The length in bytes of the largest result this side expects to receive, if known (a
    /// model's tensor bytes will do: room for the message's headers and tensor table is
    /// added, 1/128 of it plus 1 MiB). `Exchanger::create` then maps and faults in a reassembly
    /// buffer of that size before returning (taking about as long as writing that much
    /// memory once), so that not even the first result larger than the ring takes a page fault.
    /// It costs that much memory (resident) for the life of the exchanger, which a large
    /// result would use anyway from its first arrival on. `None` (default): the buffer is
    /// mapped and faulted in (in one batch) when the first large result arrives.
    pub expected_message_len: Option<u64>,
    /// Read a result that arrived whole (it fit in the result ring) in place in the ring
    /// instead of copying it out (default `false`): zero copies on this side. The result's ring
    /// space stays taken until the reply's message (and every clone) is dropped, so the agent
    /// cannot send a second such result before then; with a result ring at least as large as
    /// the largest result plus [`IN_PLACE_KEEP_FREE`], a result built by loan is never copied
    /// on either side. A result too large to hold with that much of the ring left free is
    /// copied out as when this is off.
    pub receive_in_place: bool,
}

/// Setters, one per field (the struct is `#[non_exhaustive]`: build it from `default()`).
impl ExchangerConfig {
    /// Sets [`ExchangerConfig::send_task_timeout`].
    #[must_use]
    pub fn send_task_timeout(mut self, send_task_timeout: Duration) -> Self {
        self.send_task_timeout = send_task_timeout;
        self
    }

    /// Sets [`ExchangerConfig::resend_task_interval`].
    #[must_use]
    pub fn resend_task_interval(mut self, resend_task_interval: Duration) -> Self {
        self.resend_task_interval = resend_task_interval;
        self
    }

    /// Sets [`ExchangerConfig::agent_connection_timeout`].
    #[must_use]
    pub fn agent_connection_timeout(mut self, agent_connection_timeout: Duration) -> Self {
        self.agent_connection_timeout = agent_connection_timeout;
        self
    }

    /// Sets [`ExchangerConfig::agent_heartbeat_timeout`].
    #[must_use]
    pub fn agent_heartbeat_timeout(mut self, agent_heartbeat_timeout: Option<Duration>) -> Self {
        self.agent_heartbeat_timeout = agent_heartbeat_timeout;
        self
    }

    /// Sets [`ExchangerConfig::agent_heartbeat_interval`].
    #[must_use]
    pub fn agent_heartbeat_interval(mut self, agent_heartbeat_interval: Duration) -> Self {
        self.agent_heartbeat_interval = agent_heartbeat_interval;
        self
    }

    /// Sets [`ExchangerConfig::agent_ack_timeout`].
    #[must_use]
    pub fn agent_ack_timeout(mut self, agent_ack_timeout: Duration) -> Self {
        self.agent_ack_timeout = agent_ack_timeout;
        self
    }

    /// Sets [`ExchangerConfig::result_timeout`].
    #[must_use]
    pub fn result_timeout(mut self, result_timeout: Option<Duration>) -> Self {
        self.result_timeout = result_timeout;
        self
    }

    /// Sets [`ExchangerConfig::on_agent_restart`].
    #[must_use]
    pub fn on_agent_restart(mut self, on_agent_restart: RestartPolicy) -> Self {
        self.on_agent_restart = on_agent_restart;
        self
    }

    /// Sets [`ExchangerConfig::wait`].
    #[must_use]
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// Sets [`ExchangerConfig::task_ring_capacity`].
    #[must_use]
    pub fn task_ring_capacity(mut self, task_ring_capacity: u64) -> Self {
        self.task_ring_capacity = task_ring_capacity;
        self
    }

    /// Sets [`ExchangerConfig::result_ring_capacity`].
    #[must_use]
    pub fn result_ring_capacity(mut self, result_ring_capacity: u64) -> Self {
        self.result_ring_capacity = result_ring_capacity;
        self
    }

    /// Sets [`ExchangerConfig::limits`].
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`ExchangerConfig::reclaim_stale`].
    #[must_use]
    pub fn reclaim_stale(mut self, reclaim_stale: bool) -> Self {
        self.reclaim_stale = reclaim_stale;
        self
    }

    /// Sets [`ExchangerConfig::expected_message_len`].
    #[must_use]
    pub fn expected_message_len(mut self, expected_message_len: Option<u64>) -> Self {
        self.expected_message_len = expected_message_len;
        self
    }

    /// Sets [`ExchangerConfig::receive_in_place`].
    #[must_use]
    pub fn receive_in_place(mut self, receive_in_place: bool) -> Self {
        self.receive_in_place = receive_in_place;
        self
    }

    /// The bytes of memory [`ExchangerConfig::expected_message_len`] reserves (and keeps resident) for
    /// the receive buffer: the expected length plus room for headers and the tensor table.
    /// `None` when it is not set.
    pub fn reserved_receive_buffer(&self) -> Option<u64> {
        self.expected_message_len
            .map(|expected| reserved_len(expected, &self.limits) as u64)
    }
}

impl Default for ExchangerConfig {
    fn default() -> Self {
        ExchangerConfig {
            send_task_timeout: Duration::from_secs(5),
            resend_task_interval: Duration::from_secs(2),
            agent_connection_timeout: Duration::from_secs(60),
            agent_heartbeat_timeout: None,
            agent_heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            agent_ack_timeout: Duration::from_secs(5),
            result_timeout: None,
            on_agent_restart: RestartPolicy::Redeliver,
            wait: WaitStrategy::default(),
            task_ring_capacity: DEFAULT_RING_CAPACITY,
            result_ring_capacity: DEFAULT_RING_CAPACITY,
            limits: Limits::default(),
            reclaim_stale: true,
            expected_message_len: None,
            receive_in_place: false,
        }
    }
}

/// Options of [`super::Agent::attach`]. `Default` gives FLARE's `IPCAgent` defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentConfig {
    /// FLARE's wait for the `result_ack` (`submit_result_timeout`, 30 s). Here it bounds
    /// pushing an answer into the exchanger's ring (the agent's `task_ack`); `submit_result`
    /// itself waits for the `result_ack` until it arrives, an abort comes, or the exchanger
    /// is lost, checking every `wait.poll_interval`.
    pub submit_result_timeout: Duration,
    /// Exchanger heartbeat silence after which it counts as disconnected (FLARE:
    /// `flare_site_connection_timeout`, 60 s).
    pub flare_site_connection_timeout: Duration,
    /// Exchanger heartbeat silence after which the agent closes (FLARE:
    /// `flare_site_heartbeat_timeout`, off = `None`).
    pub flare_site_heartbeat_timeout: Option<Duration>,
    /// FLARE's re-send period while a `result_ack` is late (`resend_result_interval`, 2 s).
    /// Accepted for FLARE parity and not read: the result is never pushed twice (the ring is
    /// lossless).
    pub resend_result_interval: Duration,
    /// How long [`super::Agent::attach`] waits for a live exchanger (ours; default 60 s).
    pub attach_timeout: Duration,
    /// Period of our heartbeat in the control block (ours; default 5 s, as FLARE's agent
    /// answers heartbeats).
    pub heartbeat_interval: Duration,
    /// How blocking calls wait (as [`ExchangerConfig::wait`]).
    pub wait: WaitStrategy,
    /// Limits enforced on received tasks before anything is allocated.
    pub limits: Limits,
    /// The length in bytes of the largest task this side expects to receive, if known (a
    /// model's tensor bytes will do: room for the message's headers and tensor table is
    /// added, 1/128 of it plus 1 MiB). `Agent::attach` then maps and faults in a reassembly
    /// buffer of that size before returning (taking about as long as writing that much
    /// memory once), so that not even the first task larger than the ring takes a page fault.
    /// It costs that much memory (resident) for the life of the agent, which a large
    /// task would use anyway from its first arrival on. `None` (default): the buffer is
    /// mapped and faulted in (in one batch) when the first large task arrives.
    pub expected_message_len: Option<u64>,
    /// Read a task that arrived whole (it fit in the task ring) in place in the ring instead
    /// of copying it out (default `false`): zero copies on this side. The task's ring space
    /// stays taken until the fetched task's message (and every clone) is dropped, so the
    /// exchanger cannot send a second such task before then: drop a task before waiting for
    /// the next one. With a task ring at least as large as the largest task plus
    /// [`IN_PLACE_KEEP_FREE`], a task built by loan is never copied on either side; aborts and
    /// byes still arrive while a task is held. A task too large to hold with that much of the
    /// ring left free is copied out as when this is off.
    pub receive_in_place: bool,
}

/// Setters, one per field (the struct is `#[non_exhaustive]`: build it from `default()`).
impl AgentConfig {
    /// Sets [`AgentConfig::submit_result_timeout`].
    #[must_use]
    pub fn submit_result_timeout(mut self, submit_result_timeout: Duration) -> Self {
        self.submit_result_timeout = submit_result_timeout;
        self
    }

    /// Sets [`AgentConfig::flare_site_connection_timeout`].
    #[must_use]
    pub fn flare_site_connection_timeout(
        mut self,
        flare_site_connection_timeout: Duration,
    ) -> Self {
        self.flare_site_connection_timeout = flare_site_connection_timeout;
        self
    }

    /// Sets [`AgentConfig::flare_site_heartbeat_timeout`].
    #[must_use]
    pub fn flare_site_heartbeat_timeout(
        mut self,
        flare_site_heartbeat_timeout: Option<Duration>,
    ) -> Self {
        self.flare_site_heartbeat_timeout = flare_site_heartbeat_timeout;
        self
    }

    /// Sets [`AgentConfig::resend_result_interval`].
    #[must_use]
    pub fn resend_result_interval(mut self, resend_result_interval: Duration) -> Self {
        self.resend_result_interval = resend_result_interval;
        self
    }

    /// Sets [`AgentConfig::attach_timeout`].
    #[must_use]
    pub fn attach_timeout(mut self, attach_timeout: Duration) -> Self {
        self.attach_timeout = attach_timeout;
        self
    }

    /// Sets [`AgentConfig::heartbeat_interval`].
    #[must_use]
    pub fn heartbeat_interval(mut self, heartbeat_interval: Duration) -> Self {
        self.heartbeat_interval = heartbeat_interval;
        self
    }

    /// Sets [`AgentConfig::wait`].
    #[must_use]
    pub fn wait(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// Sets [`AgentConfig::limits`].
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`AgentConfig::expected_message_len`].
    #[must_use]
    pub fn expected_message_len(mut self, expected_message_len: Option<u64>) -> Self {
        self.expected_message_len = expected_message_len;
        self
    }

    /// Sets [`AgentConfig::receive_in_place`].
    #[must_use]
    pub fn receive_in_place(mut self, receive_in_place: bool) -> Self {
        self.receive_in_place = receive_in_place;
        self
    }

    /// The bytes of memory [`AgentConfig::expected_message_len`] reserves (and keeps resident) for
    /// the receive buffer: the expected length plus room for headers and the tensor table.
    /// `None` when it is not set.
    pub fn reserved_receive_buffer(&self) -> Option<u64> {
        self.expected_message_len
            .map(|expected| reserved_len(expected, &self.limits) as u64)
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            submit_result_timeout: Duration::from_secs(30),
            flare_site_connection_timeout: Duration::from_secs(60),
            flare_site_heartbeat_timeout: None,
            resend_result_interval: Duration::from_secs(2),
            attach_timeout: DEFAULT_ATTACH_TIMEOUT,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            wait: WaitStrategy::default(),
            limits: Limits::default(),
            expected_message_len: None,
            receive_in_place: false,
        }
    }
}

/// Bytes of a ring that [`ExchangerConfig::receive_in_place`] and
/// [`AgentConfig::receive_in_place`] keep free for the messages behind a held one (acks,
/// aborts, byes are a few hundred bytes each).
pub const IN_PLACE_KEEP_FREE: u64 = 64 << 10;

/// Turns a received message into an owned one: held in the ring when `in_place` allows it
/// (see [`IN_PLACE_KEEP_FREE`]), else copied out or its reassembly buffer kept.
pub(super) fn own_message(
    message: crate::frame::Message<'_>,
    in_place: bool,
) -> std::io::Result<crate::frame::OwnedMessage> {
    if in_place {
        message.into_owned_in_place(IN_PLACE_KEEP_FREE)
    } else {
        message.into_owned()
    }
}

/// The reassembly buffer reserved for [`ExchangerConfig::expected_message_len`] or
/// [`AgentConfig::expected_message_len`]: the expected length plus room for the headers,
/// tensor table and alignment padding (1/128 of it plus 1 MiB), capped by the limit on
/// message length (no larger message is accepted).
pub(super) fn reserved_len(expected: u64, limits: &Limits) -> usize {
    let with_room = expected
        .saturating_add(expected / 128)
        .saturating_add(1 << 20);
    usize::try_from(with_room.min(limits.max_message_len)).unwrap_or(usize::MAX)
}

/// Reserves `receiver`'s reassembly buffer for `expected` bytes (see [`reserved_len`]); a
/// refusal is logged, not fatal: the buffer is then mapped when a large message arrives.
pub(super) fn reserve_receiver(
    receiver: &mut crate::frame::FrameReceiver,
    expected: Option<u64>,
    role: &str,
) {
    let Some(expected) = expected else {
        return;
    };
    let len = reserved_len(expected, receiver.limits());
    if let Err(e) = receiver.reserve(len) {
        log::warn!("shmex {role}: no memory reserved for a {len}-byte message: {e}");
    }
}
