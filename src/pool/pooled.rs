//! The drop guards: a [`Slot`] of capacity, and a [`Pooled`] connection that goes back on drop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::reuse::Life;
use super::state::Inner;
use super::{ConnInfo, Meta, Poolable};
use crate::metrics::CloseReason;

/// Connection ids are unique for the life of the process (they appear in logs and `/pools`).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Capacity for one connection. Dropped unfilled (a failed dial), it frees the slot for a waiter.
pub struct Slot<C: Poolable> {
    pub(super) inner: Option<Arc<Inner<C>>>,
    /// The reach of the holder that will dial in it (set by checkout).
    pub(super) reach: u64,
}

impl<C: Poolable> Slot<C> {
    pub(super) fn new(inner: Arc<Inner<C>>) -> Self {
        Slot {
            inner: Some(inner),
            reach: 0,
        }
    }

    pub(super) fn defuse(&mut self) {
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
            home: crate::workers::here(),
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
    pub(super) conn: Option<C>,
    pub(super) meta: Meta,
    /// Came from the pool (or a handoff) rather than a fresh dial: decides retry eligibility.
    pub(super) reused: bool,
    pub(super) idle_at_checkout: Duration,
    pub(super) age_at_checkout: Duration,
    /// Owns the capacity; armed only while `conn` is here.
    pub(super) slot: Slot<C>,
    /// How the holder finished with it; `None` on drop means an error path.
    pub(super) done: Option<Result<(), CloseReason>>,
}

impl<C: Poolable> Pooled<C> {
    pub fn conn(&mut self) -> &mut C {
        self.conn
            .as_mut()
            .expect("connection present until finish or drop")
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

    /// Checked out on a worker other than its home: its socket moves to this worker's
    /// reactor (see [`Poolable::rehome`]), and this worker is its home from now on.
    ///
    /// A socket is watched by the reactor it was registered with. Used from another worker,
    /// each of its readiness events waits until that worker looks at its reactor, which then
    /// wakes this one across threads (an `eventfd` write): about 0.3 such writes per request
    /// at 128 client connections, and a p99 a fifth higher. Moving costs four system calls,
    /// once per move (`UpstreamIo::rehome`).
    pub(super) fn brought_here(mut self) -> Self {
        let here = crate::workers::here();
        if here.is_some() && self.meta.home != here && self.conn().rehome() {
            self.meta.home = here;
        }
        self
    }

    /// The response was passed on whole: back to the pool if still within its limits.
    pub fn release(mut self) {
        self.done = Some(Ok(()));
    }

    /// Close the connection but keep its capacity, to dial a replacement.
    pub(super) fn into_slot(mut self, reason: CloseReason) -> Slot<C> {
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

    /// [`release`](Self::release) (`Ok`) or [`discard`](Self::discard) (`Err`) through a
    /// borrow: the connection goes now, and the emptied handle stays with its owner (a
    /// request's frame, which lends it to the steps that use it instead of moving it).
    pub fn finish(&mut self, done: Result<(), CloseReason>) {
        self.done = Some(done);
        self.hand_back();
    }

    /// Return the connection to its pool (or close it) as `done` says; nothing once it went.
    fn hand_back(&mut self) {
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

impl<C: Poolable> Drop for Pooled<C> {
    fn drop(&mut self) {
        self.hand_back();
    }
}
