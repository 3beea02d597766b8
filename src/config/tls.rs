//! `[proxy]` `tls_listen`, `tls_cert`, `tls_key` and `client_ca`: checked together, and the
//! listener's rustls config built from the files while the config loads (SPEC §3, §10).

use std::net::SocketAddr;

use super::raw::RawProxy;
use super::resolve::relative_to;
use super::{ProxySettings, TlsListen};
use crate::server_tls;

/// `tls_listen` and its files: each is needed by, and only useful with, the others.
pub(super) fn resolve(
    raw: &RawProxy,
    proxy: &ProxySettings,
    source: &str,
    problems: &mut Vec<String>,
) -> Option<TlsListen> {
    let Some(text) = &raw.tls_listen else {
        if raw.tls_cert.is_some() || raw.tls_key.is_some() || raw.client_ca.is_some() {
            problems.push(
                "proxy: tls_cert, tls_key and client_ca serve only the TLS listener; \
                 set tls_listen (e.g. \"0.0.0.0:3129\") or remove them"
                    .into(),
            );
        }
        return None;
    };
    let listen = match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(format!(
                "proxy: tls_listen = \"{text}\" is not an address like 0.0.0.0:3129"
            ));
            None
        }
    };
    if let Some(a) = listen {
        for (key, other) in [
            ("listen", proxy.listen),
            ("admin_listen", proxy.admin_listen),
        ] {
            if super::raw::listeners_clash(a, other) {
                problems.push(format!(
                    "proxy: tls_listen ({a}) and {key} ({other}) would both listen on port {}; give them different ports",
                    a.port()
                ));
            }
        }
    }
    let (Some(cert), Some(key)) = (&raw.tls_cert, &raw.tls_key) else {
        problems.push(
            "proxy: tls_listen needs tls_cert and tls_key (the listener's PEM certificate chain \
             and its private key)"
                .into(),
        );
        return None;
    };
    let cert = relative_to(source, cert);
    let key = relative_to(source, key);
    let client_ca = raw.client_ca.as_deref().map(|p| relative_to(source, p));
    let files = server_tls::Files {
        cert: &cert,
        key: &key,
        client_ca: client_ca.as_deref(),
    };
    let server = match server_tls::load(&files) {
        Ok(s) => s,
        Err(e) => {
            problems.extend(e.into_iter().map(|p| format!("proxy: {p}")));
            return None;
        }
    };
    Some(TlsListen {
        listen: listen?,
        cert,
        key,
        client_ca,
        server,
    })
}
