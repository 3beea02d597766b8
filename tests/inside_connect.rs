//! Plain HTTP sent into a CONNECT to an origination upstream (SPEC §9): clients that tunnel
//! every request (Node's undici `ProxyAgent`, `curl -p`) get origination — TLS to the
//! provider, the pool, retries and one access line per request — instead of "other side
//! closed"; a TLS client in the same kind of tunnel still gets its byte tunnel; and a request
//! for another host inside the tunnel is refused with 421.

mod support;

use std::net::{IpAddr, SocketAddr};

use support::*;

/// A TLS origin for `names` and an `[[upstream]]` originating TLS to it on its port, trusting
/// the test CA; (origin, upstream text).
async fn tls_origin(ca: &TestCa, names: &[&str], dir_name: &str, hosts: &str) -> (Origin, String) {
    let o = origin()
        .handler(|r| Reply::ok(format!("{} {} via tls", r.method, r.target)))
        .tls(&ca.issue(names))
        .spawn()
        .await;
    let dir = scratch(dir_name);
    let ca_file = ca.write_pem(&dir);
    let upstream = format!(
        "[[upstream]]\nname = \"orig\"\nhosts = [{hosts}]\nports = [{}]\ntls = \"originate\"\nallow_private = true\nca_file = \"{}\"\n",
        o.port(),
        ca_file.display()
    );
    (o, upstream)
}

#[tokio::test]
async fn curl_tunnelling_plain_http_gets_origination_and_one_pooled_tls_connection() {
    let ca = TestCa::new("inside-ca");
    let (o, upstream) = tls_origin(&ca, &["localhost"], "inside-curl", "\"localhost\"").await;
    let p = spawn_proxy(&upstream).await;
    let proxy = format!("http://{}", p.addr);
    for path in ["/one", "/two"] {
        let url = format!("http://localhost:{}{path}", o.port());
        // -p: CONNECT localhost:PORT, then the plain-text request inside the tunnel.
        let r = curl(&["-p", "-x", &proxy, &url]).await;
        assert_eq!((r.connect_status, r.status), (200, 200), "{r:?}");
        assert_eq!(r.body_text(), format!("GET {path} via tls"));
    }
    let seen = o.requests();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(
        seen[0].conn_id, seen[1].conn_id,
        "two tunnels, one pooled TLS connection upstream"
    );
    assert_eq!(seen[1].conn_request_index, 1);
    let host = format!("localhost:{}", o.port());
    assert_eq!(seen[0].header("host"), Some(host.as_str()));
    assert_eq!(seen[0].header("via"), Some("1.1 portcullis"));
    assert_eq!(
        p.metric(
            "portcullis_requests_total",
            "upstream=\"orig\",method=\"GET\",code=\"200\""
        )
        .await,
        2.0
    );
    p.stop().await;
}

#[tokio::test]
async fn a_tls_client_in_a_tunnel_to_an_originating_upstream_still_gets_the_origins_certificate() {
    let ca = TestCa::new("inside-tls-ca");
    let (o, upstream) = tls_origin(&ca, &["localhost"], "inside-tls", "\"localhost\"").await;
    let p = spawn_proxy(&upstream).await;
    let ca_file = ca.write_pem(&scratch("inside-tls-client"));
    let url = format!("https://localhost:{}/e2e", o.port());
    let r = curl(&[
        "-x",
        &format!("http://{}", p.addr),
        "--cacert",
        ca_file.to_str().expect("utf-8 path"),
        &url,
    ])
    .await;
    assert_eq!((r.connect_status, r.status), (200, 200), "{r:?}");
    assert_eq!(r.body_text(), "GET /e2e via tls");
    // End to end: the request went through the tunnel, not the pool.
    assert_eq!(
        p.metric("portcullis_requests_total", "method=\"GET\"")
            .await,
        0.0
    );
    p.stop().await;
}

#[tokio::test]
async fn a_request_for_another_host_inside_the_tunnel_is_refused_with_421() {
    let ca = TestCa::new("inside-421-ca");
    let (o, upstream) = tls_origin(&ca, &["localhost"], "inside-421", "\"localhost\"").await;
    let p = spawn_proxy(&upstream).await;
    let mut conn = ProxyConn::connect(p.addr).await;
    let authority = format!("localhost:{}", o.port());
    let r = conn
        .send(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = conn
        .send(b"GET /steal HTTP/1.1\r\nHost: other.example\r\n\r\n")
        .await;
    assert_eq!(r.status, 421, "{r:?}");
    assert!(
        r.header("proxy-status")
            .is_some_and(|v| v.contains("error=http_request_denied")),
        "{r:?}"
    );
    // The tunnel stays usable for its own host.
    let r = conn
        .send(format!("GET /mine HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_text(), "GET /mine via tls");
    assert_eq!(
        o.requests().len(),
        1,
        "only the tunnel's own host was reached"
    );
    p.stop().await;
}

/// undici's default agent sends `CONNECT api.pay.test:80` for `http://api.pay.test/…`: the
/// upstream allows only 443 and originates TLS, so portcullis answers the CONNECT itself and
/// sends the requests inside to port 443 with TLS, as it would the absolute-form requests.
#[tokio::test]
async fn undici_default_proxy_agent_reaches_an_originating_upstream() {
    let ip: IpAddr = [127, 0, 0, 77].into();
    let ca = TestCa::new("undici-ca");
    let o = origin()
        .handler(|r| Reply::ok(format!("{} {} {}", r.method, r.target, r.body_text())))
        .tls(&ca.issue(&["api.pay.test"]))
        .bind(SocketAddr::new(ip, 443))
        .spawn()
        .await;
    let dns = TestDns::spawn(&[("api.pay.test", ip)]).await;
    let dir = scratch("inside-undici");
    let ca_file = ca.write_pem(&dir);
    let p = spawn_proxy_with(
        &format!("dns_servers = [\"{}\"]", dns.addr),
        &format!(
            "[[upstream]]\nname = \"pay\"\nhosts = [\"api.pay.test\"]\nports = [443]\ntls = \"originate\"\nallow_private = true\nca_file = \"{}\"\n",
            ca_file.display()
        ),
    )
    .await;
    let proxy = format!("http://{}", p.addr);
    let got = undici_request(&proxy, "GET", "http://api.pay.test/v1/balance", None).await;
    assert_eq!(got.status, Some(200), "{got:?}");
    assert_eq!(got.body.as_deref(), Some("GET /v1/balance "));
    let got = undici_request(
        &proxy,
        "POST",
        "http://api.pay.test/v1/charges",
        Some("amount=1"),
    )
    .await;
    assert_eq!(got.status, Some(200), "{got:?}");
    assert_eq!(got.body.as_deref(), Some("POST /v1/charges amount=1"));
    let seen = o.requests();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[0].header("host"), Some("api.pay.test"));
    assert_eq!(
        seen[0].conn_id, seen[1].conn_id,
        "one pooled TLS connection"
    );
    p.stop().await;
}
