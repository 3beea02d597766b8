//! A client connection as the request loop uses it: the two halves of plain TCP or of TLS.

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::tunnel::AsTcp;
use crate::http1::ClientReader;

/// The read half of a client connection the request loop can serve.
pub trait ClientRead: AsyncRead + AsTcp + Unpin + Send + Sized + 'static {
    /// Wait until the client sends again (or closes), holding no read buffer of ours while
    /// the connection idles: an app's pool may keep thousands of them open.
    fn idle_wait(reader: &mut ClientReader<Self>) -> impl Future<Output = io::Result<()>> + Send;
}

/// The write half of a client connection.
pub trait ClientWrite: AsyncWrite + AsTcp + Unpin + Send + 'static {}

impl<W: AsyncWrite + AsTcp + Unpin + Send + 'static> ClientWrite for W {}

/// A plain connection's halves. They stay sockets, so a tunnel between two of them splices.
/// `TCP_NODELAY` came with the socket from the listener ([`crate::accept::Acceptor::new`]).
pub fn tcp_halves(stream: TcpStream) -> (OwnedReadHalf, OwnedWriteHalf) {
    stream.into_split()
}

/// A TLS connection's halves share the stream behind tokio's split: that moves rustls's state
/// to the heap, and a tunnel copies in user space (the bytes pass through rustls anyway).
pub fn tls_halves(
    stream: TlsStream<TcpStream>,
) -> (
    ReadHalf<TlsStream<TcpStream>>,
    WriteHalf<TlsStream<TcpStream>>,
) {
    tokio::io::split(stream)
}

impl ClientRead for OwnedReadHalf {
    async fn idle_wait(reader: &mut ClientReader<OwnedReadHalf>) -> io::Result<()> {
        reader.get_ref().readable().await
    }
}

impl ClientRead for ReadHalf<TlsStream<TcpStream>> {
    async fn idle_wait(reader: &mut ClientReader<Self>) -> io::Result<()> {
        // Socket readiness says nothing here: a record may carry no data (a close_notify, a
        // key update), and rustls may already hold decrypted bytes. So read the first bytes
        // into the request buffer, which is allocated only once they are there.
        reader.wait_for_data_unbuffered().await.map(|_| ())
    }
}
