//! Request targets as they leave for the upstream (issue 15): origin-form, never empty, never a fragment.

mod support;

use std::time::Duration;

use support::*;

/// A fragment-only absolute URI (`http://host#frag`) used to go upstream with an empty
/// request-target (`GET  HTTP/1.1`): every odd spelling now arrives as origin-form.
#[tokio::test]
async fn odd_absolute_uris_arrive_in_origin_form() {
    let o = origin().spawn().await;
    let port = o.port();
    let p = spawn_proxy(&local_upstream("local", port, "")).await;
    let base = format!("http://127.0.0.1:{port}");
    let cases: &[(&str, &str)] = &[
        ("#frag", "/"),
        ("#", "/"),
        ("?q#f", "/?q"),
        ("?#", "/?"),
        ("?", "/?"),
        ("", "/"),
        ("/p#f", "/p"),
        ("/a#b?c", "/a"),
        ("/p?q=1#f", "/p?q=1"),
        ("?a?b", "/?a?b"),
    ];
    let mut conn = ProxyConn::connect(p.addr).await;
    for (i, &(suffix, want)) in cases.iter().enumerate() {
        let url = format!("{base}{suffix}");
        let request = format!("GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        let r = conn.send(request.as_bytes()).await;
        assert_eq!(r.status, 200, "{url}: {r:?}");
        assert!(
            o.wait_for_requests(i + 1, Duration::from_secs(5)).await,
            "{url}"
        );
        let seen = o.requests();
        assert_eq!(seen[i].target, want, "{url}");
    }
}
