//! Test clients: one-shot raw HTTP/1 exchanges, a keep-alive connection to the proxy, and the real curl binary.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::wire::{self, reset_on_drop, Framing, WireReader};

/// Bound for helpers that take no explicit timeout.
pub const DEFAULT_WITHIN: Duration = Duration::from_secs(10);
/// After a response that did not announce a close, how long `raw_exchange` waits to see one.
const CLOSE_GRACE: Duration = Duration::from_millis(50);

/// One response as read off the wire, or as much of it as arrived.
#[derive(Debug)]
pub struct RawResponse {
    /// 0 when no complete response head arrived (see `error`).
    pub status: u16,
    /// In the order received.
    pub headers: Vec<(String, String)>,
    /// Decoded body (chunked framing removed); partial if `error` is set.
    pub body: Vec<u8>,
    /// The server closed the connection (FIN or RST) by the time reading stopped.
    pub closed: bool,
    /// Why no complete response arrived: `ConnectionReset`, `UnexpectedEof` (FIN too early),
    /// `InvalidData` (not HTTP, or a head over 256 KiB), `TimedOut`, `ConnectionRefused`...
    pub error: Option<io::Error>,
    /// Bytes received for this exchange, framing included.
    pub bytes_received: usize,
}

impl RawResponse {
    fn empty() -> RawResponse {
        RawResponse {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            closed: false,
            error: None,
            bytes_received: 0,
        }
    }

    /// First value of header `name`, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn error_kind(&self) -> Option<io::ErrorKind> {
        self.error.as_ref().map(|e| e.kind())
    }

    pub fn is_reset(&self) -> bool {
        self.error_kind() == Some(io::ErrorKind::ConnectionReset)
    }

    pub fn timed_out(&self) -> bool {
        self.error_kind() == Some(io::ErrorKind::TimedOut)
    }
}

/// A refusal as SPEC §4 writes it: `status`, `Proxy-Status` with `token`, a one-line body.
#[track_caller]
pub fn assert_refused(r: &RawResponse, status: u16, token: &str, case: &str) {
    assert_eq!(
        r.status, status,
        "{case}: expected {status} {token}, got {r:?}"
    );
    let ps = r.header("proxy-status").unwrap_or_default();
    assert!(
        ps.starts_with(&format!("portcullis; error={token}")),
        "{case}: Proxy-Status {ps:?}"
    );
    let body = r.body_text();
    assert!(
        body.ends_with('\n') && body.matches('\n').count() == 1,
        "{case}: {body:?}"
    );
}

/// Reads (and discards) until the peer closes: EOF or an error (true), or `within` passes
/// (false). Reads in 64 KiB so a large response still in flight drains quickly.
pub async fn sees_eof(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

fn assert_loopback(addr: SocketAddr) {
    assert!(
        addr.ip().is_loopback(),
        "test clients only talk to loopback, not {addr}"
    );
}

/// Connects to `addr`, writes `request`, and reads one response (delimited by Content-Length,
/// chunked framing, or the close), everything bounded by `within`.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], within: Duration) -> RawResponse {
    assert_loopback(addr);
    let deadline = Instant::now() + within;
    let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return failed(e),
        Err(_) => return failed(timed_out("connect")),
    };
    let _ = stream.set_nodelay(true);
    let mut reader = WireReader::new(stream);
    exchange(&mut reader, request, deadline, CLOSE_GRACE).await
}

/// Like `raw_exchange` on a stream you already hold, e.g. TLS inside a CONNECT tunnel.
pub async fn exchange_on<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    within: Duration,
) -> RawResponse {
    let mut reader = WireReader::new(stream);
    exchange(&mut reader, request, Instant::now() + within, CLOSE_GRACE).await
}

/// `GET <url> HTTP/1.1` in absolute form, with `Host` from the URL, sent to the proxy.
pub async fn proxy_get(proxy: SocketAddr, url: &str) -> RawResponse {
    raw_exchange(proxy, &absolute_get(url), DEFAULT_WITHIN).await
}

/// `GET <url> HTTP/1.1` + `Host: <authority of url>`.
pub fn absolute_get(url: &str) -> Vec<u8> {
    format!("GET {url} HTTP/1.1\r\nHost: {}\r\n\r\n", authority(url)).into_bytes()
}

fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

fn failed(e: io::Error) -> RawResponse {
    let mut resp = RawResponse::empty();
    resp.error = Some(e);
    resp
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("timed out during {what}"))
}

fn means_closed(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut WireReader<S>,
    request: &[u8],
    deadline: Instant,
    close_grace: Duration,
) -> RawResponse {
    let started_at = reader.total_read;
    let method = request.split(|b| *b == b' ').next().unwrap_or_default();
    let mut resp = RawResponse::empty();
    let mut framing = Framing::None;
    let mut http10 = false;
    let work = async {
        // A server may answer (431, 400) and close while we are still writing: read anyway.
        let write_error = match reader.stream.write_all(request).await {
            Ok(()) => reader.stream.flush().await.err(),
            Err(e) => Some(e),
        };
        let head = match reader.read_response_head().await {
            Ok(head) => head,
            Err(e) => {
                return Err(write_error
                    .filter(|_| reader.total_read == started_at)
                    .unwrap_or(e))
            }
        };
        resp.status = head.status;
        resp.headers = head.headers;
        http10 = head.version == 0;
        let bodiless = method.eq_ignore_ascii_case(b"HEAD")
            || resp.status == 204
            || resp.status == 304
            || (method.eq_ignore_ascii_case(b"CONNECT") && (200..300).contains(&resp.status));
        framing = if bodiless {
            Framing::None
        } else {
            wire::body_framing(&resp.headers, Framing::UntilClose)?
        };
        let (body, error) = reader.read_body(framing).await;
        resp.body = body;
        error.map_or(Ok(()), Err)
    };
    let outcome = tokio::time::timeout_at(deadline, work).await;
    match outcome {
        Err(_) => resp.error = Some(timed_out("the response")),
        Ok(Err(e)) => {
            resp.closed = means_closed(&e);
            resp.error = Some(e);
        }
        Ok(Ok(())) if framing == Framing::UntilClose => resp.closed = true,
        Ok(Ok(())) => {
            let announced = wire::has_token(&resp.headers, "connection", "close")
                || (http10 && !wire::has_token(&resp.headers, "connection", "keep-alive"));
            let wait = if announced {
                deadline.saturating_duration_since(Instant::now())
            } else {
                close_grace
            };
            resp.closed = sees_close(reader, wait).await;
        }
    }
    resp.bytes_received = reader.total_read - started_at;
    resp
}

/// True if the peer closes (FIN or RST) within `wait`; bytes that arrive instead stay buffered.
async fn sees_close<S: AsyncRead + Unpin>(reader: &mut WireReader<S>, wait: Duration) -> bool {
    if !reader.buf.is_empty() {
        return false;
    }
    // `timeout` polls the read once before looking at the clock, so a zero wait still notices
    // a close that already happened.
    match tokio::time::timeout(wait, reader.fill()).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// One client connection to the proxy, kept open across requests: plain TCP, or TLS to the
/// proxy's TLS listener ([`ProxyConn::connect_tls`]).
pub struct ProxyConn<S = TcpStream> {
    reader: WireReader<S>,
    /// Bound for each `send`; `DEFAULT_WITHIN` unless changed.
    pub within: Duration,
}

/// A client's TLS connection to the proxy.
pub type TlsConn = ProxyConn<TlsStream<TcpStream>>;

impl ProxyConn<TcpStream> {
    /// Panics if the connection cannot be made: a test's address is wrong.
    pub async fn connect(proxy: SocketAddr) -> ProxyConn {
        ProxyConn {
            reader: WireReader::new(tcp_to(proxy).await),
            within: DEFAULT_WITHIN,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.reader
            .stream
            .local_addr()
            .expect("local addr of a connected socket")
    }

    /// Closes with an RST instead of a FIN, like a client process that crashed.
    pub fn reset(self) {
        reset_on_drop(&self.reader.stream);
    }
}

impl ProxyConn<TlsStream<TcpStream>> {
    /// TLS to the proxy's TLS listener at `proxy`, verified as `127.0.0.1`. The error is the
    /// handshake's as the client saw it (a refused client certificate may only show on the
    /// first read, with TLS 1.3). Panics if the TCP connection cannot be made.
    pub async fn connect_tls(
        proxy: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> io::Result<TlsConn> {
        let tcp = tcp_to(proxy).await;
        let name = rustls::pki_types::ServerName::IpAddress(proxy.ip().into());
        let connect = TlsConnector::from(config).connect(name, tcp);
        let stream = tokio::time::timeout(DEFAULT_WITHIN, connect)
            .await
            .map_err(|_| timed_out("the TLS handshake"))??;
        Ok(ProxyConn {
            reader: WireReader::new(stream),
            within: DEFAULT_WITHIN,
        })
    }

    /// The client side of the TLS session (negotiated version, ALPN...).
    pub fn tls(&self) -> &rustls::ClientConnection {
        self.reader.stream.get_ref().1
    }
}

/// A TCP connection to loopback `addr`; panics if it cannot be made.
async fn tcp_to(addr: SocketAddr) -> TcpStream {
    assert_loopback(addr);
    let stream = tokio::time::timeout(DEFAULT_WITHIN, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connecting to {addr} timed out"))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let _ = stream.set_nodelay(true);
    stream
}

impl<S: AsyncRead + AsyncWrite + Unpin> ProxyConn<S> {
    /// Writes `req` and reads one response on this connection. `closed` is only true if the
    /// close had already happened, or was announced with `Connection: close` and followed.
    pub async fn send(&mut self, req: &[u8]) -> RawResponse {
        let deadline = Instant::now() + self.within;
        exchange(&mut self.reader, req, deadline, Duration::ZERO).await
    }

    /// Absolute-form GET of `url` on this connection.
    pub async fn get(&mut self, url: &str) -> RawResponse {
        self.send(&absolute_get(url)).await
    }

    /// True once the other side closes (FIN or RST), false if `within` passes first.
    pub async fn wait_closed(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.reader.fill()).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Closed already? Never waits.
    pub async fn is_closed(&mut self) -> bool {
        self.reader.buf.is_empty() && sees_close(&mut self.reader, Duration::ZERO).await
    }

    /// Writes raw bytes without reading anything (e.g. half a request).
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.stream.write_all(bytes).await?;
        self.reader.stream.flush().await
    }

    /// The stream, for tests that continue by hand (e.g. TLS through a CONNECT tunnel).
    /// Panics if response bytes are still buffered, since they would be lost.
    pub fn into_stream(self) -> S {
        assert!(
            self.reader.buf.is_empty(),
            "{} unread bytes would be lost",
            self.reader.buf.len()
        );
        self.reader.stream
    }
}

/// What the real curl binary did.
#[derive(Debug)]
pub struct CurlResult {
    /// `%{http_code}`: the final response's status, 0 if none.
    pub status: u16,
    /// `%{http_connect}`: the proxy's answer to CONNECT with `-p`, 0 without.
    pub connect_status: u16,
    /// Headers of the final response (not of the CONNECT answer).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// curl's exit status: 0 ok, 7 could not connect, 28 timeout, 35/60 TLS, 52 empty reply, 56 recv failure.
    pub exit_code: i32,
    pub stderr: String,
}

impl CurlResult {
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(&self.headers, name)
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

const CURL_MARKER: &str = "\n__portcullis_curl__ ";

/// Runs `curl -sS --max-time 20 -D - <args>`, ignoring ~/.curlrc and proxy variables from the
/// environment (use `-x`). Async so the servers under test keep running on this runtime.
pub async fn curl(args: &[&str]) -> CurlResult {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let body_path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "curl-{}-{}.body",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    let write_out = format!("{CURL_MARKER}%{{http_code}} %{{http_connect}}\n");
    let mut cmd = tokio::process::Command::new("curl");
    cmd.arg("-q")
        .args(["-sS", "--max-time", "20", "-D", "-", "-w", &write_out, "-o"])
        .arg(&body_path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
        "CURL_HOME",
    ] {
        cmd.env_remove(var);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("curl outlived its own --max-time")
        .expect("run the curl binary");
    let body = std::fs::read(&body_path).unwrap_or_default();
    let _ = std::fs::remove_file(&body_path);

    let stdout = String::from_utf8_lossy(&output.stdout);
    let (dump, codes) = stdout.rsplit_once(CURL_MARKER).unwrap_or((&stdout, ""));
    let mut codes = codes.split_whitespace().map(|c| c.parse().unwrap_or(0));
    CurlResult {
        status: codes.next().unwrap_or(0),
        connect_status: codes.next().unwrap_or(0),
        headers: last_header_block(dump),
        body,
        exit_code: output.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `-D -` prints every head received (CONNECT answer, 1xx, final): keep the last one's fields.
fn last_header_block(dump: &str) -> Vec<(String, String)> {
    let last = dump
        .split("\r\n\r\n")
        .filter(|block| !block.trim().is_empty())
        .last()
        .unwrap_or("");
    last.lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}
