//! BMC jobs as the API and the lifecycle see them: what can be asked ([`JobSpec`]), queueing
//! (in the caller's transaction, so a transition and its work commit together), and reading
//! them back. The workers that run them are in [`crate::workers`].

use plinth_db::PgConnection;
use plinth_db::jobs::JobRow;
use plinth_types::JobId;
use plinth_types::api::{
    BootDeviceRequest, BootMethod, BootTarget, FirmwareMode, Job, JobPage, JobState, PowerOp,
    PowerRequest,
};
use plinth_types::behaviour::{AgentMode, BmcStep};
use plinth_types::{Error, MachineState, Verb};
use serde_json::json;
use uuid::Uuid;

use crate::auth::Permission;
use crate::{App, DbResult, Principal, Result};

/// One BMC action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobSpec {
    Power {
        op: PowerOp,
        force: bool,
    },
    BootDevice {
        device: BootTarget,
        persistent: bool,
        mode: Option<FirmwareMode>,
    },
    /// Check the credentials and read the machine's identity (after enrollment).
    Identify,
    /// Power off for good, then forget the BMC's credentials (the end of a decommission).
    Retire,
    /// Boot the `agent` ramdisk once by virtual media: when the job runs, a per-boot ISO is
    /// prepared (its agent token minted then: `App::prepare_vmedia_boot`), inserted into the
    /// slot the BMC offers and read back, and the next boot set to the CD and read back.
    /// The ISO's URL is never stored with the job.
    VmediaBoot {
        agent: AgentMode,
        mode: Option<FirmwareMode>,
    },
    /// Take plinth's ISO out of the BMC's virtual media (the ramdisk has reported), read back.
    VmediaEject,
    // --- BIOS ---
    /// Set BIOS attributes at the next boot, boot, and read them back (crate::bios).
    BiosApply {
        attributes: plinth_bmc::BiosAttributes,
        /// The pool's profile this applies, if it is one.
        profile: Option<String>,
    },
    /// Read the BIOS attributes (and registry) into `machine_bios`.
    BiosRead,
    /// Install a catalog firmware image (issue 21; `workers::firmware`). The job's params
    /// carry the rest (component, version, the fetch token), written by
    /// `App::request_firmware_update`.
    FirmwareUpdate {
        image: Uuid,
    },
    /// Read the firmware inventory and store it.
    FirmwareRead,
    /// A new random password for plinth's BMC account, staged, set, proved, stored
    /// (`workers/rotate.rs`).
    RotateCredentials,
}

/// Attempts before a job fails for good (transient failures only are retried).
pub const MAX_ATTEMPTS: i32 = 5;
/// An identity check tells the technician quickly whether the BMC works.
pub const IDENTIFY_ATTEMPTS: i32 = 3;

impl JobSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            JobSpec::Power { .. } => "power",
            JobSpec::BootDevice { .. } => "boot_device",
            JobSpec::Identify => "identify",
            JobSpec::Retire => "retire",
            JobSpec::VmediaBoot { .. } => "vmedia_boot",
            JobSpec::VmediaEject => "vmedia_eject",
            JobSpec::BiosApply { .. } => "bios_apply",
            JobSpec::BiosRead => "bios_read",
            JobSpec::FirmwareUpdate { .. } => "firmware_update",
            JobSpec::FirmwareRead => "firmware_read",
            JobSpec::RotateCredentials => "rotate_credentials",
        }
    }

    pub fn params(&self) -> serde_json::Value {
        match self {
            JobSpec::Power { op, force } => json!({ "action": op, "force": force }),
            JobSpec::BootDevice {
                device,
                persistent,
                mode,
            } => json!({ "device": device, "persistent": persistent, "mode": mode }),
            JobSpec::VmediaBoot { agent, mode } => json!({ "agent": agent, "mode": mode }),
            JobSpec::Identify
            | JobSpec::Retire
            | JobSpec::VmediaEject
            | JobSpec::BiosRead
            | JobSpec::FirmwareRead
            | JobSpec::RotateCredentials => json!({}),
            JobSpec::BiosApply {
                attributes,
                profile,
            } => json!({ "attributes": attributes, "profile": profile }),
            JobSpec::FirmwareUpdate { image } => json!({ "image": image }),
        }
    }

    /// The job stored as `kind` and `params`.
    pub fn parse(kind: &str, params: &serde_json::Value) -> std::result::Result<JobSpec, String> {
        fn field<T: serde::de::DeserializeOwned>(
            kind: &str,
            params: &serde_json::Value,
            name: &str,
        ) -> std::result::Result<T, String> {
            serde_json::from_value(params.get(name).cloned().unwrap_or_default())
                .map_err(|e| format!("{kind} job: bad {name}: {e}"))
        }
        match kind {
            "power" => Ok(JobSpec::Power {
                op: field(kind, params, "action")?,
                force: params
                    .get("force")
                    .and_then(|f| f.as_bool())
                    .unwrap_or(false),
            }),
            "boot_device" => Ok(JobSpec::BootDevice {
                device: field(kind, params, "device")?,
                persistent: params
                    .get("persistent")
                    .and_then(|f| f.as_bool())
                    .unwrap_or(false),
                mode: field(kind, params, "mode")?,
            }),
            "identify" => Ok(JobSpec::Identify),
            "retire" => Ok(JobSpec::Retire),
            "vmedia_boot" => Ok(JobSpec::VmediaBoot {
                agent: field(kind, params, "agent")?,
                mode: field(kind, params, "mode")?,
            }),
            "vmedia_eject" => Ok(JobSpec::VmediaEject),
            "bios_apply" => Ok(JobSpec::BiosApply {
                attributes: field(kind, params, "attributes")?,
                profile: field(kind, params, "profile")?,
            }),
            "bios_read" => Ok(JobSpec::BiosRead),
            "firmware_update" => Ok(JobSpec::FirmwareUpdate {
                image: field(kind, params, "image")?,
            }),
            "firmware_read" => Ok(JobSpec::FirmwareRead),
            "rotate_credentials" => Ok(JobSpec::RotateCredentials),
            other => Err(format!("unknown job kind {other:?}")),
        }
    }

    fn max_attempts(&self) -> i32 {
        match self {
            JobSpec::Identify => IDENTIFY_ATTEMPTS,
            _ => MAX_ATTEMPTS,
        }
    }
}

/// Queues `specs` for machine `id` in `tx`, in order. More than one job share a chain: when
/// one fails, the later ones are cancelled rather than run out of context.
pub(crate) async fn queue(
    tx: &mut PgConnection,
    id: Uuid,
    specs: &[JobSpec],
    requested_by: &str,
) -> Result<Vec<JobRow>> {
    let chain = (specs.len() > 1).then(Uuid::new_v4);
    let mut rows = Vec::with_capacity(specs.len());
    for spec in specs {
        let row = plinth_db::jobs::insert(
            tx,
            plinth_db::jobs::NewJob {
                machine_id: id,
                kind: spec.kind(),
                params: spec.params(),
                max_attempts: spec.max_attempts(),
                chain,
                requested_by,
            },
        )
        .await
        .db()?;
        tracing::info!(job_id = %row.id, machine_id = %id, kind = spec.kind(), params = %row.params, "job queued");
        rows.push(row);
    }
    Ok(rows)
}

/// The jobs a lifecycle verb needs (its `bmc` steps in plinth-types' effects table), given
/// the machine's firmware mode when known and how it boots. By virtual media, the network
/// boot becomes a [`JobSpec::VmediaBoot`] of the ramdisk the verb's state runs, and a verb
/// that leaves a ramdisk state (its BMC work boots no ramdisk) ejects the ISO first.
pub fn transition_jobs(verb: Verb, mode: Option<FirmwareMode>, via: BootMethod) -> Vec<JobSpec> {
    let steps = verb.effects().bmc;
    let mut jobs: Vec<JobSpec> = steps
        .iter()
        .map(
            |step| match (step, via, verb.target().behaviour().agent_mode()) {
                (BmcStep::NetbootOnce, BootMethod::VirtualMedia, Some(agent)) => {
                    JobSpec::VmediaBoot { agent, mode }
                }
                _ => job_for(*step, mode),
            },
        )
        .collect();
    if via == BootMethod::VirtualMedia
        && !steps.is_empty()
        && !steps.contains(&BmcStep::NetbootOnce)
    {
        jobs.insert(0, JobSpec::VmediaEject);
    }
    jobs
}

/// The job that carries out one BMC step of a transition.
fn job_for(step: BmcStep, mode: Option<FirmwareMode>) -> JobSpec {
    match step {
        BmcStep::NetbootOnce => JobSpec::BootDevice {
            device: BootTarget::Pxe,
            persistent: false,
            mode,
        },
        BmcStep::DiskForGood => JobSpec::BootDevice {
            device: BootTarget::Disk,
            persistent: true,
            mode,
        },
        BmcStep::PowerCycle => JobSpec::Power {
            op: PowerOp::Cycle,
            force: false,
        },
        BmcStep::PowerOff => JobSpec::Power {
            op: PowerOp::Off,
            force: true,
        },
        BmcStep::Retire => JobSpec::Retire,
    }
}

pub(crate) fn to_api(r: JobRow) -> Result<Job> {
    Ok(Job {
        id: r.id.uuid(),
        machine_id: r.machine_id,
        kind: r.kind,
        params: r.params,
        state: r.state,
        attempts: r.attempts,
        max_attempts: r.max_attempts,
        last_error: r.last_error,
        result: r.result,
        requested_by: r.requested_by,
        chain: r.chain,
        not_before: r.not_before,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
    })
}

/// Query parameters of `GET /jobs`.
#[derive(Debug, Default, Clone)]
pub struct JobQuery {
    pub machine: Option<Uuid>,
    pub state: Option<JobState>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

pub const DEFAULT_JOB_PAGE: u32 = 100;
pub const MAX_JOB_PAGE: u32 = 1000;

impl App {
    /// `POST /machines/{id}/power`: queues a power job; 202 with it.
    pub async fn request_power(&self, who: &Principal, id: Uuid, req: PowerRequest) -> Result<Job> {
        if req.force.is_some() && req.action != PowerOp::Off {
            return Err(Error::invalid(
                "force_needs_off",
                "force applies only to action off (on, cycle and reset are always immediate)",
            ));
        }
        let spec = JobSpec::Power {
            op: req.action,
            force: req.force.unwrap_or(false),
        };
        self.request_job(who, id, spec).await
    }

    /// `POST /machines/{id}/boot-device`: queues a boot device job; 202 with it.
    pub async fn request_boot_device(
        &self,
        who: &Principal,
        id: Uuid,
        req: BootDeviceRequest,
    ) -> Result<Job> {
        let spec = JobSpec::BootDevice {
            device: req.device,
            persistent: req.persistent.unwrap_or(false),
            mode: req.mode,
        };
        self.request_job(who, id, spec).await
    }

    pub(crate) async fn request_job(
        &self,
        who: &Principal,
        id: Uuid,
        spec: JobSpec,
    ) -> Result<Job> {
        who.require(Permission::ControlPower)?;
        let mut tx = self.begin().await?;
        let row = self.visible_row(&mut tx, who, id).await?;
        let state = row.state;
        if state == MachineState::Decommissioned {
            return Err(Error::conflict(
                "decommissioned",
                "a decommissioned machine has no BMC plinth may use",
            )
            .with_state(state, row.state_version));
        }
        let has_bmc = !plinth_db::bmcs::for_machines(&mut tx, &[id])
            .await
            .db()?
            .is_empty();
        if !has_bmc {
            return Err(Error::conflict(
                "no_bmc",
                format!(
                    "machine {id} has no BMC: set one with PATCH /api/v1/machines/{id} {{\"bmc\": ...}}"
                ),
            ));
        }
        let mut rows = queue(&mut tx, id, &[spec], &who.name).await?;
        let job = rows.pop().ok_or_else(crate::missing("request_job"))?;
        plinth_db::events::insert(
            &mut tx,
            plinth_db::events::NewEvent {
                actor: &who.name,
                machine_id: Some(id),
                kind: "bmc_job_queued",
                from_state: None,
                to_state: None,
                details: json!({ "job": job.id, "kind": job.kind, "params": job.params }),
            },
        )
        .await
        .db()?;
        tx.commit().await.db()?;
        to_api(job)
    }

    /// `GET /jobs/{id}`.
    pub async fn job(&self, who: &Principal, id: Uuid) -> Result<Job> {
        let mut conn = self.conn().await?;
        let row = plinth_db::jobs::get(&mut conn, JobId(id))
            .await
            .db()?
            .ok_or_else(|| Error::not_found(format!("no job {id}")))?;
        // Visible only with its machine (a client sees the jobs of its own machines).
        self.visible_row(&mut conn, who, row.machine_id)
            .await
            .map_err(|e| {
                if e.kind == plinth_types::ErrorKind::NotFound {
                    Error::not_found(format!("no job {id}"))
                } else {
                    e
                }
            })?;
        to_api(row)
    }

    /// `POST /jobs/{id}/cancel`: a queued job (and the later jobs of its chain) will not run.
    /// A running job is not interrupted (a BMC half-way through a change is worse than one
    /// that finishes it); it ends within its call timeout.
    pub async fn cancel_job(&self, who: &Principal, id: Uuid) -> Result<Job> {
        who.require(Permission::ControlPower)?;
        let mut tx = self.begin().await?;
        let job = self.job(who, id).await?;
        let reason = format!("cancelled by {}", who.name);
        let Some(later) = plinth_db::jobs::cancel_queued(&mut tx, JobId(id), &reason)
            .await
            .db()?
        else {
            let (code, msg) = if job.state == JobState::Running {
                (
                    "job_running",
                    "the job is running: it cannot be stopped half-way, and ends within its call timeout",
                )
            } else {
                ("job_finished", "the job has already finished")
            };
            return Err(Error::conflict(
                code,
                format!("{msg} (state {})", job.state.as_str()),
            ));
        };
        plinth_db::events::insert(
            &mut tx,
            plinth_db::events::NewEvent {
                actor: &who.name,
                machine_id: Some(job.machine_id),
                kind: "bmc_job_cancelled",
                from_state: None,
                to_state: None,
                details: json!({ "job": id, "kind": job.kind, "params": job.params, "cancelled_after_it": later }),
            },
        )
        .await
        .db()?;
        let row = plinth_db::jobs::get(&mut tx, JobId(id))
            .await
            .db()?
            .ok_or_else(crate::missing("cancel_job"))?;
        tx.commit().await.db()?;
        tracing::info!(job_id = %id, actor = %who.name, "job cancelled");
        to_api(row)
    }

    /// `GET /jobs?machine=&state=&limit=&cursor=`, newest first.
    pub async fn jobs(&self, who: &Principal, q: JobQuery) -> Result<JobPage> {
        let mut conn = self.conn().await?;
        match q.machine {
            Some(m) => {
                self.visible_row(&mut conn, who, m).await?;
            }
            None => who.require(Permission::ReadInventory)?,
        }
        let limit = q.limit.unwrap_or(DEFAULT_JOB_PAGE);
        if limit == 0 || limit > MAX_JOB_PAGE {
            return Err(Error::invalid(
                "invalid_limit",
                format!("limit must be between 1 and {MAX_JOB_PAGE}"),
            ));
        }
        let before = q
            .cursor
            .as_deref()
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| Error::invalid("invalid_cursor", "cursor is not one plinth gave"))
            })
            .transpose()?;
        let mut rows =
            plinth_db::jobs::list(&mut conn, q.machine, q.state, before, i64::from(limit) + 1)
                .await
                .db()?;
        let next_cursor = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.seq.to_string())
        } else {
            None
        };
        let jobs = rows.into_iter().map(to_api).collect::<Result<Vec<_>>>()?;
        Ok(JobPage { jobs, next_cursor })
    }

    /// Queues the BMC work of a lifecycle verb in the transition's transaction: nothing when
    /// the machine has no BMC (a technician powers it by hand; the event says so).
    pub(crate) async fn queue_transition_jobs(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        verb: Verb,
        who: &Principal,
    ) -> Result<Vec<Uuid>> {
        let Some(boot) = plinth_db::jobs::bmc_boot(tx, id).await.db()? else {
            return Ok(Vec::new());
        };
        let mode = match boot.firmware.as_deref() {
            Some("uefi") => Some(FirmwareMode::Uefi),
            Some("bios") => Some(FirmwareMode::Bios),
            _ => None,
        };
        let specs = transition_jobs(verb, mode, boot.method);
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let rows = queue(tx, id, &specs, &who.name).await?;
        Ok(rows.into_iter().map(|r| r.id.uuid()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_through_kind_and_params() {
        let all = [
            JobSpec::Power {
                op: PowerOp::Off,
                force: true,
            },
            JobSpec::Power {
                op: PowerOp::Cycle,
                force: false,
            },
            JobSpec::BootDevice {
                device: BootTarget::BiosSetup,
                persistent: true,
                mode: Some(FirmwareMode::Uefi),
            },
            JobSpec::BootDevice {
                device: BootTarget::Pxe,
                persistent: false,
                mode: None,
            },
            JobSpec::Identify,
            JobSpec::Retire,
            JobSpec::VmediaBoot {
                agent: AgentMode::Clean,
                mode: Some(FirmwareMode::Bios),
            },
            JobSpec::VmediaEject,
            JobSpec::BiosApply {
                attributes: [
                    ("BootMode".to_owned(), json!("Uefi")),
                    ("NumCores".to_owned(), json!(4)),
                ]
                .into_iter()
                .collect(),
                profile: Some("hpc".into()),
            },
            JobSpec::BiosRead,
            JobSpec::FirmwareUpdate { image: Uuid::nil() },
            JobSpec::FirmwareRead,
            JobSpec::RotateCredentials,
        ];
        for s in all {
            assert_eq!(JobSpec::parse(s.kind(), &s.params()), Ok(s));
        }
        assert!(JobSpec::parse("power", &json!({"action": "explode"})).is_err());
        assert!(JobSpec::parse("format_disk", &json!({})).is_err());
    }

    #[test]
    fn lifecycle_verbs_and_their_jobs() {
        let uefi = Some(FirmwareMode::Uefi);
        for verb in [
            Verb::Inspect,
            Verb::Deploy,
            Verb::Release,
            Verb::Clean,
            Verb::Decommission,
        ] {
            assert_eq!(
                transition_jobs(verb, uefi, BootMethod::Network),
                vec![
                    JobSpec::BootDevice {
                        device: BootTarget::Pxe,
                        persistent: false,
                        mode: uefi
                    },
                    JobSpec::Power {
                        op: PowerOp::Cycle,
                        force: false
                    },
                ],
                "{verb}"
            );
        }
        assert_eq!(
            transition_jobs(Verb::DeployComplete, None, BootMethod::Network),
            vec![
                JobSpec::BootDevice {
                    device: BootTarget::Disk,
                    persistent: true,
                    mode: None
                },
                JobSpec::Power {
                    op: PowerOp::Cycle,
                    force: false
                }
            ]
        );
        assert_eq!(
            transition_jobs(Verb::DecommissionComplete, None, BootMethod::Network),
            vec![JobSpec::Retire]
        );
        for verb in [Verb::InspectComplete, Verb::CleanComplete] {
            assert_eq!(
                transition_jobs(verb, None, BootMethod::Network),
                vec![JobSpec::Power {
                    op: PowerOp::Off,
                    force: true
                }],
                "{verb}"
            );
        }
        for verb in [
            Verb::Enroll,
            Verb::InspectFail,
            Verb::Allocate,
            Verb::CleanFail,
        ] {
            assert!(
                transition_jobs(verb, None, BootMethod::Network).is_empty(),
                "{verb}"
            );
        }
    }

    #[test]
    fn virtual_media_boots_the_ramdisk_from_an_iso_and_ejects_it_after() {
        let vm = BootMethod::VirtualMedia;
        let bios = Some(FirmwareMode::Bios);
        let cycle = JobSpec::Power {
            op: PowerOp::Cycle,
            force: false,
        };
        for (verb, agent) in [
            (Verb::Inspect, AgentMode::Inspect),
            (Verb::Deploy, AgentMode::Deploy),
            (Verb::Release, AgentMode::Clean),
            (Verb::Clean, AgentMode::Clean),
            (Verb::Decommission, AgentMode::Clean),
        ] {
            assert_eq!(
                transition_jobs(verb, bios, vm),
                vec![JobSpec::VmediaBoot { agent, mode: bios }, cycle.clone()],
                "{verb}"
            );
        }
        let off = JobSpec::Power {
            op: PowerOp::Off,
            force: true,
        };
        for verb in [Verb::InspectComplete, Verb::CleanComplete] {
            assert_eq!(
                transition_jobs(verb, bios, vm),
                vec![JobSpec::VmediaEject, off.clone()],
                "{verb}"
            );
        }
        assert_eq!(
            transition_jobs(Verb::DeployComplete, bios, vm),
            vec![
                JobSpec::VmediaEject,
                JobSpec::BootDevice {
                    device: BootTarget::Disk,
                    persistent: true,
                    mode: bios
                },
                cycle
            ]
        );
        assert_eq!(
            transition_jobs(Verb::DecommissionComplete, bios, vm),
            vec![JobSpec::VmediaEject, JobSpec::Retire]
        );
        for verb in [Verb::Enroll, Verb::InspectFail, Verb::Allocate] {
            assert!(transition_jobs(verb, bios, vm).is_empty(), "{verb}");
        }
    }
}
