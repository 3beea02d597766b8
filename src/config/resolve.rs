//! From the file as written to the effective config: `[defaults]` resolved into each upstream, every name, pattern, file and cross-reference checked.
//!
//! Every problem is collected rather than returned, so a bad file is fixed in one round.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use rustls::pki_types::CertificateDer;

use super::raw::{self, RawClient, RawConfig, RawProxy, RawUpstream};
use super::{
    reach, tls, Client, Config, ConnectMode, Secret, Settings, TlsMode, Upstream, BUILTIN_NAME,
};
use crate::intercept::ca::InterceptCa;
use crate::pattern::{CertNamePattern, HostPattern};

/// What a `ca_file` without certificates should hold.
const CA_FILE_FIX: &str = "give the CA certificates that the upstream's certificate chains to";

pub(super) fn resolve(
    raw: RawConfig,
    source: &str,
    intercept_ca: bool,
    problems: &mut Vec<String>,
) -> Config {
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
pub(super) fn relative_to(source: &str, p: &Path) -> PathBuf {
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
