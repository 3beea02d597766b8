//! TLS interception (SPEC §9): the CA, the leaves it signs, and the TLS server side of an intercepted CONNECT.
//!
//! - [`ca::InterceptCa::load`] reads and checks `intercept_ca_cert` / `intercept_ca_key`; config
//!   loading calls it, so `Config.proxy.intercept_ca` is a CA known to work (or `None`).
//! - [`init::init`] is `portcullis ca init`: a new CA whose name constraints
//!   ([`constraints::Constraints`]) permit only the hosts of the intercept upstreams.
//! - [`leaf::LeafCache`] issues, caches and renews one leaf per host; `Shared` owns it (through
//!   [`server::Interceptor`]) and hands it a new CA on reload.
//! - [`warnings`]: `check`'s lines for intercept hosts the CA may not sign for.

pub mod ca;
pub mod constraints;
pub mod init;
pub mod leaf;
pub mod server;

use crate::config::{Config, ConnectMode};

/// Problems that do not make the config invalid but will make clients refuse intercepted
/// handshakes, or make a stolen key worth more than it should be: one line each.
pub fn warnings(config: &Config) -> Vec<String> {
    let Some(ca) = &config.proxy.intercept_ca else {
        return Vec::new();
    };
    let intercepted = config
        .upstreams
        .iter()
        .filter(|u| u.connect == ConnectMode::Intercept);
    let cert = ca.cert_path().display();
    let mut lines = Vec::new();
    match ca.constraints() {
        None => lines.push(format!(
            "proxy: intercept_ca_cert {cert} has no name constraints: its key can sign for any host; `portcullis ca init` makes a CA limited to the intercept hosts"
        )),
        Some(constraints) => {
            for upstream in intercepted {
                for host in upstream.hosts.iter().filter(|h| !constraints.permits(h)) {
                    lines.push(format!(
                        "upstream {:?}: host \"{host}\" is outside the name constraints of intercept_ca_cert {cert} ({constraints}); clients will refuse its certificate: make a new CA with `portcullis ca init --force` and roll it out",
                        upstream.name
                    ));
                }
            }
        }
    }
    lines
}

#[cfg(test)]
pub(crate) mod testing;
