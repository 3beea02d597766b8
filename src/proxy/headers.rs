//! Header rewriting at the proxy hop: hop-by-hop headers out, `Via` in, `Host` from the URI.

use http::header::{self, HeaderMap, HeaderValue};

use crate::http1::known::{known, Known};

/// Our hop's `Via` entry.
pub const VIA: HeaderValue = HeaderValue::from_static("1.1 portcullis");

/// Which fields of one message stay at the hop: the fixed hop-by-hop names
/// ([`Known::is_hop_by_hop`]), and those its
/// `Connection` (or `Proxy-Connection`) lists. Messages are written on field by field,
/// leaving these out; nothing is copied or removed first. The default names nothing beyond
/// the fixed list.
#[derive(Default)]
pub struct HopNames<'a> {
    /// Tokens of `Connection` beyond the fixed list (usually none).
    named: smallvec::SmallVec<[&'a [u8]; 4]>,
}

impl<'a> HopNames<'a> {
    /// From the values of the message's `Connection` and `Proxy-Connection` fields.
    pub fn from_connection(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        // Pushed one by one rather than collected: the usual `keep-alive` or `close` names
        // nothing, and an empty inline vector costs nothing to build.
        let mut named = smallvec::SmallVec::new();
        for value in values {
            for token in crate::http1::tokens(value) {
                if !is_hop_by_hop(token) {
                    named.push(token);
                }
            }
        }
        HopNames { named }
    }

    /// Those of a parsed request.
    pub fn of(headers: &'a HeaderMap) -> Self {
        Self::from_connection(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .chain(headers.get_all("proxy-connection").iter())
                .map(HeaderValue::as_bytes),
        )
    }

    /// Whether the field `name` (any case) is not passed on. A `Connection` token never drops
    /// what framing or routing depends on.
    pub fn drops(&self, name: &[u8]) -> bool {
        self.drops_known(known(name), name)
    }

    /// [`Self::drops`] for a name already recognised as `kind` (`known(name)`).
    pub fn drops_known(&self, kind: Known, name: &[u8]) -> bool {
        if kind.is_hop_by_hop() {
            return true;
        }
        if self.named.is_empty() || matches!(kind, Known::Host | Known::ContentLength) {
            return false;
        }
        self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// Whether the message's `Connection` names no field beyond the fixed hop-by-hop ones.
    pub fn is_fixed(&self) -> bool {
        self.named.is_empty()
    }
}

/// One of the fixed hop-by-hop names (RFC 9110 §7.6.1, plus `Proxy-*`), in any case.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    known(name).is_hop_by_hop()
}

/// The `Host` value sent upstream: the absolute-form target's own authority text when that
/// already is the value (the common case: nothing built), else one built by [`host_value`].
#[derive(Debug, Clone)]
pub enum HostField<'h> {
    Written(&'h str),
    Built(HeaderValue),
}

impl HostField<'_> {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HostField::Written(text) => text.as_bytes(),
            HostField::Built(value) => value.as_bytes(),
        }
    }
}

/// The `Host` value for an upstream request: the URI's authority (port only when explicit).
pub fn host_value(host: &crate::target::Host, explicit_port: Option<u16>) -> Option<HeaderValue> {
    // Built by hand, not through `format!`: every request inside a tunnel needs one.
    let text = host.text();
    let name = text.as_str();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let h = map(&[
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
        let hops = HopNames::of(&h);
        let left: Vec<&str> = h
            .keys()
            .map(|k| k.as_str())
            .filter(|k| !hops.drops(k.as_bytes()))
            .collect();
        assert_eq!(left, vec!["x-kept", "idempotency-key"]);
        assert!(hops.drops(b"X-SECRET-HOP") && hops.drops(b"Keep-Alive"));
    }

    #[test]
    fn connection_cannot_drop_host_or_length() {
        let h = map(&[
            ("connection", "host, content-length"),
            ("host", "a"),
            ("content-length", "3"),
        ]);
        let hops = HopNames::of(&h);
        assert!(!hops.drops(b"host") && !hops.drops(b"Content-Length"));
    }

    /// Where the target's authority is used as it was written, it is byte for byte the value
    /// `host_value` builds; where it is not, building it was needed.
    #[test]
    fn an_authority_as_written_is_the_built_host_value() {
        let cases: &[(&str, bool)] = &[
            ("http://api.example.com/", true),
            ("http://api.example.com:8443/", true),
            ("https://a-b_c.example:1/x", true),
            ("http://127.0.0.1:3000/", true),
            ("http://255.255.255.255/", true),
            ("http://0.0.0.0:65535?q", true),
            ("http://API.example.com/", false),
            ("http://api.example.com./", false),
            ("http://api.example.com:0443/", false),
            ("http://127.0.0.1./", false),
            ("http://127.0.0.1:080/", false),
            ("http://[::1]:80/", false),
            ("http://[::FFFF:127.0.0.1]/", false),
        ];
        for (uri, as_written) in cases {
            let a = crate::target::parse_absolute(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
            let built = host_value(&a.target.host, a.target.port).expect("a value");
            assert_eq!(a.host_value.is_some(), *as_written, "{uri}");
            if let Some(text) = a.host_value {
                assert_eq!(text.as_bytes(), built.as_bytes(), "{uri}");
            }
        }
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
