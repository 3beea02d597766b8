//! Serialising what the proxy sends to its clients: response heads, chunks, and its own small error responses.

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, StatusCode, Version};

use super::is_tchar;

/// The last chunk and empty trailer section that end a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The interim response sent to a client that asked for `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Serialise a response head into `out` (HTTP/1.1 or 1.0 status line matching the client's version, headers in order, CRLF).
///
/// `version` is the client's: `HTTP_10` writes `HTTP/1.0`, anything else
/// `HTTP/1.1`. Headers are written in the map's iteration order with their
/// (lowercase) names; `HeaderValue`s cannot hold CR or LF, so nothing here
/// can split the response. Reserves the exact size first: at most one
/// allocation, none when `out` has room.
pub fn encode_response_head(
    out: &mut BytesMut,
    version: Version,
    status: StatusCode,
    headers: &HeaderMap,
) {
    let fields: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    out.reserve(status_line_len(status) + fields + 2);
    put_status_line(out, version, status);
    for (name, value) in headers {
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.put_slice(b"\r\n");
}

/// Appends one chunk of a chunked body: `"<hex>\r\n<data>\r\n"`.
///
/// Empty `data` writes nothing: an empty chunk would be read as the last one.
pub fn encode_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.reserve(data.len() + 20);
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = data.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// A complete small response (status, our headers, text/plain one-line body, Content-Length) for errors the proxy itself answers.
///
/// `extra_headers` come first (e.g. `Proxy-Status`, `Proxy-Authenticate`);
/// a pair whose name is not a token or whose value holds a control
/// character is skipped rather than allowed to split the response. A
/// newline is appended to `body` if it lacks one. With `close`,
/// `Connection: close` is sent; otherwise an HTTP/1.0 client is told
/// `Connection: keep-alive`.
pub fn encode_simple_response(
    out: &mut BytesMut,
    version: Version,
    status: StatusCode,
    extra_headers: &[(&str, &str)],
    body: &str,
    close: bool,
) {
    let newline = !body.ends_with('\n');
    let body_len = body.len() + usize::from(newline);
    let fields: usize = extra_headers
        .iter()
        .map(|(n, v)| n.len() + v.len() + 4)
        .sum();
    out.reserve(status_line_len(status) + fields + 128 + body_len);
    put_status_line(out, version, status);
    for (name, value) in extra_headers {
        if is_safe_field(name.as_bytes(), value.as_bytes()) {
            put_field(out, name.as_bytes(), value.as_bytes());
        }
    }
    put_field(out, b"content-type", b"text/plain; charset=utf-8");
    out.put_slice(b"content-length: ");
    put_decimal(out, body_len as u64);
    out.put_slice(b"\r\n");
    if close {
        put_field(out, b"connection", b"close");
    } else if version == Version::HTTP_10 {
        put_field(out, b"connection", b"keep-alive");
    }
    out.put_slice(b"\r\n");
    out.put_slice(body.as_bytes());
    if newline {
        out.put_u8(b'\n');
    }
}

fn status_line_len(status: StatusCode) -> usize {
    // "HTTP/1.1 200 " + reason + CRLF
    13 + status.canonical_reason().map_or(0, str::len) + 2
}

/// The status line of a head written field by field ([`put_field`], then a CRLF).
pub fn put_status_line(out: &mut BytesMut, version: Version, status: StatusCode) {
    out.put_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
}

/// One header line. `name` and `value` must be a valid field (as parsed): nothing here
/// checks for CR or LF.
pub fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

fn is_safe_field(name: &[u8], value: &[u8]) -> bool {
    !name.is_empty()
        && name.iter().all(|&b| is_tchar(b))
        && value
            .iter()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderValue, CONTENT_LENGTH, VIA};

    #[test]
    fn response_head_matches_client_version() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("2"));
        headers.insert(VIA, HeaderValue::from_static("1.1 portcullis"));
        let cases: &[(Version, StatusCode, &[u8])] = &[
            (
                Version::HTTP_11,
                StatusCode::OK,
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nvia: 1.1 portcullis\r\n\r\n",
            ),
            (
                Version::HTTP_10,
                StatusCode::OK,
                b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\nvia: 1.1 portcullis\r\n\r\n",
            ),
            (
                Version::HTTP_11,
                StatusCode::from_u16(599).unwrap(),
                b"HTTP/1.1 599 \r\ncontent-length: 2\r\nvia: 1.1 portcullis\r\n\r\n",
            ),
        ];
        for (version, status, want) in cases {
            let mut out = BytesMut::new();
            encode_response_head(&mut out, *version, *status, &headers);
            assert_eq!(&out[..], *want, "{version:?} {status}");
        }
    }

    #[test]
    fn response_head_with_no_headers() {
        let mut out = BytesMut::new();
        encode_response_head(
            &mut out,
            Version::HTTP_11,
            StatusCode::OK,
            &HeaderMap::new(),
        );
        assert_eq!(&out[..], b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[test]
    fn chunks_are_hex_framed() {
        let cases: &[(usize, &[u8])] = &[
            (1, b"1\r\n"),
            (10, b"a\r\n"),
            (16, b"10\r\n"),
            (255, b"ff\r\n"),
            (4096, b"1000\r\n"),
        ];
        for (len, prefix) in cases {
            let data = vec![b'x'; *len];
            let mut out = BytesMut::new();
            encode_chunk(&mut out, &data);
            assert!(out.starts_with(prefix), "{len}");
            assert_eq!(out.len(), prefix.len() + len + 2);
            assert!(out.ends_with(b"x\r\n"));
        }
        let mut out = BytesMut::new();
        encode_chunk(&mut out, b"");
        assert!(out.is_empty(), "an empty chunk would end the body");
    }

    #[test]
    fn simple_responses() {
        const PS: &[(&str, &str)] = &[("Proxy-Status", "portcullis; error=http_request_error")];
        // (version, status, extra headers, body, close, expected bytes)
        type Case = (
            Version,
            StatusCode,
            &'static [(&'static str, &'static str)],
            &'static str,
            bool,
            &'static str,
        );
        let cases: &[Case] = &[
            (
                Version::HTTP_11,
                StatusCode::BAD_REQUEST,
                PS,
                "bare LF in request head",
                true,
                "HTTP/1.1 400 Bad Request\r\nProxy-Status: portcullis; error=http_request_error\r\n\
                 content-type: text/plain; charset=utf-8\r\ncontent-length: 24\r\nconnection: close\r\n\r\n\
                 bare LF in request head\n",
            ),
            (
                Version::HTTP_10,
                StatusCode::FORBIDDEN,
                &[],
                "denied\n",
                false,
                "HTTP/1.0 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 7\r\n\
                 connection: keep-alive\r\n\r\ndenied\n",
            ),
            (
                Version::HTTP_11,
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                &[("Proxy-Authenticate", "Basic realm=\"portcullis\""), ("X-Bad", "a\r\nSet-Cookie: x"), ("Bad Name", "v")],
                "",
                false,
                "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"portcullis\"\r\n\
                 content-type: text/plain; charset=utf-8\r\ncontent-length: 1\r\n\r\n\n",
            ),
        ];
        for (version, status, extra, body, close, want) in cases {
            let mut out = BytesMut::new();
            encode_simple_response(&mut out, *version, *status, extra, body, *close);
            assert_eq!(std::str::from_utf8(&out).unwrap(), *want);
        }
    }

    #[test]
    fn decimal_lengths() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            let mut out = BytesMut::new();
            put_decimal(&mut out, n);
            assert_eq!(&out[..], n.to_string().as_bytes());
        }
    }
}
