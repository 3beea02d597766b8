//! What the TLS benches and the PGO training run share: the proxy binary as a child process
//! (its CPU and RSS from /proc, stopped with SIGTERM), a keep-alive origin answering 3 bytes
//! (plain or TLS), load tasks stopped together, and one request's round trip.

// Each bench uses part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

pub const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
/// Load tasks per cell.
pub const CONCURRENCY: usize = 16;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A free loopback port (released again: the proxy binds it next).
pub fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The proxy binary running `config`; killed on drop.
pub struct ProxyProcess {
    child: Child,
}

impl ProxyProcess {
    /// Starts `bin --config config` and waits until `ready` accepts connections.
    /// Its warnings and errors are shown.
    pub fn start(bin: &Path, config: &Path, ready: SocketAddr) -> Res<ProxyProcess> {
        Self::start_logging(bin, config, ready, "warn", Stdio::inherit())
    }

    /// [`ProxyProcess::start`] with `RUST_LOG=rust_log`, its log (the access log at `info`)
    /// going to `log`.
    pub fn start_logging(
        bin: &Path,
        config: &Path,
        ready: SocketAddr,
        rust_log: &str,
        log: Stdio,
    ) -> Res<ProxyProcess> {
        let child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!(
                    "{}: {e} (cargo build --release --bin portcullis)",
                    bin.display()
                )
            })?;
        let process = ProxyProcess { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(ready).is_err() {
            if Instant::now() > deadline {
                return Err("the proxy did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(process)
    }

    /// utime + stime of the proxy process.
    pub fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
        let fields: Vec<u64> = rest.split(' ').map(|f| f.parse().unwrap_or(0)).collect();
        let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGTERM, then wait for the exit (40 s at most: the default `shutdown_grace` is 30 s; then
    /// SIGKILL on drop): a clean exit, which an instrumented binary needs to write its
    /// profile. Fails if the proxy did not exit.
    pub fn stop(mut self) -> Res<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("the proxy exited with {status} after SIGTERM").into())
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("the proxy did not exit within 40 s of SIGTERM".into())
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Tells the load tasks when to stop, and counts what they did before.
#[derive(Default)]
pub struct Stop {
    until: AtomicU64,
    done: AtomicU64,
}

impl Stop {
    pub fn running(&self) -> bool {
        self.until.load(Ordering::Relaxed) == 0
    }
    pub fn count(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `CONCURRENCY` copies of `work` for `cell`; (operations done, proxy CPU used). A load
/// task that fails fails the cell: a bench that counts errors as work measures nothing.
pub async fn measure<F, Fut>(proxy: &ProxyProcess, cell: Duration, work: F) -> Res<(u64, Duration)>
where
    F: Fn(Arc<Stop>) -> Fut,
    Fut: std::future::Future<Output = Res<()>> + Send + 'static,
{
    measure_with(proxy, cell, CONCURRENCY, work).await
}

/// [`measure`] with `concurrency` copies of `work`.
pub async fn measure_with<F, Fut>(
    proxy: &ProxyProcess,
    cell: Duration,
    concurrency: usize,
    work: F,
) -> Res<(u64, Duration)>
where
    F: Fn(Arc<Stop>) -> Fut,
    Fut: std::future::Future<Output = Res<()>> + Send + 'static,
{
    let stop = Arc::new(Stop::default());
    let before = proxy.cpu();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(work(stop.clone())))
        .collect();
    tokio::time::sleep(cell).await;
    stop.until.store(1, Ordering::SeqCst);
    let cpu = proxy.cpu().saturating_sub(before);
    let done = stop.done.load(Ordering::SeqCst);
    for t in tasks {
        t.await
            .map_err(|e| format!("a load task panicked: {e}"))??;
    }
    if done == 0 {
        return Err("no operation completed in the cell".into());
    }
    Ok((done, cpu))
}

/// A table row: rate and proxy CPU per operation.
pub fn row(what: &str, unit: &str, n: u64, cpu: Duration, cell: Duration) -> String {
    format!(
        "| {what} | {:.0} {unit}/s | {:.1} µs per {unit} |",
        n as f64 / cell.as_secs_f64(),
        cpu.as_micros() as f64 / n.max(1) as f64
    )
}

/// Sends `request` (a whole request head) and reads the whole response (the origin's:
/// Content-Length 3).
pub async fn one_request<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, request: &[u8]) -> Res<()> {
    s.write_all(request).await?;
    let mut buf = Vec::with_capacity(256);
    loop {
        let mut chunk = [0u8; 512];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err("closed mid-response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                return Err(format!("unexpected response: {head}").into());
            }
            if buf.len() >= end + 4 + 3 {
                return Ok(());
            }
        }
    }
}

/// Sends `CONNECT authority` and reads the proxy's 200 head.
pub async fn connect_through(s: &mut TcpStream, authority: &str) -> Res<()> {
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await? == 0 {
            return Err("the proxy closed during CONNECT".into());
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(format!("CONNECT refused: {}", String::from_utf8_lossy(&head)).into());
    }
    Ok(())
}

/// A keep-alive origin answering every request head with 3 bytes; TLS with `tls`.
pub async fn spawn_origin(tls: Option<Arc<ServerConfig>>) -> Res<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let acceptor = tls.map(TlsAcceptor::from);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    None => answer(s).await,
                    Some(a) => {
                        if let Ok(s) = a.accept(s).await {
                            answer(s).await;
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = Vec::with_capacity(1024);
    loop {
        while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..i + 4);
            if s.write_all(RESPONSE).await.is_err() || s.flush().await.is_err() {
                return;
            }
        }
        let mut chunk = [0u8; 1024];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
