//! Firmware (issue 21): what a catalog image installs (`firmware_images`), the inventory a
//! BMC last reported (`machine_firmware`), a running update's progress in its job row, and
//! fleet rollouts (`firmware_rollouts`, `firmware_rollout_machines`).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use plinth_types::JobId;

use crate::Result;

/// A catalog image of kind `firmware` with what it installs (none until described).
#[derive(Debug, Clone)]
pub struct FirmwareImageRow {
    pub image_id: Uuid,
    pub name: String,
    pub kind: String,
    pub path: String,
    pub size: i64,
    pub sha256: String,
    pub component: Option<String>,
    pub version: Option<String>,
}

/// The image named `name` (any kind: the caller says why another kind is refused).
pub async fn image_by_name(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<FirmwareImageRow>> {
    Ok(sqlx::query_as!(
        FirmwareImageRow,
        r#"select i.id as image_id, i.name, i.kind, i.path, i.size, i.sha256,
                  f.component as "component?", f.version as "version?"
           from images i left join firmware_images f on f.image_id = i.id
           where i.name = $1"#,
        name
    )
    .fetch_optional(conn)
    .await?)
}

pub async fn image_by_id(conn: &mut PgConnection, id: Uuid) -> Result<Option<FirmwareImageRow>> {
    Ok(sqlx::query_as!(
        FirmwareImageRow,
        r#"select i.id as image_id, i.name, i.kind, i.path, i.size, i.sha256,
                  f.component as "component?", f.version as "version?"
           from images i left join firmware_images f on f.image_id = i.id
           where i.id = $1"#,
        id
    )
    .fetch_optional(conn)
    .await?)
}

/// Says (or says again) what an image installs.
pub async fn describe_image(
    conn: &mut PgConnection,
    image_id: Uuid,
    component: &str,
    version: &str,
    by: &str,
) -> Result<()> {
    sqlx::query!(
        r#"insert into firmware_images (image_id, component, version, described_by)
           values ($1, $2, $3, $4)
           on conflict (image_id) do update set component = $2, version = $3,
               described_by = $4, described_at = now()"#,
        image_id,
        component,
        version,
        by
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores the inventory read now.
pub async fn set_inventory(
    conn: &mut PgConnection,
    machine_id: Uuid,
    items: &serde_json::Value,
) -> Result<()> {
    sqlx::query!(
        r#"insert into machine_firmware (machine_id, items) values ($1, $2)
           on conflict (machine_id) do update set items = $2, read_at = now()"#,
        machine_id,
        items
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The inventory last read, and when.
pub async fn inventory(
    conn: &mut PgConnection,
    machine_id: Uuid,
) -> Result<Option<(serde_json::Value, DateTime<Utc>)>> {
    let r = sqlx::query!(
        r#"select items, read_at from machine_firmware where machine_id = $1"#,
        machine_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(r.map(|r| (r.items, r.read_at)))
}

/// Records a running job's progress in its `result`, fenced by the attempt: what a restarted
/// plinth reads to follow the same BMC task. False when the job is no longer this attempt's.
pub async fn save_progress(
    conn: &mut PgConnection,
    id: JobId,
    attempt: i32,
    progress: &serde_json::Value,
) -> Result<bool> {
    let r = sqlx::query!(
        r#"update jobs set result = $3, updated_at = now()
           where id = $1 and attempts = $2 and state = 'running'"#,
        id as JobId,
        attempt,
        progress
    )
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// A job's recorded progress (its `result` while it runs).
pub async fn progress(conn: &mut PgConnection, id: JobId) -> Result<Option<serde_json::Value>> {
    Ok(
        sqlx::query_scalar!(r#"select result from jobs where id = $1"#, id as JobId)
            .fetch_optional(conn)
            .await?
            .flatten(),
    )
}

// ------------------------------------------------------------------------------ rollouts

#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub id: Uuid,
    pub image_id: Uuid,
    pub image_name: String,
    pub max_per_rack: i32,
    pub state: String,
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct MemberRow {
    pub machine_id: Uuid,
    pub hostname: Option<String>,
    pub rack_id: Option<Uuid>,
    pub position: i32,
    pub state: String,
    pub job_id: Option<Uuid>,
    pub error: Option<String>,
}

/// A new rollout of `image_id` to `machines` (with their racks), in this order.
pub async fn insert_rollout(
    conn: &mut PgConnection,
    image_id: Uuid,
    max_per_rack: i32,
    machines: &[(Uuid, Option<Uuid>)],
    by: &str,
) -> Result<Uuid> {
    let id = sqlx::query_scalar!(
        r#"insert into firmware_rollouts (image_id, max_per_rack, created_by)
           values ($1, $2, $3) returning id"#,
        image_id,
        max_per_rack,
        by
    )
    .fetch_one(&mut *conn)
    .await?;
    let ids: Vec<Uuid> = machines.iter().map(|m| m.0).collect();
    let racks: Vec<Option<Uuid>> = machines.iter().map(|m| m.1).collect();
    sqlx::query!(
        r#"insert into firmware_rollout_machines (rollout_id, machine_id, rack_id, position)
           select $1, m, r, (n - 1)::int
           from unnest($2::uuid[], $3::uuid[]) with ordinality as u(m, r, n)"#,
        id,
        &ids,
        &racks as &[Option<Uuid>]
    )
    .execute(conn)
    .await?;
    Ok(id)
}

pub async fn rollout(conn: &mut PgConnection, id: Uuid) -> Result<Option<RolloutRow>> {
    Ok(sqlx::query_as!(
        RolloutRow,
        r#"select r.id, r.image_id, i.name as image_name, r.max_per_rack, r.state, r.reason,
                  r.created_by, r.created_at, r.finished_at
           from firmware_rollouts r join images i on i.id = r.image_id where r.id = $1"#,
        id
    )
    .fetch_optional(conn)
    .await?)
}

/// Rollouts, newest first.
pub async fn rollouts(conn: &mut PgConnection, limit: i64) -> Result<Vec<RolloutRow>> {
    Ok(sqlx::query_as!(
        RolloutRow,
        r#"select r.id, r.image_id, i.name as image_name, r.max_per_rack, r.state, r.reason,
                  r.created_by, r.created_at, r.finished_at
           from firmware_rollouts r join images i on i.id = r.image_id
           order by r.created_at desc limit $1"#,
        limit
    )
    .fetch_all(conn)
    .await?)
}

/// The running rollouts, each locked for this transaction (one instance advances each).
pub async fn lock_running(conn: &mut PgConnection) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar!(
        r#"select id from firmware_rollouts where state = 'running'
           order by created_at for update skip locked"#
    )
    .fetch_all(conn)
    .await?)
}

/// Brings the members' states up to date with their jobs; returns the members.
pub async fn sync_members(conn: &mut PgConnection, rollout_id: Uuid) -> Result<Vec<MemberRow>> {
    sqlx::query!(
        r#"update firmware_rollout_machines m set
               state = case j.state when 'succeeded' then 'succeeded' else 'failed' end,
               error = case when j.state = 'succeeded' then null
                            else left(coalesce(j.last_error, 'the job was ' || j.state), 2000) end,
               updated_at = now()
           from jobs j
           where m.rollout_id = $1 and m.state = 'running' and j.id = m.job_id
             and j.state in ('succeeded', 'failed', 'cancelled')"#,
        rollout_id
    )
    .execute(&mut *conn)
    .await?;
    members(conn, rollout_id).await
}

pub async fn members(conn: &mut PgConnection, rollout_id: Uuid) -> Result<Vec<MemberRow>> {
    Ok(sqlx::query_as!(
        MemberRow,
        r#"select m.machine_id, mc.hostname, m.rack_id, m.position, m.state, m.job_id, m.error
           from firmware_rollout_machines m join machines mc on mc.id = m.machine_id
           where m.rollout_id = $1 order by m.position"#,
        rollout_id
    )
    .fetch_all(conn)
    .await?)
}

pub async fn set_member(
    conn: &mut PgConnection,
    rollout_id: Uuid,
    machine_id: Uuid,
    state: &str,
    job_id: Option<Uuid>,
    error: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        r#"update firmware_rollout_machines
           set state = $3, job_id = coalesce($4, job_id), error = $5, updated_at = now()
           where rollout_id = $1 and machine_id = $2"#,
        rollout_id,
        machine_id,
        state,
        job_id,
        error
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Ends a running rollout; its pending machines are skipped.
pub async fn finish_rollout(
    conn: &mut PgConnection,
    id: Uuid,
    state: &str,
    reason: Option<&str>,
) -> Result<bool> {
    sqlx::query!(
        r#"update firmware_rollout_machines set state = 'skipped', updated_at = now()
           where rollout_id = $1 and state = 'pending'"#,
        id
    )
    .execute(&mut *conn)
    .await?;
    let r = sqlx::query!(
        r#"update firmware_rollouts set state = $2, reason = $3, finished_at = now()
           where id = $1 and state = 'running'"#,
        id,
        state,
        reason
    )
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}
