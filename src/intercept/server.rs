//! The TLS server side of an intercepted CONNECT (SPEC §9): portcullis completes the client's
//! handshake as the CONNECT host, with a leaf signed by the intercept CA.
//!
//! For the CONNECT path: `Shared::intercept` is the [`Interceptor`]. After answering `200` to a
//! CONNECT whose upstream has `connect = "intercept"`, call
//! `shared.intercept.accept(io, &host, &upstream.name, peer, timeout)`. It reads the
//! ClientHello; refuses (with a TLS alert) an SNI that names another host; takes the host's
//! leaf from the cache (issuing it on a miss); completes the handshake (TLS 1.2 or 1.3, ALPN
//! `http/1.1` only), all within `timeout`; counts `portcullis_intercepts_total{upstream,
//! result}`; and logs one WARN a minute per client address when the client rejects the leaf.
//! Other failures are only returned: the caller's access line reports them.
//! `io` is any byte stream, so the client connection may itself be TLS; bytes already read
//! past the CONNECT head go in front: `tokio::io::join(Cursor::new(leftover).chain(rd), wr)`.

mod rejections;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounterVec;
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::leaf::{LeafCache, LeafError};
use crate::config::{Config, ConnectMode};
use crate::metrics::Metrics;
use crate::target::Host;
pub use rejections::RejectLog;

/// The `result` label of `portcullis_intercepts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptResult {
    Ok,
    ClientRejectedCertificate,
    SniMismatch,
    HandshakeError,
}

impl InterceptResult {
    pub const ALL: [InterceptResult; 4] = [
        InterceptResult::Ok,
        InterceptResult::ClientRejectedCertificate,
        InterceptResult::SniMismatch,
        InterceptResult::HandshakeError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            InterceptResult::Ok => "ok",
            InterceptResult::ClientRejectedCertificate => "client_rejected_certificate",
            InterceptResult::SniMismatch => "sni_mismatch",
            InterceptResult::HandshakeError => "handshake_error",
        }
    }
}

/// Why an intercepted handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// The client's SNI named another host than its CONNECT; refused with an alert.
    #[error("the TLS server name {sni:?} is not the CONNECT host")]
    SniMismatch { sni: String },
    /// The client refused the leaf with this alert: it does not trust the intercept CA.
    #[error("the client rejected the interception certificate (TLS alert {})", alert_name(*.0))]
    ClientRejectedCertificate(AlertDescription),
    #[error("the TLS handshake did not complete within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// No leaf could be had (our side); the client got an alert.
    #[error(transparent)]
    Leaf(#[from] LeafError),
}

impl InterceptError {
    pub fn result(&self) -> InterceptResult {
        match self {
            InterceptError::SniMismatch { .. } => InterceptResult::SniMismatch,
            InterceptError::ClientRejectedCertificate(_) => {
                InterceptResult::ClientRejectedCertificate
            }
            InterceptError::Timeout(_) | InterceptError::Handshake(_) | InterceptError::Leaf(_) => {
                InterceptResult::HandshakeError
            }
        }
    }
}

/// Interception state shared by every connection: the leaf cache (with the CA), the TLS
/// settings, and the rate limit of the "client does not trust the CA" WARN.
pub struct Interceptor {
    leaves: LeafCache,
    /// Cloned per handshake with that host's leaf; the session cache inside is shared.
    base: Arc<ServerConfig>,
    rejections: RejectLog,
    counts: IntCounterVec,
}

impl Interceptor {
    pub fn new(config: &Config, metrics: &Metrics) -> Interceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut base = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Serve(None)));
        base.alpn_protocols = vec![b"http/1.1".to_vec()];
        let interceptor = Interceptor {
            leaves: LeafCache::new(config.proxy.intercept_ca.clone()),
            base: Arc::new(base),
            rejections: RejectLog::default(),
            counts: metrics.intercepts.clone(),
        };
        interceptor.create_series(config);
        interceptor
    }

    /// Take a reloaded config: a new CA certificate empties the leaf cache.
    pub fn reload(&self, config: &Config) {
        if self.leaves.set_ca(config.proxy.intercept_ca.clone()) {
            if let Some(ca) = self.leaves.ca() {
                tracing::info!(ca = %ca.cert_path().display(), fingerprint = %ca.fingerprint(), "intercept CA loaded; new leaves are signed by it");
            }
        }
        self.create_series(config);
    }

    pub fn leaves(&self) -> &LeafCache {
        &self.leaves
    }

    /// Complete the client's TLS handshake as `host` (SNI checked, leaf from the cache),
    /// within `timeout`; counted under `upstream`. See the module documentation.
    pub async fn accept<IO>(
        &self,
        io: IO,
        host: &Host,
        upstream: &str,
        client: SocketAddr,
        timeout: Duration,
    ) -> Result<TlsStream<IO>, InterceptError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let result = tokio::time::timeout(timeout, self.handshake(io, host))
            .await
            .unwrap_or(Err(InterceptError::Timeout(timeout)));
        let outcome = match &result {
            Ok(_) => InterceptResult::Ok,
            Err(e) => e.result(),
        };
        self.counts
            .with_label_values(&[upstream, outcome.label()])
            .inc();
        if let Err(InterceptError::ClientRejectedCertificate(alert)) = &result {
            self.warn_untrusted(client, host, *alert);
        }
        result
    }

    async fn handshake<IO>(&self, io: IO, host: &Host) -> Result<TlsStream<IO>, InterceptError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(Acceptor::default(), io)
            .await
            .map_err(InterceptError::Handshake)?;
        let sni = start.client_hello().server_name().map(str::to_string);
        let refusal = if !sni_allowed(sni.as_deref(), host) {
            Some(InterceptError::SniMismatch {
                sni: sni.unwrap_or_default(),
            })
        } else {
            match self.leaves.get(host).await {
                Ok(leaf) => {
                    let config = self.config(Some(leaf.certified.clone()));
                    return start.into_stream(config).await.map_err(classify);
                }
                Err(e) => Some(InterceptError::Leaf(e)),
            }
        };
        // No certificate: rustls answers the ClientHello with a fatal access_denied alert.
        let _ = start.into_stream(self.config(None)).await;
        Err(refusal.unwrap_or(InterceptError::Leaf(LeafError::NoCa)))
    }

    fn config(&self, leaf: Option<Arc<CertifiedKey>>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::clone(&self.base);
        config.cert_resolver = Arc::new(Serve(leaf));
        Arc::new(config)
    }

    fn warn_untrusted(&self, client: SocketAddr, host: &Host, alert: AlertDescription) {
        if !self
            .rejections
            .should_log(client.ip(), tokio::time::Instant::now())
        {
            return;
        }
        let ca = self
            .leaves
            .ca()
            .map(|ca| ca.cert_path().display().to_string())
            .unwrap_or_default();
        tracing::warn!(
            client = %client.ip(),
            host = %host,
            alert = alert_name(alert),
            "client {} rejected the interception certificate for {host} (TLS alert {}): it must trust the intercept CA {ca} (logged at most once a minute per client address)",
            client.ip(),
            alert_name(alert),
        );
    }

    /// Every result at zero for each intercept upstream, so alerts see the series.
    fn create_series(&self, config: &Config) {
        for u in config
            .upstreams
            .iter()
            .filter(|u| u.connect == ConnectMode::Intercept)
        {
            for r in InterceptResult::ALL {
                self.counts.with_label_values(&[&u.name, r.label()]);
            }
        }
    }
}

/// Whether a ClientHello's server name may be served for the CONNECT host: none sent (IP
/// literals, some clients), or the same name in any case. rustls reports an IP address sent
/// as SNI as none.
pub fn sni_allowed(sni: Option<&str>, host: &Host) -> bool {
    match (sni, host) {
        (None, _) => true,
        (Some(sni), Host::Name(name)) => sni
            .strip_suffix('.')
            .unwrap_or(sni)
            .eq_ignore_ascii_case(name),
        (Some(_), Host::Ip(_)) => false,
    }
}

/// Alerts by which a client says it does not accept our certificate.
pub fn rejects_certificate(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
    )
}

fn classify(e: io::Error) -> InterceptError {
    let alert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match alert {
        Some(rustls::Error::AlertReceived(a)) if rejects_certificate(*a) => {
            InterceptError::ClientRejectedCertificate(*a)
        }
        _ => InterceptError::Handshake(e),
    }
}

/// RFC 8446 names (`unknown_ca`), as OpenSSL and Wireshark print them.
fn alert_name(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::BadCertificate => "bad_certificate".into(),
        AlertDescription::UnsupportedCertificate => "unsupported_certificate".into(),
        AlertDescription::CertificateRevoked => "certificate_revoked".into(),
        AlertDescription::CertificateExpired => "certificate_expired".into(),
        AlertDescription::CertificateUnknown => "certificate_unknown".into(),
        AlertDescription::UnknownCA => "unknown_ca".into(),
        other => format!("{other:?}"),
    }
}

/// Serves one connection's leaf whatever the ClientHello says (the SNI was checked before);
/// `None` refuses the handshake.
struct Serve(Option<Arc<CertifiedKey>>);

impl fmt::Debug for Serve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Serve")
    }
}

impl ResolvesServerCert for Serve {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> Host {
        crate::target::parse_host(s).unwrap()
    }

    #[test]
    fn sni_must_name_the_connect_host() {
        let cases = [
            (None, "api.example.com", true),
            (None, "127.0.0.1", true),
            (Some("api.example.com"), "api.example.com", true),
            (Some("API.Example.COM"), "api.example.com", true),
            (Some("api.example.com."), "api.example.com", true),
            (Some("other.example.com"), "api.example.com", false),
            (Some("example.com"), "api.example.com", false),
            (Some("x.api.example.com"), "api.example.com", false),
            (Some("api.example.com"), "127.0.0.1", false),
        ];
        for (sni, connect, allowed) in cases {
            assert_eq!(
                sni_allowed(sni, &host(connect)),
                allowed,
                "{sni:?} for {connect}"
            );
        }
    }

    #[test]
    fn certificate_alerts_are_rejections_others_are_handshake_errors() {
        use AlertDescription as A;
        for a in [
            A::BadCertificate,
            A::UnknownCA,
            A::CertificateUnknown,
            A::CertificateExpired,
        ] {
            assert!(rejects_certificate(a), "{a:?}");
            let e = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::AlertReceived(a));
            assert_eq!(
                classify(e).result(),
                InterceptResult::ClientRejectedCertificate
            );
        }
        for a in [
            A::HandshakeFailure,
            A::ProtocolVersion,
            A::NoApplicationProtocol,
            A::DecodeError,
        ] {
            assert!(!rejects_certificate(a), "{a:?}");
            let e = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::AlertReceived(a));
            assert_eq!(classify(e).result(), InterceptResult::HandshakeError);
        }
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(classify(eof).result(), InterceptResult::HandshakeError);
    }

    #[test]
    fn alert_names_follow_the_rfc() {
        assert_eq!(alert_name(AlertDescription::UnknownCA), "unknown_ca");
        assert_eq!(
            alert_name(AlertDescription::CertificateUnknown),
            "certificate_unknown"
        );
        assert_eq!(
            alert_name(AlertDescription::BadCertificate),
            "bad_certificate"
        );
    }
}
