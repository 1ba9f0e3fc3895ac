//! subnets, their ranges, and the pool rows of `leases` (one per address in a range).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;

#[derive(Debug, Clone)]
pub struct SubnetRow {
    pub id: Uuid,
    pub cidr: String,
    pub router: Option<String>,
    pub dns_servers: Vec<String>,
    pub domain: Option<String>,
    pub lease_time: i32,
    pub boot_server: Option<String>,
    pub relay_addresses: Vec<String>,
    pub relay_any_in_cidr: bool,
    pub pool_size: i64,
    pub active_leases: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Addresses are passed as dotted-quad text and cast in SQL.
pub struct SubnetFields<'a> {
    pub router: Option<&'a str>,
    pub dns_servers: &'a [String],
    pub domain: Option<&'a str>,
    pub lease_time: i32,
    pub boot_server: Option<&'a str>,
    pub relay_addresses: &'a [String],
    pub relay_any_in_cidr: bool,
}

pub async fn insert(conn: &mut PgConnection, cidr: &str, f: &SubnetFields<'_>) -> Result<Uuid> {
    sqlx::query_scalar!(
        "insert into subnets (cidr, router, dns_servers, domain, lease_time, boot_server, relay_addresses,
                              relay_any_in_cidr)
         values ($1::text::cidr, $2::text::inet, $3::text[]::inet[], $4, $5, $6::text::inet, $7::text[]::inet[], $8)
         returning id",
        cidr,
        f.router,
        f.dns_servers,
        f.domain,
        f.lease_time,
        f.boot_server,
        f.relay_addresses,
        f.relay_any_in_cidr
    )
    .fetch_one(conn)
    .await
    .map_err(crate::Error::from)
}

pub async fn update(conn: &mut PgConnection, id: Uuid, f: &SubnetFields<'_>) -> Result<()> {
    sqlx::query!(
        "update subnets set router = $2::text::inet, dns_servers = $3::text[]::inet[], domain = $4,
                lease_time = $5, boot_server = $6::text::inet, relay_addresses = $7::text[]::inet[],
                relay_any_in_cidr = $8, updated_at = now()
         where id = $1",
        id,
        f.router,
        f.dns_servers,
        f.domain,
        f.lease_time,
        f.boot_server,
        f.relay_addresses,
        f.relay_any_in_cidr
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Replaces the subnet's ranges and brings the pool rows in line: addresses entering the pool
/// get a free row; addresses leaving it stop being handed out (their live leases run out).
pub async fn set_ranges(
    conn: &mut PgConnection,
    id: Uuid,
    ranges: &[(String, String)],
) -> Result<()> {
    sqlx::query!("delete from subnet_ranges where subnet_id = $1", id)
        .execute(&mut *conn)
        .await?;
    for (first, last) in ranges {
        sqlx::query!(
            "insert into subnet_ranges (subnet_id, first_addr, last_addr) values ($1, $2::text::inet, $3::text::inet)",
            id,
            first,
            last
        )
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query!(
        "update leases l set pool = exists (
             select 1 from subnet_ranges r where r.subnet_id = $1 and l.address between r.first_addr and r.last_addr)
         where l.subnet_id = $1",
        id
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "insert into leases (address, subnet_id)
         select r.first_addr + g, $1 from subnet_ranges r, generate_series(0, r.last_addr - r.first_addr) g
         where r.subnet_id = $1
         on conflict (address) do nothing",
        id
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "delete from leases where subnet_id = $1 and not pool and state = 'free'",
        id
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn ranges(conn: &mut PgConnection, id: Uuid) -> Result<Vec<(String, String)>> {
    let rows = sqlx::query!(
        r#"select host(first_addr) as "first!", host(last_addr) as "last!" from subnet_ranges
           where subnet_id = $1 order by first_addr"#,
        id
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.first, r.last)).collect())
}

/// All subnets, or the one with `id`, with their pool size and live lease count.
async fn select(conn: &mut PgConnection, id: Option<Uuid>) -> Result<Vec<SubnetRow>> {
    sqlx::query_as!(
        SubnetRow,
        r#"select s.id, s.cidr::text as "cidr!", host(s.router) as router,
                  array(select host(d) from unnest(s.dns_servers) d) as "dns_servers!",
                  s.domain, s.lease_time, host(s.boot_server) as boot_server,
                  array(select host(r) from unnest(s.relay_addresses) r) as "relay_addresses!",
                  s.relay_any_in_cidr,
                  (select count(*) from leases l where l.subnet_id = s.id and l.pool) as "pool_size!",
                  (select count(*) from leases l where l.subnet_id = s.id and l.state in ('offered', 'bound')
                      and l.expires_at > now()) as "active_leases!",
                  s.created_at, s.updated_at
           from subnets s where ($1::uuid is null or s.id = $1) order by s.cidr"#,
        id
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

pub async fn list(conn: &mut PgConnection) -> Result<Vec<SubnetRow>> {
    select(conn, None).await
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<SubnetRow>> {
    Ok(select(conn, Some(id)).await?.pop())
}

/// Of these relay agent addresses (giaddr, dotted quads), those a subnet accepts: listed in
/// its `relay_addresses`, or inside its CIDR when it allows any relay there.
pub async fn accepted_relays(conn: &mut PgConnection, giaddrs: &[String]) -> Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"select host(g) as "g!" from unnest($1::text[]::inet[]) g
           where exists (select 1 from subnets sn
                         where g = any(sn.relay_addresses) or (sn.relay_any_in_cidr and sn.cidr >> g))"#,
        giaddrs
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// Locks the subnet row.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<bool> {
    Ok(
        sqlx::query_scalar!("select id from subnets where id = $1 for update", id)
            .fetch_optional(conn)
            .await?
            .is_some(),
    )
}

pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query!("delete from subnets where id = $1", id)
        .execute(conn)
        .await?;
    Ok(())
}
