//! pools: settings per pool (a pool is the `pool` name machines carry; a row exists only for a
//! pool with settings of its own).

use sqlx::PgConnection;

use plinth_types::api::WipeMethod;

use crate::Result;

#[derive(Debug, Clone)]
pub struct PoolRow {
    pub name: String,
    pub wipe_method: Option<WipeMethod>,
    pub machines: i64,
}

/// A pool's own wipe method, if it has one.
pub async fn wipe_method(conn: &mut PgConnection, pool: &str) -> Result<Option<WipeMethod>> {
    Ok(sqlx::query_scalar!(
        r#"select wipe_method as "wipe_method: WipeMethod" from pools where name = $1"#,
        pool
    )
    .fetch_optional(conn)
    .await?
    .flatten())
}

/// Sets (or with `None` clears) a pool's wipe method.
pub async fn set_wipe_method(
    conn: &mut PgConnection,
    pool: &str,
    method: Option<WipeMethod>,
) -> Result<()> {
    sqlx::query!(
        r#"insert into pools (name, wipe_method) values ($1, $2)
         on conflict (name) do update set wipe_method = excluded.wipe_method, updated_at = now()"#,
        pool,
        method.map(WipeMethod::as_str)
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, pool: &str) -> Result<Option<PoolRow>> {
    sqlx::query_as!(
        PoolRow,
        r#"select $1::text as "name!",
                  (select wipe_method from pools where name = $1) as "wipe_method: WipeMethod",
                  (select count(*) from machines where pool = $1 and state <> 'decommissioned') as "machines!""#,
        pool
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

/// Every pool that has machines (not decommissioned) or settings, by name.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<PoolRow>> {
    sqlx::query_as!(
        PoolRow,
        r#"with used as (
               select pool as name, count(*) as n from machines
               where state <> 'decommissioned' group by pool
           )
           select coalesce(u.name, p.name) as "name!", p.wipe_method as "wipe_method: WipeMethod",
                  coalesce(u.n, 0) as "machines!"
           from used u full join pools p on p.name = u.name
           order by 1"#
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}
