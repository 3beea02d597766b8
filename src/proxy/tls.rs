//! The TLS proxy listener's connections: a handshake bounded by `header_read_timeout` and
//! counted by result, the client certificate's identities, then the plain listener's loop.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::error::Elapsed;
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::stream::tls_halves;
use super::{serve_client, Slot};
use crate::policy::identity::PeerIdentity;
use crate::server_tls::ServerTls;
use crate::state::{Phase, Shared};

/// How a client's handshake ended: the `result` label of
/// `portcullis_client_tls_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    /// `client_ca` is set and the client sent no certificate.
    NoCertificate,
    /// The client's certificate was refused: expired, another CA's, not for client use...
    BadCertificate,
    /// Anything else: garbage instead of a ClientHello, no common version or cipher, a
    /// client that closed or stalled past `header_read_timeout`.
    HandshakeError,
}

impl Handshake {
    pub const ALL: [Handshake; 4] = [
        Handshake::Ok,
        Handshake::NoCertificate,
        Handshake::BadCertificate,
        Handshake::HandshakeError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::NoCertificate => "no_certificate",
            Handshake::BadCertificate => "bad_certificate",
            Handshake::HandshakeError => "handshake_error",
        }
    }

    /// Why `accept` failed, from the rustls error inside the I/O error.
    pub fn of_error(e: &io::Error) -> Handshake {
        let tls = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
        match tls {
            Some(rustls::Error::NoCertificatesPresented) => Handshake::NoCertificate,
            Some(rustls::Error::InvalidCertificate(_)) => Handshake::BadCertificate,
            _ => Handshake::HandshakeError,
        }
    }
}

/// Shake hands with one connection accepted on the TLS listener, then hand it to a task of
/// its own running the plain listener's loop. Nothing outlives a failed handshake: the
/// connection, its slot and this task end together.
///
/// Two tasks, not one: an async fn keeps its arguments for its whole life, so a task that
/// shook hands and then served would carry the handshake's arguments beside the request
/// loop in every idle TLS connection; the serving task is exactly the plain one.
pub(super) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    server: ServerTls,
    slot: Slot,
) {
    // `TCP_NODELAY` came with the socket from the listener (`Acceptor::new`).
    let limit = shared.config().proxy.header_read_timeout;
    // Boxed: the handshake state is large, and it exists only while the handshake runs.
    let handshake = Box::pin(timeout(limit, TlsAcceptor::from(server.0).accept(tcp)));
    let done = tokio::select! {
        r = handshake => r,
        _ = shared.phase.reached(Phase::Stopped) => return,
    };
    if let Some((halves, identity)) = established(&shared, peer, done, limit) {
        tokio::spawn(serve_client(shared, halves, peer, identity, slot));
    }
}

type Halves = (
    ReadHalf<TlsStream<TcpStream>>,
    WriteHalf<TlsStream<TcpStream>>,
);

/// Count the handshake's result; on success, the stream's halves and the client
/// certificate's identities.
fn established(
    shared: &Shared,
    peer: SocketAddr,
    done: Result<io::Result<TlsStream<TcpStream>>, Elapsed>,
    limit: Duration,
) -> Option<(Halves, Option<Arc<PeerIdentity>>)> {
    let result = match &done {
        Ok(Ok(_)) => Handshake::Ok,
        Ok(Err(e)) => Handshake::of_error(e),
        Err(_) => Handshake::HandshakeError,
    };
    shared
        .metrics
        .client_tls_handshakes
        .with_label_values(&[result.label()])
        .inc();
    let stream = match done {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            report(peer, result, &e.to_string());
            return None;
        }
        Err(_) => {
            let why = format!(
                "not completed within header_read_timeout ({} ms)",
                limit.as_millis()
            );
            report(peer, result, &why);
            return None;
        }
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| Arc::new(PeerIdentity::from_der(leaf)));
    Some((tls_halves(stream), identity))
}

/// At most one WARN line a minute for refused client certificates (a fleet with an expired
/// certificate would otherwise write one per connection attempt); the rest go to DEBUG, as
/// do other handshake failures (scanners, probes, clients that hang up).
static LAST_WARN: Mutex<Option<Instant>> = Mutex::new(None);
const WARN_EVERY: Duration = Duration::from_secs(60);

fn report(peer: SocketAddr, result: Handshake, why: &str) {
    let certificate_problem =
        matches!(result, Handshake::NoCertificate | Handshake::BadCertificate);
    if certificate_problem && warn_now() {
        tracing::warn!(
            client = %peer,
            result = result.label(),
            error = why,
            "client TLS handshake refused (client_ca requires a valid client certificate); \
             further refusals this minute are logged at DEBUG and counted in \
             portcullis_client_tls_handshakes_total"
        );
    } else {
        tracing::debug!(client = %peer, result = result.label(), error = why, "client TLS handshake failed");
    }
}

fn warn_now() -> bool {
    let mut last = LAST_WARN.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
        return false;
    }
    *last = Some(now);
    true
}
