//! events: the append-only audit log. The table refuses UPDATE, DELETE and TRUNCATE.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;

#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub machine_id: Option<Uuid>,
    pub kind: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub details: serde_json::Value,
}

pub struct NewEvent<'a> {
    pub actor: &'a str,
    pub machine_id: Option<Uuid>,
    pub kind: &'a str,
    pub from_state: Option<&'a str>,
    pub to_state: Option<&'a str>,
    pub details: serde_json::Value,
}

pub async fn insert(conn: &mut PgConnection, e: NewEvent<'_>) -> Result<i64> {
    let id = sqlx::query_scalar!(
        "insert into events (actor, machine_id, kind, from_state, to_state, details)
         values ($1, $2, $3, $4, $5, $6) returning id",
        e.actor,
        e.machine_id,
        e.kind,
        e.from_state,
        e.to_state,
        e.details
    )
    .fetch_one(conn)
    .await?;
    Ok(id)
}

/// Inserts `e` unless its machine already has `max` events of its kind in the last
/// `window_secs` seconds: for the events anyone on the network can cause again and again (an
/// agent token replayed), so that a flood cannot grow the table by a row per request. Whether
/// it was inserted. The count walks the machine's events of the window only (from the first
/// event of the window on, by `events_at_idx`, then `events_machine_idx`). Two concurrent
/// inserts may both pass: the cap is approximate by that much.
pub async fn insert_capped(
    conn: &mut PgConnection,
    e: NewEvent<'_>,
    window_secs: f64,
    max: i64,
) -> Result<bool> {
    let inserted = sqlx::query!(
        r#"insert into events (actor, machine_id, kind, from_state, to_state, details)
           select $1, $2, $3, $4, $5, $6
           where (select count(*) from (
                      select 1 from events x
                      where x.machine_id = $2 and x.kind = $3
                        and x.id >= coalesce((select w.id from events w
                                              where w.at > now() - make_interval(secs => $7)
                                              order by w.at limit 1), 9223372036854775807)
                      limit $8) c) < $8"#,
        e.actor,
        e.machine_id,
        e.kind,
        e.from_state,
        e.to_state,
        e.details,
        window_secs,
        max
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Events in id order, filtered by machine and/or time, after the id `after`.
pub async fn list(
    conn: &mut PgConnection,
    machine_id: Option<Uuid>,
    since: Option<DateTime<Utc>>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<EventRow>> {
    sqlx::query_as!(
        EventRow,
        "select id, at, actor, machine_id, kind, from_state, to_state, details from events
         where ($1::uuid is null or machine_id = $1)
           and ($2::timestamptz is null or at >= $2)
           and ($3::bigint is null or id > $3)
         order by id limit $4",
        machine_id,
        since,
        after,
        limit
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// The newest `limit` events of a machine, newest first.
pub async fn latest(
    conn: &mut PgConnection,
    machine_id: Uuid,
    limit: i64,
) -> Result<Vec<EventRow>> {
    sqlx::query_as!(
        EventRow,
        "select id, at, actor, machine_id, kind, from_state, to_state, details from events
         where machine_id = $1 order by id desc limit $2",
        machine_id,
        limit
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}
