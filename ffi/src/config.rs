//! The only place that builds the protocol's configurations from the C option structs (and
//! the C defaults from the Rust ones), so that a change of how configs are built is a change
//! here only.

use std::time::Duration;

use shmex::protocol::{AgentConfig, ExchangerConfig, RestartPolicy};

use crate::status::{shmex_status, Failure};
use crate::types::{shmex_agent_options, shmex_exchanger_options, shmex_restart_policy};

fn invalid_config(message: String) -> Failure {
    Failure::new(shmex_status::SHMEX_INVALID_CONFIG, message)
}

/// Seconds from C: finite, not negative.
fn seconds(what: &str, secs: f64) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(secs).map_err(|_| {
        invalid_config(format!(
            "{what} must be a finite number of seconds >= 0, got {secs}"
        ))
    })
}

/// Optional seconds from C: negative means "off"; NaN is invalid.
fn optional_seconds(what: &str, secs: f64) -> Result<Option<Duration>, Failure> {
    if secs < 0.0 {
        return Ok(None);
    }
    if secs == f64::INFINITY {
        return Ok(None);
    }
    seconds(what, secs).map(Some)
}

fn optional_to_c(d: Option<Duration>) -> f64 {
    d.map_or(-1.0, |d| d.as_secs_f64())
}

/// An optional length from C: 0 means "unknown".
fn optional_len(len: u64) -> Option<u64> {
    (len != 0).then_some(len)
}

fn optional_len_to_c(len: Option<u64>) -> u64 {
    len.unwrap_or(0)
}

/// The exchanger configuration of the C options.
pub(crate) fn exchanger_config(o: &shmex_exchanger_options) -> Result<ExchangerConfig, Failure> {
    let on_agent_restart = match o.on_agent_restart {
        n if n == shmex_restart_policy::SHMEX_RESTART_REDELIVER as u32 => RestartPolicy::Redeliver,
        n if n == shmex_restart_policy::SHMEX_RESTART_FAIL as u32 => RestartPolicy::Fail,
        n => return Err(invalid_config(format!("unknown on_agent_restart {n}"))),
    };
    // Setters on the default: fields C does not set keep it.
    Ok(ExchangerConfig::default()
        .send_task_timeout(seconds("send_task_timeout", o.send_task_timeout)?)
        .resend_task_interval(seconds("resend_task_interval", o.resend_task_interval)?)
        .agent_connection_timeout(seconds(
            "agent_connection_timeout",
            o.agent_connection_timeout,
        )?)
        .agent_heartbeat_timeout(optional_seconds(
            "agent_heartbeat_timeout",
            o.agent_heartbeat_timeout,
        )?)
        .agent_heartbeat_interval(seconds(
            "agent_heartbeat_interval",
            o.agent_heartbeat_interval,
        )?)
        .agent_ack_timeout(seconds("agent_ack_timeout", o.agent_ack_timeout)?)
        .result_timeout(optional_seconds("result_timeout", o.result_timeout)?)
        .on_agent_restart(on_agent_restart)
        .task_ring_capacity(o.task_ring_capacity)
        .result_ring_capacity(o.result_ring_capacity)
        .reclaim_stale(o.reclaim_stale != 0)
        .receive_in_place(o.receive_in_place != 0)
        .expected_message_len(optional_len(o.expected_message_len)))
}

/// The agent configuration of the C options.
pub(crate) fn agent_config(o: &shmex_agent_options) -> Result<AgentConfig, Failure> {
    Ok(AgentConfig::default()
        .submit_result_timeout(seconds("submit_result_timeout", o.submit_result_timeout)?)
        .flare_site_connection_timeout(seconds(
            "flare_site_connection_timeout",
            o.flare_site_connection_timeout,
        )?)
        .flare_site_heartbeat_timeout(optional_seconds(
            "flare_site_heartbeat_timeout",
            o.flare_site_heartbeat_timeout,
        )?)
        .resend_result_interval(seconds("resend_result_interval", o.resend_result_interval)?)
        .attach_timeout(seconds("attach_timeout", o.attach_timeout)?)
        .heartbeat_interval(seconds("heartbeat_interval", o.heartbeat_interval)?)
        .receive_in_place(o.receive_in_place != 0)
        .expected_message_len(optional_len(o.expected_message_len)))
}

/// The C options of the default exchanger configuration.
pub(crate) fn default_exchanger_options() -> shmex_exchanger_options {
    let c = ExchangerConfig::default();
    shmex_exchanger_options {
        send_task_timeout: c.send_task_timeout.as_secs_f64(),
        resend_task_interval: c.resend_task_interval.as_secs_f64(),
        agent_connection_timeout: c.agent_connection_timeout.as_secs_f64(),
        agent_heartbeat_timeout: optional_to_c(c.agent_heartbeat_timeout),
        agent_heartbeat_interval: c.agent_heartbeat_interval.as_secs_f64(),
        agent_ack_timeout: c.agent_ack_timeout.as_secs_f64(),
        result_timeout: optional_to_c(c.result_timeout),
        on_agent_restart: match c.on_agent_restart {
            RestartPolicy::Redeliver => shmex_restart_policy::SHMEX_RESTART_REDELIVER as u32,
            RestartPolicy::Fail => shmex_restart_policy::SHMEX_RESTART_FAIL as u32,
        },
        task_ring_capacity: c.task_ring_capacity,
        result_ring_capacity: c.result_ring_capacity,
        reclaim_stale: c.reclaim_stale.into(),
        receive_in_place: c.receive_in_place.into(),
        expected_message_len: optional_len_to_c(c.expected_message_len),
    }
}

/// The C options of the default agent configuration.
pub(crate) fn default_agent_options() -> shmex_agent_options {
    let c = AgentConfig::default();
    shmex_agent_options {
        submit_result_timeout: c.submit_result_timeout.as_secs_f64(),
        flare_site_connection_timeout: c.flare_site_connection_timeout.as_secs_f64(),
        flare_site_heartbeat_timeout: optional_to_c(c.flare_site_heartbeat_timeout),
        resend_result_interval: c.resend_result_interval.as_secs_f64(),
        attach_timeout: c.attach_timeout.as_secs_f64(),
        heartbeat_interval: c.heartbeat_interval.as_secs_f64(),
        receive_in_place: c.receive_in_place.into(),
        expected_message_len: optional_len_to_c(c.expected_message_len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip() {
        assert_eq!(
            exchanger_config(&default_exchanger_options()).unwrap(),
            ExchangerConfig::default()
        );
        assert_eq!(
            agent_config(&default_agent_options()).unwrap(),
            AgentConfig::default()
        );
    }

    #[test]
    fn receive_in_place_and_expected_message_len_reach_the_configs() {
        let mut o = default_exchanger_options();
        o.receive_in_place = 7; // any non-zero int is on, as reclaim_stale
        o.expected_message_len = 5 << 20;
        let c = exchanger_config(&o).unwrap();
        assert!(c.receive_in_place);
        assert_eq!(c.expected_message_len, Some(5 << 20));
        o.receive_in_place = 0;
        o.expected_message_len = 0; // unknown
        let c = exchanger_config(&o).unwrap();
        assert!(!c.receive_in_place);
        assert_eq!(c.expected_message_len, None);

        let mut a = default_agent_options();
        a.receive_in_place = 1;
        a.expected_message_len = 3 << 20;
        let c = agent_config(&a).unwrap();
        assert!(c.receive_in_place);
        assert_eq!(c.expected_message_len, Some(3 << 20));
        a.receive_in_place = 0;
        a.expected_message_len = 0;
        let c = agent_config(&a).unwrap();
        assert!(!c.receive_in_place);
        assert_eq!(c.expected_message_len, None);
    }

    /// `include/shmex.f90` mirrors the option structs field by field (bind(C) types); this
    /// pins their C layout (on the 64-bit targets shmex runs on), so that a change here is
    /// seen to need one there too.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn option_layouts_are_pinned_for_the_fortran_module() {
        use std::mem::{offset_of, size_of};
        assert_eq!(offset_of!(shmex_exchanger_options, on_agent_restart), 56);
        assert_eq!(offset_of!(shmex_exchanger_options, task_ring_capacity), 64);
        assert_eq!(offset_of!(shmex_exchanger_options, reclaim_stale), 80);
        assert_eq!(offset_of!(shmex_exchanger_options, receive_in_place), 84);
        assert_eq!(
            offset_of!(shmex_exchanger_options, expected_message_len),
            88
        );
        assert_eq!(size_of::<shmex_exchanger_options>(), 96);
        assert_eq!(offset_of!(shmex_agent_options, heartbeat_interval), 40);
        assert_eq!(offset_of!(shmex_agent_options, receive_in_place), 48);
        assert_eq!(offset_of!(shmex_agent_options, expected_message_len), 56);
        assert_eq!(size_of::<shmex_agent_options>(), 64);
    }

    #[test]
    fn bad_durations_are_invalid_config() {
        let mut o = default_exchanger_options();
        o.agent_ack_timeout = f64::NAN;
        let err = exchanger_config(&o).unwrap_err();
        assert_eq!(err.status, shmex_status::SHMEX_INVALID_CONFIG);
        o = default_exchanger_options();
        o.send_task_timeout = -1.0;
        assert!(exchanger_config(&o).is_err());
        o = default_exchanger_options();
        o.on_agent_restart = 7;
        assert!(exchanger_config(&o).is_err());
        let mut a = default_agent_options();
        a.attach_timeout = f64::INFINITY;
        assert!(agent_config(&a).is_err());
    }
}
