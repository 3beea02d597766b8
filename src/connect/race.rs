//! Happy eyeballs (RFC 8305): the order a name's addresses are tried in, and the race between them.
//!
//! A blackholed address answers nothing, so waiting for it to fail would spend the whole
//! `connect_timeout` on it and never try the next one. Instead each attempt gets a head start
//! of [`ATTEMPT_DELAY`]; if it has neither connected nor failed by then, the next address is
//! dialed too, racing the ones still pending. A failure starts the next attempt at once. The
//! first connection wins and the others are dropped (their sockets closed); one deadline
//! bounds the whole race.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::{sleep_until, Instant};

/// RFC 8305 §5's recommended "Connection Attempt Delay".
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The order to try addresses in (RFC 8305 §4): the resolver's order within each family,
/// the families alternating, starting with the family of the first answer.
pub fn interleave(addrs: &[IpAddr]) -> Vec<IpAddr> {
    let first_v6 = addrs.first().is_some_and(IpAddr::is_ipv6);
    let (first, other): (Vec<IpAddr>, Vec<IpAddr>) =
        addrs.iter().partition(|ip| ip.is_ipv6() == first_v6);
    let mut order = Vec::with_capacity(addrs.len());
    let (mut first, mut other) = (first.into_iter(), other.into_iter());
    loop {
        match (first.next(), other.next()) {
            (None, None) => return order,
            (a, b) => order.extend(a.into_iter().chain(b)),
        }
    }
}

/// How a race ended without a connection.
#[derive(Debug)]
pub enum RaceError {
    /// The deadline passed with attempts still pending (the addresses that were tried).
    TimedOut(Vec<SocketAddr>),
    /// Every address failed; the last failure.
    Failed(SocketAddr, io::Error),
    /// There was no address to try.
    NoAddress,
}

/// Dial `addrs` (already in the order to try) with `dial`, as described at the top.
pub async fn race<S, F, Fut>(
    addrs: &[SocketAddr],
    deadline: Instant,
    mut dial: F,
) -> Result<(S, SocketAddr), RaceError>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<S>>,
{
    let mut queue = addrs.iter().copied();
    let mut pending = FuturesUnordered::new();
    let mut start = |addr: SocketAddr, pending: &mut FuturesUnordered<_>| {
        let attempt = dial(addr);
        pending.push(async move { (addr, attempt.await) });
    };
    let Some(first) = queue.next() else {
        return Err(RaceError::NoAddress);
    };
    start(first, &mut pending);
    let mut next_start = Instant::now() + ATTEMPT_DELAY;
    loop {
        let more = queue.len() > 0;
        tokio::select! {
            biased;
            Some((addr, outcome)) = pending.next() => match outcome {
                Ok(stream) => return Ok((stream, addr)),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "connect failed; trying the next address");
                    if let Some(next) = queue.next() {
                        start(next, &mut pending);
                        next_start = Instant::now() + ATTEMPT_DELAY;
                    } else if pending.is_empty() {
                        return Err(RaceError::Failed(addr, e));
                    }
                }
            },
            _ = sleep_until(next_start), if more => {
                if let Some(next) = queue.next() {
                    tracing::debug!(addr = %next, "no answer yet; racing the next address");
                    start(next, &mut pending);
                }
                next_start = Instant::now() + ATTEMPT_DELAY;
            }
            _ = sleep_until(deadline) => {
                let tried = addrs.len() - queue.len();
                return Err(RaceError::TimedOut(addrs[..tried].to_vec()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn interleave_cases() {
        let cases: &[(&[&str], &[&str])] = &[
            (&[], &[]),
            (&["1.1.1.1"], &["1.1.1.1"]),
            (&["1.1.1.1", "2.2.2.2"], &["1.1.1.1", "2.2.2.2"]),
            (&["::1", "::2"], &["::1", "::2"]),
            (
                &["::1", "::2", "1.1.1.1", "2.2.2.2"],
                &["::1", "1.1.1.1", "::2", "2.2.2.2"],
            ),
            (
                &["1.1.1.1", "2.2.2.2", "3.3.3.3", "::1"],
                &["1.1.1.1", "::1", "2.2.2.2", "3.3.3.3"],
            ),
            (
                &["1.1.1.1", "::1", "::2", "::3", "2.2.2.2"],
                &["1.1.1.1", "::1", "2.2.2.2", "::2", "::3"],
            ),
        ];
        for &(input, want) in cases {
            assert_eq!(interleave(&ips(input)), ips(want), "{input:?}");
        }
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], 443))
    }

    /// A fake dial: each address answers after its delay, with success or a refusal.
    fn fake(
        plan: &'static [(u8, u64, bool)],
    ) -> impl FnMut(SocketAddr) -> std::pin::Pin<Box<dyn Future<Output = io::Result<u8>>>> {
        move |a: SocketAddr| {
            let last = match a.ip() {
                IpAddr::V4(v4) => v4.octets()[3],
                IpAddr::V6(_) => 0,
            };
            let (_, ms, ok) = plan
                .iter()
                .copied()
                .find(|(l, _, _)| *l == last)
                .unwrap_or((last, u64::MAX / 4, false));
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if ok {
                    Ok(last)
                } else {
                    Err(io::Error::from(io::ErrorKind::ConnectionRefused))
                }
            })
        }
    }

    /// (what each address does, expected winner or error, expected time taken in ms)
    #[tokio::test(start_paused = true)]
    async fn race_cases() {
        type Plan = &'static [(u8, u64, bool)];
        let cases: &[(&str, Plan, Result<u8, &str>, u64)] = &[
            ("first answers", &[(1, 10, true), (2, 10, true)], Ok(1), 10),
            (
                "first refuses: next at once",
                &[(1, 5, false), (2, 10, true)],
                Ok(2),
                15,
            ),
            // Silent first address: the second starts after the delay and wins.
            ("blackholed first", &[(2, 10, true)], Ok(2), 260),
            // Two silent ones: the third starts 500 ms in.
            ("two blackholed", &[(3, 10, true)], Ok(3), 510),
            // A slow first still wins if it answers before the next one does.
            (
                "slow first wins the race",
                &[(1, 300, true), (2, 100, true)],
                Ok(1),
                300,
            ),
            (
                "all refuse",
                &[(1, 5, false), (2, 5, false), (3, 5, false)],
                Err("failed"),
                15,
            ),
            ("all silent", &[], Err("timed out"), 2000),
            // The last address refuses while the first is still silent: wait for the first.
            (
                "silent then refused",
                &[(2, 1, false)],
                Err("timed out"),
                2000,
            ),
        ];
        let addrs = [addr(1), addr(2), addr(3)];
        for &(case, plan, ref want, ms) in cases {
            let started = Instant::now();
            let deadline = started + Duration::from_secs(2);
            let got = race(&addrs, deadline, fake(plan)).await;
            let took = started.elapsed().as_millis() as u64;
            match (got, want) {
                (Ok((winner, a)), Ok(w)) => {
                    assert_eq!(winner, *w, "{case}");
                    assert_eq!(a, addr(*w), "{case}");
                }
                (Err(RaceError::Failed(..)), Err("failed")) => {}
                (Err(RaceError::TimedOut(tried)), Err("timed out")) => {
                    assert_eq!(tried, addrs, "{case}: every address was tried");
                }
                (got, want) => panic!("{case}: got {:?}, want {want:?}", got.map(|(w, _)| w)),
            }
            assert_eq!(took, ms, "{case}");
        }
        let none: [SocketAddr; 0] = [];
        assert!(matches!(
            race(&none, Instant::now(), fake(&[])).await,
            Err(RaceError::NoAddress)
        ));
    }
}
