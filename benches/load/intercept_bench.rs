//! What interception costs (issue 12, SPEC §9): the same HTTPS requests to one TLS origin
//! through a plain CONNECT tunnel, through interception, and as TLS origination (the app sends
//! `http://`): new app connections per second and proxy CPU per connection, then requests per
//! second and proxy CPU per request over connections that stay open.
//!
//! ```sh
//! cargo build --release --bin portcullis
//! cargo run --release --example intercept_bench -- [PROXY_BINARY] [SECONDS]
//! ```
//!
//! Defaults: `target/release/portcullis`, 5 s per cell. Loopback only; everything it starts
//! (the proxy, an in-process TLS origin answering 3 bytes) stops with it. The intercept CA is
//! made by the binary's own `ca init`. CPU is the proxy process's own (utime + stime).

#[path = "harness.rs"]
mod harness;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use harness::{
    connect_through, free_port, measure, one_request, row, spawn_origin, ProxyProcess, Res, Stop,
};

/// The name interception serves (and the origin's certificate names).
const HOST: &str = "localhost";

#[tokio::main]
async fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "target/release/portcullis".into()),
    );
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let cell = Duration::from_secs(secs);
    let dir =
        std::env::temp_dir().join(format!("portcullis-intercept-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let (origin_tls, origin_ca) = origin_pki(&dir)?;
    let origin = spawn_origin(Some(origin_tls)).await?;
    let (proxy, intercept_ca) = start_proxy(&bin, &dir, &origin_ca, origin.port())?;

    // The app's view in each mode: whom it trusts, which name it checks, what it sends.
    let origin_roots = roots(&origin_ca)?;
    let intercept_roots = roots(&intercept_ca)?;
    let tunnel = Mode {
        connect: Some(format!("127.0.0.1:{}", origin.port())),
        tls: Some((
            client_config(origin_roots),
            ServerName::try_from("127.0.0.1")?,
        )),
        request: Arc::from(
            format!(
                "GET /x HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
                origin.port()
            )
            .as_bytes(),
        ),
    };
    let intercept = Mode {
        connect: Some(format!("{HOST}:{}", origin.port())),
        tls: Some((client_config(intercept_roots), ServerName::try_from(HOST)?)),
        request: Arc::from(
            format!("GET /x HTTP/1.1\r\nHost: {HOST}:{}\r\n\r\n", origin.port()).as_bytes(),
        ),
    };
    let originate = Mode {
        connect: None,
        tls: None,
        request: Arc::from(
            format!(
                "GET http://{HOST}:{port}/x HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n",
                port = origin.port()
            )
            .as_bytes(),
        ),
    };
    let modes = [
        ("CONNECT tunnel (TLS end to end)", tunnel),
        ("interception", intercept),
        ("TLS origination (app sends http://)", originate),
    ];

    let mut rows = Vec::new();
    for (what, mode) in &modes {
        let mode = Arc::new(mode.clone());
        let (n, cpu) = measure(&proxy.process, cell, |stop| {
            new_connections(proxy.addr, mode.clone(), stop)
        })
        .await?;
        rows.push(row(
            &format!("new app connection + 1 request (c=16), {what}"),
            "connection",
            n,
            cpu,
            cell,
        ));
    }
    for (what, mode) in &modes {
        let mode = Arc::new(mode.clone());
        let (n, cpu) = measure(&proxy.process, cell, |stop| {
            reused_connection(proxy.addr, mode.clone(), stop)
        })
        .await?;
        rows.push(row(
            &format!("requests over an open connection (c=16), {what}"),
            "request",
            n,
            cpu,
            cell,
        ));
    }
    // SIGTERM: a clean exit (an instrumented binary writes its profile then).
    proxy.process.stop()?;
    let _ = std::fs::remove_dir_all(&dir);

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nInterception against a CONNECT tunnel and TLS origination, one TLS origin, {secs} s per cell, \
         {cpus} cores, loopback, proxy CPU from /proc (utime+stime), no TLS resumption:\n"
    );
    println!("| measured | rate | proxy CPU |\n|---|--:|--:|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

/// How an app reaches the origin: CONNECT first (to this authority) or not, TLS over what
/// follows (trusting these roots, checking this name) or not, and the request it sends.
#[derive(Clone)]
struct Mode {
    connect: Option<String>,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    request: Arc<[u8]>,
}

impl Mode {
    /// A new connection to the proxy, ready for requests.
    async fn open(&self, proxy: SocketAddr) -> Res<Box<dyn Stream>> {
        let mut tcp = TcpStream::connect(proxy).await?;
        tcp.set_nodelay(true)?;
        if let Some(authority) = &self.connect {
            connect_through(&mut tcp, authority).await?;
        }
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some((config, name)) => Box::new(
                TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await?,
            ),
        })
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Each round: a new connection (CONNECT and a full TLS handshake where the mode has them),
/// one request, and a clean close.
async fn new_connections(proxy: SocketAddr, mode: Arc<Mode>, stop: Arc<Stop>) -> Res<()> {
    while stop.running() {
        let mut s = mode.open(proxy).await?;
        one_request(&mut s, &mode.request).await?;
        s.shutdown().await?;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        if stop.running() {
            stop.count();
        }
    }
    Ok(())
}

async fn reused_connection(proxy: SocketAddr, mode: Arc<Mode>, stop: Arc<Stop>) -> Res<()> {
    let mut s = mode.open(proxy).await?;
    while stop.running() {
        one_request(&mut s, &mode.request).await?;
        stop.count();
    }
    Ok(())
}

/// No resumption: every new connection pays a full handshake, as a new app process would.
fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

fn roots(pem_file: &Path) -> Res<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let pem = std::fs::read(pem_file)?;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?)?;
    }
    Ok(roots)
}

/// A throw-away origin CA (written to `origin-ca.pem`) and the origin's TLS config, its
/// certificate naming `localhost` and 127.0.0.1.
fn origin_pki(dir: &Path) -> Res<(Arc<ServerConfig>, PathBuf)> {
    let ca_key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "bench origin CA");
    let ca = p.self_signed(&ca_key)?;
    let ca_path = dir.join("origin-ca.pem");
    std::fs::write(&ca_path, ca.pem())?;

    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(vec![HOST.to_string(), "127.0.0.1".to_string()])?;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &ca, &ca_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
    Ok((Arc::new(config), ca_path))
}

struct Proxy {
    process: ProxyProcess,
    addr: SocketAddr,
}

/// Writes the config (one upstream intercepted and originated by name, one tunnelled by
/// address, both the same origin), makes its intercept CA with `ca init`, and starts the
/// proxy; returns it with the intercept CA's certificate file.
fn start_proxy(bin: &Path, dir: &Path, origin_ca: &Path, port: u16) -> Res<(Proxy, PathBuf)> {
    let (listen, admin) = (free_port()?, free_port()?);
    let ca_dir = dir.join("intercept-ca");
    let (ca_cert, ca_key) = (
        ca_dir.join("intercept-ca.pem"),
        ca_dir.join("intercept-ca-key.pem"),
    );
    let config = dir.join("portcullis.toml");
    let mut f = std::fs::File::create(&config)?;
    writeln!(
        f,
        "[proxy]\nlisten = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         intercept_ca_cert = {ca_cert:?}\nintercept_ca_key = {ca_key:?}\n\n\
         [defaults]\nallow_private = true\nmax_idle = 64\n\n\
         [[upstream]]\nname = \"bank\"\nhosts = [\"{HOST}\"]\nports = [{port}]\n\
         connect = \"intercept\"\ntls = \"originate\"\nca_file = {origin_ca:?}\n\n\
         [[upstream]]\nname = \"bank-by-address\"\nhosts = [\"127.0.0.1\"]\nports = [{port}]\n"
    )?;
    drop(f);
    let init = Command::new(bin)
        .args(["ca", "init", "--out"])
        .arg(&ca_dir)
        .arg("--config")
        .arg(&config)
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !init.status.success() {
        return Err(format!("ca init failed: {}", String::from_utf8_lossy(&init.stderr)).into());
    }
    let addr: SocketAddr = ([127, 0, 0, 1], listen).into();
    let process = ProxyProcess::start(bin, &config, addr)?;
    Ok((Proxy { process, addr }, ca_cert))
}
