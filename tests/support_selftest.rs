//! Proves each fixture in tests/support behaves as documented, over real loopback sockets.

mod support;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolverConfig, ResolverOpts,
};
use hickory_resolver::error::ResolveErrorKind;
use hickory_resolver::TokioAsyncResolver;
use rustls::pki_types::ServerName;
use rustls::CertificateError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use support::*;

const WITHIN: Duration = Duration::from_secs(5);

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: origin.test\r\n\r\n").into_bytes()
}

fn targets(origin: &Origin) -> Vec<String> {
    origin.requests().into_iter().map(|r| r.target).collect()
}

/// True once nothing accepts connections on `addr` any more.
async fn refuses_connections(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

// ---------------------------------------------------------------- origin

#[tokio::test]
async fn origin_records_each_request_as_sent() {
    let origin = origin().spawn().await;

    let post = b"POST /a?b HTTP/1.1\r\nHost: origin.test\r\nX-First: 1\r\nx-second: 2\r\nContent-Length: 5\r\n\r\nhello";
    let resp = raw_exchange(origin.addr, post, WITHIN).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body_text(), "ok");
    assert_eq!(resp.header("content-length"), Some("2"));
    assert!(!resp.closed, "keep-alive by default");

    let chunked = b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    assert_eq!(raw_exchange(origin.addr, chunked, WITHIN).await.status, 200);

    let http10 = raw_exchange(origin.addr, b"GET /old HTTP/1.0\r\n\r\n", WITHIN).await;
    assert_eq!(http10.status, 200);
    assert_eq!(http10.header("connection"), Some("close"));
    assert!(http10.closed, "HTTP/1.0 without keep-alive is closed");

    assert!(origin.wait_for_requests(3, WITHIN).await);
    assert!(
        !origin
            .wait_for_requests(4, Duration::from_millis(100))
            .await
    );
    let seen = origin.requests();
    let first = &seen[0];
    assert_eq!(
        (first.method.as_str(), first.target.as_str(), first.version),
        ("POST", "/a?b", 1)
    );
    let names: Vec<&str> = first.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["Host", "X-First", "x-second", "Content-Length"]);
    assert_eq!(first.header("X-SECOND"), Some("2"));
    assert_eq!(first.body, b"hello");
    assert_eq!((first.conn_id, first.conn_request_index), (1, 0));
    assert_eq!(seen[1].body_text(), "hello world");
    assert_eq!(seen[1].conn_id, 2);
    assert_eq!(seen[2].version, 0);
    assert!(seen[0].received_at <= seen[1].received_at);
    assert_eq!(origin.connections_accepted(), 3);
}

#[tokio::test]
async fn origin_keeps_connections_alive_between_requests() {
    let origin = origin().spawn().await;
    let mut conn = ProxyConn::connect(origin.addr).await;
    for path in ["/1", "/2", "/3"] {
        let resp = conn.send(&get(path)).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert!(!resp.closed);
    }
    let seen = origin.requests();
    assert!(seen.iter().all(|r| r.conn_id == 1));
    let indexes: Vec<usize> = seen.iter().map(|r| r.conn_request_index).collect();
    assert_eq!(indexes, [0, 1, 2]);
    assert_eq!(origin.connections_accepted(), 1);
    assert_eq!(origin.open_connections(), 1);
    drop(conn);
    assert!(origin.wait_for_open_connections(0, WITHIN).await);
}

#[tokio::test]
async fn origin_replies_as_the_handler_says() {
    let origin = origin()
        .handler(|req| match req.target.as_str() {
            "/status" => Reply::status(404, "nope").header("X-Test", "1"),
            "/chunked" => Reply::ok("hello chunked world").chunked(),
            "/delay" => Reply::ok("late").delay(Duration::from_millis(300)),
            "/trickle" => Reply::ok("abcdefgh").trickle(2, Duration::from_millis(50)),
            "/trickle-chunked" => Reply::ok("abcdefgh")
                .chunked()
                .trickle(3, Duration::from_millis(20)),
            "/close" => Reply::ok("bye").close(),
            _ => Reply::ok("ok"),
        })
        .spawn()
        .await;

    let resp = raw_exchange(origin.addr, &get("/status"), WITHIN).await;
    assert_eq!((resp.status, resp.body_text().as_str()), (404, "nope"));
    assert_eq!(resp.header("x-test"), Some("1"));

    let resp = raw_exchange(origin.addr, &get("/chunked"), WITHIN).await;
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.header("content-length"), None);
    assert_eq!(resp.body_text(), "hello chunked world");

    let started = Instant::now();
    let resp = raw_exchange(origin.addr, &get("/delay"), WITHIN).await;
    assert_eq!(resp.body_text(), "late");
    assert!(started.elapsed() >= Duration::from_millis(300));

    let started = Instant::now();
    let resp = raw_exchange(origin.addr, &get("/trickle"), WITHIN).await;
    assert_eq!(resp.body_text(), "abcdefgh");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "4 pieces, 50 ms apart"
    );

    let resp = raw_exchange(origin.addr, &get("/trickle-chunked"), WITHIN).await;
    assert_eq!(resp.body_text(), "abcdefgh");

    let head = raw_exchange(origin.addr, b"HEAD /x HTTP/1.1\r\nHost: o\r\n\r\n", WITHIN).await;
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("2"))
    );
    assert!(head.body.is_empty() && head.error.is_none(), "{head:?}");

    let resp = raw_exchange(origin.addr, &get("/close"), WITHIN).await;
    assert_eq!(resp.body_text(), "bye");
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(resp.closed);
    assert!(origin.wait_for_open_connections(0, WITHIN).await);
}

#[tokio::test]
async fn origin_faults_look_like_real_failures() {
    let origin = origin()
        .handler(|req| match req.target.as_str() {
            "/fin" => Reply::close_without_answer(),
            "/rst" => Reply::reset_without_answer(),
            "/hang" => Reply::hang(),
            "/half" => Reply::ok(vec![b'x'; 1000]).close_mid_body(),
            "/endless" => Reply::endless_header(),
            "/garbage" => Reply::garbage(),
            _ => Reply::ok("ok"),
        })
        .spawn()
        .await;

    let fin = raw_exchange(origin.addr, &get("/fin"), WITHIN).await;
    assert_eq!((fin.status, fin.bytes_received), (0, 0));
    assert_eq!(
        fin.error_kind(),
        Some(io::ErrorKind::UnexpectedEof),
        "a FIN, not an RST: {fin:?}"
    );
    assert!(fin.closed);

    let rst = raw_exchange(origin.addr, &get("/rst"), WITHIN).await;
    assert!(rst.is_reset() && rst.closed && rst.status == 0, "{rst:?}");

    let hang = raw_exchange(origin.addr, &get("/hang"), Duration::from_millis(300)).await;
    assert!(
        hang.timed_out() && !hang.closed && hang.status == 0,
        "{hang:?}"
    );

    let half = raw_exchange(origin.addr, &get("/half"), WITHIN).await;
    assert_eq!(
        (half.status, half.header("content-length")),
        (200, Some("1000"))
    );
    assert_eq!(half.body.len(), 500);
    assert_eq!(half.error_kind(), Some(io::ErrorKind::UnexpectedEof));
    assert!(half.closed);

    let endless = raw_exchange(origin.addr, &get("/endless"), WITHIN).await;
    assert_eq!(
        endless.error_kind(),
        Some(io::ErrorKind::InvalidData),
        "{endless:?}"
    );
    assert!(endless.bytes_received > 256 * 1024);

    let garbage = raw_exchange(origin.addr, &get("/garbage"), WITHIN).await;
    assert_eq!(
        (garbage.status, garbage.error_kind()),
        (0, Some(io::ErrorKind::InvalidData))
    );

    // Every request was read in full before the fault.
    assert_eq!(
        targets(&origin),
        ["/fin", "/rst", "/hang", "/half", "/endless", "/garbage"]
    );
    // The clients left, so even the hanging and endless connections are gone.
    assert!(origin.wait_for_open_connections(0, WITHIN).await);
}

#[tokio::test]
async fn origin_keep_alive_timeout_announces_and_closes_idle_connections() {
    let origin = origin()
        .keep_alive_timeout(Duration::from_secs(2))
        .spawn()
        .await;
    let mut conn = ProxyConn::connect(origin.addr).await;

    let resp = conn.send(&get("/1")).await;
    assert_eq!(resp.header("keep-alive"), Some("timeout=2"));
    // Idle a quarter of the timeout: 1.5 s of room for a slow machine.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Taken before the request: the origin's idle clock cannot start earlier than this.
    let idle_from = Instant::now();
    let resp = conn.send(&get("/2")).await;
    assert_eq!(resp.status, 200, "still open after 500 ms idle: {resp:?}");

    // Closed at the timeout: not before, and not twice as late (2 s of room).
    assert!(conn.wait_closed(Duration::from_secs(6)).await);
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(1900) && idle < Duration::from_secs(4),
        "{idle:?}"
    );
    assert_eq!(origin.connections_accepted(), 1);
    assert_eq!(origin.requests()[1].conn_request_index, 1);
}

#[tokio::test]
async fn origin_drops_a_request_after_its_unannounced_idle_limit() {
    let origin = origin()
        .drop_requests_after_idle(Duration::from_millis(600))
        .spawn()
        .await;
    let mut conn = ProxyConn::connect(origin.addr).await;
    let resp = conn.send(&get("/1")).await;
    assert_eq!(
        resp.header("keep-alive"),
        None,
        "the limit is not announced"
    );
    // Well within the limit: served on the same connection.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(conn.send(&get("/2")).await.status, 200);
    // Idle past it, the connection is still open as far as the client can tell...
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        !conn.is_closed().await,
        "closed only when the next request comes"
    );
    // ...and the next request is closed on, unanswered and unrecorded.
    let resp = conn.send(&get("/3")).await;
    assert_eq!(resp.status, 0, "{resp:?}");
    assert!(resp.closed, "{resp:?}");
    assert_eq!(targets(&origin), ["/1", "/2"]);
    // A fresh connection is served.
    assert_eq!(
        raw_exchange(origin.addr, &get("/4"), WITHIN).await.status,
        200
    );
    assert_eq!(origin.connections_accepted(), 2);
}

#[tokio::test]
async fn dropping_an_origin_stops_listener_and_connections() {
    let origin = origin().handler(|_| Reply::hang()).spawn().await;
    let addr = origin.addr;
    let mut conn = ProxyConn::connect(addr).await;
    conn.write(&get("/hang")).await.unwrap();
    assert!(origin.wait_for_requests(1, WITHIN).await);
    assert!(!conn.is_closed().await);

    drop(origin);
    assert!(conn.wait_closed(Duration::from_secs(2)).await);
    assert!(refuses_connections(addr).await);
}

// ---------------------------------------------------------------- TLS

/// The certificate problem a TLS client reported, if that is why it failed.
/// The census counts what the kernel knows: a connection its peer closed stops counting at
/// the next accept although the origin's task, waiting before its reply, has not read the
/// EOF; connections still open all count.
#[tokio::test]
async fn origin_counts_open_connections_as_the_kernel_sees_them() {
    let o = origin()
        .handler(|_| Reply::ok("late").delay(Duration::from_secs(60)))
        .count_open_at_accept()
        .spawn()
        .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(o.addr).await.unwrap();
        s.write_all(&get("/late")).await.unwrap();
        held.push(s);
    }
    assert!(o.wait_for_requests(3, WITHIN).await);
    assert_eq!(o.open_now(), 3);
    assert_eq!(o.max_open_at_accept(), 3);

    // One hangs up; the origin's task is waiting to reply and does not read.
    drop(held.pop());
    let _fourth = TcpStream::connect(o.addr).await.unwrap();
    assert!(o.wait_for_open_connections(3 + 1, WITHIN).await);
    assert_eq!(
        o.open_connections(),
        4,
        "the tasks have not noticed the close"
    );
    assert_eq!(o.max_open_at_accept(), 3, "the kernel had the FIN first");
    assert_eq!(o.open_now(), 3);

    // With nobody closing, a fifth is counted on top of the four open.
    let _fifth = TcpStream::connect(o.addr).await.unwrap();
    assert!(o.wait_for_open_connections(5, WITHIN).await);
    assert_eq!(o.max_open_at_accept(), 4);
}

fn certificate_error(e: &io::Error) -> Option<CertificateError> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(c) => Some(c.clone()),
        _ => None,
    }
}

async fn tls_get(ca: &TestCa, addr: SocketAddr, name: &str) -> io::Result<RawResponse> {
    let tcp = TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(name.to_string()).expect("valid server name");
    let mut tls = ca.connector().connect(server_name, tcp).await?;
    Ok(exchange_on(&mut tls, &get("/tls"), WITHIN).await)
}

#[tokio::test]
async fn tls_origin_serves_a_cert_from_the_test_ca() {
    let ca = TestCa::new("selftest ca");
    let origin = origin()
        .tls(&ca.issue(&["localhost", "127.0.0.1"]))
        .spawn()
        .await;

    for name in ["localhost", "127.0.0.1"] {
        let resp = tls_get(&ca, origin.addr, name)
            .await
            .expect("handshake with a trusted cert");
        assert_eq!(
            (resp.status, resp.body_text().as_str()),
            (200, "ok"),
            "{name}"
        );
    }
    assert_eq!(origin.requests()[0].target, "/tls");
    assert_eq!(origin.tls_handshake_failures(), 0);

    // The PEM file works for other TLS stacks too (curl here uses OpenSSL).
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("selftest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = ca.write_pem(&dir);
    let url = format!("https://127.0.0.1:{}/curl", origin.port());
    let trusted = curl(&["--cacert", pem.to_str().unwrap(), &url]).await;
    assert_eq!((trusted.status, trusted.exit_code), (200, 0), "{trusted:?}");
    let untrusted = curl(&[&url]).await;
    assert_eq!(untrusted.exit_code, 60, "unknown CA: {untrusted:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn tls_helpers_make_certificates_that_clients_reject() {
    let ca = TestCa::new("selftest ca");
    let other_ca = TestCa::new("other ca");
    let cases = [
        ("expired", ca.expired_cert(&["localhost"])),
        ("self-signed", TestCa::self_signed(&["localhost"])),
        ("other CA", other_ca.issue(&["localhost"])),
        ("wrong name", ca.issue(&["elsewhere.test"])),
    ];
    for (what, cert) in cases {
        let origin = origin().tls(&cert).spawn().await;
        let err = tls_get(&ca, origin.addr, "localhost")
            .await
            .expect_err(what);
        let problem = certificate_error(&err).unwrap_or_else(|| panic!("{what}: {err}"));
        let expected = match problem {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::UnknownIssuer => "unknown issuer",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "wrong name"
            }
            other => panic!("{what}: unexpected {other:?}"),
        };
        let wanted = match what {
            "self-signed" | "other CA" => "unknown issuer",
            w => w,
        };
        assert_eq!(expected, wanted, "{what}");
        assert!(origin.requests().is_empty());
    }
}

// ---------------------------------------------------------------- clients

#[tokio::test]
async fn curl_runs_the_real_binary() {
    let origin = origin()
        .handler(|req| Reply::ok(format!("{} {}", req.method, req.target)).header("X-Seen", "yes"))
        .spawn()
        .await;

    let plain = curl(&[&origin.url("/curl?x=1")]).await;
    assert_eq!((plain.status, plain.exit_code), (200, 0), "{plain:?}");
    assert_eq!(plain.body_text(), "GET /curl?x=1");
    assert_eq!(plain.header("x-seen"), Some("yes"));

    // The origin answers `Expect: 100-continue` at once: curl, told to wait 20 s for it
    // (the default 1 s is too close to a slow machine's own pace), sends the body well
    // before then.
    let started = Instant::now();
    let post = curl(&[
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "20",
        "-d",
        "amount=1",
        &origin.url("/post"),
    ])
    .await;
    assert_eq!(post.body_text(), "POST /post");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(origin.requests()[1].body_text(), "amount=1");

    // With -x, curl speaks absolute-form to whatever listens there.
    let proxy = format!("http://{}", origin.addr);
    let via = curl(&["-x", &proxy, "http://example.test/via"]).await;
    assert_eq!(via.body_text(), "GET http://example.test/via");
    assert_eq!(origin.requests()[2].header("host"), Some("example.test"));

    drop(origin);
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let refused = curl(&[&url]).await;
    assert_eq!((refused.status, refused.exit_code), (0, 7), "{refused:?}");
}

#[tokio::test]
async fn proxy_get_sends_absolute_form_with_host() {
    let origin = origin().spawn().await;
    let resp = proxy_get(origin.addr, "http://api.pay.test:8443/v1/pay?amount=1").await;
    assert_eq!(resp.status, 200);
    let seen = &origin.requests()[0];
    assert_eq!(seen.target, "http://api.pay.test:8443/v1/pay?amount=1");
    assert_eq!(seen.header("host"), Some("api.pay.test:8443"));

    let mut conn = ProxyConn::connect(origin.addr).await;
    assert_eq!(conn.get("http://api.pay.test/a").await.status, 200);
    assert_eq!(conn.get("http://api.pay.test/b").await.status, 200);
    assert_eq!(origin.requests()[2].conn_request_index, 1);
}

// ---------------------------------------------------------------- firewall

#[tokio::test]
async fn firewall_resets_a_flow_idle_past_its_limit_while_a_busy_one_lives_on() {
    let origin = origin().spawn().await;
    // Busy traffic every 100 ms against a 1 s limit (a tenth of it) leaves a loaded machine
    // 900 ms of room; 15 of them outlast the limit.
    let firewall = Firewall::spawn(origin.addr, Duration::from_secs(1)).await;
    let mut idle = ProxyConn::connect(firewall.addr).await;
    let mut busy = ProxyConn::connect(firewall.addr).await;

    assert_eq!(idle.send(&get("/idle-1")).await.status, 200);
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let resp = busy.send(&get("/busy")).await;
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    assert!(firewall.wait_for_forgotten(1, WITHIN).await);
    assert_eq!((firewall.flows_forgotten(), firewall.flows_open()), (1, 1));
    assert_eq!(firewall.resets_sent(), 0);
    assert!(
        !idle.is_closed().await,
        "a firewall tells nobody when it forgets"
    );
    assert_eq!(origin.open_connections(), 2, "nor the upstream");

    let resp = idle.send(&get("/idle-2")).await;
    assert!(resp.is_reset() && resp.status == 0, "{resp:?}");
    assert_eq!(firewall.resets_sent(), 1);
    assert!(
        origin.wait_for_open_connections(1, WITHIN).await,
        "upstream side dropped"
    );

    let resp = busy.send(&get("/busy")).await;
    assert_eq!(resp.status, 200);
    assert!(
        !targets(&origin).contains(&"/idle-2".to_string()),
        "forgotten bytes never delivered"
    );
    assert_eq!(
        (firewall.flows_forgotten(), firewall.flows_accepted()),
        (1, 2)
    );
}

#[tokio::test]
async fn firewall_drops_the_upstream_side_when_it_talks_to_a_forgotten_flow() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let firewall =
        Firewall::spawn(upstream.local_addr().unwrap(), Duration::from_millis(200)).await;
    let mut client = ProxyConn::connect(firewall.addr).await;
    let (mut server, _) = tokio::time::timeout(WITHIN, upstream.accept())
        .await
        .unwrap()
        .unwrap();

    assert!(firewall.wait_for_forgotten(1, WITHIN).await);
    server.write_all(b"late news").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WITHIN, server.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "upstream side closed: {n:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !client.is_closed().await,
        "client neither told nor given the bytes"
    );

    let resp = client.send(&get("/")).await;
    assert!(resp.is_reset(), "{resp:?}");
    assert_eq!(firewall.resets_sent(), 1);
}

#[tokio::test]
async fn dropping_a_firewall_stops_it() {
    let origin = origin().spawn().await;
    let firewall = Firewall::spawn(origin.addr, Duration::from_secs(60)).await;
    let addr = firewall.addr;
    let mut conn = ProxyConn::connect(addr).await;
    assert_eq!(conn.send(&get("/")).await.status, 200);
    drop(firewall);
    assert!(conn.wait_closed(Duration::from_secs(2)).await);
    assert!(refuses_connections(addr).await);
}

#[tokio::test]
#[should_panic(expected = "only relays to loopback")]
async fn firewall_refuses_non_loopback_upstreams() {
    Firewall::spawn("192.0.2.1:443".parse().unwrap(), Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------- DNS

const V4A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const V4B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fn resolver_for(dns: &TestDns) -> TokioAsyncResolver {
    let servers = NameServerConfigGroup::from_ips_clear(&[dns.addr.ip()], dns.addr.port(), true);
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_millis(300);
    opts.attempts = 1;
    opts.use_hosts_file = false;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    TokioAsyncResolver::tokio(ResolverConfig::from_parts(None, vec![], servers), opts)
}

fn question(name: &str, rtype: RecordType) -> Vec<u8> {
    let mut msg = Message::new();
    msg.set_id(4242)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true);
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    msg.to_vec().unwrap()
}

#[tokio::test]
async fn dns_answers_on_udp_and_tcp_with_ttl_one_in_order() {
    let dns = TestDns::spawn(&[
        ("api.pay.test", V4A),
        ("API.pay.test.", V4B),
        ("api.pay.test", V6),
    ])
    .await;

    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(&question("api.pay.test.", RecordType::A), dns.addr)
        .await
        .unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(WITHIN, udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(
        (answer.id(), answer.response_code()),
        (4242, ResponseCode::NoError)
    );
    assert!(answer.authoritative());
    let ips: Vec<RData> = answer
        .answers()
        .iter()
        .filter_map(|r| r.data().cloned())
        .collect();
    assert_eq!(
        ips,
        [
            RData::A(Ipv4Addr::new(127, 0, 0, 1).into()),
            RData::A(Ipv4Addr::new(127, 0, 0, 2).into())
        ]
    );
    assert!(answer.answers().iter().all(|r| r.ttl() == 1));

    let mut tcp = TcpStream::connect(dns.addr).await.unwrap();
    let q = question("api.pay.test.", RecordType::AAAA);
    tcp.write_u16(q.len() as u16).await.unwrap();
    tcp.write_all(&q).await.unwrap();
    let len = tokio::time::timeout(WITHIN, tcp.read_u16())
        .await
        .unwrap()
        .unwrap();
    let mut msg = vec![0u8; len as usize];
    tcp.read_exact(&mut msg).await.unwrap();
    let answer = Message::from_vec(&msg).unwrap();
    let ips: Vec<RData> = answer
        .answers()
        .iter()
        .filter_map(|r| r.data().cloned())
        .collect();
    assert_eq!(ips, [RData::AAAA(Ipv6Addr::LOCALHOST.into())]);
    assert_eq!(dns.queries(), 2);
}

#[tokio::test]
async fn dns_serves_a_real_resolver_including_failures() {
    let dns = TestDns::spawn(&[
        ("api.pay.test", V4A),
        ("api.pay.test", V4B),
        ("api.pay.test", V6),
    ])
    .await;
    dns.hang("slow.pay.test");
    dns.servfail("broken.pay.test");
    let resolver = resolver_for(&dns);

    let mut ips: Vec<IpAddr> = resolver
        .lookup_ip("api.pay.test.")
        .await
        .unwrap()
        .iter()
        .collect();
    // A and AAAA are asked at once; whichever answers first comes first.
    ips.sort();
    assert_eq!(ips, [V4A, V4B, V6]);

    let err = resolver.lookup_ip("nope.pay.test.").await.unwrap_err();
    match err.kind() {
        ResolveErrorKind::NoRecordsFound { response_code, .. } => {
            assert_eq!(*response_code, ResponseCode::NXDomain)
        }
        other => panic!("expected NXDOMAIN, got {other:?}"),
    }

    let err = resolver.lookup_ip("broken.pay.test.").await.unwrap_err();
    match err.kind() {
        ResolveErrorKind::NoRecordsFound { response_code, .. } => {
            assert_eq!(*response_code, ResponseCode::ServFail)
        }
        other => panic!("expected SERVFAIL, got {other:?}"),
    }

    let err = resolver.lookup_ip("slow.pay.test.").await.unwrap_err();
    // A timeout is the resolver giving up on a server that never answers (after the 300 ms
    // resolver_for gives it); how long that took is no part of what the fixture promises.
    assert!(matches!(err.kind(), ResolveErrorKind::Timeout), "{err:?}");
    assert!(
        dns.queries_for("slow.pay.test") >= 1,
        "asked, never answered"
    );

    dns.set_records("api.pay.test", &[IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))]);
    let ips: Vec<IpAddr> = resolver_for(&dns)
        .lookup_ip("api.pay.test.")
        .await
        .unwrap()
        .iter()
        .collect();
    assert_eq!(ips, [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))]);
    assert!(dns.queries() >= 6);
}

#[tokio::test]
async fn dropping_the_dns_server_stops_it() {
    let dns = TestDns::spawn(&[("api.pay.test", V4A)]).await;
    let addr = dns.addr;
    drop(dns);
    assert!(refuses_connections(addr).await, "TCP listener closed");
}
