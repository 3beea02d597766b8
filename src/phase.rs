//! The process's phase of life (running, draining, stopped): one atomic load to read, and a
//! wait that costs no lock once it is registered.
//!
//! Every client connection waits for the phase twice over its whole life (to be cut when the
//! process stops, and to close when idle while it drains), and its task is polled several
//! times a request. A `tokio::sync::watch` wait takes the channel's mutex on every poll, and
//! that mutex is one for the whole process: under load both workers took it on every wake-up.
//! Here a wait registers its task's waker once; later polls compare the phase and the waker and
//! return. Changing the phase wakes every registered waiter.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use slab::Slab;

/// Where the process is in its life, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// SIGTERM: no new connections; in-flight work finishes, then connections close.
    Draining,
    /// `shutdown_grace` is over: whatever is still running is cut.
    Stopped,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Running,
            1 => Phase::Draining,
            _ => Phase::Stopped,
        }
    }
}

/// The current phase, and the wakers of the tasks waiting for a later one.
pub struct Phases {
    now: AtomicU8,
    waiters: Mutex<Slab<Waker>>,
}

impl Default for Phases {
    fn default() -> Phases {
        Phases {
            now: AtomicU8::new(Phase::Running as u8),
            waiters: Mutex::new(Slab::new()),
        }
    }
}

impl Phases {
    pub fn get(&self) -> Phase {
        Phase::from_u8(self.now.load(Ordering::Acquire))
    }

    /// Move to `phase` (never back) and wake every waiter to look.
    pub fn set(&self, phase: Phase) {
        self.now.fetch_max(phase as u8, Ordering::AcqRel);
        for (_, waker) in self.waiters().iter() {
            waker.wake_by_ref();
        }
    }

    /// Completes once the phase is `phase` or later.
    pub fn reached(&self, phase: Phase) -> Reached<'_> {
        Reached {
            phases: self,
            phase,
            registered: None,
        }
    }

    /// How many waits are registered (for tests).
    pub fn waiting(&self) -> usize {
        self.waiters().len()
    }

    fn waiters(&self) -> MutexGuard<'_, Slab<Waker>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The future of [`Phases::reached`]. Polled with the waker it registered, it only loads the
/// phase; it leaves the list when dropped.
pub struct Reached<'a> {
    phases: &'a Phases,
    phase: Phase,
    /// Its key in the list and the waker stored there.
    registered: Option<(usize, Waker)>,
}

impl Future for Reached<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.phases.get() >= this.phase {
            return Poll::Ready(());
        }
        match &this.registered {
            Some((_, waker)) if waker.will_wake(cx.waker()) => return Poll::Pending,
            _ => {}
        }
        let waker = cx.waker().clone();
        {
            let mut waiters = this.phases.waiters();
            match &mut this.registered {
                Some((key, stored)) => {
                    waiters[*key] = waker.clone();
                    *stored = waker;
                }
                None => this.registered = Some((waiters.insert(waker.clone()), waker)),
            }
        }
        // A change between the first load and the registration woke nobody: look again.
        if this.phases.get() >= this.phase {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Reached<'_> {
    fn drop(&mut self) {
        if let Some((key, _)) = self.registered.take() {
            self.phases.waiters().remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_wait_ends_when_the_phase_is_reached_and_not_before() {
        let phases = Arc::new(Phases::default());
        let p = phases.clone();
        let draining = tokio::spawn(async move { p.reached(Phase::Draining).await });
        let p = phases.clone();
        let stopped = tokio::spawn(async move { p.reached(Phase::Stopped).await });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while phases.waiting() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waits never registered"
            );
            tokio::task::yield_now().await;
        }
        phases.set(Phase::Draining);
        tokio::time::timeout(Duration::from_secs(10), draining)
            .await
            .expect("the drain wait woke")
            .unwrap();
        assert!(!stopped.is_finished());
        assert_eq!(phases.waiting(), 1, "a finished wait leaves the list");
        phases.set(Phase::Stopped);
        tokio::time::timeout(Duration::from_secs(10), stopped)
            .await
            .expect("the stop wait woke")
            .unwrap();
        assert_eq!(phases.waiting(), 0);
    }

    #[tokio::test]
    async fn a_reached_phase_is_ready_at_once_and_never_goes_back() {
        let phases = Phases::default();
        phases.set(Phase::Stopped);
        phases.set(Phase::Draining);
        assert_eq!(phases.get(), Phase::Stopped);
        phases.reached(Phase::Draining).await;
        assert_eq!(phases.waiting(), 0, "ready at once: nothing registered");
    }

    #[test]
    fn a_dropped_wait_leaves_the_list_and_a_new_waker_replaces_the_old() {
        let phases = Phases::default();
        let mut wait = Box::pin(phases.reached(Phase::Draining));
        let first = Waker::noop();
        assert!(wait
            .as_mut()
            .poll(&mut Context::from_waker(first))
            .is_pending());
        assert!(wait
            .as_mut()
            .poll(&mut Context::from_waker(first))
            .is_pending());
        assert_eq!(phases.waiting(), 1);
        let woken = Arc::new(Flag::default());
        let second = Waker::from(woken.clone());
        assert!(wait
            .as_mut()
            .poll(&mut Context::from_waker(&second))
            .is_pending());
        assert_eq!(phases.waiting(), 1, "re-registered in place");
        phases.set(Phase::Draining);
        assert!(
            woken.0.load(Ordering::SeqCst),
            "the latest waker is the one woken"
        );
        assert!(wait
            .as_mut()
            .poll(&mut Context::from_waker(&second))
            .is_ready());
        drop(wait);
        assert_eq!(phases.waiting(), 0);
    }

    #[derive(Default)]
    struct Flag(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}
