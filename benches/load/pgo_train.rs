//! The training run of a profile-guided build (`benches/load/pgo.sh`): the plain-HTTP paths
//! of an instrumented proxy binary under the load they carry in production, so that the
//! compiler lays out and inlines by what runs per request.
//!
//! ```sh
//! cargo run --release --example pgo_train -- PROXY_BINARY [SECONDS]
//! ```
//!
//! Cells of SECONDS each (default 3), loopback only, against in-process origins: keep-alive
//! GETs and POSTs with a body at 16 and at 128 connections, a new connection per request
//! (`Connection: close`), refused destinations (403), bulk downloads through CONNECT tunnels,
//! and `/metrics`. The TLS paths (origination, interception, the TLS listener, client
//! certificates) are trained by `intercept_bench` and `tls_bench`, which `pgo.sh` runs too.
//! The proxy runs with its access log on (`RUST_LOG=info`, lines discarded) and is stopped with
//! SIGTERM, so that its profile is written. Every cell must complete requests: a training run
//! that trained nothing fails.

#[path = "harness.rs"]
mod harness;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use harness::{
    connect_through, free_port, measure_with, one_request, spawn_origin, ProxyProcess, Res, Stop,
};

/// What one bulk download through a tunnel carries.
const BULK: usize = 4 << 20;

#[tokio::main]
async fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(
        args.next()
            .ok_or("usage: pgo_train PROXY_BINARY [SECONDS]")?,
    );
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let cell = Duration::from_secs(secs);
    let dir = std::env::temp_dir().join(format!("portcullis-pgo-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let origin = spawn_origin(None).await?;
    let bulk = spawn_bulk_origin().await?;
    let (listen, admin) = (free_port()?, free_port()?);
    let config = dir.join("portcullis.toml");
    let mut f = std::fs::File::create(&config)?;
    writeln!(
        f,
        "[proxy]\nlisten = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         shutdown_grace = \"2s\"\n\n[defaults]\nallow_private = true\nmax_idle = 64\n\n\
         [[upstream]]\nname = \"origin\"\nhosts = [\"127.0.0.1\"]\nports = [{}, {}]\n",
        origin.port(),
        bulk.port()
    )?;
    drop(f);
    let proxy_addr: SocketAddr = ([127, 0, 0, 1], listen).into();
    let admin_addr: SocketAddr = ([127, 0, 0, 1], admin).into();
    // The access log on, as in production; its lines go to a file, removed with the directory.
    let log = std::fs::File::create(dir.join("proxy.log"))?;
    let proxy = ProxyProcess::start_logging(&bin, &config, proxy_addr, "info", log.into())?;

    let get =
        format!("GET http://{origin}/pay?x=1 HTTP/1.1\r\nHost: {origin}\r\nAccept: */*\r\n\r\n");
    let body = "{\"amount\":1999,\"currency\":\"gbp\",\"source\":\"tok_visa\",\"description\":\"training\"}";
    let post = format!(
        "POST http://{origin}/v1/charges HTTP/1.1\r\nHost: {origin}\r\nContent-Type: application/json\r\n\
         Idempotency-Key: 8e0f6a4c-5b1d-4f7e-9c3a-2d8b7e6f1a0c\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let keep_alive: Arc<[Vec<u8>; 2]> = Arc::new([get.clone().into_bytes(), post.into_bytes()]);
    let close = Arc::<[u8]>::from(
        format!("GET http://{origin}/ HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    let refused = Arc::<[u8]>::from(
        &b"GET http://refused.invalid/ HTTP/1.1\r\nHost: refused.invalid\r\n\r\n"[..],
    );
    let bulk_authority = Arc::<str>::from(bulk.to_string());

    let mut report = Vec::new();
    for concurrency in [16, 128] {
        let requests = keep_alive.clone();
        let (n, _) = measure_with(&proxy, cell, concurrency, move |stop| {
            keep_alive_requests(proxy_addr, requests.clone(), stop)
        })
        .await?;
        report.push(format!("keep-alive GET/POST, c={concurrency}: {n}"));
    }
    let (n, _) = measure_with(&proxy, cell, 16, |stop| {
        new_connection_each(proxy_addr, close.clone(), "HTTP/1.1 200", stop)
    })
    .await?;
    report.push(format!("a new connection per request: {n}"));
    let (n, _) = measure_with(&proxy, cell, 4, |stop| {
        new_connection_each(proxy_addr, refused.clone(), "HTTP/1.1 403", stop)
    })
    .await?;
    report.push(format!("refused destination: {n}"));
    let (n, _) = measure_with(&proxy, cell, 4, |stop| {
        tunnel_downloads(proxy_addr, bulk_authority.clone(), stop)
    })
    .await?;
    report.push(format!("4 MiB through a CONNECT tunnel: {n}"));
    let metrics = Arc::<[u8]>::from(
        &b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"[..],
    );
    let (n, _) = measure_with(&proxy, Duration::from_millis(500), 1, |stop| {
        new_connection_each(admin_addr, metrics.clone(), "HTTP/1.1 200", stop)
    })
    .await?;
    report.push(format!("/metrics: {n}"));

    // SIGTERM and wait: the instrumented binary writes its profile as it exits.
    proxy.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    for line in report {
        println!("pgo_train: {line}");
    }
    Ok(())
}

/// Keep-alive requests on one connection, alternating between the given requests.
async fn keep_alive_requests(
    proxy: SocketAddr,
    requests: Arc<[Vec<u8>; 2]>,
    stop: Arc<Stop>,
) -> Res<()> {
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    let mut i = 0;
    while stop.running() {
        one_request(&mut s, &requests[i % 2]).await?;
        stop.count();
        i += 1;
    }
    Ok(())
}

/// A new connection for each request; the response must start with `status`.
async fn new_connection_each(
    addr: SocketAddr,
    request: Arc<[u8]>,
    status: &'static str,
    stop: Arc<Stop>,
) -> Res<()> {
    // A request that asks to close is read to the end; any other up to its response's head.
    let to_close = request.windows(17).any(|w| w == b"Connection: close");
    while stop.running() {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&request).await?;
        let mut response = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            response.extend_from_slice(&chunk[..n]);
            if !to_close && response.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        if !response.starts_with(status.as_bytes()) {
            let head = String::from_utf8_lossy(&response[..response.len().min(200)]).into_owned();
            return Err(format!("expected {status}, got: {head}").into());
        }
        stop.count();
    }
    Ok(())
}

/// CONNECT to the bulk origin, then one download of [`BULK`] bytes through the tunnel.
async fn tunnel_downloads(proxy: SocketAddr, authority: Arc<str>, stop: Arc<Stop>) -> Res<()> {
    let mut buf = vec![0u8; 64 * 1024];
    while stop.running() {
        let mut s = TcpStream::connect(proxy).await?;
        connect_through(&mut s, &authority).await?;
        s.write_all(b"GET /bulk HTTP/1.1\r\nHost: bulk\r\n\r\n")
            .await?;
        let mut got = 0;
        while got < BULK {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Err(format!("tunnel closed after {got} of {BULK} bytes").into());
            }
            got += n;
        }
        stop.count();
    }
    Ok(())
}

/// An origin that answers each connection's first request with [`BULK`] bytes of body and
/// then closes.
async fn spawn_bulk_origin() -> Res<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::with_capacity(256);
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = vec![b'x'; 256 * 1024];
                let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {BULK}\r\n\r\n");
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..BULK / body.len() {
                    if s.write_all(&body).await.is_err() {
                        return;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(addr)
}
