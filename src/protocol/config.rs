//! Configuration of both roles, with FLARE's parameter names and defaults
//! (`ipc_exchanger.py`, `ipc_agent.py`) plus the options FLARE does not have.

use std::time::Duration;

use crate::frame::Limits;
use crate::link::DEFAULT_RING_CAPACITY;
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
}

impl Default for ExchangerConfig {
    fn default() -> Self {
        ExchangerConfig {
            send_task_timeout: Duration::from_secs(5),
            resend_task_interval: Duration::from_secs(2),
            agent_connection_timeout: Duration::from_secs(60),
            agent_heartbeat_timeout: None,
            agent_heartbeat_interval: Duration::from_secs(5),
            agent_ack_timeout: Duration::from_secs(5),
            result_timeout: None,
            on_agent_restart: RestartPolicy::Redeliver,
            wait: WaitStrategy::default(),
            task_ring_capacity: DEFAULT_RING_CAPACITY,
            result_ring_capacity: DEFAULT_RING_CAPACITY,
            limits: Limits::default(),
            reclaim_stale: true,
        }
    }
}

/// Options of [`super::Agent::attach`]. `Default` gives FLARE's `IPCAgent` defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            submit_result_timeout: Duration::from_secs(30),
            flare_site_connection_timeout: Duration::from_secs(60),
            flare_site_heartbeat_timeout: None,
            resend_result_interval: Duration::from_secs(2),
            attach_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(5),
            wait: WaitStrategy::default(),
            limits: Limits::default(),
        }
    }
}
