//! Target {host, port, tls} parsed from an absolute URI or a CONNECT authority; the pool key.
//!
//! Everything the policy sees about a destination comes through here, so the
//! parsers accept one spelling per destination and refuse the rest: no
//! userinfo, no percent-encoding, no Unicode, no zone ids, and no numeric
//! host that a resolver could read as an IPv4 address other than the
//! canonical dotted quad. The authority is parsed from its raw text rather
//! than through `http::uri::Authority::port`, which accepts `+80` and turns
//! an out-of-range port into "no port".

mod uri;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use uri::SchemeText;

/// A destination host as the policy and the pool see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name: lowercase ASCII, no trailing dot. Build it with [`parse_host`].
    Name(String),
    /// An IP literal: a canonical dotted quad, or IPv6 written in brackets.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    /// The name or address; IPv6 in brackets so `:port` can follow.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(v4)) => f.write_str(crate::addr_text::Ipv4Text::new(*v4).as_str()),
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
        }
    }
}

impl Host {
    /// The text `Display` writes, without `core::fmt` for a name (borrowed) or IPv4.
    pub fn text(&self) -> HostText<'_> {
        match self {
            Host::Name(name) => HostText::Name(name),
            Host::Ip(IpAddr::V4(v4)) => HostText::V4(crate::addr_text::Ipv4Text::new(*v4)),
            Host::Ip(IpAddr::V6(_)) => HostText::Other(self.to_string()),
        }
    }
}

/// A host's text, from [`Host::text`].
pub enum HostText<'a> {
    Name(&'a str),
    V4(crate::addr_text::Ipv4Text),
    /// IPv6, bracketed: rare enough for `core::fmt`.
    Other(String),
}

impl HostText<'_> {
    pub fn as_str(&self) -> &str {
        match self {
            HostText::Name(name) => name,
            HostText::V4(v4) => v4.as_str(),
            HostText::Other(text) => text,
        }
    }
}

/// The scheme of an absolute-form request URI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

/// What an absolute-form request URI names, before the matching upstream fixes the port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTarget {
    pub scheme: Scheme,
    pub host: Host,
    /// The explicit port in the URI; `None` when the URI has none.
    pub port: Option<u16>,
}

/// The pool key and dial target.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
    /// Whether the proxy speaks TLS to the upstream (as-requested https or originate).
    pub tls: bool,
}

impl Target {
    /// `host:port`, IPv6 bracketed: for dialing, logs and metric labels.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Why a request target was refused; each message is one line for the 400 body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// Not a URI at all (`http::Uri` would refuse it).
    #[error("the request URI is not a valid absolute URI")]
    InvalidUri,
    #[error("the request URI must be absolute (http://host/path) or use CONNECT")]
    NotAbsolute,
    #[error("unsupported URI scheme {0}: only http:// and https:// can be proxied, use CONNECT for anything else")]
    UnsupportedScheme(String),
    #[error("userinfo in the URI is not allowed")]
    Userinfo,
    #[error("CONNECT needs host:port")]
    MissingPort,
    #[error("invalid port {0}: it must be a number from 1 to 65535")]
    InvalidPort(String),
    #[error("port out of range: {0} (must be 1 to 65535)")]
    PortOutOfRange(String),
    #[error("invalid host name: {host} ({reason})")]
    InvalidHost {
        /// The offending text, quoted, escaped and shortened for display.
        host: String,
        reason: &'static str,
    },
}

/// Longest name DNS can carry, without the trailing dot.
const MAX_NAME: usize = 253;
/// Longest DNS label.
const MAX_LABEL: usize = 63;
/// How much of a rejected value an error message repeats.
const MAX_SHOWN: usize = 64;

/// Parse a host as it appears in a URI authority or a host pattern.
///
/// Names are lowercased and lose one trailing dot. Only a canonical dotted
/// quad becomes `Host::Ip(V4)`; IPv6 must be bracketed (`[::1]`).
pub fn parse_host(s: &str) -> Result<Host, TargetError> {
    match plain_host(s) {
        Some(host) => Ok(host),
        None => parse_host_checked(s),
    }
}

/// The common spellings, a name of letters, digits, `-`, `_` and dots or a dotted quad, read
/// in one pass over the bytes; `None` for anything else, and for what [`parse_host_checked`]
/// might refuse, so that it decides (and explains) those. Whatever this accepts, that accepts
/// as the same host: the tests hold the two together.
fn plain_host(s: &str) -> Option<Host> {
    let b = s.as_bytes();
    let b = b.strip_suffix(b".").unwrap_or(b);
    if b.is_empty() || b.len() > MAX_NAME {
        return None;
    }
    if b[0].is_ascii_digit() {
        if let Some(v4) = dotted_quad(b) {
            return Some(Host::Ip(IpAddr::V4(v4)));
        }
    }
    let mut upper = false;
    let mut label = 0;
    let mut last = 0;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
            b'A'..=b'Z' => upper = true,
            b'.' if label > 0 => {
                label = 0;
                last = i + 1;
                continue;
            }
            _ => return None,
        }
        label += 1;
        if label > MAX_LABEL {
            return None;
        }
    }
    // A last label starting with a digit may be a number (`1`, `0x7f`): the full parse decides.
    if label == 0 || b[last].is_ascii_digit() {
        return None;
    }
    // Only ASCII was seen.
    let name = std::str::from_utf8(b).ok()?;
    Some(Host::Name(if upper {
        name.to_ascii_lowercase()
    } else {
        name.to_owned()
    }))
}

/// Four decimal octets as `Ipv4Addr::from_str` takes them: one to three digits, no leading
/// zero, at most 255; `None` for anything else. Read octet by octet, each byte looked at once.
fn dotted_quad(b: &[u8]) -> Option<Ipv4Addr> {
    let digit = |i: usize| b.get(i).map(|c| c.wrapping_sub(b'0')).filter(|&d| d <= 9);
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (k, octet) in octets.iter_mut().enumerate() {
        if k > 0 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let mut n = u16::from(digit(i)?);
        i += 1;
        // A leading zero is the whole octet: a digit after it is refused below.
        if n != 0 {
            for _ in 0..2 {
                let Some(d) = digit(i) else { break };
                n = n * 10 + u16::from(d);
                i += 1;
            }
        }
        *octet = u8::try_from(n).ok()?;
    }
    (i == b.len()).then(|| Ipv4Addr::from(octets))
}

/// Parse a host with every check, and say why one is refused.
fn parse_host_checked(s: &str) -> Result<Host, TargetError> {
    if let Some(rest) = s.strip_prefix('[') {
        return parse_bracketed_v6(s, rest);
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() {
        return Err(invalid_host(s, "the host is empty"));
    }
    if name.len() > MAX_NAME {
        return Err(invalid_host(s, "longer than 253 characters"));
    }
    if let Some(reason) = name.chars().find_map(bad_char_reason) {
        return Err(invalid_host(s, reason));
    }
    if let Ok(v4) = name.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(v4)));
    }
    let name = name.to_ascii_lowercase();
    for label in name.split('.') {
        if label.is_empty() {
            return Err(invalid_host(s, "empty label"));
        }
        if label.len() > MAX_LABEL {
            return Err(invalid_host(s, "a label is longer than 63 characters"));
        }
    }
    if name.rsplit('.').next().is_some_and(is_number_label) {
        return Err(invalid_host(
            s,
            "a resolver could read it as an IPv4 address; write IPv4 as a.b.c.d",
        ));
    }
    Ok(Host::Name(name))
}

/// An absolute-form request target: what it names, and what goes upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Absolute<'a> {
    pub target: RequestTarget,
    pub origin_form: OriginForm<'a>,
    /// The authority as written when it already is the `Host` value sent upstream (the host
    /// as `Display` writes it, the port when explicit, in decimal): a lowercase name or an
    /// IPv4 address without a trailing dot, a port without leading zeros. `None` otherwise,
    /// when the value has to be built.
    pub host_value: Option<&'a str>,
}

/// Parse an absolute-form request target (`http://host[:port]/path`), read from its text as
/// `http::Uri` reads it: what that refuses is [`TargetError::InvalidUri`].
pub fn parse_absolute(text: &str) -> Result<Absolute<'_>, TargetError> {
    match common_absolute(text) {
        Some(absolute) => Ok(absolute),
        None => parse_absolute_checked(text),
    }
}

/// The common spelling read in one pass: `http://` or `https://` in lowercase, a host
/// [`plain_host`] reads that is already its own `Host` value (no uppercase, no trailing dot),
/// an optional port of one to five digits without a leading zero, then nothing or a path.
/// `None` for anything else, which [`parse_absolute_checked`] decides (and explains); whatever
/// this accepts, that accepts as the same target: the tests hold the two together.
fn common_absolute(text: &str) -> Option<Absolute<'_>> {
    let b = text.as_bytes();
    let (scheme, skip) = if b.starts_with(b"http://") {
        (Scheme::Http, 7)
    } else if b.starts_with(b"https://") {
        (Scheme::Https, 8)
    } else {
        return None;
    };
    if b.len() > uri::MAX_LEN {
        return None;
    }
    let rest = &b[skip..];
    let host_end = rest
        .iter()
        .position(|&c| !COMMON_HOST[usize::from(c)])
        .unwrap_or(rest.len());
    let mut end = host_end;
    let mut port = None;
    if rest.get(end) == Some(&b':') {
        end += 1;
        let mut n: u32 = 0;
        let digits = rest[end..]
            .iter()
            .take(5)
            .take_while(|c| c.is_ascii_digit());
        for &c in digits {
            n = n * 10 + u32::from(c - b'0');
            end += 1;
        }
        // None, a leading zero (or 0), or more than 65535: the full parse explains.
        if end == host_end + 1 || rest[host_end + 1] == b'0' || n > u32::from(u16::MAX) {
            return None;
        }
        port = Some(n as u16);
    }
    // `?`, `#`, a sixth port digit or anything else: the full parse decides.
    if !matches!(rest.get(end), None | Some(b'/')) || rest[..host_end].ends_with(b".") {
        return None;
    }
    // The host and port are ASCII, so `skip + end` is a character boundary.
    let (authority, tail) = text[skip..].split_at(end);
    let host = plain_host(&authority[..host_end])?;
    let path_and_query = if tail.is_empty() {
        "/"
    } else {
        uri::path_and_query(tail).ok()?
    };
    Some(Absolute {
        target: RequestTarget { scheme, host, port },
        origin_form: OriginForm::new(path_and_query),
        host_value: Some(authority),
    })
}

/// The bytes of a host [`common_absolute`] reads: lowercase letters, digits, `-`, `_`, `.`.
const COMMON_HOST: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = matches!(i as u8, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.');
        i += 1;
    }
    t
};

/// [`parse_absolute`] with every check, and why a target is refused.
fn parse_absolute_checked(text: &str) -> Result<Absolute<'_>, TargetError> {
    let parts = uri::split(text).map_err(|_| TargetError::InvalidUri)?;
    let scheme = match parts.scheme {
        SchemeText::None => return Err(TargetError::NotAbsolute),
        SchemeText::Http => Scheme::Http,
        SchemeText::Https => Scheme::Https,
        SchemeText::Other(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
        SchemeText::Other(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
        SchemeText::Other(other) => return Err(TargetError::UnsupportedScheme(shown(other))),
    };
    let authority = parts.authority;
    if authority.is_empty() {
        return Err(TargetError::NotAbsolute);
    }
    // `http://allowed.example@evil.example/` goes to evil.example.
    if authority.bytes().any(|b| b == b'@') {
        return Err(TargetError::Userinfo);
    }
    let (host_text, port_text) = split_host_port(authority)?;
    let host = parse_host(host_text)?;
    let port = port_text.map(parse_port).transpose()?;
    let as_written = match &host {
        Host::Name(name) => name == host_text,
        // Only the canonical dotted quad parses, so only a trailing dot can differ.
        Host::Ip(IpAddr::V4(_)) => !host_text.ends_with('.'),
        Host::Ip(IpAddr::V6(_)) => false,
    } && port_text.is_none_or(|p| !p.starts_with('0'));
    Ok(Absolute {
        target: RequestTarget { scheme, host, port },
        origin_form: OriginForm::new(parts.path_and_query),
        host_value: as_written.then_some(authority),
    })
}

/// Parse a request target in origin-form (`/path?query`) or asterisk-form (`*`), checked as
/// `http::Uri` checks it; anything else is [`TargetError::InvalidUri`].
pub fn parse_origin_form(text: &str) -> Result<OriginForm<'_>, TargetError> {
    match uri::split(text) {
        Ok(parts) if parts.scheme == SchemeText::None && parts.authority.is_empty() => {
            Ok(OriginForm::new(parts.path_and_query))
        }
        _ => Err(TargetError::InvalidUri),
    }
}

/// The request-target sent upstream (SPEC §4): the client's path and query, never empty and
/// never with a fragment, borrowed from the request's target.
///
/// `http://host#frag` has no path and query left once the fragment is cut, and `http://host?q`
/// has a query but no path: both take a `/` in front (`/`, `/?q`), as `http::Uri::path` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginForm<'a> {
    /// Path and query without the fragment: empty, `*`, or starting with `/` or `?`.
    text: &'a str,
}

impl<'a> OriginForm<'a> {
    fn new(text: &'a str) -> Self {
        OriginForm { text }
    }

    /// The target in two pieces sent one after the other: `/` or nothing, then the rest.
    pub fn pieces(&self) -> (&'static str, &'a str) {
        if self.text.starts_with('/') || self.text == "*" {
            ("", self.text)
        } else {
            ("/", self.text)
        }
    }
}

impl fmt::Display for OriginForm<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (slash, rest) = self.pieces();
        f.write_str(slash)?;
        f.write_str(rest)
    }
}

/// Parse a CONNECT request target: `host:port` or `[v6]:port`, port required.
pub fn parse_connect(authority: &str) -> Result<(Host, u16), TargetError> {
    if authority.contains('@') {
        return Err(TargetError::Userinfo);
    }
    let (host, port) = split_host_port(authority)?;
    let host = parse_host(host)?;
    match port {
        None | Some("") => Err(TargetError::MissingPort),
        Some(port) => Ok((host, parse_port(port)?)),
    }
}

/// Parse a `Host` header value (`host[:port]`); a missing port is `default_port`.
pub fn parse_host_header(value: &str, default_port: u16) -> Result<(Host, u16), TargetError> {
    if value.contains('@') {
        return Err(TargetError::Userinfo);
    }
    let (host, port) = split_host_port(value)?;
    let host = parse_host(host)?;
    let port = port.map(parse_port).transpose()?.unwrap_or(default_port);
    Ok((host, port))
}

/// `rest` is what follows the opening bracket of `s`.
fn parse_bracketed_v6(s: &str, rest: &str) -> Result<Host, TargetError> {
    let Some(inner) = rest.strip_suffix(']') else {
        return Err(invalid_host(s, "an IPv6 address must end with ']'"));
    };
    if inner.contains('%') {
        return Err(invalid_host(s, "IPv6 zone identifiers are not allowed"));
    }
    match inner.parse::<Ipv6Addr>() {
        Ok(v6) => Ok(Host::Ip(IpAddr::V6(v6))),
        Err(_) => Err(invalid_host(s, "not an IPv6 address inside '[' ']'")),
    }
}

/// Split `host[:port]`; the port text is returned unparsed (possibly empty).
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), TargetError> {
    if s.starts_with('[') {
        let Some(end) = s.find(']') else {
            return Err(invalid_host(s, "an IPv6 address must end with ']'"));
        };
        let (host, rest) = s.split_at(end + 1);
        if rest.is_empty() {
            return Ok((host, None));
        }
        return match rest.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None => Err(invalid_host(s, "unexpected text after ']'")),
        };
    }
    // Bytes, not `split_once`: a host and port are short, a `memchr` call costs more.
    let Some(colon) = s.bytes().position(|b| b == b':') else {
        return Ok((s, None));
    };
    // A `:` is ASCII: both sides are whole characters.
    let (host, port) = (&s[..colon], &s[colon + 1..]);
    if port.bytes().any(|b| b == b':') {
        return Err(invalid_host(
            s,
            "IPv6 addresses must be written in brackets, e.g. [::1]:443",
        ));
    }
    Ok((host, Some(port)))
}

fn parse_port(s: &str) -> Result<u16, TargetError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::InvalidPort(shown(s)));
    }
    // All digits; saturating keeps whatever is too long out of range.
    let port = s.bytes().fold(0u32, |n, d| {
        n.saturating_mul(10).saturating_add(u32::from(d - b'0'))
    });
    match u16::try_from(port) {
        Ok(0) | Err(_) => Err(TargetError::PortOutOfRange(shown(s))),
        Ok(port) => Ok(port),
    }
}

/// Why `c` cannot appear in a host name, or `None` when it can.
fn bad_char_reason(c: char) -> Option<&'static str> {
    match c {
        'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => None,
        '%' => Some("percent-encoding is not allowed"),
        ':' => Some("':' only belongs in an IPv6 address, written in brackets, e.g. [::1]"),
        '@' => Some("userinfo is not allowed"),
        '*' => Some("wildcards are not allowed here"),
        c if !c.is_ascii() => Some("non-ASCII names must be written in their xn-- (punycode) form"),
        _ => Some("only letters, digits, '-', '_' and '.' are allowed"),
    }
}

/// Whether the last label makes the name a number to an IPv4 parser
/// (WHATWG URL "ends in a number"; inet_aton reads `127.1` and `0x7f.1`).
fn is_number_label(label: &str) -> bool {
    let digits = |s: &str, radix| s.chars().all(|c| c.is_digit(radix));
    match label.strip_prefix("0x") {
        Some(hex) => digits(hex, 16),
        None => !label.is_empty() && digits(label, 10),
    }
}

fn invalid_host(s: &str, reason: &'static str) -> TargetError {
    TargetError::InvalidHost {
        host: shown(s),
        reason,
    }
}

/// `s` quoted and escaped, cut short so an error message stays one short line.
fn shown(s: &str) -> String {
    let mut cut: String = s.chars().take(MAX_SHOWN).collect();
    if cut.len() < s.len() {
        cut.push_str("...");
    }
    format!("\"{}\"", cut.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Host {
        Host::Name(s.to_string())
    }

    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    fn is_invalid_host(r: &Result<Host, TargetError>) -> bool {
        matches!(r, Err(TargetError::InvalidHost { .. }))
    }

    #[test]
    fn parse_host_accepts_and_normalises() {
        let long_label = "a".repeat(63);
        let long_name = format!("{0}.{0}.{0}.{1}", long_label, "b".repeat(61));
        assert_eq!(long_name.len(), 253);
        let long_name_dot = format!("{long_name}.");
        let cases: &[(&str, Host)] = &[
            ("example.com", name("example.com")),
            ("EXAMPLE.com", name("example.com")),
            ("Allowed.Example.", name("allowed.example")),
            ("localhost", name("localhost")),
            ("a", name("a")),
            ("a-b_c.example", name("a-b_c.example")),
            ("xn--bcher-kva.example", name("xn--bcher-kva.example")),
            ("123.example.com", name("123.example.com")),
            ("0x7f.example.com", name("0x7f.example.com")),
            ("1.2.3.4.example", name("1.2.3.4.example")),
            ("example.0xz", name("example.0xz")),
            ("cafe.deadbeef", name("cafe.deadbeef")),
            (&long_name, name(&long_name)),
            (&long_name_dot, name(&long_name)),
            ("127.0.0.1", ip("127.0.0.1")),
            ("127.0.0.1.", ip("127.0.0.1")),
            ("8.8.8.8", ip("8.8.8.8")),
            ("0.0.0.0", ip("0.0.0.0")),
            ("255.255.255.255", ip("255.255.255.255")),
            ("[::1]", ip("::1")),
            ("[2606:4700::1]", ip("2606:4700::1")),
            ("[2606:4700:0:0:0:0:0:1]", ip("2606:4700::1")),
            ("[::FFFF:127.0.0.1]", ip("::ffff:127.0.0.1")),
        ];
        for (input, want) in cases {
            assert_eq!(parse_host(input).as_ref(), Ok(want), "{input}");
        }
    }

    /// A `Host` header inside a tunnel: case and a default port do not matter; anything that
    /// is not one host and port is refused.
    #[test]
    fn host_headers() {
        let ok: &[(&str, u16, (Host, u16))] = &[
            ("api.example.com", 443, (name("api.example.com"), 443)),
            ("API.Example.COM:443", 443, (name("api.example.com"), 443)),
            ("api.example.com:8443", 443, (name("api.example.com"), 8443)),
            ("api.example.com", 80, (name("api.example.com"), 80)),
            ("[::1]:8443", 443, (ip("::1"), 8443)),
            ("127.0.0.1", 443, (ip("127.0.0.1"), 443)),
        ];
        for (value, default, want) in ok {
            assert_eq!(
                parse_host_header(value, *default).as_ref(),
                Ok(want),
                "{value}"
            );
        }
        for bad in [
            "",
            "a@b.example",
            "b.example:0",
            "b.example:x",
            "b.example:99999",
            "::1",
            "*.a",
        ] {
            assert!(parse_host_header(bad, 443).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parse_host_rejects() {
        let long_label = format!("{}.example", "a".repeat(64));
        let long_name = format!("{}.{}b", "a".repeat(63), "b.".repeat(95));
        assert_eq!(long_name.len(), 255);
        let cases: &[&str] = &[
            "",
            ".",
            "..",
            "a..b",
            ".example.com",
            "example.com..",
            &long_label,
            &long_name,
            // Not a name.
            "a b",
            "a\tb",
            "a/b",
            "a\\b",
            "a;b",
            "a?b",
            "a#b",
            "a,b",
            "a\0b",
            "a%2eb",
            "%65xample.com",
            "allowed.example@evil.example",
            "*.example.com",
            "b\u{fc}cher.example",
            "\u{ff45}xample.com",
            "example.com\u{3002}",
            // Numbers an IPv4 parser would accept.
            "2130706433",
            "0x7f000001",
            "0x7f.1",
            "0X7F.1",
            "0177.0.0.1",
            "127.000.000.001",
            "127.1",
            "127.0.1",
            "1.2.3.4.5",
            "256.0.0.1",
            "01.2.3.4",
            "example.123",
            "example.0x",
            "example.0xff",
            "127.0.0.1..",
            // IPv6 outside brackets, broken brackets, zones.
            "::1",
            "fe80::1",
            "[::1",
            "::1]",
            "[]",
            "[127.0.0.1]",
            "[example.com]",
            "[fe80::1%25eth0]",
            "[fe80::1%eth0]",
            "[::1]x",
            "[[::1]]",
        ];
        for input in cases {
            let got = parse_host(input);
            assert!(is_invalid_host(&got), "{input:?} gave {got:?}");
        }
    }

    /// The one-pass reading of common hosts and the full parse agree on every generated host:
    /// the same host, or the full parse's refusal.
    #[test]
    fn plain_hosts_parse_as_the_full_parse_does() {
        const ALPHABET: &[u8] = b"a0129.xZ-_:%";
        let mut text = String::new();
        for len in 0..=6u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                text.clear();
                for _ in 0..len {
                    text.push(char::from(ALPHABET[n % ALPHABET.len()]));
                    n /= ALPHABET.len();
                }
                assert_eq!(parse_host(&text), parse_host_checked(&text), "{text:?}");
            }
        }
        let label = "a".repeat(MAX_LABEL);
        let long = [
            format!("{label}.{label}.{label}.{}", "b".repeat(61)),
            format!("{label}.{label}.{label}.{}", "b".repeat(62)),
            format!("{label}.{label}.{label}.{}.", "b".repeat(61)),
            format!("{label}a.b"),
            format!("b.{label}"),
            format!("b.{label}a"),
        ];
        for text in &long {
            assert_eq!(parse_host(text), parse_host_checked(text), "{text:?}");
        }
    }

    /// Every spelling of four octets of up to four digits each, with dots in the wrong places
    /// too, reads as `Ipv4Addr::from_str` reads it; so do other bytes.
    #[test]
    fn dotted_quads_read_as_std_reads_them() {
        let octets = [
            "0", "1", "9", "00", "01", "10", "99", "000", "001", "010", "100", "199", "255", "256",
            "300", "999", "0255", "1000", "",
        ];
        for a in octets {
            for b in octets {
                for c in ["0", "07", "255", "256", ""] {
                    for d in ["1", "01", "255", "256", "", "1.", "1.1"] {
                        let text = format!("{a}.{b}.{c}.{d}");
                        let std = text.parse::<Ipv4Addr>().ok();
                        assert_eq!(dotted_quad(text.as_bytes()), std, "{text:?}");
                    }
                }
            }
        }
        for text in [
            "",
            "1",
            "1.2",
            "1.2.3",
            "1..2.3",
            ".1.2.3",
            "1.2.3.4.5",
            "1.2.3.a",
            "1.2.3.4a",
            "a.2.3.4",
            "1.2.3.+4",
            "1.2.3./",
            "1.2.3.:",
            " 1.2.3.4",
        ] {
            assert_eq!(dotted_quad(text.as_bytes()), None, "{text:?}");
            assert!(text.parse::<Ipv4Addr>().is_err(), "{text:?}");
        }
    }

    #[test]
    fn host_display() {
        let cases: &[(Host, &str)] = &[
            (name("example.com"), "example.com"),
            (ip("127.0.0.1"), "127.0.0.1"),
            (ip("::1"), "[::1]"),
            (ip("::ffff:127.0.0.1"), "[::ffff:127.0.0.1]"),
        ];
        for (host, want) in cases {
            assert_eq!(host.to_string(), *want);
            assert_eq!(host.text().as_str(), *want);
            assert_eq!(parse_host(want).as_ref(), Ok(host), "{want} round-trips");
        }
    }

    #[test]
    fn target_authority() {
        let cases: &[(Host, u16, &str)] = &[
            (name("example.com"), 443, "example.com:443"),
            (ip("10.0.0.1"), 80, "10.0.0.1:80"),
            (ip("::1"), 8080, "[::1]:8080"),
        ];
        for (host, port, want) in cases {
            let target = Target {
                host: host.clone(),
                port: *port,
                tls: false,
            };
            assert_eq!(target.authority(), *want);
        }
    }

    #[test]
    fn parse_absolute_cases() {
        use Scheme::{Http, Https};
        let ok = |scheme, host, port| Ok(RequestTarget { scheme, host, port });
        let cases: Vec<(&str, Result<RequestTarget, TargetError>)> = vec![
            ("http://example.com/", ok(Http, name("example.com"), None)),
            ("http://example.com", ok(Http, name("example.com"), None)),
            ("https://x", ok(Https, name("x"), None)),
            ("HTTPS://X/", ok(Https, name("x"), None)),
            ("Http://x/", ok(Http, name("x"), None)),
            (
                "http://ALLOWED.example./x",
                ok(Http, name("allowed.example"), None),
            ),
            (
                "http://a.example:8080/p?q=1",
                ok(Http, name("a.example"), Some(8080)),
            ),
            (
                "http://a.example:0080/",
                ok(Http, name("a.example"), Some(80)),
            ),
            (
                "http://a.example:65535/",
                ok(Http, name("a.example"), Some(65535)),
            ),
            ("http://a.example:1/", ok(Http, name("a.example"), Some(1))),
            ("http://[::1]:8080/", ok(Http, ip("::1"), Some(8080))),
            (
                "https://[2606:4700::1]/",
                ok(Https, ip("2606:4700::1"), None),
            ),
            (
                "http://127.0.0.1:3000/",
                ok(Http, ip("127.0.0.1"), Some(3000)),
            ),
            ("http://127.0.0.1./", ok(Http, ip("127.0.0.1"), None)),
            // Not absolute.
            ("/path", Err(TargetError::NotAbsolute)),
            ("*", Err(TargetError::NotAbsolute)),
            ("example.com:443", Err(TargetError::NotAbsolute)),
            // Scheme.
            (
                "ftp://x/",
                Err(TargetError::UnsupportedScheme("\"ftp\"".into())),
            ),
            (
                "ws://x/",
                Err(TargetError::UnsupportedScheme("\"ws\"".into())),
            ),
            // Userinfo.
            (
                "http://allowed.example@evil.example/",
                Err(TargetError::Userinfo),
            ),
            (
                "http://user:pw@allowed.example/",
                Err(TargetError::Userinfo),
            ),
            ("http://@allowed.example/", Err(TargetError::Userinfo)),
            ("https://a@[::1]:443/", Err(TargetError::Userinfo)),
            // Ports.
            (
                "http://a.example:99999/",
                Err(TargetError::PortOutOfRange("\"99999\"".into())),
            ),
            (
                "http://a.example:65536/",
                Err(TargetError::PortOutOfRange("\"65536\"".into())),
            ),
            (
                "http://a.example:0/",
                Err(TargetError::PortOutOfRange("\"0\"".into())),
            ),
            (
                "http://a.example:4294967377/",
                Err(TargetError::PortOutOfRange("\"4294967377\"".into())),
            ),
            (
                "http://a.example:/",
                Err(TargetError::InvalidPort("\"\"".into())),
            ),
            (
                "http://a.example:+80/",
                Err(TargetError::InvalidPort("\"+80\"".into())),
            ),
            (
                "http://[::1]:/",
                Err(TargetError::InvalidPort("\"\"".into())),
            ),
        ];
        for (input, want) in cases {
            let got = parse_absolute(input).map(|a| a.target);
            assert_eq!(got, want, "{input}");
            assert_eq!(reference::parse(input).map(|(t, _)| t), want, "{input}");
        }
    }

    #[test]
    fn parse_absolute_rejects_hosts() {
        let cases = [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://127.0.0.1../",
            "http://[fe80::1%25eth0]/",
            "http://[::1]x/",
            "http://a;b/",
            "http://:80/",
            "http://a..b/",
            "http://[127.0.0.1]/",
        ];
        for input in cases {
            let got = parse_absolute(input);
            let theirs = reference::parse(input);
            assert_eq!(got.as_ref().err(), theirs.as_ref().err(), "{input}");
            assert!(
                matches!(got, Err(TargetError::InvalidHost { .. })),
                "{input} gave {got:?}"
            );
        }
    }

    #[test]
    fn origin_form_cases() {
        let cases: &[(&str, &str)] = &[
            ("http://h", "/"),
            ("http://h/", "/"),
            ("http://h:8080", "/"),
            ("http://h/p/q.html", "/p/q.html"),
            ("http://h/p?q=1&r", "/p?q=1&r"),
            ("http://h?q", "/?q"),
            ("http://h?", "/?"),
            ("http://h?a?b", "/?a?b"),
            ("https://h/%2e%2e/x", "/%2e%2e/x"),
            ("http://h/..", "/.."),
            // Fragments never leave; a fragment alone leaves `/`, not an empty target.
            ("http://h#frag", "/"),
            ("http://h#", "/"),
            ("http://h:80#x", "/"),
            ("http://h/#", "/"),
            ("http://h?q#f", "/?q"),
            ("http://h?#", "/?"),
            ("http://h/p?q#f", "/p?q"),
            ("http://h/a#b?c", "/a"),
            ("http://[::1]:80#f", "/"),
        ];
        for &(input, want) in cases {
            let got = parse_absolute(input).map(|a| a.origin_form.to_string());
            assert_eq!(got.as_deref(), Ok(want), "{input}");
            assert_eq!(reference::parse(input).map(|(_, o)| o).as_deref(), Ok(want));
        }
    }

    #[test]
    fn origin_form_targets() {
        let cases: &[(&str, Result<&str, TargetError>)] = &[
            ("/", Ok("/")),
            ("*", Ok("*")),
            ("/p?q", Ok("/p?q")),
            ("/p?q#f", Ok("/p?q")),
            ("/p#f?q", Ok("/p")),
            ("/a<b", Err(TargetError::InvalidUri)),
            ("/?`", Ok("/?`")),
            ("/`", Err(TargetError::InvalidUri)),
            ("//h/p", Ok("//h/p")),
            ("http://h/", Err(TargetError::InvalidUri)),
            ("h:80", Err(TargetError::InvalidUri)),
        ];
        for (input, want) in cases {
            let got = parse_origin_form(input).map(|o| o.to_string());
            assert_eq!(got.as_deref(), want.as_ref().map(|s| *s), "{input}");
        }
    }

    /// Refusals that happen before any host is looked at: what `http::Uri` refuses, and what
    /// it reads as something other than an absolute URI.
    #[test]
    fn parse_absolute_refuses_what_is_not_a_uri() {
        let cases: &[(&str, TargetError)] = &[
            ("http://", TargetError::InvalidUri),
            ("http:///p", TargetError::InvalidUri),
            ("http://h h/", TargetError::InvalidUri),
            ("http://h/a b", TargetError::InvalidUri),
            ("http://h/<", TargetError::InvalidUri),
            ("http://a:b:c/", TargetError::InvalidUri),
            ("http://h%41/", TargetError::InvalidUri),
            ("http://[::1/", TargetError::InvalidUri),
            ("http://a@/", TargetError::InvalidUri),
            ("http://\u{e9}/", TargetError::InvalidUri),
            ("http:/h", TargetError::InvalidUri),
            ("", TargetError::InvalidUri),
            ("/p", TargetError::NotAbsolute),
            ("*", TargetError::NotAbsolute),
            ("h:80", TargetError::NotAbsolute),
            ("://h/", TargetError::UnsupportedScheme("\"\"".into())),
            (
                "HTTPX://h/",
                TargetError::UnsupportedScheme("\"HTTPX\"".into()),
            ),
            ("http://a%40b@h/", TargetError::Userinfo),
        ];
        for (input, want) in cases {
            assert_eq!(parse_absolute(input).as_ref(), Err(want), "{input}");
            assert_eq!(reference::parse(input).as_ref(), Err(want), "{input}");
        }
    }

    /// The new parse and the `http::Uri` one it replaced agree on every generated target:
    /// the same destination or the same error, and the same origin-form.
    #[test]
    fn parse_absolute_agrees_with_the_uri_parse() {
        const ALPHABET: &[u8] = b"aA1.:/?#@[]%+0";
        let prefixes = [
            "http://",
            "HTTPS://",
            "http://a",
            "http://1.2.3.4",
            "http://[::1]",
            "ftp://",
            "",
            "/",
        ];
        uri::each_generated(&prefixes, ALPHABET, |text| {
            let ours = parse_absolute(text).map(|a| (a.target, a.origin_form.to_string()));
            assert_eq!(ours, reference::parse(text), "{text:?}");
        });
    }

    /// The one-pass reading of common targets and the full parse agree on every generated
    /// target: the same target, origin-form and `Host` value, or the full parse's answer.
    #[test]
    fn common_absolute_parses_as_the_full_parse_does() {
        const ALPHABET: &[u8] = b"a1.:/?#0Z-@%";
        let prefixes = [
            "http://",
            "https://",
            "HTTP://",
            "http://a",
            "http://1.2.3",
            "http://1.2.3.4",
            "http://a.b:",
            "http://1.2.3.4:",
            "http://a:65",
            "http://a/",
        ];
        let mut common = 0;
        uri::each_generated(&prefixes, ALPHABET, |text| {
            let full = parse_absolute_checked(text);
            if let Some(fast) = common_absolute(text) {
                common += 1;
                assert_eq!(Ok(&fast), full.as_ref(), "{text:?}");
            }
            assert_eq!(parse_absolute(text), full, "{text:?}");
        });
        assert!(common > 1_000, "{common}");
        // Every port, spelled plainly, with leading zeros and too long.
        for n in 0..=70_000u32 {
            for text in [
                format!("http://h.example:{n}/p"),
                format!("https://1.2.3.4:0{n}"),
                format!("http://h:{n}0?q"),
            ] {
                assert_eq!(
                    parse_absolute(&text),
                    parse_absolute_checked(&text),
                    "{text:?}"
                );
            }
        }
        // At the length limits of a label, a name and a URI.
        let label = "a".repeat(MAX_LABEL);
        let path = "/".repeat(uri::MAX_LEN);
        let long = [
            format!("http://{label}.{label}.{label}.{}/", "b".repeat(61)),
            format!("http://{label}.{label}.{label}.{}/", "b".repeat(62)),
            format!("http://{label}a.b/"),
            format!("http://b.{label}:8080/"),
            format!("http://h{}", &path[..uri::MAX_LEN - 8]),
            format!("http://h{}", &path[..uri::MAX_LEN - 7]),
        ];
        for text in &long {
            assert_eq!(
                parse_absolute(text),
                parse_absolute_checked(text),
                "{text:?}"
            );
        }
    }

    /// The parse this module did through `http::Uri` before it read the text itself: the
    /// reference the tests hold the new one to.
    mod reference {
        use super::super::*;

        /// The destination and the origin-form as `Outgoing::write_head` wrote it.
        pub fn parse(text: &str) -> Result<(RequestTarget, String), TargetError> {
            let uri: http::Uri = text.parse().map_err(|_| TargetError::InvalidUri)?;
            let target = parse_absolute(&uri)?;
            let form = origin_form(&uri);
            let rendered = match form.query() {
                Some(q) => format!("{}?{q}", form.path()),
                None => form.path().to_string(),
            };
            Ok((target, rendered))
        }

        fn parse_absolute(uri: &http::Uri) -> Result<RequestTarget, TargetError> {
            let scheme = match uri.scheme_str() {
                None => return Err(TargetError::NotAbsolute),
                Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
                Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
                Some(other) => return Err(TargetError::UnsupportedScheme(shown(other))),
            };
            let authority = uri.authority().ok_or(TargetError::NotAbsolute)?.as_str();
            if authority.contains('@') {
                return Err(TargetError::Userinfo);
            }
            let (host, port) = split_host_port(authority)?;
            let host = parse_host(host)?;
            let port = port.map(parse_port).transpose()?;
            Ok(RequestTarget { scheme, host, port })
        }

        fn origin_form(uri: &http::Uri) -> http::Uri {
            match uri.path_and_query() {
                Some(pq) => {
                    let form = http::Uri::from(pq.clone());
                    if form.path().starts_with('/') {
                        form
                    } else {
                        http::Uri::from_static("/")
                    }
                }
                None => http::Uri::from_static("/"),
            }
        }
    }

    type ConnectResult = Result<(Host, u16), TargetError>;

    #[test]
    fn parse_connect_cases() {
        let ok = |host, port| Ok((host, port));
        let cases: Vec<(&str, ConnectResult)> = vec![
            ("example.com:443", ok(name("example.com"), 443)),
            ("EXAMPLE.com.:443", ok(name("example.com"), 443)),
            ("127.0.0.1:8443", ok(ip("127.0.0.1"), 8443)),
            ("[::1]:443", ok(ip("::1"), 443)),
            ("[2606:4700::1]:65535", ok(ip("2606:4700::1"), 65535)),
            ("a:1", ok(name("a"), 1)),
            ("example.com", Err(TargetError::MissingPort)),
            ("example.com:", Err(TargetError::MissingPort)),
            ("[::1]", Err(TargetError::MissingPort)),
            ("[::1]:", Err(TargetError::MissingPort)),
            (
                "example.com:0",
                Err(TargetError::PortOutOfRange("\"0\"".into())),
            ),
            (
                "example.com:65536",
                Err(TargetError::PortOutOfRange("\"65536\"".into())),
            ),
            (
                "example.com:https",
                Err(TargetError::InvalidPort("\"https\"".into())),
            ),
            (
                "example.com:-1",
                Err(TargetError::InvalidPort("\"-1\"".into())),
            ),
            (
                "example.com: 443",
                Err(TargetError::InvalidPort("\" 443\"".into())),
            ),
            (
                "allowed.example@evil.example:443",
                Err(TargetError::Userinfo),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse_connect(input), want, "{input}");
        }
    }

    #[test]
    fn parse_connect_rejects_hosts() {
        let cases = [
            "",
            ":443",
            "::1:443",
            "fe80::1:443",
            "[fe80::1%25eth0]:443",
            "[fe80::1%eth0]:443",
            "[::1:443",
            "[::1]x:443",
            "2130706433:443",
            "0x7f.1:443",
            "127.1:443",
            "a b:443",
            "http://example.com:443",
            "example.com/x:443",
            "b\u{fc}cher.example:443",
        ];
        for input in cases {
            let got = parse_connect(input);
            assert!(
                matches!(got, Err(TargetError::InvalidHost { .. })),
                "{input:?} gave {got:?}"
            );
        }
    }

    #[test]
    fn messages_are_one_short_line() {
        let long = format!("{}\n{}", "x".repeat(500), "\u{1b}[31m");
        let errors = [
            parse_host(&long).err(),
            parse_connect(&format!("a:{long}")).err(),
            parse_connect(&format!("a:{}", "9".repeat(500))).err(),
            parse_host("0x7f.1").err(),
        ];
        for error in errors {
            let text = error.map(|e| e.to_string()).unwrap_or_default();
            assert!(!text.is_empty());
            assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text}");
            assert!(text.len() < 200, "{text}");
        }
        assert_eq!(
            parse_host("0x7f.1").map_err(|e| e.to_string()),
            Err("invalid host name: \"0x7f.1\" (a resolver could read it as an IPv4 address; write IPv4 as a.b.c.d)".to_string())
        );
    }
}
