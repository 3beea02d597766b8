//! Real app clients (Python `requests`, Java `HttpClient`) run as separate processes against
//! portcullis, with the scripts in tests/clients. Each run is a new client process: its own
//! connection, its own CONNECT tunnels.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// One request an app makes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppRequest {
    pub method: &'static str,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub headers: std::collections::BTreeMap<String, String>,
    /// Seconds to wait before sending it (Python only).
    pub sleep_before: f64,
}

impl AppRequest {
    pub fn get(url: &str) -> AppRequest {
        AppRequest {
            method: "GET",
            url: url.to_string(),
            body: None,
            headers: Default::default(),
            sleep_before: 0.0,
        }
    }

    pub fn post(url: &str, body: &str) -> AppRequest {
        AppRequest {
            method: "POST",
            body: Some(body.to_string()),
            ..AppRequest::get(url)
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> AppRequest {
        self.headers.insert(name.to_string(), value.to_string());
        self
    }

    pub fn after(mut self, seconds: f64) -> AppRequest {
        self.sleep_before = seconds;
        self
    }
}

/// What the app saw for one request.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct AppResponse {
    pub status: Option<u16>,
    pub body: Option<String>,
    pub proxy_status: Option<String>,
    pub error: Option<String>,
}

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

async fn run(mut cmd: tokio::process::Command, within: Duration) -> std::process::Output {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    tokio::time::timeout(within, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {within:?}"))
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Runs `requests` in order in one `requests.Session` of a new Python process whose
/// `HTTPS_PROXY` is `proxy` and whose `REQUESTS_CA_BUNDLE` is `ca` (system roots if `None`).
pub async fn python_requests(
    proxy: &str,
    ca: Option<&Path>,
    requests: &[AppRequest],
) -> Vec<AppResponse> {
    let plan = serde_json::json!({ "proxy": proxy, "ca": ca, "requests": requests });
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(clients_dir().join("fetch.py"))
        .arg(plan.to_string());
    let wait: f64 = requests.iter().map(|r| r.sleep_before).sum();
    let out = run(cmd, Duration::from_secs(60) + Duration::from_secs_f64(wait)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "python printed no result ({e}): {stdout}\n{}\n(needs python3 with requests: bash .ci/run installs it)",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A PKCS#12 trust store holding the CA certificate `ca_pem` (made with `keytool`).
pub async fn java_trust_store(ca_pem: &Path, dir: &Path) -> PathBuf {
    let store = dir.join("truststore.p12");
    let _ = std::fs::remove_file(&store);
    let mut cmd = tokio::process::Command::new("keytool");
    cmd.args([
        "-importcert",
        "-noprompt",
        "-alias",
        "portcullis-intercept",
        "-storetype",
        "PKCS12",
        "-storepass",
        "changeit",
        "-file",
    ])
    .arg(ca_pem)
    .arg("-keystore")
    .arg(&store);
    let out = run(cmd, Duration::from_secs(60)).await;
    assert!(
        out.status.success(),
        "keytool failed (needs a JDK: bash .ci/run installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    store
}

/// Runs `requests` in order with one Java `HttpClient` proxied through `proxy`, trusting only
/// `trust_store` (headers and pauses are not supported).
pub async fn java_http_client(
    proxy: std::net::SocketAddr,
    trust_store: &Path,
    requests: &[AppRequest],
) -> Vec<AppResponse> {
    let mut cmd = tokio::process::Command::new("java");
    cmd.arg(format!(
        "-Djavax.net.ssl.trustStore={}",
        trust_store.display()
    ))
    .arg("-Djavax.net.ssl.trustStorePassword=changeit")
    .arg("-Djavax.net.ssl.trustStoreType=PKCS12")
    .arg(clients_dir().join("Fetch.java"))
    .arg(proxy.ip().to_string())
    .arg(proxy.port().to_string());
    for r in requests {
        cmd.arg(r.method)
            .arg(&r.url)
            .arg(r.body.as_deref().unwrap_or("-"));
    }
    let out = run(cmd, Duration::from_secs(120)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<AppResponse> = stdout
        .lines()
        .map(|l| match l.split_once(' ') {
            Some((status, body)) if status.parse::<u16>().is_ok() => AppResponse {
                status: status.parse().ok(),
                body: Some(body.to_string()),
                proxy_status: None,
                error: None,
            },
            _ => AppResponse {
                status: None,
                body: None,
                proxy_status: None,
                error: Some(l.to_string()),
            },
        })
        .collect();
    assert_eq!(
        lines.len(),
        requests.len(),
        "java printed {stdout}\n{}\n(needs a JDK 11+: bash .ci/run installs it)",
        String::from_utf8_lossy(&out.stderr)
    );
    lines
}
