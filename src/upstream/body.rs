//! The request body sent upstream: held whole (replayable) or streamed from the client, and when hyper has taken all of it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

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
