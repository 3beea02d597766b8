//! Interception costs: issuing a leaf, and a TLS handshake through `Interceptor::accept` with the
//! leaf cached, against a plain rustls acceptor holding one fixed certificate (the baseline:
//! what any TLS server pays). Both ends of each handshake run on one thread over an in-memory
//! pipe, so a handshake's time is the client's and the server's CPU together.
//!
//! `cargo bench --bench intercept`

use std::hint::black_box;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::config::Config;
use portcullis::intercept::server::Interceptor;
use portcullis::intercept::{constraints::Constraints, init, leaf};
use portcullis::metrics::Metrics;
use portcullis::pattern::HostPattern;
use portcullis::target::{parse_host, Host};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const HOST: &str = "api.example.com";

/// A config with one intercept upstream and a CA made by `ca init`'s generator.
fn setup() -> Config {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-intercept");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pattern = HostPattern::parse(HOST).unwrap();
    let constraints = Constraints::for_hosts(&[&pattern]);
    let (cert, key) = init::generate(&constraints, time::OffsetDateTime::now_utc()).unwrap();
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        "[proxy]\nintercept_ca_cert = {cert_path:?}\nintercept_ca_key = {key_path:?}\n\n[[upstream]]\nname = \"bench\"\nhosts = [\"{HOST}\"]\nconnect = \"intercept\"\n"
    );
    Config::from_toml(&text, "bench.toml").unwrap()
}

fn client_config(config: &Config) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let ca = config.proxy.intercept_ca.as_ref().unwrap();
    roots.add(ca.cert_der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every iteration a full handshake, as a new client would make.
    c.resumption = rustls::client::Resumption::disabled();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

fn issuance(c: &mut Criterion) {
    let config = setup();
    let ca = config.proxy.intercept_ca.clone().unwrap();
    let host: Host = parse_host(HOST).unwrap();
    let mut group = c.benchmark_group("leaf");
    group.bench_function("issue (P-256 key, ECDSA signature, rustls key)", |b| {
        b.iter(|| leaf::issue(black_box(&ca), black_box(&host), SystemTime::now()).unwrap())
    });
    group.bench_function("baseline: P-256 key generation alone", |b| {
        b.iter(|| rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap())
    });
    group.finish();
}

fn handshakes(c: &mut Criterion) {
    let config = setup();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let interceptor = Arc::new(Interceptor::new(&config, &Metrics::new()));
    let host: Host = parse_host(HOST).unwrap();
    // Warm the cache: the handshakes below use the cached leaf.
    let cached = rt.block_on(interceptor.leaves().get(&host)).unwrap();
    let connector = TlsConnector::from(client_config(&config));
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();

    // The baseline: a fixed-certificate acceptor serving the same leaf.
    let mut fixed =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(cached.certified.clone())));
    fixed.alpn_protocols = vec![b"http/1.1".to_vec()];
    let fixed = TlsAcceptor::from(Arc::new(fixed));

    let mut group = c.benchmark_group("handshake (client + server, TLS 1.3, full)");
    group.bench_function("baseline: rustls acceptor, one fixed certificate", |b| {
        b.to_async(&rt).iter(|| async {
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let name = ServerName::try_from(HOST).unwrap();
            let (client, server) =
                tokio::join!(connector.connect(name, client_io), fixed.accept(server_io));
            let (mut client, _server) = (client.unwrap(), server.unwrap());
            client.flush().await.unwrap();
        })
    });
    group.bench_function("Interceptor::accept, leaf cached", |b| {
        b.to_async(&rt).iter(|| async {
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let name = ServerName::try_from(HOST).unwrap();
            let (client, server) = tokio::join!(
                connector.connect(name, client_io),
                interceptor.accept(server_io, &host, "bench", peer, Duration::from_secs(5))
            );
            let (mut client, _server) = (client.unwrap(), server.unwrap());
            client.flush().await.unwrap();
        })
    });
    group.finish();
}

/// Serves one certificate to every client.
#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

criterion_group!(benches, issuance, handshakes);
criterion_main!(benches);
