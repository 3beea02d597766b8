//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/pools` (SPEC §7).

mod conns;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::state::{Phase, Shared};
pub use conns::MAX as MAX_CONNECTIONS;
use conns::{Admitted, Conns, Serving};

/// Serve admin requests until the process stops (they keep answering during a drain).
///
/// At most [`MAX_CONNECTIONS`] connections are open; at the cap a newcomer takes the place
/// of the oldest one still waiting for a request head, so a flood of idle or half-sent
/// connections cannot starve the probes. Each connection must send each request head within
/// `header_read_timeout`, which also bounds how long it may sit idle between requests.
pub async fn run(listener: TcpListener, shared: Arc<Shared>) {
    let stopped = shared.phase.reached(Phase::Stopped);
    tokio::pin!(stopped);
    let conns = Conns::new(MAX_CONNECTIONS);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stopped => return,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = tokio::select! {
            a = conns.admit() => a,
            _ = &mut stopped => return,
        };
        let Some(admitted) = admitted else { continue };
        let head_timeout = shared.config().proxy.header_read_timeout;
        tokio::spawn(serve(stream, shared.clone(), admitted, head_timeout));
    }
}

/// One admin connection, until it ends, its head timeout passes, or it is evicted.
async fn serve(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut admitted: Admitted,
    head_timeout: Duration,
) {
    let waiting = admitted.waiting();
    let svc = service_fn(move |req| {
        let serving = Serving::begin(&waiting);
        let response = route(&shared, &req).map(|body| Answer {
            body,
            _serving: serving,
        });
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // From the connection's first poll, and again each time it goes idle between requests.
        .header_read_timeout(head_timeout)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        biased;
        _ = admitted.evicted() => tracing::debug!("admin connection closed to make room for a new one"),
        r = conn => if let Err(e) = r {
            tracing::debug!(error = %e, "admin connection error");
        },
    }
    // The connection, its socket with it, was dropped with the select: only now does
    // `admitted` give its room back.
}

/// A response body that marks its connection as serving until hyper has taken it whole.
struct Answer {
    body: Full<Bytes>,
    _serving: Serving,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn route(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(metrics(shared))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match shared.phase.get() {
            Phase::Running => text(StatusCode::OK, "ready\n"),
            _ => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        },
        "/pools" => {
            let body = serde_json::to_vec(&pools(shared)).unwrap_or_default();
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz, /pools\n",
        ),
    }
}

/// The exposition, with the pools' utilization read from their state now (not kept on the hot path).
fn metrics(shared: &Shared) -> String {
    let config = shared.config();
    let pools = shared.pools.snapshot();
    let utilization = crate::metrics::pool_utilization(
        config.upstreams.iter().map(|u| u.name.as_str()),
        pools
            .iter()
            .map(|(key, snap)| (&*key.upstream, snap.busy, snap.max_connections)),
    );
    let learned: Vec<(Arc<str>, f64)> = shared
        .pools
        .learned
        .smallest_by_upstream()
        .into_iter()
        .filter(|(u, _)| config.upstream(u).is_some())
        .map(|(u, limit)| (u, limit.as_secs_f64()))
        .collect();
    let learned: Vec<(&str, f64)> = learned.iter().map(|(u, l)| (&**u, *l)).collect();
    shared.metrics.render_with(&crate::metrics::Scraped {
        utilization: &utilization,
        learned_idle_limit: &learned,
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[derive(Serialize)]
struct PoolsDoc {
    pools: Vec<PoolDoc>,
}

#[derive(Serialize)]
struct PoolDoc {
    upstream: String,
    host: String,
    port: u16,
    tls: bool,
    idle: usize,
    busy: usize,
    waiting: usize,
    max_connections: usize,
    /// The configured idle timeout lowered by a learned limit (SPEC §11); per-connection
    /// Keep-Alive timeouts are not in it.
    idle_timeout_seconds: f64,
    /// `null` until the destination (host, port) taught one.
    learned_idle_limit_seconds: Option<f64>,
    /// The destination's stale reuses (host, port: shared with its other pool and tunnels).
    stale_reuses: u64,
    connections: Vec<ConnDoc>,
}

#[derive(Serialize)]
struct ConnDoc {
    id: u64,
    state: &'static str,
    age_seconds: f64,
    idle_seconds: f64,
    requests: u64,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn pools(shared: &Shared) -> PoolsDoc {
    let now = Instant::now();
    let pools = shared
        .pools
        .snapshot()
        .into_iter()
        .map(|(key, snap)| {
            let learned =
                shared
                    .pools
                    .learned
                    .get(&key.upstream, &key.target.host, key.target.port);
            (key, snap, learned)
        })
        .map(|(key, snap, learned)| PoolDoc {
            upstream: key.upstream.to_string(),
            host: match &key.target.host {
                crate::target::Host::Name(n) => n.clone(),
                crate::target::Host::Ip(ip) => ip.to_string(),
            },
            port: key.target.port,
            tls: key.target.tls,
            idle: snap.idle,
            busy: snap.busy,
            waiting: snap.waiting,
            max_connections: snap.max_connections,
            idle_timeout_seconds: snap.idle_timeout.as_secs_f64(),
            learned_idle_limit_seconds: learned.limit.map(|l| l.as_secs_f64()),
            stale_reuses: learned.stale_reuses,
            connections: snap
                .connections
                .into_iter()
                .map(|(id, c)| ConnDoc {
                    id,
                    state: if c.busy { "busy" } else { "idle" },
                    age_seconds: round1(now.saturating_duration_since(c.created).as_secs_f64()),
                    idle_seconds: if c.busy {
                        0.0
                    } else {
                        round1(now.saturating_duration_since(c.idle_since).as_secs_f64())
                    },
                    requests: c.requests,
                })
                .collect(),
        })
        .collect();
    PoolsDoc { pools }
}
