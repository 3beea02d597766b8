//! Stale reuses (SPEC §11) as forwarding and tunnels meet them: counted, learned from, and
//! told in one WARN line when they lower a destination's idle timeouts.

use std::time::Duration;

use crate::config::Upstream;
use crate::learn::{self, table::Taught, Lowered};
use crate::state::Shared;
use crate::target::Target;

/// What met the dropped connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A request on a pooled connection that was reused after `idle`.
    Connection,
    /// A CONNECT tunnel whose upstream reset it when bytes moved after `idle`.
    Tunnel,
}

/// `target` (under `upstream`) turned out to have been dropped by the remote side after
/// `idle`: count it; if it teaches a lower limit, lower the destination's pools now (new
/// tunnels read the table when they open) and say so once.
pub fn record(shared: &Shared, upstream: &Upstream, target: &Target, idle: Duration, via: Via) {
    shared
        .metrics
        .stale_reuses
        .with_label_values(&[&upstream.name])
        .inc();
    let s = &upstream.settings;
    let taught = shared.pools.learned.stale(
        &upstream.name,
        s.learn_idle_limit,
        &target.host,
        target.port,
        idle,
    );
    let Taught::Lowered { before } = taught else {
        tracing::debug!(
            upstream = %upstream.name,
            destination = %target.authority(),
            idle_ms = idle.as_millis() as u64,
            "stale reuse: the remote side had dropped a connection"
        );
        return;
    };
    let idle_timeout = learn::effective(s.idle_timeout, None, Some(idle));
    shared
        .pools
        .lower_idle_timeout(&upstream.name, &target.host, target.port, idle_timeout);
    let destination = target.authority();
    let lowered = Lowered {
        upstream: &upstream.name,
        destination: &destination,
        tunnel: via == Via::Tunnel,
        limit: idle,
        idle: (learn::effective(s.idle_timeout, None, before), idle_timeout),
        tunnel_idle: (
            learn::effective(s.tunnel_idle_timeout, None, before),
            learn::effective(s.tunnel_idle_timeout, None, Some(idle)),
        ),
    };
    tracing::warn!("{}", lowered.line());
}
