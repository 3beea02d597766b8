//! Interception end to end (SPEC §9): apps that keep `https://` URLs and `HTTPS_PROXY`, and
//! trust only the intercept CA — curl, Python `requests`, Java `HttpClient` — get the pool,
//! safe retries and lineage of TLS origination, against a TLS origin behind the forgetful
//! firewall of the pool tests.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::*;

/// The firewall in front of the bank forgets a flow idle this long.
const FIREWALL_LIMIT: Duration = Duration::from_secs(1);
/// Waits for conditions are bounded by this.
const WAIT: Duration = Duration::from_secs(10);

/// A TLS origin ("the bank") behind the firewall, and portcullis intercepting CONNECTs to it.
struct Bank {
    origin: Origin,
    firewall: Firewall,
    proxy: Proxy,
    ca: InterceptCaFiles,
}

impl Bank {
    /// `settings` go into the bank's `[[upstream]]`; the firewall forgets flows idle
    /// [`FIREWALL_LIMIT`].
    async fn spawn(settings: &str) -> Bank {
        Bank::spawn_behind(settings, FIREWALL_LIMIT).await
    }

    /// The same behind a firewall that forgets flows idle `limit`.
    async fn spawn_behind(settings: &str, limit: Duration) -> Bank {
        let origin_ca = TestCa::new("bank-ca");
        let origin = origin()
            .handler(|r| Reply::ok(format!("{} {} {}", r.method, r.target, r.body_text())))
            .tls(&origin_ca.issue(&["localhost"]))
            .spawn()
            .await;
        let firewall = Firewall::spawn(origin.addr, limit).await;
        let ca = InterceptCaFiles::new(&["localhost"]);
        let bank_ca = origin_ca.write_pem(&ca.dir);
        let proxy = spawn_proxy_with(
            &ca.proxy_lines(),
            &format!(
                "[[upstream]]\nname = \"bank\"\nhosts = [\"localhost\"]\nports = [{}]\nconnect = \"intercept\"\nca_file = {:?}\nallow_private = true\n{settings}\n",
                firewall.addr.port(),
                bank_ca.display().to_string()
            ),
        )
        .await;
        Bank {
            origin,
            firewall,
            proxy,
            ca,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.firewall.addr.port())
    }

    fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }

    fn ca_pem(&self) -> PathBuf {
        self.ca.cert.clone()
    }

    async fn curl(&self, args: &[&str], url: &str) -> CurlResult {
        let ca = self.ca_pem();
        let mut all = vec!["-x", &*Box::leak(self.proxy_url().into_boxed_str())];
        all.extend(["--cacert", ca.to_str().expect("utf-8 path")]);
        all.extend_from_slice(args);
        all.push(url);
        curl(&all).await
    }

    /// The requests the origin saw for `target`.
    fn seen(&self, target: &str) -> Vec<SeenRequest> {
        self.origin
            .requests()
            .into_iter()
            .filter(|r| r.target == target)
            .collect()
    }

    /// Wait until the firewall has forgotten a flow since it had forgotten `before` and
    /// remembers none: every pooled connection to the bank is now a forgotten flow. `before`
    /// is read before the request that pooled the connection: a client process slow to exit
    /// can hand back control after the firewall already forgot its flow, and a count read
    /// then would wait for one more that never comes.
    async fn forgotten_since(&self, before: usize) {
        let fw = &self.firewall;
        let all_forgotten = || fw.flows_forgotten() > before && fw.flows_open() == 0;
        assert!(
            eventually(WAIT, all_forgotten).await,
            "the firewall forgot {} flows (had {before}) and still remembers {}",
            fw.flows_forgotten(),
            fw.flows_open()
        );
    }
}

/// Two tunnels from two client processes share one pooled TLS connection to the origin, for
/// each of curl, Python requests and Java HttpClient; every request is counted as the
/// bank's, and the client saw the intercept CA's leaf (it trusts nothing else). The firewall
/// here keeps idle flows for a minute: a JVM takes longer to start than the usual limit.
#[tokio::test]
async fn tunnels_of_separate_clients_share_one_upstream_connection() {
    let b = Bank::spawn_behind("", Duration::from_secs(60)).await;
    for path in ["/curl-1", "/curl-2"] {
        let r = b.curl(&[], &b.url(path)).await;
        assert_eq!((r.connect_status, r.status), (200, 200), "{r:?}");
        assert_eq!(r.body_text(), format!("GET {path} "));
    }
    for path in ["/py-1", "/py-2"] {
        let got = python_requests(
            &b.proxy_url(),
            Some(&b.ca_pem()),
            &[AppRequest::get(&b.url(path))],
        )
        .await;
        assert_eq!(got[0].status, Some(200), "{got:?}");
        assert_eq!(
            got[0].body.as_deref(),
            Some(format!("GET {path} ").as_str())
        );
    }
    let store = java_trust_store(&b.ca_pem(), &b.ca.dir).await;
    // GETs: a plain POST would rightly go out on a fresh connection, the pooled one having
    // idled past unsafe_reuse_max_idle while the JVM started.
    for path in ["/java-1", "/java-2"] {
        let got = java_http_client(b.proxy.addr, &store, &[AppRequest::get(&b.url(path))]).await;
        assert_eq!(got[0].status, Some(200), "{got:?}");
        assert_eq!(
            got[0].body.as_deref(),
            Some(format!("GET {path} ").as_str())
        );
    }
    let seen = b.origin.requests();
    assert_eq!(seen.len(), 6, "{seen:#?}");
    assert!(
        seen.iter().all(|r| r.conn_id == seen[0].conn_id),
        "six tunnels, one upstream TLS connection: {:?}",
        seen.iter().map(|r| r.conn_id).collect::<Vec<_>>()
    );
    assert_eq!(b.origin.connections_accepted(), 1);
    // Header names reach the bank as each client spelled them (SPEC §4), through interception
    // as through origination: curl's and requests' `User-Agent`, not `user-agent`.
    for r in &seen[..4] {
        let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"User-Agent"), "{} {names:?}", r.target);
    }
    assert_eq!(
        b.proxy
            .metric(
                "portcullis_requests_total",
                "upstream=\"bank\",method=\"GET\",code=\"200\""
            )
            .await,
        6.0
    );
    assert_eq!(
        b.proxy
            .metric(
                "portcullis_intercepts_total",
                "upstream=\"bank\",result=\"ok\""
            )
            .await,
        6.0
    );
    b.proxy.stop().await;
}

/// A GET on a pooled connection the firewall has silently dropped meets its reset, is sent
/// again on a new connection and succeeds: the app never sees the stale connection.
#[tokio::test]
async fn a_get_on_a_dropped_connection_is_retried_and_succeeds() {
    // Every client must meet a dropped flow: learning would take the firewall's limit from
    // the first one (SPEC §11) and close the later clients' pooled connections before it.
    let b = Bank::spawn("learn_idle_limit = false").await;
    let store = java_trust_store(&b.ca_pem(), &b.ca.dir).await;
    for client in ["curl", "python", "java"] {
        let (warm, get) = (format!("/{client}/warm"), format!("/{client}/get"));
        let fetch = |path: String| {
            let b = &b;
            let store = &store;
            async move {
                let url = b.url(&path);
                match client {
                    "curl" => {
                        let r = b.curl(&[], &url).await;
                        (r.status, r.body_text())
                    }
                    "python" => {
                        let r = python_requests(
                            &b.proxy_url(),
                            Some(&b.ca_pem()),
                            &[AppRequest::get(&url)],
                        )
                        .await;
                        (
                            r[0].status.unwrap_or(0),
                            r[0].body.clone().unwrap_or_default(),
                        )
                    }
                    _ => {
                        let r =
                            java_http_client(b.proxy.addr, store, &[AppRequest::get(&url)]).await;
                        (
                            r[0].status.unwrap_or(0),
                            r[0].body.clone().unwrap_or_default(),
                        )
                    }
                }
            }
        };
        let forgotten = b.firewall.flows_forgotten();
        assert_eq!(
            fetch(warm.clone()).await,
            (200, format!("GET {warm} ")),
            "{client}"
        );
        // The connection that served it is pooled; the firewall forgets it.
        b.forgotten_since(forgotten).await;
        let resets = b.firewall.resets_sent();
        let retries = b
            .proxy
            .metric("portcullis_retries_total", "upstream=\"bank\"")
            .await;
        assert_eq!(
            fetch(get.clone()).await,
            (200, format!("GET {get} ")),
            "{client}: the GET after the drop"
        );
        assert_eq!(
            b.seen(&get).len(),
            1,
            "{client}: the GET reached the bank once"
        );
        assert_eq!(
            b.firewall.resets_sent(),
            resets + 1,
            "{client}: it met the dropped flow"
        );
        assert_eq!(
            b.proxy
                .metric("portcullis_retries_total", "upstream=\"bank\"")
                .await,
            retries + 1.0,
            "{client}: and was sent again"
        );
    }
    b.proxy.stop().await;
}

/// A POST without `Idempotency-Key` could not be retried after it was written, so it is not
/// put on a connection idle past `unsafe_reuse_max_idle`: it goes out on a fresh one and
/// never meets the firewall's reset.
#[tokio::test]
async fn a_plain_post_on_a_long_idle_connection_goes_out_fresh() {
    let b = Bank::spawn("unsafe_reuse_max_idle = \"300ms\"").await;
    let store = java_trust_store(&b.ca_pem(), &b.ca.dir).await;
    for client in ["curl", "python", "java"] {
        let pay = format!("/{client}/pay");
        let forgotten = b.firewall.flows_forgotten();
        let warm = python_requests(
            &b.proxy_url(),
            Some(&b.ca_pem()),
            &[AppRequest::get(&b.url("/warm"))],
        )
        .await;
        assert_eq!(warm[0].status, Some(200), "{warm:?}");
        b.forgotten_since(forgotten).await;
        let (accepted, resets) = (b.origin.connections_accepted(), b.firewall.resets_sent());
        let status = match client {
            "curl" => b.curl(&["-d", "amount=10"], &b.url(&pay)).await.status,
            "python" => python_requests(
                &b.proxy_url(),
                Some(&b.ca_pem()),
                &[AppRequest::post(&b.url(&pay), "amount=10")],
            )
            .await[0]
                .status
                .unwrap_or(0),
            _ => java_http_client(
                b.proxy.addr,
                &store,
                &[AppRequest::post(&b.url(&pay), "amount=10")],
            )
            .await[0]
                .status
                .unwrap_or(0),
        };
        assert_eq!(status, 200, "{client}");
        assert_eq!(b.seen(&pay).len(), 1, "{client}: one payment, not two");
        assert_eq!(
            b.origin.connections_accepted(),
            accepted + 1,
            "{client}: dialed fresh"
        );
        assert_eq!(
            b.firewall.resets_sent(),
            resets,
            "{client}: the payment met no forgotten flow"
        );
    }
    b.proxy.stop().await;
}

/// The upstream's certificate is checked against the system roots plus `ca_file`: one signed
/// by an unknown CA is answered inside the tunnel with 502 `tls_certificate_error`.
#[tokio::test]
async fn an_untrusted_upstream_certificate_is_a_502_inside_the_tunnel() {
    let rogue = origin()
        .tls(&TestCa::new("rogue-ca").issue(&["localhost"]))
        .spawn()
        .await;
    let ca = InterceptCaFiles::new(&["localhost"]);
    let p = spawn_proxy_with(
        &ca.proxy_lines(),
        &format!(
            "[[upstream]]\nname = \"rogue\"\nhosts = [\"localhost\"]\nports = [{}]\nconnect = \"intercept\"\nallow_private = true\n",
            rogue.port()
        ),
    )
    .await;
    let url = format!("https://localhost:{}/charge", rogue.port());
    let r = curl(&[
        "-x",
        &format!("http://{}", p.addr),
        "--cacert",
        ca.cert.to_str().expect("utf-8"),
        &url,
    ])
    .await;
    assert_eq!((r.connect_status, r.status), (200, 502), "{r:?}");
    assert!(
        r.header("proxy-status")
            .is_some_and(|v| v.contains("error=tls_certificate_error")),
        "{r:?}"
    );
    let got = python_requests(
        &format!("http://{}", p.addr),
        Some(&ca.cert),
        &[AppRequest::get(&url)],
    )
    .await;
    assert_eq!(got[0].status, Some(502), "{got:?}");
    assert!(rogue.requests().is_empty());
    p.stop().await;
}

/// A client whose TLS server name is not the CONNECT host is refused during the handshake
/// (no certificate is made for that name), and counted.
#[tokio::test]
async fn a_server_name_other_than_the_connect_host_is_refused() {
    let b = Bank::spawn("").await;
    let mut conn = ProxyConn::connect(b.proxy.addr).await;
    let authority = format!("localhost:{}", b.firewall.addr.port());
    let r = conn
        .send(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let connector = tokio_rustls::TlsConnector::from(b.ca.client_config());
    let name = rustls::pki_types::ServerName::try_from("other.localhost").expect("name");
    let handshake = tokio::time::timeout(WAIT, connector.connect(name, conn.into_stream())).await;
    assert!(
        matches!(handshake, Ok(Err(_))),
        "the handshake must fail: {handshake:?}"
    );
    assert_eq!(
        b.proxy
            .metric(
                "portcullis_intercepts_total",
                "upstream=\"bank\",result=\"sni_mismatch\""
            )
            .await,
        1.0
    );
    assert!(b.origin.requests().is_empty());
    b.proxy.stop().await;
}

/// Inside an intercepted tunnel, a request must be for the CONNECT host: 421 otherwise.
#[tokio::test]
async fn a_request_for_another_host_inside_an_intercepted_tunnel_is_421() {
    let b = Bank::spawn("").await;
    let mut conn = ProxyConn::connect(b.proxy.addr).await;
    let authority = format!("localhost:{}", b.firewall.addr.port());
    let r = conn
        .send(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let connector = tokio_rustls::TlsConnector::from(b.ca.client_config());
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector
        .connect(name, conn.into_stream())
        .await
        .expect("handshake");
    let r = exchange_on(
        &mut tls,
        b"GET /x HTTP/1.1\r\nHost: api.elsewhere.example\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(r.status, 421, "{r:?}");
    assert!(
        r.header("proxy-status")
            .is_some_and(|v| v.contains("http_request_denied")),
        "{r:?}"
    );
    let ok = format!("GET /y HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let r = exchange_on(&mut tls, ok.as_bytes(), WAIT).await;
    assert_eq!(
        (r.status, r.body_text()),
        (200, "GET /y ".to_string()),
        "{r:?}"
    );
    b.proxy.stop().await;
}

/// The first incident, replayed through interception: a mixed schedule of GETs, keyed and
/// plain POSTs from one Python session, with pauses below and beyond the firewall's limit
/// and portcullis's default idle timeout (30 s) far above it. Every request succeeds, each
/// reaches the bank exactly once, though the firewall did drop pooled flows.
#[tokio::test]
async fn incident_1_through_interception_no_failure_and_no_duplicate_payment() {
    let b = Bank::spawn("unsafe_reuse_max_idle = \"300ms\"").await;
    // Pauses (seconds): well below the limit, or well past it — the gaps are the test.
    let gaps = [
        0.0, 0.1, 1.6, 0.0, 1.7, 0.2, 0.0, 1.6, 0.1, 1.8, 0.0, 0.1, 1.6, 0.2, 1.7,
    ];
    let requests: Vec<AppRequest> = gaps
        .iter()
        .enumerate()
        .map(|(i, gap)| {
            let url = b.url(&format!("/step/{i}"));
            let r = match i % 3 {
                0 => AppRequest::get(&url),
                1 => AppRequest::post(&url, &format!("payment-{i}"))
                    .header("Idempotency-Key", &format!("k-{i}")),
                _ => AppRequest::post(&url, &format!("payment-{i}")),
            };
            r.after(*gap)
        })
        .collect();
    let got = python_requests(&b.proxy_url(), Some(&b.ca_pem()), &requests).await;
    let statuses: Vec<Option<u16>> = got.iter().map(|r| r.status).collect();
    assert!(statuses.iter().all(|s| *s == Some(200)), "{got:#?}");
    for i in 0..gaps.len() {
        assert_eq!(
            b.seen(&format!("/step/{i}")).len(),
            1,
            "request {i} reached the bank once"
        );
    }
    assert!(
        b.firewall.flows_forgotten() >= 1,
        "the firewall never dropped a pooled flow"
    );
    b.proxy.stop().await;
}

/// Without `connect = "intercept"` a CONNECT stays a byte tunnel: the client completes TLS
/// with the origin itself and sees the origin's own certificate (trusting only the origin's
/// CA works; trusting only the intercept CA does not).
#[tokio::test]
async fn without_intercept_the_client_sees_the_origins_own_certificate() {
    let origin_ca = TestCa::new("own-ca");
    let o = origin().tls(&origin_ca.issue(&["localhost"])).spawn().await;
    let ca = InterceptCaFiles::new(&["localhost"]);
    let p = spawn_proxy_with(
        &ca.proxy_lines(),
        &format!(
            "[[upstream]]\nname = \"plain\"\nhosts = [\"localhost\"]\nports = [{}]\nallow_private = true\n",
            o.port()
        ),
    )
    .await;
    let origin_pem = origin_ca.write_pem(&ca.dir);
    let url = format!("https://localhost:{}/own", o.port());
    let proxy = format!("http://{}", p.addr);
    let r = curl(&[
        "-x",
        &proxy,
        "--cacert",
        origin_pem.to_str().expect("utf-8"),
        &url,
    ])
    .await;
    assert_eq!((r.connect_status, r.status), (200, 200), "{r:?}");
    let r = curl(&[
        "-x",
        &proxy,
        "--cacert",
        ca.cert.to_str().expect("utf-8"),
        &url,
    ])
    .await;
    assert_eq!(
        r.status, 0,
        "the intercept CA must not verify the origin's certificate: {r:?}"
    );
    assert_eq!(p.metric("portcullis_intercepts_total", "").await, 0.0);
    p.stop().await;
}

/// The real binary: a client that does not trust the intercept CA fails its handshake and
/// the operator reads one WARN line saying which client and which CA (not one per attempt);
/// a client that trusts it is logged with `mode="intercept"`, its CONNECT and its request.
#[tokio::test]
async fn an_untrusting_client_fails_with_one_warn_and_a_trusting_one_is_logged_as_intercept() {
    let origin_ca = TestCa::new("logged-ca");
    let o = origin().tls(&origin_ca.issue(&["localhost"])).spawn().await;
    let ca = InterceptCaFiles::new(&["localhost"]);
    let origin_pem = origin_ca.write_pem(&ca.dir);
    let dir = scratch("intercept-log");
    let rest = format!(
        "[[upstream]]\nname = \"bank\"\nhosts = [\"localhost\"]\nports = [{}]\nconnect = \"intercept\"\nca_file = {:?}\nallow_private = true\n",
        o.port(),
        origin_pem.display().to_string()
    );
    // `rest` follows the harness's [proxy] section: the CA lines go first, into it.
    let text = format!("{}{rest}", ca.proxy_lines());
    let p = start(&dir, &text, &["--log-format", "json"], &[]).await;
    let proxy = format!("http://{}", p.proxy);
    let url = format!("https://localhost:{}/pay", o.port());
    for _ in 0..2 {
        // System roots only: the leaf is refused.
        let r = curl(&["-x", &proxy, &url]).await;
        assert_eq!(r.status, 0, "{r:?}");
        assert_eq!(
            r.exit_code, 60,
            "curl: peer certificate cannot be authenticated: {r:?}"
        );
    }
    let rejected = "upstream=\"bank\",result=\"client_rejected_certificate\"";
    assert_eq!(
        p.wait_metric("portcullis_intercepts_total", rejected, |v| v >= 2.0)
            .await,
        2.0
    );
    let warns: Vec<String> = p
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("\"WARN\"") && l.contains("127.0.0.1"))
        .collect();
    assert_eq!(
        warns.len(),
        1,
        "one WARN for the client:\n{}",
        p.stderr_text()
    );
    assert!(
        warns[0].contains(&ca.cert.display().to_string()),
        "{}",
        warns[0]
    );

    let r = curl(&[
        "-x",
        &proxy,
        "--cacert",
        ca.cert.to_str().expect("utf-8"),
        &url,
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let line = p
        .wait_line(|l| l.contains("\"access\"") && l.contains("\"/pay\""))
        .await;
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON access line");
    assert_eq!(v["mode"], "intercept", "{v}");
    assert_eq!(v["method"], "GET", "{v}");
    assert_eq!(v["attempts"], 1, "{v}");
    assert_eq!(v["upstream"], "bank", "{v}");
    assert!(v["conn_id"].as_u64().is_some_and(|id| id > 0), "{v}");
    let connect = p
        .wait_line(|l| {
            l.contains("\"access\"") && l.contains("\"CONNECT\"") && l.contains("\"error\":\"-\"")
        })
        .await;
    assert!(connect.contains("\"mode\":\"intercept\""), "{connect}");
}
