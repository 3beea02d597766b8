//! Client certificate identities (SPEC §10) and the `[[client]].cert_names` patterns they match.
//!
//! Matching is pure: URIs compare exactly, DNS names and common names case-insensitively,
//! and a `*.example.com` pattern covers names below `example.com` as in host matching.
//! Reading the identities out of a certificate is `policy::identity`'s.

use std::fmt;

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

/// Identities longer than this are ignored, and patterns longer than it refused: identities
/// only feed comparisons with configured names, and a certificate is input we do not control.
pub const MAX_NAME_LEN: usize = 1024;

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

/// Patterns and names for table tests (also `policy::identity`'s).
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn pattern(s: &str) -> CertNamePattern {
        CertNamePattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    pub(crate) fn uri(s: &str) -> CertName {
        CertName::Uri(s.to_string())
    }

    pub(crate) fn dns(s: &str) -> CertName {
        CertName::Dns(s.to_string())
    }

    pub(crate) fn cn(s: &str) -> CertName {
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
    }
}
