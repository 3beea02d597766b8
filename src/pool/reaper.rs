//! The reaper: closes each idle connection as soon as its idle time or lifetime runs out.

use std::sync::{Arc, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{reuse, Inner, Poolable};
use crate::metrics::CloseReason;

/// Runs until the pool is dropped (a forgotten pool is), sleeping until the next idle
/// deadline or a wake-up.
pub(super) async fn run<C: Poolable>(pool: Weak<Inner<C>>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(inner) = pool.upgrade() else { return };
            let (next, vacant) = sweep(&inner, Instant::now());
            if vacant {
                // Its last connection is gone: the registry may forget it, which ends this
                // loop once `inner` is dropped.
                inner.vacated();
            }
            next
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// Close every expired idle connection; return the earliest remaining deadline, and whether
/// closing them left the pool vacant.
fn sweep<C: Poolable>(inner: &Arc<Inner<C>>, now: Instant) -> (Option<Instant>, bool) {
    let mut st = inner.lock();
    let max_lifetime = st.limits.max_lifetime;
    let idle_timeout = st.limits.idle_timeout;
    let expired = st.idle.take_where(|entry| {
        if entry.conn.is_open() {
            reuse::expired_by(
                &entry.meta.life.under(idle_timeout),
                entry.deadline,
                now,
                max_lifetime,
            )
        } else {
            Some(CloseReason::RemoteClosed)
        }
    });
    let mut doomed = Vec::with_capacity(expired.len());
    for (entry, reason) in expired {
        inner.retire_idle(&mut st, entry.meta.id, reason);
        doomed.push(entry.conn);
    }
    st.fit_surplus();
    // Idle above max_idle for a second (SPEC §5): the oldest go, as pool_full.
    let trim = st.surplus.due(now);
    for entry in st.idle.take_oldest(trim) {
        inner.retire_idle(&mut st, entry.meta.id, CloseReason::PoolFull);
        doomed.push(entry.conn);
    }
    st.idle.compact();
    let next = st
        .idle
        .iter()
        .map(|e| e.deadline)
        .chain(st.surplus.next())
        .min();
    st.reaper_at = next;
    drop(st);
    let vacant = inner.close(doomed);
    (next, vacant)
}
