//! One HTTP/1.1 connection to an upstream (hyper's `client::conn`), and the request body type it sends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, Notify};

use crate::connect::UpstreamIo;
use crate::pool::Poolable;

type Conn = http1::Connection<TokioIo<UpstreamIo>, ReqBody>;

/// An upstream connection: hyper's request sender and the connection state machine, both
/// driven by the task using it (no task of its own: no hand-offs between tasks per request).
///
/// While it is busy, every wait on it ([`UpstreamConn::ready`], [`UpstreamConn::send`],
/// [`UpstreamConn::frame`]) also polls the connection. While it is idle in the pool nobody
/// polls it; its socket's wake-ups go to an [`IdleSignal`] that wakes the pool's reaper, which
/// looks at it at once, so a FIN or RST from the upstream is noticed when it arrives.
pub struct UpstreamConn {
    sender: http1::SendRequest<ReqBody>,
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
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(256 * 1024)
            .handshake(TokioIo::new(io))
            .await?;
        let signal = Arc::new(IdleSignal::default());
        Ok(UpstreamConn {
            sender,
            conn: Some(Box::pin(conn)),
            idle_waker: Waker::from(signal.clone()),
            signal,
        })
    }

    /// Wait until the connection can take a request.
    pub async fn ready(&mut self) -> Result<(), hyper::Error> {
        let UpstreamConn { sender, conn, .. } = self;
        Driven {
            conn,
            fut: std::pin::pin!(sender.ready()),
        }
        .await
    }

    /// Send a request and wait for the response head.
    pub async fn send(
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

/// Marks when hyper has taken the whole request body (the request is fully handed over).
#[derive(Clone, Default)]
pub struct Sent(Arc<AtomicBool>);

impl Sent {
    pub fn all(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
    fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The body of a request sent upstream.
pub enum ReqBody {
    /// Held whole (no body, or within `max_replay_body`): can be sent again.
    Full { data: Option<Bytes>, sent: Sent },
    /// Streamed from the client as it arrives: cannot be replayed.
    Stream {
        rx: mpsc::Receiver<io::Result<Bytes>>,
        sent: Sent,
        remaining: Option<u64>,
    },
}

impl ReqBody {
    pub fn full(data: Bytes) -> (ReqBody, Sent) {
        let sent = Sent::default();
        let data = if data.is_empty() {
            // Nothing to hand over: hyper will not poll an empty body.
            sent.mark();
            None
        } else {
            Some(data)
        };
        (
            ReqBody::Full {
                data,
                sent: sent.clone(),
            },
            sent,
        )
    }

    pub fn stream(rx: mpsc::Receiver<io::Result<Bytes>>, length: Option<u64>) -> (ReqBody, Sent) {
        let sent = Sent::default();
        (
            ReqBody::Stream {
                rx,
                sent: sent.clone(),
                remaining: length,
            },
            sent,
        )
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ReqBody::Full { data, sent } => {
                // The one frame is the whole body: handing it over is sending it all.
                sent.mark();
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
            ReqBody::Stream {
                rx,
                sent,
                remaining,
            } => match rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(d))) => {
                    if let Some(r) = remaining {
                        *r = r.saturating_sub(d.len() as u64);
                        if *r == 0 {
                            sent.mark();
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(d))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    sent.mark();
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Full { data, .. } => data.is_none(),
            ReqBody::Stream { remaining, .. } => *remaining == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ReqBody::Stream {
                remaining: Some(n), ..
            } => SizeHint::with_exact(*n),
            ReqBody::Stream {
                remaining: None, ..
            } => SizeHint::default(),
        }
    }
}
