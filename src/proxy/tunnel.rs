//! CONNECT: check, dial, answer 200, then copy bytes both ways until a side closes or the tunnel idles out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::inside::{self, Destination};
use super::outcome::{Mode, Outcome};
use super::stale::Via;
use super::{boxed, respond, Ctx};
use crate::connect::UpstreamIo;
use crate::error::{DenyReason, ProxyError};
use crate::http1::{ClientReader, RequestHead};
use crate::learn;
use crate::policy::{self, ConnectPlan, Want};
use crate::target::{self, Scheme, Target, TargetError};

#[cfg(target_os = "linux")]
mod splice;

/// What a quiet direction reads into while it waits: small enough to live in the tunnel's
/// task, so that an idle tunnel (an app's pool may hold hundreds) holds no copy buffer.
const PROBE: usize = 512;
/// Copy buffer of a busy direction: taken when a read fills the probe, given back as soon as
/// the source has nothing more ready.
const TUNNEL_BUF: usize = 256 * 1024;

/// A stream half that may be a plain TCP socket underneath: bursts between two such halves
/// are spliced in the kernel instead of copied through our memory.
pub trait AsTcp {
    fn as_tcp(&self) -> Option<&TcpStream> {
        None
    }

    /// Let go of a write half whose connection is done, without a shutdown of its own: a
    /// plain socket's FIN goes out when the socket closes (tokio's write half shuts the
    /// socket down when dropped, one more system call a connection). Anything else, a TLS
    /// stream's half included, is simply dropped: call it there only after a shutdown.
    fn close_at_drop(self)
    where
        Self: Sized,
    {
    }
}

impl AsTcp for OwnedReadHalf {
    fn as_tcp(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl AsTcp for OwnedWriteHalf {
    fn as_tcp(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }

    fn close_at_drop(self) {
        self.forget();
    }
}

impl<T> AsTcp for ReadHalf<T> {}
impl<T> AsTcp for WriteHalf<T> {}

/// The answer to a CONNECT once policy allowed it.
const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// What an allowed CONNECT was opened as.
enum Opened {
    /// A dialed byte tunnel. With `inside`, plain HTTP sent into it is served as origination
    /// to that destination instead (the dialed connection is then dropped).
    Relay {
        io: UpstreamIo,
        idle: Duration,
        inside: Option<Destination>,
        /// What was dialed: a stale reuse of the tunnel teaches this destination (SPEC §11).
        target: Target,
    },
    /// Answered by portcullis: the requests inside go through the pools.
    Inside(Destination),
    /// Answered by portcullis, which then completes the client's TLS as the destination
    /// (SPEC §9); the requests inside go through the pools.
    Intercept(Destination),
}

/// Serve a CONNECT request; the client connection is consumed either way.
///
/// The head comes boxed: a future keeps room for its arguments for its whole life, and the
/// head's 312 bytes would be part of every idle tunnel (taking its state machine past 4 KiB,
/// into the allocator's next size class).
pub async fn serve<R, W>(
    ctx: &Ctx,
    head: Box<RequestHead>,
    reader: R,
    leftover: BytesMut,
    mut writer: W,
) where
    R: AsyncRead + AsTcp + Unpin + Send,
    W: AsyncWrite + AsTcp + Unpin + Send,
{
    let method = Method::CONNECT;
    let mut outcome = Outcome::new(Mode::Tunnel, Instant::now(), Some(&method), "");
    let opened = open(ctx, &head, &mut outcome).await;
    let version = head.version;
    // The head's bytes share the client's read buffer: a tunnel that idles should not keep it.
    drop(head);
    let opened = match opened {
        Ok(opened) => opened,
        Err(e) => {
            outcome.bytes_out = respond::error(ctx, &mut writer, version, &e, true).await;
            outcome.record(ctx, e.status(), Some(&e));
            return;
        }
    };
    let m = &ctx.shared.metrics;
    let upstream = outcome.upstream.clone();
    let name = upstream.as_deref().map_or("none", |u| u.name.as_str());
    let active = m.tunnels_active.with_label_values(&[name]);
    active.inc();
    let mut error = None;
    if writer.write_all(ESTABLISHED).await.is_ok() {
        let max_head = ctx.config.proxy.max_header_bytes;
        match opened {
            Opened::Intercept(dest) => {
                outcome.mode = dest.mode;
                let client = std::io::Cursor::new(leftover).chain(reader);
                // Boxed: the handshake's state would otherwise be part of every tunnel's
                // future, plain relays included, for their whole life (~2.6 KiB an idle tunnel).
                error = boxed(|| intercepted(ctx, dest, client, writer, name)).await;
            }
            Opened::Inside(dest) => {
                outcome.mode = dest.mode;
                let reader = ClientReader::with_buffered(reader, leftover, max_head);
                boxed(|| inside::serve(ctx, dest, reader, writer)).await;
            }
            Opened::Relay {
                io,
                idle,
                inside,
                target,
            } => {
                let mut reader = ClientReader::with_buffered(reader, leftover, max_head);
                let plain_http = match inside {
                    Some(_) => sends_plain_http(&mut reader, idle).await,
                    None => false,
                };
                match inside {
                    Some(dest) if plain_http => {
                        drop(io);
                        outcome.mode = dest.mode;
                        boxed(|| inside::serve(ctx, dest, reader, writer)).await;
                    }
                    _ => {
                        let (reader, leftover) = reader.into_parts();
                        let up = Moved::new(m.tunnel_bytes.with_label_values(&[name, "upstream"]));
                        let down = Moved::new(m.tunnel_bytes.with_label_values(&[name, "client"]));
                        let on_stale = |d| {
                            if let Some(u) = &upstream {
                                super::stale::record(&ctx.shared, u, &target, d, Via::Tunnel);
                            }
                        };
                        let watch = Watch {
                            idle,
                            on_stale: &on_stale,
                        };
                        relay(reader, leftover, writer, io, watch, &up, &down).await;
                        outcome.bytes_in = up.total();
                        outcome.bytes_out = down.total();
                    }
                }
            }
        }
    }
    active.dec();
    outcome.record(ctx, StatusCode::OK, error.as_ref());
}

/// Complete the client's TLS as the destination (SPEC §9) and serve the requests inside through
/// the pools; the error of a failed handshake, for the CONNECT's access line.
async fn intercepted<R, W>(
    ctx: &Ctx,
    dest: Destination,
    client: R,
    writer: W,
    upstream: &str,
) -> Option<ProxyError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let io = tokio::io::join(client, writer);
    let timeout = ctx.config.proxy.header_read_timeout;
    let accepted = ctx
        .shared
        .intercept
        .accept(io, &dest.host, upstream, ctx.peer, timeout)
        .await;
    match accepted {
        Ok(tls) => {
            let (rd, wr) = tokio::io::split(tls);
            let reader = ClientReader::new(rd, ctx.config.proxy.max_header_bytes);
            boxed(|| inside::serve(ctx, dest, reader, wr)).await;
            None
        }
        Err(e) => Some(ProxyError::InterceptHandshake {
            result: e.result().label(),
            detail: e.to_string(),
        }),
    }
}

/// Whether the client's first bytes in the tunnel are a plain-text HTTP request (a method
/// token) rather than a TLS handshake. Waits at most `idle` for them; they stay buffered.
async fn sends_plain_http<R: AsyncRead + Unpin>(
    reader: &mut ClientReader<R>,
    idle: Duration,
) -> bool {
    match tokio::time::timeout(idle, reader.wait_for_data()).await {
        Ok(Ok(true)) => reader
            .buffered()
            .first()
            .is_some_and(u8::is_ascii_uppercase),
        _ => false,
    }
}

/// Policy, then the dial or the plan that needs none.
async fn open(
    ctx: &Ctx,
    head: &RequestHead,
    outcome: &mut Outcome<'_>,
) -> Result<Opened, ProxyError> {
    if ctx.draining {
        return Err(ProxyError::ShuttingDown);
    }
    let (host, port) = target::parse_connect(&head.target).map_err(|e| match e {
        TargetError::MissingPort => {
            ProxyError::bad_request("CONNECT needs host:port, e.g. CONNECT api.example.com:443")
        }
        other => ProxyError::bad_request(other.to_string()),
    })?;
    outcome.host = Some(host.clone());
    let auth = head.headers.get(http::header::PROXY_AUTHORIZATION);
    let allowed = ctx.decide(auth, &host, Want::Tunnel { port }, outcome)?;
    let upstream = &allowed.upstream;
    let plan = policy::connect_plan(upstream, port).ok_or_else(|| {
        ProxyError::denied(
            DenyReason::Port,
            format!("port {port} is not allowed for {host}"),
        )
    })?;
    // Plain HTTP inside is served as the absolute-form request `http://host[:port]/…`.
    let inside = || Destination {
        mode: Mode::Forward,
        scheme: Scheme::Http,
        host: host.clone(),
        port,
        auth: auth.cloned(),
    };
    // Answered without dialing now: the destination is checked as a dial would check it.
    let check = |dialed: u16, outcome: &mut Outcome<'_>| {
        outcome.port = dialed;
        let deadline = Instant::now() + upstream.settings.connect_timeout;
        ctx.shared.connector.resolve(&host, upstream, deadline)
    };
    match plan {
        ConnectPlan::Originate { port: dialed } => {
            check(dialed, outcome).await?;
            Ok(Opened::Inside(inside()))
        }
        ConnectPlan::Intercept => {
            check(port, outcome).await?;
            Ok(Opened::Intercept(Destination {
                mode: Mode::Intercept,
                scheme: Scheme::Https,
                ..inside()
            }))
        }
        ConnectPlan::Tunnel { or_originate } => {
            outcome.attempts = 1;
            let dialed = ctx.shared.connector.dial(&allowed.target, upstream).await?;
            // Below what this destination taught about its remote idle limit (SPEC §11).
            let target = &allowed.target;
            let learned = ctx
                .shared
                .pools
                .learned
                .limit(&upstream.name, &target.host, target.port);
            Ok(Opened::Relay {
                io: dialed.io,
                idle: learn::effective(upstream.settings.tunnel_idle_timeout, None, learned),
                inside: or_originate.map(|_| inside()),
                target: allowed.target.clone(),
            })
        }
    }
}

/// How a relay watches its tunnel.
#[derive(Clone, Copy)]
struct Watch<'a> {
    /// No byte either way for this long ends the tunnel.
    idle: Duration,
    /// Told, as soon as it happens, how long the tunnel had been idle when the upstream reset
    /// it as a stale reuse: the first bytes after a quiet spell were answered with a reset
    /// (SPEC §11).
    on_stale: &'a (dyn Fn(Duration) + Sync),
}

/// Copy both ways. A side's EOF is passed on as a half-close; the tunnel ends when both
/// directions are done, or when no byte has moved either way for `watch.idle`.
/// Bytes moved client→upstream are added to `up_count`, upstream→client to `down_count`.
async fn relay<R, W>(
    client_rd: R,
    leftover: BytesMut,
    client_wr: W,
    upstream: UpstreamIo,
    watch: Watch<'_>,
    up_count: &Moved,
    down_count: &Moved,
) where
    R: AsyncRead + AsTcp + Unpin + Send,
    W: AsyncWrite + AsTcp + Unpin + Send,
{
    let (client, counts) = ((client_rd, leftover, client_wr), (up_count, down_count));
    match upstream {
        UpstreamIo::Plain(tcp) => relay_halves(client, tcp.into_split(), watch, counts).await,
        tls @ UpstreamIo::Tls(_) => {
            relay_halves(client, tokio::io::split(tls), watch, counts).await
        }
    }
}

async fn relay_halves<R, W, UR, UW>(
    (mut client_rd, leftover, mut client_wr): (R, BytesMut, W),
    (mut up_rd, mut up_wr): (UR, UW),
    Watch { idle, on_stale }: Watch<'_>,
    (up_count, down_count): (&Moved, &Moved),
) where
    R: AsyncRead + AsTcp + Unpin + Send,
    W: AsyncWrite + AsTcp + Unpin + Send,
    UR: AsyncRead + AsTcp + Unpin + Send,
    UW: AsyncWrite + AsTcp + Unpin + Send,
{
    let epoch = Instant::now();
    // Milliseconds since `epoch`: the last byte either way, and the quiet spell it ended.
    let last = AtomicU64::new(0);
    let quiet_before_last = AtomicU64::new(0);
    let touch = |last: &AtomicU64| {
        let now = epoch.elapsed().as_millis() as u64;
        let before = last.swap(now, Ordering::Relaxed);
        quiet_before_last.store(now.saturating_sub(before), Ordering::Relaxed);
    };
    // The two directions are built inside the join, not bound first: futures captured by an
    // async block keep their own slot beside the join's copy, doubling every idle tunnel.
    let both = async {
        tokio::join!(
            async {
                if !leftover.is_empty() {
                    if up_wr.write_all(&leftover).await.is_err() {
                        return;
                    }
                    up_count.add(leftover.len());
                }
                drop(leftover);
                pump(&mut client_rd, &mut up_wr, up_count, || touch(&last)).await;
            },
            async {
                let reset = pump(&mut up_rd, &mut client_wr, down_count, || touch(&last)).await;
                // Judged now, not when the other direction is done too.
                let now = epoch.elapsed().as_millis() as u64;
                let quiet_now = now.saturating_sub(last.load(Ordering::Relaxed));
                let before = quiet_before_last.load(Ordering::Relaxed);
                let stale = learn::tunnel_stale_idle(
                    Duration::from_millis(before),
                    Duration::from_millis(quiet_now),
                );
                if let Some(d) = stale.filter(|_| reset) {
                    // Now: the client may keep its side open long after.
                    on_stale(d);
                }
            },
        )
    };
    let watchdog = async {
        loop {
            let quiet_since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = epoch + quiet_since + idle;
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        _ = both => {}
        _ = watchdog => {
            tracing::debug!(idle_ms = idle.as_millis() as u64, "tunnel idle timeout: closing both sides");
        }
    }
}

/// Bytes moved one way: a running total for the access log, and the metric, counted as they
/// move so that a long-lived tunnel shows its traffic before it closes.
struct Moved {
    total: AtomicU64,
    metric: prometheus::IntCounter,
}

impl Moved {
    fn new(metric: prometheus::IntCounter) -> Self {
        Moved {
            total: AtomicU64::new(0),
            metric,
        }
    }

    fn add(&self, n: usize) {
        self.total.fetch_add(n as u64, Ordering::Relaxed);
        self.metric.inc_by(n as u64);
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Copy one direction until EOF or an error, then pass the EOF on as a half-close. Returns
/// whether the source was reset while this direction waited quietly for it (a stale reuse,
/// when the other direction's bytes were what the reset answered).
async fn pump<R, W>(rd: &mut R, wr: &mut W, moved: &Moved, touch: impl Fn()) -> bool
where
    R: AsyncRead + AsTcp + Unpin,
    W: AsyncWrite + AsTcp + Unpin,
{
    let mut probe = [0u8; PROBE];
    let mut buf = BytesMut::new();
    let mut reset = false;
    loop {
        if buf.capacity() == 0 {
            // What was written must be on its way before we wait: a TLS writer (rustls) may
            // hold bytes it took while the socket was full until it is flushed.
            if wr.flush().await.is_err() {
                break;
            }
            // Quiet: wait for bytes holding only the probe.
            let n = match rd.read(&mut probe).await {
                Ok(0) => break,
                Err(e) => {
                    reset = e.kind() == std::io::ErrorKind::ConnectionReset;
                    break;
                }
                Ok(n) => n,
            };
            touch();
            if n < PROBE {
                if wr.write_all(&probe[..n]).await.is_err() {
                    break;
                }
                moved.add(n);
                continue;
            }
            // A full probe: a burst is arriving. Between two plain sockets it is spliced.
            #[cfg(target_os = "linux")]
            if rd.as_tcp().is_some() && wr.as_tcp().is_some() {
                // No descriptors for a pipe right now: this burst is copied instead.
                if let Ok(pipe) = splice::Pipe::new() {
                    if wr.write_all(&probe).await.is_err() {
                        break;
                    }
                    moved.add(PROBE);
                    let (Some(from), Some(to)) = (rd.as_tcp(), wr.as_tcp()) else {
                        break;
                    };
                    // Boxed: its state exists only during a burst, not in every idle tunnel.
                    let end = Box::pin(splice::burst(&pipe, from, to, |n| {
                        touch();
                        moved.add(n);
                    }))
                    .await;
                    match end {
                        Ok(splice::End::Quiet) => continue,
                        Ok(splice::End::Eof) | Err(_) => break,
                    }
                }
            }
            // Otherwise take the copy buffer for it.
            buf.reserve(TUNNEL_BUF);
            buf.extend_from_slice(&probe);
        }
        // Busy: take whatever is ready now, without waiting.
        let eof = match ready_now(rd.read_buf(&mut buf)).await {
            Some(Ok(0)) | Some(Err(_)) => true,
            Some(Ok(_)) => {
                touch();
                false
            }
            None => false,
        };
        if buf.is_empty() {
            // Ran dry: give the buffer back while this direction is quiet.
            buf = BytesMut::new();
        } else {
            if wr.write_all(&buf).await.is_err() {
                break;
            }
            moved.add(buf.len());
            buf.clear();
        }
        if eof {
            break;
        }
    }
    let _ = wr.shutdown().await;
    reset
}

/// Poll `f` once: its output if it is ready now, `None` if it would have to wait.
async fn ready_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match f.as_mut().poll(cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// The size of an idle tunnel's relay future over real sockets, which is most of what an idle
/// tunnel costs: printed by `benches/layout.rs` (through `proxy::layout`), not asserted, as it
/// moves with the compiler. It once held both directions twice (captured beside the join's
/// copy, 3.7 KiB); built inside the join it was ~2.2 KiB.
pub(super) async fn idle_relay_size() -> std::io::Result<usize> {
    use tokio::net::TcpListener;
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let client = TcpStream::connect(l.local_addr()?).await?;
    let (upstream, _) = l.accept().await?;
    let (rd, wr) = client.into_split();
    let counter = || prometheus::IntCounter::new("layout_bytes", "unexported").map(Moved::new);
    let (up, down) = (
        counter().map_err(std::io::Error::other)?,
        counter().map_err(std::io::Error::other)?,
    );
    let watch = Watch {
        idle: Duration::from_secs(30),
        on_stale: &|_| {},
    };
    let relay = relay(
        rd,
        BytesMut::new(),
        wr,
        UpstreamIo::Plain(upstream),
        watch,
        &up,
        &down,
    );
    Ok(std::mem::size_of_val(&relay))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, DuplexStream};

    impl AsTcp for DuplexStream {}
    impl<W> AsTcp for tokio::io::BufWriter<W> {}

    impl Watch<'static> {
        /// Ends at `idle`; stale reuses go unheard.
        fn quiet(idle: Duration) -> Self {
            Watch {
                idle,
                on_stale: &|_| {},
            }
        }
    }

    /// A byte counter on a metric that no registry exports.
    fn detached() -> Moved {
        let metric = prometheus::IntCounter::new("test_bytes", "test").expect("valid metric");
        Moved::new(metric)
    }

    /// A 1 MiB burst (bulk path) and a trickle of small writes (probe path) arrive intact and
    /// counted, and the source's EOF reaches the destination as a shutdown.
    #[tokio::test]
    async fn pump_copies_bursts_and_trickles_and_passes_eof_on() {
        let burst: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        let (mut src_far, mut src) = duplex(256 * 1024);
        let (mut dst, mut dst_far) = duplex(256 * 1024);
        let moved = detached();
        let touches = AtomicU64::new(0);
        let expected = {
            let mut e = burst.clone();
            for i in 0..50u8 {
                e.extend_from_slice(&[i; 3]);
            }
            e
        };
        let writer = async {
            src_far.write_all(&burst).await.unwrap();
            for i in 0..50u8 {
                src_far.write_all(&[i; 3]).await.unwrap();
                tokio::task::yield_now().await;
            }
            drop(src_far);
        };
        let reader = async {
            let mut got = Vec::new();
            dst_far.read_to_end(&mut got).await.unwrap();
            got
        };
        let pumping = pump(&mut src, &mut dst, &moved, || {
            touches.fetch_add(1, Ordering::Relaxed);
        });
        // The pump's shutdown is what ends the reader's read_to_end.
        let (_, got, _) = tokio::join!(writer, reader, pumping);
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes changed in transit");
        assert_eq!(moved.total(), expected.len() as u64);
        assert_eq!(moved.metric.get(), expected.len() as u64);
        assert!(touches.load(Ordering::Relaxed) > 0);
    }

    /// Bytes written are flushed before the pump waits for more: a writer that holds what it
    /// took until flushed (rustls on a full socket, here a `BufWriter`) must not keep the end
    /// of a response while the source, waiting for the reply, sends nothing more.
    #[tokio::test]
    async fn pump_flushes_before_it_waits() {
        let (mut src_far, mut src) = duplex(64 * 1024);
        let (dst, mut dst_far) = duplex(64 * 1024);
        let mut dst = tokio::io::BufWriter::new(dst);
        let moved = detached();
        let pumping = pump(&mut src, &mut dst, &moved, || {});
        let exchange = async {
            src_far.write_all(b"the whole response").await.unwrap();
            let mut got = [0u8; 18];
            let read = tokio::time::timeout(Duration::from_secs(5), dst_far.read_exact(&mut got));
            let outcome = read.await.map(|r| r.map(|_| got));
            drop(src_far);
            outcome
        };
        let (_, got) = tokio::join!(pumping, exchange);
        let got = got
            .expect("the bytes arrive while the source is quiet")
            .unwrap();
        assert_eq!(&got, b"the whole response");
    }

    /// Real sockets on both sides (the spliced path): 4 MiB each way, a pause long enough for
    /// a burst to give its pipe back, then more bytes, half-closes passed on, counts exact.
    #[tokio::test]
    async fn relay_between_two_sockets_splices_bursts_intact() {
        use tokio::net::{TcpListener, TcpStream};
        let up_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up_l.local_addr().unwrap();
        let big = |seed: u32| -> Vec<u8> {
            (0..4 * 1024 * 1024u32)
                .map(|i| (i.wrapping_mul(seed) % 251) as u8)
                .collect()
        };
        let (to_origin, to_app) = (big(7), big(13));
        let origin_sends = to_app.clone();
        let origin = tokio::spawn(async move {
            let (mut s, _) = up_l.accept().await.unwrap();
            s.write_all(&origin_sends).await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        let client_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client_addr = client_l.local_addr().unwrap();
        let mut app = TcpStream::connect(client_addr).await.unwrap();
        let (proxy_side, _) = client_l.accept().await.unwrap();
        let upstream = TcpStream::connect(up_addr).await.unwrap();
        let tunnel = tokio::spawn(async move {
            let (rd, wr) = proxy_side.into_split();
            let (up, down) = (detached(), detached());
            relay(
                rd,
                BytesMut::new(),
                wr,
                UpstreamIo::Plain(upstream),
                Watch::quiet(Duration::from_secs(30)),
                &up,
                &down,
            )
            .await;
            (up.total(), down.total())
        });
        let (mut app_rd, mut app_wr) = app.split();
        let sending = async {
            app_wr.write_all(&to_origin[..1 << 20]).await.unwrap();
            // Quiet past the splice burst's limit: the next bytes start a new burst.
            tokio::time::sleep(splice::QUIET + Duration::from_millis(200)).await;
            app_wr.write_all(&to_origin[1 << 20..]).await.unwrap();
            app_wr.shutdown().await.unwrap();
        };
        let receiving = async {
            let mut back = Vec::new();
            app_rd.read_to_end(&mut back).await.unwrap();
            back
        };
        let ((), back) = tokio::join!(sending, receiving);
        assert!(back == to_app, "origin→app bytes changed");
        let got = origin.await.unwrap();
        assert!(got == to_origin, "app→origin bytes changed");
        let n = to_origin.len() as u64;
        assert_eq!(tunnel.await.unwrap(), (n, n));
    }

    /// The whole relay over real sockets: leftover bytes first, both directions, half-closes,
    /// byte counts; and a tunnel with no traffic ends at the idle limit.
    #[tokio::test]
    async fn relay_moves_bytes_both_ways_and_idles_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let origin = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&vec![7u8; 200_000]).await.unwrap();
            got
        });
        let upstream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client_app, client_proxy) = duplex(64 * 1024);
        let (proxy_rd, proxy_wr) = tokio::io::split(client_proxy);
        let (mut app_rd, mut app_wr) = tokio::io::split(client_app);
        let tunnel = tokio::spawn(async move {
            let (up, down) = (detached(), detached());
            let idle = Duration::from_secs(30);
            let early = BytesMut::from(&b"early"[..]);
            relay(
                proxy_rd,
                early,
                proxy_wr,
                UpstreamIo::Plain(upstream),
                Watch::quiet(idle),
                &up,
                &down,
            )
            .await;
            (up.total(), down.total())
        });
        app_wr.write_all(&vec![1u8; 100_000]).await.unwrap();
        app_wr.shutdown().await.unwrap();
        let mut back = Vec::new();
        app_rd.read_to_end(&mut back).await.unwrap();
        let sent = origin.await.unwrap();
        assert_eq!(&sent[..5], b"early");
        assert_eq!(sent.len(), 100_005);
        assert_eq!(back.len(), 200_000);
        assert_eq!(tunnel.await.unwrap(), (100_005, 200_000));

        // No bytes either way: the watchdog closes the tunnel.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _origin = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(s);
        });
        let upstream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_app, proxy_side) = duplex(1024);
        let (rd, wr) = tokio::io::split(proxy_side);
        let started = Instant::now();
        let (up, down) = (detached(), detached());
        let idle = Duration::from_millis(300);
        relay(
            rd,
            BytesMut::new(),
            wr,
            UpstreamIo::Plain(upstream),
            Watch::quiet(idle),
            &up,
            &down,
        )
        .await;
        assert_eq!((up.total(), down.total()), (0, 0));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(10),
            "{took:?}"
        );
    }
}
