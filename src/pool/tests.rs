//! Pool unit tests: fake connections, paused time; expiry, lifetime, LIFO reuse, the cap and FCFS waits.

mod closing;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::metrics::Metrics;

struct Fake {
    n: u32,
    open: Arc<AtomicBool>,
    /// The reaper's wake-up, as the pool hands it over when the connection is parked.
    reaper: Arc<std::sync::Mutex<Option<Arc<Notify>>>>,
    parked: Arc<AtomicBool>,
    /// Records the pool's count at the moment this connection closes (its drop).
    probe: Option<closing::Probe>,
    /// Times it was moved to another worker's reactor, and whether a move succeeds.
    moves: Arc<std::sync::atomic::AtomicU32>,
    movable: Arc<AtomicBool>,
}

impl Fake {
    fn new(n: u32) -> Fake {
        Fake {
            n,
            open: Arc::new(AtomicBool::new(true)),
            reaper: Arc::default(),
            parked: Arc::default(),
            probe: None,
            moves: Arc::default(),
            movable: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl Poolable for Fake {
    fn is_open(&mut self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    fn park(&mut self, reaper: &Arc<Notify>) {
        *self.reaper.lock().unwrap() = Some(reaper.clone());
        self.parked.store(true, Ordering::SeqCst);
    }

    fn unpark(&mut self) {
        self.parked.store(false, Ordering::SeqCst);
    }

    fn rehome(&mut self) -> bool {
        self.moves.fetch_add(1, Ordering::SeqCst);
        self.movable.load(Ordering::SeqCst)
    }
}

const S: fn(u64) -> Duration = Duration::from_secs;

fn limits(max: usize) -> Limits {
    Limits {
        max_connections: max,
        max_idle: max,
        idle_timeout: S(30),
        max_lifetime: S(60),
        acquire_timeout: S(5),
    }
}

fn pool(l: Limits) -> (Pool<Fake>, Metrics) {
    let m = Metrics::new();
    (Pool::new(l, m.pool("t")), m)
}

fn closed(m: &Metrics, reason: &str) -> u64 {
    m.connections_closed.with_label_values(&["t", reason]).get()
}

async fn dial(p: &Pool<Fake>, n: u32) -> Pooled<Fake> {
    match p.checkout(Reuse::Any).await.expect("no timeout") {
        Checkout::Dial(slot) => slot.fill(Fake::new(n)),
        Checkout::Reused(_) => panic!("expected a dial for {n}"),
    }
}

async fn reuse(p: &Pool<Fake>, max_idle: Option<Duration>) -> Option<Pooled<Fake>> {
    match p
        .checkout(max_idle.map_or(Reuse::Any, Reuse::IdleAtMost))
        .await
        .expect("no timeout")
    {
        Checkout::Reused(c) => Some(c),
        Checkout::Dial(_) => None,
    }
}

#[tokio::test(start_paused = true)]
async fn most_recently_used_is_reused_first() {
    let (p, _) = pool(limits(4));
    let a = dial(&p, 1).await;
    let b = dial(&p, 2).await;
    a.release();
    tokio::time::advance(S(1)).await;
    b.release();
    let mut c = reuse(&p, None).await.expect("reuse");
    assert_eq!(c.conn().n, 2);
    assert!(c.reused());
    assert_eq!(c.requests(), 2);
    let mut d = reuse(&p, None).await.expect("reuse");
    assert_eq!(d.conn().n, 1);
    assert_eq!(d.idle_at_checkout(), S(1));
}

/// On a worker, a checkout takes the most recent idle connection that worker dialed, not the
/// most recent of all; a request that limits idleness, and a thread off the workers, still
/// take the most recent.
#[tokio::test(start_paused = true)]
async fn a_worker_gets_the_connections_it_dialed_first() {
    use crate::workers::pretend;
    let (p, _) = pool(limits(4));
    pretend(Some(0));
    let a = dial(&p, 1).await;
    pretend(Some(1));
    let b = dial(&p, 2).await;
    a.release();
    b.release();
    pretend(Some(0));
    let mut got = reuse(&p, None).await.expect("reuse");
    assert_eq!(got.conn().n, 1, "worker 0 takes its own, under worker 1's");
    got.release();
    pretend(Some(1));
    let mut got = reuse(&p, None).await.expect("reuse");
    assert_eq!(got.conn().n, 2, "worker 1 takes its own, under worker 0's");
    got.release();
    // Each took its own and put it back on top: 1 under 2.
    pretend(Some(0));
    let mut limited = reuse(&p, Some(S(10))).await.expect("reuse");
    assert_eq!(
        limited.conn().n,
        2,
        "an idleness limit takes the most recent"
    );
    limited.release();
    pretend(None);
    let mut off = reuse(&p, None).await.expect("reuse");
    assert_eq!(off.conn().n, 2, "off the workers: the most recent");
    off.release();
}

/// A connection checked out on a worker other than the one it was registered on is moved to
/// that worker once, and is its own from then on; one that cannot be moved is still handed
/// out, and the next checkout there tries again. Off the workers nothing moves.
#[tokio::test(start_paused = true)]
async fn a_connection_taken_by_another_worker_moves_there_once() {
    use crate::workers::pretend;
    let (p, _) = pool(limits(1));
    pretend(Some(0));
    let mut c = dial(&p, 1).await;
    let (moves, movable) = (c.conn().moves.clone(), c.conn().movable.clone());
    let moved = || moves.load(Ordering::SeqCst);
    c.release();
    pretend(Some(1));
    let c = reuse(&p, None).await.expect("reuse");
    assert_eq!(moved(), 1, "moved to worker 1");
    c.release();
    let c = reuse(&p, None).await.expect("reuse");
    assert_eq!(moved(), 1, "worker 1's own now: not moved again");
    c.release();
    // Taken over by a waiter on worker 0: the handoff moves it too.
    pretend(Some(0));
    let c = reuse(&p, None).await.expect("reuse");
    assert_eq!(moved(), 2, "back to worker 0");
    let waiter = tokio::spawn({
        let p = p.clone();
        async move {
            pretend(Some(1));
            reuse(&p, None).await.map(Pooled::release).is_some()
        }
    });
    tokio::task::yield_now().await;
    assert_eq!(p.snapshot().waiting, 1);
    c.release();
    assert!(waiter.await.unwrap(), "handed to the waiter");
    assert_eq!(moved(), 3, "moved to the waiter's worker");
    // A move that fails leaves it working where it was, and its home unchanged.
    movable.store(false, Ordering::SeqCst);
    pretend(Some(0));
    reuse(&p, None).await.expect("handed out unmoved").release();
    reuse(&p, None).await.expect("handed out unmoved").release();
    assert_eq!(moved(), 5, "each checkout on worker 0 tried again");
    pretend(None);
    reuse(&p, None).await.expect("reuse").release();
    assert_eq!(moved(), 5, "off the workers: not moved");
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed_when_their_time_runs_out() {
    let (p, m) = pool(limits(4));
    dial(&p, 1).await.release();
    assert_eq!(p.snapshot().idle, 1);
    tokio::time::sleep(S(29)).await;
    assert_eq!(p.snapshot().idle, 1, "still within idle_timeout");
    tokio::time::sleep(S(2)).await;
    assert_eq!(
        p.snapshot().idle,
        0,
        "the reaper closed it without a checkout"
    );
    assert_eq!(p.open(), 0);
    assert_eq!(closed(&m, "idle_timeout"), 1);
}

#[tokio::test(start_paused = true)]
async fn lifetime_is_never_exceeded_even_when_busy_all_along() {
    let (p, m) = pool(limits(4));
    let mut c = dial(&p, 1).await;
    for _ in 0..5 {
        c.release();
        tokio::time::sleep(S(10)).await;
        c = reuse(&p, None).await.expect("reusable before 60 s");
    }
    // 50 s old and busy: it passes 60 s while busy, finishes, and is closed.
    tokio::time::sleep(S(15)).await;
    c.release();
    assert_eq!(p.snapshot().idle, 0);
    assert_eq!(closed(&m, "max_lifetime"), 1);
    assert!(
        reuse(&p, None).await.is_none(),
        "a new dial, never the old connection"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_reaped_at_lifetime_before_idle_timeout() {
    let (p, m) = pool(limits(4));
    let c = dial(&p, 1).await;
    tokio::time::sleep(S(50)).await;
    c.release();
    tokio::time::sleep(S(11)).await;
    assert_eq!(p.snapshot().idle, 0);
    assert_eq!(closed(&m, "max_lifetime"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_closed_connection_is_never_handed_out() {
    let (p, m) = pool(limits(4));
    let mut c = dial(&p, 1).await;
    let flag = c.conn().open.clone();
    c.release();
    flag.store(false, Ordering::SeqCst);
    assert!(reuse(&p, None).await.is_none());
    assert_eq!(closed(&m, "remote_closed"), 1);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_that_signals_a_close_is_removed_at_once() {
    // What the socket of an idle upstream connection does on FIN or RST: wake the reaper it
    // was given when parked. The reaper must drop it then, long before any deadline.
    let (p, m) = pool(limits(4));
    let mut c = dial(&p, 1).await;
    let (open, reaper, parked) = {
        let f = c.conn();
        (f.open.clone(), f.reaper.clone(), f.parked.clone())
    };
    c.release();
    assert!(
        parked.load(Ordering::SeqCst),
        "a released connection is parked"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(p.open(), 1);
    open.store(false, Ordering::SeqCst);
    let wake = reaper
        .lock()
        .unwrap()
        .clone()
        .expect("parked with the reaper's wake-up");
    wake.notify_one();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(p.open(), 0);
    assert_eq!(closed(&m, "remote_closed"), 1);
}

#[tokio::test(start_paused = true)]
async fn checkout_unparks_and_release_parks_again() {
    let (p, _m) = pool(limits(4));
    let mut c = dial(&p, 1).await;
    let parked = c.conn().parked.clone();
    c.release();
    assert!(parked.load(Ordering::SeqCst));
    let c = reuse(&p, None).await.expect("reused");
    assert!(
        !parked.load(Ordering::SeqCst),
        "a busy connection is not the reaper's"
    );
    c.release();
    assert!(parked.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn keep_alive_timeout_shortens_idle_life() {
    let (p, m) = pool(limits(4));
    let mut c = dial(&p, 1).await;
    c.set_idle_timeout(S(1), CloseReason::KeepAliveTimeout);
    c.release();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(p.open(), 0);
    assert_eq!(closed(&m, "keep_alive_timeout"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_later_return_with_an_earlier_deadline_is_reaped_on_time() {
    // The reaper sleeps until the first deadline it knows; a connection returned after it with
    // a shorter Keep-Alive timeout must wake it, or it outlives what the server allows.
    let (p, m) = pool(limits(4));
    let a = dial(&p, 1).await;
    let mut b = dial(&p, 2).await;
    a.release();
    tokio::time::sleep(S(1)).await;
    b.set_idle_timeout(S(2), CloseReason::KeepAliveTimeout);
    b.release();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(p.snapshot().idle, 1, "b closed at its own deadline");
    assert_eq!(closed(&m, "keep_alive_timeout"), 1);
    // And the reaper still knows a's deadline (30 s after its release).
    tokio::time::sleep(S(27)).await;
    assert_eq!(p.snapshot().idle, 0);
    assert_eq!(closed(&m, "idle_timeout"), 1);
}

/// A learned remote limit lowers the pool's idle timeout (SPEC §11): connections already
/// parked are closed at the new deadline (SPEC §5: as soon as their idle time runs out), not
/// at the one they were parked with, and checkout hands out none idle past it.
#[tokio::test(start_paused = true)]
async fn a_lowered_idle_timeout_reaches_parked_connections_and_checkout() {
    let ms = Duration::from_millis;
    let (p, m) = pool(limits(4));
    let a = dial(&p, 1).await;
    let b = dial(&p, 2).await;
    a.release();
    tokio::time::sleep(S(3)).await;
    b.release();
    tokio::task::yield_now().await; // the reaper sleeps until a's deadline, 27 s away
    p.lower_idle_timeout(S(2));
    assert_eq!(p.snapshot().idle_timeout, S(2));
    tokio::time::sleep(ms(1)).await;
    assert_eq!(p.snapshot().idle, 1, "a, idle 3 s, closed at once");
    assert_eq!(closed(&m, "idle_timeout"), 1);
    tokio::time::sleep(ms(1900)).await;
    assert_eq!(p.snapshot().idle, 1, "b is within the lowered timeout");
    tokio::time::sleep(ms(200)).await;
    assert_eq!(
        p.snapshot().idle,
        0,
        "b closed 2 s after its return, not 30 s"
    );
    assert_eq!(closed(&m, "idle_timeout"), 2);

    // Raising is a reload's business, not a lesson's.
    p.lower_idle_timeout(S(10));
    assert_eq!(p.snapshot().idle_timeout, S(2));

    // Checkout, before the reaper had its turn: one idle past the lowered timeout is closed.
    let mut c = dial(&p, 3).await;
    c.set_idle_timeout(S(30), CloseReason::IdleTimeout);
    c.release();
    tokio::time::advance(S(1)).await;
    p.lower_idle_timeout(ms(500));
    assert!(reuse(&p, None).await.is_none(), "a dial, not the stale one");
    assert_eq!(closed(&m, "idle_timeout"), 3);

    // A reload's limits raise it again.
    p.set_limits(limits(4));
    assert_eq!(p.snapshot().idle_timeout, S(30));
}

#[tokio::test(start_paused = true)]
async fn returns_with_later_deadlines_do_not_wake_the_reaper() {
    let (p, _) = pool(limits(4));
    let a = dial(&p, 1).await;
    a.release();
    tokio::task::yield_now().await; // the reaper runs and sleeps until a's deadline
    let first = p.inner.lock().reaper_at;
    for _ in 0..3 {
        tokio::time::sleep(S(1)).await;
        reuse(&p, None).await.expect("reuse").release();
        assert_eq!(
            p.inner.lock().reaper_at,
            first,
            "a later deadline: no wake-up"
        );
    }
    // The reaper wakes at the old deadline, finds nothing due, and sleeps until the new one.
    tokio::time::sleep(S(28)).await;
    assert_eq!(p.snapshot().idle, 1);
    assert!(p.inner.lock().reaper_at > first);
}

#[tokio::test(start_paused = true)]
async fn non_retriable_requests_skip_stale_connections() {
    let (p, m) = pool(limits(1));
    dial(&p, 1).await.release();
    tokio::time::sleep(S(3)).await;
    // At the cap, with the only connection idle 3 s > 2 s: it is closed and a new one dialed.
    let slot = match p.checkout(Reuse::IdleAtMost(S(2))).await.unwrap() {
        Checkout::Dial(slot) => slot,
        Checkout::Reused(_) => panic!("a 3 s idle connection was given to a non-retriable request"),
    };
    assert_eq!(closed(&m, "pool_full"), 1);
    assert_eq!(
        p.open(),
        1,
        "the evicted connection's slot now belongs to the dial"
    );
    drop(slot);
    assert_eq!(p.open(), 0);
}

#[tokio::test(start_paused = true)]
async fn fresh_enough_connection_serves_a_non_retriable_request() {
    let (p, _) = pool(limits(2));
    dial(&p, 1).await.release();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(reuse(&p, Some(S(2))).await.is_some());
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_first_come_first_served() {
    let (p, _) = pool(limits(1));
    let held = dial(&p, 1).await;
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5u32 {
        let (p, order) = (p.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = match p
                .checkout(Reuse::Any)
                .await
                .expect("served within acquire_timeout")
            {
                Checkout::Reused(c) => c,
                Checkout::Dial(s) => s.fill(Fake::new(100 + i)),
            };
            order.lock().unwrap().push(i);
            assert_eq!(c.conn().n, 1, "the one connection is handed along");
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.release();
        }));
        // Each waiter queues before the next arrives.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(p.snapshot().waiting, 5);
    held.release();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn waiting_is_bounded_by_acquire_timeout() {
    let (p, m) = pool(limits(1));
    let _held = dial(&p, 1).await;
    let started = Instant::now();
    let r = p.checkout(Reuse::Any).await;
    assert!(matches!(r, Err(AcquireTimeout { max_connections: 1 })));
    assert_eq!(started.elapsed(), S(5));
    assert_eq!(m.acquire_timeouts.with_label_values(&["t"]).get(), 1);
    assert_eq!(p.snapshot().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_dial_frees_its_slot_for_the_next_waiter() {
    let (p, _) = pool(limits(1));
    let Checkout::Dial(slot) = p.checkout(Reuse::Any).await.unwrap() else {
        panic!()
    };
    let p2 = p.clone();
    let waiter =
        tokio::spawn(async move { matches!(p2.checkout(Reuse::Any).await, Ok(Checkout::Dial(_))) });
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(slot); // the dial failed
    assert!(waiter.await.unwrap(), "the waiter got the slot to dial");
}

#[tokio::test(start_paused = true)]
async fn dropping_without_release_closes_and_frees() {
    let (p, m) = pool(limits(2));
    let c = dial(&p, 1).await;
    drop(c);
    assert_eq!(p.open(), 0);
    assert_eq!(closed(&m, "error"), 1);
    assert_eq!(
        m.upstream_connections
            .with_label_values(&["t", "busy"])
            .get(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn discard_closes_with_its_reason() {
    let (p, m) = pool(limits(2));
    dial(&p, 1).await.discard(CloseReason::RemoteClosed);
    assert_eq!(p.open(), 0);
    assert_eq!(closed(&m, "remote_closed"), 1);
}

#[tokio::test(start_paused = true)]
async fn idle_beyond_max_idle_is_closed_oldest_first_within_a_second() {
    let mut l = limits(4);
    l.max_idle = 1;
    let (p, m) = pool(l);
    let a = dial(&p, 1).await;
    let b = dial(&p, 2).await;
    a.release();
    b.release();
    assert_eq!(closed(&m, "pool_full"), 0, "kept as surplus for a moment");
    assert_eq!(p.snapshot().idle, 2);
    tokio::time::sleep(Duration::from_millis(999)).await;
    assert_eq!(p.snapshot().idle, 2);
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(p.snapshot().idle, 1, "trimmed back to max_idle");
    assert_eq!(closed(&m, "pool_full"), 1);
    let mut c = reuse(&p, None).await.unwrap();
    assert_eq!(c.conn().n, 2, "the oldest went");
}

/// SPEC §5: a load hovering above max_idle (bursts of 6 with max_idle 2, 100 ms apart) is
/// served by the connections of the first burst; none is closed or dialed while it lasts, and
/// once it stops the surplus is trimmed within a second.
#[tokio::test(start_paused = true)]
async fn bursts_above_max_idle_reuse_the_surplus() {
    let mut l = limits(8);
    l.max_idle = 2;
    let (p, m) = pool(l);
    let opened = || m.connections_opened.with_label_values(&["t"]).get();
    for burst in 0..20 {
        let mut held = Vec::new();
        for n in 0..6 {
            held.push(match p.checkout(Reuse::Any).await.expect("no timeout") {
                Checkout::Reused(c) => c,
                Checkout::Dial(slot) => slot.fill(Fake::new(n)),
            });
        }
        for c in held {
            c.release();
        }
        assert_eq!(opened(), 6, "burst {burst} dialed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(closed(&m, "pool_full"), 0);
    assert_eq!(p.snapshot().idle, 6);
    tokio::time::sleep(Duration::from_millis(950)).await;
    assert_eq!(
        p.snapshot().idle,
        2,
        "trimmed to max_idle a second after the last burst"
    );
    assert_eq!(closed(&m, "pool_full"), 4);
    assert_eq!(p.open(), 2);
}

/// A surplus that is used keeps nothing above max_idle past its second: a level reached and
/// held is trimmed a second after it was reached, even while other connections come and go.
#[tokio::test(start_paused = true)]
async fn a_held_surplus_level_is_trimmed_a_second_after_it_was_reached() {
    let ms = Duration::from_millis;
    let mut l = limits(8);
    l.max_idle = 1;
    let (p, m) = pool(l);
    let (a, b, c) = (dial(&p, 1).await, dial(&p, 2).await, dial(&p, 3).await);
    a.release();
    b.release(); // two idle: level 2 due at 1 s
    tokio::time::sleep(ms(600)).await;
    c.release(); // level 3 due at 1.6 s
    reuse(&p, None).await.expect("c").release(); // down to 2 and up to 3 again: due at 1.6 s
    tokio::time::sleep(ms(401)).await;
    assert_eq!((p.snapshot().idle, closed(&m, "pool_full")), (2, 1));
    tokio::time::sleep(ms(600)).await;
    assert_eq!((p.snapshot().idle, closed(&m, "pool_full")), (1, 2));
    let mut last = reuse(&p, None).await.expect("the most recent");
    assert_eq!(last.conn().n, 3);
}

#[tokio::test(start_paused = true)]
async fn max_idle_zero_keeps_nothing() {
    let mut l = limits(4);
    l.max_idle = 0;
    let (p, m) = pool(l);
    dial(&p, 1).await.release();
    assert_eq!((p.open(), closed(&m, "pool_full")), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn drain_closes_idle_now_and_busy_on_return() {
    let (p, m) = pool(limits(4));
    let a = dial(&p, 1).await;
    dial(&p, 2).await.release();
    p.drain(CloseReason::Shutdown);
    assert_eq!(closed(&m, "shutdown"), 1);
    a.release();
    assert_eq!(closed(&m, "shutdown"), 2);
    assert_eq!(p.open(), 0);
}

/// SPEC §8: after a reload changes what the upstream may reach, idle connections made before
/// it close at once, busy ones after their request, and one dialed by a request still running
/// under the old config serves that request only; connections made under the new one pool.
#[tokio::test(start_paused = true)]
async fn a_new_reach_closes_connections_made_under_the_old_one() {
    let (p, m) = pool(limits(8));
    let busy = dial(&p, 1).await;
    dial(&p, 2).await.release();
    let old_handle = p.clone();
    assert!(p.set_reach(7, CloseReason::Shutdown));
    assert!(
        !p.set_reach(7, CloseReason::Shutdown),
        "no change, nothing closed"
    );
    assert_eq!(closed(&m, "shutdown"), 1, "the idle one, at once");
    assert_eq!(p.snapshot().idle, 0);
    busy.release();
    assert_eq!(closed(&m, "shutdown"), 2, "the busy one, after its request");

    // A request still holding the old config's handle dials: its connection is not pooled.
    let stale = dial(&old_handle, 3).await;
    stale.release();
    assert_eq!(closed(&m, "shutdown"), 3);
    // One under the new config is, and is reused by requests of either.
    let fresh = p.clone().for_reach(7);
    dial(&fresh, 4).await.release();
    assert_eq!(p.snapshot().idle, 1);
    let mut again = reuse(&old_handle, None).await.expect("the new connection");
    assert_eq!(again.conn().n, 4);
    again.release();
    assert_eq!(closed(&m, "shutdown"), 3);
    assert_eq!(p.open(), 1);
}

#[tokio::test(start_paused = true)]
async fn gauges_follow_the_connections() {
    let (p, m) = pool(limits(4));
    let g = |s: &str| m.upstream_connections.with_label_values(&["t", s]).get();
    let a = dial(&p, 1).await;
    let b = dial(&p, 2).await;
    assert_eq!((g("busy"), g("idle")), (2, 0));
    a.release();
    assert_eq!((g("busy"), g("idle")), (1, 1));
    drop(b);
    assert_eq!((g("busy"), g("idle")), (0, 1));
    tokio::time::sleep(S(31)).await;
    assert_eq!((g("busy"), g("idle")), (0, 0));
    assert_eq!(m.connections_opened.with_label_values(&["t"]).get(), 2);
}

#[tokio::test(start_paused = true)]
async fn raising_the_cap_lets_a_waiter_dial() {
    let (p, _) = pool(limits(1));
    let _held = dial(&p, 1).await;
    let p2 = p.clone();
    let waiter =
        tokio::spawn(async move { matches!(p2.checkout(Reuse::Any).await, Ok(Checkout::Dial(_))) });
    tokio::time::sleep(Duration::from_millis(10)).await;
    p.set_limits(limits(2));
    assert!(waiter.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn never_reuse_dials_even_when_idle_exists() {
    let (p, _) = pool(limits(2));
    dial(&p, 1).await.release();
    assert!(matches!(
        p.checkout(Reuse::Never).await,
        Ok(Checkout::Dial(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn never_reuse_waiter_handed_a_connection_dials_instead() {
    let (p, m) = pool(limits(1));
    let held = dial(&p, 1).await;
    let p2 = p.clone();
    let waiter =
        tokio::spawn(
            async move { matches!(p2.checkout(Reuse::Never).await, Ok(Checkout::Dial(_))) },
        );
    tokio::time::sleep(Duration::from_millis(10)).await;
    held.release();
    assert!(waiter.await.unwrap());
    assert_eq!(closed(&m, "pool_full"), 1);
    assert_eq!(p.open(), 0);
}

/// A request dropped while it waits in the line (its task was cut short) takes itself off the
/// `waiting` gauge and out of the line; the connection released after it goes idle.
#[tokio::test(start_paused = true)]
async fn a_wait_dropped_with_its_request_leaves_the_gauge_and_the_line() {
    let (p, m) = pool(limits(1));
    let gauge = || m.pool_waiting.with_label_values(&["t"]).get();
    let held = dial(&p, 1).await;
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move { p.checkout(Reuse::Any).await.is_ok() })
        })
        .collect();
    while p.snapshot().waiting < 3 {
        tokio::task::yield_now().await;
    }
    assert_eq!(gauge(), 3);
    for w in waiters {
        w.abort();
        assert!(w.await.unwrap_err().is_cancelled());
    }
    assert_eq!(gauge(), 0, "every wait that ended took itself off");
    assert_eq!(p.snapshot().waiting, 0);
    assert_eq!(
        p.inner.lock().waiters.queued(),
        0,
        "the line is not left full of the gone"
    );
    held.release();
    assert_eq!(p.snapshot().idle, 1);
}

/// A checkout of a full pool: queued, not (yet) waited in.
fn queue(p: &Pool<Fake>) -> Queued<'_, Fake> {
    match p.try_checkout(Reuse::Any) {
        Err(queued) => queued,
        Ok(_) => panic!("the pool is full: a checkout queues"),
    }
}

async fn until_waiting(p: &Pool<Fake>, n: usize) {
    while p.snapshot().waiting < n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_handed_to_a_waiter_as_it_gives_up_goes_to_the_next_one() {
    let (p, m) = pool(limits(1));
    let held = dial(&p, 1).await;
    // First in line, but gone before it takes what it is handed: queued, never waited in.
    let first = queue(&p);
    let second = {
        let p = p.clone();
        tokio::spawn(async move {
            match p.checkout(Reuse::Any).await.expect("served") {
                Checkout::Reused(mut c) => {
                    let n = c.conn().n;
                    c.release();
                    n
                }
                Checkout::Dial(_) => 0,
            }
        })
    };
    until_waiting(&p, 2).await;
    held.release(); // to `first`, which has not taken it
    drop(first);
    assert_eq!(
        second.await.unwrap(),
        1,
        "the released connection is handed on, not closed and dialed again"
    );
    assert_eq!(closed(&m, "error"), 0);
    assert_eq!(p.snapshot().idle, 1);
}

#[tokio::test(start_paused = true)]
async fn a_slot_handed_to_a_waiter_as_it_gives_up_goes_to_the_next_one() {
    let (p, _) = pool(limits(1));
    let held = dial(&p, 1).await;
    let first = queue(&p);
    let second = {
        let p = p.clone();
        tokio::spawn(async move { matches!(p.checkout(Reuse::Any).await, Ok(Checkout::Dial(_))) })
    };
    until_waiting(&p, 2).await;
    held.discard(CloseReason::Error); // its slot, to `first`
    drop(first);
    assert!(second.await.unwrap(), "the freed slot is handed on");
    assert_eq!(p.snapshot().waiting, 0);
}
