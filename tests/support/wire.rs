//! Hand-rolled HTTP/1 framing shared by the origin and the clients: heads, Content-Length and chunked bodies.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest head either side accepts before giving up; big enough for any honest head,
/// small enough that `Reply::endless_header` is detected quickly.
pub const MAX_HEAD: usize = 256 * 1024;
const MAX_HEADERS: usize = 256;

/// A stream plus the bytes read from it but not yet consumed.
pub struct WireReader<S> {
    pub stream: S,
    pub buf: Vec<u8>,
    /// Bytes received so far, for tests that look at what really arrived.
    pub total_read: usize,
}

/// A parsed request head.
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub version: u8,
    pub headers: Vec<(String, String)>,
}

/// A parsed response head.
pub struct ResponseHead {
    pub version: u8,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Does any `name` header list `token` (comma-separated, case-insensitive)?
pub fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Body framing from Transfer-Encoding / Content-Length; `otherwise` when neither is present.
pub fn body_framing(headers: &[(String, String)], otherwise: Framing) -> io::Result<Framing> {
    if has_token(headers, "transfer-encoding", "chunked") {
        return Ok(Framing::Chunked);
    }
    match header(headers, "content-length") {
        Some(v) => v
            .trim()
            .parse()
            .map(Framing::Length)
            .map_err(|_| invalid(format!("bad Content-Length {v:?}"))),
        None => Ok(otherwise),
    }
}

pub fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn eof(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("connection closed {what}"),
    )
}

fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).into_owned();
            (h.name.to_string(), value)
        })
        .collect()
}

impl<S: AsyncRead + Unpin> WireReader<S> {
    pub fn new(stream: S) -> Self {
        WireReader {
            stream,
            buf: Vec::new(),
            total_read: 0,
        }
    }

    /// Reads more bytes into `buf`; `Ok(0)` is EOF.
    pub async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        self.total_read += n;
        Ok(n)
    }

    /// `Ok(None)` when the peer closed before sending any byte of a new request.
    pub async fn read_request_head(&mut self) -> io::Result<Option<RequestHead>> {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut slots);
            match req.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = RequestHead {
                        method: req.method.unwrap_or_default().to_string(),
                        target: req.path.unwrap_or_default().to_string(),
                        version: req.version.unwrap_or(1),
                        headers: owned_headers(req.headers),
                    };
                    self.buf.drain(..len);
                    return Ok(Some(head));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(invalid(format!("bad request head: {e}"))),
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("request head too large"));
            }
            if self.fill().await? == 0 {
                return if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
                    Ok(None)
                } else {
                    Err(eof("inside a request head"))
                };
            }
        }
    }

    /// Reads one response head, skipping interim 1xx responses (but not 101).
    pub async fn read_response_head(&mut self) -> io::Result<ResponseHead> {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut slots);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = ResponseHead {
                        version: resp.version.unwrap_or(1),
                        status: resp.code.unwrap_or(0),
                        headers: owned_headers(resp.headers),
                    };
                    self.buf.drain(..len);
                    if (100..200).contains(&head.status) && head.status != 101 {
                        continue;
                    }
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(invalid(format!("not an HTTP response: {e}"))),
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("response head too large"));
            }
            if self.fill().await? == 0 {
                return Err(eof("before a complete response head"));
            }
        }
    }

    /// Reads a body; on a framing failure returns what arrived so far with the error.
    pub async fn read_body(&mut self, framing: Framing) -> (Vec<u8>, Option<io::Error>) {
        let mut body = Vec::new();
        let result = match framing {
            Framing::None => Ok(()),
            Framing::Length(n) => self.read_exact_into(n, &mut body).await,
            Framing::Chunked => self.read_chunked_into(&mut body).await,
            Framing::UntilClose => self.read_to_close_into(&mut body).await,
        };
        (body, result.err())
    }

    async fn read_exact_into(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
        while self.buf.len() < n {
            let failure = match self.fill().await {
                Ok(0) => eof("inside a body"),
                Ok(_) => continue,
                Err(e) => e,
            };
            // Keep the partial body: tests look at how much arrived.
            out.append(&mut self.buf);
            return Err(failure);
        }
        out.extend(self.buf.drain(..n));
        Ok(())
    }

    async fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("chunk line too long"));
            }
            if self.fill().await? == 0 {
                return Err(eof("inside a chunked body"));
            }
        }
    }

    async fn read_chunked_into(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            let line = self.read_line().await?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // Trailer section: header lines up to an empty one.
                while !self.read_line().await?.is_empty() {}
                return Ok(());
            }
            self.read_exact_into(size, out).await?;
            if !self.read_line().await?.is_empty() {
                return Err(invalid("chunk data not followed by CRLF"));
            }
        }
    }

    async fn read_to_close_into(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            out.append(&mut self.buf);
            if self.fill().await? == 0 {
                return Ok(());
            }
        }
    }
}

/// Makes the coming close of `tcp` send an RST instead of a FIN (SO_LINGER 0): the peer's next
/// read or write fails with ECONNRESET. Zero linger never blocks, unlike a positive one.
pub fn reset_on_drop(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(std::time::Duration::ZERO));
}

/// A connection we can also reach at the TCP level (for SO_LINGER).
pub trait Wire: AsyncRead + AsyncWrite + Unpin + Send {
    fn tcp(&self) -> &TcpStream;
}

impl Wire for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Wire for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

pub async fn write_flush<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    // TLS buffers records until flushed.
    stream.flush().await
}
