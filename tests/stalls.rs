//! Stalls and truncation (issue 15): request bodies that stop arriving, clients that stop
//! reading, upstreams that go silent mid-body, and streamed bodies that end early must each
//! end the exchange, close both sides, and never leave an upstream believing a truncated body
//! was whole.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
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

/// A slow upload that keeps moving is not a stall: 24 pieces, one every 100 ms, with
/// `client_stall_timeout = 1s` and `response_timeout = 1s`: the whole body takes more than
/// twice either, and each pause is a tenth of either, so a slow machine stretching a pause
/// does not make it a stall. Streamed (over `max_replay_body`), it was answered 504 after
/// `response_timeout`, which counted from the first byte sent instead of the last.
#[tokio::test]
async fn a_slow_but_moving_upload_is_served() {
    let o = origin()
        .handler(|r| Reply::ok(r.body.len().to_string()))
        .spawn()
        .await;
    let p = spawn_proxy_with(
        "client_stall_timeout = \"1s\"",
        &local_upstream(
            "local",
            o.port(),
            "max_replay_body = 4096\nresponse_timeout = \"1s\"",
        ),
    )
    .await;
    for streamed in [false, true] {
        let piece = if streamed { 500 } else { 50 };
        let url = o.url("/slow");
        let mut s = connect(p.addr).await;
        let head = format!(
            "POST {url} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            authority(&url),
            piece * 24
        );
        s.write_all(head.as_bytes()).await.unwrap();
        for _ in 0..24 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.write_all(&vec![b'z'; piece]).await.unwrap();
        }
        let answer = String::from_utf8_lossy(&read_to_close(&mut s, WITHIN).await).into_owned();
        assert!(
            answer.starts_with("HTTP/1.1 200 "),
            "streamed={streamed}: {answer:?}"
        );
        assert!(answer.ends_with(&(piece * 24).to_string()), "{answer:?}");
    }
}

/// With both timeouts equal (as by default), a stalled streamed body is the client's stall
/// (408), not the upstream's (504): the upstream is waiting for a body that does not come.
#[tokio::test]
async fn a_stalled_streamed_body_is_the_clients_stall_whatever_response_timeout_is() {
    let o = origin().spawn().await;
    let p = spawn_proxy_with(
        "client_stall_timeout = \"700ms\"",
        &local_upstream(
            "local",
            o.port(),
            "max_replay_body = 1024\nresponse_timeout = \"700ms\"",
        ),
    )
    .await;
    let url = o.url("/stream");
    let mut s = connect(p.addr).await;
    let head = format!(
        "POST {url} HTTP/1.1\r\nHost: {}\r\nContent-Length: 8192\r\n\r\n",
        authority(&url)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[b'y'; 4096]).await.unwrap();
    let answer = String::from_utf8_lossy(&read_to_close(&mut s, WITHIN).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(o.wait_for_open_connections(0, WITHIN).await);
    assert!(o.requests().is_empty());
}

/// An upstream that stops taking a streamed request body (it reads nothing) ends the exchange
/// after `response_timeout` without progress: 504, and the upstream connection is closed.
#[tokio::test]
async fn an_upstream_that_stops_reading_a_streamed_body_is_cut() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts, shrinks nothing, reads nothing: its window fills and the body stops moving.
    let held = tokio::spawn(async move {
        let (_held, _) = listener.accept().await.unwrap();
        // Holds the connection, reading nothing, until the test ends (aborted below).
        std::future::pending::<()>().await;
    });
    let p = spawn_proxy_with(
        "client_stall_timeout = \"30s\"",
        &local_upstream(
            "local",
            port,
            "max_replay_body = 1024\nresponse_timeout = \"1s\"",
        ),
    )
    .await;
    let url = format!("http://127.0.0.1:{port}/sink");
    let mut s = connect(p.addr).await;
    let head = format!(
        "POST {url} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 268435456\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // Keep sending (the client never stalls) until the proxy answers.
    let feeder = tokio::spawn(async move {
        let piece = vec![b'k'; 64 * 1024];
        while wr.write_all(&piece).await.is_ok() {}
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let started = Instant::now();
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") && started.elapsed() < WITHIN {
        match tokio::time::timeout(WITHIN, rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    feeder.abort();
    held.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 504 "), "{text:?}");
    assert!(text.contains("error=http_response_timeout"), "{text:?}");
}

// ------------------------------------------------------------ 2. clients that do not read

/// A client connected with a tiny receive buffer, so that not reading stalls the proxy soon.
async fn connect_small_window(addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    tokio::time::timeout(WITHIN, sock.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// With `max_connections = 1`, a client that asks for a large response and stops reading
/// once held the one upstream connection for as long as it liked: everyone else got 503.
/// Now the write stalls for `client_stall_timeout`, both sides are closed, and the next
/// client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_frees_the_upstream_connection() {
    let big = Arc::new(vec![b'b'; 16 << 20]);
    let o = origin()
        .handler(move |r| {
            if r.target == "/big" {
                Reply::ok(big.as_slice())
            } else {
                Reply::ok("small")
            }
        })
        .spawn()
        .await;
    let p = spawn_proxy_with(
        "client_stall_timeout = \"2s\"",
        &local_upstream(
            "local",
            o.port(),
            "max_connections = 1\nmax_idle = 1\nacquire_timeout = \"200ms\"",
        ),
    )
    .await;
    let mut sleeper = connect_small_window(p.addr).await;
    sleeper
        .write_all(&absolute_get(&o.url("/big")))
        .await
        .unwrap();
    // It reads a little (the head arrives), then nothing.
    let mut first = [0u8; 1024];
    let n = tokio::time::timeout(WITHIN, sleeper.read(&mut first))
        .await
        .expect("the response begins")
        .expect("read");
    assert!(first[..n].starts_with(b"HTTP/1.1 200 "));
    let stalled_at = Instant::now();

    // Meanwhile the one connection is busy: refused after acquire_timeout.
    let busy = proxy_get(p.addr, &o.url("/small")).await;
    assert_eq!(busy.status, 503, "{busy:?}");

    // Once the stall is noticed, the next client is served (bounded retries).
    let mut served = None;
    while stalled_at.elapsed() < WITHIN {
        let r = proxy_get(p.addr, &o.url("/small")).await;
        if r.status == 200 {
            served = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        served.is_some(),
        "still 503 {:?} after the stall",
        stalled_at.elapsed()
    );
    // The busy connection did not outlive the stall: it was closed, not pooled.
    assert!(
        eventually(WITHIN, || o.connections_accepted() == 2).await,
        "the next request needed a new connection"
    );
    let closed = p
        .metric(
            "portcullis_upstream_connections_closed_total",
            "upstream=\"local\",reason=\"error\"",
        )
        .await;
    assert_eq!(closed, 1.0);
    // And the client's connection was closed too.
    assert!(sees_eof(&mut sleeper, WITHIN).await, "client side closed");
}

// ------------------------------------------------------------ 3. stalled upstream bodies

/// An upstream that sends half its body and goes silent: after `response_timeout` of silence
/// the client connection is cut (its head is out), the upstream connection closed, and the
/// outcome recorded as `http_response_timeout`. Before, the exchange hung for ever.
#[tokio::test]
async fn an_upstream_silent_mid_body_is_cut_after_response_timeout() {
    let o = origin()
        .handler(|r| {
            let reply = Reply::ok(vec![b'h'; 64 * 1024]).stall_mid_body();
            if r.target == "/chunked" {
                reply.chunked()
            } else {
                reply
            }
        })
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream(
        "local",
        o.port(),
        "response_timeout = \"700ms\"",
    ))
    .await;
    for path in ["/length", "/chunked"] {
        let mut s = connect(p.addr).await;
        s.write_all(&absolute_get(&o.url(path))).await.unwrap();
        let started = Instant::now();
        let got = read_to_close(&mut s, WITHIN).await;
        assert!(
            started.elapsed() < WITHIN,
            "{path}: the client was left waiting"
        );
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 "), "{path}: {text:?}");
        // Cut, not completed: half the body at most, and no last-chunk.
        assert!(got.len() < 64 * 1024, "{path}: {} bytes", got.len());
        assert!(!text.ends_with("0\r\n\r\n"), "{path}");
    }
    assert!(
        o.wait_for_open_connections(0, WITHIN).await,
        "upstream side closed"
    );
    let cut = p
        .metric(
            "portcullis_upstream_connections_closed_total",
            "upstream=\"local\",reason=\"error\"",
        )
        .await;
    assert_eq!(cut, 2.0);
}

// ------------------------------------------------------------ 4. truncated streamed bodies

/// What the hand-made origin below saw on one connection.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// Requests whose head arrived on this connection.
    requests: usize,
    /// The terminating chunk (`0\r\n\r\n`) of the first request's body arrived.
    last_chunk: bool,
}

/// An origin that reads a chunked request body piece by piece and answers as soon as
/// `answer_after` body bytes are in (before the body ends), then keeps reading the
/// connection: whether the body's last-chunk, or another request, arrives on it.
async fn early_answering_origin(answer_after: usize) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let idx = {
                let mut all = record.lock().unwrap();
                all.push(Seen::default());
                all.len() - 1
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = false;
                let mut piece = vec![0u8; 16 * 1024];
                loop {
                    let n = match tokio::time::timeout(WITHIN, s.read(&mut piece)).await {
                        Ok(Ok(n)) if n > 0 => n,
                        _ => return,
                    };
                    buf.extend_from_slice(&piece[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let heads = text.matches(" HTTP/1.1\r\n").count();
                    {
                        let mut all = record.lock().unwrap();
                        all[idx].requests = heads;
                        all[idx].last_chunk |= text.contains("\r\n0\r\n\r\n");
                    }
                    let first_is_post = text.starts_with("POST ");
                    let body_in = text
                        .split_once("\r\n\r\n")
                        .map_or(0, |(_, rest)| rest.len());
                    if first_is_post && !answered && body_in >= answer_after {
                        answered = true;
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
                            .await;
                    }
                    if !first_is_post || heads > 1 {
                        // A GET (first or next on this connection): answer it.
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
                            .await;
                        buf.clear();
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// The upstream answers while a streamed chunked body is still arriving, and the client then
/// goes away (or would stall, or send a broken chunk: the proxy stops reading it either way).
/// The upstream must not receive the body's last-chunk — that would make a truncated body
/// whole — and the connection must not be pooled: the next request goes out on a new one.
/// Before, the proxy ended the body with a last-chunk at once and pooled the connection.
#[tokio::test]
async fn an_early_answer_to_a_streamed_body_never_completes_it_upstream() {
    let (origin_addr, seen) = early_answering_origin(2048).await;
    let p = spawn_proxy_with(
        "client_stall_timeout = \"5s\"",
        &local_upstream("local", origin_addr.port(), "max_replay_body = 1024"),
    )
    .await;
    let url = format!("http://{origin_addr}/upload");
    let mut s = connect(p.addr).await;
    let head = format!(
        "POST {url} HTTP/1.1\r\nHost: {origin_addr}\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[b'c'; 4096]).await.unwrap();
    s.write_all(b"\r\n").await.unwrap();
    // The early answer reaches the client; the body has not ended.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).ends_with("early") {
        let n = tokio::time::timeout(WITHIN, s.read(&mut buf))
            .await
            .expect("the early answer arrives")
            .expect("read");
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 "), "{text:?}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text:?}"
    );
    // The client goes away mid-body.
    drop(s);

    let next = proxy_get(p.addr, &format!("http://{origin_addr}/next")).await;
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(next.body_text(), "next");
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen[0].last_chunk,
        "the upstream was sent a last-chunk: {seen:?}"
    );
    assert_eq!(seen[0].requests, 1, "the connection was reused: {seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// The streamed body breaks (a bad chunk-size line) before any answer: the upstream
/// connection is aborted without a last-chunk, and the client is answered 400.
#[tokio::test]
async fn a_broken_chunk_in_a_streamed_body_aborts_the_upstream() {
    let (origin_addr, seen) = early_answering_origin(usize::MAX).await;
    let p = spawn_proxy(&local_upstream(
        "local",
        origin_addr.port(),
        "max_replay_body = 1024",
    ))
    .await;
    let url = format!("http://{origin_addr}/upload");
    let mut s = connect(p.addr).await;
    let head = format!(
        "POST {url} HTTP/1.1\r\nHost: {origin_addr}\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[b'c'; 4096]).await.unwrap();
    assert!(
        eventually(WITHIN, || !seen.lock().unwrap().is_empty()).await,
        "streamed upstream"
    );
    s.write_all(b"\r\nzz\r\n").await.unwrap();
    let answer = String::from_utf8_lossy(&read_to_close(&mut s, WITHIN).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    let seen = seen.lock().unwrap().clone();
    assert!(!seen[0].last_chunk, "{seen:?}");
}
