//! racks: where machines are mounted.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use plinth_types::api::BootMethod;

use crate::Result;

#[derive(Debug, Clone)]
pub struct RackRow {
    pub id: Uuid,
    pub name: String,
    pub site: Option<String>,
    pub room: Option<String>,
    pub row_name: Option<String>,
    pub height_u: i32,
    pub machine_count: i64,
    pub used_u: i64,
    pub boot_method: BootMethod,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub struct RackFields<'a> {
    pub site: Option<&'a str>,
    pub room: Option<&'a str>,
    pub row_name: Option<&'a str>,
    pub height_u: i32,
}

pub async fn insert(conn: &mut PgConnection, name: &str, f: &RackFields<'_>) -> Result<Uuid> {
    sqlx::query_scalar!(
        "insert into racks (name, site, room, row_name, height_u) values ($1, $2, $3, $4, $5) returning id",
        name,
        f.site,
        f.room,
        f.row_name,
        f.height_u
    )
    .fetch_one(conn)
    .await
    .map_err(crate::Error::from)
}

pub async fn list(conn: &mut PgConnection) -> Result<Vec<RackRow>> {
    sqlx::query_as!(
        RackRow,
        r#"select r.id, r.name, r.site, r.room, r.row_name, r.height_u,
                  count(m.id) as "machine_count!", coalesce(sum(m.size_u), 0)::bigint as "used_u!",
                  r.boot_method as "boot_method: BootMethod", r.created_at, r.updated_at
           from racks r left join machines m on m.rack_id = r.id
           group by r.id order by r.name"#
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

pub async fn get(conn: &mut PgConnection, name: &str) -> Result<Option<RackRow>> {
    sqlx::query_as!(
        RackRow,
        r#"select r.id, r.name, r.site, r.room, r.row_name, r.height_u,
                  count(m.id) as "machine_count!", coalesce(sum(m.size_u), 0)::bigint as "used_u!",
                  r.boot_method as "boot_method: BootMethod", r.created_at, r.updated_at
           from racks r left join machines m on m.rack_id = r.id
           where r.name = $1
           group by r.id"#,
        name
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

/// Locks the rack row and returns its id.
pub async fn lock_id(conn: &mut PgConnection, name: &str) -> Result<Option<Uuid>> {
    sqlx::query_scalar!("select id from racks where name = $1 for update", name)
        .fetch_optional(conn)
        .await
        .map_err(crate::Error::from)
}

pub async fn update(conn: &mut PgConnection, id: Uuid, f: &RackFields<'_>) -> Result<()> {
    sqlx::query!(
        "update racks set site = $2, room = $3, row_name = $4, height_u = $5, updated_at = now() where id = $1",
        id,
        f.site,
        f.room,
        f.row_name,
        f.height_u
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes the rack; the foreign key refuses while machines are mounted in it.
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query!("delete from racks where id = $1", id)
        .execute(conn)
        .await?;
    Ok(())
}
