//! Bind the listeners, build the shared state, run, reload on SIGHUP, and shut down gracefully.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::proxy;
use crate::proxy::limit::ClientLimit;
use crate::state::{Phase, Shared};
use crate::workers::steer::Steering;
use crate::workers::Placement;

/// A running portcullis: its bound addresses and the handles to reload or stop it.
pub struct Handle {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The TLS proxy listener's address, when `tls_listen` is set.
    pub tls_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    /// The file to re-read on reload; `None` for the built-in config.
    config_path: Option<PathBuf>,
    /// `max_client_connections`, resized on reload; drained once every connection is gone.
    limit: Arc<ClientLimit>,
    tasks: Vec<JoinHandle<()>>,
}

/// How the process stopped, for its exit status (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// In-flight work finished, or `shutdown_grace` ran out: exit 0.
    Drained,
    /// A second SIGTERM or SIGINT (its number here) ended the drain at once.
    Forced { signal: i32 },
}

impl Stopped {
    /// 0 for a drain; 128 + the signal's number for a forced stop (130 for SIGINT, 143 for
    /// SIGTERM), what a shell reports for a process that signal ended: a supervisor can tell
    /// that in-flight work was cut on an operator's demand, not by a failure (1) or a bad
    /// config (2).
    pub fn exit_code(self) -> u8 {
        match self {
            Stopped::Drained => 0,
            Stopped::Forced { signal } => u8::try_from(128 + signal).unwrap_or(1),
        }
    }
}

/// Connections the kernel completes and queues on a listener while its accept loop is busy
/// or at `max_client_connections` (capped by `net.core.somaxconn`). The common default of
/// 128 drops the SYNs of a larger burst, which the clients retry only after 1 s, then 3 s.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with `LISTEN_BACKLOG`; the error names the address.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    bind(addr, false)
}

/// `n` listeners on `addr` (one when `n` is 1), one for each worker's accept loop: with
/// `SO_REUSEPORT` the kernel spreads new connections over them. Port 0 picks a free port
/// that all of them take. A fixed port is first bound once without `SO_REUSEPORT`: that
/// fails if anything listens there, as a single listener would, where another portcullis
/// on the same address would otherwise silently join this one's group (and take a share of
/// its connections). The listeners come off this runtime's reactor: each accept loop
/// registers its own with its worker's.
pub fn listen_shared(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    if n <= 1 {
        return Ok(vec![listen(addr)?.into_std()?]);
    }
    if addr.port() != 0 {
        drop(listen(addr)?);
    }
    let first = bind(addr, true)?;
    let addr = first.local_addr()?;
    let mut all = vec![first.into_std()?];
    for _ in 1..n {
        all.push(bind(addr, true)?.into_std()?);
    }
    Ok(all)
}

fn bind(addr: SocketAddr, shared: bool) -> io::Result<TcpListener> {
    let bound = (|| {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if shared {
            socket.set_reuseport(true)?;
        }
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    })();
    bound.map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Bind both listeners (port 0 picks a free port) and start serving on this runtime.
pub async fn start(config: Config, config_path: Option<PathBuf>) -> io::Result<Handle> {
    start_on(config, config_path, Placement::default()).await
}

/// Bind the listeners and start serving: the admin listener on this runtime, an accept loop
/// with proxy listeners of its own on each worker (see [`Placement::spawn_on`]), each client
/// connection where `placement` puts it (see [`crate::workers`]).
pub async fn start_on(
    config: Config,
    config_path: Option<PathBuf>,
    placement: Placement,
) -> io::Result<Handle> {
    // One proxy listener (and TLS listener) for each worker's accept loop.
    let loops = placement.loops();
    let proxy_listeners = listen_shared(config.proxy.listen, loops)?;
    let admin_listener = listen(config.proxy.admin_listen)?;
    let mut tls_listeners = match &config.proxy.tls {
        Some(t) => Some((listen_shared(t.listen, loops)?, t.server.clone())),
        None => None,
    };
    let proxy_addr = proxy_listeners[0].local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let tls_addr = tls_listeners
        .as_ref()
        .map(|(l, _)| l[0].local_addr())
        .transpose()?;
    let limit = Arc::new(ClientLimit::new(config.proxy.max_client_connections));
    let shared = Shared::new(config, Metrics::new());
    let errors = Arc::new(proxy::AcceptErrors::default());
    let mut tasks = Vec::with_capacity(loops + 1);
    let mut starts = Vec::with_capacity(loops);
    // Worker i takes the i-th socket of each group: the first worker's are the ones the
    // steering program names (see `workers::steer`).
    let mut tls_each = tls_listeners
        .take()
        .map(|(l, server)| l.into_iter().map(move |l| (l, server.clone())));
    for (i, plain) in proxy_listeners.into_iter().enumerate() {
        let tls = tls_each.as_mut().and_then(Iterator::next);
        let (shared, limit, places) = (shared.clone(), limit.clone(), placement.clone());
        let errors = errors.clone();
        let steering = match i {
            0 => Steering::new(placement.clone()),
            _ => None,
        };
        let (started, start) = tokio::sync::oneshot::channel();
        // Made on the worker that accepts on them, whose reactor then watches them.
        tasks.push(placement.spawn_on(i, async move {
            match proxy::Listeners::new(plain, tls) {
                Ok(listeners) => {
                    let _ = started.send(Ok(()));
                    proxy::run(listeners, shared, limit, places, errors, steering).await
                }
                Err(e) => drop(started.send(Err(e))),
            }
        }));
        starts.push(start);
    }
    for start in starts {
        let started = start
            .await
            .map_err(|_| io::Error::other("an accept loop ended before it started"))
            .and_then(|r| r);
        if let Err(e) = started {
            // The loops that did start would accept on with nobody to stop them.
            for t in &tasks {
                t.abort();
            }
            return Err(e);
        }
    }
    tasks.push(tokio::spawn(crate::admin::run(
        admin_listener,
        shared.clone(),
    )));
    match tls_addr {
        Some(tls) => {
            tracing::info!(proxy = %proxy_addr, tls = %tls, admin = %admin_addr, "portcullis listening")
        }
        None => tracing::info!(proxy = %proxy_addr, admin = %admin_addr, "portcullis listening"),
    }
    Ok(Handle {
        proxy_addr,
        admin_addr,
        tls_addr,
        shared,
        config_path,
        limit,
        tasks,
    })
}

impl Handle {
    /// Re-read the config file; a valid one takes effect for new requests, an invalid one is
    /// logged and counted and the running config stays.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let reloads = &self.shared.metrics.config_reloads;
        let loaded = match &self.config_path {
            Some(p) => Config::from_file(p),
            None => Config::from_toml(crate::config::BUILTIN, crate::config::BUILTIN_NAME),
        };
        match loaded {
            Ok(config) => {
                for w in crate::intercept::warnings(&config) {
                    tracing::warn!("{}: {w}", config.source);
                }
                for w in crate::config::lint::check(&config) {
                    tracing::warn!("{}: {w}", config.source);
                }
                let old = self.shared.config();
                let tls_listen = |c: &Config| c.proxy.tls.as_ref().map(|t| t.listen);
                if config.proxy.listen != old.proxy.listen
                    || config.proxy.admin_listen != old.proxy.admin_listen
                    || tls_listen(&config) != tls_listen(&old)
                {
                    tracing::warn!(
                        "listen addresses changed in the file: they take effect only on restart"
                    );
                }
                let max_clients = config.proxy.max_client_connections;
                self.shared.replace_config(config);
                self.limit.resize(max_clients);
                reloads.with_label_values(&["ok"]).inc();
                tracing::info!(source = %old.source, "config reloaded");
                Ok(())
            }
            Err(e) => {
                reloads.with_label_values(&["error"]).inc();
                for line in e.to_string().lines() {
                    tracing::error!("config reload refused, keeping the running config: {line}");
                }
                Err(e)
            }
        }
    }

    /// Stop accepting, let in-flight work finish within `shutdown_grace`, close pooled connections.
    pub async fn shutdown(self) {
        self.shutdown_unless(std::future::pending::<()>()).await;
    }

    /// [`Handle::shutdown`], unless `cut` completes during the drain (a second signal): then
    /// whatever is still running is cut at once. `cut`'s output if it did.
    pub async fn shutdown_unless<T>(self, cut: impl Future<Output = T>) -> Option<T> {
        let grace = self.shared.config().proxy.shutdown_grace;
        self.shared.phase.set(Phase::Draining);
        let forced = tokio::select! {
            drained = tokio::time::timeout(grace, self.limit.drained()) => {
                if drained.is_err() {
                    tracing::warn!(
                        grace_s = grace.as_secs_f64(),
                        "shutdown grace over: cutting remaining connections"
                    );
                }
                None
            }
            c = cut => {
                tracing::warn!("second signal: cutting in-flight requests and tunnels now");
                Some(c)
            }
        };
        self.shared.phase.set(Phase::Stopped);
        self.shared.pools.drain_all();
        for t in self.tasks {
            t.abort();
        }
        tracing::info!("portcullis stopped");
        forced
    }
}

/// Run until SIGTERM or SIGINT, then drain; a second one during the drain ends it at once.
/// SIGHUP reloads.
pub async fn run_until_signal(
    config: Config,
    config_path: Option<PathBuf>,
    placement: Placement,
) -> io::Result<Stopped> {
    use tokio::signal::unix::{signal, SignalKind};
    let (term_kind, int_kind) = (SignalKind::terminate(), SignalKind::interrupt());
    let mut term = signal(term_kind)?;
    let mut int = signal(int_kind)?;
    let mut hup = signal(SignalKind::hangup())?;
    let handle = start_on(config, config_path, placement).await?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = handle.reload();
            }
        }
    }
    tracing::info!("signal received: draining (send SIGTERM or SIGINT again to stop at once)");
    // Streams keep a signal that arrives before they are polled again: none is missed.
    let second = async {
        tokio::select! {
            _ = term.recv() => term_kind.as_raw_value(),
            _ = int.recv() => int_kind.as_raw_value(),
        }
    };
    Ok(match handle.shutdown_unless(second).await {
        None => Stopped::Drained,
        Some(signal) => Stopped::Forced { signal },
    })
}
