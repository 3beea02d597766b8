//! The worst-case memory budget that `portcullis check` prints (issue 15): a bounded hostile
//! load against a small configuration keeps the real binary's RSS within it.
//!
//! The per-item constants of `src/budget.rs` were measured with the ignored test below:
//! `cargo test --release --test memory_budget -- --ignored --nocapture measure`
//! (it starts the release binary when built with `--release`).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;

use support::*;

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The budget in bytes from `portcullis check`'s `# worst-case memory:` line.
fn printed_budget(config: &std::path::Path) -> (u64, String) {
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run portcullis check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("# worst-case memory:"))
        .unwrap_or_else(|| panic!("no budget line in:\n{text}"))
        .to_string();
    let bytes = line
        .split('(')
        .nth(1)
        .and_then(|r| r.split(" bytes").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {line:?}"));
    let budget_lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("# worst-case memory:"))
        .take_while(|l| l.starts_with('#'))
        .collect();
    (bytes, budget_lines.join("\n"))
}

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// A client with a small receive window, so that not reading stalls the sender soon.
async fn connect_small_window(addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    tokio::time::timeout(Duration::from_secs(10), sock.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Read one response with a Content-Length body (test-side helper, not a full parser).
async fn read_response(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                return got;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "closed mid-response");
        got.extend_from_slice(&buf[..n]);
    }
}

/// An echo server for tunnels: sends back what it receives.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
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

/// Settle, then the proxy's RSS in KiB.
async fn rss_after_settling(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_millis(500)).await;
    status_kib(pid, "VmRSS:")
}

fn per_item(label: &str, before: u64, after: u64, n: usize) {
    let per = (after.saturating_sub(before) as f64 * 1024.0) / n as f64;
    eprintln!(
        "{label:<44} n={n:<5} RSS {before} -> {after} KiB: {:.1} KiB each",
        per / 1024.0
    );
}

/// Measures what each kind of item costs in the real binary's RSS, to write the constants
/// of `src/budget.rs`. Not an assertion: a report (`--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_per_item_costs() {
    const N: usize = 500;
    let big = vec![b'b'; 4 << 20];
    let o = origin()
        .forget_requests()
        .handler(move |r| {
            if r.target == "/big" {
                Reply::ok(big.clone())
            } else {
                Reply::ok("ok")
            }
        })
        .spawn()
        .await;
    let echo = echo_server().await;
    let rest = upstream(
        &[o.port(), echo.port()],
        "max_connections = 1000\nmax_idle = 1000\nidle_timeout = \"5m\"\nmax_lifetime = \"10m\"\nmax_replay_body = 65536",
    );
    let start_with = |name: &'static str| {
        let rest = format!(
            "max_client_connections = 5000\nmax_header_bytes = 16384\nheader_read_timeout = \"5m\"\nclient_stall_timeout = \"5m\"\nclient_idle_timeout = \"5m\"\n{rest}"
        );
        async move { start(&scratch(name), &rest, &[], &[]).await }
    };

    // Base: started, one request served.
    let p = start_with("measure-base").await;
    let pid = p.child.0.id();
    let _ = proxy_get(p.proxy, &o.url("/")).await;
    let base = rss_after_settling(pid).await;
    eprintln!(
        "base process: {base} KiB (VmHWM {})",
        status_kib(pid, "VmHWM:")
    );

    // Idle keep-alive client connections, one request each.
    let mut conns = Vec::new();
    for _ in 0..N {
        let mut s = connect(p.proxy).await;
        s.write_all(&absolute_get(&o.url("/")).replace_keep_alive())
            .await
            .unwrap();
        read_response(&mut s).await;
        conns.push(s);
    }
    per_item(
        "idle client connection",
        base,
        rss_after_settling(pid).await,
        N,
    );
    drop(conns);
    drop(p);

    // Heads of 16 000 bytes in progress (max_header_bytes 16384).
    let p = start_with("measure-heads").await;
    let pid = p.child.0.id();
    let before = rss_after_settling(pid).await;
    let mut conns = Vec::new();
    let pad = "x".repeat(15_900);
    for _ in 0..N {
        let mut s = connect(p.proxy).await;
        let head = format!("GET {} HTTP/1.1\r\nHost: a\r\nX-Pad: {pad}\r\n", o.url("/"));
        s.write_all(head.as_bytes()).await.unwrap();
        conns.push(s);
    }
    per_item(
        "client with a 16 000-byte head in progress",
        before,
        rss_after_settling(pid).await,
        N,
    );
    drop(conns);
    drop(p);

    // Replay bodies held: 64 KiB - 1 of a 64 KiB body, Content-Length and chunked.
    for chunked in [false, true] {
        let p = start_with("measure-bodies").await;
        let pid = p.child.0.id();
        let before = rss_after_settling(pid).await;
        let mut conns = Vec::new();
        for _ in 0..N {
            let mut s = connect(p.proxy).await;
            let url = o.url("/up");
            let head = if chunked {
                format!(
                    "POST {url} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n"
                )
            } else {
                format!("POST {url} HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\n")
            };
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(&[b'u'; 65_535]).await.unwrap();
            conns.push(s);
        }
        per_item(
            if chunked {
                "client holding a 64 KiB chunked replay body"
            } else {
                "client holding a 64 KiB Content-Length body"
            },
            before,
            rss_after_settling(pid).await,
            N,
        );
        drop(conns);
        drop(p);
    }

    // Busy upstream connections: a 4 MiB response to a client that does not read.
    let p = start_with("measure-busy").await;
    let pid = p.child.0.id();
    let before = rss_after_settling(pid).await;
    let mut conns = Vec::new();
    const BUSY: usize = 200;
    for _ in 0..BUSY {
        let mut s = connect_small_window(p.proxy).await;
        s.write_all(&absolute_get(&o.url("/big"))).await.unwrap();
        conns.push(s);
    }
    per_item(
        "busy upstream connection (client not reading)",
        before,
        rss_after_settling(pid).await,
        BUSY,
    );
    drop(conns);
    drop(p);

    // Idle pooled connections after a 4 MiB response each.
    let p = start_with("measure-idle-pool").await;
    let pid = p.child.0.id();
    let before = rss_after_settling(pid).await;
    let mut conns = Vec::new();
    for _ in 0..BUSY {
        let mut s = connect(p.proxy).await;
        s.write_all(&absolute_get(&o.url("/big"))).await.unwrap();
        conns.push(s);
    }
    for s in &mut conns {
        read_response(s).await;
    }
    drop(conns);
    per_item(
        "idle pooled connection after 4 MiB",
        before,
        rss_after_settling(pid).await,
        BUSY,
    );
    drop(p);

    // Tunnels after a 1 MiB burst each way.
    let p = start_with("measure-tunnels").await;
    let pid = p.child.0.id();
    let before = rss_after_settling(pid).await;
    let mut conns = Vec::new();
    for _ in 0..BUSY {
        let mut s = connect(p.proxy).await;
        let req = format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            w.write_all(&vec![b't'; 1 << 20]).await.unwrap();
            w
        });
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while got < 1 << 20 {
            got += r.read(&mut buf).await.unwrap();
        }
        conns.push((r, writer.await.unwrap()));
    }
    per_item(
        "tunnel after a 1 MiB echo",
        before,
        rss_after_settling(pid).await,
        BUSY,
    );
    drop(conns);
    drop(p);

    // Idle pooled TLS connections (origination), after a small and after a 4 MiB response.
    let ca = TestCa::new(&format!("measure {}", std::process::id()));
    let ca_file = ca.write_pem(&std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let cert = ca.issue(&["127.0.0.1"]);
    let big = vec![b'b'; 4 << 20];
    let tls_origin = origin()
        .forget_requests()
        .tls(&cert)
        .handler(move |r| {
            if r.target == "/big" {
                Reply::ok(big.clone())
            } else {
                Reply::ok("ok")
            }
        })
        .spawn()
        .await;
    for path in ["/", "/big"] {
        let rest = format!(
            "max_client_connections = 5000\n[[upstream]]\nname = \"tls\"\nhosts = [\"127.0.0.1\"]\nports = [{}]\nallow_private = true\ntls = \"originate\"\nca_file = {:?}\nmax_connections = 1000\nmax_idle = 1000\nidle_timeout = \"5m\"\nmax_lifetime = \"10m\"\n",
            tls_origin.port(),
            ca_file.display().to_string()
        );
        let p = start(&scratch("measure-tls"), &rest, &[], &[]).await;
        let pid = p.child.0.id();
        let _ = proxy_get(p.proxy, &tls_origin.url("/")).await;
        let before = rss_after_settling(pid).await;
        let mut conns = Vec::new();
        for _ in 0..BUSY {
            let mut s = connect(p.proxy).await;
            s.write_all(&absolute_get(&tls_origin.url(path)))
                .await
                .unwrap();
            conns.push(s);
        }
        for s in &mut conns {
            read_response(s).await;
        }
        drop(conns);
        per_item(
            if path == "/" {
                "idle pooled TLS connection after a small response"
            } else {
                "idle pooled TLS connection after 4 MiB"
            },
            before,
            rss_after_settling(pid).await,
            BUSY,
        );
    }
    let _ = Instant::now();
}

trait KeepAlive {
    fn replace_keep_alive(self) -> Vec<u8>;
}

impl KeepAlive for Vec<u8> {
    /// `absolute_get` asks for `Connection: close`; keep the connection instead.
    fn replace_keep_alive(self) -> Vec<u8> {
        String::from_utf8_lossy(&self)
            .replace("Connection: close\r\n", "")
            .into_bytes()
    }
}

/// Hostile load at a small configuration (200 client connections, 16 KiB heads, 64 KiB replay
/// bodies): heads of the maximum size sent slowly, bodies up to the replay limit and past it
/// that then stall, tunnels with bursts, large responses to clients that do not read, over
/// several destinations, and more clients than the limit. The process's RSS, sampled all
/// along and as its high-water mark, stays within the budget `portcullis check` prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_load_stays_within_the_printed_budget() {
    let big = std::sync::Arc::new(vec![b'b'; 4 << 20]);
    let mut origins = Vec::new();
    for _ in 0..4 {
        let big = big.clone();
        origins.push(
            origin()
                .forget_requests()
                .handler(move |r| {
                    if r.target == "/big" {
                        Reply::ok(big.as_slice())
                    } else {
                        Reply::ok("ok")
                    }
                })
                .spawn()
                .await,
        );
    }
    let echo = echo_server().await;
    let mut ports: Vec<u16> = origins.iter().map(|o| o.port()).collect();
    ports.push(echo.port());
    let rest = format!(
        "max_client_connections = 200\nmax_header_bytes = 16384\nheader_read_timeout = \"30s\"\nclient_stall_timeout = \"30s\"\n{}",
        upstream(
            &ports,
            "max_replay_body = 65536\nmax_connections = 64\nmax_idle = 16\nresponse_timeout = \"30s\""
        )
    );
    let dir = scratch("budget-hostile");
    let p = start(&dir, &rest, &[], &[]).await;
    let pid = p.child.0.id();
    let (budget, lines) = printed_budget(&p.config);
    eprintln!("{lines}");

    let mut held: Vec<tokio::task::JoinHandle<Option<TcpStream>>> = Vec::new();
    let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let hold = |s: TcpStream, stop: std::sync::Arc<tokio::sync::Notify>| async move {
        stop.notified().await;
        Some(s)
    };
    // 40 heads of 16 000 bytes, trickled 1 000 bytes every 50 ms.
    for i in 0..40 {
        let (addr, url, stop) = (p.proxy, origins[i % 4].url("/"), stop.clone());
        held.push(tokio::spawn(async move {
            let mut s = connect(addr).await;
            let head = format!(
                "GET {url} HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n",
                "h".repeat(15_900)
            );
            for piece in head.as_bytes().chunks(1000) {
                s.write_all(piece).await.ok()?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            hold(s, stop).await
        }));
    }
    // 50 bodies up to the replay limit, then a stall (Content-Length and chunked).
    for i in 0..50 {
        let (addr, url, stop) = (p.proxy, origins[i % 4].url("/up"), stop.clone());
        held.push(tokio::spawn(async move {
            let mut s = connect(addr).await;
            let head = if i % 2 == 0 {
                format!("POST {url} HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\n")
            } else {
                format!(
                    "POST {url} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n"
                )
            };
            s.write_all(head.as_bytes()).await.ok()?;
            s.write_all(&[b'u'; 65_535]).await.ok()?;
            hold(s, stop).await
        }));
    }
    // 20 bodies past the replay limit (streamed upstream), then a stall.
    for i in 0..20 {
        let (addr, url, stop) = (p.proxy, origins[i % 4].url("/stream"), stop.clone());
        held.push(tokio::spawn(async move {
            let mut s = connect(addr).await;
            let head = format!("POST {url} HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n");
            s.write_all(head.as_bytes()).await.ok()?;
            s.write_all(&vec![b's'; 300_000]).await.ok()?;
            hold(s, stop).await
        }));
    }
    // 40 large responses to clients that do not read.
    for i in 0..40 {
        let (addr, url, stop) = (p.proxy, origins[i % 4].url("/big"), stop.clone());
        held.push(tokio::spawn(async move {
            let mut s = connect_small_window(addr).await;
            s.write_all(&absolute_get(&url)).await.ok()?;
            hold(s, stop).await
        }));
    }
    // 30 tunnels, each a 1 MiB burst each way, then held open.
    for _ in 0..30 {
        let (addr, stop) = (p.proxy, stop.clone());
        held.push(tokio::spawn(async move {
            let mut s = connect(addr).await;
            let req = format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n");
            s.write_all(req.as_bytes()).await.ok()?;
            let mut buf = vec![0u8; 64 * 1024];
            let n = s.read(&mut buf).await.ok()?;
            if !buf[..n].starts_with(b"HTTP/1.1 200") {
                return None;
            }
            let (mut r, mut w) = s.into_split();
            let writer = tokio::spawn(async move {
                w.write_all(&vec![b't'; 1 << 20]).await.ok()?;
                Some(w)
            });
            let mut got = 0;
            while got < 1 << 20 {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => got += n,
                }
            }
            let w = writer.await.ok()??;
            hold(r.reunite(w).ok()?, stop).await
        }));
    }
    // 60 more than the limit (they wait in the backlog), each asking for a large response.
    for i in 0..60 {
        let (addr, url, stop) = (p.proxy, origins[i % 4].url("/big"), stop.clone());
        held.push(tokio::spawn(async move {
            let mut s = connect_small_window(addr).await;
            s.write_all(&absolute_get(&url)).await.ok()?;
            hold(s, stop).await
        }));
    }

    // Sample the RSS while the load is held (bounded), then the high-water mark.
    let mut peak = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        peak = peak.max(status_kib(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let clients = p.metric("portcullis_client_connections", "").await;
    let hwm = status_kib(pid, "VmHWM:");
    stop.notify_waiters();
    drop(held);
    eprintln!(
        "RSS peak {peak} KiB, VmHWM {hwm} KiB, {clients} client connections; budget {} KiB",
        budget / 1024
    );
    assert!(
        clients >= 150.0,
        "the load did not reach the proxy: {clients} connections"
    );
    assert!(
        hwm * 1024 <= budget,
        "VmHWM {hwm} KiB is over the printed budget of {} KiB:\n{lines}",
        budget / 1024
    );
}
