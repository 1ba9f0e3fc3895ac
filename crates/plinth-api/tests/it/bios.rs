//! BIOS settings over HTTP (issue 21): the API served on loopback with a job runner using the
//! real Redfish driver against the test kit's Redfish BMC: a change applied at the reboot and
//! read back, a BMC that silently drops one attribute, the checks before anything is queued
//! (the registry, the body, the state, the BMC's protocol), roles, and the profiles.

use std::sync::Arc;
use std::time::Duration;

use plinth_core::workers::{JobRunner, JobSettings};
use plinth_testkit::api::TestApi;
use plinth_testkit::mac;
use plinth_testkit::redfish::RedfishEmulator;
use plinth_types::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct World {
    t: TestApi,
    http: reqwest::Client,
    runner: Arc<JobRunner>,
    emu: RedfishEmulator,
}

impl World {
    async fn start() -> World {
        let t = TestApi::start().await;
        let emu = RedfishEmulator::start("root", "calvin").await.unwrap();
        let runner = JobRunner::new(
            t.app.clone(),
            Arc::new(plinth_bmc::Drivers::default()),
            JobSettings {
                power_wait: Duration::from_secs(10),
                power_poll: Duration::from_millis(50),
                backoff_base: Duration::ZERO,
                backoff_max: Duration::ZERO,
                ..JobSettings::default()
            },
        );
        World {
            t,
            http: reqwest::Client::new(),
            runner,
            emu,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), self.t.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn enroll(&self, n: u32, protocol: &str, address: &str) -> String {
        let (s, m) = self
            .call(
                "POST",
                "/api/v1/machines",
                &self.t.admin,
                Some(
                    json!({ "hostname": format!("bios-{n}"), "nics": [{ "mac": mac(n) }],
                    "bmc": { "protocol": protocol, "address": address, "username": "root",
                             "password": "calvin", "verify_tls": false, "plain_http": protocol == "redfish" } }),
                ),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{m}");
        m["id"].as_str().unwrap().to_owned()
    }

    async fn job(&self, id: &str) -> Value {
        self.call("GET", &format!("/api/v1/jobs/{id}"), &self.t.admin, None)
            .await
            .1
    }
}

#[tokio::test]
async fn a_change_through_the_api_is_applied_and_read_back() {
    let w = World::start().await;
    let id = w.enroll(1, "redfish", &w.emu.url()).await;
    w.runner.drain().await.unwrap();
    let bios = format!("/api/v1/machines/{id}/bios");
    let (s, b) = w.call("GET", &bios, &w.t.admin, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["attributes"], Value::Null, "not read yet");

    let (s, job) = w
        .call(
            "PATCH",
            &bios,
            &w.t.admin,
            Some(json!({"attributes": {"BootMode": "Bios", "NumCores": 4}})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["kind"], "bios_apply");
    w.runner.drain().await.unwrap();
    let done = w.job(job["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(w.emu.bios()["BootMode"], "Bios");
    assert_eq!(w.emu.power(), "Off", "off again, as it was");
    let (_, b) = w.call("GET", &bios, &w.t.admin, None).await;
    assert_eq!(b["attributes"]["BootMode"], "Bios");
    assert_eq!(b["attributes"]["NumCores"], 4);
    assert_eq!(b["registry"], true);
    assert_eq!(b["last_apply"]["state"], "succeeded");

    // The quirk: the BMC takes the change and a boot silently keeps one value.
    w.emu
        .bios_knobs(|k| k.drops = Some("SriovGlobalEnable".into()));
    let (s, job) = w
        .call(
            "PATCH",
            &bios,
            &w.t.admin,
            Some(json!({"attributes": {"SriovGlobalEnable": "Enabled", "ProcTurboMode": "Disabled"}})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    w.runner.drain().await.unwrap();
    let done = w.job(job["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "failed");
    let err = done["last_error"].as_str().unwrap();
    assert!(
        err.contains("SriovGlobalEnable: asked Enabled, reads Disabled"),
        "{err}"
    );
    assert!(!err.contains("ProcTurboMode"), "{err}");
    let (_, b) = w.call("GET", &bios, &w.t.admin, None).await;
    assert_eq!(
        b["attributes"]["ProcTurboMode"], "Disabled",
        "read again after the failure"
    );
    assert_eq!(b["attributes"]["SriovGlobalEnable"], "Disabled");
    assert_eq!(b["last_apply"]["state"], "failed");

    // A BMC without a settings object takes the change at Bios and shows nothing pending:
    // the reboot's read-back judges.
    w.emu.bios_knobs(|k| {
        k.drops = None;
        k.no_settings_object = true;
    });
    let (s, job) = w
        .call(
            "PATCH",
            &bios,
            &w.t.admin,
            Some(json!({"attributes": {"SriovGlobalEnable": "Enabled"}})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    w.runner.drain().await.unwrap();
    let done = w.job(job["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(w.emu.bios()["SriovGlobalEnable"], "Enabled");
    w.emu.bios_knobs(|k| k.no_settings_object = false);

    // Refused before anything is queued: the registry (now known), the body.
    let requests = w.emu.requests().len();
    for (body, code) in [
        (
            json!({"attributes": {"BootMode": "Legacy"}}),
            "invalid_bios_attributes",
        ),
        (
            json!({"attributes": {"NoSuchThing": 1}}),
            "invalid_bios_attributes",
        ),
        (
            json!({"attributes": {"SerialNumber": "x"}}),
            "invalid_bios_attributes",
        ),
        (
            json!({"attributes": {"NumCores": {"n": 1}}}),
            "invalid_bios_attributes",
        ),
        (json!({"attributes": {}}), "invalid_bios_attributes"),
    ] {
        let (s, e) = w.call("PATCH", &bios, &w.t.admin, Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {e}");
        assert_eq!(e["error"]["code"], code, "{body}: {e}");
    }
    let (s, _) = w
        .call(
            "PATCH",
            &bios,
            &w.t.admin,
            Some(json!({"attributes": {"BootMode": "Uefi"}, "forse": true})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "unknown fields are refused");
    let (s, _) = w
        .call(
            "PATCH",
            &bios,
            &w.t.admin,
            Some(json!({"attributes": ["BootMode"]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    w.runner.drain().await.unwrap();
    assert_eq!(w.emu.requests().len(), requests, "the BMC was not touched");

    // Roles: a viewer reads, and may not change; an operator may.
    let viewer = w.t.token("viewer", Role::Viewer).await;
    assert_eq!(w.call("GET", &bios, &viewer, None).await.0, StatusCode::OK);
    let (s, _) = w
        .call(
            "PATCH",
            &bios,
            &viewer,
            Some(json!({"attributes": {"BootMode": "Uefi"}})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let operator = w.t.token("operator", Role::Operator).await;
    let (s, _) = w
        .call(
            "PATCH",
            &bios,
            &operator,
            Some(json!({"attributes": {"BootMode": "Uefi"}})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);

    // An IPMI BMC has no BIOS settings plinth can change.
    let ipmi = w.enroll(2, "ipmi", "127.0.0.1:1").await;
    let (s, e) = w
        .call(
            "PATCH",
            &format!("/api/v1/machines/{ipmi}/bios"),
            &w.t.admin,
            Some(json!({"attributes": {"BootMode": "Uefi"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(e["error"]["code"], "no_bios_bmc");
}

#[tokio::test]
async fn profiles_are_admin_policy() {
    let w = World::start().await;
    let operator = w.t.token("operator", Role::Operator).await;
    let body = json!({"name": "hpc", "attributes": {"ProcTurboMode": "Disabled"}});
    let (s, _) = w
        .call(
            "POST",
            "/api/v1/bios-profiles",
            &operator,
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, p) = w
        .call(
            "POST",
            "/api/v1/bios-profiles",
            &w.t.admin,
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(p["attributes"]["ProcTurboMode"], "Disabled");
    let (s, e) = w
        .call("POST", "/api/v1/bios-profiles", &w.t.admin, Some(body))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("profile_exists"))
    );
    let (s, e) = w
        .call(
            "POST",
            "/api/v1/bios-profiles",
            &w.t.admin,
            Some(json!({"name": "../x", "attributes": {"A": 1}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");

    let (s, e) = w
        .call(
            "PUT",
            "/api/v1/pools/gpu/bios-profile",
            &w.t.admin,
            Some(json!({"profile": "nope"})),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unknown_profile"))
    );
    let (s, _) = w
        .call(
            "PUT",
            "/api/v1/pools/gpu/bios-profile",
            &w.t.admin,
            Some(json!({"profile": "hpc"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, all) = w
        .call("GET", "/api/v1/bios-profiles", &operator, None)
        .await;
    assert_eq!(all[0]["pools"], json!(["gpu"]));
    let (s, e) = w
        .call("DELETE", "/api/v1/bios-profiles/hpc", &w.t.admin, None)
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("profile_in_use"))
    );
    w.call(
        "PUT",
        "/api/v1/pools/gpu/bios-profile",
        &w.t.admin,
        Some(json!({"profile": null})),
    )
    .await;
    let (s, _) = w
        .call("DELETE", "/api/v1/bios-profiles/hpc", &w.t.admin, None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = w
        .call("GET", "/api/v1/bios-profiles/hpc", &w.t.admin, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// Found by the contract test's schemathesis: a profile replaced with the largest double
/// answered 500. PostgreSQL's jsonb keeps numbers as decimals and writes this one back as a
/// 309-digit integer, which serde_json read as out of range unless its exact float parsing
/// (`float_roundtrip`) is on; each value comes back as the number given (PostgreSQL may write a
/// float with no fraction as an integer).
#[tokio::test]
async fn a_profile_with_extreme_numbers_is_stored_as_given() {
    let w = World::start().await;
    let (s, p) = w
        .call(
            "POST",
            "/api/v1/bios-profiles",
            &w.t.admin,
            Some(json!({"name": "0", "attributes": {"YlQbIv": true}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let attrs = json!({
        ".Iq": 5.35757486377609e16,
        "6nb0T0YP": f64::MAX,
        "IyjLatAo": 7.771031308686499e123,
        "YlQbIv": true,
    });
    let (s, p) = w
        .call(
            "PUT",
            "/api/v1/bios-profiles/0",
            &w.t.admin,
            Some(json!({"attributes": attrs})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    for (k, v) in attrs.as_object().unwrap() {
        let got = &p["attributes"][k];
        match v.as_f64() {
            Some(x) => assert_eq!(got.as_f64(), Some(x), "{k}: {p}"),
            None => assert_eq!(got, v, "{k}: {p}"),
        }
    }
    let (s, p) = w
        .call("GET", "/api/v1/bios-profiles/0", &w.t.admin, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["attributes"]["6nb0T0YP"].as_f64(), Some(f64::MAX), "{p}");
}
