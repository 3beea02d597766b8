//! The line of checkouts waiting for a connection or a slot: first come, first served, and cheap to leave.
//!
//! A waiter that gives up (its `acquire_timeout` ran out, or its request was dropped) leaves
//! its sender behind, closed, and whoever reaches it at the front passes it by. Pruning the
//! whole line at every departure was a pass over it each time: when thousands of waiters
//! timed out together, as they do once a pool is exhausted (incidents 2 and 4), that was
//! quadratic, under the pool's lock. Here the line is pruned once the departures since the
//! last pass could be half of it, so every pass is paid for by at least half as many
//! departures as it visits senders.

use std::collections::VecDeque;

use tokio::sync::oneshot;

pub(super) struct Line<T> {
    queue: VecDeque<oneshot::Sender<T>>,
    /// Departures since the last pass: at least as many as the closed senders still queued
    /// that their waiters have reported (a sender passed by at the front is not subtracted).
    left: usize,
}

impl<T> Default for Line<T> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            left: 0,
        }
    }
}

impl<T> Line<T> {
    /// Join at the end.
    pub(super) fn push(&mut self, tx: oneshot::Sender<T>) {
        self.queue.push_back(tx);
    }

    /// The first waiter still waiting, out of the line; the gone ones before it go too.
    pub(super) fn pop(&mut self) -> Option<oneshot::Sender<T>> {
        while let Some(tx) = self.queue.pop_front() {
            if !tx.is_closed() {
                return Some(tx);
            }
        }
        None
    }

    /// Whether no one is waiting. The gone ones at the front go; one still waiting is
    /// usually there, so this looks at few senders.
    pub(super) fn is_empty(&mut self) -> bool {
        while self.queue.front().is_some_and(oneshot::Sender::is_closed) {
            self.queue.pop_front();
        }
        self.queue.is_empty()
    }

    /// How many are still waiting: a pass over the line, for `/pools`, not for requests.
    pub(super) fn waiting(&self) -> usize {
        self.queue.iter().filter(|tx| !tx.is_closed()).count()
    }

    /// A waiter gave up (its receiver is gone): its sender stays until it is reached, or
    /// until enough have left that a pass over the line is worth it, so that a pool that never
    /// frees up does not grow a line of the gone.
    pub(super) fn left(&mut self) {
        self.left += 1;
        if self.left * 2 >= self.queue.len() {
            self.queue.retain(|tx| !tx.is_closed());
            self.left = 0;
        }
    }

    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> (Line<u32>, Vec<oneshot::Receiver<u32>>) {
        let mut line = Line::default();
        let rxs = (0..n)
            .map(|_| {
                let (tx, rx) = oneshot::channel();
                line.push(tx);
                rx
            })
            .collect();
        (line, rxs)
    }

    #[test]
    fn serves_the_oldest_still_waiting_first() {
        let (mut line, mut rxs) = line(4);
        // The first two give up without saying so (as a dropped request's wait may not).
        drop(rxs.drain(..2));
        assert!(!line.is_empty());
        assert_eq!(line.queued(), 2, "the gone ones at the front went");
        line.pop().unwrap().send(7).unwrap();
        assert_eq!(rxs[0].try_recv(), Ok(7));
        drop(rxs.remove(0));
        assert_eq!(line.waiting(), 1);
        line.pop().unwrap().send(8).unwrap();
        assert_eq!(rxs[0].try_recv(), Ok(8));
        assert!(line.pop().is_none());
        assert!(line.is_empty());
    }

    #[test]
    fn is_pruned_once_the_departures_could_be_half_of_it() {
        let (mut line, mut rxs) = line(100);
        // Every other waiter leaves, from the back: the front stays live, so only a pass
        // takes the gone ones out.
        for i in (0..100).rev().step_by(2) {
            drop(rxs.remove(i));
            line.left();
            assert!(
                line.queued() <= line.waiting() * 2 + 1,
                "{} queued for {} waiting",
                line.queued(),
                line.waiting()
            );
        }
        assert_eq!(line.waiting(), 50);
        // Then all of the rest, newest first: the line ends empty, not full of the gone.
        while let Some(rx) = rxs.pop() {
            drop(rx);
            line.left();
        }
        assert_eq!(line.queued(), 0);
        assert!(line.is_empty());
    }

    #[test]
    fn departures_cost_a_bounded_number_of_visits_each() {
        // Count the senders each pass visits: with n waiters leaving one by one, a pass per
        // departure visits ~n²/2 of them; pruning by halves, fewer than 3n.
        let n = 4096;
        let (mut line, mut rxs) = line(n);
        let mut visits = 0;
        while let Some(rx) = rxs.pop() {
            drop(rx);
            let queued = line.queued();
            line.left();
            if line.left == 0 {
                // A pass: it visited every sender queued.
                visits += queued;
            }
        }
        assert!(visits < 3 * n, "{visits} visits for {n} departures");
        assert_eq!(line.queued(), 0);
    }
}
