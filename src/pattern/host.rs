//! Host patterns from `[[upstream]].hosts`: exact names, `*.suffix` wildcards and IP literals.
//!
//! Pattern names go through `target::parse_host`, the same normalisation as
//! request hosts, so matching is plain comparison of normalised strings. A wildcard
//! directly over a public suffix (`*.co.uk`, `*.github.io`) is refused, by the Public
//! Suffix List that the `psl` crate compiles in, private section included.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::target::{parse_host, Host, TargetError};

/// One entry of `[[upstream]].hosts`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `a.example.com`: that name only.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any name below it, at any depth.
    Suffix(String),
    /// `127.0.0.1`, `::1` or `[::1]`: that address only, with no v4/v6 mapping.
    Ip(IpAddr),
}

impl HostPattern {
    /// Parse one entry of `[[upstream]].hosts`; the error is a one-line reason for a config error message.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let fail = |reason: &str| Err(format!("invalid host pattern {s:?}: {reason}"));
        if s.is_empty() {
            return fail("it is empty");
        }
        // Bare IPv6 is the config spelling; `parse_host` only takes it bracketed.
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(HostPattern::Ip(ip));
        }
        if s == "*" {
            return fail("it would allow every host");
        }
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if rest.contains('*') {
            return fail("a wildcard must be the whole first label, as in *.example.com");
        }
        let host = match parse_host(rest) {
            Ok(host) => host,
            Err(TargetError::InvalidHost { reason, .. }) => return fail(reason),
            Err(other) => return fail(&other.to_string()),
        };
        match (wildcard, host) {
            (false, Host::Name(name)) => Ok(HostPattern::Exact(name)),
            (false, Host::Ip(ip)) => Ok(HostPattern::Ip(ip)),
            (true, Host::Ip(_)) => fail("a wildcard cannot cover an IP address"),
            (true, Host::Name(name)) if !name.contains('.') => fail(
                "a wildcard over a single label (a top-level domain) allows too much; \
                 use at least *.example.com",
            ),
            (true, Host::Name(name)) if is_public_suffix(&name) => fail(&format!(
                "{name:?} is a public suffix: the names below it belong to different owners \
                 and this would allow them all; name one domain below it, as in *.example.{name}"
            )),
            (true, Host::Name(name)) => Ok(HostPattern::Suffix(format!(".{name}"))),
        }
    }

    /// Whether a request host is covered by this pattern. Names never match
    /// IP patterns and IPs never match name patterns.
    pub fn matches(&self, host: &Host) -> bool {
        // Hosts from `parse_host` are already lowercase; ignoring case here
        // keeps a hand-built `Host::Name` from slipping past a pattern.
        match (self, host) {
            (HostPattern::Exact(name), Host::Name(host)) => host.eq_ignore_ascii_case(name),
            (HostPattern::Suffix(suffix), Host::Name(host)) => {
                let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            (HostPattern::Ip(ip), Host::Ip(host)) => ip == host,
            _ => false,
        }
    }
}

/// Whether `name` (normalised, punycode) is itself on the Public Suffix List, ICANN or
/// private section (`co.uk`, `github.io`, or `x.ck` under the rule `*.ck`). A name under a
/// top-level domain the list does not know (`corp.internal`) is not.
fn is_public_suffix(name: &str) -> bool {
    psl::suffix(name.as_bytes()).is_some_and(|s| s.is_known() && s.as_bytes() == name.as_bytes())
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostPattern::parse(s)
    }
}

impl fmt::Display for HostPattern {
    /// The config text form: `a.example.com`, `*.example.com`, `127.0.0.1`, `::1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Suffix(suffix) => write!(f, "*{suffix}"),
            HostPattern::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(s: &str) -> HostPattern {
        HostPattern::Exact(s.to_string())
    }

    fn suffix(s: &str) -> HostPattern {
        HostPattern::Suffix(s.to_string())
    }

    fn ip(s: &str) -> HostPattern {
        HostPattern::Ip(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    fn pattern(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn host(s: &str) -> Host {
        parse_host(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parse_accepts() {
        let cases: &[(&str, HostPattern, &str)] = &[
            // input, parsed, displayed
            ("a.example.com", exact("a.example.com"), "a.example.com"),
            ("A.Example.COM", exact("a.example.com"), "a.example.com"),
            ("a.example.com.", exact("a.example.com"), "a.example.com"),
            ("localhost", exact("localhost"), "localhost"),
            (
                "xn--bcher-kva.example",
                exact("xn--bcher-kva.example"),
                "xn--bcher-kva.example",
            ),
            (
                "_svc.example.com",
                exact("_svc.example.com"),
                "_svc.example.com",
            ),
            ("*.example.com", suffix(".example.com"), "*.example.com"),
            ("*.EXAMPLE.com.", suffix(".example.com"), "*.example.com"),
            (
                "*.a.b.example.com",
                suffix(".a.b.example.com"),
                "*.a.b.example.com",
            ),
            (
                "*.example.co.uk",
                suffix(".example.co.uk"),
                "*.example.co.uk",
            ),
            (
                "*.api.stripe.com",
                suffix(".api.stripe.com"),
                "*.api.stripe.com",
            ),
            (
                "*.example.github.io",
                suffix(".example.github.io"),
                "*.example.github.io",
            ),
            // Not public suffixes: a name under a TLD the list does not know, and the
            // exception rule `!www.ck` under `*.ck`.
            (
                "*.corp.internal",
                suffix(".corp.internal"),
                "*.corp.internal",
            ),
            ("*.www.ck", suffix(".www.ck"), "*.www.ck"),
            // Exact names may be public suffixes: they allow that one host only.
            ("co.uk", exact("co.uk"), "co.uk"),
            ("github.io", exact("github.io"), "github.io"),
            ("127.0.0.1", ip("127.0.0.1"), "127.0.0.1"),
            ("127.0.0.1.", ip("127.0.0.1"), "127.0.0.1"),
            ("10.1.2.3", ip("10.1.2.3"), "10.1.2.3"),
            ("::1", ip("::1"), "::1"),
            ("[::1]", ip("::1"), "::1"),
            ("2606:4700:0::1", ip("2606:4700::1"), "2606:4700::1"),
            (
                "::ffff:127.0.0.1",
                ip("::ffff:127.0.0.1"),
                "::ffff:127.0.0.1",
            ),
        ];
        for (input, want, shown) in cases {
            let got = HostPattern::parse(input);
            assert_eq!(got.as_ref(), Ok(want), "{input}");
            assert_eq!(want.to_string(), *shown, "{input}");
            assert_eq!(
                HostPattern::parse(shown).as_ref(),
                Ok(want),
                "{shown} round-trips"
            );
            assert_eq!(
                input.parse::<HostPattern>().as_ref(),
                Ok(want),
                "{input} FromStr"
            );
        }
    }

    #[test]
    fn parse_rejects() {
        let cases: &[(&str, &str)] = &[
            // input, part of the reason
            ("", "empty"),
            ("*", "every host"),
            ("*.", "empty"),
            ("*.com", "single label"),
            ("*.COM.", "single label"),
            ("*.localhost", "single label"),
            // Public suffixes, from the list's ICANN section...
            ("*.co.uk", "\"co.uk\" is a public suffix"),
            ("*.CO.UK.", "\"co.uk\" is a public suffix"),
            ("*.com.au", "as in *.example.com.au"),
            ("*.gov.uk", "public suffix"),
            ("*.foo.ck", "public suffix"), // by the wildcard rule *.ck
            ("*.xn--55qx5d.cn", "public suffix"), // 公司.cn
            // ...and its private section: shared domains of hosting services.
            ("*.github.io", "\"github.io\" is a public suffix"),
            ("*.herokuapp.com", "public suffix"),
            ("*.s3.amazonaws.com", "public suffix"),
            ("**.example.com", "whole first label"),
            ("*.*.example.com", "whole first label"),
            ("a.*.com", "whole first label"),
            ("*foo.com", "whole first label"),
            ("foo*.example.com", "whole first label"),
            ("*example.com", "whole first label"),
            ("example.*", "whole first label"),
            (".example.com", "empty label"),
            ("*..example.com", "empty label"),
            ("example..com", "empty label"),
            ("example.com..", "empty label"),
            ("a b.example.com", "only letters"),
            (" example.com", "only letters"),
            ("example.com/", "only letters"),
            ("exa%6dple.com", "percent"),
            ("user@example.com", "userinfo"),
            ("b\u{fc}cher.example", "punycode"),
            ("example.com:443", "brackets"),
            ("https://example.com", "brackets"),
            ("*.127.0.0.1", "IP address"),
            ("2130706433", "IPv4"),
            ("127.1", "IPv4"),
            ("0x7f.1", "IPv4"),
            ("0177.0.0.1", "IPv4"),
            ("*.example.123", "IPv4"),
            ("[127.0.0.1]", "IPv6"),
            ("[fe80::1%25eth0]", "zone"),
            ("fe80::1%eth0", "brackets"),
        ];
        for (input, reason) in cases {
            match HostPattern::parse(input) {
                Ok(p) => panic!("{input:?} parsed as {p:?}"),
                Err(e) => {
                    assert!(e.contains(reason), "{input:?}: {e:?} lacks {reason:?}");
                    assert!(e.starts_with("invalid host pattern "), "{e}");
                    assert!(!e.contains('\n'), "{e}");
                }
            }
        }
    }

    #[test]
    fn matching() {
        let cases: &[(&str, &str, bool)] = &[
            // pattern, request host, matches
            ("a.example.com", "a.example.com", true),
            ("a.example.com", "A.EXAMPLE.COM", true),
            ("A.Example.Com", "a.example.com", true),
            ("a.example.com", "a.example.com.", true),
            ("a.example.com.", "a.example.com", true),
            ("a.example.com", "b.a.example.com", false),
            ("a.example.com", "example.com", false),
            ("a.example.com", "a.example.com.evil.example", false),
            ("a.example.com", "aa.example.com", false),
            ("example.com", "a.example.com", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "A.Example.COM.", true),
            ("*.example.com", "x.y.z.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "example.com.", false),
            ("*.example.com", "evilexample.com", false),
            ("*.example.com", "a.evilexample.com", false),
            ("*.example.com", "example.com.evil.example", false),
            ("*.example.com", "a.example.co", false),
            ("*.example.com", "a.example.com.evil", false),
            ("*.EXAMPLE.COM", "deep.sub.example.com", true),
            ("*.a.example.com", "b.a.example.com", true),
            ("*.a.example.com", "a.example.com", false),
            ("*.a.example.com", "b.example.com", false),
            // IPs: exact address, same family only.
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("127.0.0.1", "[::ffff:127.0.0.1]", false),
            ("::ffff:127.0.0.1", "127.0.0.1", false),
            ("::ffff:127.0.0.1", "[::ffff:127.0.0.1]", true),
            ("::1", "[::1]", true),
            ("[::1]", "[0:0:0:0:0:0:0:1]", true),
            ("::1", "127.0.0.1", false),
            ("::1", "[::2]", false),
            // IP patterns against names and the reverse.
            ("127.0.0.1", "localhost", false),
            ("localhost", "127.0.0.1", false),
            ("*.example.com", "127.0.0.1", false),
            ("*.example.com", "[::1]", false),
        ];
        for (p, h, want) in cases {
            assert_eq!(pattern(p).matches(&host(h)), *want, "{p} vs {h}");
        }
    }

    #[test]
    fn matching_ignores_case_of_hand_built_hosts() {
        let upper = Host::Name("A.EXAMPLE.COM".to_string());
        assert!(pattern("a.example.com").matches(&upper));
        assert!(pattern("*.example.com").matches(&upper));
        let suffix_only = Host::Name(".example.com".to_string());
        assert!(!pattern("*.example.com").matches(&suffix_only));
    }
}
