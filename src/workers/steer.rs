//! Which workers take new client connections: the first alone while it carries the load with ease, else all of them.
//!
//! The kernel spreads new connections over the workers' listening sockets (`SO_REUSEPORT`).
//! Under a light load that costs more than it gives: each worker sleeps and wakes for its
//! share of the requests, runs shorter batches on a colder cache, and where the cores are
//! shared with other busy processes every wake-up waits its turn. nginx's workers, sharing
//! one listening socket, in effect fill up one at a time (15 of wrk's 16 connections on one
//! of two workers, measured). Here that is deliberate: while the first worker has time to
//! spare and fewer than [`FILL`] connections, a one-instruction classic BPF program on the
//! listening group gives every new connection to its socket; past either, the program gives
//! the choice back to the kernel's hash.
//!
//! A busy first worker counts as having no time to spare only while the CPUs the process may
//! run on have half a core idle for another: on cores already full (a sidecar beside its app,
//! a load test beside its origin) a second worker cannot run more, only wake more.
//! Connections do not move once placed, so the count bounds what a burst of long-lived
//! connections arriving at an idle proxy can put on one worker. Against spreading, at 16
//! keep-alive connections on two cores shared with wrk and the origin: CPU per request 0.87
//! times, p99 2.94 → 1.25 ms (benches/load/RESULTS.md, issue 17). `PORTCULLIS_SPREAD=1`
//! spreads always.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use tokio::time::Instant;

use super::Placement;

/// Connections the first worker takes while new ones go to it alone: below this, a count
/// says little about the load (a client's small pool); above it, connections placed now may
/// well be busy later, and are spread while there is a choice.
pub const FILL: usize = 32;

/// Whether a first worker with `open` connections has had its fill: from there on new
/// connections are spread, by the tick ([`next`]), by the accept ([`Steering::filled`]) and by
/// the placement of one accepted elsewhere ([`super::choose`]).
pub fn full(open: usize) -> bool {
    open >= FILL
}

/// The first worker's busy share of the last tick (per mille) past which it has no time to
/// spare: new connections are spread, if the process's CPUs have [`SPARE`] idle for another
/// worker.
const BUSY: u32 = 850;

/// Idle time on the CPUs the process may run on over the last tick (per mille of one core)
/// that another worker could use.
const SPARE: u32 = 500;

/// Back to the first worker alone once all workers together were busy for less than this
/// share of a tick (per mille) and hold fewer than [`FILL`] / 2 connections: well inside the
/// limits above, so that the change does not flap.
const QUIET: u32 = 500;

/// Set to `1` (or `true`), new connections are always left to the kernel's hash: for a proxy
/// whose few client connections each carry more than a core's worth of requests.
pub const SPREAD_ENV: &str = "PORTCULLIS_SPREAD";

/// Whether [`SPREAD_ENV`]'s value asks to spread always.
pub fn always_spread(env: Option<&str>) -> bool {
    matches!(env.map(str::trim), Some("1" | "true" | "yes"))
}

/// A worker's busy share of a tick (per mille) at or below which it counts as idle: the
/// timer floor's [`super::IDLE_BUSY`] in a [`TICK`] (4).
const IDLE: u32 = (super::IDLE_BUSY.as_micros() * 1000 / TICK.as_micros()) as u32;

/// Whether every worker was idle over the last tick, with client connections open or not.
pub fn idle(loads: &[Load]) -> bool {
    loads.iter().all(|l| l.busy <= IDLE)
}

/// How often the loads are measured and the choice made.
pub const TICK: Duration = Duration::from_millis(250);

/// Where the kernel puts new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steer {
    /// On the first worker's listening socket.
    First,
    /// On any worker's, by the kernel's hash of the addresses.
    All,
}

/// One worker's load: its busy share of the last tick (per mille) and its open connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub busy: u32,
    pub open: usize,
}

/// The steering after a tick, from the steering before it, each worker's load and the
/// idle time of the CPUs the process may run on (per mille of one core).
pub fn next(now: Steer, loads: &[Load], spare: u32) -> Steer {
    let Some(first) = loads.first().filter(|_| loads.len() > 1) else {
        return Steer::All;
    };
    match now {
        Steer::First if full(first.open) => Steer::All,
        Steer::First if first.busy > BUSY && spare >= SPARE => Steer::All,
        Steer::First => Steer::First,
        Steer::All => {
            let busy: u32 = loads.iter().map(|l| l.busy).sum();
            let open: usize = loads.iter().map(|l| l.open).sum();
            if busy < QUIET && open < FILL / 2 {
                Steer::First
            } else {
                Steer::All
            }
        }
    }
}

/// The program for `steer`: it returns the index of the socket in the group (the order the
/// sockets were bound in: the first worker's is 0); an index the group does not have makes
/// the kernel fall back to its hash.
fn program(steer: Steer) -> [nix::libc::sock_filter; 1] {
    let index = match steer {
        Steer::First => 0,
        Steer::All => u32::MAX,
    };
    [nix::libc::sock_filter {
        code: (nix::libc::BPF_RET | nix::libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: index,
    }]
}

/// Steer the `SO_REUSEPORT` group `listener` belongs to (any of its sockets will do).
pub fn apply(listener: &impl AsFd, steer: Steer) -> io::Result<()> {
    let mut filter = program(steer);
    let prog = nix::libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // The kernel copies the program: `filter` need not outlive the call.
    nix::sys::socket::setsockopt(
        listener,
        nix::sys::socket::sockopt::AttachReusePortCbpf,
        &prog,
    )
    .map_err(io::Error::from)
}

/// The CPU time so far of the CPUs this process may run on, from `/proc/stat`'s lines per CPU:
/// idle (idle and iowait) and all (steal included: a virtual machine's stolen time is no
/// core to spare), in clock ticks summed over those CPUs, and how many CPUs.
///
/// Only the CPUs in the process's affinity count (a cpuset, `taskset`): on a host whose other
/// cores idle, a proxy pinned to two busy ones has none to spare. A CPU quota needs no such
/// care: while new connections go to the first worker the others are idle, so the proxy's own
/// quota has room for them whenever it has more than one core (there is one worker per core of
/// it, `std::thread::available_parallelism`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub idle: u64,
    pub all: u64,
    pub cpus: u64,
}

impl CpuTimes {
    /// From the text of `/proc/stat`, summed over the CPUs `mine` accepts (by number); `None`
    /// if it does not read as one or none of its CPUs is accepted.
    pub fn parse(stat: &str, mine: impl Fn(usize) -> bool) -> Option<CpuTimes> {
        let mut lines = stat.lines();
        if lines.next()?.split_whitespace().next()? != "cpu" {
            return None;
        }
        let mut sum = CpuTimes::default();
        for line in lines.map_while(|l| l.strip_prefix("cpu")) {
            let mut fields = line.split_whitespace();
            let n: usize = fields.next()?.parse().ok()?;
            if !mine(n) {
                continue;
            }
            let t: Vec<u64> = fields
                .take(8)
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            if t.len() < 5 {
                return None;
            }
            sum.idle += t[3] + t[4];
            sum.all += t.iter().sum::<u64>();
            sum.cpus += 1;
        }
        (sum.cpus > 0).then_some(sum)
    }

    /// Idle time between `before` and `self`, in per mille of one core.
    pub fn spare_since(&self, before: &CpuTimes) -> u32 {
        let all = self.all.saturating_sub(before.all);
        let idle = self.idle.saturating_sub(before.idle);
        match all {
            0 => 0,
            _ => u32::try_from(idle * self.cpus * 1000 / all).unwrap_or(u32::MAX),
        }
    }
}

/// The CPUs this process may run on, by number; `None` when the kernel will not say (then
/// every CPU counts).
fn affinity() -> Option<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .collect();
    (!cpus.is_empty()).then_some(cpus)
}

/// [`CpuTimes`] now, over `cpus` (ascending), or over every CPU without them; `None` without
/// `/proc/stat`.
fn cpu_times(cpus: Option<&[usize]>) -> Option<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    CpuTimes::parse(&stat, |n| cpus.is_none_or(|c| c.binary_search(&n).is_ok()))
}

/// Busy shares from tokio's running total of each worker's busy time, and the idle time of
/// the CPUs this process may run on.
pub struct Meter {
    last: Vec<Duration>,
    at: Instant,
    cpus: Option<Vec<usize>>,
    cpu: Option<CpuTimes>,
}

impl Meter {
    pub fn new(totals: Vec<Duration>, now: Instant) -> Meter {
        let cpus = affinity();
        let cpu = cpu_times(cpus.as_deref());
        Meter {
            last: totals,
            at: now,
            cpus,
            cpu,
        }
    }

    /// The idle time of this process's CPUs since the last call (per mille of one core);
    /// without `/proc/stat`, as if a core were idle (a busy first worker is then reason enough
    /// to spread).
    pub fn spare(&mut self) -> u32 {
        let now = cpu_times(self.cpus.as_deref());
        let spare = match (&now, &self.cpu) {
            (Some(now), Some(before)) => now.spare_since(before),
            _ => 1000,
        };
        self.cpu = now;
        spare
    }

    /// Each worker's busy share (per mille) since the last sample.
    pub fn sample(&mut self, totals: Vec<Duration>, now: Instant) -> Vec<u32> {
        let wall = now.duration_since(self.at).as_nanos().max(1);
        let shares = totals
            .iter()
            .zip(self.last.iter().chain(std::iter::repeat(&Duration::ZERO)))
            .map(|(t, l)| {
                let busy = t.saturating_sub(*l).as_nanos();
                u32::try_from((busy * 1000 / wall).min(1000)).unwrap_or(1000)
            })
            .collect();
        self.last = totals;
        self.at = now;
        shares
    }
}

/// The steering of one proxy's listening groups, run by the first worker's accept loop (the
/// one that holds the first socket of each group).
pub struct Steering {
    placement: Placement,
    now: Steer,
    meter: Meter,
    /// See [`Steering::quiet`].
    quiet: bool,
}

impl Steering {
    /// Steering for `placement`'s workers; `None` when there are fewer than two, or they are
    /// to be spread always.
    pub fn new(placement: Placement) -> Option<Steering> {
        if !placement.steerable() {
            return None;
        }
        let meter = Meter::new(placement.busy_totals(), Instant::now());
        Some(Steering {
            placement,
            now: Steer::All,
            meter,
            quiet: true,
        })
    }

    /// Steer every group of `listeners` so, then tell the placement. An error (a kernel
    /// without the socket option) leaves the steering as it was, and the caller decides.
    pub fn apply(&mut self, listeners: &[&dyn AsFd], steer: Steer) -> io::Result<()> {
        for l in listeners {
            apply(l, steer)?;
        }
        if steer != self.now {
            let open = self.placement.open(0);
            tracing::debug!(
                ?steer,
                first_worker_open = open,
                "new client connections steered"
            );
        }
        self.now = steer;
        self.placement.set_steer(steer);
        Ok(())
    }

    /// Between ticks, after an accept: [`Steer::All`] to [`apply`] as soon as the first
    /// worker holds [`FILL`], so that a burst is spread from there on, not from the next tick.
    ///
    /// [`apply`]: Steering::apply
    pub fn filled(&self) -> Option<Steer> {
        (self.now == Steer::First && full(self.placement.open(0))).then_some(Steer::All)
    }

    /// Whether the ticks can stop until the first worker's next accept ([`Steering::wake`]):
    /// the last one changed nothing and found every worker [`idle`]. Until a load comes back
    /// the next tick would find the same; a load that comes back on connections already
    /// placed needs no steering, and one that comes with new connections is met by the first
    /// worker (steered) or by all of them (spread), as at the start.
    pub fn quiet(&self) -> bool {
        self.quiet
    }

    /// Ticks again after a quiet spell: the next one measures the loads from now, not over
    /// the spell.
    pub fn wake(&mut self) {
        self.meter = Meter::new(self.placement.busy_totals(), Instant::now());
    }

    /// Measure the last tick; a new steering to [`apply`] when the loads call for one.
    ///
    /// [`apply`]: Steering::apply
    pub fn tick(&mut self) -> Option<Steer> {
        let busy = self
            .meter
            .sample(self.placement.busy_totals(), Instant::now());
        let loads: Vec<Load> = busy
            .iter()
            .enumerate()
            .map(|(i, &busy)| Load {
                busy,
                open: self.placement.open(i),
            })
            .collect();
        let spare = self.meter.spare();
        let next = next(self.now, &loads, spare);
        self.quiet = next == self.now && idle(&loads);
        if next == self.now {
            return None;
        }
        tracing::trace!(steer = ?next, ?loads, spare, "steering changes");
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(l: &[(u32, usize)]) -> Vec<Load> {
        l.iter().map(|&(busy, open)| Load { busy, open }).collect()
    }

    #[test]
    fn a_worker_is_idle_up_to_one_ms_in_a_tick_with_connections_open_or_not() {
        assert_eq!(IDLE, 4, "1 ms of 250");
        assert!(idle(&loads(&[(0, 0), (0, 0)])));
        assert!(idle(&loads(&[(4, 40), (1, 8)])), "open and idle");
        assert!(!idle(&loads(&[(0, 0), (5, 1)])), "the second at work");
        assert!(!idle(&loads(&[(300, 3), (0, 0)])), "the first at work");
    }

    /// To all workers once the first holds `FILL`, or is busy while the machine has half a
    /// core idle; back to the first only once everything is quiet; never steered with one
    /// worker.
    #[test]
    fn the_first_worker_takes_new_connections_until_it_is_busy_or_full() {
        use Steer::*;
        type Case = (Steer, &'static [(u32, usize)], Steer);
        let cases: &[Case] = &[
            (First, &[(0, 0), (0, 0)], First),
            (First, &[(850, 31), (0, 0)], First),
            (First, &[(851, 3), (0, 0)], All),
            (First, &[(100, 32), (0, 0)], All),
            (First, &[(1000, 32), (0, 0)], All),
            // The other workers' loads do not matter while the first takes everything.
            (First, &[(400, 10), (1000, 500)], First),
            (All, &[(300, 5), (200, 5)], All),
            (All, &[(200, 5), (200, 11)], All),
            (All, &[(300, 7), (199, 8)], First),
            (All, &[(0, 0), (0, 16)], All),
            (All, &[(0, 0), (0, 15), (0, 0), (0, 0)], First),
            (All, &[(100, 0), (100, 0), (100, 0), (200, 0)], All),
            (First, &[(0, 0)], All),
            (All, &[(0, 0)], All),
            (First, &[], All),
        ];
        for &(now, l, want) in cases {
            assert_eq!(next(now, &loads(l), 1000), want, "{now:?} with {l:?}");
        }
        // On a machine without half a core idle, a busy first worker keeps taking them.
        let busy = loads(&[(1000, 16), (0, 0)]);
        assert_eq!(next(First, &busy, 499), First);
        assert_eq!(next(First, &busy, 500), All);
        assert_eq!(next(First, &loads(&[(1000, 32), (0, 0)]), 0), All);
        assert_eq!(next(All, &loads(&[(200, 5), (200, 5)]), 0), First);
    }

    #[test]
    fn idle_time_is_read_from_proc_stat_in_thousandths_of_a_core() {
        let all = |_| true;
        let before = "cpu  100 0 50 800 50 0 0 0 0 0\n\
                      cpu0 60 0 30 400 10 0 0 0 0 0\n\
                      cpu1 40 0 20 400 40 0 0 0 0 0\n\
                      intr 5\n";
        let after = "cpu  150 0 100 900 60 0 0 40 0 0\n\
                     cpu0 90 0 60 450 10 0 0 40 0 0\n\
                     cpu1 60 0 40 450 50 0 0 0 0 0\n\
                     intr 5\n";
        let (b, a) = (
            CpuTimes::parse(before, all).unwrap(),
            CpuTimes::parse(after, all).unwrap(),
        );
        assert_eq!(
            b,
            CpuTimes {
                idle: 850,
                all: 1000,
                cpus: 2
            }
        );
        // 110 of 250 ticks idle on 2 CPUs (the 40 stolen are not): 0.88 of a core.
        assert_eq!(a.spare_since(&b), 880);
        assert_eq!(a.spare_since(&a), 0);
        // Pinned to the first CPU: 50 of 150 ticks idle there, a third of a core, whatever the
        // other one does.
        let first = |n| n == 0;
        let (b0, a0) = (
            CpuTimes::parse(before, first).unwrap(),
            CpuTimes::parse(after, first).unwrap(),
        );
        assert_eq!(b0.cpus, 1);
        assert_eq!(a0.spare_since(&b0), 333);
        assert_eq!(CpuTimes::parse(before, |n| n == 7), None);
        assert_eq!(CpuTimes::parse("intr 5\n", all), None);
        assert_eq!(
            CpuTimes::parse("cpu  1 2 3 4 5\ncpu0 1 2 x 4 5\n", all),
            None
        );
        assert_eq!(CpuTimes::parse("cpu  1 2 3 4 5\ncpu0 1 2 3 4\n", all), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 3 4 5\n", all), None);
        assert!(cpu_times(None).is_some(), "this machine has /proc/stat");
        // This process may run somewhere, and its CPUs are on /proc/stat's lines.
        let mine = affinity().expect("sched_getaffinity");
        let times = cpu_times(Some(&mine)).unwrap();
        assert_eq!(times.cpus, mine.len() as u64);
    }

    #[test]
    fn only_a_yes_spreads_always() {
        for (v, want) in [
            (Some("1"), true),
            (Some(" true "), true),
            (Some("yes"), true),
            (Some("0"), false),
            (Some(""), false),
            (Some("no"), false),
            (None, false),
        ] {
            assert_eq!(always_spread(v), want, "{v:?}");
        }
    }

    #[test]
    fn busy_shares_are_per_mille_of_the_time_since_the_last_sample() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = Meter::new(vec![ms(10), ms(0)], t0);
        assert_eq!(m.sample(vec![ms(110), ms(250)], t0 + ms(250)), [400, 1000]);
        assert_eq!(m.sample(vec![ms(110), ms(300)], t0 + ms(500)), [0, 200]);
        // A worker's total never goes back; if it did, the share is 0, not a wrap.
        assert_eq!(m.sample(vec![ms(100), ms(300)], t0 + ms(750)), [0, 0]);
    }

    /// Real sockets in one group: steered to the first, every connection waits on the first
    /// socket; spread again, both get some of 64 (all 64 on one by chance: 2^-63).
    #[tokio::test]
    async fn the_program_puts_new_connections_on_the_first_socket_or_lets_the_kernel_spread_them() {
        let listeners =
            crate::app::listen_shared("127.0.0.1:0".parse().unwrap(), 2).expect("listen");
        for l in &listeners {
            l.set_nonblocking(true).unwrap();
        }
        let addr = listeners[0].local_addr().unwrap();
        // Until `want` are accepted in all (a completed connect is queued at once on loopback;
        // the deadline is for a slow machine), how many on each socket.
        let count = |want: usize| {
            let mut got = [0, 0];
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while got[0] + got[1] < want && std::time::Instant::now() < deadline {
                for (i, l) in listeners.iter().enumerate() {
                    got[i] += std::iter::from_fn(|| l.accept().ok()).count();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            got
        };
        let connect = |n: usize| -> Vec<std::net::TcpStream> {
            (0..n)
                .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
                .collect()
        };
        apply(&listeners[0], Steer::First).expect("attach");
        let held = connect(20);
        assert_eq!(count(20), [20, 0]);
        // Through either socket of the group.
        apply(&listeners[1], Steer::All).expect("attach");
        let held2 = connect(64);
        let [a, b] = count(64);
        assert_eq!(a + b, 64);
        assert!(a > 0 && b > 0, "{a}/{b}: not spread");
        drop((held, held2));
    }
}
