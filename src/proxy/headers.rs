//! Header rewriting at the proxy hop: hop-by-hop headers out, `Via` in, `Host` from the URI.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// How many names [`HOP_BY_HOP`] lists.
const HOPS: usize = 8;

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1, plus `Proxy-*`).
static HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Our hop's `Via` entry.
pub const VIA: HeaderValue = HeaderValue::from_static("1.1 portcullis");

/// Remove hop-by-hop headers, including every header that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One look at the names first: most requests carry none of them, and most responses only
    // `Connection: keep-alive`; each `remove` hashes even on a miss.
    let mut present = [false; HOPS];
    for key in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == key) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    // Names that `Connection` (or `Proxy-Connection`) adds beyond the fixed list; usually none
    // (`keep-alive` is on the list, `close` names no header in practice).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .chain(headers.get_all("proxy-connection").iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !HOP_BY_HOP
                .iter()
                .any(|h| t.eq_ignore_ascii_case(h.as_str()))
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| headers.contains_key(n))
        .collect();
    for name in named {
        // Never let a Connection token strip what framing or routing depends on.
        if name != header::HOST && name != header::CONTENT_LENGTH {
            headers.remove(&name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

/// Whether a header of this message stays at the hop: one of [`HOP_BY_HOP`], or a name its
/// `Connection` (or `Proxy-Connection`) lists. For writing a message on without copying its
/// map first; [`strip_hop_by_hop`] is the same rule applied to a map.
pub struct HopNames {
    /// Names `Connection` adds beyond the fixed list (usually none).
    named: smallvec::SmallVec<[HeaderName; 2]>,
}

impl HopNames {
    pub fn of(headers: &HeaderMap) -> HopNames {
        let mut named = smallvec::SmallVec::new();
        if headers.contains_key(header::CONNECTION) || headers.contains_key("proxy-connection") {
            named.extend(
                headers
                    .get_all(header::CONNECTION)
                    .iter()
                    .chain(headers.get_all("proxy-connection").iter())
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .map(str::trim)
                    .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
                    // Never let a Connection token drop what framing or routing depends on.
                    .filter(|n| *n != header::HOST && *n != header::CONTENT_LENGTH),
            );
        }
        HopNames { named }
    }

    /// Whether `name` is not passed on.
    pub fn drops(&self, name: &HeaderName) -> bool {
        HOP_BY_HOP.contains(name) || self.named.contains(name)
    }
}

/// Append our `Via` after any the message already carries.
pub fn add_via(headers: &mut HeaderMap) {
    headers.append(header::VIA, VIA);
}

/// The `Host` value for an upstream request: the URI's authority (port only when explicit).
pub fn host_value(host: &crate::target::Host, explicit_port: Option<u16>) -> Option<HeaderValue> {
    use crate::target::Host;
    use std::net::IpAddr;
    // Built by hand, not through `format!`: this runs for every forwarded request.
    let v4;
    let v6;
    let name: &str = match host {
        Host::Name(name) => name,
        Host::Ip(IpAddr::V4(ip)) => {
            v4 = crate::addr_text::Ipv4Text::new(*ip);
            v4.as_str()
        }
        Host::Ip(IpAddr::V6(_)) => {
            v6 = host.to_string();
            &v6
        }
    };
    let mut digits = itoa::Buffer::new();
    let port = match explicit_port {
        Some(p) => digits.format(p),
        None => "",
    };
    // Exactly as long as it will be: a full Vec becomes Bytes without a second allocation.
    let mut text = Vec::with_capacity(name.len() + usize::from(!port.is_empty()) + port.len());
    text.extend_from_slice(name.as_bytes());
    if !port.is_empty() {
        text.push(b':');
        text.extend_from_slice(port.as_bytes());
    }
    // Hand the buffer over rather than copying it.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).ok()
}

/// Does the message ask for the connection to be closed?
pub fn wants_close(headers: &HeaderMap) -> bool {
    connection_has(headers, "close")
}

/// Does the message ask for keep-alive (needed from HTTP/1.0 peers)?
pub fn wants_keep_alive(headers: &HeaderMap) -> bool {
    connection_has(headers, "keep-alive")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret-hop", "1"),
            ("x-kept", "yes"),
            ("idempotency-key", "abc"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept", "idempotency-key"]);
    }

    #[test]
    fn connection_cannot_strip_host_or_length() {
        let mut h = map(&[
            ("connection", "host, content-length"),
            ("host", "a"),
            ("content-length", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key("host") && h.contains_key("content-length"));
    }

    #[test]
    fn via_is_appended() {
        let mut h = map(&[("via", "1.0 fred")]);
        add_via(&mut h);
        let all: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(all, vec!["1.0 fred", "1.1 portcullis"]);
    }

    #[test]
    fn close_detection() {
        assert!(wants_close(&map(&[("connection", "Keep-Alive, Close")])));
        assert!(!wants_close(&map(&[("connection", "keep-alive")])));
        assert!(!wants_close(&map(&[])));
    }

    #[test]
    fn host_value_keeps_an_explicit_port() {
        let h = crate::target::Host::Name("api.example.com".into());
        assert_eq!(host_value(&h, None).unwrap(), "api.example.com");
        assert_eq!(host_value(&h, Some(8443)).unwrap(), "api.example.com:8443");
        let v6 = crate::target::Host::Ip("::1".parse().unwrap());
        assert_eq!(host_value(&v6, Some(80)).unwrap(), "[::1]:80");
    }
}
