//! A portcullis under test, in process: listeners on 127.0.0.1 port 0, metrics and /pools readers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis::app::{self, Handle};
use portcullis::config::Config;

use super::client::raw_exchange;

/// A running proxy; dropped or `stop()`ped, it shuts down.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The TLS listener, when the config sets `tls_listen`.
    pub tls: Option<SocketAddr>,
    handle: Option<Handle>,
}

/// Start portcullis with `[proxy]` on loopback port 0 and `rest` as the remainder of the file
/// (`[defaults]`, `[[upstream]]`, `[[client]]`). `proxy_extra` lines go into `[proxy]`.
pub async fn spawn_proxy_with(proxy_extra: &str, rest: &str) -> Proxy {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\n{proxy_extra}\n{rest}"
    );
    let config = match Config::from_toml(&text, "test.toml") {
        Ok(c) => c,
        Err(e) => panic!("test config invalid:\n{e}\n---\n{text}"),
    };
    Proxy::started(config, None).await
}

/// Start portcullis from the file at `path` (listeners on port 0 belong in it); unlike
/// [`spawn_proxy_with`], [`Proxy::reload`] re-reads that file, as SIGHUP does.
pub async fn spawn_proxy_file(path: &Path) -> Proxy {
    let config = match Config::from_file(path) {
        Ok(c) => c,
        Err(e) => panic!("test config invalid:\n{e}"),
    };
    Proxy::started(config, Some(path.to_path_buf())).await
}

/// Writes a config file for [`spawn_proxy_file`]: `[proxy]` on loopback port 0 and `rest`.
pub fn write_config(path: &std::path::Path, rest: &str) {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\n{rest}"
    );
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// [`spawn_proxy_with`] with nothing extra in `[proxy]`.
pub async fn spawn_proxy(rest: &str) -> Proxy {
    spawn_proxy_with("", rest).await
}

/// An `[[upstream]]` allowing loopback `port` (private addresses allowed, as origins are local).
pub fn local_upstream(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nhosts = [\"127.0.0.1\", \"localhost\"]\nports = [{port}]\nallow_private = true\n{extra}\n"
    )
}

impl Proxy {
    async fn started(config: Config, path: Option<PathBuf>) -> Proxy {
        let handle = app::start(config, path).await.expect("proxy starts");
        Proxy {
            addr: handle.proxy_addr,
            admin: handle.admin_addr,
            tls: handle.tls_addr,
            handle: Some(handle),
        }
    }

    /// The TLS listener's address; panics without `tls_listen`.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls.expect("the config sets tls_listen")
    }

    /// Re-read the config file, as on SIGHUP.
    pub fn reload(&self) -> Result<(), portcullis::config::ConfigError> {
        self.handle().reload()
    }

    pub fn handle(&self) -> &Handle {
        self.handle.as_ref().expect("running")
    }

    /// Graceful shutdown, as on SIGTERM.
    pub async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }

    /// `GET` an admin path; (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        let r = raw_exchange(self.admin, req.as_bytes(), Duration::from_secs(5)).await;
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }

    /// The value of one series from `/metrics` (0 when absent). `labels` like `upstream="a",code="200"`;
    /// a series matches when it carries every given label.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        metric_in(&text, name, labels)
    }

    /// Polls the series `name{labels}` until it equals `want`, for at most `within`; true if it
    /// did.
    pub async fn metric_reaches(
        &self,
        name: &str,
        labels: &str,
        want: f64,
        within: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.metric(name, labels).await == want {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `/pools` document.
    pub async fn pools(&self) -> serde_json::Value {
        let (status, body) = self.admin_get("/pools").await;
        assert_eq!(status, 200, "/pools answered {status}: {body}");
        serde_json::from_str(&body).expect("/pools is JSON")
    }

    /// Busy connections across all pools.
    pub async fn busy(&self) -> u64 {
        let doc = self.pools().await;
        doc["pools"].as_array().map_or(0, |ps| {
            ps.iter().map(|p| p["busy"].as_u64().unwrap_or(0)).sum()
        })
    }

    /// Wait until no upstream connection is busy or connecting (bounded); true if reached.
    pub async fn wait_idle(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.handle().shared.pools.open() == self.idle_count() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Idle connections across all pools.
    pub fn idle_count(&self) -> usize {
        self.handle()
            .shared
            .pools
            .snapshot()
            .iter()
            .map(|(_, s)| s.idle)
            .sum()
    }
}

/// Sum of the series of `name` carrying all `labels` in a text exposition.
pub fn metric_in(text: &str, name: &str, labels: &str) -> f64 {
    let wanted: Vec<&str> = labels
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let have: Vec<&str> = rest.split(',').collect();
            wanted
                .iter()
                .all(|w| have.contains(w))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            // Not awaited: the runtime may be ending. Signal the phases so tasks stop.
            h.shared.phase.set(portcullis::state::Phase::Stopped);
            h.shared.pools.drain_all();
        }
    }
}
