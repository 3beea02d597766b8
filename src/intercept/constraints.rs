//! X.509 name constraints of the intercept CA: made from the intercept hosts, read back from a CA.
//!
//! RFC 5280 §4.2.1.10 semantics, as OpenSSL, webpki (rustls), Go and NSS apply them:
//! - a dNSName `example.com` permits `example.com` and every name below it; `.example.com`
//!   (leading dot) only the names below it; the empty name every name;
//! - a name form with no permitted subtree is not restricted at all: a CA that permits only
//!   DNS names may still sign for any IP address unless IP addresses are excluded;
//! - an excluded subtree wins over a permitted one.
//!
//! So the CA for `*.example.com`, `api.stripe.com` and `127.0.0.1` permits `.example.com`,
//! `api.stripe.com` and `127.0.0.1/32`, and excludes `.api.stripe.com` (nothing below the exact
//! name). With no IP host it excludes every address (`0.0.0.0/0`, `::/0`); with no DNS host,
//! every name (the empty dNSName), as the CA/Browser Forum requires of constrained CAs.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::pattern::HostPattern;

/// The DNS and IP subtrees of a CA's NameConstraints extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Constraints {
    /// Lowercase; a leading dot means "below this name only"; empty means every name.
    pub permitted_dns: Vec<String>,
    pub excluded_dns: Vec<String>,
    pub permitted_ip: Vec<IpNet>,
    pub excluded_ip: Vec<IpNet>,
}

impl Constraints {
    /// The narrowest constraints that still permit every host the patterns allow.
    pub fn for_hosts(hosts: &[&HostPattern]) -> Constraints {
        let mut c = Constraints::default();
        for pattern in hosts {
            match pattern {
                HostPattern::Exact(name) => {
                    push_unique(&mut c.permitted_dns, name.clone());
                    // `name` alone would also permit every name below it: exclude them,
                    // unless another intercept pattern needs one of them.
                    if !hosts.iter().any(|other| reaches_below(other, name)) {
                        push_unique(&mut c.excluded_dns, format!(".{name}"));
                    }
                }
                HostPattern::Suffix(dot_suffix) => {
                    push_unique(&mut c.permitted_dns, dot_suffix.clone())
                }
                HostPattern::Ip(ip) => push_unique(&mut c.permitted_ip, IpNet::from(*ip)),
            }
        }
        if c.permitted_dns.is_empty() {
            c.excluded_dns.push(String::new());
        }
        if c.permitted_ip.is_empty() {
            c.excluded_ip = [IpAddr::from([0u8; 4]), IpAddr::from([0u8; 16])]
                .into_iter()
                .filter_map(|any| IpNet::new(any, 0).ok())
                .collect();
        }
        c
    }

    /// The extension as rcgen writes it (critical).
    pub fn to_rcgen(&self) -> rcgen::NameConstraints {
        let dns = |names: &[String]| {
            names
                .iter()
                .map(|n| rcgen::GeneralSubtree::DnsName(n.clone()))
                .collect::<Vec<_>>()
        };
        let ip = |nets: &[IpNet]| {
            nets.iter()
                .map(|n| {
                    rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_addr_prefix(
                        n.addr(),
                        n.prefix_len(),
                    ))
                })
                .collect::<Vec<_>>()
        };
        let mut permitted = dns(&self.permitted_dns);
        permitted.extend(ip(&self.permitted_ip));
        let mut excluded = dns(&self.excluded_dns);
        excluded.extend(ip(&self.excluded_ip));
        rcgen::NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: excluded,
        }
    }

    /// The DNS and IP subtrees of a parsed extension; other name forms do not bear on TLS
    /// server names and are left out. An address with a mask that is not a prefix is an error.
    pub fn from_x509(
        nc: &x509_parser::extensions::NameConstraints<'_>,
    ) -> Result<Constraints, String> {
        use x509_parser::extensions::GeneralName;
        let mut c = Constraints::default();
        let trees = [
            (&nc.permitted_subtrees, false),
            (&nc.excluded_subtrees, true),
        ];
        for (trees, excluded) in trees {
            for tree in trees.iter().flatten() {
                match &tree.base {
                    GeneralName::DNSName(name) => {
                        let list = if excluded {
                            &mut c.excluded_dns
                        } else {
                            &mut c.permitted_dns
                        };
                        list.push(name.to_ascii_lowercase());
                    }
                    GeneralName::IPAddress(bytes) => {
                        let list = if excluded {
                            &mut c.excluded_ip
                        } else {
                            &mut c.permitted_ip
                        };
                        list.push(ip_subtree(bytes)?);
                    }
                    _ => {}
                }
            }
        }
        Ok(c)
    }

    /// Whether every host `pattern` allows is one the CA may sign for.
    pub fn permits(&self, pattern: &HostPattern) -> bool {
        match pattern {
            HostPattern::Exact(name) => {
                (self.permitted_dns.is_empty()
                    || self.permitted_dns.iter().any(|c| dns_matches(name, c)))
                    && !self.excluded_dns.iter().any(|c| dns_matches(name, c))
            }
            HostPattern::Suffix(dot_suffix) => {
                let base = dot_suffix.trim_start_matches('.');
                (self.permitted_dns.is_empty()
                    || self.permitted_dns.iter().any(|c| covers_below(c, base)))
                    && !self.excluded_dns.iter().any(|c| touches_below(c, base))
            }
            HostPattern::Ip(ip) => {
                (self.permitted_ip.is_empty() || self.permitted_ip.iter().any(|n| n.contains(ip)))
                    && !self.excluded_ip.iter().any(|n| n.contains(ip))
            }
        }
    }
}

impl fmt::Display for Constraints {
    /// `permitted: .example.com, 127.0.0.1/32; excluded: .api.stripe.com, 0.0.0.0/0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |dns: &[String], ip: &[IpNet]| {
            let mut items: Vec<String> = dns
                .iter()
                .map(|n| {
                    if n.is_empty() {
                        "every DNS name".to_string()
                    } else {
                        n.clone()
                    }
                })
                .collect();
            items.extend(ip.iter().map(IpNet::to_string));
            if items.is_empty() {
                "none".to_string()
            } else {
                items.join(", ")
            }
        };
        write!(
            f,
            "permitted: {}; excluded: {}",
            list(&self.permitted_dns, &self.permitted_ip),
            list(&self.excluded_dns, &self.excluded_ip)
        )
    }
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// `name` is strictly below `base` (`a.b.example.com` below `example.com`).
fn is_below(name: &str, base: &str) -> bool {
    name.len() > base.len() + 1
        && name.ends_with(base)
        && name.as_bytes()[name.len() - base.len() - 1] == b'.'
}

/// Whether a dNSName constraint covers the (lowercase) host name.
fn dns_matches(name: &str, constraint: &str) -> bool {
    match constraint.strip_prefix('.') {
        _ if constraint.is_empty() => true,
        Some(base) => is_below(name, base),
        None => name == constraint || is_below(name, constraint),
    }
}

/// Whether a constraint covers every name strictly below `base`.
fn covers_below(constraint: &str, base: &str) -> bool {
    let c = constraint.trim_start_matches('.');
    constraint.is_empty() || base == c || is_below(base, c)
}

/// Whether a constraint covers at least one name strictly below `base`.
fn touches_below(constraint: &str, base: &str) -> bool {
    covers_below(constraint, base) || is_below(constraint.trim_start_matches('.'), base)
}

/// Whether `pattern` allows some name strictly below the exact name `name`.
fn reaches_below(pattern: &HostPattern, name: &str) -> bool {
    match pattern {
        HostPattern::Exact(other) => is_below(other, name),
        HostPattern::Suffix(dot_suffix) => {
            let base = dot_suffix.trim_start_matches('.');
            base == name || is_below(base, name) || is_below(name, base)
        }
        HostPattern::Ip(_) => false,
    }
}

/// An iPAddress subtree: the address then the mask, 4 + 4 or 16 + 16 bytes.
fn ip_subtree(bytes: &[u8]) -> Result<IpNet, String> {
    let (addr, mask) = match bytes.len() {
        8 => {
            let (a, m) = bytes.split_at(4);
            let a: [u8; 4] = a.try_into().map_err(|_| "bad IPv4 subtree")?;
            (IpAddr::from(a), m)
        }
        32 => {
            let (a, m) = bytes.split_at(16);
            let a: [u8; 16] = a.try_into().map_err(|_| "bad IPv6 subtree")?;
            (IpAddr::from(a), m)
        }
        n => {
            return Err(format!(
                "an iPAddress name constraint of {n} bytes (8 or 32 expected)"
            ))
        }
    };
    let ones: u32 = mask.iter().map(|b| b.count_ones()).sum();
    let prefix_mask = (0..mask.len()).map(|i| {
        let bits = ones.saturating_sub(8 * i as u32).min(8);
        (0xffu16 << (8 - bits)) as u8
    });
    if !mask.iter().copied().eq(prefix_mask) {
        return Err(format!(
            "the iPAddress name constraint {addr} has a mask that is not a prefix"
        ));
    }
    IpNet::new(addr, ones as u8)
        .map(|n| n.trunc())
        .map_err(|e| format!("the iPAddress name constraint {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Vec<HostPattern> {
        list.iter()
            .map(|s| HostPattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")))
            .collect()
    }

    fn for_hosts(list: &[&str]) -> Constraints {
        let p = patterns(list);
        Constraints::for_hosts(&p.iter().collect::<Vec<_>>())
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// (hosts, permitted dns, excluded dns, permitted ip, excluded ip)
    type Case<'a> = (
        &'a [&'a str],
        &'a [&'a str],
        &'a [&'a str],
        &'a [&'a str],
        &'a [&'a str],
    );

    #[test]
    fn constraints_made_for_the_intercept_hosts() {
        let all_ips = ["0.0.0.0/0", "::/0"];
        let cases: &[Case] = &[
            (&["*.example.com"], &[".example.com"], &[], &[], &all_ips),
            (
                &["api.stripe.com"],
                &["api.stripe.com"],
                &[".api.stripe.com"],
                &[],
                &all_ips,
            ),
            // A wildcard above the exact name allows names below it: they stay permitted.
            (
                &["a.example.com", "*.example.com"],
                &["a.example.com", ".example.com"],
                &[],
                &[],
                &all_ips,
            ),
            // So does a wildcard or an exact name below it.
            (
                &["example.com", "*.example.com"],
                &["example.com", ".example.com"],
                &[],
                &[],
                &all_ips,
            ),
            (
                &["example.com", "x.example.com"],
                &["example.com", "x.example.com"],
                &[".x.example.com"],
                &[],
                &all_ips,
            ),
            (
                &["example.com", "*.x.example.com"],
                &["example.com", ".x.example.com"],
                &[],
                &[],
                &all_ips,
            ),
            // A sibling is no reason to keep names below.
            (
                &["a.example.com", "b.example.com"],
                &["a.example.com", "b.example.com"],
                &[".a.example.com", ".b.example.com"],
                &[],
                &all_ips,
            ),
            // IP literals: exactly those addresses, and no DNS name at all.
            (
                &["127.0.0.1", "::1"],
                &[],
                &[""],
                &["127.0.0.1/32", "::1/128"],
                &[],
            ),
            (
                &["api.example.com", "10.1.2.3"],
                &["api.example.com"],
                &[".api.example.com"],
                &["10.1.2.3/32"],
                &[],
            ),
            // Duplicates are written once.
            (
                &["a.example.com", "a.example.com"],
                &["a.example.com"],
                &[".a.example.com"],
                &[],
                &all_ips,
            ),
        ];
        for (hosts, pd, ed, pi, ei) in cases {
            let want = Constraints {
                permitted_dns: strings(pd),
                excluded_dns: strings(ed),
                permitted_ip: nets(pi),
                excluded_ip: nets(ei),
            };
            assert_eq!(for_hosts(hosts), want, "{hosts:?}");
        }
    }

    #[test]
    fn made_constraints_permit_exactly_what_the_patterns_allow() {
        let c = for_hosts(&["*.example.com", "api.stripe.com", "127.0.0.1"]);
        for (pattern, permitted) in [
            ("*.example.com", true),
            ("a.example.com", true),
            ("a.b.example.com", true),
            ("*.b.example.com", true),
            ("example.com", false),
            ("badexample.com", false),
            ("api.stripe.com", true),
            ("x.api.stripe.com", false),
            ("*.api.stripe.com", false),
            ("stripe.com", false),
            ("files.stripe.com", false),
            ("127.0.0.1", true),
            ("127.0.0.2", false),
            ("::1", false),
        ] {
            let p = HostPattern::parse(pattern).unwrap();
            assert_eq!(c.permits(&p), permitted, "{pattern} under {c}");
        }
    }

    #[test]
    fn permits_under_constraints_from_other_cas() {
        let c = |pd: &[&str], ed: &[&str], pi: &[&str], ei: &[&str]| Constraints {
            permitted_dns: strings(pd),
            excluded_dns: strings(ed),
            permitted_ip: nets(pi),
            excluded_ip: nets(ei),
        };
        let none = Constraints::default();
        // (constraints, pattern, permitted)
        let cases = [
            // No constraint of a form: that form is not restricted.
            (none.clone(), "anything.example", true),
            (none.clone(), "*.anything.example", true),
            (none, "10.0.0.1", true),
            // `example.com` (no dot) covers the name itself and everything below.
            (c(&["example.com"], &[], &[], &[]), "example.com", true),
            (c(&["example.com"], &[], &[], &[]), "*.example.com", true),
            (c(&["example.com"], &[], &[], &[]), "*.a.example.com", true),
            (c(&["example.com"], &[], &[], &[]), "notexample.com", false),
            (c(&["example.com"], &[], &[], &[]), "10.0.0.1", true),
            // A wildcard is covered only when all of it is.
            (c(&["a.example.com"], &[], &[], &[]), "*.example.com", false),
            (c(&[".example.com"], &[], &[], &[]), "*.example.com", true),
            // Excluded wins, also over part of a wildcard.
            (
                c(&["example.com"], &["secret.example.com"], &[], &[]),
                "*.example.com",
                false,
            ),
            (
                c(&["example.com"], &["secret.example.com"], &[], &[]),
                "api.example.com",
                true,
            ),
            (
                c(&["example.com"], &["secret.example.com"], &[], &[]),
                "x.secret.example.com",
                false,
            ),
            (c(&[], &[""], &[], &[]), "api.example.com", false),
            // IP subtrees.
            (c(&[], &[], &["10.0.0.0/8"], &[]), "10.2.3.4", true),
            (c(&[], &[], &["10.0.0.0/8"], &[]), "11.2.3.4", false),
            (c(&[], &[], &["10.0.0.0/8"], &[]), "::1", false),
            (c(&[], &[], &[], &["0.0.0.0/0"]), "10.2.3.4", false),
            (c(&[], &[], &[], &["0.0.0.0/0"]), "::1", true),
        ];
        for (constraints, pattern, permitted) in cases {
            let p = HostPattern::parse(pattern).unwrap();
            assert_eq!(
                constraints.permits(&p),
                permitted,
                "{pattern} under {constraints}"
            );
        }
    }

    #[test]
    fn ip_subtrees_read_from_der_bytes() {
        assert_eq!(
            ip_subtree(&[10, 0, 0, 0, 255, 0, 0, 0]),
            Ok("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(ip_subtree(&[0; 8]), Ok("0.0.0.0/0".parse().unwrap()));
        let mut v6 = [0u8; 32];
        v6[15] = 1;
        v6[16..].fill(0xff);
        assert_eq!(ip_subtree(&v6), Ok("::1/128".parse().unwrap()));
        assert!(
            ip_subtree(&[10, 0, 0, 0, 255, 0, 255, 0]).is_err(),
            "not a prefix"
        );
        assert!(ip_subtree(&[10, 0, 0, 0]).is_err(), "no mask");
    }

    #[test]
    fn display_lists_both_trees() {
        let c = for_hosts(&["*.example.com", "api.stripe.com"]);
        assert_eq!(
            c.to_string(),
            "permitted: .example.com, api.stripe.com; excluded: .api.stripe.com, 0.0.0.0/0, ::/0"
        );
        let c = for_hosts(&["127.0.0.1"]);
        assert_eq!(
            c.to_string(),
            "permitted: 127.0.0.1/32; excluded: every DNS name"
        );
    }
}
