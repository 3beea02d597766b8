//! `portcullis ca init` and the intercept-CA checks of `portcullis check`, run as the binary
//! (SPEC §2, §9): the files and their modes, the printed fingerprint, exit codes, and the
//! one-line refusals and warnings.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn portcullis(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// A fresh folder holding `portcullis.toml` with `[proxy]` naming `ca/intercept-ca.pem` and its
/// key (relative paths: read next to the config) and one upstream per `(name, hosts, connect)`.
struct Setup {
    dir: PathBuf,
    config: String,
}

impl Setup {
    fn new(upstreams: &[(&str, &[&str], &str)]) -> Setup {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "ca-cli-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let setup = Setup {
            config: dir.join("portcullis.toml").display().to_string(),
            dir,
        };
        setup.write_config(upstreams);
        setup
    }

    fn write_config(&self, upstreams: &[(&str, &[&str], &str)]) {
        let mut toml = String::from(
            "[proxy]\nintercept_ca_cert = \"ca/intercept-ca.pem\"\nintercept_ca_key = \"ca/intercept-ca-key.pem\"\n",
        );
        for (name, hosts, connect) in upstreams {
            let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
            toml.push_str(&format!(
                "\n[[upstream]]\nname = \"{name}\"\nhosts = [{}]\nconnect = \"{connect}\"\n",
                hosts.join(", ")
            ));
        }
        std::fs::write(&self.config, toml).unwrap();
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    fn cert(&self) -> PathBuf {
        self.ca_dir().join("intercept-ca.pem")
    }

    fn key(&self) -> PathBuf {
        self.ca_dir().join("intercept-ca-key.pem")
    }

    fn init(&self, extra: &[&str]) -> Output {
        let out = self.ca_dir().display().to_string();
        let mut args = vec!["ca", "init", "--out", &out, "--config", &self.config];
        args.extend_from_slice(extra);
        portcullis(&args)
    }

    fn check(&self) -> Output {
        portcullis(&["check", "--config", &self.config])
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// SHA-256 of the certificate's DER, computed here, in the `AB:CD:…` form.
fn fingerprint(cert: &Path) -> String {
    let pem = std::fs::read(cert).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

#[test]
fn ca_init_writes_the_ca_prints_its_fingerprint_and_check_accepts_it() {
    // The config names CA files that do not exist yet: `ca init` must still read it.
    let s = Setup::new(&[
        (
            "payments",
            &["*.example.com", "api.stripe.com"],
            "intercept",
        ),
        ("other", &["tunnel.example.org"], "tunnel"),
    ]);
    let out = s.init(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(mode(&s.key()), 0o600);
    assert_eq!(mode(&s.cert()) & 0o600, 0o600);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("intercept CA certificate: {}", s.cert().display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "SHA-256 fingerprint: {}\n",
            fingerprint(&s.cert())
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("name constraints: permitted: .example.com, api.stripe.com; excluded: .api.stripe.com, 0.0.0.0/0, ::/0"),
        "{stdout}"
    );
    for how in [
        "update-ca-certificates",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "keytool -importcert",
    ] {
        assert!(stdout.contains(how), "{how} missing:\n{stdout}");
    }
    assert!(!stdout.contains("PRIVATE"), "{stdout}");
    assert!(out.stderr.is_empty(), "{}", describe(&out));

    let out = s.check();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(out.stderr.is_empty(), "no warning: {}", describe(&out));
    let stdout = text(&out.stdout);
    let dir = s.dir.display();
    assert!(
        stdout.contains(&format!(
            "intercept_ca_cert = \"{dir}/ca/intercept-ca.pem\"\n"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "intercept_ca_key = \"{dir}/ca/intercept-ca-key.pem\"\n"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("connect = \"intercept\""), "{stdout}");
    assert!(stdout.contains("connect = \"tunnel\""), "{stdout}");
}

#[test]
fn ca_init_without_intercept_upstreams_exits_2_with_one_line() {
    let s = Setup::new(&[("other", &["tunnel.example.org"], "tunnel")]);
    let out = s.init(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{}: no [[upstream]] has connect = \"intercept\"; the CA may sign only for the hosts of those upstreams, so add one first\n",
            s.config
        )
    );
    assert!(!s.ca_dir().exists(), "nothing written");
}

#[test]
fn ca_init_keeps_existing_files_unless_forced() {
    let s = Setup::new(&[("payments", &["api.example.com"], "intercept")]);
    assert_eq!(s.init(&[]).status.code(), Some(0));
    let before = fingerprint(&s.cert());
    let out = s.init(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(fingerprint(&s.cert()), before);

    let out = s.init(&["--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let after = fingerprint(&s.cert());
    assert_ne!(after, before);
    assert!(text(&out.stdout).contains(&after));
    assert_eq!(mode(&s.key()), 0o600);
    assert_eq!(s.check().status.code(), Some(0), "the new pair matches");
}

#[test]
fn check_refuses_a_key_readable_by_group_or_others() {
    let s = Setup::new(&[("payments", &["api.example.com"], "intercept")]);
    assert_eq!(s.init(&[]).status.code(), Some(0));
    std::fs::set_permissions(s.key(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = s.check();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let key = s.key().display().to_string();
    assert_eq!(
        text(&out.stderr),
        format!("{}: proxy: intercept_ca_key {key}: group or others have access to it (mode 0644); run `chmod 600 {key}`\n", s.config)
    );
}

#[test]
fn check_refuses_a_key_that_does_not_match_the_certificate() {
    let s = Setup::new(&[("payments", &["api.example.com"], "intercept")]);
    assert_eq!(s.init(&[]).status.code(), Some(0));
    let other = Setup::new(&[("payments", &["api.example.com"], "intercept")]);
    assert_eq!(other.init(&[]).status.code(), Some(0));
    std::fs::copy(other.key(), s.key()).unwrap();
    let out = s.check();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{}: proxy: intercept_ca_key {}: does not belong to intercept_ca_cert",
            s.config,
            s.key().display()
        )),
        "{stderr}"
    );
}

#[test]
fn check_refuses_an_intercept_upstream_without_a_ca() {
    let s = Setup::new(&[("payments", &["api.example.com"], "intercept")]);
    let toml = std::fs::read_to_string(&s.config).unwrap();
    let without_ca: String = toml
        .lines()
        .filter(|l| !l.starts_with("intercept_ca"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&s.config, without_ca).unwrap();
    let out = s.check();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{}: upstream \"payments\": connect = \"intercept\" needs intercept_ca_cert and intercept_ca_key in [proxy]; make them with `portcullis ca init --out DIR`\n",
            s.config
        )
    );
}

#[test]
fn check_warns_when_an_intercept_host_is_outside_the_constraints() {
    let s = Setup::new(&[("payments", &["api.example.com"], "intercept")]);
    assert_eq!(s.init(&[]).status.code(), Some(0));
    // Hosts added after `ca init`: only the intercept upstream's new ones are the CA's business.
    s.write_config(&[
        (
            "payments",
            &["api.example.com", "*.example.net"],
            "intercept",
        ),
        ("other", &["tunnel.example.org"], "tunnel"),
    ]);
    let out = s.check();
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning, not an error: {}",
        describe(&out)
    );
    assert!(!out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{}: warning: upstream \"payments\": host \"*.example.net\" is outside the name constraints of intercept_ca_cert {}",
            s.config,
            s.cert().display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("portcullis ca init --force"), "{stderr}");
}

/// The printed paths go into a config, where a relative path is read from the config's folder:
/// a relative `--out` is printed absolute.
#[test]
fn ca_init_prints_absolute_paths_for_a_relative_out() {
    let s = Setup::new(&[("payments", &["api.example.com"], "intercept")]);
    let out = Command::new(BIN)
        .args(["ca", "init", "--out", "ca", "--config", "portcullis.toml"])
        .current_dir(&s.dir)
        .env_remove("PORTCULLIS_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = text(&out.stdout);
    let cert = s.cert().canonicalize().unwrap();
    assert!(
        stdout.contains(&format!("intercept_ca_cert = \"{}\"", cert.display())),
        "{stdout}"
    );
    assert_eq!(s.check().status.code(), Some(0));
}
