//! Reloads that change what an upstream may reach close its pooled connections (issue 15, SPEC §8).

mod support;

use std::time::Duration;

use support::*;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The upstream every case starts from: the origin on loopback, by IP literal.
fn upstream_text(port: u16, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"local\"\nhosts = [\"127.0.0.1\"]\nports = [{port}]\nallow_private = true\n{extra}\n"
    )
}

/// One pooled (idle) connection, then the file rewritten to `after` and reloaded: a change
/// of reach closes that connection at the reload, so the next request is never served on it;
/// any other change keeps it.
#[tokio::test]
async fn a_reload_that_changes_reach_closes_the_pooled_connections() {
    // (case, upstream section after the reload, reach changed, status of the next request)
    type Case = (&'static str, fn(u16) -> String, bool, u16);
    let cases: Vec<Case> = vec![
        (
            "idle_timeout only",
            |port| upstream_text(port, "idle_timeout = \"20s\""),
            false,
            200,
        ),
        (
            "max_connections only",
            |port| upstream_text(port, "max_connections = 4"),
            false,
            200,
        ),
        (
            "hosts widened",
            |port| {
                upstream_text(port, "").replace("[\"127.0.0.1\"]", "[\"127.0.0.1\", \"localhost\"]")
            },
            true,
            200,
        ),
        (
            "ports widened",
            |port| upstream_text(port, "").replace(&format!("[{port}]"), &format!("[{port}, 1]")),
            true,
            200,
        ),
        (
            "allow_private withdrawn",
            |port| upstream_text(port, "").replace("allow_private = true", "allow_private = false"),
            true,
            403,
        ),
        (
            "hosts narrowed away",
            |port| upstream_text(port, "").replace("\"127.0.0.1\"", "\"localhost\""),
            true,
            403,
        ),
    ];
    let dir = scratch("reload-reach");
    for (case, after, changed, status) in cases {
        let o = origin().spawn().await;
        let port = o.port();
        let path = dir.join(format!("{}.toml", case.replace(' ', "_")));
        write_config(&path, &upstream_text(port, ""));
        let p = spawn_proxy_file(&path).await;
        let url = format!("http://127.0.0.1:{port}/");
        assert_eq!(proxy_get(p.addr, &url).await.status, 200, "{case}");
        assert!(p.wait_idle(TIMEOUT).await, "{case}");
        assert_eq!(p.idle_count(), 1, "{case}");

        write_config(&path, &after(port));
        p.handle()
            .reload()
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        if changed {
            assert!(
                o.wait_for_open_connections(0, TIMEOUT).await,
                "{case}: the pooled connection was closed at the reload"
            );
        }
        let r = proxy_get(p.addr, &url).await;
        assert_eq!(r.status, status, "{case}: {r:?}");
        let seen = o.requests();
        match (changed, status) {
            (false, _) => {
                assert_eq!(o.connections_accepted(), 1, "{case}: kept and reused");
                assert_eq!(seen[1].conn_id, seen[0].conn_id, "{case}");
            }
            (true, 200) => {
                assert_eq!(o.connections_accepted(), 2, "{case}: a new connection");
                assert_ne!(seen[1].conn_id, seen[0].conn_id, "{case}");
            }
            (true, _) => assert_eq!(seen.len(), 1, "{case}: refused, nothing sent"),
        }
        if changed {
            assert_eq!(p.closed_for("local", "shutdown").await, 1.0, "{case}");
        }
        p.stop().await;
    }
}

/// A request in flight across the reload finishes on its connection, which is then closed
/// instead of pooled; the next request dials anew.
#[tokio::test]
async fn a_busy_connection_finishes_its_request_then_closes() {
    let o = origin()
        .handler(|req| match req.target.as_str() {
            "/slow" => Reply::ok("slow").delay(Duration::from_millis(800)),
            _ => Reply::ok("fast"),
        })
        .spawn()
        .await;
    let port = o.port();
    let dir = scratch("reload-busy");
    let path = dir.join("portcullis.toml");
    write_config(&path, &upstream_text(port, ""));
    let p = spawn_proxy_file(&path).await;
    let proxy = p.addr;
    let slow =
        tokio::spawn(
            async move { proxy_get(proxy, &format!("http://127.0.0.1:{port}/slow")).await },
        );
    assert!(o.wait_for_requests(1, TIMEOUT).await);

    write_config(
        &path,
        &upstream_text(port, "").replace("[\"127.0.0.1\"]", "[\"127.0.0.1\", \"localhost\"]"),
    );
    p.handle().reload().expect("reload");
    let r = slow.await.expect("slow request");
    assert_eq!((r.status, r.body_text().as_str()), (200, "slow"), "{r:?}");
    assert!(
        o.wait_for_open_connections(0, TIMEOUT).await,
        "closed after its request, not pooled"
    );
    assert_eq!(p.idle_count(), 0);

    let r = proxy_get(p.addr, &format!("http://127.0.0.1:{port}/next")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(o.connections_accepted(), 2);
    p.stop().await;
}
