//! Worker threads, as nginx has worker processes: each runs its own single-threaded runtime, and a client connection stays on the worker it is handed to.
//!
//! A worker owns its connections, their I/O and their timers: nothing is handed between
//! threads on the way through a request, and no worker spins looking for work to steal.
//! Against one work-stealing runtime this raised throughput by 5–9 % (issue 17,
//! `benches/load/RESULTS.md`). It does not shorten the tail where the proxy's workers and
//! other busy processes outnumber the cores: a worker then waits on the OS's run queue,
//! and so do its connections; `TOKIO_WORKER_THREADS` sets how many workers there are.
//!
//! One accept loop (on the first worker, [`Placement::spawn_first`]) hands each accepted
//! connection to the worker with the fewest open connections, which registers it with its
//! own reactor ([`crate::accept`]). A shared listening socket would let whichever
//! worker wakes first take a whole burst (measured: all 16 of wrk's connections on one of two
//! workers), and `SO_REUSEPORT`'s hash splits 16 connections 10/6 as often as 8/8.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use tokio::net::TcpStream;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

thread_local! {
    /// The worker this thread is (`None` off the workers: the main thread, tests).
    static HERE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The worker the calling thread is, if it is one: a socket made here is registered with
/// this worker's reactor, and the pool prefers to hand it back here (see
/// [`crate::pool::reuse::first_choice`]).
pub fn here() -> Option<usize> {
    HERE.with(std::cell::Cell::get)
}

/// Make the calling thread count as worker `i` (tests of what depends on [`here`]).
#[cfg(test)]
pub(crate) fn pretend(i: Option<usize>) {
    HERE.with(|h| h.set(i));
}

/// The environment variable that sets the number of workers (tokio's own name for it, kept
/// from when the proxy ran one work-stealing runtime).
pub const ENV: &str = "TOKIO_WORKER_THREADS";

/// How many workers to run: `TOKIO_WORKER_THREADS` when it is a positive number, else one
/// per core the process may use.
pub fn count(env: Option<&str>) -> usize {
    env.and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, usize::from))
}

/// The running workers; dropping it stops them (each gives its tasks a second to end).
pub struct Workers {
    placement: Placement,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// Where a connection's task runs: on the least-loaded worker, or on the current runtime
/// when there are no workers (tests and library use run everything on one runtime).
#[derive(Clone, Default)]
pub struct Placement {
    workers: Arc<[Worker]>,
}

struct Worker {
    handle: Handle,
    /// Connections placed here and not yet ended.
    open: Arc<AtomicUsize>,
}

/// Counts a connection against its worker until its task ends (or is dropped unfinished).
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Placement {
    /// Run `task` on the first worker (on the current runtime when there are no workers).
    ///
    /// The accept loop runs there, as each of nginx's workers accepts for itself: a worker
    /// that is awake anyway takes new connections in the same turn of its event loop, and one
    /// placed on it starts there without waking another thread. On a thread of its own the
    /// loop woke for every burst of connections and woke the worker it chose in turn: with
    /// a new connection per request (`CLOSE=1 benches/load/ab.sh`, c=16) this cut the proxy's
    /// CPU per request by 7-9 %, req/s within noise (issue 17, `benches/load/RESULTS.md`).
    pub fn spawn_first<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.workers.first() {
            Some(w) => w.handle.spawn(task),
            None => tokio::spawn(task),
        }
    }

    /// Run `serve(stream)` as a task of its own on the worker with the fewest open
    /// connections. The stream, non-blocking and registered with no reactor (as
    /// [`crate::accept::Acceptor`] gives it), is registered with that worker's; if it cannot
    /// be (the system refused), it is closed and the reason logged.
    pub fn spawn<F, Fut>(&self, stream: std::net::TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            match TcpStream::from_std(stream) {
                Ok(stream) => drop(tokio::spawn(serve(stream))),
                Err(e) => tracing::warn!(error = %e, "cannot take an accepted connection"),
            }
            return;
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(worker.open.clone());
        worker.handle.spawn(async move {
            let _open = open;
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => {
                    tracing::warn!(error = %e, "a worker cannot take an accepted connection")
                }
            }
        });
    }
}

/// How far ahead a worker always has a timer of its own (see [`keep_a_timer_near`]).
const TIMER_FLOOR: std::time::Duration = std::time::Duration::from_millis(250);

/// Keep a timer at most [`TIMER_FLOOR`] ahead on this worker, for as long as it runs.
///
/// tokio's time driver wakes its own thread (an 8-byte write to the reactor's eventfd, then
/// an extra trip through `epoll_wait`) whenever a timer is set earlier than the earliest one
/// it had when it last parked. A worker whose connections were all waiting for their clients
/// when it parked had only their idle timers then (`client_idle_timeout`, a minute), so the
/// next request's `response_timeout` (30 s) was the earliest and paid that write: 0.22–0.28
/// writes a request at 16 connections on two workers (0.025 with this timer), 0.005 on one,
/// where a request was nearly always in flight (`perf stat -e syscalls:sys_enter_write`,
/// issue 17). With this timer never more
/// than [`TIMER_FLOOR`] away, a timer of a request or connection (all of them longer) is
/// never the earliest. It costs a worker four wake-ups a second when there is nothing to do.
async fn keep_a_timer_near() {
    let mut tick = tokio::time::interval(TIMER_FLOOR);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

impl Workers {
    /// Start `n` worker threads (at least one), each with its own runtime.
    pub fn start(n: usize) -> io::Result<Workers> {
        let mut w = Workers {
            placement: Placement::default(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        let mut workers = Vec::new();
        for i in 0..n.max(1) {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            workers.push(Worker {
                handle: runtime.handle().clone(),
                open: Arc::default(),
            });
            let (stop, stopped) = oneshot::channel::<()>();
            w.stops.push(stop);
            let thread = thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    HERE.with(|h| h.set(Some(i)));
                    // Runs the tasks spawned onto it until told to stop (or the sender is gone).
                    runtime.block_on(async move {
                        tokio::select! {
                            _ = stopped => {}
                            () = keep_a_timer_near() => {}
                        }
                    });
                    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                })?;
            w.threads.push(thread);
        }
        w.placement = Placement {
            workers: workers.into(),
        };
        Ok(w)
    }

    /// Where client connections go.
    pub fn placement(&self) -> Placement {
        self.placement.clone()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_comes_from_the_environment_when_it_is_a_positive_number() {
        let cores = thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(count(Some("3")), 3);
        assert_eq!(count(Some(" 1 ")), 1);
        assert_eq!(count(Some("0")), cores);
        assert_eq!(count(Some("many")), cores);
        assert_eq!(count(None), cores);
    }

    /// Four connections on two workers: two each, served on the worker's own thread, and
    /// the count goes down when a connection's task ends.
    #[test]
    fn connections_go_to_the_least_loaded_worker_and_work_there() {
        use std::io::{Read, Write};
        let workers = Workers::start(2).unwrap();
        let placement = workers.placement();
        let accept = Builder::new_current_thread().enable_all().build().unwrap();
        let listener = accept
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (served, names) = std::sync::mpsc::channel();
        let mut clients = Vec::new();
        let mut finish = Vec::new();
        for _ in 0..4 {
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            client.write_all(b"x").unwrap();
            let (stream, _) = accept.block_on(listener.accept()).unwrap();
            let stream = stream.into_std().unwrap();
            let served = served.clone();
            let (done, wait) = oneshot::channel::<()>();
            finish.push(done);
            let _guard = accept.enter();
            placement.spawn(stream, move |mut stream| async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut b = [0u8; 1];
                stream.read_exact(&mut b).await.unwrap();
                stream.write_all(&b).await.unwrap();
                let name = thread::current().name().unwrap_or("").to_string();
                served.send(name).unwrap();
                let _ = wait.await;
            });
            let mut echo = [0u8; 1];
            client.read_exact(&mut echo).unwrap();
            assert_eq!(&echo, b"x");
            clients.push(client);
        }
        let mut names: Vec<String> = (0..4).map(|_| names.recv().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["worker-0", "worker-0", "worker-1", "worker-1"]);
        let open = |i: usize| placement.workers[i].open.load(Ordering::Relaxed);
        assert_eq!((open(0), open(1)), (2, 2));
        for done in finish {
            let _ = done.send(());
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while open(0) + open(1) > 0 {
            assert!(std::time::Instant::now() < deadline, "counts stay up");
            thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(workers);
    }
}
