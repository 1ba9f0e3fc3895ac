//! leases: what DHCP handed out. `dhcp_lease_batch` (a database function, see the migrations)
//! makes the decisions for a whole batch of packets in one round trip and one transaction.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use std::net::{IpAddr, Ipv4Addr};

use plinth_types::api::LeaseState;
use plinth_types::{MacAddr, MachineState};

use crate::Result;

/// The arguments of one lease decision.
#[derive(Debug)]
pub struct LeaseCall<'a> {
    pub op: &'a str,
    /// The relay's address (giaddr) for relayed requests, else the receiving interface's.
    pub match_addr: Ipv4Addr,
    pub relayed: bool,
    pub mac: MacAddr,
    /// The requested address (option 50) or ciaddr, as the op needs.
    pub addr: Option<Ipv4Addr>,
    pub client_id: Option<&'a [u8]>,
    pub hostname: Option<&'a str>,
    /// For a DISCOVER: the address the calling instance offered this client from memory, if
    /// its offer is still open.
    pub held: Option<Ipv4Addr>,
}

#[derive(Debug, Clone)]
pub struct LeaseDecision {
    pub outcome: Option<String>,
    pub address: Option<Ipv4Addr>,
    pub lease_secs: Option<i32>,
    pub subnet_id: Option<Uuid>,
    /// The subnet as text (`10.0.0.0/24`), for messages; its prefix length as a number.
    pub cidr: Option<String>,
    pub prefix_len: Option<u8>,
    pub router: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub boot_server: Option<Ipv4Addr>,
    pub machine_id: Option<Uuid>,
    pub machine_state: Option<MachineState>,
    pub boot_file: Option<String>,
    pub reason: Option<String>,
    /// An offer the table does not hold: the calling instance must remember it (and pass it
    /// back as `held` and in `skip`) until the client binds it or the offer lapses.
    pub from_memory: bool,
}

/// Decides a batch of lease calls in one statement (one transaction, committed when this
/// returns). Answers are in the order of `calls`. A written offer holds its address for
/// `offer_secs`; a declined address stays out of the pool for `quarantine_secs`. `skip`: every
/// address the calling instance offered from memory and has not seen bound (none is offered
/// to another client).
pub async fn decide_batch(
    conn: &mut PgConnection,
    calls: &[LeaseCall<'_>],
    skip: &[Ipv4Addr],
    offer_secs: i32,
    quarantine_secs: i32,
) -> Result<Vec<LeaseDecision>> {
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    let ops: Vec<&str> = calls.iter().map(|c| c.op).collect();
    let matches: Vec<IpAddr> = calls.iter().map(|c| IpAddr::V4(c.match_addr)).collect();
    let relayed: Vec<bool> = calls.iter().map(|c| c.relayed).collect();
    let macs: Vec<MacAddr> = calls.iter().map(|c| c.mac).collect();
    let addrs: Vec<Option<IpAddr>> = calls.iter().map(|c| c.addr.map(IpAddr::V4)).collect();
    let client_ids: Vec<Option<&[u8]>> = calls.iter().map(|c| c.client_id).collect();
    let hostnames: Vec<Option<&str>> = calls.iter().map(|c| c.hostname).collect();
    let held: Vec<Option<IpAddr>> = calls.iter().map(|c| c.held.map(IpAddr::V4)).collect();
    let skip: Vec<IpAddr> = skip.iter().copied().map(IpAddr::V4).collect();
    let rows = sqlx::query!(
        r#"select i as "i!", outcome, address as "address: IpAddr", lease_secs, subnet_id,
                  cidr::text as cidr, masklen(cidr) as prefix_len, router as "router: IpAddr",
                  dns_servers as "dns_servers: Vec<IpAddr>", domain,
                  boot_server as "boot_server: IpAddr", machine_id,
                  machine_state as "machine_state: MachineState", boot_file, reason,
                  from_memory as "from_memory!"
           from dhcp_lease_batch($1::text[], $2::inet[], $3::bool[], $4::macaddr[],
                                 $5::inet[], $6::bytea[], $7::text[], $8::inet[], $9::inet[],
                                 $10, $11)"#,
        &ops as &[&str],
        &matches as &[IpAddr],
        &relayed,
        &macs as &[MacAddr],
        &addrs as &[Option<IpAddr>],
        &client_ids as &[Option<&[u8]>],
        &hostnames as &[Option<&str>],
        &held as &[Option<IpAddr>],
        &skip as &[IpAddr],
        offer_secs,
        quarantine_secs
    )
    .fetch_all(conn)
    .await?;
    let mut out: Vec<Option<LeaseDecision>> = vec![None; calls.len()];
    for r in rows {
        let slot = usize::try_from(r.i)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| out.get_mut(i))
            .ok_or_else(|| {
                crate::Error::protocol(format!("dhcp_lease_batch: item {} out of range", r.i))
            })?;
        *slot = Some(LeaseDecision {
            outcome: r.outcome,
            address: r.address.map(crate::ipv4).transpose()?,
            lease_secs: r.lease_secs,
            subnet_id: r.subnet_id,
            cidr: r.cidr,
            prefix_len: r.prefix_len.and_then(|n| u8::try_from(n).ok()),
            router: r.router.map(crate::ipv4).transpose()?,
            dns_servers: r
                .dns_servers
                .unwrap_or_default()
                .into_iter()
                .map(crate::ipv4)
                .collect::<Result<_>>()?,
            domain: r.domain,
            boot_server: r.boot_server.map(crate::ipv4).transpose()?,
            machine_id: r.machine_id,
            machine_state: r.machine_state,
            boot_file: r.boot_file,
            reason: r.reason,
            from_memory: r.from_memory,
        });
    }
    out.into_iter()
        .enumerate()
        .map(|(i, d)| {
            d.ok_or_else(|| {
                crate::Error::protocol(format!("dhcp_lease_batch: no answer for item {}", i + 1))
            })
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct LeaseRow {
    pub address: Ipv4Addr,
    pub subnet_id: Uuid,
    pub state: LeaseState,
    pub mac: Option<MacAddr>,
    pub hostname: Option<String>,
    /// Set for every live lease (the schema's check).
    pub expires_at: DateTime<Utc>,
    pub machine_id: Option<Uuid>,
}

/// Live leases (offered, bound, declined and not yet expired), by address.
pub async fn list(
    conn: &mut PgConnection,
    subnet_id: Option<Uuid>,
    mac: Option<MacAddr>,
    limit: i64,
) -> Result<Vec<LeaseRow>> {
    let rows = sqlx::query!(
        r#"select l.address as "address: IpAddr", l.subnet_id, l.state as "state: LeaseState",
                  l.mac as "mac: MacAddr", l.hostname, l.expires_at as "expires_at!",
                  (select n.machine_id from nics n where n.mac = l.mac and n.active) as machine_id
           from leases l
           where l.state <> 'free' and l.expires_at > now()
             and ($1::uuid is null or l.subnet_id = $1)
             and ($2::macaddr is null or l.mac = $2)
           order by l.address limit $3"#,
        subnet_id,
        mac as Option<MacAddr>,
        limit
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(LeaseRow {
                address: crate::ipv4(r.address)?,
                subnet_id: r.subnet_id,
                state: r.state,
                mac: r.mac,
                hostname: r.hostname,
                expires_at: r.expires_at,
                machine_id: r.machine_id,
            })
        })
        .collect()
}

/// Returns expired leases to the pool and drops free rows that left it. Idempotent; safe on
/// every instance at once. Returns how many leases were reclaimed.
pub async fn reclaim_expired(conn: &mut PgConnection) -> Result<u64> {
    let n = sqlx::query!(
        r#"update leases set state = 'free', expires_at = null, updated_at = now()
         where state <> 'free' and expires_at < now()"#
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query!("delete from leases where not pool and state = 'free'")
        .execute(conn)
        .await?;
    Ok(n)
}

/// Live (unexpired offered or bound) leases of a subnet.
pub async fn active_in_subnet(conn: &mut PgConnection, subnet_id: Uuid) -> Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from leases
           where subnet_id = $1 and state in ('offered', 'bound') and expires_at > now()"#,
        subnet_id
    )
    .fetch_one(conn)
    .await
    .map_err(crate::Error::from)
}
