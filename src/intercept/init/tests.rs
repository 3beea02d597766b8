//! `ca init`: the CA's contents read back with x509-parser, and how its files are written.

use std::os::unix::fs::PermissionsExt;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry;
use x509_parser::prelude::FromDer;

use super::*;
use crate::intercept::testing::{constraints_for, temp_dir};

fn config(upstreams: &str) -> Config {
    Config::parse(upstreams, "unit.toml", false).expect("valid config")
}

#[test]
fn the_ca_is_a_constrained_p256_ca_for_end_entities_only() {
    let constraints = constraints_for(&["*.example.com", "api.stripe.com", "127.0.0.1"]);
    let now = OffsetDateTime::now_utc();
    let (cert, _key) = generate(&constraints, now).unwrap();
    let (_, x509) = X509Certificate::from_der(cert.der()).unwrap();

    assert_eq!(
        x509.subject().as_raw(),
        x509.issuer().as_raw(),
        "self-signed"
    );
    assert!(x509.verify_signature(None).is_ok(), "signed by its own key");
    let cn = x509
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    assert!(cn.starts_with("portcullis interception CA "), "{cn}");
    assert_eq!(
        x509.public_key()
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok()),
        Some(oid_registry::OID_EC_P256),
        "ECDSA P-256"
    );

    let bc = x509.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    assert_eq!(
        bc.value.path_len_constraint,
        Some(0),
        "may sign leaves, not CAs"
    );
    let ku = x509.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());

    let nc = x509.name_constraints().unwrap().expect("name constraints");
    assert!(
        nc.critical,
        "a verifier that cannot apply them must refuse the CA"
    );
    assert_eq!(Constraints::from_x509(nc.value).unwrap(), constraints);

    let skid = x509.iter_extensions().any(|e| {
        matches!(
            e.parsed_extension(),
            ParsedExtension::SubjectKeyIdentifier(_)
        )
    });
    assert!(skid, "leaves name it by its key identifier");

    let not_before = x509.validity().not_before.timestamp();
    let not_after = x509.validity().not_after.timestamp();
    assert_eq!(
        not_before,
        (now - time::Duration::hours(1)).unix_timestamp()
    );
    assert_eq!(not_after, (now + CA_VALIDITY).unix_timestamp());

    // Two CAs made the same day still differ in name (and serial).
    let (other, _) = generate(&constraints, now).unwrap();
    let (_, other) = X509Certificate::from_der(other.der()).unwrap();
    assert_ne!(other.subject().as_raw(), x509.subject().as_raw());
    assert_ne!(other.serial, x509.serial);
}

#[test]
fn init_writes_the_key_0600_and_the_certificate_0644() {
    let dir = temp_dir("init").join("new-folder");
    let config = config(
        "[[upstream]]\nname = \"a\"\nhosts = [\"api.example.com\"]\nconnect = \"intercept\"\n",
    );
    let created = init(&config, &dir, false).unwrap();
    assert_eq!(created.cert_path, dir.join(CERT_FILE));
    assert_eq!(created.key_path, dir.join(KEY_FILE));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&created.key_path), 0o600);
    assert_eq!(mode(&created.cert_path) & 0o600, 0o600);
    // What was written loads as the CA, with the printed fingerprint.
    let ca =
        crate::intercept::ca::InterceptCa::load(&created.cert_path, &created.key_path).unwrap();
    assert_eq!(ca.fingerprint(), created.fingerprint);
    assert_eq!(ca.constraints(), Some(&created.constraints));
    let shown = created.to_string();
    for needle in [
        created.fingerprint.as_str(),
        "update-ca-certificates",
        "REQUESTS_CA_BUNDLE",
        "SSL_CERT_FILE",
        "NODE_EXTRA_CA_CERTS",
        "keytool -importcert",
    ] {
        assert!(shown.contains(needle), "{needle} missing from:\n{shown}");
    }
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}

#[test]
fn init_refuses_to_overwrite_unless_forced() {
    let dir = temp_dir("overwrite");
    let config = config(
        "[[upstream]]\nname = \"a\"\nhosts = [\"api.example.com\"]\nconnect = \"intercept\"\n",
    );
    let first = init(&config, &dir, false).unwrap();
    let key_before = std::fs::read(&first.key_path).unwrap();
    let err = init(&config, &dir, false).unwrap_err().to_string();
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(
        std::fs::read(&first.key_path).unwrap(),
        key_before,
        "untouched"
    );

    let second = init(&config, &dir, true).unwrap();
    assert_ne!(second.fingerprint, first.fingerprint);
    assert_ne!(std::fs::read(&second.key_path).unwrap(), key_before);
    let mode = std::fs::metadata(&second.key_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "no temporary file left: {leftovers:?}");
}

#[test]
fn init_needs_an_intercept_upstream() {
    let dir = temp_dir("none");
    let config = config("[[upstream]]\nname = \"a\"\nhosts = [\"api.example.com\"]\n");
    let err = init(&config, &dir, false).unwrap_err();
    assert!(matches!(err, InitError::NoInterceptUpstream(_)));
    assert_eq!(
        err.to_string(),
        "unit.toml: no [[upstream]] has connect = \"intercept\"; the CA may sign only for the hosts of those upstreams, so add one first"
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn only_intercept_upstreams_shape_the_constraints() {
    let dir = temp_dir("shape");
    let config = config(
        "[[upstream]]\nname = \"t\"\nhosts = [\"tunnel.example.com\"]\n\n[[upstream]]\nname = \"i\"\nhosts = [\"*.example.org\", \"10.1.2.3\"]\nconnect = \"intercept\"\n",
    );
    let created = init(&config, &dir, false).unwrap();
    assert_eq!(
        created.constraints,
        constraints_for(&["*.example.org", "10.1.2.3"])
    );
}
