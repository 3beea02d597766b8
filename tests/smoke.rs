//! End-to-end smoke test: curl through portcullis reaches an allowed origin and is refused elsewhere.

mod support;
use support::*;

#[tokio::test]
async fn curl_reaches_an_allowed_origin_and_gets_403_elsewhere() {
    let o = origin().handler(|_| Reply::ok("hello")).spawn().await;
    let p = spawn_proxy(&local_upstream("local", o.port(), "")).await;
    let proxy = format!("http://{}", p.addr);
    let ok = curl(&["-x", &proxy, &o.url("/x")]).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.body, b"hello");
    let denied = curl(&["-x", &proxy, "http://example.com/"]).await;
    assert_eq!(denied.status, 403);
    assert!(denied
        .header("proxy-status")
        .unwrap_or_default()
        .contains("error=http_request_denied"));
    p.stop().await;
}
