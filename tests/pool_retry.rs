//! SPEC §5–§6 end to end: pool reuse and expiry, closes noticed, retry rules, request bodies, TLS origination, timeouts.

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use support::*;

// ------------------------------------------------------------------ helpers

fn has_error(r: &RawResponse, token: &str) -> bool {
    r.header("proxy-status")
        .unwrap_or_default()
        .contains(&format!("error={token}"))
}

/// Polls the closed-connections counter until it reaches `at_least` (bounded).
/// The origin connection that served `target` (which it saw exactly once).
fn conn_of(origin: &Origin, target: &str) -> usize {
    let s = seen(origin, target);
    assert_eq!(s.len(), 1, "{target} seen {} times", s.len());
    s[0].conn_id
}

async fn closed_reaches(p: &Proxy, upstream: &str, reason: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let v = p.closed_for(upstream, reason).await;
        if v >= at_least || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A handler that resets the connection the first time each target in `flaky` arrives, and
/// answers every other request with `ok <target>`.
fn reset_once(flaky: &'static [&'static str]) -> impl Fn(&SeenRequest) -> Reply + Send + Sync {
    let done: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    move |r| {
        let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
        if flaky.contains(&r.target.as_str()) && done.insert(r.target.clone()) {
            Reply::reset_without_answer()
        } else {
            Reply::ok(format!("ok {}", r.target))
        }
    }
}

fn tmp_file(name: &str, data: &[u8]) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pool_retry-{}-{name}", std::process::id()));
    std::fs::write(&path, data).expect("write temp file");
    path
}

/// Deterministic bytes that catch reordering or truncation.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

// -------------------------------------------------------------- reuse order

#[tokio::test]
async fn the_most_recently_used_idle_connection_is_reused_first() {
    let o = origin()
        .handler(|r| match r.target.as_str() {
            "/a" => Reply::ok("a").delay(Duration::from_millis(100)),
            "/b" => Reply::ok("b").delay(Duration::from_millis(400)),
            _ => Reply::ok("n"),
        })
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream("lifo", o.port(), "")).await;
    let (url_a, url_b) = (o.url("/a"), o.url("/b"));
    let (a, b) = tokio::join!(proxy_get(p.addr, &url_a), proxy_get(p.addr, &url_b));
    assert_eq!((a.status, b.status), (200, 200));
    let (conn_a, conn_b) = (conn_of(&o, "/a"), conn_of(&o, "/b"));
    assert_ne!(conn_a, conn_b);
    assert!(p.wait_idle(Duration::from_secs(2)).await);
    assert_eq!(p.idle_count(), 2);
    // /b finished last: its connection is the most recently used, twice over.
    assert_eq!(proxy_get(p.addr, &o.url("/n1")).await.status, 200);
    assert_eq!(conn_of(&o, "/n1"), conn_b);
    assert_eq!(proxy_get(p.addr, &o.url("/n2")).await.status, 200);
    assert_eq!(conn_of(&o, "/n2"), conn_b);
    assert_eq!(o.connections_accepted(), 2);
    p.stop().await;
}

// -------------------------------------------------------------- expiry

/// Used back to back, a connection still retires at max_lifetime; the request in flight when
/// it passes finishes normally.
#[tokio::test]
async fn max_lifetime_retires_a_connection_in_continuous_use() {
    let o = origin()
        .handler(|_| Reply::ok("x").delay(Duration::from_millis(50)))
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream(
        "life",
        o.port(),
        "idle_timeout = \"5s\"\nmax_lifetime = \"1s\"",
    ))
    .await;
    let mut conn = ProxyConn::connect(p.addr).await;
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let r = conn.get(&o.url(&format!("/r/{i}"))).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        i += 1;
    }
    let seen = o.requests();
    let ids: HashSet<usize> = seen.iter().map(|r| r.conn_id).collect();
    assert!(ids.len() >= 2, "one connection served everything");
    for id in &ids {
        let on: Vec<&SeenRequest> = seen.iter().filter(|r| r.conn_id == *id).collect();
        let span = on[on.len() - 1].received_at - on[0].received_at;
        assert!(
            // 1 s lifetime, plus 1 s of slack for a stall between checkout and arrival on a
            // slow machine; without retirement one connection would span the whole 3 s.
            span < Duration::from_secs(2),
            "connection {id} was handed a request {span:?} after its first"
        );
    }
    assert!(
        seen.iter().any(|r| r.conn_request_index >= 2),
        "connections were not reused before retiring"
    );
    assert!(p.closed_for("life", "max_lifetime").await >= 1.0);
    assert_eq!(p.retries("life").await, 0.0);
    p.stop().await;
}

/// The reaper closes an idle connection at idle_timeout, with no checkout to notice it.
#[tokio::test]
async fn idle_connections_are_closed_at_idle_timeout_without_a_checkout() {
    let o = origin().spawn().await;
    let p = spawn_proxy(&local_upstream("reap", o.port(), "idle_timeout = \"2s\"")).await;
    let t = Instant::now();
    assert_eq!(proxy_get(p.addr, &o.url("/once")).await.status, 200);
    assert_eq!(o.open_connections(), 1);
    // Still open a moment later: 1.9 s short of the idle timeout, so a slow machine cannot
    // stretch this pause past it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(o.open_connections(), 1, "closed before its idle timeout");
    assert!(o.wait_for_open_connections(0, Duration::from_secs(6)).await);
    // Not before the timeout (`t` precedes the request, so slowness only adds).
    assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(p.closed_for("reap", "idle_timeout").await, 1.0);
    assert_eq!(p.idle_count(), 0);
    assert_eq!(o.requests().len(), 1);
    p.stop().await;
}

// -------------------------------------------------------------- closes noticed

/// The origin closes (FIN) an idle connection while claiming a long keep-alive: portcullis
/// sees the FIN and never hands that connection out.
#[tokio::test]
async fn a_connection_the_origin_closed_with_fin_is_never_handed_out() {
    let o = origin()
        .keep_alive_timeout(Duration::from_millis(300))
        .handler(|_| Reply::ok("ok").header("Keep-Alive", "timeout=60"))
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream("fin", o.port(), "")).await;
    let mut conn = ProxyConn::connect(p.addr).await;
    assert_eq!(conn.get(&o.url("/1")).await.status, 200);
    assert!(o.wait_for_open_connections(0, Duration::from_secs(3)).await);
    assert_eq!(closed_reaches(&p, "fin", "remote_closed", 1.0).await, 1.0);
    let r = conn.get(&o.url("/2")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(p.retries("fin").await, 0.0, "needed a retry");
    assert_ne!(conn_of(&o, "/1"), conn_of(&o, "/2"));
    p.stop().await;
}

/// A bare-TCP origin that answers one request per connection and then resets it while idle.
async fn resetting_origin() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                reset_on_drop(&s);
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_connection_the_origin_reset_while_idle_is_never_handed_out() {
    let (addr, accepted) = resetting_origin().await;
    let p = spawn_proxy(&local_upstream("rst", addr.port(), "")).await;
    let url = format!("http://{addr}/");
    let mut conn = ProxyConn::connect(p.addr).await;
    assert_eq!(conn.get(&url).await.status, 200);
    assert_eq!(closed_reaches(&p, "rst", "remote_closed", 1.0).await, 1.0);
    let r = conn.get(&url).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(p.retries("rst").await, 0.0);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    p.stop().await;
}

#[tokio::test]
async fn connection_close_from_the_upstream_is_honoured() {
    let o = origin().handler(|_| Reply::ok("bye").close()).spawn().await;
    let p = spawn_proxy(&local_upstream("cc", o.port(), "")).await;
    let mut conn = ProxyConn::connect(p.addr).await;
    for path in ["/1", "/2", "/3"] {
        let r = conn.get(&o.url(path)).await;
        assert_eq!(r.status, 200, "{r:?}");
        // Hop-by-hop: the client's own connection stays open.
        assert!(!r.closed, "{r:?}");
    }
    assert_eq!(o.connections_accepted(), 3);
    assert!(o.requests().iter().all(|r| r.conn_request_index == 0));
    assert_eq!(p.retries("cc").await, 0.0);
    assert_eq!(closed_reaches(&p, "cc", "remote_closed", 3.0).await, 3.0);
    assert!(p.wait_idle(Duration::from_secs(2)).await);
    assert_eq!(p.idle_count(), 0);
    p.stop().await;
}

// -------------------------------------------------------------- retries

#[tokio::test]
async fn a_request_is_sent_at_most_twice() {
    let o = origin()
        .handler(|r| match r.target.as_str() {
            "/warm" => Reply::ok("warm"),
            _ => Reply::reset_without_answer(),
        })
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream("twice", o.port(), "")).await;
    let mut conn = ProxyConn::connect(p.addr).await;
    assert_eq!(conn.get(&o.url("/warm")).await.status, 200);
    let r = conn.get(&o.url("/x")).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(has_error(&r, "connection_terminated"), "{r:?}");
    let sends = seen(&o, "/x");
    assert_eq!(sends.len(), 2, "sent {} times", sends.len());
    assert_eq!(
        sends[0].conn_id,
        conn_of(&o, "/warm"),
        "first on the reused one"
    );
    assert_ne!(sends[1].conn_id, sends[0].conn_id, "retried on a new one");
    assert_eq!(p.retries("twice").await, 1.0);
    assert!(p.wait_idle(Duration::from_secs(2)).await);
    p.stop().await;
}

#[tokio::test]
async fn a_failure_on_a_fresh_connection_is_not_retried() {
    let o = origin()
        .handler(|_| Reply::reset_without_answer())
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream("fresh", o.port(), "")).await;
    let r = proxy_get(p.addr, &o.url("/first")).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(has_error(&r, "connection_terminated"), "{r:?}");
    assert_eq!(seen(&o, "/first").len(), 1);
    assert_eq!(p.retries("fresh").await, 0.0);
    p.stop().await;
}

/// A POST without Idempotency-Key that was written is never sent again; with the key it is.
#[tokio::test]
async fn a_written_post_is_retried_only_with_an_idempotency_key() {
    let o = origin()
        .handler(reset_once(&["/pay", "/pay-keyed"]))
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream("post", o.port(), "")).await;
    let mut conn = ProxyConn::connect(p.addr).await;
    assert_eq!(conn.get(&o.url("/warm")).await.status, 200);

    let r = conn
        .send(&request("POST", &o.url("/pay"), &[], b"amount=1"))
        .await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(has_error(&r, "connection_terminated"), "{r:?}");
    let pay = seen(&o, "/pay");
    assert_eq!(pay.len(), 1, "the POST was replayed");
    assert_eq!(
        pay[0].conn_request_index, 1,
        "it went out on the reused connection"
    );
    assert_eq!(p.retries("post").await, 0.0);

    if r.closed {
        conn = ProxyConn::connect(p.addr).await;
    }
    assert_eq!(conn.get(&o.url("/warm2")).await.status, 200);
    let r = conn
        .send(&request(
            "POST",
            &o.url("/pay-keyed"),
            &[("Idempotency-Key", "k-7")],
            b"amount=2",
        ))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let keyed = seen(&o, "/pay-keyed");
    assert_eq!(keyed.len(), 2);
    assert!(keyed
        .iter()
        .all(|s| s.body_text() == "amount=2" && s.header("idempotency-key") == Some("k-7")));
    assert_eq!(
        p.metric(
            "portcullis_retries_total",
            "upstream=\"post\",reason=\"reset_after_write\""
        )
        .await,
        1.0
    );
    p.stop().await;
}

/// A body over max_replay_body is streamed, so it cannot be replayed: no retry.
#[tokio::test]
async fn a_body_above_max_replay_body_is_not_retried() {
    let o = origin()
        .handler(reset_once(&["/small", "/big"]))
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream(
        "replay",
        o.port(),
        "max_replay_body = 1024",
    ))
    .await;
    let mut conn = ProxyConn::connect(p.addr).await;
    assert_eq!(conn.get(&o.url("/warm")).await.status, 200);

    let small = pattern(512);
    let r = conn
        .send(&request("PUT", &o.url("/small"), &[], &small))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(seen(&o, "/small").len(), 2, "a replayable PUT is retried");
    assert_eq!(p.retries("replay").await, 1.0);

    let big = pattern(4096);
    let r = conn.send(&request("PUT", &o.url("/big"), &[], &big)).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(has_error(&r, "connection_terminated"), "{r:?}");
    let sent = seen(&o, "/big");
    assert_eq!(sent.len(), 1, "an unreplayable body was sent twice");
    assert_eq!(sent[0].body, big);
    assert!(
        sent[0].conn_request_index >= 1,
        "it went out on a reused connection"
    );
    assert_eq!(p.retries("replay").await, 1.0);
    assert!(p.wait_idle(Duration::from_secs(2)).await);
    p.stop().await;
}

/// A replayable body larger than one read of the client (64 KiB) is gathered piece by piece,
/// and both the first attempt and the replay carry all of it.
#[tokio::test]
async fn a_body_of_many_reads_below_max_replay_body_is_replayed_intact() {
    let o = origin().handler(reset_once(&["/many"])).spawn().await;
    let p = spawn_proxy(&local_upstream("many", o.port(), "")).await;
    let mut conn = ProxyConn::connect(p.addr).await;
    assert_eq!(conn.get(&o.url("/warm")).await.status, 200);

    let body = pattern(700 * 1024 + 13);
    let r = conn
        .send(&request("PUT", &o.url("/many"), &[], &body))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let sent = seen(&o, "/many");
    assert_eq!(sent.len(), 2, "the PUT was retried");
    for (i, s) in sent.iter().enumerate() {
        assert!(s.body == body, "attempt {i}: {} bytes differ", s.body.len());
    }
    assert_eq!(p.retries("many").await, 1.0);
    p.stop().await;
}

// -------------------------------------------------------------- request bodies

#[tokio::test]
async fn large_chunked_and_expect_continue_uploads_arrive_intact() {
    let o = origin()
        .handler(|r| Reply::ok(format!("got {}", r.body.len())))
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream("upload", o.port(), "")).await;
    let proxy = format!("http://{}", p.addr);
    let big = pattern(2 * 1024 * 1024);
    let file = tmp_file("2mb.bin", &big);
    let data = format!("@{}", file.display());

    // 2 MB with Content-Length (curl adds Expect: 100-continue above 1 MB).
    let r = curl(&["-x", &proxy, "--data-binary", &data, &o.url("/cl")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    // 2 MB chunked.
    let r = curl(&[
        "-x",
        &proxy,
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &data,
        &o.url("/chunked"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // Small, with an explicit Expect: 100-continue.
    let r = curl(&[
        "-x",
        &proxy,
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        "hello upstream",
        &o.url("/expect"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let _ = std::fs::remove_file(&file);

    for target in ["/cl", "/chunked"] {
        let s = seen(&o, target);
        assert_eq!(s.len(), 1);
        assert!(
            s[0].body == big,
            "{target}: body of {} bytes differs",
            s[0].body.len()
        );
        assert!(s[0].header("expect").is_none(), "Expect leaked upstream");
    }
    assert_eq!(seen(&o, "/expect")[0].body_text(), "hello upstream");
}

/// The proxy answers `100 Continue` itself once policy passed, before the body is sent.
#[tokio::test]
async fn expect_continue_is_answered_before_the_body_is_sent() {
    let o = origin().spawn().await;
    let p = spawn_proxy(&local_upstream("expect", o.port(), "")).await;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n",
        o.url("/e"),
        o.addr
    );
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write head");
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    let read_interim = async {
        while !interim.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.expect("read") == 0 {
                break;
            }
            interim.push(byte[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(2), read_interim)
        .await
        .expect("100 Continue without the body");
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    let r = exchange_on(&mut s, b"hello world", Duration::from_secs(5)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(seen(&o, "/e")[0].body_text(), "hello world");
}

// -------------------------------------------------------------- TLS origination

struct TlsSetup {
    ca: TestCa,
    ca_file: PathBuf,
}

fn tls_setup(name: &str) -> TlsSetup {
    // The pid keeps the PEM file apart from a concurrent run of this binary.
    let ca = TestCa::new(&format!("{name} {}", std::process::id()));
    let ca_file = ca.write_pem(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    TlsSetup { ca, ca_file }
}

fn tls_upstream(name: &str, ports: &[u16], tls: &str, ca_file: &std::path::Path) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "[[upstream]]\nname = \"{name}\"\nhosts = [\"localhost\", \"127.0.0.1\"]\nports = [{}]\nallow_private = true\ntls = \"{tls}\"\nca_file = {:?}\n",
        ports.join(", "),
        ca_file.display().to_string()
    )
}

#[tokio::test]
async fn tls_origination_serves_http_requests_over_a_reused_tls_connection() {
    let t = tls_setup("pool retry originate");
    let cert = t.ca.issue(&["localhost", "127.0.0.1"]);
    let o = origin().tls(&cert).spawn().await;
    let p = spawn_proxy(&tls_upstream("orig", &[o.port()], "originate", &t.ca_file)).await;
    let url = |path: &str| format!("http://localhost:{}{path}", o.port());
    let r = proxy_get(p.addr, &url("/t1")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_text(), "ok");
    let r = proxy_get(p.addr, &url("/t2")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        conn_of(&o, "/t1"),
        conn_of(&o, "/t2"),
        "TLS connection not reused"
    );
    assert_eq!(o.connections_accepted(), 1);
    assert_eq!(o.tls_handshake_failures(), 0);
    assert_eq!(
        seen(&o, "/t1")[0].header("host"),
        Some(format!("localhost:{}", o.port()).as_str())
    );
    p.stop().await;
}

#[tokio::test]
async fn an_https_absolute_uri_is_sent_over_tls_when_as_requested() {
    let t = tls_setup("pool retry as requested");
    let cert = t.ca.issue(&["localhost", "127.0.0.1"]);
    let o = origin().tls(&cert).spawn().await;
    let p = spawn_proxy(&tls_upstream(
        "asreq",
        &[o.port()],
        "as-requested",
        &t.ca_file,
    ))
    .await;
    let url = format!("https://localhost:{}/secure", o.port());
    let r = raw_exchange(p.addr, &request("GET", &url, &[], b""), DEFAULT_WITHIN).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(seen(&o, "/secure").len(), 1);
    assert_eq!(o.tls_handshake_failures(), 0);
    p.stop().await;
}

#[tokio::test]
async fn rejected_certificates_are_answered_502_tls_certificate_error() {
    let t = tls_setup("pool retry rejects");
    let other_ca = TestCa::new("somebody else");
    let certs = [
        ("self-signed", TestCa::self_signed(&["localhost"])),
        ("expired", t.ca.expired_cert(&["localhost"])),
        ("wrong name", t.ca.issue(&["api.other.test"])),
        ("unknown CA", other_ca.issue(&["localhost"])),
    ];
    let mut origins = Vec::new();
    for (what, cert) in &certs {
        origins.push((*what, origin().tls(cert).spawn().await));
    }
    let ports: Vec<u16> = origins.iter().map(|(_, o)| o.port()).collect();
    let p = spawn_proxy(&tls_upstream("bad", &ports, "originate", &t.ca_file)).await;
    for (what, o) in &origins {
        let r = proxy_get(p.addr, &format!("http://localhost:{}/", o.port())).await;
        assert_eq!(r.status, 502, "{what}: {r:?}");
        assert!(has_error(&r, "tls_certificate_error"), "{what}: {r:?}");
        assert!(o.requests().is_empty(), "{what}: a request got through");
    }
    assert!(p.wait_idle(Duration::from_secs(2)).await);
    p.stop().await;
}

// -------------------------------------------------------------- timeouts

#[tokio::test]
async fn response_timeout_answers_504_and_the_connection_is_not_reused() {
    let o = origin()
        .handler(|r| match r.target.as_str() {
            "/hang" => Reply::hang(),
            _ => Reply::ok("ok"),
        })
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream(
        "slowhead",
        o.port(),
        "response_timeout = \"300ms\"",
    ))
    .await;
    let mut conn = ProxyConn::connect(p.addr).await;
    assert_eq!(conn.get(&o.url("/before")).await.status, 200);
    let t = Instant::now();
    let r = conn.get(&o.url("/hang")).await;
    assert_eq!(r.status, 504, "{r:?}");
    // The origin never answers /hang: this 504 can only be response_timeout's.
    assert!(has_error(&r, "http_response_timeout"), "{r:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(conn_of(&o, "/hang"), conn_of(&o, "/before"));
    // The timed-out connection is closed, not pooled.
    assert!(o.wait_for_open_connections(0, Duration::from_secs(2)).await);
    if r.closed {
        conn = ProxyConn::connect(p.addr).await;
    }
    assert_eq!(conn.get(&o.url("/after")).await.status, 200);
    assert_ne!(conn_of(&o, "/after"), conn_of(&o, "/hang"));
    assert_eq!(
        seen(&o, "/hang").len(),
        1,
        "a timed-out request was retried"
    );
    assert_eq!(p.retries("slowhead").await, 0.0);
    assert!(p.wait_idle(Duration::from_secs(2)).await);
    p.stop().await;
}

/// A POST of a payment to `url` through `proxy`, its body whole, left waiting: the socket.
async fn payment(proxy: std::net::SocketAddr, url: &str, host: &str) -> TcpStream {
    let pay = format!("POST {url} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 9\r\n\r\namount=10");
    let mut client = TcpStream::connect(proxy).await.expect("connect");
    client.write_all(pay.as_bytes()).await.expect("send");
    client
}

/// A client that hangs up while its request waits for the response: the upstream connection,
/// mid-exchange, is closed at once (its slot freed for the others) rather than held until the
/// answer nobody will read (8 s here).
#[tokio::test]
async fn a_client_that_hangs_up_before_its_response_frees_the_upstream_connection() {
    let o = origin()
        .count_open_at_accept()
        .handler(|_| Reply::ok("slow").delay(Duration::from_secs(8)))
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream("cap", o.port(), "")).await;
    let host = format!("127.0.0.1:{}", o.port());
    let client = payment(p.addr, &o.url("/pay"), &host).await;
    assert!(o.wait_for_requests(1, Duration::from_secs(5)).await);
    assert_eq!(p.busy().await, 1);
    drop(client);
    assert!(
        p.metric_reaches(
            "portcullis_requests_total",
            "upstream=\"cap\",code=\"499\"",
            1.0,
            Duration::from_secs(5)
        )
        .await,
        "ended when its client hung up, not when the answer came (8 s)"
    );
    assert_eq!(p.closed_for("cap", "error").await, 1.0);
    assert!(p.wait_idle(Duration::from_secs(5)).await);
    assert_eq!(
        p.idle_count(),
        0,
        "the connection mid-exchange is not pooled"
    );
    assert!(
        eventually(Duration::from_secs(5), || o.open_now() == 0).await,
        "closed, as the origin's kernel sees it"
    );
    p.stop().await;
}

/// A client that hangs up while its connection is being dialed: the dial is dropped, and the
/// request never sent. Here the dial is a TLS handshake held up by a gate in front of the
/// origin, opened only once the proxy has counted the request as 499.
#[tokio::test]
async fn a_request_whose_client_hangs_up_while_its_connection_is_dialed_is_never_sent() {
    let t = tls_setup("hang up while dialing");
    let cert = t.ca.issue(&["localhost", "127.0.0.1"]);
    let o = origin().tls(&cert).spawn().await;
    let gate = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gate_port = gate.local_addr().expect("gate address").port();
    let open = Arc::new(tokio::sync::Notify::new());
    let arrived = Arc::new(AtomicUsize::new(0));
    let relay = {
        let (open, arrived, origin_port) = (open.clone(), arrived.clone(), o.port());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = gate.accept().await {
                let first = arrived.fetch_add(1, Ordering::SeqCst) == 0;
                let open = open.clone();
                tokio::spawn(async move {
                    if first {
                        open.notified().await;
                    }
                    let Ok(mut up) = TcpStream::connect(("127.0.0.1", origin_port)).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
            }
        })
    };
    let p = spawn_proxy(&tls_upstream(
        "dialed",
        &[gate_port],
        "originate",
        &t.ca_file,
    ))
    .await;
    let url = |path: &str| format!("http://localhost:{gate_port}{path}");
    let host = format!("localhost:{gate_port}");
    let client = payment(p.addr, &url("/pay"), &host).await;
    assert!(
        eventually(Duration::from_secs(5), || arrived.load(Ordering::SeqCst)
            == 1)
        .await,
        "the proxy dials"
    );
    drop(client);
    assert!(
        p.metric_reaches(
            "portcullis_requests_total",
            "upstream=\"dialed\",code=\"499\"",
            1.0,
            Duration::from_secs(5)
        )
        .await,
        "ended while its connection was being dialed"
    );
    open.notify_one();
    let r = proxy_get(p.addr, &url("/after")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        seen(&o, "/pay").is_empty(),
        "the abandoned payment never reached the origin"
    );
    assert_eq!(seen(&o, "/after").len(), 1);
    p.stop().await;
    relay.abort();
}

/// The pool's waiting gauge for `upstream="cap"` reaches `want` within 5 s; true if it did.
async fn waiting_reaches(p: &Proxy, want: f64) -> bool {
    p.metric_reaches(
        "portcullis_pool_waiting",
        "upstream=\"cap\"",
        want,
        Duration::from_secs(5),
    )
    .await
}

/// A payment queued behind a full pool whose client hangs up is never sent: it leaves the
/// line at once (499), and the connection that frees goes to the request behind it.
#[tokio::test]
async fn a_request_whose_client_hangs_up_while_queued_is_never_sent() {
    let o = origin()
        .handler(|r| match r.target.as_str() {
            "/slow" => Reply::ok("slow").delay(Duration::from_secs(8)),
            _ => Reply::ok("done"),
        })
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream(
        "cap",
        o.port(),
        "max_connections = 1\nmax_idle = 1\nacquire_timeout = \"30s\"",
    ))
    .await;
    let proxy = p.addr;
    let slow_url = o.url("/slow");
    let slow = tokio::spawn(async move { proxy_get(proxy, &slow_url).await.status });
    assert!(o.wait_for_requests(1, Duration::from_secs(5)).await);
    let host = format!("127.0.0.1:{}", o.port());
    let client = payment(p.addr, &o.url("/pay"), &host).await;
    assert!(
        waiting_reaches(&p, 1.0).await,
        "the payment queues behind /slow"
    );
    drop(client);
    assert!(
        waiting_reaches(&p, 0.0).await,
        "it leaves the line when its client hangs up, not when /slow frees the connection (8 s)"
    );
    assert_eq!(
        p.metric("portcullis_requests_total", "upstream=\"cap\",code=\"499\"")
            .await,
        1.0
    );
    assert_eq!(
        p.metric("portcullis_pool_acquire_timeouts_total", "upstream=\"cap\"")
            .await,
        0.0
    );
    assert_eq!(slow.await.expect("slow request task"), 200);
    // First come, first served: a payment still in the line would have been sent before this.
    assert_eq!(proxy_get(p.addr, &o.url("/after")).await.status, 200);
    assert!(
        seen(&o, "/pay").is_empty(),
        "the abandoned payment never reached the origin"
    );
    assert_eq!(o.connections_accepted(), 1, "one connection served both");
    p.stop().await;
}

#[tokio::test]
async fn no_free_connection_within_acquire_timeout_is_503() {
    let o = origin()
        .handler(|r| match r.target.as_str() {
            "/slow" => Reply::ok("slow").delay(Duration::from_millis(1500)),
            _ => Reply::ok("fast"),
        })
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream(
        "cap",
        o.port(),
        "max_connections = 1\nmax_idle = 1\nacquire_timeout = \"300ms\"",
    ))
    .await;
    let proxy = p.addr;
    let slow_url = o.url("/slow");
    let slow = tokio::spawn(async move { proxy_get(proxy, &slow_url).await.status });
    assert!(o.wait_for_requests(1, Duration::from_secs(2)).await);
    let t = Instant::now();
    let r = proxy_get(p.addr, &o.url("/fast")).await;
    assert_eq!(r.status, 503, "{r:?}");
    // Refused, not served: waiting past acquire_timeout (300 ms) until /slow freed the
    // connection (1.5 s, 1.2 s later) would have given a 200. A lower bound only.
    assert!(has_error(&r, "connection_limit_reached"), "{r:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        p.metric("portcullis_pool_acquire_timeouts_total", "upstream=\"cap\"")
            .await,
        1.0
    );
    assert_eq!(slow.await.expect("slow request task"), 200);
    assert_eq!(
        p.metric("portcullis_pool_waiting", "upstream=\"cap\"")
            .await,
        0.0
    );
    assert_eq!(proxy_get(p.addr, &o.url("/fast")).await.status, 200);
    assert!(eventually(Duration::from_secs(2), || o.connections_accepted() == 1).await);
    p.stop().await;
}
