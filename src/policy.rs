//! Who may reach what: client identity × host × port, and which addresses are private.
//!
//! Policy never sees the pool: it turns (client address, certificate identity, credentials,
//! requested host and port) into an allowed upstream and dial target, or a denial.
pub mod identity;
pub mod ip;

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;

use crate::config::{Client, Config, ConnectMode, TlsMode, Upstream};
use crate::error::{DenyReason, ProxyError};
use crate::pattern::HostPattern;
use crate::target::{Host, Scheme, Target};
use identity::PeerIdentity;

/// What the client asked for, before an upstream decides the port.
#[derive(Debug, Clone, Copy)]
pub enum Want {
    /// Absolute-form request: port may be implicit.
    Forward { scheme: Scheme, port: Option<u16> },
    /// CONNECT: the port is always explicit; the tunnel carries the client's own TLS.
    Tunnel { port: u16 },
}

/// An allowed request: who asked, which upstream allowed it, and where to dial.
#[derive(Debug, Clone)]
pub struct Allowed {
    pub client: Option<String>,
    pub upstream: Arc<Upstream>,
    pub target: Target,
}

/// Decide a request: identity first (407/403), then host, then port (SPEC §4 order).
pub fn decide(
    config: &Config,
    caller: Caller<'_>,
    proxy_authorization: Option<&[u8]>,
    host: &Host,
    want: Want,
) -> Result<Allowed, ProxyError> {
    let client = identify(&config.clients, caller, proxy_authorization)?;
    let upstream = config
        .upstreams
        .iter()
        .find(|u| u.hosts.iter().any(|p| p.matches(host)))
        .ok_or_else(|| {
            ProxyError::denied(
                DenyReason::Host,
                format!("host {host} is not on the allowlist"),
            )
        })?;
    if let Some(c) = client {
        if !c.upstreams.iter().any(|u| *u == upstream.name) {
            return Err(ProxyError::denied(
                DenyReason::Client,
                format!(
                    "client \"{}\" may not use upstream \"{}\" (host {host})",
                    c.name, upstream.name
                ),
            ));
        }
    }
    let (port, tls) = port_and_tls(Some(upstream), want);
    let reachable = match want {
        Want::Tunnel { port } => connect_plan(upstream, port).is_some(),
        Want::Forward { .. } => upstream.ports.contains(&port),
    };
    if !reachable {
        return Err(ProxyError::denied(
            DenyReason::Port,
            format!(
                "port {port} is not allowed for {host} (upstream \"{}\")",
                upstream.name
            ),
        ));
    }
    Ok(Allowed {
        client: client.map(|c| c.name.clone()),
        upstream: upstream.clone(),
        target: Target {
            host: host.clone(),
            port,
            tls,
        },
    })
}

/// The port a request for `host` dials (or would dial, were it allowed): the first upstream
/// whose hosts match decides, as in [`decide`]. For access lines of refused requests.
pub fn dial_port(config: &Config, host: &Host, want: Want) -> u16 {
    let upstream = config
        .upstreams
        .iter()
        .find(|u| u.hosts.iter().any(|p| p.matches(host)));
    port_and_tls(upstream.map(|u| &**u), want).0
}

/// The port dialed and whether TLS is spoken to it: the explicit port, else 443 when TLS is
/// originated or the scheme asks for it, else 80. A tunnel carries the client's own TLS.
fn port_and_tls(upstream: Option<&Upstream>, want: Want) -> (u16, bool) {
    match want {
        Want::Tunnel { port } => (port, false),
        Want::Forward { scheme, port } => {
            let originate = upstream.is_some_and(|u| u.tls == TlsMode::Originate);
            let tls = originate || scheme == Scheme::Https;
            (port.unwrap_or(if tls { 443 } else { 80 }), tls)
        }
    }
}

/// What a CONNECT to an allowed host becomes (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectPlan {
    /// Dial the CONNECT port and copy bytes both ways. `or_originate`: the upstream originates
    /// TLS, so plain HTTP sent into the tunnel is served as origination to that port instead.
    Tunnel { or_originate: Option<u16> },
    /// Answer the CONNECT without dialing: only plain HTTP may follow, served as origination
    /// to `port` (a client tunnelling `http://host/` asks for port 80; origination dials 443).
    Originate { port: u16 },
    /// Answer the CONNECT, complete the client's TLS as the host with a leaf of the intercept
    /// CA, and send the requests inside through the pool with TLS to the CONNECT port.
    Intercept,
}

/// The plan for a CONNECT to `port` under `upstream`, or `None` when no port it may dial
/// serves it. Plain HTTP inside is served as if it had come in absolute form: for the
/// scheme's default port 80 the URI has no port, so origination dials 443.
pub fn connect_plan(upstream: &Upstream, port: u16) -> Option<ConnectPlan> {
    let allowed = |p: u16| upstream.ports.contains(&p);
    if upstream.connect == ConnectMode::Intercept {
        return allowed(port).then_some(ConnectPlan::Intercept);
    }
    if upstream.tls != TlsMode::Originate {
        return allowed(port).then_some(ConnectPlan::Tunnel { or_originate: None });
    }
    let originate_to = if port == 80 { 443 } else { port };
    match (allowed(port), allowed(originate_to)) {
        (true, o) => Some(ConnectPlan::Tunnel {
            or_originate: o.then_some(originate_to),
        }),
        (false, true) => Some(ConnectPlan::Originate { port: originate_to }),
        (false, false) => None,
    }
}

/// Who is connecting: the source address and, on the TLS listener with `client_ca`, the
/// identities of the client's verified certificate.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub ip: IpAddr,
    /// `None` without a verified certificate (plain listener, or no `client_ca`).
    pub cert: Option<&'a PeerIdentity>,
}

impl From<IpAddr> for Caller<'_> {
    /// A caller known by its address only.
    fn from(ip: IpAddr) -> Self {
        Caller { ip, cert: None }
    }
}

/// Why a private address is refused when `allow_private = false`.
pub const NOT_PRIVATE: &str = "this destination is not allowed to reach private addresses";
/// Why a link-local address is refused under `allow_private = true`.
pub const NOT_LINK_LOCAL: &str = "link-local addresses (cloud metadata) are refused even with allow_private = true, unless the upstream lists the address itself in hosts";

/// Whether `upstream` may dial the addresses `host` resolved to (SPEC §4). Run on the very
/// addresses that will be dialed, all of them: one refused answer refuses the request, as a
/// mixed answer is how DNS rebinding starts.
///
/// Private addresses need `allow_private`; link-local ones (169.254/16, fe80::/10, in any
/// IPv6 form) are refused even then unless `hosts` lists that very address, so a wildcard
/// or a name never reaches the metadata service.
pub fn check_addresses(
    upstream: &Upstream,
    host: &Host,
    addrs: &[IpAddr],
) -> Result<(), ProxyError> {
    for &addr in addrs {
        let Some(private) = ip::classify(addr) else {
            continue;
        };
        let why = if !upstream.settings.allow_private {
            NOT_PRIVATE
        } else if private.link_local && !lists_literally(upstream, addr) {
            NOT_LINK_LOCAL
        } else {
            continue;
        };
        return Err(ProxyError::PrivateAddress {
            host: host.to_string(),
            addr,
            class: private.class,
            why,
        });
    }
    Ok(())
}

/// Whether `hosts` names `addr` itself (not a name that resolves to it, nor a mapped form).
fn lists_literally(upstream: &Upstream, addr: IpAddr) -> bool {
    upstream
        .hosts
        .iter()
        .any(|p| matches!(p, HostPattern::Ip(listed) if *listed == addr))
}

/// Which `[[client]]` is asking. With no clients configured, everyone is anonymous and allowed.
///
/// An entry's criteria are its CIDRs (source address), its `cert_names` (one identity of the
/// verified client certificate) and its username (Basic credentials); each holds when the
/// entry does not name it. Credentials, when sent, must be a client's, and that client's other
/// criteria must hold; without credentials the first password-less client whose criteria hold
/// is chosen; failing that, 407 when some client could log in, else 403.
pub fn identify<'c>(
    clients: &'c [Client],
    caller: Caller<'_>,
    proxy_authorization: Option<&[u8]>,
) -> Result<Option<&'c Client>, ProxyError> {
    if clients.is_empty() {
        return Ok(None);
    }
    let peer = canonical(caller.ip);
    let in_cidrs = |c: &Client| c.cidrs.is_empty() || c.cidrs.iter().any(|n| n.contains(&peer));
    // A connection without a certificate never matches an entry that names cert_names.
    let has_cert = |c: &Client| {
        c.cert_names.is_empty() || caller.cert.is_some_and(|id| id.matches_any(&c.cert_names))
    };
    let holds = |c: &Client| in_cidrs(c) && has_cert(c);
    if let Some(header) = proxy_authorization {
        let (user, pass) = parse_basic(header).ok_or(ProxyError::AuthRequired)?;
        let client = clients
            .iter()
            .find(|c| c.username.as_deref() == Some(user.as_str()))
            .filter(|c| {
                c.password
                    .as_ref()
                    .is_some_and(|p| constant_time_eq(p.expose().as_bytes(), pass.as_bytes()))
            })
            .ok_or(ProxyError::AuthRequired)?;
        if !in_cidrs(client) {
            return Err(ProxyError::denied(
                DenyReason::Client,
                format!("client \"{}\" may not connect from {peer}", client.name),
            ));
        }
        if !has_cert(client) {
            return Err(ProxyError::denied(
                DenyReason::Client,
                format!(
                    "client \"{}\" must present a client certificate naming one of its cert_names; {}",
                    client.name,
                    presented(caller.cert)
                ),
            ));
        }
        return Ok(Some(client));
    }
    if let Some(c) = clients.iter().find(|c| c.username.is_none() && holds(c)) {
        return Ok(Some(c));
    }
    if clients.iter().any(|c| c.username.is_some() && holds(c)) {
        return Err(ProxyError::AuthRequired);
    }
    let detail = if clients.iter().any(|c| !c.cert_names.is_empty()) {
        format!(
            "no client identity is allowed from {peer}; {}",
            presented(caller.cert)
        )
    } else {
        format!("no client identity is allowed from {peer}")
    };
    Err(ProxyError::denied(DenyReason::Client, detail))
}

/// What certificate a denied caller showed, for its 403 (at most three identities).
fn presented(cert: Option<&PeerIdentity>) -> String {
    match cert {
        None => "no client certificate was presented (they are asked for on the TLS listener with client_ca)".into(),
        Some(id) if id.names.is_empty() => {
            "the client certificate names no URI, DNS name or common name".into()
        }
        Some(id) => {
            let shown: Vec<String> = id.names.iter().take(3).map(|n| n.to_string()).collect();
            let more = id.names.len().saturating_sub(3);
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            format!("the client certificate names {}{more}", shown.join(", "))
        }
    }
}

/// An IPv4-mapped IPv6 peer (dual-stack listener) is matched as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// `Basic base64(user:pass)` → (user, pass).
fn parse_basic(header: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, b64) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
