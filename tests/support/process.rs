//! The real `portcullis` binary under test: started on free loopback ports with a config file
//! in a scratch folder, its stderr collected, killed and reaped when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{sleep, Instant};

use super::client::raw_exchange;
use super::proxy::metric_in;

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
pub const WITHIN: Duration = Duration::from_secs(10);

/// A scratch directory of its own for each test.
pub fn scratch(name: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "process-{name}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A port that was free a moment ago; `start` retries if someone takes it first.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

pub fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// A child process, killed and reaped when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `portcullis`; killed and reaped on drop.
pub struct Portcullis {
    pub child: Guard,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    /// Its `shutdown_grace`, kept when the file is rewritten for a reload.
    pub grace: &'static str,
    /// Every stderr line so far, collected by a reader thread.
    pub stderr: Arc<Mutex<Vec<String>>>,
}

/// The `shutdown_grace` of [`start`]: long enough for any in-flight request of the tests.
pub const GRACE: &str = "5s";

/// The `[proxy]` section for these ports.
pub fn proxy_section(proxy: u16, admin: u16) -> String {
    proxy_section_with_grace(proxy, admin, GRACE)
}

/// [`proxy_section`] with this `shutdown_grace`.
pub fn proxy_section_with_grace(proxy: u16, admin: u16, grace: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:{proxy}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nshutdown_grace = \"{grace}\"\n"
    )
}

/// An upstream allowing 127.0.0.1 on `ports`.
pub fn upstream(ports: &[u16], extra: &str) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "[[upstream]]\nname = \"local\"\nhosts = [\"127.0.0.1\"]\nports = [{}]\nallow_private = true\n{extra}\n",
        ports.join(", ")
    )
}

/// Start the binary with `[proxy]` on fresh ports plus `rest`; waits for `/healthz`.
pub async fn start(dir: &Path, rest: &str, args: &[&str], env: &[(&str, &str)]) -> Portcullis {
    start_with_grace(dir, GRACE, rest, args, env).await
}

/// [`start`] with this `shutdown_grace`.
pub async fn start_with_grace(
    dir: &Path,
    grace: &'static str,
    rest: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Portcullis {
    for attempt in 0..5 {
        let (proxy, admin) = (free_port(), free_port());
        if proxy == admin {
            continue;
        }
        let config = dir.join("portcullis.toml");
        let section = proxy_section_with_grace(proxy, admin, grace);
        std::fs::write(&config, format!("{section}{rest}")).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("PORTCULLIS_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = Guard(cmd.spawn().expect("start portcullis"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.0.stderr.take().expect("stderr pipe");
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let mut p = Portcullis {
            child,
            proxy: loopback(proxy),
            admin: loopback(admin),
            config,
            grace,
            stderr,
        };
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Ok(Some(status)) = p.child.0.try_wait() {
                sleep(Duration::from_millis(50)).await;
                let err = p.stderr_text();
                if err.contains("cannot listen") {
                    eprintln!("attempt {attempt}: port taken meanwhile, retrying:\n{err}");
                    break;
                }
                panic!("portcullis exited at start ({status}):\n{err}");
            }
            if p.admin_get("/healthz").await.0 == 200 {
                return p;
            }
            if Instant::now() >= deadline {
                panic!(
                    "portcullis not healthy within {WITHIN:?}:\n{}",
                    p.stderr_text()
                );
            }
            sleep(Duration::from_millis(25)).await;
        }
    }
    panic!("could not start portcullis on free ports in 5 attempts");
}

impl Portcullis {
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_lines().join("\n")
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        let r = raw_exchange(self.admin, req.as_bytes(), Duration::from_secs(2)).await;
        (r.status, r.body_text())
    }

    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let (status, text) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "/metrics: {text}");
        metric_in(&text, name, labels)
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.0.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed: {status}");
    }

    /// The exit status, if the process ends within `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until some stderr line satisfies `want` (bounded); that line.
    pub async fn wait_line(&self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Some(l) = self.stderr_lines().into_iter().find(|l| want(l)) {
                return l;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no such stderr line within {WITHIN:?}:\n{}",
                    self.stderr_text()
                );
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Rewrite the file as `[proxy]` on the same ports plus `rest`, send SIGHUP, and wait
    /// (bounded) until the `ok` reloads reach `count`.
    pub async fn reload(&self, rest: &str, count: f64) {
        let section = proxy_section_with_grace(self.proxy.port(), self.admin.port(), self.grace);
        std::fs::write(&self.config, format!("{section}{rest}")).expect("rewrite config");
        self.signal("HUP");
        let ok = "result=\"ok\"";
        let got = self
            .wait_metric("portcullis_config_reloads_total", ok, |v| v >= count)
            .await;
        assert_eq!(got, count, "reload {count}:\n{}", self.stderr_text());
    }

    /// Poll a metric until `want` holds (bounded); the last value.
    pub async fn wait_metric(&self, name: &str, labels: &str, want: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WITHIN;
        loop {
            let v = self.metric(name, labels).await;
            if want(v) || Instant::now() >= deadline {
                return v;
            }
            sleep(Duration::from_millis(20)).await;
        }
    }
}
