//! Absolute-form requests: policy, body buffering, checkout, send, retry, and streaming the response back.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use super::access::{self, Lineage};
use super::headers;
use super::{respond, Ctx, Flow};
use crate::config::{Settings, Upstream};
use crate::error::ProxyError;
use crate::http1::{BodyFraming, BodyState, ClientReader, RequestHead, MAX_BODY_CHUNK};
use crate::metrics::CloseReason;
use crate::policy::{self, Allowed, Want};
use crate::pool::{reuse, Checkout, Pool, Pooled, Reuse};
use crate::retry::{self, Facts, Stage};
use crate::target::{self, TargetError};
use crate::upstream::{ReqBody, Sent, UpstreamConn};

/// How long a pooled connection may take to become ready for its next request.
const READY_WAIT: Duration = Duration::from_secs(2);
/// Bodies larger than this are written without first copying into the output buffer.
const COALESCE_LIMIT: usize = 16 * 1024;

/// What the access log and metrics need, filled in as the request progresses.
struct Progress<'a> {
    upstream: &'a str,
    client_name: Option<String>,
    host: String,
    port: u16,
    lineage: Option<Lineage>,
    attempts: u8,
    bytes_in: u64,
    bytes_out: u64,
    /// The response head went out: an error now can only cut the connection.
    responded: Option<StatusCode>,
    /// The client's request body was read to its end (the connection is in sync).
    body_done: bool,
}

/// Serve one absolute-form request; errors become the SPEC's responses here.
pub async fn serve<R, W>(
    ctx: &Ctx,
    head: RequestHead,
    reader: &mut ClientReader<R>,
    writer: &mut W,
) -> Flow
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let started = Instant::now();
    let mut p = Progress {
        upstream: "none",
        client_name: None,
        host: String::new(),
        port: 0,
        lineage: None,
        attempts: 0,
        bytes_in: 0,
        bytes_out: 0,
        responded: None,
        body_done: head.framing == BodyFraming::Empty,
    };
    let config = ctx.config.clone();
    let result = forward(ctx, &config.upstreams, &head, reader, writer, &mut p).await;
    let (status, error, flow) = match result {
        Ok(flow) => (p.responded.unwrap_or(StatusCode::OK), None, flow),
        Err(e) if p.responded.is_some() => {
            // Mid-response: the head is out, so the only honest signal left is closing.
            tracing::debug!(error = %e, "response cut short");
            (
                p.responded.unwrap_or(StatusCode::BAD_GATEWAY),
                Some(e.token()),
                Flow::Close,
            )
        }
        Err(e) => {
            let close = e.closes_client() || !p.body_done || !head.keep_alive || ctx.draining;
            let status = e.status();
            p.bytes_out += respond::error(ctx, writer, head.version, &e, close).await;
            (
                status,
                Some(e.token()),
                if close { Flow::Close } else { Flow::KeepAlive },
            )
        }
    };
    let elapsed = started.elapsed();
    let m = &ctx.shared.metrics;
    m.requests
        .with_label_values(&[p.upstream, method_label(&head.method), status.as_str()])
        .inc();
    m.request_duration
        .with_label_values(&[p.upstream])
        .observe(elapsed.as_secs_f64());
    access::log(&access::Record {
        client: ctx.peer,
        client_name: p.client_name.as_deref(),
        upstream: p.upstream,
        method: head.method.as_str(),
        host: &p.host,
        port: p.port,
        path: access::path_only(&head.target),
        status: status.as_u16(),
        duration: elapsed,
        bytes_in: p.bytes_in,
        bytes_out: p.bytes_out,
        lineage: p.lineage,
        attempts: p.attempts,
        error,
    });
    flow
}

/// Method label with bounded cardinality.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// The request as it goes upstream, before its body is attached.
struct Prepared {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

/// The client's request body: held whole (replayable) or streamed.
enum ClientBody {
    Full(Bytes),
    /// Over `max_replay_body`: what was read so far, and the rest still in the client stream.
    Streaming {
        prefix: Bytes,
        state: BodyState,
        length: Option<u64>,
    },
}

async fn forward<'c, R, W>(
    ctx: &Ctx,
    upstreams: &'c [std::sync::Arc<Upstream>],
    head: &RequestHead,
    reader: &mut ClientReader<R>,
    writer: &mut W,
    p: &mut Progress<'c>,
) -> Result<Flow, ProxyError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let uri: Uri = head
        .target
        .parse()
        .map_err(|_| ProxyError::bad_request("the request URI is not a valid absolute URI"))?;
    let requested = target::parse_absolute(&uri).map_err(|e| match e {
        TargetError::NotAbsolute => ProxyError::bad_request(
            "origin-form request: portcullis is a forward proxy; send an absolute URI (GET http://host/path) or use CONNECT",
        ),
        other => ProxyError::bad_request(other.to_string()),
    })?;
    p.host = requested.host.to_string();
    p.port = requested.port.unwrap_or(0);
    let auth = head
        .headers
        .get(header::PROXY_AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let want = Want::Forward {
        scheme: requested.scheme,
        port: requested.port,
    };
    let Allowed {
        client,
        upstream,
        target,
    } = policy::decide(&ctx.config, ctx.peer.ip(), auth, &requested.host, want)?;
    // Borrow the name from the config snapshot this request runs under.
    p.upstream = upstreams
        .iter()
        .find(|u| u.name == upstream.name)
        .map_or("none", |u| u.name.as_str());
    p.client_name = client;
    p.port = target.port;
    let settings = &upstream.settings;

    if head.expect_continue && head.framing != BodyFraming::Empty {
        // Policy passed: let the client send its body (the upstream never sees the Expect).
        writer
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(client_gone)?;
    }
    let body = read_body(reader, head.framing, settings.max_replay_body).await?;
    p.body_done = matches!(body, ClientBody::Full(_));
    if let ClientBody::Full(b) = &body {
        p.bytes_in = b.len() as u64;
    }
    // Built once, moved into the first attempt; a retry (rare) builds it again.
    let mut prepared = Some(prepare(head, &uri, &requested));
    let replayable = matches!(body, ClientBody::Full(_));
    let repeatable = retry::repeatable(
        &head.method,
        head.headers.contains_key("idempotency-key"),
        settings.retry_non_idempotent,
    );
    let reuse_rule =
        if retry::retriable_after_write(settings.retry_on_reset, replayable, repeatable) {
            Reuse::Any
        } else {
            Reuse::IdleAtMost(settings.unsafe_reuse_max_idle)
        };
    let pool = ctx.shared.pools.get(&upstream, &target);
    let mut body = Some(body);
    let mut reuse_rule = reuse_rule;
    loop {
        let mut pooled = acquire(ctx, &pool, &upstream, &target, reuse_rule).await?;
        p.attempts += 1;
        p.lineage = Some(Lineage {
            conn_id: pooled.id(),
            reused: pooled.reused(),
            age: pooled.age_at_checkout(),
            idle: pooled.idle_at_checkout(),
        });
        let (req_body, sent, pump) = match body.as_ref() {
            Some(ClientBody::Full(b)) => {
                let (rb, sent) = ReqBody::full(b.clone());
                (rb, sent, None)
            }
            _ => match body.take() {
                Some(ClientBody::Streaming {
                    prefix,
                    state,
                    length,
                }) => {
                    let (tx, rx) = mpsc::channel(4);
                    let (rb, sent) = ReqBody::stream(rx, length);
                    (rb, sent, Some((prefix, state, tx)))
                }
                _ => {
                    return Err(ProxyError::bad_request(
                        "request body could not be replayed",
                    ))
                }
            },
        };
        let request = build(
            prepared
                .take()
                .unwrap_or_else(|| prepare(head, &uri, &requested)),
            req_body,
        );
        let exchange = send(
            &mut pooled,
            request,
            &sent,
            settings.response_timeout,
            p.upstream,
        );
        let (outcome, pumped) = match pump {
            None => (exchange.await, None),
            // Boxed: streamed bodies are the rare path, and inline this state (3 KiB) would
            // size every request in flight.
            Some((prefix, state, tx)) => {
                Box::pin(with_pump(exchange, pump_body(reader, prefix, state, tx))).await
            }
        };
        match pumped {
            Some(Ok(n)) => {
                p.bytes_in = n;
                p.body_done = true;
            }
            Some(Err(e)) => {
                pooled.discard(CloseReason::Error);
                return Err(e);
            }
            None => {}
        }
        match outcome {
            Ok(response) => {
                return respond_upstream(ctx, head, settings, response, pooled, writer, p).await
            }
            Err((stage, error)) => {
                let facts = Facts {
                    retry_on_reset: settings.retry_on_reset,
                    reused: pooled.reused(),
                    replayable,
                    repeatable,
                    sends: p.attempts,
                };
                pooled.discard(CloseReason::Error);
                match retry::decide(&facts, stage) {
                    Some(reason) => {
                        tracing::debug!(error = %error, reason = reason.label(), "retrying on a new connection");
                        ctx.shared
                            .metrics
                            .retries
                            .with_label_values(&[p.upstream, reason.label()])
                            .inc();
                        reuse_rule = Reuse::Never;
                    }
                    None => return Err(error),
                }
            }
        }
    }
}

fn client_gone(e: io::Error) -> ProxyError {
    ProxyError::bad_request(format!("client connection failed: {e}"))
}

/// A pooled connection, or a new one dialed in a free slot.
async fn acquire(
    ctx: &Ctx,
    pool: &Pool<UpstreamConn>,
    upstream: &Upstream,
    target: &crate::target::Target,
    reuse_rule: Reuse,
) -> Result<Pooled<UpstreamConn>, ProxyError> {
    let slot = match pool.checkout(reuse_rule).await {
        Ok(Checkout::Reused(pooled)) => return Ok(pooled),
        Ok(Checkout::Dial(slot)) => slot,
        Err(timeout) => {
            return Err(ProxyError::PoolTimeout {
                upstream: upstream.name.clone(),
                timeout_ms: upstream.settings.acquire_timeout.as_millis(),
                max: timeout.max_connections,
            })
        }
    };
    // Boxed: dialing (DNS, connect, TLS) is the pool-miss path, and inline its state would
    // size every request in flight, reused connections included.
    let dialed = Box::pin(ctx.shared.connector.dial(target, upstream)).await?;
    let conn =
        UpstreamConn::handshake(dialed.io)
            .await
            .map_err(|e| ProxyError::ConnectionTerminated {
                upstream: upstream.name.clone(),
                detail: format!("HTTP handshake failed: {e}"),
            })?;
    Ok(slot.fill(conn))
}

/// Send on this connection and wait for the response head; on failure, say how far it got.
async fn send(
    pooled: &mut Pooled<UpstreamConn>,
    request: Request<ReqBody>,
    sent: &Sent,
    response_timeout: Duration,
    upstream: &str,
) -> Result<Response<Incoming>, (Stage, ProxyError)> {
    let terminated = |detail: String| ProxyError::ConnectionTerminated {
        upstream: upstream.to_string(),
        detail,
    };
    let conn = pooled.conn();
    match timeout(READY_WAIT, conn.ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err((
                Stage::BeforeWrite,
                terminated(format!("closed before the request was sent: {e}")),
            ))
        }
        Err(_) => {
            return Err((
                Stage::BeforeWrite,
                terminated("connection not ready for a request".into()),
            ))
        }
    }
    match timeout(response_timeout, conn.send(request)).await {
        Ok(Ok(response)) => Ok(response),
        Err(_) => Err((
            Stage::AfterResponse,
            ProxyError::ResponseTimeout {
                upstream: upstream.to_string(),
                timeout_ms: response_timeout.as_millis(),
            },
        )),
        Ok(Err(mut e)) => {
            let unsent = e.take_message().is_some();
            let err = e.into_error();
            if err.is_parse() || err.is_parse_status() || err.is_parse_too_large() {
                return Err((
                    Stage::AfterResponse,
                    ProxyError::UpstreamProtocol {
                        upstream: upstream.to_string(),
                        detail: err.to_string(),
                    },
                ));
            }
            if err.is_user() {
                return Err((
                    Stage::AfterResponse,
                    ProxyError::bad_request(format!("request body failed: {err}")),
                ));
            }
            let stage = if unsent || !sent.all() {
                Stage::BeforeWrite
            } else {
                Stage::AfterWrite
            };
            let detail = match std::error::Error::source(&err) {
                Some(src) => format!("{err}: {src}"),
                None => err.to_string(),
            };
            Err((stage, terminated(detail)))
        }
    }
}

/// Run `exchange` while feeding the streamed request body; stop pumping once the response head is in.
async fn with_pump<F, P>(exchange: F, pump: P) -> (F::Output, Option<Result<u64, ProxyError>>)
where
    F: std::future::Future,
    P: std::future::Future<Output = Result<u64, ProxyError>>,
{
    tokio::pin!(exchange);
    tokio::pin!(pump);
    let mut pumped = None;
    loop {
        tokio::select! {
            out = &mut exchange => return (out, pumped),
            r = &mut pump, if pumped.is_none() => pumped = Some(r),
        }
    }
}

/// Copy the rest of a large request body from the client into the upstream request.
async fn pump_body<R: AsyncRead + Unpin>(
    reader: &mut ClientReader<R>,
    prefix: Bytes,
    mut state: BodyState,
    tx: mpsc::Sender<io::Result<Bytes>>,
) -> Result<u64, ProxyError> {
    let mut total = prefix.len() as u64;
    if !prefix.is_empty() && tx.send(Ok(prefix)).await.is_err() {
        return Ok(total);
    }
    loop {
        match reader.read_body_chunk(&mut state).await {
            Ok(Some(chunk)) => {
                total += chunk.len() as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    return Ok(total);
                }
            }
            Ok(None) => return Ok(total),
            Err(e) => {
                let msg = format!("request body: {e}");
                let _ = tx.send(Err(io::Error::other(msg.clone()))).await;
                return Err(ProxyError::bad_request(msg));
            }
        }
    }
}

/// Read the client's body whole when it fits the replay buffer; otherwise keep what was read and stream the rest.
async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut ClientReader<R>,
    framing: BodyFraming,
    limit: usize,
) -> Result<ClientBody, ProxyError> {
    let length = match framing {
        BodyFraming::Empty => return Ok(ClientBody::Full(Bytes::new())),
        BodyFraming::Length(n) => Some(n),
        BodyFraming::Chunked => None,
    };
    let mut state = BodyState::new(framing);
    if let Some(n) = length {
        if n > limit as u64 {
            return Ok(ClientBody::Streaming {
                prefix: Bytes::new(),
                state,
                length,
            });
        }
    }
    // Room for one read, not for the declared length: a client that declares a large body and
    // sends nothing must not make us allocate it.
    let mut buf = Vec::with_capacity(length.map_or(8 * 1024, |n| {
        usize::try_from(n).map_or(MAX_BODY_CHUNK, |n| n.min(MAX_BODY_CHUNK))
    }));
    loop {
        match reader.read_body_chunk(&mut state).await {
            Ok(Some(chunk)) => {
                make_room(&mut buf, chunk.len(), length);
                buf.extend_from_slice(&chunk);
                if buf.len() > limit {
                    return Ok(ClientBody::Streaming {
                        prefix: Bytes::from(buf),
                        state,
                        length,
                    });
                }
            }
            Ok(None) => return Ok(ClientBody::Full(Bytes::from(buf))),
            Err(e) => return Err(ProxyError::bad_request(format!("request body: {e}"))),
        }
    }
}

/// Room in `buf` for `more` bytes that have arrived. It at least doubles (a body costs O(n)
/// copies) but stops at the declared length, so a body ends in a buffer of its own size.
fn make_room(buf: &mut Vec<u8>, more: usize, declared: Option<u64>) {
    let needed = buf.len().saturating_add(more);
    if needed <= buf.capacity() {
        return;
    }
    let doubled = buf.capacity().saturating_mul(2);
    let want = match declared.and_then(|n| usize::try_from(n).ok()) {
        Some(n) => doubled.min(n).max(needed),
        None => doubled.max(needed),
    };
    buf.reserve_exact(want - buf.len());
}

/// Method, origin-form URI and forwarded headers, computed once per request.
fn prepare(head: &RequestHead, uri: &Uri, requested: &target::RequestTarget) -> Prepared {
    // Origin-form: the parsed path and query, shared (not re-parsed or copied).
    let uri = match uri.path_and_query() {
        Some(pq) if !pq.as_str().is_empty() => Uri::from(pq.clone()),
        _ => Uri::from_static("/"),
    };
    let mut headers = head.headers.clone();
    headers::strip_hop_by_hop(&mut headers);
    headers.remove(header::EXPECT);
    headers.remove(header::CONTENT_LENGTH);
    if let Some(host) = headers::host_value(&requested.host, requested.port) {
        headers.insert(header::HOST, host);
    }
    headers::add_via(&mut headers);
    Prepared {
        method: head.method.clone(),
        uri,
        headers,
    }
}

fn build(p: Prepared, body: ReqBody) -> Request<ReqBody> {
    let mut req = Request::new(body);
    *req.method_mut() = p.method;
    *req.uri_mut() = p.uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = p.headers;
    if let Some(n) = req.body().size_hint().exact() {
        if n > 0
            || !matches!(
                *req.method(),
                Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
            )
        {
            req.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    req
}

/// Pass the upstream's response to the client and return the connection to the pool.
async fn respond_upstream<W: AsyncWrite + Unpin>(
    ctx: &Ctx,
    head: &RequestHead,
    settings: &Settings,
    response: Response<Incoming>,
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
        match body.size_hint().exact() {
            Some(n) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
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
            let frame = match pooled.conn().frame(&mut body).await {
                None => break,
                Some(Ok(f)) => f,
                Some(Err(e)) => {
                    // The upstream died mid-body: the client must see a cut, not a short success.
                    if pending_head {
                        writer.write_all(&out).await.ok();
                    }
                    pooled.discard(CloseReason::Error);
                    return Err(ProxyError::ConnectionTerminated {
                        upstream: p.upstream.to_string(),
                        detail: e.to_string(),
                    });
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            p.bytes_out += data.len() as u64;
            if chunked {
                if data.len() <= COALESCE_LIMIT {
                    crate::http1::encode_chunk(&mut out, &data);
                } else {
                    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    write_out(writer, &mut out).await?;
                    writer.write_all(&data).await.map_err(client_gone)?;
                    out.extend_from_slice(b"\r\n");
                }
            } else if data.len() <= COALESCE_LIMIT {
                out.extend_from_slice(&data);
            } else {
                write_out(writer, &mut out).await?;
                writer.write_all(&data).await.map_err(client_gone)?;
            }
            // Flush unless more is already waiting: small bodies leave in one write with the head.
            if !body.is_end_stream() {
                write_out(writer, &mut out).await?;
            }
            pending_head = false;
        }
    }
    // The upstream side is complete: the connection goes back before the last bytes reach the client.
    if upstream_close {
        pooled.discard(CloseReason::RemoteClosed);
    } else {
        pooled.release();
    }
    if chunked {
        out.extend_from_slice(crate::http1::LAST_CHUNK);
    }
    write_out(writer, &mut out).await?;
    writer.flush().await.map_err(client_gone)?;
    Ok(if keep_alive {
        Flow::KeepAlive
    } else {
        Flow::Close
    })
}

async fn write_out<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &mut BytesMut,
) -> Result<(), ProxyError> {
    if !out.is_empty() {
        writer.write_all(out).await.map_err(client_gone)?;
        out.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads of 64 KiB into a buffer that starts at one read: capacities along the way.
    fn growth(declared: Option<u64>, body: usize) -> Vec<usize> {
        let mut buf = Vec::with_capacity(MAX_BODY_CHUNK);
        let mut seen = vec![buf.capacity()];
        while buf.len() < body {
            let more = (body - buf.len()).min(MAX_BODY_CHUNK);
            make_room(&mut buf, more, declared);
            buf.extend(std::iter::repeat_n(0u8, more));
            if seen.last() != Some(&buf.capacity()) {
                seen.push(buf.capacity());
            }
        }
        seen
    }

    #[test]
    fn a_body_buffer_doubles_up_to_the_declared_length() {
        const K: usize = 1024;
        let n = 700 * K + 13;
        assert_eq!(
            growth(Some(n as u64), n),
            [64 * K, 128 * K, 256 * K, 512 * K, n]
        );
        // Chunked: no length to stop at.
        assert_eq!(
            growth(None, n),
            [64 * K, 128 * K, 256 * K, 512 * K, 1024 * K]
        );
        // What fits is never moved.
        assert_eq!(growth(Some(100), 100), [64 * K]);
    }
}
