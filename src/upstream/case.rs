//! Header names sent upstream in the client's own spelling.
//!
//! hyper writes a request's header names in lower case, and its own way of keeping their
//! case (`preserve_header_case`) works only for heads that hyper itself parsed. Some bank and
//! acquirer endpoints match names case-sensitively, so the transport under hyper restores the
//! client's spelling as each request head goes out: the same bytes at the same places, only
//! the case of name letters changed. Bodies and everything after a head pass untouched.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http1::Spellings;

/// Hands the spellings of the next request to the transport; held by the connection.
#[derive(Clone, Default)]
pub struct NextHead {
    armed: Arc<AtomicBool>,
    spellings: Arc<Mutex<Option<Spellings>>>,
}

impl NextHead {
    /// The next head written will get these spellings (nothing to do when there are none).
    pub fn set(&self, spellings: &Spellings) {
        if spellings.is_empty() {
            return;
        }
        *self.spellings.lock().unwrap_or_else(|e| e.into_inner()) = Some(spellings.clone());
        self.armed.store(true, Ordering::Release);
    }

    fn take(&self) -> Option<Spellings> {
        if !self.armed.swap(false, Ordering::AcqRel) {
            return None;
        }
        self.spellings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// A transport that restores header-name case in request heads written through it.
pub struct Respell<T> {
    io: T,
    next: NextHead,
    /// The head being written, respelled whole at its first write: `scratch[..len]`, of
    /// which `sent` bytes are out.
    head: Option<Pending>,
    /// Kept to reuse the allocation from head to head.
    scratch: Vec<u8>,
}

/// A respelled head not yet fully written.
#[derive(Debug, Clone, Copy)]
struct Pending {
    len: usize,
    sent: usize,
}

impl<T> Respell<T> {
    pub fn new(io: T, next: NextHead) -> Self {
        Respell {
            io,
            next,
            head: None,
            scratch: Vec::new(),
        }
    }

    #[cfg(test)]
    pub fn into_inner(self) -> T {
        self.io
    }
}

/// Copy the request head at the start of `buf` into `out` with each header name the client
/// spelled otherwise in its spelling; the head's length, or `None` when `buf` does not hold
/// a whole head (then nothing is respelled: hyper writes a head from one buffer).
fn respell(spellings: &Spellings, buf: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    out.clear();
    // The request line, then header lines up to the empty one that ends the head.
    let mut at = memchr::memchr(b'\n', buf)? + 1;
    out.extend_from_slice(&buf[..at]);
    loop {
        let line_end = at + memchr::memchr(b'\n', &buf[at..])? + 1;
        let line = &buf[at..line_end];
        out.extend_from_slice(line);
        if line == b"\r\n" {
            return Some(line_end);
        }
        if let Some(colon) = memchr::memchr(b':', line) {
            if let Some(spelled) = spellings.of(&line[..colon]) {
                out[at..at + colon].copy_from_slice(spelled);
            }
        }
        at = line_end;
    }
}

impl<T: AsyncWrite + Unpin> Respell<T> {
    /// Write `bufs`, respelling the head at their start if one is being written. hyper puts a
    /// whole head in its first buffer; what follows the head is written with it, unchanged.
    fn poll_write_bufs(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first: &[u8] = bufs.first().map_or(&[], |b| &**b);
        if self.head.is_none() {
            if let Some(spellings) = self.next.take() {
                self.head = respell(&spellings, first, &mut self.scratch)
                    .map(|len| Pending { len, sent: 0 });
            }
        }
        let Some(pending) = self.head else {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        };
        // `first` starts where the head's unsent part does; after it, hyper's own bytes.
        let left = pending.len - pending.sent;
        let after = first.get(left..).unwrap_or(&[]);
        let empty: &[u8] = &[];
        let more = |i: usize| bufs.get(i).map_or(empty, |b| &**b);
        let out = [
            IoSlice::new(&self.scratch[pending.sent..pending.len]),
            IoSlice::new(after),
            IoSlice::new(more(1)),
            IoSlice::new(more(2)),
        ];
        let written = match Pin::new(&mut self.io).poll_write_vectored(cx, &out) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        self.head = (written < left).then_some(Pending {
            sent: pending.sent + written,
            ..pending
        });
        Poll::Ready(Ok(written))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Respell<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Respell<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_bufs(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_bufs(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::ClientReader;

    /// The spellings of a request head as the proxy's codec parses it.
    async fn spellings_of(head: &'static [u8]) -> Spellings {
        let mut reader = ClientReader::new(head, 64 * 1024);
        reader.read_head().await.expect("valid head").spellings
    }

    /// A writer that takes at most `step` bytes per call, to cut a head anywhere.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// However the writes are cut, the head goes out in the client's spelling (names the
    /// client sent in lower case, or that it never sent, stay as they are), the body after it
    /// is untouched, and the next head without spellings passes as it is.
    #[tokio::test]
    async fn heads_go_out_in_the_clients_spelling_however_the_writes_are_cut() {
        use tokio::io::AsyncWriteExt;
        let spellings = spellings_of(
            b"POST http://a/ HTTP/1.1\r\nHost: a\r\nX-Api-KEY: k\r\ncontent-type: x\r\nContent-Length: 4\r\n\r\n",
        )
        .await;
        let written = b"POST /pay HTTP/1.1\r\nhost: a\r\nx-api-key: k\r\ncontent-type: x\r\nvia: 1.1 portcullis\r\ncontent-length: 4\r\n\r\nHost";
        let want = b"POST /pay HTTP/1.1\r\nHost: a\r\nX-Api-KEY: k\r\ncontent-type: x\r\nvia: 1.1 portcullis\r\nContent-Length: 4\r\n\r\nHost";
        for step in [1, 2, 3, 7, 16, 1000] {
            let next = NextHead::default();
            let mut io = Respell::new(
                Trickle {
                    got: Vec::new(),
                    step,
                },
                next.clone(),
            );
            next.set(&spellings);
            io.write_all(written).await.expect("write");
            io.write_all(b"GET /next HTTP/1.1\r\nhost: a\r\n\r\n")
                .await
                .expect("write");
            let got = io.into_inner().got;
            let (head, next_head) = got.split_at(want.len());
            assert_eq!(
                String::from_utf8_lossy(head),
                String::from_utf8_lossy(want),
                "writes of {step} bytes"
            );
            assert_eq!(next_head, b"GET /next HTTP/1.1\r\nhost: a\r\n\r\n");
        }
    }
}
