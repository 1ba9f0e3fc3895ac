//! The web UI in a real browser (headless Chromium over WebDriver) against the real
//! `plinth serve`: a technician logs in, adds a rack, enrolls a machine through the form (one
//! rejected input shown at its field first), finds it in the rack at its U, runs an action and
//! logs out; a viewer sees no button it may not press. No page logs a JavaScript error, and the
//! pages fit a tablet's width. Screenshots of the rack view and the machine page are written to
//! the target dir's `ui-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use plinth_testkit::browser::Browser;

use crate::support::BIN;
use crate::support::serve::{Serve, create_token};

const WAIT: Duration = Duration::from_secs(10);

fn create_user(state: &Path, db: &str, username: &str, role: &str, password: &str) {
    let out = Command::new(BIN)
        .args([
            "admin",
            "create-user",
            "--database-url",
            db,
            "--username",
            username,
            "--role",
            role,
        ])
        .env("PLINTH_STATE_DIR", state)
        .env("PLINTH_USER_PASSWORD", password)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "create-user: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn no_console_errors(b: &Browser, page: &str) {
    let errors = b.console_errors().unwrap();
    assert!(errors.is_empty(), "{page}: {errors:?}");
}

/// Fills in and sends the login form of the page the browser is on.
fn login(b: &Browser, username: &str, password: &str) {
    b.find("#username").unwrap().send_keys(username).unwrap();
    b.find("#password").unwrap().send_keys(password).unwrap();
    b.find("#login").unwrap().click().unwrap();
}

/// Waits until the page's URL path is `path` (a form posted and its redirect followed).
fn wait_path(b: &Browser, url: &str, path: &str) {
    let want = format!("{url}{path}");
    b.wait_until(WAIT, |b| Ok(b.current_url()?.starts_with(&want)))
        .unwrap_or_else(|e| panic!("waiting for {want}: {e:#}; at {:?}", b.current_url()));
}

#[test]
fn a_technician_enrolls_a_machine_and_a_viewer_only_looks() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(plinth_testkit::TestDb::new()).unwrap();
    let state = tempfile::tempdir().unwrap();
    create_user(state.path(), &db.url, "tech", "operator", "tech-password-1");
    create_user(
        state.path(),
        &db.url,
        "watcher",
        "viewer",
        "viewer-password-1",
    );
    let server = Serve::start(state.path(), Some(&db.url));
    let url = server.url.clone();
    let b = Browser::start().unwrap();
    let shots = screenshots();

    // Not signed in: every page leads to the login form, which then leads back.
    b.goto(&format!("{url}/machines")).unwrap();
    wait_path(&b, &url, "/login?next=%2Fmachines");
    login(&b, "tech", "not-the-password");
    assert_eq!(
        b.wait_for("#login-error", WAIT).unwrap().text().unwrap(),
        "wrong username or password"
    );
    b.find("#password")
        .unwrap()
        .send_keys("tech-password-1")
        .unwrap();
    b.find("#login").unwrap().click().unwrap();
    wait_path(&b, &url, "/machines");
    assert_eq!(
        b.find("#whoami").unwrap().text().unwrap(),
        "tech (operator)"
    );
    let session = b
        .cookie("plinth_session")
        .unwrap()
        .expect("a session cookie");
    assert!(session.http_only, "{session:?}");
    assert_eq!(session.same_site.as_deref(), Some("Lax"), "{session:?}");
    assert!(!session.secure, "plain HTTP here: no Secure flag");
    no_console_errors(&b, "machines");

    // A rack.
    b.goto(&format!("{url}/racks")).unwrap();
    b.find("#rack-name").unwrap().send_keys("r12").unwrap();
    b.find("#rack-height").unwrap().clear().unwrap();
    b.find("#rack-height").unwrap().send_keys("42").unwrap();
    b.find("#rack-site").unwrap().send_keys("ams1").unwrap();
    b.find("#rack-room").unwrap().send_keys("a").unwrap();
    b.find("#rack-row").unwrap().send_keys("3").unwrap();
    b.find("#add-rack-submit").unwrap().click().unwrap();
    wait_path(&b, &url, "/racks/r12");
    assert!(
        b.find("#flash")
            .unwrap()
            .text()
            .unwrap()
            .contains("Rack r12 added")
    );
    no_console_errors(&b, "rack");

    // Enrollment: "enroll here" from the rack, a bad MAC first, shown at its field.
    b.find("#enroll-here").unwrap().click().unwrap();
    wait_path(&b, &url, "/enroll?rack=r12");
    b.find("#hostname").unwrap().send_keys("node-07").unwrap();
    b.find("#size_u").unwrap().clear().unwrap();
    b.find("#size_u").unwrap().send_keys("2").unwrap();
    // The free positions follow the height (fetched by the page's script).
    b.execute(
        "document.getElementById('size_u').dispatchEvent(new Event('change'))",
        &[],
    )
    .unwrap();
    b.wait_until(WAIT, |b| {
        Ok(b.find_all("#unit option[value='41']")?.len() == 1
            && b.find_all("#unit option[value='42']")?.is_empty())
    })
    .unwrap();
    b.find("#unit option[value='7']").unwrap().click().unwrap();
    b.find("#macs")
        .unwrap()
        .send_keys("52:54:00:aa:00:07\nnot-a-mac")
        .unwrap();
    b.find("#enroll-submit").unwrap().click().unwrap();
    let err = b.wait_for("#error-macs", WAIT).unwrap().text().unwrap();
    assert!(err.contains("\"not-a-mac\" is not a MAC address"), "{err}");
    // What was typed is still there, the password field aside.
    assert_eq!(
        b.find("#hostname").unwrap().prop("value").unwrap(),
        "node-07"
    );
    assert_eq!(b.find("#unit").unwrap().prop("value").unwrap(), "7");
    b.find("#macs").unwrap().clear().unwrap();
    // A barcode scanner types the MAC and presses Enter.
    b.find("#macs")
        .unwrap()
        .send_keys("52:54:00:AA:00:07\n")
        .unwrap();
    b.find("#enroll-submit").unwrap().click().unwrap();
    b.wait_until(WAIT, |b| {
        b.find_all("#machine-title").map(|v| !v.is_empty())
    })
    .unwrap();
    let machine_url = b.current_url().unwrap();
    assert!(
        b.find("#flash")
            .unwrap()
            .text()
            .unwrap()
            .contains("node-07 enrolled")
    );
    assert_eq!(b.find("#state").unwrap().text().unwrap(), "enrolled");
    assert!(
        b.find("#action-inspect").is_ok(),
        "inspect is one click away"
    );

    // In the rack, at U7, two units high.
    b.goto(&format!("{url}/racks/r12")).unwrap();
    let m = b.find("#elevation-r12 .machine").unwrap();
    assert_eq!(m.attr("data-u").unwrap().as_deref(), Some("7"));
    assert!(m.text().unwrap().contains("node-07"));
    let span = b
        .execute(
            "return getComputedStyle(document.querySelector('#elevation-r12 .machine')).gridRowEnd",
            &[],
        )
        .unwrap();
    assert_eq!(span, "span 2");
    assert!(
        b.find_all("[data-free-u='8']").unwrap().is_empty(),
        "U8 is taken"
    );
    assert_eq!(b.find_all("[data-free-u='9']").unwrap().len(), 1);
    b.screenshot(shots.join("rack-view.png")).unwrap();
    no_console_errors(&b, "rack view");

    // An action: maintenance on, from the machine page.
    b.goto(&machine_url).unwrap();
    b.find("#action-maintenance_on").unwrap().click().unwrap();
    b.wait_until(WAIT, |b| {
        Ok(b.find_all("#action-maintenance_off")?.len() == 1)
    })
    .unwrap();
    assert!(
        b.find("#flash")
            .unwrap()
            .text()
            .unwrap()
            .contains("maintenance on")
    );
    let timeline = b.find("#timeline").unwrap().text().unwrap();
    assert!(timeline.contains("maintenance"), "{timeline}");
    b.screenshot(shots.join("machine-page.png")).unwrap();
    no_console_errors(&b, "machine page");

    // Bulk, from the table: the buttons wait for a selection.
    b.goto(&format!("{url}/machines")).unwrap();
    let off = "button[value=maintenance_off]";
    assert!(
        !b.find(off).unwrap().is_enabled().unwrap(),
        "nothing selected"
    );
    b.find("#select-all").unwrap().click().unwrap();
    assert_eq!(b.find("#selected-count").unwrap().text().unwrap(), "1");
    b.find(off).unwrap().click().unwrap();
    let flash = b.wait_for("#flash", WAIT).unwrap().text().unwrap();
    assert_eq!(flash, "maintenance off: done for 1 machine(s).");
    no_console_errors(&b, "bulk");

    // Inspect from the machine page; the report arrives while the page is open, and the page
    // follows by itself (its timeline follows the machine's event stream, a new state reloads
    // it).
    b.goto(&machine_url).unwrap();
    b.find("#action-inspect").unwrap().click().unwrap();
    b.wait_until(WAIT, |b| Ok(b.find("#state")?.text()? == "inspecting"))
        .unwrap();
    b.wait_until(WAIT, |b| {
        Ok(b.find("#timeline")?.attr("data-streaming")?.as_deref() == Some("yes"))
    })
    .unwrap();
    assert_eq!(
        b.find("#timeline")
            .unwrap()
            .attr("data-live")
            .unwrap()
            .as_deref(),
        Some("yes")
    );
    let id = machine_url.rsplit('/').next().unwrap().to_owned();
    let token = create_token(state.path(), Some(&db.url), "agent-stand-in", "operator");
    let report = serde_json::json!({
        "cpu": { "model": "EPYC 9124", "cores": 16, "threads": 32 },
        "memory_mib": 65536,
        "disks": [{ "name": "nvme0n1", "size_bytes": 960197124096u64, "model": "PM9A3", "serial": "S64X", "rotational": false }],
        "nics": [{ "name": "eno1", "mac": "52:54:00:aa:00:07", "speed_mbps": 25000, "link": true }],
        "system": { "vendor": "Acme", "product": "R7", "serial": "ACME-0007", "uuid": "4c4c4544-0000-1000-8000-000000000007" },
        "firmware": "uefi",
        "arch": "x86_64"
    });
    let out = Command::new("curl")
        .args(["-sf", "-X", "POST", "-H", "content-type: application/json"])
        .arg("-H")
        .arg(format!("authorization: Bearer {token}"))
        .arg("--data")
        .arg(report.to_string())
        .arg(format!("{url}/api/v1/machines/{id}/inspection"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    b.wait_until(Duration::from_secs(20), |b| {
        Ok(b.find("#state")?.text()? == "ready")
    })
    .unwrap();
    assert_eq!(b.find("#fact-memory").unwrap().text().unwrap(), "65536 MiB");
    assert!(
        b.find("#facts")
            .unwrap()
            .text()
            .unwrap()
            .contains("EPYC 9124")
    );
    no_console_errors(&b, "live machine page");

    // The machine table finds it by MAC, whatever the case.
    b.goto(&format!("{url}/machines?q=52%3A54%3A00%3Aaa%3A00%3A07"))
        .unwrap();
    assert_eq!(b.find("#total").unwrap().text().unwrap(), "1");

    // On a tablet, pages fit the screen's width.
    b.set_viewport(820, 1180).unwrap();
    for page in ["/racks/r12", &machine_url.replace(&url, ""), "/enroll"] {
        b.goto(&format!("{url}{page}")).unwrap();
        let overflow = b
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
                &[],
            )
            .unwrap();
        assert_eq!(overflow, 0, "{page} scrolls sideways on a tablet");
    }
    b.set_viewport(1280, 900).unwrap();

    // Log out: the session is gone, the pages ask for a login again.
    b.find("#logout").unwrap().click().unwrap();
    wait_path(&b, &url, "/login?bye=1");
    assert!(b.find("#login-notice").is_ok());
    b.goto(&format!("{url}/machines")).unwrap();
    wait_path(&b, &url, "/login");

    // A viewer: the same pages, no buttons.
    b.goto(&format!("{url}/login")).unwrap();
    login(&b, "watcher", "viewer-password-1");
    wait_path(&b, &url, "/racks");
    assert!(
        b.find_all("#nav-enroll").unwrap().is_empty(),
        "no enroll button"
    );
    assert!(b.find_all("#add-rack").unwrap().is_empty());
    b.goto(&machine_url).unwrap();
    assert!(b.find_all("#lifecycle-actions").unwrap().is_empty());
    assert!(b.find_all("#power-actions").unwrap().is_empty());
    b.goto(&format!("{url}/machines")).unwrap();
    assert!(b.find_all("#bulk").unwrap().is_empty());
    assert!(b.find_all("input[name=id]").unwrap().is_empty());
    no_console_errors(&b, "viewer pages");
    // Typed by hand: refused with a page that says why (a 403, which the console reports).
    b.goto(&format!("{url}/enroll")).unwrap();
    assert!(
        b.find("#error-message")
            .unwrap()
            .text()
            .unwrap()
            .contains("may not enroll")
    );
    drop(b);
    drop(server);
}
