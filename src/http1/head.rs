//! Request heads: an incremental strict scan of the raw bytes, then one `httparse` pass and the framing rules.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};
use memchr::{memchr, memchr2};
use tokio::io::AsyncRead;

use super::known::{known, Known};
use super::names::Spellings;
use super::{is_tchar, trim_ows, ClientReader, HEAD_FIRST_READ, HEAD_READ};

/// Most header fields accepted in one request head; more is answered 431.
pub const MAX_HEADERS: usize = 100;

/// Empty lines (CRLF) skipped before a request line (RFC 9112 §2.2 allows
/// some, e.g. a stray CRLF after a POST body); more is malformed.
pub const MAX_LEADING_EMPTY_LINES: u8 = 4;

// One-line reasons for `HeadError::Malformed`, shown to the user in the 400 body.
pub(super) const BARE_LF: &str = "bare LF in request head: lines must end with CRLF";
pub(super) const BARE_CR: &str = "bare CR in request head: CR must be followed by LF";
pub(super) const NUL_BYTE: &str = "NUL byte in request head";
pub(super) const CONTROL_BYTE: &str = "control character in request head";
pub(super) const OBS_FOLD: &str =
    "header line starts with whitespace (obsolete line folding is not allowed)";
pub(super) const TOO_MANY_EMPTY_LINES: &str = "too many empty lines before the request line";
pub(super) const EMPTY_METHOD: &str = "request line starts with a space: empty method";
pub(super) const INVALID_METHOD: &str =
    "request method is not a valid token (TLS or another protocol sent to the HTTP proxy port?)";
pub(super) const BAD_REQUEST_LINE: &str = "request line must be `METHOD target HTTP/1.1`";
pub(super) const EMPTY_TARGET: &str = "empty request target (or extra spaces in the request line)";
pub(super) const INVALID_TARGET: &str =
    "request target contains a space, control or non-ASCII byte";
pub(super) const UNSUPPORTED_VERSION: &str =
    "unsupported HTTP version: only HTTP/1.0 and HTTP/1.1 are accepted";
pub(super) const NO_COLON: &str = "header line without a colon";
pub(super) const EMPTY_HEADER_NAME: &str = "empty header name";
pub(super) const SPACE_BEFORE_COLON: &str =
    "whitespace between header name and colon is not allowed";
pub(super) const INVALID_HEADER_NAME: &str = "header name contains a character that is not allowed";
pub(super) const INVALID_HEADER_VALUE: &str =
    "header value contains a character that is not allowed";
pub(super) const MALFORMED_HEAD: &str = "malformed request head";
pub(super) const INCOMPLETE_HEAD: &str = "connection closed before the request head was complete";
pub(super) const CL_AND_TE: &str =
    "both Content-Length and Transfer-Encoding: the body length is ambiguous";
pub(super) const CL_CONFLICT: &str = "several Content-Length values that differ";
pub(super) const CL_NOT_DIGITS: &str = "Content-Length must be decimal digits only";
pub(super) const CL_EMPTY: &str = "empty Content-Length value";
pub(super) const CL_OVERFLOW: &str = "Content-Length is too large";
pub(super) const TE_NOT_CHUNKED: &str = "Transfer-Encoding must be exactly `chunked`";
pub(super) const TE_IN_HTTP10: &str = "Transfer-Encoding is not allowed in an HTTP/1.0 request";
pub(super) const CONNECT_WITH_BODY: &str = "a CONNECT request must not have a body";
pub(super) const MULTIPLE_HOST: &str = "several Host headers";

/// A parsed, validated request head.
#[derive(Debug)]
pub struct RequestHead {
    /// The request method.
    pub method: Method,
    /// The request-target exactly as sent: absolute URI, authority (CONNECT)
    /// or origin-form. Printable ASCII only.
    pub target: String,
    /// `HTTP_10` or `HTTP_11`, nothing else.
    pub version: Version,
    /// Every header field as received, in order; names are lowercased,
    /// values are the raw bytes (may be non-UTF-8). Repeated identical
    /// `Content-Length`s are kept as sent: use `framing`, not this map, to
    /// read the body.
    pub headers: HeaderMap,
    /// How the request body is delimited; authoritative.
    pub framing: BodyFraming,
    /// How the client spelled the header names it did not send in lower case.
    pub spellings: Spellings,
    /// Whether the client wants the connection kept open after this request:
    /// HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive` (and no `close`).
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue` over HTTP/1.1 (ignored for
    /// HTTP/1.0, per RFC 9110 §10.1.1).
    pub expect_continue: bool,
    /// `Connection` or `Proxy-Connection` lists a field name beyond the fixed
    /// hop-by-hop ones (usually not): only then must the fields be checked
    /// against what they name.
    pub names_hop_fields: bool,
}

/// How a request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No `Content-Length` and no `Transfer-Encoding`: no body.
    Empty,
    /// `Content-Length: n` (possibly 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Why no request head could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The peer closed (or idled out) cleanly before sending any byte of a new request: not an error to answer.
    #[error("client closed the connection")]
    Closed,
    /// The head exceeded the limit: answer 431.
    #[error("request head too large")]
    TooLarge,
    /// Malformed or ambiguous: answer 400 and close. The &'static str is a one-line reason a user understands.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// Reading from the client failed.
    #[error("reading the request head: {0}")]
    Io(#[from] std::io::Error),
}

/// Progress of the scan for the end of a head, kept between reads.
///
/// Offsets are into the reader's buffer, whose first byte is the first byte
/// of the head being read (or of the empty lines before it).
#[derive(Debug, Default)]
pub(super) struct HeadScan {
    /// Bytes before this offset have been checked for CR/LF structure.
    pos: usize,
    /// Start of the line currently being read.
    line_start: usize,
    /// Start of the request line, after skipped empty lines.
    head_start: usize,
    /// Empty lines skipped so far.
    empty_lines: u8,
    /// End (after CRLF) of the request line, once seen and checked.
    request_line_end: Option<usize>,
    /// Bytes of the method checked so far, so garbage is refused on its
    /// first byte instead of after the head limit.
    method_pos: usize,
    /// The method is complete (its SP was seen) and valid.
    method_done: bool,
}

impl HeadScan {
    /// Scans the bytes not yet seen. `Ok(Some(end))`: `buf[..end]` is a
    /// complete head whose lines all end in CRLF and none is folded.
    /// `Ok(None)`: more bytes are needed.
    ///
    /// Problems are reported in byte order and the request line is checked
    /// as soon as its CRLF arrives, so the answer to a given input does not
    /// depend on how it was split across reads, and a client speaking
    /// another protocol (TLS, HTTP/2, SSH) is refused on the bytes it has
    /// sent instead of after `header_read_timeout` or the size limit.
    fn advance(&mut self, buf: &[u8]) -> Result<Option<usize>, &'static str> {
        let mut i = self.pos;
        loop {
            let Some(off) = memchr2(b'\r', b'\n', &buf[i..]) else {
                self.pos = buf.len();
                self.check_method(buf)?;
                return Ok(None);
            };
            let cr = i + off;
            if self.request_line_end.is_none() {
                self.check_method(&buf[..cr])?;
            }
            if buf[cr] == b'\n' {
                // Every CR we accept is consumed with its LF, so this LF is bare.
                return Err(BARE_LF);
            }
            match buf.get(cr + 1) {
                None => {
                    // Look at this CR again once its LF may have arrived.
                    self.pos = cr;
                    return Ok(None);
                }
                Some(b'\n') => {}
                Some(_) => return Err(BARE_CR),
            }
            let next = cr + 2;
            if cr == self.line_start {
                if self.request_line_end.is_some() {
                    self.pos = next;
                    return Ok(Some(next));
                }
                self.empty_lines += 1;
                if self.empty_lines > MAX_LEADING_EMPTY_LINES {
                    return Err(TOO_MANY_EMPTY_LINES);
                }
                self.head_start = next;
            } else if self.request_line_end.is_none() {
                self.request_line_end = Some(next);
                check_request_line(&buf[self.head_start..cr])?;
            } else if matches!(buf[self.line_start], b' ' | b'\t') {
                return Err(OBS_FOLD);
            }
            self.line_start = next;
            i = next;
        }
    }

    /// Checks the method bytes in `upto` not checked yet, up to its SP.
    fn check_method(&mut self, upto: &[u8]) -> Result<(), &'static str> {
        if self.method_done {
            return Ok(());
        }
        let mut i = self.method_pos.max(self.head_start);
        while let Some(&b) = upto.get(i) {
            if b == b' ' {
                if i == self.head_start {
                    return Err(EMPTY_METHOD);
                }
                self.method_done = true;
                break;
            }
            if !is_tchar(b) {
                return Err(INVALID_METHOD);
            }
            i += 1;
        }
        self.method_pos = i;
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> ClientReader<R> {
    /// Reads the next request head.
    ///
    /// Returns as soon as a complete head is buffered; bytes after it stay
    /// buffered (body, pipelined request, tunnel data). Callers wrap this in
    /// `tokio::time::timeout` for `header_read_timeout`; it is cancel-safe.
    /// Call it again only once the previous request's body has been read to
    /// its end.
    ///
    /// Boxed: a head is 312 bytes, moved from here to the request that serves it (through
    /// the read's timeout, the request loop and the forwarding call); boxed, each move is a
    /// pointer's, where by value it was a `memcpy` each, about 450 instructions a request.
    pub async fn read_head(&mut self) -> Result<Box<RequestHead>, HeadError> {
        loop {
            // Bytes past the limit cannot belong to an acceptable head, so
            // they are never judged: the answer is 431 whatever they hold.
            let window = &self.buf[..self.buf.len().min(self.max_header_bytes)];
            match self.scan.advance(window) {
                Err(reason) => return Err(HeadError::Malformed(reason)),
                Ok(Some(end)) => return self.take_head(end),
                Ok(None) => {}
            }
            if self.buf.len() > self.max_header_bytes {
                return Err(HeadError::TooLarge);
            }
            // Up to HEAD_FIRST_READ first, even if some bytes are already here (a TLS
            // connection's idle wait takes the first few): most heads fit in it.
            let want = if self.buf.len() < HEAD_FIRST_READ {
                HEAD_FIRST_READ - self.buf.len()
            } else {
                HEAD_READ
            };
            if self.read_more(want).await? == 0 {
                return Err(if self.buf.iter().all(|&b| b == b'\r' || b == b'\n') {
                    HeadError::Closed
                } else {
                    HeadError::Malformed(INCOMPLETE_HEAD)
                });
            }
        }
    }

    /// Splits the complete head `buf[..end]` off the buffer and parses it.
    fn take_head(&mut self, end: usize) -> Result<Box<RequestHead>, HeadError> {
        if end > self.max_header_bytes {
            return Err(HeadError::TooLarge);
        }
        self.scan = HeadScan::default();
        // Header values become slices of this without copying.
        let head = self.buf.split_to(end).freeze();
        parse_head(&head).map(Box::new)
    }
}

/// Parses a complete head whose line structure `HeadScan` has checked.
fn parse_head(head: &Bytes) -> Result<RequestHead, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed(MALFORMED_HEAD)),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(diagnose(head, e))),
    }
    let malformed = HeadError::Malformed;
    let method = req.method.ok_or(malformed(MALFORMED_HEAD))?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| malformed(INVALID_METHOD))?;
    let target = req.path.ok_or(malformed(MALFORMED_HEAD))?;
    if !target.is_ascii() {
        return Err(malformed(INVALID_TARGET));
    }
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(malformed(UNSUPPORTED_VERSION)),
    };

    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut content_length: Option<u64> = None;
    let mut te_codings = 0usize;
    let mut te_chunked = false;
    let (mut conn_close, mut conn_keep_alive) = (false, false);
    let mut expect_continue = false;
    let mut names_hop_fields = false;
    let mut hosts = 0usize;
    let mut spellings = Spellings::new(head.clone());
    for h in req.headers.iter() {
        spellings.note(h.name.as_bytes());
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| malformed(INVALID_HEADER_NAME))?;
        if name == header::CONTENT_LENGTH {
            content_length_values(h.value, &mut content_length).map_err(malformed)?;
        } else if name == header::TRANSFER_ENCODING {
            for coding in h.value.split(|&b| b == b',') {
                te_codings += 1;
                te_chunked = trim_ows(coding).eq_ignore_ascii_case(b"chunked");
            }
        } else if name == header::CONNECTION {
            for token in h.value.split(|&b| b == b',').map(trim_ows) {
                conn_close |= token.eq_ignore_ascii_case(b"close");
                conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
            names_hop_fields |= names_fields(h.value);
        } else if h.name.len() == 16 && known(h.name.as_bytes()) == Known::ProxyConnection {
            names_hop_fields |= names_fields(h.value);
        } else if name == header::EXPECT {
            expect_continue = trim_ows(h.value).eq_ignore_ascii_case(b"100-continue");
        } else if name == header::HOST {
            hosts += 1;
        }
        let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value))
            .map_err(|_| malformed(INVALID_HEADER_VALUE))?;
        headers.append(name, value);
    }

    let framing = match (te_codings > 0, content_length) {
        (true, Some(_)) => return Err(malformed(CL_AND_TE)),
        (true, None) if version == Version::HTTP_10 => return Err(malformed(TE_IN_HTTP10)),
        // Anything but a lone `chunked` (`gzip, chunked` included) would need
        // the coding forwarded intact; refusing is the only unambiguous answer.
        (true, None) if te_codings != 1 || !te_chunked => return Err(malformed(TE_NOT_CHUNKED)),
        (true, None) => BodyFraming::Chunked,
        (false, Some(n)) => BodyFraming::Length(n),
        (false, None) => BodyFraming::Empty,
    };
    if method == Method::CONNECT && !matches!(framing, BodyFraming::Empty | BodyFraming::Length(0))
    {
        return Err(malformed(CONNECT_WITH_BODY));
    }
    if hosts > 1 {
        return Err(malformed(MULTIPLE_HOST));
    }
    let http11 = version == Version::HTTP_11;
    Ok(RequestHead {
        method,
        target: target.to_owned(),
        version,
        headers,
        framing,
        spellings,
        keep_alive: !conn_close && (http11 || conn_keep_alive),
        expect_continue: http11 && expect_continue,
        names_hop_fields,
    })
}

/// Whether a `Connection` value lists a token other than a fixed hop-by-hop name.
fn names_fields(value: &[u8]) -> bool {
    super::tokens(value).any(|t| !known(t).is_hop_by_hop())
}

/// Folds one `Content-Length` field value (`5` or a list `5, 5`) into
/// `seen`: every element must be digits only and equal to the others.
pub fn content_length_values(value: &[u8], seen: &mut Option<u64>) -> Result<(), &'static str> {
    for element in value.split(|&b| b == b',') {
        let digits = trim_ows(element);
        if digits.is_empty() {
            return Err(CL_EMPTY);
        }
        let mut n: u64 = 0;
        for &b in digits {
            if !b.is_ascii_digit() {
                return Err(CL_NOT_DIGITS);
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
                .ok_or(CL_OVERFLOW)?;
        }
        match *seen {
            Some(prev) if prev != n => return Err(CL_CONFLICT),
            _ => *seen = Some(n),
        }
    }
    Ok(())
}

/// Validates a request line (without its CRLF) exactly as strictly as the
/// full parse does, for the early check and for error reasons.
fn check_request_line(line: &[u8]) -> Result<(), &'static str> {
    if is_plain_request_line(line) {
        return Ok(());
    }
    check_request_line_in_full(line)
}

/// The common line in one pass: `token SP printable SP HTTP/1.x`. A line it accepts the full
/// check accepts too; anything else goes there for its reason.
fn is_plain_request_line(line: &[u8]) -> bool {
    let Some((rest, version)) = line.split_last_chunk::<9>() else {
        return false;
    };
    if !matches!(version, b" HTTP/1.1" | b" HTTP/1.0") {
        return false;
    }
    let Some(sp) = memchr(b' ', rest) else {
        return false;
    };
    let (method, target) = (&rest[..sp], &rest[sp + 1..]);
    !method.is_empty()
        && method.iter().all(|&b| is_tchar(b))
        && !target.is_empty()
        && target.iter().all(|&b| (0x21..=0x7e).contains(&b))
}

/// The general check, every reason in its order.
fn check_request_line_in_full(line: &[u8]) -> Result<(), &'static str> {
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    if method.is_empty() {
        return Err(EMPTY_METHOD);
    }
    if !method.iter().all(|&b| is_tchar(b)) {
        return Err(INVALID_METHOD);
    }
    if let Some(reason) = control_bytes(line) {
        return Err(reason);
    }
    let (Some(target), Some(version)) = (parts.next(), parts.next()) else {
        return Err(BAD_REQUEST_LINE);
    };
    if target.is_empty() {
        return Err(EMPTY_TARGET);
    }
    if !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err(INVALID_TARGET);
    }
    if version.contains(&b' ') {
        return Err(BAD_REQUEST_LINE);
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err(UNSUPPORTED_VERSION);
    }
    Ok(())
}

/// NUL, or another control byte than HTAB, CR and LF.
fn control_bytes(bytes: &[u8]) -> Option<&'static str> {
    if bytes.contains(&0) {
        Some(NUL_BYTE)
    } else if bytes
        .iter()
        .any(|&b| (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || b == 0x7f)
    {
        Some(CONTROL_BYTE)
    } else {
        None
    }
}

/// Finds a precise reason for an `httparse` error. Only on the error path,
/// so it may walk the head again.
fn diagnose(head: &[u8], err: httparse::Error) -> &'static str {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.by_ref().find(|l| !l.is_empty()).unwrap_or_default();
    if let Err(reason) = check_request_line(request_line) {
        return reason;
    }
    if let Some(reason) = control_bytes(head) {
        return reason;
    }
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some(colon) = memchr(b':', line) else {
            return NO_COLON;
        };
        let name = &line[..colon];
        if name.is_empty() {
            return EMPTY_HEADER_NAME;
        }
        if matches!(name.last(), Some(b' ' | b'\t')) {
            return SPACE_BEFORE_COLON;
        }
        if !name.iter().all(|&b| is_tchar(b)) {
            return INVALID_HEADER_NAME;
        }
    }
    match err {
        httparse::Error::Version => UNSUPPORTED_VERSION,
        httparse::Error::HeaderName => INVALID_HEADER_NAME,
        httparse::Error::HeaderValue => INVALID_HEADER_VALUE,
        httparse::Error::Token => BAD_REQUEST_LINE,
        _ => MALFORMED_HEAD,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testio::{Endless, Pieces};
    use super::*;
    use std::time::Duration;

    const MAX: usize = 8 * 1024;

    /// The one-pass check of a common request line accepts only lines the full check
    /// accepts, and the answer for every line is the full check's.
    #[test]
    fn the_plain_request_line_check_agrees_with_the_full_one() {
        const PIECES: &[&[u8]] = &[
            b"GET",
            b"POST",
            b"CONNECT",
            b" ",
            b"  ",
            b"http://a/",
            b"/",
            b"a.example:443",
            b"HTTP/1.1",
            b"HTTP/1.0",
            b"HTTP/2.0",
            b"http/1.1",
            b"HTTP/1.1 ",
            b"\x00",
            b"\x01",
            b"\x7f",
            b"\xc3\xa9",
            b"\t",
            b"G(T",
            b"",
            b"x",
        ];
        let mut lines: Vec<Vec<u8>> = vec![
            b"GET http://a.example/ HTTP/1.1".to_vec(),
            b"CONNECT a.example:443 HTTP/1.0".to_vec(),
            b"GET / HTTP/1.1".to_vec(),
        ];
        for line in &lines {
            assert!(is_plain_request_line(line), "{line:?}");
        }
        let mut rng = super::super::testio::Lcg(11);
        for _ in 0..50_000 {
            let mut line = Vec::new();
            for _ in 0..1 + rng.below(7) {
                line.extend_from_slice(PIECES[rng.below(PIECES.len())]);
            }
            lines.push(line);
        }
        for line in &lines {
            let full = check_request_line_in_full(line);
            if is_plain_request_line(line) {
                assert_eq!(full, Ok(()), "{line:?}");
            }
            assert_eq!(check_request_line(line), full, "{line:?}");
        }
    }

    /// Read splits every case is replayed with: whole, byte by byte, odd sizes.
    const SPLITS: &[&[usize]] = &[&[], &[1], &[2, 3], &[7, 1, 13]];

    struct Valid {
        name: &'static str,
        input: &'static [u8],
        method: Method,
        target: &'static str,
        version: Version,
        framing: BodyFraming,
        keep_alive: bool,
        expect_continue: bool,
        /// (header, value) pairs that must be present.
        headers: &'static [(&'static str, &'static [u8])],
        /// Bytes that must remain buffered after the head.
        leftover: &'static [u8],
    }

    fn valid_cases() -> Vec<Valid> {
        let get = |name, input, target| Valid {
            name,
            input,
            method: Method::GET,
            target,
            version: Version::HTTP_11,
            framing: BodyFraming::Empty,
            keep_alive: true,
            expect_continue: false,
            headers: &[],
            leftover: b"",
        };
        vec![
            Valid {
                headers: &[("host", b"a.example"), ("accept", b"*/*")],
                ..get(
                    "GET absolute-form",
                    b"GET http://a.example/p?q=1 HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\n\r\n",
                    "http://a.example/p?q=1",
                )
            },
            Valid {
                method: Method::CONNECT,
                leftover: b"\x16\x03\x01\x00\x05hello",
                ..get(
                    "CONNECT with tunnel bytes after the head",
                    b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n\x16\x03\x01\x00\x05hello",
                    "a.example:443",
                )
            },
            Valid {
                method: Method::CONNECT,
                framing: BodyFraming::Length(0),
                ..get("CONNECT with Content-Length: 0", b"CONNECT [::1]:443 HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "[::1]:443")
            },
            Valid {
                method: Method::POST,
                framing: BodyFraming::Length(5),
                leftover: b"hello",
                ..get("POST with Content-Length", b"POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", "http://a/")
            },
            Valid {
                method: Method::POST,
                framing: BodyFraming::Length(5),
                ..get(
                    "identical Content-Length repeats",
                    b"POST http://a/ HTTP/1.1\r\nContent-Length: 5, 5\r\ncontent-length:5\r\n\r\n",
                    "http://a/",
                )
            },
            Valid {
                method: Method::POST,
                framing: BodyFraming::Chunked,
                leftover: b"5;name=val\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
                ..get(
                    "chunked (case-insensitive) with extensions and trailers",
                    b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n5;name=val\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
                    "http://a/",
                )
            },
            Valid {
                version: Version::HTTP_10,
                keep_alive: false,
                ..get("HTTP/1.0 closes by default", b"GET http://a/ HTTP/1.0\r\n\r\n", "http://a/")
            },
            Valid {
                version: Version::HTTP_10,
                ..get("HTTP/1.0 keep-alive", b"GET http://a/ HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", "http://a/")
            },
            Valid {
                version: Version::HTTP_10,
                keep_alive: false,
                ..get(
                    "HTTP/1.0 ignores Expect",
                    b"GET http://a/ HTTP/1.0\r\nExpect: 100-continue\r\n\r\n",
                    "http://a/",
                )
            },
            Valid {
                keep_alive: false,
                ..get("HTTP/1.1 Connection: close in a list", b"GET http://a/ HTTP/1.1\r\nConnection: foo, CLOSE\r\n\r\n", "http://a/")
            },
            Valid {
                method: Method::PUT,
                framing: BodyFraming::Length(3),
                expect_continue: true,
                ..get(
                    "Expect: 100-continue",
                    b"PUT http://a/ HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-Continue\r\n\r\n",
                    "http://a/",
                )
            },
            Valid {
                leftover: b"GET http://b/ HTTP/1.1\r\n\r\n",
                ..get("pipelined: first of two", b"GET http://a/ HTTP/1.1\r\n\r\nGET http://b/ HTTP/1.1\r\n\r\n", "http://a/")
            },
            Valid {
                headers: &[("x-bin", b"caf\xe9"), ("x-empty", b"")],
                ..get(
                    "non-UTF-8 and empty values kept as bytes",
                    b"GET http://a/ HTTP/1.1\r\nX-Bin: caf\xe9\r\nX-Empty:\r\n\r\n",
                    "http://a/",
                )
            },
            get("leading empty lines skipped", b"\r\n\r\nGET http://a/ HTTP/1.1\r\n\r\n", "http://a/"),
            Valid {
                method: Method::from_bytes(b"PROPFIND").unwrap(),
                ..get("extension method", b"PROPFIND http://a/ HTTP/1.1\r\n\r\n", "http://a/")
            },
            get("origin-form is parsed (policy refuses it)", b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", "/x"),
        ]
    }

    async fn read_one(
        input: &[u8],
        sizes: &[usize],
        max: usize,
    ) -> (Result<RequestHead, HeadError>, Vec<u8>) {
        let mut reader = ClientReader::new(Pieces::new(input, sizes), max);
        let head = reader.read_head().await.map(|h| *h);
        (head, reader.buffered().to_vec())
    }

    #[tokio::test]
    async fn valid_heads() {
        for case in valid_cases() {
            for sizes in SPLITS {
                let (head, leftover) = read_one(case.input, sizes, MAX).await;
                let head = head.unwrap_or_else(|e| panic!("{} {sizes:?}: {e}", case.name));
                let ctx = format!("{} {sizes:?}", case.name);
                assert_eq!(head.method, case.method, "{ctx}");
                assert_eq!(head.target, case.target, "{ctx}");
                assert_eq!(head.version, case.version, "{ctx}");
                assert_eq!(head.framing, case.framing, "{ctx}");
                assert_eq!(head.keep_alive, case.keep_alive, "{ctx}");
                assert_eq!(head.expect_continue, case.expect_continue, "{ctx}");
                for (name, value) in case.headers {
                    assert_eq!(
                        head.headers.get(*name).map(|v| v.as_bytes()),
                        Some(*value),
                        "{ctx}: {name}"
                    );
                }
                // Pieces may not have handed out everything yet when the head completed.
                assert!(
                    case.leftover.starts_with(&leftover),
                    "{ctx}: leftover {leftover:?}"
                );
                if sizes.is_empty() {
                    assert_eq!(leftover, case.leftover, "{ctx}");
                }
            }
        }
    }

    enum Want {
        Malformed(&'static str),
        TooLarge,
    }

    fn invalid_cases() -> Vec<(&'static str, Vec<u8>, Want)> {
        use Want::*;
        let mut cases: Vec<(&'static str, Vec<u8>, Want)> = vec![
            ("HTTP/2.0", b"GET http://a/ HTTP/2.0\r\n\r\n".to_vec(), Malformed(UNSUPPORTED_VERSION)),
            ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), Malformed(UNSUPPORTED_VERSION)),
            ("HTTP/0.9", b"GET /\r\n\r\n".to_vec(), Malformed(BAD_REQUEST_LINE)),
            ("lowercase version", b"GET / http/1.1\r\n\r\n".to_vec(), Malformed(UNSUPPORTED_VERSION)),
            ("trailing space in request line", b"GET / HTTP/1.1 \r\n\r\n".to_vec(), Malformed(BAD_REQUEST_LINE)),
            ("double space", b"GET  / HTTP/1.1\r\n\r\n".to_vec(), Malformed(EMPTY_TARGET)),
            ("empty method", b" / HTTP/1.1\r\n\r\n".to_vec(), Malformed(EMPTY_METHOD)),
            ("invalid method", b"G(T / HTTP/1.1\r\n\r\n".to_vec(), Malformed(INVALID_METHOD)),
            ("TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), Malformed(INVALID_METHOD)),
            ("NUL in method", b"GE\x00T http://a/ HTTP/1.1\r\n\r\n".to_vec(), Malformed(INVALID_METHOD)),
            ("garbage then bare LF", b"\x16\n".to_vec(), Malformed(INVALID_METHOD)),
            ("non-ASCII target", b"GET http://a/\xc3\xa9 HTTP/1.1\r\n\r\n".to_vec(), Malformed(INVALID_TARGET)),
            (
                "CL and TE",
                b"POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                Malformed(CL_AND_TE),
            ),
            (
                "TE and CL",
                b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n".to_vec(),
                Malformed(CL_AND_TE),
            ),
            ("CL list differs", b"POST http://a/ HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n".to_vec(), Malformed(CL_CONFLICT)),
            (
                "CL repeated differs",
                b"POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n".to_vec(),
                Malformed(CL_CONFLICT),
            ),
            ("CL +5", b"POST http://a/ HTTP/1.1\r\nContent-Length: +5\r\n\r\n".to_vec(), Malformed(CL_NOT_DIGITS)),
            ("CL -1", b"POST http://a/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(), Malformed(CL_NOT_DIGITS)),
            ("CL 0x5", b"POST http://a/ HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n".to_vec(), Malformed(CL_NOT_DIGITS)),
            ("CL inner space", b"POST http://a/ HTTP/1.1\r\nContent-Length: 1 5\r\n\r\n".to_vec(), Malformed(CL_NOT_DIGITS)),
            ("CL empty", b"POST http://a/ HTTP/1.1\r\nContent-Length:\r\n\r\n".to_vec(), Malformed(CL_EMPTY)),
            ("CL empty element", b"POST http://a/ HTTP/1.1\r\nContent-Length: 5,\r\n\r\n".to_vec(), Malformed(CL_EMPTY)),
            (
                "CL overflow",
                b"POST http://a/ HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n".to_vec(),
                Malformed(CL_OVERFLOW),
            ),
            (
                "TE chunked, identity",
                b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n".to_vec(),
                Malformed(TE_NOT_CHUNKED),
            ),
            (
                "TE gzip, chunked",
                b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(),
                Malformed(TE_NOT_CHUNKED),
            ),
            (
                "TE chunked twice",
                b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                Malformed(TE_NOT_CHUNKED),
            ),
            ("TE identity", b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n".to_vec(), Malformed(TE_NOT_CHUNKED)),
            ("TE xchunked", b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n".to_vec(), Malformed(TE_NOT_CHUNKED)),
            ("TE empty", b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n".to_vec(), Malformed(TE_NOT_CHUNKED)),
            (
                "TE with space before colon",
                b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n".to_vec(),
                Malformed(SPACE_BEFORE_COLON),
            ),
            ("TE in HTTP/1.0", b"POST http://a/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), Malformed(TE_IN_HTTP10)),
            (
                "obs-fold",
                b"GET http://a/ HTTP/1.1\r\nX-A: 1\r\n  continued\r\n\r\n".to_vec(),
                Malformed(OBS_FOLD),
            ),
            ("whitespace before first header", b"GET http://a/ HTTP/1.1\r\n\tHost: a\r\n\r\n".to_vec(), Malformed(OBS_FOLD)),
            ("bare LF ends head", b"GET http://a/ HTTP/1.1\n\n".to_vec(), Malformed(BARE_LF)),
            ("bare LF before GET", b"\nGET http://a/ HTTP/1.1\r\n\r\n".to_vec(), Malformed(BARE_LF)),
            ("bare LF in header", b"GET http://a/ HTTP/1.1\r\nX-A: 1\nHost: a\r\n\r\n".to_vec(), Malformed(BARE_LF)),
            ("bare CR in header", b"GET http://a/ HTTP/1.1\r\nX-A: 1\rHost: a\r\n\r\n".to_vec(), Malformed(BARE_CR)),
            ("bare CR in request line", b"GET http://a/\r HTTP/1.1\r\n\r\n".to_vec(), Malformed(BARE_CR)),
            ("NUL in value", b"GET http://a/ HTTP/1.1\r\nX-A: a\x00b\r\n\r\n".to_vec(), Malformed(NUL_BYTE)),
            ("NUL in target", b"GET http://a/\x00 HTTP/1.1\r\n\r\n".to_vec(), Malformed(NUL_BYTE)),
            ("control byte in value", b"GET http://a/ HTTP/1.1\r\nX-A: a\x01b\r\n\r\n".to_vec(), Malformed(CONTROL_BYTE)),
            ("DEL in value", b"GET http://a/ HTTP/1.1\r\nX-A: a\x7fb\r\n\r\n".to_vec(), Malformed(CONTROL_BYTE)),
            ("space before colon", b"GET http://a/ HTTP/1.1\r\nHost : a\r\n\r\n".to_vec(), Malformed(SPACE_BEFORE_COLON)),
            ("no colon", b"GET http://a/ HTTP/1.1\r\nHost a\r\n\r\n".to_vec(), Malformed(NO_COLON)),
            ("empty header name", b"GET http://a/ HTTP/1.1\r\n: a\r\n\r\n".to_vec(), Malformed(EMPTY_HEADER_NAME)),
            ("bad header name", b"GET http://a/ HTTP/1.1\r\nX(A): a\r\n\r\n".to_vec(), Malformed(INVALID_HEADER_NAME)),
            ("two Host headers", b"GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), Malformed(MULTIPLE_HOST)),
            (
                "CONNECT with a body",
                b"CONNECT a:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
                Malformed(CONNECT_WITH_BODY),
            ),
            (
                "CONNECT chunked",
                b"CONNECT a:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                Malformed(CONNECT_WITH_BODY),
            ),
            ("too many empty lines", b"\r\n\r\n\r\n\r\n\r\nGET http://a/ HTTP/1.1\r\n\r\n".to_vec(), Malformed(TOO_MANY_EMPTY_LINES)),
            ("truncated head", b"GET http://a/ HTTP/1.1\r\nHost: a\r\n".to_vec(), Malformed(INCOMPLETE_HEAD)),
        ];
        let mut long_uri = b"GET http://a/".to_vec();
        long_uri.extend(std::iter::repeat_n(b'a', 100 * 1024));
        long_uri.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        cases.push(("100 KB URI", long_uri, TooLarge));
        let mut big_header = b"GET http://a/ HTTP/1.1\r\nX-Big: ".to_vec();
        big_header.extend(std::iter::repeat_n(b'v', MAX));
        big_header.extend_from_slice(b"\r\n\r\n");
        cases.push(("header section over the limit", big_header, TooLarge));
        let mut many = b"GET http://a/ HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        cases.push(("101 headers", many, TooLarge));
        cases
    }

    #[tokio::test]
    async fn invalid_heads() {
        for (name, input, want) in invalid_cases() {
            for sizes in SPLITS {
                let (got, _) = read_one(&input, sizes, MAX).await;
                match (&got, &want) {
                    (Err(HeadError::Malformed(r)), Want::Malformed(w)) if r == w => {}
                    (Err(HeadError::TooLarge), Want::TooLarge) => {}
                    _ => panic!("{name} {sizes:?}: got {got:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn exactly_max_headers_is_accepted() {
        let mut input = b"GET http://a/ HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            input.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        let (head, _) = read_one(&input, &[], MAX).await;
        assert_eq!(head.unwrap().headers.len(), MAX_HEADERS);
    }

    #[tokio::test]
    async fn head_of_exactly_the_limit_is_accepted_one_more_is_not() {
        let mut input = b"GET http://a/ HTTP/1.1\r\nX: ".to_vec();
        input.extend(std::iter::repeat_n(b'v', 100));
        input.extend_from_slice(b"\r\n\r\n");
        let limit = input.len();
        for sizes in SPLITS {
            assert!(read_one(&input, sizes, limit).await.0.is_ok(), "{sizes:?}");
            assert!(
                matches!(
                    read_one(&input, sizes, limit - 1).await.0,
                    Err(HeadError::TooLarge)
                ),
                "{sizes:?}"
            );
        }
    }

    #[tokio::test]
    async fn pipelined_requests_come_out_in_order() {
        let input = b"GET http://a/1 HTTP/1.1\r\n\r\nPOST http://a/2 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi\r\nGET http://a/3 HTTP/1.1\r\n\r\n";
        for sizes in SPLITS {
            let mut reader = ClientReader::new(Pieces::new(input, sizes), MAX);
            let mut seen = Vec::new();
            loop {
                let head = match reader.read_head().await {
                    Ok(head) => head,
                    Err(HeadError::Closed) => break,
                    Err(e) => panic!("{sizes:?}: {e}"),
                };
                let mut state = crate::http1::BodyState::new(head.framing);
                let mut body = Vec::new();
                while let Some(piece) = reader.read_body_chunk(&mut state).await.unwrap() {
                    body.extend_from_slice(&piece);
                }
                seen.push((head.target, body));
            }
            let want = [
                ("http://a/1", &b""[..]),
                ("http://a/2", b"hi"),
                ("http://a/3", b""),
            ];
            assert_eq!(seen.len(), want.len(), "{sizes:?}");
            for ((target, body), (t, b)) in seen.iter().zip(want) {
                assert_eq!((target.as_str(), &body[..]), (t, b), "{sizes:?}");
            }
        }
    }

    #[tokio::test]
    async fn clean_close_is_not_an_error() {
        for input in [&b""[..], b"\r\n", b"\r"] {
            let (got, _) = read_one(input, &[], MAX).await;
            assert!(matches!(got, Err(HeadError::Closed)), "{input:?}: {got:?}");
        }
    }

    /// A client that sent a few bytes and waits must be refused on those
    /// bytes, not after the header timeout.
    #[tokio::test(start_paused = true)]
    async fn other_protocols_are_refused_without_waiting() {
        let cases: &[(&[u8], &str)] = &[
            (b"\x16\x03\x01", INVALID_METHOD),
            (b"\x16", INVALID_METHOD),
            (b"SSH-2.0-OpenSSH_9.6\r\n", BAD_REQUEST_LINE),
            (b"PRI * HTTP/2.0\r\n", UNSUPPORTED_VERSION),
            (b"GET / HTTP/1.1\n", BARE_LF),
            (b"GET http://a/ HTTP/1.1\r\n X: folded\r\n", OBS_FOLD),
            (b"GET http://a/ HTTP/1.1\r\nHost: a\rX", BARE_CR),
            (b" GET", EMPTY_METHOD),
            (b"\r\n\r\n\r\n\r\n\r\n", TOO_MANY_EMPTY_LINES),
        ];
        for (input, want) in cases {
            for sizes in SPLITS {
                let mut reader = ClientReader::new(Pieces::new(input, sizes).pending_at_end(), MAX);
                let got = tokio::time::timeout(Duration::from_secs(5), reader.read_head()).await;
                match got {
                    Ok(Err(HeadError::Malformed(r))) if r == *want => {}
                    other => panic!("{input:?} {sizes:?}: {other:?}"),
                }
            }
        }
    }

    /// A valid partial head keeps waiting (the caller's timeout decides).
    #[tokio::test(start_paused = true)]
    async fn valid_partial_head_waits() {
        for input in [
            &b"GET"[..],
            b"GET http://a/ HTTP/1.1\r",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n",
            b"\r\n",
        ] {
            let mut reader = ClientReader::new(Pieces::new(input, &[1]).pending_at_end(), MAX);
            let got = tokio::time::timeout(Duration::from_secs(5), reader.read_head()).await;
            assert!(got.is_err(), "{input:?}: {got:?}");
        }
    }

    /// An endless request line is cut off at the limit plus one read.
    #[tokio::test]
    async fn endless_request_line_is_bounded() {
        for max in [16, 1024, 64 * 1024] {
            let mut reader = ClientReader::new(Endless { read_total: 0 }, max);
            assert!(matches!(reader.read_head().await, Err(HeadError::TooLarge)));
            let (io, buf) = reader.into_parts();
            assert!(
                io.read_total <= max + HEAD_READ,
                "{max}: read {}",
                io.read_total
            );
            assert!(buf.len() <= max + HEAD_READ);
        }
    }

    /// A common head is read into a small buffer: header values are slices of it, so it lives
    /// as long as the request. A head longer than the first read is still read whole.
    #[tokio::test]
    async fn a_small_head_holds_a_small_buffer_and_a_long_one_is_read_whole() {
        let small = b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut reader = ClientReader::new(Pieces::new(small, &[small.len()]), MAX);
        reader.read_head().await.unwrap();
        let (_, rest) = reader.into_parts();
        assert!(
            small.len() + rest.capacity() <= HEAD_FIRST_READ,
            "buffer of {} bytes for a {}-byte head",
            small.len() + rest.capacity(),
            small.len()
        );

        let long_value = "v".repeat(3 * HEAD_FIRST_READ);
        let long = format!("GET http://a/ HTTP/1.1\r\nHost: a\r\nX-Long: {long_value}\r\n\r\n");
        let mut reader = ClientReader::new(Pieces::new(long.as_bytes(), &[long.len()]), MAX);
        let head = reader.read_head().await.unwrap();
        assert_eq!(head.headers["x-long"], long_value.as_str());
    }

    /// A timed-out `read_head` resumes where it stopped.
    #[tokio::test(start_paused = true)]
    async fn read_head_is_cancel_safe() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = ClientReader::new(server, MAX);
        use tokio::io::AsyncWriteExt;
        client.write_all(b"GET http://a/ HT").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(10), reader.read_head())
                .await
                .is_err()
        );
        client
            .write_all(b"TP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let head = reader.read_head().await.unwrap();
        assert_eq!(head.target, "http://a/");
        assert_eq!(head.headers["host"], "a");
    }
}
