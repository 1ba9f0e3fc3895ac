//! allocations: groups of machines handed to a client in one request.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;

#[derive(Debug, Clone)]
pub struct AllocationRow {
    pub id: Uuid,
    pub owner: String,
    pub owner_token_id: Option<Uuid>,
    pub request: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
}

pub async fn insert(
    conn: &mut PgConnection,
    owner: &str,
    owner_token_id: Option<Uuid>,
    request: &serde_json::Value,
) -> Result<Uuid> {
    sqlx::query_scalar!(
        "insert into allocations (owner, owner_token_id, request) values ($1, $2, $3) returning id",
        owner,
        owner_token_id,
        request
    )
    .fetch_one(conn)
    .await
    .map_err(crate::Error::from)
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<AllocationRow>> {
    sqlx::query_as!(
        AllocationRow,
        "select id, owner, owner_token_id, request, created_at, released_at from allocations where id = $1",
        id
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

/// Locks the allocation for the rest of the transaction.
pub async fn get_for_update(conn: &mut PgConnection, id: Uuid) -> Result<Option<AllocationRow>> {
    sqlx::query_as!(
        AllocationRow,
        "select id, owner, owner_token_id, request, created_at, released_at from allocations where id = $1 for update",
        id
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

/// Allocations, newest first; only those of `owner_token_id` when given; released ones
/// only when `include_released`.
pub async fn list(
    conn: &mut PgConnection,
    owner_token_id: Option<Uuid>,
    include_released: bool,
    limit: i64,
) -> Result<Vec<AllocationRow>> {
    sqlx::query_as!(
        AllocationRow,
        "select id, owner, owner_token_id, request, created_at, released_at from allocations
         where ($1::uuid is null or owner_token_id = $1) and ($2 or released_at is null)
         order by created_at desc, id limit $3",
        owner_token_id,
        include_released,
        limit
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// Ids of the machines currently in the allocation.
pub async fn machine_ids(conn: &mut PgConnection, id: Uuid) -> Result<Vec<Uuid>> {
    sqlx::query_scalar!(
        "select id from machines where allocation_id = $1 order by id",
        id
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// Machine ids for several allocations at once: (allocation id, machine id).
pub async fn machine_ids_for(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>> {
    let rows = sqlx::query!(
        r#"select allocation_id as "allocation_id!", id from machines where allocation_id = any($1) order by id"#,
        ids
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.allocation_id, r.id)).collect())
}

/// Marks the allocation released once no machine is left in it.
pub async fn close_if_empty(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query!(
        "update allocations set released_at = now()
         where id = $1 and released_at is null
           and not exists (select 1 from machines where allocation_id = $1)",
        id
    )
    .execute(conn)
    .await?;
    Ok(())
}
