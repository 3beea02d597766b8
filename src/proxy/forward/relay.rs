//! The upstream's response passed on to the client: head rewritten, body streamed (re-framed
//! when needed), and the connection back in the pool as soon as the upstream side is complete.

use bytes::BytesMut;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::Progress;
use crate::config::Settings;
use crate::error::ProxyError;
use crate::http1::RequestHead;
use crate::metrics::CloseReason;
use crate::pool::{reuse, Pooled};
use crate::proxy::{headers, Ctx, Flow};
use crate::upstream::{RespBody, UpstreamConn};

/// Bodies larger than this are written without first copying into the output buffer.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Pass the upstream's response to the client and return the connection to the pool.
pub async fn response<W: AsyncWrite + Unpin>(
    ctx: &Ctx,
    head: &RequestHead,
    settings: &Settings,
    response: Response<RespBody>,
    mut pooled: Pooled<UpstreamConn>,
    writer: &mut W,
    p: &mut Progress<'_>,
) -> Result<Flow, ProxyError> {
    let (parts, mut body) = response.into_parts();
    // An HTTP/1.0 upstream closes after each response unless it says keep-alive.
    let upstream_close = headers::wants_close(&parts.headers)
        || (parts.version == Version::HTTP_10 && !headers::wants_keep_alive(&parts.headers));
    let (idle, reason) = reuse::keep_alive_idle(
        parts.headers.get("keep-alive").map(HeaderValue::as_bytes),
        settings.idle_timeout,
    );
    pooled.set_idle_timeout(idle, reason);

    let status = parts.status;
    let bodiless = head.method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut headers = parts.headers;
    let upstream_length = headers.get(header::CONTENT_LENGTH).cloned();
    headers::strip_hop_by_hop(&mut headers);
    headers::add_via(&mut headers);
    let mut keep_alive = head.keep_alive && !ctx.draining && p.body_done;
    let mut chunked = false;
    if !bodiless {
        match body.exact_len() {
            Some(n) if !says_length(&headers, n) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            // The upstream's one Content-Length, spelled as we would, goes on as it is: a
            // new value would cost an allocation and a hashed insert on every response.
            Some(_) => {}
            None if head.version == Version::HTTP_11 => {
                headers.remove(header::CONTENT_LENGTH);
                headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
                chunked = true;
            }
            None => {
                headers.remove(header::CONTENT_LENGTH);
                keep_alive = false;
            }
        }
    } else if let Some(len) = upstream_length {
        headers.insert(header::CONTENT_LENGTH, len);
    }
    if !keep_alive {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    } else if head.version == Version::HTTP_10 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }

    let mut out = BytesMut::with_capacity(1024);
    crate::http1::encode_response_head(&mut out, head.version, status, &headers);
    p.responded = Some(status);
    let mut pending_head = true;
    if !bodiless {
        loop {
            // Each wait for body bytes is bounded like the wait for the head (SPEC §3).
            let next = timeout(settings.response_timeout, pooled.conn().frame(&mut body)).await;
            let data = match next {
                Ok(None) => break,
                Ok(Some(Ok(data))) => data,
                failed => {
                    // The upstream died or went silent mid-body: the client must see a cut,
                    // not a short success.
                    if pending_head {
                        writer.write_all(&out).await.ok();
                    }
                    pooled.discard(CloseReason::Error);
                    let upstream = p.outcome.upstream_name().to_string();
                    return Err(match failed {
                        Ok(Some(Err(detail))) => {
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
    }
    // The upstream side is complete: the connection goes back before the last bytes reach the client.
    if upstream_close {
        pooled.discard(CloseReason::RemoteClosed);
    } else if !p.body_done {
        // An early answer to a request whose body was not all read from the client: the
        // upstream's side of that body is unfinished, and the connection is closed mid-message.
        pooled.discard(CloseReason::Error);
    } else {
        pooled.release();
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

/// Whether `headers` carry exactly one `Content-Length`, and it reads `n` in canonical form.
fn says_length(headers: &http::HeaderMap, n: u64) -> bool {
    let mut all = headers.get_all(header::CONTENT_LENGTH).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => v.as_bytes() == itoa::Buffer::new().format(n).as_bytes(),
        _ => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_length_is_kept_only_when_it_is_the_one_we_would_write() {
        let h = |values: &[&'static str]| {
            let mut m = http::HeaderMap::new();
            for v in values {
                m.append(header::CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            m
        };
        // (Content-Length values, body size) -> kept as sent
        let cases: [(&[&'static str], u64, bool); 6] = [
            (&["3"], 3, true),
            (&["0"], 0, true),
            (&["4"], 3, false),
            (&["03"], 3, false),
            (&["3", "3"], 3, false),
            (&[], 3, false),
        ];
        for (values, n, want) in cases {
            assert_eq!(says_length(&h(values), n), want, "{values:?} for {n}");
        }
    }
}
