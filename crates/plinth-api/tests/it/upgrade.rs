//! Upgrades keep working from the re-baseline on: a database dumped right after it, with data
//! written through the API (tests/fixtures/baseline-with-data.sql), is migrated to the current
//! schema and served.
//!
//! The fixture was made by `make_fixture` right after the re-baseline and is refreshed only when
//! a re-baseline is asked for again:
//!   PLINTH_REFRESH_UPGRADE_FIXTURE=1 cargo test -p plinth-api --test it upgrade::the_fixture
//! Every run of the test command runs `make_fixture` into a temporary file and restores and
//! migrates what it wrote, so the maker keeps working for the day it is needed.

use std::path::PathBuf;

use plinth_core::{App, BmcKey, Principal};
use plinth_testkit::TestDb;
use plinth_types::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The BMC key the fixture's BMC passwords are sealed with (bytes 0..32): not a secret.
const FIXTURE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const FIXTURE_USER_PASSWORD: &str = "upgrade fixture password";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/baseline-with-data.sql")
}

struct Api {
    base: String,
    http: reqwest::Client,
    app: App,
    admin: String,
}

impl Api {
    async fn start(db: &TestDb) -> Api {
        let app = App::new(db.pool.clone(), BmcKey::from_base64(FIXTURE_KEY).unwrap());
        let addr = plinth_testkit::api::listen(&app, Default::default()).await;
        let name = format!("upgrade-{}", uuid::Uuid::new_v4().simple());
        let admin = plinth_testkit::api::token(&app, &name, Role::Admin).await;
        Api {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            app,
            admin,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A call that must answer `want`; its body.
    async fn ok(&self, method: Method, path: &str, body: Option<Value>, want: u16) -> Value {
        let (status, v) = self.call(method.clone(), path, body).await;
        assert_eq!(status.as_u16(), want, "{method} {path}: {v}");
        v
    }
}

/// Writes a fixture to `dest`: a rack, machines in several states (with IPMI and Redfish BMCs),
/// an allocation, a subnet with its pool of addresses, a pool's settings, an API token, a web UI
/// user, and the events and queued BMC jobs all of that leaves behind.
async fn make_fixture(dest: &std::path::Path) {
    let db = TestDb::new().await.unwrap();
    let api = Api::start(&db).await;
    let post = |path: &'static str, body: Value| api.ok(Method::POST, path, Some(body), 201);
    post(
        "/api/v1/racks",
        json!({ "name": "r01", "site": "ams1", "room": "a", "row": "3", "height_u": 42 }),
    )
    .await;
    let ipmi = post(
        "/api/v1/machines",
        json!({ "hostname": "node-01", "rack": "r01", "rack_unit": 1, "size_u": 2, "pool": "gpu",
                "tags": ["a100", "fixture"], "arch": "x86_64",
                "nics": [{ "mac": "52:54:00:f1:00:01", "ipv4": "10.60.0.11", "pxe": true }, { "mac": "52:54:00:f1:00:02" }],
                "bmc": { "protocol": "ipmi", "address": "10.61.0.11", "username": "admin", "password": "ipmi-secret" } }),
    )
    .await;
    let redfish = post(
        "/api/v1/machines",
        json!({ "hostname": "node-02", "rack": "r01", "rack_unit": 3,
                "nics": [{ "mac": "52:54:00:f1:00:03", "pxe": true }],
                "bmc": { "protocol": "redfish", "address": "https://10.61.0.12", "username": "root", "password": "redfish-secret", "verify_tls": false } }),
    )
    .await;
    let bare = post(
        "/api/v1/machines",
        json!({ "hostname": "node-03", "nics": [{ "mac": "52:54:00:f1:00:04" }] }),
    )
    .await;
    let (ipmi, redfish, bare) = (
        ipmi["id"].as_str().unwrap().to_owned(),
        redfish["id"].as_str().unwrap().to_owned(),
        bare["id"].as_str().unwrap().to_owned(),
    );
    // node-01 and node-02 inspected (forced: no ramdisk here) and ready; node-01 allocated.
    for id in [&ipmi, &redfish] {
        api.ok(
            Method::POST,
            &format!("/api/v1/machines/{id}/actions/inspect"),
            Some(json!({})),
            200,
        )
        .await;
        api.ok(
            Method::POST,
            &format!("/api/v1/machines/{id}/actions/inspect_complete"),
            Some(json!({ "force": true, "reason": "fixture: inspected by hand" })),
            200,
        )
        .await;
    }
    let alloc = post("/api/v1/allocations", json!({ "count": 1, "pool": "gpu" })).await;
    assert_eq!(alloc["machines"][0]["id"], ipmi.as_str());
    // node-03 leaves the rack for good.
    api.ok(
        Method::POST,
        &format!("/api/v1/machines/{bare}/actions/decommission"),
        Some(json!({ "reason": "fixture" })),
        200,
    )
    .await;
    post(
        "/api/v1/subnets",
        json!({ "cidr": "10.60.0.0/24", "ranges": [{ "start": "10.60.0.100", "end": "10.60.0.149" }],
                "router": "10.60.0.1", "dns_servers": ["10.60.0.2"], "domain": "rack.example",
                "relay_addresses": ["10.60.0.1"] }),
    )
    .await;
    api.ok(
        Method::PUT,
        "/api/v1/pools/gpu",
        Some(json!({ "wipe_method": "full" })),
        200,
    )
    .await;
    post(
        "/api/v1/tokens",
        json!({ "name": "ci-client", "role": "client" }),
    )
    .await;
    api.app
        .set_user(
            &Principal::system(),
            "tech1",
            Role::Operator,
            FIXTURE_USER_PASSWORD,
        )
        .await
        .unwrap();
    let out = std::process::Command::new(plinth_testkit::pg_tool("pg_dump").unwrap())
        .args(["--no-owner", "--no-privileges", "--inserts", "-d", &db.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8(out.stdout).unwrap();
    let body: String = dump
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .map(|l| format!("{l}\n"))
        .collect();
    let header = "-- A plinth database dumped right after the re-baseline of 2026-12-05, with data \
                  written through the API\n-- (crates/plinth-api/tests/it/upgrade.rs, \
                  make_fixture). Never edited: refreshed only at a re-baseline.\n";
    std::fs::write(dest, format!("{header}{body}")).unwrap();
}

/// The fixture maker still makes a dump that restores, migrates to the committed schema and
/// holds what it wrote; with PLINTH_REFRESH_UPGRADE_FIXTURE set (at a re-baseline only), that
/// dump becomes the committed fixture.
#[tokio::test]
async fn the_fixture_maker_dumps_a_database_that_restores_and_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("baseline-with-data.sql");
    make_fixture(&dump).await;
    let db = TestDb::empty().await.unwrap();
    db.psql_file(&dump).unwrap();
    plinth_db::migrate(&db.pool).await.unwrap();
    let committed = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plinth-db/schema.sql"),
    )
    .unwrap();
    assert!(
        db.schema().unwrap() == committed,
        "the restored dump's schema differs"
    );
    let hostnames: Vec<String> =
        sqlx::query_scalar("select hostname from machines order by hostname")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(hostnames, ["node-01", "node-02", "node-03"]);
    if std::env::var_os("PLINTH_REFRESH_UPGRADE_FIXTURE").is_some() {
        std::fs::copy(&dump, fixture()).unwrap();
    }
}

fn machine_by_hostname<'a>(list: &'a Value, hostname: &str) -> &'a Value {
    list["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["hostname"] == hostname)
        .unwrap_or_else(|| panic!("{hostname} missing from {list}"))
}

/// The fixture, migrated to today's schema: the schema is exactly a fresh database's, and the
/// API reads and changes what the older plinth wrote.
#[tokio::test]
async fn a_database_from_the_baseline_upgrades_and_serves() {
    let db = TestDb::empty().await.unwrap();
    db.psql_file(&fixture()).unwrap();
    plinth_db::migrate(&db.pool).await.unwrap();
    let committed = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plinth-db/schema.sql"),
    )
    .unwrap();
    assert!(
        db.schema().unwrap() == committed,
        "the upgraded fixture's schema differs from crates/plinth-db/schema.sql \
         (compare with `cargo test -p plinth-db --test it schema`)"
    );

    let api = Api::start(&db).await;
    let list = api
        .ok(Method::GET, "/api/v1/machines?limit=1000", None, 200)
        .await;
    let node1 = machine_by_hostname(&list, "node-01");
    let node2 = machine_by_hostname(&list, "node-02");
    assert_eq!(node1["state"], "allocated");
    assert_eq!(node2["state"], "ready");
    assert_eq!(node1["pool"], "gpu");
    let id1 = node1["id"].as_str().unwrap().to_owned();
    let id2 = node2["id"].as_str().unwrap().to_owned();
    // The decommissioned machine is still on record, out of the rack.
    let old = api
        .ok(
            Method::GET,
            "/api/v1/machines?state=decommissioning&limit=10",
            None,
            200,
        )
        .await;
    assert_eq!(old["machines"][0]["hostname"], "node-03", "{old}");

    let m1 = api
        .ok(Method::GET, &format!("/api/v1/machines/{id1}"), None, 200)
        .await;
    assert_eq!(m1["bmc"]["protocol"], "ipmi");
    assert_eq!(m1["nics"][0]["mac"], "52:54:00:f1:00:01");
    assert_eq!(m1["nics"][0]["ipv4"], "10.60.0.11");
    let m2 = api
        .ok(Method::GET, &format!("/api/v1/machines/{id2}"), None, 200)
        .await;
    assert_eq!(m2["bmc"]["protocol"], "redfish");
    assert_eq!(m2["rack"], "r01", "{m2}");
    // The BMC password sealed by the older plinth still opens with the same key.
    let id1_uuid: uuid::Uuid = id1.parse().unwrap();
    assert_eq!(
        api.app.bmc_password(id1_uuid).await.unwrap().as_deref(),
        Some("ipmi-secret")
    );
    let events = api
        .ok(
            Method::GET,
            &format!("/api/v1/machines/{id1}/events"),
            None,
            200,
        )
        .await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in ["enroll", "inspect", "inspect_complete", "allocate"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let jobs = api
        .ok(
            Method::GET,
            &format!("/api/v1/jobs?machine={id1}"),
            None,
            200,
        )
        .await;
    assert!(!jobs["jobs"].as_array().unwrap().is_empty(), "{jobs}");

    let subnets = api.ok(Method::GET, "/api/v1/subnets", None, 200).await;
    assert_eq!(subnets[0]["cidr"], "10.60.0.0/24", "{subnets}");
    assert_eq!(subnets[0]["pool_size"], 50, "{subnets}");
    let pools = api.ok(Method::GET, "/api/v1/pools", None, 200).await;
    assert!(
        pools
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "gpu" && p["wipe_method"] == "full"),
        "{pools}"
    );
    let tokens = api.ok(Method::GET, "/api/v1/tokens", None, 200).await;
    assert!(tokens.to_string().contains("ci-client"), "{tokens}");
    api.app
        .login("tech1", FIXTURE_USER_PASSWORD, None)
        .await
        .expect("the fixture's web UI user logs in");

    // And what it wrote can be changed: release the allocation, enroll next to it.
    let allocs = api.ok(Method::GET, "/api/v1/allocations", None, 200).await;
    let alloc = allocs
        .as_array()
        .or_else(|| allocs["allocations"].as_array())
        .unwrap_or_else(|| panic!("{allocs}"))[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    api.ok(
        Method::DELETE,
        &format!("/api/v1/allocations/{alloc}"),
        None,
        200,
    )
    .await;
    let m1 = api
        .ok(Method::GET, &format!("/api/v1/machines/{id1}"), None, 200)
        .await;
    assert_eq!(m1["state"], "cleaning");
    api.ok(
        Method::POST,
        "/api/v1/machines",
        Some(
            json!({ "hostname": "node-04", "rack": "r01", "rack_unit": 5,
                     "nics": [{ "mac": "52:54:00:f1:00:05" }] }),
        ),
        201,
    )
    .await;
    // A rack slot taken by the older data is still refused.
    let (status, v) = api
        .call(
            Method::POST,
            "/api/v1/machines",
            Some(
                json!({ "rack": "r01", "rack_unit": 3, "nics": [{ "mac": "52:54:00:f1:00:09" }] }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "rack_slot_taken", "{v}");
}
