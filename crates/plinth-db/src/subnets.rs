//! subnets, their ranges, and the pool rows of `leases` (one per address in a range).

use chrono::{DateTime, Utc};
use std::net::{IpAddr, Ipv4Addr};

use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;

fn v4s(v: &[Ipv4Addr]) -> Vec<IpAddr> {
    v.iter().copied().map(IpAddr::V4).collect()
}

#[derive(Debug, Clone)]
pub struct SubnetRow {
    pub id: Uuid,
    pub cidr: String,
    pub router: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_time: i32,
    pub boot_server: Option<Ipv4Addr>,
    pub relay_addresses: Vec<Ipv4Addr>,
    pub relay_any_in_cidr: bool,
    pub pool_size: i64,
    pub active_leases: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub struct SubnetFields<'a> {
    pub router: Option<Ipv4Addr>,
    pub dns_servers: &'a [Ipv4Addr],
    pub domain: Option<&'a str>,
    pub lease_time: i32,
    pub boot_server: Option<Ipv4Addr>,
    pub relay_addresses: &'a [Ipv4Addr],
    pub relay_any_in_cidr: bool,
}

pub async fn insert(conn: &mut PgConnection, cidr: &str, f: &SubnetFields<'_>) -> Result<Uuid> {
    sqlx::query_scalar!(
        "insert into subnets (cidr, router, dns_servers, domain, lease_time, boot_server, relay_addresses,
                              relay_any_in_cidr)
         values ($1::text::cidr, $2, $3, $4, $5, $6, $7, $8)
         returning id",
        cidr,
        f.router.map(IpAddr::V4) as Option<IpAddr>,
        &v4s(f.dns_servers) as &[IpAddr],
        f.domain,
        f.lease_time,
        f.boot_server.map(IpAddr::V4) as Option<IpAddr>,
        &v4s(f.relay_addresses) as &[IpAddr],
        f.relay_any_in_cidr
    )
    .fetch_one(conn)
    .await
    .map_err(crate::Error::from)
}

pub async fn update(conn: &mut PgConnection, id: Uuid, f: &SubnetFields<'_>) -> Result<()> {
    sqlx::query!(
        "update subnets set router = $2, dns_servers = $3, domain = $4,
                lease_time = $5, boot_server = $6, relay_addresses = $7,
                relay_any_in_cidr = $8, updated_at = now()
         where id = $1",
        id,
        f.router.map(IpAddr::V4) as Option<IpAddr>,
        &v4s(f.dns_servers) as &[IpAddr],
        f.domain,
        f.lease_time,
        f.boot_server.map(IpAddr::V4) as Option<IpAddr>,
        &v4s(f.relay_addresses) as &[IpAddr],
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
    ranges: &[(Ipv4Addr, Ipv4Addr)],
) -> Result<()> {
    sqlx::query!("delete from subnet_ranges where subnet_id = $1", id)
        .execute(&mut *conn)
        .await?;
    for (first, last) in ranges {
        sqlx::query!(
            "insert into subnet_ranges (subnet_id, first_addr, last_addr) values ($1, $2, $3)",
            id,
            IpAddr::V4(*first) as IpAddr,
            IpAddr::V4(*last) as IpAddr
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

pub async fn ranges(conn: &mut PgConnection, id: Uuid) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
    let rows = sqlx::query!(
        r#"select first_addr as "first: IpAddr", last_addr as "last: IpAddr" from subnet_ranges
           where subnet_id = $1 order by first_addr"#,
        id
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| Ok((crate::ipv4(r.first)?, crate::ipv4(r.last)?)))
        .collect()
}

/// All subnets, or the one with `id`, with their pool size and live lease count.
async fn select(conn: &mut PgConnection, id: Option<Uuid>) -> Result<Vec<SubnetRow>> {
    let rows = sqlx::query!(
        r#"select s.id, s.cidr::text as "cidr!", s.router as "router: IpAddr",
                  s.dns_servers as "dns_servers: Vec<IpAddr>",
                  s.domain, s.lease_time, s.boot_server as "boot_server: IpAddr",
                  s.relay_addresses as "relay_addresses: Vec<IpAddr>",
                  s.relay_any_in_cidr,
                  (select count(*) from leases l where l.subnet_id = s.id and l.pool) as "pool_size!",
                  (select count(*) from leases l where l.subnet_id = s.id and l.state in ('offered', 'bound')
                      and l.expires_at > now()) as "active_leases!",
                  s.created_at, s.updated_at
           from subnets s where ($1::uuid is null or s.id = $1) order by s.cidr"#,
        id
    )
    .fetch_all(conn)
    .await?;
    let all = |v: Vec<IpAddr>| v.into_iter().map(crate::ipv4).collect::<Result<Vec<_>>>();
    rows.into_iter()
        .map(|r| {
            Ok(SubnetRow {
                id: r.id,
                cidr: r.cidr,
                router: r.router.map(crate::ipv4).transpose()?,
                dns_servers: all(r.dns_servers)?,
                domain: r.domain,
                lease_time: r.lease_time,
                boot_server: r.boot_server.map(crate::ipv4).transpose()?,
                relay_addresses: all(r.relay_addresses)?,
                relay_any_in_cidr: r.relay_any_in_cidr,
                pool_size: r.pool_size,
                active_leases: r.active_leases,
                created_at: r.created_at,
                updated_at: r.updated_at,
            })
        })
        .collect()
}

pub async fn list(conn: &mut PgConnection) -> Result<Vec<SubnetRow>> {
    select(conn, None).await
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<SubnetRow>> {
    Ok(select(conn, Some(id)).await?.pop())
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
