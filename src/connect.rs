//! Resolve, check every address against policy, dial TCP (racing the addresses, happy eyeballs), then TLS.
//!
//! The address that passed the private-address check is the one dialed: there is no second
//! lookup between check and connect, so DNS rebinding cannot slip a private address in.

pub mod io;
pub mod race;

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, Protocol, ResolverConfig, ResolverOpts};
use hickory_resolver::{Name, TokioAsyncResolver};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsConnector;

use crate::config::{ProxySettings, Settings, Upstream};
use crate::error::ProxyError;
use crate::policy;
use crate::target::{Host, Target};
pub use io::UpstreamIo;

/// A dialed upstream stream and the address it reached.
pub struct Dialed {
    pub io: UpstreamIo,
    pub peer: SocketAddr,
}

/// Everything needed to open upstream connections; shared by all requests.
pub struct Connector {
    resolver: TokioAsyncResolver,
}

impl Connector {
    /// A resolver from `dns_servers` when set, else the system's configuration.
    pub fn new(proxy: &ProxySettings) -> Connector {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        opts.use_hosts_file = true;
        let (config, sys_opts) = if proxy.dns_servers.is_empty() {
            match hickory_resolver::system_conf::read_system_conf() {
                Ok((c, o)) => (c, Some(o)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the system DNS configuration; only /etc/hosts names resolve");
                    (ResolverConfig::new(), None)
                }
            }
        } else {
            let mut c = ResolverConfig::new();
            for addr in &proxy.dns_servers {
                c.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
                c.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
            }
            (c, None)
        };
        if let Some(o) = sys_opts {
            opts.ndots = o.ndots;
        }
        Connector {
            resolver: TokioAsyncResolver::tokio(config, opts),
        }
    }

    /// Drop cached state that a reload may have made stale.
    pub fn reload(&self) {
        self.resolver.clear_cache();
    }

    /// Addresses for `host`, every one checked against the upstream's address policy.
    pub async fn resolve(
        &self,
        host: &Host,
        upstream: &Upstream,
        deadline: Instant,
    ) -> Result<Vec<IpAddr>, ProxyError> {
        let addrs = match host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(name) => {
                // As ASCII, label by label: a `&str` would go through IDNA's STD3 rules,
                // which refuse the `_` that DNS allows (and `parse_host` already made the
                // name lowercase ASCII).
                let fqdn = Name::from_ascii(format!("{name}.")).map_err(|e| ProxyError::Dns {
                    host: name.clone(),
                    detail: e.to_string(),
                })?;
                match timeout_at(deadline, self.resolver.lookup_ip(fqdn)).await {
                    Err(_) => {
                        return Err(ProxyError::Dns {
                            host: name.clone(),
                            detail: "lookup timed out".into(),
                        });
                    }
                    Ok(Err(e)) => {
                        let detail = match e.kind() {
                            hickory_resolver::error::ResolveErrorKind::NoRecordsFound {
                                ..
                            } => "no such host".to_string(),
                            _ => e.to_string(),
                        };
                        return Err(ProxyError::Dns {
                            host: name.clone(),
                            detail,
                        });
                    }
                    Ok(Ok(lookup)) => lookup.iter().collect::<Vec<_>>(),
                }
            }
        };
        if addrs.is_empty() {
            return Err(ProxyError::Dns {
                host: host.to_string(),
                detail: "no addresses".into(),
            });
        }
        policy::check_addresses(upstream, host, &addrs)?;
        Ok(addrs)
    }

    /// Resolve, check, connect (trying each address in turn), and start TLS when the target asks.
    pub async fn dial(&self, target: &Target, upstream: &Upstream) -> Result<Dialed, ProxyError> {
        let settings = &upstream.settings;
        let deadline = Instant::now() + settings.connect_timeout;
        let addrs = self.resolve(&target.host, upstream, deadline).await?;
        let (tcp, peer) = connect_any(&addrs, target.port, settings, deadline).await?;
        if !target.tls {
            return Ok(Dialed {
                io: UpstreamIo::Plain(tcp),
                peer,
            });
        }
        let server_name = match &target.host {
            Host::Name(n) => rustls::pki_types::ServerName::try_from(n.clone()),
            Host::Ip(ip) => Ok(rustls::pki_types::ServerName::IpAddress((*ip).into())),
        }
        .map_err(|e| ProxyError::TlsHandshake {
            host: target.host.to_string(),
            detail: e.to_string(),
        })?;
        let handshake = TlsConnector::from(upstream.tls_client.0.clone()).connect(server_name, tcp);
        match timeout_at(deadline, handshake).await {
            Err(_) => Err(ProxyError::ConnectTimeout {
                addr: target.authority(),
                timeout_ms: settings.connect_timeout.as_millis(),
            }),
            Ok(Err(e)) => Err(tls_error(&target.host, &e)),
            Ok(Ok(stream)) => Ok(Dialed {
                io: UpstreamIo::Tls(Box::new(stream)),
                peer,
            }),
        }
    }
}

/// Connect to the first address that answers, racing a silent one after a short delay
/// (happy eyeballs, [`race`]) so that one blackholed address cannot use up `connect_timeout`.
async fn connect_any(
    addrs: &[IpAddr],
    port: u16,
    settings: &Settings,
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr), ProxyError> {
    let order: Vec<SocketAddr> = race::interleave(addrs)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    let timeout_ms = settings.connect_timeout.as_millis();
    match race::race(&order, deadline, TcpStream::connect).await {
        Ok((stream, addr)) => {
            tune(&stream, settings);
            Ok((stream, addr))
        }
        Err(race::RaceError::TimedOut(tried)) => Err(ProxyError::ConnectTimeout {
            addr: match tried.as_slice() {
                [one] => one.to_string(),
                [first, rest @ ..] => format!("{first} (and {} more addresses)", rest.len()),
                [] => format!("port {port}"),
            },
            timeout_ms,
        }),
        Err(race::RaceError::Failed(addr, e)) => Err(match e.kind() {
            ErrorKind::ConnectionRefused => ProxyError::ConnectRefused {
                addr: addr.to_string(),
            },
            ErrorKind::TimedOut => ProxyError::ConnectTimeout {
                addr: addr.to_string(),
                timeout_ms,
            },
            _ => ProxyError::ConnectFailed {
                addr: addr.to_string(),
                detail: e.to_string(),
            },
        }),
        Err(race::RaceError::NoAddress) => Err(ProxyError::ConnectFailed {
            addr: format!("port {port}"),
            detail: "no address".into(),
        }),
    }
}

/// No Nagle delay (requests are small and latency-bound); keepalive probes as configured.
fn tune(stream: &TcpStream, settings: &Settings) {
    let _ = stream.set_nodelay(true);
    if let Some(every) = settings.tcp_keepalive {
        let ka = socket2::TcpKeepalive::new()
            .with_time(every)
            .with_interval(every);
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
            tracing::debug!(error = %e, "cannot set SO_KEEPALIVE");
        }
    }
}

/// A rustls failure as the proxy reports it: certificate problems apart from the rest.
fn tls_error(host: &Host, e: &std::io::Error) -> ProxyError {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(reason)) => ProxyError::TlsCertificate {
            host: host.to_string(),
            detail: format!("{reason:?}"),
        },
        Some(other) => ProxyError::TlsHandshake {
            host: host.to_string(),
            detail: other.to_string(),
        },
        None => ProxyError::TlsHandshake {
            host: host.to_string(),
            detail: e.to_string(),
        },
    }
}
