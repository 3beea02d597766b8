//! The TLS proxy listener under load (issue 18): handshakes per second and proxy CPU per
//! handshake, requests per second over reused TLS connections against the plain listener, and
//! the memory an idle TLS client connection costs.
//!
//! ```sh
//! cargo build --release --bin portcullis
//! cargo run --release --example tls_bench -- [PROXY_BINARY] [SECONDS] [IDLE_CONNECTIONS]
//! ```
//!
//! Defaults: `target/release/portcullis`, 5 s per cell, 2 000 idle connections. Loopback only;
//! everything it starts (the proxy, an in-process origin answering 3 bytes) stops with it.
//! CPU is the proxy process's own (utime + stime from /proc), so the load generator's share of
//! the machine does not count; on a small machine the generator still limits the rates.

#[path = "harness.rs"]
mod harness;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use harness::{free_port, measure, one_request, row, spawn_origin, ProxyProcess, Res, Stop};

#[tokio::main]
async fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "target/release/portcullis".into()),
    );
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let idle: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let cell = Duration::from_secs(secs);
    let dir = std::env::temp_dir().join(format!("portcullis-tls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pki = Pki::write(&dir)?;
    let origin = spawn_origin(None).await?;
    let request = format!("GET http://{origin}/x HTTP/1.1\r\nHost: x\r\n\r\n");

    let mut rows = Vec::new();
    let tls13 = Some(&rustls::version::TLS13);
    let cases = [
        ("TLS 1.3", tls13, false),
        ("TLS 1.2", Some(&rustls::version::TLS12), false),
        (
            "TLS 1.3, client certificate verified (client_ca)",
            tls13,
            true,
        ),
    ];
    for (what, version, mtls) in cases {
        let proxy = Proxy::start(&bin, &dir, &pki, origin.port(), mtls)?;
        let config = pki.client_config(version, mtls.then_some(&pki.client));
        let (n, cpu) = measure(&proxy.process, cell, |stop| {
            handshakes(proxy.tls, config.clone(), stop)
        })
        .await?;
        rows.push(format!(
            "| full handshakes (c=16), {what} | {:.0}/s | {:.0} µs per handshake |",
            n as f64 / cell.as_secs_f64(),
            cpu.as_micros() as f64 / n.max(1) as f64
        ));
    }
    let proxy = Proxy::start(&bin, &dir, &pki, origin.port(), true)?;
    let tls_config = pki.client_config(Some(&rustls::version::TLS13), Some(&pki.client));
    let (n, cpu) = measure(&proxy.process, cell, |stop| {
        requests_tls(proxy.tls, tls_config.clone(), request.clone(), stop)
    })
    .await?;
    rows.push(row(
        "requests over reused TLS 1.3 connections (c=16)",
        "request",
        n,
        cpu,
        cell,
    ));
    let (n, cpu) = measure(&proxy.process, cell, |stop| {
        requests_plain(proxy.plain, request.clone(), stop)
    })
    .await?;
    rows.push(row(
        "requests over reused plain connections (c=16)",
        "request",
        n,
        cpu,
        cell,
    ));

    let plain_kib = idle_cost(&proxy.process, idle, || {
        let (addr, request) = (proxy.plain, request.clone());
        async move {
            let mut s = TcpStream::connect(addr).await?;
            one_request(&mut s, request.as_bytes()).await?;
            Ok(Box::new(s) as Box<dyn Send>)
        }
    })
    .await?;
    let tls_kib = idle_cost(&proxy.process, idle, || {
        let (addr, config, request) = (proxy.tls, tls_config.clone(), request.clone());
        async move {
            let mut s = connect_tls(addr, config).await?;
            one_request(&mut s, request.as_bytes()).await?;
            Ok(Box::new(s) as Box<dyn Send>)
        }
    })
    .await?;
    rows.push(format!(
        "| idle client connections ({idle}, after one request each) | plain {plain_kib:.1} KiB | TLS {tls_kib:.1} KiB per connection |"
    ));
    // SIGTERM: a clean exit (an instrumented binary writes its profile then).
    proxy.process.stop()?;
    let _ = std::fs::remove_dir_all(&dir);

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("\nTLS listener, {secs} s per cell, {cpus} cores, loopback, proxy CPU from /proc (utime+stime):\n");
    println!("| measured | rate | proxy CPU / memory |\n|---|--:|--:|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

/// Full handshakes (no resumption), each on a new connection closed right after.
async fn handshakes(addr: SocketAddr, config: Arc<ClientConfig>, stop: Arc<Stop>) -> Res<()> {
    while stop.running() {
        let mut s = connect_tls(addr, config.clone()).await?;
        // TLS 1.3 servers check the client certificate after the client's side is done:
        // a round trip (close_notify answered by EOF) includes that check in the count.
        s.shutdown().await?;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        if stop.running() {
            stop.count();
        }
    }
    Ok(())
}

async fn requests_tls(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    request: String,
    stop: Arc<Stop>,
) -> Res<()> {
    let mut s = connect_tls(addr, config).await?;
    while stop.running() {
        one_request(&mut s, request.as_bytes()).await?;
        stop.count();
    }
    Ok(())
}

async fn requests_plain(addr: SocketAddr, request: String, stop: Arc<Stop>) -> Res<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    while stop.running() {
        one_request(&mut s, request.as_bytes()).await?;
        stop.count();
    }
    Ok(())
}

async fn connect_tls(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> Res<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(addr.ip().into());
    Ok(TlsConnector::from(config).connect(name, tcp).await?)
}

/// KiB of proxy RSS per connection while `n` connections made by `open` sit idle.
async fn idle_cost<F, Fut>(proxy: &ProxyProcess, n: usize, open: F) -> Res<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Res<Box<dyn Send>>> + Send + 'static,
{
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proxy.rss_kib();
    let mut held = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let batch: Vec<_> = chunk.iter().map(|_| tokio::spawn(open())).collect();
        for b in batch {
            held.push(b.await??);
        }
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = proxy.rss_kib();
    drop(held);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

/// Throw-away CAs: the proxy's certificate, and a client certificate with a SPIFFE ID.
struct Pki {
    proxy_ca: CertificateDer<'static>,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    client: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
}

impl Pki {
    fn write(dir: &Path) -> Res<Pki> {
        let ca = |name: &str| -> Res<(rcgen::Certificate, KeyPair)> {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            Ok((p.self_signed(&key)?, key))
        };
        let (proxy_ca, proxy_ca_key) = ca("bench proxy CA")?;
        let (client_ca, client_ca_key) = ca("bench client CA")?;
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()])?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &proxy_ca, &proxy_ca_key)?;
        let (cert_path, key_path) = (dir.join("proxy.pem"), dir.join("proxy-key.pem"));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        let client_ca_path = dir.join("clients.pem");
        std::fs::write(&client_ca_path, client_ca.pem())?;
        let ckey = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://bench/ns/payments/sa/connector".try_into()?,
        )];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let ccert = p.signed_by(&ckey, &client_ca, &client_ca_key)?;
        Ok(Pki {
            proxy_ca: proxy_ca.der().clone(),
            cert: cert_path,
            key: key_path,
            client_ca: client_ca_path,
            client: (
                vec![ccert.der().clone()],
                PrivateKeyDer::Pkcs8(ckey.serialize_der().into()),
            ),
        })
    }

    /// No resumption: every handshake is a full one.
    fn client_config(
        &self,
        version: Option<&'static rustls::SupportedProtocolVersion>,
        cert: Option<&(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.proxy_ca.clone()).expect("proxy CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version.unwrap_or(&rustls::version::TLS13)])
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match cert {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .expect("client key"),
            None => builder.with_no_client_auth(),
        };
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

/// The proxy binary with a plain and a TLS listener; with `client_ca`, every TLS client must
/// present a certificate (no `[[client]]` entry, so any verified one may use the origin).
struct Proxy {
    process: ProxyProcess,
    plain: SocketAddr,
    tls: SocketAddr,
}

impl Proxy {
    fn start(bin: &Path, dir: &Path, pki: &Pki, origin_port: u16, client_ca: bool) -> Res<Proxy> {
        let (plain, admin, tls) = (free_port()?, free_port()?, free_port()?);
        let config = dir.join("portcullis.toml");
        let mut f = std::fs::File::create(&config)?;
        writeln!(
            f,
            "[proxy]\nlisten = \"127.0.0.1:{plain}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             tls_listen = \"127.0.0.1:{tls}\"\ntls_cert = {:?}\ntls_key = {:?}",
            pki.cert, pki.key
        )?;
        if client_ca {
            writeln!(f, "client_ca = {:?}", pki.client_ca)?;
        }
        writeln!(
            f,
            "\n[[upstream]]\nname = \"origin\"\nhosts = [\"127.0.0.1\"]\nports = [{origin_port}]\nallow_private = true"
        )?;
        drop(f);
        let tls: SocketAddr = ([127, 0, 0, 1], tls).into();
        Ok(Proxy {
            process: ProxyProcess::start(bin, &config, tls)?,
            plain: ([127, 0, 0, 1], plain).into(),
            tls,
        })
    }
}
