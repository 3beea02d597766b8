//! Intercept CAs for tests: made by `ca init`'s own generator in a fresh folder, with the
//! `[proxy]` lines that name them and clients that trust only them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use portcullis::intercept::constraints::Constraints;
use portcullis::intercept::init;
use portcullis::pattern::HostPattern;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use super::tls::ring_provider;

/// `intercept-ca.pem` and `intercept-ca-key.pem` (0600) in a folder of their own.
pub struct InterceptCaFiles {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl InterceptCaFiles {
    /// A CA whose name constraints permit exactly `hosts` (host patterns, as in `hosts = [...]`).
    pub fn new(hosts: &[&str]) -> InterceptCaFiles {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "intercept-ca-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create CA folder");
        let files = InterceptCaFiles {
            cert: dir.join(init::CERT_FILE),
            key: dir.join(init::KEY_FILE),
            dir,
        };
        files.rotate(hosts);
        files
    }

    /// Replace both files with a new CA for `hosts` (as `ca init --force` would).
    pub fn rotate(&self, hosts: &[&str]) {
        let patterns: Vec<HostPattern> = hosts
            .iter()
            .map(|h| HostPattern::parse(h).expect("host pattern"))
            .collect();
        let constraints = Constraints::for_hosts(&patterns.iter().collect::<Vec<_>>());
        let (cert, key) = init::generate(&constraints, time::OffsetDateTime::now_utc())
            .expect("generate intercept CA");
        std::fs::write(&self.key, key.serialize_pem()).expect("write CA key");
        std::fs::set_permissions(&self.key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod CA key");
        std::fs::write(&self.cert, cert.pem()).expect("write CA certificate");
    }

    /// The lines for `[proxy]` (`spawn_proxy_with(&ca.proxy_lines(), ...)`).
    pub fn proxy_lines(&self) -> String {
        format!(
            "intercept_ca_cert = {:?}\nintercept_ca_key = {:?}\n",
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }

    pub fn der(&self) -> CertificateDer<'static> {
        let pem = std::fs::read(&self.cert).expect("read CA certificate");
        let der = rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .expect("one certificate")
            .expect("PEM");
        der
    }

    /// A client trusting only this CA, offering ALPN `http/1.1`.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der()).expect("add CA");
        client_config_with(roots, &[b"http/1.1"])
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

/// A client config on the ring provider with these roots and ALPN protocols; no resumption,
/// so every connection makes a full handshake.
pub fn client_config_with(roots: RootCertStore, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}
