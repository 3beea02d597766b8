//! The proxy listener: accept loop, connection limit, and the per-client-connection request loop.

pub mod access;
pub mod forward;
pub mod gone;
pub mod headers;
pub mod inside;
#[doc(hidden)]
pub mod layout;
pub mod limit;
pub mod outcome;
pub mod respond;
pub mod stale;
pub mod stall;
pub mod stream;
pub mod tls;
pub mod tunnel;
pub mod wait;

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Version};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{timeout, Instant};
use tracing::Instrument;

use crate::accept::Acceptor;
use crate::config::Config;
use crate::error::ProxyError;
use crate::http1::{ClientReader, HeadError};
use crate::metrics::Metrics;
use crate::policy::identity::PeerIdentity;
use crate::policy::{self, Allowed, Caller, Want};
use crate::server_tls::ServerTls;
use crate::state::{Phase, Shared};
use crate::target::Host;
use crate::workers::steer::{self, Steer, Steering};
use crate::workers::{self, Placement};
use limit::ClientLimit;
use outcome::{Mode, Outcome};
use stream::{ClientRead, ClientWrite};

/// One client connection's view: shared state, the config snapshot, and who is asking.
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub config: Arc<Config>,
    /// The config swap count `config` was read at ([`Shared::config_epoch`]).
    config_epoch: u64,
    pub peer: SocketAddr,
    /// The verified client certificate's identities (TLS listener with `client_ca`).
    pub identity: Option<Arc<PeerIdentity>>,
    pub draining: bool,
}

impl Ctx {
    /// The context for the first request of a connection: the config and phase as they are now.
    fn now(shared: &Arc<Shared>, peer: SocketAddr, identity: Option<Arc<PeerIdentity>>) -> Ctx {
        let config_epoch = shared.config_epoch();
        Ctx {
            shared: shared.clone(),
            config: shared.config(),
            config_epoch,
            peer,
            identity,
            draining: shared.draining(),
        }
    }

    /// The same client, as [`Ctx::refresh`] leaves it.
    pub fn refreshed(&self) -> Ctx {
        let mut ctx = Ctx {
            shared: self.shared.clone(),
            config: self.config.clone(),
            config_epoch: self.config_epoch,
            peer: self.peer,
            identity: self.identity.clone(),
            draining: self.draining,
        };
        ctx.refresh();
        ctx
    }

    /// Ready for the same client's next request: the config and phase as they are now. The
    /// config is read again only when it was swapped since (two atomic loads otherwise, where
    /// a read lock and a reference count are shared by every connection of both workers).
    pub fn refresh(&mut self) {
        let epoch = self.shared.config_epoch();
        if epoch != self.config_epoch {
            self.config = self.shared.config();
            self.config_epoch = epoch;
        }
        self.draining = self.shared.draining();
    }

    /// Who is asking, as policy sees it.
    pub fn caller(&self) -> Caller<'_> {
        Caller {
            ip: self.peer.ip(),
            cert: self.identity.as_deref(),
        }
    }

    /// Ask policy about a request for `host` carrying `auth` (its `Proxy-Authorization`),
    /// noting in `out` who asked, which upstream allowed it and the port dialed — or, when
    /// refused, the port that would have been.
    pub fn decide(
        &self,
        auth: Option<&http::HeaderValue>,
        host: &Host,
        want: Want,
        out: &mut Outcome<'_>,
    ) -> Result<Allowed, ProxyError> {
        let auth = auth.map(http::HeaderValue::as_bytes);
        out.port = policy::dial_port(&self.config, host, want);
        let allowed = policy::decide(&self.config, self.caller(), auth, host, want)?;
        out.upstream = Some(allowed.upstream.clone());
        out.client_name.clone_from(&allowed.client);
        out.port = allowed.target.port;
        Ok(allowed)
    }
}

/// Whether the client connection may carry another request, and how it ends if not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    KeepAlive,
    /// Close, first reading and discarding what the client may still send (`linger`).
    Close,
    /// Close once our FIN is out: the client asked to close and all it sent was read, so it
    /// sends nothing more (RFC 9112 §9.6) and there is nothing to wait for ([`Flow::ending`]).
    CloseAsked,
}

impl Flow {
    /// How a connection that `flow` closes ends: [`Flow::CloseAsked`] when the client asked
    /// to close (`Connection: close`, or HTTP/1.0 without keep-alive) and its request body was
    /// read to the end; otherwise as `flow` says.
    pub fn ending(self, client_keep_alive: bool, body_done: bool) -> Flow {
        match self {
            Flow::Close if !client_keep_alive && body_done => Flow::CloseAsked,
            other => other,
        }
    }
}

/// The proxy listeners: plain, and TLS when `tls_listen` is set, with the material it was
/// bound with (a reload that drops `tls_listen` leaves that to the restart).
pub struct Listeners {
    pub plain: Acceptor,
    pub tls: Option<(Acceptor, ServerTls)>,
}

impl Listeners {
    /// Steer new connections of both listening groups (see [`crate::workers::steer`]).
    fn steer(&self, steering: &mut Steering, to: Steer) -> std::io::Result<()> {
        let mut fds: Vec<&dyn std::os::fd::AsFd> = vec![&self.plain];
        if let Some((tls, _)) = &self.tls {
            fds.push(tls);
        }
        steering.apply(&fds, to)
    }

    /// [`Listeners::steer`] to a change the loads called for, if any. A failure leaves the
    /// steering as it was, to be tried again at the next accept or tick (it worked at the
    /// start, so this is rare).
    fn resteer(&self, steering: &mut Steering, to: Option<Steer>) {
        if let Some(to) = to {
            if let Err(e) = self.steer(steering, to) {
                tracing::debug!(error = %e, "cannot change how new connections are steered");
            }
        }
    }

    /// Watch bound, listening sockets from this runtime (the one that will accept on them).
    pub fn new(
        plain: std::net::TcpListener,
        tls: Option<(std::net::TcpListener, ServerTls)>,
    ) -> std::io::Result<Listeners> {
        Ok(Listeners {
            plain: Acceptor::new(plain)?,
            tls: match tls {
                Some((l, server)) => Some((Acceptor::new(l)?, server)),
                None => None,
            },
        })
    }
}

/// Accept on this worker's proxy listeners until draining begins (each worker runs one of
/// these loops, see [`crate::app::start_on`]). Each connection holds a permit of `limit`,
/// taken only once a connection is pending: a loop whose listeners are quiet holds none, so
/// at the limit every pending connection, whichever worker's listener the kernel gave it to,
/// waits in the same line for the next free permit (the kernel's backlogs hold them
/// meanwhile). The permit goes to whichever of the loop's two listeners had a connection.
pub async fn run(
    listeners: Listeners,
    shared: Arc<Shared>,
    limit: Arc<ClientLimit>,
    placement: Placement,
    errors: Arc<AcceptErrors>,
    steering: Option<Steering>,
) {
    let draining = shared.phase.reached(Phase::Draining);
    tokio::pin!(draining);
    // The first worker's loop steers where new connections go (see `workers::steer`), and
    // looks again every tick (a timer made here, on the worker whose loop waits on it), but
    // for the quiet spells, when there is nothing to look at until its next accept.
    let mut steering = steering.and_then(|mut s| match listeners.steer(&mut s, Steer::First) {
        Ok(()) => Some((s, None::<tokio::time::Interval>)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot steer new connections to the first worker; the kernel spreads them");
            None
        }
    });
    // A reload that drops tls_listen takes effect on restart, like any listen address: until
    // then the listener keeps the last certificate it had.
    let mut tls_material = listeners.tls.as_ref().map(|(_, m)| m.clone());
    let tls_listener = listeners.tls.as_ref().map(|(l, _)| l);
    loop {
        let (from, tls) = tokio::select! {
            r = listeners.plain.ready() => (r.map(|()| &listeners.plain), false),
            r = ready_on(tls_listener) => (r, true),
            () = next_tick(steering.as_mut().and_then(|(_, tick)| tick.as_mut())) => {
                if let Some((s, tick)) = steering.as_mut() {
                    let to = s.tick();
                    listeners.resteer(s, to);
                    if s.quiet() {
                        *tick = None;
                    }
                }
                continue;
            }
            _ = &mut draining => return,
        };
        let Ok(from) = from else {
            // Only when the runtime's reactor is gone: the process is stopping.
            return;
        };
        let permit = tokio::select! {
            p = limit.acquire() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = &mut draining => return,
        };
        match from.try_accept() {
            Ok(Some((stream, peer))) => {
                let slot = Slot::new(permit, &shared.metrics);
                let shared = shared.clone();
                if let Some((s, tick)) = steering.as_mut() {
                    if tick.is_none() {
                        s.wake();
                        *tick = Some(workers::every(steer::TICK));
                    }
                    let to = s.filled();
                    listeners.resteer(s, to);
                }
                if !tls {
                    placement.spawn(stream, move |stream| {
                        serve_client(shared, stream::tcp_halves(stream), peer, None, slot)
                    });
                    continue;
                }
                if let Some(t) = &shared.config().proxy.tls {
                    tls_material = Some(t.server.clone());
                }
                if let Some(server) = tls_material.clone() {
                    placement.spawn(stream, move |stream| {
                        tls::serve(shared, stream, peer, server, slot)
                    });
                }
            }
            // Nothing pending after all: the queue was drained by the accepts before this
            // one (the usual end of a burst), or the client gave up while the permit was
            // awaited. The permit goes back, and the next wait is for a new connection.
            Ok(None) => {}
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, and say so once a minute at most.
                if errors.due(tokio::time::Instant::now()) {
                    tracing::error!(error = %e, "accept failed; backing off (file descriptors exhausted?)");
                }
                drop(permit);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The future `make` returns, on the heap and pinned, written there directly. `Box::pin(f)`
/// builds `f` on the stack and then copies all of it, most of it the states of steps not yet
/// entered; allocated first, the future is written where it stays.
#[inline(always)]
pub(crate) fn boxed<F: std::future::Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// When a failed accept was last logged, by any worker's loop: descriptors run out for the
/// whole process at once, and it is said once a minute at most, however many workers meet it.
#[derive(Default)]
pub struct AcceptErrors {
    last: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl AcceptErrors {
    /// Whether a failure at `now` is to be logged; if so, it is the last one logged.
    fn due(&self, now: tokio::time::Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| now.duration_since(t) > Duration::from_secs(60));
        if due {
            *last = Some(now);
        }
        due
    }
}

/// The next tick of `tick`, or never without one.
async fn next_tick(tick: Option<&mut tokio::time::Interval>) {
    match tick {
        Some(t) => drop(t.tick().await),
        None => std::future::pending().await,
    }
}

/// `listener` once a connection is pending on it, or never when there is none.
async fn ready_on(listener: Option<&Acceptor>) -> std::io::Result<&Acceptor> {
    match listener {
        Some(l) => l.ready().await.map(|()| l),
        None => std::future::pending().await,
    }
}

/// What an accepted client connection holds until it closes, however it ends: its
/// `max_client_connections` permit and its count in the open-connections gauge.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, metrics: &Metrics) -> Slot {
        metrics.client_connections.inc();
        Slot {
            _permit: permit,
            gauge: metrics.client_connections.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// One client connection, cut short when the shutdown grace runs out.
async fn serve_client<R: ClientRead, W: ClientWrite>(
    shared: Arc<Shared>,
    halves: (R, W),
    peer: SocketAddr,
    identity: Option<Arc<PeerIdentity>>,
    _slot: Slot,
) {
    // Debug events of this connection carry the client address. A DEBUG span: at the usual
    // levels it is disabled, and entering it on every poll costs nothing. Every event at INFO
    // and above that concerns a client names it itself (the access line, `request failed`),
    // and an enabled span took, on every poll, two read locks of one lock that all
    // connections share (tracing-subscriber's EnvFilter): ~400 instructions a request.
    let span = tracing::debug_span!("conn", client = %peer);
    // Biased: the requests go first on every wake-up; the stop is then one atomic load.
    tokio::select! {
        biased;
        _ = requests(&shared, halves, peer, identity).instrument(span) => {}
        _ = shared.phase.reached(Phase::Stopped) => {}
    }
}

/// The request loop of one client connection.
///
/// Each request runs under the config as it is when its first byte is there (one snapshot):
/// its head limits, its handling, and the idle wait after it. A reload thus reaches the next
/// request of a keep-alive connection, its client-side limits included.
async fn requests<R: ClientRead, W: ClientWrite>(
    shared: &Arc<Shared>,
    (rd, mut wr): (R, W),
    peer: SocketAddr,
    identity: Option<Arc<PeerIdentity>>,
) {
    let mut ctx = Ctx::now(shared, peer, identity);
    let mut reader = ClientReader::new(rd, ctx.config.proxy.max_header_bytes);
    // Both made once for the connection: its idle waits only poll them (see `wait`).
    let draining = shared.phase.reached(Phase::Draining);
    tokio::pin!(draining);
    let idle_timer = tokio::time::sleep(ctx.config.proxy.client_idle_timeout);
    tokio::pin!(idle_timer);
    let mut first = true;
    loop {
        if !first {
            if reader.buffered().is_empty() {
                // Idle keep-alive: wait for the next request's first byte, or close. An idle
                // connection holds no read buffer (thousands of them may sit in a client's pool).
                reader.release_buffer();
                let limit = ctx.config.proxy.client_idle_timeout;
                let ready = pin!(R::idle_wait(&mut reader));
                match wait::next_request(ready, idle_timer.as_mut(), draining.as_mut(), limit).await
                {
                    Some(Ok(())) => {}
                    _ => return,
                }
            }
            ctx.refresh();
        }
        first = false;
        let (head_timeout, max_header_bytes) = {
            let proxy = &ctx.config.proxy;
            (proxy.header_read_timeout, proxy.max_header_bytes)
        };
        reader.set_max_header_bytes(max_header_bytes);
        // Pinned where it is made: moved into the wait, the read's state was copied each request.
        let read = wait::within(head_timeout, pin!(reader.read_head())).await;
        // The phase as the head arrived: a drain that began meanwhile refuses this request.
        ctx.draining = shared.draining();
        let head = match read {
            Err(_) => {
                tracing::debug!(client = %peer, "request head not received within header_read_timeout; closing");
                return;
            }
            Ok(Err(HeadError::Closed)) | Ok(Err(HeadError::Io(_))) => return,
            Ok(Err(e)) => {
                let err = match e {
                    HeadError::TooLarge => ProxyError::HeadTooLarge {
                        limit: max_header_bytes,
                    },
                    HeadError::Malformed(why) => ProxyError::bad_request(why),
                    HeadError::Closed | HeadError::Io(_) => return,
                };
                refuse_head(&ctx, &mut wr, Mode::Forward, &err).await;
                linger(reader, wr, ctx.config.proxy.client_stall_timeout).await;
                return;
            }
            Ok(Ok(head)) => head,
        };
        if ctx.draining && head.method != Method::CONNECT {
            let err = ProxyError::ShuttingDown;
            let mut outcome = Outcome::new(
                Mode::Forward,
                Instant::now(),
                Some(&head.method),
                &head.target,
            );
            outcome.bytes_out = respond::error(&ctx, &mut wr, head.version, &err, true).await;
            outcome.record(&ctx, err.status(), Some(&err));
            return;
        }
        // Both request paths are boxed: their futures are several KiB, and kept inline they
        // would size every connection's task, idle ones included, by the largest of them.
        if head.method == Method::CONNECT {
            let (rd, leftover) = reader.into_parts();
            boxed(|| tunnel::serve(&ctx, head, rd, leftover, wr)).await;
            return;
        }
        let stall = ctx.config.proxy.client_stall_timeout;
        match boxed(|| forward::serve(&ctx, head, &mut reader, &mut wr)).await {
            Flow::KeepAlive => {}
            // Nothing unread either (no bytes sent past the request): FIN, then close. A
            // client that keeps its end open no longer holds the connection's slot. A plain
            // socket's close sends the FIN; TLS first sends its close_notify.
            Flow::CloseAsked if reader.buffered().is_empty() => {
                if wr.as_tcp().is_none() {
                    let mut wr = stall::StallWriter::new(&mut wr, stall);
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
                }
                wr.close_at_drop();
                return;
            }
            Flow::Close | Flow::CloseAsked => {
                linger(reader, wr, stall).await;
                return;
            }
        }
    }
}

/// Close after our last response without destroying it: send FIN, then read and discard what
/// the client still sends (bounded), since closing with unread bytes makes the kernel send an
/// RST that can overtake the response. Every wait is bounded: the FIN by `stall`
/// (`client_stall_timeout`), the drain by two seconds.
async fn linger<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: ClientReader<R>,
    mut wr: W,
    stall: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stall::StallWriter::new(&mut wr, stall)
        .shutdown()
        .await
        .is_err()
    {
        // Not even our FIN could be queued: the client reads nothing; drop (close) at once.
        return;
    }
    let (mut rd, _) = reader.into_parts();
    let drain = async {
        // On the heap: an array here would size every connection's task, idle ones included.
        let mut sink = vec![0u8; 4096];
        let mut left: usize = 256 * 1024;
        while left > 0 {
            match rd.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = timeout(Duration::from_secs(2), drain).await;
}

/// Answer and record a request refused before its head could be parsed.
async fn refuse_head<W: tokio::io::AsyncWrite + Unpin>(
    ctx: &Ctx,
    writer: &mut W,
    mode: Mode,
    err: &ProxyError,
) {
    let mut outcome = Outcome::new(mode, Instant::now(), None, "");
    outcome.bytes_out = respond::error(ctx, writer, Version::HTTP_11, err, true).await;
    outcome.record(ctx, err.status(), Some(err));
}

#[cfg(test)]
mod tests {
    use super::{AcceptErrors, Flow};
    use std::time::Duration;

    /// One line a minute for every loop together.
    #[test]
    fn a_failed_accept_is_logged_once_a_minute_whichever_loop_meets_it() {
        let errors = AcceptErrors::default();
        let t = tokio::time::Instant::now();
        assert!(errors.due(t));
        assert!(!errors.due(t));
        assert!(!errors.due(t + Duration::from_secs(60)));
        assert!(errors.due(t + Duration::from_secs(61)));
        assert!(!errors.due(t + Duration::from_secs(62)));
    }

    #[test]
    fn a_close_the_client_asked_for_after_its_whole_body_needs_no_lingering() {
        // (flow, client keep-alive, body read to the end) -> how the connection ends
        let cases = [
            (Flow::KeepAlive, true, true, Flow::KeepAlive),
            (Flow::KeepAlive, false, true, Flow::KeepAlive),
            (Flow::Close, false, true, Flow::CloseAsked),
            // The client did not ask: it may send its next request before it sees ours close.
            (Flow::Close, true, true, Flow::Close),
            // Part of the body is unread: it is still coming, and closing on it sends an RST.
            (Flow::Close, false, false, Flow::Close),
            (Flow::Close, true, false, Flow::Close),
            (Flow::CloseAsked, false, true, Flow::CloseAsked),
        ];
        for (flow, keep_alive, body_done, want) in cases {
            assert_eq!(
                flow.ending(keep_alive, body_done),
                want,
                "{flow:?} keep_alive={keep_alive} body_done={body_done}"
            );
        }
    }
}
