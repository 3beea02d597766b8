//! A TCP relay that behaves like the provider's stateful firewall: it silently forgets idle flows and resets them on their next bytes.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::wire::reset_on_drop;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running relay from `addr` to one upstream; dropping it ends every flow.
pub struct Firewall {
    pub addr: SocketAddr,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Stats {
    accepted: AtomicUsize,
    open: AtomicUsize,
    forgotten: AtomicUsize,
    resets: AtomicUsize,
    changed: Notify,
}

impl Stats {
    fn bump(&self, counter: &AtomicUsize, by: isize) {
        if by >= 0 {
            counter.fetch_add(by as usize, Ordering::SeqCst);
        } else {
            counter.fetch_sub(by.unsigned_abs(), Ordering::SeqCst);
        }
        self.changed.notify_waiters();
    }
}

/// Counts a flow in `flows_open` until it ends or is forgotten.
struct Remembered(Arc<Stats>);

impl Drop for Remembered {
    fn drop(&mut self) {
        self.0.bump(&self.0.open, -1);
    }
}

impl Firewall {
    /// Listens on 127.0.0.1:0 and relays each accepted flow to `upstream` (which must be loopback).
    ///
    /// A flow with no byte in either direction for `idle_limit` is forgotten, silently: nothing
    /// is sent to anyone at that moment. The next bytes from the client are not delivered; the
    /// client is answered with an RST and the upstream side is dropped. Bytes or a FIN from
    /// the upstream of a forgotten flow just drop the upstream side; a FIN from the client
    /// drops the whole flow quietly.
    pub async fn spawn(upstream: SocketAddr, idle_limit: Duration) -> Firewall {
        assert!(
            upstream.ip().is_loopback(),
            "the test firewall only relays to loopback, not {upstream}"
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind firewall on 127.0.0.1:0");
        let addr = listener.local_addr().expect("firewall local addr");
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(accept_loop(listener, upstream, idle_limit, stats.clone()));
        Firewall { addr, stats, task }
    }

    /// Flows that passed the idle limit (counted when they pass it, not when next used).
    pub fn flows_forgotten(&self) -> usize {
        self.stats.forgotten.load(Ordering::SeqCst)
    }

    /// RSTs sent to clients because they used a forgotten flow.
    pub fn resets_sent(&self) -> usize {
        self.stats.resets.load(Ordering::SeqCst)
    }

    /// Flows relayed now and still remembered (forgotten ones are not counted).
    pub fn flows_open(&self) -> usize {
        self.stats.open.load(Ordering::SeqCst)
    }

    pub fn flows_accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// True once at least `n` flows were forgotten; false if `within` passes first.
    pub async fn wait_for_forgotten(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.stats.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.flows_forgotten() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.flows_forgotten() >= n;
            }
        }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    limit: Duration,
    stats: Arc<Stats>,
) {
    let mut flows = JoinSet::new();
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        stats.bump(&stats.accepted, 1);
        flows.spawn(flow(client, upstream, limit, stats.clone()));
        while flows.try_join_next().is_some() {}
    }
}

async fn flow(client: TcpStream, upstream: SocketAddr, limit: Duration, stats: Arc<Stats>) {
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
        Ok(Ok(upstream)) => upstream,
        _ => {
            // What a refused connection looks like through a real firewall.
            reset_on_drop(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    stats.bump(&stats.open, 1);
    let remembered = Remembered(stats.clone());
    Relay {
        client,
        upstream: Some(upstream),
        to_upstream: Vec::new(),
        to_client: Vec::new(),
        client_eof: false,
        upstream_eof: false,
        upstream_shut: false,
        client_shut: false,
        last_activity: Instant::now(),
        remembered: Some(remembered),
        limit,
        stats,
    }
    .run()
    .await;
}

/// One flow, driven by a single task through readiness + `try_read`/`try_write`, so that one
/// task owns both sockets and can reset or drop either at any moment.
struct Relay {
    client: TcpStream,
    /// `None` once the upstream side of a forgotten flow has been dropped.
    upstream: Option<TcpStream>,
    to_upstream: Vec<u8>,
    to_client: Vec<u8>,
    client_eof: bool,
    upstream_eof: bool,
    upstream_shut: bool,
    client_shut: bool,
    last_activity: Instant,
    /// `None` once forgotten.
    remembered: Option<Remembered>,
    limit: Duration,
    stats: Arc<Stats>,
}

enum Step {
    Continue,
    End,
}

impl Relay {
    async fn run(mut self) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            self.propagate_fins();
            if self.client_eof
                && self.upstream_eof
                && self.to_upstream.is_empty()
                && self.to_client.is_empty()
            {
                return;
            }
            let forgotten = self.remembered.is_none();
            let step = tokio::select! {
                r = self.client.readable(), if !self.client_eof && self.to_upstream.is_empty() => {
                    match r {
                        Ok(()) => self.read_client(&mut buf),
                        Err(_) => Step::End,
                    }
                }
                r = readable(&self.upstream), if !self.upstream_eof && self.to_client.is_empty() => {
                    match r {
                        Ok(()) => self.read_upstream(&mut buf),
                        Err(_) => Step::End,
                    }
                }
                r = writable(&self.upstream), if !self.to_upstream.is_empty() => {
                    match r {
                        Ok(()) => self.flush_to_upstream(),
                        Err(_) => Step::End,
                    }
                }
                r = self.client.writable(), if !self.to_client.is_empty() => {
                    match r {
                        Ok(()) => self.flush_to_client(),
                        Err(_) => Step::End,
                    }
                }
                _ = tokio::time::sleep_until(self.last_activity + self.limit), if !forgotten => {
                    if self.last_activity.elapsed() >= self.limit {
                        self.forget();
                    }
                    Step::Continue
                }
            };
            if let Step::End = step {
                return;
            }
        }
    }

    fn idle_expired(&self) -> bool {
        self.last_activity.elapsed() >= self.limit
    }

    /// The firewall drops its state for the flow. Nobody is told.
    fn forget(&mut self) {
        if self.remembered.take().is_some() {
            self.stats.bump(&self.stats.forgotten, 1);
            self.to_upstream.clear();
            self.to_client.clear();
        }
    }

    fn read_client(&mut self, buf: &mut [u8]) -> Step {
        match self.client.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Continue,
            Err(_) => {
                // The client reset: pass it on.
                if let Some(up) = &self.upstream {
                    reset_on_drop(up);
                }
                Step::End
            }
            Ok(0) if self.remembered.is_none() => Step::End,
            Ok(0) => {
                self.client_eof = true;
                Step::Continue
            }
            Ok(n) => {
                if self.remembered.is_none() || self.idle_expired() {
                    // Bytes of a flow the firewall no longer knows: never delivered, answered with RST.
                    self.forget();
                    reset_on_drop(&self.client);
                    self.stats.bump(&self.stats.resets, 1);
                    return Step::End;
                }
                self.last_activity = Instant::now();
                self.to_upstream.extend_from_slice(&buf[..n]);
                Step::Continue
            }
        }
    }

    fn read_upstream(&mut self, buf: &mut [u8]) -> Step {
        let Some(up) = &self.upstream else {
            return Step::Continue;
        };
        let result = up.try_read(buf);
        if self.remembered.is_none() {
            if !matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                self.upstream = None;
            }
            return Step::Continue;
        }
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Continue,
            Err(_) => {
                reset_on_drop(&self.client);
                Step::End
            }
            Ok(0) => {
                self.upstream_eof = true;
                Step::Continue
            }
            Ok(n) => {
                self.last_activity = Instant::now();
                self.to_client.extend_from_slice(&buf[..n]);
                Step::Continue
            }
        }
    }

    fn flush_to_upstream(&mut self) -> Step {
        let Some(up) = &self.upstream else {
            self.to_upstream.clear();
            return Step::Continue;
        };
        match up.try_write(&self.to_upstream) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Continue,
            Err(_) => {
                reset_on_drop(&self.client);
                Step::End
            }
            Ok(n) => {
                self.to_upstream.drain(..n);
                Step::Continue
            }
        }
    }

    fn flush_to_client(&mut self) -> Step {
        match self.client.try_write(&self.to_client) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Continue,
            Err(_) => {
                if let Some(up) = &self.upstream {
                    reset_on_drop(up);
                }
                Step::End
            }
            Ok(n) => {
                self.to_client.drain(..n);
                Step::Continue
            }
        }
    }

    /// Half-closes pass through once everything before them was delivered.
    fn propagate_fins(&mut self) {
        if self.remembered.is_none() {
            return;
        }
        if self.client_eof && self.to_upstream.is_empty() && !self.upstream_shut {
            if let Some(up) = &self.upstream {
                let _ = socket2::SockRef::from(up).shutdown(Shutdown::Write);
            }
            self.upstream_shut = true;
        }
        if self.upstream_eof && self.to_client.is_empty() && !self.client_shut {
            let _ = socket2::SockRef::from(&self.client).shutdown(Shutdown::Write);
            self.client_shut = true;
        }
    }
}

async fn readable(s: &Option<TcpStream>) -> io::Result<()> {
    match s {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

async fn writable(s: &Option<TcpStream>) -> io::Result<()> {
    match s {
        Some(s) => s.writable().await,
        None => std::future::pending().await,
    }
}
