//! Machines: enroll, list, show, edit.

use std::collections::HashSet;

use plinth_db::machines::{ListFilter, MachineFields, MachineRow};
use plinth_types::api::{BmcSpec, Machine, MachineCreate, MachinePage, MachinePatch};
use plinth_types::{Error, MacAddr, MachineState, Verb};
use uuid::Uuid;

use crate::auth::Permission;
use crate::{App, DbResult, Principal, Result, convert, validate};

/// Query parameters of `GET /machines`.
#[derive(Debug, Default, Clone)]
pub struct MachineQuery {
    pub state: Option<MachineState>,
    pub rack: Option<String>,
    pub pool: Option<String>,
    pub tag: Option<String>,
    pub q: Option<String>,
    /// Only machines of this health (`unknown`: no BMC, or not read yet).
    pub health: Option<plinth_types::health::HealthStatus>,
    /// `bios:1.2.3`: machines whose firmware inventory has that component at that version.
    pub firmware: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1000;

pub(crate) fn not_found(id: Uuid) -> Error {
    Error::not_found(format!("no machine {id}"))
}

/// A machine as `who` may see it. A client (the tenant of the machine) sees its BMC's power
/// state and whether it answers, never where the BMC is, who plinth logs in as, what it
/// reports about the hardware, or its error messages (which name its address).
pub fn as_seen_by(who: &Principal, mut m: Machine) -> Machine {
    if who.owner_scope().is_some()
        && let Some(b) = &mut m.bmc
    {
        b.address.clear();
        b.username.clear();
        b.identity = None;
        b.last_error = None;
    }
    m
}

impl App {
    pub async fn enroll_machine(&self, who: &Principal, req: MachineCreate) -> Result<Machine> {
        who.require(Permission::ManageMachines)?;
        let hostname = req
            .hostname
            .as_deref()
            .map(validate::hostname)
            .transpose()?;
        let pool = req.pool.clone().unwrap_or_else(|| "default".into());
        validate::pool(&pool)?;
        let tags = validate::tags(req.tags.as_deref().unwrap_or_default())?;
        let size_u = req.size_u.unwrap_or(1);
        validate::size_u(size_u)?;
        if req.nics.is_empty() {
            return Err(Error::invalid(
                "no_nics",
                "a machine needs at least one NIC (its MAC is how plinth finds it)",
            ));
        }
        let mut seen = HashSet::new();
        for n in &req.nics {
            if !seen.insert(n.mac) {
                return Err(Error::invalid(
                    "duplicate_mac",
                    format!("MAC {} appears twice in the request", n.mac),
                ));
            }
            if let Some(ip) = n.ipv4 {
                validate::host_ipv4(ip)?;
            }
        }
        let mut ips = HashSet::new();
        for ip in req.nics.iter().filter_map(|n| n.ipv4) {
            if !ips.insert(ip) {
                return Err(Error::invalid(
                    "duplicate_ipv4",
                    format!("{ip} is reserved twice in the request"),
                ));
            }
        }
        if let Some(b) = &req.bmc {
            validate_bmc(b)?;
        }
        let mut tx = self.begin().await?;
        let rack_id = match (&req.rack, req.rack_unit) {
            (Some(name), Some(unit)) => {
                validate::rack_unit(unit)?;
                Some(rack_id(&mut tx, name).await?)
            }
            (Some(_), None) => {
                return Err(Error::invalid(
                    "missing_rack_unit",
                    "rack_unit is required with rack",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::invalid("missing_rack", "rack_unit needs a rack"));
            }
            (None, None) => None,
        };
        let fields = MachineFields {
            hostname: hostname.as_deref(),
            rack_id,
            rack_unit: req.rack_unit,
            size_u,
            pool: &pool,
            tags: &tags,
            arch: req.arch,
            boot_file: None,
        };
        let to = Verb::Enroll.target();
        let id = plinth_db::machines::insert(&mut tx, &fields, to)
            .await
            .db()?;
        let any_pxe = req.nics.iter().any(|n| n.pxe == Some(true));
        for (i, n) in req.nics.iter().enumerate() {
            let pxe = n.pxe.unwrap_or(!any_pxe && i == 0);
            plinth_db::nics::insert(&mut tx, id, n.mac, n.ipv4, pxe)
                .await
                .db()?;
        }
        let mut identify = None;
        if let Some(b) = &req.bmc {
            self.store_bmc(&mut tx, id, b).await?;
            identify = Some(self.queue_identify(&mut tx, id, who).await?);
        }
        let details = serde_json::json!({
            "hostname": hostname, "rack": req.rack, "rack_unit": req.rack_unit,
            "macs": req.nics.iter().map(|n| n.mac.to_string()).collect::<Vec<_>>(),
            "bmc_check_job": identify,
        });
        plinth_db::events::insert(
            &mut tx,
            plinth_db::events::NewEvent {
                actor: &who.name,
                machine_id: Some(id),
                kind: Verb::Enroll.as_str(),
                from_state: None,
                to_state: Some(to.as_str()),
                details,
            },
        )
        .await
        .db()?;
        let row = plinth_db::machines::get(&mut tx, id)
            .await
            .db()?
            .ok_or_else(crate::missing("enroll_machine"))?;
        let machine = convert::machine(&mut tx, row).await?;
        tx.commit().await.db()?;
        tracing::info!(machine_id = %id, hostname = ?machine.hostname, actor = %who.name, "machine enrolled");
        Ok(machine)
    }

    pub(crate) async fn store_bmc(
        &self,
        tx: &mut plinth_db::PgConnection,
        id: Uuid,
        b: &BmcSpec,
    ) -> Result<()> {
        let (nonce, ct) = self.bmc_key.encrypt(id, &b.password);
        plinth_db::bmcs::upsert(
            tx,
            id,
            &plinth_db::bmcs::NewBmc {
                protocol: b.protocol,
                address: &b.address,
                username: &b.username,
                password_nonce: &nonce,
                password_ciphertext: &ct,
                verify_tls: b.verify_tls.unwrap_or(true),
                plain_http: b.plain_http.unwrap_or(false),
            },
        )
        .await
        .db()
    }

    /// The decrypted BMC password of a machine, for the BMC drivers (issue 5). Never sent to
    /// API clients.
    /// Queues the check of a new BMC: credentials, identity, power state.
    async fn queue_identify(
        &self,
        tx: &mut plinth_db::PgConnection,
        id: Uuid,
        who: &Principal,
    ) -> Result<Uuid> {
        let rows = crate::jobs::queue(tx, id, &[crate::jobs::JobSpec::Identify], &who.name).await?;
        rows.first()
            .map(|r| r.id.uuid())
            .ok_or_else(crate::missing("queue_identify"))
    }

    pub async fn bmc_password(&self, id: Uuid) -> Result<Option<String>> {
        let mut conn = self.conn().await?;
        let Some((nonce, ct)) = plinth_db::bmcs::secret(&mut conn, id).await.db()? else {
            return Ok(None);
        };
        self.bmc_key
            .decrypt(id, &nonce, &ct)
            .map(Some)
            .map_err(|e| {
                tracing::error!(machine_id = %id, error = %e, "BMC password does not decrypt");
                Error::internal()
            })
    }

    pub async fn list_machines(&self, who: &Principal, q: MachineQuery) -> Result<MachinePage> {
        let owner = who.owner_scope();
        if owner.is_none() {
            who.require(Permission::ReadInventory)?;
        }
        let limit = q.limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::invalid(
                "invalid_limit",
                format!("limit must be between 1 and {MAX_PAGE}"),
            ));
        }
        let after = q
            .cursor
            .as_deref()
            .map(|c| {
                c.parse::<Uuid>().map_err(|_| {
                    Error::invalid("invalid_cursor", "cursor is not one plinth returned")
                })
            })
            .transpose()?;
        let firmware = q
            .firmware
            .as_deref()
            .map(crate::firmware::parse_filter)
            .transpose()?;
        let q_text = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
        let filter = ListFilter {
            state: q.state,
            rack: q.rack,
            pool: q.pool,
            tag: q.tag,
            q: q_text.map(str::to_owned),
            q_mac: q_text.and_then(|t| t.parse::<MacAddr>().ok()),
            owner_token_id: owner,
            after,
            health: q.health.map(|h| h.as_str().to_owned()),
            firmware,
            limit: i64::from(limit) + 1,
        };
        let mut conn = self.conn().await?;
        let mut rows = plinth_db::machines::list(&mut conn, &filter).await.db()?;
        let next_cursor = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.id.to_string())
        } else {
            None
        };
        let machines = convert::machines(&mut conn, rows)
            .await?
            .into_iter()
            .map(|m| as_seen_by(who, m))
            .collect();
        Ok(MachinePage {
            machines,
            next_cursor,
        })
    }

    /// A machine the caller may see (clients: only their own), or 404.
    pub(crate) async fn visible_row(
        &self,
        conn: &mut plinth_db::PgConnection,
        who: &Principal,
        id: Uuid,
    ) -> Result<MachineRow> {
        let row = plinth_db::machines::get(conn, id)
            .await
            .db()?
            .ok_or_else(|| not_found(id))?;
        if let Some(owner) = who.owner_scope() {
            if !self.owns(conn, owner, &row).await? {
                return Err(not_found(id));
            }
        } else {
            who.require(Permission::ReadInventory)?;
        }
        Ok(row)
    }

    pub(crate) async fn owns(
        &self,
        conn: &mut plinth_db::PgConnection,
        owner: Uuid,
        row: &MachineRow,
    ) -> Result<bool> {
        let Some(alloc) = row.allocation_id else {
            return Ok(false);
        };
        let a = plinth_db::allocations::get(conn, alloc).await.db()?;
        Ok(a.is_some_and(|a| a.owner_token_id == Some(owner)))
    }

    pub async fn get_machine(&self, who: &Principal, id: Uuid) -> Result<Machine> {
        let mut conn = self.conn().await?;
        let row = self.visible_row(&mut conn, who, id).await?;
        Ok(as_seen_by(who, convert::machine(&mut conn, row).await?))
    }

    pub async fn update_machine(
        &self,
        who: &Principal,
        id: Uuid,
        patch: MachinePatch,
    ) -> Result<Machine> {
        who.require(Permission::ManageMachines)?;
        let mut tx = self.begin().await?;
        let cur = plinth_db::machines::get_for_update(&mut tx, id)
            .await
            .db()?
            .ok_or_else(|| not_found(id))?;
        if cur.state == MachineState::Decommissioned {
            return Err(Error::conflict(
                "decommissioned",
                "a decommissioned machine is kept for audit and cannot change",
            )
            .with_state(MachineState::Decommissioned, cur.state_version));
        }
        let hostname = match &patch.hostname {
            Some(Some(h)) => Some(validate::hostname(h)?),
            Some(None) => None,
            None => cur.hostname.clone(),
        };
        let pool = patch.pool.clone().unwrap_or(cur.pool.clone());
        validate::pool(&pool)?;
        let tags = match &patch.tags {
            Some(t) => validate::tags(t)?,
            None => cur.tags.clone(),
        };
        let size_u = patch.size_u.unwrap_or(cur.size_u);
        validate::size_u(size_u)?;
        let (rack_id, rack_unit) = match (&patch.rack, patch.rack_unit) {
            (Some(None), Some(_)) => {
                return Err(Error::invalid("missing_rack", "rack_unit needs a rack"));
            }
            (Some(None), None) => (None, None),
            (Some(Some(name)), unit) => {
                let unit = unit.or(cur.rack_unit).ok_or_else(|| {
                    Error::invalid("missing_rack_unit", "rack_unit is required with rack")
                })?;
                validate::rack_unit(unit)?;
                (Some(rack_id(&mut tx, name).await?), Some(unit))
            }
            (None, Some(unit)) => {
                validate::rack_unit(unit)?;
                let rack = cur
                    .rack_id
                    .ok_or_else(|| Error::invalid("missing_rack", "rack_unit needs a rack"))?;
                (Some(rack), Some(unit))
            }
            (None, None) => (cur.rack_id, cur.rack_unit),
        };
        if let Some(Some(b)) = &patch.bmc {
            validate_bmc(b)?;
        }
        let arch = patch.arch.or(cur.arch);
        let boot_file = match &patch.boot_file {
            Some(Some(f)) => Some(validate::boot_file(f)?),
            Some(None) => None,
            None => cur.boot_file.clone(),
        };
        let fields = MachineFields {
            hostname: hostname.as_deref(),
            rack_id,
            rack_unit,
            size_u,
            pool: &pool,
            tags: &tags,
            arch,
            boot_file: boot_file.as_deref(),
        };
        plinth_db::machines::update_fields(&mut tx, id, &fields)
            .await
            .db()?;
        if let Some(m) = patch.boot_method {
            plinth_db::vmedia::set_machine_boot_method(&mut tx, id, m)
                .await
                .db()?;
        }
        match &patch.bmc {
            Some(Some(b)) => {
                self.store_bmc(&mut tx, id, b).await?;
                self.queue_identify(&mut tx, id, who).await?;
            }
            Some(None) => plinth_db::bmcs::delete(&mut tx, id).await.db()?,
            None => {}
        }
        // The patch's Debug/Serialize never include the BMC password.
        let mut details = serde_json::to_value(&patch).unwrap_or_default();
        if let Some(bmc) = details.get_mut("bmc").and_then(|b| b.as_object_mut()) {
            bmc.remove("password");
        }
        plinth_db::events::insert(
            &mut tx,
            plinth_db::events::NewEvent {
                actor: &who.name,
                machine_id: Some(id),
                kind: "update",
                from_state: None,
                to_state: None,
                details,
            },
        )
        .await
        .db()?;
        let row = plinth_db::machines::get(&mut tx, id)
            .await
            .db()?
            .ok_or_else(crate::missing("update_machine"))?;
        let machine = convert::machine(&mut tx, row).await?;
        tx.commit().await.db()?;
        tracing::info!(machine_id = %id, actor = %who.name, "machine updated");
        Ok(machine)
    }
}

fn validate_bmc(b: &BmcSpec) -> Result<()> {
    match b.protocol {
        plinth_types::api::BmcProtocol::Redfish => validate::redfish_address(&b.address)?,
        plinth_types::api::BmcProtocol::Ipmi => validate::bmc_address(&b.address)?,
    }
    let plain =
        b.protocol == plinth_types::api::BmcProtocol::Redfish && b.address.starts_with("http://");
    if plain && b.plain_http != Some(true) {
        return Err(Error::invalid(
            "plain_http_required",
            format!(
                "{} is plain HTTP: the BMC's password would cross the network in clear. Use https://, or enroll it with plain_http: true (CLI --bmc-plain-http) if that network is trusted",
                b.address
            ),
        ));
    }
    if !plain && b.plain_http == Some(true) {
        return Err(Error::invalid(
            "plain_http_without_http",
            "plain_http is for a Redfish BMC at an http:// address",
        ));
    }
    validate::bmc_credentials(&b.username, &b.password)
}

async fn rack_id(tx: &mut plinth_db::PgConnection, name: &str) -> Result<Uuid> {
    plinth_db::racks::lock_id(tx, name)
        .await
        .db()?
        .ok_or_else(|| Error::invalid("unknown_rack", format!("no rack named {name:?}")))
}
