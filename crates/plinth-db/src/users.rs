//! users and ui_sessions: the people of the web UI and their browser sessions. Passwords are
//! kept as argon2id hashes and session secrets as SHA-256; hashing happens in plinth-core.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use plinth_types::Role;

use crate::Result;

#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub failed_logins: i32,
    pub locked_until: Option<DateTime<Utc>>,
}

/// Inserts a user, or replaces the role and password of the one with this name (which also
/// clears its lockout and ends its sessions); `true` when it was created.
pub async fn upsert(
    conn: &mut PgConnection,
    username: &str,
    role: Role,
    password_hash: &str,
) -> Result<(UserRow, bool)> {
    let row = sqlx::query!(
        r#"insert into users (username, role, password_hash) values ($1, $2, $3)
         on conflict (username) do update set role = excluded.role,
             password_hash = excluded.password_hash, updated_at = now(), failed_logins = 0,
             locked_until = null, disabled_at = null
         returning id, username, role as "role: Role", password_hash, created_at, disabled_at, last_login_at,
             failed_logins, locked_until, (xmax = 0) as "created!""#,
        username,
        role.as_str(),
        password_hash
    )
    .fetch_one(&mut *conn)
    .await?;
    if !row.created {
        sqlx::query!("delete from ui_sessions where user_id = $1", row.id)
            .execute(conn)
            .await?;
    }
    Ok((
        UserRow {
            id: row.id,
            username: row.username,
            role: row.role,
            password_hash: row.password_hash,
            created_at: row.created_at,
            disabled_at: row.disabled_at,
            last_login_at: row.last_login_at,
            failed_logins: row.failed_logins,
            locked_until: row.locked_until,
        },
        row.created,
    ))
}

/// The user, for a login: read without a lock (the password is hashed outside any
/// transaction; the counters are then changed by single atomic updates).
pub async fn for_login(conn: &mut PgConnection, username: &str) -> Result<Option<UserRow>> {
    sqlx::query_as!(
        UserRow,
        r#"select id, username, role as "role: Role", password_hash, created_at, disabled_at, last_login_at,
             failed_logins, locked_until
         from users where username = $1"#,
        username
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

pub async fn list(conn: &mut PgConnection) -> Result<Vec<UserRow>> {
    sqlx::query_as!(
        UserRow,
        r#"select id, username, role as "role: Role", password_hash, created_at, disabled_at, last_login_at,
             failed_logins, locked_until
         from users order by username"#
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// Records a wrong password: counts it, and locks the account until `lock_until` when the
/// count reaches `limit`. Returns the new count.
pub async fn login_failed(
    conn: &mut PgConnection,
    id: Uuid,
    limit: i32,
    lock_until: DateTime<Utc>,
) -> Result<i32> {
    let n = sqlx::query_scalar!(
        r#"update users set failed_logins = failed_logins + 1,
             locked_until = case when failed_logins + 1 >= $2 then $3 else locked_until end
         where id = $1 returning failed_logins"#,
        id,
        limit,
        lock_until
    )
    .fetch_one(conn)
    .await?;
    Ok(n)
}

pub async fn login_succeeded(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query!(
        r#"update users set failed_logins = 0, locked_until = null, last_login_at = now()
         where id = $1"#,
        id
    )
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub role: Role,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

pub async fn insert_session(
    conn: &mut PgConnection,
    user_id: Uuid,
    secret_sha256: &[u8],
    csrf_token: &str,
    idle_secs: f64,
    max_secs: f64,
) -> Result<Uuid> {
    // Sessions that ended long ago go when new ones begin.
    sqlx::query!("delete from ui_sessions where max_expires_at < now() or expires_at < now()")
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar!(
        r#"insert into ui_sessions (user_id, secret_sha256, csrf_token, expires_at, max_expires_at)
         values ($1, $2, $3, now() + make_interval(secs => least($4::float8, $5::float8)),
                 now() + make_interval(secs => $5::float8))
         returning id"#,
        user_id,
        secret_sha256,
        csrf_token,
        idle_secs,
        max_secs
    )
    .fetch_one(conn)
    .await
    .map_err(crate::Error::from)
}

/// The live session with this secret (its user enabled), its idle expiry pushed forward by
/// `idle_secs` (written at most once a minute, so that reads stay reads).
pub async fn session(
    conn: &mut PgConnection,
    secret_sha256: &[u8],
    idle_secs: f64,
) -> Result<Option<SessionRow>> {
    let row = sqlx::query_as!(
        SessionRow,
        r#"select s.id, s.user_id, u.username, u.role as "role: Role", s.csrf_token, s.expires_at
         from ui_sessions s join users u on u.id = s.user_id
         where s.secret_sha256 = $1 and s.expires_at > now() and u.disabled_at is null"#,
        secret_sha256
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(s) = &row {
        sqlx::query!(
            r#"update ui_sessions set last_seen_at = now(),
                 expires_at = least(max_expires_at, now() + make_interval(secs => $2::float8))
             where id = $1 and last_seen_at < now() - interval '1 minute'"#,
            s.id,
            idle_secs
        )
        .execute(conn)
        .await?;
    }
    Ok(row)
}

pub async fn delete_session(
    conn: &mut PgConnection,
    secret_sha256: &[u8],
) -> Result<Option<String>> {
    sqlx::query_scalar!(
        r#"delete from ui_sessions s using users u
         where s.secret_sha256 = $1 and u.id = s.user_id returning u.username"#,
        secret_sha256
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}
