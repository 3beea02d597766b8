//! Registry tests: vacant pools are forgotten (and their reapers end), held ones never, one pool per destination.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::pool::{Checkout, Reuse};
use crate::target::Host;

/// A connection that counts how many of its destination's are open at once.
struct Fake {
    open: Arc<AtomicUsize>,
}

impl Fake {
    fn new(open: &Arc<AtomicUsize>) -> Fake {
        open.fetch_add(1, Ordering::SeqCst);
        Fake { open: open.clone() }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Poolable for Fake {
    fn is_open(&mut self) -> bool {
        true
    }
}

fn config(extra: &str) -> Config {
    let text = format!(
        "[[upstream]]\nname = \"a\"\nhosts = [\"*.a.test\"]\n{extra}\n\
         [[upstream]]\nname = \"b\"\nhosts = [\"*.b.test\"]\n{extra}\n"
    );
    Config::from_toml(&text, "registry-test.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn target(name: &str) -> Target {
    Target {
        host: Host::Name(name.to_string()),
        port: 443,
        tls: true,
    }
}

async fn slot(pool: &Pool<Fake>) -> crate::pool::Slot<Fake> {
    match pool.checkout(Reuse::Any).await {
        Ok(Checkout::Dial(slot)) => slot,
        Ok(Checkout::Reused(_)) => panic!("expected a dial"),
        Err(e) => panic!("{e:?}"),
    }
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Lets reapers that were told to stop run to their end (bounded); the tasks left alive.
async fn settle(baseline: usize) -> usize {
    for _ in 0..1000 {
        if alive_tasks() <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    alive_tasks()
}

#[tokio::test(start_paused = true)]
async fn a_request_that_never_dialed_leaves_nothing() {
    let c = config("");
    let pools: Pools<Fake> = Pools::new(Metrics::new());
    let baseline = alive_tasks();
    let u = c.upstream("a").unwrap();
    let pool = pools.get(u, &target("x.a.test"));
    let s = slot(&pool).await;
    assert_eq!(pools.len(), 1);
    drop(s); // the name did not resolve, or resolved to a denied address
    assert_eq!(pools.len(), 1, "the request still holds its pool");
    let weak = Arc::downgrade(&pool.inner);
    drop(pool);
    assert!(pools.is_empty(), "a vacant pool is forgotten at once");
    assert!(weak.upgrade().is_none(), "and dropped");
    assert_eq!(settle(baseline).await, baseline, "its reaper ended");
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_keeps_its_pool_until_the_reaper_closes_it() {
    let c = config("idle_timeout = \"30s\"");
    let pools: Pools<Fake> = Pools::new(Metrics::new());
    let baseline = alive_tasks();
    let open = Arc::new(AtomicUsize::new(0));
    let pool = pools.get(c.upstream("a").unwrap(), &target("x.a.test"));
    slot(&pool).await.fill(Fake::new(&open)).release();
    let weak = Arc::downgrade(&pool.inner);
    drop(pool);
    assert_eq!(pools.len(), 1, "kept for its idle connection");
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(pools.len(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(settle(baseline).await, baseline, "its reaper ended");
    assert_eq!(
        open.load(Ordering::SeqCst),
        0,
        "the idle connection was closed"
    );
    assert!(pools.is_empty(), "then the pool was forgotten");
    assert!(weak.upgrade().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_busy_connection_closed_after_its_request_forgets_the_pool() {
    let c = config("");
    let pools: Pools<Fake> = Pools::new(Metrics::new());
    let open = Arc::new(AtomicUsize::new(0));
    let pool = pools.get(c.upstream("a").unwrap(), &target("x.a.test"));
    let busy = slot(&pool).await.fill(Fake::new(&open));
    drop(pool);
    assert_eq!(pools.len(), 1, "a busy connection keeps it");
    busy.discard(crate::metrics::CloseReason::Error);
    assert!(pools.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_held_pool_is_never_forgotten_and_stays_the_only_one() {
    let c = config("");
    let pools: Pools<Fake> = Pools::new(Metrics::new());
    let u = c.upstream("a").unwrap();
    let first = pools.get(u, &target("x.a.test"));
    let second = pools.get(u, &target("x.a.test"));
    assert!(Arc::ptr_eq(&first.inner, &second.inner));
    drop(slot(&first).await);
    drop(first);
    assert_eq!(pools.len(), 1, "the second request still holds it");
    let third = pools.get(u, &target("x.a.test"));
    assert!(Arc::ptr_eq(&second.inner, &third.inner), "no second pool");
    drop(second);
    drop(third);
    assert!(pools.is_empty());
}

/// A destination moved to another upstream by a reload gets a new pool; when the old one
/// (drained) empties, its vacancy must not remove the new one.
#[tokio::test(start_paused = true)]
async fn a_replaced_pool_does_not_forget_its_successor() {
    let pools: Pools<Fake> = Pools::new(Metrics::new());
    let open = Arc::new(AtomicUsize::new(0));
    let a = config("");
    let moved = Config::from_toml(
        "[[upstream]]\nname = \"b\"\nhosts = [\"*.a.test\"]\n",
        "moved.toml",
    )
    .unwrap();
    let old = pools.get(a.upstream("a").unwrap(), &target("x.a.test"));
    let busy = slot(&old).await.fill(Fake::new(&open));
    let new = pools.get(moved.upstream("b").unwrap(), &target("x.a.test"));
    assert!(!Arc::ptr_eq(&old.inner, &new.inner));
    drop(old);
    busy.release(); // closed: its pool was drained
    assert_eq!(open.load(Ordering::SeqCst), 0);
    assert_eq!(pools.len(), 1, "the new pool stays while held");
    let snapshot = pools.snapshot();
    assert_eq!(&*snapshot[0].0.upstream, "b");
    drop(new);
    assert!(pools.is_empty());
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_names_seen_once_leave_nothing() {
    let c = config("");
    let pools: Pools<Fake> = Pools::new(Metrics::new());
    let baseline = alive_tasks();
    let u = c.upstream("a").unwrap();
    for i in 0..10_000 {
        let pool = pools.get(u, &target(&format!("n{i}.a.test")));
        drop(slot(&pool).await);
    }
    assert!(pools.is_empty());
    assert_eq!(settle(baseline).await, baseline, "every reaper ended");
}

/// Many requests on a few destinations, on several threads, each holding its pool across
/// awaits while others drop theirs: a destination never has two pools at once, so its one
/// connection cap holds throughout; and at the end nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_requests_never_make_two_pools_for_one_destination() {
    let c = Arc::new(config("max_connections = 1\nacquire_timeout = \"30s\""));
    let pools: Arc<Pools<Fake>> = Arc::new(Pools::new(Metrics::new()));
    let open: Arc<Vec<Arc<AtomicUsize>>> =
        Arc::new((0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect());
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..16usize {
        let (c, pools, open, peak) = (c.clone(), pools.clone(), open.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..300usize {
                let d = (t + i) % open.len();
                let pool = pools.get(c.upstream("a").unwrap(), &target(&format!("d{d}.a.test")));
                let conn = match pool.checkout(Reuse::Any).await {
                    Ok(Checkout::Dial(slot)) => {
                        if i % 3 == 0 {
                            // A failed dial.
                            drop(slot);
                            continue;
                        }
                        slot.fill(Fake::new(&open[d]))
                    }
                    Ok(Checkout::Reused(conn)) => conn,
                    Err(e) => panic!("{e:?}"),
                };
                peak.fetch_max(open[d].load(Ordering::SeqCst), Ordering::SeqCst);
                tokio::task::yield_now().await;
                if i % 2 == 0 {
                    conn.discard(crate::metrics::CloseReason::Error);
                } else {
                    conn.release();
                }
                drop(pool);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        1,
        "one connection per destination at most"
    );
    // What is left: a pool per destination with an idle connection, and nothing else.
    assert!(pools.len() <= open.len());
    assert_eq!(
        pools.open(),
        open.iter().map(|o| o.load(Ordering::SeqCst)).sum::<usize>()
    );
}
