//! What an origin answers (`Reply`) and how that answer, or fault, goes onto the wire.

use std::time::Duration;

use tokio::io::AsyncWrite;

use super::origin::SeenRequest;
use super::wire::{self, reset_on_drop, write_flush, Wire, WireReader};

/// What the origin does with a request.
#[derive(Debug, Clone)]
pub struct Reply {
    kind: Kind,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
    delay: Option<Duration>,
    close: bool,
    trickle: Option<(usize, Duration)>,
    close_mid_body: bool,
    stall_mid_body: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    CloseWithoutAnswer,
    ResetWithoutAnswer,
    Hang,
    EndlessHeader,
    Garbage,
}

/// What happens to a connection after a reply.
pub(super) enum After {
    KeepAlive,
    /// FIN, then linger.
    Close,
    /// Just drop: already reset, or the peer is gone.
    Drop,
    /// Send nothing more; keep the connection until the peer leaves.
    Hang,
}

impl Reply {
    /// 200 with this body and a Content-Length.
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply::status(200, body)
    }

    pub fn status(code: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            kind: Kind::Normal,
            status: code,
            headers: Vec::new(),
            body: body.into(),
            chunked: false,
            delay: None,
            close: false,
            trickle: None,
            close_mid_body: false,
            stall_mid_body: false,
        }
    }

    /// Adds a header. Setting `Content-Length` or `Transfer-Encoding` yourself turns off the
    /// automatic framing header (the body is still written as given), for protocol-error tests.
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    /// Sends the body with `Transfer-Encoding: chunked`.
    pub fn chunked(mut self) -> Reply {
        self.chunked = true;
        self
    }

    /// Waits this long before doing anything (for the fault kinds too).
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = Some(d);
        self
    }

    /// Adds `Connection: close` and closes (FIN) after the response.
    pub fn close(mut self) -> Reply {
        self.close = true;
        self
    }

    /// Reads the request, then closes with a FIN and no bytes.
    pub fn close_without_answer() -> Reply {
        Reply::fault(Kind::CloseWithoutAnswer)
    }

    /// Reads the request, then resets the connection (SO_LINGER 0, then close).
    pub fn reset_without_answer() -> Reply {
        Reply::fault(Kind::ResetWithoutAnswer)
    }

    /// Never answers; the connection stays open until the client leaves or the origin is dropped.
    pub fn hang() -> Reply {
        Reply::fault(Kind::Hang)
    }

    /// Sends the body `chunk` bytes at a time with `every` between pieces
    /// (one chunk per piece when also `.chunked()`).
    pub fn trickle(mut self, chunk: usize, every: Duration) -> Reply {
        self.trickle = Some((chunk.max(1), every));
        self
    }

    /// Announces the whole body (Content-Length N, or chunked), sends the first half, then
    /// closes with a FIN. No `Connection: close` warns the client.
    pub fn close_mid_body(mut self) -> Reply {
        self.close_mid_body = true;
        self
    }

    /// Announces the whole body (Content-Length N, or chunked), sends the first half, then
    /// goes silent with the connection open until the peer leaves (an upstream stalled mid-body).
    pub fn stall_mid_body(mut self) -> Reply {
        self.stall_mid_body = true;
        self
    }

    /// Sends a status line, then header lines forever (until the peer leaves or the origin is dropped).
    pub fn endless_header() -> Reply {
        Reply::fault(Kind::EndlessHeader)
    }

    /// Sends a line that is not an HTTP status line, then closes.
    pub fn garbage() -> Reply {
        Reply::fault(Kind::Garbage)
    }

    fn fault(kind: Kind) -> Reply {
        Reply {
            kind,
            ..Reply::status(200, Vec::new())
        }
    }

    fn has_header(&self, name: &str) -> bool {
        wire::header(&self.headers, name).is_some()
    }
}

pub(super) async fn respond<S: Wire>(
    reader: &mut WireReader<S>,
    req: &SeenRequest,
    reply: Reply,
    client_close: bool,
    keep_alive_timeout: Option<Duration>,
) -> After {
    if let Some(d) = reply.delay {
        tokio::time::sleep(d).await;
    }
    match reply.kind {
        Kind::Normal => {
            match send_reply(
                &mut reader.stream,
                req,
                &reply,
                client_close,
                keep_alive_timeout,
            )
            .await
            {
                Ok(after) => after,
                Err(_) => After::Drop,
            }
        }
        Kind::CloseWithoutAnswer => After::Close,
        Kind::ResetWithoutAnswer => {
            reset_on_drop(reader.stream.tcp());
            After::Drop
        }
        Kind::Hang => After::Hang,
        Kind::EndlessHeader => {
            let _ = endless_header(&mut reader.stream).await;
            After::Drop
        }
        Kind::Garbage => {
            let _ = write_flush(
                &mut reader.stream,
                b"SSH-2.0-OpenSSH_9.6 this is not HTTP\r\n\r\n",
            )
            .await;
            After::Close
        }
    }
}

async fn send_reply<S: Wire>(
    stream: &mut S,
    req: &SeenRequest,
    reply: &Reply,
    client_close: bool,
    keep_alive_timeout: Option<Duration>,
) -> std::io::Result<After> {
    let announce_close = reply.close || client_close;
    let bodiless_status = (100..200).contains(&reply.status) || reply.status == 204;
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let user_framing = reply.has_header("content-length") || reply.has_header("transfer-encoding");
    if !user_framing && !bodiless_status {
        if reply.chunked {
            head.push_str("Transfer-Encoding: chunked\r\n");
        } else {
            head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
        }
    }
    if let Some(d) = keep_alive_timeout {
        if !reply.has_header("keep-alive") {
            head.push_str(&format!("Keep-Alive: timeout={}\r\n", d.as_secs()));
        }
    }
    if announce_close && !reply.has_header("connection") {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    write_flush(stream, head.as_bytes()).await?;

    let skip_body =
        req.method.eq_ignore_ascii_case("HEAD") || bodiless_status || reply.status == 304;
    if !skip_body {
        let body = if reply.close_mid_body || reply.stall_mid_body {
            &reply.body[..reply.body.len() / 2]
        } else {
            &reply.body[..]
        };
        let piece_len = reply.trickle.map_or(body.len().max(1), |(chunk, _)| chunk);
        for (i, piece) in body.chunks(piece_len).enumerate() {
            if let (Some((_, every)), true) = (reply.trickle, i > 0) {
                tokio::time::sleep(every).await;
            }
            if reply.chunked {
                let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
                framed.extend_from_slice(piece);
                framed.extend_from_slice(b"\r\n");
                write_flush(stream, &framed).await?;
            } else {
                write_flush(stream, piece).await?;
            }
        }
        if reply.stall_mid_body {
            return Ok(After::Hang);
        }
        if reply.chunked && !reply.close_mid_body {
            write_flush(stream, b"0\r\n\r\n").await?;
        }
    }
    Ok(if reply.close_mid_body || announce_close {
        After::Close
    } else {
        After::KeepAlive
    })
}

async fn endless_header<S: AsyncWrite + Unpin>(stream: &mut S) -> std::io::Result<()> {
    write_flush(stream, b"HTTP/1.1 200 OK\r\n").await?;
    let filler = "x".repeat(1000);
    for i in 0u64.. {
        let line = format!("X-Endless-{i}: {filler}\r\n");
        write_flush(stream, line.as_bytes()).await?;
        if i % 16 == 15 {
            // Paced so that a fast reader cannot make this spin a core.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Other",
    }
}
