//! Config file: serde structs, `[defaults]` inheritance, and a validation pass that reports every error.
//!
//! Parsing is two-staged: TOML → `Raw*` structs (strict, `deny_unknown_fields`), then
//! `Raw*` → the effective `Config` with every `[defaults]` key resolved per upstream.
//! Every problem found is collected, so a bad file is fixed in one round.

pub mod lint;
mod print;
pub mod raw;
pub mod reach;
mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use rustls::pki_types::CertificateDer;
use serde::Serialize;

use crate::intercept::ca::InterceptCa;
use crate::pattern::{CertNamePattern, HostPattern};
use crate::server_tls::ServerTls;
use raw::{RawClient, RawConfig, RawProxy, RawSettings, RawUpstream};

/// The keepalive intervals Linux accepts for an upstream socket (`MAX_TCP_KEEPIDLE`).
const TCP_KEEPALIVE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(32_767);

/// The built-in config: the same text as `config/portcullis.toml`.
pub const BUILTIN: &str = include_str!("../config/portcullis.toml");
/// How the built-in config is named in messages.
pub const BUILTIN_NAME: &str = "<built-in config/portcullis.toml>";

/// What a `ca_file` without certificates should hold.
const CA_FILE_FIX: &str = "give the CA certificates that the upstream's certificate chains to";

/// The most `max_replay_body` may be (1 GiB). A body up to it is held in memory until its
/// request is done (for a replay), so it bounds what one client's request can make us hold.
pub const MAX_REPLAY_BODY: usize = 1 << 30;

/// The whole effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (a path or the built-in name), for messages.
    pub source: String,
    pub proxy: ProxySettings,
    /// In file order: the first whose hosts match decides.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Empty: any client may use any upstream.
    pub clients: Vec<Client>,
}

/// `[proxy]`: the listeners and client-side limits.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_client_connections: usize,
    pub client_idle_timeout: Duration,
    pub header_read_timeout: Duration,
    /// A request body that stops arriving, or a response the client stops reading, for this
    /// long ends the exchange (each wait, not the whole body).
    pub client_stall_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
    /// Name servers to ask instead of the system's (`/etc/resolv.conf`); an extension to SPEC §3.
    pub dns_servers: Vec<SocketAddr>,
    /// `intercept_ca_cert` and `intercept_ca_key`, read and checked (SPEC §9); `None` when unset.
    pub intercept_ca: Option<Arc<InterceptCa>>,
    /// `tls_listen` and its files (SPEC §10); `None` without a TLS listener.
    pub tls: Option<TlsListen>,
}

/// The TLS proxy listener: its address, its files, and the rustls config built from them.
#[derive(Debug, Clone)]
pub struct TlsListen {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates are required and verified against this CA when set.
    pub client_ca: Option<PathBuf>,
    /// Built as the config was loaded: new connections use the material of the config
    /// they are accepted under, so a reload rotates it and a broken file is refused whole.
    pub server: ServerTls,
}

/// Every `[defaults]` key, resolved for one upstream; serialized as `check` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    #[serde(serialize_with = "print::duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "print::duration")]
    pub response_timeout: Duration,
    pub max_connections: usize,
    pub max_idle: usize,
    #[serde(serialize_with = "print::duration")]
    pub idle_timeout: Duration,
    #[serde(serialize_with = "print::duration")]
    pub max_lifetime: Duration,
    #[serde(serialize_with = "print::duration")]
    pub acquire_timeout: Duration,
    /// `None` when `tcp_keepalive = "off"`.
    #[serde(serialize_with = "print::keepalive")]
    pub tcp_keepalive: Option<Duration>,
    pub retry_on_reset: bool,
    pub retry_non_idempotent: bool,
    #[serde(serialize_with = "print::duration")]
    pub unsafe_reuse_max_idle: Duration,
    pub max_replay_body: usize,
    #[serde(serialize_with = "print::duration")]
    pub tunnel_idle_timeout: Duration,
    pub allow_private: bool,
    /// Lower idle timeouts below the remote idle limits that stale reuses reveal (SPEC §11).
    pub learn_idle_limit: bool,
}

/// How an upstream gets TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// portcullis opens TLS to the destination for plain `http://` requests.
    Originate,
    /// TLS only when the URI scheme is `https` (or end-to-end inside CONNECT).
    AsRequested,
}

/// What a CONNECT to an upstream becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectMode {
    /// Bytes copied both ways; the app's TLS is end to end.
    Tunnel,
    /// portcullis completes the TLS handshake with a leaf from the intercept CA (SPEC §9).
    Intercept,
}

/// One `[[upstream]]`: which destinations it allows and the pool limits for them.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub ports: Vec<u16>,
    pub tls: TlsMode,
    pub connect: ConnectMode,
    /// Extra trust roots (PEM), on top of the system's.
    pub ca_file: Option<PathBuf>,
    /// The certificates `ca_file` held when the config was loaded: what TLS verifies against,
    /// so a connection is verified against exactly what the config was checked with.
    pub ca_roots: Arc<[CertificateDer<'static>]>,
    /// The system roots plus `ca_roots`, built as the config was loaded: what a dial hands
    /// rustls, so no request reads a file or builds a root store.
    pub tls_client: crate::trust::ClientTls,
    /// The remote firewall's idle limit, when known; all our timers stay below it.
    pub remote_idle_limit: Option<Duration>,
    pub settings: Settings,
    /// Fingerprint of what this upstream may reach and how ([`reach::Reach`]): pooled
    /// connections made under another one are closed.
    pub reach: u64,
}

impl Upstream {
    /// Whether `other` may reach the same destinations in the same way (SPEC §8): if not, a
    /// reload from one to the other closes the upstream's pooled connections.
    pub fn same_reach(&self, other: &Upstream) -> bool {
        self.reach == other.reach
    }
}

/// One `[[client]]`: an identity and what it may reach.
#[derive(Debug, Clone)]
pub struct Client {
    pub name: String,
    pub cidrs: Vec<IpNet>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The variable the password came from (its name is no secret; `check` prints it).
    pub password_env: Option<String>,
    /// Client certificate identities (SPEC §10); empty: not a criterion.
    pub cert_names: Vec<CertNamePattern>,
    pub upstreams: Vec<String>,
}

/// A secret read from the environment; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Every problem found in one file; `Display` gives one line per problem, each naming the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {}", self.source, p)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The file to read: `--config`, else `$PORTCULLIS_CONFIG` (an empty variable counts as
    /// unset); `None` means the built-in config. Start-up and every reload use this answer.
    pub fn path(flag: Option<&Path>) -> Option<PathBuf> {
        flag.map(Path::to_path_buf).or_else(|| {
            std::env::var_os("PORTCULLIS_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    }

    /// Load `path` (see [`Config::path`]), or the built-in text when there is none.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with(path, true)
    }

    /// [`load`](Self::load) for `portcullis ca init`, which makes the intercept CA: the CA keys
    /// are not read (the files may not exist yet); everything else is checked as usual.
    pub fn load_without_intercept_ca(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with(path, false)
    }

    fn load_with(path: Option<&Path>, intercept_ca: bool) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Config::read_file(p, intercept_ca),
            None => Config::parse(BUILTIN, BUILTIN_NAME, intercept_ca),
        }
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Config::read_file(path, true)
    }

    fn read_file(path: &Path, intercept_ca: bool) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = crate::file::read_text(path, crate::file::MAX_CONFIG_BYTES).map_err(|e| {
            ConfigError {
                source: source.clone(),
                problems: vec![format!("cannot read the file: {e}")],
            }
        })?;
        Config::parse(&text, &source, intercept_ca)
    }

    /// Parse and validate `text`; `source` names it in messages.
    pub fn from_toml(text: &str, source: &str) -> Result<Config, ConfigError> {
        Config::parse(text, source, true)
    }

    /// `intercept_ca`: read and check the intercept CA files (all but `ca init` do).
    pub(crate) fn parse(
        text: &str,
        source: &str,
        intercept_ca: bool,
    ) -> Result<Config, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            source: source.to_string(),
            problems,
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| fail(vec![raw::describe_toml_error(&e, text)]))?;
        let mut problems = Vec::new();
        let config = resolve(raw, source, intercept_ca, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(problems))
        }
    }

    /// The upstream with this name.
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

fn resolve(raw: RawConfig, source: &str, intercept_ca: bool, problems: &mut Vec<String>) -> Config {
    let mut proxy = raw.proxy.resolve(problems);
    proxy.tls = tls::resolve(&raw.proxy, &proxy, source, problems);
    let has_client_ca = raw.proxy.client_ca.is_some();
    let defaults = Settings::defaults().overlay(&raw.defaults, "defaults", false, problems);
    let max_idle_in_defaults = raw.defaults.max_idle.is_some();
    // Names as written, so a client naming an upstream that failed validation gets no second error.
    let names: Vec<String> = raw
        .upstream
        .iter()
        .filter_map(|t| t.get("name").and_then(|v| v.as_str()).map(String::from))
        .collect();
    let mut upstreams = Vec::new();
    for (i, table) in raw.upstream.into_iter().enumerate() {
        if let Some(u) =
            resolve_upstream(table, i, &defaults, max_idle_in_defaults, source, problems)
        {
            upstreams.push(Arc::new(u));
        }
    }
    check_unique(names.iter().map(String::as_str), "upstream", problems);
    if intercept_ca {
        proxy.intercept_ca = resolve_intercept_ca(&raw.proxy, source, &upstreams, problems);
    }
    let clients: Vec<Client> = raw
        .client
        .into_iter()
        .enumerate()
        .filter_map(|(i, c)| resolve_client(c, i, &names, has_client_ca, problems))
        .collect();
    check_unique(clients.iter().map(|c| c.name.as_str()), "client", problems);
    let usernames = clients.iter().filter_map(|c| c.username.as_deref());
    check_unique(usernames, "client username", problems);
    Config {
        source: source.to_string(),
        proxy,
        upstreams,
        clients,
    }
}

/// Names label metrics and log lines: keep them to characters that need no quoting anywhere.
fn check_name(label: &str, name: &str, problems: &mut Vec<String>) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        problems.push(format!(
            "{label}: name must be 1 to 64 letters, digits, '-', '_' or '.' (it labels metrics and logs)"
        ));
    }
}

fn check_unique<'a>(names: impl Iterator<Item = &'a str>, what: &str, problems: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    for n in names {
        if !seen.insert(n) {
            problems.push(format!(
                "{what} \"{n}\": name is used twice; names must be unique"
            ));
        }
    }
}

fn resolve_upstream(
    table: toml::Table,
    index: usize,
    defaults: &Settings,
    max_idle_in_defaults: bool,
    source: &str,
    problems: &mut Vec<String>,
) -> Option<Upstream> {
    let label = match table.get("name").and_then(|v| v.as_str()) {
        Some(name) => format!("upstream {name:?}"),
        None => format!("upstream #{}", index + 1),
    };
    let raw = match RawUpstream::from_table(table) {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!("{label}: {e}"));
            return None;
        }
    };
    let before = problems.len();
    if raw.name.trim().is_empty() {
        problems.push(format!("upstream #{}: name must not be empty", index + 1));
    } else {
        check_name(&label, &raw.name, problems);
    }
    let settings = defaults.overlay(&raw.settings, &label, max_idle_in_defaults, problems);
    let mut hosts = Vec::new();
    if raw.hosts.is_empty() {
        problems.push(format!("{label}: hosts must list at least one host name"));
    }
    for h in &raw.hosts {
        match HostPattern::parse(h) {
            Ok(p) => hosts.push(p),
            Err(e) => problems.push(format!("{label}: hosts entry \"{h}\": {e}")),
        }
    }
    let ports = raw.ports.unwrap_or_else(|| vec![80, 443]);
    if ports.is_empty() {
        problems.push(format!("{label}: ports must list at least one port"));
    }
    if ports.contains(&0) {
        problems.push(format!("{label}: ports: 0 is not a port"));
    }
    let tls = match raw.tls.as_deref() {
        None | Some("as-requested") => TlsMode::AsRequested,
        Some("originate") => TlsMode::Originate,
        Some(other) => {
            problems.push(format!(
                "{label}: tls = \"{other}\" is not valid; use \"originate\" or \"as-requested\""
            ));
            TlsMode::AsRequested
        }
    };
    let connect = match raw.connect.as_deref() {
        None | Some("tunnel") => ConnectMode::Tunnel,
        Some("intercept") => ConnectMode::Intercept,
        Some(other) => {
            problems.push(format!(
                "{label}: connect = \"{other}\" is not valid; use \"tunnel\" or \"intercept\""
            ));
            ConnectMode::Tunnel
        }
    };
    let ca_file = raw.ca_file.map(|p| relative_to(source, &p));
    let ca_roots: Arc<[CertificateDer<'static>]> = match &ca_file {
        None => Arc::from([]),
        Some(path) => match crate::pem::certificates(path, CA_FILE_FIX) {
            Ok(roots) => roots.into(),
            Err(e) => {
                problems.push(format!("{label}: ca_file {}: {e}", path.display()));
                Arc::from([])
            }
        },
    };
    let tls_client = match crate::trust::client_config(&ca_roots) {
        Ok(c) => Some(c),
        Err(e) => {
            let file = ca_file.as_deref().unwrap_or(Path::new("(system roots)"));
            problems.push(format!("{label}: ca_file {}: {e}", file.display()));
            None
        }
    };
    let remote_idle_limit = match raw.remote_idle_limit.as_deref().map(raw::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            problems.push(format!("{label}: remote_idle_limit: {e}"));
            None
        }
    };
    if let Some(limit) = remote_idle_limit {
        for (key, value) in [
            ("idle_timeout", settings.idle_timeout),
            ("max_lifetime", settings.max_lifetime),
            ("tunnel_idle_timeout", settings.tunnel_idle_timeout),
        ] {
            if value >= limit {
                problems.push(format!(
                    "{label}: {key} ({}) must be below remote_idle_limit ({})",
                    raw::show_duration(value),
                    raw::show_duration(limit)
                ));
            }
        }
    }
    if problems.len() > before {
        return None;
    }
    // Never `None` here: a failed build was one of the problems.
    let tls_client = tls_client?;
    let reach = reach::Reach {
        hosts: &hosts,
        ports: &ports,
        allow_private: settings.allow_private,
        tls,
        connect,
        ca_file: ca_file.as_deref(),
        ca_roots: &ca_roots,
    }
    .fingerprint();
    Some(Upstream {
        name: raw.name,
        hosts,
        ports,
        tls,
        connect,
        ca_file,
        ca_roots,
        tls_client,
        remote_idle_limit,
        settings,
        reach,
    })
}

/// `intercept_ca_cert` and `intercept_ca_key`: both or neither, required by `connect =
/// "intercept"`, and read and checked now so a reload with a broken CA keeps the old one.
fn resolve_intercept_ca(
    raw: &RawProxy,
    source: &str,
    upstreams: &[Arc<Upstream>],
    problems: &mut Vec<String>,
) -> Option<Arc<InterceptCa>> {
    let cert = raw
        .intercept_ca_cert
        .as_deref()
        .map(|p| relative_to(source, p));
    let key = raw
        .intercept_ca_key
        .as_deref()
        .map(|p| relative_to(source, p));
    let missing = |what: &str| format!("proxy: {what} is missing");
    match (cert, key) {
        (Some(cert), Some(key)) => match InterceptCa::load(&cert, &key) {
            Ok(ca) => Some(Arc::new(ca)),
            Err(e) => {
                problems.push(format!("proxy: {e}"));
                None
            }
        },
        (Some(_), None) => {
            problems.push(missing(
                "intercept_ca_cert is set but intercept_ca_key (the CA's private key)",
            ));
            None
        }
        (None, Some(_)) => {
            problems.push(missing(
                "intercept_ca_key is set but intercept_ca_cert (the CA certificate)",
            ));
            None
        }
        (None, None) => {
            let intercepted = upstreams
                .iter()
                .filter(|u| u.connect == ConnectMode::Intercept);
            for u in intercepted {
                problems.push(format!(
                    "upstream {:?}: connect = \"intercept\" needs intercept_ca_cert and intercept_ca_key in [proxy]; make them with `portcullis ca init --out DIR`",
                    u.name
                ));
            }
            None
        }
    }
}

/// A relative `ca_file` is read relative to the config file's folder, as users expect.
fn relative_to(source: &str, p: &Path) -> PathBuf {
    if p.is_absolute() || source == BUILTIN_NAME {
        return p.to_path_buf();
    }
    match Path::new(source).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// An IPv4-mapped IPv6 CIDR (`::ffff:10.0.0.0/104`) as the IPv4 CIDR it means (`10.0.0.0/8`):
/// peers arriving as mapped addresses on a dual-stack listener are matched as IPv4, so the
/// mapped spelling would otherwise never match anyone. Wider IPv6 CIDRs (`::/0`) stay IPv6.
pub fn unmapped(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

fn resolve_client(
    raw: RawClient,
    index: usize,
    upstreams: &[String],
    has_client_ca: bool,
    problems: &mut Vec<String>,
) -> Option<Client> {
    let label = format!("client {:?}", raw.name);
    let before = problems.len();
    if raw.name.trim().is_empty() {
        problems.push(format!("client #{}: name must not be empty", index + 1));
    } else {
        check_name(&label, &raw.name, problems);
    }
    let mut cidrs = Vec::new();
    for c in raw.cidrs.unwrap_or_default() {
        match c
            .parse::<IpNet>()
            .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(n) => cidrs.push(unmapped(n.trunc())),
            Err(_) => problems.push(format!(
                "{label}: cidrs entry \"{c}\" is not a CIDR like 10.0.0.0/8"
            )),
        }
    }
    let password = match (&raw.username, &raw.password_env) {
        (Some(_), Some(var)) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => {
                problems.push(format!(
                    "{label}: password_env: environment variable {var} is not set (or empty); export it before starting"
                ));
                None
            }
        },
        (Some(_), None) => {
            problems.push(format!(
                "{label}: username needs password_env naming the variable that holds the password"
            ));
            None
        }
        (None, Some(_)) => {
            problems.push(format!(
                "{label}: password_env is set but username is missing"
            ));
            None
        }
        (None, None) => None,
    };
    if let Some(u) = &raw.username {
        if u.is_empty() || u.contains(':') {
            problems.push(format!(
                "{label}: username must be non-empty and must not contain ':'"
            ));
        }
    }
    let mut cert_names = Vec::new();
    for n in raw.cert_names.iter().flatten() {
        match CertNamePattern::parse(n) {
            Ok(p) => cert_names.push(p),
            Err(e) => problems.push(format!("{label}: {e}")),
        }
    }
    if raw.cert_names.as_ref().is_some_and(Vec::is_empty) {
        problems.push(format!(
            "{label}: cert_names is empty; list the certificate identities or remove the key"
        ));
    }
    if !cert_names.is_empty() && !has_client_ca {
        problems.push(format!(
            "{label}: cert_names needs [proxy] client_ca (the CA that issues client certificates) \
             and tls_listen; without them no connection has a verified certificate"
        ));
    }
    for name in &raw.upstreams {
        if !upstreams.contains(name) {
            problems.push(format!(
                "{label}: upstreams entry \"{name}\" names no [[upstream]]"
            ));
        }
    }
    if problems.len() > before {
        return None;
    }
    Some(Client {
        name: raw.name,
        cidrs,
        username: raw.username,
        password,
        password_env: raw.password_env,
        cert_names,
        upstreams: raw.upstreams,
    })
}

impl Settings {
    /// The values SPEC §3 documents for `[defaults]`.
    pub fn defaults() -> Settings {
        Settings {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            max_connections: 128,
            max_idle: 16,
            idle_timeout: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(60),
            acquire_timeout: Duration::from_secs(5),
            tcp_keepalive: Some(Duration::from_secs(30)),
            retry_on_reset: true,
            retry_non_idempotent: false,
            unsafe_reuse_max_idle: Duration::from_secs(2),
            max_replay_body: 1024 * 1024,
            tunnel_idle_timeout: Duration::from_secs(60),
            allow_private: false,
            learn_idle_limit: true,
        }
    }

    /// These settings with every key `raw` sets replaced; problems name `label`.
    /// `inherited_max_idle_explicit`: the `max_idle` being inherited was written in the file
    /// (then exceeding a lowered cap is an error, not something to adjust silently).
    fn overlay(
        &self,
        raw: &RawSettings,
        label: &str,
        inherited_max_idle_explicit: bool,
        problems: &mut Vec<String>,
    ) -> Settings {
        let mut s = self.clone();
        let mut dur = |key: &str, v: &Option<String>, slot: &mut Duration| {
            if let Some(text) = v {
                match raw::parse_duration(text) {
                    Ok(d) if d.is_zero() => {
                        problems.push(format!("{label}: {key} must be above 0"))
                    }
                    Ok(d) => *slot = d,
                    Err(e) => problems.push(format!("{label}: {key}: {e}")),
                }
            }
        };
        dur(
            "connect_timeout",
            &raw.connect_timeout,
            &mut s.connect_timeout,
        );
        dur(
            "response_timeout",
            &raw.response_timeout,
            &mut s.response_timeout,
        );
        dur("idle_timeout", &raw.idle_timeout, &mut s.idle_timeout);
        dur("max_lifetime", &raw.max_lifetime, &mut s.max_lifetime);
        dur(
            "acquire_timeout",
            &raw.acquire_timeout,
            &mut s.acquire_timeout,
        );
        dur(
            "tunnel_idle_timeout",
            &raw.tunnel_idle_timeout,
            &mut s.tunnel_idle_timeout,
        );
        if let Some(text) = &raw.unsafe_reuse_max_idle {
            // Zero is meaningful here: never reuse for a non-retriable request.
            match raw::parse_duration(text) {
                Ok(d) => s.unsafe_reuse_max_idle = d,
                Err(e) => problems.push(format!("{label}: unsafe_reuse_max_idle: {e}")),
            }
        }
        if let Some(text) = &raw.tcp_keepalive {
            if text == "off" {
                s.tcp_keepalive = None;
            } else {
                match raw::parse_duration(text) {
                    // What the kernel takes (TCP_KEEPIDLE, TCP_KEEPINTVL): outside it the
                    // socket option fails and probes would silently not be what was asked.
                    Ok(d) if !TCP_KEEPALIVE_RANGE.contains(&d) || d.subsec_nanos() != 0 => {
                        problems.push(format!(
                            "{label}: tcp_keepalive ({text}) must be whole seconds from 1s to 32767s, or \"off\""
                        ))
                    }
                    Ok(d) => s.tcp_keepalive = Some(d),
                    Err(e) => problems.push(format!("{label}: tcp_keepalive: {e} (or \"off\")")),
                }
            }
        }
        if let Some(n) = raw.max_connections {
            if n == 0 {
                problems.push(format!("{label}: max_connections must be at least 1"));
            } else {
                s.max_connections = n;
            }
        }
        if let Some(n) = raw.max_idle {
            s.max_idle = n;
        }
        if let Some(n) = raw.max_replay_body {
            if n > MAX_REPLAY_BODY {
                problems.push(format!(
                    "{label}: max_replay_body ({n}) must be at most {MAX_REPLAY_BODY}"
                ));
            } else {
                s.max_replay_body = n;
            }
        }
        if let Some(b) = raw.retry_on_reset {
            s.retry_on_reset = b;
        }
        if let Some(b) = raw.retry_non_idempotent {
            s.retry_non_idempotent = b;
        }
        if let Some(b) = raw.allow_private {
            s.allow_private = b;
        }
        if let Some(b) = raw.learn_idle_limit {
            s.learn_idle_limit = b;
        }
        if s.max_idle > s.max_connections {
            // Reported where it arises: the layer that wrote max_idle, or lowered the cap under one.
            if raw.max_idle.is_some()
                || (inherited_max_idle_explicit && raw.max_connections.is_some())
            {
                problems.push(format!(
                    "{label}: max_idle ({}) must not exceed max_connections ({})",
                    s.max_idle, s.max_connections
                ));
            } else {
                // Only the cap was written: the built-in max_idle follows it down.
                s.max_idle = s.max_connections;
            }
        }
        s
    }
}

#[cfg(test)]
mod tests;
