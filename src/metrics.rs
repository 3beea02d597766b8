//! The Prometheus collectors of SPEC §7, registered once; hot paths hold pre-labelled handles.

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Why an upstream connection was closed: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    IdleTimeout,
    MaxLifetime,
    KeepAliveTimeout,
    RemoteClosed,
    Error,
    PoolFull,
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 7] = [
        CloseReason::IdleTimeout,
        CloseReason::MaxLifetime,
        CloseReason::KeepAliveTimeout,
        CloseReason::RemoteClosed,
        CloseReason::Error,
        CloseReason::PoolFull,
        CloseReason::Shutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::MaxLifetime => "max_lifetime",
            CloseReason::KeepAliveTimeout => "keep_alive_timeout",
            CloseReason::RemoteClosed => "remote_closed",
            CloseReason::Error => "error",
            CloseReason::PoolFull => "pool_full",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Every collector; cloned handles are cheap (`Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub tunnel_duration: HistogramVec,
    pub upstream_connections: IntGaugeVec,
    pub connection_limit: IntGaugeVec,
    pub connections_opened: IntCounterVec,
    pub connections_closed: IntCounterVec,
    pub reuse_idle: HistogramVec,
    pub pool_waiting: IntGaugeVec,
    pub pool_wait: HistogramVec,
    pub acquire_timeouts: IntCounterVec,
    pub retries: IntCounterVec,
    pub denied: IntCounterVec,
    pub tunnels_active: IntGaugeVec,
    pub tunnel_bytes: IntCounterVec,
    pub client_connections: IntGauge,
    pub config_reloads: IntCounterVec,
    pub intercepts: IntCounterVec,
    pub stale_reuses: IntCounterVec,
    pub client_tls_handshakes: IntCounterVec,
    /// Tells this set of collectors (and its clones, which share them) from any other in the
    /// process, for the per-thread cache of request handles.
    id: u64,
}

/// Handles for one upstream's pool, resolved once so checkout and return never hash label sets.
#[derive(Clone)]
pub struct PoolMetrics {
    pub idle: IntGauge,
    pub busy: IntGauge,
    pub limit: IntGauge,
    pub opened: IntCounter,
    closed: [IntCounter; 7],
    pub reuse_idle: Histogram,
    pub waiting: IntGauge,
    pub wait: Histogram,
    pub acquire_timeouts: IntCounter,
}

impl PoolMetrics {
    pub fn closed(&self, reason: CloseReason) -> &IntCounter {
        let i = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        &self.closed[i]
    }

    /// Unregistered handles, for pool unit tests.
    pub fn detached() -> PoolMetrics {
        Metrics::new().pool("test")
    }
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("static metric definition")
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let latency = exponential_buckets(0.0005, 2.0, 17).expect("static buckets"); // 0.5 ms .. ~33 s
        let idle_buckets = vec![
            0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ];
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let m = Metrics {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            registry: Registry::new(),
            requests: counter(
                "portcullis_requests_total",
                "Requests and tunnels answered, by upstream, method and the status sent to the client.",
                &["upstream", "method", "code"],
            ),
            request_duration: histogram(
                "portcullis_request_duration_seconds",
                "Forwarded and intercepted requests: time from request head received to response fully passed on.",
                &["upstream"],
                latency.clone(),
            ),
            tunnel_duration: histogram(
                "portcullis_tunnel_duration_seconds",
                "CONNECT tunnel lifetimes, from the CONNECT to the close of both sides.",
                &["upstream"],
                exponential_buckets(0.01, 4.0, 10).expect("static buckets"), // 10 ms .. ~44 min
            ),
            upstream_connections: gauge(
                "portcullis_upstream_connections",
                "Open upstream connections by state.",
                &["upstream", "state"],
            ),
            connection_limit: gauge(
                "portcullis_upstream_connection_limit",
                "Configured max_connections per destination.",
                &["upstream"],
            ),
            connections_opened: counter(
                "portcullis_upstream_connections_opened_total",
                "Upstream connections dialed.",
                &["upstream"],
            ),
            connections_closed: counter(
                "portcullis_upstream_connections_closed_total",
                "Upstream connections closed, by reason.",
                &["upstream", "reason"],
            ),
            reuse_idle: histogram(
                "portcullis_upstream_connection_reuse_idle_seconds",
                "How long a pooled connection had been idle when it was reused.",
                &["upstream"],
                idle_buckets,
            ),
            pool_waiting: gauge(
                "portcullis_pool_waiting",
                "Requests waiting for a connection.",
                &["upstream"],
            ),
            pool_wait: histogram(
                "portcullis_pool_wait_seconds",
                "Time spent waiting for a pooled connection or a free slot.",
                &["upstream"],
                latency,
            ),
            acquire_timeouts: counter(
                "portcullis_pool_acquire_timeouts_total",
                "Requests refused because no connection was free within acquire_timeout.",
                &["upstream"],
            ),
            retries: counter(
                "portcullis_retries_total",
                "Requests sent again on a new connection after a reused one failed.",
                &["upstream", "reason"],
            ),
            denied: counter("portcullis_denied_total", "Requests refused by policy, by reason.", &["reason"]),
            tunnels_active: gauge("portcullis_tunnels_active", "Open CONNECT tunnels.", &["upstream"]),
            tunnel_bytes: counter(
                "portcullis_tunnel_bytes_total",
                "Bytes copied through CONNECT tunnels, by direction.",
                &["upstream", "direction"],
            ),
            client_connections: IntGauge::new("portcullis_client_connections", "Open client connections.")
                .expect("static metric definition"),
            config_reloads: counter(
                "portcullis_config_reloads_total",
                "Config reloads on SIGHUP, by result.",
                &["result"],
            ),
            intercepts: counter(
                "portcullis_intercepts_total",
                "TLS handshakes portcullis completed (or failed) as the CONNECT host of an intercept upstream, by result.",
                &["upstream", "result"],
            ),
            stale_reuses: counter(
                "portcullis_upstream_stale_reuses_total",
                "Reused connections (and tunnels after an idle spell) the remote side had already dropped (SPEC section 11).",
                &["upstream"],
            ),
            client_tls_handshakes: counter(
                "portcullis_client_tls_handshakes_total",
                "Handshakes on the TLS proxy listener, by result.",
                &["result"],
            ),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.request_duration.clone()),
            Box::new(m.tunnel_duration.clone()),
            Box::new(m.upstream_connections.clone()),
            Box::new(m.connection_limit.clone()),
            Box::new(m.connections_opened.clone()),
            Box::new(m.connections_closed.clone()),
            Box::new(m.reuse_idle.clone()),
            Box::new(m.pool_waiting.clone()),
            Box::new(m.pool_wait.clone()),
            Box::new(m.acquire_timeouts.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.denied.clone()),
            Box::new(m.tunnels_active.clone()),
            Box::new(m.tunnel_bytes.clone()),
            Box::new(m.client_connections.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.intercepts.clone()),
            Box::new(m.stale_reuses.clone()),
            Box::new(m.client_tls_handshakes.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        for reason in ["host", "port", "client", "auth", "private_ip"] {
            m.denied.with_label_values(&[reason]);
        }
        for result in ["ok", "error"] {
            m.config_reloads.with_label_values(&[result]);
        }
        for result in crate::proxy::tls::Handshake::ALL {
            m.client_tls_handshakes.with_label_values(&[result.label()]);
        }
        m
    }

    /// Count one finished request or tunnel: `portcullis_requests_total` and its duration
    /// (a tunnel's only when it was opened). The labelled handles come from a small cache per
    /// worker thread: looking them up in the vecs hashes the label values and takes a lock,
    /// on every request, for a handful of distinct label sets.
    pub fn request_done(
        &self,
        upstream: &str,
        method: &'static str,
        status: http::StatusCode,
        tunnel: bool,
        elapsed: std::time::Duration,
    ) {
        RequestHandles::with(self, upstream, method, status, tunnel, |h| {
            h.requests.inc();
            if let Some(duration) = &h.duration {
                duration.observe(elapsed.as_secs_f64());
            }
        });
    }

    /// Pre-labelled handles for one upstream (creating the series at zero so alerts see them).
    pub fn pool(&self, upstream: &str) -> PoolMetrics {
        let closed = CloseReason::ALL.map(|r| {
            self.connections_closed
                .with_label_values(&[upstream, r.label()])
        });
        for reason in ["closed_before_write", "reset_after_write"] {
            self.retries.with_label_values(&[upstream, reason]);
        }
        PoolMetrics {
            idle: self
                .upstream_connections
                .with_label_values(&[upstream, "idle"]),
            busy: self
                .upstream_connections
                .with_label_values(&[upstream, "busy"]),
            limit: self.connection_limit.with_label_values(&[upstream]),
            opened: self.connections_opened.with_label_values(&[upstream]),
            closed,
            reuse_idle: self.reuse_idle.with_label_values(&[upstream]),
            waiting: self.pool_waiting.with_label_values(&[upstream]),
            wait: self.pool_wait.with_label_values(&[upstream]),
            acquire_timeouts: self.acquire_timeouts.with_label_values(&[upstream]),
        }
    }

    /// Per-upstream series that must exist from the start, at zero, so that a rate or an
    /// `increase()` sees the first event: those no pool creates (an upstream used only for
    /// tunnels has no pool).
    pub fn upstream_series<'a>(&self, upstreams: impl IntoIterator<Item = &'a str>) {
        for upstream in upstreams {
            self.stale_reuses.with_label_values(&[upstream]);
        }
    }

    /// The text exposition of the registered collectors.
    pub fn render(&self) -> String {
        self.render_with(&Scraped::default())
    }

    /// [`Metrics::render_with`] with only `portcullis_pool_utilization`.
    pub fn render_with_pool_utilization(&self, utilization: &[(&str, f64)]) -> String {
        self.render_with(&Scraped {
            utilization,
            ..Scraped::default()
        })
    }

    /// The text exposition for `/metrics`, with the gauges whose values are computed at
    /// scrape time from the pools and the learned limits: the hot path never updates them.
    pub fn render_with(&self, scraped: &Scraped<'_>) -> String {
        let mut families = self.registry.gather();
        let extra = [
            one_off_family(
                POOL_UTILIZATION,
                "Busy connections / max_connections of the upstream's fullest destination pool (0-1).",
                scraped.utilization,
            ),
            one_off_family(
                LEARNED_IDLE_LIMIT,
                "Smallest idle limit learned from stale reuses among the upstream's destinations (SPEC section 11).",
                scraped.learned_idle_limit,
            ),
        ];
        for family in extra.into_iter().flatten() {
            let at = families.partition_point(|f| f.name() < family.name());
            families.insert(at, family);
        }
        let mut buf = Vec::with_capacity(16 * 1024);
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&families, &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

const POOL_UTILIZATION: &str = "portcullis_pool_utilization";
const LEARNED_IDLE_LIMIT: &str = "portcullis_upstream_learned_idle_limit_seconds";

/// Values computed at scrape time, one per upstream.
#[derive(Debug, Default)]
pub struct Scraped<'a> {
    /// `portcullis_pool_utilization` (see [`pool_utilization`]).
    pub utilization: &'a [(&'a str, f64)],
    /// `portcullis_upstream_learned_idle_limit_seconds`: only upstreams that learned one, so
    /// that the series is absent until then (SPEC §7).
    pub learned_idle_limit: &'a [(&'a str, f64)],
}

/// A one-off gauge family, so an upstream gone in a reload leaves no stale series behind;
/// `None` when there are no values.
fn one_off_family(
    name: &str,
    help: &str,
    values: &[(&str, f64)],
) -> Option<prometheus::proto::MetricFamily> {
    use prometheus::core::Collector;
    if values.is_empty() {
        return None;
    }
    let gauge = GaugeVec::new(Opts::new(name, help), &["upstream"]).ok()?;
    for (upstream, value) in values {
        gauge.with_label_values(&[upstream]).set(*value);
    }
    gauge.collect().into_iter().next()
}

/// `portcullis_pool_utilization` (SPEC §7): per upstream, busy / `max_connections` of its
/// fullest destination pool, from 0 to 1. `max_connections` caps each destination, so the
/// fullest one is what runs into `acquire_timeout` first; summing an upstream's destinations
/// (a wildcard has many) would compare a sum with one destination's cap.
///
/// `upstreams` are the configured names (0 until they have a pool); `pools` holds
/// (upstream, busy, max_connections) per destination. A cap lowered by a reload below the
/// connections still busy reads as 1 until they finish.
pub fn pool_utilization<'a>(
    upstreams: impl IntoIterator<Item = &'a str>,
    pools: impl IntoIterator<Item = (&'a str, usize, usize)>,
) -> Vec<(&'a str, f64)> {
    let mut out: Vec<(&str, f64)> = upstreams.into_iter().map(|u| (u, 0.0)).collect();
    for (upstream, busy, max) in pools {
        let ratio = match (busy, max) {
            (0, _) => 0.0,
            (_, 0) => 1.0,
            (b, m) => (b as f64 / m as f64).min(1.0),
        };
        match out.iter_mut().find(|(u, _)| *u == upstream) {
            Some((_, v)) => *v = v.max(ratio),
            None => out.push((upstream, ratio)),
        }
    }
    out
}

/// The series one kind of request ends in, resolved once per worker thread.
struct RequestHandles {
    metrics: u64,
    upstream: Box<str>,
    method: &'static str,
    status: http::StatusCode,
    tunnel: bool,
    requests: IntCounter,
    /// `None` for a tunnel that was not opened: it has no duration.
    duration: Option<Histogram>,
}

impl RequestHandles {
    /// At most this many label sets per thread; past it the cache starts over (a cost only
    /// for configurations with that many upstreams in use at once).
    const CACHED: usize = 32;

    /// Run `f` on the handles for this label set (looked up in the vecs only when new here).
    fn with(
        m: &Metrics,
        upstream: &str,
        method: &'static str,
        status: http::StatusCode,
        tunnel: bool,
        f: impl FnOnce(&RequestHandles),
    ) {
        thread_local! {
            static CACHE: std::cell::RefCell<Vec<RequestHandles>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some(h) = cache.iter().find(|h| {
                h.metrics == m.id
                    && h.status == status
                    && h.tunnel == tunnel
                    && h.method == method
                    && *h.upstream == *upstream
            }) {
                return f(h);
            }
            let h = RequestHandles {
                metrics: m.id,
                upstream: upstream.into(),
                method,
                status,
                tunnel,
                requests: m
                    .requests
                    .with_label_values(&[upstream, method, status.as_str()]),
                duration: match (tunnel, status == http::StatusCode::OK) {
                    (false, _) => Some(m.request_duration.with_label_values(&[upstream])),
                    (true, true) => Some(m.tunnel_duration.with_label_values(&[upstream])),
                    (true, false) => None,
                },
            };
            if cache.len() >= Self::CACHED {
                cache.clear();
            }
            f(&h);
            cache.push(h);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_handles_are_cached_per_set_of_collectors() {
        use http::StatusCode;
        let ms = std::time::Duration::from_millis;
        let (a, b) = (Metrics::new(), Metrics::new());
        let count = |m: &Metrics, u: &str, code: &str| {
            m.requests.with_label_values(&[u, "GET", code]).get()
        };
        for _ in 0..3 {
            a.request_done("u", "GET", StatusCode::OK, false, ms(5));
        }
        a.request_done("v", "GET", StatusCode::OK, false, ms(5));
        a.request_done("u", "GET", StatusCode::BAD_GATEWAY, false, ms(5));
        b.request_done("u", "GET", StatusCode::OK, false, ms(5));
        assert_eq!((count(&a, "u", "200"), count(&a, "v", "200")), (3, 1));
        assert_eq!(count(&a, "u", "502"), 1);
        assert_eq!(count(&b, "u", "200"), 1, "another registry, its own series");
        let h = |m: &Metrics, u: &str| {
            m.request_duration
                .with_label_values(&[u])
                .get_sample_count()
        };
        assert_eq!((h(&a, "u"), h(&b, "u")), (4, 1));
        // Tunnels: their own histogram, and only when opened.
        a.request_done("u", "CONNECT", StatusCode::OK, true, ms(5));
        a.request_done("u", "CONNECT", StatusCode::FORBIDDEN, true, ms(5));
        let t = a
            .tunnel_duration
            .with_label_values(&["u"])
            .get_sample_count();
        assert_eq!((t, h(&a, "u")), (1, 4));
        // More label sets than the cache holds: still every one counted.
        for i in 0..100 {
            a.request_done(&format!("w{i}"), "GET", StatusCode::OK, false, ms(1));
            a.request_done("u", "GET", StatusCode::OK, false, ms(1));
        }
        assert_eq!(count(&a, "u", "200"), 103);
        assert_eq!(count(&a, "w99", "200"), 1);
    }

    #[test]
    fn pool_utilization_is_the_fullest_destination_not_the_sum() {
        type Pools = &'static [(&'static str, usize, usize)];
        type Want = &'static [(&'static str, f64)];
        let cases: &[(&str, &[&str], Pools, Want)] = &[
            ("no pools yet", &["a", "b"], &[], &[("a", 0.0), ("b", 0.0)]),
            (
                "a wildcard upstream with three destinations",
                &["adyen"],
                &[("adyen", 10, 128), ("adyen", 96, 128), ("adyen", 64, 128)],
                &[("adyen", 0.75)],
            ),
            (
                "each upstream by itself",
                &["a", "b"],
                &[("a", 1, 4), ("b", 4, 4)],
                &[("a", 0.25), ("b", 1.0)],
            ),
            (
                "busy above a cap a reload lowered",
                &["a"],
                &[("a", 20, 8)],
                &[("a", 1.0)],
            ),
            ("idle only", &["a"], &[("a", 0, 8)], &[("a", 0.0)]),
            (
                "a pool whose upstream left the config",
                &["a"],
                &[("gone", 2, 8)],
                &[("a", 0.0), ("gone", 0.25)],
            ),
        ];
        for (what, upstreams, pools, want) in cases {
            let got = pool_utilization(upstreams.iter().copied(), pools.iter().copied());
            assert_eq!(got, *want, "{what}");
        }
    }

    /// The families one-off gauges join must keep the exposition in name order.
    fn assert_families_in_name_order(text: &str) {
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn pool_utilization_renders_in_name_order_with_the_registry() {
        let m = Metrics::new();
        m.pool("a");
        let text = m.render_with_pool_utilization(&[("a", 0.5), ("b", 0.0)]);
        assert!(
            text.contains("# TYPE portcullis_pool_utilization gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_pool_utilization{upstream=\"a\"} 0.5\n"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_pool_utilization{upstream=\"b\"} 0\n"),
            "{text}"
        );
        assert_families_in_name_order(&text);
        assert!(!m.render().contains(POOL_UTILIZATION));
    }

    #[test]
    fn learned_idle_limit_is_absent_until_learned_and_stale_reuses_start_at_zero() {
        let m = Metrics::new();
        m.upstream_series(["a", "b"]);
        let text = m.render();
        assert!(!text.contains(LEARNED_IDLE_LIMIT), "{text}");
        assert!(
            text.contains("portcullis_upstream_stale_reuses_total{upstream=\"b\"} 0\n"),
            "{text}"
        );
        let text = m.render_with(&Scraped {
            utilization: &[("a", 0.0)],
            learned_idle_limit: &[("a", 2.4)],
        });
        assert!(
            text.contains(&format!("# TYPE {LEARNED_IDLE_LIMIT} gauge\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{LEARNED_IDLE_LIMIT}{{upstream=\"a\"}} 2.4\n")),
            "{text}"
        );
        assert!(!text.contains(&format!("{LEARNED_IDLE_LIMIT}{{upstream=\"b\"")));
        assert_families_in_name_order(&text);
    }
}
