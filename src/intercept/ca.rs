//! The intercept CA named by `intercept_ca_cert` / `intercept_ca_key`: read, checked, ready to sign.
//!
//! Everything a leaf needs is checked here, once, when the config is loaded (start and
//! SIGHUP), so a CA that cannot work is a config error instead of failed handshakes later:
//! the certificate parses, is a CA allowed to sign certificates and is valid now; the key
//! file is private to its owner, parses, and belongs to the certificate; and the issuer name
//! rcgen writes into a leaf is byte for byte the CA's subject (webpki compares the bytes).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::constraints::Constraints;

/// A loaded intercept CA. `Debug` shows the paths and the fingerprint, never the key.
pub struct InterceptCa {
    cert_path: PathBuf,
    key_path: PathBuf,
    cert: CertificateDer<'static>,
    /// rcgen's view of the CA (its subject and key identifier), to name the issuer of leaves.
    issuer: rcgen::Certificate,
    key: rcgen::KeyPair,
    fingerprint: [u8; 32],
    not_after: SystemTime,
    /// `None`: the certificate has no NameConstraints extension (its key can sign for anything).
    constraints: Option<Constraints>,
}

impl InterceptCa {
    /// Read and check both files; the error is one line naming the config key, the file and the fix.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<InterceptCa, String> {
        Self::load_at(cert_path, key_path, SystemTime::now())
    }

    fn load_at(cert_path: &Path, key_path: &Path, now: SystemTime) -> Result<InterceptCa, String> {
        let cert_err = |what: String| format!("intercept_ca_cert {}: {what}", cert_path.display());
        let key_err = |what: String| format!("intercept_ca_key {}: {what}", key_path.display());

        let cert = read_one_cert(cert_path).map_err(cert_err)?;
        let (_, x509) = X509Certificate::from_der(&cert)
            .map_err(|e| cert_err(format!("not an X.509 certificate: {e}")))?;
        check_can_sign(&x509).map_err(cert_err)?;
        let not_after = to_system_time(x509.validity().not_after.timestamp());
        let not_before = to_system_time(x509.validity().not_before.timestamp());
        if now < not_before || now >= not_after {
            return Err(cert_err(format!(
                "valid only from {} to {}; make a new CA with `portcullis ca init --force`",
                x509.validity().not_before,
                x509.validity().not_after
            )));
        }
        let constraints = match x509.name_constraints() {
            Ok(None) => None,
            Ok(Some(ext)) => Some(Constraints::from_x509(ext.value).map_err(cert_err)?),
            Err(e) => return Err(cert_err(format!("its name constraints do not parse: {e}"))),
        };

        check_private(key_path).map_err(key_err)?;
        let pem = crate::file::read_text(key_path, crate::file::MAX_PEM_BYTES)
            .map_err(|e| key_err(format!("cannot read: {e}")))?;
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| {
            key_err(format!(
                "not a PKCS#8 private key in PEM (-----BEGIN PRIVATE KEY-----; convert with `openssl pkcs8 -topk8 -nocrypt`): {e}"
            ))
        })?;
        if key.public_key_der() != x509.public_key().raw {
            return Err(key_err(format!(
                "does not belong to intercept_ca_cert {} (its public key differs); use the key file made with that certificate",
                cert_path.display()
            )));
        }

        let issuer = rcgen::CertificateParams::from_ca_cert_der(&cert)
            .and_then(|params| params.self_signed(&key))
            .map_err(|e| cert_err(format!("cannot be used to sign: {e}")))?;
        let (_, reproduced) = X509Certificate::from_der(issuer.der())
            .map_err(|e| cert_err(format!("cannot be used to sign: {e}")))?;
        if reproduced.subject().as_raw() != x509.subject().as_raw() {
            return Err(cert_err(
                "its subject name is encoded in a way leaves cannot repeat exactly; make a CA with `portcullis ca init`".into(),
            ));
        }
        Ok(InterceptCa {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            fingerprint: sha256(&cert),
            cert,
            issuer,
            key,
            not_after,
            constraints,
        })
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The CA certificate (DER), the trust anchor clients must hold.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// SHA-256 of the certificate, `AB:CD:…` as `openssl x509 -fingerprint -sha256` shows it.
    pub fn fingerprint(&self) -> String {
        colon_hex(&self.fingerprint)
    }

    /// Whether `other` is the same certificate (and therefore the same key).
    pub fn same_as(&self, other: &InterceptCa) -> bool {
        self.fingerprint == other.fingerprint
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The DNS and IP name constraints; `None` when the CA has none.
    pub fn constraints(&self) -> Option<&Constraints> {
        self.constraints.as_ref()
    }

    /// Sign a leaf with this CA.
    pub(crate) fn sign(
        &self,
        params: rcgen::CertificateParams,
        leaf_key: &rcgen::KeyPair,
    ) -> Result<rcgen::Certificate, rcgen::Error> {
        params.signed_by(leaf_key, &self.issuer, &self.key)
    }
}

impl fmt::Debug for InterceptCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterceptCa")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// The one certificate of a PEM file.
fn read_one_cert(path: &Path) -> Result<CertificateDer<'static>, String> {
    let mut certs = crate::pem::certificates(path, "give the intercept CA certificate")?;
    if certs.len() > 1 {
        return Err(format!(
            "holds {} certificates; it must hold only the CA certificate",
            certs.len()
        ));
    }
    certs
        .pop()
        .ok_or_else(|| "holds no PEM certificate".to_string())
}

/// basicConstraints CA:TRUE, and keyCertSign when a keyUsage is present (RFC 5280 §4.2.1.3).
fn check_can_sign(x509: &X509Certificate<'_>) -> Result<(), String> {
    let is_ca = match x509.basic_constraints() {
        Ok(Some(bc)) => bc.value.ca,
        Ok(None) => false,
        Err(e) => return Err(format!("its basicConstraints do not parse: {e}")),
    };
    if !is_ca {
        return Err(
            "not a CA certificate (basicConstraints CA:TRUE is missing); make one with `portcullis ca init`"
                .into(),
        );
    }
    match x509.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            Err("its keyUsage lacks keyCertSign: it may not sign certificates".into())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!("its keyUsage does not parse: {e}")),
    }
}

/// A private key readable by group or others is refused: it can sign for every intercept host.
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "group or others have access to it (mode {mode:04o}); run `chmod 600 {}`",
            path.display()
        ));
    }
    Ok(())
}

fn to_system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// `AB:CD:…`
pub(crate) fn colon_hex(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// 16 random bytes, positive and without a leading zero: a serial number no one can predict.
pub(crate) fn random_serial() -> Result<rcgen::SerialNumber, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random number generator failed".to_string())?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests;
