//! `max_client_connections`: one semaphore permit per open client connection, resizable on reload.
//!
//! Raising adds permits. Lowering cannot take permits back from open connections, so it
//! records a debt: permits freed as connections close are forgotten until it is paid, and
//! only then do the accept loops get one again. The accept loops (one per worker) are the
//! only acquirers while the proxy runs, and each holds a permit only from the moment a
//! connection is pending to its accept, so paying the debt happens there, in order, with no
//! task of its own.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// The client-connection cap.
pub struct ClientLimit {
    /// Permits in existence: `size + debt` (free, held by connections, or by an accept loop
    /// about to accept).
    permits: Arc<Semaphore>,
    /// Never held across an await.
    sizes: Mutex<Sizes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sizes {
    /// The configured `max_client_connections`.
    size: usize,
    /// Permits to forget as they come free, owed since the size went down.
    debt: usize,
}

impl ClientLimit {
    pub fn new(size: usize) -> ClientLimit {
        let size = size.min(Semaphore::MAX_PERMITS);
        ClientLimit {
            permits: Arc::new(Semaphore::new(size)),
            sizes: Mutex::new(Sizes { size, debt: 0 }),
        }
    }

    fn sizes(&self) -> MutexGuard<'_, Sizes> {
        self.sizes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configured size.
    pub fn size(&self) -> usize {
        self.sizes().size
    }

    /// Take effect for connections accepted from now on; open ones are never cut.
    pub fn resize(&self, size: usize) {
        let size = size.min(Semaphore::MAX_PERMITS);
        let mut s = self.sizes();
        if size > s.size {
            // A raise pays what a lowering still owes first.
            let more = size - s.size;
            let paid = more.min(s.debt);
            s.debt -= paid;
            self.permits.add_permits(more - paid);
        } else if size < s.size {
            s.debt += s.size - size;
        }
        s.size = size;
    }

    /// A permit for one more connection, once the open ones are below the size. Only the
    /// accept loops call this (permits they take while a debt is owed are forgotten).
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, AcquireError> {
        loop {
            let permit = self.permits.clone().acquire_owned().await?;
            let mut s = self.sizes();
            if s.debt == 0 {
                return Ok(permit);
            }
            permit.forget();
            s.debt -= 1;
        }
    }

    /// Completes once every connection has closed (the accept loops must have stopped).
    pub async fn drained(&self) {
        let all = {
            let s = self.sizes();
            s.size + s.debt
        };
        let all = u32::try_from(all).unwrap_or(u32::MAX);
        // Closed only if dropped: then nothing is left to wait for either.
        let _ = self.permits.acquire_many(all).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use tokio::time::timeout;

    /// Long enough for a ready future to complete on a paused clock.
    const SOON: Duration = Duration::from_millis(10);

    async fn take(limit: &ClientLimit) -> OwnedSemaphorePermit {
        timeout(SOON, limit.acquire())
            .await
            .expect("a permit is free")
            .expect("open")
    }

    async fn waits(limit: &ClientLimit) -> bool {
        timeout(SOON, limit.acquire()).await.is_err()
    }

    #[tokio::test(start_paused = true)]
    async fn raising_frees_permits_at_once() {
        let limit = ClientLimit::new(1);
        let _a = take(&limit).await;
        assert!(waits(&limit).await);
        limit.resize(3);
        assert_eq!(limit.size(), 3);
        let _b = take(&limit).await;
        let _c = take(&limit).await;
        assert!(waits(&limit).await);
    }

    #[tokio::test(start_paused = true)]
    async fn lowering_waits_until_the_open_ones_are_below_the_new_size() {
        let limit = ClientLimit::new(3);
        let (a, b, c) = (take(&limit).await, take(&limit).await, take(&limit).await);
        limit.resize(1);
        assert_eq!(limit.size(), 1);
        drop(a);
        assert!(waits(&limit).await, "two open, size 1");
        drop(b);
        assert!(waits(&limit).await, "one open, size 1");
        drop(c);
        let d = take(&limit).await;
        assert!(waits(&limit).await, "one at a time again");
        drop(d);
        let _e = take(&limit).await;
        assert_eq!(
            *limit.sizes(),
            Sizes { size: 1, debt: 0 },
            "the debt is paid"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_acquire_pays_the_debt_first() {
        let limit = Arc::new(ClientLimit::new(2));
        let (a, b) = (take(&limit).await, take(&limit).await);
        let waiting = {
            let limit = limit.clone();
            tokio::spawn(async move { limit.acquire().await.map(drop) })
        };
        tokio::time::sleep(SOON).await;
        limit.resize(1);
        drop(a);
        tokio::time::sleep(SOON).await;
        assert!(!waiting.is_finished(), "served with one open at size 1");
        drop(b);
        timeout(SOON, waiting)
            .await
            .expect("served once none is open")
            .expect("task")
            .expect("open");
    }

    #[tokio::test(start_paused = true)]
    async fn a_raise_pays_the_debt_before_adding_permits() {
        let limit = ClientLimit::new(4);
        let mut open = Vec::new();
        for _ in 0..4 {
            open.push(take(&limit).await);
        }
        limit.resize(1);
        limit.resize(2);
        assert_eq!(
            *limit.sizes(),
            Sizes { size: 2, debt: 2 },
            "no permit added"
        );
        // Three close: two pay the debt, one is free.
        open.truncate(1);
        let _b = take(&limit).await;
        assert!(waits(&limit).await, "two open, size 2");
        limit.resize(6);
        assert_eq!(*limit.sizes(), Sizes { size: 6, debt: 0 });
        for _ in 0..4 {
            open.push(take(&limit).await);
        }
        assert!(waits(&limit).await, "six open, size 6");
    }

    #[tokio::test(start_paused = true)]
    async fn drained_waits_for_every_connection_at_the_current_size() {
        let limit = ClientLimit::new(3);
        let (a, b) = (take(&limit).await, take(&limit).await);
        limit.resize(1);
        drop(a);
        assert!(timeout(SOON, limit.drained()).await.is_err(), "one open");
        drop(b);
        timeout(SOON, limit.drained()).await.expect("none open");
    }
}
