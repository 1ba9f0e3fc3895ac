//! The headless-browser harness against a real Chromium: a form, a click that runs JavaScript,
//! a link, cookie flags, screenshots, the console, the viewport size, and clean-up (also after
//! a panic). Needs the packages `chromium` and `chromium-driver` (../PACKAGES).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use plinth_testkit::browser::{Browser, WebDriverError};
use serde_json::json;

const HEAD: &str =
    r#"<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">"#;

/// The test site's page at `path`: (status, extra headers, body).
fn page(path: &str) -> (&'static str, &'static str, String) {
    match path {
        "/" => (
            "200 OK",
            "Set-Cookie: s=1; HttpOnly; SameSite=Lax\r\n",
            format!(
                r#"{HEAD}<title>Plinth test</title></head><body>
<h1 id="greeting">Hello</h1>
<form onsubmit="return false">
  <input id="name" name="name" placeholder="who?">
  <button id="go" type="button"
    onclick="document.getElementById('greeting').textContent = 'Hello, ' + document.getElementById('name').value">Greet</button>
</form>
<ul><li>one</li><li>two</li><li hidden>three</li></ul>
<a id="next" href="/second">next</a>
</body></html>"#
            ),
        ),
        "/second" => (
            "200 OK",
            "",
            format!("{HEAD}<title>Second</title></head><body><h1>Second page</h1></body></html>"),
        ),
        "/throws" => (
            "200 OK",
            "",
            format!(
                "{HEAD}<title>Throws</title></head><body><p>broken</p>\
                 <script>throw new Error('boom from the page');</script></body></html>"
            ),
        ),
        "/later" => (
            "200 OK",
            "",
            format!(
                "{HEAD}<title>Later</title></head><body><script>setTimeout(() => {{ \
                 const p = document.createElement('p'); p.id = 'late'; p.textContent = 'here'; \
                 document.body.append(p); }}, 300);</script></body></html>"
            ),
        ),
        _ => ("404 Not Found", "", "not found".to_owned()),
    }
}

/// A tiny HTTP/1.1 server on 127.0.0.1 serving [`page`]s, one thread per connection,
/// `Connection: close`. Returns its base URL; the thread lives as long as the test binary.
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || handle(conn));
        }
    });
    url
}

fn handle(conn: TcpStream) {
    let mut reader = BufReader::new(&conn);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // The headers; GETs only, so no body to read.
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let path = request_line.split(' ').nth(1).unwrap_or("/");
    let (status, headers, body) = page(path);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n{headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    (&conn).write_all(response.as_bytes()).ok();
}

/// Live processes whose command line mentions `dir`.
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(needle).then(|| format!("{pid}: {cmd}"))
        })
        .collect()
}

fn browser_dir(b: &Browser) -> PathBuf {
    b.log_path().parent().unwrap().to_owned()
}

#[test]
fn form_click_link_cookies_and_history() {
    let site = serve();
    let b = Browser::start().unwrap();
    b.goto(&format!("{site}/")).unwrap();
    assert_eq!(b.title().unwrap(), "Plinth test");
    assert!(b.source().unwrap().contains(r#"id="greeting""#));

    let input = b.find("#name").unwrap();
    assert_eq!(input.tag_name().unwrap(), "input");
    assert_eq!(input.attr("placeholder").unwrap().as_deref(), Some("who?"));
    assert_eq!(input.attr("nonexistent").unwrap(), None);
    input.send_keys("rack-1").unwrap();
    assert_eq!(input.prop("value").unwrap(), json!("rack-1"));
    input.clear().unwrap();
    input.send_keys("rack-2").unwrap();
    b.find("#go").unwrap().click().unwrap();
    assert_eq!(
        b.find("#greeting").unwrap().text().unwrap(),
        "Hello, rack-2"
    );

    let items = b.find("ul").unwrap().find_all("li").unwrap();
    assert_eq!(items.len(), 3);
    let shown: Vec<bool> = items.iter().map(|i| i.is_displayed().unwrap()).collect();
    assert_eq!(shown, [true, true, false]);
    assert!(b.find_all("table").unwrap().is_empty());

    // WebDriver errors quote the error, the message and the command.
    let err = b.find("#missing").unwrap_err();
    let wd = err
        .downcast_ref::<WebDriverError>()
        .expect("a WebDriverError");
    assert_eq!(wd.error, "no such element");
    assert!(wd.message.contains("#missing"), "{wd:?}");
    let err = format!("{err:#}");
    assert!(
        err.starts_with(r##"WebDriver POST /element {"using":"css selector","value":"#missing"}: no such element: "##),
        "{err}"
    );

    let s = b.cookie("s").unwrap().expect("cookie s");
    assert_eq!(s.value, "1");
    assert!(s.http_only);
    assert!(!s.secure);
    assert_eq!(s.same_site.as_deref(), Some("Lax"));
    assert_eq!(s.expiry, None);
    assert_eq!(b.execute("return document.cookie", &[]).unwrap(), json!(""));

    // execute: arguments, elements as arguments.
    let greeting = b.find("#greeting").unwrap();
    let v = b
        .execute(
            "return [arguments[0] + 1, arguments[1].id]",
            &[json!(41), greeting.to_arg()],
        )
        .unwrap();
    assert_eq!(v, json!([42, "greeting"]));

    b.find("a#next").unwrap().click().unwrap();
    b.wait_until(Duration::from_secs(5), |b| {
        Ok(b.current_url()?.ends_with("/second"))
    })
    .unwrap();
    assert_eq!(b.current_url().unwrap(), format!("{site}/second"));
    assert_eq!(b.title().unwrap(), "Second");
    // The old page's elements are stale now.
    let err = format!("{:#}", greeting.text().unwrap_err());
    assert!(err.contains("stale element reference"), "{err}");

    b.back().unwrap();
    assert_eq!(b.current_url().unwrap(), format!("{site}/"));
    b.refresh().unwrap();
    assert_eq!(b.find("#greeting").unwrap().text().unwrap(), "Hello");
    b.delete_cookies().unwrap();
    assert_eq!(b.cookies().unwrap(), []);
    assert_eq!(b.console_errors().unwrap(), Vec::<String>::new());

    let dir = browser_dir(&b);
    drop(b);
    assert_eq!(processes_mentioning(&dir), Vec::<String>::new());
    assert!(!dir.exists());
}

#[test]
fn screenshot_is_a_png_of_the_viewport() {
    let site = serve();
    let b = Browser::with_size(640, 480).unwrap();
    b.goto(&format!("{site}/")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("shot.png");
    b.screenshot(&file).unwrap();
    let png = std::fs::read(&file).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{:?}", &png[..16]);
    // IHDR: width and height, big-endian, right after the signature and chunk header.
    let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), (640, 480));
}

#[test]
fn console_errors_catch_uncaught_exceptions() {
    let site = serve();
    let b = Browser::start().unwrap();
    b.goto(&format!("{site}/")).unwrap();
    assert_eq!(b.console_errors().unwrap(), Vec::<String>::new());

    b.goto(&format!("{site}/throws")).unwrap();
    let errors = b.console_errors().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("boom from the page"), "{errors:?}");

    b.execute(
        "console.error('logged on purpose'); console.log('fine')",
        &[],
    )
    .unwrap();
    let log = b.console_log().unwrap();
    let levels: Vec<&str> = log.iter().map(|e| e.level.as_str()).collect();
    assert_eq!(levels, ["SEVERE", "INFO"], "{log:?}");
    // Read entries are gone.
    assert_eq!(b.console_errors().unwrap(), Vec::<String>::new());
}

#[test]
fn window_size_applies() {
    let site = serve();
    let size = |b: &Browser| {
        b.execute("return [window.innerWidth, window.innerHeight]", &[])
            .unwrap()
    };
    let tablet = Browser::with_size(820, 1180).unwrap();
    tablet.goto(&format!("{site}/")).unwrap();
    assert_eq!(size(&tablet), json!([820, 1180]));
    let narrow = "return matchMedia('(max-width: 1024px)').matches";
    assert_eq!(tablet.execute(narrow, &[]).unwrap(), json!(true));
    tablet.set_viewport(1024, 700).unwrap();
    assert_eq!(size(&tablet), json!([1024, 700]));
    drop(tablet);

    let desktop = Browser::start().unwrap();
    desktop.goto(&format!("{site}/")).unwrap();
    assert_eq!(size(&desktop), json!([1280, 900]));
    assert_eq!(desktop.execute(narrow, &[]).unwrap(), json!(false));
}

#[test]
fn wait_for_polls_and_times_out() {
    let site = serve();
    let b = Browser::start().unwrap();
    b.goto(&format!("{site}/later")).unwrap();
    assert!(b.find("#late").is_err());
    let late = b.wait_for("#late", Duration::from_secs(5)).unwrap();
    assert_eq!(late.text().unwrap(), "here");

    let err = b
        .wait_for("#never", Duration::from_millis(200))
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("#never") && err.contains("no such element"),
        "{err}"
    );
    // A bad selector fails at once rather than at the timeout.
    let started = std::time::Instant::now();
    let err = b.wait_for("#[", Duration::from_secs(30)).unwrap_err();
    assert!(format!("{err:#}").contains("invalid selector"), "{err:#}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = b
        .wait_until(Duration::from_millis(200), |_| Ok(false))
        .unwrap_err();
    assert!(format!("{err}").contains("not met"), "{err}");
}

#[test]
fn cleans_up_after_a_panic() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let b = Browser::start().unwrap();
        b.goto("about:blank").unwrap();
        tx.send(browser_dir(&b)).unwrap();
        panic!("a failing browser test");
    })
    .join();
    assert!(result.is_err());
    let dir = rx.recv().unwrap();
    assert_eq!(processes_mentioning(&dir), Vec::<String>::new());
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn goto_fails_when_nothing_listens() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b = Browser::start().unwrap();
    let err = format!(
        "{:#}",
        b.goto(&format!("http://127.0.0.1:{port}/")).unwrap_err()
    );
    assert!(err.contains("ERR_CONNECTION_REFUSED"), "{err}");
    // A 404 is a page.
    let site = serve();
    b.goto(&format!("{site}/nope")).unwrap();
    assert_eq!(b.find("body").unwrap().text().unwrap(), "not found");
    let errors = b.console_errors().unwrap();
    assert!(errors.iter().any(|e| e.contains("404")), "{errors:?}");
}

#[test]
fn missing_binaries_say_what_to_install() {
    let err = Browser::builder()
        .chromedriver("/nonexistent/chromedriver")
        .start()
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("apt-get install chromium chromium-driver"),
        "{err}"
    );
}
