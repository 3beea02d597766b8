//! Observability in process (SPEC §7): every metric moves as the traffic says, `/pools` agrees
//! with what an origin observes, `/healthz` and `/readyz` follow the drain, and the exposition
//! passes `promtool check metrics` and a real Prometheus scrape.
//!
//! Every metric assertion is a before/after delta, so series created by other traffic in the
//! same proxy never make a test pass by accident.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;
use tokio::time::{sleep, Instant};

const SLOW: Duration = Duration::from_secs(1);
const WITHIN: Duration = Duration::from_secs(5);

/// An origin that answers `/slow` after one second, drops `/die` without an answer,
/// closes after `/close`, and answers anything else at once.
async fn test_origin() -> Origin {
    origin()
        .handler(|r| match r.target.as_str() {
            "/slow" => Reply::ok("slow").delay(SLOW),
            "/die" => Reply::close_without_answer(),
            "/close" => Reply::ok("bye").close(),
            _ => Reply::ok("ok"),
        })
        .spawn()
        .await
}

/// Poll `name{labels}` until `want` holds or `within` passes; returns the last value seen.
async fn wait_metric(
    p: &Proxy,
    name: &str,
    labels: &str,
    want: impl Fn(f64) -> bool,
    within: Duration,
) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = p.metric(name, labels).await;
        if want(v) || Instant::now() >= deadline {
            return v;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// `GET url` through the proxy in a task, so the test can look at the proxy meanwhile.
fn spawn_get(proxy: SocketAddr, url: String) -> tokio::task::JoinHandle<RawResponse> {
    tokio::spawn(async move { proxy_get(proxy, &url).await })
}

/// The one pool of `upstream` in `/pools`.
async fn pool_of(p: &Proxy, upstream: &str) -> serde_json::Value {
    let doc = p.pools().await;
    let pools: Vec<&serde_json::Value> = doc["pools"]
        .as_array()
        .expect("pools is an array")
        .iter()
        .filter(|x| x["upstream"] == upstream)
        .collect();
    assert_eq!(pools.len(), 1, "one pool for {upstream}: {doc:#}");
    pools[0].clone()
}

#[tokio::test]
async fn requests_are_counted_by_upstream_method_and_code() {
    let o = test_origin().await;
    let p = spawn_proxy(&local_upstream("obs", o.port(), "")).await;
    let series = |up: &str, code: &str| format!("upstream=\"{up}\",method=\"GET\",code=\"{code}\"");
    let name = "portcullis_requests_total";

    let before = p.metric(name, &series("obs", "200")).await;
    let r = proxy_get(p.addr, &o.url("/a")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(p.metric(name, &series("obs", "200")).await - before, 1.0);

    let before = p.metric(name, &series("none", "403")).await;
    let r = proxy_get(p.addr, "http://not-allowed.example/").await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(p.metric(name, &series("none", "403")).await - before, 1.0);

    // A fresh connection closed without an answer is not retried: 502.
    let before = p.metric(name, &series("obs", "502")).await;
    let r = proxy_get(p.addr, &o.url("/die")).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(p.metric(name, &series("obs", "502")).await - before, 1.0);

    let hist = "portcullis_request_duration_seconds_count";
    assert!(p.metric(hist, "upstream=\"obs\"").await >= 2.0);
    p.stop().await;
}

#[tokio::test]
async fn sequential_keep_alive_requests_share_one_connection_in_metrics_and_pools() {
    const N: usize = 5;
    let o = test_origin().await;
    let p = spawn_proxy(&local_upstream(
        "obs",
        o.port(),
        "max_connections = 7\nmax_idle = 4",
    ))
    .await;
    let opened = "portcullis_upstream_connections_opened_total";
    let reuse = "portcullis_upstream_connection_reuse_idle_seconds_count";
    let opened_before = p.metric(opened, "upstream=\"obs\"").await;
    let reuse_before = p.metric(reuse, "upstream=\"obs\"").await;

    let mut conn = ProxyConn::connect(p.addr).await;
    for i in 0..N {
        let r = conn.get(&o.url(&format!("/r{i}"))).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    assert!(
        p.wait_idle(WITHIN).await,
        "the connection goes back to the pool"
    );
    sleep(Duration::from_millis(250)).await;

    // What the origin saw: one connection carrying N requests.
    let seen = o.requests();
    assert_eq!(seen.len(), N);
    assert_eq!(o.connections_accepted(), 1, "{seen:#?}");
    for (i, s) in seen.iter().enumerate() {
        assert_eq!((s.conn_id, s.conn_request_index), (1, i), "{s:?}");
    }

    assert_eq!(
        p.metric(opened, "upstream=\"obs\"").await - opened_before,
        1.0
    );
    assert_eq!(
        p.metric(reuse, "upstream=\"obs\"").await - reuse_before,
        (N - 1) as f64
    );
    let conns = "portcullis_upstream_connections";
    assert_eq!(
        p.metric(conns, "upstream=\"obs\",state=\"idle\"").await,
        1.0
    );
    assert_eq!(
        p.metric(conns, "upstream=\"obs\",state=\"busy\"").await,
        0.0
    );
    let limit = "portcullis_upstream_connection_limit";
    assert_eq!(p.metric(limit, "upstream=\"obs\"").await, 7.0);

    let pool = pool_of(&p, "obs").await;
    assert_eq!(pool["host"], "127.0.0.1", "{pool:#}");
    assert_eq!(pool["port"], o.port(), "{pool:#}");
    assert_eq!(pool["tls"], false, "{pool:#}");
    assert_eq!(pool["idle"], 1, "{pool:#}");
    assert_eq!(pool["busy"], 0, "{pool:#}");
    assert_eq!(pool["waiting"], 0, "{pool:#}");
    assert_eq!(pool["max_connections"], 7, "{pool:#}");
    // SPEC §11: the configured idle timeout while nothing was learned.
    assert_eq!(pool["idle_timeout_seconds"], 30.0, "{pool:#}");
    assert!(pool["learned_idle_limit_seconds"].is_null(), "{pool:#}");
    assert_eq!(pool["stale_reuses"], 0, "{pool:#}");
    let c = &pool["connections"];
    assert_eq!(c.as_array().map(Vec::len), Some(1), "{pool:#}");
    let c = &c[0];
    assert_eq!(c["state"], "idle", "{pool:#}");
    assert_eq!(c["requests"], N as u64, "{pool:#}");
    let age = c["age_seconds"].as_f64().expect("age_seconds");
    let idle = c["idle_seconds"].as_f64().expect("idle_seconds");
    assert!(idle >= 0.2, "idle for 250 ms at least: {pool:#}");
    assert!(age >= idle, "{pool:#}");
    assert!(c["id"].as_u64().is_some(), "{pool:#}");
    p.stop().await;
}

#[tokio::test]
async fn a_slow_request_shows_as_one_busy_connection() {
    let o = test_origin().await;
    let p = spawn_proxy(&local_upstream("obs", o.port(), "")).await;
    let slow = spawn_get(p.addr, o.url("/slow"));
    assert!(o.wait_for_requests(1, WITHIN).await);

    let pool = pool_of(&p, "obs").await;
    assert_eq!(
        (pool["busy"].as_u64(), pool["idle"].as_u64()),
        (Some(1), Some(0)),
        "{pool:#}"
    );
    assert_eq!(pool["connections"][0]["state"], "busy", "{pool:#}");
    assert_eq!(pool["connections"][0]["requests"], 1, "{pool:#}");
    let conns = "portcullis_upstream_connections";
    assert_eq!(
        p.metric(conns, "upstream=\"obs\",state=\"busy\"").await,
        1.0
    );
    assert_eq!(
        p.metric(conns, "upstream=\"obs\",state=\"idle\"").await,
        0.0
    );

    let r = slow.await.expect("request task");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(p.wait_idle(WITHIN).await);
    let pool = pool_of(&p, "obs").await;
    assert_eq!(
        (pool["busy"].as_u64(), pool["idle"].as_u64()),
        (Some(0), Some(1)),
        "{pool:#}"
    );
    assert_eq!(
        p.metric(conns, "upstream=\"obs\",state=\"busy\"").await,
        0.0
    );
    assert_eq!(
        p.metric(conns, "upstream=\"obs\",state=\"idle\"").await,
        1.0
    );
    p.stop().await;
}

/// `portcullis_pool_utilization` is the fullest destination's busy / max_connections: two
/// destinations of one upstream with one request each are half full, although the busy
/// gauge (summed over destinations) equals one destination's limit.
#[tokio::test]
async fn pool_utilization_is_per_destination_not_summed() {
    let hold = |_: &SeenRequest| Reply::ok("late").delay(Duration::from_secs(60));
    let a = origin().handler(hold).spawn().await;
    let b = origin().handler(hold).spawn().await;
    let idle = origin().spawn().await;
    let p = spawn_proxy(&format!(
        "[[upstream]]\nname = \"wide\"\nhosts = [\"127.0.0.1\"]\nports = [{}, {}]\n\
         allow_private = true\nmax_connections = 2\nmax_idle = 2\n{}",
        a.port(),
        b.port(),
        local_upstream("quiet", idle.port(), "")
    ))
    .await;
    let util = "portcullis_pool_utilization";
    // Every configured upstream has the series from the start.
    let (_, text) = p.admin_get("/metrics").await;
    assert!(
        text.contains("# TYPE portcullis_pool_utilization gauge"),
        "{text}"
    );
    assert_eq!(metric_in(&text, util, "upstream=\"wide\""), 0.0);
    assert!(
        text.contains("portcullis_pool_utilization{upstream=\"quiet\"} 0"),
        "{text}"
    );

    let held = [spawn_get(p.addr, a.url("/")), spawn_get(p.addr, b.url("/"))];
    assert!(a.wait_for_requests(1, WITHIN).await);
    assert!(b.wait_for_requests(1, WITHIN).await);
    let busy = "portcullis_upstream_connections";
    let limit = "portcullis_upstream_connection_limit";
    let (_, text) = p.admin_get("/metrics").await;
    let summed = metric_in(&text, busy, "upstream=\"wide\",state=\"busy\"")
        / metric_in(&text, limit, "upstream=\"wide\"");
    assert_eq!(summed, 1.0, "the old ratio reads 100 %:\n{text}");
    assert_eq!(metric_in(&text, util, "upstream=\"wide\""), 0.5, "{text}");

    // A third request fills destination a: now it is the fullest, at 100 %.
    let third = spawn_get(p.addr, a.url("/"));
    assert!(a.wait_for_requests(2, WITHIN).await);
    assert_eq!(p.metric(util, "upstream=\"wide\"").await, 1.0);
    assert_eq!(p.metric(util, "upstream=\"quiet\"").await, 0.0);
    for t in held.into_iter().chain([third]) {
        t.abort();
    }
    p.stop().await;
}

const CLOSED: &str = "portcullis_upstream_connections_closed_total";

/// `portcullis_upstream_connections{upstream="obs"}` by state agrees with `/pools` and with `want`.
async fn assert_gauges(p: &Proxy, (idle, busy): (u64, u64)) {
    let conns = "portcullis_upstream_connections";
    let gauges = (
        p.metric(conns, "upstream=\"obs\",state=\"idle\"").await,
        p.metric(conns, "upstream=\"obs\",state=\"busy\"").await,
    );
    assert_eq!(gauges, (idle as f64, busy as f64), "gauges (idle, busy)");
    if idle + busy == 0 {
        // SPEC §5: a pool left without connections (and requests) is forgotten.
        let deadline = Instant::now() + WITHIN;
        loop {
            let doc = p.pools().await;
            let listed = doc["pools"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|x| x["upstream"] == "obs"));
            if !listed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "an empty pool stays listed: {doc:#}"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }
    let pool = pool_of(p, "obs").await;
    assert_eq!(
        (pool["idle"].as_u64(), pool["busy"].as_u64()),
        (Some(idle), Some(busy)),
        "{pool:#}"
    );
    let listed = pool["connections"].as_array().map_or(0, Vec::len);
    assert_eq!(listed as u64, idle + busy, "{pool:#}");
}

fn closed(reason: &str) -> String {
    format!("upstream=\"obs\",reason=\"{reason}\"")
}

#[tokio::test]
async fn an_idle_connection_is_closed_for_idle_timeout() {
    let o = test_origin().await;
    let p = spawn_proxy(&local_upstream("obs", o.port(), "idle_timeout = \"300ms\"")).await;
    let before = p.metric(CLOSED, &closed("idle_timeout")).await;
    let r = proxy_get(p.addr, &o.url("/a")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let after = wait_metric(&p, CLOSED, &closed("idle_timeout"), |v| v > before, WITHIN).await;
    assert_eq!(after - before, 1.0);
    assert!(
        o.wait_for_open_connections(0, WITHIN).await,
        "the origin sees the close"
    );
    assert_gauges(&p, (0, 0)).await;
    p.stop().await;
}

#[tokio::test]
async fn connections_past_max_lifetime_are_closed_idle_or_after_their_request() {
    let o = test_origin().await;
    let p = spawn_proxy(&local_upstream("obs", o.port(), "max_lifetime = \"400ms\"")).await;
    let before = p.metric(CLOSED, &closed("max_lifetime")).await;
    // Idle: the reaper closes it when its lifetime runs out.
    let r = proxy_get(p.addr, &o.url("/a")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let after = wait_metric(&p, CLOSED, &closed("max_lifetime"), |v| v > before, WITHIN).await;
    assert_eq!(after - before, 1.0);
    // Busy: a one-second request outlives the lifetime, finishes, and then the connection closes.
    let r = proxy_get(p.addr, &o.url("/slow")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let after = wait_metric(
        &p,
        CLOSED,
        &closed("max_lifetime"),
        |v| v > before + 1.0,
        WITHIN,
    )
    .await;
    assert_eq!(after - before, 2.0);
    assert_eq!(o.connections_accepted(), 2);
    assert!(o.wait_for_open_connections(0, WITHIN).await);
    assert_gauges(&p, (0, 0)).await;
    p.stop().await;
}

#[tokio::test]
async fn connections_the_origin_closes_count_as_remote_closed() {
    let o = test_origin().await;
    let p = spawn_proxy(&local_upstream("obs", o.port(), "")).await;
    let before = p.metric(CLOSED, &closed("remote_closed")).await;
    // `Connection: close` on the response.
    let r = proxy_get(p.addr, &o.url("/close")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let after = wait_metric(&p, CLOSED, &closed("remote_closed"), |v| v > before, WITHIN).await;
    assert_eq!(after - before, 1.0);

    // An idle pooled connection whose origin goes away (FIN while idle).
    let r = proxy_get(p.addr, &o.url("/a")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(p.wait_idle(WITHIN).await);
    assert_eq!(p.idle_count(), 1);
    drop(o);
    let after = wait_metric(
        &p,
        CLOSED,
        &closed("remote_closed"),
        |v| v > before + 1.0,
        WITHIN,
    )
    .await;
    assert_eq!(after - before, 2.0);
    assert_gauges(&p, (0, 0)).await;
    p.stop().await;
}

#[tokio::test]
async fn waiting_for_a_connection_shows_in_pool_waiting_and_wait_seconds() {
    let o = test_origin().await;
    let p = spawn_proxy(&local_upstream(
        "obs",
        o.port(),
        "max_connections = 1\nacquire_timeout = \"5s\"",
    ))
    .await;
    let wait_count = "portcullis_pool_wait_seconds_count";
    let wait_before = p.metric(wait_count, "upstream=\"obs\"").await;
    let first = spawn_get(p.addr, o.url("/slow"));
    assert!(o.wait_for_requests(1, WITHIN).await);
    let second = spawn_get(p.addr, o.url("/slow"));

    let waiting = wait_metric(
        &p,
        "portcullis_pool_waiting",
        "upstream=\"obs\"",
        |v| v > 0.0,
        WITHIN,
    )
    .await;
    assert_eq!(waiting, 1.0);
    let pool = pool_of(&p, "obs").await;
    assert_eq!(
        (pool["busy"].as_u64(), pool["waiting"].as_u64()),
        (Some(1), Some(1)),
        "{pool:#}"
    );

    for r in [first.await, second.await] {
        let r = r.expect("request task");
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(
        p.metric("portcullis_pool_waiting", "upstream=\"obs\"")
            .await,
        0.0
    );
    assert_eq!(
        p.metric(wait_count, "upstream=\"obs\"").await - wait_before,
        1.0
    );
    let waited = p
        .metric("portcullis_pool_wait_seconds_sum", "upstream=\"obs\"")
        .await;
    assert!(
        waited >= 0.5,
        "the second request waited for the first: {waited}"
    );
    // Both went over the one connection.
    assert_eq!(o.connections_accepted(), 1);
    assert!(p.wait_idle(WITHIN).await);
    assert_gauges(&p, (1, 0)).await;
    p.stop().await;
}

#[tokio::test]
async fn no_free_connection_within_acquire_timeout_is_counted() {
    let o = test_origin().await;
    let p = spawn_proxy(&local_upstream(
        "obs",
        o.port(),
        "max_connections = 1\nacquire_timeout = \"200ms\"",
    ))
    .await;
    let name = "portcullis_pool_acquire_timeouts_total";
    let before = p.metric(name, "upstream=\"obs\"").await;
    let code = "upstream=\"obs\",code=\"503\"";
    let code_before = p.metric("portcullis_requests_total", code).await;
    let slow = spawn_get(p.addr, o.url("/slow"));
    assert!(o.wait_for_requests(1, WITHIN).await);

    let r = proxy_get(p.addr, &o.url("/a")).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.header("proxy-status")
            .unwrap_or_default()
            .contains("error=connection_limit_reached"),
        "{r:?}"
    );
    assert_eq!(p.metric(name, "upstream=\"obs\"").await - before, 1.0);
    assert_eq!(
        p.metric("portcullis_requests_total", code).await - code_before,
        1.0
    );
    assert_eq!(slow.await.expect("request task").status, 200);
    assert!(p.wait_idle(WITHIN).await);
    assert_gauges(&p, (1, 0)).await;
    p.stop().await;
}

#[tokio::test]
async fn a_reused_connection_reset_after_the_request_is_retried_and_counted() {
    // Every connection's second request is answered with a reset.
    let o = origin()
        .handler(|r| {
            if r.conn_request_index == 1 {
                Reply::reset_without_answer()
            } else {
                Reply::ok("ok")
            }
        })
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream("obs", o.port(), "")).await;
    let retries = "portcullis_retries_total";
    let after_write = "upstream=\"obs\",reason=\"reset_after_write\"";
    let any_reason = "upstream=\"obs\"";
    let before = p.metric(retries, after_write).await;
    let before_any = p.metric(retries, any_reason).await;
    let opened = "portcullis_upstream_connections_opened_total";
    let opened_before = p.metric(opened, "upstream=\"obs\"").await;
    let errors_before = p.metric(CLOSED, &closed("error")).await;

    let r = proxy_get(p.addr, &o.url("/one")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(p.wait_idle(WITHIN).await);
    let r = proxy_get(p.addr, &o.url("/two")).await;
    assert_eq!(r.status, 200, "the retry succeeds: {r:?}");

    let seen: Vec<(usize, usize, String)> = o
        .requests()
        .into_iter()
        .map(|s| (s.conn_id, s.conn_request_index, s.target))
        .collect();
    assert_eq!(
        seen,
        [
            (1, 0, "/one".into()),
            (1, 1, "/two".into()),
            (2, 0, "/two".into())
        ]
    );
    assert_eq!(p.metric(retries, after_write).await - before, 1.0);
    assert_eq!(p.metric(retries, any_reason).await - before_any, 1.0);
    assert_eq!(
        p.metric(opened, "upstream=\"obs\"").await - opened_before,
        2.0
    );
    let errors = p.metric(CLOSED, &closed("error")).await - errors_before;
    assert_eq!(errors, 1.0, "the reset connection is closed as an error");
    assert!(p.wait_idle(WITHIN).await);
    assert_gauges(&p, (1, 0)).await;
    p.stop().await;
}

const DENIED: &str = "portcullis_denied_total";
const PASSWORD_VAR: &str = "PORTCULLIS_OBSERVABILITY_TEST_PW";

/// Send `req` and check the status and the one denial reason it must count.
async fn expect_denied(p: &Proxy, req: &str, status: u16, reason: &str) {
    let label = format!("reason=\"{reason}\"");
    let before = p.metric(DENIED, &label).await;
    let total_before = p.metric(DENIED, "").await;
    let r = raw_exchange(p.addr, req.as_bytes(), WITHIN).await;
    assert_eq!(r.status, status, "{req}\n{r:?}");
    assert_eq!(p.metric(DENIED, &label).await - before, 1.0, "{req}");
    assert_eq!(
        p.metric(DENIED, "").await - total_before,
        1.0,
        "only {reason}: {req}"
    );
}

#[tokio::test]
async fn denials_are_counted_by_host_port_and_private_ip() {
    let o = test_origin().await;
    let config = format!(
        "{}[[upstream]]\nname = \"private\"\nhosts = [\"127.0.0.2\"]\nports = [{}]\n",
        local_upstream("obs", o.port(), ""),
        o.port()
    );
    let p = spawn_proxy(&config).await;
    let get = |url: &str| String::from_utf8(absolute_get(url)).expect("ascii");
    expect_denied(&p, &get("http://not-allowed.example/"), 403, "host").await;
    expect_denied(&p, &get("http://127.0.0.1:1/"), 403, "port").await;
    let port = o.port();
    expect_denied(
        &p,
        &get(&format!("http://127.0.0.2:{port}/")),
        403,
        "private_ip",
    )
    .await;
    let connect =
        "CONNECT not-allowed.example:443 HTTP/1.1\r\nHost: not-allowed.example:443\r\n\r\n";
    expect_denied(&p, connect, 403, "host").await;
    assert_eq!(o.requests().len(), 0, "nothing denied reached the origin");
    p.stop().await;
}

#[tokio::test]
async fn denials_are_counted_by_auth_and_client() {
    use base64::Engine;
    std::env::set_var(PASSWORD_VAR, "obs-secret");
    let o = test_origin().await;
    let config = format!(
        "{}[[upstream]]\nname = \"other\"\nhosts = [\"127.0.0.3\"]\nports = [{}]\nallow_private = true\n\
         [[client]]\nname = \"app\"\nusername = \"app\"\npassword_env = \"{PASSWORD_VAR}\"\nupstreams = [\"obs\"]\n",
        local_upstream("obs", o.port(), ""),
        o.port()
    );
    let p = spawn_proxy(&config).await;
    let port = o.port();
    let basic = |pw: &str| base64::engine::general_purpose::STANDARD.encode(format!("app:{pw}"));
    let req = |host: &str, pw: Option<&str>| {
        let auth = pw.map_or(String::new(), |pw| {
            format!("Proxy-Authorization: Basic {}\r\n", basic(pw))
        });
        format!("GET http://{host}:{port}/ HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n")
    };
    expect_denied(&p, &req("127.0.0.1", None), 407, "auth").await;
    expect_denied(&p, &req("127.0.0.1", Some("wrong")), 407, "auth").await;
    expect_denied(&p, &req("127.0.0.3", Some("obs-secret")), 403, "client").await;
    let r = raw_exchange(
        p.addr,
        req("127.0.0.1", Some("obs-secret")).as_bytes(),
        WITHIN,
    )
    .await;
    assert_eq!(r.status, 200, "the client's own upstream: {r:?}");
    p.stop().await;
}

#[tokio::test]
async fn tunnels_show_as_active_and_count_bytes_both_ways() {
    let o = test_origin().await;
    let p = spawn_proxy(&local_upstream("obs", o.port(), "")).await;
    let bytes = "portcullis_tunnel_bytes_total";
    let up = "upstream=\"obs\",direction=\"upstream\"";
    let down = "upstream=\"obs\",direction=\"client\"";
    let (up_before, down_before) = (p.metric(bytes, up).await, p.metric(bytes, down).await);
    let active = "portcullis_tunnels_active";
    let connect_code = "upstream=\"obs\",method=\"CONNECT\",code=\"200\"";
    let connects_before = p.metric("portcullis_requests_total", connect_code).await;

    let mut conn = ProxyConn::connect(p.addr).await;
    let authority = o.addr.to_string();
    let r = conn
        .send(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        wait_metric(&p, active, "upstream=\"obs\"", |v| v == 1.0, WITHIN).await,
        1.0
    );
    let mut stream = conn.into_stream();
    let request = format!("GET /through HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let inner = exchange_on(&mut stream, request.as_bytes(), WITHIN).await;
    assert_eq!(inner.status, 200, "{inner:?}");
    assert_eq!(p.metric(active, "upstream=\"obs\"").await, 1.0);
    drop(stream);

    assert_eq!(
        wait_metric(&p, active, "upstream=\"obs\"", |v| v == 0.0, WITHIN).await,
        0.0
    );
    assert_eq!(p.metric(bytes, up).await - up_before, request.len() as f64);
    assert_eq!(
        p.metric(bytes, down).await - down_before,
        inner.bytes_received as f64
    );
    assert_eq!(
        p.metric("portcullis_requests_total", connect_code).await - connects_before,
        1.0
    );
    // A tunnel's lifetime is in its own histogram, not among the request durations.
    let tunnel_count = "portcullis_tunnel_duration_seconds_count";
    assert_eq!(
        wait_metric(&p, tunnel_count, "upstream=\"obs\"", |v| v == 1.0, WITHIN).await,
        1.0
    );
    let requests = "portcullis_request_duration_seconds_count";
    assert_eq!(p.metric(requests, "upstream=\"obs\"").await, 0.0);
    p.stop().await;
}

#[tokio::test]
async fn open_client_connections_are_a_gauge() {
    let o = test_origin().await;
    let p = spawn_proxy(&local_upstream("obs", o.port(), "")).await;
    let name = "portcullis_client_connections";
    let before = p.metric(name, "").await;
    let mut a = ProxyConn::connect(p.addr).await;
    let mut b = ProxyConn::connect(p.addr).await;
    assert_eq!(a.get(&o.url("/a")).await.status, 200);
    assert_eq!(b.get(&o.url("/b")).await.status, 200);
    assert_eq!(
        wait_metric(&p, name, "", |v| v == before + 2.0, WITHIN).await - before,
        2.0
    );
    drop(a);
    assert_eq!(
        wait_metric(&p, name, "", |v| v == before + 1.0, WITHIN).await - before,
        1.0
    );
    drop(b);
    assert_eq!(
        wait_metric(&p, name, "", |v| v == before, WITHIN).await,
        before
    );
    p.stop().await;
}

#[tokio::test]
async fn health_stays_up_and_readiness_turns_503_during_a_drain() {
    let o = test_origin().await;
    let p = spawn_proxy(&local_upstream("obs", o.port(), "")).await;
    assert_eq!(p.admin_get("/healthz").await.0, 200);
    assert_eq!(p.admin_get("/readyz").await.0, 200);
    let admin = p.admin;
    let slow = spawn_get(p.addr, o.url("/slow"));
    assert!(o.wait_for_requests(1, WITHIN).await);

    let stopping = tokio::spawn(p.stop());
    let get = |path: &'static str| async move {
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        raw_exchange(admin, req.as_bytes(), WITHIN).await.status
    };
    let deadline = Instant::now() + WITHIN;
    let mut readyz = get("/readyz").await;
    while readyz != 503 && Instant::now() < deadline {
        sleep(Duration::from_millis(10)).await;
        readyz = get("/readyz").await;
    }
    assert_eq!(readyz, 503, "/readyz during the drain");
    assert!(
        !slow.is_finished(),
        "the drain began while the request was in flight"
    );
    assert_eq!(
        get("/healthz").await,
        200,
        "/healthz while the process runs"
    );

    let r = slow.await.expect("request task");
    assert_eq!(r.status, 200, "in-flight request finishes: {r:?}");
    tokio::time::timeout(WITHIN, stopping)
        .await
        .expect("shutdown within the grace")
        .expect("stop task");
}

/// The path of an external tool, or `None` after saying why the test is skipped (a failure
/// under CI, whose script installs it).
fn tool(name: &str, path: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .chain([PathBuf::from(path)])
        .find(|p| p.is_file());
    if found.is_none() {
        let hint = "install it with `apt-get update && apt-get install -y prometheus`";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{name} is missing under CI: {hint}");
        }
        eprintln!("SKIPPED: {name} not found; {hint}");
    }
    found
}

/// Traffic of every kind, so that most series exist: 200, 403, 502, a wait, a tunnel.
async fn varied_traffic(p: &Proxy, o: &Origin) {
    assert_eq!(proxy_get(p.addr, &o.url("/a")).await.status, 200);
    assert_eq!(proxy_get(p.addr, &o.url("/a")).await.status, 200);
    assert_eq!(
        proxy_get(p.addr, "http://not-allowed.example/")
            .await
            .status,
        403
    );
    assert_eq!(proxy_get(p.addr, &o.url("/die")).await.status, 502);
    let authority = o.addr.to_string();
    let mut conn = ProxyConn::connect(p.addr).await;
    let connect = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    assert_eq!(conn.send(connect.as_bytes()).await.status, 200);
    let mut s = conn.into_stream();
    let req = format!("GET / HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    assert_eq!(
        exchange_on(&mut s, req.as_bytes(), WITHIN).await.status,
        200
    );
    drop(s);
    // Tunnel bytes are counted when the tunnel ends.
    let active = "portcullis_tunnels_active";
    assert_eq!(wait_metric(p, active, "", |v| v == 0.0, WITHIN).await, 0.0);
}

#[tokio::test]
async fn promtool_finds_no_problem_in_the_exposition() {
    let Some(promtool) = tool("promtool", "/usr/bin/promtool") else {
        return;
    };
    let o = test_origin().await;
    let p = spawn_proxy(&local_upstream("obs", o.port(), "")).await;
    varied_traffic(&p, &o).await;
    let (status, text) = p.admin_get("/metrics").await;
    assert_eq!(status, 200);
    for family in [
        "portcullis_requests_total",
        "portcullis_request_duration_seconds",
        "portcullis_upstream_connections",
        "portcullis_upstream_connection_limit",
        "portcullis_upstream_connections_opened_total",
        "portcullis_upstream_connections_closed_total",
        "portcullis_upstream_connection_reuse_idle_seconds",
        "portcullis_pool_waiting",
        "portcullis_pool_wait_seconds",
        "portcullis_pool_acquire_timeouts_total",
        "portcullis_retries_total",
        "portcullis_denied_total",
        "portcullis_tunnels_active",
        "portcullis_tunnel_bytes_total",
        "portcullis_client_connections",
        "portcullis_config_reloads_total",
        "portcullis_pool_utilization",
        "portcullis_upstream_stale_reuses_total",
        "portcullis_client_tls_handshakes_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing from:\n{text}"
        );
    }

    let mut child = tokio::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run promtool");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(text.as_bytes())
            .await
            .expect("feed promtool");
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("promtool finishes")
        .expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool: {:?}\n{said}\n---\n{text}",
        out.status
    );
    assert!(said.trim().is_empty(), "promtool reported:\n{said}");
    p.stop().await;
}

/// A Prometheus server, killed (and reaped) when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (the caller retries if someone takes it first).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// Start Prometheus scraping `target` every second (a few tries, in case its port is taken).
async fn start_prometheus(binary: &PathBuf, target: SocketAddr) -> Prometheus {
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: portcullis\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
         \x20   static_configs:\n      - targets: [\"{target}\"]\n"
    );
    start_prometheus_with(binary, &config).await
}

/// Start Prometheus with this config text (JSON is YAML too).
async fn start_prometheus_with(binary: &PathBuf, config_text: &str) -> Prometheus {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    for attempt in 0..3 {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "prometheus-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_text).expect("write prometheus.yml");
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = dir.join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start prometheus");
        let mut prom = Prometheus { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = prom.child.try_wait() {
                let log = std::fs::read_to_string(&prom.log).unwrap_or_default();
                eprintln!("prometheus attempt {attempt} exited {status}:\n{log}");
                break;
            }
            let r = raw_exchange(
                addr,
                b"GET /-/ready HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
                Duration::from_secs(2),
            )
            .await;
            if r.status == 200 {
                return prom;
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(&prom.log).unwrap_or_default();
                panic!("prometheus not ready within 15 s:\n{log}");
            }
            sleep(Duration::from_millis(200)).await;
        }
    }
    panic!("prometheus did not start in 3 attempts");
}

/// `GET path` on Prometheus's API (no escaping needed here); the `data` member.
async fn prom_api(prom: &Prometheus, path: &str) -> serde_json::Value {
    let req = format!("GET {path} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n");
    let r = raw_exchange(prom.addr, req.as_bytes(), Duration::from_secs(5)).await;
    if r.status != 200 {
        return serde_json::Value::Null;
    }
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    doc["data"].clone()
}

/// `GET /api/v1/query?query=<q>` (q needs no escaping here); the `data.result` array.
async fn prom_query(prom: &Prometheus, q: &str) -> Vec<serde_json::Value> {
    prom_api(prom, &format!("/api/v1/query?query={q}")).await["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn prometheus_scrapes_the_admin_listener() {
    let Some(binary) = tool("prometheus", "/usr/bin/prometheus") else {
        return;
    };
    let o = test_origin().await;
    let p = spawn_proxy(&local_upstream("obs", o.port(), "")).await;
    varied_traffic(&p, &o).await;
    let prom = start_prometheus(&binary, p.admin).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Traffic keeps flowing while Prometheus scrapes.
        assert_eq!(proxy_get(p.addr, &o.url("/a")).await.status, 200);
        let up = prom_query(&prom, "up").await;
        let requests = prom_query(&prom, "portcullis_requests_total").await;
        let is_up = up
            .iter()
            .any(|s| s["metric"]["job"] == "portcullis" && s["value"][1] == "1");
        let counted = requests.iter().any(|s| {
            s["metric"]["upstream"] == "obs"
                && s["metric"]["code"] == "200"
                && s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v >= 2.0)
        });
        if is_up && counted {
            break;
        }
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(&prom.log).unwrap_or_default();
            panic!("not scraped within 30 s\nup: {up:?}\nrequests: {requests:?}\n{log}");
        }
        sleep(Duration::from_millis(500)).await;
    }
    drop(prom);
    p.stop().await;
}

/// Every YAML document of a file under the crate root, as JSON values.
fn yaml_docs(path: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// A pod label or annotation key as Kubernetes discovery spells it in a meta label.
fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The targets Prometheus's Kubernetes pod discovery makes for the one Deployment of
/// `manifest`, as `static_configs` entries: one per container port (init containers
/// included), and one without a port for a container that declares none. The admin port of
/// the container named "portcullis" points at `admin`; every other port at `elsewhere`.
fn pod_targets(
    manifest: &str,
    namespace: &str,
    pod: &str,
    admin: SocketAddr,
    elsewhere: SocketAddr,
) -> Vec<serde_json::Value> {
    use serde_json::{json, Map, Value};
    let docs = yaml_docs(manifest);
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap_or_else(|| panic!("{manifest}: no Deployment"));
    let template = &deployment["spec"]["template"];
    let mut common = Map::new();
    for (key, value) in [
        ("namespace", namespace),
        ("pod_name", pod),
        ("pod_ip", "10.1.2.3"),
        ("pod_phase", "Running"),
        ("pod_ready", "true"),
        ("pod_controller_kind", "ReplicaSet"),
    ] {
        common.insert(format!("__meta_kubernetes_{key}"), json!(value));
    }
    for (kind, field) in [("label", "labels"), ("annotation", "annotations")] {
        if let Some(map) = template["metadata"][field].as_object() {
            for (k, v) in map {
                let k = sanitize(k);
                common.insert(format!("__meta_kubernetes_pod_{kind}_{k}"), v.clone());
                common.insert(
                    format!("__meta_kubernetes_pod_{kind}present_{k}"),
                    json!("true"),
                );
            }
        }
    }
    let spec = &template["spec"];
    let containers = [("containers", "false"), ("initContainers", "true")]
        .into_iter()
        .flat_map(|(field, init)| {
            spec[field]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |c| (c, init))
        });
    let mut targets = Vec::new();
    for (c, init) in containers {
        let mut labels = common.clone();
        labels.insert(
            "__meta_kubernetes_pod_container_name".into(),
            c["name"].clone(),
        );
        labels.insert(
            "__meta_kubernetes_pod_container_image".into(),
            c["image"].clone(),
        );
        labels.insert("__meta_kubernetes_pod_container_init".into(), json!(init));
        let ports = c["ports"].as_array().cloned().unwrap_or_default();
        if ports.is_empty() {
            targets.push(json!({"targets": [elsewhere.to_string()], "labels": labels}));
        }
        for port in ports {
            let mut labels = labels.clone();
            let number = port["containerPort"].as_u64().expect("containerPort");
            labels.insert(
                "__meta_kubernetes_pod_container_port_name".into(),
                port["name"].clone(),
            );
            labels.insert(
                "__meta_kubernetes_pod_container_port_number".into(),
                json!(number.to_string()),
            );
            labels.insert(
                "__meta_kubernetes_pod_container_port_protocol".into(),
                port.get("protocol").cloned().unwrap_or(json!("TCP")),
            );
            let is_admin = c["name"] == "portcullis" && port["name"] == "admin";
            let addr = if is_admin { admin } else { elsewhere };
            targets.push(json!({"targets": [addr.to_string()], "labels": labels}));
        }
    }
    assert!(
        targets.iter().all(|t| t["labels"]
            .as_object()
            .is_some_and(|l| l.values().all(Value::is_string))),
        "{targets:#?}"
    );
    targets
}

/// The shipped Kubernetes scrape job (config/prometheus/kubernetes.yml) keeps portcullis in
/// both layouts of config/k8s/: the egress Deployment's pods (labelled portcullis) and app
/// pods with the sidecar (labelled as the app, portcullis an init container). Debian's
/// Prometheus has no Kubernetes discovery, so the job's own relabel_configs run here over
/// `static_configs` targets that carry what the pod discovery would attach to each container
/// port of the two manifests' pod templates; the admin ports point at two running proxies.
#[tokio::test]
async fn prometheus_keeps_portcullis_in_both_layouts() {
    use serde_json::json;
    let Some(binary) = tool("prometheus", "/usr/bin/prometheus") else {
        return;
    };
    let shipped = yaml_docs("config/prometheus/kubernetes.yml");
    let job = shipped[0]["scrape_configs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["job_name"] == "portcullis"))
        .cloned()
        .expect("kubernetes.yml has a job named portcullis");
    assert!(job["kubernetes_sd_configs"].is_array(), "{job:#}");

    let o = test_origin().await;
    let egress = spawn_proxy(&local_upstream("obs", o.port(), "")).await;
    let sidecar = spawn_proxy(&local_upstream("obs", o.port(), "")).await;
    // Any other port of the pods: nothing listens there, and nothing should try.
    let elsewhere = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut static_configs = pod_targets(
        "config/k8s/egress/egress.yaml",
        "portcullis",
        "portcullis-7d9f-abcde",
        egress.admin,
        elsewhere,
    );
    static_configs.extend(pod_targets(
        "config/k8s/sidecar/sidecar.yaml",
        "shop",
        "checkout-5c8b-fghij",
        sidecar.admin,
        elsewhere,
    ));
    let config = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": job["job_name"],
            "metrics_path": job.get("metrics_path").cloned().unwrap_or(json!("/metrics")),
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "static_configs": static_configs,
            "relabel_configs": job["relabel_configs"],
        }]
    });
    let prom = start_prometheus_with(&binary, &config.to_string()).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let (active, up) = loop {
        let targets = prom_api(&prom, "/api/v1/targets").await;
        let active = targets["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let up = prom_query(&prom, "up").await;
        let all_up = up.len() == 2 && up.iter().all(|s| s["value"][1] == "1");
        if all_up || Instant::now() >= deadline {
            break (active, up);
        }
        sleep(Duration::from_millis(500)).await;
    };
    let mut kept: Vec<(String, String, String, String)> = active
        .iter()
        .map(|t| {
            let l = &t["labels"];
            let s = |k: &str| l[k].as_str().unwrap_or("").to_string();
            (s("job"), s("namespace"), s("app"), s("instance"))
        })
        .collect();
    kept.sort();
    let log = std::fs::read_to_string(&prom.log).unwrap_or_default();
    assert_eq!(
        kept,
        vec![
            (
                "portcullis".to_string(),
                "portcullis".to_string(),
                "portcullis".to_string(),
                egress.admin.to_string()
            ),
            (
                "portcullis".to_string(),
                "shop".to_string(),
                "checkout".to_string(),
                sidecar.admin.to_string()
            ),
        ],
        "kept targets:\n{active:#?}\n{log}"
    );
    assert!(
        up.len() == 2 && up.iter().all(|s| s["value"][1] == "1"),
        "up:\n{up:#?}\n{log}"
    );
    let requests = prom_query(&prom, "portcullis_client_connections").await;
    assert_eq!(requests.len(), 2, "{requests:#?}");
    drop(prom);
    egress.stop().await;
    sidecar.stop().await;
}
