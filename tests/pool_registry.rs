//! The pool registry keeps no state for destinations nobody uses (issue 15, SPEC §5): vacant pools are forgotten.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use tokio::task::JoinSet;

use support::*;

const WITHIN: Duration = Duration::from_secs(10);

/// Distinct names per kind of failure, sent over this many keep-alive connections at once.
const NAMES: usize = 10_000;
const CLIENTS: usize = 8;

/// Tens of thousands of distinct names under a wildcard, each seen once: half do not resolve
/// (NXDOMAIN), half resolve to a private address the upstream may not reach. Before, each
/// left a pool (and its reaper task) in the registry for ever; now nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_seen_once_leave_no_pool_behind() {
    let dns = TestDns::spawn(&[]).await;
    dns.answer_under(".priv.test", "10.1.2.3".parse::<IpAddr>().unwrap());
    let rest = "[[upstream]]\nname = \"nx\"\nhosts = [\"*.nx.test\"]\nports = [80]\n\
                [[upstream]]\nname = \"priv\"\nhosts = [\"*.priv.test\"]\nports = [80]\n";
    let p = spawn_proxy_with(&format!("dns_servers = [\"{}\"]", dns.addr), rest).await;
    let mut clients = JoinSet::new();
    for c in 0..CLIENTS {
        let proxy = p.addr;
        clients.spawn(async move {
            let mut conn = ProxyConn::connect(proxy).await;
            let mut seen = (0, 0);
            for i in (c..NAMES).step_by(CLIENTS) {
                for (suffix, status) in [("nx.test", 502), ("priv.test", 403)] {
                    let r = conn.get(&format!("http://n{i}.{suffix}/")).await;
                    assert_eq!(r.status, status, "n{i}.{suffix}: {r:?}");
                    if status == 502 {
                        seen.0 += 1;
                    } else {
                        seen.1 += 1;
                    }
                }
            }
            seen
        });
    }
    let mut total = (0, 0);
    while let Some(done) = clients.join_next().await {
        let (nx, private) = done.expect("client task");
        total = (total.0 + nx, total.1 + private);
    }
    assert_eq!(total, (NAMES, NAMES));
    assert!(dns.queries() >= 2 * NAMES, "every name was looked up");
    assert_eq!(
        p.metric("portcullis_denied_total", "reason=\"private_ip\"")
            .await,
        NAMES as f64
    );
    let registry = &p.handle().shared.pools;
    assert!(
        eventually(WITHIN, || registry.is_empty()).await,
        "{} pools left in the registry",
        registry.len()
    );
    let doc = p.pools().await;
    assert_eq!(doc["pools"].as_array().map(Vec::len), Some(0), "{doc}");
}

/// A pool in normal use stays while its connection is pooled, and is forgotten once the
/// reaper closes that connection at `idle_timeout`; the next request makes a new one.
#[tokio::test]
async fn a_pool_is_forgotten_once_its_connection_idles_out() {
    let o = origin().spawn().await;
    let p = spawn_proxy(&local_upstream(
        "local",
        o.port(),
        "idle_timeout = \"1s\"\nmax_lifetime = \"30s\"",
    ))
    .await;
    let url = format!("http://127.0.0.1:{}/", o.port());
    assert_eq!(proxy_get(p.addr, &url).await.status, 200);
    let doc = p.pools().await;
    let pools = doc["pools"].as_array().cloned().unwrap_or_default();
    assert_eq!(pools.len(), 1, "{doc}");
    assert_eq!(pools[0]["idle"], 1, "{doc}");

    let registry = &p.handle().shared.pools;
    assert!(
        eventually(WITHIN, || registry.is_empty()).await,
        "the pool outlived its last connection: {:?}",
        p.handle()
            .shared
            .pools
            .snapshot()
            .iter()
            .map(|(k, s)| (k.target.authority(), s.idle, s.busy))
            .collect::<Vec<_>>()
    );
    assert!(o.wait_for_open_connections(0, WITHIN).await);
    let doc = p.pools().await;
    assert_eq!(doc["pools"].as_array().map(Vec::len), Some(0), "{doc}");
    assert_eq!(
        p.closed_for("local", "idle_timeout").await,
        1.0,
        "closed by the reaper, as idle"
    );

    assert_eq!(proxy_get(p.addr, &url).await.status, 200);
    assert_eq!(registry.len(), 1, "a new pool for the next request");
    assert_eq!(o.connections_accepted(), 2);
}
