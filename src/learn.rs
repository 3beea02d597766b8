//! Learned remote idle limits (SPEC §11): what a reuse teaches, and the idle timeouts that
//! follow from it. Pure decisions, table-tested; `learn/table.rs` keeps them per destination.
//!
//! A remote side that forgets idle connections silently (a stateful firewall, a NAT) shows
//! itself only when a connection we kept is used again: the reuse fails as if the connection
//! had been cut. The idle time of that *stale reuse* is an upper bound of the remote limit;
//! the smallest one seen is the best bound we have, and our idle timeouts stay at 80 % of it.

pub mod table;

use std::time::Duration;

use crate::config::Upstream;

/// A stale reuse shorter than this teaches nothing: a restart of the remote side, or a
/// connection it closed a moment ago, looks the same, and is no limit to stay below.
pub const MIN_LESSON: Duration = Duration::from_secs(1);

/// What one reuse of a connection, or one quiet spell of a tunnel, showed about the remote side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// The remote side had dropped it after this much idle time.
    Stale(Duration),
    /// It was still alive after this much idle time.
    Good(Duration),
}

/// The learned limit after `reuse`, given the limit learned so far (`None`: nothing yet);
/// `learning` is the upstream's `learn_idle_limit`.
///
/// The smallest stale idle time of at least [`MIN_LESSON`] wins. A good reuse never changes
/// the limit, not even one idle longer than the limit: the remote side may keep some flows
/// longer than others (several firewall nodes, one that was restarted), and a limit raised
/// again on such evidence would meet the next silent drop. Keeping the lower limit costs
/// only a few more dials. SPEC §11: "the smallest such d seen since start".
pub fn learn(limit: Option<Duration>, reuse: Reuse, learning: bool) -> Option<Duration> {
    match reuse {
        Reuse::Stale(d) if learning && d >= MIN_LESSON && limit.is_none_or(|l| d < l) => Some(d),
        Reuse::Stale(_) | Reuse::Good(_) => limit,
    }
}

/// The share of a learned limit our idle timeouts stay below: 80 %, so that the remote
/// side's own timer (and the time a request takes to reach it) has room.
pub fn below(limit: Duration) -> Duration {
    limit * 4 / 5
}

/// The idle timeout in force: the smallest of the configured one, the one the upstream's
/// `Keep-Alive` header announced for a connection (already less its margin), and 80 % of
/// the learned limit.
pub fn effective(
    configured: Duration,
    keep_alive: Option<Duration>,
    limit: Option<Duration>,
) -> Duration {
    let mut idle = configured;
    if let Some(k) = keep_alive {
        idle = idle.min(k);
    }
    if let Some(l) = limit {
        idle = idle.min(below(l));
    }
    idle
}

/// How long a tunnel had been idle when its upstream reset it, if that reset was a stale
/// reuse: the reset answered the first bytes after a quiet spell (`quiet_before_last`: the
/// spell that the last byte either way ended; `quiet_now`: the time since that byte).
///
/// A reset that arrives on its own, at least [`MIN_LESSON`] after the last byte, is not one:
/// like a pooled connection found closed while idle, nothing was sent into a dead flow.
pub fn tunnel_stale_idle(quiet_before_last: Duration, quiet_now: Duration) -> Option<Duration> {
    (quiet_now < MIN_LESSON).then_some(quiet_before_last)
}

/// Whether a reload changed the settings a learned limit depends on (SPEC §11: it is then
/// forgotten, as the operator has said something new about this upstream's idle limits).
pub fn idle_settings_changed(old: &Upstream, new: &Upstream) -> bool {
    let key = |u: &Upstream| {
        (
            u.settings.idle_timeout,
            u.remote_idle_limit,
            u.settings.tunnel_idle_timeout,
            u.settings.learn_idle_limit,
        )
    };
    key(old) != key(new)
}

/// What a newly learned limit changed, for its one WARN line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lowered<'a> {
    pub upstream: &'a str,
    /// `host:port`, IPv6 in brackets.
    pub destination: &'a str,
    /// A tunnel taught it, not a pooled connection.
    pub tunnel: bool,
    /// The stale reuse's idle time: the new learned limit.
    pub limit: Duration,
    /// The pools' idle timeout before and after.
    pub idle: (Duration, Duration),
    /// New tunnels' idle timeout before and after.
    pub tunnel_idle: (Duration, Duration),
}

impl Lowered<'_> {
    /// The WARN line (SPEC §11): the numbers, and the settings that would keep it.
    pub fn line(&self) -> String {
        let what = if self.tunnel {
            "a tunnel idle {d} was reset by the remote side"
        } else {
            "a connection idle {d} had been dropped by the remote side"
        };
        let d = show(self.limit);
        let mut text = format!(
            "upstream \"{}\" {}: {}",
            self.upstream,
            self.destination,
            what.replace("{d}", &d)
        );
        let pool = self.idle.1 < self.idle.0;
        let tunnels = self.tunnel_idle.1 < self.tunnel_idle.0;
        let keys = match (pool, tunnels) {
            (true, false) => {
                text += &format!(
                    "; idle timeout lowered from {} to {}",
                    show(self.idle.0),
                    show(self.idle.1)
                );
                "idle_timeout or remote_idle_limit"
            }
            (true, true) => {
                text += &format!(
                    "; idle timeout lowered from {} to {}, tunnel idle timeout from {} to {}",
                    show(self.idle.0),
                    show(self.idle.1),
                    show(self.tunnel_idle.0),
                    show(self.tunnel_idle.1)
                );
                "idle_timeout and tunnel_idle_timeout, or remote_idle_limit,"
            }
            (false, true) => {
                text += &format!(
                    "; tunnel idle timeout lowered from {} to {}",
                    show(self.tunnel_idle.0),
                    show(self.tunnel_idle.1)
                );
                "tunnel_idle_timeout or remote_idle_limit"
            }
            (false, false) => {
                text += &format!(
                    "; idle timeouts unchanged ({} and tunnels {} are already below it)",
                    show(self.idle.1),
                    show(self.tunnel_idle.1)
                );
                "remote_idle_limit"
            }
        };
        text += &format!(" (set {keys} below {d} to keep this across restarts)");
        text
    }
}

/// A duration as an operator reads it and the config takes it back: "4m52s", "5m", "30s",
/// "1920ms". Rounded down (to the second from a minute up, to the millisecond below), so a
/// timeout shown is never above the one in force.
pub fn show(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        return if d.subsec_millis() == 0 {
            format!("{secs}s")
        } else {
            format!("{}ms", d.as_millis())
        };
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out += &format!("{n}{unit}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Reuses in, learned limit and effective idle timeout out: the folding of a history.
    #[test]
    fn learning_table() {
        use Reuse::{Good, Stale};
        // (what, learn_idle_limit, configured, keep-alive, reuses, learned limit, effective idle timeout)
        #[allow(clippy::type_complexity)]
        let cases: &[(
            &str,
            bool,
            Duration,
            Option<Duration>,
            &[Reuse],
            Option<Duration>,
            Duration,
        )] = &[
            ("nothing seen", true, s(30), None, &[], None, s(30)),
            (
                "good reuses teach nothing",
                true,
                s(30),
                None,
                &[Good(s(5)), Good(s(29))],
                None,
                s(30),
            ),
            (
                "one stale reuse",
                true,
                s(30),
                None,
                &[Stale(ms(2400))],
                Some(ms(2400)),
                ms(1920),
            ),
            (
                "the SPEC's example",
                true,
                s(300),
                None,
                &[Stale(s(292))],
                Some(s(292)),
                ms(233_600),
            ),
            (
                "the smallest stale reuse wins",
                true,
                s(30),
                None,
                &[Stale(s(4)), Stale(ms(2500)), Stale(s(3))],
                Some(ms(2500)),
                s(2),
            ),
            (
                "a stale reuse below 1 s teaches nothing",
                true,
                s(30),
                None,
                &[Stale(ms(500)), Stale(ms(999))],
                None,
                s(30),
            ),
            (
                "1 s exactly teaches",
                true,
                s(30),
                None,
                &[Stale(s(1))],
                Some(s(1)),
                ms(800),
            ),
            (
                "nor does it undo a limit",
                true,
                s(30),
                None,
                &[Stale(s(3)), Stale(ms(500))],
                Some(s(3)),
                ms(2400),
            ),
            (
                "a good reuse below the limit does not raise it",
                true,
                s(30),
                None,
                &[Stale(s(3)), Good(ms(2900))],
                Some(s(3)),
                ms(2400),
            ),
            (
                "nor one above it (a flow kept longer than others)",
                true,
                s(30),
                None,
                &[Stale(s(3)), Good(s(10)), Good(s(20))],
                Some(s(3)),
                ms(2400),
            ),
            (
                "nor one seen before the stale one",
                true,
                s(30),
                None,
                &[Good(s(20)), Stale(s(3))],
                Some(s(3)),
                ms(2400),
            ),
            (
                "learning off: counted elsewhere, learned never",
                false,
                s(30),
                None,
                &[Stale(s(3)), Stale(s(2))],
                None,
                s(30),
            ),
            (
                "the configured timeout stays when it is lower",
                true,
                s(1),
                None,
                &[Stale(s(5))],
                Some(s(5)),
                s(1),
            ),
            (
                "Keep-Alive lower than both",
                true,
                s(30),
                Some(s(1)),
                &[Stale(s(4))],
                Some(s(4)),
                s(1),
            ),
            (
                "80 % of the limit lower than Keep-Alive",
                true,
                s(30),
                Some(s(4)),
                &[Stale(s(4))],
                Some(s(4)),
                ms(3200),
            ),
            ("Keep-Alive alone", true, s(30), Some(s(4)), &[], None, s(4)),
        ];
        for (what, learning, configured, keep_alive, reuses, want_limit, want_idle) in cases {
            let limit = reuses
                .iter()
                .fold(None, |limit, r| learn(limit, *r, *learning));
            assert_eq!(limit, *want_limit, "{what}: learned limit");
            assert_eq!(
                effective(*configured, *keep_alive, limit),
                *want_idle,
                "{what}: effective idle timeout"
            );
        }
    }

    #[test]
    fn a_tunnel_reset_is_stale_only_when_it_answers_bytes_after_a_quiet_spell() {
        // (quiet spell the last byte ended, time since that byte) -> idle taught
        let cases = [
            // the first bytes after 2.4 s of quiet were answered with a reset
            (ms(2400), ms(3), Some(ms(2400))),
            (ms(2400), ms(999), Some(ms(2400))),
            // mid-conversation: a quiet spell too short to teach (learn() drops it)
            (ms(20), ms(5), Some(ms(20))),
            // a reset on its own, long after the last byte: nothing was sent into it
            (ms(2400), s(1), None),
            (ms(10), s(5), None),
        ];
        for (before, now, want) in cases {
            assert_eq!(tunnel_stale_idle(before, now), want, "{before:?} {now:?}");
        }
    }

    #[test]
    fn durations_read_as_an_operator_writes_them() {
        let cases = [
            (s(300), "5m"),
            (s(292), "4m52s"),
            (ms(233_600), "3m53s"),
            (s(30), "30s"),
            (ms(2400), "2400ms"),
            (ms(1920), "1920ms"),
            (Duration::from_micros(2_412_999), "2412ms"),
            (ms(850), "850ms"),
            (s(3600 + 120 + 5), "1h2m5s"),
            (s(7200), "2h"),
        ];
        for (d, want) in cases {
            assert_eq!(show(d), want, "{d:?}");
            // What the line says can be pasted into the config.
            let back = crate::config::raw::parse_duration(want).expect("parses");
            assert!(back <= d, "{want} parses to {back:?}, above {d:?}");
        }
    }

    #[test]
    fn the_warn_line_has_the_spec_shape() {
        let lowered = Lowered {
            upstream: "stripe",
            destination: "api.stripe.com:443",
            tunnel: false,
            limit: s(292),
            idle: (s(300), below(s(292))),
            tunnel_idle: (s(60), s(60)),
        };
        assert_eq!(
            lowered.line(),
            "upstream \"stripe\" api.stripe.com:443: a connection idle 4m52s had been dropped by \
             the remote side; idle timeout lowered from 5m to 3m53s (set idle_timeout or \
             remote_idle_limit below 4m52s to keep this across restarts)"
        );
        let both = Lowered {
            idle: (s(30), ms(1920)),
            tunnel_idle: (s(60), ms(1920)),
            limit: ms(2400),
            ..lowered.clone()
        };
        assert_eq!(
            both.line(),
            "upstream \"stripe\" api.stripe.com:443: a connection idle 2400ms had been dropped \
             by the remote side; idle timeout lowered from 30s to 1920ms, tunnel idle timeout \
             from 1m to 1920ms (set idle_timeout and tunnel_idle_timeout, or remote_idle_limit, \
             below 2400ms to keep this across restarts)"
        );
        let tunnel = Lowered {
            tunnel: true,
            idle: (s(30), s(30)),
            tunnel_idle: (s(60), s(40)),
            limit: s(50),
            ..lowered
        };
        let line = tunnel.line();
        assert!(
            line.contains("a tunnel idle 50s was reset by the remote side"),
            "{line}"
        );
        assert!(
            line.contains("; tunnel idle timeout lowered from 1m to 40s"),
            "{line}"
        );
        assert!(line.contains("idle timeout lowered"), "{line}");
        assert!(line.ends_with("(set tunnel_idle_timeout or remote_idle_limit below 50s to keep this across restarts)"), "{line}");
    }
}
