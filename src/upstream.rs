//! One HTTP/1.1 connection to an upstream (hyper's `client::conn`), and the request body type it sends.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::connect::UpstreamIo;
use crate::pool::{Pool, Poolable, WeakPool};

/// An upstream connection: hyper's request sender, and the task driving the socket.
pub struct UpstreamConn {
    pub sender: http1::SendRequest<ReqBody>,
    /// Dropping the connection aborts its driver, which closes the socket.
    driver: JoinHandle<()>,
    /// Where the driver reports that the upstream closed the connection (set once pooled).
    hook: Arc<OnceLock<(WeakPool<UpstreamConn>, u64)>>,
}

impl Poolable for UpstreamConn {
    fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }
}

impl Drop for UpstreamConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl UpstreamConn {
    /// HTTP/1.1 handshake over a dialed stream; spawns the driver task.
    pub async fn handshake(io: UpstreamIo) -> Result<UpstreamConn, hyper::Error> {
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(256 * 1024)
            .handshake(TokioIo::new(io))
            .await?;
        let hook: Arc<OnceLock<(WeakPool<UpstreamConn>, u64)>> = Arc::new(OnceLock::new());
        let driver_hook = hook.clone();
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
            // FIN or RST while idle: the pool drops it now rather than at the next checkout.
            if let Some((pool, id)) = driver_hook.get() {
                if let Some(p) = pool.upgrade() {
                    p.closed_remotely(*id);
                }
            }
        });
        Ok(UpstreamConn {
            sender,
            driver,
            hook,
        })
    }

    /// Tell the driver which pool entry it is, once the connection is in a pool.
    pub fn attach(&self, pool: &Pool<UpstreamConn>, id: u64) {
        let _ = self.hook.set((pool.downgrade(), id));
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
