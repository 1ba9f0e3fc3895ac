//! BMC jobs and the power sync against a real PostgreSQL, with in-memory BMCs
//! ([`plinth_bmc::fake::FakeBmc`]) behind a connector that also checks the decrypted password.
//! The drivers themselves are tested against real emulators in plinth-bmc and in the API tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use plinth_bmc::fake::{Call, FakeBmc};
use plinth_bmc::{
    Bmc, BmcError, BmcTarget, BootDevice, Connector, Identity, PowerAction, PowerState,
};
use plinth_core::jobs::JobQuery;
use plinth_core::lifecycle::Action;
use plinth_core::workers::{JobRunner, JobSettings, PowerSync, SyncSettings};
use plinth_core::{App, Principal};
use plinth_testkit::{TestDb, mac};
use plinth_types::api::*;
use plinth_types::{ErrorKind, MachineState, Verb};
use uuid::Uuid;

const PASSWORD: &str = "calvin-Secr3t!";

/// The BMCs of the test, by machine; refuses any password but [`PASSWORD`].
#[derive(Default)]
struct Fakes {
    bmcs: Mutex<HashMap<Uuid, Arc<FakeBmc>>>,
    connects: Mutex<u32>,
}

impl Fakes {
    fn add(&self, id: Uuid) -> Arc<FakeBmc> {
        let f = Arc::new(FakeBmc::new(Identity {
            manufacturer: Some("Acme".into()),
            model: Some("R640".into()),
            serial: Some(format!("SN-{}", &id.to_string()[..8])),
            uuid: Some(id),
            macs: vec![],
        }));
        self.bmcs.lock().unwrap().insert(id, f.clone());
        f
    }
}

struct FakeConnector(Arc<Fakes>);

impl Connector for FakeConnector {
    fn connect<'a>(&'a self, t: &'a BmcTarget) -> BoxFuture<'a, Result<Arc<dyn Bmc>, BmcError>> {
        Box::pin(async move {
            *self.0.connects.lock().unwrap() += 1;
            if t.password != PASSWORD {
                return Err(BmcError::Auth);
            }
            let bmc = self.0.bmcs.lock().unwrap().get(&t.machine_id).cloned();
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
        power_wait: Duration::from_secs(2),
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
    _db: TestDb,
}

async fn world(s: JobSettings) -> World {
    world_with(s, |app| app).await
}

/// [`world`] with the app adjusted (boot settings, say).
async fn world_with(s: JobSettings, f: impl FnOnce(App) -> App) -> World {
    let db = TestDb::new().await.unwrap();
    let app = f(db.app());
    let fakes = Arc::new(Fakes::default());
    let runner = JobRunner::new(app.clone(), Arc::new(FakeConnector(fakes.clone())), s);
    World {
        app,
        fakes,
        runner,
        _db: db,
    }
}

/// An inspection report of a UEFI machine with one NIC.
fn uefi_report(id: Uuid, mac: plinth_types::MacAddr) -> InspectionReport {
    InspectionReport {
        cpu: CpuFacts {
            model: "Xeon".into(),
            cores: 4,
            threads: 8,
        },
        memory_mib: 8192,
        disks: vec![],
        nics: vec![NicFacts {
            name: "eno1".into(),
            mac,
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
    }
}

impl World {
    /// Applies a lifecycle verb as the technician.
    async fn act(&self, id: Uuid, verb: Verb) -> Result<Machine, plinth_types::Error> {
        self.app
            .act(
                &admin(),
                id,
                Action {
                    verb,
                    expected_version: None,
                    reason: None,
                },
            )
            .await
    }

    /// Enrolls machine `n` with a BMC (the right password unless `password` says otherwise)
    /// and gives it a fake BMC.
    async fn enroll(&self, n: u32, password: &str) -> (Uuid, Arc<FakeBmc>) {
        let m = self
            .app
            .enroll_machine(
                &admin(),
                MachineCreate {
                    hostname: Some(format!("node-{n}")),
                    rack: None,
                    rack_unit: None,
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
                        password: password.into(),
                        verify_tls: Some(false),
                        plain_http: None,
                    }),
                },
            )
            .await
            .unwrap();
        (m.id, self.fakes.add(m.id))
    }

    async fn jobs_of(&self, id: Uuid) -> Vec<Job> {
        let mut jobs = self
            .app
            .jobs(
                &admin(),
                JobQuery {
                    machine: Some(id),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .jobs;
        jobs.reverse(); // oldest first
        jobs
    }

    async fn event_kinds(&self, id: Uuid) -> Vec<String> {
        self.app
            .events(&admin(), Some(id), Default::default())
            .await
            .unwrap()
            .events
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    async fn events_of_kind(&self, id: Uuid, kind: &str) -> Vec<Event> {
        self.app
            .events(&admin(), Some(id), Default::default())
            .await
            .unwrap()
            .events
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    }
}

#[tokio::test]
async fn enrollment_checks_the_bmc_and_reads_its_identity() {
    let w = world(settings()).await;
    let (id, fake) = w.enroll(1, PASSWORD).await;
    let jobs = w.jobs_of(id).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].kind, "identify");
    assert_eq!(jobs[0].state, JobState::Queued);
    assert_eq!(jobs[0].requested_by, "tech-anna");

    assert_eq!(w.runner.drain().await.unwrap(), 1);
    let job = w.app.job(&admin(), jobs[0].id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.attempts, 1);
    assert!(fake.calls().contains(&Call::Identity));

    let m = w.app.get_machine(&admin(), id).await.unwrap();
    let bmc = m.bmc.unwrap();
    let identity = bmc.identity.expect("identity stored");
    assert_eq!(identity["serial"], format!("SN-{}", &id.to_string()[..8]));
    assert_eq!(identity["model"], "R640");
    assert_eq!(identity["uuid"], id.to_string());
    assert_eq!(bmc.power_state.as_deref(), Some("off"));
    assert_eq!(bmc.reachable, Some(true));
    assert!(
        w.event_kinds(id)
            .await
            .contains(&"bmc_job_succeeded".to_string())
    );
    // The serial on the sticker finds the machine before any inspection.
    let found = w
        .app
        .list_machines(
            &admin(),
            plinth_core::machines::MachineQuery {
                q: Some(format!("SN-{}", &id.to_string()[..8])),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .machines;
    assert_eq!(found.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id]);
}

#[tokio::test]
async fn no_transaction_stays_open_while_a_bmc_is_called() {
    let w = world(settings()).await;
    let (a, fa) = w.enroll(1, PASSWORD).await;
    fa.set_delay(Duration::from_millis(1500));
    let runner = w.runner.clone();
    let run = tokio::spawn(async move { runner.run_once().await });
    // Wait until the job is in its BMC call, then look at every session of the database.
    for _ in 0..100 {
        if !fa.calls().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fa.calls(), vec![Call::Identity]);
    assert_eq!(w.jobs_of(a).await[0].state, JobState::Running);
    let open: Vec<(String, Option<String>)> = sqlx::query_as(
        "select state, query from pg_stat_activity
         where datname = current_database() and pid <> pg_backend_pid()
           and state like 'idle in transaction%'",
    )
    .fetch_all(w.app.pool())
    .await
    .unwrap();
    assert!(
        open.is_empty(),
        "transactions open during a BMC call: {open:?}"
    );
    assert_eq!(run.await.unwrap().unwrap(), 1);
    assert_eq!(w.jobs_of(a).await[0].state, JobState::Succeeded);
}

#[tokio::test]
async fn wrong_credentials_and_unreachable_bmcs_are_clear_events() {
    let w = world(settings()).await;
    let (wrong, _) = w.enroll(1, "not-the-password").await;
    let (gone, _) = w.enroll(2, PASSWORD).await;
    w.fakes.bmcs.lock().unwrap().remove(&gone); // no BMC answers at its address
    w.runner.drain().await.unwrap();

    // Wrong credentials are final at once: retrying would only lock the account.
    let job = &w.jobs_of(wrong).await[0];
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 1);
    assert_eq!(
        job.last_error.as_deref(),
        Some("the BMC refused the credentials")
    );
    let ev = w.events_of_kind(wrong, "bmc_auth_failed").await;
    assert_eq!(ev.len(), 1, "{:?}", w.event_kinds(wrong).await);
    assert_eq!(ev[0].details["error_kind"], "auth");

    // Unreachable is transient: retried up to the identify limit, then a clear event.
    let job = &w.jobs_of(gone).await[0];
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, plinth_core::jobs::IDENTIFY_ATTEMPTS);
    assert!(
        job.last_error
            .as_deref()
            .unwrap()
            .contains("cannot be reached"),
        "{job:?}"
    );
    assert_eq!(w.events_of_kind(gone, "bmc_unreachable").await.len(), 1);
}

#[tokio::test]
async fn power_and_boot_device_requests_run_in_order_one_per_bmc() {
    let w = world(settings()).await;
    let (a, fa) = w.enroll(1, PASSWORD).await;
    let (b, fb) = w.enroll(2, PASSWORD).await;
    w.runner.drain().await.unwrap();

    let boot = w
        .app
        .request_boot_device(
            &admin(),
            a,
            BootDeviceRequest {
                device: BootTarget::Pxe,
                persistent: None,
                mode: Some(FirmwareMode::Uefi),
            },
        )
        .await
        .unwrap();
    assert_eq!(boot.state, JobState::Queued);
    assert_eq!(boot.kind, "boot_device");
    let on = w
        .app
        .request_power(
            &admin(),
            a,
            PowerRequest {
                action: PowerOp::On,
                force: None,
            },
        )
        .await
        .unwrap();
    let off = w
        .app
        .request_power(
            &admin(),
            a,
            PowerRequest {
                action: PowerOp::Off,
                force: Some(true),
            },
        )
        .await
        .unwrap();
    w.app
        .request_power(
            &admin(),
            b,
            PowerRequest {
                action: PowerOp::Cycle,
                force: None,
            },
        )
        .await
        .unwrap();

    // One pass runs one job per machine (a's oldest, and b's), however many slots are free.
    assert_eq!(w.runner.run_once().await.unwrap(), 2);
    assert_eq!(
        w.app.job(&admin(), boot.id).await.unwrap().state,
        JobState::Succeeded
    );
    assert_eq!(
        w.app.job(&admin(), on.id).await.unwrap().state,
        JobState::Queued
    );
    assert_eq!(w.runner.run_once().await.unwrap(), 1);
    assert_eq!(w.runner.run_once().await.unwrap(), 1);
    assert_eq!(w.runner.run_once().await.unwrap(), 0);
    for j in [boot.id, on.id, off.id] {
        assert_eq!(
            w.app.job(&admin(), j).await.unwrap().state,
            JobState::Succeeded
        );
    }
    // The override was set before the machine started, and the start used it up.
    let calls: Vec<Call> = fa
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::SetBoot { .. } | Call::Power(_)))
        .collect();
    assert_eq!(
        calls,
        vec![
            Call::SetBoot {
                device: BootDevice::Pxe,
                persistent: false,
                mode: Some(plinth_bmc::BootMode::Uefi)
            },
            Call::Power(PowerAction::On),
            Call::Power(PowerAction::Off { force: true }),
        ]
    );
    assert_eq!(fa.boots(), 1);
    assert_eq!(fa.power_now(), PowerState::Off);
    // A cycle of a machine that is off starts it.
    assert!(fb.calls().contains(&Call::Power(PowerAction::On)));
    assert_eq!(fb.power_now(), PowerState::On);
    let on = w.app.job(&admin(), on.id).await.unwrap();
    assert_eq!(on.result.as_ref().unwrap()["after"], "on");
    assert_eq!(
        w.app
            .get_machine(&admin(), a)
            .await
            .unwrap()
            .bmc
            .unwrap()
            .power_state
            .as_deref(),
        Some("off")
    );
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_queued() {
    let w = world(settings()).await;
    let (a, _) = w.enroll(1, PASSWORD).await;
    let err = w
        .app
        .request_power(
            &admin(),
            a,
            PowerRequest {
                action: PowerOp::On,
                force: Some(true),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "force_needs_off");
    let err = w
        .app
        .request_power(
            &admin(),
            Uuid::new_v4(),
            PowerRequest {
                action: PowerOp::On,
                force: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    // A machine without a BMC.
    w.app
        .update_machine(
            &admin(),
            a,
            MachinePatch {
                bmc: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let err = w
        .app
        .request_power(
            &admin(),
            a,
            PowerRequest {
                action: PowerOp::On,
                force: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!((err.kind, err.code), (ErrorKind::Conflict, "no_bmc"));
    // A viewer may look but not touch.
    let viewer = Principal {
        token_id: None,
        name: "v".into(),
        role: plinth_types::Role::Viewer,
    };
    let err = w
        .app
        .request_power(
            &viewer,
            a,
            PowerRequest {
                action: PowerOp::On,
                force: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Forbidden);
    assert_eq!(w.jobs_of(a).await.len(), 1, "only the enrollment check");
}

#[tokio::test]
async fn transient_failures_are_retried_and_final_ones_are_not() {
    let w = world(settings()).await;
    let (a, fa) = w.enroll(1, PASSWORD).await;
    w.runner.drain().await.unwrap();
    fa.fail_next([BmcError::Busy("503: try later".into()), BmcError::Timeout]);
    let job = w
        .app
        .request_power(
            &admin(),
            a,
            PowerRequest {
                action: PowerOp::On,
                force: None,
            },
        )
        .await
        .unwrap();
    w.runner.drain().await.unwrap();
    let job = w.app.job(&admin(), job.id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.attempts, 3);
    assert_eq!(fa.power_now(), PowerState::On);

    fa.fail_next([BmcError::Rejected("PropertyValueNotInList: Cdrom".into())]);
    let job = w
        .app
        .request_boot_device(
            &admin(),
            a,
            BootDeviceRequest {
                device: BootTarget::Cdrom,
                persistent: Some(true),
                mode: None,
            },
        )
        .await
        .unwrap();
    w.runner.drain().await.unwrap();
    let job = w.app.job(&admin(), job.id).await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 1);
    assert!(job.last_error.unwrap().contains("PropertyValueNotInList"));
}

#[tokio::test]
async fn lifecycle_verbs_queue_their_bmc_work_and_a_failure_stops_the_chain() {
    let w = world(settings()).await;
    let (a, fa) = w.enroll(1, PASSWORD).await;
    let (b, fb) = w.enroll(2, PASSWORD).await;
    w.runner.drain().await.unwrap();
    w.act(a, Verb::Inspect).await.unwrap();
    // b's BMC answers 200 to the boot override and keeps the old one.
    fb.set_reverts_boot(true);
    w.act(b, Verb::Inspect).await.unwrap();
    let ev = w.events_of_kind(a, "inspect").await;
    assert_eq!(ev[0].details["jobs"].as_array().unwrap().len(), 2);

    w.runner.drain().await.unwrap();
    let ja = w.jobs_of(a).await;
    assert_eq!(
        ja.iter()
            .map(|j| (j.kind.as_str(), j.state))
            .collect::<Vec<_>>(),
        vec![
            ("identify", JobState::Succeeded),
            ("boot_device", JobState::Succeeded),
            ("power", JobState::Succeeded)
        ]
    );
    assert_eq!(ja[1].chain, ja[2].chain);
    assert!(ja[1].chain.is_some());
    assert_eq!(fa.boots(), 1, "powered on once, into PXE");
    assert!(fa.calls().contains(&Call::SetBoot {
        device: BootDevice::Pxe,
        persistent: false,
        mode: None
    }));

    // The reverted override was retried, then failed; the power job never ran.
    let jb = w.jobs_of(b).await;
    assert_eq!(jb[1].state, JobState::Failed);
    assert_eq!(jb[1].attempts, plinth_core::jobs::MAX_ATTEMPTS);
    assert!(
        jb[1]
            .last_error
            .as_deref()
            .unwrap()
            .contains("accepted the boot override")
    );
    assert_eq!(jb[2].state, JobState::Cancelled);
    assert!(jb[2].last_error.as_deref().unwrap().starts_with("not run"));
    assert_eq!(fb.boots(), 0);
    assert!(!fb.calls().iter().any(|c| matches!(c, Call::Power(_))));

    // Facts say UEFI: the next override asks for UEFI. Decommission powers off.
    let mac_a = w.app.get_machine(&admin(), a).await.unwrap().nics[0].mac;
    w.app
        .submit_inspection(&admin(), a, uefi_report(a, mac_a))
        .await
        .unwrap();
    w.act(a, Verb::Inspect).await.unwrap();
    w.runner.drain().await.unwrap();
    assert_eq!(
        fa.calls()
            .iter()
            .filter(|c| matches!(
                c,
                Call::SetBoot {
                    mode: Some(plinth_bmc::BootMode::Uefi),
                    ..
                }
            ))
            .count(),
        1
    );
    assert_eq!(fa.boots(), 2, "the running machine was cycled");
    w.act(a, Verb::Decommission).await.unwrap_err(); // inspecting cannot be decommissioned
    let m = w.app.get_machine(&admin(), a).await.unwrap();
    assert_eq!(m.state, MachineState::Inspecting);
    let mac_a = m.nics[0].mac;
    w.app
        .submit_inspection(&admin(), a, uefi_report(a, mac_a))
        .await
        .unwrap();
    w.act(a, Verb::Decommission).await.unwrap();
    w.runner.drain().await.unwrap();
    // The inspection report powered it off (forced: the ramdisk holds nothing), the job waiting
    // for the power state to read off; decommission then booted it into the clean ramdisk.
    let calls = fa.calls();
    let off = calls
        .iter()
        .position(|c| *c == Call::Power(PowerAction::Off { force: true }))
        .expect("powered off after the report");
    assert_eq!(calls[off + 1], Call::PowerState);
    assert!(calls[off + 1..].iter().any(|c| matches!(
        c,
        Call::SetBoot {
            device: BootDevice::Pxe,
            ..
        }
    )));
    assert_eq!(fa.power_now(), PowerState::On);
}

#[tokio::test]
async fn a_job_whose_worker_died_is_run_again() {
    let w = world(settings()).await;
    let (a, fa) = w.enroll(1, PASSWORD).await;
    // A worker claims the check and dies before recording anything.
    let mut conn = w.app.pool().acquire().await.unwrap();
    let claimed = plinth_db::jobs::claim(&mut conn, "dead-worker", 10, 0.05)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // While it holds the job, nobody else runs a job on that BMC.
    assert_eq!(w.runner.run_once().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(w.runner.requeue_stale(false).await.unwrap(), 1);
    let job = &w.jobs_of(a).await[0];
    assert_eq!(job.state, JobState::Queued);
    assert!(job.last_error.as_deref().unwrap().contains("dead-worker"));
    assert_eq!(w.runner.drain().await.unwrap(), 1);
    let job = &w.jobs_of(a).await[0];
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.attempts, 2);
    assert!(fa.calls().contains(&Call::Identity));
    // The dead worker's late answer is not recorded over the newer attempt.
    assert!(
        !plinth_db::jobs::succeed(
            &mut conn,
            plinth_types::JobId(job.id),
            1,
            &serde_json::json!({})
        )
        .await
        .unwrap()
    );
}

#[tokio::test]
async fn a_bmc_that_never_answers_delays_no_other_machine() {
    let mut s = settings();
    s.call_timeout = Duration::from_millis(300);
    let w = world(s).await;
    let mut machines = Vec::new();
    for n in 1..=12 {
        machines.push(w.enroll(n, PASSWORD).await);
    }
    w.runner.drain().await.unwrap();
    let (stuck, fs) = &machines[0];
    fs.set_delay(Duration::from_secs(3600));
    for (id, _) in &machines {
        w.app
            .request_power(
                &admin(),
                *id,
                PowerRequest {
                    action: PowerOp::On,
                    force: None,
                },
            )
            .await
            .unwrap();
    }
    // The first pass takes the oldest eight (the stuck one among them): seven finish and the
    // stuck one gives up after one call timeout; nothing waits for it.
    assert_eq!(w.runner.run_once().await.unwrap(), 8);
    let job = w.jobs_of(*stuck).await.pop().unwrap();
    assert_eq!(job.state, JobState::Queued, "a timeout is retried");
    assert!(job.last_error.unwrap().contains("no answer within"));
    w.runner.drain().await.unwrap();
    for (id, f) in &machines[1..] {
        assert_eq!(f.power_now(), PowerState::On, "{id}");
    }
    let job = w.jobs_of(*stuck).await.pop().unwrap();
    assert_eq!(
        (job.state, job.attempts),
        (JobState::Failed, plinth_core::jobs::MAX_ATTEMPTS)
    );
    assert_eq!(w.events_of_kind(*stuck, "bmc_unreachable").await.len(), 1);
}

#[tokio::test]
async fn jobs_survive_a_runner_that_stops() {
    let w = world(settings()).await;
    let (a, fa) = w.enroll(1, PASSWORD).await;
    w.runner.drain().await.unwrap();
    fa.set_delay(Duration::from_secs(3600));
    let job = w
        .app
        .request_power(
            &admin(),
            a,
            PowerRequest {
                action: PowerOp::On,
                force: None,
            },
        )
        .await
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(w.runner.clone().run(cancel.clone()));
    // Wait until it runs.
    for _ in 0..200 {
        if w.app.job(&admin(), job.id).await.unwrap().state == JobState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        w.app.job(&admin(), job.id).await.unwrap().state,
        JobState::Running
    );
    cancel.cancel();
    task.await.unwrap().unwrap();
    // Stopping handed it back; a new runner (a restarted plinth) runs it.
    let j = w.app.job(&admin(), job.id).await.unwrap();
    assert_eq!(j.state, JobState::Queued);
    fa.set_delay(Duration::ZERO);
    let again = JobRunner::new(
        w.app.clone(),
        Arc::new(FakeConnector(w.fakes.clone())),
        settings(),
    );
    assert_eq!(again.drain().await.unwrap(), 1);
    let j = w.app.job(&admin(), job.id).await.unwrap();
    assert_eq!((j.state, j.attempts), (JobState::Succeeded, 2));
    assert_eq!(fa.power_now(), PowerState::On);
}

#[tokio::test]
async fn power_sync_records_changes_and_reachability() {
    let w = world(settings()).await;
    let (a, fa) = w.enroll(1, PASSWORD).await;
    let (b, fb) = w.enroll(2, PASSWORD).await;
    let sync = PowerSync::new(
        w.app.clone(),
        Arc::new(FakeConnector(w.fakes.clone())),
        SyncSettings {
            interval: Duration::from_secs(60),
            jitter: 0.2,
            failures_before_unreachable: 3,
            concurrency: 4,
            call_timeout: Duration::from_millis(300),
            tick: Duration::from_millis(50),
            auth_hold: Duration::from_secs(3600),
            health_interval: Duration::ZERO,
            log_entries_per_poll: 50,
        },
    );
    let r = sync.run_once().await.unwrap();
    assert_eq!((r.polled, r.changed, r.failed), (2, 0, 0));
    // Not due again for about a minute.
    assert_eq!(sync.run_once().await.unwrap().polled, 0);

    // Someone pressed a's power button.
    fa.power(PowerAction::On).await.unwrap();
    w.app.poll_bmc_now(None).await.unwrap();
    let r = sync.run_once().await.unwrap();
    assert_eq!((r.polled, r.changed), (2, 1));
    let ev = w.events_of_kind(a, "power_changed").await;
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].details["from"].as_str(), ev[0].details["to"].as_str()),
        (Some("off"), Some("on"))
    );

    // b stops answering (slowly, longer than the call timeout): unreachable after three
    // failures, once; a is polled every time all the same.
    fb.set_delay(Duration::from_secs(3600));
    for round in 1..=4 {
        w.app.poll_bmc_now(None).await.unwrap();
        let r = sync.run_once().await.unwrap();
        assert_eq!((r.polled, r.failed), (2, 1), "round {round}");
        assert_eq!(
            r.marked_unreachable,
            usize::from(round == 3),
            "round {round}"
        );
    }
    let bmc = w.app.get_machine(&admin(), b).await.unwrap().bmc.unwrap();
    assert_eq!(bmc.reachable, Some(false));
    assert!(bmc.last_error.unwrap().contains("no answer within"));
    assert_eq!(w.events_of_kind(b, "bmc_unreachable").await.len(), 1);
    fb.set_delay(Duration::ZERO);
    w.app.poll_bmc_now(Some(b)).await.unwrap();
    let r = sync.run_once().await.unwrap();
    assert_eq!((r.polled, r.failed), (1, 0));
    assert_eq!(w.events_of_kind(b, "bmc_reachable").await.len(), 1);
    let bmc = w.app.get_machine(&admin(), b).await.unwrap().bmc.unwrap();
    assert_eq!((bmc.reachable, bmc.last_error), (Some(true), None));

    // The loop polls on its own.
    fa.power(PowerAction::Off { force: true }).await.unwrap();
    w.app.poll_bmc_now(Some(a)).await.unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(sync.clone().run(cancel.clone()));
    for _ in 0..200 {
        if w.events_of_kind(a, "power_changed").await.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(w.events_of_kind(a, "power_changed").await.len(), 2);
}

/// The real IPMI driver under the job runner, against the test kit's IPMI BMC: the
/// enrollment check, a lifecycle action, and jobs through a network that loses datagrams.
#[tokio::test]
async fn ipmi_bmcs_through_the_real_driver() {
    use plinth_testkit::ipmi::{BootSelector, IpmiEmulator, IpmiEmulatorConfig, Loss};
    let db = TestDb::new().await.unwrap();
    let app = db.app();
    let drivers = plinth_bmc::Drivers {
        timeout: Duration::from_millis(300),
        ipmi_retries: 6,
        ca_pem: None,
    };
    let mut s = settings();
    s.call_timeout = Duration::from_secs(10);
    let runner = JobRunner::new(app.clone(), Arc::new(drivers), s);
    let guid = Uuid::new_v4();
    let mut cfg = IpmiEmulatorConfig::new("admin", PASSWORD);
    cfg.guid = guid;
    let emu = IpmiEmulator::start(cfg).await.unwrap();
    let who = admin();
    let enroll = |n: u32, password: &str| {
        app.enroll_machine(
            &who,
            MachineCreate {
                hostname: Some(format!("ipmi-{n}")),
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
                bmc: Some(BmcSpec {
                    protocol: BmcProtocol::Ipmi,
                    address: emu.addr().to_string(),
                    username: "admin".into(),
                    password: password.into(),
                    verify_tls: None,
                    plain_http: None,
                }),
            },
        )
    };
    let m = enroll(1, PASSWORD).await.unwrap();
    let wrong = enroll(2, "wrong-password").await.unwrap();
    runner.drain().await.unwrap();
    let bmc = app.get_machine(&admin(), m.id).await.unwrap().bmc.unwrap();
    assert_eq!(bmc.identity.unwrap()["uuid"], guid.to_string());
    assert_eq!(bmc.power_state.as_deref(), Some("off"));
    let events = app
        .events(&admin(), Some(wrong.id), Default::default())
        .await
        .unwrap();
    assert!(events.events.iter().any(|e| e.kind == "bmc_auth_failed"));

    // inspect: PXE once, then the (off) machine is powered on and boots from the network.
    app.act(
        &admin(),
        m.id,
        Action {
            verb: Verb::Inspect,
            expected_version: None,
            reason: None,
        },
    )
    .await
    .unwrap();
    runner.drain().await.unwrap();
    assert!(emu.power());
    let boots = emu.boots();
    assert_eq!(boots.len(), 1);
    assert_eq!(boots[0].selector(), BootSelector::Pxe);
    assert!(!boots[0].persistent());

    // A quarter of the datagrams lost: the jobs still complete, by retransmission.
    emu.set_loss(Loss::Spread { drop: 1, of: 4 });
    let job = app
        .request_boot_device(
            &admin(),
            m.id,
            BootDeviceRequest {
                device: BootTarget::Disk,
                persistent: Some(true),
                mode: Some(FirmwareMode::Uefi),
            },
        )
        .await
        .unwrap();
    let off = app
        .request_power(
            &admin(),
            m.id,
            PowerRequest {
                action: PowerOp::Off,
                force: Some(true),
            },
        )
        .await
        .unwrap();
    runner.drain().await.unwrap();
    for id in [job.id, off.id] {
        let j = app.job(&admin(), id).await.unwrap();
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    }
    assert!(!emu.power());
    let flags = emu.boot_flags();
    assert_eq!(flags.selector(), BootSelector::Disk);
    assert!(flags.persistent() && flags.efi());
    assert!(emu.stats().dropped > 0);
}

#[tokio::test]
async fn a_cluster_wide_cap_holds_across_instances() {
    let mut s = settings();
    s.cluster_concurrency = Some(3);
    let w = world(s.clone()).await;
    let mut fakes = Vec::new();
    for n in 1..=8 {
        fakes.push(w.enroll(n, PASSWORD).await);
    }
    for (_, f) in &fakes {
        f.set_delay(Duration::from_millis(300));
    }
    // A second plinth instance on the same database.
    let other = JobRunner::new(w.app.clone(), Arc::new(FakeConnector(w.fakes.clone())), s);
    let (a, b) = tokio::join!(w.runner.run_once(), other.run_once());
    assert_eq!(
        a.unwrap() + b.unwrap(),
        3,
        "at most three jobs at once, in all"
    );
    let (a, b) = tokio::join!(w.runner.drain(), other.drain());
    assert_eq!(a.unwrap() + b.unwrap(), 5);
    for (id, _) in &fakes {
        assert_eq!(w.jobs_of(*id).await[0].state, JobState::Succeeded);
    }
}

#[tokio::test]
async fn wrong_credentials_are_not_polled_every_minute() {
    let w = world(settings()).await;
    let (good, _) = w.enroll(1, PASSWORD).await;
    let (bad, _) = w.enroll(2, "locked-out-soon").await;
    let sync = PowerSync::new(
        w.app.clone(),
        Arc::new(FakeConnector(w.fakes.clone())),
        SyncSettings::default(),
    );
    let r = sync.run_once().await.unwrap();
    assert_eq!((r.polled, r.failed), (2, 1));
    let next = |id: Uuid| {
        let pool = w.app.pool().clone();
        async move {
            let secs: f64 = sqlx::query_scalar(
                "select extract(epoch from next_poll_at - now())::float8 from bmcs where machine_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
            secs
        }
    };
    let g = next(good).await;
    assert!((40.0..=80.0).contains(&g), "a minute, jittered: {g}");
    let b = next(bad).await;
    assert!(b > 3000.0, "an hour after wrong credentials: {b}");
    // New credentials make it due at once.
    w.app
        .update_machine(
            &admin(),
            bad,
            MachinePatch {
                bmc: Some(Some(BmcSpec {
                    protocol: BmcProtocol::Redfish,
                    address: "10.9.0.2".into(),
                    username: "root".into(),
                    password: PASSWORD.into(),
                    verify_tls: Some(false),
                    plain_http: None,
                })),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(next(bad).await <= 0.0);
    let r = sync.run_once().await.unwrap();
    assert_eq!((r.polled, r.failed), (1, 0));
}

#[tokio::test]
async fn a_bmc_reporting_another_machines_nics_is_flagged() {
    let w = world(settings()).await;
    let (right, _) = w.enroll(1, PASSWORD).await;
    let (swapped, _) = w.enroll(2, PASSWORD).await;
    // The first BMC reports the machine's own NIC (and another); the second, a stranger's.
    for (id, macs) in [(right, vec![mac(9), mac(1)]), (swapped, vec![mac(7)])] {
        let f = Arc::new(FakeBmc::new(Identity {
            manufacturer: None,
            model: None,
            serial: None,
            uuid: None,
            macs,
        }));
        w.fakes.bmcs.lock().unwrap().insert(id, f);
    }
    w.runner.drain().await.unwrap();
    assert!(
        w.events_of_kind(right, "bmc_identity_mismatch")
            .await
            .is_empty()
    );
    let ev = w.events_of_kind(swapped, "bmc_identity_mismatch").await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].details["bmc_macs"][0], mac(7).to_string());
    assert_eq!(ev[0].details["enrolled_macs"][0], mac(2).to_string());
}

#[tokio::test]
async fn queued_jobs_can_be_cancelled_running_ones_finish() {
    let w = world(settings()).await;
    let (a, fa) = w.enroll(1, PASSWORD).await;
    w.runner.drain().await.unwrap();
    w.act(a, Verb::Inspect).await.unwrap();
    let jobs = w.jobs_of(a).await;
    let (boot, power) = (&jobs[1], &jobs[2]);
    let c = w.app.cancel_job(&admin(), boot.id).await.unwrap();
    assert_eq!(c.state, JobState::Cancelled);
    assert_eq!(c.last_error.as_deref(), Some("cancelled by tech-anna"));
    assert_eq!(
        w.app.job(&admin(), power.id).await.unwrap().state,
        JobState::Cancelled,
        "the rest of the action goes with it"
    );
    assert_eq!(w.runner.drain().await.unwrap(), 0);
    assert!(
        !fa.calls()
            .iter()
            .any(|c| matches!(c, Call::SetBoot { .. } | Call::Power(_)))
    );
    let ev = w.events_of_kind(a, "bmc_job_cancelled").await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].actor, "tech-anna");

    let err = w.app.cancel_job(&admin(), boot.id).await.unwrap_err();
    assert_eq!((err.kind, err.code), (ErrorKind::Conflict, "job_finished"));
    // A running job is not interrupted.
    fa.set_delay(Duration::from_millis(800));
    let on = w
        .app
        .request_power(
            &admin(),
            a,
            PowerRequest {
                action: PowerOp::On,
                force: None,
            },
        )
        .await
        .unwrap();
    let runner = w.runner.clone();
    let run = tokio::spawn(async move { runner.run_once().await });
    for _ in 0..100 {
        if w.app.job(&admin(), on.id).await.unwrap().state == JobState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = w.app.cancel_job(&admin(), on.id).await.unwrap_err();
    assert_eq!(err.code, "job_running");
    run.await.unwrap().unwrap();
    assert_eq!(
        w.app.job(&admin(), on.id).await.unwrap().state,
        JobState::Succeeded
    );
    let err = w
        .app
        .cancel_job(&admin(), Uuid::new_v4())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn machines_waiting_too_long_on_their_agent_fail_with_the_reason() {
    let w = world(settings()).await;
    let (a, _) = w.enroll(1, PASSWORD).await;
    let (b, _) = w.enroll(2, PASSWORD).await;
    for id in [a, b] {
        w.act(id, Verb::Inspect).await.unwrap();
    }
    let t = plinth_core::lifecycle::StuckTimeouts {
        inspect: Duration::from_secs(600),
        clean: Duration::from_secs(600),
        deploy: Duration::from_secs(600),
    };
    assert_eq!(w.app.fail_stuck(&t).await.unwrap(), 0, "not yet");
    sqlx::query(
        "update machines set state_changed_at = now() - interval '11 minutes' where id = $1",
    )
    .bind(a)
    .execute(w.app.pool())
    .await
    .unwrap();
    assert_eq!(w.app.fail_stuck(&t).await.unwrap(), 1);
    let m = w.app.get_machine(&admin(), a).await.unwrap();
    assert_eq!(m.state, MachineState::InspectFailed);
    assert!(
        m.state_reason
            .unwrap()
            .contains("no inspection report within 600 s")
    );
    assert_eq!(w.events_of_kind(a, "inspect_fail").await[0].actor, "system");
    assert_eq!(
        w.app.get_machine(&admin(), b).await.unwrap().state,
        MachineState::Inspecting
    );
    assert_eq!(w.app.fail_stuck(&t).await.unwrap(), 0, "once");
}

#[tokio::test]
async fn decommission_wipes_then_retires_the_machine_and_scrubs_its_bmc() {
    let w = world(settings()).await;
    let (a, fa) = w.enroll(1, PASSWORD).await;
    w.runner.drain().await.unwrap();
    // enrolled → decommissioning: the machine boots the clean ramdisk (PXE once + power on).
    let m = w.act(a, Verb::Decommission).await.unwrap();
    assert_eq!(m.state, MachineState::Decommissioning);
    w.runner.drain().await.unwrap();
    assert_eq!(fa.boots(), 1);
    assert!(fa.calls().contains(&Call::SetBoot {
        device: BootDevice::Pxe,
        persistent: false,
        mode: None
    }));

    // The clean agent's report completes it: decommissioned, NICs freed, then the BMC powers
    // the machine off for good and its credentials are forgotten.
    let secret = w
        .app
        .create_token(&Principal::system(), "ops", plinth_types::Role::Operator)
        .await
        .unwrap()
        .secret;
    let report = CleanReport {
        result: CleanResult::Complete,
        reason: None,
        disks: vec![WipedDisk {
            name: "vda".into(),
            serial: None,
            size_bytes: 8 << 20,
            zeroed_bytes: 2 << 20,
            full: false,
            method: Some(plinth_types::api::WipeMethod::Quick),
            verification: None,
            error: None,
        }],
    };
    let m = w.app.report_clean(&secret, None, a, report).await.unwrap();
    assert_eq!(m.state, MachineState::Decommissioned);
    assert!(m.nics.is_empty(), "its MACs are free again: {:?}", m.nics);
    assert!(m.bmc.is_some(), "the BMC is still needed for the power off");
    w.runner.drain().await.unwrap();
    assert_eq!(fa.power_now(), PowerState::Off);
    let m = w.app.get_machine(&admin(), a).await.unwrap();
    assert!(m.bmc.is_none(), "credentials scrubbed");
    let scrubbed = w.events_of_kind(a, "bmc_scrubbed").await;
    assert_eq!(scrubbed[0].details["powered_off"], true);
    let (_, ct): (i64, i64) =
        sqlx::query_as("select count(*), count(*) from bmcs where machine_id = $1")
            .bind(a)
            .fetch_one(w.app.pool())
            .await
            .unwrap();
    assert_eq!(ct, 0);
    // A decommissioned machine takes no BMC requests.
    let err = w
        .app
        .request_power(
            &admin(),
            a,
            PowerRequest {
                action: PowerOp::On,
                force: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "decommissioned");
    // The MAC can be enrolled again, for another machine.
    let (b, _) = w.enroll(1, PASSWORD).await;
    assert_ne!(a, b);
}

/// Issue 20: the power sync reads health and the BMC's log on its own cadence; an injected
/// fault becomes the machine's health and a `health_changed` event, new log entries become
/// `bmc_log` events once each (a bounded number per read, none replayed at the first), the
/// machine list filters on health, and allocation skips a critical machine unless asked.
#[tokio::test]
async fn power_sync_reads_health_and_the_bmc_log() {
    use plinth_bmc::Health;
    use plinth_types::health::{HealthComponent, HealthStatus};

    let w = world(settings()).await;
    let (a, fa) = w.enroll(1, PASSWORD).await;
    let (b, fb) = w.enroll(2, PASSWORD).await;
    let sync = PowerSync::new(
        w.app.clone(),
        Arc::new(FakeConnector(w.fakes.clone())),
        SyncSettings {
            call_timeout: Duration::from_secs(2),
            health_interval: Duration::from_secs(300),
            log_entries_per_poll: 3,
            ..SyncSettings::default()
        },
    );
    let ok = Health::from_parts(HealthStatus::Ok, vec![]);
    fa.set_health(ok.clone());
    fb.set_health(ok.clone());
    fa.push_log(HealthStatus::Critical, "an old fault, before plinth looked");
    assert_eq!(sync.run_once().await.unwrap().polled, 2);
    let health_of = |id: Uuid| {
        let app = w.app.clone();
        async move {
            app.get_machine(&admin(), id)
                .await
                .unwrap()
                .bmc
                .unwrap()
                .health
        }
    };
    assert_eq!(health_of(a).await.unwrap().status, HealthStatus::Ok);
    // A healthy first read and the log's history are no news.
    assert!(w.events_of_kind(a, "health_changed").await.is_empty());
    assert!(w.events_of_kind(a, "bmc_log").await.is_empty());

    // A fan stops; four entries are logged.
    fa.set_health(Health::from_parts(
        HealthStatus::Ok,
        vec![HealthComponent {
            kind: "fan".into(),
            name: "Fan 1".into(),
            status: HealthStatus::Critical,
            reason: "0 RPM".into(),
        }],
    ));
    for i in 1..=4 {
        fa.push_log(HealthStatus::Warning, &format!("entry {i}"));
    }
    // A power poll before the health interval reads no health.
    w.app.poll_bmc_now(None).await.unwrap();
    sync.run_once().await.unwrap();
    assert_eq!(health_of(a).await.unwrap().status, HealthStatus::Ok);
    assert_eq!(fa.calls().iter().filter(|c| **c == Call::Health).count(), 1);

    w.app.poll_health_now(None).await.unwrap();
    sync.run_once().await.unwrap();
    let h = health_of(a).await.unwrap();
    assert_eq!(h.status, HealthStatus::Critical);
    assert_eq!(h.components[0].name, "Fan 1");
    let ev = w.events_of_kind(a, "health_changed").await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].details["from"], "ok");
    assert_eq!(ev[0].details["to"], "critical");
    assert_eq!(ev[0].details["reason"], "Fan 1: 0 RPM");
    let logged = |ev: Vec<Event>| -> Vec<String> {
        let mut m: Vec<String> = ev
            .iter()
            .map(|e| e.details["message"].as_str().unwrap().to_owned())
            .collect();
        m.sort();
        m
    };
    // Three a read (the bound), the fourth at the next; none twice.
    assert_eq!(
        logged(w.events_of_kind(a, "bmc_log").await),
        ["entry 1", "entry 2", "entry 3"]
    );
    w.app.poll_health_now(None).await.unwrap();
    sync.run_once().await.unwrap();
    w.app.poll_health_now(None).await.unwrap();
    sync.run_once().await.unwrap();
    let all = w.events_of_kind(a, "bmc_log").await;
    assert_eq!(
        logged(all.clone()),
        ["entry 1", "entry 2", "entry 3", "entry 4"]
    );
    assert_eq!(all[0].details["severity"], "warning");
    assert_eq!(w.events_of_kind(a, "health_changed").await.len(), 1);
    assert!(w.events_of_kind(b, "bmc_log").await.is_empty());

    // The list filters on health; `unknown` is a machine without a BMC's word.
    let listed = |h: HealthStatus| {
        let app = w.app.clone();
        async move {
            app.list_machines(
                &admin(),
                plinth_core::machines::MachineQuery {
                    health: Some(h),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .machines
            .into_iter()
            .map(|m| m.id)
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(HealthStatus::Critical).await, [a]);
    assert_eq!(listed(HealthStatus::Ok).await, [b]);
    assert!(listed(HealthStatus::Unknown).await.is_empty());

    // Allocation: both ready, the critical one is not taken; `ok` needs ok; `any` takes it.
    let mut conn = w._db.pool.acquire().await.unwrap();
    for id in [a, b] {
        plinth_db::machines::force_state(&mut conn, id, MachineState::Ready, None)
            .await
            .unwrap();
    }
    drop(conn);
    let e = w
        .app
        .allocate(
            &admin(),
            AllocationRequest {
                count: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "insufficient_capacity");
    let one = w
        .app
        .allocate(
            &admin(),
            AllocationRequest {
                health: Some(HealthRequirement::Ok),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(one.machines[0].id, b);
    let repair = w
        .app
        .allocate(
            &admin(),
            AllocationRequest {
                health: Some(HealthRequirement::Any),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(repair.machines[0].id, a);

    // Recovery: back to ok, one more event.
    fa.set_health(ok);
    w.app.poll_health_now(None).await.unwrap();
    sync.run_once().await.unwrap();
    assert_eq!(health_of(a).await.unwrap().status, HealthStatus::Ok);
    let ev = w.events_of_kind(a, "health_changed").await;
    assert_eq!(ev.len(), 2);
    assert!(
        ev.iter()
            .any(|e| e.details["from"] == "critical" && e.details["to"] == "ok")
    );
}

/// The files a virtual-media ISO is made of, in an images root of the test's own.
fn vmedia_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (name, len) in [
        ("plinth/vmedia-bios.img", 4096),
        ("plinth/vmedia-efi.img", 4096),
        ("plinth/vmlinuz", 10_000),
        ("plinth/initrd.img", 20_000),
    ] {
        let p = root.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, vec![7u8; len]).unwrap();
    }
    root
}

#[tokio::test]
async fn virtual_media_machines_boot_their_ramdisk_from_an_iso_and_eject_it_after_the_report() {
    use plinth_bmc::fake::{FAKE_CD, FAKE_USB};
    const PUBLIC: &str = "http://10.0.0.2:8080";
    let root = vmedia_root();
    let mut boot = plinth_core::boot::BootSettings::with_root(root.path().to_owned());
    boot.public_url = Some(PUBLIC.into());
    let w = world_with(settings(), |app| {
        app.with_boot(boot, plinth_core::boot::Templates::load(None).unwrap())
    })
    .await;
    let (a, fa) = w.enroll(1, PASSWORD).await;
    let (b, fb) = w.enroll(2, PASSWORD).await;
    let (c, fc) = w.enroll(3, PASSWORD).await;
    let (n, fnet) = w.enroll(4, PASSWORD).await;
    // a and b by their own setting, c by its rack's; n stays on the network.
    let rack = w
        .app
        .create_rack(
            &admin(),
            serde_json::from_value::<RackCreate>(serde_json::json!({
                "name": "edge-1", "height_u": 42
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let pool = &w._db.pool;
    sqlx::query("update machines set boot_method = 'virtual_media' where id = any($1)")
        .bind(vec![a, b])
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("update racks set boot_method = 'virtual_media' where id = $1")
        .bind(rack.id)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("update machines set rack_id = $1, rack_unit = 10 where id = $2")
        .bind(rack.id)
        .bind(c)
        .execute(pool)
        .await
        .unwrap();
    w.runner.drain().await.unwrap();
    // b's BMC answers success to InsertMedia and keeps nothing; c's has only a USB slot.
    fb.set_ignores_media(true);
    fc.set_media_slots(vec![fc.media_now().remove(1)]);
    for m in [a, b, c, n] {
        w.act(m, Verb::Inspect).await.unwrap();
    }
    w.runner.drain().await.unwrap();

    // a: the ISO in its CD slot, the next boot from the CD, then a power cycle.
    let ja = w.jobs_of(a).await;
    assert_eq!(
        ja.iter()
            .map(|j| (j.kind.as_str(), j.state))
            .collect::<Vec<_>>(),
        vec![
            ("identify", JobState::Succeeded),
            ("vmedia_boot", JobState::Succeeded),
            ("power", JobState::Succeeded)
        ]
    );
    let cd = fa
        .media_now()
        .into_iter()
        .find(|s| s.id == FAKE_CD)
        .unwrap();
    let url = cd.image.clone().expect("an image in the CD slot");
    assert!(cd.inserted);
    assert!(url.starts_with(&format!("{PUBLIC}/boot/vmedia/")), "{url}");
    // The URL is a secret: neither the job nor an event shows more than its origin.
    let secret = url.rsplit('/').next().unwrap().trim_end_matches(".iso");
    let shown = serde_json::to_string(&ja).unwrap()
        + &serde_json::to_string(
            &w.app
                .events(&admin(), Some(a), Default::default())
                .await
                .unwrap(),
        )
        .unwrap();
    assert!(!shown.contains(secret), "the ISO's id leaked: {shown}");
    assert_eq!(ja[1].result.as_ref().unwrap()["slot"], FAKE_CD);
    let calls = fa.calls();
    let insert = calls
        .iter()
        .position(|c| matches!(c, Call::InsertMedia { .. }))
        .unwrap();
    let set_cd = calls
        .iter()
        .position(|c| {
            matches!(
                c,
                Call::SetBoot {
                    device: BootDevice::Cdrom,
                    persistent: false,
                    ..
                }
            )
        })
        .unwrap();
    assert!(insert < set_cd, "the medium before the boot override");
    assert!(!calls.iter().any(|c| matches!(
        c,
        Call::SetBoot {
            device: BootDevice::Pxe,
            ..
        }
    )));
    assert_eq!(fa.boots(), 1);
    // The ISO is live: its boot row and agent token exist until the report.
    let live: i64 = sqlx::query_scalar("select count(*) from vmedia_boots where machine_id = $1")
        .bind(a)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(live, 1);

    // b: the BMC that kept nothing is caught by the read-back; retried, then failed, and
    // the machine was never powered into a boot that could not work.
    let jb = w.jobs_of(b).await;
    assert_eq!(jb[1].kind, "vmedia_boot");
    assert_eq!(jb[1].state, JobState::Failed);
    assert_eq!(jb[1].attempts, plinth_core::jobs::MAX_ATTEMPTS);
    assert_eq!(jb[2].state, JobState::Cancelled);
    assert_eq!(fb.boots(), 0);
    // c: the rack's setting; the only slot is a USB stick, and it is used.
    let jc = w.jobs_of(c).await;
    assert_eq!(jc[1].kind, "vmedia_boot");
    assert_eq!(jc[1].state, JobState::Succeeded, "{:?}", jc[1].last_error);
    assert_eq!(jc[1].result.as_ref().unwrap()["slot"], FAKE_USB);
    // n: the network, as before.
    let jn = w.jobs_of(n).await;
    assert_eq!(jn[1].kind, "boot_device");
    assert!(fnet.media_now().iter().all(|s| !s.is_occupied()));

    // The report ejects the ISO (read back empty) before the power-off.
    let mac_a = w.app.get_machine(&admin(), a).await.unwrap().nics[0].mac;
    w.app
        .submit_inspection(&admin(), a, uefi_report(a, mac_a))
        .await
        .unwrap();
    w.runner.drain().await.unwrap();
    let ja = w.jobs_of(a).await;
    assert_eq!(
        ja[3..5]
            .iter()
            .map(|j| (j.kind.as_str(), j.state))
            .collect::<Vec<_>>(),
        vec![
            ("vmedia_eject", JobState::Succeeded),
            ("power", JobState::Succeeded)
        ]
    );
    assert_eq!(ja[3].result.as_ref().unwrap()["ejected"][0], FAKE_CD);
    assert!(fa.media_now().iter().all(|s| !s.is_occupied()));
    assert_eq!(fa.power_now(), PowerState::Off);

    // A BMC without virtual media: a clear, final failure at once.
    let (d, fd) = w.enroll(5, PASSWORD).await;
    sqlx::query("update machines set boot_method = 'virtual_media' where id = $1")
        .bind(d)
        .execute(pool)
        .await
        .unwrap();
    fd.set_media_slots(vec![]);
    w.runner.drain().await.unwrap();
    w.act(d, Verb::Inspect).await.unwrap();
    w.runner.drain().await.unwrap();
    let jd = w.jobs_of(d).await;
    assert_eq!(jd[1].state, JobState::Failed);
    assert_eq!(jd[1].attempts, 1);
    assert!(
        jd[1]
            .last_error
            .as_deref()
            .unwrap()
            .contains("does not support virtual media"),
        "{:?}",
        jd[1].last_error
    );
}
mod bios;
mod lastseen;
