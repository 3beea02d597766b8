//! Addresses and names (issue 15): link-local under `allow_private`, underscore names, a blackholed first address.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::*;

const WITHIN: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A synthetic refusal: status, `Proxy-Status: portcullis; error=<token>`, a one-line body.
fn connect_request(authority: &str) -> Vec<u8> {
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").into_bytes()
}

// ------------------------------------------------------------ link-local under allow_private

/// SPEC §4: link-local addresses stay refused under `allow_private = true` unless the upstream
/// lists the address itself, whether reached through a wildcard or an exact name, in any IPv6
/// spelling, forwarded or tunnelled. Other private addresses stay allowed.
#[tokio::test]
async fn link_local_is_refused_under_allow_private_unless_listed_literally() {
    let o = origin().handler(|_| Reply::ok("origin")).spawn().await;
    let port = o.port();
    let records = [
        ("meta.pay.test", ip("169.254.169.254")),
        ("meta6.pay.test", ip("fe80::1")),
        ("mapped-meta.pay.test", ip("::ffff:169.254.169.254")),
        ("nat64-meta.pay.test", ip("64:ff9b::a9fe:a9fe")),
        ("teredo-meta.pay.test", ip("2001:0:808:808::5601:5601")),
        // A private (not link-local) answer next to a link-local one: refused as a whole.
        ("mixed.pay.test", ip("127.0.0.1")),
        ("mixed.pay.test", ip("169.254.169.254")),
        ("local.pay.test", ip("127.0.0.1")),
        ("metadata.exact.test", ip("169.254.169.254")),
    ];
    let dns = TestDns::spawn(&records).await;
    let rest = format!(
        "[defaults]\nallow_private = true\nconnect_timeout = \"300ms\"\n\
         [[upstream]]\nname = \"wild\"\nhosts = [\"*.pay.test\"]\nports = [{port}]\n\
         [[upstream]]\nname = \"exact\"\nhosts = [\"metadata.exact.test\"]\nports = [{port}]\n\
         [[upstream]]\nname = \"listed\"\nhosts = [\"169.254.169.254\"]\nports = [{port}]\n"
    );
    let p = spawn_proxy_with(&format!("dns_servers = [\"{}\"]", dns.addr), &rest).await;

    let refused = [
        "meta.pay.test",
        "meta6.pay.test",
        "mapped-meta.pay.test",
        "nat64-meta.pay.test",
        "teredo-meta.pay.test",
        "mixed.pay.test",
        "metadata.exact.test",
    ];
    for name in refused {
        let r = proxy_get(p.addr, &format!("http://{name}:{port}/latest/meta-data/")).await;
        assert_refused(&r, 403, "destination_ip_prohibited", name);
        assert!(r.body_text().contains("link-local"), "{name}: {r:?}");
        assert!(dns.queries_for(name) > 0, "{name} was resolved");
        let r = raw_exchange(p.addr, &connect_request(&format!("{name}:{port}")), WITHIN).await;
        assert_refused(
            &r,
            403,
            "destination_ip_prohibited",
            &format!("CONNECT {name}"),
        );
    }
    assert_eq!(
        p.metric("portcullis_denied_total", "reason=\"private_ip\"")
            .await,
        2.0 * refused.len() as f64
    );

    // allow_private still reaches other private addresses.
    let r = proxy_get(p.addr, &format!("http://local.pay.test:{port}/")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        o.connections_accepted(),
        1,
        "only local.pay.test was dialed"
    );

    // Listed literally: policy lets it through to the dial (which cannot reach a metadata
    // service here: whatever the network answers, it is not a policy refusal).
    let r = proxy_get(p.addr, &format!("http://169.254.169.254:{port}/")).await;
    assert_ne!(r.status, 403, "{r:?}");
    assert!(
        !r.header("proxy-status")
            .unwrap_or_default()
            .contains("destination_ip_prohibited"),
        "{r:?}"
    );
}

// ------------------------------------------------------------ underscore names

/// Underscores are legal in DNS names (legacy hosts, SRV-style labels, some cloud-storage
/// buckets) and Smokescreen accepts them on purpose: the name is looked up and reached, by an
/// exact entry and under a wildcard, forwarded and tunnelled.
#[tokio::test]
async fn names_with_underscores_are_resolved_and_reached() {
    let o = origin().handler(|_| Reply::ok("underscore")).spawn().await;
    let port = o.port();
    let localhost = ip("127.0.0.1");
    let dns = TestDns::spawn(&[
        ("legacy_api.pay.test", localhost),
        ("_svc.pay.test", localhost),
        ("bucket_1.store.test", localhost),
    ])
    .await;
    let rest = format!(
        "[defaults]\nallow_private = true\n\
         [[upstream]]\nname = \"wild\"\nhosts = [\"*.pay.test\"]\nports = [{port}]\n\
         [[upstream]]\nname = \"exact\"\nhosts = [\"bucket_1.store.test\"]\nports = [{port}]\n"
    );
    let p = spawn_proxy_with(&format!("dns_servers = [\"{}\"]", dns.addr), &rest).await;
    for name in [
        "legacy_api.pay.test",
        "_svc.pay.test",
        "bucket_1.store.test",
    ] {
        let r = proxy_get(p.addr, &format!("http://{name}:{port}/x")).await;
        assert_eq!(r.status, 200, "{name}: {r:?}");
        assert_eq!(r.body_text(), "underscore", "{name}");
        assert!(dns.queries_for(name) > 0, "{name}: no query was sent");
        let seen = o.requests();
        let host = seen
            .last()
            .and_then(|s| s.header("host"))
            .unwrap_or_default();
        assert_eq!(host, format!("{name}:{port}"));
    }
    let name = "legacy_api.pay.test";
    let r = raw_exchange(p.addr, &connect_request(&format!("{name}:{port}")), WITHIN).await;
    assert_eq!(r.status, 200, "CONNECT {name}: {r:?}");
}

/// TLS origination to an underscore name: the SNI and the certificate check take the name too.
#[tokio::test]
async fn tls_origination_reaches_a_name_with_an_underscore() {
    let name = "secure_api.tls.test";
    let ca = TestCa::new(&format!("underscore {}", std::process::id()));
    let ca_file = ca.write_pem(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")));
    let o = origin()
        .tls(&ca.issue(&[name]))
        .handler(|_| Reply::ok("tls"))
        .spawn()
        .await;
    let dns = TestDns::spawn(&[(name, ip("127.0.0.1"))]).await;
    let rest = format!(
        "[[upstream]]\nname = \"tls\"\nhosts = [\"{name}\"]\nports = [{}]\nallow_private = true\ntls = \"originate\"\nca_file = {:?}\n",
        o.port(),
        ca_file.display().to_string()
    );
    let p = spawn_proxy_with(&format!("dns_servers = [\"{}\"]", dns.addr), &rest).await;
    let r = proxy_get(p.addr, &format!("http://{name}:{}/", o.port())).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_text(), "tls");
    assert_eq!(o.tls_handshake_failures(), 0);
}

// ------------------------------------------------------------ a blackholed first address

/// SPEC §4: a name whose first addresses are blackholed still connects, racing the next
/// address 250 ms after a silent one (happy eyeballs), far within `connect_timeout`. Before,
/// the first address used up the whole `connect_timeout` and the request failed with 504.
#[tokio::test]
async fn a_blackholed_first_address_does_not_use_up_connect_timeout() {
    let o = origin().handler(|_| Reply::ok("second")).spawn().await;
    let port = o.port();
    let hole_a = Blackhole::spawn(ip("127.0.0.2"), port).await;
    let hole_b = Blackhole::spawn(ip("127.0.0.3"), port).await;
    let dns = TestDns::spawn(&[
        ("one-hole.pay.test", hole_a.addr.ip()),
        ("one-hole.pay.test", ip("127.0.0.1")),
        ("two-holes.pay.test", hole_a.addr.ip()),
        ("two-holes.pay.test", hole_b.addr.ip()),
        ("two-holes.pay.test", ip("127.0.0.1")),
        ("only-hole.pay.test", hole_a.addr.ip()),
    ])
    .await;
    let rest = format!(
        "[defaults]\nallow_private = true\n\
         [[upstream]]\nname = \"hole\"\nhosts = [\"only-hole.pay.test\"]\nports = [{port}]\nconnect_timeout = \"1s\"\n\
         [[upstream]]\nname = \"pay\"\nhosts = [\"*.pay.test\"]\nports = [{port}]\nconnect_timeout = \"10s\"\n"
    );
    let p = spawn_proxy_with(&format!("dns_servers = [\"{}\"]", dns.addr), &rest).await;

    // The fixture really is silent: alone, it times out after connect_timeout.
    let r = proxy_get(p.addr, &format!("http://only-hole.pay.test:{port}/")).await;
    assert_refused(&r, 504, "connection_timeout", "only a blackhole");

    for name in ["one-hole.pay.test", "two-holes.pay.test"] {
        let r = proxy_get(p.addr, &format!("http://{name}:{port}/")).await;
        assert_eq!(r.status, 200, "{name}: {r:?}");
        assert_eq!(r.body_text(), "second", "{name}");
    }
    assert_eq!(o.connections_accepted(), 2);
}
