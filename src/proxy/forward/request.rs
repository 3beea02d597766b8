//! The request as it goes upstream, written straight from the client's parsed head:
//! origin-form target, `Host` from the route, hop-by-hop headers left out, `Via` added,
//! framing from the body, and every name in the client's spelling. No header map is copied.

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderName};
use http::Method;

use super::Route;
use crate::http1::known::{known, Known};
use crate::http1::{RequestHead, Spellings};
use crate::proxy::headers::{self, HopNames};
use crate::target::OriginForm;
use crate::upstream::WriteHead;

/// One request's upstream head, written once per attempt into the connection's buffer.
pub struct Outgoing<'a> {
    pub head: &'a RequestHead,
    /// The `Host` value sent upstream.
    pub host: &'a [u8],
    /// Path and query sent upstream.
    pub origin_form: OriginForm<'a>,
}

impl<'a> Outgoing<'a> {
    pub fn new(head: &'a RequestHead, route: &'a Route<'_>) -> Self {
        Outgoing {
            head,
            host: route.host.as_bytes(),
            origin_form: route.origin_form,
        }
    }
}

impl WriteHead for Outgoing<'_> {
    fn method(&self) -> &Method {
        &self.head.method
    }

    fn write_head(&self, out: &mut BytesMut, body_len: Option<u64>) {
        let Outgoing {
            head,
            host,
            origin_form,
        } = self;
        let spellings = &head.spellings;
        out.put_slice(head.method.as_str().as_bytes());
        out.put_u8(b' ');
        // "http://h?q" goes out as "/?q".
        let (slash, rest) = origin_form.pieces();
        out.put_slice(slash.as_bytes());
        out.put_slice(rest.as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        put_field(out, &header::HOST, host, spellings);
        // Looked up only when `Connection` names a field beyond the fixed hop-by-hop ones.
        let hops = if head.names_hop_fields {
            HopNames::of(&head.headers)
        } else {
            HopNames::default()
        };
        for (name, value) in &head.headers {
            let lower = name.as_str().as_bytes();
            let kind = known(lower);
            if matches!(kind, Known::Host | Known::ContentLength | Known::Expect)
                || hops.drops_known(kind, lower)
            {
                continue;
            }
            put_field(out, name, value.as_bytes(), spellings);
        }
        put_field(out, &header::VIA, headers::VIA.as_bytes(), spellings);
        match body_len {
            Some(n) if n > 0 || !bodiless_method(&head.method) => {
                put_field(
                    out,
                    &header::CONTENT_LENGTH,
                    itoa::Buffer::new().format(n).as_bytes(),
                    spellings,
                );
            }
            Some(_) => {}
            None => put_field(out, &header::TRANSFER_ENCODING, b"chunked", spellings),
        }
        out.put_slice(b"\r\n");
    }
}

/// Methods whose empty body goes without `Content-Length: 0`.
fn bodiless_method(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
    )
}

/// One header line, the name as the client spelled it.
fn put_field(out: &mut BytesMut, name: &HeaderName, value: &[u8], spellings: &Spellings) {
    let lower = name.as_str().as_bytes();
    let spelled = if spellings.is_empty() {
        lower
    } else {
        spellings.of(lower).unwrap_or(lower)
    };
    out.put_slice(spelled);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::ClientReader;
    use http::header::HeaderValue;

    async fn head_of(text: &'static [u8]) -> RequestHead {
        let mut reader = ClientReader::new(text, 64 * 1024);
        *reader.read_head().await.expect("valid head")
    }

    fn route(host: &'static str, origin_form: &'static str) -> (HeaderValue, OriginForm<'static>) {
        let form = crate::target::parse_origin_form(origin_form).expect("origin-form");
        (HeaderValue::from_static(host), form)
    }

    fn written(
        head: &RequestHead,
        host: HeaderValue,
        uri: OriginForm<'_>,
        len: Option<u64>,
    ) -> String {
        let mut out = BytesMut::new();
        write_with(&mut out, head, host, uri, len);
        String::from_utf8(out.to_vec()).expect("ascii")
    }

    fn write_with(
        out: &mut BytesMut,
        head: &RequestHead,
        host: HeaderValue,
        uri: OriginForm<'_>,
        len: Option<u64>,
    ) {
        Outgoing {
            head,
            host: host.as_bytes(),
            origin_form: uri,
        }
        .write_head(out, len);
    }

    /// Whether the hop names are looked up is recorded at parse time; what is written is
    /// what the general path (always looking them up) writes.
    #[tokio::test]
    async fn the_recorded_hop_names_flag_writes_what_the_lookup_writes() {
        let heads: &[&'static [u8]] = &[
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nX-A: 1\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nConnection: close, X-A\r\nX-A: 1\r\nx-b: 2\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nProxy-Connection: X-B\r\nX-A: 1\r\nX-B: 2\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nPROXY-CONNECTION: keep-alive\r\nConnection: ,TE , \r\nTE: trailers\r\n\r\n",
            b"POST http://a/ HTTP/1.1\r\nConnection: host, content-length\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi",
            b"GET http://a/ HTTP/1.0\r\nConnection: Keep-Alive, upgrade\r\nUpgrade: h2c\r\nVia: 1.0 x\r\n\r\n",
        ];
        for text in heads {
            let head = head_of(text).await;
            assert_eq!(
                head.names_hop_fields,
                !HopNames::of(&head.headers).is_fixed(),
                "{text:?}"
            );
            let (host, uri) = route("a", "/");
            let recorded = written(&head, host.clone(), uri, Some(2));
            let mut general = head;
            general.names_hop_fields = true;
            assert_eq!(recorded, written(&general, host, uri, Some(2)), "{text:?}");
        }
    }

    /// Names go out as the client spelled them; hop-by-hop headers, those `Connection`
    /// names, `Expect` and the client's framing stay behind; Host comes from the route,
    /// Via and the body's framing are ours.
    #[tokio::test]
    async fn the_upstream_head_is_the_clients_less_the_hop() {
        let head = head_of(b"POST http://a.example/pay?x=1 HTTP/1.1\r\nHOST: wrong\r\nX-Api-KEY: k\r\nconnection: X-Secret, keep-alive\r\nx-secret: s\r\nKeep-Alive: 5\r\nProxy-Authorization: Basic eA==\r\nExpect: 100-continue\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nVia: 1.0 edge\r\n\r\n").await;
        let (host, uri) = route("a.example", "/pay?x=1");
        assert_eq!(
            written(&head, host.clone(), uri, None),
            "POST /pay?x=1 HTTP/1.1\r\nHOST: a.example\r\nX-Api-KEY: k\r\nContent-Type: text/plain\r\nVia: 1.0 edge\r\nVia: 1.1 portcullis\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        assert!(written(&head, host, uri, Some(0))
            .ends_with("Via: 1.1 portcullis\r\ncontent-length: 0\r\n\r\n"));
        let get = head_of(b"GET http://a.example HTTP/1.1\r\nhost: a.example\r\n\r\n").await;
        let (host, uri) = route("a.example", "/");
        assert_eq!(
            written(&get, host, uri, Some(0)),
            "GET / HTTP/1.1\r\nhost: a.example\r\nvia: 1.1 portcullis\r\n\r\n"
        );
        // A query without a path, and a fragment, as the absolute-form target had them.
        let query = head_of(b"GET http://a.example?q#f HTTP/1.1\r\n\r\n").await;
        let form = crate::target::parse_absolute(&query.target).expect("absolute");
        let host = HeaderValue::from_static("a.example");
        assert!(
            written(&query, host, form.origin_form, Some(0)).starts_with("GET /?q HTTP/1.1\r\n")
        );
    }
}
