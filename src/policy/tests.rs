//! Policy decision tests: identities, host and port rules.

use super::*;

use std::sync::Once;

use crate::target::parse_host;

/// Set once for the whole test binary; no other test reads or writes it. The colon checks
/// that only the first `:` of `user:pass` splits.
const PASSWORD_VAR: &str = "PORTCULLIS_UNIT_POLICY_PW";
const PASSWORD: &str = "s3cr:et";

fn config(text: &str) -> Config {
    static SET: Once = Once::new();
    SET.call_once(|| std::env::set_var(PASSWORD_VAR, PASSWORD));
    let text = text.replace("$PW", PASSWORD_VAR);
    Config::from_toml(&text, "policy-test.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn basic(user: &str, pass: &str) -> Vec<u8> {
    credentials("Basic", user, pass)
}

/// `<scheme> base64(user:pass)`, to try other spellings of the scheme.
fn credentials(scheme: &str, user: &str, pass: &str) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("{scheme} {b64}").into_bytes()
}

/// What a case expects from `decide`.
#[derive(Debug)]
enum Expect {
    Allow {
        upstream: &'static str,
        port: u16,
        tls: bool,
        client: Option<&'static str>,
    },
    Deny(DenyReason),
    AuthRequired,
}

use Expect::{AuthRequired, Deny};

fn allow(upstream: &'static str, port: u16, tls: bool) -> Expect {
    Expect::Allow {
        upstream,
        port,
        tls,
        client: None,
    }
}

fn allow_as(client: &'static str, upstream: &'static str, port: u16) -> Expect {
    Expect::Allow {
        upstream,
        port,
        tls: false,
        client: Some(client),
    }
}

fn http(port: Option<u16>) -> Want {
    Want::Forward {
        scheme: Scheme::Http,
        port,
    }
}

fn https(port: Option<u16>) -> Want {
    Want::Forward {
        scheme: Scheme::Https,
        port,
    }
}

fn tunnel(port: u16) -> Want {
    Want::Tunnel { port }
}

/// (peer, Proxy-Authorization, host, what is asked, expected)
type Case<'a> = (&'a str, Option<Vec<u8>>, &'a str, Want, Expect);

fn run(config: &Config, cases: &[Case]) {
    let mut failures = Vec::new();
    for (peer, auth, host, want, expect) in cases {
        let peer: IpAddr = peer.parse().unwrap_or_else(|e| panic!("{peer}: {e}"));
        let host_parsed = parse_host(host).unwrap_or_else(|e| panic!("{host}: {e}"));
        let got = decide(config, peer.into(), auth.as_deref(), &host_parsed, *want);
        let ok = match (&got, expect) {
            (
                Ok(a),
                Expect::Allow {
                    upstream,
                    port,
                    tls,
                    client,
                },
            ) => {
                a.upstream.name == *upstream
                    && a.target.port == *port
                    && a.target.tls == *tls
                    && a.target.host == host_parsed
                    && a.client.as_deref() == *client
            }
            (Err(ProxyError::Denied { reason, .. }), Deny(want)) => reason == want,
            (Err(ProxyError::AuthRequired), AuthRequired) => true,
            _ => false,
        };
        if !ok {
            let auth = auth.as_deref().map(String::from_utf8_lossy);
            failures.push(format!(
                "peer {peer} auth {auth:?} host {host} {want:?}: want {expect:?}, got {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

const HOSTS: &str = r#"
[[upstream]]
name = "exact-first"
hosts = ["api.example.com"]
ports = [443]

[[upstream]]
name = "wide"
hosts = ["*.example.com", "api.example.com"]
ports = [80, 443, 8443]

[[upstream]]
name = "originate"
hosts = ["secure.pay.example"]
tls = "originate"

[[upstream]]
name = "originate-443"
hosts = ["alt.pay.example"]
tls = "originate"
ports = [443, 8443]

[[upstream]]
name = "literals"
hosts = ["10.9.9.9", "::1"]
ports = [8080]

[[upstream]]
name = "default-ports"
hosts = ["plain.example.net"]
"#;

#[test]
fn hosts_ports_and_tls_without_clients() {
    let c = config(HOSTS);
    let anyone = "203.0.113.5";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        // The first upstream in file order whose hosts match decides, even when a later one
        // would allow the port.
        (anyone, None, "api.example.com", tunnel(443), allow("exact-first", 443, false)),
        (anyone, None, "API.Example.COM", tunnel(443), allow("exact-first", 443, false)),
        (anyone, None, "api.example.com", tunnel(8443), Deny(DenyReason::Port)),
        (anyone, None, "api.example.com", http(None), Deny(DenyReason::Port)),
        (anyone, None, "api.example.com", https(None), allow("exact-first", 443, true)),
        // Wildcards: any depth below the suffix, never the suffix itself.
        (anyone, None, "www.example.com", tunnel(8443), allow("wide", 8443, false)),
        (anyone, None, "a.b.c.example.com", tunnel(443), allow("wide", 443, false)),
        (anyone, None, "example.com", tunnel(443), Deny(DenyReason::Host)),
        (anyone, None, "badexample.com", tunnel(443), Deny(DenyReason::Host)),
        (anyone, None, "www.example.com.evil.test", tunnel(443), Deny(DenyReason::Host)),
        (anyone, None, "unlisted.test", http(None), Deny(DenyReason::Host)),
        // Absolute-form ports: explicit, else 443 for https, else 80.
        (anyone, None, "www.example.com", http(None), allow("wide", 80, false)),
        (anyone, None, "www.example.com", https(None), allow("wide", 443, true)),
        (anyone, None, "www.example.com", http(Some(8443)), allow("wide", 8443, false)),
        (anyone, None, "www.example.com", https(Some(80)), allow("wide", 80, true)),
        (anyone, None, "www.example.com", http(Some(8080)), Deny(DenyReason::Port)),
        // CONNECT port must be in `ports`.
        (anyone, None, "www.example.com", tunnel(22), Deny(DenyReason::Port)),
        (anyone, None, "plain.example.net", tunnel(80), allow("default-ports", 80, false)),
        (anyone, None, "plain.example.net", tunnel(443), allow("default-ports", 443, false)),
        (anyone, None, "plain.example.net", tunnel(8443), Deny(DenyReason::Port)),
        // tls = "originate": http:// defaults to 443 and always speaks TLS; CONNECT stays end-to-end.
        (anyone, None, "secure.pay.example", http(None), allow("originate", 443, true)),
        (anyone, None, "secure.pay.example", http(Some(80)), allow("originate", 80, true)),
        (anyone, None, "secure.pay.example", tunnel(443), allow("originate", 443, false)),
        (anyone, None, "alt.pay.example", http(None), allow("originate-443", 443, true)),
        (anyone, None, "alt.pay.example", http(Some(80)), Deny(DenyReason::Port)),
        // SPEC §9: a CONNECT to port 80 of an originating upstream is served as origination
        // to 443 (the client tunnels http://alt.pay.example/); see connect_plans.
        (anyone, None, "alt.pay.example", tunnel(80), allow("originate-443", 80, false)),
        (anyone, None, "alt.pay.example", tunnel(8080), Deny(DenyReason::Port)),
        // IP literals match only themselves.
        (anyone, None, "10.9.9.9", tunnel(8080), allow("literals", 8080, false)),
        (anyone, None, "[::1]", tunnel(8080), allow("literals", 8080, false)),
        (anyone, None, "10.9.9.9", http(None), Deny(DenyReason::Port)),
        (anyone, None, "127.0.0.1", tunnel(8080), Deny(DenyReason::Host)),
        (anyone, None, "[::ffff:10.9.9.9]", tunnel(8080), Deny(DenyReason::Host)),
    ];
    run(&c, &cases);
}

#[test]
fn without_clients_anyone_passes() {
    let c = config(HOSTS);
    let garbage = Some(b"Bearer not-basic-at-all".to_vec());
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("10.1.2.3", None, "api.example.com", tunnel(443), allow("exact-first", 443, false)),
        ("2001:db8::7", None, "api.example.com", tunnel(443), allow("exact-first", 443, false)),
        ("127.0.0.1", garbage.clone(), "api.example.com", tunnel(443), allow("exact-first", 443, false)),
        ("203.0.113.5", Some(basic("who", "ever")), "api.example.com", tunnel(443),
            allow("exact-first", 443, false)),
    ];
    run(&c, &cases);
}

const CLIENTS: &str = r#"
[[upstream]]
name = "stripe"
hosts = ["api.stripe.com"]
ports = [443]

[[upstream]]
name = "worldpay"
hosts = ["secure.worldpay.com"]
ports = [443]

[[upstream]]
name = "adyen"
hosts = ["*.adyen.com"]
ports = [443]

[[client]]
name = "checkout"
cidrs = ["10.0.0.0/8", "2001:db8::/32"]
upstreams = ["stripe"]

[[client]]
name = "batch"
cidrs = ["192.168.0.0/16"]
username = "batch"
password_env = "$PW"
upstreams = ["adyen"]

[[client]]
name = "connector"
username = "connector"
password_env = "$PW"
upstreams = ["stripe", "worldpay"]
"#;

#[test]
fn client_identity() {
    let c = config(CLIENTS);
    let right = || Some(basic("connector", PASSWORD));
    let batch = || Some(basic("batch", PASSWORD));
    let lower = Some(credentials("basic", "connector", PASSWORD));
    let stripe = "api.stripe.com";
    let worldpay = "secure.worldpay.com";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        // By CIDR, v4, v6 and an IPv4-mapped peer from a dual-stack listener.
        ("10.1.2.3", None, stripe, tunnel(443), allow_as("checkout", "stripe", 443)),
        ("2001:db8:5::1", None, stripe, tunnel(443), allow_as("checkout", "stripe", 443)),
        ("::ffff:10.1.2.3", None, stripe, tunnel(443), allow_as("checkout", "stripe", 443)),
        // A client's `upstreams` lacks the matched upstream.
        ("10.1.2.3", None, worldpay, tunnel(443), Deny(DenyReason::Client)),
        ("::ffff:10.1.2.3", None, "x.adyen.com", tunnel(443), Deny(DenyReason::Client)),
        // Identity comes before host and port: a known client still gets Host / Port.
        ("10.1.2.3", None, "unlisted.test", tunnel(443), Deny(DenyReason::Host)),
        ("10.1.2.3", None, stripe, tunnel(8443), Deny(DenyReason::Port)),
        // Outside every password-less CIDR, a password client could log in: 407, even for
        // a host that is not on the allowlist.
        ("172.16.0.1", None, stripe, tunnel(443), AuthRequired),
        ("172.16.0.1", None, "unlisted.test", tunnel(443), AuthRequired),
        ("::ffff:172.16.0.1", None, stripe, tunnel(443), AuthRequired),
        // Right credentials: that client, from anywhere its CIDRs allow, even inside
        // another client's CIDR.
        ("172.16.0.1", right(), worldpay, tunnel(443), allow_as("connector", "worldpay", 443)),
        ("10.1.2.3", right(), worldpay, tunnel(443), allow_as("connector", "worldpay", 443)),
        ("2001:db8::1", right(), stripe, tunnel(443), allow_as("connector", "stripe", 443)),
        ("172.16.0.1", right(), "x.adyen.com", tunnel(443), Deny(DenyReason::Client)),
        ("172.16.0.1", lower, stripe, tunnel(443), allow_as("connector", "stripe", 443)),
        ("192.168.4.4", batch(), "x.adyen.com", tunnel(443), allow_as("batch", "adyen", 443)),
        // Right credentials from outside that client's CIDRs.
        ("10.1.2.3", batch(), "x.adyen.com", tunnel(443), Deny(DenyReason::Client)),
        // Wrong or unusable credentials.
        ("172.16.0.1", Some(basic("connector", "s3cr")), stripe, tunnel(443), AuthRequired),
        ("172.16.0.1", Some(basic("connector", "s3cr:et ")), stripe, tunnel(443), AuthRequired),
        ("172.16.0.1", Some(basic("connector", "")), stripe, tunnel(443), AuthRequired),
        ("172.16.0.1", Some(basic("Connector", PASSWORD)), stripe, tunnel(443), AuthRequired),
        ("172.16.0.1", Some(basic("checkout", "")), stripe, tunnel(443), AuthRequired),
        ("172.16.0.1", Some(basic("nobody", PASSWORD)), stripe, tunnel(443), AuthRequired),
        ("10.1.2.3", Some(basic("connector", "wrong")), stripe, tunnel(443), AuthRequired),
        ("172.16.0.1", Some(b"Basic !!!not-base64".to_vec()), stripe, tunnel(443), AuthRequired),
        ("172.16.0.1", Some(b"Bearer abc".to_vec()), stripe, tunnel(443), AuthRequired),
        ("172.16.0.1", Some(b"Basic".to_vec()), stripe, tunnel(443), AuthRequired),
    ];
    run(&c, &cases);
}

#[test]
fn outside_every_cidr_without_a_password_client_is_denied() {
    let c = config(
        r#"
        [[upstream]]
        name = "stripe"
        hosts = ["api.stripe.com"]

        [[client]]
        name = "checkout"
        cidrs = ["10.0.0.0/8", "fd00::/8"]
        upstreams = ["stripe"]

        [[client]]
        name = "batch"
        cidrs = ["192.168.0.0/16"]
        username = "batch"
        password_env = "$PW"
        upstreams = ["stripe"]
        "#,
    );
    let stripe = "api.stripe.com";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("172.16.0.1", None, stripe, tunnel(443), Deny(DenyReason::Client)),
        ("2001:db8::1", None, stripe, tunnel(443), Deny(DenyReason::Client)),
        ("11.0.0.1", None, stripe, tunnel(443), Deny(DenyReason::Client)),
        // The password client's own range asks for credentials instead.
        ("192.168.1.1", None, stripe, tunnel(443), AuthRequired),
        ("::ffff:192.168.1.1", None, stripe, tunnel(443), AuthRequired),
        ("192.168.1.1", Some(basic("batch", PASSWORD)), stripe, http(None), allow_as("batch", "stripe", 80)),
        ("fd12::1", None, stripe, tunnel(443), allow_as("checkout", "stripe", 443)),
        ("10.255.255.255", None, stripe, tunnel(443), allow_as("checkout", "stripe", 443)),
    ];
    run(&c, &cases);
}

#[test]
fn identify_without_clients_is_anonymous() {
    let peer: IpAddr = "198.51.100.1".parse().unwrap();
    assert!(matches!(identify(&[], peer.into(), None), Ok(None)));
    assert!(matches!(
        identify(&[], peer.into(), Some(b"junk")),
        Ok(None)
    ));
}

#[test]
fn denials_explain_themselves() {
    let c = config(CLIENTS);
    let peer: IpAddr = "10.1.2.3".parse().unwrap();
    let host = parse_host("secure.worldpay.com").unwrap();
    let err = decide(&c, peer.into(), None, &host, tunnel(443)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("checkout") && text.contains("worldpay"),
        "{text}"
    );
    let host = parse_host("api.stripe.com").unwrap();
    let text = decide(&c, peer.into(), None, &host, tunnel(22))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("port 22") && text.contains("api.stripe.com"),
        "{text}"
    );
}

/// SPEC §9: what a CONNECT to each port becomes, by the upstream's `tls` and `ports`.
#[test]
fn connect_plans() {
    use ConnectPlan::{Originate, Tunnel};
    let c = config(
        r#"
[[upstream]]
name = "plain"
hosts = ["plain.example.com"]
ports = [443, 8443]

[[upstream]]
name = "originating"
hosts = ["orig.example.com"]
ports = [443, 8443]
tls = "originate"

[[upstream]]
name = "originating-80"
hosts = ["orig80.example.com"]
ports = [80]
tls = "originate"
"#,
    );
    let up = |name: &str| c.upstream(name).expect("configured").clone();
    let cases = [
        ("plain", 443, Some(Tunnel { or_originate: None })),
        ("plain", 80, None),
        // An originating upstream: a tunnel where its ports allow one (plain HTTP inside is
        // served as origination to the same port), origination alone for port 80 (the
        // default port of the http:// URL the client tunnels), nothing else.
        (
            "originating",
            443,
            Some(Tunnel {
                or_originate: Some(443),
            }),
        ),
        (
            "originating",
            8443,
            Some(Tunnel {
                or_originate: Some(8443),
            }),
        ),
        ("originating", 80, Some(Originate { port: 443 })),
        ("originating", 8080, None),
        // Port 80 allowed but not 443: plain HTTP inside would be originated to 443, refused.
        ("originating-80", 80, Some(Tunnel { or_originate: None })),
    ];
    for (name, port, want) in cases {
        assert_eq!(connect_plan(&up(name), port), want, "{name}:{port}");
    }
    // decide() allows exactly the CONNECTs that have a plan.
    let host = parse_host("orig.example.com").expect("host");
    let peer: IpAddr = "10.0.0.1".parse().expect("ip");
    assert!(decide(&c, peer.into(), None, &host, Want::Tunnel { port: 80 }).is_ok());
    let denied = decide(&c, peer.into(), None, &host, Want::Tunnel { port: 8080 });
    assert!(
        matches!(
            denied,
            Err(ProxyError::Denied {
                reason: DenyReason::Port,
                ..
            })
        ),
        "{denied:?}"
    );
}

/// (peer, certificate identities, Proxy-Authorization, the client chosen or "407" / "403")
type CertCase<'a> = (
    &'a str,
    Option<PeerIdentity>,
    Option<Vec<u8>>,
    Result<&'a str, &'a str>,
);

/// A `[[client]]` built by hand: entries with `cert_names` need `client_ca` files to load.
fn client(name: &str, cidrs: &[&str], user: Option<&str>, cert_names: &[&str]) -> Client {
    Client {
        name: name.to_string(),
        cidrs: cidrs.iter().map(|c| c.parse().expect("cidr")).collect(),
        username: user.map(String::from),
        password: user.map(|_| crate::config::Secret::new(PASSWORD.to_string())),
        password_env: user.map(|_| PASSWORD_VAR.to_string()),
        cert_names: cert_names
            .iter()
            .map(|n| crate::pattern::CertNamePattern::parse(n).expect("pattern"))
            .collect(),
        upstreams: vec![],
    }
}

#[test]
fn certificate_identity_is_one_criterion_among_others() {
    use crate::pattern::CertName::{CommonName, Dns, Uri};
    let spiffe = "spiffe://prod/ns/payments/sa/connector";
    let clients = vec![
        client("connector", &[], None, &[spiffe]),
        client("web", &["10.0.0.0/8"], None, &["*.web.internal"]),
        client("batch", &[], Some("batch"), &["batch.internal"]),
        client("office", &["192.168.0.0/16"], None, &[]),
    ];
    let id = |names: Vec<crate::pattern::CertName>| Some(PeerIdentity { names });
    let s = |t: &str| t.to_string();
    let creds = Some(basic("batch", PASSWORD));
    let cases: Vec<CertCase> = vec![
        ("10.1.1.1", id(vec![Uri(s(spiffe))]), None, Ok("connector")),
        // A SPIFFE ID compares exactly; a CN equal to the text is no URI.
        (
            "10.1.1.1",
            id(vec![Uri(s("spiffe://prod/ns/payments/sa/other"))]),
            None,
            Err("403"),
        ),
        (
            "10.1.1.1",
            id(vec![CommonName(s(spiffe))]),
            None,
            Err("403"),
        ),
        // The first entry whose criteria all hold decides, in file order.
        (
            "192.168.1.1",
            id(vec![Uri(s(spiffe))]),
            None,
            Ok("connector"),
        ),
        ("192.168.1.1", None, None, Ok("office")),
        (
            "192.168.1.1",
            id(vec![Dns(s("x.example.com"))]),
            None,
            Ok("office"),
        ),
        // Wildcards as in host matching, together with the entry's CIDRs.
        (
            "10.1.1.1",
            id(vec![Dns(s("a.WEB.internal"))]),
            None,
            Ok("web"),
        ),
        (
            "10.1.1.1",
            id(vec![Dns(s("web.internal"))]),
            None,
            Err("403"),
        ),
        (
            "172.16.0.1",
            id(vec![Dns(s("a.web.internal"))]),
            None,
            Err("403"),
        ),
        // No certificate never matches an entry that names cert_names.
        ("10.1.1.1", None, None, Err("403")),
        // Certificate and password together: 407 until the password comes, 403 without the
        // certificate, whatever the password.
        (
            "10.1.1.1",
            id(vec![Dns(s("batch.internal"))]),
            None,
            Err("407"),
        ),
        (
            "10.1.1.1",
            id(vec![CommonName(s("Batch.Internal"))]),
            creds.clone(),
            Ok("batch"),
        ),
        ("10.1.1.1", None, creds.clone(), Err("403")),
        (
            "10.1.1.1",
            id(vec![Dns(s("other.internal"))]),
            creds.clone(),
            Err("403"),
        ),
        (
            "10.1.1.1",
            id(vec![Dns(s("batch.internal"))]),
            Some(basic("batch", "wrong")),
            Err("407"),
        ),
    ];
    let mut failures = Vec::new();
    for (peer, cert, auth, want) in &cases {
        let caller = Caller {
            ip: peer.parse().expect("ip"),
            cert: cert.as_ref(),
        };
        let got = match identify(&clients, caller, auth.as_deref()) {
            Ok(Some(c)) => Ok(c.name.as_str()),
            Ok(None) => Ok("anonymous"),
            Err(ProxyError::AuthRequired) => Err("407"),
            Err(ProxyError::Denied {
                reason: DenyReason::Client,
                ..
            }) => Err("403"),
            Err(other) => panic!("{other:?}"),
        };
        if got != *want {
            failures.push(format!(
                "{peer} {cert:?} auth {}: want {want:?}, got {got:?}",
                auth.is_some()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn certificate_refusals_say_what_was_presented() {
    let clients = vec![client("connector", &[], None, &["spiffe://prod/a"])];
    let refuse = |cert: Option<&PeerIdentity>| {
        let caller = Caller {
            ip: "10.1.1.1".parse().expect("ip"),
            cert,
        };
        identify(&clients, caller, None)
            .expect_err("refused")
            .to_string()
    };
    let text = refuse(None);
    assert!(
        text.contains("no client certificate was presented"),
        "{text}"
    );
    let text = refuse(Some(&PeerIdentity::default()));
    assert!(
        text.contains("names no URI, DNS name or common name"),
        "{text}"
    );
    let names = (0..5)
        .map(|i| crate::pattern::CertName::Uri(format!("spiffe://prod/{i}\n")))
        .collect();
    let text = refuse(Some(&PeerIdentity { names }));
    assert!(
        text.contains(
            r#""spiffe://prod/0\n", "spiffe://prod/1\n", "spiffe://prod/2\n" and 2 more"#
        ),
        "at most three names, control characters escaped: {text}"
    );
}

const ADDRESSES: &str = r#"
[[upstream]]
name = "metadata"
hosts = ["169.254.169.254", "fe80::1", "metadata.example"]
allow_private = true

[[upstream]]
name = "wild"
hosts = ["*.internal.example"]
allow_private = true

[[upstream]]
name = "strict"
hosts = ["*.strict.example", "169.254.169.254"]

[[upstream]]
name = "public"
hosts = ["api.example"]
"#;

#[test]
fn check_addresses_cases() {
    let c = config(ADDRESSES);
    // (upstream, host, addresses, refused by which rule)
    let cases: &[(&str, &str, &[&str], Option<&str>)] = &[
        // Public addresses pass everywhere.
        ("public", "api.example", &["93.184.216.34"], None),
        (
            "wild",
            "a.internal.example",
            &["93.184.216.34", "2606:4700::1"],
            None,
        ),
        // allow_private = false: every private class is refused, one in a mix refuses all.
        ("public", "api.example", &["10.0.0.1"], Some(NOT_PRIVATE)),
        (
            "public",
            "api.example",
            &["93.184.216.34", "127.0.0.1"],
            Some(NOT_PRIVATE),
        ),
        (
            "public",
            "api.example",
            &["169.254.169.254"],
            Some(NOT_PRIVATE),
        ),
        // Listed literally does not lift allow_private = false.
        (
            "strict",
            "169.254.169.254",
            &["169.254.169.254"],
            Some(NOT_PRIVATE),
        ),
        // allow_private = true: private is fine, link-local is not...
        ("wild", "a.internal.example", &["10.0.0.1", "fd00::1"], None),
        (
            "wild",
            "a.internal.example",
            &["169.254.169.254"],
            Some(NOT_LINK_LOCAL),
        ),
        (
            "wild",
            "a.internal.example",
            &["10.0.0.1", "169.254.169.254"],
            Some(NOT_LINK_LOCAL),
        ),
        (
            "wild",
            "a.internal.example",
            &["fe80::1"],
            Some(NOT_LINK_LOCAL),
        ),
        (
            "wild",
            "a.internal.example",
            &["::ffff:169.254.169.254"],
            Some(NOT_LINK_LOCAL),
        ),
        (
            "wild",
            "a.internal.example",
            &["64:ff9b::a9fe:a9fe"],
            Some(NOT_LINK_LOCAL),
        ),
        (
            "wild",
            "a.internal.example",
            &["2002:a9fe:a9fe::1"],
            Some(NOT_LINK_LOCAL),
        ),
        (
            "wild",
            "a.internal.example",
            &["2001:0:808:808::5601:5601"],
            Some(NOT_LINK_LOCAL),
        ),
        // ...even by an exact name of an upstream that lists the address too: the name is
        // not the address.
        ("metadata", "metadata.example", &["169.254.169.254"], None),
        (
            "metadata",
            "metadata.example",
            &["169.254.169.253"],
            Some(NOT_LINK_LOCAL),
        ),
        (
            "metadata",
            "metadata.example",
            &["fe80::2"],
            Some(NOT_LINK_LOCAL),
        ),
        // ...unless hosts lists that very address (no mapped form, no neighbour).
        ("metadata", "169.254.169.254", &["169.254.169.254"], None),
        ("metadata", "[fe80::1]", &["fe80::1"], None),
        (
            "metadata",
            "[::ffff:169.254.169.254]",
            &["::ffff:169.254.169.254"],
            Some(NOT_LINK_LOCAL),
        ),
    ];
    for &(name, host, addrs, want) in cases {
        let upstream = c.upstream(name).unwrap_or_else(|| panic!("{name}"));
        let host = parse_host(host).unwrap_or_else(|e| panic!("{host}: {e}"));
        let addrs: Vec<IpAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        let got = check_addresses(upstream, &host, &addrs);
        let case = format!("{name} {host} {addrs:?}");
        match (got, want) {
            (Ok(()), None) => {}
            (Err(ProxyError::PrivateAddress { why, .. }), Some(want)) => {
                assert_eq!(why, want, "{case}")
            }
            (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn a_refused_address_is_named_with_its_class() {
    let c = config(ADDRESSES);
    let upstream = c.upstream("wild").unwrap();
    let host = parse_host("a.internal.example").unwrap();
    let addr: IpAddr = "64:ff9b::a9fe:a9fe".parse().unwrap();
    let text = check_addresses(upstream, &host, &[addr])
        .unwrap_err()
        .to_string();
    assert_eq!(
        text,
        format!("a.internal.example resolves to 64:ff9b::a9fe:a9fe, a nat64 link-local address; {NOT_LINK_LOCAL}")
    );
}

/// A CIDR written in IPv4-mapped form matches IPv4 peers, however they arrive.
#[test]
fn mapped_cidrs_match_ipv4_peers() {
    let c = config(
        r#"
[[upstream]]
name = "u"
hosts = ["a.example.com"]

[[client]]
name = "internal"
cidrs = ["::ffff:10.0.0.0/104"]
upstreams = ["u"]
"#,
    );
    for (peer, allowed) in [
        ("10.1.2.3", true),
        ("::ffff:10.1.2.3", true),
        ("11.1.2.3", false),
        ("::ffff:11.1.2.3", false),
    ] {
        let peer: IpAddr = peer.parse().unwrap();
        let got = identify(&c.clients, peer.into(), None);
        assert_eq!(got.is_ok(), allowed, "{peer}: {got:?}");
    }
}
