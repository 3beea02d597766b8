//! CONNECT tunnels end to end: allowlisting, TLS through the tunnel, the idle timeout, metrics, pipelined bytes.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use support::*;

const WITHIN: Duration = Duration::from_secs(10);

fn connect_req(authority: &str) -> Vec<u8> {
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").into_bytes()
}

/// A raw TCP origin: hands each accepted stream to the test.
async fn raw_origin() -> (SocketAddr, mpsc::UnboundedReceiver<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            if tx.send(s).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// An origin that echoes every byte back.
async fn echo_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn open_tunnel(proxy: SocketAddr, authority: &str) -> TcpStream {
    let mut conn = ProxyConn::connect(proxy).await;
    let r = conn.send(&connect_req(authority)).await;
    assert_eq!(r.status, 200, "{r:?}");
    conn.into_stream()
}

#[tokio::test]
async fn tls_end_to_end_through_an_allowed_tunnel() {
    let ca = TestCa::new("tunnel-test");
    let cert = ca.issue(&["localhost", "127.0.0.1"]);
    let o = origin()
        .tls(&cert)
        .handler(|req| Reply::ok(format!("secret {}", req.target)))
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream("local", o.port(), "")).await;
    let tcp = open_tunnel(p.addr, &format!("127.0.0.1:{}", o.port())).await;
    let server_name = ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = tokio::time::timeout(WITHIN, ca.connector().connect(server_name, tcp))
        .await
        .expect("handshake in time")
        .expect("TLS handshake through the tunnel");
    for path in ["/one", "/two"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let r = exchange_on(&mut tls, req.as_bytes(), WITHIN).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body_text(), format!("secret {path}"));
    }
    assert_eq!(o.requests().len(), 2);
    assert!(
        o.requests()[0].header("via").is_none(),
        "the proxy cannot touch tunnelled bytes"
    );
    assert_eq!(
        p.metric("portcullis_tunnels_active", "upstream=\"local\"")
            .await,
        1.0
    );
}

#[tokio::test]
async fn connect_to_a_denied_host_or_port_is_403() {
    let (addr, mut accepted) = raw_origin().await;
    let p = spawn_proxy(&local_upstream("local", addr.port(), "")).await;
    let host = raw_exchange(p.addr, &connect_req("denied.example:443"), WITHIN).await;
    assert_refused(&host, 403, "http_request_denied", "a denied host");
    assert!(host.closed, "a refused CONNECT closes the connection");
    let port = raw_exchange(p.addr, &connect_req("127.0.0.1:22"), WITHIN).await;
    assert_refused(&port, 403, "http_request_denied", "a denied port");
    assert!(port.body_text().contains("port 22"), "{}", port.body_text());
    assert!(accepted.try_recv().is_err(), "nothing was dialed");
    assert_eq!(
        p.metric(
            "portcullis_requests_total",
            "method=\"CONNECT\",code=\"403\""
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn connect_without_port_is_400() {
    let (addr, mut accepted) = raw_origin().await;
    let p = spawn_proxy(&local_upstream("local", addr.port(), "")).await;
    for authority in ["127.0.0.1", "127.0.0.1:", "localhost"] {
        let r = raw_exchange(p.addr, &connect_req(authority), WITHIN).await;
        assert_refused(&r, 400, "http_request_error", authority);
    }
    assert!(accepted.try_recv().is_err(), "nothing was dialed");
}

#[tokio::test]
async fn idle_tunnel_is_closed_on_both_sides() {
    let (addr, mut accepted) = raw_origin().await;
    let p = spawn_proxy(&local_upstream(
        "local",
        addr.port(),
        "tunnel_idle_timeout = \"300ms\"",
    ))
    .await;
    let mut client = open_tunnel(p.addr, &format!("127.0.0.1:{}", addr.port())).await;
    let established = Instant::now();
    let mut upstream = tokio::time::timeout(WITHIN, accepted.recv())
        .await
        .expect("dialed")
        .expect("stream");
    // A little traffic first, then silence.
    client.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    upstream.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");

    // Closed by the idle timeout: not before it (`established` precedes the last byte, so a
    // slow machine only adds to `after`), and within a bound 10x the timeout.
    assert!(
        sees_eof(&mut client, Duration::from_secs(3)).await,
        "client side closed"
    );
    let after = established.elapsed();
    assert!(
        after >= Duration::from_millis(300),
        "closed after {after:?}"
    );
    assert!(
        sees_eof(&mut upstream, Duration::from_secs(1)).await,
        "origin side closed"
    );
    assert!(wait_metric(&p, "portcullis_tunnels_active", "upstream=\"local\"", 0.0).await);
}

#[tokio::test]
async fn active_tunnel_outlives_the_idle_timeout_and_is_counted() {
    let addr = echo_origin().await;
    let p = spawn_proxy(&local_upstream(
        "local",
        addr.port(),
        "tunnel_idle_timeout = \"1s\"",
    ))
    .await;
    let mut client = open_tunnel(p.addr, &format!("127.0.0.1:{}", addr.port())).await;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut buf = [0u8; 5];
    // 30 round trips 100 ms apart: three times the idle timeout, and each quiet spell a tenth
    // of it, so a slow machine stretching a 100 ms pause cannot reach the 1 s.
    for i in 0..30u8 {
        let msg = [b'a' + i; 5];
        client.write_all(&msg).await.expect("tunnel still open");
        tokio::time::timeout(Duration::from_secs(2), client.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .expect("tunnel still open");
        assert_eq!(buf, msg);
        sent += 5;
        if i == 5 {
            assert_eq!(
                p.metric("portcullis_tunnels_active", "upstream=\"local\"")
                    .await,
                1.0
            );
            // Counted as the bytes move, not only when the tunnel closes.
            let labels = "upstream=\"local\",direction=\"client\"";
            let so_far = p.metric("portcullis_tunnel_bytes_total", labels).await;
            assert_eq!(so_far, sent as f64, "bytes of an open tunnel");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(3));
    // Then silence: the idle timeout applies.
    assert!(sees_eof(&mut client, Duration::from_secs(5)).await);
    assert!(wait_metric(&p, "portcullis_tunnels_active", "upstream=\"local\"", 0.0).await);
    assert!(
        wait_metric(
            &p,
            "portcullis_tunnel_bytes_total",
            "upstream=\"local\",direction=\"upstream\"",
            sent as f64
        )
        .await
    );
    assert_eq!(
        p.metric(
            "portcullis_tunnel_bytes_total",
            "upstream=\"local\",direction=\"client\""
        )
        .await,
        sent as f64
    );
}

#[tokio::test]
async fn bytes_pipelined_after_the_connect_head_reach_the_origin() {
    let (addr, mut accepted) = raw_origin().await;
    let p = spawn_proxy(&local_upstream("local", addr.port(), "")).await;
    let mut conn = ProxyConn::connect(p.addr).await;
    let authority = format!("127.0.0.1:{}", addr.port());
    // One write: the CONNECT head and the first bytes of the tunnelled protocol.
    let mut req = connect_req(&authority);
    req.extend_from_slice(b"EARLY-BYTES");
    let r = conn.send(&req).await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut upstream = tokio::time::timeout(WITHIN, accepted.recv())
        .await
        .expect("dialed")
        .expect("stream");
    let mut buf = [0u8; 11];
    tokio::time::timeout(WITHIN, upstream.read_exact(&mut buf))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&buf, b"EARLY-BYTES");
    // And the reverse direction works.
    upstream.write_all(b"back").await.expect("write");
    let mut client = conn.into_stream();
    let mut back = [0u8; 4];
    tokio::time::timeout(WITHIN, client.read_exact(&mut back))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&back, b"back");
}

/// Polls a metric until it equals `want` (bounded); true if it did.
async fn wait_metric(p: &Proxy, name: &str, labels: &str, want: f64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if p.metric(name, labels).await == want {
            return true;
        }
        if Instant::now() >= deadline {
            eprintln!("{name}{{{labels}}} = {}", p.metric(name, labels).await);
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
