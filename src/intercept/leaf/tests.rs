//! Leaves read back with x509-parser and verified by webpki; the cache's sharing, renewal,
//! eviction and CA changes.

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry;
use x509_parser::prelude::FromDer;

use super::*;
use crate::intercept::testing::ca_for;
use crate::target::parse_host;

fn host(s: &str) -> Host {
    parse_host(s).unwrap()
}

fn der(leaf: &Leaf) -> &CertificateDer<'static> {
    &leaf.certified.cert[0]
}

/// rustls's own verifier (webpki) trusting only `ca`, checking `leaf` for `name` at `now`.
fn verify(ca: &InterceptCa, leaf: &Leaf, name: &str, now: SystemTime) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    verifier
        .verify_server_cert(
            der(leaf),
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::since_unix_epoch(since_epoch),
        )
        .map(|_| ())
}

#[test]
fn a_leaf_names_exactly_its_host_and_chains_to_the_ca() {
    let ca = ca_for(&["*.example.com"]);
    let now = SystemTime::now();
    let leaf = issue(&ca, &host("api.example.com"), now).unwrap();
    let (_, x509) = X509Certificate::from_der(der(&leaf)).unwrap();
    let (_, ca_x509) = X509Certificate::from_der(ca.cert_der()).unwrap();

    let san = x509.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::DNSName("api.example.com")]
    );
    let cn: Vec<_> = x509
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cn, ["api.example.com"]);
    let eku = x509.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && !eku.value.client_auth);
    assert!(
        x509.basic_constraints()
            .unwrap()
            .is_none_or(|bc| !bc.value.ca),
        "not a CA"
    );
    assert_eq!(
        x509.public_key()
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok()),
        Some(oid_registry::OID_EC_P256),
        "ECDSA P-256"
    );

    let start = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(
        x509.validity().not_before.timestamp(),
        start - 3600,
        "valid from an hour ago"
    );
    assert_eq!(
        x509.validity().not_after.timestamp(),
        start + 7 * 24 * 3600,
        "for 7 days"
    );

    assert_eq!(x509.issuer().as_raw(), ca_x509.subject().as_raw());
    assert!(x509.verify_signature(Some(ca_x509.public_key())).is_ok());
    let aki = x509
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    let skid = ca_x509
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
    assert!(
        aki.is_some() && aki == skid,
        "authority key id names the CA's key"
    );

    verify(&ca, &leaf, "api.example.com", now).expect("webpki accepts it");
    assert!(
        verify(&ca, &leaf, "other.example.com", now).is_err(),
        "for its host only"
    );

    let again = issue(&ca, &host("api.example.com"), now).unwrap();
    let (_, again) = X509Certificate::from_der(der(&again)).unwrap();
    assert_ne!(again.serial, x509.serial, "serials are random");
}

#[test]
fn an_ip_leaf_has_an_ip_san_and_no_common_name() {
    let ca = ca_for(&["127.0.0.1", "::1"]);
    let now = SystemTime::now();
    for (literal, bytes) in [
        ("127.0.0.1", vec![127, 0, 0, 1]),
        ("[::1]", {
            let mut v = vec![0u8; 16];
            v[15] = 1;
            v
        }),
    ] {
        let leaf = issue(&ca, &host(literal), now).unwrap();
        let (_, x509) = X509Certificate::from_der(der(&leaf)).unwrap();
        let san = x509.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::IPAddress(&bytes)]
        );
        assert_eq!(x509.subject().iter_common_name().count(), 0);
        let name = literal.trim_matches(|c| c == '[' || c == ']');
        verify(&ca, &leaf, name, now).expect("webpki accepts it");
    }
}

/// The name constraints are real: webpki refuses a leaf the CA signed outside them.
#[test]
fn webpki_refuses_leaves_outside_the_name_constraints() {
    let ca = ca_for(&["*.example.com", "api.stripe.com", "127.0.0.1"]);
    let now = SystemTime::now();
    for name in ["a.example.com", "api.stripe.com", "127.0.0.1"] {
        let leaf = issue(&ca, &host(name), now).unwrap();
        verify(&ca, &leaf, name, now).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in [
        "example.com",
        "evil.com",
        "x.api.stripe.com",
        "stripe.com",
        "10.0.0.1",
        "[::1]",
    ] {
        let leaf = issue(&ca, &host(name), now).unwrap();
        let unbracketed = name.trim_matches(|c| c == '[' || c == ']');
        let err = verify(&ca, &leaf, unbracketed, now).expect_err(name);
        assert!(
            format!("{err:?}").contains("NameConstraintViolation"),
            "{name}: {err:?}"
        );
    }
    // A name form with no permitted subtree would be unrestricted: the CA excludes all of it.
    let dns_only = ca_for(&["api.example.com"]);
    let ip_only = ca_for(&["127.0.0.1"]);
    for (ca, name) in [
        (&dns_only, "10.0.0.1"),
        (&dns_only, "[::1]"),
        (&ip_only, "api.example.com"),
    ] {
        let leaf = issue(ca, &host(name), now).unwrap();
        let unbracketed = name.trim_matches(|c| c == '[' || c == ']');
        let err = verify(ca, &leaf, unbracketed, now).expect_err(name);
        assert!(
            format!("{err:?}").contains("NameConstraintViolation"),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn a_leaf_never_outlives_its_ca() {
    let ca = ca_for(&["api.example.com"]);
    let now = ca.not_after() - Duration::from_secs(3 * 24 * 3600);
    let leaf = issue(&ca, &host("api.example.com"), now).unwrap();
    assert_eq!(leaf.not_after, ca.not_after());
    assert!(
        !leaf.renew_due(ca.not_after() - Duration::from_secs(60)),
        "a new one would end there too"
    );
}

#[test]
fn a_leaf_being_issued_is_waited_for_not_issued_again() {
    let cache = LeafCache::new(Some(ca_for(&["*.example.com"])));
    let (h, now) = (host("api.example.com"), SystemTime::now());
    let first = cache.slot(&h, now).unwrap();
    assert!(first.leaf.get().is_none(), "not issued yet");
    assert!(Arc::ptr_eq(&first, &cache.slot(&h, now).unwrap()), "joined");
    assert!(!Arc::ptr_eq(
        &first,
        &cache.slot(&host("www.example.com"), now).unwrap()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_leaf_per_host_shared_by_concurrent_handshakes() {
    let cache = Arc::new(LeafCache::new(Some(ca_for(&["*.example.com"]))));
    let start = Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (cache, start) = (cache.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                cache.get(&host("api.example.com")).await.unwrap()
            })
        })
        .collect();
    let mut leaves = Vec::new();
    for t in tasks {
        leaves.push(t.await.unwrap());
    }
    assert!(
        leaves.iter().all(|l| Arc::ptr_eq(l, &leaves[0])),
        "one leaf"
    );
    assert_eq!(cache.issued(), 1, "one issuance");
    let other = cache.get(&host("www.example.com")).await.unwrap();
    assert!(!Arc::ptr_eq(&other, &leaves[0]));
    assert_eq!((cache.len(), cache.issued()), (2, 2));
}

#[tokio::test]
async fn a_leaf_is_renewed_when_less_than_a_day_is_left() {
    let cache = LeafCache::new(Some(ca_for(&["api.example.com"])));
    let h = host("api.example.com");
    let t0 = SystemTime::now();
    let first = cache.get_at(&h, t0).await.unwrap();
    let day = Duration::from_secs(24 * 3600);
    let same = cache
        .get_at(&h, t0 + 6 * day - Duration::from_secs(1))
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&first, &same), "more than a day left: kept");
    let renewed = cache.get_at(&h, t0 + 6 * day).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &renewed), "a day left: renewed");
    assert_eq!(renewed.not_after, t0 + 6 * day + VALIDITY);
    let kept = cache
        .get_at(&h, t0 + 6 * day + Duration::from_secs(1))
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&renewed, &kept));
    assert_eq!(cache.len(), 1);
}

#[tokio::test]
async fn the_cache_is_bounded_least_recently_used_first() {
    let cache = LeafCache::with_capacity(Some(ca_for(&["*.example.com"])), 2);
    let (a, b, c) = (
        host("a.example.com"),
        host("b.example.com"),
        host("c.example.com"),
    );
    let leaf_a = cache.get(&a).await.unwrap();
    cache.get(&b).await.unwrap();
    assert!(
        Arc::ptr_eq(&leaf_a, &cache.get(&a).await.unwrap()),
        "a used again: b is older"
    );
    cache.get(&c).await.unwrap();
    assert_eq!(cache.len(), 2);
    assert!(
        Arc::ptr_eq(&leaf_a, &cache.get(&a).await.unwrap()),
        "a kept, b evicted"
    );
}

#[tokio::test]
async fn a_new_ca_empties_the_cache_and_signs_new_leaves() {
    let old = ca_for(&["api.example.com"]);
    let cache = LeafCache::new(Some(old.clone()));
    let h = host("api.example.com");
    let first = cache.get(&h).await.unwrap();

    // The same certificate (loaded again on reload) keeps the leaves.
    let same = Arc::new(InterceptCa::load(old.cert_path(), old.key_path()).unwrap());
    assert!(!cache.set_ca(Some(same)));
    assert!(Arc::ptr_eq(&first, &cache.get(&h).await.unwrap()));

    let new = ca_for(&["api.example.com"]);
    assert!(cache.set_ca(Some(new.clone())));
    assert_eq!(cache.len(), 0);
    let renewed = cache.get(&h).await.unwrap();
    let now = SystemTime::now();
    verify(&new, &renewed, "api.example.com", now).expect("chains to the new CA");
    assert!(
        verify(&old, &renewed, "api.example.com", now).is_err(),
        "not to the old one"
    );

    assert!(cache.set_ca(None));
    assert!(matches!(cache.get(&h).await, Err(LeafError::NoCa)));
}
