//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/pools` (SPEC §7).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::state::{Phase, Shared};

/// Serve admin requests until the process stops (they keep answering during a drain).
pub async fn run(listener: TcpListener, shared: Arc<Shared>) {
    let mut phase = shared.phase.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = phase.wait_for(|p| *p == Phase::Stopped) => return,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
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
        "/readyz" => match *shared.phase.borrow() {
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
    shared.metrics.render_with_pool_utilization(&utilization)
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
        .map(|(key, snap)| PoolDoc {
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
