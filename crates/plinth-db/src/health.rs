//! Hardware health on `bmcs` (issue 20): what the power sync last read from the BMC about the
//! machine's health, and where it has read the BMC's event log up to.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;

/// When the machine's health read is due, claims it: sets the next one `interval_secs` away
/// and returns the log cursor (`Some(None)`: due, the log never read). `None`: not due.
pub async fn claim_due(
    conn: &mut PgConnection,
    machine_id: Uuid,
    interval_secs: f64,
) -> Result<Option<Option<String>>> {
    let row = sqlx::query!(
        r#"update bmcs set next_health_at = now() + make_interval(secs => $2::float8)
           where machine_id = $1 and next_health_at <= now()
           returning log_cursor"#,
        machine_id,
        interval_secs
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| r.log_cursor))
}

/// Stores the health read now; returns the one before (`None` when never read, or when the
/// BMC is gone).
pub async fn record(
    conn: &mut PgConnection,
    machine_id: Uuid,
    health: &str,
    components: &serde_json::Value,
) -> Result<Option<Option<String>>> {
    let row = sqlx::query!(
        r#"with old as (select health from bmcs where machine_id = $1 for update)
           update bmcs set health = $2, health_components = $3, health_checked_at = now()
           from old where bmcs.machine_id = $1
           returning old.health as "old?""#,
        machine_id,
        health,
        components
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| r.old))
}

/// Stores where the event log was read up to.
pub async fn set_log_cursor(conn: &mut PgConnection, machine_id: Uuid, cursor: &str) -> Result<()> {
    sqlx::query!(
        r#"update bmcs set log_cursor = $2, log_checked_at = now() where machine_id = $1"#,
        machine_id,
        cursor
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Makes one BMC's (or every BMC's) health read due at its next power poll (for tests: plinth
/// has no other use for it, but plinth-core's `testing` feature reaches it without plinth-db's).
pub async fn due_now(conn: &mut PgConnection, machine_id: Option<Uuid>) -> Result<u64> {
    let r = sqlx::query!(
        r#"update bmcs set next_health_at = now() where $1::uuid is null or machine_id = $1"#,
        machine_id
    )
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// BMCs by health (`unknown` for never read), for `/metrics`.
pub async fn counts(conn: &mut PgConnection) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"select coalesce(health, 'unknown') as "health!", count(*) as "count!"
           from bmcs group by 1 order by 1"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.health, r.count)).collect())
}
