//! BIOS settings (issue 21) with in-memory BMCs: a change applied at the reboot and read
//! back, a BMC that silently drops one attribute (the job fails naming it), a worker that
//! dies between the PATCH and the verification (the job runs again safely), the checks
//! before anything is queued, and a pool's profile applied on the way to `ready`.

use std::collections::BTreeMap;

use plinth_bmc::bios::{AttributeDef, AttributeType, Registry};
use serde_json::{Value, json};

use super::*;

fn attrs(v: Value) -> BTreeMap<String, Value> {
    serde_json::from_value(v).unwrap()
}

fn bios() -> BTreeMap<String, Value> {
    attrs(json!({"BootMode": "Uefi", "ProcTurboMode": "Enabled",
        "SriovGlobalEnable": "Disabled", "NumCores": 8}))
}

fn registry() -> Registry {
    let e = |name: &str, kind, values: &[&str]| AttributeDef {
        name: name.into(),
        kind,
        values: values.iter().map(|v| v.to_string()).collect(),
        read_only: false,
        min: None,
        max: None,
    };
    [
        e("BootMode", AttributeType::Enumeration, &["Uefi", "Bios"]),
        e(
            "ProcTurboMode",
            AttributeType::Enumeration,
            &["Enabled", "Disabled"],
        ),
        e(
            "SriovGlobalEnable",
            AttributeType::Enumeration,
            &["Enabled", "Disabled"],
        ),
        e("NumCores", AttributeType::Integer, &[]),
    ]
    .into_iter()
    .map(|d| (d.name.clone(), d))
    .collect()
}

impl World {
    async fn ask_bios(&self, id: Uuid, a: Value, force: bool) -> Result<Job, plinth_types::Error> {
        self.app
            .request_bios(
                &admin(),
                id,
                BiosRequest {
                    attributes: attrs(a),
                    force,
                },
            )
            .await
    }

    /// Enrolls machine `n` with a BIOS, its identity job run.
    async fn with_bios(&self, n: u32) -> (Uuid, Arc<FakeBmc>) {
        let (id, f) = self.enroll(n, PASSWORD).await;
        f.set_bios(bios());
        self.runner.drain().await.unwrap();
        (id, f)
    }
}

#[tokio::test]
async fn a_change_applies_at_the_reboot_and_is_read_back() {
    let w = world(settings()).await;
    let (id, f) = w.with_bios(1).await;
    let job = w
        .ask_bios(id, json!({"BootMode": "Bios", "NumCores": 4}), false)
        .await
        .unwrap();
    assert_eq!(job.kind, "bios_apply");
    assert_eq!(job.params["attributes"]["BootMode"], "Bios");
    assert_eq!(f.boots(), 0, "nothing happens before the job runs");
    w.runner.drain().await.unwrap();
    let job = w.app.job(&admin(), job.id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(f.boots(), 1, "one boot applied the change");
    assert_eq!(f.power_now(), PowerState::Off, "off again, as it was");
    assert_eq!(f.bios_now().unwrap()["BootMode"], "Bios");
    // Set, read back pending, boot, read back.
    let calls = f.calls();
    let set = calls
        .iter()
        .position(|c| matches!(c, Call::SetBiosPending(_)))
        .unwrap();
    assert_eq!(calls[set + 1], Call::BiosPending);
    assert!(calls[set..].contains(&Call::Power(PowerAction::On)));

    let b = w.app.machine_bios(&admin(), id).await.unwrap();
    let cur = b.attributes.unwrap();
    assert_eq!(cur["BootMode"], "Bios");
    assert_eq!(cur["NumCores"], 4);
    assert_eq!(b.last_apply.unwrap().state, JobState::Succeeded);
    let kinds = w.event_kinds(id).await;
    assert!(
        kinds.contains(&"bios_change_requested".to_string()),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"bios_applied".to_string()), "{kinds:?}");

    // Asked again: already in effect, no reboot.
    let job = w
        .ask_bios(id, json!({"BootMode": "Bios"}), false)
        .await
        .unwrap();
    w.runner.drain().await.unwrap();
    let job = w.app.job(&admin(), job.id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.result.unwrap()["already"], true);
    assert_eq!(f.boots(), 1);
}

#[tokio::test]
async fn an_attribute_that_did_not_stick_fails_the_job_naming_it() {
    let w = world(settings()).await;
    let (id, f) = w.with_bios(1).await;
    f.set_bios_drops(Some("SriovGlobalEnable"));
    let job = w
        .ask_bios(
            id,
            json!({"SriovGlobalEnable": "Enabled", "ProcTurboMode": "Disabled"}),
            false,
        )
        .await
        .unwrap();
    w.runner.drain().await.unwrap();
    let job = w.app.job(&admin(), job.id).await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 1, "a value that did not stick is not retried");
    let err = job.last_error.unwrap();
    assert!(
        err.contains("SriovGlobalEnable: asked Enabled, reads Disabled"),
        "{err}"
    );
    assert!(!err.contains("ProcTurboMode"), "{err}");
    let ev = w.events_of_kind(id, "bios_not_applied").await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].details["error_kind"], "bios_mismatch");
    // The BIOS as it is was read again: the stored values are the real ones.
    let jobs = w.jobs_of(id).await;
    assert_eq!(jobs.last().unwrap().kind, "bios_read");
    assert_eq!(jobs.last().unwrap().state, JobState::Succeeded);
    let cur = w
        .app
        .machine_bios(&admin(), id)
        .await
        .unwrap()
        .attributes
        .unwrap();
    assert_eq!(cur["ProcTurboMode"], "Disabled");
    assert_eq!(cur["SriovGlobalEnable"], "Disabled");
    assert_eq!(f.power_now(), PowerState::Off);
}

#[tokio::test]
async fn a_worker_that_dies_between_the_patch_and_the_check_is_run_again_safely() {
    let w = world(settings()).await;
    let (id, f) = w.with_bios(1).await;
    let ask = json!({"BootMode": "Bios"});
    let job = w.ask_bios(id, ask.clone(), false).await.unwrap();
    // A worker claims the job, PATCHes the pending settings, and dies.
    let mut conn = w.app.pool().acquire().await.unwrap();
    assert_eq!(
        plinth_db::jobs::claim(&mut conn, "dead-worker", 10, 0.05)
            .await
            .unwrap()
            .len(),
        1
    );
    f.set_bios_pending(&attrs(ask.clone())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(w.runner.requeue_stale(false).await.unwrap(), 1);
    w.runner.drain().await.unwrap();
    let done = w.app.job(&admin(), job.id).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(done.attempts, 2);
    assert_eq!(f.boots(), 1);
    assert_eq!(f.bios_now().unwrap()["BootMode"], "Bios");

    // Another dies after its reboot applied the change: the rerun verifies without a reboot.
    let job = w
        .ask_bios(id, json!({"BootMode": "Uefi"}), false)
        .await
        .unwrap();
    plinth_db::jobs::claim(&mut conn, "dead-worker", 10, 0.05)
        .await
        .unwrap();
    f.set_bios_pending(&attrs(json!({"BootMode": "Uefi"})))
        .await
        .unwrap();
    f.power(PowerAction::Cycle).await.unwrap();
    f.power(PowerAction::Off { force: true }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(w.runner.requeue_stale(false).await.unwrap(), 1);
    w.runner.drain().await.unwrap();
    let done = w.app.job(&admin(), job.id).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result.unwrap()["already"], true);
    assert_eq!(f.boots(), 2, "no second reboot");
}

#[tokio::test]
async fn bad_changes_are_refused_before_anything_is_queued() {
    let w = world(settings()).await;
    let (id, f) = w.with_bios(1).await;
    f.set_bios_registry(Some(registry()));
    // Inspection reads the BIOS (and its registry) after the report.
    w.act(id, Verb::Inspect).await.unwrap();
    w.runner.drain().await.unwrap();
    let mac1 = w.app.get_machine(&admin(), id).await.unwrap().nics[0].mac;
    // While the ramdisk works, a change that reboots the machine is refused.
    let e = w
        .ask_bios(id, json!({"BootMode": "Bios"}), true)
        .await
        .unwrap_err();
    assert_eq!(e.code, "bios_state");
    w.app
        .submit_inspection(&admin(), id, uefi_report(id, mac1))
        .await
        .unwrap();
    w.runner.drain().await.unwrap();
    let b = w.app.machine_bios(&admin(), id).await.unwrap();
    assert_eq!(b.attributes.unwrap(), bios());
    assert!(b.registry);
    let before = w.jobs_of(id).await.len();

    for (body, says) in [
        (
            json!({"BootMod": "Bios"}),
            "BootMod: the BMC's attribute registry has no such attribute",
        ),
        (
            json!({"BootMode": "Legacy"}),
            "\"Legacy\" is not one of Uefi, Bios",
        ),
        (
            json!({"NumCores": "four"}),
            "NumCores: a string given, the attribute is an integer",
        ),
        (
            json!({"BootMode": ["Uefi"]}),
            "BootMode: a list is not a BIOS value",
        ),
        (json!({}), "no attributes given"),
    ] {
        let e = w.ask_bios(id, body.clone(), false).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput, "{body}: {e:?}");
        assert_eq!(e.code, "invalid_bios_attributes");
        assert!(e.message.contains(says), "{body}: {}", e.message);
    }
    // Roles: a viewer or a client may not change a BIOS.
    for role in [plinth_types::Role::Viewer, plinth_types::Role::Client] {
        let who = Principal {
            token_id: None,
            name: "someone".into(),
            role,
        };
        let e = w
            .app
            .request_bios(
                &who,
                id,
                BiosRequest {
                    attributes: attrs(json!({"BootMode": "Bios"})),
                    force: false,
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e.kind, ErrorKind::Forbidden | ErrorKind::NotFound),
            "{role:?}: {e:?}"
        );
    }
    assert_eq!(w.jobs_of(id).await.len(), before, "nothing queued");
}

#[tokio::test]
async fn a_pools_profile_is_applied_on_the_way_to_ready() {
    let w = world(settings()).await;
    let p = w
        .app
        .put_bios_profile(
            &admin(),
            BiosProfileCreate {
                name: "hpc".into(),
                attributes: attrs(
                    json!({"ProcTurboMode": "Disabled", "SriovGlobalEnable": "Enabled"}),
                ),
            },
            true,
        )
        .await
        .unwrap();
    assert!(p.pools.is_empty());
    let e = w
        .app
        .set_pool_bios_profile(&admin(), "default", Some("nope"))
        .await
        .unwrap_err();
    assert_eq!(e.code, "unknown_profile");
    w.app
        .set_pool_bios_profile(&admin(), "default", Some("hpc"))
        .await
        .unwrap();
    let e = w
        .app
        .remove_bios_profile(&admin(), "hpc")
        .await
        .unwrap_err();
    assert_eq!(e.code, "profile_in_use");
    assert_eq!(
        w.app.bios_profile(&admin(), "hpc").await.unwrap().pools,
        ["default"]
    );

    let (id, f) = w.with_bios(1).await;
    w.act(id, Verb::Inspect).await.unwrap();
    w.runner.drain().await.unwrap();
    let mac1 = w.app.get_machine(&admin(), id).await.unwrap().nics[0].mac;
    w.app
        .submit_inspection(&admin(), id, uefi_report(id, mac1))
        .await
        .unwrap();
    let ev = w.events_of_kind(id, "inspect_complete").await;
    assert_eq!(
        ev[0].details["jobs"].as_array().unwrap().len(),
        2,
        "power off, then the profile"
    );
    // Ready, but held back from allocations until the profile is read back in effect.
    let one = || AllocationRequest {
        count: Some(1),
        ..Default::default()
    };
    let e = w.app.allocate(&admin(), one()).await.unwrap_err();
    assert_eq!(e.code, "insufficient_capacity", "{e:?}");
    // A second machine of the pool whose BIOS drops one of the profile's attributes.
    let (id2, f2) = w.with_bios(2).await;
    f2.set_bios_drops(Some("SriovGlobalEnable"));
    w.act(id2, Verb::Inspect).await.unwrap();
    w.runner.drain().await.unwrap();
    let mac2 = w.app.get_machine(&admin(), id2).await.unwrap().nics[0].mac;
    w.app
        .submit_inspection(&admin(), id2, uefi_report(id2, mac2))
        .await
        .unwrap();
    w.runner.drain().await.unwrap();
    let jobs2 = w.jobs_of(id2).await;
    let failed = jobs2.iter().rfind(|j| j.kind == "bios_apply").unwrap();
    assert_eq!(failed.state, JobState::Failed, "{failed:?}");
    assert!(
        failed
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("SriovGlobalEnable"),
        "{failed:?}"
    );
    // Only the machine whose profile stuck is allocated; the other stays ready, held.
    let a = w.app.allocate(&admin(), one()).await.unwrap();
    assert_eq!(a.machines.len(), 1);
    assert_eq!(a.machines[0].id, id);
    let e = w.app.allocate(&admin(), one()).await.unwrap_err();
    assert_eq!(e.code, "insufficient_capacity", "{e:?}");
    assert_eq!(
        w.app.get_machine(&admin(), id2).await.unwrap().state,
        MachineState::Ready
    );
    let jobs = w.jobs_of(id).await;
    // (the inventory read of the firmware part runs beside it)
    let apply = jobs.iter().rfind(|j| j.kind == "bios_apply").unwrap();
    assert_eq!(apply.params["profile"], "hpc");
    assert_eq!(apply.state, JobState::Succeeded, "{apply:?}");
    let now = f.bios_now().unwrap();
    assert_eq!(now["ProcTurboMode"], "Disabled");
    assert_eq!(now["SriovGlobalEnable"], "Enabled");
    assert_eq!(f.power_now(), PowerState::Off);
    assert_eq!(
        w.app
            .machine_bios(&admin(), id)
            .await
            .unwrap()
            .profile
            .as_deref(),
        Some("hpc")
    );
    // Cleared, the profile can go.
    w.app
        .set_pool_bios_profile(&admin(), "default", None)
        .await
        .unwrap();
    w.app.remove_bios_profile(&admin(), "hpc").await.unwrap();
    assert!(w.app.bios_profiles(&admin()).await.unwrap().is_empty());
}
