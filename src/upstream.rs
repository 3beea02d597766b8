//! One HTTP/1.1 connection to an upstream, spoken by our own codec: one exchange at a time,
//! the request head written straight from the prepared headers in the client's spelling, the
//! response head parsed in place, and how far an exchange got when it failed.
//!
//! It replaced hyper's `client::conn` (issue 17): hyper re-encoded every head through its
//! dispatcher and a transport that respelled it, and parsed responses into its own buffers;
//! here a head is written once, and the connection holds no buffer while it idles.

mod body;
pub mod wire;

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::Method;
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

pub use body::{Piece, ReqBody, Sent};

use wire::RespBodyKind;
pub use wire::ResponseHead;

use crate::connect::UpstreamIo;
use crate::error::ProxyError;
use crate::http1::{BodyFraming, BodyState, ClientReader};
use crate::pool::Poolable;
use crate::retry::Stage;

/// The largest response head accepted, and the most a connection buffers of a response.
pub const MAX_BUF_SIZE: usize = 256 * 1024;

/// Bytes asked of the socket per read of a response head: most heads fit in one.
const HEAD_READ: usize = 4 * 1024;

/// The most read buffer an idle connection keeps.
const KEEP_IDLE_BUF: usize = 2 * HEAD_READ;

/// Body pieces up to this size are copied behind the head (one write); larger ones are
/// written from where they are.
const COALESCE: usize = 16 * 1024;

/// Where a connection is between exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between exchanges, in sync: it can take a request.
    Idle,
    /// A response body is being read.
    Busy,
    /// Ended (by either side, or an exchange left half-way): never used again.
    Closed,
}

/// An upstream connection. While it is idle in the pool nobody polls it; its socket's
/// wake-ups go to an `IdleSignal` that wakes the pool's reaper, which looks at it at once,
/// so a FIN or RST from the upstream is noticed when it arrives.
pub struct UpstreamConn {
    io: UpstreamIo,
    /// Response bytes read and not yet handed out; freed while idle.
    rbuf: BytesMut,
    /// The request being written; its allocation is reused from request to request.
    wbuf: BytesMut,
    state: State,
    /// Whether the response being read leaves the connection able to carry another request.
    reusable: bool,
    signal: Arc<IdleSignal>,
    /// Wakes `signal`: created once per connection, not per request.
    idle_waker: Waker,
}

/// What an idle connection's socket wakes: a flag, and the pool's reaper while it is idle.
#[derive(Default)]
struct IdleSignal {
    /// In the pool, not checked out: wake-ups concern the reaper.
    idle: AtomicBool,
    /// Something happened since the connection was last polled.
    woken: AtomicBool,
    reaper: OnceLock<Arc<Notify>>,
}

impl Wake for IdleSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Called from the I/O driver: never take a lock here.
        self.woken.store(true, Ordering::Release);
        if self.idle.load(Ordering::Acquire) {
            if let Some(reaper) = self.reaper.get() {
                reaper.notify_one();
            }
        }
    }
}

impl Poolable for UpstreamConn {
    fn is_open(&mut self) -> bool {
        if self.signal.woken.swap(false, Ordering::AcqRel) {
            // Its socket moved since it was last polled: see whether it ended.
            self.poll_idle();
        }
        self.state == State::Idle
    }

    fn park(&mut self, reaper: &Arc<Notify>) {
        // The same reaper every time (a connection stays in its pool): cloned only once.
        self.signal.reaper.get_or_init(|| reaper.clone());
        self.signal.idle.store(true, Ordering::Release);
        self.signal.woken.store(false, Ordering::Release);
        if self.rbuf.is_empty() && self.rbuf.capacity() > KEEP_IDLE_BUF {
            // An idle connection keeps at most a head's read buffer (reused by the next
            // response without an allocation); a large body's is freed.
            self.rbuf = BytesMut::new();
        }
        // Register the idle waker with the socket.
        self.poll_idle();
    }

    fn unpark(&mut self) {
        self.signal.idle.store(false, Ordering::Release);
    }

    fn rehome(&mut self) -> bool {
        self.io.rehome().is_ok()
    }
}

/// What writes a request's head: the proxy decides which headers go, the connection only
/// frames the body.
pub trait WriteHead {
    fn method(&self) -> &Method;
    /// Append the head to `out`, with `Content-Length: n` for `body_len = Some(n)` (where the
    /// method needs one) or `Transfer-Encoding: chunked` for `None`.
    fn write_head(&self, out: &mut BytesMut, body_len: Option<u64>);
}

/// A response's body as it is read from the connection, by [`UpstreamConn::frame`].
#[derive(Debug)]
pub struct RespBody {
    kind: BodyKind,
    exact: Option<u64>,
}

#[derive(Debug)]
enum BodyKind {
    Done,
    /// Content-Length or chunked, decoded by the client codec's body reader.
    Framed(BodyState),
    UntilClose,
}

impl RespBody {
    /// The body's length when the upstream said it (Content-Length), or 0 for none.
    pub fn exact_len(&self) -> Option<u64> {
        self.exact
    }

    /// Whether the body is over and said so: [`UpstreamConn::frame`] would return `None`,
    /// and the connection has been given its state after the response.
    pub fn is_finished(&self) -> bool {
        matches!(self.kind, BodyKind::Done)
    }

    /// Whether every byte of the body has been handed out.
    pub fn is_end(&self) -> bool {
        match &self.kind {
            BodyKind::Done => true,
            BodyKind::Framed(s) => s.is_done(),
            BodyKind::UntilClose => false,
        }
    }
}

impl UpstreamConn {
    /// An HTTP/1.1 connection over a dialed stream.
    pub fn new(io: UpstreamIo) -> UpstreamConn {
        let signal = Arc::new(IdleSignal::default());
        UpstreamConn {
            io,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            state: State::Idle,
            reusable: false,
            idle_waker: Waker::from(signal.clone()),
            signal,
        }
    }

    /// Send `request` with `body` and wait for the response head (at most `response_timeout`
    /// after the request was handed over); on failure, say how far the exchange got.
    pub async fn exchange(
        &mut self,
        request: &impl WriteHead,
        body: ReqBody,
        sent: &Sent,
        response_timeout: Duration,
    ) -> Result<(ResponseHead, RespBody), ExchangeError> {
        if self.state != State::Idle || !self.rbuf.is_empty() {
            self.state = State::Closed;
            return Err(ExchangeError::ClosedBeforeWrite(
                "the connection was closed".into(),
            ));
        }
        let body_len = body.size_hint().exact();
        self.wbuf.clear();
        request.write_head(&mut self.wbuf, body_len);
        // Until the exchange is over the connection is out of sync: a dropped exchange (a
        // timeout, the client gone) leaves it closed.
        self.state = State::Closed;
        let mut send = Send {
            conn: self,
            body,
            chunked: body_len.is_none(),
            wpos: 0,
            big: None,
            body_end: false,
            flushed: false,
        };
        let outcome = until_quiet(
            std::future::poll_fn(|cx| send.poll(cx)),
            sent,
            response_timeout,
        )
        .await;
        let complete = send.written_all();
        let head = match outcome {
            None => return Err(ExchangeError::NoResponse(response_timeout)),
            Some(Err(e)) => return Err(e),
            Some(Ok(head)) => head,
        };
        let framing =
            wire::response_framing(request.method(), &head).map_err(ExchangeError::Protocol)?;
        // A response before the whole request was written leaves the request unfinished.
        self.reusable = framing.reusable && complete;
        let (kind, exact) = match framing.body {
            RespBodyKind::Empty => (BodyKind::Done, Some(0)),
            RespBodyKind::Length(n) => (
                BodyKind::Framed(BodyState::new(BodyFraming::Length(n))),
                Some(n),
            ),
            RespBodyKind::Chunked => (BodyKind::Framed(BodyState::new(BodyFraming::Chunked)), None),
            RespBodyKind::UntilClose => (BodyKind::UntilClose, None),
        };
        let bodiless = matches!(kind, BodyKind::Done);
        self.state = State::Busy;
        if bodiless {
            self.finish();
        }
        Ok((head, RespBody { kind, exact }))
    }

    /// The next piece of a response body read from this connection; `None` at its end.
    pub async fn frame(&mut self, body: &mut RespBody) -> Option<Result<Bytes, String>> {
        match &mut body.kind {
            BodyKind::Done => None,
            BodyKind::Framed(state) => {
                // Out of sync until the read is over: a dropped read leaves it closed.
                self.state = State::Closed;
                let buf = std::mem::take(&mut self.rbuf);
                let mut reader = ClientReader::with_buffered(&mut self.io, buf, MAX_BUF_SIZE);
                let piece = reader.read_body_chunk(state).await;
                let done = state.is_done();
                let (_, buf) = reader.into_parts();
                self.rbuf = buf;
                match piece {
                    Ok(piece) => {
                        self.state = State::Busy;
                        if done {
                            body.kind = BodyKind::Done;
                            self.finish();
                        }
                        piece.map(Ok)
                    }
                    Err(e) => Some(Err(body_error(e))),
                }
            }
            BodyKind::UntilClose => {
                self.state = State::Closed;
                let read = if self.rbuf.is_empty() {
                    self.rbuf.reserve(crate::http1::HEAD_READ);
                    let mut limited = (&mut self.rbuf).limit(crate::http1::MAX_BODY_CHUNK);
                    self.io.read_buf(&mut limited).await.map(Some)
                } else {
                    Ok(None)
                };
                match read {
                    Ok(Some(0)) => {
                        body.kind = BodyKind::Done;
                        None
                    }
                    Ok(_) => {
                        self.state = State::Busy;
                        Some(Ok(self.rbuf.split().freeze()))
                    }
                    Err(e) => Some(Err(format!("reading the response body: {e}"))),
                }
            }
        }
    }

    /// The response is complete: back to idle if it allows, else closed.
    fn finish(&mut self) {
        // Bytes past the response are not ours to read: the connection is out of sync.
        self.state = if self.reusable && self.rbuf.is_empty() {
            State::Idle
        } else {
            State::Closed
        };
    }

    /// Look at an idle connection's socket once, with the idle waker: anything there (EOF,
    /// an error, bytes nobody asked for) ends it.
    fn poll_idle(&mut self) {
        if self.state != State::Idle {
            return;
        }
        let mut probe = [0u8; 8];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(&self.idle_waker);
        if Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut buf)
            .is_ready()
        {
            self.state = State::Closed;
        }
    }
}

/// One request being written and its response head awaited: the two go on together, so an
/// upstream that answers before taking the whole body is heard.
struct Send<'a> {
    conn: &'a mut UpstreamConn,
    body: ReqBody,
    chunked: bool,
    /// Bytes of `conn.wbuf` already written.
    wpos: usize,
    /// A large body piece written from where it is, after `wbuf`.
    big: Option<Bytes>,
    /// The body has ended (its last-chunk queued when chunked).
    body_end: bool,
    flushed: bool,
}

impl Send<'_> {
    fn written_all(&self) -> bool {
        self.flushed
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<wire::ResponseHead, ExchangeError>> {
        loop {
            let mut progress = false;
            if !self.flushed {
                match self.poll_write(cx) {
                    Poll::Ready(Ok(())) => progress = self.flushed,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            match self.poll_head(cx) {
                Poll::Ready(r) => return Poll::Ready(r),
                Poll::Pending if progress => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Write what is queued and queue what the body has; ready once all is written and
    /// flushed, or when it can go no further now (then `Pending`).
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        loop {
            // Take what the body has while there is room behind the head.
            while !self.body_end
                && self.big.is_none()
                && self.conn.wbuf.len() - self.wpos < COALESCE
            {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        if data.is_empty() {
                            continue;
                        }
                        if self.chunked {
                            crate::http1::encode_chunk(&mut self.conn.wbuf, &data);
                        } else if data.len() <= COALESCE {
                            self.conn.wbuf.put_slice(&data);
                        } else {
                            self.big = Some(data);
                        }
                    }
                    Poll::Ready(None) => {
                        self.body_end = true;
                        if self.chunked {
                            self.conn.wbuf.put_slice(b"0\r\n\r\n");
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(ExchangeError::RequestBody(e.to_string())))
                    }
                    Poll::Pending => break,
                }
            }
            let queued: Option<&[u8]> = if self.wpos < self.conn.wbuf.len() {
                Some(&self.conn.wbuf[self.wpos..])
            } else {
                self.big.as_deref()
            };
            let Some(queued) = queued else {
                if !self.body_end {
                    // Waiting for the client's next piece.
                    return Poll::Pending;
                }
                return match Pin::new(&mut self.conn.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.flushed = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(self.write_failed(&e))),
                    Poll::Pending => Poll::Pending,
                };
            };
            match Pin::new(&mut self.conn.io).poll_write(cx, queued) {
                Poll::Ready(Ok(0)) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    return Poll::Ready(Err(self.write_failed(&e)));
                }
                Poll::Ready(Ok(n)) => {
                    if self.wpos < self.conn.wbuf.len() {
                        self.wpos += n;
                        if self.wpos == self.conn.wbuf.len() {
                            self.wpos = 0;
                            self.conn.wbuf.clear();
                        }
                    } else if let Some(big) = &mut self.big {
                        big.advance(n);
                        if big.is_empty() {
                            self.big = None;
                        }
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.write_failed(&e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The request could not be written whole.
    fn write_failed(&self, e: &io::Error) -> ExchangeError {
        ExchangeError::ClosedBeforeWrite(format!("writing the request: {e}"))
    }

    /// Read until a final response head is complete (informational ones are skipped).
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<wire::ResponseHead, ExchangeError>> {
        loop {
            if !self.conn.rbuf.is_empty() {
                match wire::parse_response_head(&mut self.conn.rbuf) {
                    Ok(Some(head))
                        if head.status.is_informational()
                            && head.status != http::StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        continue
                    }
                    Ok(Some(head)) => return Poll::Ready(Ok(head)),
                    Ok(None) if self.conn.rbuf.len() >= MAX_BUF_SIZE => {
                        return Poll::Ready(Err(ExchangeError::Protocol(
                            "the response head is too large".into(),
                        )))
                    }
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(ExchangeError::Protocol(e))),
                }
            }
            let conn = &mut *self.conn;
            conn.rbuf.reserve(HEAD_READ);
            let mut limited = (&mut conn.rbuf).limit(HEAD_READ);
            let read = pin!(conn.io.read_buf(&mut limited)).poll(cx);
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    let what = if self.conn.rbuf.is_empty() {
                        "the upstream closed the connection before responding"
                    } else {
                        "the upstream closed the connection in the middle of the response head"
                    };
                    return Poll::Ready(Err(self.read_failed(what.to_string())));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(self.read_failed(format!("reading the response: {e}"))))
                }
            }
        }
    }

    /// The connection failed while the response was awaited: how far the request got decides
    /// what that means for a retry.
    fn read_failed(&self, detail: String) -> ExchangeError {
        if self.written_all() {
            ExchangeError::DroppedAfterWrite(detail)
        } else {
            ExchangeError::ClosedBeforeWrite(detail)
        }
    }
}

/// A response body error as one line.
fn body_error(e: crate::http1::BodyError) -> String {
    match e {
        crate::http1::BodyError::Malformed(why) => format!("malformed response body: {why}"),
        crate::http1::BodyError::UnexpectedEof => {
            "the upstream closed the connection in the middle of the response body".into()
        }
        crate::http1::BodyError::Io(e) => format!("reading the response body: {e}"),
    }
}

/// `send` until it is done, or until `limit` has passed since the request was fully handed
/// over (the last piece of its body taken): `response_timeout` counts from there. While a
/// streamed body is still being sent, `limit` bounds each wait of the upstream's (it not
/// taking the next piece), not the client's (a piece the client has not sent: bounded by
/// `client_stall_timeout`), so a slow upload that keeps moving is not cut.
async fn until_quiet<F: Future>(send: F, sent: &Sent, limit: Duration) -> Option<F::Output> {
    tokio::pin!(send);
    // Every request's timer: a worker's timer floor, asleep, is woken for what follows.
    crate::workers::arming_a_timer();
    // The latest of: the exchange began, and the last time the client was found the one
    // keeping the body waiting.
    let mut from = tokio::time::Instant::now();
    loop {
        let deadline = sent.last_progress().max(from) + limit;
        if let Ok(out) = tokio::time::timeout_at(deadline, &mut send).await {
            return Some(out);
        }
        let now = tokio::time::Instant::now();
        if sent.starved() {
            // The client's wait, bounded by the pump: look again in `limit`.
            from = now;
        } else if sent.last_progress().max(from) + limit <= now {
            return None;
        }
    }
}

/// Why an exchange failed, by how far it got.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Found closed, or failed before the request was fully written.
    #[error("closed before the request was sent: {0}")]
    ClosedBeforeWrite(String),
    /// Reset or closed after the request was written, before a whole response head.
    #[error("{0}")]
    DroppedAfterWrite(String),
    /// No response head within `response_timeout`.
    #[error("no response within {} ms", .0.as_millis())]
    NoResponse(Duration),
    /// The upstream answered with something that is not HTTP/1.1.
    #[error("{0}")]
    Protocol(String),
    /// The client's request body failed while it was being streamed (client gone, bad framing).
    #[error("request body failed: {0}")]
    RequestBody(String),
}

impl ExchangeError {
    /// How far the exchange got: what the retry decision and stale-reuse counting go by.
    pub fn stage(&self) -> Stage {
        match self {
            ExchangeError::ClosedBeforeWrite(_) => Stage::BeforeWrite,
            ExchangeError::DroppedAfterWrite(_) => Stage::AfterWrite,
            ExchangeError::NoResponse(_) => Stage::NoResponse,
            ExchangeError::Protocol(_) | ExchangeError::RequestBody(_) => Stage::AfterResponse,
        }
    }

    /// The failure as the proxy answers it, for the upstream named `upstream`.
    pub fn into_proxy_error(self, upstream: &str) -> ProxyError {
        let upstream = upstream.to_string();
        match self {
            ExchangeError::NoResponse(t) => ProxyError::ResponseTimeout {
                upstream,
                timeout_ms: t.as_millis(),
            },
            ExchangeError::Protocol(detail) => ProxyError::UpstreamProtocol { upstream, detail },
            ExchangeError::RequestBody(detail) => ProxyError::ClientGone {
                detail: format!("request body failed: {detail}"),
            },
            e @ (ExchangeError::ClosedBeforeWrite(_) | ExchangeError::DroppedAfterWrite(_)) => {
                ProxyError::ConnectionTerminated {
                    upstream,
                    detail: e.to_string(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::Instant;

    /// A GET with a fixed head.
    struct Get;

    impl WriteHead for Get {
        fn method(&self) -> &Method {
            &Method::GET
        }
        fn write_head(&self, out: &mut BytesMut, _: Option<u64>) {
            out.put_slice(b"GET / HTTP/1.1\r\nhost: o\r\n\r\n");
        }
    }

    /// A connection to an origin on a real socket that reads one request head, answers with
    /// `answer` and then closes, or keeps the socket open when `keep` is set.
    async fn conn_to(answer: &'static [u8], keep: bool) -> UpstreamConn {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let _ = s.write_all(answer).await;
            if keep {
                std::future::pending::<()>().await;
            }
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        UpstreamConn::new(UpstreamIo::Plain(tcp))
    }

    async fn send(conn: &mut UpstreamConn) -> Result<(ResponseHead, RespBody), ExchangeError> {
        let (body, sent) = ReqBody::full(Bytes::new());
        conn.exchange(&Get, body, &sent, LIMIT).await
    }

    async fn body_of(conn: &mut UpstreamConn, body: &mut RespBody) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(piece) = conn.frame(body).await {
            all.extend_from_slice(&piece.expect("body piece"));
        }
        all
    }

    /// Informational responses are read past; a body without a length runs until the
    /// upstream closes, and the connection is not used again.
    #[tokio::test]
    async fn informational_heads_are_skipped_and_a_body_until_close_ends_the_connection() {
        let mut conn = conn_to(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nX-A: b\r\n\r\nhello, until close",
            false,
        )
        .await;
        let (head, mut body) = send(&mut conn).await.expect("a response");
        assert_eq!(head.status, http::StatusCode::OK);
        assert_eq!(head.get("x-a"), Some(&b"b"[..]));
        assert_eq!(body.exact_len(), None);
        assert_eq!(body_of(&mut conn, &mut body).await, b"hello, until close");
        assert!(!conn.is_open());
    }

    /// A response with a length leaves the connection ready for the next request; bytes
    /// past the response put it out of sync, and it is not used again.
    #[tokio::test]
    async fn a_length_leaves_the_connection_idle_unless_more_bytes_follow() {
        for (answer, reusable) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..], true),
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n"[..],
                false,
            ),
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"[..],
                false,
            ),
        ] {
            let mut conn = conn_to(answer, true).await;
            let (_, mut body) = send(&mut conn).await.expect("a response");
            assert_eq!(body_of(&mut conn, &mut body).await, b"ok");
            // Parked as the pool parks it: bytes that arrive later are noticed too.
            conn.park(&Arc::new(Notify::new()));
            let deadline = Instant::now() + Duration::from_secs(5);
            while conn.is_open() && !reusable && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(
                conn.is_open(),
                reusable,
                "{:?}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    /// An upstream that closes after reading the request, without a byte of answer: the
    /// request was written whole, so the failure is after the write (retried only when the
    /// request may be repeated); a malformed answer is a protocol error.
    #[tokio::test]
    async fn how_far_a_failed_exchange_got() {
        let mut conn = conn_to(b"", false).await;
        let e = send(&mut conn).await.expect_err("no answer");
        assert_eq!(e.stage(), Stage::AfterWrite, "{e}");
        let mut conn = conn_to(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            true,
        )
        .await;
        let e = send(&mut conn).await.expect_err("conflicting lengths");
        assert!(matches!(e, ExchangeError::Protocol(_)), "{e}");
        assert!(!conn.is_open());
    }

    const LIMIT: Duration = Duration::from_secs(10);

    /// The response timeout runs from the last piece of body hyper took, and not while hyper
    /// waits for a piece the client has not sent yet.
    #[tokio::test(start_paused = true)]
    async fn the_response_timeout_counts_from_the_body_handed_over() {
        // A whole body, taken at once: the timeout is `LIMIT` after that.
        let (mut body, sent) = ReqBody::full(Bytes::from_static(b"x"));
        let _ = body.frame().await;
        let t0 = Instant::now();
        assert!(until_quiet(std::future::pending::<()>(), &sent, LIMIT)
            .await
            .is_none());
        assert_eq!(t0.elapsed(), LIMIT);

        // A streamed body whose client is slow: no timeout while hyper waits for it.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (mut body, sent) = ReqBody::stream(rx, None);
        let t0 = Instant::now();
        let taker = tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
        let waited = tokio::time::timeout(
            LIMIT * 5,
            until_quiet(std::future::pending::<()>(), &sent, LIMIT),
        )
        .await;
        assert!(waited.is_err(), "timed out while the client was awaited");
        // The client sends its last piece and the end: the timeout runs from there.
        tx.send(Piece::Data(Bytes::from_static(b"y")))
            .await
            .unwrap();
        tx.send(Piece::End).await.unwrap();
        let handed = Instant::now();
        assert!(until_quiet(std::future::pending::<()>(), &sent, LIMIT)
            .await
            .is_none());
        assert!(sent.all());
        assert_eq!(handed.elapsed(), LIMIT);
        assert!(t0.elapsed() >= LIMIT * 6);
        taker.abort();
    }
}
