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

use std::future::Future;

use tokio::net::TcpStream;

/// Resolves once the client has closed its connection (FIN or RST) with nothing more sent: the
/// request was read whole and nothing follows it. A byte that does follow (a pipelined request,
/// a body not yet read) is left where it is, and this never resolves: the client is there, and
/// past that byte its end cannot be seen without consuming it.
///
/// A FIN counts as hanging up, as it does for nginx and hyper: a client that half-closes and
/// still waits for its answer is rare; a payment sent for a client that left is not.
pub async fn hung_up(client: &TcpStream) {
    let mut byte = [0u8; 1];
    match client.peek(&mut byte).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// `work`, unless `client` (when given) hangs up first: `None` then, and `work` is dropped.
/// The hang-up is looked at first, so a request whose client is seen gone when its send is
/// first polled is not sent. Without news from the client, a look is an atomic load: the
/// socket's readiness, cleared by the short read that ended the request.
pub async fn unless_hung_up<F: Future>(client: Option<&TcpStream>, work: F) -> Option<F::Output> {
    match client {
        None => Some(work.await),
        Some(client) => tokio::select! {
            biased;
            () = hung_up(client) => None,
            out = work => Some(out),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    const LONG: Duration = Duration::from_secs(10);
    const SHORT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn a_close_or_a_reset_is_a_hang_up() {
        let (client, server) = pair().await;
        drop(client);
        tokio::time::timeout(LONG, hung_up(&server))
            .await
            .expect("a FIN");
        let (client, server) = pair().await;
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        tokio::time::timeout(LONG, hung_up(&server))
            .await
            .expect("an RST");
    }

    #[tokio::test]
    async fn a_client_still_there_or_sending_is_not_and_nothing_is_read() {
        let (mut client, mut server) = pair().await;
        assert!(tokio::time::timeout(SHORT, hung_up(&server)).await.is_err());
        client.write_all(b"GET /next").await.unwrap();
        drop(client);
        // The pipelined bytes hide the FIN behind them: never resolved, and left unread.
        assert!(tokio::time::timeout(SHORT, hung_up(&server)).await.is_err());
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"GET /next");
    }

    #[tokio::test]
    async fn the_work_wins_unless_the_client_hangs_up_first() {
        let (client, server) = pair().await;
        assert_eq!(unless_hung_up(Some(&server), async { 7 }).await, Some(7));
        assert_eq!(unless_hung_up(None, async { 7 }).await, Some(7));
        drop(client);
        tokio::time::timeout(LONG, hung_up(&server))
            .await
            .expect("a FIN");
        // Seen at the first look: work ready at once is not done.
        assert_eq!(unless_hung_up(Some(&server), async { 7 }).await, None);
    }
}
