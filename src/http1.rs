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
pub mod known;
mod names;
mod stash;
pub mod write;

pub use body::{BodyError, BodyState};
pub use head::{
    content_length_values, BodyFraming, HeadError, RequestHead, MAX_HEADERS,
    MAX_LEADING_EMPTY_LINES,
};
pub use names::Spellings;
pub use write::{encode_chunk, encode_response_head, encode_simple_response, CONTINUE, LAST_CHUNK};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes asked of the socket per read while a head is incomplete; with the
/// head limit this bounds what a client can make us buffer
/// (`max_header_bytes + HEAD_READ`).
pub const HEAD_READ: usize = 8 * 1024;

/// Bytes asked of the socket for the first read of a head. Most request heads fit (curl's
/// is ~100 bytes, an SDK's with a long `User-Agent` under 1 KiB), and the buffer lives as long
/// as the request does, since header values are slices of it: at 10 000 requests in flight an
/// 8 KiB buffer each is ~40 MiB more resident memory. A longer head costs one more read.
pub const HEAD_FIRST_READ: usize = 2 * 1024;

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

    /// Wraps a read half whose first bytes were already read elsewhere (those that followed
    /// a CONNECT head): they are the start of what this reader hands out.
    pub fn with_buffered(io: R, buffered: BytesMut, max_header_bytes: usize) -> Self {
        ClientReader {
            io,
            buf: buffered,
            max_header_bytes,
            scan: head::HeadScan::default(),
        }
    }

    /// Waits until at least one byte is buffered, reading if none is; `false` when the peer
    /// closed first. Cancel-safe. For streams without a readiness wait of their own.
    pub async fn wait_for_data(&mut self) -> std::io::Result<bool> {
        if !self.buf.is_empty() {
            return Ok(true);
        }
        Ok(self.read_more(HEAD_FIRST_READ).await? > 0)
    }

    /// [`Self::wait_for_data`] holding no read buffer while it waits: the first bytes are
    /// read into a few bytes on the stack, and the buffer is allocated once they are there.
    /// For TLS, where the rest of the record is then already decrypted in rustls (so the
    /// small first read costs no extra system call) and an idle connection should hold
    /// nothing of ours.
    pub async fn wait_for_data_unbuffered(&mut self) -> std::io::Result<bool> {
        if !self.buf.is_empty() {
            return Ok(true);
        }
        let mut first = [0u8; 16];
        let n = self.io.read(&mut first).await?;
        if n > 0 {
            self.ensure_buffer();
        }
        self.buf.extend_from_slice(&first[..n]);
        Ok(n > 0)
    }

    /// Sets the largest accepted request head from the next `read_head` on (after a reload).
    pub fn set_max_header_bytes(&mut self, max_header_bytes: usize) {
        self.max_header_bytes = max_header_bytes;
    }

    /// Bytes already read past the last head or body piece handed out.
    ///
    /// After the head of a CONNECT request these belong to the tunnel and
    /// must be sent upstream first.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The read half, e.g. to wait until it is readable while a connection idles.
    pub fn get_ref(&self) -> &R {
        &self.io
    }

    /// Gives back the read half and the buffered bytes (see [`Self::buffered`]).
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.io, self.buf)
    }

    /// Gives the read buffer up if nothing is buffered, so that an idle
    /// keep-alive connection holds no buffer memory; the next read takes one
    /// parked by the thread (see `http1::stash`) or allocates it. Header values of
    /// a request still in use keep their bytes alive on their own.
    pub fn release_buffer(&mut self) {
        if self.buf.is_empty() {
            stash::put(std::mem::take(&mut self.buf));
        }
    }

    /// A connection that gave its buffer up takes one before it reads.
    fn ensure_buffer(&mut self) {
        if self.buf.capacity() == 0 {
            self.buf = stash::take();
        }
    }

    /// Reads at most `want` more bytes into the buffer; `Ok(0)` means EOF.
    ///
    /// `reserve` moves leftover bytes to the front of the existing allocation
    /// when nothing else holds a slice of it, so a connection whose heads and
    /// bodies have been dropped keeps reusing one allocation.
    async fn read_more(&mut self, want: usize) -> std::io::Result<usize> {
        self.ensure_buffer();
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
/// The comma-separated tokens of a field value (`Connection`, `Transfer-Encoding`), trimmed,
/// empty ones left out.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether any of `values` (a field's values) lists `token`, in any case.
pub fn lists<'a>(values: impl IntoIterator<Item = &'a [u8]>, token: &str) -> bool {
    values
        .into_iter()
        .flat_map(tokens)
        .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

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

    /// A tiny deterministic generator (64-bit LCG, Knuth's constants) so the
    /// property tests need no extra crate and replay identically.
    pub(crate) struct Lcg(pub(crate) u64);

    impl Lcg {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testio::{Lcg, Pieces};
    use super::*;

    /// Pieces of HTTP that make random inputs reach deep parser states.
    const ATOMS: &[&[u8]] = &[
        b"GET ",
        b"POST ",
        b"CONNECT ",
        b"http://a.example/ ",
        b"a.example:443 ",
        b"/ ",
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"\r\n",
        b"\r\n\r\n",
        b"\n",
        b"\r",
        b" ",
        b"\t",
        b":",
        b",",
        b"Host: a\r\n",
        b"Content-Length: ",
        b"Transfer-Encoding: chunked\r\n",
        b"Connection: keep-alive\r\n",
        b"0",
        b"5",
        b"ffffffffffffffffff",
        b";ext=1",
        b"\x00",
        b"\x16\x03\x01",
        b"\xff",
    ];

    /// Whole lines, mostly valid, so random requests also get past the head.
    const LINES: &[&[u8]] = &[
        b"GET http://a.example/ HTTP/1.1\r\n",
        b"POST http://a.example/p HTTP/1.1\r\n",
        b"CONNECT a.example:443 HTTP/1.1\r\n",
        b"GET http://a.example/ HTTP/1.0\r\n",
        b"Host: a.example\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: 0\r\n",
        b"Content-Length: 5, 6\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Connection: close\r\n",
        b"Connection: keep-alive\r\n",
        b"X-Folded: a\r\n b\r\n",
        b"\r\n",
        b"\r\n",
        b"\r\n",
        b"hello",
        b"5\r\nhello\r\n",
        b"3;x=1\r\nabc\r\n",
        b"0\r\n\r\n",
        b"0\r\nX-Trailer: 1\r\n\r\n",
        b"10000000000000000\r\n",
    ];

    fn random_input(rng: &mut Lcg) -> Vec<u8> {
        let mut out = Vec::new();
        if rng.below(2) == 0 {
            // One to three requests: a request line, then random lines.
            for _ in 0..1 + rng.below(3) {
                out.extend_from_slice(LINES[rng.below(4)]);
                for _ in 0..rng.below(6) {
                    out.extend_from_slice(LINES[4 + rng.below(LINES.len() - 4)]);
                }
            }
            return out;
        }
        if rng.below(2) == 0 {
            out.extend_from_slice(b"POST http://a.example/ HTTP/1.1\r\n");
        }
        let parts = rng.below(60);
        for _ in 0..parts {
            if rng.below(3) == 0 {
                out.push(rng.below(256) as u8);
            } else {
                out.extend_from_slice(ATOMS[rng.below(ATOMS.len())]);
            }
        }
        out
    }

    /// Everything a connection yields for `input` read in pieces of `sizes`,
    /// checking the bounds on the way.
    async fn transcript(input: &[u8], sizes: &[usize], max: usize) -> Vec<String> {
        let mut reader = ClientReader::new(Pieces::new(input, sizes), max);
        let mut out = Vec::new();
        for _ in 0..100 {
            match reader.read_head().await {
                Ok(head) => {
                    out.push(format!(
                        "{} {} {:?} {:?} {}",
                        head.method, head.target, head.version, head.framing, head.keep_alive
                    ));
                    let mut state = BodyState::new(head.framing);
                    let mut body = Vec::new();
                    let result = loop {
                        match reader.read_body_chunk(&mut state).await {
                            Ok(Some(piece)) => {
                                assert!(!piece.is_empty() && piece.len() <= MAX_BODY_CHUNK);
                                body.extend_from_slice(&piece);
                            }
                            Ok(None) => break Ok(()),
                            Err(e) => break Err(e),
                        }
                    };
                    out.push(format!("body {body:?}"));
                    if let Err(e) = result {
                        out.push(format!("body error: {e}"));
                        return out;
                    }
                }
                Err(e) => {
                    assert!(
                        reader.buffered().len() <= max + MAX_BODY_CHUNK,
                        "buffered past the limit"
                    );
                    out.push(format!("head error: {e}"));
                    return out;
                }
            }
        }
        panic!("more than 100 requests from {} bytes", input.len());
    }

    /// Random bytes, random read splits, random small limits: no panic, no
    /// endless loop, buffering bounded, and the same answer whether the
    /// input arrives at once or in random pieces.
    #[tokio::test]
    async fn random_inputs_never_panic_and_do_not_depend_on_splits() {
        let mut rng = Lcg(0x5eed_cafe);
        for _ in 0..3000 {
            let input = random_input(&mut rng);
            let sizes: Vec<usize> = (0..4).map(|_| 1 + rng.below(40)).collect();
            let max = 16 + rng.below(400);
            let whole = transcript(&input, &[], max).await;
            let split = transcript(&input, &sizes, max).await;
            assert_eq!(whole, split, "input {input:?} sizes {sizes:?} max {max}");
        }
    }

    /// Random bytes as a chunked body: decoding always terminates.
    #[tokio::test]
    async fn random_chunked_bodies_terminate() {
        const BODY_ATOMS: &[&[u8]] = &[
            b"0", b"1", b"a", b"F", b"\r\n", b"\n", b"\r", b";x=y", b" ", b"hello", b"\x00",
            b"X-T: 1",
        ];
        let mut rng = Lcg(42);
        for _ in 0..3000 {
            let mut body = Vec::new();
            for _ in 0..rng.below(40) {
                if rng.below(4) == 0 {
                    body.push(rng.below(256) as u8);
                } else {
                    body.extend_from_slice(BODY_ATOMS[rng.below(BODY_ATOMS.len())]);
                }
            }
            let sizes = [1 + rng.below(7), 1 + rng.below(100)];
            let mut reader = ClientReader::new(Pieces::new(&body, &sizes), 1024);
            let mut state = BodyState::new(BodyFraming::Chunked);
            let mut total = 0;
            for _ in 0..10_000 {
                match reader.read_body_chunk(&mut state).await {
                    Ok(Some(chunk)) => total += chunk.len(),
                    Ok(None) | Err(_) => break,
                }
            }
            assert!(total <= body.len());
        }
    }

    #[test]
    fn lists_finds_a_token_in_any_case() {
        assert!(lists([&b"Keep-Alive, Close"[..]], "close"));
        assert!(!lists([&b"keep-alive"[..]], "close"));
        assert!(!lists([], "close"));
        assert_eq!(
            tokens(b" gzip, ,chunked ").collect::<Vec<_>>(),
            [&b"gzip"[..], b"chunked"]
        );
    }

    #[test]
    fn trim_ows_strips_only_sp_and_htab() {
        assert_eq!(trim_ows(b" \t5\t "), b"5");
        assert_eq!(trim_ows(b"\r5"), b"\r5");
        assert_eq!(trim_ows(b"   "), b"");
    }
}
