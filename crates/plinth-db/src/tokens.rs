//! api_tokens: who may call the API. Only the SHA-256 of each secret is stored.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use plinth_types::Role;

use crate::Result;

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn insert(
    conn: &mut PgConnection,
    name: &str,
    role: Role,
    secret_sha256: &[u8],
    expires_at: Option<DateTime<Utc>>,
) -> Result<TokenRow> {
    sqlx::query_as!(
        TokenRow,
        r#"insert into api_tokens (name, role, secret_sha256, expires_at) values ($1, $2, $3, $4)
         returning id, name, role as "role: Role", created_at, last_used_at, revoked_at, expires_at"#,
        name,
        role.as_str(),
        secret_sha256,
        expires_at
    )
    .fetch_one(conn)
    .await
    .map_err(crate::Error::from)
}

/// The token with this secret hash, marking it used if it is live (not revoked or expired). `last_used_at` is
/// written at most once a minute so that reads stay reads.
pub async fn authenticate(
    conn: &mut PgConnection,
    secret_sha256: &[u8],
) -> Result<Option<TokenRow>> {
    let row = sqlx::query_as!(
        TokenRow,
        r#"select id, name, role as "role: Role", created_at, last_used_at, revoked_at, expires_at
         from api_tokens where secret_sha256 = $1"#,
        secret_sha256
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(t) = &row
        && t.revoked_at.is_none()
        && t.expires_at.is_none_or(|at| at > Utc::now())
        && t.last_used_at
            .is_none_or(|at| at < Utc::now() - chrono::Duration::minutes(1))
    {
        sqlx::query!(
            r#"update api_tokens set last_used_at = now() where id = $1"#,
            t.id
        )
        .execute(conn)
        .await?;
    }
    Ok(row)
}

pub async fn list(conn: &mut PgConnection) -> Result<Vec<TokenRow>> {
    sqlx::query_as!(
        TokenRow,
        r#"select id, name, role as "role: Role", created_at, last_used_at, revoked_at, expires_at
         from api_tokens order by name"#
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// Revokes the token called `name`; `None` when there is none. Revoking twice keeps the
/// first time.
pub async fn revoke(conn: &mut PgConnection, name: &str) -> Result<Option<TokenRow>> {
    sqlx::query_as!(
        TokenRow,
        r#"update api_tokens set revoked_at = coalesce(revoked_at, now()) where name = $1
         returning id, name, role as "role: Role", created_at, last_used_at, revoked_at, expires_at"#,
        name
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}
