//! Client certificate identities (SPEC §10) and the `[[client]].cert_names` patterns they match.
//!
//! A verified certificate's identities are its URI and DNS subject alternative names (SPIFFE
//! IDs are URI SANs) and, only when it carries no SAN extension, its subject common name.
//! Matching is pure: URIs compare exactly, DNS names and common names case-insensitively,
//! and a `*.example.com` pattern covers names below `example.com` as in host matching.

use std::fmt;

use x509_parser::extensions::GeneralName;

use super::host::HostPattern;

/// One identity a client certificate asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertName {
    /// A URI SAN, e.g. `spiffe://prod/ns/payments/sa/connector`.
    Uri(String),
    /// A DNS SAN.
    Dns(String),
    /// The subject CN of a certificate without SANs.
    CommonName(String),
}

impl CertName {
    fn text(&self) -> &str {
        match self {
            CertName::Uri(s) | CertName::Dns(s) | CertName::CommonName(s) => s,
        }
    }
}

impl fmt::Display for CertName {
    /// Quoted with control characters escaped: the text comes from a certificate and goes
    /// into one-line messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text())
    }
}

/// Every identity of one client's verified certificate, read once per connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    pub names: Vec<CertName>,
}

/// Identities longer than this, or more of them, are ignored: they only feed comparisons with
/// configured names, and a certificate is input we do not control.
const MAX_NAME_LEN: usize = 1024;
const MAX_NAMES: usize = 64;

impl PeerIdentity {
    /// The identities of a DER certificate; empty when it does not parse (rustls has already
    /// verified it, so that does not happen for a certificate we accepted).
    pub fn from_der(der: &[u8]) -> PeerIdentity {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return PeerIdentity::default();
        };
        let mut names = Vec::new();
        let keep = |s: &str| !s.is_empty() && s.len() <= MAX_NAME_LEN;
        match cert.subject_alternative_name() {
            Ok(Some(san)) => {
                for name in &san.value.general_names {
                    match name {
                        GeneralName::URI(u) if keep(u) => names.push(CertName::Uri(u.to_string())),
                        GeneralName::DNSName(d) if keep(d) => {
                            names.push(CertName::Dns(d.to_string()))
                        }
                        _ => {}
                    }
                }
            }
            Ok(None) => {
                if let Some(cn) = cert
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok())
                    .filter(|cn| keep(cn))
                {
                    names.push(CertName::CommonName(cn.to_string()));
                }
            }
            // Two SAN extensions, or one that does not parse: assert nothing.
            Err(_) => {}
        }
        names.truncate(MAX_NAMES);
        PeerIdentity { names }
    }

    /// Whether one identity equals one of `patterns`.
    pub fn matches_any(&self, patterns: &[CertNamePattern]) -> bool {
        self.names
            .iter()
            .any(|n| patterns.iter().any(|p| p.matches(n)))
    }
}

/// One entry of `[[client]].cert_names`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertNamePattern {
    /// Anything with `://`: a URI SAN, compared byte for byte.
    Uri(String),
    /// A DNS name or common name, compared case-insensitively.
    Name(String),
    /// `*.example.com`, stored as `.example.com`: any DNS name (or CN) below it.
    Suffix(String),
}

impl CertNamePattern {
    /// Parse one `cert_names` entry; the error is a one-line reason for a config message.
    pub fn parse(s: &str) -> Result<CertNamePattern, String> {
        let fail = |reason: &str| Err(format!("invalid cert_names entry {s:?}: {reason}"));
        if s.is_empty() {
            return fail("it is empty");
        }
        if s.len() > MAX_NAME_LEN || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return fail("it must be at most 1024 characters without spaces or control characters");
        }
        if let Some((scheme, rest)) = s.split_once("://") {
            if scheme.is_empty() || rest.is_empty() {
                return fail(
                    "a URI needs a scheme and a name, as in spiffe://prod/ns/payments/sa/connector",
                );
            }
            return Ok(CertNamePattern::Uri(s.to_string()));
        }
        if s.starts_with("*.") {
            // The same rules as a wildcard in [[upstream]].hosts.
            return match HostPattern::parse(s) {
                Ok(HostPattern::Suffix(suffix)) => Ok(CertNamePattern::Suffix(suffix)),
                Ok(_) => fail("a wildcard must cover a DNS name, as in *.example.com"),
                Err(e) => Err(format!("invalid cert_names entry {s:?}: {e}")),
            };
        }
        if s.contains('*') {
            return fail("a wildcard must be the whole first label, as in *.example.com");
        }
        Ok(CertNamePattern::Name(s.to_string()))
    }

    /// Whether `name` is covered by this pattern.
    pub fn matches(&self, name: &CertName) -> bool {
        match (self, name) {
            (CertNamePattern::Uri(p), CertName::Uri(u)) => p == u,
            (CertNamePattern::Name(p), CertName::Dns(n) | CertName::CommonName(n)) => {
                p.eq_ignore_ascii_case(n)
            }
            (CertNamePattern::Suffix(suffix), CertName::Dns(n) | CertName::CommonName(n)) => {
                // A wildcard in the certificate itself is matched only by the same pattern.
                if let Some(rest) = n.strip_prefix('*') {
                    return rest.eq_ignore_ascii_case(suffix);
                }
                let (n, suffix) = (n.as_bytes(), suffix.as_bytes());
                !n.contains(&b'*')
                    && n.len() > suffix.len()
                    && n[n.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            _ => false,
        }
    }
}

impl fmt::Display for CertNamePattern {
    /// The config text form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertNamePattern::Uri(s) | CertNamePattern::Name(s) => f.write_str(s),
            CertNamePattern::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn pattern(s: &str) -> CertNamePattern {
        CertNamePattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn uri(s: &str) -> CertName {
        CertName::Uri(s.to_string())
    }

    fn dns(s: &str) -> CertName {
        CertName::Dns(s.to_string())
    }

    fn cn(s: &str) -> CertName {
        CertName::CommonName(s.to_string())
    }

    #[test]
    fn parse_patterns() {
        let cases: &[(&str, CertNamePattern)] = &[
            (
                "spiffe://prod/ns/payments/sa/connector",
                CertNamePattern::Uri("spiffe://prod/ns/payments/sa/connector".into()),
            ),
            ("connector", CertNamePattern::Name("connector".into())),
            (
                "App.Example.com",
                CertNamePattern::Name("App.Example.com".into()),
            ),
            (
                "*.Payments.example.com",
                CertNamePattern::Suffix(".payments.example.com".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&pattern(text), want, "{text}");
        }
        assert_eq!(pattern("*.example.com").to_string(), "*.example.com");
        assert_eq!(pattern("spiffe://a/b").to_string(), "spiffe://a/b");
    }

    #[test]
    fn parse_refuses() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("*.com", "single label"),
            ("*.co.uk", "public suffix"),
            ("*", "whole first label"),
            ("a.*.example.com", "whole first label"),
            ("*.127.0.0.1", "IP"),
            ("spiffe://", "scheme and a name"),
            ("://x", "scheme and a name"),
            ("two words", "spaces"),
            ("line\nbreak", "control"),
        ];
        for (text, why) in cases {
            let e = CertNamePattern::parse(text).expect_err(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn matching() {
        let spiffe = "spiffe://prod/ns/payments/sa/connector";
        let cases: &[(&str, CertName, bool)] = &[
            // URIs compare exactly: the path of a SPIFFE ID is case-sensitive.
            (spiffe, uri(spiffe), true),
            (spiffe, uri("spiffe://prod/ns/payments/sa/Connector"), false),
            (
                spiffe,
                uri("spiffe://prod/ns/payments/sa/connector/x"),
                false,
            ),
            (spiffe, dns("prod"), false),
            ("connector", uri("connector"), false),
            // DNS names and common names ignore case.
            ("app.example.com", dns("APP.example.com"), true),
            ("app.example.com", cn("app.EXAMPLE.com"), true),
            ("connector", cn("Connector"), true),
            ("connector", cn("connector2"), false),
            ("app.example.com", dns("other.example.com"), false),
            // Wildcards as in host matching: below the suffix, at any depth, not the apex.
            ("*.example.com", dns("a.example.com"), true),
            ("*.example.com", dns("a.b.EXAMPLE.com"), true),
            ("*.example.com", cn("a.example.com"), true),
            ("*.example.com", dns("example.com"), false),
            ("*.example.com", dns("aexample.com"), false),
            ("*.example.com", uri("https://a.example.com"), false),
            // A wildcard in the certificate is only the same wildcard.
            ("*.example.com", dns("*.example.com"), true),
            ("*.example.com", dns("*.b.example.com"), false),
            ("*.example.com", dns("a*.example.com"), false),
            ("a.example.com", dns("*.example.com"), false),
        ];
        for (p, name, want) in cases {
            assert_eq!(pattern(p).matches(name), *want, "{p} vs {name:?}");
        }
        let id = PeerIdentity {
            names: vec![dns("a.example.com"), uri(spiffe)],
        };
        assert!(id.matches_any(&[pattern("b.example.com"), pattern(spiffe)]));
        assert!(!id.matches_any(&[pattern("b.example.com")]));
        assert!(!PeerIdentity::default().matches_any(&[pattern("*.example.com")]));
    }

    fn der(sans: Vec<SanType>, common_name: Option<&str>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(name) = common_name {
            params.distinguished_name.push(DnType::CommonName, name);
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn identities_from_certificates() {
        let spiffe = "spiffe://prod/ns/payments/sa/connector";
        let with_sans = der(
            vec![
                SanType::URI(spiffe.try_into().expect("ia5")),
                SanType::DnsName("connector.payments.svc".try_into().expect("ia5")),
                SanType::IpAddress([10, 0, 0, 1].into()),
            ],
            Some("ignored-cn"),
        );
        assert_eq!(
            PeerIdentity::from_der(&with_sans).names,
            vec![uri(spiffe), dns("connector.payments.svc")],
            "SANs only: the CN is not an identity when there are SANs"
        );
        let cn_only = der(vec![], Some("legacy-app"));
        assert_eq!(
            PeerIdentity::from_der(&cn_only).names,
            vec![cn("legacy-app")]
        );
        let ip_only = der(vec![SanType::IpAddress([10, 0, 0, 1].into())], Some("x"));
        assert!(PeerIdentity::from_der(&ip_only).names.is_empty());
        let nothing = der(vec![], None);
        assert!(PeerIdentity::from_der(&nothing).names.is_empty());
        assert!(PeerIdentity::from_der(b"not a certificate")
            .names
            .is_empty());
    }
}
