//! What each destination (host, port) taught about its remote idle limit: bounded, kept when
//! its pools are forgotten, forgotten itself when its upstream's idle settings change.
//!
//! A destination has one entry whatever the tls of its pools, shared with its CONNECT tunnels
//! (SPEC §11). Entries exist only for destinations that had a stale reuse, so the table is
//! small; but a wildcard upstream lets anyone who controls names under it make destinations
//! that drop connections, so it is capped at [`MAX_DESTINATIONS`]. At the cap a new entry
//! evicts the one touched least recently among those that taught nothing (only a count is
//! lost), and only if there is none, the least recently touched learned limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::Reuse;
use crate::config::Config;
use crate::target::Host;

/// Destinations remembered at most (a few hundred bytes each).
pub const MAX_DESTINATIONS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Destination {
    host: Host,
    port: u16,
}

#[derive(Debug)]
struct Entry {
    /// The upstream it was learned under: what it taught holds for that upstream's settings.
    upstream: Arc<str>,
    /// The learned idle limit; `None` while every stale reuse was too short to teach.
    limit: Option<Duration>,
    stale_reuses: u64,
    /// When it was last touched, on the table's own clock: the eviction order.
    touched: u64,
}

/// What a destination shows in `/pools`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Learned {
    pub limit: Option<Duration>,
    pub stale_reuses: u64,
}

/// What one stale reuse did to its destination's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taught {
    /// Counted; the learned limit stays as it was.
    Counted,
    /// A new, lower limit; the one before it, if any.
    Lowered { before: Option<Duration> },
}

/// The learned limits of all destinations; every call takes one short lock.
pub struct Table {
    inner: Mutex<Inner>,
}

struct Inner {
    map: HashMap<Destination, Entry>,
    clock: u64,
    cap: usize,
}

impl Default for Table {
    fn default() -> Self {
        Table::new(MAX_DESTINATIONS)
    }
}

impl Table {
    /// A table of at most `cap` destinations.
    pub fn new(cap: usize) -> Table {
        Table {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                clock: 0,
                cap: cap.max(1),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not stop learning: every call leaves the map consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count a stale reuse at `idle` of `host:port` under `upstream` and learn from it
    /// (`learning`: the upstream's `learn_idle_limit`).
    pub fn stale(
        &self,
        upstream: &str,
        learning: bool,
        host: &Host,
        port: u16,
        idle: Duration,
    ) -> Taught {
        let mut t = self.lock();
        t.clock += 1;
        let now = t.clock;
        let key = Destination {
            host: host.clone(),
            port,
        };
        if !t.map.contains_key(&key) && t.map.len() >= t.cap {
            t.evict_one();
        }
        let entry = t.map.entry(key).or_insert_with(|| Entry {
            upstream: Arc::from(upstream),
            limit: None,
            stale_reuses: 0,
            touched: now,
        });
        if *entry.upstream != *upstream {
            // A reload gave the destination to another upstream: what it learned was under
            // the other's settings.
            entry.upstream = Arc::from(upstream);
            entry.limit = None;
        }
        entry.stale_reuses += 1;
        entry.touched = now;
        let before = entry.limit;
        entry.limit = super::learn(before, Reuse::Stale(idle), learning);
        if entry.limit == before {
            Taught::Counted
        } else {
            Taught::Lowered { before }
        }
    }

    /// The learned limit of `host:port`, if it was learned under `upstream`.
    pub fn limit(&self, upstream: &str, host: &Host, port: u16) -> Option<Duration> {
        self.get(upstream, host, port).limit
    }

    /// What `host:port` taught under `upstream` (nothing, if it taught under another).
    pub fn get(&self, upstream: &str, host: &Host, port: u16) -> Learned {
        let t = self.lock();
        if t.map.is_empty() {
            return Learned::default();
        }
        let key = Destination {
            host: host.clone(),
            port,
        };
        match t.map.get(&key) {
            Some(e) if *e.upstream == *upstream => Learned {
                limit: e.limit,
                stale_reuses: e.stale_reuses,
            },
            _ => Learned::default(),
        }
    }

    /// Per upstream, the smallest learned limit among its destinations (upstreams with none
    /// are left out), for `portcullis_upstream_learned_idle_limit_seconds`.
    pub fn smallest_by_upstream(&self) -> Vec<(Arc<str>, Duration)> {
        let t = self.lock();
        let mut out: Vec<(Arc<str>, Duration)> = Vec::new();
        for e in t.map.values() {
            let Some(limit) = e.limit else { continue };
            match out.iter_mut().find(|(u, _)| *u == e.upstream) {
                Some((_, l)) => *l = (*l).min(limit),
                None => out.push((e.upstream.clone(), limit)),
            }
        }
        out.sort();
        out
    }

    /// After a reload from `old` to `new`: what was learned under an upstream that is gone is
    /// dropped; a learned limit of an upstream whose idle settings changed is forgotten (its
    /// count stays). Everything else survives.
    pub fn reload(&self, old: &Config, new: &Config) {
        let mut t = self.lock();
        t.map.retain(|_, e| {
            let Some(now) = new.upstream(&e.upstream) else {
                return false;
            };
            let changed = old
                .upstream(&e.upstream)
                .is_none_or(|before| super::idle_settings_changed(before, now));
            if changed {
                e.limit = None;
            }
            true
        });
    }

    /// Destinations remembered now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// Make room for one: the least recently touched entry that taught nothing, else the
    /// least recently touched of all. A linear scan, only when a new destination meets a
    /// full table.
    fn evict_one(&mut self) {
        let victim = self
            .map
            .iter()
            .min_by_key(|(_, e)| (e.limit.is_some(), e.touched))
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.map.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(n: u32) -> Host {
        Host::Name(format!("h{n}.example.com"))
    }

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn counts_every_stale_reuse_and_learns_the_smallest_lesson() {
        let t = Table::default();
        let h = host(1);
        assert_eq!(t.get("a", &h, 443), Learned::default());
        assert_eq!(t.stale("a", true, &h, 443, ms(500)), Taught::Counted);
        assert_eq!(
            t.stale("a", true, &h, 443, ms(3000)),
            Taught::Lowered { before: None }
        );
        assert_eq!(t.stale("a", true, &h, 443, ms(4000)), Taught::Counted);
        assert_eq!(
            t.stale("a", true, &h, 443, ms(2500)),
            Taught::Lowered {
                before: Some(ms(3000))
            }
        );
        let got = t.get("a", &h, 443);
        assert_eq!((got.limit, got.stale_reuses), (Some(ms(2500)), 4));
        // Another port is another destination; the same host:port under another upstream
        // (after a reload moved it) shows nothing learned under the first.
        assert_eq!(t.limit("a", &h, 8443), None);
        assert_eq!(t.limit("b", &h, 443), None);
        assert_eq!(t.smallest_by_upstream(), vec![(Arc::from("a"), ms(2500))]);
    }

    #[test]
    fn learning_off_counts_only() {
        let t = Table::default();
        let h = host(1);
        assert_eq!(t.stale("a", false, &h, 80, ms(3000)), Taught::Counted);
        assert_eq!(
            t.get("a", &h, 80),
            Learned {
                limit: None,
                stale_reuses: 1
            }
        );
        assert!(t.smallest_by_upstream().is_empty());
    }

    #[test]
    fn a_destination_moved_to_another_upstream_starts_over() {
        let t = Table::default();
        let h = host(1);
        t.stale("a", true, &h, 443, ms(2000));
        assert_eq!(
            t.stale("b", true, &h, 443, ms(5000)),
            Taught::Lowered { before: None }
        );
        assert_eq!(t.limit("b", &h, 443), Some(ms(5000)));
        assert_eq!(t.limit("a", &h, 443), None);
    }

    #[test]
    fn bounded_evicting_entries_that_taught_nothing_first() {
        let t = Table::new(3);
        t.stale("a", true, &host(1), 443, ms(2000)); // learned
        t.stale("a", true, &host(2), 443, ms(100)); // counted only
        t.stale("a", true, &host(3), 443, ms(100)); // counted only
        t.stale("a", true, &host(2), 443, ms(100)); // touched again
        t.stale("a", true, &host(4), 443, ms(100));
        assert_eq!(t.len(), 3);
        // host 3 (taught nothing, least recently touched) made room.
        assert_eq!(t.get("a", &host(3), 443).stale_reuses, 0);
        assert_eq!(t.get("a", &host(2), 443).stale_reuses, 2);
        assert_eq!(t.limit("a", &host(1), 443), Some(ms(2000)));
        // A flood of destinations that teach nothing never pushes out a learned limit...
        for n in 10..1000 {
            t.stale("a", true, &host(n), 443, ms(100));
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.limit("a", &host(1), 443), Some(ms(2000)));
        // ...but learned limits are bounded too: the least recently touched one goes.
        t.stale("a", true, &host(2000), 443, ms(3000));
        t.stale("a", true, &host(2001), 443, ms(3000));
        t.stale("a", true, &host(2002), 443, ms(3000));
        assert_eq!(t.len(), 3);
        assert_eq!(t.limit("a", &host(1), 443), None);
        assert_eq!(t.limit("a", &host(2002), 443), Some(ms(3000)));
    }

    fn config(text: &str) -> Config {
        Config::from_toml(text, "test.toml").expect("valid")
    }

    #[test]
    fn a_reload_keeps_what_was_learned_unless_the_idle_settings_changed() {
        let base = "[[upstream]]\nname = \"a\"\nhosts = [\"h1.example.com\"]\n\
                    [[upstream]]\nname = \"b\"\nhosts = [\"h2.example.com\"]\n\
                    [[upstream]]\nname = \"c\"\nhosts = [\"h3.example.com\"]\n";
        let old = config(base);
        let t = Table::default();
        for (u, n) in [("a", 1), ("b", 2), ("c", 3)] {
            t.stale(u, true, &host(n), 443, ms(2000));
        }
        // Unrelated keys change, a's idle_timeout changes, c is removed.
        let new = config(
            "[defaults]\nmax_connections = 64\n\
             [[upstream]]\nname = \"a\"\nhosts = [\"h1.example.com\"]\nidle_timeout = \"20s\"\n\
             [[upstream]]\nname = \"b\"\nhosts = [\"h2.example.com\"]\nmax_lifetime = \"50s\"\n",
        );
        t.reload(&old, &new);
        assert_eq!(
            t.get("a", &host(1), 443),
            Learned {
                limit: None,
                stale_reuses: 1
            }
        );
        assert_eq!(t.limit("b", &host(2), 443), Some(ms(2000)));
        assert_eq!(t.get("c", &host(3), 443), Learned::default());
        assert_eq!(t.len(), 2);
        // Each idle setting counts, learn_idle_limit included.
        for key in [
            "remote_idle_limit = \"500s\"",
            "tunnel_idle_timeout = \"30s\"",
            "learn_idle_limit = false",
        ] {
            let t = Table::default();
            t.stale("b", true, &host(2), 443, ms(2000));
            let changed = config(&base.replace(
                "name = \"b\"\nhosts = [\"h2.example.com\"]\n",
                &format!("name = \"b\"\nhosts = [\"h2.example.com\"]\n{key}\n"),
            ));
            t.reload(&old, &changed);
            assert_eq!(t.limit("b", &host(2), 443), None, "{key}");
        }
    }
}
