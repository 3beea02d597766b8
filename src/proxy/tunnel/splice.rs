//! Zero-copy tunnel bursts on Linux: splice(2) socket → pipe → socket, the bytes never in our memory.
//!
//! A pipe is two descriptors, so a tunnel takes one only for a burst and gives it back once
//! the source has been quiet for [`QUIET`]: thousands of idle tunnels hold no pipes.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::pipe::{self, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// How long a burst's pipe is kept while its source has nothing to read.
pub const QUIET: Duration = Duration::from_millis(500);

/// Bytes asked for per splice: the size the pipe is grown to (the default is 64 KiB).
///
/// A 1 MiB pipe took a quarter off the proxy's CPU per byte of a bulk download, but not one
/// byte a second more (curl was the slowest stage; RESULTS.md, issue 17), and a pipe's size
/// counts against the user's pipe budget (`fs.pipe-user-pages-soft`, 64 MiB by default)
/// whether it is filled or not: with 1 MiB pipes 64 bursting tunnel directions would use it
/// up, and every burst after them would be copied. 256 KiB keeps four times as many spliced.
const CHUNK: usize = 256 * 1024;

/// Pipe sizes tried after [`CHUNK`], largest first: an unprivileged process may not grow a
/// pipe past `fs.pipe-max-size`.
const SMALLER: [usize; 1] = [64 * 1024];

/// A pipe smaller than this moves too little per splice to be worth it: the user is past
/// `fs.pipe-user-pages-soft`, where the kernel hands out two-page pipes.
const MIN_PIPE: usize = 64 * 1024;

/// How a burst ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The source sent EOF.
    Eof,
    /// Nothing to read for [`QUIET`]: back to waiting with no pipe.
    Quiet,
}

/// A pipe for one burst; both ends close on drop.
pub struct Pipe {
    rd: OwnedFd,
    wr: OwnedFd,
    size: usize,
}

impl Pipe {
    /// A new non-blocking pipe, grown to [`CHUNK`] where the system allows; an error where
    /// it would be smaller than [`MIN_PIPE`] (the burst is then copied instead).
    pub fn new() -> io::Result<Pipe> {
        let (rd, wr) = pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // Best effort: past the per-user pipe memory limits the kernel refuses to grow it.
        let size = std::iter::once(CHUNK)
            .chain(SMALLER)
            .find_map(|want| pipe::fcntl_setpipe_size(&wr, want).ok())
            .map_or_else(|| pipe::fcntl_getpipe_size(&wr), Ok)?;
        if size < MIN_PIPE {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("a {size}-byte pipe: past the per-user pipe budget"),
            ));
        }
        Ok(Pipe { rd, wr, size })
    }
}

/// Move bytes from `from` to `to` until `from` sends EOF, goes quiet, or either side fails.
/// `moved(n)` is called for every `n` bytes delivered to `to`.
pub async fn burst(
    pipe: &Pipe,
    from: &TcpStream,
    to: &TcpStream,
    mut moved: impl FnMut(usize),
) -> io::Result<End> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing.
        let n = match from.try_io(Interest::READABLE, || {
            Ok(pipe::splice(from, None, &pipe.wr, None, pipe.size, flags)?)
        }) {
            Ok(0) => return Ok(End::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match tokio::time::timeout(QUIET, from.readable()).await {
                    Err(_) => return Ok(End::Quiet),
                    Ok(ready) => ready?,
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            match to.try_io(Interest::WRITABLE, || {
                Ok(pipe::splice(&pipe.rd, None, to, None, left, flags)?)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                Err(e) => return Err(e),
            }
        }
        moved(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// `len` bytes of a pattern (`i % modulus`), and a task writing them to `far` then EOF;
    /// the task returns the socket, so that it stays open until the test is done with it.
    fn send_then_eof(
        mut far: TcpStream,
        len: u32,
        modulus: u32,
    ) -> (Vec<u8>, tokio::task::JoinHandle<TcpStream>) {
        let data: Vec<u8> = (0..len).map(|i| (i % modulus) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            far.write_all(&sent).await.unwrap();
            far.shutdown().await.unwrap();
            far
        });
        (data, writer)
    }

    /// 8 MiB through a real socket pair, unchanged and counted, then EOF passed as `End::Eof`.
    #[tokio::test]
    async fn a_burst_moves_every_byte_and_ends_at_eof() {
        let (src_far, src) = pair().await;
        let (dst, mut dst_far) = pair().await;
        let (data, writer) = send_then_eof(src_far, 8 * 1024 * 1024, 253);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            dst_far.read_to_end(&mut got).await.unwrap();
            got
        });
        let pipe = Pipe::new().unwrap();
        let mut total = 0;
        let end = burst(&pipe, &src, &dst, |n| total += n).await.unwrap();
        assert_eq!(end, End::Eof);
        assert_eq!(total, data.len());
        drop(dst);
        let got = reader.await.unwrap();
        assert!(got == data, "bytes changed in transit");
        drop(writer.await.unwrap());
    }

    /// A destination that reads nothing for a while: the burst waits with a full pipe and
    /// full socket buffers, then delivers every byte once, counted once, and ends at EOF.
    #[tokio::test]
    async fn a_stalled_destination_gets_every_byte_once() {
        let (src_far, src) = pair().await;
        let (dst, mut dst_far) = pair().await;
        let (data, writer) = send_then_eof(src_far, 24 * 1024 * 1024, 241);
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 4096];
            loop {
                // Small reads, so that the destination's window opens a little at a time.
                let n = dst_far.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break got;
                }
                got.extend_from_slice(&chunk[..n]);
            }
        });
        let pipe = Pipe::new().unwrap();
        assert!(pipe.size >= MIN_PIPE, "{}", pipe.size);
        let (mut total, mut calls) = (0, 0);
        let end = burst(&pipe, &src, &dst, |n| {
            total += n;
            calls += 1;
        })
        .await
        .unwrap();
        assert_eq!(end, End::Eof);
        assert_eq!(total, data.len());
        assert!(calls > 1, "counted as it moved, not once at the end");
        drop(dst);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes changed in transit");
        drop(writer.await.unwrap());
    }

    /// A source that stops sending (but stays open) ends the burst as `Quiet`.
    #[tokio::test]
    async fn a_quiet_source_ends_the_burst() {
        let (mut src_far, src) = pair().await;
        let (dst, mut dst_far) = pair().await;
        src_far.write_all(b"hello").await.unwrap();
        let pipe = Pipe::new().unwrap();
        let mut total = 0;
        let end = burst(&pipe, &src, &dst, |n| total += n).await.unwrap();
        assert_eq!((end, total), (End::Quiet, 5));
        let mut got = [0u8; 5];
        dst_far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
