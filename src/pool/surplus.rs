//! Surplus idle connections (SPEC §5): above `max_idle` for at most a second, for the next burst.
//!
//! A load that hovers above `max_idle` releases more connections than may stay idle and needs
//! them again a moment later; closing them at once dials as many again on the next burst (with
//! TLS, a handshake each). So the idle stack may grow past `max_idle`, and each *level* above
//! it carries the deadline by which it must be gone: one second after the idle count last rose
//! to that level. Levels, not connections, carry the deadlines because checkout takes the most
//! recently used connection: what a second of surplus measures is how many stayed idle, and the
//! one closed when a level's time is up is the oldest (the likeliest to meet a forgotten flow).
//!
//! Levels follow the count: a rise above `max_idle` adds the highest, any fall other than a
//! trim (a checkout, an expiry, a close seen) removes the highest, and a trim removes the
//! lowest, whose deadline is the earliest: the count has stayed at or above every remaining
//! level since its own deadline was set, less the one trimmed.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How long the idle count may stay above `max_idle` before the oldest connection is closed.
pub const GRACE: Duration = Duration::from_secs(1);

/// What becomes of a connection released with `idle` connections already idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Within `max_idle`: idle until its own idle timeout or lifetime.
    Keep,
    /// Above `max_idle`: the idle count must fall back by this deadline.
    Surplus(Instant),
    /// `max_idle = 0` turns pooling off: nothing is kept, not even for a second.
    Close,
}

/// The decision at release.
pub fn on_release(idle: usize, max_idle: usize, now: Instant) -> Release {
    if max_idle == 0 {
        Release::Close
    } else if idle < max_idle {
        Release::Keep
    } else {
        Release::Surplus(now + GRACE)
    }
}

/// The deadlines of the idle levels above `max_idle`, lowest level (earliest deadline) first.
/// Its length is the number of idle connections above `max_idle`, kept so by the pool.
#[derive(Debug, Default)]
pub struct Surplus {
    deadlines: VecDeque<Instant>,
}

impl Surplus {
    /// The idle count rose above `max_idle` (see [`on_release`]).
    pub fn rose(&mut self, until: Instant) {
        self.deadlines.push_back(until);
    }

    /// The idle count is now `idle`, lowered by anything but a trim: the highest levels go.
    pub fn fit(&mut self, idle: usize, max_idle: usize) {
        let above = idle.saturating_sub(max_idle);
        while self.deadlines.len() > above {
            self.deadlines.pop_back();
        }
    }

    /// How many of the oldest idle connections to close at `now` (their levels are removed).
    pub fn due(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while self.deadlines.front().is_some_and(|at| *at <= now) {
            self.deadlines.pop_front();
            n += 1;
        }
        n
    }

    /// When the next trim is due.
    pub fn next(&self) -> Option<Instant> {
        self.deadlines.front().copied()
    }

    /// How many levels above `max_idle` are waiting to be trimmed.
    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    /// Whether no level is waiting to be trimmed.
    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }

    /// `max_idle` changed (a reload) with `idle` connections idle: levels no longer above it
    /// go, new ones get at most a second (and no later than any level above them).
    pub fn rebase(&mut self, idle: usize, max_idle: usize, now: Instant) {
        let above = idle.saturating_sub(max_idle);
        while self.deadlines.len() > above {
            self.deadlines.pop_front();
        }
        while self.deadlines.len() < above {
            let at = self
                .next()
                .map_or(now + GRACE, |first| first.min(now + GRACE));
            self.deadlines.push_front(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[tokio::test(start_paused = true)]
    async fn release_table() {
        let now = Instant::now();
        // (already idle, max_idle) -> what becomes of the released connection
        let cases = [
            (0, 4, Release::Keep),
            (3, 4, Release::Keep),
            (4, 4, Release::Surplus(now + GRACE)),
            (9, 4, Release::Surplus(now + GRACE)),
            (0, 0, Release::Close),
            (5, 0, Release::Close),
        ];
        for (idle, max_idle, want) in cases {
            assert_eq!(
                on_release(idle, max_idle, now),
                want,
                "{idle} idle, max_idle {max_idle}"
            );
        }
    }

    /// One event at a time on a pool with `max_idle = 2`, time paused: what is trimmed when.
    #[tokio::test(start_paused = true)]
    async fn levels_table() {
        #[derive(Debug, Clone, Copy)]
        enum Ev {
            /// A connection released (the idle count rises by one).
            Back,
            /// One idle connection leaves other than by a trim (checkout, expiry, close seen).
            Leave,
            /// Time passes (ms).
            Wait(u64),
        }
        use Ev::*;
        const MAX_IDLE: usize = 2;
        // (event, idle after it, trimmed by it, surplus levels after it)
        let cases: &[(Ev, usize, usize, usize)] = &[
            (Back, 1, 0, 0),
            (Back, 2, 0, 0),
            (Back, 3, 0, 1), // level 3 due at t=1000
            (Wait(500), 3, 0, 1),
            (Back, 4, 0, 2),  // level 4 due at t=1500
            (Leave, 3, 0, 1), // a checkout: level 4 goes, level 3 keeps t=1000
            (Back, 4, 0, 2),  // level 4 again, due at t=1500
            (Wait(499), 4, 0, 2),
            (Wait(1), 3, 1, 1), // t=1000: three idle since t=0: the oldest is closed
            (Wait(499), 3, 0, 1),
            (Wait(1), 2, 1, 0),    // t=1500: back to max_idle
            (Wait(5000), 2, 0, 0), // within max_idle nothing is trimmed
            (Back, 3, 0, 1),       // a burst above max_idle...
            (Leave, 2, 0, 0),      // ...served within the second: nothing closed, nothing due
            (Wait(2000), 2, 0, 0),
            (Leave, 1, 0, 0),
            (Leave, 0, 0, 0),
        ];
        let mut s = Surplus::default();
        let mut idle = 0usize;
        for (i, &(ev, want_idle, want_trim, want_levels)) in cases.iter().enumerate() {
            let trimmed = match ev {
                Back => {
                    if let Release::Surplus(until) = on_release(idle, MAX_IDLE, Instant::now()) {
                        s.rose(until);
                    }
                    idle += 1;
                    0
                }
                Leave => {
                    idle -= 1;
                    s.fit(idle, MAX_IDLE);
                    0
                }
                Wait(ms) => {
                    tokio::time::advance(MS(ms)).await;
                    let n = s.due(Instant::now());
                    idle -= n;
                    n
                }
            };
            assert_eq!(
                (idle, trimmed, s.len()),
                (want_idle, want_trim, want_levels),
                "step {i}: {ev:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rebase_after_a_reload() {
        let t0 = Instant::now();
        let mut s = Surplus::default();
        // max_idle 2, five idle: levels 3, 4, 5.
        for ms in [0, 100, 200] {
            s.rose(t0 + MS(ms) + GRACE);
        }
        // max_idle raised to 4: only level 5 is surplus; it keeps the lowest deadline left.
        s.rebase(5, 4, t0);
        assert_eq!((s.len(), s.next()), (1, Some(t0 + MS(200) + GRACE)));
        // Lowered to 1: four levels, none due later than the one already there.
        tokio::time::advance(MS(500)).await;
        s.rebase(5, 1, Instant::now());
        assert_eq!(s.len(), 4);
        assert_eq!(s.next(), Some(t0 + MS(200) + GRACE));
        // Lowered with nothing surplus yet: a second from now.
        let mut fresh = Surplus::default();
        fresh.rebase(3, 1, Instant::now());
        assert_eq!(
            (fresh.len(), fresh.next()),
            (2, Some(Instant::now() + GRACE))
        );
    }
}
