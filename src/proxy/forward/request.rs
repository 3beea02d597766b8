//! The request as it goes upstream: origin-form target, `Host` from the route, hop-by-hop
//! headers removed, `Via` added, framing set from the body.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Uri, Version};
use http_body::Body;

use super::Route;
use crate::http1::RequestHead;
use crate::proxy::headers;
use crate::upstream::ReqBody;

/// Method, target and headers, computed once per request; the body is attached per attempt.
pub struct Prepared {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

/// The upstream request for `head` along `route`.
pub fn prepare(head: &RequestHead, route: &Route) -> Prepared {
    let mut headers = head.headers.clone();
    headers::strip_hop_by_hop(&mut headers);
    headers.remove(header::EXPECT);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::HOST, route.host.clone());
    headers::add_via(&mut headers);
    Prepared {
        method: head.method.clone(),
        uri: route.origin_form.clone(),
        headers,
    }
}

impl Prepared {
    /// The request with `body`; `Content-Length` from the body when its size is known.
    pub fn build(self, body: ReqBody) -> Request<ReqBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers;
        if let Some(n) = req.body().size_hint().exact() {
            if n > 0
                || !matches!(
                    *req.method(),
                    Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
                )
            {
                req.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        req
    }
}
