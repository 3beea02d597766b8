//! The TLS proxy listener's rustls config, built from `tls_cert`, `tls_key` and `client_ca`.
//!
//! Built while the config is loaded (start-up, `check`, SIGHUP), so a broken or mismatched
//! file refuses the whole file and the running listener keeps the material it has; a loaded
//! config carries its `ServerConfig`, and new connections take it from the config snapshot.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::pem;

/// A built listener config; `Debug` does not print key material.
#[derive(Clone)]
pub struct ServerTls(pub Arc<ServerConfig>);

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTls(..)")
    }
}

/// The files as named in `[proxy]`, already resolved against the config file's folder.
pub struct Files<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub client_ca: Option<&'a Path>,
}

/// Build the listener config; each problem names the key, the file and the fix.
pub fn load(files: &Files) -> Result<ServerTls, Vec<String>> {
    let mut problems = Vec::new();
    let chain = pem::certificates(files.cert, "give the certificate chain, leaf first")
        .map_err(|e| problems.push(format!("tls_cert {}: {e}", files.cert.display())))
        .ok();
    let key = private_key(files.key)
        .map_err(|e| problems.push(format!("tls_key {}: {e}", files.key.display())))
        .ok();
    let verifier = match files.client_ca {
        None => Some(None),
        Some(path) => client_verifier(path)
            .map(Some)
            .map_err(|e| problems.push(format!("client_ca {}: {e}", path.display())))
            .ok(),
    };
    let (Some(chain), Some(key), Some(verifier)) = (chain, key, verifier) else {
        return Err(problems);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| vec![format!("TLS 1.2 and 1.3 unavailable: {e}")])?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => {
                "does not match the certificate; give the key tls_cert was issued for".to_string()
            }
            other => format!("cannot be used with tls_cert: {other}"),
        };
        vec![format!(
            "tls_key {} {why} (tls_cert {})",
            files.key.display(),
            files.cert.display()
        )]
    })?;
    // Clients of a proxy speak HTTP/1.1 to it; one that offers ALPN learns so.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerTls(Arc::new(config)))
}

/// The one private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let data = pem::read(path)?;
    match rustls_pemfile::private_key(&mut data.as_slice()) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(
            "holds no PEM private key (-----BEGIN PRIVATE KEY-----); give the key of tls_cert"
                .into(),
        ),
        Err(e) => Err(format!("not valid PEM: {e}")),
    }
}

/// Requires and verifies client certificates issued by the CAs in `path`.
fn client_verifier(
    path: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let certs = pem::certificates(
        path,
        "give the CA certificates that issue client certificates",
    )?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("certificate #{} is not a usable CA: {e}", i + 1))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("cannot verify client certificates with it: {e}"))
}

#[cfg(test)]
mod tests;
