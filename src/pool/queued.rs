//! A checkout's place in the queue of a full pool, and the wait in it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{AcquireTimeout, Checkout, Grant, Pool, Poolable, Reuse};
use crate::metrics::CloseReason;

/// Queued for a connection or a slot by [`Pool::try_checkout`]; dropped, waited in or not, it
/// leaves the queue without taking anything with it (see `Place`).
pub struct Queued<'p, C: Poolable> {
    pub(super) place: Place<'p, C>,
    /// The checkout's rule: a connection handed over to a request that needs a new one is
    /// closed, and its slot dialed in.
    pub(super) reuse: Reuse,
    pub(super) acquire_timeout: Duration,
    /// `max_connections` when queued, for the timeout's error.
    pub(super) max: usize,
}

impl<C: Poolable> Queued<'_, C> {
    /// Wait, first come, first served, up to `acquire_timeout` for a released connection or a
    /// freed slot. Dropping the wait (its request abandoned) is as clean as its timeout.
    pub async fn wait(self) -> Result<Checkout<C>, AcquireTimeout> {
        let Queued {
            mut place,
            reuse,
            acquire_timeout,
            max,
        } = self;
        let pool = place.pool;
        let metrics = &pool.inner.metrics;
        let waiting = Waiting::start(pool);
        let outcome = tokio::time::timeout(acquire_timeout, &mut place).await;
        drop(waiting);
        drop(place);
        match outcome {
            Ok(Some(Grant::Conn(pooled))) if reuse == Reuse::Never => {
                // Handed a pooled connection but a new one is required: close it, dial in its slot.
                Ok(Checkout::Dial(
                    pool.stamp(pooled.into_slot(CloseReason::PoolFull)),
                ))
            }
            Ok(Some(Grant::Conn(mut pooled))) => {
                pooled.reused = true;
                Ok(Checkout::Reused(pooled.brought_here()))
            }
            Ok(Some(Grant::Slot(slot))) => Ok(Checkout::Dial(pool.stamp(slot))),
            Ok(None) | Err(_) => {
                metrics.acquire_timeouts.inc();
                Err(AcquireTimeout {
                    max_connections: max,
                })
            }
        }
    }
}

/// A place in the line: the receiving end of what the pool hands this checkout. One that ends
/// unserved (timed out, or dropped with its request) leaves the line: a grant that came as it
/// gave up, sent but not yet taken, goes back to the pool (the next waiter, or idle) instead of
/// being dropped with the place, which would close a healthy connection; otherwise the line is
/// told of the departure, and prunes the gone in bulk.
pub(super) struct Place<'p, C: Poolable> {
    pub(super) pool: &'p Pool<C>,
    pub(super) rx: oneshot::Receiver<Grant<C>>,
    served: bool,
}

impl<'p, C: Poolable> Place<'p, C> {
    pub(super) fn new(pool: &'p Pool<C>, rx: oneshot::Receiver<Grant<C>>) -> Self {
        Place {
            pool,
            rx,
            served: false,
        }
    }
}

impl<C: Poolable> Future for Place<'_, C> {
    /// The grant; `None` if the pool dropped this waiter's sender (it does not, short of its own end).
    type Output = Option<Grant<C>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let got = std::task::ready!(Pin::new(&mut self.rx).poll(cx)).ok();
        self.served = got.is_some();
        Poll::Ready(got)
    }
}

impl<C: Poolable> Drop for Place<'_, C> {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        // Closed first: from here on the pool's send fails and it passes this place by.
        self.rx.close();
        match self.rx.try_recv() {
            Ok(Grant::Conn(mut pooled)) => {
                // Not used: the handoff's request count is taken back, and it goes to the next
                // waiter or idle, as a release would send it.
                pooled.meta.requests = pooled.meta.requests.saturating_sub(1);
                pooled.release();
            }
            // Its drop frees the slot for the next waiter.
            Ok(Grant::Slot(slot)) => drop(slot),
            Err(_) => self.pool.inner.lock().waiters.left(),
        }
    }
}

/// A wait in the line, from its start to its end however it ends: it counts on the `waiting`
/// gauge meanwhile, and its length goes to the wait histogram.
struct Waiting<'p, C: Poolable> {
    pool: &'p Pool<C>,
    started: Instant,
}

impl<'p, C: Poolable> Waiting<'p, C> {
    fn start(pool: &'p Pool<C>) -> Self {
        pool.inner.metrics.waiting.inc();
        Waiting {
            pool,
            started: Instant::now(),
        }
    }
}

impl<C: Poolable> Drop for Waiting<'_, C> {
    fn drop(&mut self) {
        let metrics = &self.pool.inner.metrics;
        metrics.waiting.dec();
        metrics.wait.observe(self.started.elapsed().as_secs_f64());
    }
}
