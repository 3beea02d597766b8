//! A proxy listener whose accepted connections are registered once, by the worker that serves them.
//!
//! tokio's `TcpListener::accept` registers each new socket with the accepting runtime's
//! reactor (an `epoll_ctl` ADD); handing it to a worker then took it out again (DEL) before
//! the worker added it to its own. Here the listening socket alone is watched by the accept
//! loop's runtime; `accept4` gives a non-blocking socket that no reactor knows yet, and
//! [`crate::workers::Placement::spawn`] registers it where it will be served. That is two
//! system calls fewer for every client connection, 2 of the 12 a connection-per-request
//! client costs (`strace -f` on the proxy, issue 17).

use std::io;
use std::net::{SocketAddr, TcpStream};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A listening socket, watched for readiness by the runtime it was made on.
pub struct Acceptor {
    listener: AsyncFd<mio::net::TcpListener>,
}

impl Acceptor {
    /// Take over a bound, listening, non-blocking socket (see [`crate::app::listen`]); must
    /// be called on the runtime that will wait on [`Acceptor::ready`].
    ///
    /// It gets `TCP_NODELAY`, which Linux copies to every socket it accepts: our writes are
    /// whole responses or tunnel bursts, which Nagle would only delay the ends of, and set
    /// here it costs no system call per connection.
    pub fn new(listener: std::net::TcpListener) -> io::Result<Acceptor> {
        socket2::SockRef::from(&listener).set_nodelay(true)?;
        let listener = mio::net::TcpListener::from_std(listener);
        // tokio 1.54 deprecates the safe constructor in favour of an `unsafe` one whose
        // contract is that the descriptor stays open and the same while registered (#8587);
        // this crate forbids `unsafe`. The contract holds here: the mio listener owns its
        // descriptor, moves into the `AsyncFd`, and is closed only when that is dropped.
        #[allow(deprecated)]
        let listener = AsyncFd::with_interest(listener, Interest::READABLE)?;
        Ok(Acceptor { listener })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.get_ref().local_addr()
    }

    /// Wait until a connection is pending; it stays pending (nothing is accepted here), so
    /// the caller can take a `max_client_connections` permit before it accepts.
    pub async fn ready(&self) -> io::Result<()> {
        self.listener.readable().await.map(drop)
    }

    /// The next pending connection, or `None` when there is none: a non-blocking socket
    /// registered with no reactor, and its peer. Finding the queue empty forgets the
    /// readiness, so the next [`Acceptor::ready`] waits for a new connection. An error
    /// (EMFILE) is the caller's.
    pub fn try_accept(&self) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        match self.listener.try_io(Interest::READABLE, |l| l.accept()) {
            Ok((stream, peer)) => Ok(Some((stream.into(), peer))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The listening socket, for its socket options (see [`crate::workers::steer`]).
impl std::os::fd::AsFd for Acceptor {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.listener.get_ref().as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// The next connection, waiting for one (as the accept loop does, less its permit).
    async fn accept(acceptor: &Acceptor) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            acceptor.ready().await?;
            if let Some(accepted) = acceptor.try_accept()? {
                return Ok(accepted);
            }
        }
    }

    /// Connections come out non-blocking and unregistered: one can be given to another
    /// runtime's reactor and works there.
    #[test]
    fn an_accepted_socket_is_non_blocking_and_goes_to_any_runtime() {
        let here = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let acceptor = here.block_on(async {
            let l = crate::app::listen("127.0.0.1:0".parse().unwrap()).unwrap();
            Acceptor::new(l.into_std().unwrap()).unwrap()
        });
        let addr = acceptor.local_addr().unwrap();
        for round in 0..3u8 {
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            let (stream, peer) = here.block_on(accept(&acceptor)).unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
            // Non-blocking: reading with nothing sent yet returns at once.
            let mut b = [0u8; 1];
            // And without Nagle, from the listener.
            assert!(socket2::SockRef::from(&stream).nodelay().unwrap());
            let e = (&stream).read(&mut b).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            let there = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            there.block_on(async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut stream = tokio::net::TcpStream::from_std(stream).unwrap();
                client.write_all(&[round]).unwrap();
                stream.read_exact(&mut b).await.unwrap();
                stream.write_all(&b).await.unwrap();
            });
            client.read_exact(&mut b).unwrap();
            assert_eq!(b, [round]);
        }
    }
}
