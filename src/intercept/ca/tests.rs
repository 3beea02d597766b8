//! Loading the intercept CA: what is accepted, and each refusal's message.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use super::*;
use crate::intercept::testing::{constraints_for, temp_dir, write_ca};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_ca_made_by_ca_init_loads_with_its_fingerprint_and_constraints() {
    let dir = temp_dir("load");
    let (cert, key) = write_ca(&dir, &["*.example.com", "127.0.0.1"]);
    let ca = InterceptCa::load(&cert, &key).unwrap();
    assert_eq!(ca.cert_path(), cert);
    assert_eq!(ca.key_path(), key);
    let der = crate::pem::certificates(&cert, "").unwrap().remove(0);
    assert_eq!(ca.cert_der(), &der);
    assert_eq!(ca.fingerprint(), colon_hex(&sha256(&der)));
    assert_eq!(ca.fingerprint().len(), 32 * 3 - 1);
    assert_eq!(
        ca.constraints(),
        Some(&constraints_for(&["*.example.com", "127.0.0.1"]))
    );
    let debug = format!("{ca:?}");
    assert!(debug.contains(&ca.fingerprint()), "{debug}");
    assert!(!debug.contains("PRIVATE"), "{debug}");
}

#[test]
fn a_key_open_to_group_or_others_is_refused_with_the_fix() {
    let dir = temp_dir("mode");
    let (cert, key) = write_ca(&dir, &["api.example.com"]);
    for mode in [0o644, 0o640, 0o604, 0o620, 0o601] {
        chmod(&key, mode);
        let err = InterceptCa::load(&cert, &key).unwrap_err();
        assert_eq!(
            err,
            format!(
                "intercept_ca_key {}: group or others have access to it (mode {mode:04o}); run `chmod 600 {}`",
                key.display(),
                key.display()
            )
        );
    }
    for mode in [0o600, 0o400] {
        chmod(&key, mode);
        assert!(InterceptCa::load(&cert, &key).is_ok(), "mode {mode:o}");
    }
}

#[test]
fn a_key_of_another_ca_is_refused() {
    let (one, two) = (temp_dir("one"), temp_dir("two"));
    let (cert, _) = write_ca(&one, &["api.example.com"]);
    let (_, other_key) = write_ca(&two, &["api.example.com"]);
    let err = InterceptCa::load(&cert, &other_key).unwrap_err();
    assert!(
        err.starts_with(&format!(
            "intercept_ca_key {}: does not belong to intercept_ca_cert {}",
            other_key.display(),
            cert.display()
        )),
        "{err}"
    );
}

#[test]
fn a_certificate_that_may_not_sign_is_refused() {
    let dir = temp_dir("notca");
    let key = rcgen::KeyPair::generate().unwrap();
    let key_path = dir.join("key.pem");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    chmod(&key_path, 0o600);
    let cases = [
        (rcgen::IsCa::NoCa, vec![], "not a CA certificate"),
        (rcgen::IsCa::ExplicitNoCa, vec![], "not a CA certificate"),
        (
            rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
            vec![rcgen::KeyUsagePurpose::DigitalSignature],
            "lacks keyCertSign",
        ),
    ];
    for (is_ca, usages, want) in cases {
        let mut params = rcgen::CertificateParams::new(vec!["ca.example.com".to_string()]).unwrap();
        params.is_ca = is_ca;
        params.key_usages = usages;
        let cert_path = dir.join("cert.pem");
        std::fs::write(&cert_path, params.self_signed(&key).unwrap().pem()).unwrap();
        let err = InterceptCa::load(&cert_path, &key_path).unwrap_err();
        assert!(
            err.starts_with(&format!("intercept_ca_cert {}: ", cert_path.display())),
            "{err}"
        );
        assert!(err.contains(want), "{err} lacks {want}");
    }
}

#[test]
fn a_ca_outside_its_validity_is_refused() {
    let dir = temp_dir("expired");
    let (cert, key) = write_ca(&dir, &["api.example.com"]);
    let ca = InterceptCa::load(&cert, &key).unwrap();
    let later = ca.not_after() + Duration::from_secs(1);
    let err = InterceptCa::load_at(&cert, &key, later).unwrap_err();
    assert!(
        err.contains("valid only from") && err.contains("ca init --force"),
        "{err}"
    );
    let earlier = SystemTime::now() - Duration::from_secs(2 * 3600);
    assert!(InterceptCa::load_at(&cert, &key, earlier).is_err());
}

#[test]
fn unreadable_and_malformed_files_are_refused_naming_the_key() {
    let dir = temp_dir("malformed");
    let (cert, key) = write_ca(&dir, &["api.example.com"]);
    let missing = dir.join("missing.pem");
    let err = InterceptCa::load(&missing, &key).unwrap_err();
    assert!(
        err.starts_with(&format!(
            "intercept_ca_cert {}: cannot read",
            missing.display()
        )),
        "{err}"
    );
    let err = InterceptCa::load(&cert, &missing).unwrap_err();
    assert!(
        err.starts_with(&format!(
            "intercept_ca_key {}: cannot read",
            missing.display()
        )),
        "{err}"
    );

    // Two certificates: which one is the CA would be a guess.
    let two = dir.join("two.pem");
    let pem = std::fs::read_to_string(&cert).unwrap();
    std::fs::write(&two, format!("{pem}{pem}")).unwrap();
    let err = InterceptCa::load(&two, &key).unwrap_err();
    assert!(err.contains("holds 2 certificates"), "{err}");

    // A SEC1 key (`openssl ecparam -genkey`) is not PKCS#8: the message says how to convert.
    let sec1 = dir.join("sec1.pem");
    std::fs::write(
        &sec1,
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIGJ1\n-----END EC PRIVATE KEY-----\n",
    )
    .unwrap();
    chmod(&sec1, 0o600);
    let err = InterceptCa::load(&cert, &sec1).unwrap_err();
    assert!(err.contains("openssl pkcs8 -topk8"), "{err}");
}

#[test]
fn serials_are_random_positive_and_sixteen_bytes() {
    let a = random_serial().unwrap();
    let b = random_serial().unwrap();
    assert_ne!(a, b);
    for s in [a, b] {
        assert_eq!(s.as_ref().len(), 16);
        assert!(s.as_ref()[0] & 0x80 == 0 && s.as_ref()[0] != 0);
    }
}
