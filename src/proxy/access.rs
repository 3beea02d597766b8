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
}
