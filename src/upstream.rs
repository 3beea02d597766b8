//! One HTTP/1.1 connection to an upstream (hyper's `client::conn`): one exchange at a time,
//! and how far an exchange got when it failed.

mod body;
mod case;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio::time::timeout;

pub use body::{Piece, ReqBody, Sent};
use case::{NextHead, Respell};

use crate::connect::UpstreamIo;
use crate::error::ProxyError;
use crate::http1::Spellings;
use crate::pool::Poolable;
use crate::retry::Stage;

/// hyper's read and write buffer limits of an upstream connection. The read buffer grows to
/// it on large responses and keeps that size while the connection idles in the pool, so it is
/// most of what an upstream connection costs (the memory budget counts it twice).
pub const MAX_BUF_SIZE: usize = 256 * 1024;

/// How long a pooled connection may take to become ready for its next request.
const READY_WAIT: Duration = Duration::from_secs(2);

type Conn = http1::Connection<TokioIo<Respell<UpstreamIo>>, ReqBody>;

/// An upstream connection: hyper's request sender and the connection state machine, both
/// driven by the task using it (no task of its own: no hand-offs between tasks per request).
///
/// While it is busy, every wait on it ([`UpstreamConn::exchange`], [`UpstreamConn::frame`]) also polls the connection. While it is idle in the pool nobody
/// polls it; its socket's wake-ups go to an [`IdleSignal`] that wakes the pool's reaper, which
/// looks at it at once, so a FIN or RST from the upstream is noticed when it arrives.
pub struct UpstreamConn {
    sender: http1::SendRequest<ReqBody>,
    /// Gives the transport the client's header-name spellings of the next request.
    next_head: NextHead,
    /// `None` once the connection ended (closed by either side, or failed).
    conn: Option<Pin<Box<Conn>>>,
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
        // Called from the I/O driver or from inside a poll: never take a lock here.
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
            // Its socket or channels moved since it was last polled: see whether it ended.
            self.poll_idle();
        }
        self.conn.is_some() && !self.sender.is_closed()
    }

    fn park(&mut self, reaper: &Arc<Notify>) {
        let _ = self.signal.reaper.set(reaper.clone());
        self.signal.idle.store(true, Ordering::Release);
        // Let hyper finish the exchange (back to idle, ready for the next request) and register
        // the idle waker with the socket.
        self.signal.woken.store(false, Ordering::Release);
        self.poll_idle();
    }

    fn unpark(&mut self) {
        self.signal.idle.store(false, Ordering::Release);
    }
}

impl UpstreamConn {
    /// HTTP/1.1 handshake over a dialed stream.
    pub async fn handshake(io: UpstreamIo) -> Result<UpstreamConn, hyper::Error> {
        let next_head = NextHead::default();
        let io = Respell::new(io, next_head.clone());
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(MAX_BUF_SIZE)
            .handshake(TokioIo::new(io))
            .await?;
        let signal = Arc::new(IdleSignal::default());
        Ok(UpstreamConn {
            sender,
            next_head,
            conn: Some(Box::pin(conn)),
            idle_waker: Waker::from(signal.clone()),
            signal,
        })
    }

    /// Send `request` and wait for the response head (at most `response_timeout`); on
    /// failure, say how far the exchange got. `sent` tells whether hyper took the whole body;
    /// the header names go out as `spellings` says the client spelled them.
    pub async fn exchange(
        &mut self,
        request: Request<ReqBody>,
        spellings: &Spellings,
        sent: &Sent,
        response_timeout: Duration,
    ) -> Result<Response<Incoming>, ExchangeError> {
        match timeout(READY_WAIT, self.ready()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ExchangeError::ClosedBeforeWrite(describe(&e))),
            Err(_) => return Err(ExchangeError::NotReady),
        }
        // Ready: the previous exchange is over, so the next head written is this request's.
        self.next_head.set(spellings);
        match until_quiet(self.send(request), sent, response_timeout).await {
            Some(Ok(response)) => Ok(response),
            None => Err(ExchangeError::NoResponse(response_timeout)),
            Some(Err(mut e)) => {
                let unsent = e.take_message().is_some();
                Err(ExchangeError::classify(
                    &e.into_error(),
                    unsent || !sent.all(),
                ))
            }
        }
    }

    /// Wait until the connection can take a request.
    async fn ready(&mut self) -> Result<(), hyper::Error> {
        let UpstreamConn { sender, conn, .. } = self;
        Driven {
            conn,
            fut: std::pin::pin!(sender.ready()),
        }
        .await
    }

    /// Send a request and wait for the response head.
    async fn send(
        &mut self,
        request: Request<ReqBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ReqBody>>> {
        let UpstreamConn { sender, conn, .. } = self;
        Driven {
            conn,
            fut: std::pin::pin!(sender.try_send_request(request)),
        }
        .await
    }

    /// The next frame of a response body read from this connection.
    pub async fn frame(
        &mut self,
        body: &mut Incoming,
    ) -> Option<Result<Frame<Bytes>, hyper::Error>> {
        Driven {
            conn: &mut self.conn,
            fut: std::pin::pin!(http_body_util::BodyExt::frame(body)),
        }
        .await
    }

    /// Poll the connection once with the idle waker, outside any request.
    fn poll_idle(&mut self) {
        poll_end(&mut self.conn, &mut Context::from_waker(&self.idle_waker));
    }
}

/// `send` until it is done, or until `limit` has passed since the request was fully handed
/// over (the last piece of its body taken): `response_timeout` counts from there. While a
/// streamed body is still being sent, `limit` bounds each wait of the upstream's (hyper not
/// taking the next piece), not the client's (hyper waiting for a piece the client has not
/// sent: bounded by `client_stall_timeout`), so a slow upload that keeps moving is not cut.
async fn until_quiet<F: Future>(send: F, sent: &Sent, limit: Duration) -> Option<F::Output> {
    tokio::pin!(send);
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

/// Poll the connection once; drop it if it ended.
fn poll_end(conn: &mut Option<Pin<Box<Conn>>>, cx: &mut Context<'_>) {
    if let Some(c) = conn {
        if let Poll::Ready(end) = c.as_mut().poll(cx) {
            if let Err(e) = end {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
            *conn = None;
        }
    }
}

/// A wait on one exchange that also drives the connection carrying it.
struct Driven<'a, F> {
    conn: &'a mut Option<Pin<Box<Conn>>>,
    fut: Pin<&'a mut F>,
}

impl<F: Future> Future for Driven<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // The exchange first: often its result is already there (a buffered body frame, a
        // connection ready since it was parked) and the connection need not be polled at all.
        if let Poll::Ready(out) = self.fut.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        // Then the connection, and the exchange again to see what it read or wrote. When the
        // connection ends, hyper has already failed or finished every exchange on it.
        poll_end(self.conn, cx);
        self.fut.as_mut().poll(cx)
    }
}

/// Why an exchange failed, by how far it got (hyper's error taxonomy stops here).
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// A pooled connection did not become ready for a new request in time.
    #[error("connection not ready for a request")]
    NotReady,
    /// Found closed, or failed before the request was fully handed over.
    #[error("closed before the request was sent: {0}")]
    ClosedBeforeWrite(String),
    /// Reset or closed after the request was written, before any response byte.
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
    /// Sort a hyper error out by stage; `unsent`: the request was not (fully) handed over.
    fn classify(err: &hyper::Error, unsent: bool) -> ExchangeError {
        if err.is_parse() || err.is_parse_status() || err.is_parse_too_large() {
            return ExchangeError::Protocol(err.to_string());
        }
        if err.is_user() {
            return ExchangeError::RequestBody(describe(err));
        }
        if unsent {
            ExchangeError::ClosedBeforeWrite(describe(err))
        } else {
            ExchangeError::DroppedAfterWrite(describe(err))
        }
    }

    /// How far the exchange got: what the retry decision and stale-reuse counting go by.
    pub fn stage(&self) -> Stage {
        match self {
            ExchangeError::NotReady | ExchangeError::ClosedBeforeWrite(_) => Stage::BeforeWrite,
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
            e @ (ExchangeError::NotReady
            | ExchangeError::ClosedBeforeWrite(_)
            | ExchangeError::DroppedAfterWrite(_)) => ProxyError::ConnectionTerminated {
                upstream,
                detail: e.to_string(),
            },
        }
    }
}

/// A hyper error with its cause ("connection closed: Connection reset by peer").
fn describe(err: &hyper::Error) -> String {
    match std::error::Error::source(err) {
        Some(src) => format!("{err}: {src}"),
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::time::Instant;

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
