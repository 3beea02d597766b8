//! Worker threads, as nginx has worker processes: each runs its own single-threaded runtime, and a client connection stays on the worker it is handed to.
//!
//! A worker owns its connections, their I/O and their timers: nothing is handed between
//! threads on the way through a request, and no worker spins looking for work to steal.
//! Against one work-stealing runtime this raised throughput by 5–9 % (issue 17,
//! `benches/load/RESULTS.md`). Where the proxy's workers and other busy processes outnumber
//! the cores, a worker waits on the OS's run queue, and so do its connections: a light load
//! is therefore kept on one worker (see [`steer`]); `TOKIO_WORKER_THREADS` sets how many
//! workers there are.
//!
//! Each worker accepts for itself, as nginx's workers do: it has a listening socket of its
//! own on the proxy's address (`SO_REUSEPORT`, [`crate::app::listen_shared`]). While the
//! first worker has time and room to spare, the kernel is told to give it every new
//! connection ([`steer`]); otherwise it spreads them over the workers' sockets. A connection
//! is served by the worker that accepted it, without waking another thread, unless that
//! worker already holds more than its share: then it goes to the worker with the fewest open
//! connections ([`choose`]). The kernel's hash alone split 16 connections 10/6 as often as
//! 8/8 (measured).

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use tokio::net::TcpStream;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

pub mod steer;

use steer::Steer;

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

/// Where a connection's task runs: on the worker that accepted it or the least loaded one
/// (see [`choose`]), or on the current runtime when there are no workers (tests and library
/// use run everything on one runtime).
#[derive(Clone, Default)]
pub struct Placement {
    workers: Arc<[Worker]>,
    /// Whether new connections are steered to the first worker (see [`steer`]), as its
    /// accept loop last told the kernel.
    first: Arc<AtomicBool>,
    /// Whether they may be: not when told to spread them always ([`steer::SPREAD_ENV`]).
    steerable: bool,
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
    /// How many accept loops to run: one per worker, or one on the current runtime when
    /// there are no workers.
    pub fn loops(&self) -> usize {
        self.workers.len().max(1)
    }

    /// Worker `i`'s open connections (0 for a worker it does not have).
    pub fn open(&self, i: usize) -> usize {
        self.workers
            .get(i)
            .map_or(0, |w| w.open.load(Ordering::Relaxed))
    }

    /// Each worker's busy time so far, as its runtime counts it.
    pub fn busy_totals(&self) -> Vec<std::time::Duration> {
        self.workers
            .iter()
            .map(|w| w.handle.metrics().worker_total_busy_duration(0))
            .collect()
    }

    /// Whether new connections may be steered to the first worker (see [`steer`]).
    pub fn steerable(&self) -> bool {
        self.steerable && self.workers.len() > 1
    }

    /// Where the kernel now puts new connections.
    pub fn set_steer(&self, steer: Steer) {
        self.first.store(steer == Steer::First, Ordering::Relaxed);
    }

    fn steer(&self) -> Steer {
        match self.first.load(Ordering::Relaxed) {
            true => Steer::First,
            false => Steer::All,
        }
    }

    /// Run `task` on worker `i` (on the current runtime when there are no workers): where
    /// worker `i`'s accept loop runs, so that its listening socket is watched by the reactor
    /// of the worker that serves what it accepts.
    pub fn spawn_on<F>(&self, i: usize, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.workers.get(i) {
            Some(w) => w.handle.spawn(task),
            None => tokio::spawn(task),
        }
    }

    /// Run `serve(stream)` as a task of its own: on the calling worker, or on the worker
    /// with the fewest open connections when the calling one holds more than its share (see
    /// [`choose`]). The stream, non-blocking and registered with no reactor (as
    /// [`crate::accept::Acceptor`] gives it), is registered with that worker's; if it cannot
    /// be (the system refused), it is closed and the reason logged.
    pub fn spawn<F, Fut>(&self, stream: std::net::TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.workers.is_empty() {
            match TcpStream::from_std(stream) {
                Ok(stream) => drop(tokio::spawn(serve(stream))),
                Err(e) => tracing::warn!(error = %e, "cannot take an accepted connection"),
            }
            return;
        }
        let open = |i: usize| self.open(i);
        let worker = &self.workers[choose(here(), self.workers.len(), open, self.steer())];
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

/// Which of `n` workers serves a connection accepted on worker `here`, given each one's open
/// connections and the steering. Steered to the first worker, the first while it holds
/// fewer than [`steer::FILL`] (a burst of long-lived connections is not left on one worker
/// until the next tick spreads it). Otherwise `here` itself while it holds no more than the
/// least loaded one plus a slack (one, and a sixteenth of that one's count), else the least
/// loaded one (the first of equals). Serving where the connection was accepted takes no
/// wake-up of another thread; the slack keeps that so under a stream of short connections,
/// whose counts move by one all the time, and bounds the imbalance: 9/7 at worst for 16
/// connections, 66/62 for 128. Off the workers (`here` is `None`), the least loaded one.
pub fn choose(here: Option<usize>, n: usize, open: impl Fn(usize) -> usize, steer: Steer) -> usize {
    if steer == Steer::First && n > 0 && !steer::full(open(0)) {
        return 0;
    }
    let least = (0..n).min_by_key(|&i| open(i)).unwrap_or(0);
    match here {
        Some(h) if h < n && open(h) <= open(least) + 1 + open(least) / 16 => h,
        _ => least,
    }
}

/// How far ahead a worker always has a timer of its own (see [`keep_a_timer_near`]): the
/// steering's tick, so that on the first worker the two fall on one grid ([`every`]) and an
/// idle share means the same to both ([`IDLE_BUSY`]).
const TIMER_FLOOR: std::time::Duration = steer::TICK;

/// An interval of `period` whose ticks fall on one grid for the whole process, and stay on it
/// after a late tick (missed ones are skipped): two such timers of a period on one worker,
/// `keep_a_timer_near`'s and the steering's, wake it together, not each on its own (the
/// first worker had woken 12.6 times a second when idle, the second 8.4).
pub fn every(period: std::time::Duration) -> tokio::time::Interval {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    let gone = tokio::time::Instant::now().saturating_duration_since(epoch);
    let ticks = gone.as_nanos() / period.as_nanos().max(1) + 1;
    let first = epoch + period * u32::try_from(ticks).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick
}

/// A worker busy for less than this over a [`TIMER_FLOOR`] (0.4 %) is idle: its floor sleeps,
/// and the steering ticks stop once all workers are (see [`steer::idle`]).
const IDLE_BUSY: std::time::Duration = std::time::Duration::from_millis(1);

/// This worker's timer floor, while it sleeps (see [`keep_a_timer_near`]).
#[derive(Default)]
struct Floor {
    asleep: std::cell::Cell<bool>,
    wake: std::rc::Rc<tokio::sync::Notify>,
}

thread_local! {
    static FLOOR: Floor = Floor::default();
}

/// Call before arming a request's timer: on a worker whose timer floor sleeps, wakes it, so
/// that the timers after this one find it there (see `keep_a_timer_near`). A cell read
/// otherwise, off the workers too.
pub fn arming_a_timer() {
    FLOOR.with(|f| {
        if f.asleep.replace(false) {
            f.wake.notify_one();
        }
    });
}

/// Keep a timer at most [`TIMER_FLOOR`] ahead on this worker while it is at work.
///
/// tokio's time driver wakes its own thread (an 8-byte write to the reactor's eventfd, then
/// an extra trip through `epoll_wait`) whenever a timer is set earlier than the earliest one
/// it had when it last parked. A worker whose connections were all waiting for their clients
/// when it parked had only their idle timers then (`client_idle_timeout`, a minute), so the
/// next request's `response_timeout` (30 s) was the earliest and paid that write: 0.22–0.28
/// writes a request at 16 connections on two workers (0.025 with this timer), 0.005 on one,
/// where a request was nearly always in flight (`perf stat -e syscalls:sys_enter_write`,
/// issue 17). With this timer never more than [`TIMER_FLOOR`] away, a timer of a request or
/// connection (all of them longer) is never the earliest.
///
/// A worker that was busy for less than [`IDLE_BUSY`] over a tick has too few requests for
/// that write to matter, and its floor sleeps, on no timer, until the next request's timer is
/// armed ([`arming_a_timer`]): an idle proxy's workers do not wake at all, with client
/// connections open or not (each had woken eight times a second: tokio's timer wheel takes
/// two wake-ups to fire a timer more than 64 ms away).
async fn keep_a_timer_near() {
    let wake = FLOOR.with(|f| f.wake.clone());
    let busy = || Handle::current().metrics().worker_total_busy_duration(0);
    loop {
        let mut tick = every(TIMER_FLOOR);
        let mut before = busy();
        loop {
            tick.tick().await;
            let now = busy();
            if now.saturating_sub(before) < IDLE_BUSY {
                break;
            }
            before = now;
        }
        FLOOR.with(|f| f.asleep.set(true));
        wake.notified().await;
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
            first: Arc::default(),
            steerable: true,
        };
        Ok(w)
    }

    /// Leave new connections to the kernel's hash always, never steered to the first worker.
    pub fn always_spread(&mut self) {
        self.placement.steerable = false;
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

    /// A connection stays on the worker that accepted it until that one holds more than the
    /// least loaded plus one and a sixteenth; off the workers, the least loaded one.
    #[test]
    fn a_connection_stays_where_it_was_accepted_unless_that_worker_holds_more_than_its_share() {
        let cases: &[(Option<usize>, &[usize], usize)] = &[
            (Some(0), &[0, 0], 0),
            (Some(1), &[0, 0], 1),
            (Some(1), &[3, 4], 1),
            (Some(1), &[3, 5], 0),
            (Some(0), &[8, 7], 0),
            (Some(0), &[9, 7], 1),
            (Some(0), &[65, 62], 0),
            (Some(0), &[66, 62], 0),
            (Some(0), &[67, 62], 1),
            (Some(1), &[5000, 5313], 1),
            (Some(1), &[5000, 5314], 0),
            (Some(2), &[4, 1, 2, 9], 2),
            (Some(2), &[4, 1, 3, 9], 1),
            (Some(3), &[4, 1, 3, 9], 1),
            (None, &[4, 1, 3, 1], 1),
            (None, &[0, 0], 0),
            // A worker this placement does not have (tests on the caller's own runtime).
            (Some(5), &[2, 1], 1),
        ];
        for &(here, open, want) in cases {
            let got = choose(here, open.len(), |i| open[i], Steer::All);
            assert_eq!(got, want, "here {here:?}, open {open:?}");
        }
    }

    /// Steered to the first worker, the first takes every connection, wherever accepted,
    /// until it holds `FILL`; then the rule above.
    #[test]
    fn steered_to_the_first_worker_it_takes_connections_until_it_holds_fill() {
        let fill = steer::FILL;
        let cases: &[(Option<usize>, &[usize], usize)] = &[
            (Some(0), &[0, 0], 0),
            (Some(0), &[fill - 1, 0], 0),
            (Some(1), &[fill - 1, 0], 0),
            (None, &[5, 0, 0], 0),
            (Some(0), &[fill, 0], 1),
            (Some(0), &[fill, fill - 1], 0),
            (Some(1), &[fill + 1, fill], 1),
        ];
        for &(here, open, want) in cases {
            let got = choose(here, open.len(), |i| open[i], Steer::First);
            assert_eq!(got, want, "here {here:?}, open {open:?}");
        }
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
