//! Racks: create, list, show, edit, delete.

use plinth_db::racks::{RackFields, RackRow};
use plinth_types::Error;
use plinth_types::api::{Rack, RackCreate, RackPatch};

use crate::auth::Permission;
use crate::{App, DbResult, Principal, Result, validate};

fn rack(r: RackRow) -> Rack {
    Rack {
        id: r.id,
        name: r.name,
        site: r.site,
        room: r.room,
        row: r.row_name,
        height_u: r.height_u,
        machine_count: r.machine_count,
        used_u: r.used_u,
        boot_method: r.boot_method,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

fn opt_text(field: &str, v: Option<&str>) -> Result<()> {
    match v {
        Some(s) if s.is_empty() || s.len() > 128 || s.chars().any(char::is_control) => {
            Err(Error::invalid(
                "invalid_field",
                format!("{field} must be 1-128 printable characters (or null)"),
            ))
        }
        _ => Ok(()),
    }
}

fn not_found(name: &str) -> Error {
    Error::not_found(format!("no rack named {name:?}"))
}

impl App {
    pub async fn create_rack(&self, who: &Principal, req: RackCreate) -> Result<Rack> {
        who.require(Permission::ManageRacks)?;
        validate::rack_name(&req.name)?;
        validate::rack_height(req.height_u)?;
        opt_text("site", req.site.as_deref())?;
        opt_text("room", req.room.as_deref())?;
        opt_text("row", req.row.as_deref())?;
        let mut tx = self.begin().await?;
        let fields = RackFields {
            site: req.site.as_deref(),
            room: req.room.as_deref(),
            row_name: req.row.as_deref(),
            height_u: req.height_u,
        };
        plinth_db::racks::insert(&mut tx, &req.name, &fields)
            .await
            .db()?;
        crate::record_event(
            &mut tx,
            who,
            "rack_created",
            serde_json::to_value(&req).unwrap_or_default(),
        )
        .await?;
        let r = plinth_db::racks::get(&mut tx, &req.name)
            .await
            .db()?
            .ok_or_else(crate::missing("create_rack"))?;
        tx.commit().await.db()?;
        tracing::info!(rack = %req.name, actor = %who.name, "rack created");
        Ok(rack(r))
    }

    pub async fn list_racks(&self, who: &Principal) -> Result<Vec<Rack>> {
        who.require(Permission::ReadInventory)?;
        let mut conn = self.conn().await?;
        Ok(plinth_db::racks::list(&mut conn)
            .await
            .db()?
            .into_iter()
            .map(rack)
            .collect())
    }

    pub async fn get_rack(&self, who: &Principal, name: &str) -> Result<Rack> {
        who.require(Permission::ReadInventory)?;
        let mut conn = self.conn().await?;
        plinth_db::racks::get(&mut conn, name)
            .await
            .db()?
            .map(rack)
            .ok_or_else(|| not_found(name))
    }

    pub async fn update_rack(&self, who: &Principal, name: &str, patch: RackPatch) -> Result<Rack> {
        who.require(Permission::ManageRacks)?;
        let mut tx = self.begin().await?;
        let id = plinth_db::racks::lock_id(&mut tx, name)
            .await
            .db()?
            .ok_or_else(|| not_found(name))?;
        let cur = plinth_db::racks::get(&mut tx, name)
            .await
            .db()?
            .ok_or_else(|| not_found(name))?;
        let site = patch.site.clone().unwrap_or(cur.site);
        let room = patch.room.clone().unwrap_or(cur.room);
        let row = patch.row.clone().unwrap_or(cur.row_name);
        let height_u = patch.height_u.unwrap_or(cur.height_u);
        opt_text("site", site.as_deref())?;
        opt_text("room", room.as_deref())?;
        opt_text("row", row.as_deref())?;
        validate::rack_height(height_u)?;
        let fields = RackFields {
            site: site.as_deref(),
            room: room.as_deref(),
            row_name: row.as_deref(),
            height_u,
        };
        plinth_db::racks::update(&mut tx, id, &fields).await.db()?;
        if let Some(m) = patch.boot_method {
            plinth_db::vmedia::set_rack_boot_method(&mut tx, id, m)
                .await
                .db()?;
        }
        crate::record_event(
            &mut tx,
            who,
            "rack_updated",
            serde_json::json!({ "rack": name, "changes": patch }),
        )
        .await?;
        let r = plinth_db::racks::get(&mut tx, name)
            .await
            .db()?
            .ok_or_else(crate::missing("update_rack"))?;
        tx.commit().await.db()?;
        Ok(rack(r))
    }

    pub async fn delete_rack(&self, who: &Principal, name: &str) -> Result<()> {
        who.require(Permission::ManageRacks)?;
        let mut tx = self.begin().await?;
        let id = plinth_db::racks::lock_id(&mut tx, name)
            .await
            .db()?
            .ok_or_else(|| not_found(name))?;
        let cur = plinth_db::racks::get(&mut tx, name)
            .await
            .db()?
            .ok_or_else(|| not_found(name))?;
        if cur.machine_count > 0 {
            return Err(Error::conflict(
                "rack_not_empty",
                format!(
                    "rack {name} still holds {} machine(s); move them first",
                    cur.machine_count
                ),
            ));
        }
        plinth_db::racks::delete(&mut tx, id).await.db()?;
        crate::record_event(
            &mut tx,
            who,
            "rack_deleted",
            serde_json::json!({ "rack": name }),
        )
        .await?;
        tx.commit().await.db()?;
        tracing::info!(rack = %name, actor = %who.name, "rack deleted");
        Ok(())
    }
}
