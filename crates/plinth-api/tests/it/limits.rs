//! Bounded resources on the HTTP listener (issue 17 part 2): open connections per listener and
//! per peer, a request-head deadline that dribbled bytes do not extend (on the sendfile fast
//! path and on the axum path), idle kept-alive connections closed, body limits per route.
//! Raw TCP on loopback (127.0.0.1 and 127.0.0.2 as two peers) against a real PostgreSQL.

use std::time::{Duration, Instant};

use plinth_api::{ConnLimits, ServeOptions, Surface};
use plinth_core::App;
use plinth_testkit::TestDb;
use plinth_types::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn start(db: &TestDb, opts: ServeOptions) -> (std::net::SocketAddr, App) {
    let app = db.app();
    (plinth_testkit::api::listen(&app, opts).await, app)
}

/// A connection from `from` (a loopback address) to `to`.
async fn connect_from(from: &str, to: std::net::SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// Everything the server sends until it closes (or 5 s pass).
async fn read_to_close(s: &mut TcpStream) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// One GET on a kept-alive connection; the status line's code.
async fn get(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn open_connections_are_bounded_per_peer_and_per_listener() {
    let db = TestDb::new().await.unwrap();
    for surface in [Surface::All, Surface::Management] {
        let opts = ServeOptions {
            surface,
            limits: ConnLimits {
                total: 4,
                per_peer: 3,
            },
            ..Default::default()
        };
        let (addr, _) = start(&db, opts).await;
        let mut mine = Vec::new();
        for _ in 0..3 {
            let mut c = connect_from("127.0.0.1", addr).await;
            assert_eq!(get(&mut c, "/healthz").await, "200", "{surface:?}");
            mine.push(c);
        }
        // A fourth from the same peer: told so and closed.
        let mut extra = connect_from("127.0.0.1", addr).await;
        let (text, closed) = read_to_close(&mut extra).await;
        assert!(
            closed && text.starts_with("HTTP/1.1 503"),
            "{surface:?}: {text:?}"
        );
        assert!(text.contains("too many connections"), "{text}");
        // Another peer gets the listener's last place, and then there is none.
        let mut other = connect_from("127.0.0.2", addr).await;
        assert_eq!(get(&mut other, "/healthz").await, "200");
        let mut late = connect_from("127.0.0.2", addr).await;
        let (text, closed) = read_to_close(&mut late).await;
        assert!(closed && text.starts_with("HTTP/1.1 503"), "{text:?}");
        // A closed connection frees its place.
        drop(mine.pop());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut again = connect_from("127.0.0.1", addr).await;
            again
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let (text, _) = read_to_close(&mut again).await;
            if text.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "the place was not freed: {text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_request_head_has_a_deadline_that_dribbling_does_not_extend() {
    let db = TestDb::new().await.unwrap();
    let head_timeout = Duration::from_secs(1);
    for (surface, path) in [
        (Surface::All, "/boot/plinth/vmlinuz"), // the sendfile path reads this head itself
        (Surface::All, "/healthz"),             // handed on to hyper after the first line
        (Surface::Management, "/healthz"),      // hyper from the first byte
    ] {
        let opts = ServeOptions {
            surface,
            head_timeout,
            ..Default::default()
        };
        let (addr, _) = start(&db, opts).await;
        let mut c = connect_from("127.0.0.1", addr).await;
        let started = Instant::now();
        c.write_all(format!("GET {path} HTTP/1.1\r\n").as_bytes())
            .await
            .unwrap();
        // One header byte every 200 ms: each arrives well within any per-read timeout.
        let mut cut = false;
        for b in b"x-slow: ".iter().chain([b'a'; 200].iter()) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if c.write_all(&[*b]).await.is_err() {
                cut = true;
                break;
            }
            let mut probe = [0u8; 1024];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(1), c.read(&mut probe)).await
            {
                cut = true;
                break;
            }
            if started.elapsed() > Duration::from_secs(15) {
                break;
            }
        }
        assert!(
            cut,
            "{surface:?} {path}: still open after {:?} of dribbling",
            started.elapsed()
        );
        // An idle kept-alive connection is closed as well.
        let mut c = connect_from("127.0.0.1", addr).await;
        assert_eq!(get(&mut c, "/healthz").await, "200");
        let (_, closed) = read_to_close(&mut c).await;
        assert!(
            closed,
            "{surface:?}: an idle kept-alive connection stays open"
        );
    }
}

#[tokio::test]
async fn bodies_are_bounded_per_route() {
    let db = TestDb::new().await.unwrap();
    let (addr, app) = start(&db, ServeOptions::default()).await;
    let admin = plinth_testkit::api::token(&app, "root", Role::Admin).await;
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    // 300 KiB of JSON to the management API: refused, and said why.
    let big = serde_json::json!({ "hostname": "n1", "nics": [{ "mac": "52:54:00:00:00:01" }],
                                  "tags": ["x".repeat(300 * 1024)] });
    let r = http
        .post(format!("{base}/api/v1/machines"))
        .bearer_auth(&admin)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "body_too_large", "{body}");
    let n: i64 = sqlx::query_scalar("select count(*) from machines")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    // An agent report may be larger (a machine with many disks), up to its own limit.
    let id = uuid::Uuid::new_v4();
    let report = |pad: usize| serde_json::json!({ "pad": "x".repeat(pad) });
    let r = http
        .post(format!("{base}/api/v1/machines/{id}/inspection"))
        .bearer_auth(&admin)
        .json(&report(600 * 1024))
        .send()
        .await
        .unwrap();
    assert_ne!(
        r.status(),
        reqwest::StatusCode::PAYLOAD_TOO_LARGE,
        "600 KiB is a report"
    );
    let r = http
        .post(format!("{base}/api/v1/machines/{id}/inspection"))
        .bearer_auth(&admin)
        .json(&report(2 << 20))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
    // A UI form is small.
    let r = http
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("username={}", "a".repeat(100 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
}
