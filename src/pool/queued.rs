//! A checkout's place in the queue of a full pool, and the wait in it.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{AcquireTimeout, Checkout, Grant, Pool, Poolable, Reuse};
use crate::metrics::CloseReason;

/// Queued for a connection or a slot by [`Pool::try_checkout`]; dropped, it leaves the queue
/// (the line passes by, then prunes, a waiter that is gone: see [`super::line`]).
pub struct Queued<'p, C: Poolable> {
    pub(super) pool: &'p Pool<C>,
    /// The checkout's rule: a connection handed over to a request that needs a new one is
    /// closed, and its slot dialed in.
    pub(super) reuse: Reuse,
    pub(super) rx: oneshot::Receiver<Grant<C>>,
    pub(super) acquire_timeout: Duration,
    /// `max_connections` when queued, for the timeout's error.
    pub(super) max: usize,
}

impl<C: Poolable> Queued<'_, C> {
    /// Wait, first come, first served, up to `acquire_timeout` for a released connection or a
    /// freed slot.
    pub async fn wait(self) -> Result<Checkout<C>, AcquireTimeout> {
        let Queued {
            pool,
            reuse,
            rx,
            acquire_timeout,
            max,
        } = self;
        let metrics = &pool.inner.metrics;
        let mut place = Waiting::start(pool);
        let started = Instant::now();
        let outcome = tokio::time::timeout(acquire_timeout, rx).await;
        metrics.wait.observe(started.elapsed().as_secs_f64());
        place.served = matches!(outcome, Ok(Ok(_)));
        drop(place);
        match outcome {
            Ok(Ok(Grant::Conn(pooled))) if reuse == Reuse::Never => {
                // Handed a pooled connection but a new one is required: close it, dial in its slot.
                Ok(Checkout::Dial(
                    pool.stamp(pooled.into_slot(CloseReason::PoolFull)),
                ))
            }
            Ok(Ok(Grant::Conn(mut pooled))) => {
                pooled.reused = true;
                Ok(Checkout::Reused(pooled.brought_here()))
            }
            Ok(Ok(Grant::Slot(slot))) => Ok(Checkout::Dial(pool.stamp(slot))),
            Ok(Err(_)) | Err(_) => {
                metrics.acquire_timeouts.inc();
                Err(AcquireTimeout {
                    max_connections: max,
                })
            }
        }
    }
}

/// A wait in the line, from its start to its end however it ends: it counts on the `waiting`
/// gauge meanwhile, and one that ends unserved (timed out, or dropped with its request) tells
/// the line, which prunes the gone in bulk.
struct Waiting<'p, C: Poolable> {
    pool: &'p Pool<C>,
    served: bool,
}

impl<'p, C: Poolable> Waiting<'p, C> {
    fn start(pool: &'p Pool<C>) -> Self {
        pool.inner.metrics.waiting.inc();
        Waiting {
            pool,
            served: false,
        }
    }
}

impl<C: Poolable> Drop for Waiting<'_, C> {
    fn drop(&mut self) {
        self.pool.inner.metrics.waiting.dec();
        if !self.served {
            self.pool.inner.lock().waiters.left();
        }
    }
}
