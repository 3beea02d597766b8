//! The `portcullis` binary as users run it: `check`, `--version`, where the config comes from,
//! exit codes and what goes to stdout and stderr (SPEC §2).
//!
//! Every run uses `check`, `--version` or a usage error, so no test ever starts the proxy.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const VALID: &str = "tests/fixtures/config/valid";
const INVALID: &str = "tests/fixtures/config/invalid";
const WARNINGS: &str = "tests/fixtures/config/warnings";
const PASSWORD_VAR: &str = "PORTCULLIS_TEST_FIXTURE_PW";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The binary, run from the crate root with a clean environment for config selection.
fn portcullis(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(manifest_dir())
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("RUST_LOG")
        .env(PASSWORD_VAR, "cli-secret")
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit code, stdout and stderr, for assertion messages.
fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// The lines of one `[[upstream]]` section of `check` output, found by its name.
fn upstream_section<'a>(stdout: &'a str, name: &str) -> Vec<&'a str> {
    let wanted = format!("name = \"{name}\"");
    stdout
        .split("[[upstream]]")
        .skip(1)
        .map(|s| s.split("[[client]]").next().unwrap_or(s))
        .find(|s| s.lines().any(|l| l == wanted))
        .unwrap_or_else(|| panic!("no upstream {name:?} in:\n{stdout}"))
        .lines()
        .collect()
}

#[test]
fn check_valid_config_prints_effective_settings() {
    let path = format!("{VALID}/tcp_keepalive_off.toml");
    let out = run(&mut portcullis(&["check", "--config", &path]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(out.stderr.is_empty(), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("# effective config from {path}\n")),
        "{stdout}"
    );
    // `quiet` sets nothing itself: it shows [defaults] from the file and the built-in defaults.
    let quiet = upstream_section(&stdout, "quiet");
    assert!(quiet.contains(&"tcp_keepalive = \"off\""), "{quiet:#?}");
    assert!(quiet.contains(&"max_lifetime = \"60s\""), "{quiet:#?}");
    assert!(quiet.contains(&"ports = [80, 443]"), "{quiet:#?}");
    assert!(quiet.contains(&"tls = \"as-requested\""), "{quiet:#?}");
    // `chatty` overrides the default.
    let chatty = upstream_section(&stdout, "chatty");
    assert!(chatty.contains(&"tcp_keepalive = \"10s\""), "{chatty:#?}");
}

#[test]
fn check_never_prints_a_password() {
    let path = format!("{VALID}/clients.toml");
    let out = run(&mut portcullis(&["check", "--config", &path]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("username = \"connector\""), "{all}");
    assert!(!all.contains("cli-secret"), "{all}");
}

#[test]
fn check_invalid_config_exits_2_naming_file_key_and_problem() {
    let path = format!("{INVALID}/max_lifetime_over_remote_idle_limit.toml");
    let out = run(&mut portcullis(&["check", "--config", &path]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.lines().next(),
        Some(
            format!(
                "{path}: upstream \"worldpay\": max_lifetime (600s) must be below remote_idle_limit (500s)"
            )
            .as_str()
        ),
        "{}",
        describe(&out)
    );
}

#[test]
fn check_reports_every_problem_one_line_each() {
    let path = format!("{INVALID}/three_problems.toml");
    let out = run(&mut portcullis(&["check", "--config", &path]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    for (line, key) in lines
        .iter()
        .zip(["admin_listen", "max_lifetime", "upstreams"])
    {
        assert!(line.starts_with(&format!("{path}: ")), "{line}");
        assert!(line.contains(key), "{line} lacks {key}");
    }
}

/// A wildcard over a public suffix, from either section of the list, is refused at start-up
/// (and so at reload, which loads the file the same way): one line each, naming the file,
/// the upstream, the entry and the fix.
#[test]
fn check_refuses_wildcards_over_public_suffixes() {
    let path = format!("{INVALID}/wildcard_public_suffix.toml");
    let out = run(&mut portcullis(&["check", "--config", &path]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "{path}: upstream \"uk-banks\": hosts entry \"*.co.uk\": invalid host pattern \"*.co.uk\": \
                 \"co.uk\" is a public suffix: the names below it belong to different owners and this \
                 would allow them all; name one domain below it, as in *.example.co.uk"
            ),
            format!(
                "{path}: upstream \"pages\": hosts entry \"*.github.io\": invalid host pattern \"*.github.io\": \
                 \"github.io\" is a public suffix: the names below it belong to different owners and this \
                 would allow them all; name one domain below it, as in *.example.github.io"
            ),
        ],
        "{}",
        describe(&out)
    );
}

/// A limit too large to honour is a config error, not a panic (or an abort) once running.
#[test]
fn check_refuses_limits_too_large_to_honour() {
    for (file, want) in [
        (
            "max_client_connections_over_limit.toml",
            "proxy: max_client_connections (9000000000000000000) must be at most 1048576",
        ),
        (
            "max_replay_body_over_limit.toml",
            "upstream \"stripe\": max_replay_body (2147483648) must be at most 1073741824",
        ),
    ] {
        let path = format!("{INVALID}/{file}");
        let out = run(&mut portcullis(&["check", "--config", &path]));
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(out.stdout.is_empty(), "{}", describe(&out));
        assert_eq!(text(&out.stderr), format!("{path}: {want}\n"));
    }
}

/// `check` on a config that is valid but partly dead: exit 0, the effective config on stdout,
/// one `FILE: warning: ...` line per finding on stderr.
fn check_warnings(file: &str) -> (String, Vec<String>) {
    let path = format!("{WARNINGS}/{file}");
    let out = run(&mut portcullis(&["check", "--config", &path]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("# effective config from {path}\n")),
        "{}",
        describe(&out)
    );
    let prefix = format!("{path}: warning: ");
    let lines: Vec<String> = text(&out.stderr)
        .lines()
        .map(|l| {
            l.strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("{l:?} lacks {prefix:?}\n{}", describe(&out)))
                .to_string()
        })
        .collect();
    (stdout, lines)
}

#[test]
fn check_warns_about_an_upstream_an_earlier_one_shadows() {
    let (_, lines) = check_warnings("shadowed_upstream.toml");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let whole = &lines[0];
    assert!(
        whole.starts_with("upstream \"worldpay-eu\" is never used"),
        "{whole}"
    );
    for part in [
        "\"secure.worldpay.com\" by upstream \"worldpay\" (\"*.worldpay.com\")",
        "\"*.eu.worldpay.com\" by upstream \"worldpay\" (\"*.worldpay.com\")",
        "its port 8443 is refused with 403",
    ] {
        assert!(whole.contains(part), "{whole} lacks {part}");
    }
    // "stripe" stays in use for api.stripe.com; only its second host is dead.
    assert_eq!(
        lines[1],
        "upstream \"stripe\": host \"secure.worldpay.com\" never reaches it: upstream \
         \"worldpay\" lists \"*.worldpay.com\" earlier and decides for it"
    );
}

#[test]
fn check_warns_about_a_config_without_upstreams() {
    let (stdout, lines) = check_warnings("no_upstream.toml");
    assert!(!stdout.contains("[[upstream]]"), "{stdout}");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with("no [[upstream]] entries: every request will be refused with 403"),
        "{}",
        lines[0]
    );
}

#[test]
fn check_warns_about_clients_that_can_reach_nothing() {
    let (_, lines) = check_warnings("client_reaches_nothing.toml");
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with("upstream \"stripe-copy\" is never used"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(
            "client \"batch\" can reach nothing: every upstream it may use (\"stripe-copy\")"
        ),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("client \"audit\" can reach nothing: its upstreams list is empty"),
        "{}",
        lines[2]
    );
}

/// The warnings are for mistakes only: no shipped or valid fixture config draws one.
#[test]
fn check_is_silent_on_the_shipped_and_valid_configs() {
    let mut paths = vec![manifest_dir().join("config/portcullis.toml")];
    let valid = std::fs::read_dir(manifest_dir().join(VALID)).expect("valid fixtures");
    paths.extend(
        valid
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml")),
    );
    assert!(paths.len() > 5, "{paths:?}");
    for path in paths {
        let out = run(portcullis(&["check", "--config"]).arg(&path));
        assert_eq!(out.status.code(), Some(0), "{path:?}: {}", describe(&out));
        assert!(out.stderr.is_empty(), "{path:?}: {}", describe(&out));
    }
}

#[test]
fn unreadable_config_exits_2_naming_the_file() {
    let path = format!("{VALID}/no-such-file.toml");
    let out = run(&mut portcullis(&["check", "--config", &path]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{path}: cannot read")),
        "{}",
        describe(&out)
    );
}

/// A config path naming a FIFO (no writer: opening it would block for ever), a device or a
/// directory exits 2 at once, saying what it is, without reading a byte.
#[test]
fn a_config_that_is_not_a_regular_file_exits_2_without_blocking() {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-fifo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let fifo = dir.join("portcullis.toml");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let cases = [
        (fifo.display().to_string(), "a FIFO"),
        ("/dev/zero".to_string(), "a device"),
        (dir.display().to_string(), "a directory"),
    ];
    for (path, what) in cases {
        let mut child = portcullis(&["check", "--config", &path])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while child.try_wait().expect("try_wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("check --config {path} blocked");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        assert_eq!(out.status.code(), Some(2), "{path}: {}", describe(&out));
        let stderr = text(&out.stderr);
        assert_eq!(
            stderr,
            format!("{path}: cannot read the file: it is {what}, not a regular file\n"),
            "{}",
            describe(&out)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn version() {
    let out = run(&mut portcullis(&["--version"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(text(&out.stdout), "portcullis 0.1.0\n");
    assert_eq!(env!("CARGO_PKG_VERSION"), "0.1.0");
}

#[test]
fn portcullis_config_is_used_without_config_flag() {
    let valid = format!("{VALID}/tcp_keepalive_off.toml");
    let out = run(portcullis(&["check"]).env("PORTCULLIS_CONFIG", &valid));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("# effective config from {valid}\n")),
        "{stdout}"
    );
    assert!(stdout.contains("quiet.example.com"), "{stdout}");
    assert!(!stdout.contains("api.stripe.com"), "{stdout}");

    let invalid = format!("{INVALID}/bad_tls.toml");
    let out = run(portcullis(&["check"]).env("PORTCULLIS_CONFIG", &invalid));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        text(&out.stderr).starts_with(&format!("{invalid}: upstream \"worldpay\": tls")),
        "{}",
        describe(&out)
    );
}

/// An empty `PORTCULLIS_CONFIG` is unset: the built-in config runs (checked and served), it
/// is not read as a file named "".
#[test]
fn an_empty_portcullis_config_means_the_builtin_config() {
    let out = run(portcullis(&["check"]).env("PORTCULLIS_CONFIG", ""));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        text(&out.stdout).starts_with("# effective config from <built-in"),
        "{}",
        describe(&out)
    );
}

#[test]
fn config_flag_wins_over_portcullis_config() {
    let valid = format!("{VALID}/minimal.toml");
    let invalid = format!("{INVALID}/bad_tls.toml");
    let out = run(portcullis(&["check", "--config", &valid]).env("PORTCULLIS_CONFIG", &invalid));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        text(&out.stdout).starts_with(&format!("# effective config from {valid}\n")),
        "{}",
        describe(&out)
    );
}

#[test]
fn builtin_config_without_flag_or_env() {
    // Run from a folder with no config/ in it: the built-in text must not come from the disk.
    let out = run(portcullis(&["check"]).current_dir(std::env::temp_dir()));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!(
            "# effective config from {}\n",
            portcullis::config::BUILTIN_NAME
        )),
        "{stdout}"
    );
    assert!(stdout.contains("\"api.stripe.com\""), "{stdout}");
    let worldpay = upstream_section(&stdout, "worldpay");
    assert!(worldpay.contains(&"tls = \"originate\""), "{worldpay:#?}");
    assert!(
        worldpay.contains(&"remote_idle_limit = \"500s\""),
        "{worldpay:#?}"
    );
}

#[test]
fn builtin_config_is_the_shipped_file() {
    let path = manifest_dir().join("config/portcullis.toml");
    let on_disk =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(on_disk.contains("[[upstream]]"), "{on_disk}");
    assert_eq!(portcullis::config::BUILTIN, on_disk);
}

#[test]
fn check_into_a_closed_pipe_does_not_panic() {
    // More output than a pipe buffers (64 KiB on Linux), and nobody reading: some write
    // happens after the reader is gone, whatever the timing.
    let mut toml = String::new();
    for i in 0..400 {
        toml.push_str(&format!(
            "[[upstream]]\nname = \"u{i}\"\nhosts = [\"h{i}.example.com\"]\n\n"
        ));
    }
    let path: PathBuf =
        std::env::temp_dir().join(format!("portcullis-cli-pipe-{}.toml", std::process::id()));
    std::fs::write(&path, toml).expect("write temp config");
    let mut child = portcullis(&["check", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let _ = std::fs::remove_file(&path);
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{}", describe(&out));
    assert!(
        matches!(out.status.code(), Some(c) if c != 101),
        "{}",
        describe(&out)
    );
}

#[test]
fn unknown_log_format_is_a_usage_error() {
    // `check` makes an accepted value exit at once instead of starting the proxy.
    let out = run(&mut portcullis(&["--log-format", "xml", "check"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("'xml'") && stderr.contains("--log-format"),
        "{stderr}"
    );
    assert!(
        stderr.contains("text") && stderr.contains("json"),
        "{stderr}"
    );

    for format in ["text", "json"] {
        let out = run(&mut portcullis(&["--log-format", format, "check"]));
        assert_eq!(out.status.code(), Some(0), "{format}: {}", describe(&out));
    }
}
