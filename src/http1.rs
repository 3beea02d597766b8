//! Client-side HTTP/1.0 and 1.1 codec: strict request heads, request bodies, our responses.
//!
//! Apps talk to the proxy through this module, not through hyper's server:
//! every malformed or ambiguous input must reach *our* error mapping (400 or
//! 431 with `Proxy-Status`), and anything a smuggling attack could use
//! (CL + TE, differing Content-Lengths, bare CR/LF, obs-fold, odd chunk
//! sizes) is refused, never repaired. It depends on no other portcullis
//! module.
//!
//! One [`ClientReader`] per connection owns the read half and one reusable
//! `BytesMut`: heads are scanned in place (each byte looked at once, however
//! the head is split across reads), parsed by `httparse` once complete, and
//! header values and body chunks are handed out as slices of that buffer.
#![warn(missing_docs)]

mod body;
mod head;
pub mod write;

pub use body::{BodyError, BodyState};
pub use head::{BodyFraming, HeadError, RequestHead, MAX_HEADERS, MAX_LEADING_EMPTY_LINES};
pub use write::{encode_chunk, encode_response_head, encode_simple_response, CONTINUE, LAST_CHUNK};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes asked of the socket per read while a head is incomplete; with the
/// head limit this bounds what a client can make us buffer
/// (`max_header_bytes + HEAD_READ`).
pub const HEAD_READ: usize = 8 * 1024;

/// Most bytes of request body handed out by one `read_body_chunk` call, and
/// the largest single body read.
pub const MAX_BODY_CHUNK: usize = 64 * 1024;

/// Reads requests from one client connection.
///
/// Owns the read half and a single read buffer reused for the whole
/// connection. Bytes read past the current head (a body, a pipelined
/// request, the first bytes of a CONNECT tunnel) stay buffered for the next
/// call. Both `read_head` and `read_body_chunk` are cancel-safe: dropping
/// their future (e.g. on a `tokio::time::timeout`) loses no byte, and a later
/// call resumes where the scan stopped.
pub struct ClientReader<R> {
    /// The client's read half.
    io: R,
    /// Read buffer: always starts at the first byte not yet handed out.
    buf: BytesMut,
    /// Heads larger than this are refused with 431.
    max_header_bytes: usize,
    /// Progress of the incremental head scan over `buf`, so a head trickled
    /// in one byte at a time costs O(n), not O(n²).
    scan: head::HeadScan,
}

impl<R: AsyncRead + Unpin> ClientReader<R> {
    /// Wraps a connection's read half; `max_header_bytes` is the largest
    /// accepted request head (request line, headers and final CRLF).
    pub fn new(io: R, max_header_bytes: usize) -> Self {
        ClientReader {
            io,
            buf: BytesMut::new(),
            max_header_bytes,
            scan: head::HeadScan::default(),
        }
    }

    /// Bytes already read past the last head or body piece handed out.
    ///
    /// After the head of a CONNECT request these belong to the tunnel and
    /// must be sent upstream first.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Gives back the read half and the buffered bytes (see [`Self::buffered`]).
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.io, self.buf)
    }

    /// Reads at most `want` more bytes into the buffer; `Ok(0)` means EOF.
    ///
    /// `reserve` moves leftover bytes to the front of the existing allocation
    /// when nothing else holds a slice of it, so a connection whose heads and
    /// bodies have been dropped keeps reusing one allocation.
    async fn read_more(&mut self, want: usize) -> std::io::Result<usize> {
        self.buf.reserve(want);
        let mut limited = (&mut self.buf).limit(want);
        self.io.read_buf(&mut limited).await
    }
}

/// RFC 9110 `tchar`: the bytes allowed in a method or header name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Strips optional whitespace (SP / HTAB) from both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
pub(crate) mod testio {
    //! Scripted readers for the codec's unit tests.
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, ReadBuf};

    /// Hands out `data` in pieces whose sizes cycle through `sizes`, then
    /// reports EOF, or stays pending forever when `pend_at_end` is set (a
    /// client that sent a few bytes and is waiting).
    pub(crate) struct Pieces {
        data: Vec<u8>,
        pos: usize,
        sizes: Vec<usize>,
        next: usize,
        pend_at_end: bool,
        /// Bytes handed out so far.
        pub(crate) read_total: usize,
    }

    impl Pieces {
        pub(crate) fn new(data: &[u8], sizes: &[usize]) -> Self {
            Pieces {
                data: data.to_vec(),
                pos: 0,
                sizes: if sizes.is_empty() {
                    vec![usize::MAX]
                } else {
                    sizes.to_vec()
                },
                next: 0,
                pend_at_end: false,
                read_total: 0,
            }
        }

        pub(crate) fn pending_at_end(mut self) -> Self {
            self.pend_at_end = true;
            self
        }
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if this.pos >= this.data.len() {
                return if this.pend_at_end {
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(()))
                };
            }
            let step = this.sizes[this.next % this.sizes.len()].max(1);
            this.next += 1;
            let n = step.min(this.data.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            this.read_total += n;
            Poll::Ready(Ok(()))
        }
    }

    /// An endless request line: `GET /aaaa…`, counting what was read.
    pub(crate) struct Endless {
        pub(crate) read_total: usize,
    }

    impl AsyncRead for Endless {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let prefix: &[u8] = b"GET /";
            while buf.remaining() > 0 {
                let b = prefix.get(this.read_total).copied().unwrap_or(b'a');
                buf.put_slice(&[b]);
                this.read_total += 1;
            }
            Poll::Ready(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_ows_strips_only_sp_and_htab() {
        assert_eq!(trim_ows(b" \t5\t "), b"5");
        assert_eq!(trim_ows(b"\r5"), b"\r5");
        assert_eq!(trim_ows(b"   "), b"");
    }
}
