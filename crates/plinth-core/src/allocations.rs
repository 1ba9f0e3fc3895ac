//! Allocations: hand ready machines to a client, all or nothing, without two requests ever
//! getting the same machine (rows are taken with `FOR UPDATE SKIP LOCKED`).

use std::collections::HashMap;

use plinth_db::machines::AllocationFilter;
use plinth_types::api::{Allocation, AllocationRequest};
use plinth_types::{Error, Verb};
use uuid::Uuid;

use crate::auth::Permission;
use crate::{App, DbResult, Principal, Result, convert, validate};

pub const MAX_COUNT: u32 = 1000;

fn seen(who: &Principal, ms: Vec<plinth_types::api::Machine>) -> Vec<plinth_types::api::Machine> {
    ms.into_iter()
        .map(|m| crate::machines::as_seen_by(who, m))
        .collect()
}

impl App {
    pub async fn allocate(&self, who: &Principal, req: AllocationRequest) -> Result<Allocation> {
        who.require(Permission::Allocate)?;
        let count = req.count.unwrap_or(1);
        if count == 0 || count > MAX_COUNT {
            return Err(Error::invalid(
                "invalid_count",
                format!("count must be between 1 and {MAX_COUNT}"),
            ));
        }
        let tags = validate::tags(req.tags.as_deref().unwrap_or_default())?;
        if let Some(p) = &req.pool {
            validate::pool(p)?;
        }
        let too_big = |v: u64| {
            i64::try_from(v)
                .map_err(|_| Error::invalid("invalid_constraint", "a constraint is out of range"))
        };
        let filter = AllocationFilter {
            arch: req.arch.map(|a| a.as_str().to_owned()),
            min_cpus: req.min_cpus.map(i64::from),
            min_memory_mib: req.min_memory_mib.map(too_big).transpose()?,
            min_disk_bytes: req
                .min_disk_gib
                .map(|g| too_big(g.saturating_mul(1 << 30)))
                .transpose()?,
            tags,
            pool: req.pool.clone(),
            rack: req.rack.clone(),
            healths: req
                .health
                .unwrap_or_default()
                .allowed()
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            count: i64::from(count),
        };
        let request = serde_json::to_value(&req).map_err(crate::internal("allocate"))?;
        let mut tx = self.begin().await?;
        let picked = plinth_db::machines::pick_for_allocation(&mut tx, &filter)
            .await
            .db()?;
        if picked.len() < count as usize {
            // Rolled back now, not when the dropped transaction's connection is next used:
            // until then its row locks would hide the picked machines from the next
            // allocation's SKIP LOCKED (seen as a spurious insufficient_capacity under load).
            tx.rollback().await.db()?;
            return Err(Error::conflict(
                "insufficient_capacity",
                format!(
                    "{count} machine(s) requested but only {} ready machine(s) match the constraints",
                    picked.len()
                ),
            ));
        }
        let id = plinth_db::allocations::insert(&mut tx, &who.name, who.token_id, &request)
            .await
            .db()?;
        for (machine_id, version) in &picked {
            self.apply(
                &mut tx,
                who,
                *machine_id,
                Verb::Allocate,
                Some(*version),
                None,
                Some(id),
                serde_json::json!({ "allocation_id": id }),
            )
            .await?;
        }
        let ids: Vec<Uuid> = picked.iter().map(|(m, _)| *m).collect();
        let rows = plinth_db::machines::get_many(&mut tx, &ids).await.db()?;
        let machines = seen(who, convert::machines(&mut tx, rows).await?);
        let a = plinth_db::allocations::get(&mut tx, id)
            .await
            .db()?
            .ok_or_else(crate::missing("allocate"))?;
        tx.commit().await.db()?;
        tracing::info!(allocation_id = %id, count, actor = %who.name, "allocation created");
        Ok(Allocation {
            id,
            owner: a.owner,
            request: a.request,
            created_at: a.created_at,
            released_at: a.released_at,
            machines,
        })
    }

    pub async fn list_allocations(
        &self,
        who: &Principal,
        include_released: bool,
    ) -> Result<Vec<Allocation>> {
        let owner = who.owner_scope();
        if owner.is_none() {
            who.require(Permission::ReadInventory)?;
        }
        let mut conn = self.conn().await?;
        let rows = plinth_db::allocations::list(&mut conn, owner, include_released, 1000)
            .await
            .db()?;
        let ids: Vec<Uuid> = rows.iter().map(|a| a.id).collect();
        let pairs = plinth_db::allocations::machine_ids_for(&mut conn, &ids)
            .await
            .db()?;
        let machine_ids: Vec<Uuid> = pairs.iter().map(|(_, m)| *m).collect();
        let machine_rows = plinth_db::machines::get_many(&mut conn, &machine_ids)
            .await
            .db()?;
        let mut machines: HashMap<Uuid, plinth_types::api::Machine> =
            seen(who, convert::machines(&mut conn, machine_rows).await?)
                .into_iter()
                .map(|m| (m.id, m))
                .collect();
        let mut by_alloc: HashMap<Uuid, Vec<plinth_types::api::Machine>> = HashMap::new();
        for (a, m) in pairs {
            if let Some(m) = machines.remove(&m) {
                by_alloc.entry(a).or_default().push(m);
            }
        }
        Ok(rows
            .into_iter()
            .map(|a| Allocation {
                machines: by_alloc.remove(&a.id).unwrap_or_default(),
                id: a.id,
                owner: a.owner,
                request: a.request,
                created_at: a.created_at,
                released_at: a.released_at,
            })
            .collect())
    }

    pub async fn get_allocation(&self, who: &Principal, id: Uuid) -> Result<Allocation> {
        let mut conn = self.conn().await?;
        let a = self.visible_allocation(&mut conn, who, id).await?;
        let ids = plinth_db::allocations::machine_ids(&mut conn, id)
            .await
            .db()?;
        let rows = plinth_db::machines::get_many(&mut conn, &ids).await.db()?;
        let machines = seen(who, convert::machines(&mut conn, rows).await?);
        Ok(Allocation {
            id,
            owner: a.owner,
            request: a.request,
            created_at: a.created_at,
            released_at: a.released_at,
            machines,
        })
    }

    async fn visible_allocation(
        &self,
        conn: &mut plinth_db::PgConnection,
        who: &Principal,
        id: Uuid,
    ) -> Result<plinth_db::allocations::AllocationRow> {
        let a = plinth_db::allocations::get(conn, id).await.db()?;
        let nf = || Error::not_found(format!("no allocation {id}"));
        let a = a.ok_or_else(nf)?;
        match who.owner_scope() {
            Some(owner) if a.owner_token_id != Some(owner) => Err(nf()),
            Some(_) => Ok(a),
            None => {
                who.require(Permission::ReadInventory)?;
                Ok(a)
            }
        }
    }

    /// `DELETE /allocations/{id}`: every machine still in it goes to cleaning.
    pub async fn release_allocation(&self, who: &Principal, id: Uuid) -> Result<Allocation> {
        who.require(Permission::Allocate)?;
        who.require(Permission::Act(Verb::Release))?;
        let mut tx = self.begin().await?;
        self.visible_allocation(&mut tx, who, id).await?;
        let a = plinth_db::allocations::get_for_update(&mut tx, id)
            .await
            .db()?
            .ok_or_else(crate::missing("release_allocation"))?;
        if a.released_at.is_some() {
            return Err(Error::conflict(
                "already_released",
                format!(
                    "allocation {id} was released at {}",
                    a.released_at.unwrap_or(a.created_at)
                ),
            ));
        }
        let ids = plinth_db::allocations::machine_ids(&mut tx, id)
            .await
            .db()?;
        for m in &ids {
            self.apply(
                &mut tx,
                who,
                *m,
                Verb::Release,
                None,
                None,
                None,
                serde_json::json!({ "allocation_id": id }),
            )
            .await?;
        }
        plinth_db::allocations::close_if_empty(&mut tx, id)
            .await
            .db()?;
        let rows = plinth_db::machines::get_many(&mut tx, &ids).await.db()?;
        let machines = seen(who, convert::machines(&mut tx, rows).await?);
        let a = plinth_db::allocations::get(&mut tx, id)
            .await
            .db()?
            .ok_or_else(crate::missing("release_allocation"))?;
        tx.commit().await.db()?;
        tracing::info!(allocation_id = %id, machines = ids.len(), actor = %who.name, "allocation released");
        Ok(Allocation {
            id,
            owner: a.owner,
            request: a.request,
            created_at: a.created_at,
            released_at: a.released_at,
            machines,
        })
    }
}
