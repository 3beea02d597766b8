//! A keep-alive HTTP/1.1 origin that answers every request after a fixed delay (load benchmark).
//!
//! `cargo run --release --example slow_origin -- 127.0.0.1:18090 2000` listens on the address and
//! answers each request with a 3-byte body after the given number of milliseconds. It reads only
//! request heads (benchmark clients send no bodies) and prints `listening ADDR` once bound.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n";

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18090".into());
    let delay_ms: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2000);
    // portcullis' own listener: a deep accept queue, as the nginx origin has, since
    // 10 000 connections arrive in a burst.
    let addr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = portcullis::app::listen(addr)?;
    println!("listening {}", listener.local_addr()?);
    let delay = Duration::from_millis(delay_ms);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(_) => {
                // Out of descriptors: wait for some to close rather than spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        tokio::spawn(serve(stream, delay));
    }
}

async fn serve(mut stream: TcpStream, delay: Duration) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    loop {
        // Wait for one whole request head, then answer it after the delay.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..end);
        tokio::time::sleep(delay).await;
        if stream.write_all(RESPONSE).await.is_err() {
            return;
        }
    }
}
