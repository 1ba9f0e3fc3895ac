//! BIOS settings (issue 21): `bios_profiles` (named sets of attributes), a pool's profile
//! (`pools.bios_profile`), and `machine_bios`, the BIOS as a job last read it through the BMC.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use plinth_types::JobId;
use plinth_types::api::JobState;

use crate::Result;
use crate::jobs::JobRow;

#[derive(Debug, Clone)]
pub struct ProfileRow {
    pub name: String,
    pub attributes: serde_json::Value,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The pools that use it, by name.
    pub pools: Vec<String>,
}

/// Adds a profile; a name taken is a unique violation.
pub async fn insert_profile(
    conn: &mut PgConnection,
    name: &str,
    attributes: &serde_json::Value,
    created_by: &str,
) -> Result<()> {
    sqlx::query!(
        "insert into bios_profiles (name, attributes, created_by) values ($1, $2, $3)",
        name,
        attributes,
        created_by
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Replaces a profile's attributes; false when there is no such profile.
pub async fn update_profile(
    conn: &mut PgConnection,
    name: &str,
    attributes: &serde_json::Value,
) -> Result<bool> {
    let n = sqlx::query!(
        "update bios_profiles set attributes = $2, updated_at = now() where name = $1",
        name,
        attributes
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Removes a profile; false when there is none. A profile a pool uses is a foreign-key
/// violation.
pub async fn delete_profile(conn: &mut PgConnection, name: &str) -> Result<bool> {
    let n = sqlx::query!("delete from bios_profiles where name = $1", name)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(n == 1)
}

pub async fn list_profiles(conn: &mut PgConnection) -> Result<Vec<ProfileRow>> {
    Ok(sqlx::query_as!(
        ProfileRow,
        r#"select b.name, b.attributes, b.created_by, b.created_at, b.updated_at,
                  coalesce(array_agg(p.name order by p.name) filter (where p.name is not null),
                           '{}') as "pools!"
           from bios_profiles b left join pools p on p.bios_profile = b.name
           group by b.name order by b.name"#
    )
    .fetch_all(conn)
    .await?)
}

pub async fn get_profile(conn: &mut PgConnection, name: &str) -> Result<Option<ProfileRow>> {
    Ok(sqlx::query_as!(
        ProfileRow,
        r#"select b.name, b.attributes, b.created_by, b.created_at, b.updated_at,
                  coalesce(array_agg(p.name order by p.name) filter (where p.name is not null),
                           '{}') as "pools!"
           from bios_profiles b left join pools p on p.bios_profile = b.name
           where b.name = $1
           group by b.name"#,
        name
    )
    .fetch_optional(conn)
    .await?)
}

/// Sets (or with `None` clears) a pool's profile. An unknown profile is a foreign-key
/// violation.
pub async fn set_pool_profile(
    conn: &mut PgConnection,
    pool: &str,
    profile: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        r#"insert into pools (name, bios_profile) values ($1, $2)
           on conflict (name) do update set bios_profile = excluded.bios_profile, updated_at = now()"#,
        pool,
        profile
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The profile of the machine's pool: (name, attributes).
pub async fn profile_for_machine(
    conn: &mut PgConnection,
    machine_id: Uuid,
) -> Result<Option<(String, serde_json::Value)>> {
    let row = sqlx::query!(
        r#"select b.name, b.attributes from machines m
           join pools p on p.name = m.pool
           join bios_profiles b on b.name = p.bios_profile
           where m.id = $1"#,
        machine_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.name, r.attributes)))
}

/// Whether the machine's BMC speaks Redfish (the only protocol with BIOS settings).
pub async fn has_redfish_bmc(conn: &mut PgConnection, machine_id: Uuid) -> Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"select exists (select 1 from bmcs where machine_id = $1 and protocol = 'redfish') as "e!""#,
        machine_id
    )
    .fetch_one(conn)
    .await?)
}

#[derive(Debug, Clone)]
pub struct MachineBiosRow {
    pub attributes: serde_json::Value,
    pub pending: serde_json::Value,
    pub registry: Option<serde_json::Value>,
    pub read_at: DateTime<Utc>,
    pub job_id: Option<Uuid>,
}

/// Stores what a job read from the machine's BIOS.
pub async fn record_read(
    conn: &mut PgConnection,
    machine_id: Uuid,
    attributes: &serde_json::Value,
    pending: &serde_json::Value,
    registry: Option<&serde_json::Value>,
    job_id: Uuid,
) -> Result<()> {
    sqlx::query!(
        r#"insert into machine_bios (machine_id, attributes, pending, registry, read_at, job_id)
           values ($1, $2, $3, $4, now(), $5)
           on conflict (machine_id) do update set attributes = excluded.attributes,
               pending = excluded.pending, registry = coalesce(excluded.registry, machine_bios.registry),
               read_at = now(), job_id = excluded.job_id"#,
        machine_id,
        attributes,
        pending,
        registry,
        job_id
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn read_of(conn: &mut PgConnection, machine_id: Uuid) -> Result<Option<MachineBiosRow>> {
    Ok(sqlx::query_as!(
        MachineBiosRow,
        "select attributes, pending, registry, read_at, job_id from machine_bios where machine_id = $1",
        machine_id
    )
    .fetch_optional(conn)
    .await?)
}

/// The machine's latest `bios_apply` job.
pub async fn last_apply(conn: &mut PgConnection, machine_id: Uuid) -> Result<Option<JobRow>> {
    Ok(sqlx::query_as!(
        JobRow,
        r#"select id as "id: JobId", seq, machine_id, kind, params, state as "state: JobState", attempts, max_attempts, not_before,
                lease_until, worker, last_error, result, chain, requested_by, created_at,
                started_at, finished_at, updated_at
         from jobs where machine_id = $1 and kind = 'bios_apply'
         order by seq desc limit 1"#,
        machine_id
    )
    .fetch_optional(conn)
    .await?)
}
