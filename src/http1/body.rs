//! Request bodies: Content-Length and strict chunked decoding, handed out as zero-copy slices of the read buffer.

use bytes::{Buf, Bytes};
use memchr::memchr;
use tokio::io::AsyncRead;

use super::{BodyFraming, ClientReader, HEAD_READ, MAX_BODY_CHUNK};

/// Longest chunk-size line (size and extensions, CRLF included) accepted.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Largest trailer section (all trailer lines and the final CRLF) read and discarded.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

// One-line reasons for `BodyError::Malformed`.
pub(super) const CHUNK_SIZE_NOT_HEX: &str = "chunk size is not a hexadecimal number";
pub(super) const CHUNK_SIZE_TOO_LONG: &str = "chunk size has more than 16 hex digits";
pub(super) const CHUNK_SIZE_JUNK: &str = "unexpected characters after the chunk size";
pub(super) const CHUNK_EXT_CONTROL: &str = "control character in a chunk extension";
pub(super) const CHUNK_LINE_TOO_LONG: &str = "chunk size line is too long";
pub(super) const CHUNK_LINE_BARE_LF: &str = "chunk size line must end with CRLF";
pub(super) const CHUNK_DATA_NO_CRLF: &str = "chunk data is not followed by CRLF";
pub(super) const TRAILER_BARE_LF: &str = "trailer line must end with CRLF";
pub(super) const TRAILER_MALFORMED: &str = "malformed trailer field";
pub(super) const TRAILERS_TOO_LARGE: &str = "trailer section is too large";

/// Where the reader is within one request body.
#[derive(Debug)]
pub struct BodyState {
    step: Step,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Content-Length body with this many bytes still to come.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk's data, this many bytes still to come.
    ChunkData(u64),
    /// Expecting the CRLF that ends a chunk's data.
    ChunkDataEnd,
    /// After the last chunk, this many trailer bytes seen so far.
    Trailers(usize),
    /// The body is complete.
    Done,
}

impl BodyState {
    /// Starts a body framed as `framing`.
    pub fn new(framing: BodyFraming) -> Self {
        let step = match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => Step::Done,
            BodyFraming::Length(n) => Step::Length(n),
            BodyFraming::Chunked => Step::ChunkSize,
        };
        BodyState { step }
    }

    /// The whole body, including any chunked trailers, has been read.
    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }
}

/// Why a request body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The chunked framing is broken (bad chunk size, missing CRLF, too-long
    /// chunk line, chunk size overflow, oversized trailers): answer 400 if
    /// nothing was sent yet, and close the connection.
    #[error("malformed request body: {0}")]
    Malformed(&'static str),
    /// The client closed the connection before the body was complete.
    #[error("client closed the connection in the middle of the request body")]
    UnexpectedEof,
    /// Reading from the client failed.
    #[error("reading the request body: {0}")]
    Io(#[from] std::io::Error),
}

impl<R: AsyncRead + Unpin> ClientReader<R> {
    /// The next piece of the request body (at most [`MAX_BODY_CHUNK`] bytes,
    /// never empty), or `Ok(None)` once the body, trailers included, is
    /// complete. Chunked framing is removed; trailers are discarded.
    ///
    /// Pieces are slices of the read buffer (no copy). Cancel-safe.
    pub async fn read_body_chunk(
        &mut self,
        state: &mut BodyState,
    ) -> Result<Option<Bytes>, BodyError> {
        loop {
            match state.step {
                Step::Done => return Ok(None),
                Step::Length(left) => {
                    let piece = self.take_data(left).await?;
                    let left = left - piece.len() as u64;
                    state.step = if left == 0 {
                        Step::Done
                    } else {
                        Step::Length(left)
                    };
                    return Ok(Some(piece));
                }
                Step::ChunkData(left) => {
                    let piece = self.take_data(left).await?;
                    let left = left - piece.len() as u64;
                    state.step = if left == 0 {
                        Step::ChunkDataEnd
                    } else {
                        Step::ChunkData(left)
                    };
                    return Ok(Some(piece));
                }
                Step::ChunkSize => match memchr(b'\n', &self.buf) {
                    Some(lf) => {
                        if lf >= MAX_CHUNK_LINE {
                            return Err(BodyError::Malformed(CHUNK_LINE_TOO_LONG));
                        }
                        let size = chunk_size(&self.buf[..lf])?;
                        self.buf.advance(lf + 1);
                        state.step = if size == 0 {
                            Step::Trailers(0)
                        } else {
                            Step::ChunkData(size)
                        };
                    }
                    None if self.buf.len() >= MAX_CHUNK_LINE => {
                        return Err(BodyError::Malformed(CHUNK_LINE_TOO_LONG));
                    }
                    None => self.fill(HEAD_READ).await?,
                },
                Step::ChunkDataEnd => match &self.buf[..] {
                    [] | [b'\r'] => self.fill(HEAD_READ).await?,
                    [b'\r', b'\n', ..] => {
                        self.buf.advance(2);
                        state.step = Step::ChunkSize;
                    }
                    _ => return Err(BodyError::Malformed(CHUNK_DATA_NO_CRLF)),
                },
                Step::Trailers(seen) => match memchr(b'\n', &self.buf) {
                    Some(lf) => {
                        let seen = seen + lf + 1;
                        if seen > MAX_TRAILER_BYTES {
                            return Err(BodyError::Malformed(TRAILERS_TOO_LARGE));
                        }
                        let line = self.buf[..lf]
                            .strip_suffix(b"\r")
                            .ok_or(BodyError::Malformed(TRAILER_BARE_LF))?;
                        let last = line.is_empty();
                        if !last && !is_trailer_field(line) {
                            return Err(BodyError::Malformed(TRAILER_MALFORMED));
                        }
                        self.buf.advance(lf + 1);
                        state.step = if last {
                            Step::Done
                        } else {
                            Step::Trailers(seen)
                        };
                    }
                    None if seen + self.buf.len() > MAX_TRAILER_BYTES => {
                        return Err(BodyError::Malformed(TRAILERS_TOO_LARGE));
                    }
                    None => self.fill(HEAD_READ).await?,
                },
            }
        }
    }

    /// Up to `left` body bytes from the buffer, reading first if it is empty.
    async fn take_data(&mut self, left: u64) -> Result<Bytes, BodyError> {
        let cap = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(MAX_BODY_CHUNK);
        if self.buf.is_empty() {
            self.fill(cap.max(HEAD_READ)).await?;
        }
        let n = cap.min(self.buf.len());
        Ok(self.buf.split_to(n).freeze())
    }

    /// Reads more body bytes; EOF here means the client gave up mid-body.
    async fn fill(&mut self, want: usize) -> Result<(), BodyError> {
        match self.read_more(want).await? {
            0 => Err(BodyError::UnexpectedEof),
            _ => Ok(()),
        }
    }
}

/// Parses a chunk-size line (everything before its LF): strict hex size,
/// optional extensions (ignored), CRLF.
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let malformed = BodyError::Malformed;
    let line = line
        .strip_suffix(b"\r")
        .ok_or(malformed(CHUNK_LINE_BARE_LF))?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(malformed(CHUNK_SIZE_NOT_HEX));
    }
    if digits > 16 {
        return Err(malformed(CHUNK_SIZE_TOO_LONG));
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        // 16 hex digits always fit in a u64; checked anyway.
        let nibble = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(nibble)))
            .ok_or(malformed(CHUNK_SIZE_TOO_LONG))?;
    }
    let rest = &line[digits..];
    if rest.is_empty() {
        return Ok(size);
    }
    // chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ), ignored.
    let bws = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let ext = &rest[bws..];
    if !ext.starts_with(b";") {
        return Err(malformed(CHUNK_SIZE_JUNK));
    }
    if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(malformed(CHUNK_EXT_CONTROL));
    }
    Ok(size)
}

/// A trailer line we can discard safely: `name: value`, not folded.
fn is_trailer_field(line: &[u8]) -> bool {
    match memchr(b':', line) {
        Some(colon) if colon > 0 => {
            line[..colon].iter().all(|&b| super::is_tchar(b))
                && line[colon + 1..]
                    .iter()
                    .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testio::Pieces;
    use super::*;

    const SPLITS: &[&[usize]] = &[&[], &[1], &[2, 3], &[7, 1, 13]];

    /// Reads a whole body; returns it, or the error, and what stayed buffered.
    async fn read_body(
        framing: BodyFraming,
        input: &[u8],
        sizes: &[usize],
    ) -> (Result<Vec<u8>, BodyError>, Vec<u8>) {
        let mut reader = ClientReader::new(Pieces::new(input, sizes), 1024);
        let mut state = BodyState::new(framing);
        let mut body = Vec::new();
        loop {
            match reader.read_body_chunk(&mut state).await {
                Ok(Some(piece)) => {
                    assert!(!piece.is_empty() && piece.len() <= MAX_BODY_CHUNK);
                    body.extend_from_slice(&piece);
                }
                Ok(None) => {
                    assert!(state.is_done());
                    return (Ok(body), reader.buffered().to_vec());
                }
                Err(e) => return (Err(e), reader.buffered().to_vec()),
            }
        }
    }

    #[tokio::test]
    async fn valid_bodies() {
        use BodyFraming::*;
        // (name, framing, input, body, what stays buffered)
        type Case = (
            &'static str,
            BodyFraming,
            &'static [u8],
            &'static [u8],
            &'static [u8],
        );
        let cases: &[Case] = &[
            ("empty", Empty, b"GET", b"", b"GET"),
            ("length 0", Length(0), b"GET", b"", b"GET"),
            ("length", Length(5), b"helloGET", b"hello", b"GET"),
            (
                "chunked",
                Chunked,
                b"5\r\nhello\r\n0\r\n\r\nGET",
                b"hello",
                b"GET",
            ),
            (
                "two chunks",
                Chunked,
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                b"hello world",
                b"",
            ),
            (
                "uppercase hex",
                Chunked,
                b"A\r\n0123456789\r\n0\r\n\r\n",
                b"0123456789",
                b"",
            ),
            (
                "leading zeros, 16 digits",
                Chunked,
                b"0000000000000005\r\nhello\r\n000\r\n\r\n",
                b"hello",
                b"",
            ),
            (
                "extensions ignored",
                Chunked,
                b"5;a=b;c\r\nhello\r\n1 ;x=\"q;\\\"\" \r\n!\r\n0;last\r\n\r\n",
                b"hello!",
                b"",
            ),
            (
                "trailers discarded",
                Chunked,
                b"2\r\nhi\r\n0\r\nX-Sum: 1\r\nX-B:\t2\r\n\r\nGET",
                b"hi",
                b"GET",
            ),
        ];
        for (name, framing, input, body, leftover) in cases {
            for sizes in SPLITS {
                let (got, rest) = read_body(*framing, input, sizes).await;
                let got = got.unwrap_or_else(|e| panic!("{name} {sizes:?}: {e}"));
                assert_eq!(&got[..], *body, "{name} {sizes:?}");
                // Pieces may not have handed everything out yet.
                assert!(leftover.starts_with(&rest), "{name} {sizes:?}: {rest:?}");
            }
        }
    }

    #[tokio::test]
    async fn large_bodies_come_in_bounded_pieces() {
        let data = vec![b'x'; 200 * 1024];
        for framing in [BodyFraming::Length(data.len() as u64), BodyFraming::Chunked] {
            let input = match framing {
                BodyFraming::Chunked => {
                    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n0\r\n\r\n");
                    out
                }
                _ => data.clone(),
            };
            let (got, _) = read_body(framing, &input, &[]).await;
            assert_eq!(got.unwrap().len(), data.len(), "{framing:?}");
        }
    }

    enum Want {
        Malformed(&'static str),
        Eof,
    }

    #[tokio::test]
    async fn invalid_bodies() {
        use BodyFraming::*;
        use Want::*;
        let long_ext = [
            &b"5;"[..],
            &[b'e'; MAX_CHUNK_LINE],
            b"\r\nhello\r\n0\r\n\r\n",
        ]
        .concat();
        let big_trailers = [
            &b"0\r\n"[..],
            &b"X-T: 1234567890\r\n".repeat(MAX_TRAILER_BYTES / 16),
            b"\r\n",
        ]
        .concat();
        let cases: Vec<(&str, BodyFraming, &[u8], Want)> = vec![
            (
                "+5",
                Chunked,
                b"+5\r\nhello\r\n0\r\n\r\n",
                Malformed(CHUNK_SIZE_NOT_HEX),
            ),
            ("-1", Chunked, b"-1\r\n", Malformed(CHUNK_SIZE_NOT_HEX)),
            (
                "empty size",
                Chunked,
                b"\r\nhello\r\n",
                Malformed(CHUNK_SIZE_NOT_HEX),
            ),
            (
                "leading space",
                Chunked,
                b" 5\r\nhello\r\n",
                Malformed(CHUNK_SIZE_NOT_HEX),
            ),
            (
                "0x5",
                Chunked,
                b"0x5\r\nhello\r\n",
                Malformed(CHUNK_SIZE_JUNK),
            ),
            (
                "trailing space, no extension",
                Chunked,
                b"5 \r\nhello\r\n",
                Malformed(CHUNK_SIZE_JUNK),
            ),
            (
                "size then junk",
                Chunked,
                b"5g\r\nhello\r\n",
                Malformed(CHUNK_SIZE_JUNK),
            ),
            (
                "17 digits",
                Chunked,
                b"00000000000000005\r\nhello\r\n",
                Malformed(CHUNK_SIZE_TOO_LONG),
            ),
            (
                "overflow",
                Chunked,
                b"ffffffffffffffffff\r\n",
                Malformed(CHUNK_SIZE_TOO_LONG),
            ),
            (
                "bare LF after size",
                Chunked,
                b"5\nhello\r\n0\r\n\r\n",
                Malformed(CHUNK_LINE_BARE_LF),
            ),
            (
                "control in extension",
                Chunked,
                b"5;a\x01\r\nhello\r\n",
                Malformed(CHUNK_EXT_CONTROL),
            ),
            (
                "bare CR in extension",
                Chunked,
                b"5;a\rb\r\nhello\r\n",
                Malformed(CHUNK_EXT_CONTROL),
            ),
            (
                "extension too long",
                Chunked,
                &long_ext,
                Malformed(CHUNK_LINE_TOO_LONG),
            ),
            (
                "data longer than size",
                Chunked,
                b"5\r\nhelloX\r\n0\r\n\r\n",
                Malformed(CHUNK_DATA_NO_CRLF),
            ),
            (
                "bare LF after data",
                Chunked,
                b"5\r\nhello\n0\r\n\r\n",
                Malformed(CHUNK_DATA_NO_CRLF),
            ),
            (
                "bare CR after data",
                Chunked,
                b"5\r\nhello\r0\r\n\r\n",
                Malformed(CHUNK_DATA_NO_CRLF),
            ),
            (
                "trailer bare LF",
                Chunked,
                b"0\r\nX-A: 1\n\r\n",
                Malformed(TRAILER_BARE_LF),
            ),
            (
                "final bare LF",
                Chunked,
                b"0\r\n\n",
                Malformed(TRAILER_BARE_LF),
            ),
            (
                "folded trailer",
                Chunked,
                b"0\r\nX-A: 1\r\n  2\r\n\r\n",
                Malformed(TRAILER_MALFORMED),
            ),
            (
                "trailer without colon",
                Chunked,
                b"0\r\nX-A\r\n\r\n",
                Malformed(TRAILER_MALFORMED),
            ),
            (
                "NUL in trailer",
                Chunked,
                b"0\r\nX-A: \x00\r\n\r\n",
                Malformed(TRAILER_MALFORMED),
            ),
            (
                "trailers too large",
                Chunked,
                &big_trailers,
                Malformed(TRAILERS_TOO_LARGE),
            ),
            ("length cut short", Length(10), b"hello", Eof),
            ("chunk data cut short", Chunked, b"5\r\nhel", Eof),
            ("no last chunk", Chunked, b"5\r\nhello\r\n", Eof),
            ("CR then EOF", Chunked, b"5\r\nhello\r", Eof),
            ("no final CRLF", Chunked, b"5\r\nhello\r\n0\r\n", Eof),
            ("nothing at all", Chunked, b"", Eof),
        ];
        for (name, framing, input, want) in cases {
            for sizes in SPLITS {
                let (got, _) = read_body(framing, input, sizes).await;
                match (&got, &want) {
                    (Err(BodyError::Malformed(r)), Want::Malformed(w)) if r == w => {}
                    (Err(BodyError::UnexpectedEof), Want::Eof) => {}
                    _ => panic!("{name} {sizes:?}: got {got:?}"),
                }
            }
        }
    }
}
