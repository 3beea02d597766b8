//! The bytes of an upstream exchange: chunks of a request body framed, response heads parsed, and how a response's body is framed (RFC 9112 §6.3). Pure functions, no I/O.

use std::mem::MaybeUninit;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use smallvec::SmallVec;

/// Most header fields accepted in one response head (hyper's limit too).
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// Append one chunk of a chunked request body.
pub fn encode_chunk(out: &mut BytesMut, data: &[u8]) {
    let mut hex = [0u8; 16];
    let mut n = data.len();
    let mut i = hex.len();
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&hex[i..]);
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Parse a response head at the start of `buf`. `Ok(None)`: not complete yet. On success the
/// head's bytes are split off `buf`; header values are slices of them (no copy).
pub fn parse_response_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, String> {
    // Offsets into `buf` of each field, so values can be cut from the frozen head afterwards.
    // Neither array is zeroed first: a head is parsed on every response.
    let mut fields: SmallVec<[(u32, u32, u32, u32); 32]> = SmallVec::new();
    let (len, code, minor) = {
        let mut raw =
            [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut raw)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("invalid response head: {e}")),
        };
        let base = buf.as_ptr() as usize;
        // Offsets within a head of at most MAX_BUF_SIZE bytes: they fit in u32.
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        fields.extend(res.headers.iter().map(|h| {
            (
                at(h.name.as_bytes()),
                h.name.len() as u32,
                at(h.value),
                h.value.len() as u32,
            )
        }));
        (len, res.code.unwrap_or(0), res.version.unwrap_or(1))
    };
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid status code {code}"))?;
    let head: Bytes = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    for &(name_at, name_len, value_at, value_len) in &fields {
        let (name_at, name_len) = (name_at as usize, name_len as usize);
        let (value_at, value_len) = (value_at as usize, value_len as usize);
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len])
            .map_err(|_| "invalid header name in the response".to_string())?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
            .map_err(|_| format!("invalid value of the response header {name}"))?;
        headers.append(name, value);
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
    }))
}

/// How a response's body is delimited, and whether the connection can carry another request
/// after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespFraming {
    pub body: RespBodyKind,
    pub reusable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespBodyKind {
    /// No body (HEAD, 204, 304, or `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// RFC 9112 §6.3 for a response to a request with `method`.
pub fn response_framing(method: &Method, head: &ResponseHead) -> Result<RespFraming, String> {
    let h = &head.headers;
    let keep_alive = match head.version {
        Version::HTTP_10 => connection_has(h, "keep-alive") && !connection_has(h, "close"),
        _ => !connection_has(h, "close"),
    };
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("unexpected 101 Switching Protocols".into());
    }
    if *method == Method::HEAD
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED
    {
        return Ok(RespFraming {
            body: RespBodyKind::Empty,
            reusable: keep_alive,
        });
    }
    if h.contains_key(header::TRANSFER_ENCODING) {
        // Chunked only when it is the final coding; anything else runs until close. With a
        // Content-Length too, the message is suspect: never reuse the connection after it.
        let last = h
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        let chunked = last.is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
            && head.version != Version::HTTP_10;
        let both = h.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            RespFraming {
                body: RespBodyKind::Chunked,
                reusable: keep_alive && !both,
            }
        } else {
            RespFraming {
                body: RespBodyKind::UntilClose,
                reusable: false,
            }
        });
    }
    match content_length(h)? {
        Some(0) => Ok(RespFraming {
            body: RespBodyKind::Empty,
            reusable: keep_alive,
        }),
        Some(n) => Ok(RespFraming {
            body: RespBodyKind::Length(n),
            reusable: keep_alive,
        }),
        None => Ok(RespFraming {
            body: RespBodyKind::UntilClose,
            reusable: false,
        }),
    }
}

/// The one length all `Content-Length` fields (and list members) agree on.
fn content_length(h: &HeaderMap) -> Result<Option<u64>, String> {
    let mut found: Option<u64> = None;
    for value in h.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = (!part.is_empty() && part.len() <= 19 && part.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| "invalid Content-Length in the response".to_string())?;
            match found {
                Some(m) if m != n => {
                    return Err("differing Content-Length values in the response".into())
                }
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// Whether a `Connection` field lists `token`.
fn connection_has(h: &HeaderMap, token: &str) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> ResponseHead {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_response_head(&mut buf)
            .expect("valid")
            .expect("complete")
    }

    #[test]
    fn response_heads_parse_and_leave_the_body_in_the_buffer() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc"[..]);
        let h = parse_response_head(&mut buf).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers["x-a"], "b");
        assert_eq!(&buf[..], b"abc");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_response_head(&mut partial).unwrap().is_none());
        assert_eq!(partial.len(), 27, "a partial head is left in place");
        for bad in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "SMTP ready\r\n\r\n",
        ] {
            let mut b = BytesMut::from(bad.as_bytes());
            assert!(parse_response_head(&mut b).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        use RespBodyKind::*;
        let get = Method::GET;
        // (request method, response head) -> body, reusable
        type Want = Result<(RespBodyKind, bool), ()>;
        let cases: &[(&Method, &str, Want)] = &[
            (
                &get,
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                Ok((Length(3), true)),
            ),
            (
                &get,
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Ok((Empty, true)),
            ),
            (
                &get,
                "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
                Ok((Length(3), true)),
            ),
            (
                &get,
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                Err(()),
            ),
            (
                &get,
                "HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
                Err(()),
            ),
            (
                &get,
                "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
                Err(()),
            ),
            (
                &get,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok((Chunked, true)),
            ),
            (
                &get,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Ok((Chunked, true)),
            ),
            (
                &get,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Ok((UntilClose, false)),
            ),
            (
                &get,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                Ok((Chunked, false)),
            ),
            (&get, "HTTP/1.1 200 OK\r\n\r\n", Ok((UntilClose, false))),
            (
                &get,
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\n",
                Ok((Length(3), false)),
            ),
            (
                &get,
                "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
                Ok((Length(3), false)),
            ),
            (
                &get,
                "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 3\r\n\r\n",
                Ok((Length(3), true)),
            ),
            (
                &get,
                "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
                Ok((Empty, true)),
            ),
            (
                &get,
                "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok((Empty, true)),
            ),
            (
                &Method::HEAD,
                "HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n",
                Ok((Empty, true)),
            ),
            (&get, "HTTP/1.1 101 Switching Protocols\r\n\r\n", Err(())),
        ];
        for (method, text, want) in cases {
            let got = response_framing(method, &head(text))
                .map(|f| (f.body, f.reusable))
                .map_err(|_| ());
            assert_eq!(&got, want, "{method} {text:?}");
        }
    }

    #[test]
    fn chunks_are_framed_in_hex() {
        let mut c = BytesMut::new();
        encode_chunk(&mut c, &[b'x'; 26]);
        assert_eq!(&c[..4], b"1a\r\n");
        assert_eq!(&c[c.len() - 2..], b"\r\n");
    }
}
