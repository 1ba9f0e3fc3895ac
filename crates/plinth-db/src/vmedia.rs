//! Virtual-media boots: the per-boot ISO rows (`vmedia_boots`, each tied to the agent token
//! its ISO carries), the static network a machine's ramdisk is given, and the boot method of
//! machines and racks.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use plinth_types::api::BootMethod;
use plinth_types::{AgentMode, MacAddr, MachineState};

use crate::Result;

/// The address a machine's ramdisk configures statically: its NIC's reservation inside a
/// subnet plinth knows, with the subnet's prefix, router and DNS servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNetRow {
    pub mac: MacAddr,
    pub ipv4: IpAddr,
    pub prefix: i32,
    pub router: Option<IpAddr>,
    pub dns: Vec<IpAddr>,
}

/// The machine's static network, when one of its active NICs has a reserved address inside a
/// subnet plinth knows (its PXE NIC first, then in enrolment order); `None` otherwise.
pub async fn static_network(
    conn: &mut PgConnection,
    machine_id: Uuid,
) -> Result<Option<StaticNetRow>> {
    let row = sqlx::query_as!(
        StaticNetRow,
        r#"select n.mac as "mac!: MacAddr", host(n.ipv4)::inet as "ipv4!: IpAddr",
                  masklen(s.cidr) as "prefix!", s.router as "router: IpAddr",
                  s.dns_servers as "dns!: Vec<IpAddr>"
           from nics n join subnets s on n.ipv4 <<= s.cidr
           where n.machine_id = $1 and n.active and n.ipv4 is not null
           order by n.pxe desc, n.id
           limit 1"#,
        machine_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(row)
}

/// The machine's state, locked (`FOR UPDATE`) until the end of the transaction.
pub async fn lock_machine(conn: &mut PgConnection, id: Uuid) -> Result<Option<MachineState>> {
    let row = sqlx::query_scalar!(
        r#"select state as "state: MachineState" from machines where id = $1 for update"#,
        id
    )
    .fetch_optional(conn)
    .await?;
    Ok(row)
}

/// A new virtual-media boot and its agent token.
#[derive(Debug, Clone)]
pub struct NewBoot<'a> {
    pub id_sha256: &'a [u8],
    pub machine_id: Uuid,
    pub mode: AgentMode,
    pub token_sha256: &'a [u8],
    pub expires_at: DateTime<Utc>,
    pub sealed_config: &'a [u8],
    /// The token's binding and the ramdisk's address; `None`: DHCP (the token is then good
    /// only from an address plinth leases the machine).
    pub static_ip: Option<IpAddr>,
}

/// Records a boot: stores the new token bound to the static address, in place of the
/// machine's token of this mode (a newer boot replaces it, as a newer iPXE script's does:
/// the `agent_tokens_replace` trigger, sql/boot.sql), and the ISO row. Run in the transaction
/// that locked the machine.
pub async fn insert_boot(conn: &mut PgConnection, b: &NewBoot<'_>) -> Result<()> {
    sqlx::query!(
        "insert into agent_tokens (secret_sha256, machine_id, mode, expires_at, bound_ip)
         values ($1, $2, $3, $4, $5)",
        b.token_sha256,
        b.machine_id,
        b.mode.as_str(),
        b.expires_at,
        b.static_ip as Option<IpAddr>
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "insert into vmedia_boots (id_sha256, machine_id, token_sha256, mode, sealed_config, static_ip)
         values ($1, $2, $3, $4, $5, $6)",
        b.id_sha256,
        b.machine_id,
        b.token_sha256,
        b.mode.as_str(),
        b.sealed_config,
        b.static_ip as Option<IpAddr>
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A live boot's ISO, as a fetch finds it.
#[derive(Debug, Clone)]
pub struct FetchRow {
    pub machine_id: Uuid,
    pub mode: AgentMode,
    pub sealed_config: Vec<u8>,
    pub created_at: DateTime<Utc>,
    /// Fetches so far, this one included.
    pub fetches: i32,
}

/// The boot behind an ISO id's hash, counted as fetched (the first fetch is also a
/// `vmedia_fetched` event on the machine), while its agent token is live (neither used,
/// revoked nor expired); `None` otherwise.
pub async fn fetch(
    conn: &mut PgConnection,
    id_sha256: &[u8],
    remote: Option<&str>,
) -> Result<Option<FetchRow>> {
    let row = sqlx::query_as!(
        FetchRow,
        r#"with hit as (
               update vmedia_boots v set fetches = v.fetches + 1, last_fetched_at = now()
               from agent_tokens t
               where v.id_sha256 = $1 and t.machine_id = v.machine_id and t.mode = v.mode
                 and t.secret_sha256 = v.token_sha256
                 and t.used_at is null and t.revoked_at is null and t.expires_at > now()
               returning v.machine_id, v.mode, v.sealed_config, v.created_at, v.fetches
           ), ev as (
               insert into events (actor, machine_id, kind, details)
               select 'vmedia', h.machine_id, 'vmedia_fetched',
                      jsonb_build_object('mode', h.mode, 'remote', $2::text)
               from hit h where h.fetches = 1
           )
           select machine_id as "machine_id!", mode as "mode!: AgentMode",
                  sealed_config as "sealed_config!", created_at as "created_at!",
                  fetches as "fetches!"
           from hit"#,
        id_sha256,
        remote
    )
    .fetch_optional(conn)
    .await?;
    Ok(row)
}

/// Each machine's own boot method and its rack's (`None`: not set / no rack), by machine id.
pub async fn boot_methods(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, Option<BootMethod>, Option<BootMethod>)>> {
    let rows = sqlx::query!(
        r#"select m.id as "id!", m.boot_method as "own: BootMethod", r.boot_method as "rack?: BootMethod"
           from machines m left join racks r on r.id = m.rack_id
           where m.id = any($1)"#,
        ids
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.own, r.rack)).collect())
}

/// Sets a machine's own boot method (`None`: its rack's).
pub async fn set_machine_boot_method(
    conn: &mut PgConnection,
    id: Uuid,
    method: Option<BootMethod>,
) -> Result<()> {
    sqlx::query!(
        "update machines set boot_method = $2, updated_at = now() where id = $1",
        id,
        method as Option<BootMethod>
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets a rack's boot method.
pub async fn set_rack_boot_method(
    conn: &mut PgConnection,
    id: Uuid,
    method: BootMethod,
) -> Result<()> {
    sqlx::query!(
        "update racks set boot_method = $2, updated_at = now() where id = $1",
        id,
        method as BootMethod
    )
    .execute(conn)
    .await?;
    Ok(())
}
