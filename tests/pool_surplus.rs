//! Bursts above `max_idle` reuse the surplus instead of dialing again (issue 17, SPEC §5).

mod support;

use std::time::Duration;

use tokio::task::JoinSet;

use support::*;

const WITHIN: Duration = Duration::from_secs(10);
const BURST: usize = 8;
const MAX_IDLE: usize = 2;

/// Bursts of 8 concurrent requests, one after the other, to an upstream with `max_idle = 2`:
/// each burst needs 8 connections, and between bursts 8 are idle. Before, the 6 above
/// `max_idle` were closed as they came back and each burst dialed 6 more (26 connections for
/// four bursts, each a TLS handshake against a real provider); now the first burst's 8 serve
/// them all, and a second after the load stops the pool is back to `max_idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_above_max_idle_do_not_dial_again() {
    // The delay makes each burst's requests overlap, so that each needs its own connection.
    let o = origin()
        .handler(|_| Reply::ok("ok").delay(Duration::from_millis(300)))
        .spawn()
        .await;
    let p = spawn_proxy(&local_upstream(
        "o",
        o.port(),
        &format!("max_connections = 16\nmax_idle = {MAX_IDLE}\nidle_timeout = \"60s\""),
    ))
    .await;
    let url = o.url("/");
    for burst in 0..4 {
        let mut clients = JoinSet::new();
        for _ in 0..BURST {
            let (proxy, url) = (p.addr, url.clone());
            clients.spawn(async move { proxy_get(proxy, &url).await.status });
        }
        while let Some(status) = clients.join_next().await {
            assert_eq!(status.expect("client task"), 200, "burst {burst}");
        }
    }
    assert!(o.wait_for_requests(4 * BURST, WITHIN).await);
    assert!(
        o.connections_accepted() <= BURST,
        "{} upstream connections for bursts of {BURST}",
        o.connections_accepted()
    );
    assert_eq!(p.closed_for("o", "pool_full").await, 0.0);
    // Once the load stops, the surplus is trimmed back to max_idle (within a second).
    let idle = o.connections_accepted() - MAX_IDLE;
    assert!(
        eventually(WITHIN, || p.idle_count() == MAX_IDLE).await,
        "idle: {}",
        p.idle_count()
    );
    assert_eq!(p.closed_for("o", "pool_full").await, idle as f64);
    assert!(o.wait_for_open_connections(MAX_IDLE, WITHIN).await);
}
