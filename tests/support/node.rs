//! Real Node.js clients (tests/node: undici, installed by `.ci/run` with `npm ci`).

use std::path::PathBuf;
use std::time::Duration;

/// What the Node client printed: the response, or the error it threw.
#[derive(Debug, serde::Deserialize)]
pub struct NodeResult {
    pub status: Option<u16>,
    pub body: Option<String>,
    pub error: Option<String>,
}

/// One request with undici's default `ProxyAgent` (which tunnels every request, `http://` ones
/// included, with CONNECT). Panics with the fix when Node or undici is missing.
pub async fn undici_request(
    proxy: &str,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> NodeResult {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/undici").is_dir(),
        "undici is not installed: run `npm ci --prefix tests/node` (bash .ci/run does)"
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join("undici_request.mjs"))
        .args([proxy, method, url])
        .args(body)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
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
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("node finishes within 30 s")
        .expect("run node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "node printed no result ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
