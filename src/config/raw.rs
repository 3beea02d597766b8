//! The config file as written: strict serde structs (unknown keys are errors) and duration parsing.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::ProxySettings;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub defaults: RawSettings,
    /// Kept as tables so that each upstream's own keys and its `[defaults]` overrides are
    /// both checked strictly (serde's `flatten` cannot deny unknown fields).
    #[serde(default)]
    pub upstream: Vec<toml::Table>,
    #[serde(default)]
    pub client: Vec<RawClient>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub max_client_connections: Option<usize>,
    pub client_idle_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub client_stall_timeout: Option<String>,
    pub max_header_bytes: Option<usize>,
    pub shutdown_grace: Option<String>,
    pub dns_servers: Option<Vec<String>>,
    pub intercept_ca_cert: Option<std::path::PathBuf>,
    pub intercept_ca_key: Option<std::path::PathBuf>,
    pub tls_listen: Option<String>,
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    pub client_ca: Option<std::path::PathBuf>,
}

/// Every key that `[defaults]` and `[[upstream]]` share.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub max_idle: Option<usize>,
    pub idle_timeout: Option<String>,
    pub max_lifetime: Option<String>,
    pub acquire_timeout: Option<String>,
    pub tcp_keepalive: Option<String>,
    pub retry_on_reset: Option<bool>,
    pub retry_non_idempotent: Option<bool>,
    pub unsafe_reuse_max_idle: Option<String>,
    pub max_replay_body: Option<usize>,
    pub tunnel_idle_timeout: Option<String>,
    pub allow_private: Option<bool>,
    pub learn_idle_limit: Option<bool>,
}

/// The keys only an `[[upstream]]` has.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamOwn {
    name: String,
    hosts: Vec<String>,
    ports: Option<Vec<u16>>,
    tls: Option<String>,
    ca_file: Option<std::path::PathBuf>,
    remote_idle_limit: Option<String>,
    connect: Option<String>,
}

const OWN_KEYS: [&str; 7] = [
    "name",
    "hosts",
    "ports",
    "tls",
    "ca_file",
    "remote_idle_limit",
    "connect",
];

#[derive(Debug)]
pub struct RawUpstream {
    pub name: String,
    pub hosts: Vec<String>,
    pub ports: Option<Vec<u16>>,
    pub tls: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    pub remote_idle_limit: Option<String>,
    pub connect: Option<String>,
    pub settings: RawSettings,
}

impl RawUpstream {
    /// Split one `[[upstream]]` table into its own keys and its settings, each checked strictly.
    pub fn from_table(table: toml::Table) -> Result<RawUpstream, String> {
        let (own, rest): (toml::Table, toml::Table) = table
            .into_iter()
            .partition(|(k, _)| OWN_KEYS.contains(&k.as_str()));
        let own: RawUpstreamOwn = toml::Value::Table(own)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_string())?;
        let settings: RawSettings =
            toml::Value::Table(rest)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    let msg = e.message().to_string();
                    // Unknown keys of the settings table are unknown keys of the upstream.
                    if msg.starts_with("unknown field") {
                        format!(
                            "{}; an upstream may also set {}",
                            msg.split(", expected").next().unwrap_or(&msg),
                            OWN_KEYS.join(", ")
                        )
                    } else {
                        msg
                    }
                })?;
        Ok(RawUpstream {
            name: own.name,
            hosts: own.hosts,
            ports: own.ports,
            tls: own.tls,
            ca_file: own.ca_file,
            remote_idle_limit: own.remote_idle_limit,
            connect: own.connect,
            settings,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub name: String,
    pub cidrs: Option<Vec<String>>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub cert_names: Option<Vec<String>>,
    #[serde(default)]
    pub upstreams: Vec<String>,
}

impl RawProxy {
    pub fn resolve(&self, problems: &mut Vec<String>) -> ProxySettings {
        let addr = |key: &str,
                    v: &Option<String>,
                    default: &str,
                    problems: &mut Vec<String>|
         -> SocketAddr {
            let text = v.as_deref().unwrap_or(default);
            text.parse().unwrap_or_else(|_| {
                problems.push(format!(
                    "proxy: {key} = \"{text}\" is not an address like 127.0.0.1:3128"
                ));
                default
                    .parse()
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
            })
        };
        let dur = |key: &str, v: &Option<String>, default: Duration, problems: &mut Vec<String>| {
            match v {
                None => default,
                Some(t) => match parse_duration(t) {
                    Ok(d) if d.is_zero() => {
                        problems.push(format!("proxy: {key} must be above 0"));
                        default
                    }
                    Ok(d) => d,
                    Err(e) => {
                        problems.push(format!("proxy: {key}: {e}"));
                        default
                    }
                },
            }
        };
        let max_client_connections = self.max_client_connections.unwrap_or(10_000);
        if max_client_connections == 0 {
            problems.push("proxy: max_client_connections must be at least 1".into());
        }
        if max_client_connections > MAX_CLIENT_CONNECTIONS {
            problems.push(format!(
                "proxy: max_client_connections ({max_client_connections}) must be at most {MAX_CLIENT_CONNECTIONS}"
            ));
        }
        let max_header_bytes = self.max_header_bytes.unwrap_or(65_536);
        if max_header_bytes < 1024 {
            problems.push(format!(
                "proxy: max_header_bytes ({max_header_bytes}) must be at least 1024"
            ));
        } else if max_header_bytes > MAX_HEADER_BYTES {
            problems.push(format!(
                "proxy: max_header_bytes ({max_header_bytes}) must be at most {MAX_HEADER_BYTES}"
            ));
        }
        let mut dns_servers = Vec::new();
        for s in self.dns_servers.iter().flatten() {
            match s.parse::<SocketAddr>().or_else(|_| {
                s.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            }) {
                Ok(a) => dns_servers.push(a),
                Err(_) => problems.push(format!(
                    "proxy: dns_servers entry \"{s}\" is not an address like 10.0.0.2:53"
                )),
            }
        }
        let listen = addr("listen", &self.listen, "127.0.0.1:3128", problems);
        let admin_listen = addr(
            "admin_listen",
            &self.admin_listen,
            "127.0.0.1:9090",
            problems,
        );
        // Every listener of [proxy] (`tls_listen` joins this list when it exists).
        check_listeners(
            &[("listen", listen), ("admin_listen", admin_listen)],
            problems,
        );
        ProxySettings {
            listen,
            admin_listen,
            max_client_connections: max_client_connections.clamp(1, MAX_CLIENT_CONNECTIONS),
            client_idle_timeout: dur(
                "client_idle_timeout",
                &self.client_idle_timeout,
                Duration::from_secs(60),
                problems,
            ),
            header_read_timeout: dur(
                "header_read_timeout",
                &self.header_read_timeout,
                Duration::from_secs(10),
                problems,
            ),
            client_stall_timeout: dur(
                "client_stall_timeout",
                &self.client_stall_timeout,
                Duration::from_secs(30),
                problems,
            ),
            max_header_bytes,
            shutdown_grace: dur(
                "shutdown_grace",
                &self.shutdown_grace,
                Duration::from_secs(30),
                problems,
            ),
            dns_servers,
            // Read by `config::resolve_intercept_ca`, which needs the file's folder.
            intercept_ca: None,
            // Needs the config file's folder for its paths: `config::resolve_tls`.
            tls: None,
        }
    }
}

/// Two listeners that would take the same port: refused at start-up by the kernel (or worse,
/// both bound with `SO_REUSEADDR` semantics the operator did not mean), so refused here with
/// a message that says why.
fn check_listeners(listeners: &[(&str, SocketAddr)], problems: &mut Vec<String>) {
    for (i, (key_a, a)) in listeners.iter().enumerate() {
        for (key_b, b) in &listeners[i + 1..] {
            if listeners_clash(*a, *b) {
                problems.push(format!(
                    "proxy: {key_a} ({a}) and {key_b} ({b}) would both listen on port {}; give them different ports",
                    a.port()
                ));
            }
        }
    }
}

/// Whether two listen addresses overlap: the same port (port 0 picks a free one each time, so
/// never clashes) on the same address, or on the wildcard address of either. `[::]` is
/// dual-stack on Linux and takes the port on every IPv4 address too; `0.0.0.0` next to a
/// specific IPv6 address could bind both, but one port for two listeners is a mistake either
/// way, so that counts as a clash as well. IPv4-mapped IPv6 is the IPv4 address it carries.
pub fn listeners_clash(a: SocketAddr, b: SocketAddr) -> bool {
    let canonical = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    let (ip_a, ip_b) = (canonical(a.ip()), canonical(b.ip()));
    a.port() != 0
        && a.port() == b.port()
        && (ip_a == ip_b || ip_a.is_unspecified() || ip_b.is_unspecified())
}

/// The most `max_client_connections` may be: Linux's default ceiling on one process's file
/// descriptors (`fs.nr_open`), so no reachable count is refused. Far beyond it, the connection
/// semaphore could not even be built (tokio panics above its `MAX_PERMITS`).
pub const MAX_CLIENT_CONNECTIONS: usize = 1 << 20;

/// The most `max_header_bytes` may be (1 MiB, 16 times the default): every client may make
/// the proxy buffer a head this large until `header_read_timeout`.
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// `"250ms"`, `"30s"`, `"5m"`, `"1h 30m"`: a number with a unit is required.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() || t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "\"{text}\" needs a unit, like \"30s\" or \"250ms\""
        ));
    }
    let d = humantime::parse_duration(t)
        .map_err(|e| format!("\"{text}\" is not a duration like \"30s\" ({e})"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "\"{text}\" is longer than 365 days, the most any duration here may be"
        ));
    }
    Ok(d)
}

/// The longest duration a config may give. Nothing in a proxy waits a year; beyond it, deadline
/// arithmetic (`Instant + d`) could overflow, and `check` could print a value (in nanoseconds)
/// that no longer parses back (found by the `config_load` fuzz target).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration as the config would write it: "500s", "250ms", "1.5s".
pub fn show_duration(d: Duration) -> String {
    // Exact in the largest unit that needs no fraction, so the text parses back to the same value.
    let nanos = d.as_nanos();
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", nanos / 1_000)
    } else {
        format!("{nanos}ns")
    }
}

/// One line from a TOML error: the key path and what is wrong, without the multi-line snippet.
pub fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else { return msg };
    let line_no = text
        .get(..span.start)
        .map_or(0, |t| t.matches('\n').count())
        + 1;
    // The key is what the user looks for: the start of the line holding the error, before '='.
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() && !key.trim_start().starts_with('[') => {
            format!("line {line_no}: {}: {msg}", key.trim())
        }
        _ => format!("line {line_no}: {msg}"),
    }
}
