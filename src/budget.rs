//! The worst-case memory of a configuration, as `portcullis check` prints it: what every
//! client connection, request in flight and pooled connection may hold at once.
//!
//! Each client connection is charged its fixed cost, a full-size head buffer, and the larger
//! of what a forwarded request or a tunnel may hold (a forwarded request's body and its busy
//! upstream connection); every destination is charged `max_idle` idle connections on top.
//! Busy upstream connections need no term of their own: each serves one client connection.
//!
//! The constants were measured as the RSS growth of the real binary with N items of a kind
//! held open, divided by N (`cargo test --test memory_budget -- --ignored --nocapture
//! measure`, debug build, 2 cores, glibc malloc); where code bounds a buffer more tightly than
//! one measurement can show (a buffer that grows by doubling), the code's bound is used.

use std::fmt;

use crate::config::{Config, ConnectMode};
use crate::http1::{HEAD_READ, MAX_BODY_CHUNK};
use crate::pattern::HostPattern;
use crate::upstream::MAX_BUF_SIZE;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The process with nothing in flight: binary, runtime, TLS roots, metrics, DNS cache, log
/// buffer. Measured 16 MiB after start and one request; doubled for worker threads' stacks
/// and allocator arenas on machines with more cores than the 2 measured on.
pub const BASE: u64 = 32 * MIB;

/// An open client connection beyond its buffers (its task, reader state, socket). Measured
/// 3.0 KiB each with 500 idle keep-alive connections.
pub const CLIENT_CONNECTION: u64 = 4 * KIB;

/// A CONNECT tunnel: its task and two probe buffers; bursts between plain sockets are spliced
/// in the kernel. Measured 8.4–8.7 KiB each with 200 tunnels after a 1 MiB echo. (When no pipe
/// can be made, a burst is copied through 2 × 256 KiB buffers: the budget assumes the process
/// has file descriptors to spare, as the fd limit of a container normally gives it.)
pub const TUNNEL: u64 = 16 * KIB;

/// What an upstream connection holds beyond its read and write buffers: TLS state and its
/// slot in the pool. Measured 24 KiB each with 200 idle TLS connections after a small response.
pub const UPSTREAM_FIXED: u64 = 32 * KIB;

/// A client connection whose CONNECT is intercepted (`connect = "intercept"`): rustls's
/// server side, with its record buffer (one 16 KiB record), its plaintext and its outgoing
/// TLS buffers (rustls's default limit, 64 KiB). From the code, not measured: interception
/// landed after these measurements.
pub const INTERCEPT_TLS: u64 = 96 * KIB;

/// A client connection on the TLS listener (`tls_listen`): rustls's server side, as for
/// interception (a 16 KiB record buffer, its plaintext, outgoing TLS up to rustls's default
/// 64 KiB limit). From the code; an idle one measured 4.5 KiB more than a plain one
/// (`benches/load/tls_bench.rs`). A CONNECT intercepted on a TLS connection holds both.
pub const LISTENER_TLS: u64 = 96 * KIB;

/// The intercept leaf cache: at most `leaf::CAPACITY` leaves, each a certificate and key of
/// well under 4 KiB. From the code, not measured.
pub const LEAF_CACHE: u64 = crate::intercept::leaf::CAPACITY as u64 * 4 * KIB;

/// The learned idle limits (SPEC §11): at most `MAX_DESTINATIONS` entries, each a host name
/// of up to 253 bytes, an upstream name and a few numbers in a hash map: 512 bytes each is
/// generous. From the code, not measured: learning landed after these measurements.
pub const LEARNED_LIMITS: u64 = crate::learn::table::MAX_DESTINATIONS as u64 * 512;

/// Destinations a wildcard host (`*.example.com`) is counted as, for idle connections: any
/// number of names may match, the budget has to assume some.
pub const WILDCARD_DESTINATIONS: u64 = 16;

/// A head buffer of a head up to `max_header_bytes`: it grows by doubling (2 KiB, then
/// reads of `HEAD_READ`), so up to twice the head plus one read. Measured: 24 KiB for a
/// 16 000-byte head.
pub fn head_buffer(max_header_bytes: usize) -> u64 {
    2 * max_header_bytes as u64 + HEAD_READ as u64
}

/// A request body in flight: the replay buffer (grows by doubling, up to twice
/// `max_replay_body`) with the read buffer it is copied from, or, once streamed, the pieces
/// in the channel to the upstream request (4) and the one being read. Measured: 132 KiB for
/// a 64 KiB body held for replay.
pub fn request_body(max_replay_body: usize) -> u64 {
    2 * max_replay_body as u64 + 5 * MAX_BODY_CHUNK as u64
}

/// An upstream connection: its read and write buffers (each bounded by `MAX_BUF_SIZE`: a
/// response head, or a body piece of at most 64 KiB; an idle one keeps at most 8 KiB) and
/// [`UPSTREAM_FIXED`]. Measured with hyper's client, which kept its buffers' size while
/// idle: 296 KiB for an idle connection after a 4 MiB response, 113 KiB for a busy one
/// whose client reads nothing; our own codec holds less, and the bound stays.
pub fn upstream_connection() -> u64 {
    2 * MAX_BUF_SIZE as u64 + UPSTREAM_FIXED
}

/// The terms of the worst case, for one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub clients: u64,
    pub head: u64,
    pub max_header_bytes: usize,
    pub body: u64,
    pub max_replay_body: usize,
    pub upstream_connection: u64,
    pub idle_connections: u64,
    pub destinations: u64,
    /// Some upstream intercepts: client connections may carry TLS, and leaves are cached.
    pub intercepts: bool,
    /// `tls_listen` is set: any client connection may be a TLS one.
    pub tls_listener: bool,
}

impl Budget {
    pub fn of(config: &Config) -> Budget {
        let p = &config.proxy;
        let max_replay_body = config
            .upstreams
            .iter()
            .map(|u| u.settings.max_replay_body)
            .max()
            .unwrap_or(0);
        let mut destinations = 0;
        let mut idle_connections = 0;
        for u in &config.upstreams {
            let hosts: u64 = u
                .hosts
                .iter()
                .map(|h| match h {
                    HostPattern::Suffix(_) => WILDCARD_DESTINATIONS,
                    HostPattern::Exact(_) | HostPattern::Ip(_) => 1,
                })
                .sum();
            let d = hosts * u.ports.len() as u64;
            destinations += d;
            idle_connections += d * u.settings.max_idle as u64;
        }
        Budget {
            clients: p.max_client_connections as u64,
            head: head_buffer(p.max_header_bytes),
            max_header_bytes: p.max_header_bytes,
            body: request_body(max_replay_body),
            max_replay_body,
            upstream_connection: upstream_connection(),
            idle_connections,
            destinations,
            intercepts: config
                .upstreams
                .iter()
                .any(|u| u.connect == ConnectMode::Intercept),
            tls_listener: p.tls.is_some(),
        }
    }

    /// What TLS adds to each client connection: the TLS listener's, interception's, or both
    /// (a CONNECT intercepted on the TLS listener).
    fn client_tls(&self) -> u64 {
        let intercept = if self.intercepts { INTERCEPT_TLS } else { 0 };
        let listener = if self.tls_listener { LISTENER_TLS } else { 0 };
        intercept + listener
    }

    fn base(&self) -> u64 {
        if self.intercepts {
            BASE + LEARNED_LIMITS + LEAF_CACHE
        } else {
            BASE + LEARNED_LIMITS
        }
    }

    /// What one client connection may hold: connection, head, and a forwarded request (its
    /// body and busy upstream connection) or a tunnel, whichever is larger.
    pub fn per_client(&self) -> u64 {
        CLIENT_CONNECTION
            + self.client_tls()
            + self.head
            + (self.body + self.upstream_connection).max(TUNNEL)
    }

    pub fn total(&self) -> u64 {
        self.base()
            + self.clients * self.per_client()
            + self.idle_connections * self.upstream_connection
    }
}

/// `1.9 GiB`, `672 KiB`: binary units, one decimal above 10 of a unit not shown.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 10.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl fmt::Display for Budget {
    /// Comment lines, so that `check`'s output stays a valid config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total();
        writeln!(
            f,
            "# worst-case memory: {} ({total} bytes) = {} base + {} client connections × {} + {} idle upstream connections × {}",
            size(total),
            size(self.base()),
            self.clients,
            size(self.per_client()),
            self.idle_connections,
            size(self.upstream_connection),
        )?;
        writeln!(
            f,
            "#   a client connection: {} connection + {} head buffer (max_header_bytes {}) + {} request body (max_replay_body {}) + {} upstream connection (a tunnel instead: {})",
            size(CLIENT_CONNECTION),
            size(self.head),
            self.max_header_bytes,
            size(self.body),
            self.max_replay_body,
            size(self.upstream_connection),
            size(TUNNEL),
        )?;
        writeln!(
            f,
            "#   idle upstream connections: max_idle for each of {} destinations (a wildcard host counted as {WILDCARD_DESTINATIONS}); kernel socket buffers not included",
            self.destinations,
        )?;
        if self.tls_listener {
            writeln!(
                f,
                "#   TLS listener: {} TLS per client connection",
                size(LISTENER_TLS),
            )?;
        }
        if self.intercepts {
            writeln!(
                f,
                "#   interception: {} TLS per client connection, {} leaf cache in the base",
                size(INTERCEPT_TLS),
                size(LEAF_CACHE),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_written() {
        assert_eq!(size(512), "512 bytes");
        assert_eq!(size(4 * KIB), "4.0 KiB");
        assert_eq!(size(672 * KIB), "672 KiB");
        assert_eq!(size(1946 * MIB), "1.9 GiB");
    }

    /// The terms follow the config: clients, head and body limits, destinations × max_idle.
    #[test]
    fn the_budget_follows_the_limits() {
        let text = "[proxy]\nmax_client_connections = 200\nmax_header_bytes = 16384\n\
            [defaults]\nmax_replay_body = 65536\nmax_idle = 4\n\
            [[upstream]]\nname = \"a\"\nhosts = [\"a.example.com\", \"*.b.example.com\"]\nports = [80, 443]\n";
        let config = Config::from_toml(text, "unit.toml").expect("valid");
        let b = Budget::of(&config);
        assert_eq!(b.clients, 200);
        assert_eq!(b.head, 40 * KIB);
        assert_eq!(b.body, 448 * KIB);
        assert_eq!(b.destinations, (1 + WILDCARD_DESTINATIONS) * 2);
        assert_eq!(b.idle_connections, b.destinations * 4);
        assert_eq!(
            b.total(),
            BASE + LEARNED_LIMITS
                + 200 * (CLIENT_CONNECTION + 40 * KIB + 448 * KIB + upstream_connection())
                + b.idle_connections * upstream_connection()
        );
        let text = b.to_string();
        assert!(text.starts_with("# worst-case memory: "), "{text}");
        assert!(text.contains(&format!("({} bytes)", b.total())), "{text}");
        assert!(text.lines().all(|l| l.starts_with('#')), "{text}");
        // Twice the clients, more than the old budget, less than twice it (the base stays).
        let more = Budget {
            clients: 400,
            ..b.clone()
        };
        assert!(more.total() > b.total() && more.total() < 2 * b.total());
        // Interception adds client-side TLS to every connection and the leaf cache.
        let tls = Budget {
            intercepts: true,
            ..b.clone()
        };
        assert_eq!(tls.total(), b.total() + 200 * INTERCEPT_TLS + LEAF_CACHE);
        assert!(tls.to_string().contains("interception:"));
        // The TLS listener adds rustls's server side to every connection; an intercepted
        // CONNECT on it holds both.
        let listener = Budget {
            tls_listener: true,
            ..b.clone()
        };
        assert_eq!(listener.total(), b.total() + 200 * LISTENER_TLS);
        assert!(listener.to_string().contains("TLS listener:"));
        let both = Budget {
            tls_listener: true,
            ..tls.clone()
        };
        assert_eq!(both.total(), tls.total() + 200 * LISTENER_TLS);
    }
}
