//! Integration-test fixtures: real loopback servers, clients, TLS, a forgetful firewall and DNS.
//!
//! Use from a test file with `mod support;` and `use support::*;`. Everything listens on
//! 127.0.0.1 port 0, refuses non-loopback targets, stops itself when dropped (its tasks are
//! aborted), and bounds every wait with a timeout.
//!
//! - [`origin()`] → [`OriginBuilder`] (`.handler(|req| Reply::…)`, `.keep_alive_timeout(d)`,
//!   `.drop_requests_after_idle(d)`, `.tls(&cert)`) → `.spawn().await` → [`Origin`]: `addr`, `requests()`,
//!   `connections_accepted()`, `open_connections()`, `wait_for_requests(n, within)`;
//!   `.count_open_at_accept()` → `max_open_at_accept()`, `open_now()`: open connections as
//!   the kernel sees them, not as the origin's tasks notice.
//!   [`Reply`]: `ok`, `status`, `.header`, `.chunked`, `.delay`, `.close`, `.trickle`,
//!   `.close_mid_body`, `.stall_mid_body`; faults `close_without_answer`, `reset_without_answer`, `hang`,
//!   `endless_header`, `garbage`.
//! - [`TestCa::new`] → `issue(&["localhost", "127.0.0.1"])` → [`IssuedCert`] (`acceptor()`,
//!   `write_pem(dir, stem)`); `expired_cert`, `TestCa::self_signed`, `pem`, `write_pem(dir)`,
//!   `client_config()`; client certificates `client_cert(&["spiffe://…", "a.example"])`,
//!   `client_cert_cn_only`, `expired_client_cert`, `client_config_with_cert(&cert)`,
//!   `client_config_for(&TLS12, cert)`.
//! - [`Firewall::spawn(upstream, idle_limit)`](Firewall::spawn): forgets idle flows, RSTs
//!   their next client bytes; `flows_forgotten()`, `resets_sent()`, `flows_open()`.
//! - [`TestDns::spawn(&[(name, ip)])`](TestDns::spawn): A/AAAA with TTL 1, NXDOMAIN otherwise;
//!   `hang(name)`, `servfail(name)`, `set_records`, `answer_under(suffix, ip)`, `queries()`.
//! - [`InterceptCaFiles::new(&hosts)`](InterceptCaFiles::new): an intercept CA made by `ca init`'s
//!   generator; `proxy_lines()` for `[proxy]`, `client_config()` trusting only it, `rotate`.
//! - [`Blackhole::spawn(ip, port)`](Blackhole::spawn): a loopback address whose connects hang
//!   unanswered (a full accept queue), like a blackholed address.
//! - [`spawn_proxy`] / [`spawn_proxy_with`]: portcullis in process on port 0 (`tls` is the TLS
//!   listener's address with `tls_listen = "127.0.0.1:0"`); [`spawn_proxy_file`] starts from a
//!   file that `Proxy::reload` re-reads; [`Proxy`] reads `/metrics` ([`Proxy::metric`]),
//!   `/pools`, and waits for the pools to settle.
//! - Clients: [`raw_exchange`], [`exchange_on`], [`proxy_get`], [`ProxyConn`] (keep-alive;
//!   [`TlsConn`] = `ProxyConn::connect_tls(addr, client_config)` to the TLS listener),
//!   [`curl`] (the real binary) → [`RawResponse`] / [`CurlResult`].
//! - [`start`] → [`Portcullis`]: the real binary on free ports (`stderr_lines`, `wait_line`,
//!   `signal`, `reload`, `metric`, `wait_exit`).
// Each test file uses only part of this module.
#![allow(dead_code)]

mod apps;
mod blackhole;
mod census;
mod client;
mod dns;
mod firewall;
mod intercept;
mod node;
mod origin;
mod process;
mod proxy;
mod reply;
mod requests;
mod tls;
mod wire;

#[allow(unused_imports)]
pub use apps::{java_http_client, java_trust_store, python_requests, AppRequest, AppResponse};
#[allow(unused_imports)]
pub use blackhole::Blackhole;
#[allow(unused_imports)]
pub use client::{
    absolute_get, assert_refused, curl, exchange_on, proxy_get, raw_exchange, sees_eof, CurlResult,
    ProxyConn, RawResponse, TlsConn, DEFAULT_WITHIN,
};
#[allow(unused_imports)]
pub use dns::TestDns;
#[allow(unused_imports)]
pub use firewall::Firewall;
#[allow(unused_imports)]
pub use intercept::{client_config_with, InterceptCaFiles};
#[allow(unused_imports)]
pub use node::{undici_request, NodeResult};
#[allow(unused_imports)]
pub use origin::{origin, Origin, OriginBuilder, SeenRequest};
#[allow(unused_imports)]
pub use process::{
    free_port, loopback, proxy_section, scratch, start, start_with_grace, upstream, Guard,
    Portcullis, BIN, WITHIN,
};
#[allow(unused_imports)]
pub use proxy::{
    local_upstream, metric_in, spawn_proxy, spawn_proxy_file, spawn_proxy_with, write_config, Proxy,
};
#[allow(unused_imports)]
pub use reply::Reply;
#[allow(unused_imports)]
pub use requests::{authority, eventually, request, seen};
#[allow(unused_imports)]
pub use tls::{ring_provider, IssuedCert, TestCa};
#[allow(unused_imports)]
pub use wire::reset_on_drop;
