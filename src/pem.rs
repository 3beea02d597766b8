//! Certificates from PEM files (`ca_file`, `tls_cert`, `client_ca`, the intercept CA), read through the bounded reader.

use std::path::Path;

use rustls::pki_types::CertificateDer;

use crate::file::{read_limited, MAX_PEM_BYTES};

/// The bytes of a certificate or key file: bounded, and never blocking on a FIFO or a
/// device ([`crate::file`]). The error is one line, for "`<key>` `<path>`: cannot read: ...".
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    read_limited(path, MAX_PEM_BYTES).map_err(|e| format!("cannot read: {e}"))
}

/// The certificates of a PEM file, in file order, each one parsing as X.509; at least one.
/// `fix` ends the message for a file without any: what the file should hold.
pub fn certificates(path: &Path, fix: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = read(path)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut data.as_slice()).collect();
    let certs = certs.map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----); {fix}"
        ));
    }
    for (i, cert) in certs.iter().enumerate() {
        if x509_parser::parse_x509_certificate(cert).is_err() {
            return Err(format!(
                "certificate #{} does not parse as X.509; replace the file",
                i + 1
            ));
        }
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("portcullis-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir.join(name)
    }

    #[test]
    fn certificates_or_one_line_saying_why_not() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("sign");
        let two = format!("{}{}", cert.pem(), cert.pem());
        let not_x509 = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        let cases: Vec<(&str, String, Result<usize, &str>)> = vec![
            ("one.pem", cert.pem(), Ok(1)),
            ("two.pem", two, Ok(2)),
            (
                "key.pem",
                key.serialize_pem(),
                Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----); give X"),
            ),
            ("empty.pem", String::new(), Err("holds no PEM certificate")),
            (
                "garbage.pem",
                not_x509.to_string(),
                Err("certificate #1 does not parse as X.509"),
            ),
        ];
        for (name, text, want) in cases {
            let path = scratch(name);
            std::fs::write(&path, text).expect("write");
            match (certificates(&path, "give X"), want) {
                (Ok(certs), Ok(n)) => assert_eq!(certs.len(), n, "{name}"),
                (Err(e), Err(part)) => assert!(e.starts_with(part), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        let e = certificates(Path::new("/dev/zero"), "x").expect_err("device");
        assert!(e.starts_with("cannot read: it is a device"), "{e}");
    }
}
