//! One access line per request, whichever way it ends (SPEC §8): forwarded, refused by policy
//! (as a request or as a CONNECT), malformed, cut short by a client that hangs up, refused
//! while draining, or tunnelled — each with the same fields meaning the same things, read
//! from the real binary's JSON log.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

/// The JSON access lines logged so far.
fn access_lines(p: &Portcullis) -> Vec<Value> {
    p.stderr_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect()
}

/// Wait (bounded) for the access line that `want` picks; it must be the only such line.
async fn one_line(p: &Portcullis, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let found: Vec<Value> = access_lines(p).into_iter().filter(|v| want(v)).collect();
        match found.len() {
            0 if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            1 => return found.into_iter().next().expect("one line"),
            n => panic!("{n} access lines for {what}:\n{}", p.stderr_text()),
        }
    }
}

/// The one-line body of a refusal, as the client received it.
fn body_len(r: &RawResponse) -> u64 {
    r.body.len() as u64
}

#[tokio::test]
async fn every_way_a_request_ends_has_one_line_with_consistent_fields() {
    let o = origin().handler(|_| Reply::ok("hello")).spawn().await;
    let dir = scratch("access-ends");
    let rest = format!(
        "{}[[upstream]]\nname = \"originating\"\nhosts = [\"api.originate.test\"]\nports = [8443]\ntls = \"originate\"\n",
        upstream(&[o.port()], "")
    );
    let p = start(&dir, &rest, &["--log-format", "json"], &[]).await;

    // Forwarded.
    let ok = proxy_get(p.proxy, &o.url("/ok?secret=1")).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let line = one_line(&p, "the forwarded GET", |v| v["path"] == "/ok").await;
    assert_eq!(line["mode"], "forward");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], "local");
    assert_eq!(line["port"], o.port());
    assert_eq!(line["attempts"], 1);
    assert_eq!(line["bytes_out"], 5);
    assert_eq!(line["error"], "-");

    // Refused by policy, as a request and as a CONNECT: the port that would have been dialed,
    // nothing sent upstream, and the refusal's body counted the same way.
    let denied = proxy_get(p.proxy, "http://denied.example/x").await;
    assert_eq!(denied.status, 403, "{denied:?}");
    let line = one_line(&p, "the denied GET", |v| v["host"] == "denied.example").await;
    assert_eq!(line["mode"], "forward");
    assert_eq!(
        (line["status"].clone(), line["port"].clone()),
        (403.into(), 80.into())
    );
    assert_eq!(line["attempts"], 0);
    assert_eq!(line["bytes_out"], body_len(&denied));
    assert_eq!(line["upstream"], "none");
    assert_eq!(line["error"], "http_request_denied");

    let connect =
        b"CONNECT denied-tunnel.example:443 HTTP/1.1\r\nHost: denied-tunnel.example:443\r\n\r\n";
    let denied = raw_exchange(p.proxy, connect, WITHIN).await;
    assert_eq!(denied.status, 403, "{denied:?}");
    let line = one_line(&p, "the denied CONNECT", |v| {
        v["host"] == "denied-tunnel.example"
    })
    .await;
    assert_eq!(line["mode"], "tunnel");
    assert_eq!(line["method"], "CONNECT");
    assert_eq!(
        (line["status"].clone(), line["port"].clone()),
        (403.into(), 443.into())
    );
    assert_eq!(line["attempts"], 0);
    assert_eq!(line["bytes_out"], body_len(&denied));
    assert_eq!(line["error"], "http_request_denied");

    // An originating upstream dials 443 for a URI without a port: refused by its port list,
    // the line names 443, not the scheme's 80.
    let denied = proxy_get(p.proxy, "http://api.originate.test/v1").await;
    assert_eq!(denied.status, 403, "{denied:?}");
    let line = one_line(&p, "the port refusal", |v| {
        v["host"] == "api.originate.test"
    })
    .await;
    assert_eq!(line["port"], 443, "{line}");

    // Not even a request head.
    let garbage = raw_exchange(p.proxy, b"\x01\x02 nonsense\r\n\r\n", WITHIN).await;
    assert_eq!(garbage.status, 400, "{garbage:?}");
    let line = one_line(&p, "the malformed request", |v| v["status"] == 400).await;
    assert_eq!(line["method"], "-");
    assert_eq!(line["error"], "http_request_error");
    assert_eq!(line["bytes_out"], body_len(&garbage));

    // A tunnel that was opened.
    let connect = format!(
        "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
        port = o.port()
    );
    let opened = raw_exchange(p.proxy, connect.as_bytes(), WITHIN).await;
    assert_eq!(opened.status, 200, "{opened:?}");
    let line = one_line(&p, "the tunnel", |v| {
        v["method"] == "CONNECT" && v["status"] == 200
    })
    .await;
    assert_eq!(line["mode"], "tunnel");
    assert_eq!(line["attempts"], 1);
    assert_eq!(line["port"], o.port());
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_body_is_logged_as_499_not_as_its_bad_request() {
    let o = origin().spawn().await;
    let dir = scratch("access-gone");
    let p = start(
        &dir,
        &upstream(&[o.port()], ""),
        &["--log-format", "json"],
        &[],
    )
    .await;
    let mut conn = ProxyConn::connect(p.proxy).await;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nonly-part",
        o.url("/upload")
    );
    conn.write(head.as_bytes()).await.expect("write");
    // The proxy has the head and part of the body; then the client vanishes.
    p.wait_metric("portcullis_client_connections", "", |v| v >= 1.0)
        .await;
    drop(conn);
    let line = one_line(&p, "the abandoned upload", |v| v["path"] == "/upload").await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["error"], "client_closed", "{line}");
    let counted = p
        .wait_metric("portcullis_requests_total", "code=\"499\"", |v| v >= 1.0)
        .await;
    assert_eq!(counted, 1.0);
    assert_eq!(
        p.metric("portcullis_requests_total", "code=\"400\"").await,
        0.0
    );
    assert!(o.requests().is_empty(), "nothing reached the origin");
}

#[tokio::test]
async fn a_request_refused_while_draining_is_logged_and_counted() {
    let o = origin().spawn().await;
    let dir = scratch("access-drain");
    let mut p = start(
        &dir,
        &upstream(&[o.port()], ""),
        &["--log-format", "json"],
        &[],
    )
    .await;
    // A connection mid-head when the drain begins: its request is refused, not forwarded.
    let mut conn = ProxyConn::connect(p.proxy).await;
    let url = o.url("/late");
    conn.write(format!("GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n").as_bytes())
        .await
        .expect("write");
    p.wait_metric("portcullis_client_connections", "", |v| v >= 1.0)
        .await;
    p.signal("TERM");
    let deadline = tokio::time::Instant::now() + WITHIN;
    while p.admin_get("/readyz").await.0 != 503 {
        assert!(tokio::time::Instant::now() < deadline, "never draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = conn.send(b"\r\n").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.header("proxy-status")
            .is_some_and(|v| v.contains("proxy_internal_response")),
        "{r:?}"
    );
    let line = one_line(&p, "the refused request", |v| v["path"] == "/late").await;
    assert_eq!(line["status"], 503);
    assert_eq!(line["error"], "proxy_internal_response");
    assert_eq!(line["bytes_out"], body_len(&r));
    assert!(p.wait_exit(WITHIN).await.is_some(), "exits after the drain");
    assert!(o.requests().is_empty());
}
