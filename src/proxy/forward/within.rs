//! A timeout that makes its timer only when the future has to wait: most reads of a small
//! response find its bytes already buffered, and a timer made and dropped for each (the
//! runtime handle cloned, the entry set up and torn down) was pure cost.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

/// `fut`'s output, or `None` if it is not ready `limit` after it first had to wait: the same
/// bound as `tokio::time::timeout(limit, fut)`, started a poll later.
pub async fn within<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(out) => Some(out),
        Poll::Pending => tokio::time::timeout(limit, fut).await.ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ready at once: no timer needed, even with no time allowed.
    #[tokio::test(start_paused = true)]
    async fn a_ready_future_needs_no_time() {
        assert_eq!(within(Duration::ZERO, async { 7 }).await, Some(7));
    }

    /// A future that waits is bounded by `limit` from its first wait, and kept when in time.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_future_is_bounded() {
        let t0 = tokio::time::Instant::now();
        let never = within(Duration::from_secs(3), std::future::pending::<()>()).await;
        assert_eq!(never, None);
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
        let late = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            5
        };
        assert_eq!(within(Duration::from_secs(3), late).await, Some(5));
    }
}
