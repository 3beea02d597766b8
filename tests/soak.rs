//! Soak: mixed traffic with injected resets and closes for a bounded time; checks that nothing
//! leaks, memory stays flat, and every request is answered exactly once and never duplicated.
//!
//! `cargo test --test soak` runs a 10 s version; `SOAK_SECONDS=300 cargo test --release --test soak
//! -- --ignored` runs the long one.

mod support;

use std::collections::HashMap;
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

async fn soak(duration: Duration) {
    // The origin misbehaves on a schedule keyed by the request's id: resets, closes, slow replies.
    let o = origin()
        .handler(|req| {
            let id: u64 = req
                .header("x-req")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
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
    let answered: Arc<std::sync::Mutex<HashMap<u64, u16>>> = Arc::default();
    let warm_rss = rss_kib();
    let deadline = Instant::now() + duration;
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (sent, answered, proxy, port) = (sent.clone(), answered.clone(), p.addr, o.port());
        workers.push(tokio::spawn(async move {
            let mut rng = Lcg(w + 1);
            let mut conn: Option<ProxyConn> = None;
            while Instant::now() < deadline {
                let id = sent.fetch_add(1, Ordering::Relaxed) + 1;
                let method = if rng.next() % 3 == 0 { "POST" } else { "GET" };
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
                answered.lock().unwrap().insert(id, r.status);
                if rng.next() % 17 == 0 || r.closed {
                    // Some clients hang up between requests.
                    conn = None;
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    assert!(
        p.wait_idle(Duration::from_secs(10)).await,
        "connections still busy after the soak: {:?}",
        p.pools().await
    );
    let answered = answered.lock().unwrap().clone();
    let seen = o.requests();
    let mut by_id: HashMap<u64, Vec<&SeenRequest>> = HashMap::new();
    for r in &seen {
        if let Some(id) = r.header("x-req").and_then(|v| v.parse().ok()) {
            by_id.entry(id).or_default().push(r);
        }
    }
    for (id, reqs) in &by_id {
        let posts = reqs.iter().filter(|r| r.method == "POST").count();
        assert!(posts <= 1, "POST {id} reached the origin {posts} times");
        assert!(
            reqs.len() <= 2,
            "request {id} was sent {} times",
            reqs.len()
        );
    }
    let ok = answered
        .values()
        .filter(|s| **s == 200 || **s == 403)
        .count();
    let bad: Vec<_> = answered
        .iter()
        .filter(|(_, s)| !matches!(**s, 200 | 403 | 502))
        .collect();
    assert!(bad.is_empty(), "unexpected statuses: {bad:?}");
    assert!(
        ok > answered.len() * 9 / 10,
        "{ok} of {} succeeded",
        answered.len()
    );
    assert!(
        answered.len() > 100,
        "only {} requests in {duration:?}",
        answered.len()
    );
    let end_rss = rss_kib();
    // Flat memory: after warm-up the process must not grow by more than 64 MiB over the run.
    assert!(
        end_rss < warm_rss + 64 * 1024,
        "RSS grew from {warm_rss} KiB to {end_rss} KiB"
    );
    let gauges = p
        .metric("portcullis_upstream_connections", "state=\"busy\"")
        .await;
    assert_eq!(gauges, 0.0, "busy gauge back to zero");
    eprintln!(
        "soak: {} requests, {} ok, {} upstream sends, rss {} -> {} KiB",
        answered.len(),
        ok,
        seen.len(),
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
