//! The request body sent upstream: held whole (replayable) or streamed from the client, and when the connection has taken all of it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How far the connection has taken the request body: all of it (the request is fully handed over),
/// and when it last took a piece (the response timeout counts from there).
#[derive(Clone)]
pub struct Sent(Arc<SentState>);

struct SentState {
    all: AtomicBool,
    /// The connection asked for the next piece of a streamed body and none was there: the wait is
    /// the client's, not the upstream's.
    starved: AtomicBool,
    made: Instant,
    /// Nanoseconds after `made` when the connection last took a piece of the body.
    took: AtomicU64,
}

impl Default for Sent {
    fn default() -> Self {
        Sent(Arc::new(SentState {
            all: AtomicBool::new(false),
            starved: AtomicBool::new(false),
            made: Instant::now(),
            took: AtomicU64::new(0),
        }))
    }
}

impl Sent {
    /// Handed over in full from the start (an empty body): no clock read is needed to say so.
    fn done() -> Self {
        let sent = Sent::default();
        sent.0.all.store(true, Ordering::Release);
        sent
    }

    pub fn all(&self) -> bool {
        self.0.all.load(Ordering::Acquire)
    }

    /// When the connection last took a piece of the body (or the request was made, if none yet).
    pub fn last_progress(&self) -> Instant {
        self.0.made + std::time::Duration::from_nanos(self.0.took.load(Ordering::Acquire))
    }

    /// The connection is waiting for the client's next piece (see `SentState::starved`).
    pub fn starved(&self) -> bool {
        self.0.starved.load(Ordering::Acquire)
    }

    fn took(&self) {
        self.0.starved.store(false, Ordering::Release);
        let nanos = u64::try_from(self.0.made.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.took.store(nanos, Ordering::Release);
    }

    fn mark(&self) {
        self.took();
        self.0.all.store(true, Ordering::Release);
    }
}

/// What the client side hands a streamed request body.
#[derive(Debug)]
pub enum Piece {
    Data(Bytes),
    /// The client's body was read to its end: the upstream body may end (a chunked one with
    /// its last-chunk).
    End,
    /// The client's body failed (gone, broken framing, stalled): the upstream request fails.
    Failed(io::Error),
}

/// The body of a request sent upstream.
pub enum ReqBody {
    /// Held whole (no body, or within `max_replay_body`): can be sent again.
    Full { data: Option<Bytes>, sent: Sent },
    /// Streamed from the client as it arrives: cannot be replayed. It ends only on
    /// [`Piece::End`]; a sender gone without one is an error, never an end.
    Stream {
        rx: mpsc::Receiver<Piece>,
        sent: Sent,
        remaining: Option<u64>,
    },
}

impl ReqBody {
    pub fn full(data: Bytes) -> (ReqBody, Sent) {
        let (data, sent) = if data.is_empty() {
            // Nothing to hand over: sent at once, and the last progress is now.
            (None, Sent::done())
        } else {
            (Some(data), Sent::default())
        };
        (
            ReqBody::Full {
                data,
                sent: sent.clone(),
            },
            sent,
        )
    }

    pub fn stream(rx: mpsc::Receiver<Piece>, length: Option<u64>) -> (ReqBody, Sent) {
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
                // The one frame is the whole body: handing it over is sending it all. (An
                // empty body was marked sent when it was made.)
                let frame = data.take();
                if frame.is_some() {
                    sent.mark();
                }
                Poll::Ready(frame.map(|d| Ok(Frame::data(d))))
            }
            ReqBody::Stream {
                rx,
                sent,
                remaining,
            } => match rx.poll_recv(cx) {
                Poll::Ready(Some(Piece::Data(d))) => {
                    sent.took();
                    if let Some(r) = remaining {
                        *r = r.saturating_sub(d.len() as u64);
                        if *r == 0 {
                            sent.mark();
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(d))))
                }
                Poll::Ready(Some(Piece::End)) => {
                    sent.mark();
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Piece::Failed(e))) => Poll::Ready(Some(Err(e))),
                // The connection ends a body that returns `None` (a chunked one with its last-chunk),
                // and only an error makes it abort the connection instead.
                Poll::Ready(None) => Poll::Ready(Some(Err(io::Error::other(
                    "the client's request body ended before it was complete",
                )))),
                Poll::Pending => {
                    sent.0.starved.store(true, Ordering::Release);
                    Poll::Pending
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// Only `Piece::End` ends a streamed body: a sender dropped without it (the pump stopped
    /// half-way) is an error, which makes the connection abort instead of writing a
    /// chunked body's last-chunk.
    #[tokio::test]
    async fn a_streamed_body_ends_only_when_told() {
        for (pieces, ends) in [
            (
                vec![Piece::Data(Bytes::from_static(b"ab")), Piece::End],
                true,
            ),
            (vec![Piece::Data(Bytes::from_static(b"ab"))], false),
            (
                vec![
                    Piece::Data(Bytes::from_static(b"ab")),
                    Piece::Failed(io::Error::other("client gone")),
                ],
                false,
            ),
        ] {
            let (tx, rx) = mpsc::channel(4);
            let (mut body, sent) = ReqBody::stream(rx, None);
            for p in pieces {
                tx.send(p).await.expect("room");
            }
            drop(tx);
            let first = body.frame().await.expect("a frame").expect("data");
            assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"ab")));
            match body.frame().await {
                None => assert!(ends && sent.all()),
                Some(Err(_)) => assert!(!ends && !sent.all()),
                Some(Ok(f)) => panic!("unexpected frame {f:?}"),
            }
        }
    }
}
