//! nics: a machine's network interfaces. A MAC (and a reserved IPv4) belongs to at most one
//! active NIC in the whole inventory; decommissioning deactivates the NIC and frees both.

use std::net::{IpAddr, Ipv4Addr};

use plinth_types::MacAddr;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;

#[derive(Debug, Clone)]
pub struct NicRow {
    pub machine_id: Uuid,
    pub mac: MacAddr,
    pub ipv4: Option<Ipv4Addr>,
    pub pxe: bool,
}

pub async fn insert(
    conn: &mut PgConnection,
    machine_id: Uuid,
    mac: MacAddr,
    ipv4: Option<Ipv4Addr>,
    pxe: bool,
) -> Result<()> {
    sqlx::query!(
        "insert into nics (machine_id, mac, ipv4, pxe) values ($1, $2, $3, $4)",
        machine_id,
        mac as MacAddr,
        ipv4.map(IpAddr::V4) as Option<IpAddr>,
        pxe
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The active NICs of these machines, in the order they were enrolled.
pub async fn for_machines(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<NicRow>> {
    let rows = sqlx::query!(
        r#"select machine_id, mac as "mac: MacAddr", ipv4 as "ipv4: IpAddr", pxe
           from nics where machine_id = any($1) and active
           order by machine_id, id"#,
        ids
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(NicRow {
                machine_id: r.machine_id,
                mac: r.mac,
                ipv4: r.ipv4.map(crate::ipv4).transpose()?,
                pxe: r.pxe,
            })
        })
        .collect()
}

/// Frees the MACs and addresses of a decommissioned machine; the rows stay for audit.
pub async fn deactivate_for_machine(conn: &mut PgConnection, machine_id: Uuid) -> Result<()> {
    sqlx::query!(
        "update nics set active = false where machine_id = $1",
        machine_id
    )
    .execute(conn)
    .await?;
    Ok(())
}
