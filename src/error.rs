//! One error type for the request path and the one place that turns it into a status,
//! a `Proxy-Status` token, a one-line explanation and a metric label.

use std::borrow::Cow;
use std::net::IpAddr;

use http::StatusCode;

/// Who caused a failure: decides the log level and whose fault the operator looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Culprit {
    Client,
    Policy,
    Upstream,
    Proxy,
}

/// Why policy refused a request: the `reason` label of `portcullis_denied_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    Host,
    Port,
    Client,
    Auth,
    PrivateIp,
}

impl DenyReason {
    pub fn label(self) -> &'static str {
        match self {
            DenyReason::Host => "host",
            DenyReason::Port => "port",
            DenyReason::Client => "client",
            DenyReason::Auth => "auth",
            DenyReason::PrivateIp => "private_ip",
        }
    }
}

/// Every way a proxied request or tunnel can fail.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(Cow<'static, str>),
    #[error("request head larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("proxy authentication required")]
    AuthRequired,
    #[error("{detail}")]
    Denied { reason: DenyReason, detail: String },
    /// A request inside a tunnel names another host than the CONNECT did.
    #[error("this tunnel was opened to {expected}; a request for {host} must use its own CONNECT")]
    Misdirected { host: String, expected: String },
    #[error("{host} resolves to {addr}, a {class} address; {why}")]
    PrivateAddress {
        host: String,
        addr: IpAddr,
        class: &'static str,
        /// Which rule refused it (policy's words).
        why: &'static str,
    },
    #[error("DNS lookup of {host} failed: {detail}")]
    Dns { host: String, detail: String },
    #[error("connection to {addr} refused")]
    ConnectRefused { addr: String },
    #[error("could not reach {addr}: {detail}")]
    ConnectFailed { addr: String, detail: String },
    #[error("connecting to {addr} took longer than {timeout_ms} ms")]
    ConnectTimeout { addr: String, timeout_ms: u128 },
    #[error("TLS certificate of {host} rejected: {detail}")]
    TlsCertificate { host: String, detail: String },
    #[error("TLS handshake with {host} failed: {detail}")]
    TlsHandshake { host: String, detail: String },
    #[error("no free connection to {upstream} within {timeout_ms} ms ({max} connections busy)")]
    PoolTimeout {
        upstream: String,
        timeout_ms: u128,
        max: usize,
    },
    #[error("no response from {upstream} within {timeout_ms} ms")]
    ResponseTimeout { upstream: String, timeout_ms: u128 },
    #[error("connection to {upstream} was closed or reset: {detail}")]
    ConnectionTerminated { upstream: String, detail: String },
    #[error("invalid response from {upstream}: {detail}")]
    UpstreamProtocol { upstream: String, detail: String },
    #[error("portcullis is shutting down")]
    ShuttingDown,
    /// The client's TLS handshake inside an intercepted CONNECT failed (after the 200): the
    /// client hears a TLS alert, the access line this kind's `result` label.
    #[error("intercepted TLS handshake failed: {detail}")]
    InterceptHandshake {
        result: &'static str,
        detail: String,
    },
    /// The client hung up or its connection failed: nobody is left to answer.
    #[error("client went away: {detail}")]
    ClientGone { detail: String },
    /// The request body stopped arriving for `client_stall_timeout`. Answered 408 when no
    /// response has begun (a stalled client may still read).
    #[error("the request body stopped arriving for {timeout_ms} ms (client_stall_timeout)")]
    BodyStalled { timeout_ms: u128 },
    /// The client stopped reading our response for `client_stall_timeout`: like a client
    /// gone, nothing more can be sent; both sides are closed.
    #[error("client stalled: {detail}")]
    ClientStalled { detail: String },
}

impl ProxyError {
    pub fn bad_request(why: impl Into<Cow<'static, str>>) -> Self {
        ProxyError::BadRequest(why.into())
    }

    /// A request body that could not be read: broken framing is the client's bad request,
    /// an early end or a read error means the client is gone.
    pub fn request_body(e: crate::http1::BodyError) -> Self {
        match e {
            crate::http1::BodyError::Malformed(_) => ProxyError::bad_request(e.to_string()),
            _ => ProxyError::ClientGone {
                detail: e.to_string(),
            },
        }
    }

    /// Writing to the client failed; `TimedOut` is a write that waited `client_stall_timeout`.
    pub fn client_write(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::TimedOut {
            return ProxyError::ClientStalled {
                detail: e.to_string(),
            };
        }
        ProxyError::ClientGone {
            detail: format!("writing to the client failed: {e}"),
        }
    }

    pub fn denied(reason: DenyReason, detail: impl Into<String>) -> Self {
        ProxyError::Denied {
            reason,
            detail: detail.into(),
        }
    }

    /// The status sent to the client (SPEC §4 table). A client that went away gets nothing;
    /// its requests are logged and counted as 499, nginx's "client closed request".
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            ClientGone { .. } | ClientStalled { .. } => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
            }
            BodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
            // Never sent: the CONNECT was answered 200 before the handshake.
            InterceptHandshake { .. } => StatusCode::OK,
            BadRequest(_) => StatusCode::BAD_REQUEST,
            HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            AuthRequired => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Denied { .. } | PrivateAddress { .. } => StatusCode::FORBIDDEN,
            Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            Dns { .. } | ConnectRefused { .. } | ConnectFailed { .. } => StatusCode::BAD_GATEWAY,
            TlsCertificate { .. } | TlsHandshake { .. } => StatusCode::BAD_GATEWAY,
            ConnectionTerminated { .. } | UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            ConnectTimeout { .. } | ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            PoolTimeout { .. } | ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The RFC 9209 error token for `Proxy-Status`; `client_closed` and `client_stalled` are
    /// never sent (there is nobody to send them to) and only name the outcome in the access log.
    pub fn token(&self) -> &'static str {
        use ProxyError::*;
        match self {
            ClientGone { .. } => "client_closed",
            ClientStalled { .. } => "client_stalled",
            InterceptHandshake { result, .. } => result,
            BadRequest(_) | HeadTooLarge { .. } | BodyStalled { .. } => "http_request_error",
            AuthRequired | Denied { .. } | Misdirected { .. } => "http_request_denied",
            PrivateAddress { .. } => "destination_ip_prohibited",
            Dns { .. } => "dns_error",
            ConnectRefused { .. } => "connection_refused",
            // RFC 9209: "destination_unavailable" covers unreachable networks and hosts.
            ConnectFailed { .. } => "destination_unavailable",
            ConnectTimeout { .. } => "connection_timeout",
            TlsCertificate { .. } => "tls_certificate_error",
            TlsHandshake { .. } => "tls_protocol_error",
            PoolTimeout { .. } => "connection_limit_reached",
            ResponseTimeout { .. } => "http_response_timeout",
            ConnectionTerminated { .. } => "connection_terminated",
            UpstreamProtocol { .. } => "http_protocol_error",
            ShuttingDown => "proxy_internal_response",
        }
    }

    pub fn culprit(&self) -> Culprit {
        use ProxyError::*;
        match self {
            BadRequest(_)
            | HeadTooLarge { .. }
            | AuthRequired
            | ClientGone { .. }
            | BodyStalled { .. }
            | ClientStalled { .. }
            | InterceptHandshake { .. } => Culprit::Client,
            Denied { .. } | PrivateAddress { .. } | Misdirected { .. } => Culprit::Policy,
            ShuttingDown | PoolTimeout { .. } => Culprit::Proxy,
            _ => Culprit::Upstream,
        }
    }

    /// The `reason` of `portcullis_denied_total`, for denials.
    pub fn deny_reason(&self) -> Option<DenyReason> {
        match self {
            ProxyError::AuthRequired => Some(DenyReason::Auth),
            ProxyError::Denied { reason, .. } => Some(*reason),
            ProxyError::PrivateAddress { .. } => Some(DenyReason::PrivateIp),
            ProxyError::Misdirected { .. } => Some(DenyReason::Host),
            _ => None,
        }
    }

    /// Whether the client connection must be closed after the answer (the stream may be out of sync).
    pub fn closes_client(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::HeadTooLarge { .. }
                | ProxyError::ClientGone { .. }
                | ProxyError::BodyStalled { .. }
                | ProxyError::ClientStalled { .. }
        )
    }

    /// Headers of the synthetic response, beyond Content-Type/Length.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![(
            "proxy-status",
            format!(
                "portcullis; error={}; details={}",
                self.token(),
                sf_string(&self.to_string())
            ),
        )];
        if matches!(self, ProxyError::AuthRequired) {
            h.push((
                "proxy-authenticate",
                "Basic realm=\"portcullis\"".to_string(),
            ));
        }
        h
    }

    /// The one-line plain-text body: what was refused and why.
    pub fn body(&self) -> String {
        let hint = match self {
            ProxyError::AuthRequired => " (send Proxy-Authorization: Basic)",
            _ => "",
        };
        format!(
            "portcullis: {} {}: {}{hint}\n",
            self.status().as_u16(),
            self.token(),
            self
        )
    }
}

/// An RFC 8941 sf-string: printable ASCII only, with `"` and `\\` escaped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_of_the_spec_table() {
        let cases: Vec<(ProxyError, u16, &str)> = vec![
            (
                ProxyError::bad_request("origin-form"),
                400,
                "http_request_error",
            ),
            (
                ProxyError::HeadTooLarge { limit: 10 },
                431,
                "http_request_error",
            ),
            (ProxyError::AuthRequired, 407, "http_request_denied"),
            (
                ProxyError::denied(DenyReason::Host, "x"),
                403,
                "http_request_denied",
            ),
            (
                ProxyError::PrivateAddress {
                    host: "h".into(),
                    addr: [10, 0, 0, 1].into(),
                    class: "rfc1918",
                    why: "not allowed",
                },
                403,
                "destination_ip_prohibited",
            ),
            (
                ProxyError::Dns {
                    host: "h".into(),
                    detail: "nx".into(),
                },
                502,
                "dns_error",
            ),
            (
                ProxyError::ConnectRefused { addr: "a".into() },
                502,
                "connection_refused",
            ),
            (
                ProxyError::ConnectTimeout {
                    addr: "a".into(),
                    timeout_ms: 1,
                },
                504,
                "connection_timeout",
            ),
            (
                ProxyError::TlsCertificate {
                    host: "h".into(),
                    detail: "d".into(),
                },
                502,
                "tls_certificate_error",
            ),
            (
                ProxyError::PoolTimeout {
                    upstream: "u".into(),
                    timeout_ms: 1,
                    max: 1,
                },
                503,
                "connection_limit_reached",
            ),
            (
                ProxyError::ResponseTimeout {
                    upstream: "u".into(),
                    timeout_ms: 1,
                },
                504,
                "http_response_timeout",
            ),
            (
                ProxyError::ConnectionTerminated {
                    upstream: "u".into(),
                    detail: "d".into(),
                },
                502,
                "connection_terminated",
            ),
            (
                ProxyError::UpstreamProtocol {
                    upstream: "u".into(),
                    detail: "d".into(),
                },
                502,
                "http_protocol_error",
            ),
            (ProxyError::ShuttingDown, 503, "proxy_internal_response"),
            (
                ProxyError::Misdirected {
                    host: "b".into(),
                    expected: "a:443".into(),
                },
                421,
                "http_request_denied",
            ),
            (
                ProxyError::BodyStalled { timeout_ms: 30_000 },
                408,
                "http_request_error",
            ),
        ];
        for (e, status, token) in cases {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert_eq!(e.token(), token, "{e:?}");
            let body = e.body();
            assert!(
                body.ends_with('\n') && body.matches('\n').count() == 1,
                "one line: {body:?}"
            );
        }
    }

    #[test]
    fn details_are_a_valid_sf_string() {
        assert_eq!(sf_string("a \"b\" \\ é\n"), "\"a \\\"b\\\" \\\\ ??\"");
    }

    #[test]
    fn auth_required_asks_for_basic() {
        let h = ProxyError::AuthRequired.headers();
        assert!(h
            .iter()
            .any(|(k, v)| *k == "proxy-authenticate" && v == "Basic realm=\"portcullis\""));
    }
}
