//! At most one WARN a minute per client address for clients that reject the interception leaf.
//!
//! A client that does not trust the intercept CA fails every handshake, typically many a
//! second: one line a minute per address says who must install which CA without flooding
//! the log. The map is bounded (least recently logged go first): clients from many
//! addresses cannot make it grow, at worst they get their line again sooner.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use lru::LruCache;
use tokio::time::Instant;

/// How often one client address may be logged.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Client addresses remembered.
pub const CAPACITY: usize = 1024;

pub struct RejectLog {
    last_logged: Mutex<LruCache<IpAddr, Instant>>,
}

impl Default for RejectLog {
    fn default() -> Self {
        RejectLog::with_capacity(CAPACITY)
    }
}

impl RejectLog {
    pub fn with_capacity(capacity: usize) -> RejectLog {
        let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        RejectLog {
            last_logged: Mutex::new(LruCache::new(cap)),
        }
    }

    /// Whether a rejection by `client` at `now` gets its line (and if so, it is noted).
    pub fn should_log(&self, client: IpAddr, now: Instant) -> bool {
        let mut last = self.last_logged.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = last.peek(&client) {
            if now.saturating_duration_since(*at) < INTERVAL {
                return false;
            }
        }
        last.put(client, now);
        true
    }

    /// Addresses remembered.
    pub fn len(&self) -> usize {
        self.last_logged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn once_a_minute_per_address() {
        let log = RejectLog::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // (client, seconds after t0, logged)
        let steps = [
            (1, 0, true),
            (1, 1, false),
            (2, 1, true),
            (1, 59, false),
            (1, 60, true),
            (2, 60, false),
            (2, 61, true),
            (1, 119, false),
            (1, 120, true),
        ];
        for (client, at, want) in steps {
            assert_eq!(
                log.should_log(ip(client), t0 + s(at)),
                want,
                "client {client} at {at}s"
            );
        }
    }

    #[test]
    fn bounded_however_many_addresses() {
        let log = RejectLog::with_capacity(4);
        let t0 = Instant::now();
        for i in 0..=200u8 {
            assert!(
                log.should_log(ip(i), t0),
                "first rejection of {i} is logged"
            );
        }
        assert_eq!(log.len(), 4);
        // The most recent ones are remembered; the oldest were forgotten and may log again.
        assert!(!log.should_log(ip(200), t0));
        assert!(log.should_log(ip(0), t0));
    }
}
