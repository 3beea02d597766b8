//! Connection pools: one per destination, keeping every connection under the remote side's limits.
//!
//! Design, in a few lines:
//! - A pool counts *slots* (connecting + busy + idle) against `max_connections`. A [`Slot`] is
//!   a drop guard; every connection owns one, so no path can leak capacity. A slot is freed
//!   only once its connection is dropped (its socket closed), outside the lock: the upstream
//!   never sees one connection more, not even while one is being torn down.
//! - Idle connections sit in a stack: the most recently used is reused first (LIFO), and the
//!   oldest is evicted first. A reaper closes each idle one the moment its idle time or
//!   lifetime runs out — not when next checked out, since a silent firewall kills exactly the
//!   connection left open past its time. A connection the upstream closed is never handed out.
//! - Up to `max_idle` connections idle until their time runs out; above it, a released one is
//!   kept as surplus for at most a second (see [`surplus`]), so that a load hovering above
//!   `max_idle` reuses its connections instead of closing and dialing them on every burst.
//! - When every slot is taken, requests queue first come, first served; a released connection
//!   or a freed slot is handed straight to the oldest waiter, bounded by `acquire_timeout`.
//! - [`Pooled`] goes back to the pool on `release` and is closed on `discard` or on drop.
//! - The pool is generic over [`Poolable`], so its tests use fake connections, not sockets.
//! - A pool counts its [`Pool`] handles too. With no handle and no connection (not even one
//!   being dialed) it is *vacant*, and says so through a hook, outside its lock, to whoever
//!   made it: the registry then forgets it (SPEC §5), so that names seen once leave nothing.

mod ids;
mod line;
mod pooled;
mod queued;
mod reaper;
pub mod registry;
pub mod reuse;
mod stack;
mod state;
pub mod surplus;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::metrics::{CloseReason, PoolMetrics};
use line::Line;
pub use pooled::{Pooled, Slot};
pub use queued::Queued;
pub use registry::Pools;
use reuse::{Life, Verdict};
use stack::IdleStack;
use state::{Idle, Inner, State};
use surplus::Surplus;

/// What the pool needs to know about a connection.
pub trait Poolable: Send + 'static {
    /// False once the peer closed it (FIN or RST seen) or it failed. Cheap enough to call
    /// under the pool's lock: it looks at the connection only if it signalled since last time.
    fn is_open(&mut self) -> bool;

    /// It goes back to the pool (called outside the lock). From now on, activity on it must
    /// wake `reaper`, which then checks `is_open` — so a close is noticed when it happens.
    fn park(&mut self, reaper: &Arc<Notify>) {
        let _ = reaper;
    }

    /// It is checked out again: its activity no longer concerns the reaper.
    fn unpark(&mut self) {}

    /// It belongs to another worker (dialed or last moved there) and is checked out on this
    /// one: have this worker's reactor watch its socket from now on (called outside the
    /// lock). Returns whether it moved; if not, it still works, watched where it was.
    fn rehome(&mut self) -> bool {
        true
    }
}

/// The limits of one pool, from the upstream entry that matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub acquire_timeout: Duration,
}

impl Limits {
    pub fn from_settings(s: &crate::config::Settings) -> Limits {
        Limits {
            max_connections: s.max_connections,
            max_idle: s.max_idle,
            idle_timeout: s.idle_timeout,
            max_lifetime: s.max_lifetime,
            acquire_timeout: s.acquire_timeout,
        }
    }
}

/// A handle to the pool for one destination.
pub struct Pool<C: Poolable> {
    inner: Arc<Inner<C>>,
    /// Counted in `holders`. Only the registry keeps an uncounted one, so that a pool no
    /// request holds can be forgotten.
    counted: bool,
    /// The reach (config fingerprint, SPEC §8) the holder runs under: connections it dials
    /// are stamped with it, and closed after their request if the pool's has moved on.
    reach: u64,
}

/// Called (outside the pool's lock) when a pool may have become vacant.
pub type VacancyHook = Box<dyn Fn() + Send + Sync>;

impl<C: Poolable> Clone for Pool<C> {
    /// Another handle: the pool is not vacant while it lives.
    fn clone(&self) -> Self {
        self.inner.lock().holders += 1;
        Pool {
            inner: self.inner.clone(),
            counted: true,
            reach: self.reach,
        }
    }
}

impl<C: Poolable> Drop for Pool<C> {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let vacant = {
            let mut st = self.inner.lock();
            st.holders -= 1;
            st.vacant()
        };
        if vacant {
            self.inner.vacated();
        }
    }
}

/// A connection's identity and history.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub id: u64,
    pub life: Life,
    /// Requests this connection has carried, including the current one.
    pub requests: u64,
    /// The reach it was dialed under (see [`Pool::set_reach`]).
    pub reach: u64,
    /// The worker whose reactor watches its socket: the one that dialed it, or that it was
    /// moved to since (`Pooled::brought_here`); `None` off the workers.
    pub home: Option<usize>,
}

/// What `/pools` shows of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub busy: bool,
    pub created: Instant,
    pub idle_since: Instant,
    pub requests: u64,
}

/// What a waiter is handed: a live connection, or a slot to dial one.
enum Grant<C: Poolable> {
    Conn(Pooled<C>),
    Slot(Slot<C>),
}

/// The result of a checkout.
pub enum Checkout<C: Poolable> {
    /// A pooled connection, healthy and within its limits.
    Reused(Pooled<C>),
    /// Capacity to dial a new connection; fill it with [`Slot::fill`].
    Dial(Slot<C>),
}

/// Which idle connections a request accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Any healthy one within its limits.
    Any,
    /// Only one idle at most this long (a request that could not be retried after writing).
    IdleAtMost(Duration),
    /// None: dial a new connection (a retry after a reused connection failed).
    Never,
}

/// No slot came free within `acquire_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcquireTimeout {
    pub max_connections: usize,
}

/// A point-in-time view of a pool, for `/pools`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The pool's idle timeout in force: configured, lowered by a learned limit.
    pub idle_timeout: Duration,
    pub idle: usize,
    pub busy: usize,
    pub waiting: usize,
    pub max_connections: usize,
    pub connections: Vec<(u64, ConnInfo)>,
}

impl<C: Poolable> Pool<C> {
    pub fn new(limits: Limits, metrics: PoolMetrics) -> Pool<C> {
        Pool::with_vacancy_hook(limits, 0, metrics, None)
    }

    /// A pool (and this, its first handle) that calls `on_vacant` whenever it may have become
    /// vacant: no handle and no connection left. The call comes outside the pool's lock; the
    /// pool may be in use again by the time it runs, so check [`Pool::is_vacant`] under a
    /// lock that keeps new handles from being made.
    pub fn with_vacancy_hook(
        limits: Limits,
        reach: u64,
        metrics: PoolMetrics,
        on_vacant: Option<VacancyHook>,
    ) -> Pool<C> {
        metrics.limit.set(limits.max_connections as i64);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                limits,
                idle: IdleStack::default(),
                open: 0,
                waiters: Line::default(),
                conns: ids::IdMap::default(),
                closing: false,
                holders: 1,
                reach,
                reaper_at: None,
                surplus: Surplus::default(),
            }),
            metrics,
            wake_reaper: Arc::new(Notify::new()),
            on_vacant,
        });
        tokio::spawn(reaper::run(
            Arc::downgrade(&inner),
            inner.wake_reaper.clone(),
        ));
        Pool {
            inner,
            counted: true,
            reach,
        }
    }

    /// A reference that does not count as a handle (see `counted`): for the registry only.
    pub(crate) fn uncounted(&self) -> Pool<C> {
        Pool {
            inner: self.inner.clone(),
            counted: false,
            reach: self.reach,
        }
    }

    /// This handle for a holder running under `reach` (its request's config).
    pub(crate) fn for_reach(mut self, reach: u64) -> Pool<C> {
        self.reach = reach;
        self
    }

    /// A reload changed what this pool's upstream may reach or how (SPEC §8): from now on
    /// only connections dialed under `reach` are pooled. Idle ones made under another are
    /// closed now, busy ones when their request is done; no request is served on them again.
    /// Returns whether it changed anything.
    pub fn set_reach(&self, reach: u64, reason: CloseReason) -> bool {
        let doomed = {
            let mut st = self.inner.lock();
            if st.reach == reach {
                return false;
            }
            st.reach = reach;
            let stale = st
                .idle
                .take_where(|e| (e.meta.reach != reach).then_some(()));
            st.fit_surplus();
            for (e, ()) in &stale {
                self.inner.retire_idle(&mut st, e.meta.id, reason);
            }
            stale
        };
        // Vacancy is not reported: this runs under the registry's lock, which looks itself.
        self.inner.close(doomed.into_iter().map(|(e, ())| e.conn));
        true
    }

    /// No handle other than uncounted ones, and no connection (connecting, busy or idle).
    pub fn is_vacant(&self) -> bool {
        self.inner.lock().vacant()
    }

    /// A healthy idle connection (most recently used first), else a slot to dial, else wait
    /// first come, first served for either, up to `acquire_timeout`.
    ///
    /// `reuse` restricts which idle connections qualify (a request that could not be retried
    /// must not meet a connection a firewall may have forgotten; a retry needs a new one).
    pub async fn checkout(&self, reuse: Reuse) -> Result<Checkout<C>, AcquireTimeout> {
        match self.try_checkout(reuse) {
            Ok(checkout) => Ok(checkout),
            Err(queued) => queued.wait().await,
        }
    }

    /// [`checkout`](Self::checkout) up to its wait: a connection or a slot now, else a place
    /// in the queue, taken under the same lock (no release can slip between), to wait in
    /// with [`Queued::wait`]. Not async: the common case, a pooled connection, costs its
    /// caller no future.
    pub fn try_checkout(&self, reuse: Reuse) -> Result<Checkout<C>, Queued<'_, C>> {
        let max_idle_for_request = match reuse {
            Reuse::Any => None,
            Reuse::IdleAtMost(d) => Some(d),
            Reuse::Never => Some(Duration::ZERO),
        };
        let (rx, acquire_timeout, max) = {
            let mut st = self.inner.lock();
            let now = Instant::now();
            let queue_empty = st.waiters.is_empty();
            if queue_empty && !st.closing {
                let max_lifetime = st.limits.max_lifetime;
                let idle_timeout = st.limits.idle_timeout;
                let mut doomed = Vec::new();
                // The first one tried is this worker's own where one is near the top; the
                // rest go most recently used first.
                let mut first = match reuse {
                    Reuse::Any => reuse::first_choice(
                        st.idle.iter().map(|e| e.meta.home),
                        crate::workers::here(),
                    ),
                    _ => None,
                };
                while let Some(mut entry) = if reuse == Reuse::Never {
                    None
                } else if let Some(i) = first.take() {
                    Some(st.idle.remove(i))
                } else {
                    st.idle.pop()
                } {
                    let verdict = if entry.meta.reach != st.reach {
                        Verdict::Close(CloseReason::Shutdown)
                    } else {
                        reuse::verdict(
                            &entry.meta.life.under(idle_timeout),
                            entry.deadline,
                            now,
                            max_lifetime,
                            entry.conn.is_open(),
                            max_idle_for_request,
                        )
                    };
                    match verdict {
                        Verdict::Reuse => {
                            st.fit_surplus();
                            let pooled = self.inner.take_idle(&mut st, entry, now);
                            drop(st);
                            if !doomed.is_empty() {
                                self.inner.close(doomed);
                            }
                            return Ok(Checkout::Reused(pooled.brought_here()));
                        }
                        Verdict::Close(reason) => {
                            self.inner.retire_idle(&mut st, entry.meta.id, reason);
                            doomed.push(entry.conn);
                        }
                        Verdict::TooIdle => {
                            // Older entries have idled even longer: stop looking.
                            st.idle.push(entry);
                            break;
                        }
                    }
                }
                st.fit_surplus();
                if !doomed.is_empty() {
                    // Dial in the slot of one found closed, once it is closed; free the rest.
                    drop(st);
                    let spare = doomed.len() - 1;
                    drop(doomed);
                    if spare > 0 {
                        self.inner.free_slots(spare);
                    }
                    return Ok(Checkout::Dial(self.stamp(Slot::new(self.inner.clone()))));
                }
                if st.open < st.limits.max_connections {
                    st.open += 1;
                    drop(st);
                    return Ok(Checkout::Dial(self.stamp(Slot::new(self.inner.clone()))));
                }
                if !st.idle.is_empty() {
                    // At the cap with only too-idle connections: close the oldest, take its slot.
                    let entry = st.idle.remove(0);
                    st.fit_surplus();
                    self.inner
                        .retire_idle(&mut st, entry.meta.id, CloseReason::PoolFull);
                    drop(st);
                    drop(entry);
                    return Ok(Checkout::Dial(self.stamp(Slot::new(self.inner.clone()))));
                }
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push(tx);
            (rx, st.limits.acquire_timeout, st.limits.max_connections)
        };
        Err(Queued {
            place: queued::Place::new(self, rx),
            reuse,
            acquire_timeout,
            max,
        })
    }

    /// A slot for this holder: what it dials is stamped with the holder's reach.
    fn stamp(&self, mut slot: Slot<C>) -> Slot<C> {
        slot.reach = self.reach;
        slot
    }

    /// New limits after a reload; a raised cap lets waiters dial at once.
    pub fn set_limits(&self, limits: Limits) {
        self.inner.metrics.limit.set(limits.max_connections as i64);
        let mut st = self.inner.lock();
        st.limits = limits;
        st.redate_idle();
        let (idle, max_idle) = (st.idle.len(), st.limits.max_idle);
        st.surplus.rebase(idle, max_idle, Instant::now());
        self.inner.grant_free_slots(st);
        self.inner.wake_reaper.notify_one();
    }

    /// A lower idle timeout from now on (the destination taught a lower remote limit, SPEC
    /// §11): idle connections already parked are closed at the new deadline, and checkout
    /// hands out none idle past it. A higher one is ignored: only a reload raises it again.
    pub fn lower_idle_timeout(&self, idle_timeout: Duration) {
        let mut st = self.inner.lock();
        if idle_timeout >= st.limits.idle_timeout {
            return;
        }
        st.limits.idle_timeout = idle_timeout;
        st.redate_idle();
        drop(st);
        // Its deadlines moved earlier: the reaper sleeps until a later one.
        self.inner.wake_reaper.notify_one();
    }

    /// Close every idle connection now and every busy one when it finishes.
    pub fn drain(&self, reason: CloseReason) {
        let doomed: Vec<Idle<C>> = {
            let mut st = self.inner.lock();
            st.closing = true;
            let idle = st.idle.take_all();
            st.fit_surplus();
            for e in &idle {
                self.inner.retire_idle(&mut st, e.meta.id, reason);
            }
            idle
        };
        // Vacancy is not reported from here: drain runs under the registry's lock (a reload,
        // a destination moved), and the registry drops such pools itself.
        self.inner.close(doomed.into_iter().map(|e| e.conn));
    }

    pub fn snapshot(&self) -> Snapshot {
        let st = self.inner.lock();
        let busy = st.conns.values().filter(|c| c.busy).count();
        let mut connections: Vec<(u64, ConnInfo)> =
            st.conns.iter().map(|(id, c)| (*id, *c)).collect();
        connections.sort_by_key(|(id, _)| *id);
        Snapshot {
            idle_timeout: st.limits.idle_timeout,
            idle: st.idle.len(),
            busy,
            waiting: st.waiters.waiting(),
            max_connections: st.limits.max_connections,
            connections,
        }
    }

    /// Slots taken (connecting + busy + idle): zero once everything is returned or closed.
    pub fn open(&self) -> usize {
        self.inner.lock().open
    }
}
