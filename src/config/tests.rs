//! Config parsing and validation tests.

use super::resolve::relative_to;
use super::*;

use std::sync::Once;

/// Set once for the whole test binary; no other test reads or writes it.
const PASSWORD_VAR: &str = "PORTCULLIS_UNIT_CONFIG_PW";
const PASSWORD: &str = "correct horse battery staple";

fn set_password_var() {
    static SET: Once = Once::new();
    SET.call_once(|| std::env::set_var(PASSWORD_VAR, PASSWORD));
}

fn parse(text: &str) -> Config {
    Config::from_toml(text, "unit.toml").unwrap_or_else(|e| panic!("should parse:\n{e}\n{text}"))
}

fn problems(text: &str) -> Vec<String> {
    match Config::from_toml(text, "unit.toml") {
        Ok(c) => panic!("should fail, parsed as {c:#?}\n{text}"),
        Err(e) => {
            assert_eq!(e.source, "unit.toml");
            e.problems
        }
    }
}

fn upstream<'c>(config: &'c Config, name: &str) -> &'c Upstream {
    config
        .upstream(name)
        .unwrap_or_else(|| panic!("no upstream {name:?}"))
}

const ONE: &str = "[[upstream]]\nname = \"one\"\nhosts = [\"one.example.com\"]\n";

/// SPEC §3's `[defaults]` values, written out rather than taken from `Settings::defaults()`.
fn spec_settings() -> Settings {
    Settings {
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(30),
        max_connections: 128,
        max_idle: 16,
        idle_timeout: Duration::from_secs(30),
        max_lifetime: Duration::from_secs(60),
        acquire_timeout: Duration::from_secs(5),
        tcp_keepalive: Some(Duration::from_secs(30)),
        retry_on_reset: true,
        retry_non_idempotent: false,
        unsafe_reuse_max_idle: Duration::from_secs(2),
        max_replay_body: 1_048_576,
        tunnel_idle_timeout: Duration::from_secs(60),
        allow_private: false,
        learn_idle_limit: true,
    }
}

#[test]
fn empty_defaults_are_the_spec_values() {
    assert_eq!(Settings::defaults(), spec_settings());
    for text in [ONE.to_string(), format!("[proxy]\n[defaults]\n{ONE}")] {
        let config = parse(&text);
        let one = upstream(&config, "one");
        assert_eq!(one.settings, spec_settings(), "{text}");
        assert_eq!(one.ports, vec![80, 443]);
        assert_eq!(one.tls, TlsMode::AsRequested);
        assert_eq!(one.ca_file, None);
        assert_eq!(one.remote_idle_limit, None);
        assert!(config.clients.is_empty());

        let p = &config.proxy;
        assert_eq!(p.listen, "127.0.0.1:3128".parse::<SocketAddr>().unwrap());
        assert_eq!(
            p.admin_listen,
            "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(p.max_client_connections, 10_000);
        assert_eq!(p.client_idle_timeout, Duration::from_secs(60));
        assert_eq!(p.header_read_timeout, Duration::from_secs(10));
        assert_eq!(p.client_stall_timeout, Duration::from_secs(30));
        assert_eq!(p.max_header_bytes, 65_536);
        assert_eq!(p.shutdown_grace, Duration::from_secs(30));
        assert!(p.dns_servers.is_empty());
    }
}

#[test]
fn upstream_key_overrides_defaults_and_the_rest_inherit() {
    let config = parse(
        r#"
        [defaults]
        max_lifetime = "45s"
        idle_timeout = "20s"
        max_connections = 64
        tcp_keepalive = "off"
        retry_non_idempotent = true
        learn_idle_limit = false

        [[upstream]]
        name = "custom"
        hosts = ["custom.example.com"]
        max_lifetime = "30s"
        tcp_keepalive = "10s"
        allow_private = true
        learn_idle_limit = true

        [[upstream]]
        name = "plain"
        hosts = ["plain.example.com"]
        "#,
    );
    let custom = &upstream(&config, "custom").settings;
    let plain = &upstream(&config, "plain").settings;

    assert_eq!(custom.max_lifetime, Duration::from_secs(30));
    assert_eq!(custom.tcp_keepalive, Some(Duration::from_secs(10)));
    assert!(custom.allow_private);
    assert!(custom.learn_idle_limit);
    assert_eq!(custom.idle_timeout, Duration::from_secs(20));
    assert_eq!(custom.max_connections, 64);
    assert!(custom.retry_non_idempotent);
    // Untouched everywhere: the built-in default.
    assert_eq!(custom.response_timeout, Duration::from_secs(30));

    // One upstream's override does not leak into the next.
    let want_plain = Settings {
        max_lifetime: Duration::from_secs(45),
        idle_timeout: Duration::from_secs(20),
        max_connections: 64,
        tcp_keepalive: None,
        retry_non_idempotent: true,
        learn_idle_limit: false,
        ..spec_settings()
    };
    assert_eq!(*plain, want_plain);
}

#[test]
fn ports_and_tls() {
    let config = parse(
        r#"
        [[upstream]]
        name = "default"
        hosts = ["a.example.com"]

        [[upstream]]
        name = "explicit"
        hosts = ["b.example.com"]
        ports = [8443, 443]
        tls = "originate"

        [[upstream]]
        name = "spelled-out"
        hosts = ["c.example.com"]
        tls = "as-requested"
        "#,
    );
    assert_eq!(upstream(&config, "default").ports, vec![80, 443]);
    assert_eq!(upstream(&config, "default").tls, TlsMode::AsRequested);
    assert_eq!(upstream(&config, "explicit").ports, vec![8443, 443]);
    assert_eq!(upstream(&config, "explicit").tls, TlsMode::Originate);
    assert_eq!(upstream(&config, "spelled-out").tls, TlsMode::AsRequested);
    let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["default", "explicit", "spelled-out"], "file order");
}

#[test]
fn durations_need_a_unit() {
    let ok: &[(&str, Duration)] = &[
        ("250ms", Duration::from_millis(250)),
        ("30s", Duration::from_secs(30)),
        ("5m", Duration::from_secs(300)),
        ("1h", Duration::from_secs(3600)),
        ("1h 30m", Duration::from_secs(5400)),
        (" 2s ", Duration::from_secs(2)),
        ("0s", Duration::ZERO),
    ];
    for (text, want) in ok {
        assert_eq!(raw::parse_duration(text), Ok(*want), "{text:?}");
    }
    for text in ["30", "0", "1.5", "", "  ", "s", "30 seconds please", "-5s"] {
        let err = raw::parse_duration(text).expect_err(text);
        assert!(err.contains(&format!("\"{text}\"")), "{text:?}: {err}");
    }
    assert!(raw::parse_duration("30")
        .unwrap_err()
        .contains("needs a unit"));

    // Through the config: each key takes the unit forms, and a bare number names its key.
    let config = parse(&format!(
        "[defaults]\nconnect_timeout = \"250ms\"\nidle_timeout = \"5m\"\nmax_lifetime = \"1h\"\n{ONE}"
    ));
    let s = &upstream(&config, "one").settings;
    assert_eq!(s.connect_timeout, Duration::from_millis(250));
    assert_eq!(s.idle_timeout, Duration::from_secs(300));
    assert_eq!(s.max_lifetime, Duration::from_secs(3600));

    let got = problems(&format!("{ONE}idle_timeout = \"30\"\n"));
    assert_eq!(
        got,
        [r#"upstream "one": idle_timeout: "30" needs a unit, like "30s" or "250ms""#]
    );
    let got = problems(&format!("[proxy]\nclient_idle_timeout = \"30\"\n{ONE}"));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("proxy: client_idle_timeout: \"30\" needs a unit"),
        "{got:?}"
    );
}

#[test]
fn durations_longer_than_a_year_are_refused() {
    assert_eq!(raw::parse_duration("365d"), Ok(raw::MAX_DURATION));
    for text in ["366d", "250ms 444444441h 30m 4444444441h", "9999999999999h"] {
        let err = raw::parse_duration(text).expect_err(text);
        assert!(
            err.contains("longer than 365 days") || err.contains("not a duration"),
            "{text:?}: {err}"
        );
    }
    let got = problems(&format!("[proxy]\nheader_read_timeout = \"400d\"\n{ONE}"));
    assert_eq!(
        got,
        [
            r#"proxy: header_read_timeout: "400d" is longer than 365 days, the most any duration here may be"#
        ]
    );
}

#[test]
fn durations_are_shown_as_written() {
    let cases: &[(Duration, &str)] = &[
        (Duration::from_secs(500), "500s"),
        (Duration::from_secs(0), "0s"),
        (Duration::from_millis(250), "250ms"),
        (Duration::from_millis(1500), "1500ms"),
    ];
    for (d, want) in cases {
        assert_eq!(raw::show_duration(*d), *want);
        assert_eq!(raw::parse_duration(want), Ok(*d), "{want} parses back");
    }
}

#[test]
fn timers_must_stay_below_remote_idle_limit() {
    let got = problems(
        r#"
        [defaults]
        idle_timeout = "500s"
        tunnel_idle_timeout = "9m"

        [[upstream]]
        name = "worldpay"
        hosts = ["secure.worldpay.com"]
        remote_idle_limit = "500s"
        max_lifetime = "499s"
        "#,
    );
    assert_eq!(
        got,
        [
            r#"upstream "worldpay": idle_timeout (500s) must be below remote_idle_limit (500s)"#,
            r#"upstream "worldpay": tunnel_idle_timeout (540s) must be below remote_idle_limit (500s)"#,
        ]
    );
    // Just below is fine, and without a remote_idle_limit nothing is compared.
    parse(
        r#"
        [defaults]
        idle_timeout = "9m"
        [[upstream]]
        name = "worldpay"
        hosts = ["secure.worldpay.com"]
        remote_idle_limit = "500s"
        idle_timeout = "499s"
        max_lifetime = "499s"
        tunnel_idle_timeout = "499s"
        [[upstream]]
        name = "other"
        hosts = ["other.example.com"]
        "#,
    );
}

#[test]
fn max_idle_must_not_exceed_max_connections() {
    let got = problems(&format!("[defaults]\nmax_idle = 200\n{ONE}"));
    assert_eq!(
        got,
        ["defaults: max_idle (200) must not exceed max_connections (128)"]
    );
    let got = problems(&format!(
        "[defaults]\nmax_idle = 16\n{ONE}max_connections = 4\n"
    ));
    assert_eq!(
        got,
        [r#"upstream "one": max_idle (16) must not exceed max_connections (4)"#]
    );
    // Only the cap written: the built-in max_idle (16) follows it down instead of failing.
    let config = parse(&format!("{ONE}max_connections = 4\n"));
    assert_eq!(upstream(&config, "one").settings.max_idle, 4);
    let config = parse(&format!("{ONE}max_connections = 4\nmax_idle = 4\n"));
    assert_eq!(upstream(&config, "one").settings.max_idle, 4);
}

/// Past these a value is no longer a limit: `Semaphore::new` panics above its `MAX_PERMITS`, and
/// a declared `Content-Length` up to `max_replay_body` is buffered in memory.
#[test]
fn counts_have_an_upper_bound() {
    let got = problems(&format!(
        "[proxy]\nmax_client_connections = 9000000000000000000\n{ONE}"
    ));
    assert_eq!(
        got,
        ["proxy: max_client_connections (9000000000000000000) must be at most 1048576"]
    );
    let got = problems(&format!(
        "[proxy]\nmax_client_connections = 1048577\n[defaults]\nmax_replay_body = 1073741825\n{ONE}max_replay_body = 9223372036854775807\n"
    ));
    assert_eq!(
        got,
        [
            "proxy: max_client_connections (1048577) must be at most 1048576",
            "defaults: max_replay_body (1073741825) must be at most 1073741824",
            r#"upstream "one": max_replay_body (9223372036854775807) must be at most 1073741824"#,
        ]
    );
    let got = problems(&format!("[proxy]\nmax_header_bytes = 1048577\n{ONE}"));
    assert_eq!(
        got,
        ["proxy: max_header_bytes (1048577) must be at most 1048576"]
    );
    // The bounds themselves are allowed.
    let config = parse(&format!(
        "[proxy]\nmax_client_connections = 1048576\nmax_header_bytes = 1048576\n{ONE}max_replay_body = 1073741824\n"
    ));
    assert_eq!(config.proxy.max_client_connections, 1_048_576);
    assert_eq!(config.proxy.max_header_bytes, 1 << 20);
    assert_eq!(upstream(&config, "one").settings.max_replay_body, 1 << 30);
}

/// Keepalive intervals the kernel would refuse (setting the option fails, and the socket
/// keeps the system's two-hour default) are refused here instead.
#[test]
fn tcp_keepalive_stays_in_the_kernels_range() {
    for bad in ["500ms", "1.5s", "32768s", "10h"] {
        let got = problems(&format!("[defaults]\ntcp_keepalive = \"{bad}\"\n{ONE}"));
        assert_eq!(
            got,
            [format!(
                "defaults: tcp_keepalive ({bad}) must be whole seconds from 1s to 32767s, or \"off\""
            )]
        );
    }
    for good in ["1s", "32767s", "9h"] {
        let config = parse(&format!("{ONE}tcp_keepalive = \"{good}\"\n"));
        assert!(
            upstream(&config, "one").settings.tcp_keepalive.is_some(),
            "{good}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let got = problems(
        r#"
        [proxy]
        listen = "nowhere"

        [defaults]
        connect_timeout = "5"

        [[upstream]]
        name = "a"
        hosts = ["*.com"]
        ports = [0]
        tls = "always"

        [[upstream]]
        name = "a"
        hosts = ["a.example.com"]

        [[client]]
        name = "c"
        cidrs = ["10.0.0.0/99"]
        username = "c"
        upstreams = ["missing"]
        "#,
    );
    let wants = [
        r#"proxy: listen = "nowhere""#,
        "defaults: connect_timeout",
        r#"upstream "a": hosts entry "*.com""#,
        r#"upstream "a": ports: 0"#,
        r#"upstream "a": tls = "always""#,
        r#"upstream "a": name is used twice"#,
        r#"client "c": cidrs entry "10.0.0.0/99""#,
        r#"client "c": username needs password_env"#,
        r#"client "c": upstreams entry "missing""#,
    ];
    for want in wants {
        assert!(
            got.iter().any(|p| p.starts_with(want)),
            "{want:?} missing from {got:#?}"
        );
    }
    assert_eq!(got.len(), wants.len(), "{got:#?}");
}

#[test]
fn error_display_names_the_file_on_every_line() {
    let err = Config::from_toml(
        "[proxy]\nlisten = \"x\"\nadmin_listen = \"y\"\n",
        "conf/p.toml",
    )
    .expect_err("two bad addresses");
    assert_eq!(
        err.to_string(),
        "conf/p.toml: proxy: listen = \"x\" is not an address like 127.0.0.1:3128\n\
         conf/p.toml: proxy: admin_listen = \"y\" is not an address like 127.0.0.1:3128"
    );
}

#[test]
fn unknown_keys_are_errors_everywhere() {
    let cases = [
        format!("[proxy]\nlisen = \"127.0.0.1:1\"\n{ONE}"),
        format!("[defaults]\nmax_lifetme = \"1s\"\n{ONE}"),
        format!("{ONE}max_lifetme = \"1s\"\n"),
        format!("{ONE}[[client]]\nname = \"c\"\nupstream = [\"one\"]\n"),
        format!("[proxies]\n{ONE}"),
    ];
    for text in &cases {
        let got = problems(text);
        assert_eq!(got.len(), 1, "{text}\n{got:?}");
        assert!(got[0].contains("unknown field"), "{text}\n{got:?}");
    }
}

#[test]
fn relative_ca_file_is_read_next_to_the_config() {
    assert_eq!(
        relative_to("/etc/portcullis/p.toml", Path::new("ca.pem")),
        PathBuf::from("/etc/portcullis/ca.pem")
    );
    assert_eq!(
        relative_to("conf/p.toml", Path::new("certs/ca.pem")),
        PathBuf::from("conf/certs/ca.pem")
    );
    assert_eq!(
        relative_to("p.toml", Path::new("ca.pem")),
        PathBuf::from("ca.pem")
    );
    assert_eq!(
        relative_to("conf/p.toml", Path::new("/abs/ca.pem")),
        PathBuf::from("/abs/ca.pem")
    );
    assert_eq!(
        relative_to(BUILTIN_NAME, Path::new("ca.pem")),
        PathBuf::from("ca.pem")
    );
}

#[test]
fn secret_debug_never_shows_the_password() {
    let secret = Secret::new("hunter2".to_string());
    assert_eq!(secret.expose(), "hunter2");
    assert!(!format!("{secret:?}").contains("hunter2"));
    assert!(!format!("{secret:#?}").contains("hunter2"));

    set_password_var();
    let config = parse(&format!(
        "{ONE}[[client]]\nname = \"c\"\nusername = \"u\"\npassword_env = \"{PASSWORD_VAR}\"\nupstreams = [\"one\"]\n"
    ));
    let client = &config.clients[0];
    assert_eq!(client.password.as_ref().map(Secret::expose), Some(PASSWORD));
    for shown in [
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{client:?}"),
        config.to_string(),
    ] {
        assert!(!shown.contains(PASSWORD), "{shown}");
        assert!(!shown.contains("horse"), "{shown}");
    }
}

#[test]
fn password_env_must_name_a_set_variable() {
    let got = problems(&format!(
        "{ONE}[[client]]\nname = \"c\"\nusername = \"u\"\npassword_env = \"PORTCULLIS_UNIT_NEVER_SET\"\nupstreams = [\"one\"]\n"
    ));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(
            "client \"c\": password_env: environment variable PORTCULLIS_UNIT_NEVER_SET is not set"
        ),
        "{got:?}"
    );
}

#[test]
fn clients_resolve_cidrs_and_upstreams() {
    let config = parse(&format!(
        "{ONE}[[client]]\nname = \"c\"\ncidrs = [\"10.1.2.3/8\", \"192.168.1.1\", \"2001:db8::/32\"]\nupstreams = [\"one\"]\n"
    ));
    let c = &config.clients[0];
    let cidrs: Vec<String> = c.cidrs.iter().map(ToString::to_string).collect();
    assert_eq!(cidrs, ["10.0.0.0/8", "192.168.1.1/32", "2001:db8::/32"]);
    assert_eq!(c.username, None);
    assert_eq!(c.password, None);
    assert_eq!(c.upstreams, ["one"]);
}

#[test]
fn builtin_config_parses_and_is_valid() {
    let config = Config::from_toml(BUILTIN, BUILTIN_NAME)
        .unwrap_or_else(|e| panic!("built-in config is invalid:\n{e}"));
    assert_eq!(config.source, BUILTIN_NAME);
    let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["stripe", "worldpay", "adyen", "paypal"]);
    let worldpay = upstream(&config, "worldpay");
    assert_eq!(worldpay.tls, TlsMode::Originate);
    assert_eq!(worldpay.remote_idle_limit, Some(Duration::from_secs(500)));
    assert!(worldpay.settings.max_lifetime < Duration::from_secs(500));
    assert_eq!(upstream(&config, "stripe").settings, spec_settings());
    assert!(config.clients.is_empty());
    // What `check` prints for it parses back to the same thing.
    let shown = config.to_string();
    let again = Config::from_toml(&shown, BUILTIN_NAME).unwrap_or_else(|e| panic!("{e}\n{shown}"));
    assert_eq!(again.to_string(), shown);
}

#[test]
fn client_stall_timeout_is_a_positive_duration() {
    let config = parse(&format!(
        "[proxy]\nclient_stall_timeout = \"1500ms\"\n{ONE}"
    ));
    assert_eq!(
        config.proxy.client_stall_timeout,
        Duration::from_millis(1500)
    );
    assert!(config
        .to_string()
        .contains("client_stall_timeout = \"1500ms\""));
    let got = problems(&format!("[proxy]\nclient_stall_timeout = \"0s\"\n{ONE}"));
    assert_eq!(got, ["proxy: client_stall_timeout must be above 0"]);
    let got = problems(&format!("[proxy]\nclient_stall_timeout = \"30\"\n{ONE}"));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("proxy: client_stall_timeout: \"30\" needs a unit"));
}

/// SPEC §8: the keys that decide what an upstream may reach, or how, change its reach; the
/// others (limits, timeouts) do not, so their reload keeps its pooled connections.
#[test]
fn reach_changes_with_exactly_the_keys_that_decide_it() {
    let dir = std::env::temp_dir().join(format!("portcullis-reach-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/valid/extra-ca.pem");
    let pem = std::fs::read_to_string(&fixture).expect("fixture CA");
    let (ca_a, ca_b) = (dir.join("a.pem"), dir.join("b.pem"));
    std::fs::write(&ca_a, &pem).expect("write");
    std::fs::write(&ca_b, &pem).expect("write");
    let upstream_text = |extra: &str| {
        format!(
            "[[upstream]]\nname = \"u\"\nhosts = [\"a.example.com\", \"*.b.example.com\"]\nports = [443]\n\
             tls = \"originate\"\nca_file = {:?}\n{extra}\n",
            ca_a.display().to_string()
        )
    };
    let base = parse(&upstream_text(""));
    let same = |text: String| upstream(&parse(&text), "u").reach == upstream(&base, "u").reach;
    let cases: Vec<(&str, String, bool)> = vec![
        ("unchanged", upstream_text(""), true),
        ("idle_timeout", upstream_text("idle_timeout = \"5s\""), true),
        (
            "max_connections",
            upstream_text("max_connections = 3"),
            true,
        ),
        (
            "connect_timeout",
            upstream_text("connect_timeout = \"1s\""),
            true,
        ),
        (
            "retry_on_reset",
            upstream_text("retry_on_reset = false"),
            true,
        ),
        (
            "remote_idle_limit",
            upstream_text("remote_idle_limit = \"10m\""),
            true,
        ),
        (
            "allow_private stated as its default",
            upstream_text("allow_private = false"),
            true,
        ),
        (
            "allow_private",
            upstream_text("allow_private = true"),
            false,
        ),
        (
            "hosts",
            upstream_text("").replace("\"*.b.example.com\"", "\"*.c.example.com\""),
            false,
        ),
        (
            "hosts narrowed",
            upstream_text("").replace(", \"*.b.example.com\"", ""),
            false,
        ),
        (
            "ports",
            upstream_text("").replace("[443]", "[443, 8443]"),
            false,
        ),
        (
            "tls",
            upstream_text("").replace("\"originate\"", "\"as-requested\""),
            false,
        ),
        (
            "ca_file path",
            upstream_text("").replace(&ca_a.display().to_string(), &ca_b.display().to_string()),
            false,
        ),
    ];
    for (case, text, want) in cases {
        assert_eq!(same(text), want, "{case}");
    }
    // connect = "intercept" needs an intercept CA to load: compare the keys themselves.
    let u = upstream(&base, "u");
    let with = |connect| {
        reach::Reach {
            hosts: &u.hosts,
            ports: &u.ports,
            allow_private: u.settings.allow_private,
            tls: u.tls,
            connect,
            ca_file: u.ca_file.as_deref(),
            ca_roots: &u.ca_roots,
        }
        .fingerprint()
    };
    assert_eq!(
        with(ConnectMode::Tunnel),
        u.reach,
        "connect = \"tunnel\" is the default"
    );
    assert_ne!(with(ConnectMode::Intercept), u.reach, "connect");
    // The same path with other contents: a rotated bundle.
    std::fs::write(&ca_a, format!("{pem}{pem}")).expect("rewrite");
    assert!(!same(upstream_text("")), "ca_file contents");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn listeners_clash_cases() {
    let cases: &[(&str, &str, bool)] = &[
        ("127.0.0.1:3128", "127.0.0.1:9090", false),
        ("127.0.0.1:3128", "127.0.0.1:3128", true),
        // Port 0: each listener gets a free port of its own.
        ("127.0.0.1:0", "127.0.0.1:0", false),
        ("0.0.0.0:0", "127.0.0.1:0", false),
        // The wildcard address takes the port on every address.
        ("0.0.0.0:3128", "127.0.0.1:3128", true),
        ("127.0.0.1:3128", "0.0.0.0:3128", true),
        ("[::]:3128", "127.0.0.1:3128", true),
        ("[::]:3128", "[::1]:3128", true),
        ("0.0.0.0:3128", "[::1]:3128", true),
        ("[::]:3128", "[::]:3128", true),
        // Two specific addresses share a port without overlapping.
        ("127.0.0.1:3128", "127.0.0.2:3128", false),
        ("127.0.0.1:3128", "[::1]:3128", false),
        ("10.0.0.5:3128", "[fd00::5]:3128", false),
        // An IPv4-mapped address is its IPv4 address.
        ("[::ffff:127.0.0.1]:3128", "127.0.0.1:3128", true),
        ("[::ffff:127.0.0.1]:3128", "127.0.0.2:3128", false),
        ("0.0.0.0:3128", "0.0.0.0:9090", false),
    ];
    for &(a, b, want) in cases {
        let (a, b): (SocketAddr, SocketAddr) = (a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(raw::listeners_clash(a, b), want, "{a} {b}");
        assert_eq!(raw::listeners_clash(b, a), want, "{b} {a}");
    }
}

#[test]
fn listen_and_admin_listen_must_not_share_a_port() {
    let text = |listen: &str, admin: &str| {
        format!("[proxy]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\n{ONE}")
    };
    assert_eq!(
        problems(&text("127.0.0.1:3128", "127.0.0.1:3128")),
        vec!["proxy: listen (127.0.0.1:3128) and admin_listen (127.0.0.1:3128) would both listen on port 3128; give them different ports"]
    );
    assert_eq!(problems(&text("0.0.0.0:9090", "127.0.0.1:9090")).len(), 1);
    parse(&text("0.0.0.0:3128", "127.0.0.1:9090"));
    parse(&text("127.0.0.1:0", "127.0.0.1:0"));
}

#[test]
fn tls_listen_may_not_share_a_port_with_the_other_listeners() {
    let text = "[proxy]\nlisten = \"127.0.0.1:3128\"\ntls_listen = \"0.0.0.0:3128\"\n\
                tls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n"
        .to_string()
        + ONE;
    let found = problems(&text);
    assert!(
        found.iter().any(|p| p
            == "proxy: tls_listen (0.0.0.0:3128) and listen (127.0.0.1:3128) would both listen on port 3128; give them different ports"),
        "{found:#?}"
    );
}

#[test]
fn ipv4_mapped_cidrs_are_read_as_ipv4() {
    let cases: &[(&str, &str)] = &[
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:10.1.2.3/104", "10.0.0.0/8"),
        ("::ffff:192.168.1.0/120", "192.168.1.0/24"),
        ("::ffff:192.168.1.7/128", "192.168.1.7/32"),
        ("::ffff:192.168.1.7", "192.168.1.7/32"),
        ("::ffff:0:0/96", "0.0.0.0/0"),
        // Not (only) mapped addresses: IPv6 as written.
        ("::/0", "::/0"),
        ("::ffff:0:0/95", "::fffe:0:0/95"),
        ("fd00::/8", "fd00::/8"),
        ("::ffff:0:10.0.0.0/104", "::ffff:0:a00:0/104"),
        ("10.0.0.0/8", "10.0.0.0/8"),
    ];
    for &(written, want) in cases {
        let text = format!(
            "{ONE}[[client]]\nname = \"c\"\ncidrs = [\"{written}\"]\nupstreams = [\"one\"]\n"
        );
        let config = parse(&text);
        let got: Vec<String> = config.clients[0]
            .cidrs
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(got, vec![want.to_string()], "{written}");
        let shown = config.to_string();
        assert!(shown.contains(&format!("cidrs = [\"{want}\"]")), "{shown}");
    }
}

/// TLS client configs are built while the config loads, never on a dial: upstreams without a
/// `ca_file` share the one system-roots config; one with a `ca_file` gets its own, made anew
/// by each load (a reload re-reads the file).
#[test]
fn tls_client_configs_are_built_at_load() {
    let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/valid/extra-ca.pem");
    let text = format!(
        "{ONE}[[upstream]]\nname = \"two\"\nhosts = [\"two.example.com\"]\n\
         [[upstream]]\nname = \"own\"\nhosts = [\"own.example.com\"]\nca_file = {:?}\n",
        ca.display().to_string()
    );
    let (first, second) = (parse(&text), parse(&text));
    let tls = |c: &Config, name: &str| upstream(c, name).tls_client.0.clone();
    assert!(Arc::ptr_eq(&tls(&first, "one"), &tls(&first, "two")));
    assert!(Arc::ptr_eq(&tls(&first, "one"), &tls(&second, "one")));
    assert!(!Arc::ptr_eq(&tls(&first, "own"), &tls(&first, "one")));
    assert!(!Arc::ptr_eq(&tls(&first, "own"), &tls(&second, "own")));
    assert_eq!(upstream(&first, "own").ca_roots.len(), 1);
}
