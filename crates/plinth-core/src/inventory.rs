//! What people look at: the machine table (filters, search, sort, pages), rack elevations,
//! counts, a machine's latest events and the free positions of a rack. Read-only; the same
//! permissions as the API (clients see only their allocations' machines).

use plinth_db::inventory::TableRow;
use plinth_types::api::{Event, Rack};
use plinth_types::{Error, MacAddr};
use uuid::Uuid;

use crate::auth::Permission;
use crate::{App, DbResult, Principal, Result, convert};

/// The machine table's query, sort keys and rack occupants, as the UI asks for them.
pub use plinth_db::inventory::{Occupant, SortKey, TableQuery};

/// At most this many machines on one page of the table.
pub const MAX_TABLE_PAGE: i64 = 500;

impl App {
    /// One page of the machine table and how many machines match in all. `q` is matched
    /// against hostnames (substring), serials, MACs and IPv4 addresses.
    pub async fn machine_table(
        &self,
        who: &Principal,
        mut q: TableQuery,
    ) -> Result<(Vec<TableRow>, i64)> {
        q.owner_token_id = who.owner_scope();
        if q.owner_token_id.is_none() {
            who.require(Permission::ReadInventory)?;
        }
        if !(1..=MAX_TABLE_PAGE).contains(&q.limit) || q.offset < 0 {
            return Err(Error::invalid(
                "invalid_limit",
                format!("a page holds 1 to {MAX_TABLE_PAGE} machines"),
            ));
        }
        if let Some(p) = &q.power
            && !["on", "off", "unknown"].contains(&p.as_str())
        {
            return Err(Error::invalid(
                "invalid_power",
                "power is on, off or unknown",
            ));
        }
        if let Some(h) = &q.health
            && plinth_types::health::HealthStatus::parse(h).is_none()
        {
            return Err(Error::invalid(
                "invalid_health",
                "health is ok, warning, critical or unknown",
            ));
        }
        if let Some(s) = q.q.as_deref().map(str::trim) {
            q.q_mac = s.parse::<MacAddr>().ok();
            q.q_ip = s.parse::<std::net::Ipv4Addr>().ok();
            q.q = (!s.is_empty()).then(|| s.to_owned());
        }
        let mut conn = self.conn().await?;
        plinth_db::inventory::table(&mut conn, &q).await.db()
    }

    /// Machines per lifecycle state.
    pub async fn state_counts(
        &self,
        who: &Principal,
    ) -> Result<Vec<(plinth_types::MachineState, i64)>> {
        who.require(Permission::ReadInventory)?;
        let mut conn = self.conn().await?;
        plinth_db::inventory::state_counts(&mut conn).await.db()
    }

    /// How many machines are in `state`.
    pub async fn count_in_state(
        &self,
        who: &Principal,
        state: plinth_types::MachineState,
    ) -> Result<i64> {
        who.require(Permission::ReadInventory)?;
        let mut conn = self.conn().await?;
        plinth_db::inventory::count_in_state(&mut conn, state)
            .await
            .db()
    }

    /// The machines mounted in `racks` (every rack when `None`), by rack, top down.
    pub async fn rack_occupants(
        &self,
        who: &Principal,
        racks: Option<&[Uuid]>,
    ) -> Result<Vec<Occupant>> {
        who.require(Permission::ReadInventory)?;
        let mut conn = self.conn().await?;
        plinth_db::inventory::occupants(&mut conn, racks).await.db()
    }

    /// The lowest rack units at which a machine `size_u` high fits in `rack`.
    pub async fn free_units(&self, who: &Principal, rack: &str, size_u: i32) -> Result<Vec<i32>> {
        if !(1..=100).contains(&size_u) {
            return Err(Error::invalid(
                "invalid_size",
                "size_u is between 1 and 100",
            ));
        }
        let r = self.get_rack(who, rack).await?;
        let occupants = self.rack_occupants(who, Some(&[r.id])).await?;
        Ok(free_units(&r, &occupants, size_u))
    }

    /// A machine's newest `limit` events, newest first.
    pub async fn latest_events(&self, who: &Principal, id: Uuid, limit: u32) -> Result<Vec<Event>> {
        let mut conn = self.conn().await?;
        let row = self.visible_row(&mut conn, who, id).await?;
        let start = self.tenancy_start(&mut conn, who, &row).await?;
        plinth_db::events::latest(&mut conn, id, i64::from(limit.clamp(1, 1000)))
            .await
            .db()?
            .into_iter()
            .filter(|e| start.is_none_or(|s| e.at >= s))
            .map(convert::event)
            .collect()
    }
}

/// The lowest units `u` such that `u..u+size_u` is inside the rack and touches no occupant.
pub fn free_units(rack: &Rack, occupants: &[Occupant], size_u: i32) -> Vec<i32> {
    let taken = |u: i32| {
        occupants
            .iter()
            .any(|o| o.rack_id == rack.id && u >= o.rack_unit && u < o.rack_unit + o.size_u)
    };
    (1..=rack.height_u - size_u + 1)
        .filter(|&u| (u..u + size_u).all(|x| !taken(x)))
        .collect()
}
