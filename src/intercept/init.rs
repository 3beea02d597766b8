//! `portcullis ca init`: a new intercept CA limited to the intercept hosts, its key 0600 from the start.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

use super::ca::{colon_hex, random_serial, sha256};
use super::constraints::Constraints;
use crate::config::{Config, ConnectMode};

/// The file names SPEC §9 gives, in `--out DIR`.
pub const CERT_FILE: &str = "intercept-ca.pem";
pub const KEY_FILE: &str = "intercept-ca-key.pem";

/// How long a new CA is valid. Rolling a CA out to every app is work, so not a few days; a
/// key that sits on the proxy host is a risk, so not ten years.
pub const CA_VALIDITY: time::Duration = time::Duration::days(730);

/// Why `ca init` made nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The config has no host to constrain the CA to (exit status 2, like a config error).
    #[error("{0}: no [[upstream]] has connect = \"intercept\"; the CA may sign only for the hosts of those upstreams, so add one first")]
    NoInterceptUpstream(String),
    #[error("{0}")]
    Failed(String),
}

/// What `ca init` wrote; `Display` is what it prints.
#[derive(Debug)]
pub struct Created {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub fingerprint: String,
    pub not_after: OffsetDateTime,
    pub constraints: Constraints,
}

/// Make a CA for the intercept upstreams of `config` and write it into `out` (created if
/// missing). Existing files are replaced only with `force`.
pub fn init(config: &Config, out: &Path, force: bool) -> Result<Created, InitError> {
    let hosts: Vec<_> = config
        .upstreams
        .iter()
        .filter(|u| u.connect == ConnectMode::Intercept)
        .flat_map(|u| u.hosts.iter())
        .collect();
    if hosts.is_empty() {
        return Err(InitError::NoInterceptUpstream(config.source.clone()));
    }
    let constraints = Constraints::for_hosts(&hosts);
    let fail = |what: String| InitError::Failed(format!("portcullis ca init: {what}"));
    std::fs::create_dir_all(out).map_err(|e| fail(format!("{}: {e}", out.display())))?;
    // Absolute: the paths printed go into a config, where relative ones mean another folder.
    let out = std::fs::canonicalize(out).map_err(|e| fail(format!("{}: {e}", out.display())))?;
    let cert_path = out.join(CERT_FILE);
    let key_path = out.join(KEY_FILE);
    if !force {
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(fail(format!(
                    "{} exists; keep it, or replace both files with --force",
                    path.display()
                )));
            }
        }
    }
    let (cert, key) =
        generate(&constraints, OffsetDateTime::now_utc()).map_err(|e| fail(e.to_string()))?;
    // The key first: a certificate without its key is of no use to anyone.
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600, force)
        .map_err(|e| fail(format!("{}: {e}", key_path.display())))?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644, force)
        .map_err(|e| fail(format!("{}: {e}", cert_path.display())))?;
    Ok(Created {
        cert_path,
        key_path,
        fingerprint: colon_hex(&sha256(cert.der())),
        not_after: cert.params().not_after,
        constraints,
    })
}

/// A self-signed ECDSA P-256 CA that may sign only end-entity certificates (path length 0)
/// for names within `constraints` (critical).
pub fn generate(
    constraints: &Constraints,
    now: OffsetDateTime,
) -> Result<(rcgen::Certificate, KeyPair), String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let serial = random_serial()?;
    let mut params = CertificateParams::default();
    // Unique per CA: during a rotation apps trust the old and the new one side by side.
    let tag = colon_hex(&serial.as_ref()[..4]).replace(':', "");
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("portcullis interception CA {} {tag}", now.date()),
    );
    dn.push(DnType::OrganizationName, "portcullis");
    params.distinguished_name = dn;
    params.serial_number = Some(serial);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = Some(constraints.to_rcgen());
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert, key))
}

/// Write a whole file with `mode` from its creation. Without `force` an existing file is an
/// error; with it, a new file is renamed over the old one, so no reader ever sees a partial
/// file and the key is never in a file with looser permissions.
fn write_file(path: &Path, contents: &[u8], mode: u32, force: bool) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let create = |p: &Path| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)?;
        f.write_all(contents)?;
        f.sync_all()
    };
    if !force {
        return create(path);
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = create(&tmp).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

impl fmt::Display for Created {
    /// The paths, the fingerprint, and how each kind of app comes to trust the CA.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cert = self.cert_path.display();
        let key = self.key_path.display();
        writeln!(f, "intercept CA certificate: {cert}")?;
        writeln!(f, "private key (mode 0600): {key}")?;
        writeln!(f, "SHA-256 fingerprint: {}", self.fingerprint)?;
        writeln!(f, "valid until: {}", self.not_after.date())?;
        writeln!(f, "name constraints: {}", self.constraints)?;
        writeln!(f)?;
        writeln!(f, "Use it: in the config's [proxy] section")?;
        writeln!(f, "  intercept_ca_cert = {:?}", cert.to_string())?;
        writeln!(f, "  intercept_ca_key = {:?}", key.to_string())?;
        writeln!(
            f,
            "then reload (SIGHUP) or restart portcullis. Keep the key on the proxy host only:"
        )?;
        writeln!(
            f,
            "whoever holds it can intercept the hosts above for every app that trusts the CA."
        )?;
        writeln!(f)?;
        writeln!(f, "Make the apps trust the certificate (never the key):")?;
        writeln!(
            f,
            "  Debian/Ubuntu system store (OpenSSL, curl, most runtimes):"
        )?;
        writeln!(f, "    cp {cert} /usr/local/share/ca-certificates/portcullis-intercept-ca.crt && update-ca-certificates")?;
        writeln!(f, "  Python requests, OpenSSL: REQUESTS_CA_BUNDLE / SSL_CERT_FILE replace the default roots;")?;
        writeln!(f, "    point them at a bundle holding the system roots and this CA, e.g. after the step above:")?;
        writeln!(f, "    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt")?;
        writeln!(f, "  Node.js: NODE_EXTRA_CA_CERTS={cert}")?;
        writeln!(
            f,
            "  Java: keytool -importcert -noprompt -alias portcullis-intercept -file {cert} \\"
        )?;
        writeln!(
            f,
            "    -keystore \"$JAVA_HOME/lib/security/cacerts\" -storepass changeit"
        )?;
        writeln!(
            f,
            "    (Java does not apply the name constraints of a trusted root: for Java apps the"
        )?;
        writeln!(
            f,
            "    constraints do not limit what a stolen key could sign)"
        )
    }
}

#[cfg(test)]
mod tests;
