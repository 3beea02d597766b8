//! File descriptors running out: accept backs off, logs once (for all workers together), and
//! works again once they free up.

mod support;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

/// Kills the child on drop, so a failing test leaves nothing running.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_survives_running_out_of_file_descriptors() {
    let o = origin().handler(|_| Reply::ok("ok")).spawn().await;
    let (port, admin) = (free_port(), free_port());
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fd-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("p.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n{}",
            local_upstream("local", o.port(), "")
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_portcullis");
    // 64 descriptors: the runtime, listeners and logs take some; a few dozen clients exhaust the rest.
    let child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec {bin} --config {}",
            cfg.display()
        ))
        .env("RUST_LOG", "warn")
        // Four workers, each accepting on a socket of its own, meet the limit together: it is
        // still said once.
        .env("TOKIO_WORKER_THREADS", "4")
        // Spread over all four from the first connection, not steered to the first worker.
        .env("PORTCULLIS_SPREAD", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn portcullis");
    let mut guard = Guard(child);
    // Its log, read as it is written, so that the test can wait for a line.
    let log = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (log, mut stderr) = (log.clone(), guard.0.stderr.take().expect("piped stderr"));
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&text);
            }
        })
    };
    let logged = |what: &str| log.lock().unwrap_or_else(|e| e.into_inner()).contains(what);
    let proxy: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let url = o.url("/");
    let deadline = tokio::time::Instant::now() + WITHIN;
    while tokio::net::TcpStream::connect(proxy).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "portcullis did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Hold 120 client connections open, each with a request in flight, far past the limit.
    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(proxy).await {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"GET ").await;
            held.push(s);
        }
    }
    // Until accept has met the limit (was a fixed 500 ms).
    assert!(
        eventually(WITHIN, || logged("accept failed")).await,
        "the descriptor exhaustion was never logged"
    );
    drop(held);

    // Once descriptors free up, the proxy serves again (bounded retries).
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        if proxy_get(proxy, &url).await.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request served after descriptors were freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let _ = guard.0.kill();
    let _ = guard.0.wait();
    reader.join().expect("stderr reader");
    let log = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
    let errors = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!(
        errors >= 1,
        "the descriptor exhaustion was never logged:\n{log}"
    );
    assert!(
        errors <= 2,
        "accept errors logged in a loop ({errors} lines):\n{log}"
    );
}
