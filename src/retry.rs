//! When a failed request may be sent again (SPEC §6): a pure decision, table-tested.

use http::Method;

/// Where the failed attempt stood when the connection died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The connection was found closed, or failed before the request was fully written.
    BeforeWrite,
    /// The request was written, then the connection was reset or closed before any byte of
    /// the response arrived.
    AfterWrite,
    /// The request was written and the connection is alive, but no response head came within
    /// `response_timeout`: the upstream may still be acting on it.
    NoResponse,
    /// Response bytes had arrived (an invalid response, or the body failed): the upstream
    /// acted on it.
    AfterResponse,
}

impl Stage {
    /// Whether a failure at this stage is the connection itself having been dropped: what a
    /// reused connection that a silent firewall forgot looks like (SPEC §11 "stale reuse").
    pub fn connection_dropped(self) -> bool {
        matches!(self, Stage::BeforeWrite | Stage::AfterWrite)
    }
}

/// The `reason` label of `portcullis_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    ClosedBeforeWrite,
    ResetAfterWrite,
}

impl RetryReason {
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::ClosedBeforeWrite => "closed_before_write",
            RetryReason::ResetAfterWrite => "reset_after_write",
        }
    }
}

/// Everything the decision depends on, gathered by the forwarding code.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// `retry_on_reset` of the upstream.
    pub retry_on_reset: bool,
    /// The failed connection came from the pool (a fresh one failing says the upstream is down).
    pub reused: bool,
    /// The body is held whole in the replay buffer.
    pub replayable: bool,
    /// Sending it twice is harmless: idempotent method, `Idempotency-Key`, or `retry_non_idempotent`.
    pub repeatable: bool,
    /// Sends so far, including the failed one.
    pub sends: u8,
}

/// Retry once on a new connection, or give up.
pub fn decide(f: &Facts, stage: Stage) -> Option<RetryReason> {
    if !f.retry_on_reset || !f.reused || !f.replayable || f.sends >= 2 {
        return None;
    }
    match stage {
        Stage::BeforeWrite => Some(RetryReason::ClosedBeforeWrite),
        Stage::AfterWrite if f.repeatable => Some(RetryReason::ResetAfterWrite),
        Stage::AfterWrite | Stage::NoResponse | Stage::AfterResponse => None,
    }
}

/// Whether sending this request twice is harmless.
pub fn repeatable(method: &Method, has_idempotency_key: bool, retry_non_idempotent: bool) -> bool {
    idempotent(method) || has_idempotency_key || retry_non_idempotent
}

/// RFC 9110 §9.2.2 idempotent methods.
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Could this request be retried if its connection died after it was written? If not, it may
/// only go out on a connection idle at most `unsafe_reuse_max_idle` (SPEC §6, last paragraph).
pub fn retriable_after_write(retry_on_reset: bool, replayable: bool, repeatable: bool) -> bool {
    retry_on_reset && replayable && repeatable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_table() {
        use RetryReason::*;
        use Stage::*;
        // (retry_on_reset, reused, replayable, repeatable, sends, stage) -> decision
        let cases = [
            // any method is retried when the request never fully left
            (
                true,
                true,
                true,
                false,
                1,
                BeforeWrite,
                Some(ClosedBeforeWrite),
            ),
            (
                true,
                true,
                true,
                true,
                1,
                BeforeWrite,
                Some(ClosedBeforeWrite),
            ),
            // after writing: only repeatable requests
            (true, true, true, true, 1, AfterWrite, Some(ResetAfterWrite)),
            (true, true, true, false, 1, AfterWrite, None),
            // never after response bytes
            (true, true, true, true, 1, AfterResponse, None),
            // nor when the upstream was merely slow: it may still act on the first one
            (true, true, true, true, 1, NoResponse, None),
            // fresh connections are not retried
            (true, false, true, true, 1, BeforeWrite, None),
            (true, false, true, true, 1, AfterWrite, None),
            // a body that was not kept cannot be replayed
            (true, true, false, true, 1, BeforeWrite, None),
            // switched off
            (false, true, true, true, 1, BeforeWrite, None),
            // never sent upstream more than twice
            (true, true, true, true, 2, BeforeWrite, None),
            (true, true, true, true, 2, AfterWrite, None),
        ];
        for (ror, reused, replayable, repeatable, sends, stage, want) in cases {
            let f = Facts {
                retry_on_reset: ror,
                reused,
                replayable,
                repeatable,
                sends,
            };
            assert_eq!(decide(&f, stage), want, "{f:?} {stage:?}");
        }
    }

    #[test]
    fn repeatable_table() {
        let cases = [
            (Method::GET, false, false, true),
            (Method::HEAD, false, false, true),
            (Method::OPTIONS, false, false, true),
            (Method::TRACE, false, false, true),
            (Method::PUT, false, false, true),
            (Method::DELETE, false, false, true),
            (Method::POST, false, false, false),
            (Method::PATCH, false, false, false),
            (Method::POST, true, false, true),
            (Method::PATCH, false, true, true),
            (Method::CONNECT, false, false, false),
        ];
        for (m, key, rni, want) in cases {
            assert_eq!(
                repeatable(&m, key, rni),
                want,
                "{m} key={key} retry_non_idempotent={rni}"
            );
        }
    }

    #[test]
    fn unsafe_reuse_applies_when_a_retry_is_impossible() {
        assert!(retriable_after_write(true, true, true));
        assert!(!retriable_after_write(true, true, false), "a plain POST");
        assert!(
            !retriable_after_write(true, false, true),
            "a body too large to replay"
        );
        assert!(
            !retriable_after_write(false, true, true),
            "retries switched off"
        );
    }
}
