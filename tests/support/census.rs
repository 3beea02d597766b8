//! How many of an origin's connections are open as the kernel sees them, not as its tasks notice.
//!
//! An origin's task learns that its peer closed only when it next reads; counting connections
//! by their tasks therefore lags every close. The census instead keeps a handle on each
//! connection's socket and, at every accept, asks the kernel about each one it holds with a
//! non-blocking `MSG_PEEK`: 0 bytes means a FIN arrived, an error means an RST. On loopback a
//! closing socket's FIN or RST is delivered within its `close()`, so a peer that closes one
//! connection before dialing the next is never seen with both open.

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::wire::Wire;

/// The connections an origin holds, and the most ever open at once.
#[derive(Default)]
pub(super) struct Census {
    /// By connection id; an entry leaves before its socket is closed (see [`Tracked`]'s drop),
    /// so every socket peeked here is still the origin's.
    held: Mutex<HashMap<usize, Arc<TcpStream>>>,
    high_water: AtomicUsize,
}

impl Census {
    /// Count the connections open now that `stream` arrived (it included), raise the high-water
    /// mark, and hold `stream` in the census as long as the returned handle lives.
    pub fn admit(self: &Arc<Census>, id: usize, stream: TcpStream) -> Tracked {
        let stream = Arc::new(stream);
        let mut held = lock(&self.held);
        let open = held.values().filter(|s| peer_still_open(s)).count() + 1;
        self.high_water.fetch_max(open, Ordering::SeqCst);
        held.insert(id, stream.clone());
        Tracked {
            stream,
            id,
            census: Some(self.clone()),
        }
    }

    /// A connection the census does not count (the origin was not asked to).
    pub fn untracked(stream: TcpStream) -> Tracked {
        Tracked {
            stream: Arc::new(stream),
            id: 0,
            census: None,
        }
    }

    /// The most connections open at once, as seen at the accepts so far.
    pub fn high_water(&self) -> usize {
        self.high_water.load(Ordering::SeqCst)
    }

    /// Connections the origin holds whose peer has not closed them, as of now.
    pub fn open_now(&self) -> usize {
        lock(&self.held)
            .values()
            .filter(|s| peer_still_open(s))
            .count()
    }
}

/// False once the peer's FIN (with nothing unread before it) or RST has arrived.
///
/// Unread bytes hide a FIN behind them; the origin reads what it is sent promptly, and a peer
/// that sends and then closes before the origin read it counts as open a moment longer.
fn peer_still_open(stream: &TcpStream) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    // tokio's sockets are non-blocking: this never waits.
    match socket2::SockRef::from(stream).peek(&mut byte) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
        Err(_) => false,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An origin's connection, shared with its census; the census lets go of it before it closes.
pub(super) struct Tracked {
    stream: Arc<TcpStream>,
    id: usize,
    census: Option<Arc<Census>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Leave the census first; the socket closes when `stream` drops, after this.
        if let Some(census) = &self.census {
            lock(&census.held).remove(&self.id);
        }
    }
}

impl Wire for Tracked {
    fn tcp(&self) -> &TcpStream {
        &self.stream
    }
}

impl Wire for tokio_rustls::server::TlsStream<Tracked> {
    fn tcp(&self) -> &TcpStream {
        &self.get_ref().0.stream
    }
}

// Through a shared `TcpStream`: readiness, then a non-blocking try (which clears readiness on
// `WouldBlock`), as tokio's own split halves do.
impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write))
    }
}
