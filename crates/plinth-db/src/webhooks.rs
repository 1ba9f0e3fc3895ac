//! webhooks and webhook_deliveries: the registered receivers and the durable delivery queue.
//!
//! The queue is filled by the `events_feed` trigger (sql/feed.sql) in the event's own
//! transaction. Deliveries of one (webhook, machine) go out one at a time in stream order: a
//! worker claims only the head of each queue, settled (its transaction older than every one
//! still running, as in `feed`), due and not leased, with `FOR UPDATE SKIP LOCKED`, and sets a
//! lease; the outcome is recorded fenced by the attempt number.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;
use crate::events::EventRow;

#[derive(Debug, Clone)]
pub struct WebhookRow {
    pub id: Uuid,
    pub url: String,
    pub kinds: Option<Vec<String>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub pending: i64,
    pub dead: i64,
}

pub struct NewWebhook<'a> {
    pub id: Uuid,
    pub url: &'a str,
    pub kinds: Option<&'a [String]>,
    pub secret_nonce: &'a [u8],
    pub secret_ciphertext: &'a [u8],
    pub created_by: &'a str,
}

pub async fn insert(conn: &mut PgConnection, w: NewWebhook<'_>) -> Result<()> {
    sqlx::query!(
        "insert into webhooks (id, url, kinds, secret_nonce, secret_ciphertext, created_by)
         values ($1, $2, $3, $4, $5, $6)",
        w.id,
        w.url,
        w.kinds,
        w.secret_nonce,
        w.secret_ciphertext,
        w.created_by
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn list(conn: &mut PgConnection, id: Option<Uuid>) -> Result<Vec<WebhookRow>> {
    sqlx::query_as!(
        WebhookRow,
        r#"select w.id, w.url, w.kinds, w.created_by, w.created_at,
                  (select count(*) from webhook_deliveries d
                    where d.webhook_id = w.id and d.state = 'pending') as "pending!",
                  (select count(*) from webhook_deliveries d
                    where d.webhook_id = w.id and d.state = 'dead') as "dead!"
           from webhooks w where ($1::uuid is null or w.id = $1) order by w.created_at, w.id"#,
        id
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// Deletes a webhook and its queue. False: there was none.
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<bool> {
    let n = sqlx::query!("delete from webhooks where id = $1", id)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(n > 0)
}

/// A delivery claimed by a worker: what to send and where.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub webhook_id: Uuid,
    pub url: String,
    pub secret_nonce: Vec<u8>,
    pub secret_ciphertext: Vec<u8>,
    /// This attempt's number (1 for the first): the fence of [`finish`].
    pub attempt: i32,
    pub first_attempt_at: DateTime<Utc>,
    pub event: EventRow,
}

/// Claims up to `limit` deliveries that are the head of their (webhook, machine) queue, due,
/// settled and not leased, and leases them for `lease_secs`.
pub async fn claim(conn: &mut PgConnection, lease_secs: f64, limit: i64) -> Result<Vec<Claimed>> {
    let rows = sqlx::query!(
        r#"with heads as (
               select distinct on (d.webhook_id, d.machine_key) d.webhook_id, d.event_id
               from webhook_deliveries d
               where d.state = 'pending' and d.txid < pg_snapshot_xmin(pg_current_snapshot())
               order by d.webhook_id, d.machine_key, d.txid, d.event_id
           ), due as (
               select d.webhook_id, d.event_id
               from webhook_deliveries d join heads h using (webhook_id, event_id)
               where d.state = 'pending' and d.next_attempt_at <= now()
                 and (d.lease_until is null or d.lease_until < now())
               order by d.next_attempt_at
               limit $2
               for update of d skip locked
           ), claimed as (
               update webhook_deliveries d
               set lease_until = now() + make_interval(secs => $1),
                   attempts = d.attempts + 1,
                   first_attempt_at = coalesce(d.first_attempt_at, now())
               from due
               where d.webhook_id = due.webhook_id and d.event_id = due.event_id
                 and d.state = 'pending' and (d.lease_until is null or d.lease_until < now())
               returning d.webhook_id, d.event_id, d.attempts, d.first_attempt_at
           )
           select c.webhook_id, c.attempts, c.first_attempt_at as "first_attempt_at!",
                  w.url, w.secret_nonce, w.secret_ciphertext,
                  e.id, e.at, e.actor, e.machine_id, e.kind, e.from_state, e.to_state, e.details
           from claimed c join webhooks w on w.id = c.webhook_id join events e on e.id = c.event_id
           order by e.id"#,
        lease_secs,
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Claimed {
            webhook_id: r.webhook_id,
            url: r.url,
            secret_nonce: r.secret_nonce,
            secret_ciphertext: r.secret_ciphertext,
            attempt: r.attempts,
            first_attempt_at: r.first_attempt_at,
            event: EventRow {
                id: r.id,
                at: r.at,
                actor: r.actor,
                machine_id: r.machine_id,
                kind: r.kind,
                from_state: r.from_state,
                to_state: r.to_state,
                details: r.details,
            },
        })
        .collect())
}

/// What became of an attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered {
        status: i32,
    },
    /// Try again after `retry_in_secs`.
    Retry {
        status: Option<i32>,
        error: String,
        retry_in_secs: f64,
    },
    /// Failing for too long: given up, the next delivery of its queue goes.
    Dead {
        status: Option<i32>,
        error: String,
    },
}

/// Records an attempt's outcome, if the delivery is still this attempt's (a worker whose lease
/// ran out and was taken over records nothing). True: recorded.
pub async fn finish(
    conn: &mut PgConnection,
    webhook_id: Uuid,
    event_id: i64,
    attempt: i32,
    outcome: &Outcome,
) -> Result<bool> {
    let (state, status, error, retry_in) = match outcome {
        Outcome::Delivered { status } => ("delivered", Some(*status), None, 0.0),
        Outcome::Retry {
            status,
            error,
            retry_in_secs,
        } => ("pending", *status, Some(error.as_str()), *retry_in_secs),
        Outcome::Dead { status, error } => ("dead", *status, Some(error.as_str()), 0.0),
    };
    let n = sqlx::query!(
        "update webhook_deliveries
         set state = $4, last_status = $5, last_error = $6, lease_until = null,
             next_attempt_at = now() + make_interval(secs => $7),
             finished_at = case when $4 = 'pending' then null else now() end
         where webhook_id = $1 and event_id = $2 and attempts = $3 and state = 'pending'",
        webhook_id,
        event_id,
        attempt,
        state,
        status,
        error,
        retry_in
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}

#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub event_id: i64,
    pub machine_id: Option<Uuid>,
    pub kind: String,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A webhook's deliveries, newest first, optionally in one state.
pub async fn deliveries(
    conn: &mut PgConnection,
    webhook_id: Uuid,
    state: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<DeliveryRow>> {
    sqlx::query_as!(
        DeliveryRow,
        "select d.event_id, e.machine_id, e.kind, d.state, d.attempts, d.next_attempt_at,
                d.last_status, d.last_error, d.created_at, d.finished_at
         from webhook_deliveries d join events e on e.id = d.event_id
         where d.webhook_id = $1 and ($2::text is null or d.state = $2)
           and ($3::bigint is null or d.event_id < $3)
         order by d.event_id desc limit $4",
        webhook_id,
        state,
        before,
        limit
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// Deletes the deliveries finished (delivered or dead) longer than `older_than_secs` ago.
pub async fn purge(conn: &mut PgConnection, older_than_secs: f64) -> Result<u64> {
    Ok(sqlx::query!(
        "delete from webhook_deliveries
         where state <> 'pending' and finished_at < now() - make_interval(secs => $1)",
        older_than_secs
    )
    .execute(conn)
    .await?
    .rows_affected())
}
