//! The bytes of an upstream exchange: chunks of a request body framed, response heads parsed, and how a response's body is framed (RFC 9112 §6.3). Pure functions, no I/O.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Version};
use smallvec::SmallVec;

/// Most header fields accepted in one response head (hyper's limit too).
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// A parsed response head: its bytes, and where each field is in them. Nothing is copied
/// into a header map: the relay writes the fields on as they are.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    bytes: Bytes,
    /// (name start, name length, value start, value length) of each field, in order.
    spans: SmallVec<[(u32, u32, u32, u32); 16]>,
}

impl ResponseHead {
    /// Every field as (name, value), in the order received, names as spelled.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|&(n, nl, v, vl)| {
            let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
            (&self.bytes[n..n + nl], &self.bytes[v..v + vl])
        })
    }

    /// The values of every field named `name` (lower case; matched in any case).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.fields()
            .filter(move |(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The first value of the field `name`.
    pub fn get<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    pub fn contains<'a>(&'a self, name: &'a str) -> bool {
        self.get(name).is_some()
    }
}

/// Parse a response head at the start of `buf`. `Ok(None)`: not complete yet. On success the
/// head's bytes are split off `buf`.
pub fn parse_response_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, String> {
    let mut spans = SmallVec::new();
    let (len, code, minor) = {
        // Not zeroed first: a head is parsed on every response.
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
        spans.extend(res.headers.iter().map(|h| {
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
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    Ok(Some(ResponseHead {
        status,
        version,
        bytes: buf.split_to(len).freeze(),
        spans,
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
    let h = head;
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
    if h.contains("transfer-encoding") {
        // Chunked only when it is the final coding; anything else runs until close. With a
        // Content-Length too, the message is suspect: never reuse the connection after it.
        let last = h
            .get_all("transfer-encoding")
            .flat_map(crate::http1::tokens)
            .last();
        let chunked = last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
            && head.version != Version::HTTP_10;
        let both = h.contains("content-length");
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

/// The one length all `Content-Length` fields (and list members) agree on, by the rule the
/// client side applies to requests.
fn content_length(h: &ResponseHead) -> Result<Option<u64>, String> {
    let mut found = None;
    for value in h.get_all("content-length") {
        crate::http1::content_length_values(value, &mut found)
            .map_err(|why| format!("invalid response: {why}"))?;
    }
    Ok(found)
}

/// Whether a `Connection` field lists `token`.
fn connection_has(h: &ResponseHead, token: &str) -> bool {
    crate::http1::lists(h.get_all("connection"), token)
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
        assert_eq!(h.get("x-a"), Some(&b"b"[..]));
        assert_eq!(
            h.fields().next(),
            Some((&b"Content-Length"[..], &b"3"[..])),
            "names as spelled"
        );
        assert_eq!(&buf[..], b"abc");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_response_head(&mut partial).unwrap().is_none());
        assert_eq!(partial.len(), 27, "a partial head is left in place");
        for bad in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
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
}
