//! Config file: the effective config's types and how one is loaded; a validation pass reports every error.
//!
//! Parsing is two-staged: TOML → `Raw*` structs (`raw`: strict, `deny_unknown_fields`), then
//! `Raw*` → the effective `Config` (`resolve`, with `settings` for `[defaults]`, `tls` for the
//! TLS listener) with every `[defaults]` key resolved per upstream. Every problem found is
//! collected, so a bad file is fixed in one round. `print` is what `portcullis check` shows,
//! `lint` what it warns about, `reach` what a reload compares.

pub mod lint;
mod print;
pub mod raw;
pub mod reach;
mod resolve;
mod settings;
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
use raw::RawConfig;
pub use resolve::unmapped;

/// The built-in config: the same text as `config/portcullis.toml`.
pub const BUILTIN: &str = include_str!("../config/portcullis.toml");
/// How the built-in config is named in messages.
pub const BUILTIN_NAME: &str = "<built-in config/portcullis.toml>";

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
    /// connections made under another one are closed (SPEC §8: a reload that changes it
    /// closes the upstream's pooled connections).
    pub reach: u64,
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
        let config = resolve::resolve(raw, source, intercept_ca, &mut problems);
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

#[cfg(test)]
mod tests;
