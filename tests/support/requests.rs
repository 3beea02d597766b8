//! Small helpers shared by the request-level tests: raw request bytes, what an origin saw, polling.

use std::time::Duration;

use tokio::time::Instant;

use super::origin::{Origin, SeenRequest};
use super::proxy::Proxy;

/// `METHOD url HTTP/1.1` in absolute form with `Host`, the given headers and a Content-Length body.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {url} HTTP/1.1\r\nHost: {}\r\n", authority(url));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// `host:port` of an absolute URL.
pub fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// What the origin received for `target`.
pub fn seen(origin: &Origin, target: &str) -> Vec<SeenRequest> {
    origin
        .requests()
        .into_iter()
        .filter(|r| r.target == target)
        .collect()
}

/// Polls `cond` until it holds (bounded); true if it did.
pub async fn eventually(within: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

impl Proxy {
    /// `portcullis_retries_total` for an upstream, all reasons.
    pub async fn retries(&self, upstream: &str) -> f64 {
        self.metric(
            "portcullis_retries_total",
            &format!("upstream=\"{upstream}\""),
        )
        .await
    }

    /// `portcullis_upstream_connections_closed_total` for an upstream and reason.
    pub async fn closed_for(&self, upstream: &str, reason: &str) -> f64 {
        let labels = format!("upstream=\"{upstream}\",reason=\"{reason}\"");
        self.metric("portcullis_upstream_connections_closed_total", &labels)
            .await
    }
}
