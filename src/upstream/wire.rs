//! The bytes of an upstream exchange: chunks of a request body framed, response heads parsed, and how a response's body is framed (RFC 9112 §6.3). Pure functions, no I/O.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Version};

use crate::http1::known::{known, Known};

/// Most header fields accepted in one response head (hyper's limit too).
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// A parsed response head: its bytes, and where each field is in them. Nothing is copied
/// into a header map: the relay writes the fields on as they are.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    bytes: Bytes,
    /// Where each field is in `bytes`, and what its name is, in order. On the heap, not
    /// inline: a head is moved through several frames on its way to the relay, and inline
    /// spans made each move a memcpy costing more than this allocation.
    spans: Vec<Span>,
    /// The [`Known::bit`]s of the names present: a look-up for an absent one scans nothing.
    present: u16,
    /// What `Connection` and `Proxy-Connection` list.
    connection: ConnectionTokens,
}

/// The tokens of a head's `Connection` (and `Proxy-Connection`) fields that the relay acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionTokens {
    /// `Connection` lists `close` (any case).
    pub close: bool,
    /// `Connection` lists `keep-alive` (any case).
    pub keep_alive: bool,
    /// `Connection` or `Proxy-Connection` lists a name beyond the fixed hop-by-hop ones:
    /// that field must stay at the hop too.
    pub names_fields: bool,
}

impl ConnectionTokens {
    /// Read from the values of `Connection` and of `Proxy-Connection`.
    pub fn of<'a>(
        connection: impl IntoIterator<Item = &'a [u8]>,
        proxy_connection: impl IntoIterator<Item = &'a [u8]>,
    ) -> Self {
        let mut tokens = ConnectionTokens::default();
        for token in connection.into_iter().flat_map(crate::http1::tokens) {
            tokens.close |= token.eq_ignore_ascii_case(b"close");
            tokens.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            tokens.names_fields |= !crate::proxy::headers::is_hop_by_hop(token);
        }
        for token in proxy_connection.into_iter().flat_map(crate::http1::tokens) {
            tokens.names_fields |= !crate::proxy::headers::is_hop_by_hop(token);
        }
        tokens
    }
}

/// One field of a [`ResponseHead`].
#[derive(Debug, Clone, Copy)]
struct Span {
    name: u32,
    name_len: u32,
    value: u32,
    value_len: u32,
    /// The name recognised once, at parse time.
    kind: Known,
}

impl ResponseHead {
    /// Every field as (name, value), in the order received, names as spelled.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.known_fields().map(|(_, n, v)| (n, v))
    }

    /// Every field as (what its name is, name, value), in the order received.
    pub fn known_fields(&self) -> impl Iterator<Item = (Known, &[u8], &[u8])> {
        self.spans.iter().map(|s| self.field(s))
    }

    fn field(&self, s: &Span) -> (Known, &[u8], &[u8]) {
        let (n, nl, v, vl) = (
            s.name as usize,
            s.name_len as usize,
            s.value as usize,
            s.value_len as usize,
        );
        (s.kind, &self.bytes[n..n + nl], &self.bytes[v..v + vl])
    }

    /// Whether a field of the known name `kind` is present.
    pub fn has(&self, kind: Known) -> bool {
        self.present & kind.bit() != 0
    }

    /// The values of every field named `name` (lower case; matched in any case). A known
    /// name is matched by its kind, recognised at parse time.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.matching(known(name.as_bytes()), name.as_bytes())
    }

    /// The values of every field of the known name `kind`.
    pub fn all(&self, kind: Known) -> impl Iterator<Item = &[u8]> {
        self.matching(kind, b"")
    }

    /// Values of the fields of `kind`, or when that is `Other`, named `name`.
    fn matching<'a>(&'a self, kind: Known, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        // None of a known name present: nothing to scan.
        let spans = if kind != Known::Other && !self.has(kind) {
            &self.spans[..0]
        } else {
            &self.spans[..]
        };
        spans
            .iter()
            .filter(move |s| {
                if kind == Known::Other {
                    s.kind == Known::Other
                        && s.name_len as usize == name.len()
                        && self.field(s).1.eq_ignore_ascii_case(name)
                } else {
                    s.kind == kind
                }
            })
            .map(|s| self.field(s).2)
    }

    /// What the `Connection` fields say, read once at parse time.
    pub fn connection(&self) -> ConnectionTokens {
        self.connection
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
    let mut spans = Vec::new();
    let mut present = 0u16;
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
        spans.reserve_exact(res.headers.len());
        for h in res.headers.iter() {
            let kind = known(h.name.as_bytes());
            present |= kind.bit();
            spans.push(Span {
                name: at(h.name.as_bytes()),
                name_len: h.name.len() as u32,
                value: at(h.value),
                value_len: h.value.len() as u32,
                kind,
            });
        }
        (len, res.code.unwrap_or(0), res.version.unwrap_or(1))
    };
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid status code {code}"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut head = ResponseHead {
        status,
        version,
        bytes: buf.split_to(len).freeze(),
        spans,
        present,
        connection: ConnectionTokens::default(),
    };
    if head.has(Known::Connection) || head.has(Known::ProxyConnection) {
        head.connection = ConnectionTokens::of(
            head.all(Known::Connection),
            head.all(Known::ProxyConnection),
        );
    }
    Ok(Some(head))
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
    let connection = head.connection();
    let keep_alive = match head.version {
        Version::HTTP_10 => connection.keep_alive && !connection.close,
        _ => !connection.close,
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
    if h.has(Known::TransferEncoding) {
        // Chunked only when it is the final coding; anything else runs until close. With a
        // Content-Length too, the message is suspect: never reuse the connection after it.
        let last = h
            .all(Known::TransferEncoding)
            .flat_map(crate::http1::tokens)
            .last();
        let chunked = last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
            && head.version != Version::HTTP_10;
        let both = h.has(Known::ContentLength);
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
    for value in h.all(Known::ContentLength) {
        crate::http1::content_length_values(value, &mut found)
            .map_err(|why| format!("invalid response: {why}"))?;
    }
    Ok(found)
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

    /// What parsing records (kinds, the names present, the `Connection` tokens) agrees with
    /// the general path: scanning every field by name.
    #[test]
    fn what_parsing_records_agrees_with_scanning_the_fields() {
        use crate::proxy::headers::HopNames;
        let heads = [
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
            "HTTP/1.1 200 OK\r\nconnection: Close\r\nKeep-Alive: timeout=5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: ,, \r\nConnection: upgrade ,close\r\n\r\n",
            "HTTP/1.1 200 OK\r\nProxy-Connection: x-a\r\nConnection: keep-alive\r\n\r\n",
            "HTTP/1.1 200 OK\r\nProxy-Connection: keep-alive\r\nCONNECTION: TE, Trailer\r\n\r\n",
            "HTTP/1.0 200 OK\r\nConnection: keep-alivex\r\nTransfer-Encoding: gzip\r\nTransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Lengths: 3\r\nContent-Length: 4\r\nX-A: a\r\nx-a: b\r\n\r\n",
        ];
        let names = [
            "connection",
            "proxy-connection",
            "keep-alive",
            "content-length",
            "transfer-encoding",
            "content-lengths",
            "x-a",
            "x-hop",
            "server",
            "te",
        ];
        for text in heads {
            let h = head(text);
            for name in names {
                let scanned: Vec<&[u8]> = h
                    .fields()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                    .map(|(_, v)| v)
                    .collect();
                assert_eq!(
                    h.get_all(name).collect::<Vec<_>>(),
                    scanned,
                    "{text:?} {name}"
                );
                let kind = known(name.as_bytes());
                if kind != Known::Other {
                    assert_eq!(h.all(kind).collect::<Vec<_>>(), scanned, "{text:?} {name}");
                    assert_eq!(h.has(kind), !scanned.is_empty(), "{text:?} {name}");
                }
            }
            let connection = || h.get_all("connection");
            let hops = HopNames::from_connection(connection().chain(h.get_all("proxy-connection")));
            assert_eq!(
                h.connection(),
                ConnectionTokens {
                    close: crate::http1::lists(connection(), "close"),
                    keep_alive: crate::http1::lists(connection(), "keep-alive"),
                    names_fields: !hops.is_fixed(),
                },
                "{text:?}"
            );
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
