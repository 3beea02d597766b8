//! Requests read inside a CONNECT that portcullis answered itself (SPEC §9): plain HTTP sent
//! into a tunnel to an origination upstream, and the decrypted requests of an intercepted
//! one. Each goes through the forwarding path to the CONNECT's destination, with its pool,
//! lifetimes, retries and outcome, exactly as if it had come in absolute form.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::Method;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::forward::{self, Route};
use super::outcome::{Mode, Outcome};
use super::tunnel::AsTcp;
use super::{wait, Ctx, Flow};
use crate::config::Config;
use crate::error::ProxyError;
use crate::http1::{ClientReader, HeadError, RequestHead};
use crate::policy::Want;
use crate::state::Phase;
use crate::target::{self, Host, OriginForm, Scheme, TargetError};

/// The destination a CONNECT fixed for every request inside it.
#[derive(Debug, Clone)]
pub struct Destination {
    pub mode: Mode,
    /// The scheme the requests inside speak to portcullis: `https` when intercepted, `http`
    /// when sent in plain text.
    pub scheme: Scheme,
    pub host: Host,
    /// The CONNECT's port.
    pub port: u16,
    /// The CONNECT's `Proxy-Authorization`: the requests inside are the same client's.
    pub auth: Option<HeaderValue>,
}

impl Destination {
    /// The scheme's default port: a `Host` without a port means it.
    fn default_port(&self) -> u16 {
        match self.scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// The port as the URI would carry it: `None` for the scheme's default.
    fn explicit_port(&self) -> Option<u16> {
        (self.port != self.default_port()).then_some(self.port)
    }
}

/// Serve requests from `reader` until the client closes, idles out, or a response ends the
/// connection. The config is looked up afresh for each request, policy included.
pub async fn serve<R, W>(ctx: &Ctx, dest: Destination, mut reader: ClientReader<R>, mut writer: W)
where
    R: AsyncRead + AsTcp + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let shared = &ctx.shared;
    let mut ctx = ctx.refreshed();
    // Made once for the tunnel: its idle waits only poll them (see `wait`).
    let draining = shared.phase.reached(Phase::Draining);
    tokio::pin!(draining);
    let idle_timer = tokio::time::sleep(ctx.config.proxy.client_idle_timeout);
    tokio::pin!(idle_timer);
    // The idle limit, found again only when the config changes.
    let mut idle_for: Option<(Arc<Config>, Duration)> = None;
    loop {
        ctx.refresh();
        let idle = match &idle_for {
            Some((config, idle)) if Arc::ptr_eq(config, &ctx.config) => *idle,
            _ => {
                // Both the client's idle limit and the tunnel's apply to the client side.
                let idle = ctx
                    .config
                    .proxy
                    .client_idle_timeout
                    .min(tunnel_idle(&ctx, &dest));
                idle_for = Some((ctx.config.clone(), idle));
                idle
            }
        };
        let ready = reader.wait_for_data();
        match wait::next_request(ready, idle_timer.as_mut(), draining.as_mut(), idle).await {
            Some(Ok(true)) => {}
            _ => break,
        }
        let proxy = &ctx.config.proxy;
        reader.set_max_header_bytes(proxy.max_header_bytes);
        let head = match wait::within(proxy.header_read_timeout, pin!(reader.read_head())).await {
            Err(_) | Ok(Err(HeadError::Closed)) | Ok(Err(HeadError::Io(_))) => break,
            Ok(Err(e)) => {
                let err = match e {
                    HeadError::TooLarge => ProxyError::HeadTooLarge {
                        limit: proxy.max_header_bytes,
                    },
                    HeadError::Malformed(why) => ProxyError::bad_request(why),
                    HeadError::Closed | HeadError::Io(_) => break,
                };
                super::refuse_head(&ctx, &mut writer, dest.mode, &err).await;
                break;
            }
            Ok(Ok(head)) => head,
        };
        ctx.draining = shared.draining();
        let route = |ctx: &Ctx, head, out: &mut Outcome<'_>| route(ctx, &dest, head, out);
        if forward::serve_with(&ctx, dest.mode, &head, &mut reader, &mut writer, route).await
            != Flow::KeepAlive
        {
            break;
        }
    }
    // Bounded like every write to the client (a TLS close_notify has to be taken).
    let stall = ctx.config.proxy.client_stall_timeout;
    let _ = super::stall::StallWriter::new(&mut writer, stall)
        .shutdown()
        .await;
}

/// The tunnel idle limit of the CONNECT's upstream under the current config.
fn tunnel_idle(ctx: &Ctx, dest: &Destination) -> std::time::Duration {
    ctx.config
        .upstreams
        .iter()
        .find(|u| u.hosts.iter().any(|p| p.matches(&dest.host)))
        .map_or(ctx.config.proxy.client_idle_timeout, |u| {
            u.settings.tunnel_idle_timeout
        })
}

/// The route of a request inside the tunnel: it must name the CONNECT's host (421 otherwise),
/// and policy decides it again as the absolute-form request it stands for.
fn route<'h>(
    ctx: &Ctx,
    dest: &Destination,
    head: &'h RequestHead,
    out: &mut Outcome<'_>,
) -> Result<Route<'h>, ProxyError> {
    out.host = Some(dest.host.clone());
    out.port = dest.port;
    if ctx.draining {
        return Err(ProxyError::ShuttingDown);
    }
    let origin_form = origin_form(dest, head)?;
    check_host(dest, head)?;
    let want = Want::Forward {
        scheme: dest.scheme,
        port: dest.explicit_port(),
    };
    let allowed = ctx.decide(dest.auth.as_ref(), &dest.host, want, out)?;
    let host = super::headers::host_value(&dest.host, dest.explicit_port()).ok_or_else(|| {
        ProxyError::bad_request("the tunnel's host cannot be sent as a Host header")
    })?;
    Ok(Route {
        allowed,
        host: super::headers::HostField::Built(host),
        origin_form,
    })
}

/// The request target as origin-form: as sent (`/path?query`, `*` for OPTIONS), or the path
/// of an absolute URI naming this tunnel's host.
fn origin_form<'h>(
    dest: &Destination,
    head: &'h RequestHead,
) -> Result<OriginForm<'h>, ProxyError> {
    let bad =
        |why: &str| ProxyError::bad_request(format!("request target inside the tunnel: {why}"));
    if head.target.starts_with('/') || (head.target == "*" && head.method == Method::OPTIONS) {
        return target::parse_origin_form(&head.target).map_err(|_| bad("not a valid path"));
    }
    let absolute = target::parse_absolute(&head.target).map_err(|e| match e {
        TargetError::InvalidUri => bad("not a valid URI"),
        other => bad(&other.to_string()),
    })?;
    let requested = absolute.target;
    let port = requested.port.unwrap_or(match requested.scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    });
    if requested.host != dest.host || port != dest.port {
        return Err(misdirected(
            dest,
            &authority(&requested.host, requested.port),
        ));
    }
    Ok(absolute.origin_form)
}

/// `Host` must name the CONNECT's host, and its port unless that is the scheme's default
/// (case-insensitive). A request without one (HTTP/1.0) is for the tunnel's host.
fn check_host(dest: &Destination, head: &RequestHead) -> Result<(), ProxyError> {
    let Some(value) = head.headers.get(header::HOST) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let named = target::parse_host_header(text, dest.default_port()).ok();
    match named {
        Some((host, port)) if host == dest.host && port == dest.port => Ok(()),
        _ => Err(misdirected(dest, text)),
    }
}

fn misdirected(dest: &Destination, host: &str) -> ProxyError {
    ProxyError::Misdirected {
        host: host.chars().take(256).collect(),
        expected: format!("{}:{}", dest.host, dest.port),
    }
}

fn authority(host: &Host, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}
