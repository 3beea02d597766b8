//! The cap holds while a connection closes (SPEC §5): on every close path the connection is dropped (its socket closed) before its slot is freed or handed on, and never under the lock.
//!
//! Each test closes probed fakes along one path. A probed fake records, as it is dropped, what
//! the pool counted at that moment; with a waiter queued, the waiter must still be queued (its
//! dial would otherwise overlap the closing socket at the upstream).

use std::sync::atomic::AtomicUsize;
use std::sync::{Mutex, TryLockError, Weak};

use super::*;

/// What the pool looked like as one probed connection was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AtClose {
    /// Slots counted; `None` when the pool's lock was held, that is, dropped under the lock.
    open: Option<usize>,
    /// Probed connections alive, the one closing included.
    alive: usize,
    /// Requests still queued for a slot (`None` as for `open`).
    waiting: Option<usize>,
}

/// Shared by the fakes of one pool.
#[derive(Clone)]
pub(super) struct Probe {
    pool: Weak<Inner<Fake>>,
    alive: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<AtClose>>>,
}

impl Probe {
    fn new(p: &Pool<Fake>) -> Probe {
        Probe {
            pool: Arc::downgrade(&p.inner),
            alive: Arc::default(),
            seen: Arc::default(),
        }
    }

    async fn dial(&self, p: &Pool<Fake>, n: u32) -> Pooled<Fake> {
        let Checkout::Dial(slot) = p.checkout(Reuse::Any).await.expect("no timeout") else {
            panic!("expected a dial for {n}");
        };
        self.alive.fetch_add(1, Ordering::SeqCst);
        let mut fake = Fake::new(n);
        fake.probe = Some(self.clone());
        slot.fill(fake)
    }

    /// Every close so far must have happened with its slot still counted (`open >= alive`),
    /// outside the lock, and with `waiting` requests still queued.
    fn assert_closed_in_their_slots(&self, closes: usize, waiting: usize) {
        let seen = self.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), closes, "closes seen: {seen:?}");
        for c in &seen {
            let open = c
                .open
                .expect("a connection was dropped under the pool's lock");
            assert!(
                open >= c.alive,
                "a slot was freed before its connection closed: {seen:?}"
            );
            assert_eq!(
                c.waiting,
                Some(waiting),
                "a waiter was served before the connection closed: {seen:?}"
            );
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        let alive = probe.alive.fetch_sub(1, Ordering::SeqCst);
        let Some(inner) = probe.pool.upgrade() else {
            return;
        };
        let look = |st: &State<Fake>| (Some(st.open), Some(st.waiters.waiting()));
        let (open, waiting) = match inner.state.try_lock() {
            Ok(st) => look(&st),
            Err(TryLockError::Poisoned(e)) => look(&e.into_inner()),
            // The tests run on one thread: a held lock is held by the code dropping us.
            Err(TryLockError::WouldBlock) => (None, None),
        };
        probe.seen.lock().unwrap().push(AtClose {
            open,
            alive,
            waiting,
        });
    }
}

/// A request queued for a slot; resolves to whether it was given one to dial.
async fn queue_waiter(p: &Pool<Fake>) -> tokio::task::JoinHandle<bool> {
    let p2 = p.clone();
    let waiter =
        tokio::spawn(async move { matches!(p2.checkout(Reuse::Any).await, Ok(Checkout::Dial(_))) });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(p.snapshot().waiting, 1);
    waiter
}

#[tokio::test(start_paused = true)]
async fn a_discarded_connection_closes_before_a_waiter_gets_its_slot() {
    let (p, _) = pool(limits(1));
    let probe = Probe::new(&p);
    let a = probe.dial(&p, 1).await;
    let waiter = queue_waiter(&p).await;
    a.discard(CloseReason::Error);
    probe.assert_closed_in_their_slots(1, 1);
    assert!(waiter.await.unwrap(), "the waiter dials in the freed slot");
}

#[tokio::test(start_paused = true)]
async fn a_connection_dropped_unreleased_closes_before_a_waiter_gets_its_slot() {
    let (p, _) = pool(limits(1));
    let probe = Probe::new(&p);
    let a = probe.dial(&p, 1).await;
    let waiter = queue_waiter(&p).await;
    drop(a);
    probe.assert_closed_in_their_slots(1, 1);
    assert!(waiter.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_connection_past_its_lifetime_closes_before_a_waiter_gets_its_slot() {
    let (p, m) = pool(limits(1));
    let probe = Probe::new(&p);
    let a = probe.dial(&p, 1).await;
    tokio::time::sleep(S(61)).await;
    let waiter = queue_waiter(&p).await;
    a.release();
    assert_eq!(closed(&m, "max_lifetime"), 1);
    probe.assert_closed_in_their_slots(1, 1);
    assert!(waiter.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_busy_connection_returned_after_a_drain_closes_in_its_slot() {
    let (p, _) = pool(limits(1));
    let probe = Probe::new(&p);
    let a = probe.dial(&p, 1).await;
    p.drain(CloseReason::Shutdown);
    a.release();
    probe.assert_closed_in_their_slots(1, 0);
    assert_eq!(p.open(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_trimmed_over_max_idle_closes_in_its_slot() {
    let mut l = limits(2);
    l.max_idle = 1;
    let (p, m) = pool(l);
    let probe = Probe::new(&p);
    let a = probe.dial(&p, 1).await;
    let b = probe.dial(&p, 2).await;
    a.release();
    b.release();
    assert_eq!(closed(&m, "pool_full"), 0, "surplus for a second");
    tokio::time::sleep(surplus::GRACE + Duration::from_millis(1)).await;
    assert_eq!(closed(&m, "pool_full"), 1);
    probe.assert_closed_in_their_slots(1, 0);
    assert_eq!(p.open(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_connection_released_with_max_idle_zero_closes_in_its_slot() {
    let mut l = limits(1);
    l.max_idle = 0;
    let (p, _) = pool(l);
    let probe = Probe::new(&p);
    probe.dial(&p, 1).await.release();
    probe.assert_closed_in_their_slots(1, 0);
    assert_eq!(p.open(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_reaper_closes_an_expired_connection_in_its_slot() {
    let (p, m) = pool(limits(1));
    let probe = Probe::new(&p);
    probe.dial(&p, 1).await.release();
    tokio::time::sleep(S(31)).await;
    assert_eq!(closed(&m, "idle_timeout"), 1);
    probe.assert_closed_in_their_slots(1, 0);
    assert_eq!(p.open(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_reaper_closes_a_remotely_closed_connection_in_its_slot() {
    let (p, m) = pool(limits(1));
    let probe = Probe::new(&p);
    let mut a = probe.dial(&p, 1).await;
    let (open, reaper) = (a.conn().open.clone(), a.conn().reaper.clone());
    a.release();
    open.store(false, Ordering::SeqCst);
    let wake = reaper.lock().unwrap().clone().expect("parked");
    wake.notify_one();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(closed(&m, "remote_closed"), 1);
    probe.assert_closed_in_their_slots(1, 0);
    assert_eq!(p.open(), 0);
}

#[tokio::test(start_paused = true)]
async fn closed_idle_connections_met_by_a_reusing_checkout_close_in_their_slots() {
    let (p, m) = pool(limits(2));
    let probe = Probe::new(&p);
    let a = probe.dial(&p, 1).await;
    let mut b = probe.dial(&p, 2).await;
    let b_open = b.conn().open.clone();
    a.release();
    b.release();
    b_open.store(false, Ordering::SeqCst);
    let mut c = reuse(&p, None).await.expect("a is reused");
    assert_eq!(c.conn().n, 1);
    assert_eq!(closed(&m, "remote_closed"), 1);
    probe.assert_closed_in_their_slots(1, 0);
    assert_eq!(p.open(), 1);
}

#[tokio::test(start_paused = true)]
async fn closed_idle_connections_met_by_a_dialing_checkout_close_in_their_slots() {
    let (p, m) = pool(limits(2));
    let probe = Probe::new(&p);
    let mut a = probe.dial(&p, 1).await;
    let mut b = probe.dial(&p, 2).await;
    let flags = [a.conn().open.clone(), b.conn().open.clone()];
    a.release();
    b.release();
    for f in &flags {
        f.store(false, Ordering::SeqCst);
    }
    let slot = match p.checkout(Reuse::Any).await.expect("no timeout") {
        Checkout::Dial(slot) => slot,
        Checkout::Reused(_) => panic!("a closed connection was handed out"),
    };
    assert_eq!(closed(&m, "remote_closed"), 2);
    probe.assert_closed_in_their_slots(2, 0);
    assert_eq!(p.open(), 1, "one slot, the dial's");
    drop(slot);
    assert_eq!(p.open(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_drain_closes_idle_connections_in_their_slots() {
    let (p, _) = pool(limits(2));
    let probe = Probe::new(&p);
    let a = probe.dial(&p, 1).await;
    let b = probe.dial(&p, 2).await;
    a.release();
    b.release();
    p.drain(CloseReason::Shutdown);
    probe.assert_closed_in_their_slots(2, 0);
    assert_eq!(p.open(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_connection_handed_to_a_never_reuse_waiter_closes_before_it_dials() {
    let (p, _) = pool(limits(1));
    let probe = Probe::new(&p);
    let a = probe.dial(&p, 1).await;
    let p2 = p.clone();
    let waiter =
        tokio::spawn(
            async move { matches!(p2.checkout(Reuse::Never).await, Ok(Checkout::Dial(_))) },
        );
    tokio::time::sleep(Duration::from_millis(10)).await;
    a.release();
    assert!(waiter.await.unwrap());
    probe.assert_closed_in_their_slots(1, 0);
    assert_eq!(p.open(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_too_idle_connection_evicted_at_the_cap_closes_before_its_slot_dials() {
    let (p, _) = pool(limits(1));
    let probe = Probe::new(&p);
    probe.dial(&p, 1).await.release();
    tokio::time::sleep(S(3)).await;
    let Ok(Checkout::Dial(slot)) = p.checkout(Reuse::IdleAtMost(S(2))).await else {
        panic!("expected a dial");
    };
    probe.assert_closed_in_their_slots(1, 0);
    assert_eq!(p.open(), 1);
    drop(slot);
}
