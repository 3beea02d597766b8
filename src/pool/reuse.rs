//! Pure decisions about one pooled connection: may it be reused, and how long may it idle.

use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::CloseReason;

/// The timestamps and limits of one connection that decide its reuse.
#[derive(Debug, Clone, Copy)]
pub struct Life {
    pub created: Instant,
    pub idle_since: Instant,
    /// This connection's idle limit: `idle_timeout`, or less when the upstream's `Keep-Alive` says so.
    pub idle_timeout: Duration,
    /// Which reason to report when `idle_timeout` runs out.
    pub idle_reason: CloseReason,
}

impl Life {
    /// This connection's limits under its pool's idle timeout now in force, which a learned
    /// remote limit may have lowered (SPEC §11) after the connection's own was set: the
    /// smaller wins.
    pub fn under(&self, pool_idle_timeout: Duration) -> Life {
        if pool_idle_timeout < self.idle_timeout {
            Life {
                idle_timeout: pool_idle_timeout,
                idle_reason: CloseReason::IdleTimeout,
                ..*self
            }
        } else {
            *self
        }
    }
}

/// How far down the idle stack a worker looks for a connection of its own. A worker releases
/// connections in runs (one batch of ready tasks after another), so another worker's run can
/// cover its own: at 128 client connections a window of 8 found none in 28 % of checkouts, one
/// of 64 in 0.2 % (`benches/load/RESULTS.md`). The look is bounded, so checkout stays cheap
/// under the lock however many connections idle.
pub const HOME_WINDOW: usize = 64;

/// Which idle connection a checkout on worker `here` tries first, as an index into the idle
/// stack (`homes`: each one's worker, oldest first): the most recently used one of this
/// worker's own (dialed or moved here), among the [`HOME_WINDOW`] most recently used; `None`
/// (take the most recently used) when there is none, or off the workers.
///
/// A socket's readiness is delivered by the reactor of the worker that registered it. A worker
/// prefers its own; it takes another's rather than dial, and moves the socket to its own
/// reactor as it does (`Pooled::brought_here`), which costs a few system calls.
pub fn first_choice(
    homes: impl DoubleEndedIterator<Item = Option<usize>> + ExactSizeIterator,
    here: Option<usize>,
) -> Option<usize> {
    here?;
    let len = homes.len();
    homes
        .rev()
        .take(HOME_WINDOW)
        .position(|h| h == here)
        .map(|from_top| len - 1 - from_top)
}

/// What to do with an idle connection at checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Reuse,
    Close(CloseReason),
    /// Healthy, but idle longer than this request accepts (a non-retriable request).
    TooIdle,
}

/// May an idle connection be handed to a request that accepts at most `max_idle_for_request` idle?
///
/// `due` is its [`deadline`] under the limits in force, computed when it went idle (and again
/// when the limits change): a connection within its limits, the common case at checkout,
/// costs one comparison of instants rather than the subtractions [`expired`] makes.
pub fn verdict(
    life: &Life,
    due: Instant,
    now: Instant,
    max_lifetime: Duration,
    is_open: bool,
    max_idle_for_request: Option<Duration>,
) -> Verdict {
    if !is_open {
        return Verdict::Close(CloseReason::RemoteClosed);
    }
    if let Some(reason) = expired_by(life, due, now, max_lifetime) {
        return Verdict::Close(reason);
    }
    match max_idle_for_request {
        Some(max) if now.saturating_duration_since(life.idle_since) > max => Verdict::TooIdle,
        _ => Verdict::Reuse,
    }
}

/// [`expired`] for a connection whose [`deadline`] is `due`: the reason is worked out only
/// once the deadline has passed.
pub fn expired_by(
    life: &Life,
    due: Instant,
    now: Instant,
    max_lifetime: Duration,
) -> Option<CloseReason> {
    if now < due {
        None
    } else {
        // `due` is the earlier of the two limits, so one of them has run out.
        Some(expired(life, now, max_lifetime).unwrap_or(life.idle_reason))
    }
}

/// Whether an idle connection's time is up, and why. Lifetime wins: it is the firewall's limit.
pub fn expired(life: &Life, now: Instant, max_lifetime: Duration) -> Option<CloseReason> {
    if now.saturating_duration_since(life.created) >= max_lifetime {
        Some(CloseReason::MaxLifetime)
    } else if now.saturating_duration_since(life.idle_since) >= life.idle_timeout {
        Some(life.idle_reason)
    } else {
        None
    }
}

/// When an idle connection must be closed: the earlier of its idle and lifetime deadlines
/// ([`expired`] holds from then on, and not before).
pub fn deadline(life: &Life, max_lifetime: Duration) -> Instant {
    (life.idle_since + life.idle_timeout).min(life.created + max_lifetime)
}

/// After a response: may the connection go back to the pool at all?
pub fn reusable_after_response(
    life: &Life,
    now: Instant,
    max_lifetime: Duration,
    is_open: bool,
) -> Result<(), CloseReason> {
    if !is_open {
        return Err(CloseReason::RemoteClosed);
    }
    if now.saturating_duration_since(life.created) >= max_lifetime {
        return Err(CloseReason::MaxLifetime);
    }
    if life.idle_timeout.is_zero() {
        return Err(life.idle_reason);
    }
    Ok(())
}

/// The margin kept below an upstream's announced keep-alive timeout, so we close first.
pub const KEEP_ALIVE_MARGIN: Duration = Duration::from_secs(1);

/// A connection's idle limit given the upstream's `Keep-Alive` header value (`timeout=N, max=M`).
///
/// The smaller of `configured` and N seconds less [`KEEP_ALIVE_MARGIN`]; zero (do not reuse)
/// when N leaves no room. Unparsable values leave `configured` in force.
pub fn keep_alive_idle(header: Option<&[u8]>, configured: Duration) -> (Duration, CloseReason) {
    let Some(secs) = header.and_then(keep_alive_timeout_secs) else {
        return (configured, CloseReason::IdleTimeout);
    };
    let announced = Duration::from_secs(secs).saturating_sub(KEEP_ALIVE_MARGIN);
    if announced < configured {
        (announced, CloseReason::KeepAliveTimeout)
    } else {
        (configured, CloseReason::IdleTimeout)
    }
}

fn keep_alive_timeout_secs(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    text.split(',').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("timeout") {
            v.trim().trim_matches('"').parse::<u64>().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn life(now: Instant, age: u64, idle: u64, idle_timeout: u64) -> Life {
        Life {
            created: now - S(age),
            idle_since: now - S(idle),
            idle_timeout: S(idle_timeout),
            idle_reason: CloseReason::IdleTimeout,
        }
    }

    #[test]
    fn a_worker_tries_its_own_most_recent_connection_first() {
        type Home = Option<usize>;
        let (a, b) = (Some(0), Some(1));
        // (homes oldest first, here) -> index tried first
        // Its own just inside the window, and just beyond it (not looked for).
        let inside: Vec<Home> = std::iter::once(a)
            .chain(std::iter::repeat_n(b, HOME_WINDOW - 1))
            .collect();
        let beyond: Vec<Home> = std::iter::once(a)
            .chain(std::iter::repeat_n(b, HOME_WINDOW))
            .collect();
        let cases: [(&[Home], Home, Option<usize>); 8] = [
            (&[a, b, a, b], a, Some(2)),
            (&[a, b, a, b], b, Some(3)),
            (&[b, b, b], a, None),
            (&[], a, None),
            (&[a, b], None, None),
            (&[None, None], None, None),
            (&inside, a, Some(0)),
            (&beyond, a, None),
        ];
        for (homes, here, want) in cases {
            assert_eq!(
                first_choice(homes.iter().copied(), here),
                want,
                "{homes:?} on {here:?}"
            );
        }
    }

    #[test]
    fn verdict_table() {
        let now = Instant::now() + S(10_000);
        let lifetime = S(60);
        // (age, idle, idle_timeout, open, max idle for request) -> verdict
        let cases = [
            (10, 1, 30, true, None, Verdict::Reuse),
            (
                10,
                1,
                30,
                false,
                None,
                Verdict::Close(CloseReason::RemoteClosed),
            ),
            (
                60,
                1,
                30,
                true,
                None,
                Verdict::Close(CloseReason::MaxLifetime),
            ),
            (
                300,
                1,
                30,
                true,
                None,
                Verdict::Close(CloseReason::MaxLifetime),
            ),
            (
                40,
                30,
                30,
                true,
                None,
                Verdict::Close(CloseReason::IdleTimeout),
            ),
            (
                40,
                31,
                30,
                true,
                None,
                Verdict::Close(CloseReason::IdleTimeout),
            ),
            (40, 29, 30, true, None, Verdict::Reuse),
            (40, 3, 30, true, Some(S(2)), Verdict::TooIdle),
            (40, 2, 30, true, Some(S(2)), Verdict::Reuse),
            (40, 0, 30, true, Some(S(0)), Verdict::Reuse),
            // a closed connection is never handed out, whatever else holds
            (
                0,
                0,
                30,
                false,
                Some(S(2)),
                Verdict::Close(CloseReason::RemoteClosed),
            ),
        ];
        for (age, idle, it, open, max, want) in cases {
            let l = life(now, age, idle, it);
            assert_eq!(
                verdict(&l, deadline(&l, lifetime), now, lifetime, open, max),
                want,
                "age {age} idle {idle} timeout {it} open {open} max {max:?}"
            );
        }
    }

    #[test]
    fn the_deadline_is_when_a_connection_expires_and_not_before() {
        let now = Instant::now() + S(1000);
        let lifetime = S(60);
        for age in [0, 1, 29, 30, 31, 59, 60, 61, 300] {
            for idle in [0, 1, 29, 30, 31, 60, 61] {
                for (timeout, reason) in [
                    (S(30), CloseReason::IdleTimeout),
                    (S(4), CloseReason::KeepAliveTimeout),
                    (S(0), CloseReason::IdleTimeout),
                ] {
                    let mut l = life(now, age, idle.min(age), 0);
                    l.idle_timeout = timeout;
                    l.idle_reason = reason;
                    let due = deadline(&l, lifetime);
                    assert_eq!(
                        expired_by(&l, due, now, lifetime),
                        expired(&l, now, lifetime),
                        "age {age} idle {idle} timeout {timeout:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn deadline_is_the_earlier_limit() {
        let now = Instant::now();
        let l = Life {
            created: now,
            idle_since: now + S(50),
            idle_timeout: S(30),
            idle_reason: CloseReason::IdleTimeout,
        };
        assert_eq!(deadline(&l, S(60)), now + S(60));
        assert_eq!(deadline(&l, S(100)), now + S(80));
    }

    #[test]
    fn a_lowered_pool_idle_timeout_caps_each_connection() {
        let now = Instant::now() + S(1000);
        let mut ka = life(now, 10, 5, 4);
        ka.idle_reason = CloseReason::KeepAliveTimeout;
        // (connection's own timeout and reason, pool's timeout) -> timeout and reason in force
        let cases = [
            (life(now, 10, 5, 30), S(30), S(30), CloseReason::IdleTimeout),
            (life(now, 10, 5, 30), S(2), S(2), CloseReason::IdleTimeout),
            (ka, S(30), S(4), CloseReason::KeepAliveTimeout),
            (ka, S(3), S(3), CloseReason::IdleTimeout),
        ];
        for (l, pool, want, reason) in cases {
            let capped = l.under(pool);
            assert_eq!(
                (capped.idle_timeout, capped.idle_reason),
                (want, reason),
                "{l:?} under {pool:?}"
            );
            assert_eq!(capped.idle_since, l.idle_since);
        }
        // Idle 5 s: within its own 30 s, past a lowered 2 s.
        let l = life(now, 10, 5, 30);
        assert_eq!(expired(&l, now, S(60)), None);
        assert_eq!(
            expired(&l.under(S(2)), now, S(60)),
            Some(CloseReason::IdleTimeout)
        );
        assert_eq!(deadline(&l.under(S(2)), S(60)), l.idle_since + S(2));
    }

    #[test]
    fn keep_alive_table() {
        let c = S(30);
        let cases: [(Option<&[u8]>, Duration, CloseReason); 8] = [
            (None, c, CloseReason::IdleTimeout),
            (Some(b"timeout=5"), S(4), CloseReason::KeepAliveTimeout),
            (
                Some(b"timeout=5, max=100"),
                S(4),
                CloseReason::KeepAliveTimeout,
            ),
            (
                Some(b"max=100,Timeout=2"),
                S(1),
                CloseReason::KeepAliveTimeout,
            ),
            (Some(b"timeout=1"), S(0), CloseReason::KeepAliveTimeout),
            (Some(b"timeout=120"), c, CloseReason::IdleTimeout),
            (Some(b"timeout=abc"), c, CloseReason::IdleTimeout),
            (Some(b"\xff\xfe"), c, CloseReason::IdleTimeout),
        ];
        for (h, want, reason) in cases {
            assert_eq!(keep_alive_idle(h, c), (want, reason), "{h:?}");
        }
    }

    #[test]
    fn reuse_after_response() {
        let now = Instant::now() + S(1000);
        assert_eq!(
            reusable_after_response(&life(now, 10, 0, 30), now, S(60), true),
            Ok(())
        );
        assert_eq!(
            reusable_after_response(&life(now, 61, 0, 30), now, S(60), true),
            Err(CloseReason::MaxLifetime)
        );
        assert_eq!(
            reusable_after_response(&life(now, 1, 0, 30), now, S(60), false),
            Err(CloseReason::RemoteClosed)
        );
        let mut l = life(now, 1, 0, 0);
        l.idle_reason = CloseReason::KeepAliveTimeout;
        assert_eq!(
            reusable_after_response(&l, now, S(60), true),
            Err(CloseReason::KeepAliveTimeout)
        );
    }
}
