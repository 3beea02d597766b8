//! The TLS server side of interception (SPEC §9) against real clients on loopback sockets:
//! rustls, curl and `openssl s_client` trusting only the intercept CA complete the handshake;
//! a client that does not trust it, names another host in its SNI, or offers only h2 is
//! refused and counted, with one WARN line for the untrusting client; the CA's name
//! constraints are enforced by the clients themselves; a reload with a rotated CA makes new
//! leaves chain to the new CA.

mod support;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis::config::Config;
use portcullis::metrics::Metrics;
use portcullis::state::Shared;
use portcullis::target::parse_host;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ProtocolVersion, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use support::*;

const HOST: &str = "api.example.test";
const WITHIN: Duration = Duration::from_secs(10);

/// What the server saw of one intercepted connection.
#[derive(Debug)]
struct Outcome {
    /// The `result` label counted.
    label: &'static str,
    error: Option<String>,
    alpn: Option<Vec<u8>>,
    sni: Option<String>,
    version: Option<ProtocolVersion>,
}

/// `Interceptor::accept` on a loopback listener, as `connect_host`; each intercepted
/// connection gets one `200 ok` response to whatever request head it sends.
struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn next(&mut self) -> Outcome {
        tokio::time::timeout(WITHIN, self.outcomes.recv())
            .await
            .expect("an intercepted connection ended")
            .expect("server running")
    }

    fn count(&self, result: &str) -> u64 {
        self.shared
            .metrics
            .intercepts
            .with_label_values(&["up", result])
            .get()
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

async fn serve(shared: Arc<Shared>, connect_host: &str, handshake_timeout: Duration) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, outcomes) = mpsc::unbounded_channel();
    let host = parse_host(connect_host).unwrap();
    let state = shared.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let (shared, host, tx) = (state.clone(), host.clone(), tx.clone());
            tokio::spawn(async move {
                let accepted = shared
                    .intercept
                    .accept(stream, &host, "up", peer, handshake_timeout)
                    .await;
                let outcome = match accepted {
                    Ok(mut tls) => {
                        let (_, conn) = tls.get_ref();
                        let outcome = Outcome {
                            label: "ok",
                            error: None,
                            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                            sni: conn.server_name().map(str::to_string),
                            version: conn.protocol_version(),
                        };
                        answer_one_request(&mut tls).await;
                        outcome
                    }
                    Err(e) => Outcome {
                        label: e.result().label(),
                        error: Some(e.to_string()),
                        alpn: None,
                        sni: None,
                        version: None,
                    },
                };
                let _ = tx.send(outcome);
            });
        }
    });
    Server {
        addr,
        shared,
        outcomes,
        task,
    }
}

/// Read a request head (bounded), answer `200 ok`, close.
async fn answer_one_request<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tokio::time::timeout(WITHIN, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let _ = s
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        .await;
    let _ = s.shutdown().await;
}

/// Shared state for a config with one intercept upstream `up` over `hosts`, using `ca`.
fn shared_for(ca: &InterceptCaFiles, hosts: &[&str]) -> Arc<Shared> {
    Shared::new(config_for(ca, hosts), Metrics::new())
}

fn config_text(ca: &InterceptCaFiles, hosts: &[&str]) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{}\n[[upstream]]\nname = \"up\"\nhosts = [{}]\nconnect = \"intercept\"\nallow_private = true\n",
        ca.proxy_lines(),
        hosts.join(", ")
    )
}

fn config_for(ca: &InterceptCaFiles, hosts: &[&str]) -> Config {
    Config::from_toml(&config_text(ca, hosts), "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// A GET over TLS (as `name`) to `addr`; the response text, or the handshake's error.
async fn rustls_get(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> Result<String, io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    tls_get(tcp, config, name).await
}

async fn tls_get<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    config: Arc<ClientConfig>,
    name: &str,
) -> Result<String, io::Error> {
    let name = ServerName::try_from(name.to_string()).expect("server name");
    let connecting = TlsConnector::from(config).connect(name, io);
    let mut tls = tokio::time::timeout(WITHIN, connecting).await??;
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(WITHIN, tls.read_to_end(&mut response)).await??;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

fn only_version(
    ca: &InterceptCaFiles,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let mut config = ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// `openssl s_client` against `addr` as `servername`, trusting only `ca`, failing on a
/// verification error. (exit status, stdout + stderr)
async fn openssl_s_client(
    addr: SocketAddr,
    servername: &str,
    ca: &std::path::Path,
) -> (i32, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                servername,
            ])
            .arg("-CAfile")
            .arg(ca)
            .args(["-verify_return_error", "-alpn", "http/1.1"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("openssl s_client finished")
    .expect("the openssl binary is installed (Debian package openssl; .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// WARN (and above) lines logged on this thread while the guard lives.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        (logs.clone(), tracing::subscriber::set_default(subscriber))
    }

    fn lines_with(&self, needle: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[tokio::test]
async fn a_rustls_client_trusting_only_the_ca_completes_tls_13_and_12() {
    let ca = InterceptCaFiles::new(&["*.example.test"]);
    let mut server = serve(shared_for(&ca, &["*.example.test"]), HOST, WITHIN).await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let response = rustls_get(server.addr, only_version(&ca, version), HOST)
            .await
            .unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200 OK") && response.ends_with("ok"),
            "{response}"
        );
        let outcome = server.next().await;
        assert_eq!(outcome.label, "ok", "{outcome:?}");
        assert_eq!(outcome.alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(outcome.sni.as_deref(), Some(HOST));
        assert_eq!(outcome.version, Some(version.version));
    }
    assert_eq!(server.count("ok"), 2);
    assert_eq!(
        server.shared.intercept.leaves().len(),
        1,
        "one leaf for both handshakes"
    );
}

#[tokio::test]
async fn curl_and_openssl_trusting_only_the_ca_complete_the_handshake() {
    let ca = InterceptCaFiles::new(&[HOST]);
    let mut server = serve(shared_for(&ca, &[HOST]), HOST, WITHIN).await;
    let cacert = ca.cert.display().to_string();
    let resolve = format!("{HOST}:{}:127.0.0.1", server.port());
    let url = format!("https://{HOST}:{}/", server.port());
    for extra in [&[][..], &["--tls-max", "1.2"][..]] {
        let mut args = vec!["--cacert", &cacert, "--resolve", &resolve];
        args.extend_from_slice(extra);
        args.push(&url);
        let r = curl(&args).await;
        assert_eq!(
            (r.exit_code, r.status),
            (0, 200),
            "curl {extra:?}: {}",
            r.stderr
        );
        assert_eq!(r.body, b"ok");
        assert_eq!(server.next().await.label, "ok");
    }

    let (status, text) = openssl_s_client(server.addr, HOST, &ca.cert).await;
    assert_eq!(status, 0, "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("ALPN protocol: http/1.1"), "{text}");
    assert_eq!(server.next().await.label, "ok");
    assert_eq!(server.count("ok"), 3);
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_fails_and_is_warned_about_once_a_minute() {
    let (logs, _guard) = Logs::capture();
    let ca = InterceptCaFiles::new(&[HOST]);
    let mut server = serve(shared_for(&ca, &[HOST]), HOST, WITHIN).await;

    let stranger = TestCa::new("some other CA");
    let err = rustls_get(
        server.addr,
        client_config_with(stranger.root_store(), &[b"http/1.1"]),
        HOST,
    )
    .await
    .expect_err("the leaf is not trusted");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let outcome = server.next().await;
    assert_eq!(outcome.label, "client_rejected_certificate", "{outcome:?}");
    assert!(outcome.error.unwrap().contains("unknown_ca"));

    // curl with the system's roots only: OpenSSL's unknown_ca alert.
    let url = format!("https://{HOST}:{}/", server.port());
    let resolve = format!("{HOST}:{}:127.0.0.1", server.port());
    let r = curl(&["--resolve", &resolve, &url]).await;
    assert_eq!(r.exit_code, 60, "certificate problem: {}", r.stderr);
    assert_eq!(server.next().await.label, "client_rejected_certificate");

    let err = rustls_get(
        server.addr,
        client_config_with(stranger.root_store(), &[b"http/1.1"]),
        HOST,
    )
    .await;
    assert!(err.is_err());
    assert_eq!(server.next().await.label, "client_rejected_certificate");
    assert_eq!(server.count("client_rejected_certificate"), 3);
    assert_eq!(server.count("ok"), 0);

    let warned = logs.lines_with("rejected the interception certificate");
    assert_eq!(
        warned.len(),
        1,
        "one line a minute per client address: {warned:#?}"
    );
    let line = &warned[0];
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains("client 127.0.0.1 "), "{line}");
    assert!(
        line.contains(&format!(
            "must trust the intercept CA {}",
            ca.cert.display()
        )),
        "{line}"
    );
}

#[tokio::test]
async fn an_sni_naming_another_host_is_refused_before_any_leaf_is_made() {
    let ca = InterceptCaFiles::new(&["*.example.test"]);
    let mut server = serve(shared_for(&ca, &["*.example.test"]), HOST, WITHIN).await;
    let err = rustls_get(server.addr, ca.client_config(), "other.example.test")
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains("AccessDenied"),
        "a TLS alert: {err}"
    );
    let outcome = server.next().await;
    assert_eq!(outcome.label, "sni_mismatch", "{outcome:?}");
    assert!(outcome.error.unwrap().contains("\"other.example.test\""));
    assert_eq!(server.count("sni_mismatch"), 1);
    assert_eq!(server.shared.intercept.leaves().len(), 0);

    let (status, text) = openssl_s_client(server.addr, "other.example.test", &ca.cert).await;
    assert_ne!(status, 0, "{text}");
    assert!(text.contains("access denied"), "{text}");
    assert_eq!(server.next().await.label, "sni_mismatch");

    // The same host in other letters is the same host.
    let response = rustls_get(server.addr, ca.client_config(), "API.Example.TEST")
        .await
        .unwrap();
    assert!(response.ends_with("ok"), "{response}");
    assert_eq!(server.next().await.label, "ok");
}

#[tokio::test]
async fn no_sni_is_accepted_for_an_ip_literal_host() {
    let ca = InterceptCaFiles::new(&["127.0.0.1"]);
    let mut server = serve(shared_for(&ca, &["127.0.0.1"]), "127.0.0.1", WITHIN).await;
    // rustls sends no SNI for an address.
    let response = rustls_get(server.addr, ca.client_config(), "127.0.0.1")
        .await
        .unwrap();
    assert!(response.ends_with("ok"), "{response}");
    let outcome = server.next().await;
    assert_eq!((outcome.label, outcome.sni), ("ok", None));

    let cacert = ca.cert.display().to_string();
    let url = format!("https://127.0.0.1:{}/", server.port());
    let r = curl(&["--cacert", &cacert, &url]).await;
    assert_eq!((r.exit_code, r.status), (0, 200), "{}", r.stderr);
    assert_eq!(server.next().await.label, "ok");
}

#[tokio::test]
async fn a_client_offering_only_h2_is_refused_with_an_alert() {
    let ca = InterceptCaFiles::new(&[HOST]);
    let mut server = serve(shared_for(&ca, &[HOST]), HOST, WITHIN).await;
    let mut roots = RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let err = rustls_get(
        server.addr,
        client_config_with(roots.clone(), &[b"h2"]),
        HOST,
    )
    .await
    .expect_err("no common protocol");
    assert!(err.to_string().contains("NoApplicationProtocol"), "{err}");
    assert_eq!(server.next().await.label, "handshake_error");

    // Offering both, or no ALPN at all, is fine: HTTP/1.1 it is.
    for alpn in [&[&b"h2"[..], &b"http/1.1"[..]][..], &[][..]] {
        let response = rustls_get(server.addr, client_config_with(roots.clone(), alpn), HOST)
            .await
            .unwrap();
        assert!(response.ends_with("ok"), "{response}");
        let outcome = server.next().await;
        assert_eq!(outcome.label, "ok");
        let want = (!alpn.is_empty()).then(|| b"http/1.1".to_vec());
        assert_eq!(outcome.alpn, want);
    }
}

/// The constraints are real: a leaf the CA signs for a host outside them is refused by the
/// clients themselves (webpki, OpenSSL), which is what makes a stolen key worth less.
#[tokio::test]
async fn verifying_clients_refuse_a_leaf_outside_the_name_constraints() {
    let ca = InterceptCaFiles::new(&[HOST]);
    // The config gained a host after `ca init`: valid, but `check` warns.
    let config = config_for(&ca, &[HOST, "evil.test"]);
    let warnings = portcullis::intercept::warnings(&config);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("host \"evil.test\" is outside the name constraints"),
        "{}",
        warnings[0]
    );

    let mut server = serve(Shared::new(config, Metrics::new()), "evil.test", WITHIN).await;
    let err = rustls_get(server.addr, ca.client_config(), "evil.test")
        .await
        .expect_err("outside the constraints");
    assert!(
        format!("{err:?}").contains("NameConstraintViolation"),
        "{err:?}"
    );
    assert_eq!(server.next().await.label, "client_rejected_certificate");

    let (status, text) = openssl_s_client(server.addr, "evil.test", &ca.cert).await;
    assert_ne!(status, 0, "{text}");
    assert!(text.contains("permitted subtree violation"), "{text}");
    assert_eq!(server.next().await.label, "client_rejected_certificate");
}

#[tokio::test]
async fn a_client_that_sends_nothing_times_out() {
    let ca = InterceptCaFiles::new(&[HOST]);
    let mut server = serve(shared_for(&ca, &[HOST]), HOST, Duration::from_millis(300)).await;
    let _silent = TcpStream::connect(server.addr).await.unwrap();
    let outcome = server.next().await;
    assert_eq!(outcome.label, "handshake_error");
    assert!(outcome.error.unwrap().contains("did not complete within"));
    assert_eq!(server.count("handshake_error"), 1);
}

/// The client connection may itself be TLS (a TLS proxy listener): `accept` takes any stream.
#[tokio::test]
async fn the_handshake_runs_inside_another_tls_connection() {
    let ca = InterceptCaFiles::new(&[HOST]);
    let shared = shared_for(&ca, &[HOST]);
    let listener_ca = TestCa::new("proxy listener");
    let acceptor = listener_ca.issue(&["proxy.test"]).acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = shared.clone();
    let server = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.unwrap();
        let outer = acceptor.accept(tcp).await.unwrap();
        let host = parse_host(HOST).unwrap();
        let mut inner = state
            .intercept
            .accept(outer, &host, "up", peer, WITHIN)
            .await
            .unwrap();
        answer_one_request(&mut inner).await;
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let outer = listener_ca
        .connector()
        .connect(ServerName::try_from("proxy.test").unwrap(), tcp)
        .await
        .unwrap();
    let response = tls_get(outer, ca.client_config(), HOST).await.unwrap();
    assert!(response.ends_with("ok"), "{response}");
    tokio::time::timeout(WITHIN, server).await.unwrap().unwrap();
    assert_eq!(
        shared
            .metrics
            .intercepts
            .with_label_values(&["up", "ok"])
            .get(),
        1
    );
}

/// The CONNECT path reads ahead: bytes of the ClientHello may already sit in its buffer when
/// it calls `accept`. Joined in front of the read half, they are not lost.
#[tokio::test]
async fn a_client_hello_partly_read_ahead_is_replayed_in_front_of_the_socket() {
    let ca = InterceptCaFiles::new(&[HOST]);
    let shared = shared_for(&ca, &[HOST]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = shared.clone();
    let server = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.unwrap();
        let (mut rd, wr) = tcp.into_split();
        let mut leftover = vec![0u8; 7];
        rd.read_exact(&mut leftover).await.unwrap();
        assert_eq!(leftover[0], 0x16, "a TLS handshake record");
        let io = tokio::io::join(std::io::Cursor::new(leftover).chain(rd), wr);
        let host = parse_host(HOST).unwrap();
        let mut tls = state
            .intercept
            .accept(io, &host, "up", peer, WITHIN)
            .await
            .unwrap();
        answer_one_request(&mut tls).await;
    });
    let response = rustls_get(addr, ca.client_config(), HOST).await.unwrap();
    assert!(response.ends_with("ok"), "{response}");
    tokio::time::timeout(WITHIN, server).await.unwrap().unwrap();
}

/// SIGHUP's reload reads the CA files again: after `ca init --force`, new leaves chain to
/// the new CA; a reload whose key is world-readable is refused and the running CA stays.
#[tokio::test]
async fn a_reload_with_a_rotated_ca_signs_new_leaves_with_it() {
    let ca = InterceptCaFiles::new(&[HOST]);
    let path = ca.dir.join("portcullis.toml");
    std::fs::write(&path, config_text(&ca, &[HOST])).unwrap();
    let config = Config::from_file(&path).unwrap();
    let handle = portcullis::app::start(config, Some(path.clone()))
        .await
        .unwrap();
    let mut server = serve(handle.shared.clone(), HOST, WITHIN).await;
    let old = ca.client_config();
    rustls_get(server.addr, old.clone(), HOST)
        .await
        .expect("trusted before the rotation");
    assert_eq!(server.next().await.label, "ok");

    ca.rotate(&[HOST]);
    let new = ca.client_config();
    handle.reload().expect("the rotated CA loads");
    rustls_get(server.addr, new.clone(), HOST)
        .await
        .expect("the new CA signs new leaves");
    assert_eq!(server.next().await.label, "ok");
    let err = rustls_get(server.addr, old.clone(), HOST)
        .await
        .expect_err("the old CA no longer");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert_eq!(server.next().await.label, "client_rejected_certificate");

    // A broken CA on reload: refused, and the running one stays in use.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ca.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = handle
        .reload()
        .expect_err("a world-readable key is refused")
        .to_string();
    assert!(err.contains("chmod 600"), "{err}");
    rustls_get(server.addr, new, HOST)
        .await
        .expect("still the rotated CA");
    assert_eq!(server.next().await.label, "ok");
    drop(server);
    handle.shutdown().await;
}
