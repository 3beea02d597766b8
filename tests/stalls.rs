//! Stalls and truncation (issue 15): request bodies that stop arriving, clients that stop
//! reading, upstreams that go silent mid-body, and streamed bodies that end early must each
//! end the exchange, close both sides, and never leave an upstream believing a truncated body
//! was whole.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use support::*;

const WITHIN: Duration = Duration::from_secs(15);

/// Everything the peer sends until it closes (bounded by `within`).
async fn read_to_close(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(WITHIN, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

// ------------------------------------------------------------ 1. stalled request bodies

/// Three hundred uploads that stop half-way, against `max_client_connections = 10`: each is
/// answered 408 (`http_request_error`) after `client_stall_timeout` and its slot freed, so a
/// good request made after them still gets through. Before, the first ten held their
/// connections (and slots, and replay buffers) for ever and everything after them waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_are_answered_408_and_free_their_slot() {
    let o = origin().spawn().await;
    let p = spawn_proxy_with(
        "max_client_connections = 10\nclient_stall_timeout = \"300ms\"",
        &local_upstream("local", o.port(), ""),
    )
    .await;
    let url = o.url("/upload");
    const STALLED: usize = 300;
    let mut tasks = Vec::new();
    for i in 0..STALLED {
        let (addr, url) = (p.addr, url.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = connect(addr).await;
            // Half of them chunked, half with a Content-Length; 1000 of 4000 bytes sent.
            let head = if i % 2 == 0 {
                format!(
                    "POST {url} HTTP/1.1\r\nHost: {}\r\nContent-Length: 4000\r\n\r\n",
                    authority(&url)
                )
            } else {
                format!(
                    "POST {url} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\nfa0\r\n",
                    authority(&url)
                )
            };
            s.write_all(head.as_bytes()).await.expect("head");
            s.write_all(&[b'x'; 1000]).await.expect("part of the body");
            let answer = read_to_close(&mut s, Duration::from_secs(60)).await;
            String::from_utf8_lossy(&answer).into_owned()
        }));
    }
    for t in tasks {
        let answer = t.await.expect("client task");
        assert!(
            answer.starts_with("HTTP/1.1 408 "),
            "a stalled upload got {answer:?}"
        );
        assert!(
            answer.contains("portcullis; error=http_request_error"),
            "{answer:?}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer:?}"
        );
        assert_eq!(
            answer.split("\r\n\r\n").nth(1).map(|b| b.lines().count()),
            Some(1)
        );
    }
    let ok = proxy_get(p.addr, &o.url("/after")).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(o.requests().iter().all(|r| r.target != "/upload"));
    let counted = p
        .metric("portcullis_requests_total", "method=\"POST\",code=\"408\"")
        .await;
    assert_eq!(counted, STALLED as f64);
}

/// A body larger than `max_replay_body` is streamed; when it stalls, the upstream connection
/// is aborted (the origin never receives a whole request, chunked or not) and the client is
/// answered 408, since no response had begun.
#[tokio::test]
async fn a_stalled_streamed_body_aborts_the_upstream_connection() {
    let o = origin().spawn().await;
    let p = spawn_proxy_with(
        "client_stall_timeout = \"500ms\"",
        &local_upstream("local", o.port(), "max_replay_body = 1024"),
    )
    .await;
    let url = o.url("/stream");
    for chunked in [false, true] {
        let mut s = connect(p.addr).await;
        let head = if chunked {
            format!(
                "POST {url} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n",
                authority(&url)
            )
        } else {
            format!(
                "POST {url} HTTP/1.1\r\nHost: {}\r\nContent-Length: 8192\r\n\r\n",
                authority(&url)
            )
        };
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&[b'y'; 4096]).await.unwrap();
        if chunked {
            // A complete first chunk: the upstream has a well-formed body so far.
            s.write_all(b"\r\n").await.unwrap();
        }
        let before = o.connections_accepted();
        assert!(
            eventually(WITHIN, || o.connections_accepted() > before).await,
            "the body was streamed upstream"
        );
        let answer = String::from_utf8_lossy(&read_to_close(&mut s, WITHIN).await).into_owned();
        assert!(
            answer.starts_with("HTTP/1.1 408 "),
            "chunked={chunked}: {answer:?}"
        );
        assert!(
            o.wait_for_open_connections(0, WITHIN).await,
            "chunked={chunked}: the upstream connection was aborted"
        );
        assert!(
            o.requests().is_empty(),
            "chunked={chunked}: the origin took a truncated body as whole: {:?}",
            o.requests()
        );
    }
}

/// A slow upload that keeps moving is not a stall: 12 pieces, one every 150 ms, with
/// `client_stall_timeout = 400ms` (the whole body takes four times the timeout).
#[tokio::test]
async fn a_slow_but_moving_upload_is_served() {
    let o = origin()
        .handler(|r| Reply::ok(r.body.len().to_string()))
        .spawn()
        .await;
    let p = spawn_proxy_with(
        "client_stall_timeout = \"400ms\"",
        &local_upstream("local", o.port(), "max_replay_body = 4096"),
    )
    .await;
    for replay_limit_exceeded in [false, true] {
        let piece = if replay_limit_exceeded { 1000 } else { 100 };
        let url = o.url("/slow");
        let mut s = connect(p.addr).await;
        let head = format!(
            "POST {url} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            authority(&url),
            piece * 12
        );
        s.write_all(head.as_bytes()).await.unwrap();
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            s.write_all(&vec![b'z'; piece]).await.unwrap();
        }
        let answer = String::from_utf8_lossy(&read_to_close(&mut s, WITHIN).await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
        assert!(answer.ends_with(&(piece * 12).to_string()), "{answer:?}");
    }
}
