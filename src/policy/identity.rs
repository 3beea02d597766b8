//! Client certificate identities (SPEC §10): what a verified certificate asserts, read once per connection.
//!
//! A verified certificate's identities are its URI and DNS subject alternative names (SPIFFE
//! IDs are URI SANs) and, only when it carries no SAN extension, its subject common name.

use x509_parser::extensions::GeneralName;

use crate::pattern::cert_name::{CertName, CertNamePattern, MAX_NAME_LEN};

/// At most this many identities are kept from one certificate (see [`MAX_NAME_LEN`]).
const MAX_NAMES: usize = 64;

/// Every identity of one client's verified certificate, read once per connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    pub names: Vec<CertName>,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    use crate::pattern::cert_name::tests::{cn, dns, pattern, uri};

    #[test]
    fn any_identity_matching_any_pattern() {
        let spiffe = "spiffe://prod/ns/payments/sa/connector";
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
