//! BMC credential rotation (issue 21, part 4): a machine's BMC password as ciphertext, the
//! current one and the staged one, and the steps that move between them. Every step is fenced
//! by the nonces it expects, so a rotation never overwrites credentials a person set meanwhile
//! (a PATCH of the BMC replaces both and clears the staged one: `bmcs::upsert`).

use sqlx::PgConnection;
use uuid::Uuid;

use plinth_types::api::BmcProtocol;

use crate::Result;

/// A machine's BMC with both secrets, still encrypted.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub machine_id: Uuid,
    pub protocol: BmcProtocol,
    pub address: String,
    pub username: String,
    pub verify_tls: bool,
    pub plain_http: bool,
    pub password_nonce: Vec<u8>,
    pub password_ciphertext: Vec<u8>,
    pub staged_password_nonce: Option<Vec<u8>>,
    pub staged_password_ciphertext: Option<Vec<u8>>,
    pub password_rotated_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub async fn get(conn: &mut PgConnection, machine_id: Uuid) -> Result<Option<Credentials>> {
    sqlx::query_as!(
        Credentials,
        r#"select machine_id, protocol as "protocol: BmcProtocol", address, username, verify_tls, plain_http,
                  password_nonce, password_ciphertext, staged_password_nonce, staged_password_ciphertext,
                  password_rotated_at
           from bmcs where machine_id = $1"#,
        machine_id
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

/// Stages a new secret while the current one is still `current_nonce` and nothing is staged.
/// False: the credentials changed (or a rotation is staged): nothing written.
pub async fn stage(
    conn: &mut PgConnection,
    machine_id: Uuid,
    current_nonce: &[u8],
    nonce: &[u8],
    ciphertext: &[u8],
) -> Result<bool> {
    let r = sqlx::query!(
        r#"update bmcs set staged_password_nonce = $3, staged_password_ciphertext = $4, staged_at = now()
           where machine_id = $1 and password_nonce = $2 and staged_password_nonce is null"#,
        machine_id,
        current_nonce,
        nonce,
        ciphertext
    )
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The staged secret becomes the current one (it logged in): fenced by both nonces. The power
/// poll is due at once, with the failure count reset (the old password may have been refused
/// meanwhile).
pub async fn promote(
    conn: &mut PgConnection,
    machine_id: Uuid,
    current_nonce: &[u8],
    staged_nonce: &[u8],
) -> Result<bool> {
    let r = sqlx::query!(
        r#"update bmcs set password_nonce = staged_password_nonce,
               password_ciphertext = staged_password_ciphertext,
               staged_password_nonce = null, staged_password_ciphertext = null, staged_at = null,
               password_rotated_at = now(), updated_at = now(), next_poll_at = now(),
               consecutive_failures = 0, last_error = null
           where machine_id = $1 and password_nonce = $2 and staged_password_nonce = $3"#,
        machine_id,
        current_nonce,
        staged_nonce
    )
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The staged secret is dropped (the current one logged in, the staged one did not).
pub async fn discard(
    conn: &mut PgConnection,
    machine_id: Uuid,
    current_nonce: &[u8],
    staged_nonce: &[u8],
) -> Result<bool> {
    let r = sqlx::query!(
        r#"update bmcs set staged_password_nonce = null, staged_password_ciphertext = null, staged_at = null,
               next_poll_at = now()
           where machine_id = $1 and password_nonce = $2 and staged_password_nonce = $3"#,
        machine_id,
        current_nonce,
        staged_nonce
    )
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// BMCs with a rotation staged for longer than `older_than_secs` and no rotation job queued
/// or running: a rotation whose job ended (out of attempts, or cancelled) half-way. Locked
/// (`SKIP LOCKED`) for the caller's transaction.
pub async fn stranded(
    conn: &mut PgConnection,
    older_than_secs: f64,
    limit: i64,
) -> Result<Vec<Uuid>> {
    let rows = sqlx::query!(
        r#"select b.machine_id from bmcs b
           where b.staged_at < now() - make_interval(secs => $1::float8)
             and not exists (select 1 from jobs j where j.machine_id = b.machine_id
                             and j.kind = 'rotate_credentials' and j.state in ('queued', 'running'))
           order by b.staged_at limit $2
           for update of b skip locked"#,
        older_than_secs,
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.machine_id).collect())
}

/// Whether a rotation job of the machine is queued or running.
pub async fn rotation_pending(conn: &mut PgConnection, machine_id: Uuid) -> Result<bool> {
    let r = sqlx::query_scalar!(
        r#"select exists (select 1 from jobs where machine_id = $1 and kind = 'rotate_credentials'
                          and state in ('queued', 'running')) as "e!""#,
        machine_id
    )
    .fetch_one(conn)
    .await?;
    Ok(r)
}
