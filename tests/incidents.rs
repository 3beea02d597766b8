//! The incidents portcullis exists for (issue 3, SPEC §5–§6), replayed over real sockets; each has a twin proving the fixture reproduces it.

mod support;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use support::*;

// ------------------------------------------------------------------ helpers

fn proxy_status(r: &RawResponse) -> &str {
    r.header("proxy-status").unwrap_or_default()
}

async fn retries_for(p: &Proxy, upstream: &str, reason: &str) -> f64 {
    p.metric(
        "portcullis_retries_total",
        &format!("upstream=\"{upstream}\",reason=\"{reason}\""),
    )
    .await
}

/// Polls a metric until it reaches `at_least` (bounded); returns the last value seen.
async fn metric_reaches(
    p: &Proxy,
    name: &str,
    labels: &str,
    at_least: f64,
    within: Duration,
) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = p.metric(name, labels).await;
        if v >= at_least || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ------------------------------------------------ 1. stale pooled connections

/// The provider's firewall in the tests: forgets a flow idle this long, RSTs its next bytes.
const FIREWALL_LIMIT: Duration = Duration::from_millis(400);
/// How long a pause that must outlast the firewall's memory may take: the tests wait for the
/// firewall to say it forgot the flow rather than sleeping a fixed time past its limit.
const FORGETS_WITHIN: Duration = Duration::from_secs(10);

/// An origin behind the forgetful firewall, and portcullis in front with `settings`.
struct Provider {
    origin: Origin,
    firewall: Firewall,
    proxy: Proxy,
}

impl Provider {
    async fn spawn(settings: &str) -> Provider {
        Provider::behind(FIREWALL_LIMIT, settings).await
    }

    /// The same behind a firewall that forgets flows idle `limit`.
    async fn behind(limit: Duration, settings: &str) -> Provider {
        let origin = origin()
            .handler(|r| Reply::ok(format!("{} {} {}", r.method, r.target, r.body_text())))
            .spawn()
            .await;
        let firewall = Firewall::spawn(origin.addr, limit).await;
        let proxy = spawn_proxy(&local_upstream("provider", firewall.addr.port(), settings)).await;
        Provider {
            origin,
            firewall,
            proxy,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.firewall.addr)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Get,
    KeyedPost,
    PlainPost,
}

/// A deterministic pseudo-random schedule: (gap before the request, kind). Knuth's MMIX LCG.
fn schedule() -> Vec<(Duration, Kind)> {
    let mut x: u64 = 0x5eed_cafe;
    let kinds = [Kind::Get, Kind::KeyedPost, Kind::PlainPost];
    (0..15)
        .map(|i| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (Duration::from_millis((x >> 33) % 701), kinds[i % 3])
        })
        .collect()
}

/// Runs the schedule through one keep-alive client connection (reopened only if the proxy
/// closes it); returns each request's status.
async fn run_schedule(p: &Provider) -> Vec<u16> {
    run_schedule_of(p, schedule()).await
}

async fn run_schedule_of(p: &Provider, schedule: Vec<(Duration, Kind)>) -> Vec<u16> {
    let mut conn = ProxyConn::connect(p.proxy.addr).await;
    let mut statuses = Vec::new();
    for (i, (gap, kind)) in schedule.into_iter().enumerate() {
        tokio::time::sleep(gap).await;
        let path = format!("/step/{i}");
        let url = p.url(&path);
        let body = format!("payment-{i}");
        let key = format!("key-{i}");
        let req = match kind {
            Kind::Get => request("GET", &url, &[], b""),
            Kind::KeyedPost => request(
                "POST",
                &url,
                &[("Idempotency-Key", key.as_str())],
                body.as_bytes(),
            ),
            Kind::PlainPost => request("POST", &url, &[], body.as_bytes()),
        };
        let resp = conn.send(&req).await;
        statuses.push(resp.status);
        if resp.closed || resp.status == 0 {
            conn = ProxyConn::connect(p.proxy.addr).await;
        }
    }
    statuses
}

#[test]
fn the_schedule_crosses_the_firewall_limit_both_ways() {
    let gaps: Vec<Duration> = schedule().into_iter().map(|(g, _)| g).collect();
    assert!(
        gaps.iter()
            .filter(|g| **g > FIREWALL_LIMIT + Duration::from_millis(25))
            .count()
            >= 3,
        "{gaps:?}"
    );
    assert!(
        gaps.iter()
            .filter(|g| **g < Duration::from_millis(200))
            .count()
            >= 2,
        "{gaps:?}"
    );
}

/// Idle time and lifetime below the firewall's limit: no request ever meets a forgotten flow.
#[tokio::test]
async fn stale_connections_never_reach_the_firewall_when_idle_timeout_is_below_its_limit() {
    let p = Provider::spawn("idle_timeout = \"100ms\"\nmax_lifetime = \"1s\"").await;
    let statuses = run_schedule(&p).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(p.proxy.retries("provider").await, 0.0);
    assert_eq!(
        p.firewall.resets_sent(),
        0,
        "a request met a forgotten flow"
    );
    assert_eq!(
        p.firewall.flows_forgotten(),
        0,
        "a pooled connection outlived the firewall's idle limit"
    );
    // Each request reached the origin exactly once, in order, and pooling did happen.
    let targets: Vec<String> = p.origin.requests().into_iter().map(|r| r.target).collect();
    let want: Vec<String> = (0..schedule().len())
        .map(|i| format!("/step/{i}"))
        .collect();
    assert_eq!(targets, want);
    assert!(
        p.origin.connections_accepted() < want.len(),
        "no connection was ever reused ({} for {} requests)",
        p.origin.connections_accepted(),
        want.len()
    );
    assert!(p.proxy.closed_for("provider", "idle_timeout").await >= 1.0);
    p.proxy.stop().await;
}

/// The twin: idle_timeout above the limit and no retries — the same schedule meets resets.
#[tokio::test]
async fn without_the_guards_the_same_schedule_meets_the_firewall_resets() {
    let p = Provider::spawn("idle_timeout = \"5s\"\nretry_on_reset = false").await;
    let statuses = run_schedule(&p).await;
    let failed = statuses.iter().filter(|s| **s == 502).count();
    assert!(failed >= 1, "the firewall never bit: {statuses:?}");
    assert!(p.firewall.resets_sent() >= failed, "{statuses:?}");
    p.proxy.stop().await;
}

/// idle_timeout too long: GET and keyed POST meet a forgotten flow, are retried once on a new
/// connection and succeed; the origin sees each exactly once. A plain POST after the same
/// pause is dialed fresh (unsafe_reuse_max_idle) and also seen once.
#[tokio::test]
async fn too_long_idle_timeout_is_absorbed_by_retries_and_fresh_dials() {
    let p = Provider::spawn("idle_timeout = \"5s\"\nunsafe_reuse_max_idle = \"200ms\"").await;
    let mut conn = ProxyConn::connect(p.proxy.addr).await;
    assert_eq!(conn.get(&p.url("/warm")).await.status, 200);

    // Each pause lasts until the firewall has forgotten the pooled flow (its 400 ms and then
    // some); the proxy's idle_timeout (5 s) is 12x that, so it never closes the flow first.
    assert!(p.firewall.wait_for_forgotten(1, FORGETS_WITHIN).await);
    let r = conn.get(&p.url("/get")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_text(), "GET /get ");
    assert_eq!(
        retries_for(&p.proxy, "provider", "reset_after_write").await,
        1.0
    );
    assert_eq!(p.firewall.resets_sent(), 1);

    // The GET's retry dialed flow 2, pooled after it.
    assert!(p.firewall.wait_for_forgotten(2, FORGETS_WITHIN).await);
    let r = conn
        .send(&request(
            "POST",
            &p.url("/keyed"),
            &[("Idempotency-Key", "k-1")],
            b"amount=10",
        ))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        retries_for(&p.proxy, "provider", "reset_after_write").await,
        2.0
    );
    assert_eq!(p.firewall.resets_sent(), 2);

    // Flow 3 forgotten: idle at least the firewall's 400 ms, past unsafe_reuse_max_idle
    // (200 ms). A slow machine only makes the pause longer, never shorter.
    assert!(p.firewall.wait_for_forgotten(3, FORGETS_WITHIN).await);
    let accepted_before = p.origin.connections_accepted();
    let r = conn
        .send(&request("POST", &p.url("/plain"), &[], b"amount=20"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        p.proxy.retries("provider").await,
        2.0,
        "the plain POST was not retried"
    );
    assert_eq!(
        p.firewall.resets_sent(),
        2,
        "the plain POST met no forgotten flow"
    );
    assert_eq!(
        p.origin.connections_accepted(),
        accepted_before + 1,
        "dialed fresh"
    );

    for (target, body) in [
        ("/get", ""),
        ("/keyed", "amount=10"),
        ("/plain", "amount=20"),
    ] {
        let s = seen(&p.origin, target);
        assert_eq!(s.len(), 1, "{target} reached the origin {} times", s.len());
        assert_eq!(s[0].body_text(), body);
    }
    assert_eq!(
        seen(&p.origin, "/keyed")[0].header("idempotency-key"),
        Some("k-1")
    );
    p.proxy.stop().await;
}

/// With unsafe_reuse_max_idle too long, the plain POST does go onto the forgotten flow: it is
/// answered 502 and never replayed — the origin does not see it at all, let alone twice.
#[tokio::test]
async fn a_plain_post_on_a_forgotten_flow_is_answered_502_never_sent_twice() {
    let p = Provider::spawn("idle_timeout = \"5s\"\nunsafe_reuse_max_idle = \"10s\"").await;
    let mut conn = ProxyConn::connect(p.proxy.addr).await;
    assert_eq!(conn.get(&p.url("/warm")).await.status, 200);
    assert!(p.firewall.wait_for_forgotten(1, FORGETS_WITHIN).await);
    let r = conn
        .send(&request("POST", &p.url("/pay"), &[], b"amount=30"))
        .await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        proxy_status(&r).contains("error=connection_terminated"),
        "{r:?}"
    );
    assert_eq!(p.proxy.retries("provider").await, 0.0);
    assert_eq!(p.firewall.resets_sent(), 1);
    assert_eq!(
        seen(&p.origin, "/pay").len(),
        0,
        "the firewall never delivered it"
    );
    p.proxy.stop().await;
}

/// The twin of the retry test: retry_on_reset = false, and the GET after the pause fails.
#[tokio::test]
async fn without_retries_a_get_on_a_forgotten_flow_fails() {
    let p = Provider::spawn("idle_timeout = \"5s\"\nretry_on_reset = false").await;
    let mut conn = ProxyConn::connect(p.proxy.addr).await;
    assert_eq!(conn.get(&p.url("/warm")).await.status, 200);
    assert!(p.firewall.wait_for_forgotten(1, FORGETS_WITHIN).await);
    let r = conn.get(&p.url("/get")).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        proxy_status(&r).contains("error=connection_terminated"),
        "{r:?}"
    );
    assert_eq!(p.firewall.resets_sent(), 1);
    assert!(seen(&p.origin, "/get").is_empty());
    p.proxy.stop().await;
}

// ------------------------------- 1b. the same incident with nothing tuned (SPEC §11)

/// A firewall limit portcullis can learn: a stale reuse below 1 s teaches nothing (SPEC §11),
/// so the 400 ms firewall above never could be. 2 s is also the SPEC's default
/// `unsafe_reuse_max_idle`: a plain POST after a longer gap goes out on a new connection.
const LEARNABLE_LIMIT: Duration = Duration::from_secs(2);
/// The gap bands of the learning schedule: well below the limit, or well past it (and past
/// 80 % of any idle time learned from a gap in the same band, up to 3.5 s).
const SHORT_GAPS: std::ops::RangeInclusive<u64> = 0..=1200;
const LONG_GAPS: std::ops::RangeInclusive<u64> = 2800..=3600;

/// The incident-1 schedule at the scale of a learnable limit: 24 requests (GET, keyed POST,
/// plain POST in turn), each after a gap drawn (the same LCG) from the short or long band.
fn learning_schedule() -> Vec<(Duration, Kind)> {
    let mut x: u64 = 0x5eed_cafe;
    let kinds = [Kind::Get, Kind::KeyedPost, Kind::PlainPost];
    (0..24)
        .map(|i| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let r = x >> 33;
            let band = if r & 1 == 1 { LONG_GAPS } else { SHORT_GAPS };
            let span = band.end() - band.start() + 1;
            let gap = band.start() + (r >> 1) % span;
            (Duration::from_millis(gap), kinds[i % 3])
        })
        .collect()
}

/// Retriable requests after a long gap: each meets a forgotten flow unless a limit was learned.
fn long_retriable_gaps() -> usize {
    learning_schedule()
        .iter()
        .filter(|(gap, kind)| {
            gap.as_millis() as u64 >= *LONG_GAPS.start() && *kind != Kind::PlainPost
        })
        .count()
}

#[test]
fn the_learning_schedule_stays_clear_of_the_limit() {
    let s = learning_schedule();
    for (gap, _) in &s {
        let ms = gap.as_millis() as u64;
        assert!(
            SHORT_GAPS.contains(&ms) || LONG_GAPS.contains(&ms),
            "{gap:?}"
        );
    }
    assert!(long_retriable_gaps() >= 6, "{s:?}");
    assert!(
        s.iter().filter(|(g, _)| *g < LEARNABLE_LIMIT).count() >= 6,
        "{s:?}"
    );
}

/// What one run of the learning schedule came to.
#[derive(Debug)]
struct Run {
    resets: usize,
    failed: usize,
    /// Requests the origin saw more than once (a payment sent twice).
    duplicates: usize,
}

async fn reproduce(settings: &str) -> Run {
    let p = Provider::behind(LEARNABLE_LIMIT, settings).await;
    let statuses = run_schedule_of(&p, learning_schedule()).await;
    let mut targets: Vec<String> = p.origin.requests().into_iter().map(|r| r.target).collect();
    let seen = targets.len();
    targets.sort();
    targets.dedup();
    let run = Run {
        resets: p.firewall.resets_sent(),
        failed: statuses.iter().filter(|s| **s != 200).count(),
        duplicates: seen - targets.len(),
    };
    assert_eq!(
        targets.len(),
        learning_schedule().len(),
        "a request never arrived: {run:?}"
    );
    p.proxy.stop().await;
    run
}

/// Incident 1 with SPEC defaults and no `remote_idle_limit`: today's behaviour
/// (`learn_idle_limit = false`) meets one reset per retriable request after a gap past the
/// firewall's limit, absorbed by retries; with the default, the first stale reuse teaches the
/// limit and the resets stop. Both runs at once; the figures are printed:
/// `cargo test --test incidents learned -- --nocapture`.
#[tokio::test]
async fn with_nothing_tuned_the_firewall_limit_is_learned_and_resets_stop() {
    let (before, after) = tokio::join!(reproduce("learn_idle_limit = false"), reproduce(""));
    eprintln!(
        "incident 1, SPEC defaults, {} requests, firewall limit {LEARNABLE_LIMIT:?}, {} retriable \
         after a gap past it: learn_idle_limit = false {before:?}; learn_idle_limit = true {after:?}",
        learning_schedule().len(),
        long_retriable_gaps(),
    );
    assert_eq!(before.resets, long_retriable_gaps(), "{before:?}");
    assert!(after.resets <= 3, "{after:?}");
    assert!(after.resets >= 1, "the firewall never bit: {after:?}");
    for run in [&before, &after] {
        assert_eq!((run.failed, run.duplicates), (0, 0), "{run:?}");
    }
}

// ------------------------------------------------------- 2. connection leak

const HTML_403: usize = 4096;
const BIG: usize = 5 * 1024 * 1024;

fn leaky_origin() -> OriginBuilder {
    origin().handler(|r| match r.target.as_str() {
        "/big" => Reply::ok(vec![b'x'; BIG]),
        "/close" => Reply::close_without_answer(),
        "/reset" => Reply::reset_without_answer(),
        "/cut" => Reply::ok(vec![b'c'; 64 * 1024]).close_mid_body(),
        "/ok" => Reply::ok("fine"),
        _ => Reply::status(403, html(HTML_403)).header("Content-Type", "text/html"),
    })
}

fn html(len: usize) -> Vec<u8> {
    let (open, close) = (
        "<!doctype html><html><body><h1>Forbidden</h1><p>",
        "</p></body></html>",
    );
    let mut page = open.as_bytes().to_vec();
    page.resize(len - close.len(), b'.');
    page.extend_from_slice(close.as_bytes());
    page
}

/// Connects, sends a GET for `path`, reads at least `want` bytes (or until the proxy closes),
/// then hangs up — with an RST when `rst`. Returns the status from the first line (0 if none).
async fn hit_and_run(proxy: SocketAddr, url: &str, want: usize, rst: bool) -> u16 {
    let work = async {
        let mut s = TcpStream::connect(proxy).await?;
        s.write_all(&request("GET", url, &[], b"")).await?;
        let mut first = Vec::new();
        let mut total = 0;
        let mut buf = vec![0u8; 16 * 1024];
        while total < want {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if first.len() < 12 {
                first.extend_from_slice(&buf[..n.min(12 - first.len())]);
            }
            total += n;
        }
        if rst {
            reset_on_drop(&s);
        }
        drop(s);
        Ok::<_, io::Error>(status_of(&first))
    };
    match tokio::time::timeout(Duration::from_secs(10), work).await {
        Ok(Ok(status)) => status,
        Ok(Err(_)) | Err(_) => 0,
    }
}

fn status_of(bytes: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(12)]).into_owned();
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Hundreds of unread 403s, aborted downloads, origins that close or reset or cut a body:
/// afterwards nothing is busy, no slot is lost, and a normal request is served at once.
#[tokio::test]
async fn no_path_leaks_a_connection() {
    let o = leaky_origin().spawn().await;
    let p = spawn_proxy(&local_upstream(
        "leaky",
        o.port(),
        "max_connections = 4\nmax_idle = 4\nacquire_timeout = \"3s\"",
    ))
    .await;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    for i in 0..300usize {
        let (path, want, expect) = match i % 15 {
            0 | 7 => ("/big", 64 * 1024, 200),
            1 => ("/close", 12, 502),
            2 => ("/reset", 12, 502),
            3 => ("/cut", 12, 200),
            _ => ("/forbidden", 12, 403),
        };
        let url = o.url(path);
        let permit = gate.clone().acquire_owned().await.expect("open semaphore");
        let proxy = p.addr;
        tasks.spawn(async move {
            let _permit = permit;
            let status = hit_and_run(proxy, &url, want, i % 2 == 0).await;
            (i, path, expect, status)
        });
    }
    let mut wrong = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (i, path, expect, status) = done.expect("client task");
        if status != expect {
            wrong.push((i, path, expect, status));
        }
    }
    assert!(wrong.is_empty(), "unexpected statuses: {wrong:?}");
    let storm = started.elapsed();

    assert!(
        p.wait_idle(Duration::from_secs(2)).await,
        "connections still busy after the storm: {}",
        p.pools().await
    );
    assert_eq!(p.busy().await, 0);
    // The origin notices the proxy's closes a moment later.
    assert!(
        eventually(Duration::from_secs(2), || o.open_connections() <= 4).await,
        "{} open at the origin",
        o.open_connections()
    );

    // Served, not refused: with a slot lost for good it would be 503 after acquire_timeout
    // (and counted below); no stopwatch needed.
    let mut conn = ProxyConn::connect(p.addr).await;
    let r = conn.get(&o.url("/ok")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        p.metric(
            "portcullis_pool_acquire_timeouts_total",
            "upstream=\"leaky\""
        )
        .await,
        0.0
    );
    assert!(p.wait_idle(Duration::from_secs(2)).await);
    eprintln!("storm of 300 took {storm:?}");
    p.stop().await;
}

/// The twin: clients that stop reading but keep their sockets open do hold connections —
/// the same measures see them busy and the next request times out; hanging up frees them.
#[tokio::test]
async fn stalled_readers_hold_connections_until_they_hang_up() {
    const HUGE: usize = 64 * 1024 * 1024;
    let o = origin()
        .handler(|r| match r.target.as_str() {
            "/huge" => Reply::ok(vec![b'h'; HUGE]),
            _ => Reply::ok("fine"),
        })
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream(
        "stall",
        o.port(),
        "max_connections = 2\nmax_idle = 2\nacquire_timeout = \"300ms\"",
    ))
    .await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        s.write_all(&request("GET", &o.url("/huge"), &[], b""))
            .await
            .expect("write");
        let mut buf = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("first bytes in time")
            .expect("read");
        assert_eq!(status_of(&buf[..n]), 200);
        stalled.push(s);
    }
    assert!(!p.wait_idle(Duration::from_millis(500)).await);
    assert_eq!(p.busy().await, 2);
    let r = proxy_get(p.addr, &o.url("/ok")).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(proxy_status(&r).contains("error=connection_limit_reached"));
    assert_eq!(
        p.metric(
            "portcullis_pool_acquire_timeouts_total",
            "upstream=\"stall\""
        )
        .await,
        1.0
    );

    for s in stalled {
        reset_on_drop(&s);
    }
    assert!(
        p.wait_idle(Duration::from_secs(2)).await,
        "{}",
        p.pools().await
    );
    assert_eq!(proxy_get(p.addr, &o.url("/ok")).await.status, 200);
    p.stop().await;
}

/// The leak incident's churn against `max_connections = 8`, with three clients per slot so
/// that every freed slot has a waiter who dials at once: the origin never has more than 8
/// connections open, counted as the kernel sees them at each accept (SPEC §5: a connection
/// counts until its socket is closed, not merely until the pool forgets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cap_holds_at_the_origin_while_connections_close() {
    const CAP: usize = 8;
    // Bodies larger than the socket buffers: a client that hangs up after the status line
    // leaves the proxy mid-response, which must then close the upstream connection.
    let o = origin()
        .handler(|r| match r.target.as_str() {
            "/big" => Reply::ok(vec![b'x'; BIG]),
            "/close" => Reply::close_without_answer(),
            "/reset" => Reply::reset_without_answer(),
            "/ok" => Reply::ok("fine"),
            _ => Reply::status(403, html(512 * 1024)).header("Content-Type", "text/html"),
        })
        .count_open_at_accept()
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream(
        "leaky",
        o.port(),
        &format!("max_connections = {CAP}\nmax_idle = {CAP}\nacquire_timeout = \"10s\""),
    ))
    .await;
    let mut tasks = JoinSet::new();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(3 * CAP));
    for i in 0..480usize {
        // Hang-ups after the status line, aborted downloads, origins that close or reset
        // without answering, and some requests that end normally.
        let (path, want, expect) = match i % 12 {
            0 | 6 => ("/big", 64 * 1024, 200),
            1 => ("/close", 12, 502),
            2 => ("/reset", 12, 502),
            3 => ("/ok", 12, 200),
            _ => ("/forbidden", 12, 403),
        };
        let url = o.url(path);
        let permit = gate.clone().acquire_owned().await.expect("open semaphore");
        let proxy = p.addr;
        tasks.spawn(async move {
            let _permit = permit;
            let status = hit_and_run(proxy, &url, want, i % 2 == 0).await;
            (i, path, expect, status)
        });
    }
    let mut wrong = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (i, path, expect, status) = done.expect("client task");
        if status != expect {
            wrong.push((i, path, expect, status));
        }
    }
    assert!(wrong.is_empty(), "unexpected statuses: {wrong:?}");
    let (accepted, most) = (o.connections_accepted(), o.max_open_at_accept());
    eprintln!("{accepted} connections accepted, at most {most} open at once");
    assert!(
        accepted > 10 * CAP,
        "only {accepted} connections: not the churn this test is about"
    );
    assert!(
        most <= CAP,
        "the origin saw {most} connections open at once with max_connections = {CAP}"
    );
    assert!(
        most >= CAP / 2,
        "the pool never filled: {most} open at most"
    );
    assert!(p.wait_idle(Duration::from_secs(5)).await);
    p.stop().await;
}

// ---------------------------------------------------- 3. keep-alive mismatch

/// The origin announces `Keep-Alive: timeout=2` and closes idle connections after 2 s while
/// portcullis is configured for 120 s: requests 2.5 s apart never meet a dead connection.
#[tokio::test]
async fn upstream_keep_alive_timeout_shortens_idle_life() {
    let o = origin()
        .keep_alive_timeout(Duration::from_secs(2))
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream(
        "ka",
        o.port(),
        "idle_timeout = \"120s\"\nmax_lifetime = \"300s\"",
    ))
    .await;
    let mut conn = ProxyConn::connect(p.addr).await;
    for i in 0..3 {
        if i > 0 {
            // Real time against real timers: portcullis closes at 1 s idle (2 s announced,
            // less its 1 s margin), the origin at 2 s. The pause must outlast the origin's 2 s
            // (or a portcullis that ignored the header would pass); 1.5 s past portcullis's
            // close leaves a slow machine room.
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        let r = conn.get(&o.url(&format!("/ka/{i}"))).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    assert_eq!(p.retries("ka").await, 0.0);
    // Portcullis closed each connection itself, before the origin's 2 s ran out.
    let ka_closes = metric_reaches(
        &p,
        "portcullis_upstream_connections_closed_total",
        "upstream=\"ka\",reason=\"keep_alive_timeout\"",
        3.0,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(ka_closes, 3.0);
    assert_eq!(p.closed_for("ka", "remote_closed").await, 0.0);
    assert_eq!(p.closed_for("ka", "error").await, 0.0);
    let ids: Vec<usize> = o.requests().iter().map(|r| r.conn_id).collect();
    assert_eq!(ids, vec![1, 2, 3], "each request on its own connection");
    p.stop().await;
}

/// The twin: the origin really does close an idle connection after 2 s (what portcullis must beat).
#[tokio::test]
async fn the_origin_really_closes_idle_connections_after_its_keep_alive_timeout() {
    let o = origin()
        .keep_alive_timeout(Duration::from_secs(2))
        .spawn()
        .await;
    let mut direct = ProxyConn::connect(o.addr).await;
    // Taken before the request: the origin's idle clock cannot start earlier than this.
    let t = Instant::now();
    let r = direct
        .send(b"GET /direct HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("keep-alive"), Some("timeout=2"));
    assert!(direct.wait_closed(Duration::from_secs(4)).await);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1800),
        "closed after {waited:?}"
    );
    drop(direct);
    assert!(o.wait_for_open_connections(0, Duration::from_secs(1)).await);
}

// --------------------------------------------------------- 4. slow receivers

/// Six requests against an origin that takes `delay`, two connections max, each started once
/// the proxy has taken in the one before (at the origin, waiting for a connection, or refused
/// after acquire_timeout): arrival order is the order of `i` however slow the machine is.
/// Returns (index, status, completed after) per request and the most waiters seen at once.
async fn slow_round(p: &Proxy, o: &Origin) -> (Vec<(usize, u16, Duration)>, f64) {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let mut most_waiting = 0.0f64;
    for i in 0..6usize {
        if i > 0 {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let waiting = p
                    .metric("portcullis_pool_waiting", "upstream=\"slow\"")
                    .await;
                let refused = p
                    .metric(
                        "portcullis_pool_acquire_timeouts_total",
                        "upstream=\"slow\"",
                    )
                    .await;
                most_waiting = most_waiting.max(waiting);
                if o.requests().len() as f64 + waiting + refused >= i as f64 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "request {} never reached the proxy",
                    i - 1
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let proxy = p.addr;
        let url = o.url(&format!("/slow/{i}"));
        tasks.spawn(async move {
            let r = raw_exchange(
                proxy,
                &request("GET", &url, &[], b""),
                Duration::from_secs(15),
            )
            .await;
            let ok_token =
                r.status != 503 || proxy_status(&r).contains("error=connection_limit_reached");
            assert!(ok_token, "{r:?}");
            (i, r.status, started.elapsed())
        });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        out.push(done.expect("client task"));
    }
    out.sort_by_key(|(i, _, _)| *i);
    (out, most_waiting)
}

/// An origin that answers every request after `delay`.
fn slow_origin(delay: Duration) -> OriginBuilder {
    origin().handler(move |_| Reply::ok("slow").delay(delay))
}

#[tokio::test]
async fn slow_origin_requests_wait_their_turn_in_arrival_order() {
    let o = slow_origin(Duration::from_secs(1)).spawn().await;
    let p = spawn_proxy(&local_upstream(
        "slow",
        o.port(),
        "max_connections = 2\nmax_idle = 2\nacquire_timeout = \"10s\"",
    ))
    .await;
    let (results, max_waiting) = slow_round(&p, &o).await;
    assert!(results.iter().all(|(_, s, _)| *s == 200), "{results:?}");
    assert!(max_waiting >= 1.0, "no waiter was ever visible");
    let seen = o.requests();
    let order: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    let want: Vec<String> = (0..6).map(|i| format!("/slow/{i}")).collect();
    assert_eq!(order, want, "served out of arrival order");
    // Three rounds of one second: two at a time, nothing overtaking. A lower bound only: a
    // slow machine makes it longer, never shorter.
    let last = results.iter().map(|(_, _, d)| *d).max().unwrap_or_default();
    assert!(last >= Duration::from_millis(2900), "{results:?}");
    // Two at a time: the second request reached the origin on the second connection while
    // the first was still being answered (one at a time, it would come a second later, on
    // the first connection).
    assert_eq!(o.connections_accepted(), 2);
    assert_ne!(seen[0].conn_id, seen[1].conn_id);
    assert!(
        seen[1].received_at < seen[0].received_at + Duration::from_secs(1),
        "the second request waited for the first"
    );
    assert_eq!(
        p.metric(
            "portcullis_pool_acquire_timeouts_total",
            "upstream=\"slow\""
        )
        .await,
        0.0
    );
    assert!(p.wait_idle(Duration::from_secs(2)).await);
    p.stop().await;
}

#[tokio::test]
async fn slow_origin_waits_past_acquire_timeout_get_503() {
    // acquire_timeout 300 ms against an origin that takes 5 s: a waiter refused after the
    // first answers would have got a connection and a 200 instead, so the statuses alone say
    // the refusals came from acquire_timeout, whatever the machine's speed.
    let o = slow_origin(Duration::from_secs(5)).spawn().await;
    let p = spawn_proxy(&local_upstream(
        "slow",
        o.port(),
        "max_connections = 2\nmax_idle = 2\nacquire_timeout = \"300ms\"",
    ))
    .await;
    let (results, _) = slow_round(&p, &o).await;
    let statuses: Vec<u16> = results.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(statuses, vec![200, 200, 503, 503, 503, 503]);
    // And each was refused before either connection came free.
    let first_200 = results[..2]
        .iter()
        .map(|(_, _, d)| *d)
        .min()
        .unwrap_or_default();
    for (i, _, done) in &results[2..] {
        assert!(
            *done < first_200,
            "request {i} was refused after a 200: {results:?}"
        );
    }
    assert_eq!(
        p.metric(
            "portcullis_pool_acquire_timeouts_total",
            "upstream=\"slow\""
        )
        .await,
        4.0
    );
    assert_eq!(o.requests().len(), 2);
    assert!(p.wait_idle(Duration::from_secs(2)).await);
    p.stop().await;
}
