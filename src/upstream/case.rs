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
    /// The head being written, if any.
    head: Option<(Spellings, Scan)>,
    /// The rewritten head bytes of one write call; kept to reuse the allocation.
    scratch: Vec<u8>,
}

/// Where the writer is in a request head, byte by byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    RequestLine,
    LineStart,
    /// Byte `at` of a header name; `spelling` indexes the client's spelling when it has one.
    Name {
        at: usize,
        spelling: Option<usize>,
    },
    Value,
    /// The CR of the empty line that ends the head.
    EndCr,
    Done,
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

/// Copy the head bytes among the first `limit` of `buf` into `out`, respelled, starting from
/// `scan`; stops where the head ends. Returns the scan state after the copied bytes. Names
/// are looked up in all of `buf`, so a head written in parts is respelled the same way.
fn respell(
    spellings: &Spellings,
    mut scan: Scan,
    buf: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Scan {
    for (i, &b) in buf.iter().enumerate().take(limit) {
        if scan == Scan::Done {
            break;
        }
        let (byte, next) = step(spellings, scan, b, &buf[i..]);
        out.push(byte);
        scan = next;
    }
    scan
}

/// One byte of a head: the byte to write and the next state. `rest` starts at this byte; a
/// name's spelling is looked up once, at its first byte (the head is one buffer in hyper).
fn step(spellings: &Spellings, scan: Scan, b: u8, rest: &[u8]) -> (u8, Scan) {
    match scan {
        Scan::RequestLine | Scan::Value => {
            let next = if b == b'\n' { Scan::LineStart } else { scan };
            (b, next)
        }
        Scan::LineStart if b == b'\r' => (b, Scan::EndCr),
        Scan::LineStart => {
            let spelling = rest
                .iter()
                .position(|&c| c == b':')
                .and_then(|end| spellings.find(&rest[..end]));
            step(spellings, Scan::Name { at: 0, spelling }, b, rest)
        }
        Scan::Name { .. } if b == b':' => (b, Scan::Value),
        Scan::Name { at, spelling } => {
            // Same letters, the client's case; never anything but a case change.
            let byte = spelling
                .and_then(|i| spellings.spelling(i)?.get(at).copied())
                .filter(|s| s.eq_ignore_ascii_case(&b))
                .unwrap_or(b);
            (
                byte,
                Scan::Name {
                    at: at + 1,
                    spelling,
                },
            )
        }
        Scan::EndCr => (b, Scan::Done),
        Scan::Done => (b, Scan::Done),
    }
}

impl<T: AsyncWrite + Unpin> Respell<T> {
    /// Write `bufs`, respelling the head at their start if one is being written. hyper puts a
    /// whole head in its first buffer; what follows the head is written unchanged with it.
    fn poll_write_bufs(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.head.is_none() {
            if let Some(spellings) = self.next.take() {
                self.head = Some((spellings, Scan::RequestLine));
            }
        }
        let Some((spellings, scan)) = self.head.take() else {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        };
        let first: &[u8] = bufs.first().map_or(&[], |b| &**b);
        self.scratch.clear();
        let end = respell(&spellings, scan, first, first.len(), &mut self.scratch);
        let head_len = self.scratch.len();
        let empty: &[u8] = &[];
        let more = |i: usize| bufs.get(i).map_or(empty, |b| &**b);
        let out = [
            IoSlice::new(&self.scratch),
            IoSlice::new(&first[head_len..]),
            IoSlice::new(more(1)),
            IoSlice::new(more(2)),
        ];
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, &out);
        let written = match polled {
            Poll::Ready(Ok(n)) => n,
            other => {
                self.head = Some((spellings, scan));
                return other;
            }
        };
        let committed = if written >= head_len {
            end
        } else {
            // Part of the head went out: the scan continues after exactly those bytes.
            self.scratch.clear();
            respell(&spellings, scan, first, written, &mut self.scratch)
        };
        if committed != Scan::Done {
            self.head = Some((spellings, committed));
        }
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
