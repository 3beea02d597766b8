//! Config lint: valid configs with parts that can never take effect (warnings of `portcullis check`).
//!
//! The first `[[upstream]]` whose hosts match decides, and its `ports` are the only ones
//! checked (SPEC §3): a later upstream whose every host pattern an earlier one already
//! matches is dead, whatever ports either lists. Nothing here fails a config; each finding
//! is one line for stderr (and the log at start and reload).

use std::fmt;
use std::sync::Arc;

use super::{Client, Config, Upstream};
use crate::pattern::HostPattern;

/// One finding. Names and patterns are as the config spells them (normalised).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// No `[[upstream]]` at all: every request is refused.
    NoUpstream,
    /// Every host pattern of `upstream` is matched first by an earlier upstream.
    UpstreamShadowed {
        upstream: String,
        /// For each of its patterns: (pattern, earlier upstream, earlier pattern).
        by: Vec<Shadow>,
        /// Ports it lists that the upstreams deciding instead do not: refused with 403.
        refused_ports: Vec<u16>,
    },
    /// One host pattern of an otherwise reachable upstream is matched first elsewhere.
    HostShadowed { upstream: String, shadow: Shadow },
    /// A `[[client]]` with an empty `upstreams` list.
    ClientWithoutUpstreams { client: String },
    /// A `[[client]]` whose every upstream is shadowed: it is refused everything.
    ClientReachesNothing {
        client: String,
        upstreams: Vec<String>,
    },
}

/// A pattern of a later upstream and the earlier (upstream, pattern) that matches first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    pub pattern: String,
    pub by_upstream: String,
    pub by_pattern: String,
}

/// Every warning for `config`, in file order.
pub fn check(config: &Config) -> Vec<Warning> {
    let mut out = Vec::new();
    if config.upstreams.is_empty() {
        out.push(Warning::NoUpstream);
    }
    let mut dead: Vec<&str> = Vec::new();
    for (i, later) in config.upstreams.iter().enumerate() {
        let earlier = &config.upstreams[..i];
        let shadows: Vec<Option<Shadow>> = later
            .hosts
            .iter()
            .map(|p| first_shadow(earlier, p))
            .collect();
        if !later.hosts.is_empty() && shadows.iter().all(Option::is_some) {
            let by: Vec<Shadow> = shadows.into_iter().flatten().collect();
            let refused_ports = refused_ports(later, earlier, &by);
            dead.push(&later.name);
            out.push(Warning::UpstreamShadowed {
                upstream: later.name.clone(),
                by,
                refused_ports,
            });
        } else {
            out.extend(
                shadows
                    .into_iter()
                    .flatten()
                    .map(|shadow| Warning::HostShadowed {
                        upstream: later.name.clone(),
                        shadow,
                    }),
            );
        }
    }
    out.extend(
        config
            .clients
            .iter()
            .filter_map(|c| client_warning(c, &dead)),
    );
    out
}

fn client_warning(client: &Client, dead: &[&str]) -> Option<Warning> {
    if client.upstreams.is_empty() {
        return Some(Warning::ClientWithoutUpstreams {
            client: client.name.clone(),
        });
    }
    if client.upstreams.iter().all(|u| dead.contains(&u.as_str())) {
        return Some(Warning::ClientReachesNothing {
            client: client.name.clone(),
            upstreams: client.upstreams.clone(),
        });
    }
    None
}

/// The first earlier (upstream, pattern) in file order that matches every host `later` does.
fn first_shadow(earlier: &[Arc<Upstream>], later: &HostPattern) -> Option<Shadow> {
    earlier.iter().find_map(|u| {
        u.hosts.iter().find(|p| covers(p, later)).map(|p| Shadow {
            pattern: later.to_string(),
            by_upstream: u.name.clone(),
            by_pattern: p.to_string(),
        })
    })
}

/// Whether every host that `later` matches is also matched by `earlier`.
///
/// A wildcard is never covered by exact names (it matches unboundedly many), only by a
/// wildcard at or above its own level: `*.example.com` covers `*.eu.example.com` and
/// `a.example.com`, not `example.com`. IPs cover only the same IP (no v4/v6 mapping).
pub fn covers(earlier: &HostPattern, later: &HostPattern) -> bool {
    match (earlier, later) {
        (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
        (HostPattern::Suffix(s), HostPattern::Exact(name)) => {
            name.len() > s.len() && name.ends_with(s.as_str())
        }
        // Both start with '.', so `ends_with` only ever matches whole labels.
        (HostPattern::Suffix(a), HostPattern::Suffix(b)) => b.ends_with(a.as_str()),
        (HostPattern::Ip(a), HostPattern::Ip(b)) => a == b,
        _ => false,
    }
}

/// Ports of `later` that no upstream deciding in its place allows: requests to them get 403.
fn refused_ports(later: &Upstream, earlier: &[Arc<Upstream>], by: &[Shadow]) -> Vec<u16> {
    let deciders: Vec<&Arc<Upstream>> = earlier
        .iter()
        .filter(|u| by.iter().any(|s| s.by_upstream == u.name))
        .collect();
    later
        .ports
        .iter()
        .copied()
        .filter(|port| !deciders.iter().all(|u| u.ports.contains(port)))
        .collect()
}

fn quoted_list(items: impl IntoIterator<Item = String>) -> String {
    items
        .into_iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::NoUpstream => write!(
                f,
                "no [[upstream]] entries: every request will be refused with 403; \
                 add an [[upstream]] for each host your apps call"
            ),
            Warning::UpstreamShadowed {
                upstream,
                by,
                refused_ports,
            } => {
                let how: Vec<String> = by
                    .iter()
                    .map(|s| {
                        format!(
                            "\"{}\" by upstream \"{}\" (\"{}\")",
                            s.pattern, s.by_upstream, s.by_pattern
                        )
                    })
                    .collect();
                write!(
                    f,
                    "upstream \"{upstream}\" is never used: every host it lists is matched \
                     first by an earlier upstream: {}; the first upstream whose hosts match \
                     decides, so move \"{upstream}\" above them or remove it",
                    how.join(", ")
                )?;
                if !refused_ports.is_empty() {
                    let ports: Vec<String> = refused_ports.iter().map(u16::to_string).collect();
                    write!(
                        f,
                        " (as it stands, its port {} is refused with 403 for those hosts)",
                        ports.join(", ")
                    )?;
                }
                Ok(())
            }
            Warning::HostShadowed { upstream, shadow } => write!(
                f,
                "upstream \"{upstream}\": host \"{}\" never reaches it: upstream \"{}\" \
                 lists \"{}\" earlier and decides for it",
                shadow.pattern, shadow.by_upstream, shadow.by_pattern
            ),
            Warning::ClientWithoutUpstreams { client } => write!(
                f,
                "client \"{client}\" can reach nothing: its upstreams list is empty, so \
                 every request it makes is refused with 403"
            ),
            Warning::ClientReachesNothing { client, upstreams } => write!(
                f,
                "client \"{client}\" can reach nothing: every upstream it may use ({}) is \
                 never used (see the warnings above), so every request it makes is refused \
                 with 403",
                quoted_list(upstreams.iter().cloned())
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn covers_table() {
        let cases: &[(&str, &str, bool)] = &[
            // earlier, later, covered
            ("a.example.com", "a.example.com", true),
            ("A.Example.com", "a.example.COM.", true),
            ("a.example.com", "b.example.com", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "aexample.com", false),
            ("*.example.com", "*.example.com", true),
            ("*.example.com", "*.eu.example.com", true),
            ("*.eu.example.com", "*.example.com", false),
            ("*.example.com", "*.badexample.com", false),
            ("*.ample.com", "*.example.com", false),
            ("a.example.com", "*.example.com", false),
            ("*.example.com", "127.0.0.1", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("::1", "[::1]", true),
            // No v4/v6 mapping in matching, so none in coverage either.
            ("::ffff:127.0.0.1", "127.0.0.1", false),
            ("127.0.0.1", "localhost", false),
        ];
        for (earlier, later, want) in cases {
            assert_eq!(
                covers(&pattern(earlier), &pattern(later)),
                *want,
                "{earlier} covers {later}"
            );
        }
    }

    fn config(text: &str) -> Config {
        Config::from_toml(text, "lint.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn shadow(pattern: &str, by_upstream: &str, by_pattern: &str) -> Shadow {
        Shadow {
            pattern: pattern.into(),
            by_upstream: by_upstream.into(),
            by_pattern: by_pattern.into(),
        }
    }

    fn shadowed(upstream: &str, by: Vec<Shadow>, refused_ports: Vec<u16>) -> Warning {
        Warning::UpstreamShadowed {
            upstream: upstream.into(),
            by,
            refused_ports,
        }
    }

    #[test]
    fn check_table() {
        let cases: Vec<(&str, &str, Vec<Warning>)> = vec![
            (
                "distinct hosts",
                r#"
                [[upstream]]
                name = "a"
                hosts = ["a.example.com"]
                [[upstream]]
                name = "b"
                hosts = ["b.example.com", "*.b.example.com"]
                "#,
                vec![],
            ),
            ("no upstream", "", vec![Warning::NoUpstream]),
            (
                "the same exact name twice",
                r#"
                [[upstream]]
                name = "a"
                hosts = ["api.stripe.com"]
                ports = [443]
                [[upstream]]
                name = "b"
                hosts = ["api.stripe.com"]
                ports = [443]
                "#,
                vec![shadowed(
                    "b",
                    vec![shadow("api.stripe.com", "a", "api.stripe.com")],
                    vec![],
                )],
            ),
            (
                "other ports do not help: the first host match decides",
                r#"
                [[upstream]]
                name = "a"
                hosts = ["api.stripe.com"]
                ports = [443]
                [[upstream]]
                name = "b"
                hosts = ["api.stripe.com"]
                ports = [443, 8443]
                "#,
                vec![shadowed(
                    "b",
                    vec![shadow("api.stripe.com", "a", "api.stripe.com")],
                    vec![8443],
                )],
            ),
            (
                "a wildcard above exact names and a deeper wildcard",
                r#"
                [[upstream]]
                name = "all"
                hosts = ["*.worldpay.com"]
                [[upstream]]
                name = "some"
                hosts = ["secure.worldpay.com", "*.eu.worldpay.com"]
                "#,
                vec![shadowed(
                    "some",
                    vec![
                        shadow("secure.worldpay.com", "all", "*.worldpay.com"),
                        shadow("*.eu.worldpay.com", "all", "*.worldpay.com"),
                    ],
                    vec![],
                )],
            ),
            (
                "specific first, wildcard after: both reachable",
                r#"
                [[upstream]]
                name = "secure"
                hosts = ["secure.worldpay.com"]
                [[upstream]]
                name = "rest"
                hosts = ["*.worldpay.com"]
                "#,
                vec![],
            ),
            (
                "a wildcard does not cover its own apex",
                r#"
                [[upstream]]
                name = "sub"
                hosts = ["*.example.com"]
                [[upstream]]
                name = "apex"
                hosts = ["example.com"]
                "#,
                vec![],
            ),
            (
                "exact names never cover a wildcard",
                r#"
                [[upstream]]
                name = "names"
                hosts = ["a.example.com", "b.example.com"]
                [[upstream]]
                name = "wild"
                hosts = ["*.example.com"]
                "#,
                vec![],
            ),
            (
                "covered by two earlier upstreams together",
                r#"
                [[upstream]]
                name = "a"
                hosts = ["a.example.com"]
                [[upstream]]
                name = "b"
                hosts = ["*.example.org"]
                ports = [443, 8443]
                [[upstream]]
                name = "c"
                hosts = ["a.example.com", "x.example.org"]
                ports = [443, 8443]
                "#,
                vec![shadowed(
                    "c",
                    vec![
                        shadow("a.example.com", "a", "a.example.com"),
                        shadow("x.example.org", "b", "*.example.org"),
                    ],
                    // "a" allows the default ports [80, 443] only.
                    vec![8443],
                )],
            ),
            (
                "one dead host in a live upstream",
                r#"
                [[upstream]]
                name = "a"
                hosts = ["*.example.com"]
                [[upstream]]
                name = "b"
                hosts = ["x.example.com", "example.com"]
                "#,
                vec![Warning::HostShadowed {
                    upstream: "b".into(),
                    shadow: shadow("x.example.com", "a", "*.example.com"),
                }],
            ),
            (
                "the same IP literal",
                r#"
                [[upstream]]
                name = "a"
                hosts = ["192.0.2.10"]
                [[upstream]]
                name = "b"
                hosts = ["192.0.2.10"]
                "#,
                vec![shadowed(
                    "b",
                    vec![shadow("192.0.2.10", "a", "192.0.2.10")],
                    vec![],
                )],
            ),
            (
                "a client with no upstreams, one with only dead ones, one with a live one",
                r#"
                [[upstream]]
                name = "a"
                hosts = ["a.example.com"]
                [[upstream]]
                name = "b"
                hosts = ["a.example.com"]
                [[client]]
                name = "nobody"
                cidrs = ["10.0.0.0/8"]
                upstreams = []
                [[client]]
                name = "late"
                cidrs = ["10.1.0.0/16"]
                upstreams = ["b"]
                [[client]]
                name = "fine"
                cidrs = ["10.2.0.0/16"]
                upstreams = ["b", "a"]
                "#,
                vec![
                    shadowed(
                        "b",
                        vec![shadow("a.example.com", "a", "a.example.com")],
                        vec![],
                    ),
                    Warning::ClientWithoutUpstreams {
                        client: "nobody".into(),
                    },
                    Warning::ClientReachesNothing {
                        client: "late".into(),
                        upstreams: vec!["b".into()],
                    },
                ],
            ),
        ];
        for (what, text, want) in cases {
            assert_eq!(check(&config(text)), want, "{what}");
        }
    }

    #[test]
    fn messages_name_the_upstreams_patterns_and_fix() {
        let text = r#"
            [[upstream]]
            name = "a"
            hosts = ["*.stripe.com"]
            ports = [443]
            [[upstream]]
            name = "b"
            hosts = ["api.stripe.com"]
            ports = [8443]
            [[client]]
            name = "c"
            upstreams = ["b"]
        "#;
        let lines: Vec<String> = check(&config(text)).iter().map(|w| w.to_string()).collect();
        assert_eq!(
            lines,
            [
                "upstream \"b\" is never used: every host it lists is matched first by an \
                 earlier upstream: \"api.stripe.com\" by upstream \"a\" (\"*.stripe.com\"); \
                 the first upstream whose hosts match decides, so move \"b\" above them or \
                 remove it (as it stands, its port 8443 is refused with 403 for those hosts)",
                "client \"c\" can reach nothing: every upstream it may use (\"b\") is never \
                 used (see the warnings above), so every request it makes is refused with 403",
            ]
        );
    }

    #[test]
    fn shipped_config_has_no_warning() {
        let c = Config::from_toml(super::super::BUILTIN, super::super::BUILTIN_NAME)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check(&c), vec![]);
    }
}
