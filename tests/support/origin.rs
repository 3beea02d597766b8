//! A hand-written HTTP/1.1 origin on 127.0.0.1 that records every request and misbehaves on demand.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::census::{Census, Tracked};
use super::reply::{respond, After, Reply};
use super::tls::IssuedCert;
use super::wire::{self, write_flush, Framing, Wire, WireReader};

/// A TLS client gets this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After our FIN we read (and discard) what the peer still sends for at most this long,
/// so that unread bytes do not turn our close into an RST (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);

type Handler = Arc<dyn Fn(&SeenRequest) -> Reply + Send + Sync>;

/// Starts describing an origin; finish with `.spawn().await`.
pub fn origin() -> OriginBuilder {
    OriginBuilder {
        handler: Arc::new(|_| Reply::ok("ok")),
        keep_alive_timeout: None,
        drop_after_idle: None,
        tls: None,
        record: true,
        bind: None,
        census: false,
    }
}

pub struct OriginBuilder {
    handler: Handler,
    keep_alive_timeout: Option<Duration>,
    drop_after_idle: Option<Duration>,
    tls: Option<TlsAcceptor>,
    record: bool,
    bind: Option<SocketAddr>,
    census: bool,
}

/// A running origin; dropping it stops the listener and every connection.
pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

/// One request exactly as the origin received it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    /// The request-target as sent, e.g. `/a?b` (or an absolute URI if a client sent one).
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// In the order received, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// 1, 2, 3.. in accept order.
    pub conn_id: usize,
    /// 0 for the first request on its connection.
    pub conn_request_index: usize,
    pub received_at: Instant,
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<SeenRequest>>,
    accepted: AtomicUsize,
    open: AtomicUsize,
    tls_failures: AtomicUsize,
    /// Woken on every new request and every connection opened or closed.
    changed: Notify,
    census: Arc<Census>,
}

struct Config {
    handler: Handler,
    keep_alive_timeout: Option<Duration>,
    drop_after_idle: Option<Duration>,
    tls: Option<TlsAcceptor>,
    /// Keep every request for `requests()`; off for long soaks, whose memory is measured.
    record: bool,
    /// Count open connections as the kernel sees them at each accept.
    census: bool,
}

impl OriginBuilder {
    /// Do not keep requests (`requests()` stays empty): for long runs that measure memory.
    pub fn forget_requests(mut self) -> Self {
        self.record = false;
        self
    }

    /// At every accept, count the connections open as the kernel sees them (a peer's FIN or
    /// RST has arrived or not, whether or not the origin's task noticed yet) for
    /// `max_open_at_accept()`. Costs a system call per open connection per accept.
    pub fn count_open_at_accept(mut self) -> Self {
        self.census = true;
        self
    }

    /// Decides the reply to each request (default: `Reply::ok("ok")`).
    pub fn handler(mut self, f: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static) -> Self {
        self.handler = Arc::new(f);
        self
    }

    /// Sends `Keep-Alive: timeout=<whole seconds of d>` on every response and closes (FIN) a
    /// connection that has waited `d` for its next request, like nginx's `keepalive_timeout`.
    pub fn keep_alive_timeout(mut self, d: Duration) -> Self {
        self.keep_alive_timeout = Some(d);
        self
    }

    /// Keep-alive connections last `d` idle, unannounced (no `Keep-Alive` header), and the
    /// close is only seen by the next request: one that arrives on a connection idle at least
    /// `d` is read, not answered, not recorded, and the connection closed (FIN). This is the
    /// keep-alive race (the origin's close crossing our request) made deterministic, as a
    /// client meets it: closed before a response byte arrived.
    pub fn drop_requests_after_idle(mut self, d: Duration) -> Self {
        self.drop_after_idle = Some(d);
        self
    }

    /// Serves TLS with this certificate (ALPN `http/1.1`).
    pub fn tls(mut self, cert: &IssuedCert) -> Self {
        self.tls = Some(cert.acceptor());
        self
    }

    /// Listens on `addr` (a loopback address) instead of 127.0.0.1 port 0, e.g. to be the
    /// `https` default port 443 of a name the test DNS points at 127.0.0.x.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        assert!(
            addr.ip().is_loopback(),
            "origins listen on loopback only: {addr}"
        );
        self.bind = Some(addr);
        self
    }

    pub async fn spawn(self) -> Origin {
        let at = self.bind.unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
        let listener = TcpListener::bind(at).await.unwrap_or_else(|e| {
            panic!("bind origin on {at}: {e} (a port below 1024 needs root, as CI runs)")
        });
        let addr = listener.local_addr().expect("origin local addr");
        let state = Arc::new(State::default());
        let config = Arc::new(Config {
            handler: self.handler,
            keep_alive_timeout: self.keep_alive_timeout,
            drop_after_idle: self.drop_after_idle,
            tls: self.tls,
            record: self.record,
            census: self.census,
        });
        let task = tokio::spawn(accept_loop(listener, state.clone(), config));
        Origin { addr, state, task }
    }
}

impl Origin {
    /// Every request fully received so far, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.state.requests).clone()
    }

    pub fn connections_accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// TCP connections currently open (a TLS one counts from accept, before its handshake).
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// The most connections open at once at any accept so far, as the kernel saw them: one the
    /// peer has closed does not count, even before the origin's task reads its EOF. Needs
    /// `.count_open_at_accept()`.
    pub fn max_open_at_accept(&self) -> usize {
        self.state.census.high_water()
    }

    /// Connections open now as the kernel sees them (held by the origin, not closed by the
    /// peer). Needs `.count_open_at_accept()`.
    pub fn open_now(&self) -> usize {
        self.state.census.open_now()
    }

    /// Connections whose TLS handshake failed or timed out.
    pub fn tls_handshake_failures(&self) -> usize {
        self.state.tls_failures.load(Ordering::SeqCst)
    }

    /// True once at least `n` requests were received; false if `within` passes first.
    pub async fn wait_for_requests(&self, n: usize, within: Duration) -> bool {
        self.wait_until(within, |s| lock(&s.requests).len() >= n)
            .await
    }

    /// True once exactly `n` connections are open; false if `within` passes first.
    pub async fn wait_for_open_connections(&self, n: usize, within: Duration) -> bool {
        self.wait_until(within, |s| s.open.load(Ordering::SeqCst) == n)
            .await
    }

    /// `http://127.0.0.1:PORT<path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    async fn wait_until(&self, within: Duration, cond: impl Fn(&State) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.state.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(&self.state) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return cond(&self.state);
            }
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connections, so this ends them too.
        self.task.abort();
    }
}

impl SeenRequest {
    /// First value of header `name`, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A handler that panicked must not hide the requests recorded before it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counts a connection as open for as long as its task lives (aborts included).
struct OpenGuard(Arc<State>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, config: Arc<Config>) {
    let mut conns = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // e.g. out of file descriptors: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let conn_id = state.accepted.fetch_add(1, Ordering::SeqCst) + 1;
        let stream = if config.census {
            state.census.admit(conn_id, stream)
        } else {
            Census::untracked(stream)
        };
        state.open.fetch_add(1, Ordering::SeqCst);
        state.changed.notify_waiters();
        let guard = OpenGuard(state.clone());
        let (state, config) = (state.clone(), config.clone());
        conns.spawn(async move {
            let _guard = guard;
            serve(stream, conn_id, state, config).await;
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn serve(stream: Tracked, conn_id: usize, state: Arc<State>, config: Arc<Config>) {
    let _ = stream.tcp().set_nodelay(true);
    match &config.tls {
        None => serve_http(stream, conn_id, &state, &config).await,
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_http(tls, conn_id, &state, &config).await,
                _ => {
                    state.tls_failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

async fn serve_http<S: Wire>(stream: S, conn_id: usize, state: &State, config: &Config) {
    let mut reader = WireReader::new(stream);
    // When the last response went out (`None` before the first request).
    let mut idle_since: Option<Instant> = None;
    for conn_request_index in 0.. {
        if reader.buf.is_empty() {
            if let Some(idle) = config.keep_alive_timeout {
                match tokio::time::timeout(idle, reader.fill()).await {
                    Err(_) => return lingering_close(reader).await,
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(_)) => {}
                }
            }
        }
        let head = match reader.read_request_head().await {
            Ok(Some(head)) => head,
            Ok(None) | Err(_) => return,
        };
        let idle = idle_since.map(|t| t.elapsed());
        if let (Some(limit), Some(idle)) = (config.drop_after_idle, idle) {
            if idle >= limit {
                return lingering_close(reader).await;
            }
        }
        let Ok(framing) = wire::body_framing(&head.headers, Framing::None) else {
            return;
        };
        if framing != Framing::None && wire::has_token(&head.headers, "expect", "100-continue") {
            // Clients such as curl otherwise wait a second before sending the body.
            if write_flush(&mut reader.stream, b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
        }
        let (body, error) = reader.read_body(framing).await;
        if error.is_some() {
            return;
        }
        let client_close = wire::has_token(&head.headers, "connection", "close")
            || (head.version == 0 && !wire::has_token(&head.headers, "connection", "keep-alive"));
        let seen = SeenRequest {
            method: head.method,
            target: head.target,
            version: head.version,
            headers: head.headers,
            body,
            conn_id,
            conn_request_index,
            received_at: Instant::now(),
        };
        if config.record {
            lock(&state.requests).push(seen.clone());
        }
        state.changed.notify_waiters();
        let reply = (config.handler)(&seen);
        match respond(
            &mut reader,
            &seen,
            reply,
            client_close,
            config.keep_alive_timeout,
        )
        .await
        {
            After::KeepAlive => idle_since = Some(Instant::now()),
            After::Close => return lingering_close(reader).await,
            After::Drop => return,
            After::Hang => {
                // Keep reading so that the client leaving still closes the connection.
                while let Ok(n) = reader.fill().await {
                    if n == 0 {
                        break;
                    }
                    reader.buf.clear();
                }
                return;
            }
        }
    }
}

async fn lingering_close<S: Wire>(mut reader: WireReader<S>) {
    let _ = reader.stream.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = reader.fill().await {
            if n == 0 {
                break;
            }
            reader.buf.clear();
        }
    })
    .await;
}
