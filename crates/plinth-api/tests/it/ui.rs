//! The web UI's rules over real HTTP (no browser): pages need a session, every form needs the
//! session's CSRF token and this site's origin, the login form its own token, `next` never
//! leaves the site, a session ends at logout, static files are cached for good.

use plinth_core::{App, Principal};
use plinth_testkit::TestDb;
use plinth_testkit::api::{TestApi, listen};
use plinth_types::Role;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};

struct Ui {
    base: String,
    http: reqwest::Client,
    app: App,
    _db: TestDb,
}

/// What a browser keeps for the site: its cookies.
#[derive(Default, Clone)]
struct Jar(Vec<(String, String)>);

impl Jar {
    fn take(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            let v = v.to_str().unwrap();
            let (kv, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = kv.split_once('=').unwrap();
            self.0.retain(|(n, _)| n != k);
            if !attrs.contains("Max-Age=0") {
                self.0.push((k.to_owned(), val.to_owned()));
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let rest = html
        .split_once(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        .1;
    rest.split('"').next().unwrap().to_owned()
}

impl Ui {
    async fn start() -> Ui {
        let TestApi { db, app, base, .. } = TestApi::start().await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        app.set_user(
            &Principal::system(),
            "tech",
            Role::Operator,
            "tech-password-1",
        )
        .await
        .unwrap();
        Ui {
            base,
            http,
            app,
            _db: db,
        }
    }

    async fn get(&self, jar: &mut Jar, path: &str) -> (StatusCode, HeaderMap, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", jar.header())
            .send()
            .await
            .unwrap();
        jar.take(r.headers());
        (r.status(), r.headers().clone(), r.text().await.unwrap())
    }

    async fn post(
        &self,
        jar: &mut Jar,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> (StatusCode, HeaderMap, String) {
        let body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{k}={}", plinth_types::percent_encode(v)))
            .collect();
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", jar.header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.join("&"));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.unwrap();
        jar.take(r.headers());
        (r.status(), r.headers().clone(), r.text().await.unwrap())
    }

    /// A fresh browser fills in the login form as `tech`: its jar and the answer.
    async fn try_login(&self, password: &str, next: &str) -> (Jar, StatusCode, HeaderMap, String) {
        let mut jar = Jar::default();
        let (_, _, html) = self.get(&mut jar, "/login").await;
        let token = hidden(&html, "_csrf");
        let form = [
            ("_csrf", token.as_str()),
            ("username", "tech"),
            ("password", password),
            ("next", next),
        ];
        let (status, headers, page) = self.post(&mut jar, "/login", &form, None).await;
        (jar, status, headers, page)
    }

    /// Logs in as `tech`; returns the jar and the session's CSRF token.
    async fn login(&self) -> (Jar, String) {
        let (mut jar, status, headers, _) = self.try_login("tech-password-1", "/machines").await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers[LOCATION], "/machines");
        let (_, _, html) = self.get(&mut jar, "/machines").await;
        let csrf = hidden(&html, "_csrf");
        (jar, csrf)
    }
}

#[tokio::test]
async fn pages_need_a_session_and_static_files_are_cached_for_good() {
    let ui = Ui::start().await;
    let mut jar = Jar::default();
    let (status, headers, _) = ui.get(&mut jar, "/machines?state=ready").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[LOCATION], "/login?next=%2Fmachines%3Fstate%3Dready");
    let (status, headers, css) = ui.get(&mut jar, "/static/app.css").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(css.contains("--st-ready"));
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let r = ui
        .http
        .get(format!("{}/static/app.css", ui.base))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    // Pages link their assets by content version.
    let (_, _, html) = ui.get(&mut jar, "/login").await;
    assert!(
        html.contains(&format!("/static/app.css?v={}", etag.trim_matches('"'))),
        "{html}"
    );
    let (status, _, _) = ui.get(&mut jar, "/static/../Cargo.toml").await;
    assert_ne!(status, StatusCode::OK);
    // Every UI answer, pages and redirects alike, carries the security headers.
    for path in ["/login", "/machines", "/static/app.css"] {
        let (_, headers, _) = ui.get(&mut jar, path).await;
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
            "{path}: {csp}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["referrer-policy"], "same-origin", "{path}");
    }
}

#[tokio::test]
async fn forms_without_the_sessions_token_or_from_elsewhere_change_nothing() {
    let ui = Ui::start().await;
    let (mut jar, csrf) = ui.login().await;
    let rack = |name: &'static str| [("name", name), ("height_u", "42")];
    // No token, a wrong one, another site's form: refused, nothing written.
    let (status, _, page) = ui.post(&mut jar, "/racks", &rack("r1"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    assert!(page.contains("reload the page"), "{page}");
    let mut bad = rack("r1").to_vec();
    bad.push(("_csrf", "plinth_not-the-token-of-this-session-at-all-0000"));
    let (status, _, _) = ui.post(&mut jar, "/racks", &bad, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let mut good = rack("r1").to_vec();
    good.push(("_csrf", &csrf));
    let (status, _, _) = ui
        .post(&mut jar, "/racks", &good, Some("http://evil.example"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        ui.app
            .list_racks(&Principal::system())
            .await
            .unwrap()
            .is_empty()
    );
    // The right token from this site: done.
    let origin = ui.base.clone();
    let (status, headers, _) = ui.post(&mut jar, "/racks", &good, Some(&origin)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[LOCATION], "/racks/r1");
    assert_eq!(
        ui.app.list_racks(&Principal::system()).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn the_login_form_has_its_own_token_and_next_stays_on_this_site() {
    let ui = Ui::start().await;
    // Without the login form's cookie: refused before the password is looked at.
    let mut jar = Jar::default();
    let (status, _, page) = ui
        .post(
            &mut jar,
            "/login",
            &[
                ("_csrf", "plinth_forged-token-forged-token-forged-token-00"),
                ("username", "tech"),
                ("password", "tech-password-1"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("expired"), "{page}");
    assert!(jar.get("plinth_session").is_none());
    for next in [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let mut jar = Jar::default();
        let (_, _, html) = ui.get(&mut jar, "/login").await;
        let token = hidden(&html, "_csrf");
        let (status, headers, _) = ui
            .post(
                &mut jar,
                "/login",
                &[
                    ("_csrf", &token),
                    ("username", "tech"),
                    ("password", "tech-password-1"),
                    ("next", next),
                ],
                None,
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers[LOCATION], "/racks", "{next}");
    }
}

#[tokio::test]
async fn a_session_ends_at_logout_and_wrong_passwords_are_counted() {
    let ui = Ui::start().await;
    let (mut jar, csrf) = ui.login().await;
    let kept = jar.clone();
    let (status, headers, _) = ui
        .post(&mut jar, "/logout", &[("_csrf", &csrf)], None)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[LOCATION], "/login?bye=1");
    assert!(jar.get("plinth_session").is_none(), "the cookie is deleted");
    // The old cookie, replayed: no longer a session.
    let mut replay = kept;
    let (status, headers, _) = ui.get(&mut replay, "/racks").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(headers[LOCATION].to_str().unwrap().starts_with("/login"));

    // Wrong passwords: the same message each time, also once the account waits (the right
    // password included).
    for i in 0..7 {
        let password = if i < 6 {
            "wrong-wrong-wrong"
        } else {
            "tech-password-1"
        };
        let (jar, status, _, page) = ui.try_login(password, "/racks").await;
        assert_eq!(status, StatusCode::OK, "the form again");
        assert!(
            page.contains("wrong username or password"),
            "attempt {i}: {page}"
        );
        assert!(jar.get("plinth_session").is_none());
    }
    // The login before and these seven are eight attempts from this address within a minute;
    // two more make ten, and the next is turned away before any password is checked.
    for _ in 0..2 {
        ui.try_login("wrong-wrong-wrong", "/racks").await;
    }
    let (jar, status, headers, page) = ui.try_login("tech-password-1", "/racks").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        page.contains("too many login attempts from your address"),
        "{page}"
    );
    assert!(jar.get("plinth_session").is_none());
    assert!(headers.contains_key("content-security-policy"));
}

#[tokio::test]
async fn a_discovered_machine_is_adopted_into_a_free_slot() {
    let ui = Ui::start().await;
    let (mut jar, csrf) = ui.login().await;
    let admin = Principal::system();
    ui.app
        .create_rack(
            &admin,
            plinth_types::api::RackCreate {
                name: "r9".into(),
                site: None,
                room: None,
                row: None,
                height_u: 42,
            },
        )
        .await
        .unwrap();
    let client = plinth_core::dhcp::ClientInfo {
        arch: Some(7),
        pxe: true,
        http_client: false,
        ipxe: false,
        uuid: None,
    };
    let mac: plinth_types::MacAddr = "52:54:00:d1:5c:01".parse().unwrap();
    let id = ui
        .app
        .discover_machine(&mac, &client, None)
        .await
        .unwrap()
        .expect("a new discovered machine");
    let (status, _, page) = ui.get(&mut jar, "/discovered").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("52:54:00:d1:5c:01"), "{page}");
    assert!(
        page.contains("Discovered (1)"),
        "the badge in the menu: {page}"
    );

    // A taken slot: refused with the reason, the machine still waits.
    ui.app
        .enroll_machine(
            &admin,
            plinth_types::api::MachineCreate {
                hostname: Some("there".into()),
                rack: Some("r9".into()),
                rack_unit: Some(5),
                size_u: None,
                pool: None,
                tags: None,
                arch: None,
                nics: vec![plinth_types::api::NicSpec {
                    mac: "52:54:00:d1:5c:02".parse().unwrap(),
                    ipv4: None,
                    pxe: None,
                }],
                bmc: None,
            },
        )
        .await
        .unwrap();
    let path = format!("/discovered/{id}/adopt");
    let form = |unit: &'static str| {
        [
            ("_csrf", csrf.clone()),
            ("hostname", "found-1".to_owned()),
            ("rack", "r9".to_owned()),
            ("unit", unit.to_owned()),
            ("size_u", "1".to_owned()),
        ]
    };
    let taken = form("5");
    let taken: Vec<(&str, &str)> = taken.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, headers, _) = ui.post(&mut jar, &path, &taken, None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[LOCATION], "/discovered");
    let (_, _, page) = ui.get(&mut jar, "/discovered").await;
    assert!(page.contains("already occupies"), "{page}");
    let m = ui.app.get_machine(&admin, id).await.unwrap();
    assert_eq!(m.state, plinth_types::MachineState::Discovered);

    let free = form("6");
    let free: Vec<(&str, &str)> = free.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, headers, _) = ui.post(&mut jar, &path, &free, None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[LOCATION], format!("/machines/{id}").as_str());
    let m = ui.app.get_machine(&admin, id).await.unwrap();
    assert_eq!(m.state, plinth_types::MachineState::Enrolled);
    assert_eq!(
        (m.hostname.as_deref(), m.rack.as_deref(), m.rack_unit),
        (Some("found-1"), Some("r9"), Some(6))
    );
    let (_, _, page) = ui.get(&mut jar, "/discovered").await;
    assert!(page.contains("Nothing discovered."), "{page}");
}

#[tokio::test]
async fn enrollment_errors_land_at_their_fields_and_the_bmc_password_never_shows() {
    let ui = Ui::start().await;
    let (mut jar, csrf) = ui.login().await;
    let admin = Principal::system();
    ui.app
        .create_rack(
            &admin,
            plinth_types::api::RackCreate {
                name: "r1".into(),
                site: None,
                room: None,
                row: None,
                height_u: 42,
            },
        )
        .await
        .unwrap();
    let enroll = |macs: &str, unit: &str, bmc_address: &str, hostname: &str| {
        vec![
            ("_csrf".to_owned(), csrf.clone()),
            ("rack".to_owned(), "r1".to_owned()),
            ("unit".to_owned(), unit.to_owned()),
            ("size_u".to_owned(), "1".to_owned()),
            ("macs".to_owned(), macs.to_owned()),
            ("hostname".to_owned(), hostname.to_owned()),
            ("bmc_protocol".to_owned(), "redfish".to_owned()),
            ("bmc_address".to_owned(), bmc_address.to_owned()),
            ("bmc_username".to_owned(), "root".to_owned()),
            ("bmc_password".to_owned(), "Sekr1t-bmc-pw".to_owned()),
            ("bmc_insecure".to_owned(), "1".to_owned()),
        ]
    };
    let post = |form: Vec<(String, String)>| {
        let ui = &ui;
        let mut jar = jar.clone();
        async move {
            let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            ui.post(&mut jar, "/enroll", &f, None).await
        }
    };
    let error_at = |page: &str, field: &str| -> String {
        let marker = format!("id=\"error-{field}\">");
        page.split_once(&marker)
            .unwrap_or_else(|| panic!("no error at {field}: {page}"))
            .1
            .split('<')
            .next()
            .unwrap()
            .to_owned()
    };

    let (status, headers, _) =
        post(enroll("52:54:00:0e:00:01", "10", "https://10.1.0.21", "n1")).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "enrolled");
    let machine_path = headers[LOCATION].to_str().unwrap().to_owned();

    // A MAC that is enrolled already (pasted second, in another spelling).
    let (status, _, page) = post(enroll(
        "52:54:00:0e:00:02 52-54-00-0E-00-01",
        "11",
        "https://10.1.0.22",
        "n2",
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "the form again");
    assert_eq!(
        error_at(&page, "macs"),
        "52:54:00:0e:00:01 is already enrolled, on n1."
    );
    assert!(
        !page.contains("Sekr1t-bmc-pw"),
        "the password is not sent back"
    );
    // A taken slot, a bad BMC address.
    let (_, _, page) = post(enroll("52:54:00:0e:00:03", "10", "https://10.1.0.23", "n3")).await;
    assert!(
        error_at(&page, "unit").contains("already occupies"),
        "{page}"
    );
    let (_, _, page) = post(enroll(
        "52:54:00:0e:00:04",
        "12",
        "https://not a host",
        "n4",
    ))
    .await;
    assert!(!error_at(&page, "bmc_address").is_empty());
    assert_eq!(
        ui.app
            .machine_table(
                &admin,
                plinth_db::inventory::TableQuery {
                    limit: 10,
                    ..Default::default()
                }
            )
            .await
            .unwrap()
            .1,
        1,
        "nothing but the first machine was enrolled"
    );

    // The machine page: BMC details, power buttons, never the password; a power action queues
    // a BMC job.
    let (_, _, page) = ui.get(&mut jar, &machine_path).await;
    // (minijinja escapes '/' as an entity, as it does every character with a meaning in HTML.)
    let text = page.replace("&#x2f;", "/");
    assert!(
        text.contains("https://10.1.0.21") && page.contains("id=\"power-cycle\""),
        "{page}"
    );
    assert!(!page.contains("Sekr1t-bmc-pw"));
    let (status, headers, _) = ui
        .post(
            &mut jar,
            &format!("{machine_path}/power"),
            &[("_csrf", &csrf), ("op", "cycle")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[LOCATION].to_str().unwrap(), machine_path);
    let (_, _, page) = ui.get(&mut jar, &machine_path).await;
    assert!(page.contains("power cycle: queued as BMC job"), "{page}");
    let id: uuid::Uuid = machine_path.rsplit('/').next().unwrap().parse().unwrap();
    let jobs = ui
        .app
        .jobs(
            &admin,
            plinth_core::jobs::JobQuery {
                machine: Some(id),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .jobs;
    assert!(jobs.iter().any(|j| j.kind == "power"), "{jobs:?}");
}

/// `Secure` cookies and HSTS follow the connection: a client's own `X-Forwarded-Proto` is
/// ignored unless it comes from a trusted proxy.
#[tokio::test]
async fn only_a_trusted_proxy_makes_a_plain_connection_secure() {
    let db = TestDb::new().await.unwrap();
    let app = db.app();
    let mut bases = Vec::new();
    for proxies in [
        vec![],
        vec!["10.0.0.0/8".parse().unwrap()],
        vec!["127.0.0.1/32".parse().unwrap()],
    ] {
        let opts = plinth_api::ServeOptions {
            trusted_proxies: proxies,
            ..Default::default()
        };
        bases.push(format!("http://{}", listen(&app, opts).await));
    }
    let http = reqwest::Client::new();
    let login = |base: &str, proto: Option<(&'static str, &'static str)>| {
        let mut req = http.get(format!("{base}/login"));
        if let Some((k, v)) = proto {
            req = req.header(k, v);
        }
        req.send()
    };
    for (i, trusted) in [(0, false), (1, false), (2, true)] {
        for proto in [
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=192.0.2.1;proto=https"),
        ] {
            let resp = login(&bases[i], Some(proto)).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let cookie = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
            assert_eq!(
                cookie.ends_with("; Secure"),
                trusted,
                "{i} {proto:?}: {cookie}"
            );
            assert_eq!(
                resp.headers().contains_key("strict-transport-security"),
                trusted,
                "{i} {proto:?}"
            );
        }
        // Without the header even a trusted proxy's request is plain.
        let resp = login(&bases[i], None).await.unwrap();
        let cookie = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        assert!(!cookie.contains("Secure"), "{cookie}");
        // What the proxy says is http is http.
        let resp = login(&bases[i], Some(("x-forwarded-proto", "http")))
            .await
            .unwrap();
        assert!(
            !resp.headers()[SET_COOKIE]
                .to_str()
                .unwrap()
                .contains("Secure")
        );
    }
}

/// Issue 20: the machine page's Health section and the table's Health column and filter, from
/// what the power sync stored.
#[tokio::test]
async fn health_shows_on_the_machine_page_and_filters_the_table() {
    use plinth_types::api::{BmcProtocol, BmcSpec, MachineCreate, NicSpec};
    let ui = Ui::start().await;
    let (mut jar, _) = ui.login().await;
    let enroll = |host: &str, n: u32| MachineCreate {
        hostname: Some(host.into()),
        rack: None,
        rack_unit: None,
        size_u: None,
        pool: None,
        tags: None,
        arch: None,
        nics: vec![NicSpec {
            mac: plinth_testkit::mac(n),
            ipv4: None,
            pxe: None,
        }],
        bmc: Some(BmcSpec {
            protocol: BmcProtocol::Redfish,
            address: format!("10.9.0.{n}"),
            username: "root".into(),
            password: "calvin-Secr3t!".into(),
            verify_tls: Some(false),
            plain_http: None,
        }),
    };
    let sick = ui
        .app
        .enroll_machine(&Principal::system(), enroll("sick-1", 1))
        .await
        .unwrap();
    let fine = ui
        .app
        .enroll_machine(&Principal::system(), enroll("fine-2", 2))
        .await
        .unwrap();
    let (_, _, page) = ui.get(&mut jar, &format!("/machines/{}", fine.id)).await;
    assert!(
        page.contains("id=\"health\"") && page.contains("Not read yet."),
        "{page}"
    );

    let mut conn = ui._db.pool.acquire().await.unwrap();
    let components = serde_json::json!([{ "kind": "power_supply", "name": "PSU 2",
        "status": "critical", "reason": "the BMC reports it critical" }]);
    plinth_db::health::record(&mut conn, sick.id, "critical", &components)
        .await
        .unwrap();
    plinth_db::health::record(&mut conn, fine.id, "ok", &serde_json::json!([]))
        .await
        .unwrap();
    drop(conn);

    let (status, _, page) = ui.get(&mut jar, &format!("/machines/{}", sick.id)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("id=\"health-status\">critical"), "{page}");
    assert!(
        page.contains("PSU 2") && page.contains("power supply"),
        "{page}"
    );
    let (_, _, page) = ui.get(&mut jar, &format!("/machines/{}", fine.id)).await;
    assert!(
        page.contains("Every component the BMC reports is OK."),
        "{page}"
    );

    let (_, _, table) = ui.get(&mut jar, "/machines?health=critical").await;
    assert!(
        table.contains("sick-1") && !table.contains("fine-2"),
        "{table}"
    );
    assert!(table.contains("badge hl-critical"), "{table}");
    let (_, _, table) = ui.get(&mut jar, "/machines?health=ok").await;
    assert!(
        table.contains("fine-2") && !table.contains("sick-1"),
        "{table}"
    );
    let (status, _, _) = ui.get(&mut jar, "/machines?health=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// The machine page's timeline follows an event stream: for the signed-in user only, from this
/// site only, unnamed messages (what `EventSource.onmessage` sees) with the event ids.
#[tokio::test]
async fn the_timeline_stream_is_the_signed_in_users_and_this_sites() {
    let ui = Ui::start().await;
    let m = ui
        .app
        .enroll_machine(
            &Principal::system(),
            plinth_types::api::MachineCreate {
                hostname: Some("tl".into()),
                rack: None,
                rack_unit: None,
                size_u: None,
                pool: None,
                tags: None,
                arch: None,
                nics: vec![plinth_types::api::NicSpec {
                    mac: "52:54:00:d1:5c:07".parse().unwrap(),
                    ipv4: None,
                    pxe: None,
                }],
                bmc: None,
            },
        )
        .await
        .unwrap();
    let path = format!("/machines/{}/timeline/stream", m.id);
    let (status, headers, _) = ui.get(&mut Jar::default(), &path).await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "no session: to the login page"
    );
    assert!(headers[LOCATION].to_str().unwrap().starts_with("/login"));

    let (mut jar, _) = ui.login().await;
    let (_, _, page) = ui.get(&mut jar, &format!("/machines/{}", m.id)).await;
    assert!(page.contains(&format!("data-stream=\"{path}\"")), "{page}");
    let host = ui.base.trim_start_matches("http://").to_owned();
    let r = ui
        .http
        .get(format!("{}{path}", ui.base))
        .header("cookie", jar.header())
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "another site's page");

    let mut r = ui
        .http
        .get(format!("{}{path}", ui.base))
        .header("cookie", jar.header())
        .header("origin", format!("http://{host}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let id: i64 = sqlx::query_scalar(
        "insert into events (actor, machine_id, kind) values ('test', $1, 'note') returning id",
    )
    .bind(m.id)
    .fetch_one(ui.app.pool())
    .await
    .unwrap();
    let mut p = plinth_client::sse::Parser::default();
    let mut msgs = Vec::new();
    while msgs.is_empty() {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(20), r.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        msgs.extend(p.push(&chunk).unwrap());
    }
    assert_eq!(msgs[0].id, Some(id.to_string()));
    assert_eq!(msgs[0].event, None, "unnamed, for onmessage");
}

mod bios;
/// Issue 21: the machine page's Firmware section and the table's firmware filter, from the
/// stored inventory.
#[tokio::test]
async fn firmware_shows_on_the_machine_page_and_filters_the_table() {
    use plinth_types::api::{BmcProtocol, BmcSpec, MachineCreate, NicSpec};
    let ui = Ui::start().await;
    let (mut jar, _) = ui.login().await;
    let enroll = |host: &str, n: u32| MachineCreate {
        hostname: Some(host.into()),
        rack: None,
        rack_unit: None,
        size_u: None,
        pool: None,
        tags: None,
        arch: None,
        nics: vec![NicSpec {
            mac: plinth_testkit::mac(n),
            ipv4: None,
            pxe: None,
        }],
        bmc: Some(BmcSpec {
            protocol: BmcProtocol::Redfish,
            address: format!("10.9.0.{n}"),
            username: "root".into(),
            password: "calvin-Secr3t!".into(),
            verify_tls: Some(false),
            plain_http: None,
        }),
    };
    let new = ui
        .app
        .enroll_machine(&Principal::system(), enroll("fw-new", 1))
        .await
        .unwrap();
    let old = ui
        .app
        .enroll_machine(&Principal::system(), enroll("fw-old", 2))
        .await
        .unwrap();
    let (_, _, page) = ui.get(&mut jar, &format!("/machines/{}", new.id)).await;
    assert!(
        page.contains("id=\"firmware\"") && page.contains("Not read yet"),
        "{page}"
    );
    let item = |v: &str| {
        serde_json::json!([{ "id": "BIOS", "uri": "/redfish/v1/UpdateService/FirmwareInventory/BIOS",
            "name": "System <BIOS>", "kind": "bios", "version": v, "updateable": true }])
    };
    let mut conn = ui._db.pool.acquire().await.unwrap();
    plinth_db::firmware::set_inventory(&mut conn, new.id, &item("2.1.0"))
        .await
        .unwrap();
    plinth_db::firmware::set_inventory(&mut conn, old.id, &item("1.9.0"))
        .await
        .unwrap();
    drop(conn);
    let (status, _, page) = ui.get(&mut jar, &format!("/machines/{}", new.id)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("id=\"firmware-items\""), "{page}");
    assert!(page.contains("System &lt;BIOS&gt;"), "escaped: {page}");
    assert!(page.contains("/machines?firmware=bios:2.1.0"), "{page}");
    let (_, _, table) = ui.get(&mut jar, "/machines?firmware=bios:2.1.0").await;
    assert!(
        table.contains("fw-new") && !table.contains("fw-old"),
        "{table}"
    );
    assert!(table.contains("value=\"bios:2.1.0\""), "{table}");
    let (status, _, _) = ui.get(&mut jar, "/machines?firmware=bios").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
