//! bmcs: how to reach a machine's baseboard controller. The password is stored only as
//! AEAD ciphertext (encrypted and decrypted by plinth-core with the configured key).

use sqlx::PgConnection;
use uuid::Uuid;

use plinth_types::api::BmcProtocol;

use crate::Result;

/// A BMC without its secret, and what plinth last learned from it.
#[derive(Debug, Clone)]
pub struct BmcRow {
    pub machine_id: Uuid,
    pub protocol: BmcProtocol,
    pub address: String,
    pub username: String,
    pub verify_tls: bool,
    pub plain_http: bool,
    pub power_state: Option<String>,
    pub power_checked_at: Option<chrono::DateTime<chrono::Utc>>,
    pub reachable: Option<bool>,
    pub last_error: Option<String>,
    pub identity: Option<serde_json::Value>,
    /// Hardware health (issue 20): `None` until read.
    pub health: Option<String>,
    pub health_components: Option<serde_json::Value>,
    pub health_checked_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub struct NewBmc<'a> {
    pub protocol: BmcProtocol,
    pub address: &'a str,
    pub username: &'a str,
    pub password_nonce: &'a [u8],
    pub password_ciphertext: &'a [u8],
    pub verify_tls: bool,
    pub plain_http: bool,
}

/// Inserts or replaces the machine's BMC.
pub async fn upsert(conn: &mut PgConnection, machine_id: Uuid, b: &NewBmc<'_>) -> Result<()> {
    sqlx::query!(
        r#"insert into bmcs (machine_id, protocol, address, username, password_nonce, password_ciphertext, verify_tls, plain_http)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         on conflict (machine_id) do update set protocol = excluded.protocol, address = excluded.address,
             username = excluded.username, password_nonce = excluded.password_nonce,
             password_ciphertext = excluded.password_ciphertext, verify_tls = excluded.verify_tls,
             plain_http = excluded.plain_http,
             updated_at = now(), reachable = null, consecutive_failures = 0, last_error = null,
             next_poll_at = now(), identity = null, identity_at = null,
             health = null, health_components = null, health_checked_at = null,
             next_health_at = now(), log_cursor = null, log_checked_at = null,
             staged_password_nonce = null, staged_password_ciphertext = null, staged_at = null,
             password_rotated_at = null"#,
        machine_id,
        b.protocol.as_str(),
        b.address,
        b.username,
        b.password_nonce,
        b.password_ciphertext,
        b.verify_tls,
        b.plain_http
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete(conn: &mut PgConnection, machine_id: Uuid) -> Result<()> {
    sqlx::query!("delete from bmcs where machine_id = $1", machine_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The BMCs of these machines, without their secrets.
pub async fn for_machines(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<BmcRow>> {
    sqlx::query_as!(
        BmcRow,
        r#"select machine_id, protocol as "protocol: BmcProtocol", address, username, verify_tls, plain_http, power_state, power_checked_at,
                reachable, last_error, identity, health, health_components, health_checked_at
         from bmcs where machine_id = any($1)"#,
        ids
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// The encrypted password of one machine's BMC: (nonce, ciphertext). For the BMC drivers.
pub async fn secret(
    conn: &mut PgConnection,
    machine_id: Uuid,
) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let row = sqlx::query!(
        r#"select password_nonce, password_ciphertext from bmcs where machine_id = $1"#,
        machine_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.password_nonce, r.password_ciphertext)))
}

/// A BMC due for a power poll, with its encrypted password.
#[derive(Debug, Clone)]
pub struct DueBmc {
    pub machine_id: Uuid,
    pub protocol: BmcProtocol,
    pub address: String,
    pub username: String,
    pub password_nonce: Vec<u8>,
    pub password_ciphertext: Vec<u8>,
    pub verify_tls: bool,
    pub plain_http: bool,
    pub power_state: Option<String>,
    pub reachable: Option<bool>,
    pub consecutive_failures: i32,
}

/// Claims up to `limit` BMCs whose poll is due (not of decommissioned machines, not busy with
/// a job) and sets their next poll `interval_secs` away, jittered by ±`jitter` (a fraction).
pub async fn claim_due(
    conn: &mut PgConnection,
    limit: i64,
    interval_secs: f64,
    jitter: f64,
) -> Result<Vec<DueBmc>> {
    sqlx::query_as!(
        DueBmc,
        r#"with due as (
             select b.machine_id from bmcs b join machines m on m.id = b.machine_id
             where b.next_poll_at <= now() and m.state <> 'decommissioned'
               and not exists (select 1 from jobs j where j.machine_id = b.machine_id and j.state = 'running')
               -- during a rotation either password may be the BMC's: only its job logs in
               and b.staged_password_nonce is null
             order by b.next_poll_at
             limit $1
             for update of b skip locked
         )
         update bmcs b set next_poll_at = now()
             + make_interval(secs => $2::float8 * (1 - $3::float8 + 2 * $3::float8 * random()))
         from due where b.machine_id = due.machine_id
         returning b.machine_id, b.protocol as "protocol: BmcProtocol", b.address, b.username, b.password_nonce,
                   b.password_ciphertext, b.verify_tls, b.plain_http, b.power_state, b.reachable,
                   b.consecutive_failures"#,
        limit,
        interval_secs,
        jitter
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// Records a successful answer: the power state (when known), reachable again. Returns the
/// previous (power_state, reachable) so the caller can record what changed.
pub async fn record_ok(
    conn: &mut PgConnection,
    machine_id: Uuid,
    power_state: Option<&str>,
) -> Result<Option<(Option<String>, Option<bool>)>> {
    let row = sqlx::query!(
        r#"with old as (select power_state, reachable from bmcs where machine_id = $1 for update)
           update bmcs set power_state = coalesce($2, bmcs.power_state),
               power_checked_at = case when $2::text is null then bmcs.power_checked_at else now() end,
               reachable = true, consecutive_failures = 0, last_error = null
           from old where bmcs.machine_id = $1
           returning old.power_state as "old_power?", old.reachable as "old_reachable?""#,
        machine_id,
        power_state
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.old_power, r.old_reachable)))
}

/// Records a failed poll; with `hold_secs`, the next poll waits that long (wrong credentials
/// are not tried every minute: BMCs lock accounts). When the failures reach `threshold` and the
/// BMC was not already marked unreachable, marks it so and returns true (the caller records
/// the event).
pub async fn record_failure(
    conn: &mut PgConnection,
    machine_id: Uuid,
    error: &str,
    threshold: i32,
    hold_secs: Option<f64>,
) -> Result<bool> {
    let row = sqlx::query!(
        r#"with old as (select reachable from bmcs where machine_id = $1 for update)
           update bmcs set consecutive_failures = consecutive_failures + 1, last_error = $2,
               reachable = case when consecutive_failures + 1 >= $3 then false else bmcs.reachable end,
               next_poll_at = case when $4::float8 is null then bmcs.next_poll_at
                                   else now() + make_interval(secs => $4::float8) end
           from old where bmcs.machine_id = $1
           returning bmcs.reachable as "now?", old.reachable as "old?""#,
        machine_id,
        error,
        threshold,
        hold_secs
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some_and(|r| r.now == Some(false) && r.old != Some(false)))
}

/// Stores what the BMC says about the machine.
pub async fn set_identity(
    conn: &mut PgConnection,
    machine_id: Uuid,
    identity: &serde_json::Value,
) -> Result<()> {
    sqlx::query!(
        r#"update bmcs set identity = $2, identity_at = now() where machine_id = $1"#,
        machine_id,
        identity
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Makes one BMC (or, with `None`, every BMC) due for a power poll now.
pub async fn poll_now(conn: &mut PgConnection, machine_id: Option<Uuid>) -> Result<u64> {
    let r = sqlx::query!(
        r#"update bmcs set next_poll_at = now() where $1::uuid is null or machine_id = $1"#,
        machine_id
    )
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}
