//! The client's request body: read whole when it fits the replay buffer, else streamed to the
//! upstream while the exchange runs.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::error::ProxyError;
use crate::http1::{BodyFraming, BodyState, ClientReader, MAX_BODY_CHUNK};
use crate::upstream::Piece;

/// The client's request body: held whole (replayable) or streamed.
pub enum ClientBody {
    Full(Bytes),
    /// Over `max_replay_body`: what was read so far, and the rest still in the client stream.
    Streaming {
        prefix: Bytes,
        state: BodyState,
        length: Option<u64>,
    },
}

/// Read the body whole when it fits `limit`; otherwise keep what was read and stream the rest.
/// Each wait for the next piece is bounded by `stall` (`client_stall_timeout`).
pub async fn read<R: AsyncRead + Unpin>(
    reader: &mut ClientReader<R>,
    framing: BodyFraming,
    limit: usize,
    stall: Duration,
) -> Result<ClientBody, ProxyError> {
    let length = match framing {
        BodyFraming::Empty => return Ok(ClientBody::Full(Bytes::new())),
        BodyFraming::Length(n) => Some(n),
        BodyFraming::Chunked => None,
    };
    let mut state = BodyState::new(framing);
    if let Some(n) = length {
        if n > limit as u64 {
            return Ok(ClientBody::Streaming {
                prefix: Bytes::new(),
                state,
                length,
            });
        }
    }
    // Room for one read, not for the declared length: a client that declares a large body and
    // sends nothing must not make us allocate it.
    let mut buf = Vec::with_capacity(length.map_or(8 * 1024, |n| {
        usize::try_from(n).map_or(MAX_BODY_CHUNK, |n| n.min(MAX_BODY_CHUNK))
    }));
    while let Some(chunk) = next_piece(reader, &mut state, stall).await? {
        make_room(&mut buf, chunk.len(), length);
        buf.extend_from_slice(&chunk);
        if buf.len() > limit {
            return Ok(ClientBody::Streaming {
                prefix: Bytes::from(buf),
                state,
                length,
            });
        }
    }
    Ok(ClientBody::Full(Bytes::from(buf)))
}

/// The next piece of the request body, `None` at its end; a client that sends nothing for
/// `stall` has stalled.
///
/// One wait is one `read_body_chunk`: data returns as soon as any arrives, so a slow upload
/// that keeps moving is never cut, while a chunk-size line or the trailers (at most a few
/// KiB) must arrive within `stall` as a whole, not byte by byte for ever.
async fn next_piece<R: AsyncRead + Unpin>(
    reader: &mut ClientReader<R>,
    state: &mut BodyState,
    stall: Duration,
) -> Result<Option<Bytes>, ProxyError> {
    // `read_body_chunk` is cancel-safe: a timeout loses no byte.
    match tokio::time::timeout(stall, reader.read_body_chunk(state)).await {
        Ok(Ok(piece)) => Ok(piece),
        Ok(Err(e)) => Err(ProxyError::request_body(e)),
        Err(_) => Err(ProxyError::BodyStalled {
            timeout_ms: stall.as_millis(),
        }),
    }
}

/// Room in `buf` for `more` bytes that have arrived. It at least doubles (a body costs O(n)
/// copies) but stops at the declared length, so a body ends in a buffer of its own size.
fn make_room(buf: &mut Vec<u8>, more: usize, declared: Option<u64>) {
    let needed = buf.len().saturating_add(more);
    if needed <= buf.capacity() {
        return;
    }
    let doubled = buf.capacity().saturating_mul(2);
    let want = match declared.and_then(|n| usize::try_from(n).ok()) {
        Some(n) => doubled.min(n).max(needed),
        None => doubled.max(needed),
    };
    buf.reserve_exact(want - buf.len());
}

/// Run `exchange` while feeding the streamed request body; stop pumping once the response head
/// is in. A failed body ends it at once with the body's error (the exchange is abandoned: the
/// upstream may be blocked on a body it will never get whole).
pub async fn with_pump<F, P>(exchange: F, pump: P) -> Result<(F::Output, Option<u64>), ProxyError>
where
    F: std::future::Future,
    P: std::future::Future<Output = Result<u64, ProxyError>>,
{
    tokio::pin!(exchange);
    tokio::pin!(pump);
    let mut pumped = None;
    loop {
        tokio::select! {
            out = &mut exchange => return Ok((out, pumped)),
            r = &mut pump, if pumped.is_none() => pumped = Some(r?),
        }
    }
}

/// The bounds of a streamed body's waits.
pub struct PumpLimits<'a> {
    /// For the next piece from the client (`client_stall_timeout`).
    pub stall: Duration,
    /// For the upstream to take a piece (`response_timeout`).
    pub upstream_wait: Duration,
    /// The upstream's name, for the error when it does not.
    pub upstream: &'a str,
}

/// Copy the rest of a large request body from the client into the upstream request. Every
/// wait is bounded: for the client by `client_stall_timeout`, for the upstream to take the
/// next piece by `response_timeout`.
///
/// Only a body read to its end is ended upstream ([`Piece::End`]); a failure, a stall, or the
/// pump dropped half-way fails the upstream request instead, so the connection is abandoned
/// and never writes a chunked body's last-chunk.
pub async fn pump<R: AsyncRead + Unpin>(
    reader: &mut ClientReader<R>,
    prefix: Bytes,
    mut state: BodyState,
    tx: mpsc::Sender<Piece>,
    limits: PumpLimits<'_>,
) -> Result<u64, ProxyError> {
    let mut total = prefix.len() as u64;
    let mut next = (!prefix.is_empty()).then_some(prefix);
    loop {
        if let Some(piece) = next.take() {
            match tokio::time::timeout(limits.upstream_wait, tx.send(Piece::Data(piece))).await {
                Ok(Ok(())) => {}
                // The connection dropped the body: the exchange is over (answered or failed).
                Ok(Err(_)) => return Ok(total),
                // Dropping `tx` without `Piece::End` aborts the upstream request.
                Err(_) => {
                    return Err(ProxyError::ResponseTimeout {
                        upstream: limits.upstream.to_string(),
                        timeout_ms: limits.upstream_wait.as_millis(),
                    })
                }
            }
        }
        match next_piece(reader, &mut state, limits.stall).await {
            Ok(Some(chunk)) => {
                total += chunk.len() as u64;
                next = Some(chunk);
            }
            Ok(None) => {
                let _ = tx.send(Piece::End).await;
                return Ok(total);
            }
            Err(err) => {
                // The upstream request fails too: it must not see a truncated body as whole.
                let _ = tx.try_send(Piece::Failed(io::Error::other(err.to_string())));
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads of 64 KiB into a buffer that starts at one read: capacities along the way.
    fn growth(declared: Option<u64>, body: usize) -> Vec<usize> {
        let mut buf = Vec::with_capacity(MAX_BODY_CHUNK);
        let mut seen = vec![buf.capacity()];
        while buf.len() < body {
            let more = (body - buf.len()).min(MAX_BODY_CHUNK);
            make_room(&mut buf, more, declared);
            buf.extend(std::iter::repeat_n(0u8, more));
            if seen.last() != Some(&buf.capacity()) {
                seen.push(buf.capacity());
            }
        }
        seen
    }

    #[test]
    fn a_body_buffer_doubles_up_to_the_declared_length() {
        const K: usize = 1024;
        let n = 700 * K + 13;
        assert_eq!(
            growth(Some(n as u64), n),
            [64 * K, 128 * K, 256 * K, 512 * K, n]
        );
        // Chunked: no length to stop at.
        assert_eq!(
            growth(None, n),
            [64 * K, 128 * K, 256 * K, 512 * K, 1024 * K]
        );
        // What fits is never moved.
        assert_eq!(growth(Some(100), 100), [64 * K]);
    }
}
