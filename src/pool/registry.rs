//! The pools of all destinations, keyed by (host, port, tls): made on first use, forgotten when vacant.
//!
//! A pool is forgotten once no request holds it and it has no connection (SPEC §5): a name
//! seen once under a wildcard, denied or unresolvable, leaves nothing behind. Two rules keep
//! that safe:
//! - Handles are made only under the map's lock, and a pool is removed only under its write
//!   lock after checking, under the pool's own lock, that it is still vacant. A request
//!   holding a handle therefore never has its pool forgotten underneath it, and a
//!   destination never has two pools (which would double its `max_connections`).
//! - The map keeps an uncounted reference; the pool's reaper holds only a weak one, so
//!   dropping the entry drops the pool and ends its reaper.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
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
    /// Uncounted: the registry's own reference does not keep the pool from being vacant.
    pool: Pool<C>,
    /// Tells this pool from a later one for the same destination: a vacancy report from a
    /// pool already replaced must not remove its successor.
    id: u64,
}

/// The pools, behind one lock. What must outlive a forgotten pool (SPEC §11's learned idle
/// limits) lives in [`Pools::learned`], read when a pool is made.
struct Tables<C: Poolable> {
    /// Keyed by destination; a destination belongs to one upstream (the first that matches).
    /// Looked up on every request: foldhash, seeded per process, hashes a `Target` in a
    /// fraction of SipHash's ~330 instructions and still keeps names a client picks under a
    /// wildcard from being aimed at one bucket.
    pools: HashMap<Target, Entry<C>, foldhash::fast::RandomState>,
    next_id: u64,
}

/// All pools; lookups take a read lock only, never across an await.
pub struct Pools<C: Poolable> {
    /// Shared with each pool's vacancy hook (weakly, so the hook keeps nothing alive).
    tables: Arc<RwLock<Tables<C>>>,
    /// Pre-labelled metric handles per upstream name, shared by its pools.
    per_upstream: RwLock<HashMap<Arc<str>, PoolMetrics>>,
    metrics: Metrics,
    /// What each destination taught about its remote idle limit (SPEC §11). Its own table,
    /// with its own lock: it outlives the pools (a forgotten pool's lesson stays), and
    /// tunnels read it too. Lock order: a pool is made (under `tables`' write lock) with the
    /// limit read from here, and a lesson is written here *before* it is pushed into the
    /// pools, so neither misses the other.
    pub learned: learn::table::Table,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A panic elsewhere must not wedge every request: each call leaves the map consistent.
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl<C: Poolable> Pools<C> {
    pub fn new(metrics: Metrics) -> Self {
        Pools {
            tables: Arc::new(RwLock::new(Tables {
                pools: HashMap::default(),
                next_id: 0,
            })),
            per_upstream: RwLock::new(HashMap::new()),
            metrics,
            learned: learn::table::Table::default(),
        }
    }

    /// A handle to the pool for this destination, made with the upstream's limits if it is
    /// new. Hold it for as long as the request may check out, wait or dial.
    pub fn get(&self, upstream: &Upstream, target: &Target) -> Pool<C> {
        // Borrowed lookup first: no allocation on the hot path when the pool exists.
        {
            let tables = read(&self.tables);
            if let Some(e) = tables
                .pools
                .get(target)
                .filter(|e| *e.upstream == *upstream.name)
            {
                return e.pool.clone().for_reach(upstream.reach);
            }
        }
        let metrics = self.metrics_for(&upstream.name);
        let mut tables = write(&self.tables);
        let replaced = match tables.pools.get(target) {
            Some(e) if *e.upstream == *upstream.name => {
                return e.pool.clone().for_reach(upstream.reach)
            }
            // A reload moved this destination to another upstream: its old pool drains.
            Some(e) => {
                e.pool.drain(CloseReason::Shutdown);
                tables.pools.remove(target)
            }
            None => None,
        };
        let id = tables.next_id;
        tables.next_id += 1;
        let pool = Pool::with_vacancy_hook(
            self.limits(upstream, target),
            upstream.reach,
            metrics,
            Some(vacancy_hook(
                Arc::downgrade(&self.tables),
                target.clone(),
                id,
            )),
        );
        tables.pools.insert(
            target.clone(),
            Entry {
                upstream: Arc::from(upstream.name.as_str()),
                pool: pool.uncounted(),
                id,
            },
        );
        drop(tables);
        drop(replaced);
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
        let tables = read(&self.tables);
        for tls in [false, true] {
            let target = Target {
                host: host.clone(),
                port,
                tls,
            };
            if let Some(e) = tables
                .pools
                .get(&target)
                .filter(|e| *e.upstream == *upstream)
            {
                e.pool.lower_idle_timeout(idle_timeout);
            }
        }
    }

    fn metrics_for(&self, upstream: &str) -> PoolMetrics {
        if let Some(m) = read(&self.per_upstream).get(upstream) {
            return m.clone();
        }
        let m = self.metrics.pool(upstream);
        write(&self.per_upstream).insert(Arc::from(upstream), m.clone());
        m
    }

    /// After a reload: new limits for kept upstreams, and where what an upstream may reach or
    /// how has changed, its connections made under the old config closed (SPEC §8); pools of
    /// removed upstreams drained and dropped.
    pub fn reconfigure(&self, config: &Config) {
        let mut tables = write(&self.tables);
        let mut gone = Vec::new();
        tables.pools.retain(|target, e| {
            let Some(u) = config.upstream(&e.upstream) else {
                e.pool.drain(CloseReason::Shutdown);
                gone.push(e.pool.uncounted());
                return false;
            };
            e.pool.set_limits(self.limits(u, target));
            if e.pool.set_reach(u.reach, CloseReason::Shutdown) {
                tracing::info!(
                    upstream = %u.name,
                    destination = %target.authority(),
                    "the reload changed what this upstream may reach: connections made before it are closed"
                );
            }
            if e.pool.is_vacant() {
                // Its last (idle) connections just closed, and no request holds it.
                gone.push(e.pool.uncounted());
                return false;
            }
            true
        });
        drop(tables);
        drop(gone);
    }

    /// Close idle connections everywhere, and busy ones as they finish (shutdown).
    pub fn drain_all(&self) {
        for e in read(&self.tables).pools.values() {
            e.pool.drain(CloseReason::Shutdown);
        }
    }

    /// Every pool with its key, sorted for stable output.
    pub fn snapshot(&self) -> Vec<(Key, Snapshot)> {
        let tables = read(&self.tables);
        let mut all: Vec<(Key, Snapshot)> = tables
            .pools
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
        read(&self.tables)
            .pools
            .values()
            .map(|e| e.pool.open())
            .sum()
    }

    /// How many pools the registry holds (vacant ones are forgotten).
    pub fn len(&self) -> usize {
        read(&self.tables).pools.len()
    }

    /// Whether the registry holds no pool.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a pool calls when it may have become vacant: forget it if it still is, and is still
/// the pool registered for `target` (not a drained predecessor).
fn vacancy_hook<C: Poolable>(
    tables: Weak<RwLock<Tables<C>>>,
    target: Target,
    id: u64,
) -> super::VacancyHook {
    Box::new(move || {
        let Some(tables) = tables.upgrade() else {
            return;
        };
        let mut t = write(&tables);
        let vacant = t
            .pools
            .get(&target)
            .is_some_and(|e| e.id == id && e.pool.is_vacant());
        let forgotten = if vacant {
            t.pools.remove(&target)
        } else {
            None
        };
        drop(t);
        // Dropped outside the lock: the last reference ends the pool and its reaper.
        drop(forgotten);
    })
}

#[cfg(test)]
mod tests;
