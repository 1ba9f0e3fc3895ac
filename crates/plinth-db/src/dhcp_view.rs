//! What an instance's DHCP client view (plinth-core's `dhcp::view`) reads: the subnets, the
//! MACs the database knows, free addresses for its reservoirs, and the notifications of
//! `sql/dhcp.sql` that keep it fresh (channel [`CHANNEL`]).

use std::net::{IpAddr, Ipv4Addr};

use sqlx::PgConnection;
use uuid::Uuid;

use plinth_types::MacAddr;

use crate::Result;

/// The channel of the view's notifications.
pub const CHANNEL: &str = "dhcp_view";

/// A subnet as a DISCOVER's answer needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewSubnet {
    pub id: Uuid,
    /// The network address and its prefix length.
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    /// As text (`10.0.0.0/24`), as a decision carries it.
    pub cidr: String,
    pub relay_addresses: Vec<Ipv4Addr>,
    pub relay_any_in_cidr: bool,
    /// Its ranges hold at least 1,024 addresses (as `dhcp_lease_batch` decides): offers are
    /// made from memory.
    pub large: bool,
    pub lease_secs: i32,
    pub router: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub boot_server: Option<Ipv4Addr>,
}

/// Every subnet.
pub async fn subnets(conn: &mut PgConnection) -> Result<Vec<ViewSubnet>> {
    let rows = sqlx::query!(
        r#"select sn.id, host(sn.cidr)::inet as "network!: IpAddr", masklen(sn.cidr) as "prefix_len!",
                  sn.cidr::text as "cidr!", sn.relay_addresses as "relay_addresses: Vec<IpAddr>",
                  sn.relay_any_in_cidr,
                  coalesce((select sum(rg.last_addr - rg.first_addr + 1) from subnet_ranges rg
                            where rg.subnet_id = sn.id), 0) >= 1024 as "large!",
                  sn.lease_time, sn.router as "router: IpAddr",
                  sn.dns_servers as "dns_servers: Vec<IpAddr>", sn.domain,
                  sn.boot_server as "boot_server: IpAddr"
           from subnets sn order by sn.cidr"#
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let v4s = |v: Vec<IpAddr>| v.into_iter().map(crate::ipv4).collect::<Result<_>>();
            Ok(ViewSubnet {
                id: r.id,
                network: crate::ipv4(r.network)?,
                prefix_len: u8::try_from(r.prefix_len)
                    .map_err(|_| crate::Error::protocol("a prefix length out of range".into()))?,
                cidr: r.cidr,
                relay_addresses: v4s(r.relay_addresses)?,
                relay_any_in_cidr: r.relay_any_in_cidr,
                large: r.large,
                lease_secs: r.lease_time,
                router: r.router.map(crate::ipv4).transpose()?,
                dns_servers: v4s(r.dns_servers)?,
                domain: r.domain,
                boot_server: r.boot_server.map(crate::ipv4).transpose()?,
            })
        })
        .collect()
}

/// Every MAC of a NIC (active or not) or of a lease row: the clients a DISCOVER must be
/// decided for by the database.
pub async fn known_macs(conn: &mut PgConnection) -> Result<Vec<MacAddr>> {
    Ok(sqlx::query_scalar!(
        r#"select n.mac as "mac!: MacAddr" from nics n
           union
           select l.mac as "mac!: MacAddr" from leases l where l.mac is not null"#
    )
    .fetch_all(conn)
    .await?)
}

/// Up to `n` free pool addresses of a subnet, from a random point of its pool (`dhcp_view_free`).
pub async fn free_addresses(
    conn: &mut PgConnection,
    subnet_id: Uuid,
    n: i32,
) -> Result<Vec<Ipv4Addr>> {
    sqlx::query_scalar!(
        r#"select a as "a!: IpAddr" from dhcp_view_free($1, $2) a"#,
        subnet_id,
        n
    )
    .fetch_all(conn)
    .await?
    .into_iter()
    .map(crate::ipv4)
    .collect()
}

/// How full PostgreSQL's notification queue is (0 to 1). From half full on, lease changes are
/// not notified (`dhcp_view_leases_notify`): a view must not trust itself then.
pub async fn queue_usage(conn: &mut PgConnection) -> Result<f64> {
    Ok(
        sqlx::query_scalar!(r#"select pg_notification_queue_usage() as "u!""#)
            .fetch_one(conn)
            .await?,
    )
}

/// Tells every view to load again.
pub async fn notify_reload(conn: &mut PgConnection) -> Result<()> {
    sqlx::query!("select pg_notify('dhcp_view', 'reload')")
        .execute(conn)
        .await?;
    Ok(())
}

/// One notification on [`CHANNEL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Lease rows written for these clients: each MAC is known, each address taken.
    Leases(Vec<(MacAddr, Ipv4Addr)>),
    /// A NIC added or changed, with its reserved address.
    Nic(MacAddr, Option<Ipv4Addr>),
    /// Load everything again.
    Reload,
}

impl Change {
    /// Reads a payload; anything it cannot read is a reload (the view is then rebuilt rather
    /// than left missing a change).
    pub fn parse(payload: &str) -> Change {
        Self::try_parse(payload).unwrap_or(Change::Reload)
    }

    fn try_parse(payload: &str) -> Option<Change> {
        if let Some(list) = payload.strip_prefix("l ") {
            let pairs = list
                .split(',')
                .map(|pair| {
                    let (mac, addr) = pair.split_once(' ')?;
                    Some((mac.parse().ok()?, addr.parse().ok()?))
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Change::Leases(pairs))
        } else if let Some(nic) = payload.strip_prefix("n ") {
            let (mac, addr) = nic.split_once(' ')?;
            let addr = match addr {
                "-" => None,
                a => Some(a.parse().ok()?),
            };
            Some(Change::Nic(mac.parse().ok()?, addr))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        let m1: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let m2: MacAddr = "52:54:00:00:00:02".parse().unwrap();
        assert_eq!(
            Change::parse("l 52:54:00:00:00:01 10.0.0.5,52:54:00:00:00:02 10.0.0.6"),
            Change::Leases(vec![
                (m1, Ipv4Addr::new(10, 0, 0, 5)),
                (m2, Ipv4Addr::new(10, 0, 0, 6))
            ])
        );
        assert_eq!(
            Change::parse("n 52:54:00:00:00:01 -"),
            Change::Nic(m1, None)
        );
        assert_eq!(
            Change::parse("n 52:54:00:00:00:02 10.0.0.9"),
            Change::Nic(m2, Some(Ipv4Addr::new(10, 0, 0, 9)))
        );
        assert_eq!(Change::parse("reload"), Change::Reload);
        // what cannot be read is a reload, never a change half taken in
        for bad in [
            "l 52:54:00:00:00:01 10.0.0.5,junk",
            "n nonsense -",
            "l ",
            "x",
        ] {
            assert_eq!(Change::parse(bad), Change::Reload, "{bad}");
        }
    }
}
