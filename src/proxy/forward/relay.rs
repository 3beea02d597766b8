//! The upstream's response passed on to the client: head rewritten, body streamed (re-framed
//! when needed), and the connection back in the pool as soon as the upstream side is complete.

use std::pin::pin;

use bytes::BytesMut;
use http::{Method, StatusCode, Version};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::Progress;
use crate::config::Settings;
use crate::error::ProxyError;
use crate::http1::known::Known;
use crate::http1::RequestHead;
use crate::metrics::CloseReason;
use crate::pool::{reuse, Pooled};
use crate::proxy::headers::{self, HopNames};
use crate::proxy::wait::within;
use crate::proxy::{Ctx, Flow};
use crate::upstream::{RespBody, ResponseHead, UpstreamConn};

/// Bodies larger than this are written without first copying into the output buffer.
const COALESCE_LIMIT: usize = 16 * 1024;

/// The client's response as far as the upstream's head decides it.
pub struct Started {
    /// The client's head, not sent yet: small bodies leave in one write with it.
    out: BytesMut,
    framing: Framing,
    /// The upstream ends the connection after this response.
    upstream_close: bool,
}

/// Decide the client's response from the upstream's head and write its head into a buffer;
/// no I/O. Not async, and the head is borrowed: neither it nor the checked-out connection is
/// moved into a future (the caller drops the head before the body is read: its bytes share
/// the connection's read buffer, which the body's reads then reuse instead of allocating).
pub fn start(
    ctx: &Ctx,
    head: &RequestHead,
    settings: &Settings,
    upstream: &ResponseHead,
    body: &RespBody,
    pooled: &mut Pooled<UpstreamConn>,
    p: &mut Progress<'_>,
) -> Started {
    // An HTTP/1.0 upstream closes after each response unless it says keep-alive.
    // What `Connection` lists was read once, when the head was parsed.
    let connection = upstream.connection();
    let upstream_close =
        connection.close || (upstream.version == Version::HTTP_10 && !connection.keep_alive);
    let keep_alive = upstream.all(Known::KeepAlive).next();
    let (idle, reason) = reuse::keep_alive_idle(keep_alive, settings.idle_timeout);
    pooled.set_idle_timeout(idle, reason);

    let status = upstream.status;
    let bodiless = head.method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut keep_alive = head.keep_alive && !ctx.draining && p.body_done;
    // The framing the client gets: the body's length when known, else chunked (HTTP/1.1) or
    // until close (HTTP/1.0). A bodiless response keeps the upstream's Content-Length (a HEAD
    // answer's describes the GET's body).
    let mut chunked = false;
    let mut length = None;
    if !bodiless {
        match body.exact_len() {
            Some(n) => length = Some(n),
            None if head.version == Version::HTTP_11 => chunked = true,
            None => keep_alive = false,
        }
    }

    let mut out = BytesMut::with_capacity(1024);
    let framing = Framing {
        length,
        chunked,
        bodiless,
        keep_alive,
    };
    client_head(&mut out, head.version, upstream, &framing);
    p.responded = Some(status);
    Started {
        out,
        framing,
        upstream_close,
    }
}

/// Pass the upstream's response body to the client after the head [`start`] wrote, and give
/// the connection back (to the pool, or closed) as soon as the upstream side is complete.
pub async fn body<W: AsyncWrite + Unpin>(
    settings: &Settings,
    started: Started,
    mut body: RespBody,
    pooled: &mut Pooled<UpstreamConn>,
    writer: &mut W,
    p: &mut Progress<'_>,
) -> Result<Flow, ProxyError> {
    let Started {
        mut out,
        framing:
            Framing {
                chunked,
                bodiless,
                keep_alive,
                ..
            },
        upstream_close,
    } = started;
    let mut pending_head = true;
    // A body whose last byte was handed out is not read again: that read would only say so.
    while !bodiless && !body.is_finished() {
        // Each wait for body bytes is bounded like the wait for the head (SPEC §3).
        let next = within(
            settings.response_timeout,
            pin!(pooled.conn().frame(&mut body)),
        )
        .await
        .ok();
        let data = match next {
            Some(None) => break,
            Some(Some(Ok(data))) => data,
            failed => {
                // The upstream died or went silent mid-body: the client must see a cut,
                // not a short success.
                if pending_head {
                    writer.write_all(&out).await.ok();
                }
                pooled.finish(Err(CloseReason::Error));
                let upstream = p.outcome.upstream_name().to_string();
                return Err(match failed {
                    Some(Some(Err(detail))) => {
                        ProxyError::ConnectionTerminated { upstream, detail }
                    }
                    _ => ProxyError::ResponseTimeout {
                        upstream,
                        timeout_ms: settings.response_timeout.as_millis(),
                    },
                });
            }
        };
        if data.is_empty() {
            continue;
        }
        p.outcome.bytes_out += data.len() as u64;
        if chunked {
            if data.len() <= COALESCE_LIMIT {
                crate::http1::encode_chunk(&mut out, &data);
            } else {
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                write_out(writer, &mut out).await?;
                writer
                    .write_all(&data)
                    .await
                    .map_err(ProxyError::client_write)?;
                out.extend_from_slice(b"\r\n");
            }
        } else if data.len() <= COALESCE_LIMIT {
            out.extend_from_slice(&data);
        } else {
            write_out(writer, &mut out).await?;
            writer
                .write_all(&data)
                .await
                .map_err(ProxyError::client_write)?;
        }
        // Flush unless more is already waiting: small bodies leave in one write with the head.
        if !body.is_end() {
            write_out(writer, &mut out).await?;
        }
        pending_head = false;
    }
    // The upstream side is complete: the connection goes back before the last bytes reach the client.
    if upstream_close {
        pooled.finish(Err(CloseReason::RemoteClosed));
    } else if !p.body_done {
        // An early answer to a request whose body was not all read from the client: the
        // upstream's side of that body is unfinished, and the connection is closed mid-message.
        pooled.finish(Err(CloseReason::Error));
    } else {
        pooled.finish(Ok(()));
    }
    if chunked {
        out.extend_from_slice(crate::http1::LAST_CHUNK);
    }
    write_out(writer, &mut out).await?;
    writer.flush().await.map_err(ProxyError::client_write)?;
    Ok(if keep_alive {
        Flow::KeepAlive
    } else {
        Flow::Close
    })
}

/// How the client's response is framed.
struct Framing {
    /// `Content-Length: n`.
    length: Option<u64>,
    /// `Transfer-Encoding: chunked`.
    chunked: bool,
    /// No body follows (HEAD, 1xx, 204, 304): the upstream's `Content-Length` goes on.
    bodiless: bool,
    keep_alive: bool,
}

/// The response head for the client: the upstream's fields in order and as spelled, less
/// the hop-by-hop ones and its framing; then `Via`, our framing and `Connection`.
fn client_head(out: &mut BytesMut, version: Version, upstream: &ResponseHead, f: &Framing) {
    use crate::http1::write::{put_field, put_status_line};
    put_status_line(out, version, upstream.status);
    use crate::http1::known::Known;
    // Usually `Connection` names only fixed hop-by-hop fields (`keep-alive`, `close`): then
    // there is nothing to collect.
    let hops = if upstream.connection().names_fields {
        HopNames::from_connection(
            upstream
                .all(Known::Connection)
                .chain(upstream.all(Known::ProxyConnection)),
        )
    } else {
        HopNames::default()
    };
    let mut upstream_length = None;
    for (kind, name, value) in upstream.known_fields() {
        if kind == Known::ContentLength {
            upstream_length.get_or_insert(value);
        } else if !hops.drops_known(kind, name) {
            put_field(out, name, value);
        }
    }
    put_field(out, b"via", headers::VIA.as_bytes());
    if let Some(n) = f.length {
        put_field(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        );
    } else if f.chunked {
        put_field(out, b"transfer-encoding", b"chunked");
    } else if let (true, Some(len)) = (f.bodiless, upstream_length) {
        put_field(out, b"content-length", len);
    }
    if !f.keep_alive {
        put_field(out, b"connection", b"close");
    } else if version == Version::HTTP_10 {
        put_field(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

async fn write_out<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &mut BytesMut,
) -> Result<(), ProxyError> {
    if !out.is_empty() {
        writer
            .write_all(out)
            .await
            .map_err(ProxyError::client_write)?;
        out.clear();
    }
    Ok(())
}
