//! leases: what DHCP handed out. `dhcp_lease` (a database function, see the migration) makes
//! each decision in one round trip.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// The arguments of one lease decision.
#[derive(Debug)]
pub struct LeaseCall<'a> {
    pub op: &'a str,
    pub match_addr: &'a str,
    pub relayed: bool,
    pub mac: &'a str,
    pub addr: Option<&'a str>,
    pub client_id: Option<&'a [u8]>,
    pub hostname: Option<&'a str>,
    pub offer_secs: i32,
    pub quarantine_secs: i32,
}

#[derive(Debug, Clone)]
pub struct LeaseDecision {
    pub outcome: Option<String>,
    pub address: Option<String>,
    pub lease_secs: Option<i32>,
    pub subnet_id: Option<Uuid>,
    pub cidr: Option<String>,
    pub router: Option<String>,
    pub dns_servers: Option<Vec<String>>,
    pub domain: Option<String>,
    pub boot_server: Option<String>,
    pub machine_id: Option<Uuid>,
    pub machine_state: Option<String>,
    pub boot_file: Option<String>,
    pub reason: Option<String>,
}

pub async fn decide(
    conn: &mut PgConnection,
    c: &LeaseCall<'_>,
) -> Result<LeaseDecision, sqlx::Error> {
    sqlx::query_as!(
        LeaseDecision,
        r#"select outcome, host(address) as address, lease_secs, subnet_id, cidr::text as cidr,
                  host(router) as router, array(select host(d) from unnest(dns_servers) d) as dns_servers,
                  domain, host(boot_server) as boot_server, machine_id, machine_state, boot_file, reason
           from dhcp_lease($1, $2::text::inet, $3, $4::text::macaddr, $5::text::inet, $6, $7, $8, $9)"#,
        c.op,
        c.match_addr,
        c.relayed,
        c.mac,
        c.addr,
        c.client_id,
        c.hostname,
        c.offer_secs,
        c.quarantine_secs
    )
    .fetch_one(conn)
    .await
}

#[derive(Debug, Clone)]
pub struct LeaseRow {
    pub address: String,
    pub subnet_id: Uuid,
    pub state: String,
    pub mac: Option<String>,
    pub hostname: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub machine_id: Option<Uuid>,
}

/// Live leases (offered, bound, declined and not yet expired), by address.
pub async fn list(
    conn: &mut PgConnection,
    subnet_id: Option<Uuid>,
    mac: Option<&str>,
    limit: i64,
) -> Result<Vec<LeaseRow>, sqlx::Error> {
    sqlx::query_as!(
        LeaseRow,
        r#"select host(l.address) as "address!", l.subnet_id, l.state, l.mac::text as mac, l.hostname, l.expires_at,
                  (select n.machine_id from nics n where n.mac = l.mac and n.active) as machine_id
           from leases l
           where l.state <> 'free' and l.expires_at > now()
             and ($1::uuid is null or l.subnet_id = $1)
             and ($2::text is null or l.mac = $2::text::macaddr)
           order by l.address limit $3"#,
        subnet_id,
        mac,
        limit
    )
    .fetch_all(conn)
    .await
}

/// Returns expired leases to the pool and drops free rows that left it. Idempotent; safe on
/// every instance at once. Returns how many leases were reclaimed.
pub async fn reclaim_expired(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let n = sqlx::query!(
        "update leases set state = 'free', expires_at = null, updated_at = now()
         where state <> 'free' and expires_at < now()"
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
pub async fn active_in_subnet(
    conn: &mut PgConnection,
    subnet_id: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from leases
           where subnet_id = $1 and state in ('offered', 'bound') and expires_at > now()"#,
        subnet_id
    )
    .fetch_one(conn)
    .await
}
