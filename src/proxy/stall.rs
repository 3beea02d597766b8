//! `client_stall_timeout` on the client side: a write to the client that makes no progress for
//! that long fails, and so does a wait for the next piece of a request body.
//!
//! Each wait is bounded, not the whole transfer: a client that reads a large response slowly
//! but steadily, or uploads slowly, is served; one that stops is cut. (A per-call timeout on
//! `write_all` would cut a slow reader of a large frame; none at all lets a client that never
//! reads pin an upstream connection for ever.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

/// The message of the `TimedOut` error a stalled write fails with; `ProxyError::client_write`
/// recognises the kind and names the stall.
pub fn stalled(limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the client read nothing for {} ms (client_stall_timeout)",
            limit.as_millis()
        ),
    )
}

/// A writer whose every wait for the client to take bytes is bounded by `limit`.
///
/// The timer exists only once a write has had to wait (a client that reads keeps the socket
/// buffer draining, and most responses fit it): the common path costs no timer and no
/// allocation.
pub struct StallWriter<'a, W> {
    inner: &'a mut W,
    limit: Duration,
    /// Created on the first wait, re-armed on each later one.
    timer: Option<Pin<Box<Sleep>>>,
    /// The current wait has a deadline (cleared by any progress).
    armed: bool,
}

impl<'a, W: AsyncWrite + Unpin> StallWriter<'a, W> {
    pub fn new(inner: &'a mut W, limit: Duration) -> Self {
        StallWriter {
            inner,
            limit,
            timer: None,
            armed: false,
        }
    }

    /// The inner write is pending: start the deadline of this wait if it is new, and fail
    /// once it passes.
    fn waiting(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.armed {
            let deadline = Instant::now() + self.limit;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        if let Some(t) = &mut self.timer {
            if t.as_mut().poll(cx).is_ready() {
                return Err(stalled(self.limit));
            }
        }
        Ok(())
    }

    /// Bookkeeping around one poll of the inner writer.
    fn track<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut W>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll(Pin::new(&mut *self.inner), cx) {
            Poll::Pending => {
                self.waiting(cx)?;
                Poll::Pending
            }
            ready => {
                self.armed = false;
                ready
            }
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for StallWriter<'_, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().track(cx, |w, cx| w.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .track(cx, |w, cx| w.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().track(cx, |w, cx| w.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().track(cx, |w, cx| w.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer that stops reading: the write fails after the limit, not before; one that
    /// reads slowly (a little every half limit) is served to the end.
    #[tokio::test(start_paused = true)]
    async fn a_stopped_reader_fails_the_write_a_slow_one_does_not() {
        let limit = Duration::from_secs(30);
        let (mut ours, _theirs) = tokio::io::duplex(1024);
        let started = Instant::now();
        let mut w = StallWriter::new(&mut ours, limit);
        let err = w.write_all(&[0u8; 4096]).await.expect_err("stalled");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= limit, "{:?}", started.elapsed());
        assert!(started.elapsed() < limit * 2, "{:?}", started.elapsed());

        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 512];
            while got < 8192 {
                tokio::time::sleep(limit / 2).await;
                got += theirs.read(&mut buf).await.expect("read");
            }
            got
        });
        let started = Instant::now();
        let mut w = StallWriter::new(&mut ours, limit);
        w.write_all(&[0u8; 8192]).await.expect("slow but moving");
        w.flush().await.expect("flush");
        assert!(started.elapsed() > limit * 2, "it did have to wait");
        assert_eq!(reader.await.expect("reader"), 8192);
    }
}
