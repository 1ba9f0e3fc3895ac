//! Firmware through the API (issue 21), end to end on loopback: a firmware image registered
//! and described, an update requested, the job runner (the real Redfish driver) asking the
//! test kit's BMC for a SimpleUpdate from plinth's per-job URL, the BMC fetching the image
//! from plinth's HTTP server, and the version read back; a BMC that says done and keeps the
//! old version; the per-job URL closed to other tokens and after the job; bad requests.

use std::sync::Arc;
use std::time::Duration;

use plinth_core::workers::{JobRunner, JobSettings};
use plinth_testkit::api::TestApi;
use plinth_testkit::mac;
use plinth_testkit::redfish::{RedfishEmulator, firmware_image};
use plinth_types::MachineState;
use plinth_types::api::Job;
use serde_json::{Value, json};
use uuid::Uuid;

fn settings() -> JobSettings {
    JobSettings {
        call_timeout: Duration::from_secs(5),
        power_wait: Duration::from_secs(2),
        power_poll: Duration::from_millis(20),
        backoff_base: Duration::ZERO,
        backoff_max: Duration::ZERO,
        ..JobSettings::default()
    }
}

struct Env {
    api: TestApi,
    http: reqwest::Client,
    runner: Arc<JobRunner>,
    root: tempfile::TempDir,
}

impl Env {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, self.api.url(path))
            .bearer_auth(&self.api.admin);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn image(&self, name: &str, component: &str, version: &str) -> Vec<u8> {
        let bytes = firmware_image(component, version, 64 * 1024);
        std::fs::create_dir_all(self.root.path().join("fw")).unwrap();
        std::fs::write(self.root.path().join(format!("fw/{name}.bin")), &bytes).unwrap();
        let (s, b) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/images",
                Some(json!({ "name": name, "kind": "firmware", "arch": "any", "path": format!("fw/{name}.bin") })),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        let (s, b) = self
            .call(
                reqwest::Method::PUT,
                &format!("/api/v1/firmware/images/{name}"),
                Some(json!({ "component": component, "version": version })),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["version"], version);
        bytes
    }

    async fn job(&self, id: Uuid) -> Job {
        let (_, b) = self
            .call(reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), None)
            .await;
        serde_json::from_value(b).unwrap()
    }
}

async fn env() -> Env {
    let root = tempfile::tempdir().unwrap();
    let settings_for = |public: Option<String>| {
        let mut s = plinth_core::boot::BootSettings::with_root(root.path().to_owned());
        s.public_url = public;
        s
    };
    let templates = || plinth_core::boot::Templates::load(None).unwrap();
    let s0 = settings_for(None);
    let api = TestApi::start_with(move |app| app.with_boot(s0, templates())).await;
    // The runner's plinth knows the URL BMCs reach it at (the served one, on loopback).
    let runner_app = api
        .app
        .clone()
        .with_boot(settings_for(Some(api.base.clone())), templates());
    let runner = JobRunner::new(
        runner_app,
        Arc::new(plinth_bmc::Drivers::default()),
        settings(),
    );
    Env {
        api,
        http: reqwest::Client::new(),
        runner,
        root,
    }
}

async fn machine(e: &Env, n: u32, bmc: &RedfishEmulator, state: MachineState) -> Uuid {
    let (s, b) = e
        .call(
            reqwest::Method::POST,
            "/api/v1/machines",
            Some(json!({
                "hostname": format!("node-{n}"),
                "nics": [{ "mac": mac(n).to_string() }],
                "bmc": { "protocol": "redfish", "address": bmc.url(), "username": "root",
                         "password": "calvin", "plain_http": true },
            })),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let id: Uuid = b["id"].as_str().unwrap().parse().unwrap();
    e.runner.drain().await.unwrap();
    let mut conn = e.api.app.pool().acquire().await.unwrap();
    plinth_db::machines::force_state(&mut conn, id, state, None)
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn an_update_fetched_from_plinth_by_the_bmc_and_read_back() {
    let e = env().await;
    let bytes = e.image("bios-1.1.0", "bios", "1.1.0").await;
    let bmc = RedfishEmulator::start("root", "calvin").await.unwrap();
    let id = machine(&e, 1, &bmc, MachineState::Ready).await;

    let (s, b) = e
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/machines/{id}/firmware"),
            Some(json!({ "image": "bios-1.1.0", "method": "simple" })),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let job: Uuid = b["id"].as_str().unwrap().parse().unwrap();
    let token = b["params"]["token"].as_str().unwrap().to_owned();
    // Before the job runs, and with a wrong token, the image is not served.
    let url = e.api.url(&format!("/firmware/{job}/{token}"));
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 404);

    e.runner.drain().await.unwrap();
    let j = e.job(job).await;
    assert_eq!(
        j.state,
        plinth_types::api::JobState::Succeeded,
        "{:?}",
        j.last_error
    );
    let r = j.result.unwrap();
    assert_eq!(
        (
            r["method"].as_str(),
            r["before"].as_str(),
            r["after"].as_str()
        ),
        (Some("simple_update"), Some("1.0.0"), Some("1.1.0"))
    );
    // The BMC fetched the catalog's file from plinth's per-job URL.
    let got = bmc.firmware_received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, url);
    assert_eq!(got[0].1, bytes);
    assert_eq!(bmc.firmware_version("BIOS").as_deref(), Some("1.1.0"));
    assert_eq!(bmc.power(), "Off", "powered on for the BIOS, and off again");
    // Once the job is over, the URL is closed.
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 404);
    let (s, inv) = e
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/machines/{id}/firmware"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let items = inv["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    let bios = items.iter().find(|i| i["kind"] == "bios").unwrap();
    assert_eq!(bios["version"], "1.1.0");

    // A BMC that reports success and keeps its old version: the read-back fails the job.
    e.image("bios-1.2.0", "bios", "1.2.0").await;
    bmc.firmware(|k| k.keep_old_version = true);
    let (s, b) = e
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/machines/{id}/firmware"),
            Some(json!({ "image": "bios-1.2.0" })),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    e.runner.drain().await.unwrap();
    let j = e.job(b["id"].as_str().unwrap().parse().unwrap()).await;
    assert_eq!(j.state, plinth_types::api::JobState::Failed);
    assert_eq!(
        j.last_error.as_deref(),
        Some("BMC reported success but BIOS still reads 1.1.0 (expected 1.2.0)")
    );

    // A multipart push to the same BMC.
    bmc.firmware(|k| k.keep_old_version = false);
    e.image("nic-3.0", "nic", "3.0").await;
    let (s, b) = e
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/machines/{id}/firmware"),
            Some(json!({ "image": "nic-3.0", "method": "push" })),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    e.runner.drain().await.unwrap();
    let j = e.job(b["id"].as_str().unwrap().parse().unwrap()).await;
    assert_eq!(
        j.state,
        plinth_types::api::JobState::Succeeded,
        "{:?}",
        j.last_error
    );
    assert_eq!(j.result.unwrap()["method"], "multipart_push");
    assert_eq!(bmc.firmware_version("NIC.1").as_deref(), Some("3.0"));
}

#[tokio::test]
async fn bad_requests_are_refused_with_clear_errors() {
    let e = env().await;
    e.image("bios-1.1.0", "bios", "1.1.0").await;
    let bmc = RedfishEmulator::start("root", "calvin").await.unwrap();
    let enrolled = machine(&e, 1, &bmc, MachineState::Enrolled).await;
    let (s, b) = e
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/machines/{enrolled}/firmware"),
            Some(json!({ "image": "bios-1.1.0" })),
        )
        .await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["error"]["code"], "firmware_not_allowed");
    for (body, status, code) in [
        (
            json!({ "component": "cpu", "version": "1" }),
            400,
            "invalid_component",
        ),
        (
            json!({ "component": "bios", "version": "../1" }),
            400,
            "invalid_version",
        ),
    ] {
        let (s, b) = e
            .call(
                reqwest::Method::PUT,
                "/api/v1/firmware/images/bios-1.1.0",
                Some(body),
            )
            .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (status, Some(code)),
            "{b}"
        );
    }
    let (s, _) = e
        .call(
            reqwest::Method::PUT,
            "/api/v1/firmware/images/nope",
            Some(json!({ "component": "bios", "version": "1" })),
        )
        .await;
    assert_eq!(s, 404);
    let (s, b) = e
        .call(
            reqwest::Method::POST,
            "/api/v1/firmware/rollouts",
            Some(json!({ "image": "bios-1.1.0", "rack": "r1", "pool": "default" })),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_rollout"))
    );
    let (s, b) = e
        .call(
            reqwest::Method::POST,
            "/api/v1/firmware/rollouts",
            Some(json!({ "image": "bios-1.1.0", "machines": [enrolled], "max_per_rack": 1 })),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let rid = b["id"].as_str().unwrap().to_owned();
    // The rollout stops at once: its only machine may not be updated.
    e.api.app.rollout_pass().await.unwrap();
    let (s, b) = e
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/firmware/rollouts/{rid}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["state"], "failed");
    assert!(b["reason"].as_str().unwrap().contains("enrolled"), "{b}");
    // The image URL of no job, or a malformed one.
    for path in [
        format!("/firmware/{}/abc", Uuid::new_v4()),
        "/firmware/not-a-uuid/abc".to_owned(),
    ] {
        assert_eq!(
            reqwest::get(e.api.url(&path))
                .await
                .unwrap()
                .status()
                .as_u16(),
            404
        );
    }
}
