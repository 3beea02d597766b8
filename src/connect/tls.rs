//! rustls client configs for TLS origination: system roots plus an upstream's `ca_file` roots, built once.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Certificates from a PEM file; an error says what is wrong in one line.
pub fn read_pem_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = crate::config::file::read_limited(path, crate::config::file::MAX_PEM_BYTES)
        .map_err(|e| format!("cannot read: {e}"))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut data.as_slice()).collect();
    let certs = certs.map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
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

/// Client configs keyed by the extra roots' contents, so each distinct trust set is built
/// once, and a request still running under an older config never shares a newer one's.
#[derive(Default)]
pub struct TlsClients {
    cache: Mutex<HashMap<u64, Arc<ClientConfig>>>,
}

impl TlsClients {
    pub fn new() -> Self {
        Self::default()
    }

    /// The config for an upstream whose `ca_file` held `extra` when its config was loaded.
    pub fn get(&self, extra: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>, String> {
        let key = {
            let mut h = DefaultHasher::new();
            for cert in extra {
                cert.as_ref().hash(&mut h);
            }
            h.finish()
        };
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        let mut roots = system_roots().clone();
        for cert in extra {
            roots
                .add(cert.clone())
                .map_err(|e| format!("ca_file: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, config.clone());
        Ok(config)
    }

    /// Forget cached configs (a reload may have changed a `ca_file`'s contents).
    pub fn clear(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
