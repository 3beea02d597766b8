//! The admin listener's connections: at most [`MAX`] open; at the cap, the oldest one still waiting for a request head is closed to make room.
//!
//! Refusing connections at the cap would let a flood of idle ones starve `/healthz` and
//! `/readyz`, which is worse than the flood itself: the orchestrator would restart a healthy
//! proxy. Like nginx's reuse of idle connections, a newcomer instead takes the place of the
//! oldest connection that is not asking anything (a new one that has not sent its whole
//! head, or one idle in keep-alive); only if every connection is in the middle of a request
//! does the oldest go. A connection's room is given back only after its task has
//! ended, its socket closed, so the open sockets never exceed the cap.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Admin connections open at once. Probes, a scraper or two and an operator need a handful;
/// the rest absorbs bursts. An idle one costs a task and a small read buffer (a few KiB).
pub const MAX: usize = 64;

/// The open admin connections.
pub struct Conns {
    /// One permit per open connection, held by its task until the socket is closed.
    room: Arc<Semaphore>,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    /// By id, that is by accept order: the first entry is the oldest.
    by_age: BTreeMap<u64, Entry>,
}

struct Entry {
    waiting: Arc<AtomicBool>,
    evict: oneshot::Sender<()>,
}

/// One admitted connection, held by its task; dropping it gives its room back.
pub struct Admitted {
    id: u64,
    conns: Arc<Conns>,
    waiting: Arc<AtomicBool>,
    evicted: oneshot::Receiver<()>,
    _room: OwnedSemaphorePermit,
}

impl Conns {
    pub fn new(max: usize) -> Arc<Conns> {
        Arc::new(Conns {
            room: Arc::new(Semaphore::new(max)),
            open: Mutex::new(Open::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Room for one more connection: at once below the cap; at the cap once the oldest
    /// connection waiting for a request head (else the oldest) has closed. `None` only
    /// if the semaphore were closed, which nothing does.
    pub async fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let room = match self.room.clone().try_acquire_owned() {
            Ok(room) => room,
            Err(_) => {
                self.evict_one();
                // The evicted task ends at its next poll.
                self.room.clone().acquire_owned().await.ok()?
            }
        };
        let (evict, evicted) = oneshot::channel();
        let waiting = Arc::new(AtomicBool::new(true));
        let mut open = self.lock();
        let id = open.next_id;
        open.next_id += 1;
        open.by_age.insert(
            id,
            Entry {
                waiting: waiting.clone(),
                evict,
            },
        );
        Some(Admitted {
            id,
            conns: self.clone(),
            waiting,
            evicted,
            _room: room,
        })
    }

    /// Tell the oldest connection waiting for a request head, or else the oldest, to close. Nothing if every connection ended meanwhile (their room is free then).
    fn evict_one(&self) {
        let mut open = self.lock();
        let victim = open
            .by_age
            .iter()
            .find(|(_, e)| e.waiting.load(Ordering::Acquire))
            .or_else(|| open.by_age.iter().next())
            .map(|(id, _)| *id);
        if let Some(entry) = victim.and_then(|id| open.by_age.remove(&id)) {
            drop(open);
            // Already ending if it is gone: its room comes back all the same.
            let _ = entry.evict.send(());
        }
    }

    /// Connections open (admitted and not yet ended or evicted).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_age.len()
    }
}

impl Admitted {
    /// Resolves when this connection must close to make room.
    pub async fn evicted(&mut self) {
        // A dropped sender means eviction too: the registry let go of this connection.
        let _ = (&mut self.evicted).await;
    }

    /// The flag a request clears while it is served (see [`Serving`]).
    pub fn waiting(&self) -> Arc<AtomicBool> {
        self.waiting.clone()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.conns.lock().by_age.remove(&self.id);
    }
}

/// Marks a connection as serving a request from its head until the response body has been
/// handed over whole (dropped), when it waits for the next head again.
pub struct Serving(Arc<AtomicBool>);

impl Serving {
    pub fn begin(waiting: &Arc<AtomicBool>) -> Serving {
        waiting.store(false, Ordering::Release);
        Serving(waiting.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn below_the_cap_nobody_is_evicted() {
        let conns = Conns::new(2);
        let mut a = conns.admit().await.unwrap();
        let _b = conns.admit().await.unwrap();
        assert_eq!(conns.len(), 2);
        assert!(futures_ready(a.evicted()).is_none());
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_waiting_for_a_head_makes_room() {
        let conns = Conns::new(3);
        let mut serving = conns.admit().await.unwrap();
        let busy = Serving::begin(&serving.waiting());
        let mut idle_old = conns.admit().await.unwrap();
        let mut idle_new = conns.admit().await.unwrap();
        let c2 = conns.clone();
        let newcomer = tokio::spawn(async move { c2.admit().await.unwrap().id });
        // The oldest connection is serving: the oldest waiting one is told to go instead.
        idle_old.evicted().await;
        assert!(futures_ready(serving.evicted()).is_none());
        assert!(futures_ready(idle_new.evicted()).is_none());
        assert!(
            !newcomer.is_finished(),
            "room comes only when the evicted one has closed"
        );
        drop(idle_old);
        assert_eq!(newcomer.await.unwrap(), 3);
        drop(busy);
    }

    #[tokio::test]
    async fn when_every_connection_is_serving_the_oldest_goes() {
        let conns = Conns::new(2);
        let mut a = conns.admit().await.unwrap();
        let b = conns.admit().await.unwrap();
        let (_sa, _sb) = (Serving::begin(&a.waiting()), Serving::begin(&b.waiting()));
        let c2 = conns.clone();
        let newcomer = tokio::spawn(async move { c2.admit().await.unwrap() });
        a.evicted().await;
        drop(a);
        let _c = newcomer.await.unwrap();
        assert_eq!(conns.len(), 2);
    }

    /// The output of `f` if it is ready at its first poll.
    fn futures_ready<F: std::future::Future>(f: F) -> Option<F::Output> {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
