//! Firmware (issue 21, part 3): what a catalog image installs, a machine's inventory as its
//! BMC last reported it, update requests (a durable `firmware_update` job, run by
//! `workers::firmware`), the per-job URL a BMC fetches its image from, and fleet rollouts
//! (`rollout_pass`: a reconciler pass that starts jobs under a per-rack cap and stops at the
//! first failure).
//!
//! An update is allowed in `ready` and in maintenance only: anywhere else the machine is
//! being worked on or is someone's, and a firmware update reboots it.

use std::collections::HashMap;
use std::path::PathBuf;

use plinth_types::api::Job;
use plinth_types::firmware::{
    COMPONENTS, FirmwareImage, FirmwareImageDescribe, FirmwareInventory, FirmwareItem,
    FirmwareUpdateRequest, Rollout, RolloutMachine, RolloutRequest, UpdateMethod,
};
use plinth_types::{Error, JobId, MachineState};
use serde_json::json;
use uuid::Uuid;

use crate::auth::Permission;
use crate::jobs::{JobSpec, MAX_ATTEMPTS};
use crate::workers::FirmwareParams as Params;
use crate::{App, DbResult, Principal, Result};

/// The most machines one rollout names.
pub const MAX_ROLLOUT: usize = 10_000;

fn check_component(c: &str) -> Result<()> {
    if COMPONENTS.contains(&c) {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_component",
            format!("component {c:?}: one of {}", COMPONENTS.join(", ")),
        ))
    }
}

fn check_version(v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.as_bytes()[0].is_ascii_alphanumeric()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_version",
            format!(
                "version {v:?}: letters, digits, '.', '_', '+', ':' and '-', starting with a letter or digit, at most 64"
            ),
        ))
    }
}

fn firmware_image(r: plinth_db::firmware::FirmwareImageRow) -> Result<FirmwareImage> {
    let undescribed = || {
        Error::conflict(
            "firmware_undescribed",
            format!(
                "image {:?} does not say what it installs: PUT /api/v1/firmware/images/{} {{\"component\": ..., \"version\": ...}}",
                r.name, r.name
            ),
        )
    };
    if r.kind != "firmware" {
        return Err(Error::invalid(
            "not_firmware",
            format!("image {:?} is a {} image, not firmware", r.name, r.kind),
        ));
    }
    Ok(FirmwareImage {
        image_id: r.image_id,
        component: r.component.clone().ok_or_else(undescribed)?,
        version: r.version.clone().ok_or_else(undescribed)?,
        size: u64::try_from(r.size).unwrap_or(0),
        sha256: r.sha256,
        name: r.name,
    })
}

/// A machine-table filter `component:version` (`bios:1.2.3`), checked.
pub fn parse_filter(s: &str) -> Result<(String, String)> {
    let (c, v) = s.split_once(':').ok_or_else(|| {
        Error::invalid(
            "invalid_firmware_filter",
            format!("firmware filter {s:?}: component:version, e.g. bios:1.2.3"),
        )
    })?;
    check_component(c)?;
    check_version(v)?;
    Ok((c.to_owned(), v.to_owned()))
}

/// Whether a firmware update may run in this machine's state.
pub fn update_allowed(state: MachineState, maintenance: bool) -> bool {
    state != MachineState::Decommissioned && (state == MachineState::Ready || maintenance)
}

impl App {
    /// `PUT /firmware/images/{name}`: says what a catalog image of kind `firmware` installs.
    pub async fn describe_firmware_image(
        &self,
        who: &Principal,
        name: &str,
        req: FirmwareImageDescribe,
    ) -> Result<FirmwareImage> {
        who.require(Permission::ManageImages)?;
        check_component(&req.component)?;
        check_version(&req.version)?;
        let mut tx = self.begin().await?;
        let row = plinth_db::firmware::image_by_name(&mut tx, name)
            .await
            .db()?
            .ok_or_else(|| Error::not_found(format!("no image named {name:?}")))?;
        if row.kind != "firmware" {
            return Err(Error::invalid(
                "not_firmware",
                format!(
                    "image {name:?} is a {} image: register firmware with kind firmware",
                    row.kind
                ),
            ));
        }
        plinth_db::firmware::describe_image(
            &mut tx,
            row.image_id,
            &req.component,
            &req.version,
            &who.name,
        )
        .await
        .db()?;
        crate::record_event(
            &mut tx,
            who,
            "firmware_image_described",
            json!({ "image": name, "component": req.component, "version": req.version }),
        )
        .await?;
        let row = plinth_db::firmware::image_by_id(&mut tx, row.image_id)
            .await
            .db()?
            .ok_or_else(crate::missing("describe_firmware_image"))?;
        tx.commit().await.db()?;
        firmware_image(row)
    }

    /// `GET /machines/{id}/firmware`.
    pub async fn machine_firmware(&self, who: &Principal, id: Uuid) -> Result<FirmwareInventory> {
        let mut conn = self.conn().await?;
        self.visible_row(&mut conn, who, id).await?;
        let inv = plinth_db::firmware::inventory(&mut conn, id).await.db()?;
        let (items, read_at) = match inv {
            Some((v, at)) => (
                serde_json::from_value::<Vec<FirmwareItem>>(v)
                    .map_err(crate::internal("machine_firmware"))?,
                Some(at),
            ),
            None => (Vec::new(), None),
        };
        Ok(FirmwareInventory {
            machine_id: id,
            items,
            read_at,
        })
    }

    /// Checks a machine for a firmware job and locks its row: visible, with a BMC, in `ready`
    /// or in maintenance.
    async fn firmware_target(
        &self,
        tx: &mut plinth_db::PgConnection,
        who: &Principal,
        id: Uuid,
        update: bool,
    ) -> Result<()> {
        self.visible_row(tx, who, id).await?;
        let row = plinth_db::machines::get_for_update(tx, id)
            .await
            .db()?
            .ok_or_else(|| Error::not_found(format!("no machine {id}")))?;
        if update && !update_allowed(row.state, row.maintenance) {
            return Err(Error::conflict(
                "firmware_not_allowed",
                format!(
                    "machine {id} is {}: firmware is updated in ready or in maintenance only (an update reboots the machine)",
                    row.state.as_str()
                ),
            )
            .with_state(row.state, row.state_version));
        }
        if row.state == MachineState::Decommissioned {
            return Err(Error::conflict(
                "decommissioned",
                "a decommissioned machine has no BMC plinth may use",
            ));
        }
        if plinth_db::bmcs::for_machines(tx, &[id])
            .await
            .db()?
            .is_empty()
        {
            return Err(Error::conflict(
                "no_bmc",
                format!("machine {id} has no BMC: firmware is read and updated through it"),
            ));
        }
        Ok(())
    }

    /// `POST /machines/{id}/firmware/read`: queues an inventory read.
    pub async fn request_firmware_read(&self, who: &Principal, id: Uuid) -> Result<Job> {
        who.require(Permission::ControlPower)?;
        let mut tx = self.begin().await?;
        self.firmware_target(&mut tx, who, id, false).await?;
        let mut rows = crate::jobs::queue(&mut tx, id, &[JobSpec::FirmwareRead], &who.name).await?;
        tx.commit().await.db()?;
        crate::jobs::to_api(rows.pop().ok_or_else(crate::missing("firmware_read"))?)
    }

    /// `POST /machines/{id}/firmware`: queues an update from a catalog image; 202 with the job.
    pub async fn request_firmware_update(
        &self,
        who: &Principal,
        id: Uuid,
        req: FirmwareUpdateRequest,
    ) -> Result<Job> {
        who.require(Permission::ControlPower)?;
        let mut tx = self.begin().await?;
        self.firmware_target(&mut tx, who, id, true).await?;
        let img = plinth_db::firmware::image_by_name(&mut tx, &req.image)
            .await
            .db()?
            .ok_or_else(|| Error::not_found(format!("no image named {:?}", req.image)))?;
        let img = firmware_image(img)?;
        let job = queue_update(&mut tx, id, &img, req.method, &who.name).await?;
        tx.commit().await.db()?;
        crate::jobs::to_api(job)
    }

    /// The file of a running update's image, for the BMC that fetches it at
    /// `/firmware/{job}/{token}`: only while the job runs, only with its token.
    pub async fn firmware_fetch(&self, job: Uuid, token: &str) -> Result<PathBuf> {
        let nope = || Error::not_found("no such firmware image");
        let mut conn = self.conn().await?;
        let row = plinth_db::jobs::get(&mut conn, JobId(job))
            .await
            .db()?
            .ok_or_else(nope)?;
        if row.kind != "firmware_update" || row.state != plinth_types::api::JobState::Running {
            return Err(nope());
        }
        let params: Params = serde_json::from_value(row.params).map_err(|_| nope())?;
        // Compared as digests: the time taken says nothing about the token.
        use sha2::Digest;
        if sha2::Sha256::digest(params.token.as_bytes()) != sha2::Sha256::digest(token.as_bytes()) {
            tracing::warn!(job_id = %job, "a firmware fetch with the wrong token");
            return Err(nope());
        }
        let img = plinth_db::firmware::image_by_id(&mut conn, params.image)
            .await
            .db()?
            .ok_or_else(nope)?;
        crate::files::resolve(&self.boot_env().settings.images_root, &img.path).map_err(|r| {
            tracing::warn!(job_id = %job, refusal = %r, "a firmware image's file");
            nope()
        })
    }

    /// `POST /firmware/rollouts`.
    pub async fn create_rollout(&self, who: &Principal, req: RolloutRequest) -> Result<Rollout> {
        who.require(Permission::ControlPower)?;
        who.require(Permission::ReadInventory)?;
        let cap = req.max_per_rack.unwrap_or(1);
        if cap == 0 || cap > 1000 {
            return Err(Error::invalid(
                "invalid_max_per_rack",
                "max_per_rack must be between 1 and 1000",
            ));
        }
        let chosen = [
            req.machines.is_some(),
            req.rack.is_some(),
            req.pool.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if chosen != 1 {
            return Err(Error::invalid(
                "invalid_rollout",
                "name the machines with exactly one of machines, rack or pool",
            ));
        }
        let mut tx = self.begin().await?;
        let img = plinth_db::firmware::image_by_name(&mut tx, &req.image)
            .await
            .db()?
            .ok_or_else(|| Error::not_found(format!("no image named {:?}", req.image)))?;
        let img = firmware_image(img)?;
        let rows = match &req.machines {
            Some(ids) => {
                if ids.is_empty() || ids.len() > MAX_ROLLOUT {
                    return Err(Error::invalid(
                        "invalid_rollout",
                        format!("machines: between 1 and {MAX_ROLLOUT}"),
                    ));
                }
                let mut seen = std::collections::HashSet::new();
                if let Some(d) = ids.iter().find(|i| !seen.insert(**i)) {
                    return Err(Error::invalid(
                        "invalid_rollout",
                        format!("machine {d} is named twice"),
                    ));
                }
                let rows = plinth_db::machines::get_many(&mut tx, ids).await.db()?;
                let by_id: HashMap<Uuid, _> = rows.into_iter().map(|r| (r.id, r)).collect();
                let mut out = Vec::new();
                for id in ids {
                    out.push(
                        by_id
                            .get(id)
                            .cloned()
                            .ok_or_else(|| Error::not_found(format!("no machine {id}")))?,
                    );
                }
                out
            }
            None => {
                if let Some(r) = &req.rack
                    && plinth_db::racks::get(&mut tx, r).await.db()?.is_none()
                {
                    return Err(Error::not_found(format!("no rack named {r:?}")));
                }
                plinth_db::machines::list(
                    &mut tx,
                    &plinth_db::machines::ListFilter {
                        rack: req.rack.clone(),
                        pool: req.pool.clone(),
                        limit: MAX_ROLLOUT as i64 + 1,
                        ..Default::default()
                    },
                )
                .await
                .db()?
                .into_iter()
                .filter(|r| r.state != MachineState::Decommissioned)
                .collect()
            }
        };
        if rows.is_empty() {
            return Err(Error::invalid(
                "invalid_rollout",
                "the rack or pool has no machines",
            ));
        }
        if rows.len() > MAX_ROLLOUT {
            return Err(Error::invalid(
                "invalid_rollout",
                format!("more than {MAX_ROLLOUT} machines"),
            ));
        }
        let mut rows = rows;
        if req.machines.is_none() {
            // A rack's or pool's machines go rack by rack, bottom unit first.
            rows.sort_by(|a, b| {
                (&a.rack_name, a.rack_unit, &a.hostname, a.id).cmp(&(
                    &b.rack_name,
                    b.rack_unit,
                    &b.hostname,
                    b.id,
                ))
            });
        }
        let members: Vec<(Uuid, Option<Uuid>)> = rows.iter().map(|r| (r.id, r.rack_id)).collect();
        let id = plinth_db::firmware::insert_rollout(
            &mut tx,
            img.image_id,
            cap as i32,
            &members,
            &who.name,
        )
        .await
        .db()?;
        crate::record_event(
            &mut tx,
            who,
            "firmware_rollout_created",
            json!({ "rollout": id, "image": img.name, "machines": members.len(), "max_per_rack": cap }),
        )
        .await?;
        tx.commit().await.db()?;
        self.rollout(who, id).await
    }

    /// `GET /firmware/rollouts/{id}`.
    pub async fn rollout(&self, who: &Principal, id: Uuid) -> Result<Rollout> {
        who.require(Permission::ReadInventory)?;
        let mut conn = self.conn().await?;
        let r = plinth_db::firmware::rollout(&mut conn, id)
            .await
            .db()?
            .ok_or_else(|| Error::not_found(format!("no rollout {id}")))?;
        let members = plinth_db::firmware::members(&mut conn, id).await.db()?;
        Ok(rollout_api(r, members))
    }

    /// `GET /firmware/rollouts`, newest first.
    pub async fn rollouts(&self, who: &Principal) -> Result<Vec<Rollout>> {
        who.require(Permission::ReadInventory)?;
        let mut conn = self.conn().await?;
        let rows = plinth_db::firmware::rollouts(&mut conn, 100).await.db()?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let members = plinth_db::firmware::members(&mut conn, r.id).await.db()?;
            out.push(rollout_api(r, members));
        }
        Ok(out)
    }

    /// The rollout pass: for every running rollout (each locked, so one instance advances
    /// it), the members' states from their jobs; the first failure stops the rollout (nothing
    /// new starts; its pending machines are skipped); otherwise pending machines start while
    /// their rack has fewer than `max_per_rack` running. Returns the jobs started.
    pub async fn rollout_pass(&self) -> Result<usize> {
        let mut tx = self.begin().await?;
        let ids = plinth_db::firmware::lock_running(&mut tx).await.db()?;
        let mut started = 0;
        for id in ids {
            let Some(r) = plinth_db::firmware::rollout(&mut tx, id).await.db()? else {
                continue;
            };
            let members = plinth_db::firmware::sync_members(&mut tx, id).await.db()?;
            if let Some(f) = members.iter().find(|m| m.state == "failed") {
                let reason = format!(
                    "machine {} failed: {}",
                    f.hostname
                        .clone()
                        .unwrap_or_else(|| f.machine_id.to_string()),
                    f.error.as_deref().unwrap_or("?")
                );
                self.end_rollout(&mut tx, id, "failed", Some(&reason))
                    .await?;
                continue;
            }
            if members.iter().all(|m| m.state == "succeeded") {
                self.end_rollout(&mut tx, id, "succeeded", None).await?;
                continue;
            }
            let img = plinth_db::firmware::image_by_id(&mut tx, r.image_id)
                .await
                .db()?
                .ok_or_else(crate::missing("rollout_pass"))?;
            let img = match firmware_image(img) {
                Ok(i) => i,
                Err(e) => {
                    self.end_rollout(&mut tx, id, "failed", Some(&e.message))
                        .await?;
                    continue;
                }
            };
            // Running per rack; a machine without a rack is a rack of its own.
            let rack_of = |m: &plinth_db::firmware::MemberRow| m.rack_id.unwrap_or(m.machine_id);
            let mut running: HashMap<Uuid, i32> = HashMap::new();
            for m in members.iter().filter(|m| m.state == "running") {
                *running.entry(rack_of(m)).or_default() += 1;
            }
            let mut stop: Option<String> = None;
            for m in members.iter().filter(|m| m.state == "pending") {
                let n = running.entry(rack_of(m)).or_default();
                if *n >= r.max_per_rack {
                    continue;
                }
                let row = plinth_db::machines::get_for_update(&mut tx, m.machine_id)
                    .await
                    .db()?;
                let has_bmc = !plinth_db::bmcs::for_machines(&mut tx, &[m.machine_id])
                    .await
                    .db()?
                    .is_empty();
                let why = match &row {
                    None => Some("the machine is gone".to_owned()),
                    Some(row) if !update_allowed(row.state, row.maintenance) => Some(format!(
                        "it is {} (firmware is updated in ready or in maintenance only)",
                        row.state.as_str()
                    )),
                    Some(_) if !has_bmc => Some("it has no BMC".to_owned()),
                    Some(_) => None,
                };
                if let Some(why) = why {
                    plinth_db::firmware::set_member(
                        &mut tx,
                        id,
                        m.machine_id,
                        "failed",
                        None,
                        Some(&why),
                    )
                    .await
                    .db()?;
                    stop = Some(format!(
                        "machine {} was not updated: {why}",
                        m.hostname
                            .clone()
                            .unwrap_or_else(|| m.machine_id.to_string())
                    ));
                    break;
                }
                let actor = format!("rollout:{id}");
                let job = queue_update(&mut tx, m.machine_id, &img, None, &actor).await?;
                plinth_db::firmware::set_member(
                    &mut tx,
                    id,
                    m.machine_id,
                    "running",
                    Some(job.id.uuid()),
                    None,
                )
                .await
                .db()?;
                *n += 1;
                started += 1;
            }
            if let Some(reason) = stop {
                self.end_rollout(&mut tx, id, "failed", Some(&reason))
                    .await?;
            }
        }
        tx.commit().await.db()?;
        Ok(started)
    }

    async fn end_rollout(
        &self,
        tx: &mut plinth_db::PgConnection,
        id: Uuid,
        state: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        if plinth_db::firmware::finish_rollout(tx, id, state, reason)
            .await
            .db()?
        {
            crate::record_event_as(
                tx,
                "system",
                None,
                &format!("firmware_rollout_{state}"),
                json!({ "rollout": id, "reason": reason }),
            )
            .await?;
            tracing::info!(rollout = %id, state, reason, "firmware rollout ended");
        }
        Ok(())
    }
}

/// Queues a firmware inventory read for a machine with a Redfish BMC (IPMI has no firmware
/// inventory): after an inspection, in its transaction, so the read runs once it commits.
pub(crate) async fn queue_inventory_read(
    tx: &mut plinth_db::PgConnection,
    machine_id: Uuid,
    actor: &str,
) -> Result<()> {
    let bmcs = plinth_db::bmcs::for_machines(tx, &[machine_id])
        .await
        .db()?;
    if bmcs
        .iter()
        .any(|b| b.protocol == plinth_types::api::BmcProtocol::Redfish)
    {
        crate::jobs::queue(tx, machine_id, &[JobSpec::FirmwareRead], actor).await?;
    }
    Ok(())
}

/// Queues one update job, with its event.
async fn queue_update(
    tx: &mut plinth_db::PgConnection,
    machine_id: Uuid,
    img: &FirmwareImage,
    method: Option<UpdateMethod>,
    actor: &str,
) -> Result<plinth_db::jobs::JobRow> {
    let token = hex::encode(rand::random::<[u8; 24]>());
    let params = Params {
        image: img.image_id,
        image_name: img.name.clone(),
        component: img.component.clone(),
        version: img.version.clone(),
        token,
        method: method.unwrap_or(UpdateMethod::Auto),
    };
    let job = plinth_db::jobs::insert(
        tx,
        plinth_db::jobs::NewJob {
            machine_id,
            kind: JobSpec::FirmwareUpdate {
                image: img.image_id,
            }
            .kind(),
            params: serde_json::to_value(&params).map_err(crate::internal("queue_update"))?,
            max_attempts: MAX_ATTEMPTS,
            chain: None,
            requested_by: actor,
        },
    )
    .await
    .db()?;
    crate::record_event_as(
        tx,
        actor,
        Some(machine_id),
        "firmware_update_queued",
        json!({ "job": job.id, "image": img.name, "component": img.component, "version": img.version }),
    )
    .await?;
    tracing::info!(job_id = %job.id, %machine_id, image = %img.name, "firmware update queued");
    Ok(job)
}

fn rollout_api(
    r: plinth_db::firmware::RolloutRow,
    members: Vec<plinth_db::firmware::MemberRow>,
) -> Rollout {
    Rollout {
        id: r.id,
        image: r.image_name,
        max_per_rack: u32::try_from(r.max_per_rack).unwrap_or(1),
        state: r.state,
        reason: r.reason,
        created_by: r.created_by,
        created_at: r.created_at,
        finished_at: r.finished_at,
        machines: members
            .into_iter()
            .map(|m| RolloutMachine {
                machine_id: m.machine_id,
                hostname: m.hostname,
                rack_id: m.rack_id,
                state: m.state,
                job_id: m.job_id,
                error: m.error,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_components_and_states() {
        for v in ["1.1.0", "2.19.1", "A03", "6.10.30.00", "1.0+build:7"] {
            assert!(check_version(v).is_ok(), "{v}");
        }
        for v in ["", "-1", "1 0", "1/0", &"9".repeat(65)] {
            assert!(check_version(v).is_err(), "{v}");
        }
        assert!(check_component("bios").is_ok() && check_component("BIOS").is_err());
        assert_eq!(
            parse_filter("bios:1.2.3").unwrap(),
            ("bios".to_owned(), "1.2.3".to_owned())
        );
        // A version may hold colons; the component is what comes before the first.
        assert_eq!(parse_filter("nic:1:2").unwrap().1, "1:2");
        for bad in ["bios", "cpu:1", "bios:", ":1"] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
        assert!(update_allowed(MachineState::Ready, false));
        assert!(update_allowed(MachineState::Deployed, true));
        assert!(!update_allowed(MachineState::Deployed, false));
        assert!(!update_allowed(MachineState::Inspecting, false));
        assert!(!update_allowed(MachineState::Decommissioned, true));
    }
}
