//! The file paths note what each client fetched (issue 22): the listener's sendfile path for
//! plain requests, the axum path for the requests it hands over (one with a body), a range
//! that stops short of the file's end, and a client that goes away mid-body. Read back from
//! the instance's fetch log, as the flush writes it.

use std::net::Ipv4Addr;
use std::time::Duration;

use plinth_core::boot::{BootSettings, Templates};
use plinth_core::sightings::Protocol;
use plinth_testkit::api::TestApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The note of the loopback client once it says `sent` (notes land when a body ends).
async fn noted(t: &TestApi, sent: i64) -> plinth_db::sightings::Fetch {
    for _ in 0..200 {
        if let Some(f) = t.app.fetch_log().pending(LOCAL, Protocol::Http)
            && f.bytes_sent == sent
        {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no note of {sent} bytes: {:?}",
        t.app.fetch_log().pending(LOCAL, Protocol::Http)
    );
}

#[tokio::test]
async fn file_requests_are_noted_with_what_was_sent() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("plinth")).unwrap();
    let data = vec![5u8; 2_000_000];
    std::fs::write(root.path().join("plinth/initrd.img"), &data).unwrap();
    let s = BootSettings::with_root(root.path().to_owned());
    let t = TestApi::start_with(|app| app.with_boot(s, Templates::load(None).unwrap())).await;
    let url = format!("{}/boot/plinth/initrd.img", t.base);
    let http = reqwest::Client::new();

    // Whole, by the sendfile path.
    let body = http.get(&url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(body.len(), data.len());
    let f = noted(&t, 2_000_000).await;
    assert_eq!(
        (f.path.as_str(), f.size, f.complete),
        ("plinth/initrd.img", 2_000_000, true)
    );
    // A range short of the end: the offset reached, not complete.
    let r = http.get(&url).header("range", "bytes=0-999").send().await;
    r.unwrap().bytes().await.unwrap();
    let f = noted(&t, 1000).await;
    assert!(!f.complete);
    // A range to the end is the end of the file.
    let r = http
        .get(&url)
        .header("range", "bytes=1999000-")
        .send()
        .await;
    r.unwrap().bytes().await.unwrap();
    assert!(noted(&t, 2_000_000).await.complete);

    // Handed over to axum (a GET with a body): noted the same way.
    let addr = t.base.trim_start_matches("http://").to_owned();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(
        format!(
            "GET /boot/plinth/initrd.img HTTP/1.1\r\nHost: {addr}\r\nRange: bytes=0-4\r\n\
             Content-Length: 1\r\nConnection: close\r\n\r\nx"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 206"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(!noted(&t, 5).await.complete);
    c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(
        format!(
            "GET /boot/plinth/initrd.img HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Length: 1\r\nConnection: close\r\n\r\nx"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    out.clear();
    c.read_to_end(&mut out).await.unwrap();
    assert!(noted(&t, 2_000_000).await.complete);

    // A client that reads a little and goes away (a file larger than the sockets' buffers):
    // the note says how far the body got.
    std::fs::write(root.path().join("plinth/big"), vec![1u8; 64 << 20]).unwrap();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(format!("GET /boot/plinth/big HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    assert!(c.read(&mut buf).await.unwrap() > 0);
    drop(c);
    for _ in 0..500 {
        let f = t.app.fetch_log().pending(LOCAL, Protocol::Http).unwrap();
        if f.path == "plinth/big" && f.bytes_sent > 0 {
            assert!(f.bytes_sent < 64 << 20 && !f.complete, "{f:?}");
            assert_eq!(f.size, 64 << 20);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the cut body was not noted: {:?}",
        t.app.fetch_log().pending(LOCAL, Protocol::Http)
    );
}
