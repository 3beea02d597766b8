//! Forwarded requests: route, read the body, check a connection out, send, retry once when
//! that is safe, and relay the response.
//!
//! One path serves every request portcullis sends through its pools: absolute-form requests
//! from the proxy listener, requests read inside an intercepted tunnel, and plain HTTP inside
//! a CONNECT to an origination upstream. They differ only in how their [`Route`] is found;
//! from there on, limits, retries, errors and the recorded outcome are the same.

mod body;
mod relay;
mod request;

use std::pin::pin;

use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::access::Lineage;
use super::gone;
use super::headers::HostField;
use super::outcome::{Mode, Outcome};
use super::stale::{self, Via};
use super::stall::StallWriter;
use super::tunnel::AsTcp;
use super::{boxed, respond, Ctx, Flow};
use crate::config::Upstream;
use crate::error::ProxyError;
use crate::http1::{BodyFraming, ClientReader, RequestHead};
use crate::metrics::CloseReason;
use crate::policy::{Allowed, Want};
use crate::pool::{Checkout, Pooled, Queued, Reuse};
use crate::retry::{self, Facts};
use crate::target::{self, OriginForm, TargetError};
use crate::upstream::{ReqBody, UpstreamConn};
use body::ClientBody;

/// Marks a POST as safe to retry (SPEC §6). A `HeaderName` made once: looked up by `&str`, the
/// name was parsed and checked again on every request.
static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// Where a request goes and how it is addressed there, decided before anything is sent; it
/// borrows from the request head it was found for.
pub struct Route<'h> {
    /// Who asked, the upstream that allowed it, and the destination (the pool key).
    pub allowed: Allowed,
    /// The `Host` header sent upstream.
    pub host: HostField<'h>,
    /// The request target sent upstream: path and query.
    pub origin_form: OriginForm<'h>,
}

/// A request in progress: its outcome so far, and what decides how its connection may go on.
pub struct Progress<'a> {
    pub outcome: Outcome<'a>,
    /// The response head went out: an error now can only cut the connection.
    responded: Option<StatusCode>,
    /// The client's request body was read to its end (the connection is in sync).
    body_done: bool,
}

/// Serve one absolute-form request from a proxy listener.
pub async fn serve<R, W>(
    ctx: &Ctx,
    head: Box<RequestHead>,
    reader: &mut ClientReader<R>,
    writer: &mut W,
) -> Flow
where
    R: AsyncRead + AsTcp + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    serve_with(ctx, Mode::Forward, &head, reader, writer, route_absolute).await
}

/// Serve one request whose route `route` finds (or refuses); every error becomes the SPEC's
/// response here, and the outcome is recorded once.
pub async fn serve_with<'h, R, W, F>(
    ctx: &Ctx,
    mode: Mode,
    head: &'h RequestHead,
    reader: &mut ClientReader<R>,
    writer: &mut W,
    route: F,
) -> Flow
where
    R: AsyncRead + AsTcp + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    F: FnOnce(&Ctx, &'h RequestHead, &mut Outcome<'_>) -> Result<Route<'h>, ProxyError>,
{
    // Every write to the client, error answers included, waits at most client_stall_timeout.
    let mut writer = StallWriter::new(writer, ctx.config.proxy.client_stall_timeout);
    let writer = &mut writer;
    let mut p = Progress {
        outcome: Outcome::new(mode, Instant::now(), Some(&head.method), &head.target),
        responded: None,
        body_done: head.framing == BodyFraming::Empty,
    };
    let result = match route(ctx, head, &mut p.outcome) {
        Ok(route) => forward(ctx, &route, head, reader, writer, &mut p).await,
        Err(e) => Err(e),
    };
    let (status, error, flow) = match result {
        Ok(flow) => (p.responded.unwrap_or(StatusCode::OK), None, flow),
        Err(e) => match p.responded {
            Some(status) => {
                // Mid-response: the head is out, so the only honest signal left is closing.
                tracing::debug!(error = %e, "response cut short");
                (status, Some(e), Flow::Close)
            }
            None => {
                let close = e.closes_client() || !p.body_done || !head.keep_alive || ctx.draining;
                p.outcome.bytes_out += respond::error(ctx, writer, head.version, &e, close).await;
                let flow = if close { Flow::Close } else { Flow::KeepAlive };
                (e.status(), Some(e), flow)
            }
        },
    };
    p.outcome.record(ctx, status, error.as_ref());
    flow.ending(head.keep_alive, p.body_done)
}

/// The route of an absolute-form request: its URI names the destination, policy decides.
fn route_absolute<'h>(
    ctx: &Ctx,
    head: &'h RequestHead,
    out: &mut Outcome<'_>,
) -> Result<Route<'h>, ProxyError> {
    let absolute = target::parse_absolute(&head.target).map_err(|e| match e {
        TargetError::NotAbsolute => ProxyError::bad_request(
            "origin-form request: portcullis is a forward proxy; send an absolute URI (GET http://host/path) or use CONNECT",
        ),
        other => ProxyError::bad_request(other.to_string()),
    })?;
    let requested = absolute.target;
    out.host = Some(requested.host.clone());
    let want = Want::Forward {
        scheme: requested.scheme,
        port: requested.port,
    };
    let auth = head.headers.get(http::header::PROXY_AUTHORIZATION);
    let allowed = ctx.decide(auth, &requested.host, want, out)?;
    let host = match absolute.host_value {
        Some(text) => HostField::Written(text),
        None => HostField::Built(
            super::headers::host_value(&requested.host, requested.port).ok_or_else(|| {
                ProxyError::bad_request("the URI's host cannot be sent as a Host header")
            })?,
        ),
    };
    Ok(Route {
        allowed,
        host,
        origin_form: absolute.origin_form,
    })
}

/// Send the request along `route`, retrying once on a new connection when SPEC §6 allows, and
/// relay the response.
async fn forward<R, W>(
    ctx: &Ctx,
    route: &Route<'_>,
    head: &RequestHead,
    reader: &mut ClientReader<R>,
    writer: &mut W,
    p: &mut Progress<'_>,
) -> Result<Flow, ProxyError>
where
    R: AsyncRead + AsTcp + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let upstream = &route.allowed.upstream;
    let settings = &upstream.settings;
    if head.expect_continue && head.framing != BodyFraming::Empty {
        // Policy passed: let the client send its body (the upstream never sees the Expect).
        writer
            .write_all(crate::http1::CONTINUE)
            .await
            .map_err(ProxyError::client_write)?;
    }
    let stall = ctx.config.proxy.client_stall_timeout;
    // Most requests have no body: no reading future is made for them.
    let body = if head.framing == BodyFraming::Empty {
        ClientBody::Full(Bytes::new())
    } else {
        body::read(reader, head.framing, settings.max_replay_body, stall).await?
    };
    p.body_done = matches!(body, ClientBody::Full(_));
    if let ClientBody::Full(b) = &body {
        p.outcome.bytes_in = b.len() as u64;
    }
    let replayable = matches!(body, ClientBody::Full(_));
    let repeatable = retry::repeatable(
        &head.method,
        head.headers.contains_key(&IDEMPOTENCY_KEY),
        settings.retry_non_idempotent,
    );
    let mut reuse_rule =
        if retry::retriable_after_write(settings.retry_on_reset, replayable, repeatable) {
            Reuse::Any
        } else {
            Reuse::IdleAtMost(settings.unsafe_reuse_max_idle)
        };
    let outgoing = request::Outgoing::new(head, route);
    let pool = ctx.shared.pools.get(upstream, &route.allowed.target);
    let mut body = Some(body);
    loop {
        let mut pooled = match pool.try_checkout(reuse_rule) {
            Ok(Checkout::Reused(pooled)) => pooled,
            // Boxed: waiting and dialing are the pool-miss path, and inline their state would
            // size every request in flight, reused connections included.
            tried => {
                let client = watchable(reader, body.as_ref());
                let target = &route.allowed.target;
                let acquiring =
                    || gone::unless_hung_up(client, acquire(ctx, tried, upstream, target));
                match boxed(acquiring).await {
                    Some(acquired) => acquired?,
                    // Queued or dialing: the request was not sent, and now never is.
                    None => return Err(hung_up(upstream, "waited for a connection to")),
                }
            }
        };
        p.outcome.attempts += 1;
        p.outcome.lineage = Some(Lineage {
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
                // A streamed body is never retried (not replayable), so it is taken once.
                _ => {
                    return Err(ProxyError::bad_request(
                        "request body could not be replayed",
                    ))
                }
            },
        };
        let wait = settings.response_timeout;
        // A pump still running when the response head arrives is kept, unpolled, until the
        // response has been relayed: its sender stays open, so the body is never ended
        // upstream (a chunked one would get its last-chunk: a truncated body taken as whole)
        // while the response is read. The connection is then closed.
        let mut pumping = None;
        let (outcome, pumped) = match pump {
            None => {
                let client = watchable(reader, body.as_ref());
                let watched = {
                    // Pinned where it is made and lent: the exchange's state is large, and
                    // each move of it was a copy on every request.
                    let exchange = pin!(pooled.conn().exchange(&outgoing, req_body, &sent, wait));
                    gone::unless_hung_up(client, exchange).await
                };
                match watched {
                    Some(done) => (done, None),
                    None => {
                        // Sent, or being sent: nobody will read the answer, and the connection is
                        // mid-exchange. It goes, and its slot with it, as nginx and Envoy do.
                        pooled.discard(CloseReason::Error);
                        return Err(hung_up(upstream, "waited for the response of"));
                    }
                }
            }
            // Boxed: streamed bodies are the rare path, and inline this state (3 KiB) would
            // size every request in flight.
            Some((prefix, state, tx)) => {
                let limits = body::PumpLimits {
                    stall,
                    upstream_wait: settings.response_timeout,
                    upstream: &upstream.name,
                };
                let pump = pumping.insert(boxed(|| body::pump(reader, prefix, state, tx, limits)));
                let exchange = pooled.conn().exchange(&outgoing, req_body, &sent, wait);
                match boxed(|| body::with_pump(exchange, pump.as_mut())).await {
                    Ok(done) => done,
                    Err(e) => {
                        // The body failed (client gone, broken, stalled; or the upstream
                        // stopped taking it): the exchange is abandoned mid-request.
                        pooled.discard(CloseReason::Error);
                        return Err(e);
                    }
                }
            }
        };
        if let Some(n) = pumped {
            p.outcome.bytes_in = n;
            p.body_done = true;
        }
        let failure = match outcome {
            Ok((response, resp_body)) => {
                let started =
                    relay::start(ctx, head, settings, &response, &resp_body, &mut pooled, p);
                // Its bytes share the connection's read buffer: let go of them before the
                // body's reads, so the buffer is reused rather than a new one allocated.
                drop(response);
                let relayed = relay::body(settings, started, resp_body, &mut pooled, writer, p);
                let flow = relayed.await;
                drop(pumping);
                return flow;
            }
            Err(failure) => failure,
        };
        let facts = Facts {
            retry_on_reset: settings.retry_on_reset,
            reused: pooled.reused(),
            replayable,
            repeatable,
            sends: p.outcome.attempts,
        };
        let idle = pooled.idle_at_checkout();
        pooled.discard(CloseReason::Error);
        if facts.reused && failure.stage().connection_dropped() {
            // A stale reuse (SPEC §11), whatever becomes of the request.
            stale::record(
                &ctx.shared,
                upstream,
                &route.allowed.target,
                idle,
                Via::Connection,
            );
        }
        match retry::decide(&facts, failure.stage()) {
            Some(reason) => {
                tracing::debug!(error = %failure, reason = reason.label(), "retrying on a new connection");
                ctx.shared
                    .metrics
                    .retries
                    .with_label_values(&[&upstream.name, reason.label()])
                    .inc();
                reuse_rule = Reuse::Never;
            }
            None => return Err(failure.into_proxy_error(&upstream.name)),
        }
    }
}

/// A connection when [`crate::pool::Pool::try_checkout`] had none at hand: one released or a slot freed
/// while queued, or a new one dialed in a free slot.
async fn acquire(
    ctx: &Ctx,
    tried: Result<Checkout<UpstreamConn>, Queued<'_, UpstreamConn>>,
    upstream: &Upstream,
    target: &crate::target::Target,
) -> Result<Pooled<UpstreamConn>, ProxyError> {
    let checkout = match tried {
        Ok(checkout) => Ok(checkout),
        Err(queued) => queued.wait().await,
    };
    let slot = match checkout {
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
    // Boxed: dialing (DNS, connect, TLS) is the pool-miss path; inline, its state would size
    // the wait for a released connection too.
    let dialed = boxed(|| ctx.shared.connector.dial(target, upstream)).await?;
    let conn = UpstreamConn::new(dialed.io);
    Ok(slot.fill(conn))
}

/// The client when its hang-up can be watched (see [`gone`]): every byte it sent so far has
/// been read, the request's body whole and nothing behind it.
fn watchable<'r, R: AsyncRead + Unpin>(
    reader: &'r mut ClientReader<R>,
    body: Option<&ClientBody>,
) -> Option<&'r mut ClientReader<R>> {
    match body {
        Some(ClientBody::Full(_)) if reader.buffered().is_empty() => Some(reader),
        _ => None,
    }
}

/// The client hung up while its request `stage` `upstream`.
fn hung_up(upstream: &Upstream, stage: &str) -> ProxyError {
    ProxyError::ClientGone {
        detail: format!(
            "the client hung up while its request {stage} {}",
            upstream.name
        ),
    }
}
