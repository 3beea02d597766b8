//! The fuzz checks: one function per target, feeding bytes to portcullis's public API and asserting invariants.
//!
//! Shared by the libFuzzer binaries in `fuzz_targets/` and, through
//! `#[path]`, by `tests/fuzz_regressions.rs`, so a saved crash replays in
//! `cargo test` through exactly the code that found it. It therefore uses
//! only what the main crate's tests also have: `portcullis`, `http`, `bytes`, `tokio`.
//! A check "fails" by panicking; an input that is merely invalid is fine.
#![forbid(unsafe_code)]

#[path = "round_trip.rs"]
mod round_trip;

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use portcullis::config::Config;
use portcullis::http1::{BodyState, ClientReader, HeadError, HEAD_READ, MAX_BODY_CHUNK};
use portcullis::pattern::HostPattern;
use portcullis::target::{parse_absolute, parse_connect, parse_host, Host, TargetError};
use tokio::io::{AsyncRead, ReadBuf};

/// A target's check: panics when an invariant breaks.
pub type Check = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` binary and its seed and regression folders.
pub const TARGETS: &[(&str, Check)] = &[
    ("target_parse", target_parse),
    ("host_match", host_match),
    ("config_load", config_load),
    ("http1_head", http1_head),
    ("request_target", request_target),
    ("response_head", response_head),
];

/// Longest DNS name without its trailing dot.
const MAX_NAME: usize = 253;

/// `target_parse`: the bytes as a host, a CONNECT authority and an absolute URI.
///
/// Whatever is accepted is canonical: names lowercase ASCII without a
/// trailing dot, at most 253 bytes; the `Display` form re-parses to the same
/// value; and the host we accept from a URI is the host `http` itself sees
/// in it (no split view a smuggled destination could hide in).
pub fn target_parse(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(host) = parse_host(s) {
            check_host(&host);
        }
        if let Ok((host, port)) = parse_connect(s) {
            check_host(&host);
            assert_ne!(port, 0, "parse_connect({s:?}) accepted port 0");
            let shown = format!("{host}:{port}");
            assert_eq!(
                parse_connect(&shown),
                Ok((host, port)),
                "parse_connect({s:?}) does not survive its Display {shown:?}"
            );
        }
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // The target is read from its text, not through `http::Uri`: what that refuses must be
    // refused, and the rest read as it reads it.
    let uri = http::Uri::try_from(s);
    let absolute = parse_absolute(s);
    assert_eq!(
        uri.is_err(),
        absolute == Err(TargetError::InvalidUri),
        "parse_absolute({s:?}) and http::Uri disagree on whether it is a URI: {absolute:?}"
    );
    let (Ok(uri), Ok(absolute)) = (uri, absolute) else {
        return;
    };
    let target = absolute.target;
    check_host(&target.host);
    assert_ne!(
        target.port,
        Some(0),
        "parse_absolute({uri}) accepted port 0"
    );
    // What `http` reads as the host and port must be what we decided on.
    let theirs = uri.host().map(parse_host);
    assert_eq!(
        theirs,
        Some(Ok(target.host.clone())),
        "parse_absolute({uri}) and http::Uri::host disagree"
    );
    assert_eq!(
        uri.port_u16(),
        target.port,
        "parse_absolute({uri}) and http::Uri::port disagree"
    );
    assert_eq!(
        absolute.origin_form.to_string(),
        path_and_query(&uri),
        "parse_absolute({uri}) and http::Uri disagree on the path and query"
    );
    // The authority sent as written must be the Host value that would have been built.
    if let Some(text) = absolute.host_value {
        let built = portcullis::proxy::headers::host_value(&target.host, target.port);
        assert_eq!(
            built.as_ref().map(|v| v.as_bytes()),
            Some(text.as_bytes()),
            "parse_absolute({uri}): the authority as written is not the Host value"
        );
    }
}

/// The path and query `http` reads in `uri`, as an origin-form request line carries them.
fn path_and_query(uri: &http::Uri) -> String {
    match uri.query() {
        Some(q) => format!("{}?{q}", uri.path()),
        None => uri.path().to_string(),
    }
}

/// `host_match`: a pattern line, `\n`, a host line.
///
/// Exact patterns match exactly their own parse; `*.apex` patterns match
/// names with more labels ending in apex's labels, never apex itself; IP
/// patterns match only that address. Patterns survive their `Display`.
pub fn host_match(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern_text, host_text) = text.split_once('\n').unwrap_or((text, ""));
    let host = parse_host(host_text).ok();
    if let Some(host) = &host {
        // The host written as a pattern is an exact pattern for itself.
        let own = HostPattern::parse(host_text)
            .unwrap_or_else(|e| panic!("host {host_text:?} parses but not as a pattern: {e}"));
        assert!(
            own.matches(host),
            "{own:?} does not match its own host {host:?}"
        );
    }
    let Ok(pattern) = HostPattern::parse(pattern_text) else {
        return;
    };
    let shown = pattern.to_string();
    assert_eq!(
        HostPattern::parse(&shown).as_ref(),
        Ok(&pattern),
        "pattern {pattern_text:?} does not survive its Display {shown:?}"
    );
    let expected_for = |host: &Host| match (&pattern, host) {
        (HostPattern::Exact(name), _) => *host == Host::Name(name.clone()),
        (HostPattern::Suffix(suffix), Host::Name(name)) => {
            let apex: Vec<&str> = suffix.split('.').skip(1).collect();
            let labels: Vec<&str> = name.split('.').collect();
            labels.len() > apex.len() && labels.ends_with(&apex)
        }
        (HostPattern::Suffix(_), Host::Ip(_)) => false,
        (HostPattern::Ip(ip), _) => *host == Host::Ip(*ip),
    };
    match &pattern {
        HostPattern::Exact(name) => {
            let own = parse_host(name)
                .unwrap_or_else(|e| panic!("exact pattern {name:?} is no host: {e}"));
            assert_eq!(
                own,
                Host::Name(name.clone()),
                "exact pattern {name:?} is not canonical"
            );
            assert!(
                pattern.matches(&own),
                "{pattern:?} does not match its own parse"
            );
            check_host(&own);
        }
        HostPattern::Suffix(suffix) => {
            let apex = suffix
                .strip_prefix('.')
                .unwrap_or_else(|| panic!("suffix pattern {suffix:?} does not start with '.'"));
            let apex = parse_host(apex)
                .unwrap_or_else(|e| panic!("suffix pattern {suffix:?}: apex is no host: {e}"));
            assert!(!pattern.matches(&apex), "{pattern:?} matches its own apex");
            let below = parse_host(&format!("x{suffix}"));
            if let Ok(below) = below {
                assert!(
                    pattern.matches(&below),
                    "{pattern:?} does not match {below:?}"
                );
            }
        }
        HostPattern::Ip(ip) => {
            assert!(
                pattern.matches(&Host::Ip(*ip)),
                "{pattern:?} does not match its own address"
            );
            let mapped = match ip {
                IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => *ip,
                },
            };
            if mapped != *ip {
                assert!(
                    !pattern.matches(&Host::Ip(mapped)),
                    "{pattern:?} matches {mapped}"
                );
            }
        }
    }
    if let Some(host) = &host {
        assert_eq!(
            pattern.matches(host),
            expected_for(host),
            "{pattern:?} against {host:?}"
        );
        if let Host::Name(name) = host {
            let upper = Host::Name(name.to_ascii_uppercase());
            assert_eq!(
                pattern.matches(&upper),
                pattern.matches(host),
                "{pattern:?} depends on the case of {name:?}"
            );
        }
    }
}

/// `config_load`: any text as a config file.
///
/// Never panics; a config that loads prints (`portcullis check`) as TOML
/// that loads again to the same effective config and prints identically.
pub fn config_load(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text, "fuzz") else {
        return;
    };
    if let Err(e) = round_trip::config_round_trip(&config) {
        panic!("{e}\n--- input\n{text}");
    }
}

/// Head limits tried for every `http1_head` input: the default, and a small
/// one so that short inputs reach the 431 path.
const HEAD_LIMITS: [usize; 2] = [65_536, 200];

/// `http1_head`: bytes from a client, read as requests (heads and bodies) until an error or EOF.
///
/// Never panics; always terminates; a `read_head` call never buffers past
/// `max_header_bytes + HEAD_READ`, a `read_body_chunk` call never past
/// `MAX_BODY_CHUNK`; and the outcome is the same whether the bytes arrive at
/// once or in small pieces.
pub fn http1_head(data: &[u8]) {
    // A piece size that varies with the input, so both splits are exercised.
    let piece = 1 + data.len() % 13;
    for max in HEAD_LIMITS {
        let whole = runtime().block_on(transcript(data, usize::MAX, max));
        let split = runtime().block_on(transcript(data, piece, max));
        assert_eq!(
            whole, split,
            "the answer depends on reads of {piece} bytes (max {max})"
        );
    }
}

/// `request_target`: bytes from a client, read by the real codec as one request head (a
/// missing blank line is added, so a bare request line is enough). A forwarded request's
/// target goes through the step `proxy::forward` takes (`parse_absolute`), and the
/// request-target that would go upstream is checked.
///
/// It is origin-form: starts with `/`, has no fragment, only printable ASCII (no space, no
/// control byte); it is exactly the client's path and query (nothing lost but the
/// fragment); and a request line carrying it reads back through our own strict codec as
/// the same target. A malformed request line can therefore never leave the proxy.
pub fn request_target(data: &[u8]) {
    let mut input = data.to_vec();
    if memchr_crlf2(&input).is_none() {
        input.extend_from_slice(b"\r\n\r\n");
    }
    let Ok(head) = runtime().block_on(read_one_head(&input)) else {
        return;
    };
    if head.method == http::Method::CONNECT {
        return;
    }
    let Ok(absolute) = parse_absolute(&head.target) else {
        return;
    };
    let rendered = absolute.origin_form.to_string();
    assert!(
        rendered.starts_with('/'),
        "{:?} goes upstream as {rendered:?}",
        head.target
    );
    assert!(
        rendered
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'#'),
        "{:?} goes upstream as {rendered:?}",
        head.target
    );
    let uri = head
        .target
        .parse::<http::Uri>()
        .unwrap_or_else(|e| panic!("{:?} is not a URI to http: {e}", head.target));
    assert_eq!(
        rendered,
        path_and_query(&uri),
        "{:?}: the upstream target is not the client's path and query",
        head.target
    );
    let line = format!("{} {rendered} HTTP/1.1\r\nHost: h\r\n\r\n", head.method);
    let again = runtime()
        .block_on(read_one_head(line.as_bytes()))
        .unwrap_or_else(|e| panic!("{line:?}, as sent upstream, does not parse: {e}"));
    assert_eq!(again.target, rendered, "{line:?} reads back differently");
}

/// `response_head`: bytes from an upstream, parsed as a response head the way the upstream
/// codec does (`upstream::wire`), and framed for a GET and for a HEAD.
///
/// The relay writes the parsed fields on to the client as they are, so: every name is a
/// token and every value is free of CR, LF and NUL (no response splitting through the
/// proxy); a complete head leaves exactly the bytes after it; a partial one leaves the
/// buffer as it was. A HEAD's answer never has a body, and a length-framed body only comes
/// with a `Content-Length` field.
pub fn response_head(data: &[u8]) {
    use portcullis::upstream::wire::{parse_response_head, response_framing, RespBodyKind};
    let mut buf = bytes::BytesMut::from(data);
    let head = match parse_response_head(&mut buf) {
        Ok(Some(head)) => head,
        Ok(None) => {
            assert_eq!(&buf[..], data, "a partial head changed the buffer");
            return;
        }
        Err(_) => return,
    };
    assert!(
        data.ends_with(&buf),
        "the bytes after the head are not the input's tail"
    );
    for (name, value) in head.fields() {
        assert!(
            !name.is_empty()
                && name
                    .iter()
                    .all(|&b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)),
            "field name {name:?} is not a token"
        );
        assert!(
            !value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
            "field value {value:?} carries CR, LF or NUL"
        );
    }
    if let Ok(f) = response_framing(&http::Method::HEAD, &head) {
        assert_eq!(f.body, RespBodyKind::Empty, "a HEAD answer with a body");
    }
    if let Ok(f) = response_framing(&http::Method::GET, &head) {
        if let RespBodyKind::Length(_) = f.body {
            assert!(head.contains("content-length"), "a length from nowhere");
        }
    }
}

/// Where the first `\r\n\r\n` starts.
fn memchr_crlf2(data: &[u8]) -> Option<usize> {
    data.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The first request head of `data`, read by the proxy's codec with the default head limit.
async fn read_one_head(data: &[u8]) -> Result<portcullis::http1::RequestHead, HeadError> {
    let io = Pieces {
        data,
        pos: 0,
        piece: usize::MAX,
    };
    ClientReader::new(io, HEAD_LIMITS[0])
        .read_head()
        .await
        .map(|h| *h)
}

/// One current-thread runtime for the whole process: the inputs are in memory and always ready.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("building the tokio runtime: {e}"))
    })
}

/// What a connection yields for `data` handed out `piece` bytes per read.
async fn transcript(data: &[u8], piece: usize, max: usize) -> Vec<String> {
    let mut reader = ClientReader::new(
        Pieces {
            data,
            pos: 0,
            piece,
        },
        max,
    );
    let mut out = Vec::new();
    // Every accepted head consumes at least one byte, so this is never reached.
    for _ in 0..=data.len() {
        let (before, read_before) = (reader.buffered().len(), reader.get_ref().pos);
        let head = reader.read_head().await;
        let read = reader.get_ref().pos - read_before;
        // Nothing is consumed before the head is complete, so this is the peak.
        assert!(
            read == 0 || before + read <= max + HEAD_READ,
            "read_head buffered {} bytes (limit {max})",
            before + read
        );
        let head = match head {
            Ok(head) => head,
            Err(HeadError::Io(e)) => panic!("an in-memory read failed: {e}"),
            Err(e) => {
                out.push(format!("head error: {e}"));
                return out;
            }
        };
        out.push(format!(
            "{} {} {:?} {:?} keep-alive {} continue {} {:?}",
            head.method,
            head.target,
            head.version,
            head.framing,
            head.keep_alive,
            head.expect_continue,
            head.headers
        ));
        let mut state = BodyState::new(head.framing);
        let mut body = Vec::new();
        let end = loop {
            let before = reader.buffered().len();
            let chunk = reader.read_body_chunk(&mut state).await;
            // The piece handed out was buffered too, until it was split off.
            let piece = match &chunk {
                Ok(Some(piece)) => piece.len(),
                _ => 0,
            };
            let held = reader.buffered().len() + piece;
            assert!(
                held <= before.max(MAX_BODY_CHUNK),
                "read_body_chunk buffered {held} bytes"
            );
            match chunk {
                Ok(Some(chunk)) => {
                    assert!(
                        !chunk.is_empty() && chunk.len() <= MAX_BODY_CHUNK,
                        "body piece of {} bytes",
                        chunk.len()
                    );
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        out.push(format!("body {body:?}"));
        if let Some(e) = end {
            out.push(format!("body error: {e}"));
            return out;
        }
        assert!(state.is_done(), "body ended but its state is not done");
    }
    panic!(
        "more than {} requests from {} bytes",
        data.len() + 1,
        data.len()
    );
}

/// `data` handed out at most `piece` bytes per read, then EOF; `pos` counts what was read.
struct Pieces<'a> {
    data: &'a [u8],
    pos: usize,
    piece: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let rest = &this.data[this.pos..];
        let n = rest.len().min(this.piece).min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// A host `parse_host` or a target parser accepted is canonical and survives its `Display`.
fn check_host(host: &Host) {
    if let Host::Name(name) = host {
        assert!(!name.is_empty(), "empty name");
        assert!(name.len() <= MAX_NAME, "name of {} bytes", name.len());
        assert!(!name.ends_with('.'), "name {name:?} keeps a trailing dot");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)),
            "name {name:?} is not lowercase ASCII"
        );
        assert!(
            name.split('.').all(|l| (1..=63).contains(&l.len())),
            "name {name:?} has an empty or over-long label"
        );
        assert!(
            name.parse::<IpAddr>().is_err(),
            "name {name:?} is an IP address"
        );
    }
    let shown = host.to_string();
    assert_eq!(
        parse_host(&shown).as_ref(),
        Ok(host),
        "{host:?} does not survive its Display {shown:?}"
    );
}
