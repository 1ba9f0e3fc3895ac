//! Subnets and their pools: create, list, show, edit, delete; and the lease list.

use std::net::Ipv4Addr;

use plinth_db::subnets::{SubnetFields, SubnetRow};
use plinth_types::api::{AddressRange, Lease, Subnet, SubnetCreate, SubnetPatch};
use plinth_types::{Error, MacAddr};
use uuid::Uuid;

use crate::auth::Permission;
use crate::{App, DbResult, Principal, Result};

/// The largest pool one subnet may have (a /15): every address is a row.
pub const MAX_POOL: u64 = 131_072;

/// Parses `a.b.c.d/n` and insists on the network address.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let bad = || {
        Error::invalid(
            "invalid_cidr",
            format!("invalid subnet {s:?}: expected an IPv4 network such as 10.20.0.0/24"),
        )
    };
    let (addr, len) = s.trim().split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&len) {
        return Err(Error::invalid(
            "invalid_cidr",
            format!("subnet prefix length must be between 8 and 30, not {len}"),
        ));
    }
    let mask = u32::MAX << (32 - len);
    let net = Ipv4Addr::from(u32::from(addr) & mask);
    if net != addr {
        return Err(Error::invalid(
            "invalid_cidr",
            format!("{s} has host bits set: did you mean {net}/{len}?"),
        ));
    }
    Ok((net, len))
}

pub fn contains(net: (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - net.1);
    u32::from(ip) & mask == u32::from(net.0)
}

/// Checks ranges against the subnet: inside it, not its network or broadcast address, not
/// overlapping each other, and a pool of reasonable size.
fn check_ranges(net: (Ipv4Addr, u8), ranges: &[AddressRange]) -> Result<()> {
    let broadcast = Ipv4Addr::from(u32::from(net.0) | !(u32::MAX << (32 - net.1)));
    let mut total: u64 = 0;
    for (i, r) in ranges.iter().enumerate() {
        if u32::from(r.start) > u32::from(r.end) {
            return Err(Error::invalid(
                "invalid_range",
                format!("range {}-{} ends before it starts", r.start, r.end),
            ));
        }
        if !contains(net, r.start) || !contains(net, r.end) {
            return Err(Error::invalid(
                "range_outside_subnet",
                format!("range {}-{} is outside {}/{}", r.start, r.end, net.0, net.1),
            ));
        }
        if r.start == net.0 || r.end == broadcast {
            return Err(Error::invalid(
                "invalid_range",
                format!(
                    "range {}-{} includes the network or broadcast address",
                    r.start, r.end
                ),
            ));
        }
        for o in &ranges[..i] {
            if u32::from(r.start) <= u32::from(o.end) && u32::from(o.start) <= u32::from(r.end) {
                return Err(Error::invalid(
                    "ranges_overlap",
                    format!(
                        "ranges {}-{} and {}-{} overlap",
                        o.start, o.end, r.start, r.end
                    ),
                ));
            }
        }
        total += u64::from(u32::from(r.end) - u32::from(r.start)) + 1;
    }
    if total > MAX_POOL {
        return Err(Error::invalid(
            "pool_too_large",
            format!("the ranges hold {total} addresses; at most {MAX_POOL} per subnet"),
        ));
    }
    Ok(())
}

fn check_lease_time(t: u32) -> Result<()> {
    if (60..=31_536_000).contains(&t) {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_lease_time",
            "lease_time must be between 60 seconds and one year",
        ))
    }
}

fn check_domain(d: Option<&str>) -> Result<()> {
    match d {
        Some(d) => crate::validate::hostname(d)
            .map(|_| ())
            .map_err(|_| Error::invalid("invalid_domain", format!("invalid domain {d:?}"))),
        None => Ok(()),
    }
}

fn subnet(r: SubnetRow, ranges: Vec<(Ipv4Addr, Ipv4Addr)>) -> Subnet {
    Subnet {
        id: r.id,
        cidr: r.cidr,
        ranges: ranges
            .into_iter()
            .map(|(start, end)| AddressRange { start, end })
            .collect(),
        router: r.router,
        dns_servers: r.dns_servers,
        domain: r.domain,
        lease_time: u32::try_from(r.lease_time).unwrap_or_default(),
        boot_server: r.boot_server,
        relay_addresses: r.relay_addresses,
        relay_any_in_cidr: r.relay_any_in_cidr,
        pool_size: r.pool_size,
        active_leases: r.active_leases,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

fn range_pairs(v: &[AddressRange]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    v.iter().map(|r| (r.start, r.end)).collect()
}

fn check_router(net: (Ipv4Addr, u8), router: Option<Ipv4Addr>) -> Result<()> {
    match router {
        Some(r) if !contains(net, r) => Err(Error::invalid(
            "invalid_router",
            format!("router {r} is not in {}/{}", net.0, net.1),
        )),
        _ => Ok(()),
    }
}

/// The subnet with its ranges, as the API shows it.
async fn load(conn: &mut plinth_db::PgConnection, id: Uuid) -> Result<Option<Subnet>> {
    let Some(row) = plinth_db::subnets::get(conn, id).await.db()? else {
        return Ok(None);
    };
    let ranges = plinth_db::subnets::ranges(conn, id).await.db()?;
    Ok(Some(subnet(row, ranges)))
}

impl App {
    pub async fn create_subnet(&self, who: &Principal, req: SubnetCreate) -> Result<Subnet> {
        who.require(Permission::ManageNetworks)?;
        let net = parse_cidr(&req.cidr)?;
        check_ranges(net, &req.ranges)?;
        let lease_time = req.lease_time.unwrap_or(3600);
        check_lease_time(lease_time)?;
        check_domain(req.domain.as_deref())?;
        check_router(net, req.router)?;
        let cidr = format!("{}/{}", net.0, net.1);
        let fields = SubnetFields {
            router: req.router,
            dns_servers: req.dns_servers.as_deref().unwrap_or_default(),
            domain: req.domain.as_deref(),
            lease_time: lease_time as i32,
            boot_server: req.boot_server,
            relay_addresses: req.relay_addresses.as_deref().unwrap_or_default(),
            relay_any_in_cidr: req.relay_any_in_cidr.unwrap_or(false),
        };
        let mut tx = self.begin().await?;
        let id = plinth_db::subnets::insert(&mut tx, &cidr, &fields)
            .await
            .db()?;
        plinth_db::subnets::set_ranges(&mut tx, id, &range_pairs(&req.ranges))
            .await
            .db()?;
        crate::record_event(
            &mut tx,
            who,
            "subnet_created",
            serde_json::to_value(&req).unwrap_or_default(),
        )
        .await?;
        let created = load(&mut tx, id)
            .await?
            .ok_or_else(crate::missing("create_subnet"))?;
        tx.commit().await.db()?;
        tracing::info!(subnet = %cidr, actor = %who.name, "subnet created");
        Ok(created)
    }

    pub async fn list_subnets(&self, who: &Principal) -> Result<Vec<Subnet>> {
        who.require(Permission::ReadInventory)?;
        let mut conn = self.conn().await?;
        let rows = plinth_db::subnets::list(&mut conn).await.db()?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let ranges = plinth_db::subnets::ranges(&mut conn, r.id).await.db()?;
            out.push(subnet(r, ranges));
        }
        Ok(out)
    }

    pub async fn get_subnet(&self, who: &Principal, id: Uuid) -> Result<Subnet> {
        who.require(Permission::ReadInventory)?;
        let mut conn = self.conn().await?;
        load(&mut conn, id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no subnet {id}")))
    }

    pub async fn update_subnet(
        &self,
        who: &Principal,
        id: Uuid,
        patch: SubnetPatch,
    ) -> Result<Subnet> {
        who.require(Permission::ManageNetworks)?;
        let mut tx = self.begin().await?;
        if !plinth_db::subnets::lock(&mut tx, id).await.db()? {
            return Err(Error::not_found(format!("no subnet {id}")));
        }
        let cur = load(&mut tx, id)
            .await?
            .ok_or_else(crate::missing("update_subnet"))?;
        let net = parse_cidr(&cur.cidr)?;
        if let Some(ranges) = &patch.ranges {
            check_ranges(net, ranges)?;
        }
        let lease_time = patch.lease_time.unwrap_or(cur.lease_time);
        check_lease_time(lease_time)?;
        let domain = patch.domain.clone().unwrap_or(cur.domain.clone());
        check_domain(domain.as_deref())?;
        let router = patch.router.unwrap_or(cur.router);
        check_router(net, router)?;
        let fields = SubnetFields {
            router,
            dns_servers: patch.dns_servers.as_deref().unwrap_or(&cur.dns_servers),
            domain: domain.as_deref(),
            lease_time: lease_time as i32,
            boot_server: patch.boot_server.unwrap_or(cur.boot_server),
            relay_addresses: patch
                .relay_addresses
                .as_deref()
                .unwrap_or(&cur.relay_addresses),
            relay_any_in_cidr: patch.relay_any_in_cidr.unwrap_or(cur.relay_any_in_cidr),
        };
        plinth_db::subnets::update(&mut tx, id, &fields)
            .await
            .db()?;
        if let Some(ranges) = &patch.ranges {
            plinth_db::subnets::set_ranges(&mut tx, id, &range_pairs(ranges))
                .await
                .db()?;
        }
        crate::record_event(
            &mut tx,
            who,
            "subnet_updated",
            serde_json::json!({ "subnet": cur.cidr, "changes": patch }),
        )
        .await?;
        let updated = load(&mut tx, id)
            .await?
            .ok_or_else(crate::missing("update_subnet"))?;
        tx.commit().await.db()?;
        Ok(updated)
    }

    pub async fn delete_subnet(&self, who: &Principal, id: Uuid) -> Result<()> {
        who.require(Permission::ManageNetworks)?;
        let mut tx = self.begin().await?;
        if !plinth_db::subnets::lock(&mut tx, id).await.db()? {
            return Err(Error::not_found(format!("no subnet {id}")));
        }
        let active = plinth_db::leases::active_in_subnet(&mut tx, id)
            .await
            .db()?;
        if active > 0 {
            return Err(Error::conflict(
                "subnet_in_use",
                format!(
                    "the subnet has {active} live lease(s); wait for them to expire or shrink its ranges first"
                ),
            ));
        }
        let cur = plinth_db::subnets::get(&mut tx, id)
            .await
            .db()?
            .ok_or_else(crate::missing("delete_subnet"))?;
        plinth_db::subnets::delete(&mut tx, id).await.db()?;
        crate::record_event(
            &mut tx,
            who,
            "subnet_deleted",
            serde_json::json!({ "subnet": cur.cidr }),
        )
        .await?;
        tx.commit().await.db()?;
        tracing::info!(subnet = %cur.cidr, actor = %who.name, "subnet deleted");
        Ok(())
    }

    pub async fn list_leases(
        &self,
        who: &Principal,
        subnet_id: Option<Uuid>,
        mac: Option<MacAddr>,
    ) -> Result<Vec<Lease>> {
        who.require(Permission::ReadInventory)?;
        let mut conn = self.conn().await?;
        let rows = plinth_db::leases::list(&mut conn, subnet_id, mac, 200_000)
            .await
            .db()?;
        Ok(rows
            .into_iter()
            .map(|r| Lease {
                address: r.address,
                subnet_id: r.subnet_id,
                state: r.state,
                mac: r.mac,
                hostname: r.hostname,
                expires_at: r.expires_at,
                machine_id: r.machine_id,
            })
            .collect())
    }

    /// Reconciler pass: expired leases go back to the pool. Safe on every instance at once.
    pub async fn reclaim_leases(&self) -> Result<u64> {
        let mut conn = self.conn().await?;
        let n = plinth_db::leases::reclaim_expired(&mut conn).await.db()?;
        if n > 0 {
            tracing::info!(reclaimed = n, "expired leases returned to the pool");
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.20.0.0/24").unwrap(),
            (Ipv4Addr::new(10, 20, 0, 0), 24)
        );
        assert_eq!(parse_cidr("10.20.0.5/24").unwrap_err().code, "invalid_cidr");
        assert!(parse_cidr("10.20.0.0").is_err());
        assert!(parse_cidr("10.20.0.0/31").is_err());
        assert!(contains(
            (Ipv4Addr::new(10, 20, 0, 0), 24),
            Ipv4Addr::new(10, 20, 0, 255)
        ));
        assert!(!contains(
            (Ipv4Addr::new(10, 20, 0, 0), 24),
            Ipv4Addr::new(10, 20, 1, 0)
        ));
    }

    #[test]
    fn ranges() {
        let net = (Ipv4Addr::new(10, 0, 0, 0), 24);
        let r = |a: u8, b: u8| AddressRange {
            start: Ipv4Addr::new(10, 0, 0, a),
            end: Ipv4Addr::new(10, 0, 0, b),
        };
        assert!(check_ranges(net, &[r(10, 20), r(30, 40)]).is_ok());
        assert_eq!(
            check_ranges(net, &[r(10, 20), r(20, 40)]).unwrap_err().code,
            "ranges_overlap"
        );
        assert_eq!(
            check_ranges(net, &[r(20, 10)]).unwrap_err().code,
            "invalid_range"
        );
        assert_eq!(
            check_ranges(net, &[r(0, 10)]).unwrap_err().code,
            "invalid_range"
        );
        let outside = AddressRange {
            start: Ipv4Addr::new(10, 0, 0, 250),
            end: Ipv4Addr::new(10, 0, 1, 5),
        };
        assert_eq!(
            check_ranges(net, &[outside]).unwrap_err().code,
            "range_outside_subnet"
        );
    }
}
