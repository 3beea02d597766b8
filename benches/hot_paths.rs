//! Criterion micro-benchmarks of the per-request hot pieces: target parsing, policy, headers, pool.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use portcullis::config::Config;
use portcullis::policy::{self, Want};
use portcullis::pool::{Checkout, Limits, Pool, Poolable, Reuse};
use portcullis::proxy::headers;
use portcullis::target;

const CONFIG: &str = r#"
[[upstream]]
name = "stripe"
hosts = ["api.stripe.com", "files.stripe.com"]
ports = [443]
[[upstream]]
name = "adyen"
hosts = ["*.adyen.com"]
ports = [443]
[[upstream]]
name = "worldpay"
hosts = ["secure.worldpay.com", "*.worldpay.com"]
ports = [443]
tls = "originate"
"#;

fn parse(c: &mut Criterion) {
    let uri = "http://secure.worldpay.com/v1/payments?ref=abc";
    c.bench_function("target::parse_absolute", |b| {
        b.iter(|| target::parse_absolute(black_box(uri)).unwrap())
    });
    c.bench_function("target::parse_connect", |b| {
        b.iter(|| target::parse_connect(black_box("api.stripe.com:443")).unwrap())
    });
}

fn policy_decide(c: &mut Criterion) {
    let config = Config::from_toml(CONFIG, "bench").unwrap();
    let host = target::parse_host("checkout-test.adyen.com").unwrap();
    let peer: IpAddr = "10.1.2.3".parse().unwrap();
    c.bench_function("policy::decide (3rd upstream, wildcard)", |b| {
        b.iter(|| {
            policy::decide(
                black_box(&config),
                peer.into(),
                None,
                black_box(&host),
                Want::Tunnel { port: 443 },
            )
            .unwrap()
        })
    });
}

fn header_rewrite(c: &mut Criterion) {
    // A request carrying every kind of hop-by-hop header, and the usual response: an origin's
    // keep-alive is its only hop-by-hop header.
    let request: &[(&str, &str)] = &[
        ("host", "secure.worldpay.com"),
        ("user-agent", "payments-client/1.2"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("authorization", "Bearer secret"),
        ("idempotency-key", "8c1f0e2a"),
        ("connection", "keep-alive"),
        ("proxy-connection", "keep-alive"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
    ];
    let response: &[(&str, &str)] = &[
        ("server", "nginx"),
        ("date", "Mon, 30 Nov 2026 09:30:00 GMT"),
        ("content-type", "application/json"),
        ("content-length", "512"),
        ("connection", "keep-alive"),
    ];
    for (name, pairs) in [
        ("headers::HopNames: the fields passed on, request", request),
        (
            "headers::HopNames: the fields passed on, response",
            response,
        ),
    ] {
        let mut base = HeaderMap::new();
        for &(k, v) in pairs {
            base.insert(k, HeaderValue::from_static(v));
        }
        c.bench_function(name, |b| {
            b.iter(|| {
                // As the forwarding path writes a head: field by field, hop-by-hop left out.
                let h = black_box(&base);
                let hops = headers::HopNames::of(h);
                let mut out = Vec::with_capacity(512);
                for (k, v) in h {
                    if !hops.drops(k.as_str().as_bytes()) {
                        out.extend_from_slice(k.as_str().as_bytes());
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(v.as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                }
                out.extend_from_slice(b"via: ");
                out.extend_from_slice(headers::VIA.as_bytes());
                out
            })
        });
    }
}

struct Fake;
impl Poolable for Fake {
    fn is_open(&mut self) -> bool {
        true
    }
}

fn pool_cycle(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = portcullis::metrics::Metrics::new();
    let pool: Pool<Fake> = rt.block_on(async {
        let limits = Limits {
            max_connections: 128,
            max_idle: 16,
            idle_timeout: std::time::Duration::from_secs(30),
            max_lifetime: std::time::Duration::from_secs(3600),
            acquire_timeout: std::time::Duration::from_secs(5),
        };
        Pool::new(limits, metrics.pool("bench"))
    });
    rt.block_on(async {
        if let Checkout::Dial(slot) = pool.checkout(Reuse::Any).await.unwrap() {
            slot.fill(Fake).release();
        }
    });
    c.bench_function("pool checkout + release (reuse)", |b| {
        b.iter(|| {
            rt.block_on(async {
                match pool.checkout(Reuse::Any).await.unwrap() {
                    Checkout::Reused(c) => c.release(),
                    Checkout::Dial(_) => panic!("expected reuse"),
                }
            })
        })
    });
    // What each request adds by holding a counted handle (the registry forgets vacant pools).
    c.bench_function("pool handle clone + drop", |b| {
        b.iter(|| drop(std::hint::black_box(pool.clone())))
    });
    // The whole per-request pool path: registry lookup, checkout, release, handle dropped.
    let config = portcullis::config::Config::from_toml(
        "[[upstream]]\nname = \"bench\"\nhosts = [\"*.bench.example\"]\n",
        "bench.toml",
    )
    .unwrap();
    let upstream = config.upstream("bench").unwrap().clone();
    let target = portcullis::target::Target {
        host: portcullis::target::Host::Name("api.bench.example".into()),
        port: 443,
        tls: true,
    };
    let pools: portcullis::pool::Pools<Fake> = portcullis::pool::Pools::new(metrics.clone());
    rt.block_on(async {
        let pool = pools.get(&upstream, &target);
        if let Checkout::Dial(slot) = pool.checkout(Reuse::Any).await.unwrap() {
            slot.fill(Fake).release();
        }
    });
    c.bench_function("registry get + checkout + release (reuse)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let pool = pools.get(&upstream, &target);
                match pool.checkout(Reuse::Any).await.unwrap() {
                    Checkout::Reused(c) => c.release(),
                    Checkout::Dial(_) => panic!("expected reuse"),
                }
            })
        })
    });
}

criterion_group!(benches, parse, policy_decide, header_rewrite, pool_cycle);
criterion_main!(benches);
