//! The pools of all destinations, keyed by (upstream, host, port, tls); created on first use.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::{Config, Upstream};
use crate::learn;
use crate::metrics::{CloseReason, Metrics, PoolMetrics};
use crate::target::{Host, Target};

use super::{Limits, Pool, Poolable, Snapshot};

/// Pool key: a destination under the upstream entry that allowed it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub upstream: Arc<str>,
    pub target: Target,
}

/// A pool and the upstream whose limits it runs under.
struct Entry<C: Poolable> {
    upstream: Arc<str>,
    pool: Pool<C>,
}

/// All pools; lookups take a read lock only, never across an await.
pub struct Pools<C: Poolable> {
    /// Keyed by destination; a destination belongs to one upstream (the first that matches).
    map: RwLock<HashMap<Target, Entry<C>>>,
    /// Pre-labelled metric handles per upstream name, shared by its pools.
    per_upstream: RwLock<HashMap<Arc<str>, PoolMetrics>>,
    metrics: Metrics,
    /// What each destination taught about its remote idle limit (SPEC §11). Its own table,
    /// with its own lock: it outlives the pools, and tunnels read it too. Lock order: a pool
    /// is made (under `map`'s write lock) with the limit read from here, and a lesson is
    /// written here *before* it is pushed into the pools, so neither misses the other.
    pub learned: learn::table::Table,
}

impl<C: Poolable> Pools<C> {
    pub fn new(metrics: Metrics) -> Self {
        Pools {
            map: RwLock::new(HashMap::new()),
            per_upstream: RwLock::new(HashMap::new()),
            metrics,
            learned: learn::table::Table::default(),
        }
    }

    /// The pool for this destination, made with the upstream's limits if it is new.
    pub fn get(&self, upstream: &Upstream, target: &Target) -> Pool<C> {
        // Borrowed lookup first: no allocation on the hot path when the pool exists.
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = map.get(target).filter(|e| *e.upstream == *upstream.name) {
                return e.pool.clone();
            }
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get(target) {
            if *e.upstream == *upstream.name {
                return e.pool.clone();
            }
            // A reload moved this destination to another upstream: its old pool drains.
            e.pool.drain(CloseReason::Shutdown);
        }
        let pool = Pool::new(
            self.limits(upstream, target),
            self.metrics_for(&upstream.name),
        );
        map.insert(
            target.clone(),
            Entry {
                upstream: Arc::from(upstream.name.as_str()),
                pool: pool.clone(),
            },
        );
        pool
    }

    /// The upstream's limits for this destination, its idle timeout lowered by what the
    /// destination taught (SPEC §11).
    fn limits(&self, upstream: &Upstream, target: &Target) -> Limits {
        let mut limits = Limits::from_settings(&upstream.settings);
        let learned = self
            .learned
            .limit(&upstream.name, &target.host, target.port);
        limits.idle_timeout = learn::effective(limits.idle_timeout, None, learned);
        limits
    }

    /// `host:port` taught a lower remote idle limit under `upstream`: its pools (plain and
    /// TLS) take `idle_timeout` from now on, parked connections included.
    pub fn lower_idle_timeout(
        &self,
        upstream: &str,
        host: &Host,
        port: u16,
        idle_timeout: Duration,
    ) {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        for tls in [false, true] {
            let target = Target {
                host: host.clone(),
                port,
                tls,
            };
            if let Some(e) = map.get(&target).filter(|e| *e.upstream == *upstream) {
                e.pool.lower_idle_timeout(idle_timeout);
            }
        }
    }

    fn metrics_for(&self, upstream: &str) -> PoolMetrics {
        if let Some(m) = self
            .per_upstream
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(upstream)
        {
            return m.clone();
        }
        let m = self.metrics.pool(upstream);
        self.per_upstream
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(Arc::from(upstream), m.clone());
        m
    }

    /// After a reload: new limits for kept upstreams; pools of removed upstreams drained and dropped.
    pub fn reconfigure(&self, config: &Config) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|target, e| match config.upstream(&e.upstream) {
            Some(u) => {
                e.pool.set_limits(self.limits(u, target));
                true
            }
            None => {
                e.pool.drain(CloseReason::Shutdown);
                false
            }
        });
    }

    /// Close idle connections everywhere, and busy ones as they finish (shutdown).
    pub fn drain_all(&self) {
        for e in self.map.read().unwrap_or_else(|e| e.into_inner()).values() {
            e.pool.drain(CloseReason::Shutdown);
        }
    }

    /// Every pool with its key, sorted for stable output.
    pub fn snapshot(&self) -> Vec<(Key, Snapshot)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<(Key, Snapshot)> = map
            .iter()
            .map(|(t, e)| {
                (
                    Key {
                        upstream: e.upstream.clone(),
                        target: t.clone(),
                    },
                    e.pool.snapshot(),
                )
            })
            .collect();
        all.sort_by(|a, b| {
            (&a.0.upstream, a.0.target.authority()).cmp(&(&b.0.upstream, b.0.target.authority()))
        });
        all
    }

    /// Slots taken across all pools: zero when nothing is connecting, busy or idle.
    pub fn open(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|e| e.pool.open())
            .sum()
    }
}
