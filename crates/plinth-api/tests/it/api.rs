//! The REST API over real HTTP on an ephemeral port, against a real PostgreSQL.
//!
//! Positive paths go through plinth-client's typed client (the admin's `api`, or `as_token`),
//! as the CLI's do; `call` and `post_raw` stay for what a typed client cannot send (malformed
//! bodies, unknown fields, missing tokens) and for asserting the JSON on the wire.

use std::collections::HashSet;

use plinth_client::query::MachineFilter;
use plinth_core::App;
use plinth_testkit::api::TestApi;
use plinth_testkit::{TestDb, mac};
use plinth_types::api::{
    ActionRequest, AllocationRequest, Arch, CpuFacts, DiskFacts, Firmware, InspectionReport,
    Machine, MachineCreate, NicFacts, NicSpec, SystemFacts,
};
use plinth_types::{MachineState, Role};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Server {
    base: String,
    http: reqwest::Client,
    app: App,
    db: TestDb,
    admin: String,
    /// The typed client with the admin's token.
    api: plinth_client::Client,
}

impl Server {
    async fn start() -> Server {
        let t = TestApi::start().await;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap();
        Server {
            api: t.client(),
            base: t.base,
            http,
            app: t.app,
            db: t.db,
            admin: t.admin,
        }
    }

    /// The typed client with another token.
    fn as_token(&self, token: &str) -> plinth_client::Client {
        self.api.with_token(token)
    }

    async fn token(&self, name: &str, role: Role) -> String {
        plinth_testkit::api::token(&self.app, name, role).await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            },
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, Some(&self.admin), None)
            .await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(&self.admin), Some(body))
            .await
    }

    async fn post_raw(&self, path: &str, body: &'static str) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    async fn count(&self, table: &str) -> i64 {
        let sql = format!("select count(*) from {table}");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    async fn enroll(&self, n: u32) -> Machine {
        let m = self
            .api
            .enroll_machine(&MachineCreate {
                hostname: Some(format!("n{n}")),
                rack: None,
                rack_unit: None,
                size_u: None,
                pool: None,
                tags: None,
                arch: None,
                nics: vec![NicSpec {
                    mac: mac(n),
                    ipv4: None,
                    pxe: None,
                }],
                bmc: None,
            })
            .await
            .unwrap();
        assert_eq!(m.state, MachineState::Enrolled);
        m
    }

    /// A machine taken straight to `ready`, with facts, through the API.
    async fn ready(&self, n: u32, threads: u32) -> Machine {
        let m = self.enroll(n).await;
        self.api
            .machine_action(m.id, "inspect", &ActionRequest::default(), None)
            .await
            .unwrap();
        let m = self
            .api
            .report_inspection(m.id, &report(n, threads))
            .await
            .unwrap();
        assert_eq!(m.state, MachineState::Ready);
        m
    }
}

fn report(n: u32, threads: u32) -> InspectionReport {
    InspectionReport {
        cpu: CpuFacts {
            model: "EPYC".into(),
            cores: threads / 2,
            threads,
        },
        memory_mib: 262144,
        disks: vec![DiskFacts {
            name: "nvme0n1".into(),
            size_bytes: 960 << 30,
            model: None,
            serial: None,
            rotational: Some(false),
        }],
        nics: vec![NicFacts {
            name: "eno1".into(),
            mac: mac(n),
            speed_mbps: Some(25000),
            link: None,
        }],
        system: SystemFacts {
            vendor: "Acme".into(),
            product: "X1".into(),
            serial: format!("SN{n:05}"),
            uuid: "4c4c4544-0000-0000-0000-000000000000".into(),
        },
        firmware: Firmware::Uefi,
        arch: Arch::X86_64,
    }
}

#[tokio::test]
async fn racks_and_machines_round_trip() {
    let s = Server::start().await;
    let (st, r) = s
        .post(
            "/api/v1/racks",
            json!({ "name": "r12", "site": "ams1", "room": "a", "row": "3", "height_u": 42 }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    let (st, m) = s
        .post(
            "/api/v1/machines",
            json!({
                "hostname": "Node-7", "rack": "r12", "rack_unit": 7, "size_u": 2, "pool": "gpu", "tags": ["a100", "fast"],
                "arch": "x86_64",
                "nics": [{ "mac": "52-54-00-AA-BB-01", "ipv4": "10.4.0.7" }, { "mac": "52:54:00:aa:bb:02", "pxe": true }],
                "bmc": { "protocol": "redfish", "address": "10.9.0.7:8000", "username": "root", "password": "calvin" }
            }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    assert_eq!(m["state"], "enrolled");
    assert_eq!(m["hostname"], "node-7");
    assert_eq!(m["nics"][0]["mac"], "52:54:00:aa:bb:01");
    assert_eq!(
        m["nics"][0]["pxe"], false,
        "the NIC that says pxe is the PXE NIC"
    );
    assert_eq!(m["nics"][1]["pxe"], true);
    assert_eq!(m["bmc"]["address"], "10.9.0.7:8000");
    assert!(m["bmc"].get("password").is_none() && !m.to_string().contains("calvin"));
    let id = m["id"].as_str().unwrap().to_owned();

    // GET with ETag
    let resp = s
        .http
        .get(format!("{}/api/v1/machines/{id}", s.base))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["etag"], "\"1\"");

    // filters
    for (q, want) in [
        ("state=enrolled", 1),
        ("state=ready", 0),
        ("rack=r12", 1),
        ("pool=gpu", 1),
        ("tag=a100", 1),
        ("tag=nope", 0),
        ("q=node", 1),
        ("q=52:54:00:AA:BB:02", 1),
        ("q=xyz", 0),
    ] {
        let (st, page) = s.get(&format!("/api/v1/machines?{q}")).await;
        assert_eq!(st, StatusCode::OK, "{q}: {page}");
        assert_eq!(page["machines"].as_array().unwrap().len(), want, "{q}");
    }

    // PATCH: move within the rack, retag, change the BMC
    let (st, m) = s
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/machines/{id}"),
            Some(&s.admin),
            Some(json!({ "rack_unit": 20, "tags": ["b"], "bmc": { "protocol": "ipmi", "address": "10.9.0.8", "username": "u", "password": "p2" } })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{m}");
    assert_eq!(
        (
            m["rack_unit"].as_i64(),
            m["tags"].clone(),
            m["bmc"]["protocol"].clone()
        ),
        (Some(20), json!(["b"]), json!("ipmi"))
    );
    // A per-machine boot file override, and back to the default.
    let (st, m) = s
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/machines/{id}"),
            Some(&s.admin),
            Some(json!({ "boot_file": "custom/snponly.efi" })),
        )
        .await;
    assert_eq!(
        (st, m["boot_file"].as_str()),
        (StatusCode::OK, Some("custom/snponly.efi"))
    );
    let (st, e) = s
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/machines/{id}"),
            Some(&s.admin),
            Some(json!({ "boot_file": "../etc/passwd" })),
        )
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_boot_file"))
    );
    let (_, m) = s
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/machines/{id}"),
            Some(&s.admin),
            Some(json!({ "boot_file": null })),
        )
        .await;
    assert!(m["boot_file"].is_null());
    let (_, r) = s.get("/api/v1/racks/r12").await;
    assert_eq!(
        (r["machine_count"].as_i64(), r["used_u"].as_i64()),
        (Some(1), Some(2))
    );

    // a rack with machines cannot be deleted; an empty one can
    let (st, e) = s
        .call(
            reqwest::Method::DELETE,
            "/api/v1/racks/r12",
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("rack_not_empty"))
    );
    s.post("/api/v1/racks", json!({ "name": "spare", "height_u": 10 }))
        .await;
    let (st, _) = s
        .call(
            reqwest::Method::DELETE,
            "/api/v1/racks/spare",
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);

    // events of the machine: enroll, then three accepted edits (the refused one wrote nothing)
    let (_, ev) = s.get(&format!("/api/v1/machines/{id}/events")).await;
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["enroll", "update", "update", "update"]);
    assert!(!ev.to_string().contains("p2"), "no BMC password in events");
    let (_, all) = s.get("/api/v1/events?since=2000-01-01T00:00:00Z").await;
    assert!(all["events"].as_array().unwrap().len() >= 4);
}

#[tokio::test]
async fn pagination_walks_every_machine_once() {
    let s = Server::start().await;
    for n in 0..25 {
        s.enroll(n).await;
    }
    let mut seen = HashSet::new();
    let mut filter = MachineFilter {
        limit: Some(10),
        ..Default::default()
    };
    let mut pages = 0;
    loop {
        let page = s.api.list_machines(&filter).await.unwrap();
        pages += 1;
        for m in page.machines {
            assert!(seen.insert(m.id));
        }
        match page.next_cursor {
            Some(c) => filter.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (25, 3));
    let (st, e) = s.get("/api/v1/machines?limit=0").await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_limit"))
    );
    let (st, e) = s.get("/api/v1/machines?cursor=garbage").await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_cursor"))
    );
    let (st, e) = s.get("/api/v1/machines?state=flying").await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let s = Server::start().await;
    s.post("/api/v1/racks", json!({ "name": "r1", "height_u": 42 }))
        .await;
    let (_, first) = s
        .post("/api/v1/machines", json!({ "hostname": "a", "rack": "r1", "rack_unit": 10, "size_u": 2, "nics": [{ "mac": mac(1), "ipv4": "10.0.0.1" }] }))
        .await;
    let id = first["id"].as_str().unwrap().to_owned();
    let machines = s.count("machines").await;
    let nics = s.count("nics").await;
    let events = s.count("events").await;

    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "unknown field",
            json!({ "nics": [{ "mac": mac(2) }], "hostnmae": "x" }),
            StatusCode::BAD_REQUEST,
            "unknown_field",
        ),
        (
            "invalid MAC",
            json!({ "nics": [{ "mac": "52:54:00:zz:00:01" }] }),
            StatusCode::BAD_REQUEST,
            "invalid_mac",
        ),
        (
            "multicast MAC",
            json!({ "nics": [{ "mac": "01:00:5e:00:00:01" }] }),
            StatusCode::BAD_REQUEST,
            "invalid_mac",
        ),
        (
            "invalid IP",
            json!({ "nics": [{ "mac": mac(2), "ipv4": "10.0.0.256" }] }),
            StatusCode::BAD_REQUEST,
            "invalid_ip",
        ),
        (
            "unusable IP",
            json!({ "nics": [{ "mac": mac(2), "ipv4": "224.0.0.1" }] }),
            StatusCode::BAD_REQUEST,
            "invalid_ipv4",
        ),
        (
            "no NICs",
            json!({ "nics": [] }),
            StatusCode::BAD_REQUEST,
            "no_nics",
        ),
        (
            "MAC twice",
            json!({ "nics": [{ "mac": mac(2) }, { "mac": mac(2) }] }),
            StatusCode::BAD_REQUEST,
            "duplicate_mac",
        ),
        (
            "duplicate MAC",
            json!({ "nics": [{ "mac": mac(1) }] }),
            StatusCode::CONFLICT,
            "duplicate_mac",
        ),
        (
            "duplicate IP",
            json!({ "nics": [{ "mac": mac(2), "ipv4": "10.0.0.1" }] }),
            StatusCode::CONFLICT,
            "duplicate_ipv4",
        ),
        (
            "duplicate hostname",
            json!({ "hostname": "A", "nics": [{ "mac": mac(2) }] }),
            StatusCode::CONFLICT,
            "duplicate_hostname",
        ),
        (
            "overlapping slot",
            json!({ "rack": "r1", "rack_unit": 11, "nics": [{ "mac": mac(2) }] }),
            StatusCode::CONFLICT,
            "rack_slot_taken",
        ),
        (
            "above the rack",
            json!({ "rack": "r1", "rack_unit": 42, "size_u": 2, "nics": [{ "mac": mac(2) }] }),
            StatusCode::BAD_REQUEST,
            "rack_slot_out_of_range",
        ),
        (
            "unknown rack",
            json!({ "rack": "r9", "rack_unit": 1, "nics": [{ "mac": mac(2) }] }),
            StatusCode::BAD_REQUEST,
            "unknown_rack",
        ),
        (
            "unit without rack",
            json!({ "rack_unit": 1, "nics": [{ "mac": mac(2) }] }),
            StatusCode::BAD_REQUEST,
            "missing_rack",
        ),
        (
            "bad hostname",
            json!({ "hostname": "no_underscores", "nics": [{ "mac": mac(2) }] }),
            StatusCode::BAD_REQUEST,
            "invalid_hostname",
        ),
        (
            "bad BMC address",
            json!({ "nics": [{ "mac": mac(2) }], "bmc": { "protocol": "ipmi", "address": "http://x", "username": "u", "password": "p" } }),
            StatusCode::BAD_REQUEST,
            "invalid_bmc_address",
        ),
        (
            "plain HTTP Redfish without the opt-in",
            json!({ "nics": [{ "mac": mac(2) }], "bmc": { "protocol": "redfish", "address": "http://10.9.0.9", "username": "u", "password": "p" } }),
            StatusCode::BAD_REQUEST,
            "plain_http_required",
        ),
        (
            "the opt-in for an https BMC",
            json!({ "nics": [{ "mac": mac(2) }], "bmc": { "protocol": "redfish", "address": "https://10.9.0.9", "username": "u", "password": "p", "plain_http": true } }),
            StatusCode::BAD_REQUEST,
            "plain_http_without_http",
        ),
        (
            "bad BMC protocol",
            json!({ "nics": [{ "mac": mac(2) }], "bmc": { "protocol": "telnet", "address": "x", "username": "u", "password": "p" } }),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            "missing nics",
            json!({ "hostname": "b" }),
            StatusCode::BAD_REQUEST,
            "missing_field",
        ),
    ];
    for (what, body, status, code) in cases {
        let (st, e) = s.post("/api/v1/machines", body).await;
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{what}: {e}"
        );
        assert!(!e["error"]["message"].as_str().unwrap().is_empty());
    }
    let (st, e) = s
        .post_raw("/api/v1/machines", r#"{"nics": [{"mac": "#)
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_json"))
    );
    let (st, e) = s
        .post(&format!("/api/v1/machines/{id}/actions/launch"), json!({}))
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unknown_verb"))
    );
    let (st, e) = s
        .post(
            &format!("/api/v1/machines/{id}/actions/allocate"),
            json!({}),
        )
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("not_an_action"))
    );
    let (st, e) = s
        .post("/api/v1/machines/not-a-uuid/actions/inspect", json!({}))
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_path"))
    );
    let (st, e) = s
        .post(
            &format!("/api/v1/machines/{}/actions/inspect", uuid::Uuid::nil()),
            json!({}),
        )
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (st, e) = s
        .post("/api/v1/racks", json!({ "name": "r1", "height_u": 42 }))
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("duplicate_rack"))
    );
    let (st, e) = s
        .post("/api/v1/racks", json!({ "name": "r2", "height_u": 0 }))
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_height"))
    );
    let (st, e) = s
        .call(
            reqwest::Method::PATCH,
            "/api/v1/racks/r1",
            Some(&s.admin),
            Some(json!({ "height_u": 5 })),
        )
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("rack_not_empty")),
        "{e}"
    );
    let (st, e) = s.get("/api/v1/nowhere").await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    assert_eq!(s.count("machines").await, machines, "nothing written");
    assert_eq!(s.count("nics").await, nics);
    assert_eq!(s.count("events").await, events);
}

/// What schemathesis found (crates/plinth-api/tests/it/contract.rs): text with NUL reached
/// PostgreSQL, which cannot store it (a 500); `2.0` for an integer, which JSON Schema and
/// Python's `json` call an integer, was refused; a `null` action body was refused.
#[tokio::test]
async fn nul_is_refused_and_whole_numbers_are_integers() {
    let s = Server::start().await;
    s.post("/api/v1/racks", json!({ "name": "r1", "height_u": 42 }))
        .await;
    let machines = s.count("machines").await;
    let events = s.count("events").await;
    for (what, status, e) in [
        (
            "a body",
            StatusCode::BAD_REQUEST,
            s.post(
                "/api/v1/machines",
                json!({ "rack": "r\u{0}1", "rack_unit": 1, "nics": [{ "mac": mac(1) }] }),
            )
            .await
            .1,
        ),
        (
            "a key",
            StatusCode::BAD_REQUEST,
            s.post("/api/v1/machines", json!({ "nics\u{0}": [] }))
                .await
                .1,
        ),
        (
            "a query",
            StatusCode::BAD_REQUEST,
            s.get("/api/v1/machines?q=node%00").await.1,
        ),
        (
            "a path",
            StatusCode::BAD_REQUEST,
            s.get("/api/v1/racks/r1%00").await.1,
        ),
    ] {
        let code = e["error"]["code"].as_str();
        assert!(
            matches!(
                code,
                Some("invalid_value" | "invalid_query" | "invalid_path")
            ),
            "NUL in {what}: {e}"
        );
        assert!(
            e["error"]["message"].as_str().unwrap().contains("NUL"),
            "{what}: {e}"
        );
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    assert_eq!(s.count("machines").await, machines, "nothing written");
    assert_eq!(s.count("events").await, events);

    let (st, m) = s
        .post(
            "/api/v1/machines",
            json!({ "rack": "r1", "rack_unit": 3.0, "size_u": 2.0, "nics": [{ "mac": mac(1) }] }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    assert_eq!(
        (m["rack_unit"].as_i64(), m["size_u"].as_i64()),
        (Some(3), Some(2))
    );
    let (st, e) = s
        .post(
            "/api/v1/machines",
            json!({ "size_u": 2.5, "nics": [{ "mac": mac(2) }] }),
        )
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_value")),
        "{e}"
    );

    let id = m["id"].as_str().unwrap();
    let (st, m) = s
        .post_raw(&format!("/api/v1/machines/{id}/actions/inspect"), "null")
        .await;
    assert_eq!(
        (st, m["state"].as_str()),
        (StatusCode::OK, Some("inspecting")),
        "{m}"
    );
    // deploy has a path of its own: a body that is not a DeployRequest says what one is.
    let (st, e) = s
        .post_raw(
            &format!("/api/v1/machines/{id}/actions/deploy"),
            r#"{"reason": "x", "force": true}"#,
        )
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unknown_field")),
        "{e}"
    );
    assert!(
        e["error"]["message"].as_str().unwrap().contains("image"),
        "{e}"
    );
}

#[tokio::test]
async fn authentication_and_roles() {
    let s = Server::start().await;
    let viewer = s.token("vera", Role::Viewer).await;
    let operator = s.token("otto", Role::Operator).await;
    let client = s.token("cli-1", Role::Client).await;
    let other_client = s.token("cli-2", Role::Client).await;

    let (st, e) = s
        .call(reqwest::Method::GET, "/api/v1/machines", None, None)
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let (st, _) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/machines",
            Some("plinth_wrong"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, doc) = s
        .call(reqwest::Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(doc["paths"]["/api/v1/machines/{id}/actions/{verb}"]["post"].is_object());
    assert!(doc["components"]["schemas"]["MachineCreate"].is_object());
    let (st, h) = s.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!((st, h["status"].as_str()), (StatusCode::OK, Some("ok")));

    let enroll = json!({ "nics": [{ "mac": mac(1) }] });
    let (st, _) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/machines",
            Some(&viewer),
            Some(enroll.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/machines",
            Some(&client),
            Some(enroll.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/racks",
            Some(&viewer),
            Some(json!({ "name": "r", "height_u": 1 })),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/racks",
            Some(&operator),
            Some(json!({ "name": "r", "height_u": 1 })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(&operator),
            Some(json!({ "name": "x", "role": "admin" })),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, m) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/machines",
            Some(&operator),
            Some(enroll),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let id = m["id"].as_str().unwrap().to_owned();
    let (st, _) = s
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/machines/{id}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/machines/{id}/actions/inspect"),
            Some(&viewer),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Clients see and drive only what they were allocated.
    s.ready(2, 8).await;
    let (st, page) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/machines",
            Some(&client),
            None,
        )
        .await;
    assert_eq!(
        (st, page["machines"].as_array().unwrap().len()),
        (StatusCode::OK, 0)
    );
    let (st, a) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/allocations",
            Some(&client),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(a["owner"], "cli-1");
    let mid = a["machines"][0]["id"].as_str().unwrap().to_owned();
    let (_, page) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/machines",
            Some(&client),
            None,
        )
        .await;
    assert_eq!(page["machines"][0]["id"].as_str(), Some(mid.as_str()));
    let (st, _) = s
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/machines/{mid}"),
            Some(&other_client),
            None,
        )
        .await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "another client's machine is invisible"
    );
    let (st, _) = s
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/machines/{id}"),
            Some(&client),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, list) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/allocations",
            Some(&other_client),
            None,
        )
        .await;
    assert_eq!((st, list.as_array().unwrap().len()), (StatusCode::OK, 0));
    let (st, _) = s
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/allocations/{}", a["id"].as_str().unwrap()),
            Some(&other_client),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, m) = s
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/machines/{mid}/actions/deploy"),
            Some(&client),
            Some(json!({})),
        )
        .await;
    // The client may deploy its machine (no 403 or 404): what it sent lacks an image.
    assert_eq!(
        (st, m["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("missing_image"))
    );
    let (st, _) = s
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/machines/{mid}/actions/decommission"),
            Some(&client),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .call(reqwest::Method::GET, "/api/v1/events", Some(&client), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Revoked tokens stop working at once.
    let (st, _) = s
        .call(
            reqwest::Method::DELETE,
            "/api/v1/tokens/vera",
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, e) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/machines",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(e["error"]["message"].as_str().unwrap().contains("revoked"));
    let (_, tokens) = s.get("/api/v1/tokens").await;
    let vera = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "vera")
        .unwrap();
    assert!(vera["revoked_at"].is_string() && vera["last_used_at"].is_string());
    assert!(
        !tokens.to_string().contains(&viewer),
        "secrets are never listed"
    );
}

#[tokio::test]
async fn allocation_constraints_and_release() {
    let s = Server::start().await;
    s.ready(1, 8).await;
    s.ready(2, 64).await;
    let refused = |r: Result<_, plinth_client::Error>| {
        let e = r.expect_err("refused");
        (e.status(), e.code().map(str::to_owned))
    };
    let capacity = (Some(409), Some("insufficient_capacity".to_owned()));
    let api = &s.api;
    let ask = |req: AllocationRequest| async move { api.allocate(&req).await };
    assert_eq!(
        refused(
            ask(AllocationRequest {
                min_cpus: Some(128),
                ..Default::default()
            })
            .await
        ),
        capacity
    );
    assert_eq!(
        refused(
            ask(AllocationRequest {
                count: Some(3),
                ..Default::default()
            })
            .await
        ),
        capacity
    );
    assert_eq!(
        s.count("allocations").await,
        0,
        "a refused allocation leaves nothing behind"
    );
    let a = ask(AllocationRequest {
        min_cpus: Some(32),
        min_memory_mib: Some(1024),
        min_disk_gib: Some(900),
        arch: Some(Arch::X86_64),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(a.machines[0].hostname.as_deref(), Some("n2"));
    assert_eq!(a.machines[0].state, MachineState::Allocated);
    assert_eq!(
        refused(
            ask(AllocationRequest {
                min_disk_gib: Some(2000),
                ..Default::default()
            })
            .await
        ),
        capacity
    );
    assert_eq!(
        refused(
            ask(AllocationRequest {
                count: Some(0),
                ..Default::default()
            })
            .await
        ),
        (Some(400), Some("invalid_count".to_owned()))
    );
    let r = s.api.release_allocation(a.id).await.unwrap();
    assert_eq!(r.machines[0].state, MachineState::Cleaning);
    assert!(r.released_at.is_some());
    assert_eq!(
        refused(s.api.release_allocation(a.id).await),
        (Some(409), Some("already_released".to_owned()))
    );
    assert_eq!(s.api.list_allocations(false).await.unwrap().len(), 0);
    assert_eq!(s.api.list_allocations(true).await.unwrap().len(), 1);
}

#[tokio::test]
async fn two_hundred_concurrent_allocations_for_one_hundred_machines() {
    let s = Server::start().await;
    let mut conn = s.db.pool.acquire().await.unwrap();
    for n in 0..100 {
        let id = s.enroll(n).await.id;
        plinth_db::machines::force_state(&mut conn, id, plinth_types::MachineState::Ready, None)
            .await
            .unwrap();
    }
    drop(conn);
    let client = s.as_token(&s.token("storm", Role::Client).await);
    let one = AllocationRequest {
        count: Some(1),
        ..Default::default()
    };
    let requests = (0..200).map(|_| client.allocate(&one));
    let results = futures::future::join_all(requests).await;
    let mut got = Vec::new();
    let mut refused = 0;
    for r in results {
        match r {
            Ok(a) => got.push(a.machines[0].id),
            Err(e) if e.status() == Some(409) => {
                assert_eq!(e.code(), Some("insufficient_capacity"));
                refused += 1;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((got.len(), refused), (100, 100));
    let unique: HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), 100, "no machine is allocated twice");
    let allocated: i64 = sqlx::query_scalar(
        "select count(*) from machines where state = 'allocated' and allocation_id is not null",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(allocated, 100);
    assert_eq!(s.count("allocations").await, 100);
}

#[tokio::test]
async fn concurrent_conflicting_actions_exactly_one_wins() {
    let s = Server::start().await;
    let id = s.enroll(1).await.id;
    // Same version, different verbs and the same verb, all at once.
    let verbs = ["inspect", "decommission"].repeat(10);
    let none = ActionRequest::default();
    let requests = verbs
        .iter()
        .map(|verb| s.api.machine_action(id, verb, &none, Some(1)));
    let results = futures::future::join_all(requests).await;
    let winners: Vec<&Machine> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let state = winners[0].state;
    for r in &results {
        if let Err(e) = r {
            let plinth_client::Error::Api(a) = e else {
                panic!("{e:?}")
            };
            assert_eq!(a.status, 409);
            assert_eq!(a.current_state(), Some(state), "{a}");
        }
    }
    let after = s.api.get_machine(id).await.unwrap();
    assert_eq!(after.state_version, 2);
    let ev = s.api.machine_events(id, &Default::default()).await.unwrap();
    assert_eq!(ev.events.len(), 2, "enroll + the one winning transition");

    // Without If-Match, the state guard alone lets exactly one inspect through.
    let id = s.enroll(2).await.id;
    let requests = (0..10).map(|_| {
        let req = s
            .http
            .post(format!("{}/api/v1/machines/{id}/actions/inspect", s.base))
            .bearer_auth(&s.admin);
        async move { req.send().await.unwrap().status() }
    });
    let statuses = futures::future::join_all(requests).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn if_match_and_maintenance() {
    let s = Server::start().await;
    let id = s.enroll(1).await.id;
    let act = |verb: &str, if_match: Option<&str>, body: Value| {
        let mut req = s
            .http
            .post(format!("{}/api/v1/machines/{id}/actions/{verb}", s.base))
            .bearer_auth(&s.admin)
            .json(&body);
        if let Some(v) = if_match {
            req = req.header("If-Match", v);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        }
    };
    let (st, e) = act("inspect", Some("\"5\""), json!({})).await;
    assert_eq!(
        (
            st,
            e["error"]["code"].as_str(),
            e["error"]["current_state"].as_str()
        ),
        (
            StatusCode::CONFLICT,
            Some("stale_version"),
            Some("enrolled")
        )
    );
    let (st, e) = act("inspect", Some("five"), json!({})).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_if_match"))
    );
    let (st, m) = act(
        "maintenance_on",
        Some("1"),
        json!({ "reason": "fan failure" }),
    )
    .await;
    assert_eq!(
        (st, m["maintenance"].as_bool(), m["state_version"].as_i64()),
        (StatusCode::OK, Some(true), Some(2))
    );
    let (st, m) = act(
        "inspect",
        Some("W/\"2\""),
        json!({ "reason": "after fan swap" }),
    )
    .await;
    assert_eq!(
        (st, m["state"].as_str(), m["state_reason"].as_str()),
        (StatusCode::OK, Some("inspecting"), Some("after fan swap"))
    );
    let (st, e) = act("inspect", None, json!({ "reason": 5 })).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
}

#[tokio::test]
async fn subnets_and_leases_over_http() {
    let s = Server::start().await;
    let (st, n) = s
        .post("/api/v1/subnets", json!({ "cidr": "10.40.0.0/24", "ranges": [{ "start": "10.40.0.100", "end": "10.40.0.149" }], "router": "10.40.0.1", "dns_servers": ["10.40.0.53"], "lease_time": 900 }))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{n}");
    assert_eq!(
        (n["pool_size"].as_i64(), n["lease_time"].as_i64()),
        (Some(50), Some(900))
    );
    let id = n["id"].as_str().unwrap().to_owned();
    for (body, status, code) in [
        (
            json!({ "cidr": "10.40.0.0/23", "ranges": [] }),
            StatusCode::CONFLICT,
            "subnet_overlap",
        ),
        (
            json!({ "cidr": "10.41.0.0/24", "ranges": [{ "start": "10.42.0.1", "end": "10.42.0.9" }] }),
            StatusCode::BAD_REQUEST,
            "range_outside_subnet",
        ),
        (
            json!({ "cidr": "10.41.0.0/24", "ranges": [], "router": "10.9.9.9" }),
            StatusCode::BAD_REQUEST,
            "invalid_router",
        ),
        (
            json!({ "cidr": "banana", "ranges": [] }),
            StatusCode::BAD_REQUEST,
            "invalid_cidr",
        ),
        (
            json!({ "cidr": "10.41.0.0/24", "ranges": [{ "start": "10.41.0.9" }] }),
            StatusCode::BAD_REQUEST,
            "missing_field",
        ),
    ] {
        let (st, e) = s.post("/api/v1/subnets", body).await;
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{e}"
        );
    }
    let (st, p) = s
        .call(reqwest::Method::PATCH, &format!("/api/v1/subnets/{id}"), Some(&s.admin), Some(json!({ "ranges": [{ "start": "10.40.0.10", "end": "10.40.0.19" }], "domain": "r1.example" })))
        .await;
    assert_eq!(
        (st, p["pool_size"].as_i64(), p["domain"].as_str()),
        (StatusCode::OK, Some(10), Some("r1.example")),
        "{p}"
    );
    let (st, leases) = s.get("/api/v1/leases").await;
    assert_eq!(
        (st, leases.as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
    let viewer = s.token("v", Role::Viewer).await;
    let (st, _) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/subnets",
            Some(&viewer),
            Some(json!({ "cidr": "10.50.0.0/24", "ranges": [] })),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/subnets/{id}"),
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, list) = s.get("/api/v1/subnets").await;
    assert_eq!(
        (st, list.as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
}

#[tokio::test]
async fn tokens_can_expire() {
    let s = Server::start().await;
    let (status, made) = s
        .post(
            "/api/v1/tokens",
            json!({ "name": "ci-job", "role": "viewer", "expires_in_secs": 3600 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let secret = made["secret"].as_str().unwrap().to_owned();
    let expires: chrono::DateTime<chrono::Utc> = made["token"]["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let left = expires - chrono::Utc::now();
    assert!(
        left > chrono::Duration::minutes(59) && left <= chrono::Duration::minutes(60),
        "{left}"
    );
    let (status, _) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/machines",
            Some(&secret),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // An hour later (the clock moved by the database): refused, and said why.
    sqlx::query("update api_tokens set created_at = created_at - interval '2 hours', expires_at = now() - interval '1 second' where name = 'ci-job'")
        .execute(&s.db.pool)
        .await
        .unwrap();
    let (status, body) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/machines",
            Some(&secret),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body["error"]["message"], "this API token has expired",
        "{body}"
    );
    let (_, list) = s.get("/api/v1/tokens").await;
    let t = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci-job")
        .unwrap();
    assert!(
        t["expires_at"].is_string() && t["revoked_at"].is_null(),
        "{t}"
    );
    // A token without a lifetime never expires; a lifetime must make sense.
    let (_, never) = s
        .post(
            "/api/v1/tokens",
            json!({ "name": "forever", "role": "viewer" }),
        )
        .await;
    assert!(never["token"]["expires_at"].is_null(), "{never}");
    for bad in [
        json!(10),
        json!(10 * 366 * 86_400 + 86_400),
        json!(-1),
        json!("30d"),
    ] {
        let (status, body) = s
            .post(
                "/api/v1/tokens",
                json!({ "name": "bad", "role": "viewer", "expires_in_secs": bad }),
            )
            .await;
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {status} {body}"
        );
    }
    assert_eq!(
        s.count("api_tokens where name = 'bad'").await,
        0,
        "nothing made by a bad request"
    );
}
