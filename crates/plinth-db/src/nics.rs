//! nics: a machine's network interfaces. A MAC (and a reserved IPv4) belongs to at most one
//! active NIC in the whole inventory; decommissioning deactivates the NIC and frees both.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;

#[derive(Debug, Clone)]
pub struct NicRow {
    pub machine_id: Uuid,
    /// Canonical lowercase `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Dotted quad, no prefix length.
    pub ipv4: Option<String>,
    pub pxe: bool,
}

pub async fn insert(
    conn: &mut PgConnection,
    machine_id: Uuid,
    mac: &str,
    ipv4: Option<&str>,
    pxe: bool,
) -> Result<()> {
    sqlx::query!(
        "insert into nics (machine_id, mac, ipv4, pxe) values ($1, $2::text::macaddr, $3::text::inet, $4)",
        machine_id,
        mac,
        ipv4,
        pxe
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The active NICs of these machines, in the order they were enrolled.
pub async fn for_machines(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<NicRow>> {
    sqlx::query_as!(
        NicRow,
        r#"select machine_id, mac::text as "mac!", host(ipv4) as ipv4, pxe
           from nics where machine_id = any($1) and active
           order by machine_id, id"#,
        ids
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
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
