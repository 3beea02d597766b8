//! The sizes of the futures that idle connections cost, for `benches/layout.rs` to print. Not
//! an API, and no test asserts them: a future's layout moves with the compiler.

use std::io;
use std::sync::Arc;

use rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

use super::limit::ClientLimit;
use super::{stream, Slot};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::identity::PeerIdentity;
use crate::state::Shared;

fn shared() -> io::Result<Arc<Shared>> {
    let text = "[[upstream]]\nname = \"a\"\nhosts = [\"example.com\"]\n";
    let config = Config::from_toml(text, "layout.toml").map_err(io::Error::other)?;
    Ok(Shared::new(config, Metrics::new()))
}

async fn slot(shared: &Shared) -> io::Result<Slot> {
    let permit = ClientLimit::new(1)
        .acquire()
        .await
        .map_err(io::Error::other)?;
    Ok(Slot::new(permit, &shared.metrics))
}

/// Bytes of one plain client connection's task, sized by the largest state of its request
/// loop: most of what an idle client connection costs. A 4 KiB drain buffer on the linger
/// path once made it 5.8 KiB; with rare paths keeping their bulk on the heap it was under 2 KiB.
pub async fn client_connection_task() -> io::Result<usize> {
    let shared = shared()?;
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let _client = TcpStream::connect(l.local_addr()?).await?;
    let (tcp, peer) = l.accept().await?;
    let slot = slot(&shared).await?;
    let task = super::serve_client(shared, stream::tcp_halves(tcp), peer, None, slot);
    Ok(std::mem::size_of_val(&task))
}

/// A server config with a fresh self-signed certificate for `name`, and a client config that
/// trusts that certificate only: real TLS between two ends of one process, for measuring and
/// for tests.
pub fn throwaway_tls(name: &str) -> io::Result<(rustls::ServerConfig, rustls::ClientConfig)> {
    let key = rcgen::KeyPair::generate().map_err(io::Error::other)?;
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .and_then(|params| params.self_signed(&key))
        .map_err(io::Error::other)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .map_err(io::Error::other)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).map_err(io::Error::other)?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((server, client))
}

/// Bytes of a TLS client connection's task once its handshake is done: the plain listener's
/// loop over the halves of the TLS stream (rustls's state sits behind the split's `Arc`; the
/// handshake ran in a task of its own). It was under 2 KiB too.
pub async fn tls_client_connection_task() -> io::Result<usize> {
    let shared = shared()?;
    let (server, client) = throwaway_tls("proxy.test")?;
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let tcp = TcpStream::connect(l.local_addr()?).await?;
    let name = ServerName::try_from("proxy.test").map_err(io::Error::other)?;
    let connecting = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, tcp);
    let (accepted, peer) = l.accept().await?;
    let accepting = tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(accepted);
    let (_client, tls) = tokio::join!(connecting, accepting);
    let slot = slot(&shared).await?;
    let identity = Some(Arc::new(PeerIdentity::default()));
    let task = super::serve_client(shared, stream::tls_halves(tls?), peer, identity, slot);
    Ok(std::mem::size_of_val(&task))
}

/// Bytes of an idle tunnel's relay future over real sockets.
pub async fn idle_relay() -> io::Result<usize> {
    super::tunnel::idle_relay_size().await
}
