//! The access log: one line per request or tunnel, with the upstream connection's lineage.
//!
//! Never logs a header value other than Host, a body, or a query string.

mod cursor;
mod line;

use std::cell::RefCell;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

pub use line::Format;

use crate::log_writer::BatchedWriter;

/// Where access lines go once the binary has set up logging; until then (tests, library use)
/// they are ordinary tracing events.
static SINK: OnceLock<(Format, BatchedWriter)> = OnceLock::new();

/// Write access lines directly in `format` to `writer` (the one tracing-subscriber writes to).
/// `RUST_LOG` still decides whether they are written (target `access`, level INFO).
pub fn install(format: Format, writer: BatchedWriter) {
    let _ = SINK.set((format, writer));
}

/// Which upstream connection served a request, as seen at checkout.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lineage {
    pub conn_id: u64,
    pub reused: bool,
    pub age: Duration,
    pub idle: Duration,
}

/// Everything one access-log line says.
#[derive(Debug)]
pub struct Record<'a> {
    pub client: SocketAddr,
    pub client_name: Option<&'a str>,
    pub upstream: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub port: u16,
    /// Path only: the query string is cut off before it gets here.
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub lineage: Option<Lineage>,
    pub attempts: u8,
    /// `forward`, `tunnel` or `intercept`.
    pub mode: &'a str,
    /// The Proxy-Status error token when the proxy answered itself.
    pub error: Option<&'static str>,
}

/// The path of a request target without its query string (which may carry secrets).
pub fn path_only(target: &str) -> &str {
    // Byte searches (memchr) rather than `str::find` with a char set: this runs for every
    // line, and the generic char-set search cost ~290 instructions a request.
    let scheme = if target.starts_with("http://") {
        7
    } else if target.starts_with("https://") {
        8
    } else {
        0
    };
    let path_start = if scheme > 0 {
        match memchr::memchr2(b'/', b'?', &target.as_bytes()[scheme..]) {
            Some(i) => scheme + i,
            None => return "/",
        }
    } else {
        0
    };
    // Both ends are at ASCII bytes, so on char boundaries.
    let path = &target[path_start..];
    let end = memchr::memchr2(b'?', b'#', path.as_bytes()).unwrap_or(path.len());
    match &path[..end] {
        "" => "/",
        p => p,
    }
}

/// Emit the line (target `access`, so operators can route or silence it).
pub fn log(r: &Record<'_>) {
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    let Some((format, writer)) = SINK.get() else {
        // No sink (tests, library use): one tracing event carrying the same fields as text.
        let b = line::text_fields(r);
        tracing::info!(target: "access", "{}", String::from_utf8_lossy(b.trim_ascii_start()));
        return;
    };
    thread_local! {
        /// Room to write a line in, reused; its length is the room (see `line::write`).
        static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    LINE.with_borrow_mut(|b| {
        let line = line::write(b, *format, SystemTime::now(), r);
        let _ = writer.line_writer(false).write_all(line);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_never_reach_the_log() {
        let cases = [
            ("http://a.example/pay?card=4111", "/pay"),
            ("http://a.example?token=x", "/"),
            ("http://a.example", "/"),
            ("https://a.example:8443/v1/charges#frag", "/v1/charges"),
            ("/origin/form?x=1", "/origin/form"),
            ("a.example:443", "a.example:443"),
        ];
        for (t, want) in cases {
            assert_eq!(path_only(t), want, "{t}");
        }
    }

    /// The first implementation, by `str` methods: the byte searches must agree with it.
    fn path_only_by_str(target: &str) -> &str {
        let path_start = if let Some(rest) = target
            .strip_prefix("http://")
            .or_else(|| target.strip_prefix("https://"))
        {
            let offset = target.len() - rest.len();
            match rest.find(['/', '?']) {
                Some(i) => offset + i,
                None => return "/",
            }
        } else {
            0
        };
        let path = &target[path_start..];
        let end = path.find(['?', '#']).unwrap_or(path.len());
        match &path[..end] {
            "" => "/",
            p => p,
        }
    }

    #[test]
    fn byte_search_agrees_with_the_str_methods() {
        // Every string of up to five characters from an alphabet of the bytes that matter,
        // behind each prefix that matters (multi-byte characters included).
        let alphabet = ["/", "?", "#", "a", ":", "é"];
        let prefixes = ["", "http://", "https://", "http:/", "HTTP://", "/", "é"];
        let mut texts = vec![String::new()];
        for _ in 0..5 {
            let longer: Vec<String> = texts
                .iter()
                .flat_map(|t| alphabet.iter().map(move |a| format!("{t}{a}")))
                .collect();
            texts.extend(longer);
            texts.sort();
            texts.dedup();
        }
        for p in prefixes {
            for t in &texts {
                let target = format!("{p}{t}");
                assert_eq!(path_only(&target), path_only_by_str(&target), "{target:?}");
            }
        }
    }
}
