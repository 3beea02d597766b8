//! The TLS proxy listener (SPEC §10): after the handshake it serves exactly like the plain one
//! (forwarding, CONNECT, every refusal), over TLS 1.2 and 1.3, for curl and Python clients;
//! client certificates choose the `[[client]]` (SPIFFE URI SANs, DNS names, CNs); refused
//! certificates fail the handshake, are counted and leave nothing behind; hostile clients lose
//! their connection slot after `header_read_timeout`; a reload rotates the files.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::version::{TLS12, TLS13};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use support::*;

const WITHIN: Duration = Duration::from_secs(10);
const SPIFFE: &str = "spiffe://prod/ns/payments/sa/connector";
const HANDSHAKES: &str = "portcullis_client_tls_handshakes_total";

/// The proxy's own certificate and, optionally, the CA of its clients, written to files.
struct Pki {
    dir: PathBuf,
    /// Issues the proxy's certificate: clients trust it.
    proxy_ca: TestCa,
    cert: PathBuf,
    key: PathBuf,
    /// Issues client certificates, named by `client_ca`.
    client_ca: TestCa,
    client_ca_file: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = scratch(name);
        let proxy_ca = TestCa::new("proxy-ca");
        let (cert, key) = proxy_ca
            .issue(&["localhost", "127.0.0.1"])
            .write_pem(&dir, "proxy");
        let client_ca = TestCa::new("client-ca");
        let client_ca_file = client_ca.write_pem(&dir);
        Pki {
            dir,
            proxy_ca,
            cert,
            key,
            client_ca,
            client_ca_file,
        }
    }

    /// `[proxy]` lines for a TLS listener on port 0; with `mtls`, client certificates required.
    fn proxy_lines(&self, mtls: bool) -> String {
        let mut lines = format!(
            "tls_listen = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            self.cert, self.key
        );
        if mtls {
            lines += &format!("client_ca = {:?}\n", self.client_ca_file);
        }
        lines
    }

    /// Writes `portcullis.toml` for reload tests: the mTLS listener, upstream `local` to
    /// `port`, and the `[[client]]` whose certificate names the SPIFFE ID; returns its path.
    fn write_spiffe_config(&self, port: u16) -> std::path::PathBuf {
        let config = self.dir.join("portcullis.toml");
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{}\n\
             {}[[client]]\nname = \"connector\"\ncert_names = [\"{SPIFFE}\"]\nupstreams = [\"local\"]\n",
            self.proxy_lines(true),
            local_upstream("local", port, "")
        );
        std::fs::write(&config, text).expect("write config");
        config
    }

    /// A client config that trusts the proxy and presents `cert`.
    fn client(&self, cert: &IssuedCert) -> std::sync::Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.proxy_ca.der()).expect("root");
        let config = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(cert.chain.clone(), cert.key())
            .expect("client key");
        std::sync::Arc::new(config)
    }

    /// Writes a client certificate's files for curl: (cert, key).
    fn client_files(&self, cert: &IssuedCert, stem: &str) -> (String, String) {
        let (c, k) = cert.write_pem(&self.dir, stem);
        (path_arg(&c), path_arg(&k))
    }

    fn proxy_ca_file(&self) -> String {
        path_arg(&self.proxy_ca.write_pem(&self.dir))
    }
}

fn path_arg(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

#[track_caller]
fn assert_refused(r: &RawResponse, status: u16, token: &str) {
    assert_eq!(r.status, status, "expected {status} {token}, got {r:?}");
    let ps = r.header("proxy-status").unwrap_or_default();
    assert!(
        ps.starts_with(&format!("portcullis; error={token}")),
        "Proxy-Status {ps:?}"
    );
}

/// An upstream allowing 127.0.0.1 on two ports, then `rest`.
fn two_ports(name: &str, a: u16, b: u16, rest: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nhosts = [\"127.0.0.1\"]\nports = [{a}, {b}]\nallow_private = true\n\n{rest}"
    )
}

fn connect_req(authority: &str) -> Vec<u8> {
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").into_bytes()
}

/// SPEC §10 "after the handshake it behaves exactly like `listen`", over each TLS version:
/// keep-alive forwarding, the §4 refusals, and a CONNECT tunnel carrying the app's own TLS.
#[tokio::test]
async fn forwards_tunnels_and_refuses_over_tls_as_over_plain() {
    let pki = Pki::new("tls-serves");
    let origin_ca = TestCa::new("origin-ca");
    let o = origin()
        .handler(|req| Reply::ok(format!("hello {}", req.target)))
        .spawn()
        .await;
    let secure = origin()
        .tls(&origin_ca.issue(&["localhost", "127.0.0.1"]))
        .handler(|req| Reply::ok(format!("secret {}", req.target)))
        .spawn()
        .await;
    let rest = two_ports("local", o.port(), secure.port(), "");
    let p = spawn_proxy_with(&pki.proxy_lines(false), &rest).await;
    for version in [&TLS13, &TLS12] {
        let config = pki.proxy_ca.client_config_for(version, None);
        let mut conn = TlsConn::connect_tls(p.tls_addr(), config.clone())
            .await
            .expect("handshake");
        assert_eq!(conn.tls().protocol_version(), Some(version.version));
        assert_eq!(
            conn.tls().alpn_protocol(),
            None,
            "no ALPN offered, none chosen"
        );
        // Two requests on one connection: the second one waits in the TLS idle path first.
        for path in ["/one", "/two"] {
            let r = conn.get(&o.url(path)).await;
            assert_eq!(r.status, 200, "{version:?} {r:?}");
            assert_eq!(r.body_text(), format!("hello {path}"));
            assert!(!r.closed);
        }
        let origin_form = conn
            .send(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await;
        assert_refused(&origin_form, 400, "http_request_error");

        let mut conn = TlsConn::connect_tls(p.tls_addr(), config.clone())
            .await
            .expect("handshake");
        let denied = conn.get("http://denied.example/").await;
        assert_refused(&denied, 403, "http_request_denied");
        let huge = format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            o.url("/"),
            "a".repeat(70_000)
        );
        let mut conn = TlsConn::connect_tls(p.tls_addr(), config.clone())
            .await
            .expect("handshake");
        assert_refused(&conn.send(huge.as_bytes()).await, 431, "http_request_error");

        let mut conn = TlsConn::connect_tls(p.tls_addr(), config)
            .await
            .expect("handshake");
        let r = conn
            .send(&connect_req(&format!("127.0.0.1:{}", secure.port())))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let inner = origin_ca.connector().connect(name, conn.into_stream());
        let mut inner = tokio::time::timeout(WITHIN, inner)
            .await
            .expect("inner handshake in time")
            .expect("TLS to the origin inside TLS to the proxy");
        let r = exchange_on(
            &mut inner,
            b"GET /tunnelled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            WITHIN,
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body_text(), "secret /tunnelled");
    }
    assert_eq!(o.requests().len(), 4);
    assert_eq!(p.metric(HANDSHAKES, "result=\"ok\"").await, 8.0);
    let code = |c: &str| format!("code=\"{c}\"");
    assert_eq!(
        p.metric("portcullis_requests_total", &code("200")).await,
        6.0
    );
    assert_eq!(
        p.metric("portcullis_requests_total", &code("403")).await,
        2.0
    );
}

/// SPEC §4 client-side limits hold on the TLS listener: an idle keep-alive connection is
/// closed after `client_idle_timeout`, and the open-connections gauge counts TLS ones.
#[tokio::test]
async fn an_idle_tls_connection_is_closed_after_client_idle_timeout() {
    let pki = Pki::new("tls-idle");
    let o = origin().spawn().await;
    let lines = format!("{}client_idle_timeout = \"1s\"\n", pki.proxy_lines(false));
    let p = spawn_proxy_with(&lines, &local_upstream("local", o.port(), "")).await;
    let mut conn = TlsConn::connect_tls(p.tls_addr(), pki.proxy_ca.client_config())
        .await
        .expect("handshake");
    assert_eq!(conn.get(&o.url("/")).await.status, 200);
    assert_eq!(p.metric("portcullis_client_connections", "").await, 1.0);
    assert!(conn.wait_closed(WITHIN).await, "closed when idle");
    let gauge_zero = async {
        let deadline = Instant::now() + WITHIN;
        while p.metric("portcullis_client_connections", "").await != 0.0 {
            assert!(Instant::now() < deadline, "the gauge stays above 0");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    gauge_zero.await;
}

/// Two origins for the client tests: plain, answering "plain", and TLS under a CA of its own
/// named `ca` (returned, for the client to trust), answering "secure".
async fn plain_and_tls_origins(ca: &str) -> (TestCa, Origin, Origin) {
    let origin_ca = TestCa::new(ca);
    let plain = origin().handler(|_| Reply::ok("plain")).spawn().await;
    let secure = origin()
        .tls(&origin_ca.issue(&["localhost", "127.0.0.1"]))
        .handler(|_| Reply::ok("secure"))
        .spawn()
        .await;
    (origin_ca, plain, secure)
}

/// The real curl: `--proxy https://…` with `--proxy-cacert`, forwarding an `http://` URL and
/// tunnelling an `https://` one (TLS inside TLS).
#[tokio::test]
async fn curl_through_the_tls_listener() {
    let pki = Pki::new("tls-curl");
    let (origin_ca, o, secure) = plain_and_tls_origins("curl-origin-ca").await;
    let rest = two_ports("local", o.port(), secure.port(), "");
    let p = spawn_proxy_with(&pki.proxy_lines(false), &rest).await;
    let proxy = format!("https://127.0.0.1:{}", p.tls_addr().port());
    let proxy_ca = pki.proxy_ca_file();
    let origin_ca_file = path_arg(&origin_ca.write_pem(&pki.dir));
    let base = [
        "--proxy",
        proxy.as_str(),
        "--proxy-cacert",
        proxy_ca.as_str(),
    ];

    let r = curl(&[&base[..], &[o.url("/a").as_str()]].concat()).await;
    assert_eq!((r.exit_code, r.status), (0, 200), "{}", r.stderr);
    assert_eq!(r.body_text(), "plain");
    let url = format!("https://127.0.0.1:{}/b", secure.port());
    let args = [
        &base[..],
        &["--cacert", origin_ca_file.as_str(), url.as_str()],
    ]
    .concat();
    let r = curl(&args).await;
    assert_eq!((r.exit_code, r.status), (0, 200), "{}", r.stderr);
    assert_eq!(r.body_text(), "secure");
    let r = curl(&[&base[..], &["http://denied.example/"]].concat()).await;
    assert_eq!(r.status, 403, "{}", r.stderr);
    let ps = r.header("proxy-status").unwrap_or_default();
    assert!(
        ps.starts_with("portcullis; error=http_request_denied"),
        "{ps}"
    );
    assert_eq!(p.metric(HANDSHAKES, "result=\"ok\"").await, 3.0);
}

/// Config for the client-identity tests: three identities; `connector` may reach 127.0.0.1
/// (upstream `payments`), `web` and `legacy` may reach localhost (upstream `web`).
fn identity_clients(port: u16) -> String {
    let upstream = |name: &str, host: &str| {
        format!(
            "[[upstream]]\nname = \"{name}\"\nhosts = [\"{host}\"]\nports = [{port}]\nallow_private = true\n\n"
        )
    };
    format!(
        "{}{}\
         [[client]]\nname = \"connector\"\ncert_names = [\"{SPIFFE}\"]\nupstreams = [\"payments\"]\n\n\
         [[client]]\nname = \"web\"\ncert_names = [\"*.web.internal\"]\nupstreams = [\"web\"]\n\n\
         [[client]]\nname = \"legacy\"\ncert_names = [\"legacy-batch\"]\nupstreams = [\"web\"]\n",
        upstream("payments", "127.0.0.1"),
        upstream("web", "localhost"),
    )
}

/// SPEC §3/§10: with `client_ca`, the certificate's identity chooses the `[[client]]`, by URI
/// SAN (a SPIFFE ID), DNS SAN (a `*.` pattern) or, without SANs, the CN; each client reaches
/// its own upstream only. Presented by curl with `--proxy-cert` / `--proxy-key`.
#[tokio::test]
async fn client_certificates_choose_the_client_for_curl() {
    let pki = Pki::new("tls-mtls-curl");
    let o = origin()
        .handler(|req| Reply::ok(format!("reached {}", req.target)))
        .spawn()
        .await;
    let port = o.port();
    let p = spawn_proxy_with(&pki.proxy_lines(true), &identity_clients(port)).await;
    let proxy = format!("https://127.0.0.1:{}", p.tls_addr().port());
    let proxy_ca = pki.proxy_ca_file();
    let spiffe = pki.client_files(&pki.client_ca.client_cert(&[SPIFFE]), "spiffe");
    let web = pki.client_files(&pki.client_ca.client_cert(&["api.web.internal"]), "web");
    let legacy = pki.client_files(&pki.client_ca.client_cert_cn_only("legacy-batch"), "cn");
    let payments_url = format!("http://127.0.0.1:{port}/pay");
    let web_url = format!("http://localhost:{port}/page");
    let get = |cert: &(String, String), url: &str| {
        let args: Vec<String> = [
            "--proxy",
            &proxy,
            "--proxy-cacert",
            &proxy_ca,
            "--proxy-cert",
            &cert.0,
            "--proxy-key",
            &cert.1,
            url,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&args).await
        }
    };
    // (certificate, URL, status): each identity reaches its upstream and only that one.
    let cases = [
        (&spiffe, &payments_url, 200),
        (&spiffe, &web_url, 403),
        (&web, &web_url, 200),
        (&web, &payments_url, 403),
        (&legacy, &web_url, 200),
        (&legacy, &payments_url, 403),
    ];
    for (cert, url, status) in cases {
        let r = get(cert, url).await;
        assert_eq!(r.status, status, "{} {url}: {}", cert.0, r.stderr);
    }
    assert_eq!(o.requests().len(), 3);
    assert_eq!(p.metric(HANDSHAKES, "result=\"ok\"").await, 6.0);
    assert_eq!(
        p.metric("portcullis_denied_total", "reason=\"client\"")
            .await,
        3.0
    );

    // No certificate: the handshake fails, and the proxy says why in its counter.
    let args = [
        "--proxy",
        &proxy,
        "--proxy-cacert",
        &proxy_ca,
        &payments_url,
    ];
    let r = curl(&args).await;
    assert_ne!(r.exit_code, 0, "served without a certificate: {r:?}");
    assert_eq!(r.status, 0);
    assert_eq!(p.metric(HANDSHAKES, "result=\"no_certificate\"").await, 1.0);
    assert_eq!(o.requests().len(), 3);
}

/// A certificate that is missing, expired, from another CA or self-signed fails the
/// handshake, whatever the TLS version; each is counted by reason; no request gets through,
/// and the connection, its slot and its task are gone (the open-connections gauge is 0).
#[tokio::test]
async fn refused_client_certificates_fail_the_handshake_and_leave_nothing() {
    let pki = Pki::new("tls-mtls-refused");
    let o = origin().spawn().await;
    let port = o.port();
    let p = spawn_proxy_with(&pki.proxy_lines(true), &identity_clients(port)).await;
    let stranger_ca = TestCa::new("stranger-ca");
    let expired = pki.client_ca.expired_client_cert(&[SPIFFE]);
    let stranger = stranger_ca.client_cert(&[SPIFFE]);
    let self_signed = TestCa::self_signed(&[SPIFFE]);
    let url = format!("http://127.0.0.1:{port}/pay");
    for version in [&TLS13, &TLS12] {
        let refused = [
            ("none", None),
            ("expired", Some(&expired)),
            ("another CA", Some(&stranger)),
            ("self-signed", Some(&self_signed)),
        ];
        for (what, cert) in refused {
            let config = pki.proxy_ca.client_config_for(version, cert);
            // TLS 1.3 clients finish their side before the server has checked the
            // certificate: the refusal arrives as an alert on the first read.
            if let Ok(mut conn) = TlsConn::connect_tls(p.tls_addr(), config).await {
                let r = conn.get(&url).await;
                assert_eq!(r.status, 0, "{what} over {version:?} was answered: {r:?}");
                assert!(r.error.is_some(), "{what}: {r:?}");
            }
        }
        let good = pki.client(&pki.client_ca.client_cert(&[SPIFFE]));
        let mut conn = TlsConn::connect_tls(p.tls_addr(), good)
            .await
            .expect("a good certificate is accepted");
        assert_eq!(conn.get(&url).await.status, 200);
    }
    assert_eq!(o.requests().len(), 2, "only the good clients got through");
    for (result, want) in [
        ("no_certificate", 2.0),
        ("bad_certificate", 6.0),
        ("handshake_error", 0.0),
        ("ok", 2.0),
    ] {
        let labels = format!("result=\"{result}\"");
        assert_eq!(p.metric(HANDSHAKES, &labels).await, want, "{result}");
    }
    let deadline = Instant::now() + WITHIN;
    while p.metric("portcullis_client_connections", "").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "a refused connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Slow or hostile TLS clients: one that never sends a ClientHello and one that stops
/// half-way through it each hold the only connection slot (`max_client_connections = 1`)
/// until `header_read_timeout`, then lose it, so the good client waiting behind them is
/// served; both failures are counted as `handshake_error`.
#[tokio::test]
async fn stalled_handshakes_lose_their_slot_after_header_read_timeout() {
    let pki = Pki::new("tls-stall");
    let o = origin().spawn().await;
    let lines = format!(
        "{}max_client_connections = 1\nheader_read_timeout = \"1s\"\n",
        pki.proxy_lines(false)
    );
    let p = spawn_proxy_with(&lines, &local_upstream("local", o.port(), "")).await;
    // A record header announcing a 512-byte ClientHello, then only part of it.
    let partial: &[u8] = &[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    for (what, sent) in [("silent", &b""[..]), ("partial ClientHello", partial)] {
        let mut hostile = TcpStream::connect(p.tls_addr()).await.expect("connect");
        hostile.write_all(sent).await.expect("write");
        // Take the slot for sure before the good client queues behind it.
        let deadline = Instant::now() + WITHIN;
        while p.metric("portcullis_client_connections", "").await != 1.0 {
            assert!(Instant::now() < deadline, "{what}: never accepted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let good = TlsConn::connect_tls(p.tls_addr(), pki.proxy_ca.client_config());
        let mut good = good.await.expect("served once the slot is free");
        assert_eq!(good.get(&o.url("/")).await.status, 200, "{what}");
        assert!(sees_eof(&mut hostile, WITHIN).await, "{what}: still open");
        drop(good);
    }
    assert_eq!(
        p.metric(HANDSHAKES, "result=\"handshake_error\"").await,
        2.0
    );
    assert_eq!(p.metric(HANDSHAKES, "result=\"ok\"").await, 2.0);
}

/// Bytes that are no TLS at all (plain HTTP sent to the TLS port, random noise) fail the
/// handshake at once: the connection is closed long before `header_read_timeout`.
#[tokio::test]
async fn garbage_instead_of_a_client_hello_is_dropped_at_once() {
    let pki = Pki::new("tls-garbage");
    let o = origin().spawn().await;
    let lines = format!("{}header_read_timeout = \"60s\"\n", pki.proxy_lines(false));
    let p = spawn_proxy_with(&lines, &local_upstream("local", o.port(), "")).await;
    let noise: Vec<u8> = (0u32..600)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let plain_http = absolute_get(&o.url("/"));
    for sent in [plain_http, noise] {
        let mut s = TcpStream::connect(p.tls_addr()).await.expect("connect");
        s.write_all(&sent).await.expect("write");
        assert!(sees_eof(&mut s, WITHIN).await, "still open");
    }
    assert_eq!(
        p.metric(HANDSHAKES, "result=\"handshake_error\"").await,
        2.0
    );
    assert!(o.requests().is_empty());
}

/// SPEC §8 rotation: on reload, new connections get the new certificate and are checked
/// against the new client CA; a connection opened before goes on; a broken file refuses the
/// reload, names the file, and the last good material stays in use.
#[tokio::test]
async fn a_reload_rotates_the_certificate_key_and_client_ca() {
    let pki = Pki::new("tls-rotate");
    let o = origin().spawn().await;
    let config = pki.write_spiffe_config(o.port());
    let p = spawn_proxy_file(&config).await;
    let old_client = pki.client(&pki.client_ca.client_cert(&[SPIFFE]));
    let mut before = TlsConn::connect_tls(p.tls_addr(), old_client.clone())
        .await
        .expect("handshake");
    assert_eq!(before.get(&o.url("/before")).await.status, 200);

    // What cert-manager or SPIRE does: new files in place, then SIGHUP.
    let new_proxy_ca = TestCa::new("proxy-ca-2");
    new_proxy_ca
        .issue(&["localhost", "127.0.0.1"])
        .write_pem(&pki.dir, "proxy");
    let new_client_ca = TestCa::new("client-ca-2");
    std::fs::write(&pki.client_ca_file, new_client_ca.pem()).expect("rotate client CA");
    p.reload().expect("the rotated files load");

    let new_cert = new_client_ca.client_cert(&[SPIFFE]);
    let new_client = {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(new_proxy_ca.der()).expect("root");
        let config = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(new_cert.chain.clone(), new_cert.key())
            .expect("client key");
        std::sync::Arc::new(config)
    };
    let mut after = TlsConn::connect_tls(p.tls_addr(), new_client.clone())
        .await
        .expect("the new certificate, trusted by the new CA");
    assert_eq!(after.get(&o.url("/after")).await.status, 200);
    // The old proxy certificate is gone for new connections.
    let stale = TlsConn::connect_tls(p.tls_addr(), old_client).await;
    assert!(
        stale.is_err(),
        "a client trusting only the old CA connected"
    );
    // The connection opened before the reload goes on.
    let r = before.get(&o.url("/before-again")).await;
    assert_eq!(r.status, 200, "{r:?}");

    // A broken key: refused as a whole, the file named, the last good material kept.
    std::fs::write(&pki.key, "-----BEGIN PRIVATE KEY-----\ngarbage\n").expect("break key");
    let err = p
        .reload()
        .expect_err("a broken key refuses the reload")
        .to_string();
    let key_path = pki.key.display().to_string();
    assert!(
        err.contains("tls_key") && err.contains(&key_path),
        "the error names the key and its file: {err}"
    );
    let mut still = TlsConn::connect_tls(p.tls_addr(), new_client)
        .await
        .expect("the last good material still serves");
    assert_eq!(still.get(&o.url("/still")).await.status, 200);
    let reloads = "portcullis_config_reloads_total";
    assert_eq!(p.metric(reloads, "result=\"ok\"").await, 1.0);
    assert_eq!(p.metric(reloads, "result=\"error\"").await, 1.0);
}

/// Python `requests` (urllib3) with an HTTPS proxy: forwarding an `http://` URL and a CONNECT
/// tunnel to an `https://` one, presenting a SPIFFE client certificate, whose identity chooses
/// the client that may reach the origin.
#[tokio::test]
async fn python_requests_through_the_tls_listener_with_a_spiffe_certificate() {
    let pki = Pki::new("tls-python");
    let (origin_ca, o, secure) = plain_and_tls_origins("py-origin-ca").await;
    let client = format!(
        "[[client]]\nname = \"connector\"\ncert_names = [\"{SPIFFE}\"]\nupstreams = [\"local\"]\n"
    );
    let rest = two_ports("local", o.port(), secure.port(), &client);
    let p = spawn_proxy_with(&pki.proxy_lines(true), &rest).await;
    let (cert, key) = pki.client_files(&pki.client_ca.client_cert(&[SPIFFE]), "py-client");
    let other = pki
        .client_ca
        .client_cert(&["spiffe://prod/ns/payments/sa/other"]);
    let (other_cert, other_key) = pki.client_files(&other, "py-other");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/https_proxy.py");
    let proxy = format!("https://127.0.0.1:{}", p.tls_addr().port());
    let proxy_ca = pki.proxy_ca_file();
    let run_with = |proxy_ca: &str, cert: String, key: String, url: String, ca: Option<String>| {
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(&script)
            .args(["--proxy", &proxy, "--proxy-ca", proxy_ca])
            .args(["--cert", &cert, "--key", &key, "--url", &url])
            .kill_on_drop(true)
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .env_remove("https_proxy")
            .env_remove("http_proxy");
        if let Some(ca) = ca {
            cmd.args(["--ca", &ca]);
        }
        async move {
            let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
                .await
                .expect("python3 finishes in time")
                .expect("python3 runs (is it installed? .ci/run installs it)");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                !stderr.contains("No module named"),
                "python3 lacks requests/urllib3 (.ci/run installs them): {stderr}"
            );
            (stdout, stderr)
        }
    };
    let run = |cert, key, url, ca| run_with(&proxy_ca, cert, key, url, ca);
    let run_trusting = |proxy_ca: &str, cert, key, url| run_with(proxy_ca, cert, key, url, None);
    let origin_ca_file = path_arg(&origin_ca.write_pem(&pki.dir));
    let (out, err) = run(cert.clone(), key.clone(), o.url("/py"), None).await;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["200", "plain"], "{err}");
    let url = format!("https://127.0.0.1:{}/py", secure.port());
    let (out, err) = run(cert, key, url, Some(origin_ca_file.clone())).await;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["200", "secure"], "{err}");
    assert!(!err.contains("InsecureRequestWarning"), "{err}");
    let (out, err) = run(other_cert.clone(), other_key.clone(), o.url("/py"), None).await;
    assert_eq!(out.lines().next(), Some("403"), "{err}");
    // The proxy hop is verified for http:// URLs too: trusting another CA, the client fails.
    let (out, err) = run_trusting(&origin_ca_file, other_cert, other_key, o.url("/py")).await;
    assert!(
        out.is_empty() && err.contains("CERTIFICATE_VERIFY_FAILED"),
        "{out}{err}"
    );
    assert_eq!(o.requests().len(), 1);
    assert_eq!(secure.requests().len(), 1);
    assert_eq!(p.metric(HANDSHAKES, "result=\"ok\"").await, 3.0);
}

/// A 4 MiB download through a CONNECT tunnel reaches a TLS client with a small receive
/// buffer whole, while the upstream then waits for the client's next request. The TLS side
/// of a tunnel is copied in user space, and rustls may hold bytes taken while the socket was
/// full until it is flushed (the pump's unit test `pump_flushes_before_it_waits` pins that
/// down; on loopback the kernel's large send buffers rarely leave the tail behind).
#[tokio::test]
async fn a_slow_tls_client_gets_the_whole_download_through_a_tunnel() {
    const SIZE: usize = 4 << 20;
    let pki = Pki::new("tls-tunnel-tail");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let origin = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut request = [0u8; 4];
        s.read_exact(&mut request)
            .await
            .expect("the client's request");
        let body: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        s.write_all(&body).await.expect("send the download");
        // Then wait for the client's next request, as an HTTP server would.
        let mut rest = [0u8; 16];
        let _ = s.read(&mut rest).await;
    });
    let p = spawn_proxy_with(&pki.proxy_lines(false), &local_upstream("local", port, "")).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(p.tls_addr()).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let connector = tokio_rustls::TlsConnector::from(pki.proxy_ca.client_config());
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(&connect_req(&format!("127.0.0.1:{port}")))
        .await
        .expect("CONNECT");
    // The answer, byte by byte: nothing of the download may be read with it.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.expect("CONNECT answer");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tls.write_all(b"GET\n").await.expect("request the download");
    tls.flush().await.expect("flush");
    let mut got = vec![0u8; SIZE];
    let mut have = 0;
    let deadline = Instant::now() + WITHIN;
    while have < SIZE {
        match tokio::time::timeout_at(deadline, tls.read(&mut got[have..])).await {
            Ok(Ok(0)) => panic!("closed after {have} of {SIZE} bytes"),
            Ok(Ok(n)) => have += n,
            Ok(Err(e)) => panic!("after {have} of {SIZE} bytes: {e}"),
            Err(_) => panic!("only {have} of {SIZE} bytes within {WITHIN:?}"),
        }
    }
    assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    origin.abort();
}

/// A resumed session (TLS 1.3 ticket, TLS 1.2 session id) is as much the client's as the
/// full handshake it resumes: its certificate's identity still chooses the `[[client]]`
/// (without one every request would be refused). After a reload, new material means a new
/// session cache: nothing resumes across it, so a rotated client CA is applied to everyone.
#[tokio::test]
async fn a_resumed_session_keeps_its_client_identity_until_a_reload() {
    use rustls::HandshakeKind::{Full, Resumed};
    let pki = Pki::new("tls-resume");
    let o = origin().spawn().await;
    let config = pki.write_spiffe_config(o.port());
    let p = spawn_proxy_file(&config).await;
    let cert = pki.client_ca.client_cert(&[SPIFFE]);
    for version in [&TLS13, &TLS12] {
        // One config, so one client session cache, for every connection of this version.
        let client = pki.proxy_ca.client_config_for(version, Some(&cert));
        let mut kinds = Vec::new();
        for round in 0..3 {
            if round == 2 {
                p.reload().expect("reload");
            }
            let mut conn = TlsConn::connect_tls(p.tls_addr(), client.clone())
                .await
                .expect("handshake");
            let r = conn.get(&o.url("/resume")).await;
            assert_eq!(r.status, 200, "{version:?} round {round}: {r:?}");
            kinds.push(conn.tls().handshake_kind().expect("handshake done"));
        }
        assert_eq!(kinds, [Full, Resumed, Full], "{version:?}");
    }
}

/// `tls_listen`, like `listen`, changes only on restart: a reload that drops it (and its
/// files) is applied to everything else, and the TLS listener goes on with its last
/// certificate until the process restarts.
#[tokio::test]
async fn a_reload_without_tls_listen_leaves_the_listener_to_the_restart() {
    let pki = Pki::new("tls-dropped");
    let o = origin().spawn().await;
    let config = pki.dir.join("portcullis.toml");
    let head = "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n";
    let upstream = local_upstream("local", o.port(), "");
    std::fs::write(
        &config,
        format!("{head}{}\n{upstream}", pki.proxy_lines(false)),
    )
    .expect("write config");
    let p = spawn_proxy_file(&config).await;
    std::fs::write(&config, format!("{head}\n{upstream}")).expect("rewrite config");
    p.reload().expect("a file without tls_listen is valid");
    let mut conn = TlsConn::connect_tls(p.tls_addr(), pki.proxy_ca.client_config())
        .await
        .expect("the listener keeps its certificate");
    assert_eq!(conn.get(&o.url("/still")).await.status, 200);
}

/// Requests read inside a CONNECT that portcullis answers itself (plain HTTP tunnelled to an
/// originating upstream, SPEC §9) are the same client's: each is decided with the
/// certificate identity of the TLS connection they came in on, so `curl -p` with a SPIFFE
/// certificate reaches the upstream its `[[client]]` allows (a context rebuilt without the
/// identity would refuse them with 403).
#[tokio::test]
async fn requests_inside_a_connect_keep_the_client_identity() {
    let pki = Pki::new("tls-inside");
    let origin_ca = TestCa::new("inside-origin-ca");
    let o = origin()
        .handler(|r| Reply::ok(format!("{} via tls", r.target)))
        .tls(&origin_ca.issue(&["localhost"]))
        .spawn()
        .await;
    let origin_ca_file = origin_ca.write_pem(&pki.dir);
    let rest = format!(
        "[[upstream]]\nname = \"orig\"\nhosts = [\"localhost\"]\nports = [{}]\ntls = \"originate\"\n\
         allow_private = true\nca_file = {origin_ca_file:?}\n\n\
         [[client]]\nname = \"connector\"\ncert_names = [\"{SPIFFE}\"]\nupstreams = [\"orig\"]\n",
        o.port()
    );
    let p = spawn_proxy_with(&pki.proxy_lines(true), &rest).await;
    let proxy = format!("https://127.0.0.1:{}", p.tls_addr().port());
    let proxy_ca = pki.proxy_ca_file();
    let (cert, key) = pki.client_files(&pki.client_ca.client_cert(&[SPIFFE]), "inside");
    let url = format!("http://localhost:{}/inside", o.port());
    let args = [
        "-p",
        "--proxy",
        &proxy,
        "--proxy-cacert",
        &proxy_ca,
        "--proxy-cert",
        &cert,
        "--proxy-key",
        &key,
        &url,
    ];
    let r = curl(&args).await;
    assert_eq!((r.connect_status, r.status), (200, 200), "{r:?}");
    assert_eq!(r.body_text(), "/inside via tls");
    assert_eq!(o.requests().len(), 1);
}

/// A client of the TLS listener that hangs up (`close_notify`, then FIN) while its request
/// waits for the response: seen through TLS, the request ends (499) and its upstream
/// connection is closed at once rather than held for the answer (8 s here).
#[tokio::test]
async fn a_tls_client_that_hangs_up_before_its_response_frees_the_upstream_connection() {
    let pki = Pki::new("tls hang up");
    let o = origin()
        .count_open_at_accept()
        .handler(|_| Reply::ok("slow").delay(Duration::from_secs(8)))
        .spawn()
        .await;
    let p = spawn_proxy_with(
        &pki.proxy_lines(false),
        &local_upstream("local", o.port(), ""),
    )
    .await;
    let config = pki.proxy_ca.client_config_for(&TLS13, None);
    let mut conn = TlsConn::connect_tls(p.tls_addr(), config)
        .await
        .expect("handshake");
    conn.write(&absolute_get(&o.url("/pay")))
        .await
        .expect("send");
    assert!(o.wait_for_requests(1, WITHIN).await);
    let mut stream = conn.into_stream();
    stream.shutdown().await.expect("close_notify");
    drop(stream);
    let code_499 = "upstream=\"local\",code=\"499\"";
    assert!(
        p.metric_reaches(
            "portcullis_requests_total",
            code_499,
            1.0,
            Duration::from_secs(5)
        )
        .await,
        "ended when its client hung up, not when the answer came (8 s)"
    );
    assert_eq!(p.closed_for("local", "error").await, 1.0);
    assert!(
        eventually(WITHIN, || o.open_now() == 0).await,
        "closed, as the origin's kernel sees it"
    );
    p.stop().await;
}
