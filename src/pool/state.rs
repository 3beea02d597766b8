//! The pool's shared state and what happens to a connection when its request is done.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::ids::IdMap;
use super::line::Line;
use super::pooled::{Pooled, Slot};
use super::reuse;
use super::stack::IdleStack;
use super::surplus::{self, Release, Surplus};
use super::{ConnInfo, Grant, Limits, Meta, Poolable, VacancyHook};
use crate::metrics::{CloseReason, PoolMetrics};

pub(super) struct Inner<C: Poolable> {
    pub(super) state: Mutex<State<C>>,
    pub(super) metrics: PoolMetrics,
    /// Wakes the reaper when an idle connection arrives (its deadline may be the next one).
    pub(super) wake_reaper: Arc<Notify>,
    /// Told when the pool may have become vacant (the registry forgets it then).
    pub(super) on_vacant: Option<VacancyHook>,
}

impl<C: Poolable> Drop for Inner<C> {
    fn drop(&mut self) {
        // Lets the reaper see that the pool is gone and end.
        self.wake_reaper.notify_one();
    }
}

pub(super) struct State<C: Poolable> {
    pub(super) limits: Limits,
    /// Oldest first; checkout takes from the top (most recently used).
    pub(super) idle: IdleStack<Idle<C>>,
    /// Slots taken: connecting + busy + idle.
    pub(super) open: usize,
    pub(super) waiters: Line<Grant<C>>,
    /// Every open connection, for `/pools`.
    pub(super) conns: IdMap<ConnInfo>,
    /// Drained (shutdown or upstream removed): releases close instead of pooling.
    pub(super) closing: bool,
    /// Live counted [`Pool`] handles: requests that may still check out or wait.
    pub(super) holders: usize,
    /// The reach connections must have been dialed under to be pooled (see [`Pool::set_reach`]).
    pub(super) reach: u64,
    /// The deadline the reaper sleeps until (`None`: until woken). A returned connection wakes
    /// it only when its own deadline is earlier, not on every release.
    pub(super) reaper_at: Option<Instant>,
    /// Deadlines of the idle connections above `max_idle` (SPEC §5): the reaper trims the
    /// oldest idle one at each. Its length follows `idle` (see [`State::fit_surplus`]).
    pub(super) surplus: Surplus,
}

pub(super) struct Idle<C> {
    pub(super) conn: C,
    pub(super) meta: Meta,
    /// When its idle time or lifetime runs out under the pool's limits ([`reuse::deadline`]):
    /// computed when it goes idle and whenever the limits change ([`State::redate_idle`]), so
    /// that checkout and the reaper compare instants instead of working out durations.
    pub(super) deadline: Instant,
}

impl<C: Poolable> Inner<C> {
    pub(super) fn lock(&self) -> MutexGuard<'_, State<C>> {
        // A panic elsewhere must not wedge every request: the state stays consistent per call.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection taken out of `st` to be closed for `reason`: no longer listed, and
    /// counted closed. Its slot stays counted until its socket is closed, after the lock.
    pub(super) fn retire_idle(&self, st: &mut State<C>, id: u64, reason: CloseReason) {
        st.forget(id);
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
    pub(super) fn close(self: &Arc<Self>, conns: impl IntoIterator<Item = C>) -> bool {
        let mut closed = 0;
        for conn in conns {
            drop(conn);
            closed += 1;
        }
        closed > 0 && self.free_slots(closed)
    }

    /// Give back `n` slots whose connections are closed (or were never dialed); whether that
    /// left the pool vacant.
    pub(super) fn free_slots(self: &Arc<Self>, n: usize) -> bool {
        let mut st = self.lock();
        st.open -= n;
        self.grant_free_slots(st)
    }

    /// Move an idle entry to busy.
    pub(super) fn take_idle(
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
    pub(super) fn vacated(&self) {
        if let Some(hook) = &self.on_vacant {
            hook();
        }
    }

    /// Hand free capacity to waiters, oldest first, while slots remain; then unlock and say
    /// whether the pool was vacant at that moment.
    pub(super) fn grant_free_slots(self: &Arc<Self>, mut st: MutexGuard<'_, State<C>>) -> bool {
        let mut refused = Vec::new();
        while st.open < st.limits.max_connections && !st.closing {
            let Some(tx) = st.waiters.pop() else {
                break;
            };
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
    pub(super) fn put_back(
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
        while let Some(tx) = st.waiters.pop() {
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
        let deadline = reuse::deadline(
            &meta.life.under(st.limits.idle_timeout),
            st.limits.max_lifetime,
        );
        let mut wake_at = deadline;
        match surplus::on_release(st.idle.len(), st.limits.max_idle, now) {
            Release::Keep => {}
            Release::Surplus(until) => {
                // Kept for the next burst; the reaper trims the oldest if none comes in time.
                st.surplus.rose(until);
                wake_at = wake_at.min(st.surplus.next().unwrap_or(until));
            }
            Release::Close => {
                self.retire_idle(&mut st, meta.id, CloseReason::PoolFull);
                drop(st);
                if self.close([conn]) {
                    self.vacated();
                }
                return;
            }
        }
        let wake = st.reaper_at.is_none_or(|at| wake_at < at);
        if wake {
            st.reaper_at = Some(wake_at);
        }
        st.idle.push(Idle {
            conn,
            meta,
            deadline,
        });
        drop(st);
        if wake {
            self.wake_reaper.notify_one();
        }
    }
}

impl<C: Poolable> State<C> {
    pub(super) fn forget(&mut self, id: u64) {
        self.conns.remove(&id);
    }

    /// The limits changed (a reload, a learned idle limit): each idle connection's deadline
    /// follows.
    pub(super) fn redate_idle(&mut self) {
        let (idle_timeout, max_lifetime) = (self.limits.idle_timeout, self.limits.max_lifetime);
        for e in self.idle.iter_mut_unordered() {
            e.deadline = reuse::deadline(&e.meta.life.under(idle_timeout), max_lifetime);
        }
    }

    /// After idle connections left other than by a trim: the surplus levels follow the count.
    pub(super) fn fit_surplus(&mut self) {
        self.surplus.fit(self.idle.len(), self.limits.max_idle);
    }

    /// No request holds a handle (so none waits either) and no connection is open or being
    /// dialed: nothing would be lost if the pool were forgotten.
    pub(super) fn vacant(&self) -> bool {
        self.holders == 0 && self.open == 0
    }
}
