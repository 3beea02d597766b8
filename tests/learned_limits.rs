//! Learned remote idle limits (SPEC §11, issue 14), over real sockets: a silent firewall's idle
//! limit, or an origin's unannounced keep-alive limit, is learned from the first stale reuse and
//! stayed below from then on, told in one WARN line, shown in `/pools` and the metrics, kept
//! across a reload that leaves the idle settings alone; a tunnel the upstream resets after an
//! idle spell lowers the idle timeout of the next tunnels. Each has a twin with
//! `learn_idle_limit = false` or a too-short lesson, where nothing changes.
//!
//! Timing: the remote limit is 2 s. The gaps between requests ARE the test, so they are slept;
//! each is far from both the remote limit and 80 % of what is learned (about 1.9–2.1 s): up
//! to 1.5 s a pooled connection is reused within both, from 3 s on portcullis has closed it.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, Instant};

/// The remote side's silent idle limit.
const LIMIT: Duration = Duration::from_secs(2);
/// The gap before the first stale reuse: 400 ms past the limit, so what is learned (2.4 s and
/// whatever a slow machine adds) puts 80 % of it near the limit, and the gaps below clear both.
const FIRST_GAP: Duration = Duration::from_millis(2400);
const WAIT: Duration = Duration::from_secs(10);
const STALE: &str = "portcullis_upstream_stale_reuses_total";
const LEARNED: &str = "portcullis_upstream_learned_idle_limit_seconds";
const LOWERED: &str = "idle timeout lowered";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Get,
    KeyedPost,
    PlainPost,
}

/// After the lesson: (gap in ms, request). Plain POSTs, which are never retried, included.
/// Real time against the firewall's 2 s and the learned idle timeout (80 % of ~2.4 s): short
/// gaps stay 1 s below the firewall's limit and ~0.9 s below the learned timeout, so a slow
/// machine stretching one cannot make it meet a forgotten flow; long gaps are 1 s past the
/// firewall's limit, and slowness only lengthens them.
const AFTER: [(u64, Kind); 12] = [
    (0, Kind::Get),
    (500, Kind::PlainPost),
    (1000, Kind::KeyedPost),
    (1000, Kind::Get),
    (3000, Kind::PlainPost),
    (0, Kind::KeyedPost),
    (4000, Kind::Get),
    (1000, Kind::PlainPost),
    (3000, Kind::KeyedPost),
    (1000, Kind::Get),
    (4000, Kind::PlainPost),
    (500, Kind::Get),
];

/// A shorter `AFTER`, for the second way of dropping idle connections.
const AFTER_SHORT: [(u64, Kind); 6] = [
    (0, Kind::Get),
    (1000, Kind::PlainPost),
    (3000, Kind::KeyedPost),
    (500, Kind::Get),
    (3000, Kind::Get),
    (1000, Kind::PlainPost),
];

/// Requests of `AFTER` that meet a forgotten flow when nothing is learned: retriable ones
/// after a gap past the limit (a plain POST then goes out on a new connection, SPEC §6).
fn stale_after_without_learning() -> usize {
    AFTER
        .iter()
        .filter(|(gap, kind)| *gap >= 3000 && *kind != Kind::PlainPost)
        .count()
}

fn request_for(kind: Kind, url: &str, i: usize) -> Vec<u8> {
    let body = format!("payment-{i}");
    let key = format!("key-{i}");
    match kind {
        Kind::Get => request("GET", url, &[], b""),
        Kind::KeyedPost => request(
            "POST",
            url,
            &[("Idempotency-Key", key.as_str())],
            body.as_bytes(),
        ),
        Kind::PlainPost => request("POST", url, &[], body.as_bytes()),
    }
}

/// One keep-alive client: a warm-up, the gap that meets the first stale reuse, then `after`.
/// Every answer must be a 200; returns the targets in the order sent.
async fn run(proxy: SocketAddr, remote: SocketAddr, after: &[(u64, Kind)]) -> Vec<String> {
    let mut conn = ProxyConn::connect(proxy).await;
    let mut sent = Vec::new();
    let mut schedule = vec![(0, Kind::Get), (FIRST_GAP.as_millis() as u64, Kind::Get)];
    schedule.extend_from_slice(after);
    for (i, (gap, kind)) in schedule.into_iter().enumerate() {
        sleep(Duration::from_millis(gap)).await;
        let target = format!("/step/{i}");
        let r = conn
            .send(&request_for(kind, &format!("http://{remote}{target}"), i))
            .await;
        assert_eq!(r.status, 200, "step {i} ({kind:?} after {gap} ms): {r:?}");
        sent.push(target);
        if r.closed {
            conn = ProxyConn::connect(proxy).await;
        }
    }
    sent
}

/// Each request reached the origin exactly once, in order: nothing lost, no POST twice.
fn assert_each_once(origin: &Origin, sent: &[String]) {
    let seen: Vec<String> = origin.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(seen, sent);
}

/// The `/pools` entry of the destination `port`.
fn pool_of(doc: &Value, port: u16) -> Value {
    doc["pools"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["port"] == port))
        .cloned()
        .unwrap_or_else(|| panic!("no pool for port {port}: {doc:#}"))
}

/// The learned limit in `pool`, checked against its idle timeout (80 % of it) and the gap
/// that taught it.
fn learned_in(pool: &Value) -> f64 {
    let learned = pool["learned_idle_limit_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("nothing learned: {pool:#}"));
    assert!(
        (FIRST_GAP.as_secs_f64()..FIRST_GAP.as_secs_f64() + 1.5).contains(&learned),
        "learned {learned} s after a {FIRST_GAP:?} gap: {pool:#}"
    );
    let idle = pool["idle_timeout_seconds"]
        .as_f64()
        .expect("idle_timeout_seconds");
    assert!((idle - learned * 0.8).abs() < 0.002, "{pool:#}");
    learned
}

/// The same seconds, as `/pools` and `/metrics` print them.
#[track_caller]
fn assert_same(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-6, "{a} != {b}");
}

async fn pools_of(p: &Portcullis) -> Value {
    let (status, body) = p.admin_get("/pools").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("/pools is JSON")
}

/// The firewall incident with nothing but `idle_timeout = "30s"` set: the first stale reuse
/// (retried, so the client sees a 200) teaches the limit; GETs and POSTs at gaps of 0–4 s meet
/// no further reset; one WARN line tells the numbers and the setting. The real binary, for
/// the log. A reload that leaves the idle settings alone keeps the lesson; one that changes
/// idle_timeout forgets it.
///
/// Its twin runs beside it (same schedule, at the same time, to keep the suite short): with
/// `learn_idle_limit = false` the firewall goes on resetting once per retriable request after
/// a gap past its limit, as before SPEC §11, and every stale reuse is still counted.
#[tokio::test]
async fn a_silent_firewall_limit_is_learned_from_the_first_stale_reuse() {
    let o = origin().spawn().await;
    let fw = Firewall::spawn(o.addr, LIMIT).await;
    let dir = scratch("learned");
    let rest = upstream(&[fw.addr.port()], "idle_timeout = \"30s\"");
    let p = start(&dir, &rest, &[], &[]).await;

    let (sent, twin) = tokio::join!(run(p.proxy, fw.addr, &AFTER), with_learning_off());
    twin.check().await;
    assert_eq!(
        fw.resets_sent(),
        1,
        "only the first stale reuse met a reset"
    );
    assert_each_once(&o, &sent);
    let pool = pool_of(&pools_of(&p).await, fw.addr.port());
    assert_eq!(pool["stale_reuses"], 1, "{pool:#}");
    let learned = learned_in(&pool);
    assert_eq!(p.metric(STALE, "upstream=\"local\"").await, 1.0);
    assert_same(p.metric(LEARNED, "upstream=\"local\"").await, learned);
    assert_eq!(
        p.metric(
            "portcullis_retries_total",
            "upstream=\"local\",reason=\"reset_after_write\""
        )
        .await,
        1.0
    );

    let lines: Vec<String> = p
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains(LOWERED))
        .collect();
    assert_eq!(lines.len(), 1, "one line per lesson: {lines:#?}");
    let line = &lines[0];
    let port = fw.addr.port();
    for part in [
        "WARN",
        &format!("upstream \"local\" 127.0.0.1:{port}: a connection idle "),
        "had been dropped by the remote side; idle timeout lowered from 30s to ",
        ", tunnel idle timeout from 1m to ",
        "(set idle_timeout and tunnel_idle_timeout, or remote_idle_limit, below ",
        " to keep this across restarts)",
    ] {
        assert!(line.contains(part), "{part:?} not in {line}");
    }
    // Shown to the millisecond, rounded down.
    let shown = format!("idle {}ms had", (learned * 1000.0 + 1e-6).floor() as u64);
    assert!(line.contains(&shown), "{shown:?} not in {line}");

    // A reload that changes other keys keeps the lesson, for the pools too.
    let unrelated = upstream(
        &[port],
        "idle_timeout = \"30s\"\nmax_connections = 64\nmax_lifetime = \"50s\"",
    );
    p.reload(&unrelated, 1.0).await;
    assert_same(p.metric(LEARNED, "upstream=\"local\"").await, learned);
    assert_eq!(
        proxy_get(p.proxy, &format!("http://{}/kept", fw.addr))
            .await
            .status,
        200
    );
    let pool = pool_of(&pools_of(&p).await, port);
    assert_same(learned_in(&pool), learned);
    // One that changes idle_timeout forgets it: the operator has spoken.
    let changed = upstream(&[port], "idle_timeout = \"20s\"");
    p.reload(&changed, 2.0).await;
    let (_, text) = p.admin_get("/metrics").await;
    assert!(!text.contains(LEARNED), "{text}");
    assert_eq!(
        proxy_get(p.proxy, &format!("http://{}/forgot", fw.addr))
            .await
            .status,
        200
    );
    let pool = pool_of(&pools_of(&p).await, port);
    assert!(pool["learned_idle_limit_seconds"].is_null(), "{pool:#}");
    assert_eq!(pool["idle_timeout_seconds"], 20.0, "{pool:#}");
    assert_eq!(pool["stale_reuses"], 1, "{pool:#}");
    assert_eq!(
        p.stderr_lines()
            .iter()
            .filter(|l| l.contains(LOWERED))
            .count(),
        1
    );
}

/// The twin of the firewall test, in process: its own origin, firewall and proxy.
struct Twin {
    origin: Origin,
    firewall: Firewall,
    proxy: Proxy,
    sent: Vec<String>,
}

async fn with_learning_off() -> Twin {
    let origin = origin().spawn().await;
    let firewall = Firewall::spawn(origin.addr, LIMIT).await;
    let proxy = spawn_proxy(&local_upstream(
        "fw",
        firewall.addr.port(),
        "idle_timeout = \"30s\"\nlearn_idle_limit = false",
    ))
    .await;
    let sent = run(proxy.addr, firewall.addr, &AFTER).await;
    Twin {
        origin,
        firewall,
        proxy,
        sent,
    }
}

impl Twin {
    async fn check(self) {
        let resets = 1 + stale_after_without_learning();
        assert_eq!(self.firewall.resets_sent(), resets, "learning off");
        assert_each_once(&self.origin, &self.sent);
        let p = self.proxy;
        assert_eq!(p.metric(STALE, "upstream=\"fw\"").await, resets as f64);
        let pool = pool_of(&p.pools().await, self.firewall.addr.port());
        assert!(pool["learned_idle_limit_seconds"].is_null(), "{pool:#}");
        assert_eq!(pool["idle_timeout_seconds"], 30.0, "{pool:#}");
        assert_eq!(pool["stale_reuses"], resets, "{pool:#}");
        let (_, text) = p.admin_get("/metrics").await;
        assert!(!text.contains(LEARNED), "{text}");
        p.stop().await;
    }
}

/// An origin that closes idle keep-alive connections after 2 s without saying so, the close
/// seen only by the next request ("closed before a response byte arrived", not a reset): the
/// same lesson, and no request after it is dropped.
#[tokio::test]
async fn an_unannounced_keep_alive_limit_is_learned_the_same_way() {
    let o = origin().drop_requests_after_idle(LIMIT).spawn().await;
    let p = spawn_proxy(&local_upstream("ka", o.port(), "idle_timeout = \"30s\"")).await;
    let sent = run(p.addr, o.addr, &AFTER_SHORT).await;
    assert_each_once(&o, &sent);
    // One request was dropped (and retried): the first after a gap past the limit.
    assert_eq!(p.retries("ka").await, 1.0);
    assert_eq!(p.metric(STALE, "upstream=\"ka\"").await, 1.0);
    let pool = pool_of(&p.pools().await, o.port());
    assert_eq!(pool["stale_reuses"], 1, "{pool:#}");
    learned_in(&pool);
    p.stop().await;
}

/// A stale reuse below 1 s is counted but teaches nothing: a remote restart looks the same.
#[tokio::test]
async fn a_stale_reuse_below_one_second_teaches_nothing() {
    let o = origin().spawn().await;
    let fw = Firewall::spawn(o.addr, Duration::from_millis(300)).await;
    let p = spawn_proxy(&local_upstream("short", fw.addr.port(), "")).await;
    let mut conn = ProxyConn::connect(p.addr).await;
    let url = format!("http://{}/short", fw.addr);
    assert_eq!(conn.get(&url).await.status, 200);
    for n in 1..=2 {
        // Until the firewall forgets the flow (its 300 ms and a moment): past its limit, and
        // as far below the 1 s a lesson needs as the machine allows (was a fixed 500 ms).
        assert!(fw.wait_for_forgotten(n, WAIT).await);
        assert_eq!(conn.get(&url).await.status, 200);
        assert_eq!(fw.resets_sent(), n, "still reused, still reset");
    }
    assert_eq!(p.metric(STALE, "upstream=\"short\"").await, 2.0);
    let pool = pool_of(&p.pools().await, fw.addr.port());
    assert!(pool["learned_idle_limit_seconds"].is_null(), "{pool:#}");
    assert_eq!(pool["idle_timeout_seconds"], 30.0, "{pool:#}");
    assert_eq!(pool["stale_reuses"], 2, "{pool:#}");
    let (_, text) = p.admin_get("/metrics").await;
    assert!(!text.contains(LEARNED), "{text}");
    p.stop().await;
}

async fn open_tunnel(proxy: SocketAddr, to: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    s.write_all(format!("CONNECT {to} HTTP/1.1\r\nHost: {to}\r\n\r\n").as_bytes())
        .await
        .expect("send CONNECT");
    let head = read_until(&mut s, b"\r\n\r\n").await;
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Reads until `end` closes what was read (bounded); what was read, or empty on EOF or reset.
async fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + WAIT;
    while !got.ends_with(end) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Vec::new(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("nothing ended with {end:?} within {WAIT:?}"),
        }
    }
    got
}

/// One HTTP request through a tunnel (bytes, not proxied: the upstream is as-requested).
async fn through(s: &mut TcpStream, path: &str) -> Vec<u8> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: tunnel.test\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return Vec::new();
    }
    read_until(s, b"\r\n\r\nok").await
}

/// True once the proxy closes the tunnel; the time it took.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// A CONNECT tunnel the firewall resets on the first bytes after 2.4 s of quiet teaches the
/// destination's limit: the next tunnel is closed at 80 % of it (configured: 60 s), and the
/// pooled connections to the same host:port share the lesson.
#[tokio::test]
async fn a_tunnel_reset_after_an_idle_spell_lowers_the_next_tunnels_timeout() {
    let o = origin().spawn().await;
    let fw = Firewall::spawn(o.addr, LIMIT).await;
    let p = spawn_proxy(&local_upstream("tun", fw.addr.port(), "")).await;

    let mut first = open_tunnel(p.addr, fw.addr).await;
    assert!(!through(&mut first, "/t1").await.is_empty());
    sleep(FIRST_GAP).await;
    // The firewall forgot the flow: these bytes are answered with a reset, so the proxy
    // closes the tunnel.
    assert!(through(&mut first, "/t2").await.is_empty());
    assert_eq!(fw.resets_sent(), 1);
    let deadline = Instant::now() + WAIT;
    while p.metric(STALE, "upstream=\"tun\"").await < 1.0 {
        assert!(Instant::now() < deadline, "the reset was not counted");
        sleep(Duration::from_millis(20)).await;
    }
    let learned = p.metric(LEARNED, "upstream=\"tun\"").await;
    assert!(
        (FIRST_GAP.as_secs_f64()..FIRST_GAP.as_secs_f64() + 1.5).contains(&learned),
        "learned {learned}"
    );

    // The next tunnel idles out at 80 % of it, long before the configured 60 s.
    let mut second = open_tunnel(p.addr, fw.addr).await;
    assert!(!through(&mut second, "/t3").await.is_empty());
    let took = closed_within(&mut second, Duration::from_secs(20))
        .await
        .expect("the lowered tunnel_idle_timeout closed the tunnel");
    assert!(took >= Duration::from_secs(1), "{took:?}");

    // The pooled connections of the same host:port share the lesson.
    assert_eq!(
        proxy_get(p.addr, &format!("http://{}/pooled", fw.addr))
            .await
            .status,
        200
    );
    let pool = pool_of(&p.pools().await, fw.addr.port());
    assert_eq!(pool["stale_reuses"], 1, "{pool:#}");
    assert_same(learned_in(&pool), learned);
    assert_eq!(fw.resets_sent(), 1);
    p.stop().await;
}
