//! BIOS settings (issue 21): a machine's BIOS as plinth last read it, a change asked of it (a
//! `bios_apply` job: set pending, boot, read back; see `workers::bios`), the named profiles a
//! pool's machines are given on their way to `ready`, and the read at inspection.
//!
//! What is checked before anything is queued: the shape of the change (names, scalar values,
//! sizes), then, when plinth has read the BMC's attribute registry, each attribute against it
//! (known, writable, of its type and range), else against the attributes the BMC reported (an
//! attribute it does not report is refused). The machine's state: a change reboots it, so it is
//! allowed where the machine is not in use (enrolled, ready, a failed state), in use
//! (allocated, deployed) only with `force`, and never while a ramdisk is at work or the
//! machine is leaving.
//!
//! The BIOS read-back lives in `machine_bios`, apart from the facts: the facts come from the
//! agent in a booted OS, which must have no way to write what the BMC reports.

use std::collections::BTreeMap;

use plinth_bmc::BiosAttributes;
use plinth_bmc::bios::{Registry, check_registry, check_shape};
use plinth_types::api::{BiosProfile, BiosProfileCreate, BiosRequest, Job, MachineBios};
use plinth_types::{Error, MachineState, Verb};
use serde_json::json;
use uuid::Uuid;

use crate::auth::Permission;
use crate::jobs::{JobSpec, queue, to_api};
use crate::{App, DbResult, Principal, Result, validate};

/// The states a BIOS change may be asked in without `force` (the machine is not in use), and
/// with it (in use: the change reboots the tenant's OS).
pub const BIOS_STATES: &[MachineState] = &[
    MachineState::Enrolled,
    MachineState::Ready,
    MachineState::InspectFailed,
    MachineState::CleanFailed,
    MachineState::DeployFailed,
];
pub const BIOS_STATES_FORCED: &[MachineState] = &[MachineState::Allocated, MachineState::Deployed];

fn to_attrs(v: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    v.as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// The shape of a change: a 400 listing every problem.
fn check_attrs(attrs: &BiosAttributes) -> Result<()> {
    let bad = check_shape(attrs);
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid("invalid_bios_attributes", bad.join("; ")))
    }
}

fn profile_api(r: plinth_db::bios::ProfileRow) -> BiosProfile {
    BiosProfile {
        attributes: to_attrs(&r.attributes),
        name: r.name,
        pools: r.pools,
        created_by: r.created_by,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

impl App {
    /// `GET /machines/{id}/bios`.
    pub async fn machine_bios(&self, who: &Principal, id: Uuid) -> Result<MachineBios> {
        let mut conn = self.conn().await?;
        self.visible_row(&mut conn, who, id).await?;
        let read = plinth_db::bios::read_of(&mut conn, id).await.db()?;
        let last = plinth_db::bios::last_apply(&mut conn, id).await.db()?;
        let profile = plinth_db::bios::profile_for_machine(&mut conn, id)
            .await
            .db()?
            .map(|(n, _)| n);
        Ok(MachineBios {
            machine_id: id,
            attributes: read.as_ref().map(|r| to_attrs(&r.attributes)),
            pending: read.as_ref().map(|r| to_attrs(&r.pending)),
            read_at: read.as_ref().map(|r| r.read_at),
            registry: read.as_ref().is_some_and(|r| r.registry.is_some()),
            profile,
            last_apply: last.map(to_api).transpose()?,
        })
    }

    /// `PATCH /machines/{id}/bios`: checks the change and queues a `bios_apply` job (202).
    pub async fn request_bios(&self, who: &Principal, id: Uuid, req: BiosRequest) -> Result<Job> {
        who.require(Permission::ManageMachines)?;
        check_attrs(&req.attributes)?;
        let mut tx = self.begin().await?;
        let row = self.visible_row(&mut tx, who, id).await?;
        let allowed = BIOS_STATES.contains(&row.state)
            || (req.force && BIOS_STATES_FORCED.contains(&row.state));
        if !allowed {
            let msg = if BIOS_STATES_FORCED.contains(&row.state) {
                format!(
                    "machine {id} is {}: a BIOS change reboots it; ask again with force to do it anyway",
                    row.state.as_str()
                )
            } else {
                format!(
                    "machine {id} is {}: BIOS settings can be changed when it is {}",
                    row.state.as_str(),
                    BIOS_STATES
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(Error::conflict("bios_state", msg).with_state(row.state, row.state_version));
        }
        if !plinth_db::bios::has_redfish_bmc(&mut tx, id).await.db()? {
            return Err(Error::conflict(
                "no_bios_bmc",
                format!(
                    "machine {id} has no Redfish BMC: plinth changes BIOS settings through Redfish only"
                ),
            ));
        }
        if let Some(read) = plinth_db::bios::read_of(&mut tx, id).await.db()? {
            let bad = match read
                .registry
                .and_then(|r| serde_json::from_value::<Registry>(r).ok())
            {
                Some(reg) => check_registry(&reg, &req.attributes),
                None => {
                    let known = to_attrs(&read.attributes);
                    req.attributes
                        .keys()
                        .filter(|k| !known.contains_key(*k))
                        .map(|k| format!("{k}: the BMC does not report such an attribute"))
                        .collect()
                }
            };
            if !bad.is_empty() {
                return Err(Error::invalid("invalid_bios_attributes", bad.join("; ")));
            }
        }
        let spec = JobSpec::BiosApply {
            attributes: req.attributes.clone(),
            profile: None,
        };
        let mut rows = queue(&mut tx, id, &[spec], &who.name).await?;
        let job = rows.pop().ok_or_else(crate::missing("request_bios"))?;
        crate::record_event_as(
            &mut tx,
            &who.name,
            Some(id),
            "bios_change_requested",
            json!({ "job": job.id, "attributes": req.attributes, "force": req.force,
                "state": row.state.as_str() }),
        )
        .await?;
        tx.commit().await.db()?;
        tracing::info!(machine_id = %id, job_id = %job.id, actor = %who.name, "BIOS change queued");
        to_api(job)
    }

    /// The BIOS jobs of a transition, in its transaction: on the way to `ready` (inspection
    /// or cleaning complete) a machine with a Redfish BMC gets its pool's profile applied; an
    /// inspection without a profile reads the BIOS into `machine_bios`.
    pub(crate) async fn queue_bios_jobs(
        &self,
        tx: &mut plinth_db::PgConnection,
        id: Uuid,
        verb: Verb,
        who: &Principal,
    ) -> Result<Vec<Uuid>> {
        if !matches!(verb, Verb::InspectComplete | Verb::CleanComplete)
            || !plinth_db::bios::has_redfish_bmc(tx, id).await.db()?
        {
            return Ok(Vec::new());
        }
        let spec = match plinth_db::bios::profile_for_machine(tx, id).await.db()? {
            Some((name, attrs)) => JobSpec::BiosApply {
                attributes: to_attrs(&attrs),
                profile: Some(name),
            },
            None if verb == Verb::InspectComplete => JobSpec::BiosRead,
            None => return Ok(Vec::new()),
        };
        let rows = queue(tx, id, &[spec], &who.name).await?;
        Ok(rows.into_iter().map(|r| r.id.uuid()).collect())
    }

    /// `GET /bios-profiles`.
    pub async fn bios_profiles(&self, who: &Principal) -> Result<Vec<BiosProfile>> {
        who.require(Permission::ReadInventory)?;
        let mut conn = self.conn().await?;
        Ok(plinth_db::bios::list_profiles(&mut conn)
            .await
            .db()?
            .into_iter()
            .map(profile_api)
            .collect())
    }

    /// `GET /bios-profiles/{name}`.
    pub async fn bios_profile(&self, who: &Principal, name: &str) -> Result<BiosProfile> {
        who.require(Permission::ReadInventory)?;
        let mut conn = self.conn().await?;
        plinth_db::bios::get_profile(&mut conn, name)
            .await
            .db()?
            .map(profile_api)
            .ok_or_else(|| Error::not_found(format!("no BIOS profile {name:?}")))
    }

    /// `POST /bios-profiles` (201), `PUT /bios-profiles/{name}` (replace): admins only, like
    /// a pool's other settings.
    pub async fn put_bios_profile(
        &self,
        who: &Principal,
        p: BiosProfileCreate,
        create: bool,
    ) -> Result<BiosProfile> {
        who.require(Permission::ManagePools)?;
        validate::pool(&p.name).map_err(|_| {
            Error::invalid(
                "invalid_name",
                "a profile name is 1 to 63 letters, digits, . _ -, starting with a letter or digit",
            )
        })?;
        check_attrs(&p.attributes)?;
        let attrs = json!(p.attributes);
        let mut tx = self.begin().await?;
        let exists = plinth_db::bios::get_profile(&mut tx, &p.name)
            .await
            .db()?
            .is_some();
        match (create, exists) {
            (true, true) => {
                return Err(Error::conflict(
                    "profile_exists",
                    format!("a BIOS profile {:?} exists: PUT it to replace it", p.name),
                ));
            }
            (true, false) => plinth_db::bios::insert_profile(&mut tx, &p.name, &attrs, &who.name)
                .await
                .db()?,
            (false, false) => {
                return Err(Error::not_found(format!("no BIOS profile {:?}", p.name)));
            }
            (false, true) => {
                plinth_db::bios::update_profile(&mut tx, &p.name, &attrs)
                    .await
                    .db()?;
            }
        }
        crate::record_event(
            &mut tx,
            who,
            if create {
                "bios_profile_added"
            } else {
                "bios_profile_updated"
            },
            json!({ "profile": p.name, "attributes": attrs }),
        )
        .await?;
        let row = plinth_db::bios::get_profile(&mut tx, &p.name)
            .await
            .db()?
            .ok_or_else(crate::missing("put_bios_profile"))?;
        tx.commit().await.db()?;
        Ok(profile_api(row))
    }

    /// `DELETE /bios-profiles/{name}`: refused while a pool uses it.
    pub async fn remove_bios_profile(&self, who: &Principal, name: &str) -> Result<()> {
        who.require(Permission::ManagePools)?;
        let mut tx = self.begin().await?;
        let Some(p) = plinth_db::bios::get_profile(&mut tx, name).await.db()? else {
            return Err(Error::not_found(format!("no BIOS profile {name:?}")));
        };
        if !p.pools.is_empty() {
            return Err(Error::conflict(
                "profile_in_use",
                format!(
                    "the BIOS profile {name:?} is used by the pools {}: set theirs to another first",
                    p.pools.join(", ")
                ),
            ));
        }
        plinth_db::bios::delete_profile(&mut tx, name).await.db()?;
        crate::record_event(
            &mut tx,
            who,
            "bios_profile_removed",
            json!({ "profile": name }),
        )
        .await?;
        tx.commit().await.db()?;
        Ok(())
    }

    /// `PUT /pools/{name}/bios-profile`: the profile the pool's machines get on their way to
    /// `ready` (`None`: none). Admins only.
    pub async fn set_pool_bios_profile(
        &self,
        who: &Principal,
        pool: &str,
        profile: Option<&str>,
    ) -> Result<Option<String>> {
        who.require(Permission::ManagePools)?;
        validate::pool(pool)?;
        let mut tx = self.begin().await?;
        if let Some(p) = profile
            && plinth_db::bios::get_profile(&mut tx, p)
                .await
                .db()?
                .is_none()
        {
            return Err(Error::invalid(
                "unknown_profile",
                format!("no BIOS profile {p:?}: add it first"),
            ));
        }
        plinth_db::bios::set_pool_profile(&mut tx, pool, profile)
            .await
            .db()?;
        crate::record_event(
            &mut tx,
            who,
            "pool_updated",
            json!({ "pool": pool, "bios_profile": profile }),
        )
        .await?;
        tx.commit().await.db()?;
        Ok(profile.map(str::to_owned))
    }
}
