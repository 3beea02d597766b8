//! Absolute-form forwarding end to end (issue 2): every SPEC §4 refusal row, header rewriting, client limits and drain.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use support::*;

const WITHIN: Duration = Duration::from_secs(10);

/// Asserts a synthetic refusal: status, `Proxy-Status: portcullis; error=<token>`, a one-line text body.
#[track_caller]
fn assert_refused(r: &RawResponse, status: u16, token: &str) {
    assert_eq!(r.status, status, "expected {status} {token}, got {r:?}");
    let ps = r.header("proxy-status").unwrap_or_default();
    let wanted = format!("portcullis; error={token}");
    assert!(
        ps == wanted || ps.starts_with(&format!("{wanted};")),
        "Proxy-Status {ps:?}, wanted {wanted:?}"
    );
    let body = r.body_text();
    assert!(
        body.len() > 10 && body.ends_with('\n') && body.matches('\n').count() == 1,
        "body must be one line: {body:?}"
    );
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain"),
        "{r:?}"
    );
}

fn get_with(url: &str, extra: &str) -> Vec<u8> {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, r)| r)
        .split('/')
        .next()
        .unwrap_or_default();
    format!("GET {url} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n").into_bytes()
}

/// A loopback port nothing listens on.
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

// ------------------------------------------------------------ 400 / 431

#[tokio::test]
async fn origin_form_is_refused_with_400() {
    let o = origin().spawn().await;
    let p = spawn_proxy(&local_upstream("local", o.port(), "")).await;
    let r = raw_exchange(
        p.addr,
        b"GET /path HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        WITHIN,
    )
    .await;
    assert_refused(&r, 400, "http_request_error");
    let body = r.body_text();
    assert!(
        body.contains("absolute") && body.contains("CONNECT"),
        "tells the user what to send: {body}"
    );
    assert_eq!(o.connections_accepted(), 0);
}

#[tokio::test]
async fn malformed_request_is_refused_with_400_and_closed() {
    let o = origin().spawn().await;
    let p = spawn_proxy(&local_upstream("local", o.port(), "")).await;
    for req in [
        &b"NOT A REQUEST\r\n\r\n"[..],
        b"GET http://127.0.0.1/ HTTP/9.9\r\n\r\n",
        b"GET  http://127.0.0.1/ HTTP/1.1\r\n\r\n",
        b"GET http://127.0.0.1/ HTTP/1.1\r\nNoColon\r\n\r\n",
    ] {
        let r = raw_exchange(p.addr, req, WITHIN).await;
        assert_refused(&r, 400, "http_request_error");
        assert!(r.closed, "{r:?}");
    }
    assert_eq!(o.connections_accepted(), 0);
}

#[tokio::test]
async fn userinfo_uri_is_refused_with_400() {
    let o = origin().spawn().await;
    let p = spawn_proxy(&local_upstream("local", o.port(), "")).await;
    let url = format!("http://user:pw@127.0.0.1:{}/", o.port());
    let r = raw_exchange(p.addr, &get_with(&url, ""), WITHIN).await;
    assert_refused(&r, 400, "http_request_error");
    assert!(r.body_text().contains("userinfo"), "{}", r.body_text());
    assert_eq!(o.connections_accepted(), 0);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_and_closes() {
    let o = origin().spawn().await;
    let p = spawn_proxy(&local_upstream("local", o.port(), "")).await;
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        o.url("/")
    );
    let mut conn = ProxyConn::connect(p.addr).await;
    let r = conn.send(req.as_bytes()).await;
    assert_refused(&r, 400, "http_request_error");
    assert!(
        conn.wait_closed(Duration::from_secs(2)).await,
        "the connection is closed"
    );
    assert_eq!(o.connections_accepted(), 0);
}

#[tokio::test]
async fn oversized_head_is_431() {
    let o = origin().spawn().await;
    let p = spawn_proxy_with(
        "max_header_bytes = 4096",
        &local_upstream("local", o.port(), ""),
    )
    .await;
    let big = format!("X-Big: {}\r\n", "a".repeat(5000));
    let r = raw_exchange(p.addr, &get_with(&o.url("/"), &big), WITHIN).await;
    assert_refused(&r, 431, "http_request_error");
    assert!(r.closed);
    assert_eq!(o.connections_accepted(), 0);
    // Just under the limit still passes.
    let fits = format!("X-Big: {}\r\n", "a".repeat(3500));
    let r = raw_exchange(p.addr, &get_with(&o.url("/"), &fits), WITHIN).await;
    assert_eq!(r.status, 200, "{r:?}");
}

// ------------------------------------------------------------ 407 / 403

#[tokio::test]
async fn missing_or_wrong_credentials_get_407() {
    use base64::Engine;
    let var = format!("PORTCULLIS_TEST_FWD_PW_{}", std::process::id());
    std::env::set_var(&var, "s3cret");
    let o = origin().spawn().await;
    let rest = format!(
        "{}[[client]]\nname = \"app\"\nusername = \"app\"\npassword_env = \"{var}\"\nupstreams = [\"local\"]\n",
        local_upstream("local", o.port(), "")
    );
    let p = spawn_proxy(&rest).await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);

    let none = raw_exchange(p.addr, &get_with(&o.url("/"), ""), WITHIN).await;
    assert_refused(&none, 407, "http_request_denied");
    assert_eq!(
        none.header("proxy-authenticate"),
        Some("Basic realm=\"portcullis\"")
    );
    let wrong = format!("Proxy-Authorization: Basic {}\r\n", b64("app:nope"));
    let r = raw_exchange(p.addr, &get_with(&o.url("/"), &wrong), WITHIN).await;
    assert_refused(&r, 407, "http_request_denied");
    assert_eq!(
        r.header("proxy-authenticate"),
        Some("Basic realm=\"portcullis\"")
    );
    assert_eq!(o.connections_accepted(), 0);

    let right = format!("Proxy-Authorization: Basic {}\r\n", b64("app:s3cret"));
    let r = raw_exchange(p.addr, &get_with(&o.url("/"), &right), WITHIN).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = o.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("proxy-authorization"),
        None,
        "credentials are for the proxy only"
    );
    assert_eq!(
        p.metric("portcullis_denied_total", "reason=\"auth\"").await,
        2.0
    );
}

#[tokio::test]
async fn host_port_and_client_denials_are_403() {
    let o = origin().spawn().await;
    let p = spawn_proxy(&local_upstream("local", o.port(), "")).await;
    let host = raw_exchange(p.addr, &get_with("http://denied.example/", ""), WITHIN).await;
    assert_refused(&host, 403, "http_request_denied");
    assert!(host.body_text().contains("denied.example"));
    let port = raw_exchange(p.addr, &get_with("http://127.0.0.1:1/", ""), WITHIN).await;
    assert_refused(&port, 403, "http_request_denied");
    assert!(port.body_text().contains("port 1"), "{}", port.body_text());
    assert_eq!(
        p.metric("portcullis_denied_total", "reason=\"host\"").await,
        1.0
    );
    assert_eq!(
        p.metric("portcullis_denied_total", "reason=\"port\"").await,
        1.0
    );

    // A client identity only for 10.0.0.0/8: 127.0.0.1 is nobody.
    let rest = format!(
        "{}[[client]]\nname = \"tenants\"\ncidrs = [\"10.0.0.0/8\"]\nupstreams = [\"local\"]\n",
        local_upstream("local", o.port(), "")
    );
    let p2 = spawn_proxy(&rest).await;
    let r = raw_exchange(p2.addr, &get_with(&o.url("/"), ""), WITHIN).await;
    assert_refused(&r, 403, "http_request_denied");
    assert_eq!(
        p2.metric("portcullis_denied_total", "reason=\"client\"")
            .await,
        1.0
    );

    // A client that may use another upstream only.
    let rest = format!(
        "{}[[upstream]]\nname = \"other\"\nhosts = [\"other.example\"]\n[[client]]\nname = \"narrow\"\ncidrs = [\"127.0.0.0/8\"]\nupstreams = [\"other\"]\n",
        local_upstream("local", o.port(), "")
    );
    let p3 = spawn_proxy(&rest).await;
    let r = raw_exchange(p3.addr, &get_with(&o.url("/"), ""), WITHIN).await;
    assert_refused(&r, 403, "http_request_denied");
    assert!(r.body_text().contains("narrow"), "{}", r.body_text());
    assert_eq!(o.connections_accepted(), 0);
}

// ------------------------------------------------------------ private addresses

#[tokio::test]
async fn private_ip_literals_are_refused_before_dialing() {
    let o = origin().spawn().await;
    let port = o.port();
    let literals = [
        ("127.0.0.1", "127.0.0.1"),
        ("10.1.2.3", "10.1.2.3"),
        ("172.16.0.1", "172.16.0.1"),
        ("192.168.1.1", "192.168.1.1"),
        ("100.64.0.1", "100.64.0.1"),
        ("169.254.169.254", "169.254.169.254"),
        ("[::1]", "::1"),
        ("[fc00::1]", "fc00::1"),
        ("[fe80::1]", "fe80::1"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("0.0.0.0", "0.0.0.0"),
        ("224.0.0.1", "224.0.0.1"),
    ];
    let hosts: Vec<String> = literals.iter().map(|(_, h)| format!("\"{h}\"")).collect();
    // Each host is allowed, so the private-address check is the only thing that can refuse.
    let rest = format!(
        "[defaults]\nconnect_timeout = \"300ms\"\n[[upstream]]\nname = \"lits\"\nhosts = [{}]\nports = [{port}]\nallow_private = false\n",
        hosts.join(", ")
    );
    let p = spawn_proxy(&rest).await;
    for (url_host, _) in literals {
        let url = format!("http://{url_host}:{port}/meta");
        let r = raw_exchange(p.addr, &get_with(&url, ""), WITHIN).await;
        assert_refused(&r, 403, "destination_ip_prohibited");
        assert!(!r.closed, "a policy refusal keeps the connection: {url}");
    }
    // 127.0.0.1, 0.0.0.0 and ::ffff:127.0.0.1 would all have reached this origin.
    assert_eq!(o.connections_accepted(), 0, "nothing was dialed");
    assert_eq!(
        p.metric("portcullis_denied_total", "reason=\"private_ip\"")
            .await,
        literals.len() as f64
    );
}

#[tokio::test]
async fn names_resolving_to_private_addresses_are_refused() {
    let o = origin().spawn().await;
    let port = o.port();
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let records = [
        ("loopback.pay.test", ip("127.0.0.1")),
        ("rfc1918-a.pay.test", ip("10.1.2.3")),
        ("rfc1918-b.pay.test", ip("172.16.0.1")),
        ("rfc1918-c.pay.test", ip("192.168.1.1")),
        ("cgnat.pay.test", ip("100.64.0.1")),
        ("metadata.pay.test", ip("169.254.169.254")),
        ("v6-loopback.pay.test", ip("::1")),
        ("ula.pay.test", ip("fc00::1")),
        ("v6-link-local.pay.test", ip("fe80::1")),
        ("mapped.pay.test", ip("::ffff:127.0.0.1")),
        ("unspecified.pay.test", ip("0.0.0.0")),
        ("multicast.pay.test", ip("224.0.0.1")),
        // One public (documentation range) and one private answer: refused as a whole.
        ("mixed.pay.test", ip("192.0.2.1")),
        ("mixed.pay.test", ip("10.0.0.1")),
    ];
    let dns = TestDns::spawn(&records).await;
    let rest = format!(
        "[defaults]\nconnect_timeout = \"300ms\"\n[[upstream]]\nname = \"pay\"\nhosts = [\"*.pay.test\"]\nports = [{port}]\nallow_private = false\n"
    );
    let p = spawn_proxy_with(&format!("dns_servers = [\"{}\"]", dns.addr), &rest).await;
    let mut names: Vec<&str> = records.iter().map(|(n, _)| *n).collect();
    names.dedup();
    for name in &names {
        let url = format!("http://{name}:{port}/");
        let r = raw_exchange(p.addr, &get_with(&url, ""), WITHIN).await;
        assert_refused(&r, 403, "destination_ip_prohibited");
        assert!(
            dns.queries_for(name) > 0,
            "{name} was resolved through TestDns"
        );
    }
    assert_eq!(o.connections_accepted(), 0, "nothing was dialed");
}

// ------------------------------------------------------------ DNS and connect failures

#[tokio::test]
async fn nxdomain_is_502_dns_error() {
    let dns = TestDns::spawn(&[("known.pay.test", IpAddr::V4(Ipv4Addr::LOCALHOST))]).await;
    let rest = "[[upstream]]\nname = \"pay\"\nhosts = [\"*.pay.test\"]\nports = [80]\nallow_private = true\n";
    let p = spawn_proxy_with(&format!("dns_servers = [\"{}\"]", dns.addr), rest).await;
    let r = raw_exchange(p.addr, &get_with("http://missing.pay.test/", ""), WITHIN).await;
    assert_refused(&r, 502, "dns_error");
    assert!(r.body_text().contains("missing.pay.test"));
    assert!(dns.queries_for("missing.pay.test") > 0);
}

#[tokio::test]
async fn closed_port_is_502_connection_refused() {
    let port = closed_port().await;
    let p = spawn_proxy(&local_upstream("local", port, "")).await;
    let r = raw_exchange(
        p.addr,
        &get_with(&format!("http://127.0.0.1:{port}/"), ""),
        WITHIN,
    )
    .await;
    assert_refused(&r, 502, "connection_refused");
}

/// A loopback listener whose accept queue is full: further SYNs are dropped, so connects hang.
/// Returns the listener and the connections that fill its queue (all must stay alive).
async fn full_backlog_listener() -> (socket2::Socket, SocketAddr, Vec<TcpStream>) {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    s.listen(0).expect("listen");
    let addr = s
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet addr");
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(c)) => fillers.push(c),
            Ok(Err(e)) => panic!("filling the backlog: {e}"),
            Err(_) => return (s, addr, fillers),
        }
    }
    panic!("the accept queue never filled");
}

#[tokio::test]
async fn connect_over_connect_timeout_is_504() {
    let (_listener, addr, _fillers) = full_backlog_listener().await;
    // The premise: a connect to it really hangs.
    let probe = tokio::time::timeout(Duration::from_millis(400), TcpStream::connect(addr)).await;
    assert!(probe.is_err(), "connect should hang, got {probe:?}");

    let p = spawn_proxy(&local_upstream(
        "local",
        addr.port(),
        "connect_timeout = \"300ms\"",
    ))
    .await;
    let started = Instant::now();
    let r = raw_exchange(
        p.addr,
        &get_with(&format!("http://127.0.0.1:{}/", addr.port()), ""),
        WITHIN,
    )
    .await;
    let took = started.elapsed();
    assert_refused(&r, 504, "connection_timeout");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "took {took:?}"
    );
}

#[tokio::test]
async fn the_next_address_is_tried_when_one_refuses() {
    // The origin listens on 127.0.0.1 only, so 127.0.0.2 on its port refuses.
    let o = origin().handler(|_| Reply::ok("second")).spawn().await;
    let port = o.port();
    let dns = TestDns::spawn(&[
        ("multi.pay.test", "127.0.0.2".parse().expect("ip")),
        ("multi.pay.test", "127.0.0.1".parse().expect("ip")),
        ("only-bad.pay.test", "127.0.0.2".parse().expect("ip")),
    ])
    .await;
    let rest = format!(
        "[[upstream]]\nname = \"pay\"\nhosts = [\"*.pay.test\"]\nports = [{port}]\nallow_private = true\n"
    );
    let p = spawn_proxy_with(&format!("dns_servers = [\"{}\"]", dns.addr), &rest).await;
    // The premise: the first address alone is refused.
    let bad = raw_exchange(
        p.addr,
        &get_with(&format!("http://only-bad.pay.test:{port}/"), ""),
        WITHIN,
    )
    .await;
    assert_refused(&bad, 502, "connection_refused");
    let r = raw_exchange(
        p.addr,
        &get_with(&format!("http://multi.pay.test:{port}/"), ""),
        WITHIN,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_text(), "second");
    assert_eq!(
        o.requests()[0].header("host"),
        Some(&*format!("multi.pay.test:{port}"))
    );
}

// ------------------------------------------------------------ what goes upstream

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_via_added_both_ways() {
    let o = origin()
        .handler(|_| {
            Reply::ok("body")
                .header("Connection", "X-Bar")
                .header("X-Bar", "hop")
                .header("Keep-Alive", "timeout=30")
                .header("Proxy-Connection", "keep-alive")
                .header("X-End", "kept")
        })
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream("local", o.port(), "")).await;
    let extra = "Connection: keep-alive, X-Foo\r\nX-Foo: hop\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nTE: trailers\r\nTrailer: X-Checksum\r\nUpgrade: websocket\r\nX-End-To-End: kept\r\n";
    let r = raw_exchange(p.addr, &get_with(&o.url("/h"), extra), WITHIN).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &o.requests()[0];
    for h in [
        "x-foo",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert_eq!(seen.header(h), None, "{h} reached the origin: {seen:?}");
    }
    assert!(
        seen.header("connection")
            .is_none_or(|v| !v.to_ascii_lowercase().contains("x-foo")),
        "{seen:?}"
    );
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    assert_eq!(seen.header_all("via"), ["1.1 portcullis"]);

    for h in ["x-bar", "keep-alive", "proxy-connection"] {
        assert_eq!(r.header(h), None, "{h} reached the client: {r:?}");
    }
    assert_eq!(r.header("x-end"), Some("kept"));
    assert_eq!(r.header("via"), Some("1.1 portcullis"));
}

#[tokio::test]
async fn host_header_is_replaced_and_the_path_forwarded_exactly() {
    let o = origin().spawn().await;
    let p = spawn_proxy(&local_upstream("local", o.port(), "")).await;
    let paths = [
        "/",
        "/a/b%20c?x=1&y=%2F&z",
        "/p;matrix=1/q?empty=&dup=1&dup=2",
        "/~user/./x/../y?q=a+b%3D",
    ];
    for path in paths {
        let req = format!("GET {} HTTP/1.1\r\nHost: evil.example\r\n\r\n", o.url(path));
        let r = raw_exchange(p.addr, req.as_bytes(), WITHIN).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    let seen = o.requests();
    assert_eq!(seen.len(), paths.len());
    for (req, path) in seen.iter().zip(paths) {
        assert_eq!(req.target, path);
        assert_eq!(req.header_all("host"), [format!("127.0.0.1:{}", o.port())]);
    }
    // An empty path is "/" upstream, and a query after it is kept (RFC 9112 §3.2.1).
    for (sent, expected) in [("", "/"), ("?x=1&y", "/?x=1&y")] {
        let req = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", o.url(sent));
        let r = raw_exchange(p.addr, req.as_bytes(), WITHIN).await;
        assert_eq!(r.status, 200, "{sent:?}: {r:?}");
        assert_eq!(
            o.requests().last().map(|q| q.target.clone()),
            Some(expected.into())
        );
    }
    // No explicit port in the URI: the Host has none either.
    let dns = TestDns::spawn(&[("api.pay.test", IpAddr::V4(Ipv4Addr::LOCALHOST))]).await;
    let rest = format!(
        "[[upstream]]\nname = \"pay\"\nhosts = [\"api.pay.test\"]\nports = [{}]\nallow_private = true\n",
        o.port()
    );
    let p2 = spawn_proxy_with(&format!("dns_servers = [\"{}\"]", dns.addr), &rest).await;
    let r = raw_exchange(
        p2.addr,
        format!(
            "GET http://API.pay.test:{}/x HTTP/1.1\r\nHost: other\r\n\r\n",
            o.port()
        )
        .as_bytes(),
        WITHIN,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        o.requests()
            .last()
            .and_then(|r| r.header("host").map(str::to_string)),
        Some(format!("api.pay.test:{}", o.port()))
    );
}

#[tokio::test]
async fn chunked_request_and_chunked_response() {
    let o = origin()
        .handler(|req| Reply::ok(format!("echo:{}", req.body_text())).chunked())
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream("local", o.port(), "")).await;
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        o.url("/c")
    );
    let r = raw_exchange(p.addr, req.as_bytes(), WITHIN).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_text(), "echo:hello world");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(o.requests()[0].body_text(), "hello world");
}

#[tokio::test]
async fn http10_client_is_served_and_closed() {
    let o = origin()
        .handler(|_| Reply::ok("old").chunked())
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream("local", o.port(), "")).await;
    let req = format!("GET {} HTTP/1.0\r\n\r\n", o.url("/old"));
    let r = raw_exchange(p.addr, req.as_bytes(), WITHIN).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_text(), "old");
    assert_eq!(r.header("transfer-encoding"), None, "no chunked to 1.0");
    assert!(r.closed);
    assert_eq!(o.requests()[0].target, "/old");
}

/// A client that asked to close, and sent all it had, gets its response and our FIN and the
/// proxy is done with the connection at once, even while the client keeps its end open (some
/// libraries close only when the socket is collected). It used to read on, waiting for the
/// client's FIN for up to 2 s, holding the connection's `max_client_connections` slot.
#[tokio::test]
async fn a_client_that_asked_to_close_is_let_go_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let o = origin().handler(|_| Reply::ok("done")).spawn().await;
    let p = spawn_proxy(&local_upstream("local", o.port(), "")).await;
    let host = format!("127.0.0.1:{}", o.port());
    let requests = [
        format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            o.url("/g")
        ),
        format!(
            "POST {} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            o.url("/p")
        ),
        format!("GET {} HTTP/1.0\r\nHost: {host}\r\n\r\n", o.url("/old")),
    ];
    let mut held = Vec::new();
    for req in &requests {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(WITHIN, s.read_to_end(&mut got))
            .await
            .expect("response and FIN within the deadline")
            .unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1."), "{text}");
        assert!(text.contains(" 200 ") && text.ends_with("done"), "{text}");
        held.push(s);
    }
    assert_eq!(o.requests().len(), 3);
    // Well inside the 2 s the proxy would have waited for each client's FIN.
    let deadline = Instant::now() + Duration::from_millis(1000);
    loop {
        let open = p.metric("portcullis_client_connections", "").await;
        if open == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} client connections still open with their clients' ends open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
}

#[tokio::test]
async fn keep_alive_client_sends_five_requests_on_one_connection() {
    let o = origin()
        .handler(|req| Reply::ok(req.target.clone()))
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream("local", o.port(), "")).await;
    let mut conn = ProxyConn::connect(p.addr).await;
    for i in 0..5 {
        let r = conn.get(&o.url(&format!("/{i}"))).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body_text(), format!("/{i}"));
        assert!(!r.closed);
    }
    assert!(!conn.is_closed().await);
    assert_eq!(o.requests().len(), 5);
    assert_eq!(p.metric("portcullis_client_connections", "").await, 1.0);
}

#[tokio::test]
async fn curl_through_x_for_get_and_post_and_through_p() {
    let o = origin()
        .handler(|req| Reply::ok(format!("{} {} {}", req.method, req.target, req.body_text())))
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream("local", o.port(), "")).await;
    let proxy = format!("http://{}", p.addr);
    let get = curl(&["-x", &proxy, &o.url("/g?q=1")]).await;
    assert_eq!((get.exit_code, get.status), (0, 200), "{get:?}");
    assert_eq!(get.body_text(), "GET /g?q=1 ");
    assert_eq!(get.header("via"), Some("1.1 portcullis"));

    let post = curl(&["-x", &proxy, "-d", "amount=10", &o.url("/pay")]).await;
    assert_eq!((post.exit_code, post.status), (0, 200), "{post:?}");
    assert_eq!(post.body_text(), "POST /pay amount=10");

    let tunnel = curl(&["-p", "-x", &proxy, &o.url("/t")]).await;
    assert_eq!(
        (tunnel.exit_code, tunnel.connect_status, tunnel.status),
        (0, 200, 200),
        "{tunnel:?}"
    );
    assert_eq!(tunnel.body_text(), "GET /t ");
    // Through the tunnel the origin sees curl's own request, no Via.
    assert!(o.requests()[2].header("via").is_none());
}

// ------------------------------------------------------------ client limits and drain

#[tokio::test]
async fn idle_client_connection_is_closed_after_client_idle_timeout() {
    let o = origin().spawn().await;
    let p = spawn_proxy_with(
        "client_idle_timeout = \"300ms\"",
        &local_upstream("local", o.port(), ""),
    )
    .await;
    let mut conn = ProxyConn::connect(p.addr).await;
    // Before the request: the proxy's idle clock cannot start earlier than this.
    let idle_from = Instant::now();
    assert_eq!(conn.get(&o.url("/")).await.status, 200);
    assert!(
        conn.wait_closed(Duration::from_secs(3)).await,
        "idle client never closed"
    );
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(280), "closed after {idle:?}");
}

#[tokio::test]
async fn third_client_waits_until_one_of_two_closes() {
    let o = origin().spawn().await;
    let p = spawn_proxy_with(
        "max_client_connections = 2",
        &local_upstream("local", o.port(), ""),
    )
    .await;
    let mut a = ProxyConn::connect(p.addr).await;
    let mut b = ProxyConn::connect(p.addr).await;
    assert_eq!(a.get(&o.url("/a")).await.status, 200);
    assert_eq!(b.get(&o.url("/b")).await.status, 200);
    let (proxy, url) = (p.addr, o.url("/c"));
    let third = tokio::spawn(async move { proxy_get(proxy, &url).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "third client served beyond the limit");
    assert_eq!(o.requests().len(), 2);
    // Served once a slot frees; were the slot kept until `a`'s idle timeout (60 s), the
    // deadline would pass first.
    drop(a);
    let r = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("third client served once a slot frees")
        .expect("task");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(b.get(&o.url("/b2")).await.status, 200);
}

#[tokio::test]
async fn drain_lets_an_in_flight_request_finish_while_readyz_is_503() {
    let o = origin()
        .handler(|_| Reply::ok("finished").delay(Duration::from_millis(500)))
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream("local", o.port(), "")).await;
    let (proxy, admin) = (p.addr, p.admin);
    assert_eq!(p.admin_get("/readyz").await.0, 200);
    let url = o.url("/slow");
    let in_flight = tokio::spawn(async move { proxy_get(proxy, &url).await });
    assert!(o.wait_for_requests(1, WITHIN).await);
    let stopping = tokio::spawn(p.stop());

    let readyz = raw_exchange(
        admin,
        b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        WITHIN,
    )
    .await;
    assert_eq!(readyz.status, 503, "{readyz:?}");
    assert!(!in_flight.is_finished(), "the request was still in flight");
    // No new requests are taken while draining.
    let late = raw_exchange(
        proxy,
        &get_with(&o.url("/late"), ""),
        Duration::from_secs(3),
    )
    .await;
    assert_ne!(late.status, 200, "{late:?}");

    let r = in_flight.await.expect("task");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_text(), "finished");
    tokio::time::timeout(Duration::from_secs(3), stopping)
        .await
        .expect("drain ends once the request is done")
        .expect("task");
    assert_eq!(o.requests().len(), 1);
}

/// SPEC §4: header names keep the client's spelling upstream (some bank endpoints match them
/// case-sensitively), on plain forwarding and on TLS origination alike; names the client sent
/// in lower case stay so, and values and bodies are untouched.
#[tokio::test]
async fn header_names_reach_the_origin_as_the_client_spelled_them() {
    let ca = TestCa::new("case-ca");
    let plain = origin().spawn().await;
    let tls = origin().tls(&ca.issue(&["localhost"])).spawn().await;
    let dir = std::env::temp_dir().join(format!("portcullis-case-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca_file = ca.write_pem(&dir);
    // The bank first: the plain upstream allows localhost too, and the first match decides.
    let p = spawn_proxy(&format!(
        "[[upstream]]\nname = \"bank\"\nhosts = [\"localhost\"]\nports = [{}]\ntls = \"originate\"\nallow_private = true\nca_file = \"{}\"\n{}",
        tls.port(),
        ca_file.display(),
        local_upstream("plain", plain.port(), ""),
    ))
    .await;
    let mut conn = ProxyConn::connect(p.addr).await;
    for (o, host) in [(&plain, "127.0.0.1"), (&tls, "localhost")] {
        let url = format!("http://{host}:{}/pay", o.port());
        let req = format!(
            "POST {url} HTTP/1.1\r\nHOST: {host}\r\nX-Bank-SIGNATURE: Sig=AbC\r\nx-lower: v\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"
        );
        let r = conn.send(req.as_bytes()).await;
        assert_eq!(r.status, 200, "{r:?}");
        let seen = o.requests();
        let names: Vec<&str> = seen[0].headers.iter().map(|(n, _)| n.as_str()).collect();
        for name in ["HOST", "X-Bank-SIGNATURE", "x-lower", "Content-Type"] {
            assert!(
                names.contains(&name),
                "{name} not as sent to {host}: {names:?}"
            );
        }
        assert_eq!(seen[0].header("x-bank-signature"), Some("Sig=AbC"));
        assert_eq!(seen[0].body_text(), "body");
    }
    let _ = std::fs::remove_dir_all(&dir);
    p.stop().await;
}
