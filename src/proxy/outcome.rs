//! The one place where what became of a request or tunnel is recorded: its metrics and its
//! access-log line. Forwarding, interception, tunnels, early refusals and the draining path
//! all end here, so every request is counted and logged the same way.

use std::sync::Arc;

use http::{Method, StatusCode};
use tokio::time::Instant;

use super::access::{self, Lineage};
use super::Ctx;
use crate::config::Upstream;
use crate::error::ProxyError;
use crate::target::{Host, HostText};

/// How a request reached its upstream: the access log's `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An absolute-form request (or plain HTTP inside a CONNECT to an origination upstream).
    Forward,
    /// A CONNECT byte tunnel.
    Tunnel,
    /// A request read inside an intercepted CONNECT.
    Intercept,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Forward => "forward",
            Mode::Tunnel => "tunnel",
            Mode::Intercept => "intercept",
        }
    }
}

/// What one request or tunnel came to, filled in as it progresses.
#[derive(Debug)]
pub struct Outcome<'a> {
    pub mode: Mode,
    pub started: Instant,
    /// `None` when the request head could not be parsed.
    pub method: Option<&'a Method>,
    /// The request target or path as received; the query string never reaches the log.
    pub target: &'a str,
    /// The upstream that allowed it; `None` before (or without) a policy decision.
    pub upstream: Option<Arc<Upstream>>,
    pub client_name: Option<String>,
    /// The destination; `None` before (or without) one, logged as an empty host.
    pub host: Option<Host>,
    /// The port dialed, or that would have been dialed had the request been allowed.
    pub port: u16,
    /// The upstream connection that carried the last attempt.
    pub lineage: Option<Lineage>,
    /// Times the request was sent (or the tunnel dialed) upstream.
    pub attempts: u8,
    /// Body bytes received from the client (a tunnel: bytes client → upstream).
    pub bytes_in: u64,
    /// Body bytes sent to the client, a refusal's one-line body included (a tunnel: bytes
    /// upstream → client).
    pub bytes_out: u64,
}

impl<'a> Outcome<'a> {
    pub fn new(mode: Mode, started: Instant, method: Option<&'a Method>, target: &'a str) -> Self {
        Outcome {
            mode,
            started,
            method,
            target,
            upstream: None,
            client_name: None,
            host: None,
            port: 0,
            lineage: None,
            attempts: 0,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// The `upstream` label: the upstream's name, or `none`.
    pub fn upstream_name(&self) -> &str {
        self.upstream.as_deref().map_or("none", |u| u.name.as_str())
    }

    /// Count it and write its access line: `status` as sent to the client, `error` when the
    /// proxy answered (or cut the exchange) itself.
    pub fn record(&self, ctx: &Ctx, status: StatusCode, error: Option<&ProxyError>) {
        let elapsed = self.started.elapsed();
        let m = &ctx.shared.metrics;
        let upstream = self.upstream_name();
        let method = self.method.map_or("OTHER", method_label);
        // A tunnel's lifetime says how long the app kept it, not how fast anything was: it
        // has its own histogram, and only tunnels that were opened are in it.
        let tunnel = self.method == Some(&Method::CONNECT);
        m.request_done(upstream, method, status, tunnel, elapsed);
        let path = match self.method {
            Some(&Method::CONNECT) => "",
            _ => access::path_only(self.target),
        };
        let host = self.host.as_ref().map(Host::text);
        access::log(&access::Record {
            client: ctx.peer,
            client_name: self.client_name.as_deref(),
            upstream,
            method: self.method.map_or("-", Method::as_str),
            host: host.as_ref().map_or("", HostText::as_str),
            port: self.port,
            path,
            status: status.as_u16(),
            duration: elapsed,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            lineage: self.lineage,
            attempts: self.attempts,
            mode: self.mode.label(),
            error: error.map(ProxyError::token),
        });
    }
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
