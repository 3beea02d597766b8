//! The effective config as `portcullis check` prints it: a serde view of [`Config`], written by `toml`.
//!
//! Every value is spelled as a config file spells it (durations as "60s", patterns and CIDRs
//! as written, `[defaults]` resolved into each upstream), so the output loads back to the
//! same effective config. What must never be printed is not in the view at all: a client's
//! password (only the name of its variable), and key material (only the files' paths).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::{raw, Client, Config, ConnectMode, Settings, TlsMode, Upstream};

impl fmt::Display for Config {
    /// `# effective config from <source>`, then the config as TOML.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The source is a path from the command line: a control character in it must not
        // end the comment and put the rest of the name on a TOML line of its own.
        let source: String = self.source.chars().flat_map(char::escape_debug).collect();
        writeln!(f, "# effective config from {source}")?;
        match toml::to_string(&View::of(self)) {
            Ok(text) => f.write_str(&text),
            // Not reachable with the types in the view (no maps with non-string keys, no
            // integers beyond i64); said in a comment rather than a panic in `check`.
            Err(e) => writeln!(f, "# the effective config cannot be printed: {e}"),
        }
    }
}

#[derive(Serialize)]
struct View<'a> {
    proxy: ProxyView<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    upstream: Vec<UpstreamView<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    client: Vec<ClientView<'a>>,
}

/// `[proxy]`, with the TLS listener's and the intercept CA's files by path.
#[derive(Serialize)]
struct ProxyView<'a> {
    listen: SocketAddr,
    admin_listen: SocketAddr,
    max_client_connections: usize,
    #[serde(serialize_with = "duration")]
    client_idle_timeout: Duration,
    #[serde(serialize_with = "duration")]
    header_read_timeout: Duration,
    #[serde(serialize_with = "duration")]
    client_stall_timeout: Duration,
    max_header_bytes: usize,
    #[serde(serialize_with = "duration")]
    shutdown_grace: Duration,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    dns_servers: &'a [SocketAddr],
    #[serde(serialize_with = "path")]
    intercept_ca_cert: Option<&'a Path>,
    #[serde(serialize_with = "path")]
    intercept_ca_key: Option<&'a Path>,
    tls_listen: Option<SocketAddr>,
    #[serde(serialize_with = "path")]
    tls_cert: Option<&'a Path>,
    #[serde(serialize_with = "path")]
    tls_key: Option<&'a Path>,
    #[serde(serialize_with = "path")]
    client_ca: Option<&'a Path>,
}

/// One `[[upstream]]` with every `[defaults]` key resolved.
#[derive(Serialize)]
struct UpstreamView<'a> {
    name: &'a str,
    hosts: Vec<String>,
    ports: &'a [u16],
    tls: TlsMode,
    connect: ConnectMode,
    #[serde(serialize_with = "path")]
    ca_file: Option<&'a Path>,
    #[serde(serialize_with = "optional_duration")]
    remote_idle_limit: Option<Duration>,
    #[serde(flatten)]
    settings: &'a Settings,
}

/// One `[[client]]`: the variable that holds the password, never the password.
#[derive(Serialize)]
struct ClientView<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    cidrs: &'a [ipnet::IpNet],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cert_names: Vec<String>,
    username: Option<&'a str>,
    password_env: Option<&'a str>,
    upstreams: &'a [String],
}

impl<'a> View<'a> {
    fn of(config: &'a Config) -> View<'a> {
        let p = &config.proxy;
        let ca = p.intercept_ca.as_deref();
        let tls = p.tls.as_ref();
        View {
            proxy: ProxyView {
                listen: p.listen,
                admin_listen: p.admin_listen,
                max_client_connections: p.max_client_connections,
                client_idle_timeout: p.client_idle_timeout,
                header_read_timeout: p.header_read_timeout,
                client_stall_timeout: p.client_stall_timeout,
                max_header_bytes: p.max_header_bytes,
                shutdown_grace: p.shutdown_grace,
                dns_servers: &p.dns_servers,
                intercept_ca_cert: ca.map(|ca| ca.cert_path()),
                intercept_ca_key: ca.map(|ca| ca.key_path()),
                tls_listen: tls.map(|t| t.listen),
                tls_cert: tls.map(|t| t.cert.as_path()),
                tls_key: tls.map(|t| t.key.as_path()),
                client_ca: tls.and_then(|t| t.client_ca.as_deref()),
            },
            upstream: config
                .upstreams
                .iter()
                .map(|u| UpstreamView::of(u))
                .collect(),
            client: config.clients.iter().map(ClientView::of).collect(),
        }
    }
}

impl<'a> UpstreamView<'a> {
    fn of(u: &'a Upstream) -> UpstreamView<'a> {
        UpstreamView {
            name: &u.name,
            hosts: u.hosts.iter().map(ToString::to_string).collect(),
            ports: &u.ports,
            tls: u.tls,
            connect: u.connect,
            ca_file: u.ca_file.as_deref(),
            remote_idle_limit: u.remote_idle_limit,
            settings: &u.settings,
        }
    }
}

impl<'a> ClientView<'a> {
    fn of(c: &'a Client) -> ClientView<'a> {
        ClientView {
            name: &c.name,
            cidrs: &c.cidrs,
            cert_names: c.cert_names.iter().map(ToString::to_string).collect(),
            username: c.username.as_deref(),
            // Validation pairs the two; without a username the variable is never read.
            password_env: c.username.as_ref().and(c.password_env.as_deref()),
            upstreams: &c.upstreams,
        }
    }
}

/// A duration as the config writes it ("60s", "1500ms"): see [`raw::show_duration`].
pub(super) fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&raw::show_duration(*d))
}

fn optional_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration(d, s),
        None => s.serialize_none(),
    }
}

/// `tcp_keepalive`: a duration, or "off".
pub(super) fn keepalive<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration(d, s),
        None => s.serialize_str("off"),
    }
}

/// A path as text: paths in a config come from its (UTF-8) text; one joined to a config
/// file's folder is shown as `Path::display` does rather than refused.
fn path<S: Serializer>(p: &Option<&Path>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&p.display().to_string()),
        None => s.serialize_none(),
    }
}
