//! The real `portcullis` binary (SPEC §2, §8): the access log keeps secrets out in text and
//! JSON, SIGHUP reloads a valid file (client limits included, for open connections too) and
//! keeps the running config on an invalid one, SIGTERM drains in-flight work and exits 0,
//! SIGINT exits 0, a second SIGTERM or SIGINT during the drain exits at once with 128 + its
//! number, and a taken listen address or a limit too large to honour fails clearly;
//! a declared request body is not allocated before it arrives.
//!
//! Every child is killed when its guard drops, and every wait is bounded.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

const PASSWORD_VAR: &str = "PORTCULLIS_PROCESS_TEST_PW";

const SECRETS: [&str; 5] = ["SECRET-A", "SECRET-B", "SECRET-C", "SECRET-D", "SECRET-Q"];

/// The request of the access-log tests: a secret in the query string, `Authorization`,
/// `Cookie`, `Proxy-Authorization` (base64 of the password) and the body.
fn secret_request(origin: SocketAddr) -> String {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("app:SECRET-C");
    format!(
        "POST http://{origin}/v1/charges?card=4111111111111111&token=SECRET-Q HTTP/1.1\r\n\
         Host: {origin}\r\n\
         Authorization: Bearer SECRET-A\r\n\
         Cookie: s=SECRET-B\r\n\
         Proxy-Authorization: Basic {basic}\r\n\
         Content-Type: text/plain\r\n\
         Content-Length: 8\r\n\r\n\
         SECRET-D"
    )
}

/// Start an origin and a portcullis with one password client; send the secret request twice
/// on one client connection; return both with the stderr of the run.
async fn access_log_run(args: &[&str], rust_log: Option<&str>) -> (Portcullis, Origin) {
    let o = origin().handler(|_| Reply::ok("SECRET-E")).spawn().await;
    let dir = scratch("access");
    let rest = format!(
        "{}[[client]]\nname = \"app\"\nusername = \"app\"\npassword_env = \"{PASSWORD_VAR}\"\nupstreams = [\"local\"]\n",
        upstream(&[o.port()], "")
    );
    let mut env = vec![(PASSWORD_VAR, "SECRET-C")];
    if let Some(level) = rust_log {
        env.push(("RUST_LOG", level));
    }
    let p = start(&dir, &rest, args, &env).await;
    let mut conn = ProxyConn::connect(p.proxy).await;
    for i in 0..2 {
        let r = conn.send(secret_request(o.addr).as_bytes()).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}\n{}", p.stderr_text());
    }
    // The secrets did go through: only the log must not have them.
    let seen = o.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].target,
        "/v1/charges?card=4111111111111111&token=SECRET-Q"
    );
    assert_eq!(seen[0].header("authorization"), Some("Bearer SECRET-A"));
    assert_eq!(seen[0].body_text(), "SECRET-D");
    assert_eq!(
        seen[1].conn_request_index, 1,
        "the second reused the connection"
    );
    (p, o)
}

fn assert_no_secrets(p: &Portcullis) {
    let all = p.stderr_text();
    for s in SECRETS
        .iter()
        .chain(&["SECRET-E", "card=", "token=", "4111111111111111"])
    {
        assert!(!all.contains(s), "{s} is in the log:\n{all}");
    }
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("app:SECRET-C");
    assert!(
        !all.contains(&basic),
        "Proxy-Authorization is in the log:\n{all}"
    );
}

#[tokio::test]
async fn text_access_log_has_path_and_lineage_but_no_secret() {
    let (p, _o) = access_log_run(&[], None).await;
    let access = |l: &str| l.contains("access") && l.contains("/v1/charges");
    p.wait_line(|l| access(l) && l.contains("reused=true"))
        .await;
    let lines: Vec<String> = p.stderr_lines().into_iter().filter(|l| access(l)).collect();
    assert_eq!(lines.len(), 2, "one line per request:\n{}", p.stderr_text());
    for l in &lines {
        for field in [
            "path=\"/v1/charges\"",
            "status=200",
            "method=\"POST\"",
            "client_name=\"app\"",
            "upstream=\"local\"",
            "conn_id=",
            "reused=",
            "attempts=1",
            "conn_age_s=",
            "conn_idle_s=",
            "duration_ms=",
        ] {
            assert!(l.contains(field), "{field} missing from: {l}");
        }
    }
    assert!(lines[0].contains("reused=false"), "{}", lines[0]);
    assert!(lines[1].contains("reused=true"), "{}", lines[1]);
    let conn_id = |l: &str| {
        l.split_whitespace()
            .find_map(|f| f.strip_prefix("conn_id="))
            .map(str::to_string)
    };
    assert_eq!(conn_id(&lines[0]), conn_id(&lines[1]), "{lines:#?}");
    assert_no_secrets(&p);
}

#[tokio::test]
async fn json_access_log_parses_and_has_no_secret_even_at_debug() {
    let (p, _o) = access_log_run(&["--log-format", "json"], Some("debug")).await;
    p.wait_line(|l| l.contains("/v1/charges") && l.contains("\"reused\":true"))
        .await;
    let mut access = Vec::new();
    for line in p.stderr_lines() {
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", p.stderr_text()));
        if v["target"] == "access" {
            access.push(v);
        }
    }
    assert_eq!(access.len(), 2, "{access:#?}");
    for a in &access {
        assert_eq!(a["path"], "/v1/charges", "{a}");
        assert_eq!(a["status"], 200, "{a}");
        assert_eq!(a["method"], "POST", "{a}");
        assert_eq!(a["attempts"], 1, "{a}");
        assert!(a["conn_id"].as_u64().is_some_and(|id| id > 0), "{a}");
        assert!(a["reused"].is_boolean(), "{a}");
    }
    assert_eq!(access[0]["reused"], false);
    assert_eq!(access[1]["reused"], true);
    assert_eq!(access[0]["conn_id"], access[1]["conn_id"]);
    assert_no_secrets(&p);
}

#[tokio::test]
async fn sighup_applies_a_valid_file_and_keeps_the_running_config_on_an_invalid_one() {
    let kept = origin().spawn().await;
    let dropped = origin().spawn().await;
    let dir = scratch("reload");
    let mut p = start(
        &dir,
        &upstream(&[kept.port(), dropped.port()], ""),
        &[],
        &[],
    )
    .await;
    let get = |o: &Origin| {
        let (proxy, url) = (p.proxy, o.url("/"));
        async move { proxy_get(proxy, &url).await.status }
    };
    assert_eq!(get(&kept).await, 200);
    assert_eq!(get(&dropped).await, 200);
    let reloads = "portcullis_config_reloads_total";
    assert_eq!(p.metric(reloads, "result=\"ok\"").await, 0.0);

    // Valid: the second port is no longer allowed.
    let section = proxy_section(p.proxy.port(), p.admin.port());
    std::fs::write(
        &p.config,
        format!("{section}{}", upstream(&[kept.port()], "")),
    )
    .expect("rewrite config");
    p.signal("HUP");
    assert_eq!(
        p.wait_metric(reloads, "result=\"ok\"", |v| v >= 1.0).await,
        1.0
    );
    assert_eq!(get(&dropped).await, 403, "{}", p.stderr_text());
    assert_eq!(get(&kept).await, 200);

    // Invalid: logged once, counted, and the running config stays.
    let broken = upstream(
        &[kept.port(), dropped.port()],
        "max_connections = 4\nmax_idle = 8",
    );
    std::fs::write(&p.config, format!("{section}{broken}")).expect("rewrite config");
    p.signal("HUP");
    assert_eq!(
        p.wait_metric(reloads, "result=\"error\"", |v| v >= 1.0)
            .await,
        1.0
    );
    assert_eq!(p.metric(reloads, "result=\"ok\"").await, 1.0);
    assert_eq!(get(&kept).await, 200, "the allowed host still works");
    assert_eq!(
        get(&dropped).await,
        403,
        "the invalid file did not take effect"
    );
    let path = p.config.display().to_string();
    let naming: Vec<String> = p
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains(&path) && l.contains("max_idle"))
        .collect();
    assert_eq!(
        naming.len(),
        1,
        "one line naming file and key:\n{}",
        p.stderr_text()
    );
    assert!(naming[0].contains("max_connections (4)"), "{}", naming[0]);

    // Still alive and serving.
    assert_eq!(p.admin_get("/readyz").await.0, 200);
    assert!(p.child.0.try_wait().expect("try_wait").is_none());
}

/// The warnings of `portcullis check` reach the log of a running proxy too: at start, and
/// for a reloaded file.
#[tokio::test]
async fn config_warnings_are_logged_at_start_and_on_reload() {
    let dir = scratch("warnings");
    let shadowed = "[[upstream]]\nname = \"copy\"\nhosts = [\"127.0.0.1\"]\nports = [443]\n";
    let p = start(
        &dir,
        &format!("{}{shadowed}", upstream(&[80], "")),
        &[],
        &[],
    )
    .await;
    let path = p.config.display().to_string();
    let line = p
        .wait_line(|l| l.contains("WARN") && l.contains("upstream \"copy\" is never used"))
        .await;
    assert!(line.contains(&path), "{line}");
    assert!(line.contains("its port 443 is refused with 403"), "{line}");

    let idle = "[[client]]\nname = \"idle\"\ncidrs = [\"10.9.0.0/16\"]\nupstreams = []\n\
                [[client]]\nname = \"local\"\ncidrs = [\"127.0.0.0/8\"]\nupstreams = [\"local\"]\n";
    p.reload(&format!("{}{idle}", upstream(&[80], "")), 1.0)
        .await;
    let line = p
        .wait_line(|l| l.contains("WARN") && l.contains("client \"idle\" can reach nothing"))
        .await;
    assert!(line.contains(&path), "{line}");
}

/// The process's virtual memory size, in KiB (`VmSize` of `/proc/<pid>/status`).
fn vm_size_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmSize in:\n{status}"))
}

/// A declared `Content-Length` (up to `max_replay_body`) is not allocated before its bytes
/// arrive: clients that each declare 1 GiB and send nothing once made the proxy reserve 1 GiB
/// apiece (seen here in `VmSize`, as the pages are never touched).
#[tokio::test]
async fn a_declared_body_is_not_allocated_before_it_arrives() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CLIENTS: usize = 8;
    let o = origin().spawn().await;
    let dir = scratch("declared");
    let mut p = start(
        &dir,
        &upstream(&[o.port()], "max_replay_body = 1073741824"),
        &[],
        &[],
    )
    .await;
    let pid = p.child.0.id();
    let before = vm_size_kib(pid);
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\nExpect: 100-continue\r\n\r\n",
        o.url("/declared")
    );
    let mut held = Vec::new();
    for i in 0..CLIENTS {
        let mut s = tokio::net::TcpStream::connect(p.proxy)
            .await
            .expect("connect");
        s.write_all(head.as_bytes()).await.expect("write head");
        // `100 Continue` is written just before the body is read: the buffer is made next.
        let mut interim = Vec::new();
        let read_interim = async {
            let mut byte = [0u8; 1];
            while !interim.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte).await.expect("read") == 0 {
                    break;
                }
                interim.push(byte[0]);
            }
        };
        tokio::time::timeout(WITHIN, read_interim)
            .await
            .unwrap_or_else(|_| panic!("client {i}: no 100 Continue\n{}", p.stderr_text()));
        assert!(
            interim.starts_with(b"HTTP/1.1 100"),
            "client {i}: {}",
            String::from_utf8_lossy(&interim)
        );
        held.push(s);
    }
    sleep(Duration::from_millis(200)).await;
    let grown_mib = vm_size_kib(pid).saturating_sub(before) / 1024;
    // Up front that is 8 GiB; bounded reads take 64 KiB each (thread arenas may add some MiB).
    assert!(
        grown_mib < 1024,
        "{CLIENTS} clients that sent no body grew the proxy by {grown_mib} MiB"
    );
    assert!(p.child.0.try_wait().expect("try_wait").is_none());
    drop(held);
}

/// A GET on a new client connection, in the background; the connection stays open after the
/// answer and comes back with it.
fn get_on_new_connection(proxy: SocketAddr, url: String) -> JoinHandle<(ProxyConn, RawResponse)> {
    tokio::spawn(async move {
        // The kernel completes the handshake even while the proxy does not accept.
        let mut conn = ProxyConn::connect(proxy).await;
        conn.within = Duration::from_secs(60);
        let r = conn.get(&url).await;
        (conn, r)
    })
}

/// How long something that must not happen yet is given to happen anyway.
const NOT_YET: Duration = Duration::from_millis(300);

/// Still unanswered after [`NOT_YET`].
async fn unanswered(pending: &JoinHandle<(ProxyConn, RawResponse)>) -> bool {
    sleep(NOT_YET).await;
    !pending.is_finished()
}

/// The answer (bounded), which must be 200; the connection, still open.
async fn answered(pending: JoinHandle<(ProxyConn, RawResponse)>, what: &str) -> ProxyConn {
    let (conn, r) = tokio::time::timeout(WITHIN, pending)
        .await
        .unwrap_or_else(|_| panic!("{what}: not answered within {WITHIN:?}"))
        .expect("request task");
    assert_eq!(r.status, 200, "{what}: {r:?}");
    conn
}

/// SPEC §8: a reload applies `max_client_connections` too. Raised, the connection waiting in
/// the backlog is served; lowered while more are open, new ones wait until the count is
/// below the new size, not merely until one closes. With four workers, each accepting on a
/// listening socket of its own: the limit holds across them, and a worker whose socket has
/// nothing pending holds none of its permits (at 1, a connection the kernel gives to another
/// worker's socket would otherwise wait for good).
#[tokio::test]
async fn sighup_resizes_max_client_connections() {
    let o = origin().spawn().await;
    let dir = scratch("clients");
    let rest = |n: usize| {
        format!(
            "max_client_connections = {n}\n{}",
            upstream(&[o.port()], "")
        )
    };
    let mut p = start(&dir, &rest(1), &[], &[(WORKERS, "4"), (SPREAD, "1")]).await;
    let get = |path: &str| get_on_new_connection(p.proxy, o.url(path));

    // At 1, a second connection waits while the first stays open.
    let a = answered(get("/a"), "the first connection").await;
    let b = get("/b");
    assert!(unanswered(&b).await, "a second connection was served at 1");

    // Raised to 3: the waiting one is served, and a third fits (then closes).
    p.reload(&rest(3), 1.0).await;
    let b = answered(b, "the waiting connection after raising to 3").await;
    drop(answered(get("/c"), "a third connection at 3").await);

    // Lowered to 1 with two open: a new one waits, and still waits when one of the two
    // closes (one is open, the limit is 1), until both have closed.
    p.reload(&rest(1), 2.0).await;
    let d = get("/d");
    assert!(unanswered(&d).await, "served with two open at 1");
    drop(a);
    assert!(unanswered(&d).await, "served with one open at 1");
    drop(b);
    let d = answered(d, "the waiting connection once both closed").await;

    // One at a time again.
    let e = get("/e");
    assert!(unanswered(&e).await, "a second connection was served at 1");
    drop(d);
    let e = answered(e, "the waiting connection once the other closed").await;
    drop(e);

    assert!(p.child.0.try_wait().expect("try_wait").is_none());
}

/// SPEC §8: a reload reaches the next request of a keep-alive connection opened before it,
/// for the client-side limits too (`max_header_bytes`, `header_read_timeout`,
/// `client_idle_timeout`), not only policy and upstream settings.
#[tokio::test]
async fn sighup_limits_reach_the_next_request_on_an_open_connection() {
    let o = origin().spawn().await;
    let dir = scratch("conn-limits");
    let mut p = start(&dir, &upstream(&[o.port()], ""), &[], &[]).await;
    // Opened and used under the defaults (65536 bytes, 10 s, 60 s).
    let mut conns = Vec::new();
    for i in 0..3 {
        let mut conn = ProxyConn::connect(p.proxy).await;
        let r = conn.get(&o.url(&format!("/before/{i}"))).await;
        assert_eq!(r.status, 200, "{r:?}");
        conns.push(conn);
    }
    let limits = "max_header_bytes = 1024\nheader_read_timeout = \"500ms\"\nclient_idle_timeout = \"500ms\"\n";
    p.reload(&format!("{limits}{}", upstream(&[o.port()], "")), 1.0)
        .await;
    let mut idle = conns.pop().expect("three connections");
    let mut slow = conns.pop().expect("three connections");
    let mut big = conns.pop().expect("three connections");

    // A 2 KiB head: fine before, over the new max_header_bytes.
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        o.url("/big"),
        "p".repeat(2048)
    );
    let r = big.send(head.as_bytes()).await;
    assert_eq!(r.status, 431, "{r:?}\n{}", p.stderr_text());

    // Half a head: closed after the new header_read_timeout, not the 10 s it started under.
    slow.write(format!("GET {} HTTP/1.1\r\n", o.url("/slow")).as_bytes())
        .await
        .expect("write half a head");
    assert!(
        slow.wait_closed(Duration::from_secs(5)).await,
        "half a head was still waited for after 5 s"
    );

    // Served, then idle: closed after the new client_idle_timeout, not 60 s.
    assert_eq!(idle.get(&o.url("/idle")).await.status, 200);
    assert!(
        idle.wait_closed(Duration::from_secs(5)).await,
        "an idle connection was still open after 5 s"
    );
    assert!(p.child.0.try_wait().expect("try_wait").is_none());
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_then_exits_0() {
    let o = origin()
        .handler(|_| Reply::ok("slow").delay(Duration::from_millis(1500)))
        .spawn()
        .await;
    let dir = scratch("term");
    let mut p = start(&dir, &upstream(&[o.port()], ""), &[], &[]).await;
    assert_eq!(p.admin_get("/readyz").await.0, 200);
    let (proxy, url) = (p.proxy, o.url("/slow"));
    let slow = tokio::spawn(async move { proxy_get(proxy, &url).await });
    assert!(o.wait_for_requests(1, WITHIN).await);

    let signalled = Instant::now();
    p.signal("TERM");
    let grace = Duration::from_secs(5);
    let mut readyz = Vec::new();
    let mut refused_new = None;
    let status = loop {
        if let Ok(Some(status)) = p.child.0.try_wait() {
            break status;
        }
        assert!(
            signalled.elapsed() < grace,
            "still running after shutdown_grace"
        );
        readyz.push(p.admin_get("/readyz").await.0);
        if readyz.last() == Some(&503) && refused_new.is_none() {
            // Draining: no new request is served.
            refused_new = Some(proxy_get(p.proxy, &o.url("/new")).await);
        }
        sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    assert!(status.success(), "exit {status}\n{}", p.stderr_text());
    assert!(took < grace, "exited after {took:?}");
    let first_503 = readyz.iter().position(|s| *s == 503);
    let first_503 = first_503.unwrap_or_else(|| panic!("no 503 before exit: {readyz:?}"));
    assert!(
        !readyz[first_503..].contains(&200),
        "/readyz never turns back to 200: {readyz:?}"
    );
    let r = tokio::time::timeout(WITHIN, slow)
        .await
        .expect("request finishes")
        .expect("request task");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, b"slow");
    let refused = refused_new.expect("a request was tried during the drain");
    assert!(
        refused.status == 503 || (refused.status == 0 && refused.error.is_some()),
        "a new request during the drain: {refused:?}"
    );
    assert_eq!(
        o.requests().len(),
        1,
        "only the in-flight request reached the origin"
    );
}

#[tokio::test]
async fn sigint_exits_0() {
    let o = origin().spawn().await;
    let dir = scratch("int");
    let mut p = start(&dir, &upstream(&[o.port()], ""), &[], &[]).await;
    assert_eq!(proxy_get(p.proxy, &o.url("/")).await.status, 200);
    p.signal("INT");
    let status = p.wait_exit(WITHIN).await.expect("exits after SIGINT");
    assert!(status.success(), "exit {status}\n{}", p.stderr_text());
}

/// SIGTERM (or SIGINT) starts a drain that an in-flight request holds for the whole 60 s
/// `shutdown_grace`; a second SIGTERM or SIGINT ends it at once, cutting the request, and the
/// exit status is 128 + the second signal's number (143 for SIGTERM, 130 for SIGINT).
async fn second_signal_during_the_drain(first: &str, second: &str, code: i32) {
    let o = origin()
        .handler(|_| Reply::ok("too late").delay(Duration::from_secs(120)))
        .spawn()
        .await;
    let dir = scratch("second-signal");
    let rest = upstream(&[o.port()], "response_timeout = \"120s\"");
    let mut p = start_with_grace(&dir, "60s", &rest, &[], &[]).await;
    let (proxy, url) = (p.proxy, o.url("/slow"));
    let in_flight = tokio::spawn(async move { proxy_get(proxy, &url).await });
    assert!(o.wait_for_requests(1, WITHIN).await);

    p.signal(first);
    p.wait_line(|l| l.contains("draining")).await;
    assert_eq!(p.admin_get("/readyz").await.0, 503);
    assert!(
        p.child.0.try_wait().expect("try_wait").is_none(),
        "the drain waits for the in-flight request"
    );

    p.signal(second);
    let status = p.wait_exit(WITHIN).await.unwrap_or_else(|| {
        panic!(
            "still draining {WITHIN:?} after a second SIGTERM/SIGINT (grace 60 s):\n{}",
            p.stderr_text()
        )
    });
    assert_eq!(
        status.code(),
        Some(code),
        "exit {status}\n{}",
        p.stderr_text()
    );
    assert!(
        p.stderr_text().contains("second signal: cutting"),
        "{}",
        p.stderr_text()
    );
    let cut = tokio::time::timeout(WITHIN, in_flight)
        .await
        .expect("the in-flight request ends with the process")
        .expect("request task");
    assert_ne!(cut.status, 200, "{cut:?}");
}

#[tokio::test]
async fn a_second_sigterm_during_the_drain_exits_at_once_with_143() {
    second_signal_during_the_drain("TERM", "TERM", 143).await;
}

#[tokio::test]
async fn a_second_sigint_during_the_drain_exits_at_once_with_130() {
    second_signal_during_the_drain("INT", "INT", 130).await;
}

#[tokio::test]
async fn sigint_after_sigterm_during_the_drain_exits_at_once_with_130() {
    second_signal_during_the_drain("TERM", "INT", 130).await;
}

/// Start the binary on `config` expecting it to exit at start: its status and all of stderr.
async fn run_to_exit(config: &Path) -> (ExitStatus, String) {
    run_to_exit_with(config, &[]).await
}

/// [`run_to_exit`] with these environment variables.
async fn run_to_exit_with(config: &Path, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut child = Guard(
        Command::new(BIN)
            .arg("--config")
            .arg(config)
            .env_remove("PORTCULLIS_CONFIG")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start portcullis"),
    );
    let deadline = Instant::now() + WITHIN;
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "portcullis kept running on {}",
            config.display()
        );
        sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.0.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr)
}

/// `max_client_connections` beyond what a semaphore holds once made the process panic at start
/// (exit 101); it is refused like any other invalid value: exit 2, one line naming the key.
#[tokio::test]
async fn a_limit_too_large_to_honour_exits_2_at_start_without_panicking() {
    let dir = scratch("too-large");
    let config = dir.join("portcullis.toml");
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmax_client_connections = 9000000000000000000\n{}",
        upstream(&[80], "")
    );
    std::fs::write(&config, text).expect("write config");
    let (status, stderr) = run_to_exit(&config).await;
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.code(), Some(2), "exit {status}\n{stderr}");
    assert_eq!(
        stderr,
        format!(
            "{}: proxy: max_client_connections (9000000000000000000) must be at most 1048576\n",
            config.display()
        )
    );
}

#[tokio::test]
async fn a_listen_address_in_use_fails_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = scratch("in-use");
    let config = dir.join("portcullis.toml");
    for (listen, admin) in [(port, free_port()), (free_port(), port)] {
        std::fs::write(
            &config,
            format!("{}{}", proxy_section(listen, admin), upstream(&[80], "")),
        )
        .expect("write config");
        let (status, stderr) = run_to_exit(&config).await;
        assert!(!status.success(), "exit {status}\n{stderr}");
        let want = format!("cannot listen on 127.0.0.1:{port}");
        assert!(stderr.contains(&want), "{want:?} missing:\n{stderr}");
        assert!(stderr.to_lowercase().contains("in use"), "{stderr}");
    }
    drop(taken);
}

/// Sets the number of workers, each of which listens on the proxy address with a socket of
/// its own.
const WORKERS: &str = "TOKIO_WORKER_THREADS";

/// The workers' listening sockets share the address (`SO_REUSEPORT`), which would let a
/// second portcullis started on the same address join them and silently take a share of the
/// connections. It is refused as a taken address is, and the first one keeps serving.
#[tokio::test]
async fn a_second_portcullis_on_the_same_address_is_refused() {
    let o = origin().spawn().await;
    let dir = scratch("twice");
    let first = start(&dir, &upstream(&[o.port()], ""), &[], &[(WORKERS, "2")]).await;
    let again = scratch("twice-again");
    let config = again.join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}",
            proxy_section(first.proxy.port(), free_port()),
            upstream(&[o.port()], "")
        ),
    )
    .expect("write config");
    let (status, stderr) = run_to_exit_with(&config, &[(WORKERS, "2")]).await;
    assert!(!status.success(), "exit {status}\n{stderr}");
    let want = format!("cannot listen on {}", first.proxy);
    assert!(stderr.contains(&want), "{want:?} missing:\n{stderr}");
    assert!(stderr.to_lowercase().contains("in use"), "{stderr}");
    for i in 0..8 {
        let r = get_on_new_connection(first.proxy, o.url(&format!("/still/{i}")));
        drop(answered(r, "the first portcullis after the second was refused").await);
    }
}

/// Spreads new connections over the workers always, never steering them to the first.
const SPREAD: &str = "PORTCULLIS_SPREAD";

/// Every worker accepts on its own listening socket, and the kernel spreads connections over
/// them by address: forty new connections through four workers are all answered (a worker
/// whose socket went unwatched would leave about a quarter of them waiting).
#[tokio::test]
async fn connections_are_answered_whichever_worker_s_socket_they_reach() {
    let o = origin().spawn().await;
    let dir = scratch("every-worker");
    let env = [(WORKERS, "4"), (SPREAD, "1")];
    let p = start(&dir, &upstream(&[o.port()], ""), &[], &env).await;
    let pending: Vec<_> = (0..40)
        .map(|i| get_on_new_connection(p.proxy, o.url(&format!("/w/{i}"))))
        .collect();
    for (i, r) in pending.into_iter().enumerate() {
        drop(answered(r, &format!("connection {i}")).await);
    }
}

/// Once the first worker holds 32 connections, new ones are spread again, by default too:
/// the steering says so, and forty more through four workers are all answered.
#[tokio::test]
async fn past_32_connections_on_the_first_worker_new_ones_are_spread_over_all() {
    let o = origin().spawn().await;
    let dir = scratch("spread-again");
    let env = [
        (WORKERS, "4"),
        ("RUST_LOG", "info,portcullis::workers=debug"),
    ];
    let p = start(&dir, &upstream(&[o.port()], ""), &[], &env).await;
    let held = open_answered(p.proxy, &o, 40, "held").await;
    let spread = || {
        p.stderr_lines()
            .iter()
            .any(|l| l.contains("new client connections steered") && l.contains("All"))
    };
    assert!(
        eventually(WITHIN, spread).await,
        "never spread:\n{}",
        p.stderr_text()
    );
    let pending: Vec<_> = (0..40)
        .map(|i| get_on_new_connection(p.proxy, o.url(&format!("/b/{i}"))))
        .collect();
    for (i, r) in pending.into_iter().enumerate() {
        drop(answered(r, &format!("connection {i} after spreading")).await);
    }
    drop(held);
}

/// `n` client connections, opened one after another, each left open after one answered GET
/// (`what` names them in a failure).
async fn open_answered(proxy: SocketAddr, o: &Origin, n: usize, what: &str) -> Vec<ProxyConn> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let r = get_on_new_connection(proxy, o.url(&format!("/{what}/{i}")));
        conns.push(answered(r, what).await);
    }
    conns
}

/// How many times the thread named `name` of process `pid` has been switched out so far.
fn switches_of(pid: u32, name: &str) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(t.path().join("status")).expect("status");
        return status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
    }
    panic!("no thread {name} in {pid}");
}

/// The environment for two workers, steered unless `spread` (`PORTCULLIS_SPREAD=1`).
fn two_workers(spread: bool) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![(WORKERS, "2")];
    if spread {
        env.push((SPREAD, "1"));
    }
    env
}

/// The second worker ran fewer than `line` times steered and at least `line` times spread:
/// the measure tells the two apart, so a steering that did nothing fails.
fn only_spread_wakes_the_second_worker(steered: u64, spread: u64, line: u64) {
    eprintln!("the second worker ran {steered} times steered, {spread} times spread");
    assert!(
        spread >= line,
        "spread: the second worker ran only {spread} times"
    );
    assert!(
        steered < line,
        "steered: the second worker ran {steered} times"
    );
}

/// How many times the second worker ran while 8 keep-alive connections made 400 requests,
/// one at a time (each a wake-up of the worker serving it).
async fn second_worker_runs(spread: bool) -> u64 {
    let o = origin().spawn().await;
    let dir = scratch(if spread {
        "steer-spread"
    } else {
        "steer-first"
    });
    let env = two_workers(spread);
    let p = start(&dir, &upstream(&[o.port()], ""), &[], &env).await;
    let pid = p.child.0.id();
    let mut conns = open_answered(p.proxy, &o, 8, "open").await;
    let before = switches_of(pid, "worker-1");
    for round in 0..50 {
        for (i, c) in conns.iter_mut().enumerate() {
            let r = c.get(&o.url(&format!("/r/{round}/{i}"))).await;
            assert_eq!(r.status, 200, "{r:?}");
        }
    }
    switches_of(pid, "worker-1") - before
}

/// A light load is served by the first worker alone (the others sleep): the second worker
/// runs only for its timer while 8 connections make 400 requests; spread, it serves 3 to 5 of
/// them and wakes for each of their requests.
#[tokio::test]
async fn a_light_load_is_served_by_the_first_worker_alone() {
    let steered = second_worker_runs(false).await;
    let spread = second_worker_runs(true).await;
    only_spread_wakes_the_second_worker(steered, spread, 100);
}

/// How many times the second worker ran while 200 clients, one after another, each made one
/// request on a new connection to the TLS listener (each connection its socket's kernel hash
/// gives the second worker wakes it at least once, to accept).
async fn second_worker_runs_tls(spread: bool) -> u64 {
    let o = origin().spawn().await;
    let dir = scratch(if spread {
        "steer-tls-spread"
    } else {
        "steer-tls-first"
    });
    let ca = TestCa::new("steer-tls-ca");
    let (cert, key) = ca.issue(&["127.0.0.1"]).write_pem(&dir, "proxy");
    let tls = loopback(free_port());
    let rest = format!(
        "tls_listen = \"{tls}\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n{}",
        upstream(&[o.port()], "")
    );
    let env = two_workers(spread);
    let p = start(&dir, &rest, &[], &env).await;
    let pid = p.child.0.id();
    let config = ca.client_config();
    let before = switches_of(pid, "worker-1");
    for i in 0..200 {
        let mut conn = TlsConn::connect_tls(tls, config.clone())
            .await
            .expect("handshake");
        let r = conn.get(&o.url(&format!("/tls/{i}"))).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    switches_of(pid, "worker-1") - before
}

/// The TLS listener's group is steered too: 200 new connections one at a time leave the
/// second worker to its timer; spread, it accepts about half of them.
#[tokio::test]
async fn new_connections_to_the_tls_listener_go_to_the_first_worker_under_a_light_load() {
    let steered = second_worker_runs_tls(false).await;
    let spread = second_worker_runs_tls(true).await;
    only_spread_wakes_the_second_worker(steered, spread, 60);
}

/// Times the threads that had woken on timers of their own when idle have been switched out.
fn idle_wakeups(pid: u32) -> u64 {
    ["worker-0", "worker-1", "log-flush"]
        .iter()
        .map(|t| switches_of(pid, t))
        .sum()
}

/// An idle proxy sleeps, with client connections open or not: neither worker nor the log
/// flusher wakes on a timer of its own. Together they had woken 31 times a second: each
/// worker's 250 ms timers, which tokio's timer wheel fires in two wake-ups each, and the
/// flusher's look every 100 ms. With 40 keep-alive connections held open after a request each,
/// within 10 s 2 s must pass in which the three threads were switched out at most twice in
/// all; then the connections are used again, and closed.
#[tokio::test]
async fn an_idle_proxy_sleeps() {
    let o = origin().spawn().await;
    let dir = scratch("idle-sleeps");
    let p = start(&dir, &upstream(&[o.port()], ""), &[], &two_workers(false)).await;
    let pid = p.child.0.id();
    // Past the first worker's fill, so that both workers serve and time requests.
    let mut held = open_answered(p.proxy, &o, 40, "busy").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut woke = Vec::new();
    loop {
        let before = idle_wakeups(pid);
        sleep(Duration::from_secs(2)).await;
        woke.push(idle_wakeups(pid) - before);
        if woke.last() <= Some(&2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle proxy's workers and flusher woke {woke:?} times in successive 2 s"
        );
    }
    assert_eq!(p.metric("portcullis_client_connections", "").await, 40.0);
    for (i, c) in held.iter_mut().enumerate() {
        let r = c.get(&o.url(&format!("/again/{i}"))).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
}

#[tokio::test]
async fn access_lines_still_buffered_at_sigterm_are_written_before_exit() {
    let o = origin().spawn().await;
    let dir = scratch("flush");
    let mut p = start(&dir, &upstream(&[o.port()], ""), &[], &[]).await;
    let mut conn = ProxyConn::connect(p.proxy).await;
    for i in 0..50 {
        let r = conn
            .send(
                format!(
                    "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
                    o.url(&format!("/batch/{i}"))
                )
                .as_bytes(),
            )
            .await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    drop(conn);
    // At once: the lines of the last requests are still in the batch buffer.
    p.signal("TERM");
    let status = p.wait_exit(WITHIN).await.expect("exits after SIGTERM");
    assert!(status.success(), "exit {status}\n{}", p.stderr_text());
    let count = |p: &Portcullis| {
        p.stderr_lines()
            .iter()
            .filter(|l| l.contains("access") && l.contains("path=\"/batch/"))
            .count()
    };
    let deadline = Instant::now() + WITHIN;
    while count(&p) < 50 && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        count(&p),
        50,
        "access lines lost at exit:\n{}",
        p.stderr_text()
    );
}

/// SPEC §8/§10 with the real binary: a request over the TLS listener with a SPIFFE client
/// certificate is logged with the client's name and never the certificate's identity;
/// SIGHUP rotates the listener's certificate; a broken key is refused with one line naming
/// `tls_key` and its file, and the last good certificate keeps serving.
#[tokio::test]
async fn the_tls_listener_logs_its_client_by_name_and_rotates_on_sighup() {
    const SPIFFE: &str = "spiffe://prod/ns/payments/sa/connector";
    let o = origin().spawn().await;
    let dir = scratch("tls");
    let proxy_ca = TestCa::new("process-proxy-ca");
    let (cert, key) = proxy_ca.issue(&["127.0.0.1"]).write_pem(&dir, "proxy");
    let client_ca = TestCa::new("process-client-ca");
    let client_ca_file = client_ca.write_pem(&dir);
    let tls = loopback(free_port());
    let rest = format!(
        "tls_listen = \"{tls}\"\ntls_cert = {cert:?}\ntls_key = {key:?}\nclient_ca = {client_ca_file:?}\n\
         {}[[client]]\nname = \"connector\"\ncert_names = [\"{SPIFFE}\"]\nupstreams = [\"local\"]\n",
        upstream(&[o.port()], "")
    );
    let p = start(&dir, &rest, &[], &[]).await;
    let client_cert = client_ca.client_cert(&[SPIFFE]);
    let config = |ca: &TestCa| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der()).expect("root");
        let config = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(client_cert.chain.clone(), client_cert.key())
            .expect("client key");
        Arc::new(config)
    };
    let get = |ca: &TestCa, path: &str| {
        let (config, url) = (config(ca), o.url(path));
        async move {
            let mut conn = TlsConn::connect_tls(tls, config).await?;
            Ok::<u16, std::io::Error>(conn.get(&url).await.status)
        }
    };
    assert_eq!(get(&proxy_ca, "/first").await.expect("handshake"), 200);
    let line = p
        .wait_line(|l| l.contains("access") && l.contains("/first"))
        .await;
    assert!(line.contains("client_name=\"connector\""), "{line}");
    assert!(
        !p.stderr_text().contains("spiffe://"),
        "the certificate's identity is not logged:\n{}",
        p.stderr_text()
    );

    let new_ca = TestCa::new("process-proxy-ca-2");
    new_ca.issue(&["127.0.0.1"]).write_pem(&dir, "proxy");
    p.signal("HUP");
    let reloads = "portcullis_config_reloads_total";
    assert_eq!(
        p.wait_metric(reloads, "result=\"ok\"", |v| v >= 1.0).await,
        1.0
    );
    assert_eq!(
        get(&new_ca, "/rotated").await.expect("new certificate"),
        200
    );
    assert!(get(&proxy_ca, "/stale").await.is_err(), "old certificate");

    std::fs::write(&key, "not a key\n").expect("break the key");
    p.signal("HUP");
    assert_eq!(
        p.wait_metric(reloads, "result=\"error\"", |v| v >= 1.0)
            .await,
        1.0
    );
    let key_path = key.display().to_string();
    let line = p
        .wait_line(|l| l.contains("tls_key") && l.contains(&key_path))
        .await;
    assert!(line.contains("config reload refused"), "{line}");
    assert_eq!(get(&new_ca, "/kept").await.expect("kept certificate"), 200);
}
