//! Log output for a busy proxy: INFO and below (the access log) are batched and written by a background thread; warnings and errors go out at once.
//!
//! One `write(2)` per access line costs as much as a quarter of a forwarded request. Lines go
//! into one shared buffer instead (in order, whole lines only), which a flusher thread writes
//! at most [`FLUSH_EVERY`] after the first line it holds, or as soon as it passes
//! [`FLUSH_AT`]; with nothing buffered the flusher sleeps until a line arrives. A warning or
//! error first writes everything buffered before it, then itself, from the logging thread:
//! what explains a failure is never left waiting in a buffer. Past [`BACKPRESSURE_AT`] (the
//! output is stuck), a logging thread writes the buffer itself, as an unbuffered logger would:
//! lines are delayed, never lost.
//!
//! Why not `tracing-appender`'s non-blocking writer (tried, issue 13; `benches/load/RESULTS.md`):
//! its channel takes one message and one wake-up of the writer thread per line (54 226 -> 54 983
//! instructions per forwarded request), and when its queue is full it either drops lines (the
//! default) or blocks the logging thread; an access log of payments may do neither.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Longest a buffered line waits.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered bytes that wake the flusher early.
pub const FLUSH_AT: usize = 64 * 1024;
/// Buffered bytes past which the logging thread writes them itself.
pub const BACKPRESSURE_AT: usize = 4 * 1024 * 1024;

/// Where the bytes finally go (stderr in the binary; anything `Write` in tests).
type Sink = Box<dyn Write + Send>;

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// False: every line is written at once (a terminal, where a person is watching).
    batch: bool,
}

struct State {
    buf: Vec<u8>,
    /// Held while writing, so flushes from different threads keep the lines in order.
    sink: Option<Sink>,
    stopping: bool,
    /// The flusher waits for a line with nothing buffered, on no timer: the next line wakes it.
    asleep: bool,
    /// A line took the buffer past `FLUSH_AT` and woke the flusher; until it takes the buffer,
    /// the lines after need not wake it again.
    asked: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Write what is buffered (and `then`), keeping the buffer's capacity.
    fn write_out(&mut self, then: &[u8]) -> io::Result<()> {
        let Some(sink) = self.sink.as_mut() else {
            return Ok(());
        };
        let r = sink
            .write_all(&self.buf)
            .and_then(|()| sink.write_all(then));
        self.buf.clear();
        self.asked = false;
        r
    }

    /// Whether the line just appended must wake the flusher: the first line after a quiet
    /// spell (it sleeps on no timer), or the first to take the buffer past `FLUSH_AT`. Once
    /// per spell and once per fill, not once per line: a `notify_all` is a system call whether
    /// anyone waits or not, and at 128 connections every line past `FLUSH_AT` had made one
    /// until the flusher took the buffer (half of the proxy's `futex` calls).
    fn wakes_flusher(&mut self) -> bool {
        let full = self.buf.len() >= FLUSH_AT && !std::mem::replace(&mut self.asked, true);
        std::mem::take(&mut self.asleep) || full
    }
}

/// A `MakeWriter` for tracing-subscriber; clones share one buffer and one flusher thread.
#[derive(Clone)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
}

/// Flushes what is left and stops the flusher when dropped (keep it alive in `main`).
pub struct FlushGuard {
    shared: Arc<Shared>,
    flusher: Option<thread::JoinHandle<()>>,
}

impl BatchedWriter {
    /// A writer over `sink`, and the guard that flushes it at exit. With `batch` false, every
    /// line is written before the logging call returns.
    pub fn new(sink: impl Write + Send + 'static, batch: bool) -> (BatchedWriter, FlushGuard) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::with_capacity(FLUSH_AT),
                sink: Some(Box::new(sink)),
                stopping: false,
                asleep: false,
                asked: false,
            }),
            wake: Condvar::new(),
            batch,
        });
        let flusher = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("log-flush".into())
                .spawn(move || flush_loop(&shared))
                .ok()
        };
        (
            BatchedWriter {
                shared: shared.clone(),
            },
            FlushGuard { shared, flusher },
        )
    }
}

fn flush_loop(shared: &Shared) {
    // The buffer logging threads append to next while this thread writes the other one: with
    // its capacity kept, appending never reallocates (a new empty buffer per flush grew
    // through ten reallocations to 64 KiB, ~100 instructions per access line).
    let mut spare = Vec::with_capacity(FLUSH_AT);
    let mut st = shared.lock();
    loop {
        if !st.buf.is_empty() {
            // Swap the lines out and write them without holding the lock: logging threads
            // keep appending meanwhile. The sink travels with the write to keep order.
            let mut out = std::mem::replace(&mut st.buf, std::mem::take(&mut spare));
            st.asked = false;
            let sink = st.sink.take();
            drop(st);
            let sink = sink.map(|mut s| {
                let _ = s.write_all(&out);
                let _ = s.flush();
                s
            });
            out.clear();
            // After a backlog (up to BACKPRESSURE_AT), keep no more than an ordinary buffer.
            spare = if out.capacity() <= 2 * FLUSH_AT {
                out
            } else {
                Vec::with_capacity(FLUSH_AT)
            };
            st = shared.lock();
            st.sink = sink;
            shared.wake.notify_all();
            if !st.buf.is_empty() {
                // New lines arrived during the write: they go next, after what was written.
                continue;
            }
        }
        if st.stopping {
            return;
        }
        // Nothing buffered: sleep until a line arrives rather than look every FLUSH_EVERY (an
        // idle proxy's flusher had woken ten times a second for nothing).
        st.asleep = true;
        while st.asleep && !st.stopping {
            st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.asleep = false;
        if st.stopping {
            continue;
        }
        // The first line waits at most FLUSH_EVERY, those after it less (or until FLUSH_AT).
        st = shared
            .wake
            .wait_timeout(st, FLUSH_EVERY)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
        // Whatever arrived after the flusher stopped (or if it never started).
        let mut st = self.shared.lock();
        let _ = st.write_out(&[]);
    }
}

/// One event's writer: tracing-subscriber formats a whole line, then writes it at once.
pub struct LineWriter<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut st = self.shared.lock();
        // The flusher holds the sink while it writes; wait for it so lines stay in order.
        while (self.urgent || st.buf.len() >= BACKPRESSURE_AT) && st.sink.is_none() {
            st = self.shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if self.urgent || st.buf.len() >= BACKPRESSURE_AT {
            st.write_out(line)?;
            if let Some(s) = st.sink.as_mut() {
                s.flush()?;
            }
            return Ok(line.len());
        }
        st.buf.extend_from_slice(line);
        if st.wakes_flusher() {
            self.shared.wake.notify_all();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        self.line_writer(true)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter<'a> {
        self.line_writer(*meta.level() <= Level::WARN)
    }
}

impl BatchedWriter {
    /// The writer for one line; `urgent` lines are written before this returns.
    pub fn line_writer(&self, urgent: bool) -> LineWriter<'_> {
        LineWriter {
            shared: &self.shared,
            urgent: urgent || !self.shared.batch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read while the writer owns it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn line(w: &BatchedWriter, level: Level, text: &str) {
        w.line_writer(level <= Level::WARN)
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[test]
    fn info_lines_wait_for_the_flusher_and_a_warning_takes_them_along_in_order() {
        let sink = Shared::default();
        let (w, guard) = BatchedWriter::new(sink.clone(), true);
        line(&w, Level::INFO, "a\n");
        line(&w, Level::INFO, "b\n");
        line(&w, Level::WARN, "c\n");
        // The warning is out at once, after the lines before it.
        assert_eq!(sink.text(), "a\nb\nc\n");
        line(&w, Level::INFO, "d\n");
        until("the flusher wrote d", || sink.text() == "a\nb\nc\nd\n");
        line(&w, Level::INFO, "e\n");
        drop(guard);
        assert_eq!(sink.text(), "a\nb\nc\nd\ne\n", "the guard flushes the rest");
    }

    /// Until `done` (5 s at most, else the test fails saying `what` never happened).
    fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_flusher_sleeps_on_no_timer_when_nothing_is_buffered_and_the_next_line_wakes_it() {
        let sink = Shared::default();
        let (w, _guard) = BatchedWriter::new(sink.clone(), true);
        for (i, want) in ["a\n", "a\nb\n", "a\nb\nc\n"].into_iter().enumerate() {
            line(&w, Level::INFO, &want[2 * i..]);
            until(&format!("the flusher wrote {want:?}"), || {
                sink.text() == want
            });
            // Written, the buffer empty: the flusher goes to sleep with no timer.
            until("the flusher slept", || w.shared.lock().asleep);
        }
    }

    /// The flusher is woken by the first line after a quiet spell and by the first line past
    /// `FLUSH_AT`, and not again by the lines after either until it takes the buffer.
    #[test]
    fn a_spell_and_a_fill_wake_the_flusher_once_each() {
        let mut st = State {
            buf: Vec::new(),
            sink: Some(Box::new(io::sink())),
            stopping: false,
            asleep: true,
            asked: false,
        };
        let append = |st: &mut State, n: usize| {
            st.buf.resize(st.buf.len() + n, b'x');
            st.wakes_flusher()
        };
        assert!(append(&mut st, 100), "the first line of a spell");
        assert!(!append(&mut st, 100), "the flusher is awake: no need");
        assert!(!append(&mut st, FLUSH_AT - 300), "still under FLUSH_AT");
        assert!(append(&mut st, 200), "the line that fills the buffer");
        for _ in 0..100 {
            assert!(
                !append(&mut st, 200),
                "the lines after it, until it is taken"
            );
        }
        // The flusher takes the buffer (as `flush_loop` and `write_out` do).
        st.buf.clear();
        st.asked = false;
        assert!(!append(&mut st, FLUSH_AT - 1));
        assert!(append(&mut st, 1), "the next fill wakes it again");
        assert!(st.write_out(&[]).is_ok());
        assert!(!st.asked, "writing it out counts as taking it");
    }

    #[test]
    fn many_threads_lose_no_line_and_split_none() {
        let sink = Shared::default();
        let (w, guard) = BatchedWriter::new(sink.clone(), true);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                thread::spawn(move || {
                    for i in 0..20_000 {
                        let level = if i % 997 == 0 {
                            Level::WARN
                        } else {
                            Level::INFO
                        };
                        line(&w, level, &format!("{t} {i} {}\n", "x".repeat(i % 300)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = sink.text();
        let mut next = [0usize; 4];
        for l in text.lines() {
            let mut parts = l.split(' ');
            let t: usize = parts.next().unwrap().parse().unwrap();
            let i: usize = parts.next().unwrap().parse().unwrap();
            assert_eq!(parts.next().unwrap().len(), i % 300, "line split: {l}");
            assert_eq!(i, next[t], "thread {t}'s lines out of order or lost");
            next[t] += 1;
        }
        assert_eq!(next, [20_000; 4]);
    }
}
