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
//! - When every slot is taken, requests queue first come, first served; a released connection
//!   or a freed slot is handed straight to the oldest waiter, bounded by `acquire_timeout`.
//! - [`Pooled`] goes back to the pool on `release` and is closed on `discard` or on drop.
//! - The pool is generic over [`Poolable`], so its tests use fake connections, not sockets.
//! - A pool counts its [`Pool`] handles too. With no handle and no connection (not even one
//!   being dialed) it is *vacant*, and says so through a hook, outside its lock, to whoever
//!   made it: the registry then forgets it (SPEC §5), so that names seen once leave nothing.

mod reaper;
pub mod registry;
pub mod reuse;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::metrics::{CloseReason, PoolMetrics};
pub use registry::Pools;
use reuse::{Life, Verdict};

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

/// Connection ids are unique for the life of the process (they appear in logs and `/pools`).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

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

struct Inner<C: Poolable> {
    state: Mutex<State<C>>,
    metrics: PoolMetrics,
    /// Wakes the reaper when an idle connection arrives (its deadline may be the next one).
    wake_reaper: Arc<Notify>,
    /// Told when the pool may have become vacant (the registry forgets it then).
    on_vacant: Option<VacancyHook>,
}

impl<C: Poolable> Drop for Inner<C> {
    fn drop(&mut self) {
        // Lets the reaper see that the pool is gone and end.
        self.wake_reaper.notify_one();
    }
}

struct State<C: Poolable> {
    limits: Limits,
    /// Oldest first; checkout pops from the end (most recently used).
    idle: Vec<Idle<C>>,
    /// Slots taken: connecting + busy + idle.
    open: usize,
    waiters: VecDeque<oneshot::Sender<Grant<C>>>,
    /// Every open connection, for `/pools`.
    conns: HashMap<u64, ConnInfo>,
    /// Drained (shutdown or upstream removed): releases close instead of pooling.
    closing: bool,
    /// Live counted [`Pool`] handles: requests that may still check out or wait.
    holders: usize,
    /// The reach connections must have been dialed under to be pooled (see [`Pool::set_reach`]).
    reach: u64,
    /// The deadline the reaper sleeps until (`None`: until woken). A returned connection wakes
    /// it only when its own deadline is earlier, not on every release.
    reaper_at: Option<Instant>,
}

struct Idle<C> {
    conn: C,
    meta: Meta,
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
                idle: Vec::new(),
                open: 0,
                waiters: VecDeque::new(),
                conns: HashMap::new(),
                closing: false,
                holders: 1,
                reach,
                reaper_at: None,
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
        let doomed: Vec<Idle<C>> = {
            let mut st = self.inner.lock();
            if st.reach == reach {
                return false;
            }
            st.reach = reach;
            let (stale, kept): (Vec<Idle<C>>, Vec<Idle<C>>) = std::mem::take(&mut st.idle)
                .into_iter()
                .partition(|e| e.meta.reach != reach);
            st.idle = kept;
            for e in &stale {
                // Its slot stays counted until it is closed, after the lock.
                st.forget(e.meta.id);
                self.inner.count_idle_close(reason);
            }
            stale
        };
        // Vacancy is not reported: this runs under the registry's lock, which looks itself.
        self.inner.close(doomed.into_iter().map(|e| e.conn));
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
        let max_idle_for_request = match reuse {
            Reuse::Any => None,
            Reuse::IdleAtMost(d) => Some(d),
            Reuse::Never => Some(Duration::ZERO),
        };
        let (rx, acquire_timeout, max) = {
            let mut st = self.inner.lock();
            let now = Instant::now();
            let queue_empty = !st.waiters.iter().any(|w| !w.is_closed());
            if queue_empty && !st.closing {
                let max_lifetime = st.limits.max_lifetime;
                let idle_timeout = st.limits.idle_timeout;
                let mut doomed = Vec::new();
                while let Some(mut entry) = if reuse == Reuse::Never {
                    None
                } else {
                    st.idle.pop()
                } {
                    let verdict = if entry.meta.reach != st.reach {
                        Verdict::Close(CloseReason::Shutdown)
                    } else {
                        reuse::verdict(
                            &entry.meta.life.under(idle_timeout),
                            now,
                            max_lifetime,
                            entry.conn.is_open(),
                            max_idle_for_request,
                        )
                    };
                    match verdict {
                        Verdict::Reuse => {
                            let pooled = self.inner.take_idle(&mut st, entry, now);
                            drop(st);
                            self.inner.close(doomed);
                            return Ok(Checkout::Reused(pooled));
                        }
                        Verdict::Close(reason) => {
                            // Its slot stays counted until it is closed, after the lock.
                            st.forget(entry.meta.id);
                            self.inner.count_idle_close(reason);
                            doomed.push(entry.conn);
                        }
                        Verdict::TooIdle => {
                            // Older entries have idled even longer: stop looking.
                            st.idle.push(entry);
                            break;
                        }
                    }
                }
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
                    st.forget(entry.meta.id);
                    self.inner.count_idle_close(CloseReason::PoolFull);
                    drop(st);
                    drop(entry);
                    return Ok(Checkout::Dial(self.stamp(Slot::new(self.inner.clone()))));
                }
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(tx);
            (rx, st.limits.acquire_timeout, st.limits.max_connections)
        };
        let metrics = &self.inner.metrics;
        metrics.waiting.inc();
        let started = Instant::now();
        let outcome = tokio::time::timeout(acquire_timeout, rx).await;
        metrics.waiting.dec();
        metrics.wait.observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(Grant::Conn(pooled))) if reuse == Reuse::Never => {
                // Handed a pooled connection but a new one is required: close it, dial in its slot.
                Ok(Checkout::Dial(
                    self.stamp(pooled.into_slot(CloseReason::PoolFull)),
                ))
            }
            Ok(Ok(Grant::Conn(mut pooled))) => {
                pooled.reused = true;
                Ok(Checkout::Reused(pooled))
            }
            Ok(Ok(Grant::Slot(slot))) => Ok(Checkout::Dial(self.stamp(slot))),
            Ok(Err(_)) | Err(_) => {
                // Closed senders are pruned so a pool that never frees up does not grow a queue.
                self.inner.lock().waiters.retain(|w| !w.is_closed());
                metrics.acquire_timeouts.inc();
                Err(AcquireTimeout {
                    max_connections: max,
                })
            }
        }
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
        drop(st);
        // Its deadlines moved earlier: the reaper sleeps until a later one.
        self.inner.wake_reaper.notify_one();
    }

    /// Close every idle connection now and every busy one when it finishes.
    pub fn drain(&self, reason: CloseReason) {
        let doomed: Vec<Idle<C>> = {
            let mut st = self.inner.lock();
            st.closing = true;
            let idle = std::mem::take(&mut st.idle);
            for e in &idle {
                st.forget(e.meta.id);
                self.inner.count_idle_close(reason);
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
            waiting: st.waiters.iter().filter(|w| !w.is_closed()).count(),
            max_connections: st.limits.max_connections,
            connections,
        }
    }

    /// Slots taken (connecting + busy + idle): zero once everything is returned or closed.
    pub fn open(&self) -> usize {
        self.inner.lock().open
    }
}

impl<C: Poolable> Inner<C> {
    fn lock(&self) -> MutexGuard<'_, State<C>> {
        // A panic elsewhere must not wedge every request: the state stays consistent per call.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count_idle_close(&self, reason: CloseReason) {
        self.metrics.idle.dec();
        self.metrics.closed(reason).inc();
    }

    /// Close connections already taken off the books (forgotten, counted as closed), then free
    /// their slots. A slot counts until its socket is closed, so a waiter's dial never overlaps
    /// the close at the upstream (SPEC §5). Called without the lock: a close is a system call
    /// (on loopback the kernel delivers the FIN within it) plus freeing the connection's
    /// buffers, and other requests to this destination need not queue behind it; the price
    /// is a second, short lock on close paths only, never when a connection is reused.
    ///
    /// Returns whether that left the pool vacant: the caller then calls [`Inner::vacated`],
    /// unless it runs under the registry's lock (a reload), where the registry looks itself.
    fn close(self: &Arc<Self>, conns: impl IntoIterator<Item = C>) -> bool {
        let mut closed = 0;
        for conn in conns {
            drop(conn);
            closed += 1;
        }
        closed > 0 && self.free_slots(closed)
    }

    /// Give back `n` slots whose connections are closed (or were never dialed); whether that
    /// left the pool vacant.
    fn free_slots(self: &Arc<Self>, n: usize) -> bool {
        let mut st = self.lock();
        st.open -= n;
        self.grant_free_slots(st)
    }

    /// Move an idle entry to busy.
    fn take_idle(
        self: &Arc<Self>,
        st: &mut State<C>,
        mut entry: Idle<C>,
        now: Instant,
    ) -> Pooled<C> {
        let idle_for = now.saturating_duration_since(entry.meta.life.idle_since);
        entry.conn.unpark();
        entry.meta.requests += 1;
        if let Some(info) = st.conns.get_mut(&entry.meta.id) {
            info.busy = true;
            info.requests = entry.meta.requests;
        }
        self.metrics.idle.dec();
        self.metrics.busy.inc();
        self.metrics.reuse_idle.observe(idle_for.as_secs_f64());
        Pooled {
            conn: Some(entry.conn),
            meta: entry.meta,
            reused: true,
            idle_at_checkout: idle_for,
            age_at_checkout: now.saturating_duration_since(entry.meta.life.created),
            slot: Slot::new(self.clone()),
            done: None,
        }
    }

    /// Tell whoever made the pool that it may be vacant (call outside the lock).
    fn vacated(&self) {
        if let Some(hook) = &self.on_vacant {
            hook();
        }
    }

    /// Hand free capacity to waiters, oldest first, while slots remain; then unlock and say
    /// whether the pool was vacant at that moment.
    fn grant_free_slots(self: &Arc<Self>, mut st: MutexGuard<'_, State<C>>) -> bool {
        let mut refused = Vec::new();
        while st.open < st.limits.max_connections && !st.closing {
            let Some(tx) = st.waiters.pop_front() else {
                break;
            };
            if tx.is_closed() {
                continue;
            }
            st.open += 1;
            if let Err(Grant::Slot(mut slot)) = tx.send(Grant::Slot(Slot::new(self.clone()))) {
                // Gave up a moment ago: take the slot back without running its drop under the lock.
                slot.defuse();
                st.open -= 1;
                refused.push(slot);
            }
        }
        let vacant = st.vacant();
        drop(st);
        drop(refused);
        vacant
    }

    /// A busy connection is done: hand it to the oldest waiter, keep it idle, or close it.
    fn put_back(
        self: &Arc<Self>,
        mut conn: C,
        mut meta: Meta,
        disposition: Result<(), CloseReason>,
    ) {
        if disposition.is_ok() {
            // Before the lock: this may poll the connection (finishing the exchange).
            conn.park(&self.wake_reaper);
        }
        let now = Instant::now();
        let mut st = self.lock();
        let verdict = disposition
            .and_then(|()| {
                reuse::reusable_after_response(
                    &meta.life.under(st.limits.idle_timeout),
                    now,
                    st.limits.max_lifetime,
                    conn.is_open(),
                )
            })
            .and_then(|()| {
                // Drained, or dialed under a reach a reload has since changed (SPEC §8).
                if st.closing || meta.reach != st.reach {
                    Err(CloseReason::Shutdown)
                } else {
                    Ok(())
                }
            });
        if let Err(reason) = verdict {
            st.forget(meta.id);
            drop(st);
            self.metrics.busy.dec();
            self.metrics.closed(reason).inc();
            if self.close([conn]) {
                self.vacated();
            }
            return;
        }
        meta.life.idle_since = now;
        // Straight to the oldest waiter: it has waited longest, and the connection is fresh.
        while let Some(tx) = st.waiters.pop_front() {
            if tx.is_closed() {
                continue;
            }
            conn.unpark();
            meta.requests += 1;
            if let Some(info) = st.conns.get_mut(&meta.id) {
                info.requests = meta.requests;
            }
            self.metrics.reuse_idle.observe(0.0);
            let pooled = Pooled {
                conn: Some(conn),
                meta,
                reused: true,
                idle_at_checkout: Duration::ZERO,
                age_at_checkout: now.saturating_duration_since(meta.life.created),
                slot: Slot::new(self.clone()),
                done: None,
            };
            match tx.send(Grant::Conn(pooled)) {
                Ok(()) => return,
                Err(Grant::Conn(mut back)) => {
                    back.slot.defuse();
                    meta.requests -= 1;
                    match back.conn.take() {
                        Some(c) => conn = c,
                        None => return,
                    }
                    conn.park(&self.wake_reaper);
                }
                Err(Grant::Slot(mut s)) => {
                    s.defuse();
                    return;
                }
            }
        }
        if let Some(info) = st.conns.get_mut(&meta.id) {
            info.busy = false;
            info.idle_since = now;
        }
        self.metrics.busy.dec();
        self.metrics.idle.inc();
        let mut evicted = None;
        if st.idle.len() >= st.limits.max_idle {
            if st.idle.is_empty() {
                // max_idle = 0: nothing is kept.
                st.forget(meta.id);
                drop(st);
                self.count_idle_close(CloseReason::PoolFull);
                if self.close([conn]) {
                    self.vacated();
                }
                return;
            }
            let oldest = st.idle.remove(0);
            st.forget(oldest.meta.id);
            self.count_idle_close(CloseReason::PoolFull);
            evicted = Some(oldest.conn);
        }
        let deadline = reuse::deadline(
            &meta.life.under(st.limits.idle_timeout),
            st.limits.max_lifetime,
        );
        let wake = st.reaper_at.is_none_or(|at| deadline < at);
        if wake {
            st.reaper_at = Some(deadline);
        }
        st.idle.push(Idle { conn, meta });
        drop(st);
        if wake {
            self.wake_reaper.notify_one();
        }
        self.close(evicted);
    }
}

impl<C: Poolable> State<C> {
    fn forget(&mut self, id: u64) {
        self.conns.remove(&id);
    }

    /// No request holds a handle (so none waits either) and no connection is open or being
    /// dialed: nothing would be lost if the pool were forgotten.
    fn vacant(&self) -> bool {
        self.holders == 0 && self.open == 0
    }
}

/// Capacity for one connection. Dropped unfilled (a failed dial), it frees the slot for a waiter.
pub struct Slot<C: Poolable> {
    inner: Option<Arc<Inner<C>>>,
    /// The reach of the holder that will dial in it (set by checkout).
    reach: u64,
}

impl<C: Poolable> Slot<C> {
    fn new(inner: Arc<Inner<C>>) -> Self {
        Slot {
            inner: Some(inner),
            reach: 0,
        }
    }

    fn defuse(&mut self) {
        self.inner = None;
    }

    /// A freshly dialed connection in this slot, busy with its first request.
    pub fn fill(mut self, conn: C) -> Pooled<C> {
        let inner = self.inner.take().expect("an armed slot");
        let now = Instant::now();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // One lock for both: the limit read and the registration are the same moment.
        let mut st = inner.lock();
        let idle_timeout = st.limits.idle_timeout;
        let meta = Meta {
            id,
            life: Life {
                created: now,
                idle_since: now,
                idle_timeout,
                idle_reason: CloseReason::IdleTimeout,
            },
            requests: 1,
            reach: self.reach,
        };
        st.conns.insert(
            id,
            ConnInfo {
                busy: true,
                created: now,
                idle_since: now,
                requests: 1,
            },
        );
        drop(st);
        inner.metrics.opened.inc();
        inner.metrics.busy.inc();
        Pooled {
            conn: Some(conn),
            meta,
            reused: false,
            idle_at_checkout: Duration::ZERO,
            age_at_checkout: Duration::ZERO,
            slot: Slot::new(inner),
            done: None,
        }
    }
}

impl<C: Poolable> Drop for Slot<C> {
    fn drop(&mut self) {
        // Armed only while unfilled (a failed or abandoned dial): no connection to close
        // first, as the dial drops its socket before the slot it was dialed in is dropped.
        if let Some(inner) = self.inner.take() {
            if inner.free_slots(1) {
                inner.vacated();
            }
        }
    }
}

/// A connection checked out of a pool. `release` returns it; `discard` or drop closes it.
pub struct Pooled<C: Poolable> {
    conn: Option<C>,
    meta: Meta,
    /// Came from the pool (or a handoff) rather than a fresh dial: decides retry eligibility.
    reused: bool,
    idle_at_checkout: Duration,
    age_at_checkout: Duration,
    /// Owns the capacity; armed only while `conn` is here.
    slot: Slot<C>,
    /// How the holder finished with it; `None` on drop means an error path.
    done: Option<Result<(), CloseReason>>,
}

impl<C: Poolable> Pooled<C> {
    pub fn conn(&mut self) -> &mut C {
        self.conn.as_mut().expect("connection present until drop")
    }

    pub fn id(&self) -> u64 {
        self.meta.id
    }

    pub fn reused(&self) -> bool {
        self.reused
    }

    pub fn idle_at_checkout(&self) -> Duration {
        self.idle_at_checkout
    }

    pub fn age_at_checkout(&self) -> Duration {
        self.age_at_checkout
    }

    pub fn requests(&self) -> u64 {
        self.meta.requests
    }

    /// This connection's idle limit from now on (the upstream's `Keep-Alive: timeout`).
    pub fn set_idle_timeout(&mut self, idle_timeout: Duration, reason: CloseReason) {
        self.meta.life.idle_timeout = idle_timeout;
        self.meta.life.idle_reason = reason;
    }

    /// The response was passed on whole: back to the pool if still within its limits.
    pub fn release(mut self) {
        self.done = Some(Ok(()));
    }

    /// Close the connection but keep its capacity, to dial a replacement.
    fn into_slot(mut self, reason: CloseReason) -> Slot<C> {
        let inner = self.slot.inner.take().expect("an armed slot");
        let conn = self.conn.take();
        {
            let mut st = inner.lock();
            st.forget(self.meta.id);
        }
        inner.metrics.busy.dec();
        inner.metrics.closed(reason).inc();
        drop(conn);
        Slot::new(inner)
    }

    /// Close it: it failed, or must not be reused for `reason`.
    pub fn discard(mut self, reason: CloseReason) {
        self.done = Some(Err(reason));
    }
}

impl<C: Poolable> Drop for Pooled<C> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let Some(inner) = self.slot.inner.take() else {
            return;
        };
        inner.put_back(
            conn,
            self.meta,
            self.done.unwrap_or(Err(CloseReason::Error)),
        );
    }
}
