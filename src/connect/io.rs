//! The upstream byte stream: plain TCP or TLS over TCP, behind one `AsyncRead + AsyncWrite` type.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// An upstream connection's transport.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamIo {
    /// Have the calling thread's reactor watch the socket from now on, instead of the one it
    /// was registered with (another worker's: see [`crate::pool::Poolable::rehome`]).
    ///
    /// The socket is registered here under a second descriptor before the first one is
    /// deregistered there and closed: if registering fails, nothing has changed and the
    /// connection is as usable as before. The socket, its TLS session and its options stay the
    /// same; only the descriptor number changes.
    pub fn rehome(&mut self) -> io::Result<()> {
        let tcp = match self {
            UpstreamIo::Plain(s) => s,
            UpstreamIo::Tls(s) => s.get_mut().0,
        };
        let twin = std::net::TcpStream::from(tcp.as_fd().try_clone_to_owned()?);
        // Shares the file description, which is already non-blocking, as `from_std` needs.
        *tcp = TcpStream::from_std(twin)?;
        Ok(())
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// An echo server on a thread and runtime of its own, TLS when given a config; it serves
    /// `conns` connections at once and ends when they have.
    fn echo(tls: Option<rustls::ServerConfig>, conns: usize) -> SocketAddr {
        let std = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = std.local_addr().expect("addr");
        std.set_nonblocking(true).expect("nonblocking");
        let tls = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let l = TcpListener::from_std(std).expect("listener");
                let mut served = Vec::new();
                for _ in 0..conns {
                    let (tcp, _) = l.accept().await.expect("accept");
                    let tls = tls.clone();
                    served.push(tokio::spawn(async move {
                        let mut buf = [0u8; 64];
                        match tls {
                            Some(acceptor) => {
                                let mut s = acceptor.accept(tcp).await.expect("handshake");
                                while let Ok(n @ 1..) = s.read(&mut buf).await {
                                    s.write_all(&buf[..n]).await.expect("echo");
                                    s.flush().await.expect("flush");
                                }
                            }
                            None => {
                                let mut s = tcp;
                                while let Ok(n @ 1..) = s.read(&mut buf).await {
                                    s.write_all(&buf[..n]).await.expect("echo");
                                }
                            }
                        }
                    }));
                }
                for s in served {
                    let _ = s.await;
                }
            })
        });
        addr
    }

    async fn ping(io: &mut UpstreamIo) -> io::Result<[u8; 4]> {
        io.write_all(b"ping").await?;
        io.flush().await?;
        let mut back = [0u8; 4];
        io.read_exact(&mut back).await?;
        Ok(back)
    }

    /// Connections made on one runtime (a worker), whose runtime then stops: moved, each works
    /// on another; left where it was, its I/O fails with the reactor gone. That is the
    /// premise of `rehome`: a socket is watched only by the reactor it was registered with.
    #[test]
    fn a_moved_socket_is_watched_by_the_runtime_that_moved_it() {
        let addr = echo(None, 2);
        let first = runtime();
        let (mut moved, mut left) = first.block_on(async {
            let a = TcpStream::connect(addr).await.expect("connect");
            let b = TcpStream::connect(addr).await.expect("connect");
            (UpstreamIo::Plain(a), UpstreamIo::Plain(b))
        });
        drop(first);
        runtime().block_on(async {
            moved.rehome().expect("rehome");
            assert_eq!(&ping(&mut moved).await.expect("moved: works"), b"ping");
            assert!(
                ping(&mut left).await.is_err(),
                "not moved: its reactor is gone"
            );
        });
    }

    #[test]
    fn a_tls_connection_moves_with_its_session() {
        let (server, client) = crate::proxy::layout::throwaway_tls("origin.test").expect("tls");
        let addr = echo(Some(server), 1);
        let first = runtime();
        let mut io = first.block_on(async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from("origin.test").expect("name");
            let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .expect("handshake");
            let mut io = UpstreamIo::Tls(Box::new(tls));
            assert_eq!(&ping(&mut io).await.expect("before"), b"ping");
            io
        });
        drop(first);
        runtime().block_on(async {
            io.rehome().expect("rehome");
            assert_eq!(&ping(&mut io).await.expect("after the move"), b"ping");
        });
    }
}
