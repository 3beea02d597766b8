//! Whether a client whose request waits has hung up, seen without reading a byte it sent.
//!
//! A request can wait long before its answer: queued for a full pool (up to
//! `acquire_timeout`), on a dial (`connect_timeout`), for the response head
//! (`response_timeout`). A client that gives up meanwhile (its own timeout, a user who left)
//! would otherwise have its request sent all the same once a connection frees: a payment
//! nobody waits for any more, which the client, having seen a failure, may well send again.
//! And a sent one would hold its upstream connection until an answer nobody reads. nginx
//! ends such a request with 499, HAProxy's `abortonclose` drops it from its queue; here, a
//! request not yet sent never is, and a sent one lets its connection go.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

use super::tunnel::AsTcp;
use crate::http1::ClientReader;

/// Resolves once the client has closed its connection (FIN or RST, or TLS's `close_notify`)
/// with nothing more sent: the request was read whole and nothing follows it. A byte that does
/// follow (a pipelined request) means the client is there; this then never resolves, and past
/// that byte its end cannot be seen without consuming it.
///
/// A plain socket is peeked at: what follows stays in the kernel. A TLS stream is read (its
/// close arrives as a record), a few bytes on the stack, and what arrives goes to `client`'s
/// buffer, where the next request is read from: nothing is lost either way.
///
/// A FIN counts as hanging up, as it does for nginx and hyper: a client that half-closes and
/// still waits for its answer is rare; a payment sent for a client that left is not.
pub async fn hung_up<R: AsyncRead + AsTcp + Unpin>(client: &mut ClientReader<R>) {
    let gone = match client.get_ref().as_tcp() {
        Some(tcp) => peeked_end(tcp).await,
        None => !matches!(client.wait_for_data_unbuffered().await, Ok(true)),
    };
    if !gone {
        std::future::pending::<()>().await;
    }
}

/// Whether the next thing on `tcp` is its end (or an error), not a byte.
///
/// `poll_peek`, not `peek`: it waits in the socket's one reader slot, which the connection's
/// own reads use, rather than joining a list of waiters on every request (`peek`'s future:
/// ~850 instructions a request more, where this costs a fraction of it).
async fn peeked_end(tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let peeked = poll_fn(|cx| tcp.poll_peek(cx, &mut buf)).await;
    matches!(peeked, Ok(0) | Err(_))
}

/// `work`, unless `client` (when given) hangs up first: `None` then, and `work` is dropped.
///
/// The hang-up is looked at before `work` is first polled, so a request whose client is seen
/// gone then is not sent; after that, only when `work` is not done. A request served at
/// once thus looks once, when its send has gone out and it waits for the answer: a check of
/// the socket's readiness, cleared by the short read that ended the request, and the waker
/// left in its reader slot (the one the connection's reads use), with no system call.
/// Measured with `benches/load/instructions.sh`: a hand-written poll, `work` borrowed not
/// moved, and one look instead of one per wake-up cost a third of what `select!` over
/// `TcpStream::peek` did.
pub async fn unless_hung_up<R, F>(
    client: Option<&mut ClientReader<R>>,
    work: F,
) -> Option<F::Output>
where
    R: AsyncRead + AsTcp + Unpin,
    F: Future,
{
    let Some(client) = client else {
        return Some(work.await);
    };
    let mut work = pin!(work);
    let mut gone = pin!(hung_up(client));
    let mut looked = false;
    poll_fn(|cx| {
        let first = !std::mem::replace(&mut looked, true);
        if first && gone.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if !first && gone.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
    use tokio::net::tcp::OwnedReadHalf;
    use tokio::net::TcpListener;

    const LONG: Duration = Duration::from_secs(10);
    const SHORT: Duration = Duration::from_millis(200);

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// A client socket, and the proxy's reader of it.
    async fn plain() -> (TcpStream, ClientReader<OwnedReadHalf>) {
        let (client, server) = tcp_pair().await;
        let (rd, _) = server.into_split();
        (client, ClientReader::new(rd, 8192))
    }

    type TlsReader = ClientReader<ReadHalf<tokio_rustls::server::TlsStream<TcpStream>>>;

    /// A TLS client, and the proxy's reader of it as the TLS listener makes it.
    async fn tls() -> (tokio_rustls::client::TlsStream<TcpStream>, TlsReader) {
        let (server_config, client_config) =
            crate::proxy::layout::throwaway_tls("proxy.test").unwrap();
        let (client, server) = tcp_pair().await;
        let name = rustls::pki_types::ServerName::try_from("proxy.test").unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let (client, server) =
            tokio::join!(connector.connect(name, client), acceptor.accept(server));
        let (rd, _) = tokio::io::split(server.unwrap());
        (client.unwrap(), ClientReader::new(rd, 8192))
    }

    #[tokio::test]
    async fn a_close_or_a_reset_is_a_hang_up() {
        let (client, mut reader) = plain().await;
        drop(client);
        let seen = tokio::time::timeout(LONG, hung_up(&mut reader)).await;
        seen.expect("a FIN");
        let (client, mut reader) = plain().await;
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        let seen = tokio::time::timeout(LONG, hung_up(&mut reader)).await;
        seen.expect("an RST");
    }

    #[tokio::test]
    async fn a_client_still_there_or_sending_is_not_and_its_bytes_stay_unread() {
        let (mut client, mut reader) = plain().await;
        let quiet = tokio::time::timeout(SHORT, hung_up(&mut reader)).await;
        assert!(quiet.is_err(), "a quiet client is there");
        client.write_all(b"GET /next").await.unwrap();
        drop(client);
        // The pipelined bytes hide the FIN behind them: never resolved, and left in the kernel.
        let sent = tokio::time::timeout(SHORT, hung_up(&mut reader)).await;
        assert!(sent.is_err(), "a client that sent more is there");
        assert!(reader.buffered().is_empty());
        let (mut rd, _) = reader.into_parts();
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"GET /next");
    }

    #[tokio::test]
    async fn over_tls_a_close_is_a_hang_up_and_what_follows_is_kept() {
        let (mut client, mut reader) = tls().await;
        let quiet = tokio::time::timeout(SHORT, hung_up(&mut reader)).await;
        assert!(quiet.is_err(), "a quiet client is there");
        client.shutdown().await.unwrap(); // close_notify, then FIN
        let seen = tokio::time::timeout(LONG, hung_up(&mut reader)).await;
        seen.expect("close_notify");

        let (mut client, mut reader) = tls().await;
        client.write_all(b"GET /next").await.unwrap();
        client.flush().await.unwrap();
        let sent = tokio::time::timeout(SHORT, hung_up(&mut reader)).await;
        assert!(sent.is_err(), "a client that sent more is there");
        // Read through TLS, so kept in the buffer the next request is read from.
        assert!(b"GET /next".starts_with(reader.buffered()) && !reader.buffered().is_empty());
    }

    #[tokio::test]
    async fn the_work_wins_unless_the_client_hangs_up_first() {
        let (client, mut reader) = plain().await;
        assert_eq!(
            unless_hung_up(Some(&mut reader), async { 7 }).await,
            Some(7)
        );
        let unwatched: Option<&mut ClientReader<OwnedReadHalf>> = None;
        assert_eq!(unless_hung_up(unwatched, async { 7 }).await, Some(7));
        drop(client);
        let seen = tokio::time::timeout(LONG, hung_up(&mut reader)).await;
        seen.expect("a FIN");
        // Seen at the first look: work ready at once is not done.
        assert_eq!(unless_hung_up(Some(&mut reader), async { 7 }).await, None);
    }
}
