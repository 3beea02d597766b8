//! A client connection's bounded waits, arming no timer on the common path: the wait for the
//! next request on a keep-alive connection, and waits that usually finish at their first poll.
//!
//! `tokio::time::timeout` reads the clock when it is made, and once its future is pending it
//! puts a timer in the runtime's wheel and takes it out again when dropped, each under the
//! wheel's lock. A keep-alive connection did that for every request it idled before. Here the
//! connection keeps one timer for its idle waits: each wait only moves the deadline it wants,
//! and the timer is re-armed when it fires before that deadline. Under load it is touched about
//! once per `client_idle_timeout`, not once per request.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{error::Elapsed, timeout, Instant, Sleep};

use crate::phase::Reached;

/// Wait for `ready` (the client sent again, or closed) for at most `limit` from now, unless a
/// drain begins first (`draining`): `None` then. `timer` is the connection's idle timer; it may
/// be armed for any deadline when this starts.
pub async fn next_request<T>(
    ready: impl Future<Output = T>,
    mut timer: Pin<&mut Sleep>,
    mut draining: Pin<&mut Reached<'_>>,
    limit: Duration,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    if timer.deadline() > deadline {
        // Armed for later than this wait may last (first use, or a shorter limit since).
        timer.as_mut().reset(deadline);
    }
    tokio::pin!(ready);
    loop {
        tokio::select! {
            biased;
            r = &mut ready => return Some(r),
            _ = draining.as_mut() => return None,
            _ = timer.as_mut() => {
                if timer.deadline() >= deadline {
                    return None;
                }
                // Armed by an earlier wait, which ended sooner: go on to this one's deadline.
                timer.as_mut().reset(deadline);
            }
        }
    }
}

/// `timeout(limit, fut)`, except that a future done at its first poll arms no timer and reads
/// no clock: the request head that arrives whole with the readiness that woke the connection.
pub async fn within<F: Future>(limit: Duration, fut: F) -> Result<F::Output, Elapsed> {
    tokio::pin!(fut);
    let first = std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    match first {
        Some(v) => Ok(v),
        None => {
            crate::workers::arming_a_timer();
            timeout(limit, fut).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase::{Phase, Phases};
    use tokio::sync::oneshot;

    #[tokio::test(start_paused = true)]
    async fn the_idle_wait_times_out_at_its_own_deadline_whatever_the_timer_held() {
        let phases = Phases::default();
        let draining = phases.reached(Phase::Draining);
        tokio::pin!(draining);
        let timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timer);
        // First wait: the timer is armed for later than the limit, so it is brought forward.
        let start = Instant::now();
        let r = next_request(
            std::future::pending::<()>(),
            timer.as_mut(),
            draining.as_mut(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(r, None);
        assert_eq!(Instant::now() - start, Duration::from_secs(5));

        // A wait that ends early leaves the timer armed for its deadline (10 s from here).
        let (tx, rx) = oneshot::channel();
        let wait = next_request(
            rx,
            timer.as_mut(),
            draining.as_mut(),
            Duration::from_secs(10),
        );
        let send = async {
            tokio::time::sleep(Duration::from_secs(8)).await;
            tx.send(7).unwrap();
        };
        let (r, ()) = tokio::join!(wait, send);
        assert_eq!(r.map(Result::unwrap), Some(7));

        // The next wait (10 s) finds the timer armed for the last one's deadline, 2 s away: it
        // fires then, is moved on, and the wait ends 10 s after it began, not before.
        let start = Instant::now();
        let r = next_request(
            std::future::pending::<()>(),
            timer.as_mut(),
            draining.as_mut(),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(r, None);
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_ends_the_idle_wait_and_a_ready_client_wins_over_both() {
        let phases = Phases::default();
        let draining = phases.reached(Phase::Draining);
        tokio::pin!(draining);
        let timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timer);
        let r = next_request(
            std::future::ready(1),
            timer.as_mut(),
            draining.as_mut(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(r, Some(1));
        let start = Instant::now();
        let drain = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            phases.set(Phase::Draining);
        };
        let wait = next_request(
            std::future::pending::<()>(),
            timer.as_mut(),
            draining.as_mut(),
            Duration::from_secs(60),
        );
        let (r, ()) = tokio::join!(wait, drain);
        assert_eq!(r, None);
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn within_is_a_timeout_for_a_pending_future_and_free_for_a_ready_one() {
        assert_eq!(
            within(Duration::from_secs(1), async { 3 }).await.ok(),
            Some(3)
        );
        let start = Instant::now();
        let r = within(Duration::from_secs(4), std::future::pending::<()>()).await;
        assert!(r.is_err());
        assert_eq!(Instant::now() - start, Duration::from_secs(4));
        let late = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            5
        };
        assert_eq!(within(Duration::from_secs(4), late).await.ok(), Some(5));
    }
}
