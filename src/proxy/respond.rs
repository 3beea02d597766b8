//! The one place a `ProxyError` becomes a response on the wire (status, `Proxy-Status`, one-line body).

use bytes::BytesMut;
use http::Version;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::stall::StallWriter;
use super::Ctx;
use crate::error::{Culprit, ProxyError};

/// Write the SPEC's answer for `err`, count denials, and log the cause once. Returns the body
/// bytes written (what the access log counts as `bytes_out`).
pub async fn error<W: AsyncWrite + Unpin>(
    ctx: &Ctx,
    writer: &mut W,
    version: Version,
    err: &ProxyError,
    close: bool,
) -> u64 {
    if let Some(reason) = err.deny_reason() {
        ctx.shared
            .metrics
            .denied
            .with_label_values(&[reason.label()])
            .inc();
    }
    match err.culprit() {
        Culprit::Upstream | Culprit::Proxy => {
            tracing::warn!(client = %ctx.peer, error = %err, token = err.token(), "request failed")
        }
        Culprit::Client | Culprit::Policy => {
            tracing::debug!(client = %ctx.peer, error = %err, token = err.token(), "request refused")
        }
    }
    if matches!(
        err,
        ProxyError::ClientGone { .. } | ProxyError::ClientStalled { .. }
    ) {
        return 0;
    }
    let headers = err.headers();
    let extra: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = err.body();
    let mut out = BytesMut::with_capacity(256);
    crate::http1::encode_simple_response(&mut out, version, err.status(), &extra, &body, close);
    // A client that does not read its answer holds nothing past `client_stall_timeout`.
    let mut writer = StallWriter::new(writer, ctx.config.proxy.client_stall_timeout);
    if writer.write_all(&out).await.is_err() {
        return 0;
    }
    let _ = writer.flush().await;
    body.len() as u64
}
