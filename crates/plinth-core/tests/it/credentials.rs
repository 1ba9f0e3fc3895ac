//! BMC password rotation (issue 21, part 4) against the test kit's Redfish BMC, with the
//! process "crashing" (the job's task panics, its lease runs out, another runner takes the job
//! again) at every step: after the new password is staged, after the BMC took it, after it was
//! proved. Whatever the step, the BMC's password is always one plinth holds, and the next
//! attempt ends with the BMC's password stored as the current one, never printed anywhere.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use plinth_bmc::{
    Bmc, BmcError, BmcTarget, BootDevice, BootMode, BootOverride, Connector, Drivers, Identity,
    PasswordPolicy, PowerAction, PowerState,
};
use plinth_core::workers::{JobRunner, JobSettings};
use plinth_core::{App, Principal};
use plinth_testkit::redfish::RedfishEmulator;
use plinth_testkit::{TestDb, mac};
use plinth_types::api::*;
use uuid::Uuid;

const FIRST: &str = "factory-Pw1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// Staged and committed; the BMC not asked yet.
    BeforeSet,
    /// The BMC took the new password; not proved.
    AfterSet,
    /// Proved by a new session; not promoted.
    AfterProof,
}

/// The real drivers, with a crash where the test says.
struct CrashConnector {
    drivers: Drivers,
    crash: Mutex<Option<Crash>>,
    /// The password at the start of the run: a driver with another one is the proof's.
    first: String,
}

impl Connector for CrashConnector {
    fn connect<'a>(&'a self, t: &'a BmcTarget) -> BoxFuture<'a, Result<Arc<dyn Bmc>, BmcError>> {
        Box::pin(async move {
            let inner = self.drivers.connect(t).await?;
            Ok(Arc::new(Crashing {
                inner,
                crash: *self.crash.lock().unwrap(),
                new: t.password != self.first,
            }) as Arc<dyn Bmc>)
        })
    }
}

struct Crashing {
    inner: Arc<dyn Bmc>,
    crash: Option<Crash>,
    new: bool,
}

impl Bmc for Crashing {
    fn power_state(&self) -> BoxFuture<'_, plinth_bmc::Result<PowerState>> {
        self.inner.power_state()
    }
    fn power(&self, a: PowerAction) -> BoxFuture<'_, plinth_bmc::Result<()>> {
        self.inner.power(a)
    }
    fn set_boot(
        &self,
        d: BootDevice,
        p: bool,
        m: Option<BootMode>,
    ) -> BoxFuture<'_, plinth_bmc::Result<()>> {
        self.inner.set_boot(d, p, m)
    }
    fn boot_override(&self) -> BoxFuture<'_, plinth_bmc::Result<BootOverride>> {
        self.inner.boot_override()
    }
    fn identity(&self) -> BoxFuture<'_, plinth_bmc::Result<Identity>> {
        self.inner.identity()
    }
    fn password_policy(&self) -> BoxFuture<'_, plinth_bmc::Result<PasswordPolicy>> {
        self.inner.password_policy()
    }
    fn set_password<'a>(&'a self, new: &'a str) -> BoxFuture<'a, plinth_bmc::Result<()>> {
        Box::pin(async move {
            if self.crash == Some(Crash::BeforeSet) {
                panic!("crash: staged, before the BMC was asked");
            }
            self.inner.set_password(new).await?;
            if self.crash == Some(Crash::AfterSet) {
                panic!("crash: the BMC took it, not proved");
            }
            Ok(())
        })
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.close().await;
            if self.new && self.crash == Some(Crash::AfterProof) {
                panic!("crash: proved, not promoted");
            }
        })
    }
}

fn settings() -> JobSettings {
    JobSettings {
        call_timeout: Duration::from_secs(5),
        power_wait: Duration::from_secs(2),
        power_poll: Duration::from_millis(10),
        lease: Duration::from_millis(500),
        backoff_base: Duration::ZERO,
        backoff_max: Duration::ZERO,
        idle_poll: Duration::from_millis(50),
        ..JobSettings::default()
    }
}

fn admin() -> Principal {
    Principal {
        token_id: None,
        name: "tech-anna".into(),
        role: plinth_types::Role::Admin,
    }
}

fn drivers() -> Drivers {
    Drivers {
        timeout: Duration::from_secs(5),
        ..Drivers::default()
    }
}

fn runner(app: &App, crash: Option<Crash>, first: &str, s: JobSettings) -> Arc<JobRunner> {
    JobRunner::new(
        app.clone(),
        Arc::new(CrashConnector {
            drivers: drivers(),
            crash: Mutex::new(crash),
            first: first.to_owned(),
        }),
        s,
    )
}

async fn enroll(app: &App, emu: &RedfishEmulator, n: u32) -> Uuid {
    app.enroll_machine(
        &admin(),
        MachineCreate {
            hostname: Some(format!("rot-{n}")),
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
                address: emu.url(),
                username: "root".into(),
                password: FIRST.into(),
                verify_tls: Some(false),
                plain_http: Some(true),
            }),
        },
    )
    .await
    .unwrap()
    .id
}

/// Every event and job of the database as text: the password must be in none of them.
async fn everything_recorded(app: &App) -> String {
    let conn = app.pool();
    let events: Vec<(String, serde_json::Value)> =
        sqlx::query_as("select kind, details from events order by id")
            .fetch_all(conn)
            .await
            .unwrap();
    let jobs: Vec<(
        String,
        serde_json::Value,
        Option<serde_json::Value>,
        Option<String>,
    )> = sqlx::query_as("select kind, params, result, last_error from jobs order by created_at")
        .fetch_all(conn)
        .await
        .unwrap();
    format!("{events:?} {jobs:?}")
}

async fn job_states(app: &App, id: Uuid) -> Vec<(String, JobState)> {
    let mut jobs = app
        .jobs(
            &admin(),
            plinth_core::jobs::JobQuery {
                machine: Some(id),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .jobs;
    jobs.reverse();
    jobs.into_iter().map(|j| (j.kind, j.state)).collect()
}

#[tokio::test]
async fn a_rotation_sets_proves_and_stores_a_new_password() {
    let db = TestDb::new().await.unwrap();
    let app = db.app();
    let emu = RedfishEmulator::start("root", FIRST).await.unwrap();
    let id = enroll(&app, &emu, 1).await;
    let r = runner(&app, None, FIRST, settings());
    r.drain().await.unwrap(); // the identify
    let job = app.request_bmc_rotate(&admin(), id).await.unwrap();
    assert_eq!(job.kind, "rotate_credentials");
    r.drain().await.unwrap();
    let job = app.job(&admin(), job.id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    let stored = app.bmc_password(id).await.unwrap().unwrap();
    assert_ne!(stored, FIRST);
    assert_eq!(
        emu.password(),
        stored,
        "the BMC's password is the stored one"
    );
    assert_eq!(stored.len(), 20, "the preferred length, within 8..=20");
    assert_eq!(app.bmc_staged_password(id).await.unwrap(), None);
    assert_eq!(emu.operator_password(), "operator-pw");
    // The next BMC job logs in with the new password.
    app.request_power(
        &admin(),
        id,
        PowerRequest {
            action: PowerOp::On,
            force: None,
        },
    )
    .await
    .unwrap();
    r.drain().await.unwrap();
    assert_eq!(emu.power(), "On");
    let text = everything_recorded(&app).await;
    assert!(text.contains("bmc_credentials_rotated"), "{text}");
    assert!(
        !text.contains(&stored),
        "the new password is recorded nowhere"
    );
    assert!(!text.contains(FIRST), "nor the old one");
}

#[tokio::test]
async fn a_crash_at_any_step_never_locks_plinth_out() {
    for crash in [Crash::BeforeSet, Crash::AfterSet, Crash::AfterProof] {
        let db = TestDb::new().await.unwrap();
        let app = db.app();
        let emu = RedfishEmulator::start("root", FIRST).await.unwrap();
        let id = enroll(&app, &emu, 2).await;
        runner(&app, None, FIRST, settings()).drain().await.unwrap();
        let job = app.request_bmc_rotate(&admin(), id).await.unwrap();
        // The first process dies at the step.
        let dying = runner(&app, Some(crash), FIRST, settings());
        assert_eq!(dying.run_once().await.unwrap(), 1);
        let current = app.bmc_password(id).await.unwrap().unwrap();
        let staged = app.bmc_staged_password(id).await.unwrap();
        assert_eq!(current, FIRST, "{crash:?}: nothing promoted yet");
        let staged = staged.unwrap_or_else(|| panic!("{crash:?}: staged before the BMC call"));
        let on_bmc = emu.password();
        assert!(
            on_bmc == current || on_bmc == staged,
            "{crash:?}: the BMC's password is one plinth holds"
        );
        match crash {
            Crash::BeforeSet => assert_eq!(on_bmc, FIRST),
            Crash::AfterSet | Crash::AfterProof => assert_eq!(on_bmc, staged),
        }
        assert_eq!(
            app.job(&admin(), job.id).await.unwrap().state,
            JobState::Running,
            "{crash:?}: the job died running"
        );
        // Its lease runs out; another process takes the job again.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let next = runner(&app, None, FIRST, settings());
        assert_eq!(next.requeue_stale(false).await.unwrap(), 1);
        next.drain().await.unwrap();
        let job = app.job(&admin(), job.id).await.unwrap();
        assert_eq!(
            job.state,
            JobState::Succeeded,
            "{crash:?}: {:?}",
            job.last_error
        );
        let stored = app.bmc_password(id).await.unwrap().unwrap();
        assert_eq!(emu.password(), stored, "{crash:?}");
        assert_ne!(stored, FIRST, "{crash:?}: rotated in the end");
        assert_eq!(app.bmc_staged_password(id).await.unwrap(), None);
        match crash {
            // The staged password never reached the BMC: discarded, a new one set.
            Crash::BeforeSet => assert_ne!(stored, staged),
            // The BMC had it: the staged one is the truth.
            Crash::AfterSet | Crash::AfterProof => assert_eq!(stored, staged),
        }
        assert_eq!(
            emu.password_changes(),
            1,
            "{crash:?}: one change on the BMC"
        );
        let text = everything_recorded(&app).await;
        assert!(
            !text.contains(&stored) && !text.contains(&staged) && !text.contains(FIRST),
            "{crash:?}: no password recorded"
        );
    }
}

#[tokio::test]
async fn a_rotation_left_staged_by_a_job_that_ended_is_recovered() {
    let db = TestDb::new().await.unwrap();
    let app = db.app();
    let emu = RedfishEmulator::start("root", FIRST).await.unwrap();
    let id = enroll(&app, &emu, 3).await;
    runner(&app, None, FIRST, settings()).drain().await.unwrap();
    let job = app.request_bmc_rotate(&admin(), id).await.unwrap();
    runner(&app, Some(Crash::AfterSet), FIRST, settings())
        .run_once()
        .await
        .unwrap();
    // The job is given up on (as after its last attempt): nothing would finish the rotation
    // but the recovery pass. While staged, the power sync leaves the BMC alone.
    sqlx::query(
        "update jobs set state = 'failed', finished_at = now(), lease_until = null where id = $1",
    )
    .bind(job.id)
    .execute(app.pool())
    .await
    .unwrap();
    let r = runner(&app, None, FIRST, settings());
    assert_eq!(r.recover_stranded().await.unwrap(), 0, "not stranded yet");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(r.recover_stranded().await.unwrap(), 1);
    assert_eq!(r.recover_stranded().await.unwrap(), 0, "one job queued");
    r.drain().await.unwrap();
    let stored = app.bmc_password(id).await.unwrap().unwrap();
    assert_eq!(emu.password(), stored);
    assert_ne!(stored, FIRST);
    assert_eq!(app.bmc_staged_password(id).await.unwrap(), None);
    let states = job_states(&app, id).await;
    assert_eq!(
        states.last(),
        Some(&("rotate_credentials".to_owned(), JobState::Succeeded)),
        "{states:?}"
    );
    assert_eq!(emu.password_changes(), 1, "resolved, not rotated twice");
}

#[tokio::test]
async fn rotate_on_enroll_rotates_once_after_the_identify() {
    let db = TestDb::new().await.unwrap();
    let app = db.app();
    let emu = RedfishEmulator::start("root", FIRST).await.unwrap();
    let id = enroll(&app, &emu, 4).await;
    let r = runner(
        &app,
        None,
        FIRST,
        JobSettings {
            rotate_on_enroll: true,
            ..settings()
        },
    );
    r.drain().await.unwrap();
    assert_eq!(
        job_states(&app, id).await,
        vec![
            ("identify".to_owned(), JobState::Succeeded),
            ("rotate_credentials".to_owned(), JobState::Succeeded),
        ]
    );
    let stored = app.bmc_password(id).await.unwrap().unwrap();
    assert_eq!(emu.password(), stored);
    assert_ne!(stored, FIRST);
    // A wrong factory password: the identify fails, nothing is rotated.
    let other = RedfishEmulator::start("root", "not-the-factory-one")
        .await
        .unwrap();
    let id2 = enroll(&app, &other, 5).await;
    r.drain().await.unwrap();
    let states = job_states(&app, id2).await;
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(states[0].1, JobState::Failed);
    assert_eq!(other.password_changes(), 0);
}

#[tokio::test]
async fn an_ipmi_bmc_is_rotated_with_set_user_password() {
    use plinth_testkit::ipmi::{IpmiEmulator, IpmiEmulatorConfig};
    let db = TestDb::new().await.unwrap();
    let app = db.app();
    let emu = IpmiEmulator::start(IpmiEmulatorConfig::new("root", FIRST))
        .await
        .unwrap();
    let m = app
        .enroll_machine(
            &admin(),
            MachineCreate {
                hostname: Some("rot-ipmi".into()),
                rack: None,
                rack_unit: None,
                size_u: None,
                pool: None,
                tags: None,
                arch: Some(Arch::X86_64),
                nics: vec![NicSpec {
                    mac: mac(9),
                    ipv4: None,
                    pxe: None,
                }],
                bmc: Some(BmcSpec {
                    protocol: BmcProtocol::Ipmi,
                    address: emu.addr().to_string(),
                    username: "root".into(),
                    password: FIRST.into(),
                    verify_tls: None,
                    plain_http: None,
                }),
            },
        )
        .await
        .unwrap();
    let r = runner(&app, None, FIRST, settings());
    r.drain().await.unwrap();
    let job = app.request_bmc_rotate(&admin(), m.id).await.unwrap();
    r.drain().await.unwrap();
    let job = app.job(&admin(), job.id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.last_error);
    let stored = app.bmc_password(m.id).await.unwrap().unwrap();
    assert_eq!(emu.password(), stored);
    assert_eq!(
        stored.len(),
        20,
        "the 20-byte form, which this BMC proves it takes"
    );
    assert_eq!(emu.password_changes(), vec![(2, true)]);
}
