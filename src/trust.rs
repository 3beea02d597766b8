//! The roots TLS origination verifies upstreams against (the system's plus an upstream's `ca_file`), as rustls client configs built while a config is loaded.
//!
//! Built at load (start-up, `check`, SIGHUP), never on a request: the system roots are read
//! from disk once per process, and an upstream's client config is made once per config load,
//! so a dial only clones an `Arc`, and a `ca_file` rustls refuses is a config error.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// An upstream's client config; `Debug` does not list the ~150 system roots.
#[derive(Clone)]
pub struct ClientTls(pub Arc<ClientConfig>);

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientTls(..)")
    }
}

/// The system's trust roots, loaded once per process; Mozilla's bundle when the system has none.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut store = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = store.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::warn!("no system trust roots found; using the built-in Mozilla roots");
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        store
    })
}

/// The client config of an upstream whose `ca_file` holds `extra` (empty without one). The
/// system-roots-only config is the same for every upstream and config: it is built once.
pub fn client_config(extra: &[CertificateDer<'static>]) -> Result<ClientTls, String> {
    static SYSTEM_ONLY: OnceLock<ClientTls> = OnceLock::new();
    if extra.is_empty() {
        if let Some(config) = SYSTEM_ONLY.get() {
            return Ok(config.clone());
        }
        let config = build(system_roots().clone())?;
        return Ok(SYSTEM_ONLY.get_or_init(|| config).clone());
    }
    let mut roots = system_roots().clone();
    for (i, cert) in extra.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| format!("certificate #{} is not a usable trust root: {e}", i + 1))?;
    }
    build(roots)
}

fn build(roots: RootCertStore) -> Result<ClientTls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ClientTls(Arc::new(config)))
}
