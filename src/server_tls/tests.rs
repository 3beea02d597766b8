//! Building the listener config from files: what loads, and what each broken file says.

use super::*;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// A fresh folder under the system temp dir for one test.
fn folder(name: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-server-tls-{}-{name}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("create test folder");
    dir
}

struct Pems {
    cert: String,
    key: String,
    ca: String,
}

fn pems() -> Pems {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["proxy.internal".to_string()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("leaf");
    Pems {
        cert: cert.pem(),
        key: key.serialize_pem(),
        ca: ca.pem(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn try_load(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<ServerTls, Vec<String>> {
    load(&Files {
        cert,
        key,
        client_ca: ca,
    })
}

#[test]
fn good_files_load_with_and_without_client_ca() {
    let dir = folder("good");
    let p = pems();
    let cert = write(&dir, "cert.pem", &p.cert);
    let key = write(&dir, "key.pem", &p.key);
    let ca = write(&dir, "ca.pem", &p.ca);
    let plain = try_load(&cert, &key, None).expect("loads");
    assert_eq!(plain.0.alpn_protocols, vec![b"http/1.1".to_vec()]);
    try_load(&cert, &key, Some(&ca)).expect("loads with client_ca");
    assert_eq!(
        format!("{plain:?}"),
        "ServerTls(..)",
        "no key material in Debug"
    );
}

#[test]
fn each_broken_file_is_named_with_its_key_and_a_fix() {
    let dir = folder("broken");
    let p = pems();
    let other = pems();
    let cert = write(&dir, "cert.pem", &p.cert);
    let key = write(&dir, "key.pem", &p.key);
    let ca = write(&dir, "ca.pem", &p.ca);
    let other_key = write(&dir, "other-key.pem", &other.key);
    let missing = dir.join("missing.pem");
    let garbage = write(&dir, "garbage.pem", "not a pem file\n");
    let bad_der = write(
        &dir,
        "bad-der.pem",
        "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
    );
    // (cert, key, client_ca, what every problem line must contain, in order)
    let cases: Vec<(&Path, &Path, Option<&Path>, Vec<String>)> = vec![
        (
            &cert,
            &other_key,
            None,
            vec![format!(
                "tls_key {} does not match the certificate; give the key tls_cert was issued for",
                other_key.display()
            )],
        ),
        (
            &missing,
            &key,
            None,
            vec![format!("tls_cert {}: cannot read", missing.display())],
        ),
        (
            &cert,
            &cert,
            None,
            vec![format!(
                "tls_key {}: holds no PEM private key",
                cert.display()
            )],
        ),
        (
            &key,
            &key,
            None,
            vec![format!(
                "tls_cert {}: holds no PEM certificate",
                key.display()
            )],
        ),
        (
            &garbage,
            &garbage,
            Some(&garbage),
            vec![
                format!("tls_cert {}: holds no PEM certificate", garbage.display()),
                format!("tls_key {}: holds no PEM private key", garbage.display()),
                format!("client_ca {}: holds no PEM certificate", garbage.display()),
            ],
        ),
        (
            &bad_der,
            &key,
            None,
            vec![format!(
                "tls_cert {}: certificate #1 does not parse as X.509",
                bad_der.display()
            )],
        ),
        (
            &cert,
            &key,
            Some(&missing),
            vec![format!("client_ca {}: cannot read", missing.display())],
        ),
    ];
    let mut failures = Vec::new();
    for (c, k, a, want) in &cases {
        match try_load(c, k, *a) {
            Ok(_) => failures.push(format!("{c:?} {k:?} {a:?}: loaded")),
            Err(got) => {
                let ok = got.len() == want.len()
                    && got.iter().zip(want).all(|(g, w)| g.contains(w.as_str()));
                if !ok {
                    failures.push(format!("{c:?} {k:?} {a:?}:\n got {got:?}\nwant {want:?}"));
                }
            }
        }
    }
    let _ = ca;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
