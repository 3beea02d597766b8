//! Soak: mixed traffic with injected resets and closes for a bounded time; checks that nothing
//! leaks, memory stays flat, and every request is answered exactly once and never duplicated.
//!
//! `cargo test --test soak` runs a 10 s version; `SOAK_SECONDS=300 cargo test --release --test soak
//! -- --ignored` runs the long one.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::time::Instant;

/// Resident set size of this process, in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A small deterministic generator, so a failing run can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Sends of each request id seen by the origin, indexed by id (ids are sequential).
#[derive(Default)]
struct Sends {
    total: Vec<u8>,
    posts: Vec<u8>,
}

impl Sends {
    fn note(&mut self, id: usize, post: bool) {
        if self.total.len() <= id {
            self.total.resize(id + 1024, 0);
            self.posts.resize(id + 1024, 0);
        }
        self.total[id] = self.total[id].saturating_add(1);
        if post {
            self.posts[id] = self.posts[id].saturating_add(1);
        }
    }
}

async fn soak(duration: Duration) {
    let sends: Arc<std::sync::Mutex<Sends>> = Arc::default();
    let noted = sends.clone();
    // The origin misbehaves on a schedule keyed by the request's id: resets, closes, big bodies.
    // It keeps no request log (memory is measured); sends are counted per id instead.
    let o = origin()
        .forget_requests()
        .handler(move |req| {
            let id: usize = req
                .header("x-req")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            noted.lock().unwrap().note(id, req.method == "POST");
            match id % 23 {
                0 if req.conn_request_index > 0 => Reply::reset_without_answer(),
                5 => Reply::ok("bye").close(),
                7 => Reply::status(403, vec![b'x'; 4096]),
                11 => Reply::ok(vec![b'y'; 64 * 1024]).chunked(),
                _ => Reply::ok("ok"),
            }
        })
        .spawn()
        .await;
    let upstream = local_upstream(
        "soak",
        o.port(),
        "max_connections = 8\nidle_timeout = \"2s\"\nmax_lifetime = \"5s\"\nacquire_timeout = \"10s\"",
    );
    let p = spawn_proxy(&upstream).await;
    let sent = Arc::new(AtomicU64::new(0));
    // Status per id, 0 = no answer (indexed like `Sends`).
    let answered: Arc<std::sync::Mutex<Vec<u16>>> = Arc::default();
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (sent, answered, proxy, port) = (sent.clone(), answered.clone(), p.addr, o.port());
        workers.push(tokio::spawn(async move {
            let mut rng = Lcg(w + 1);
            let mut conn: Option<ProxyConn> = None;
            while Instant::now() < deadline {
                let id = sent.fetch_add(1, Ordering::Relaxed) + 1;
                let method = if rng.next().is_multiple_of(3) { "POST" } else { "GET" };
                let req = format!(
                    "{method} http://127.0.0.1:{port}/s/{id} HTTP/1.1\r\nHost: x\r\nX-Req: {id}\r\nContent-Length: 2\r\n\r\nhi"
                );
                if conn.is_none() {
                    conn = Some(ProxyConn::connect(proxy).await);
                }
                let Some(c) = conn.as_mut() else { continue };
                let r = c.send(req.as_bytes()).await;
                if r.status == 0 {
                    conn = None;
                    continue;
                }
                {
                    let mut a = answered.lock().unwrap();
                    let id = id as usize;
                    if a.len() <= id {
                        a.resize(id + 1024, 0);
                    }
                    a[id] = r.status;
                }
                if rng.next().is_multiple_of(17) || r.closed {
                    // Some clients hang up between requests.
                    conn = None;
                }
            }
        }));
    }
    // Memory is judged after a warm-up (pools, buffers and allocator arenas filled).
    tokio::time::sleep(duration / 5).await;
    let warm_rss = rss_kib();
    for w in workers {
        w.await.expect("worker");
    }
    assert!(
        p.wait_idle(Duration::from_secs(10)).await,
        "connections still busy after the soak: {:?}",
        p.pools().await
    );
    // Read the tables and let go of their locks before awaiting anything again.
    let upstream_sends = {
        let sends = sends.lock().unwrap();
        for (id, (&total, &posts)) in sends.total.iter().zip(&sends.posts).enumerate() {
            assert!(posts <= 1, "POST {id} reached the origin {posts} times");
            assert!(total <= 2, "request {id} was sent {total} times");
        }
        sends.total.iter().map(|n| *n as u64).sum::<u64>()
    };
    let statuses: Vec<u16> = answered
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|s| *s != 0)
        .collect();
    let ok = statuses.iter().filter(|s| matches!(**s, 200 | 403)).count();
    let bad: Vec<_> = statuses
        .iter()
        .filter(|s| !matches!(**s, 200 | 403 | 502))
        .collect();
    assert!(bad.is_empty(), "unexpected statuses: {bad:?}");
    assert!(
        ok > statuses.len() * 9 / 10,
        "{ok} of {} succeeded",
        statuses.len()
    );
    assert!(
        statuses.len() > 100,
        "only {} requests in {duration:?}",
        statuses.len()
    );
    let end_rss = rss_kib();
    // Flat memory after warm-up: growth bounded by 32 MiB however long the run.
    assert!(
        end_rss < warm_rss + 32 * 1024,
        "RSS grew from {warm_rss} KiB after warm-up to {end_rss} KiB"
    );
    let gauges = p
        .metric("portcullis_upstream_connections", "state=\"busy\"")
        .await;
    assert_eq!(gauges, 0.0, "busy gauge back to zero");
    eprintln!(
        "soak: {} requests in {:?}, {} ok, {} upstream sends, rss {} KiB after warm-up, {} KiB at end",
        statuses.len(),
        started.elapsed(),
        ok,
        upstream_sends,
        warm_rss,
        end_rss
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_short() {
    soak(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long soak: SOAK_SECONDS=300 cargo test --release --test soak -- --ignored"]
async fn soak_long() {
    let secs = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    soak(Duration::from_secs(secs)).await;
}
