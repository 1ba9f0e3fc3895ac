//! Firmware updates (issue 21) against a real PostgreSQL and the job runner, with in-memory
//! BMCs (`FakeBmc`, whose updates end as a knob says): an update that succeeds (with the
//! reset a BIOS needs), one that fails, one that reports success and keeps the old version,
//! a plinth that dies while it follows the BMC's task, the states that refuse an update, and
//! fleet rollouts (the per-rack cap, the stop at the first failure).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use plinth_bmc::fake::{Call, FakeBmc, UpdateOutcome};
use plinth_bmc::firmware::ComponentKind;
use plinth_bmc::{Bmc, BmcError, BmcTarget, Connector, Identity, PowerAction, PowerState};
use plinth_core::jobs::JobQuery;
use plinth_core::workers::{JobRunner, JobSettings};
use plinth_core::{App, Principal};
use plinth_testkit::{TestDb, mac};
use plinth_types::api::*;
use plinth_types::firmware::*;
use plinth_types::{ErrorKind, MachineState};
use uuid::Uuid;

#[derive(Default)]
struct Fakes(Mutex<HashMap<Uuid, Arc<FakeBmc>>>);

struct FakeConnector(Arc<Fakes>);

impl Connector for FakeConnector {
    fn connect<'a>(&'a self, t: &'a BmcTarget) -> BoxFuture<'a, Result<Arc<dyn Bmc>, BmcError>> {
        Box::pin(async move {
            let bmc = self.0.0.lock().unwrap().get(&t.machine_id).cloned();
            bmc.map(|b| b as Arc<dyn Bmc>)
                .ok_or_else(|| BmcError::Unreachable("no route to host".into()))
        })
    }
}

fn settings() -> JobSettings {
    JobSettings {
        concurrency: 8,
        cluster_concurrency: None,
        call_timeout: Duration::from_secs(2),
        power_wait: Duration::from_millis(300),
        power_poll: Duration::from_millis(10),
        lease: Duration::from_secs(30),
        backoff_base: Duration::ZERO,
        backoff_max: Duration::ZERO,
        idle_poll: Duration::from_millis(50),
        rotate_on_enroll: false,
    }
}

fn admin() -> Principal {
    Principal {
        token_id: None,
        name: "tech-anna".into(),
        role: plinth_types::Role::Admin,
    }
}

struct World {
    app: App,
    fakes: Arc<Fakes>,
    runner: Arc<JobRunner>,
    _root: tempfile::TempDir,
    _db: TestDb,
}

/// An image of the catalog: its file, registered as firmware and described.
async fn firmware_image(
    app: &App,
    root: &std::path::Path,
    name: &str,
    component: &str,
    version: &str,
) {
    std::fs::create_dir_all(root.join("fw")).unwrap();
    let path = format!("fw/{name}.bin");
    std::fs::write(
        root.join(&path),
        format!("firmware {component} {version}\n").repeat(100),
    )
    .unwrap();
    app.register_image(
        &admin(),
        ImageRegister {
            name: name.into(),
            kind: ImageKind::Firmware,
            arch: Some("any".into()),
            path,
            sha256: None,
            firmware: None,
        },
    )
    .await
    .unwrap();
    app.describe_firmware_image(
        &admin(),
        name,
        FirmwareImageDescribe {
            component: component.into(),
            version: version.into(),
        },
    )
    .await
    .unwrap();
}

async fn world() -> World {
    let db = TestDb::new().await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let app = db.app().with_boot(
        plinth_core::boot::BootSettings::with_root(root.path().to_owned()),
        plinth_core::boot::Templates::load(None).unwrap(),
    );
    firmware_image(&app, root.path(), "bios-1.1.0", "bios", "1.1.0").await;
    firmware_image(&app, root.path(), "nic-2.0", "nic", "2.0").await;
    let fakes = Arc::new(Fakes::default());
    let runner = JobRunner::new(
        app.clone(),
        Arc::new(FakeConnector(fakes.clone())),
        settings(),
    );
    World {
        app,
        fakes,
        runner,
        _root: root,
        _db: db,
    }
}

impl World {
    /// Enrolls machine `n` (in `rack` when given), with a fake BMC, in `state`; the
    /// identity check it gets at enrollment is run.
    async fn machine(
        &self,
        n: u32,
        rack: Option<&str>,
        state: MachineState,
    ) -> (Uuid, Arc<FakeBmc>) {
        let m = self
            .app
            .enroll_machine(
                &admin(),
                MachineCreate {
                    hostname: Some(format!("node-{n}")),
                    rack: rack.map(str::to_owned),
                    rack_unit: rack.map(|_| n as i32),
                    size_u: None,
                    pool: None,
                    tags: None,
                    arch: Some(Arch::X86_64),
                    nics: vec![NicSpec {
                        mac: mac(n),
                        ipv4: None,
                        pxe: None,
                    }],
                    bmc: Some(BmcSpec {
                        protocol: BmcProtocol::Redfish,
                        address: format!("10.9.0.{n}"),
                        username: "root".into(),
                        password: "pw".into(),
                        verify_tls: Some(false),
                        plain_http: None,
                    }),
                },
            )
            .await
            .unwrap();
        let f = Arc::new(FakeBmc::new(Identity::default()));
        self.fakes.0.lock().unwrap().insert(m.id, f.clone());
        self.runner.drain().await.unwrap();
        let mut conn = self.app.pool().acquire().await.unwrap();
        plinth_db::machines::force_state(&mut conn, m.id, state, None)
            .await
            .unwrap();
        (m.id, f)
    }

    async fn update(&self, id: Uuid, image: &str) -> Result<Job, plinth_types::Error> {
        self.app
            .request_firmware_update(
                &admin(),
                id,
                FirmwareUpdateRequest {
                    image: image.into(),
                    method: None,
                },
            )
            .await
    }

    async fn job(&self, id: Uuid) -> Job {
        self.app.job(&admin(), id).await.unwrap()
    }

    async fn kinds(&self, id: Uuid) -> Vec<String> {
        self.app
            .events(&admin(), Some(id), Default::default())
            .await
            .unwrap()
            .events
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }
}

#[tokio::test]
async fn a_bios_update_is_pushed_followed_reset_and_read_back() {
    let w = world().await;
    let (id, bmc) = w.machine(1, None, MachineState::Ready).await;
    let job = w.update(id, "bios-1.1.0").await.unwrap();
    assert_eq!(job.kind, "firmware_update");
    assert_eq!(job.state, JobState::Queued);
    w.runner.drain().await.unwrap();
    let job = w.job(job.id).await;
    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    let r = job.result.unwrap();
    assert_eq!(r["before"], "1.0.0");
    assert_eq!(r["after"], "1.1.0");
    assert_eq!(
        r["method"], "multipart_push",
        "no public_url: plinth pushes the image"
    );
    assert_eq!(r["rebooted"], true, "a BIOS is always reset to activate");
    assert_eq!(
        bmc.firmware_version(ComponentKind::Bios).as_deref(),
        Some("1.1.0")
    );
    // The machine was off: powered on to activate the image, and off again.
    let calls = bmc.calls();
    let power: Vec<_> = calls
        .iter()
        .filter(|c| matches!(c, Call::Power(_)))
        .collect();
    assert_eq!(
        power,
        vec![
            &Call::Power(PowerAction::On),
            &Call::Power(PowerAction::Off { force: true })
        ]
    );
    assert_eq!(bmc.power_now(), PowerState::Off);
    // The pushed image is the catalog's file.
    assert_eq!(
        bmc.update_pushes(),
        vec![format!("push:{}", "firmware bios 1.1.0\n".len() * 100)]
    );
    // The inventory read back is stored with the machine.
    let inv = w.app.machine_firmware(&admin(), id).await.unwrap();
    assert!(inv.read_at.is_some());
    let bios = inv.items.iter().find(|i| i.kind == "bios").unwrap();
    assert_eq!(bios.version.as_deref(), Some("1.1.0"));
    let kinds = w.kinds(id).await;
    for k in [
        "firmware_update_queued",
        "firmware_update_started",
        "firmware_update_progress",
        "firmware_update_reset",
        "bmc_job_succeeded",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }

    // The machine list and the machine table filter on a component's version.
    let (other, _) = w.machine(2, None, MachineState::Ready).await;
    w.app.request_firmware_read(&admin(), other).await.unwrap();
    w.runner.drain().await.unwrap();
    for (filter, want) in [
        ("bios:1.1.0", vec![id]),
        ("bios:1.0.0", vec![other]),
        ("nic:1.0.0", {
            let mut v = vec![id, other];
            v.sort();
            v
        }),
        ("drive:9", vec![]),
    ] {
        let mut got: Vec<Uuid> = w
            .app
            .list_machines(
                &admin(),
                plinth_core::machines::MachineQuery {
                    firmware: Some(filter.into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .machines
            .into_iter()
            .map(|m| m.id)
            .collect();
        got.sort();
        assert_eq!(got, want, "{filter}");
        let (rows, total) = w
            .app
            .machine_table(
                &admin(),
                plinth_core::inventory::TableQuery {
                    firmware: Some(plinth_core::firmware::parse_filter(filter).unwrap()),
                    limit: 50,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut got: Vec<Uuid> = rows.into_iter().map(|r| r.id).collect();
        got.sort();
        assert_eq!((got, total), (want.clone(), want.len() as i64), "{filter}");
    }
    let e = w
        .app
        .list_machines(
            &admin(),
            plinth_core::machines::MachineQuery {
                firmware: Some("bios".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "invalid_firmware_filter");

    // The same image again: nothing is pushed, the job says so.
    let again = w.update(id, "bios-1.1.0").await.unwrap();
    w.runner.drain().await.unwrap();
    let again = w.job(again.id).await;
    assert_eq!(again.state, JobState::Succeeded);
    assert_eq!(again.result.unwrap()["already_installed"], true);
    assert_eq!(bmc.update_pushes().len(), 1);
}

#[tokio::test]
async fn a_nic_update_needs_no_reset_unless_the_task_says_so() {
    let w = world().await;
    let (id, bmc) = w.machine(1, None, MachineState::Ready).await;
    bmc.set_update_installs("2.0");
    let job = w.update(id, "nic-2.0").await.unwrap();
    w.runner.drain().await.unwrap();
    let job = w.job(job.id).await;
    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    assert_eq!(job.result.unwrap()["rebooted"], false);
    assert!(!bmc.calls().iter().any(|c| matches!(c, Call::Power(_))));
    assert_eq!(
        bmc.firmware_version(ComponentKind::Nic).as_deref(),
        Some("2.0")
    );

    // A task that asks for a reset gets one; the version changes only then.
    bmc.set_update_installs("2.1");
    bmc.set_update_outcome(UpdateOutcome::NeedsReboot);
    let mut conn = w.app.pool().acquire().await.unwrap();
    plinth_db::firmware::describe_image(
        &mut conn,
        w_image_id(&w, "nic-2.0").await,
        "nic",
        "2.1",
        "t",
    )
    .await
    .unwrap();
    drop(conn);
    let job = w.update(id, "nic-2.0").await.unwrap();
    w.runner.drain().await.unwrap();
    let job = w.job(job.id).await;
    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    assert_eq!(job.result.unwrap()["rebooted"], true);
    assert_eq!(
        bmc.firmware_version(ComponentKind::Nic).as_deref(),
        Some("2.1")
    );
}

async fn w_image_id(w: &World, name: &str) -> Uuid {
    w.app.get_image(&admin(), name).await.unwrap().id
}

#[tokio::test]
async fn a_failed_task_and_a_success_that_keeps_the_old_version_fail_the_job() {
    let w = world().await;
    let (id, bmc) = w.machine(1, None, MachineState::Ready).await;
    bmc.set_update_outcome(UpdateOutcome::Fails);
    let job = w.update(id, "bios-1.1.0").await.unwrap();
    w.runner.drain().await.unwrap();
    let job = w.job(job.id).await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 1, "a failed task is final");
    let err = job.last_error.unwrap();
    assert!(
        err.contains("Exception") && err.contains("Image verification failed."),
        "{err}"
    );

    bmc.set_update_outcome(UpdateOutcome::KeepsOldVersion);
    let job = w.update(id, "bios-1.1.0").await.unwrap();
    w.runner.drain().await.unwrap();
    let job = w.job(job.id).await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(
        job.last_error.as_deref(),
        Some("BMC reported success but BIOS still reads 1.0.0 (expected 1.1.0)")
    );
    assert!(w.kinds(id).await.iter().any(|k| k == "bmc_job_failed"));
    // The inventory stored is what the BMC reads, not what it claimed.
    let inv = w.app.machine_firmware(&admin(), id).await.unwrap();
    let bios = inv.items.iter().find(|i| i.kind == "bios").unwrap();
    assert_eq!(bios.version.as_deref(), Some("1.0.0"));
}

#[tokio::test]
async fn a_plinth_that_dies_while_following_the_task_resumes_it_without_pushing_again() {
    let w = world().await;
    let (id, bmc) = w.machine(1, None, MachineState::Ready).await;
    bmc.set_delay(Duration::from_millis(100));
    bmc.set_update_installs("2.0");
    let job = w.update(id, "nic-2.0").await.unwrap();
    // The worker runs until the BMC's task is recorded, then plinth dies.
    let runner = w.runner.clone();
    let run = tokio::spawn(async move { runner.run_once().await });
    let mut waited = 0;
    loop {
        let j = w.job(job.id).await;
        if j.result.as_ref().is_some_and(|r| r.get("task").is_some()) {
            break;
        }
        waited += 1;
        assert!(waited < 200, "the task was never recorded: {j:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.abort();
    let _ = run.await;
    assert_eq!(bmc.update_pushes().len(), 1);
    // Its lease runs out; another worker takes the job again.
    sqlx::query("update jobs set lease_until = now() - interval '1 second' where id = $1")
        .bind(job.id)
        .execute(w.app.pool())
        .await
        .unwrap();
    assert_eq!(w.runner.requeue_stale(false).await.unwrap(), 1);
    bmc.set_delay(Duration::ZERO);
    w.runner.drain().await.unwrap();
    let j = w.job(job.id).await;
    assert_eq!(j.state, JobState::Succeeded, "{:?}", j.last_error);
    assert_eq!(j.attempts, 2);
    assert_eq!(
        bmc.update_pushes().len(),
        1,
        "the image was not pushed again"
    );
    assert_eq!(j.result.unwrap()["pushes"], 1);
    assert_eq!(
        bmc.firmware_version(ComponentKind::Nic).as_deref(),
        Some("2.0")
    );
}

#[tokio::test]
async fn updates_are_refused_outside_ready_and_maintenance_and_bad_requests_are_clear() {
    let w = world().await;
    let (id, _) = w.machine(1, None, MachineState::InspectFailed).await;
    let e = w.update(id, "bios-1.1.0").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert_eq!(e.code, "firmware_not_allowed");
    assert!(
        e.message.contains("inspect_failed") && e.message.contains("maintenance"),
        "{}",
        e.message
    );
    // In maintenance: allowed.
    w.app
        .set_maintenance(&admin(), id, true, Some("firmware".into()), None)
        .await
        .unwrap();
    assert!(w.update(id, "bios-1.1.0").await.is_ok());

    let (r, _) = w.machine(2, None, MachineState::Ready).await;
    let e = w.update(r, "no-such-image").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    // An image that is not firmware, and one that does not say what it installs.
    std::fs::write(w._root.path().join("k"), b"kernel").unwrap();
    w.app
        .register_image(
            &admin(),
            ImageRegister {
                name: "kernel".into(),
                kind: ImageKind::Kernel,
                arch: None,
                path: "k".into(),
                sha256: None,
                firmware: None,
            },
        )
        .await
        .unwrap();
    let e = w.update(r, "kernel").await.unwrap_err();
    assert_eq!(e.code, "not_firmware");
    std::fs::write(w._root.path().join("fw/x.bin"), b"x").unwrap();
    w.app
        .register_image(
            &admin(),
            ImageRegister {
                name: "x".into(),
                kind: ImageKind::Firmware,
                arch: Some("any".into()),
                path: "fw/x.bin".into(),
                sha256: None,
                firmware: None,
            },
        )
        .await
        .unwrap();
    let e = w.update(r, "x").await.unwrap_err();
    assert_eq!(e.code, "firmware_undescribed");
    for (c, v, code) in [
        ("cpu", "1.0", "invalid_component"),
        ("bios", "1.0 beta", "invalid_version"),
        ("bios", "", "invalid_version"),
    ] {
        let e = w
            .app
            .describe_firmware_image(
                &admin(),
                "x",
                FirmwareImageDescribe {
                    component: c.into(),
                    version: v.into(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, code);
    }
    let e = w
        .app
        .describe_firmware_image(
            &admin(),
            "kernel",
            FirmwareImageDescribe {
                component: "bios".into(),
                version: "1".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "not_firmware");
    // Nothing was queued by the refusals.
    let jobs = w
        .app
        .jobs(
            &admin(),
            JobQuery {
                machine: Some(r),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .jobs;
    assert!(jobs.iter().all(|j| j.kind != "firmware_update"));
}

async fn rack(w: &World, name: &str) {
    w.app
        .create_rack(
            &admin(),
            RackCreate {
                name: name.into(),
                site: None,
                room: None,
                row: None,
                height_u: 42,
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_rollout_keeps_its_per_rack_cap_and_finishes() {
    let w = world().await;
    rack(&w, "r1").await;
    rack(&w, "r2").await;
    let mut ids = Vec::new();
    for n in 1..=4 {
        let (id, bmc) = w
            .machine(
                n,
                Some(if n < 4 { "r1" } else { "r2" }),
                MachineState::Ready,
            )
            .await;
        bmc.set_update_installs("2.0");
        ids.push(id);
    }
    let r = w
        .app
        .create_rollout(
            &admin(),
            RolloutRequest {
                image: "nic-2.0".into(),
                rack: None,
                machines: Some(ids.clone()),
                pool: None,
                max_per_rack: Some(1),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.state, "running");
    assert!(r.machines.iter().all(|m| m.state == "pending"));
    // One per rack at a time: r1's first machine and r2's.
    assert_eq!(w.app.rollout_pass().await.unwrap(), 2);
    assert_eq!(w.app.rollout_pass().await.unwrap(), 0, "the cap holds");
    let now = w.app.rollout(&admin(), r.id).await.unwrap();
    let states: Vec<&str> = now.machines.iter().map(|m| m.state.as_str()).collect();
    assert_eq!(states, ["running", "pending", "pending", "running"]);
    let mut rounds = 0;
    loop {
        w.runner.drain().await.unwrap();
        w.app.rollout_pass().await.unwrap();
        let now = w.app.rollout(&admin(), r.id).await.unwrap();
        let running = |rack: usize| {
            now.machines
                .iter()
                .filter(|m| m.state == "running" && (rack == 1) == (m.machine_id != ids[3]))
                .count()
        };
        assert!(running(1) <= 1 && running(2) <= 1, "{now:?}");
        if now.state != "running" {
            assert_eq!(now.state, "succeeded", "{now:?}");
            assert!(now.machines.iter().all(|m| m.state == "succeeded"));
            break;
        }
        rounds += 1;
        assert!(rounds < 10, "{now:?}");
    }
    for id in &ids {
        let inv = w.app.machine_firmware(&admin(), *id).await.unwrap();
        let nic = inv.items.iter().find(|i| i.kind == "nic").unwrap();
        assert_eq!(nic.version.as_deref(), Some("2.0"));
    }
}

#[tokio::test]
async fn a_rollout_stops_at_the_first_failure() {
    let w = world().await;
    rack(&w, "r1").await;
    let mut bmcs = Vec::new();
    for n in 1..=4 {
        bmcs.push(w.machine(n, Some("r1"), MachineState::Ready).await.1);
    }
    bmcs[1].set_update_outcome(UpdateOutcome::KeepsOldVersion);
    let r = w
        .app
        .create_rollout(
            &admin(),
            RolloutRequest {
                image: "bios-1.1.0".into(),
                rack: Some("r1".into()),
                max_per_rack: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.machines.len(), 4);
    assert_eq!(w.app.rollout_pass().await.unwrap(), 2);
    w.runner.drain().await.unwrap();
    let n = w.app.rollout_pass().await.unwrap();
    let now = w.app.rollout(&admin(), r.id).await.unwrap();
    assert_eq!(n, 0, "nothing new after a failure: {now:?}");
    assert_eq!(now.state, "failed");
    assert!(now.reason.as_deref().unwrap().contains("node-2"), "{now:?}");
    assert!(
        now.reason.as_deref().unwrap().contains("still reads 1.0.0"),
        "{now:?}"
    );
    let states: Vec<&str> = now.machines.iter().map(|m| m.state.as_str()).collect();
    assert_eq!(states, ["succeeded", "failed", "skipped", "skipped"]);
    assert!(bmcs[2].update_pushes().is_empty() && bmcs[3].update_pushes().is_empty());
    // Rollouts are validated.
    for req in [
        RolloutRequest {
            image: "bios-1.1.0".into(),
            ..Default::default()
        },
        RolloutRequest {
            image: "bios-1.1.0".into(),
            rack: Some("r1".into()),
            pool: Some("default".into()),
            ..Default::default()
        },
        RolloutRequest {
            image: "bios-1.1.0".into(),
            rack: Some("r1".into()),
            max_per_rack: Some(0),
            ..Default::default()
        },
    ] {
        let e = w.app.create_rollout(&admin(), req).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
    }
    let e = w
        .app
        .create_rollout(
            &admin(),
            RolloutRequest {
                image: "bios-1.1.0".into(),
                rack: Some("nope".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn an_inspection_reads_the_firmware_inventory_after_its_report() {
    let w = world().await;
    let (id, bmc) = w.machine(1, None, MachineState::Inspecting).await;
    let report = InspectionReport {
        cpu: CpuFacts {
            model: "Xeon".into(),
            cores: 4,
            threads: 8,
        },
        memory_mib: 8192,
        disks: vec![],
        nics: vec![NicFacts {
            name: "eno1".into(),
            mac: mac(1),
            speed_mbps: None,
            link: None,
        }],
        system: SystemFacts {
            vendor: "Acme".into(),
            product: "R640".into(),
            serial: "SN".into(),
            uuid: id.to_string(),
        },
        firmware: Firmware::Uefi,
        arch: Arch::X86_64,
    };
    w.app.submit_inspection(&admin(), id, report).await.unwrap();
    assert!(
        w.app
            .machine_firmware(&admin(), id)
            .await
            .unwrap()
            .read_at
            .is_none(),
        "read after the report's transaction, not in it"
    );
    assert!(!bmc.calls().contains(&Call::FirmwareInventory));
    w.runner.drain().await.unwrap();
    assert!(bmc.calls().contains(&Call::FirmwareInventory));
    let inv = w.app.machine_firmware(&admin(), id).await.unwrap();
    let kinds: Vec<&str> = inv.items.iter().map(|i| i.kind.as_str()).collect();
    assert_eq!(kinds, ["bmc", "bios", "nic", "drive"]);
}
