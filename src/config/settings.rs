//! `[defaults]` and its per-upstream overrides: the SPEC's default values and the overlay of what a file sets.

use std::time::Duration;

use super::raw::{self, RawSettings};
use super::{Settings, MAX_REPLAY_BODY};

/// The keepalive intervals Linux accepts for an upstream socket (`MAX_TCP_KEEPIDLE`).
const TCP_KEEPALIVE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(32_767);

impl Settings {
    /// The values SPEC §3 documents for `[defaults]`.
    pub fn defaults() -> Settings {
        Settings {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            max_connections: 128,
            max_idle: 16,
            idle_timeout: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(60),
            acquire_timeout: Duration::from_secs(5),
            tcp_keepalive: Some(Duration::from_secs(30)),
            retry_on_reset: true,
            retry_non_idempotent: false,
            unsafe_reuse_max_idle: Duration::from_secs(2),
            max_replay_body: 1024 * 1024,
            tunnel_idle_timeout: Duration::from_secs(60),
            allow_private: false,
            learn_idle_limit: true,
        }
    }

    /// These settings with every key `raw` sets replaced; problems name `label`.
    /// `inherited_max_idle_explicit`: the `max_idle` being inherited was written in the file
    /// (then exceeding a lowered cap is an error, not something to adjust silently).
    pub(super) fn overlay(
        &self,
        raw: &RawSettings,
        label: &str,
        inherited_max_idle_explicit: bool,
        problems: &mut Vec<String>,
    ) -> Settings {
        let mut s = self.clone();
        let mut dur = |key: &str, v: &Option<String>, slot: &mut Duration| {
            if let Some(text) = v {
                match raw::parse_duration(text) {
                    Ok(d) if d.is_zero() => {
                        problems.push(format!("{label}: {key} must be above 0"))
                    }
                    Ok(d) => *slot = d,
                    Err(e) => problems.push(format!("{label}: {key}: {e}")),
                }
            }
        };
        dur(
            "connect_timeout",
            &raw.connect_timeout,
            &mut s.connect_timeout,
        );
        dur(
            "response_timeout",
            &raw.response_timeout,
            &mut s.response_timeout,
        );
        dur("idle_timeout", &raw.idle_timeout, &mut s.idle_timeout);
        dur("max_lifetime", &raw.max_lifetime, &mut s.max_lifetime);
        dur(
            "acquire_timeout",
            &raw.acquire_timeout,
            &mut s.acquire_timeout,
        );
        dur(
            "tunnel_idle_timeout",
            &raw.tunnel_idle_timeout,
            &mut s.tunnel_idle_timeout,
        );
        if let Some(text) = &raw.unsafe_reuse_max_idle {
            // Zero is meaningful here: never reuse for a non-retriable request.
            match raw::parse_duration(text) {
                Ok(d) => s.unsafe_reuse_max_idle = d,
                Err(e) => problems.push(format!("{label}: unsafe_reuse_max_idle: {e}")),
            }
        }
        if let Some(text) = &raw.tcp_keepalive {
            if text == "off" {
                s.tcp_keepalive = None;
            } else {
                match raw::parse_duration(text) {
                    // What the kernel takes (TCP_KEEPIDLE, TCP_KEEPINTVL): outside it the
                    // socket option fails and probes would silently not be what was asked.
                    Ok(d) if !TCP_KEEPALIVE_RANGE.contains(&d) || d.subsec_nanos() != 0 => {
                        problems.push(format!(
                            "{label}: tcp_keepalive ({text}) must be whole seconds from 1s to 32767s, or \"off\""
                        ))
                    }
                    Ok(d) => s.tcp_keepalive = Some(d),
                    Err(e) => problems.push(format!("{label}: tcp_keepalive: {e} (or \"off\")")),
                }
            }
        }
        if let Some(n) = raw.max_connections {
            if n == 0 {
                problems.push(format!("{label}: max_connections must be at least 1"));
            } else {
                s.max_connections = n;
            }
        }
        if let Some(n) = raw.max_idle {
            s.max_idle = n;
        }
        if let Some(n) = raw.max_replay_body {
            if n > MAX_REPLAY_BODY {
                problems.push(format!(
                    "{label}: max_replay_body ({n}) must be at most {MAX_REPLAY_BODY}"
                ));
            } else {
                s.max_replay_body = n;
            }
        }
        if let Some(b) = raw.retry_on_reset {
            s.retry_on_reset = b;
        }
        if let Some(b) = raw.retry_non_idempotent {
            s.retry_non_idempotent = b;
        }
        if let Some(b) = raw.allow_private {
            s.allow_private = b;
        }
        if let Some(b) = raw.learn_idle_limit {
            s.learn_idle_limit = b;
        }
        if s.max_idle > s.max_connections {
            // Reported where it arises: the layer that wrote max_idle, or lowered the cap under one.
            if raw.max_idle.is_some()
                || (inherited_max_idle_explicit && raw.max_connections.is_some())
            {
                problems.push(format!(
                    "{label}: max_idle ({}) must not exceed max_connections ({})",
                    s.max_idle, s.max_connections
                ));
            } else {
                // Only the cap was written: the built-in max_idle follows it down.
                s.max_idle = s.max_connections;
            }
        }
        s
    }
}
