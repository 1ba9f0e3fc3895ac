//! Read models for people looking at the fleet (the web UI): one page of the machine table
//! with what a row shows (power, first MAC, address, serial, size) in one query, the racks with
//! their occupants, and counts. Sorting is by a fixed set of columns; the SQL text is chosen
//! from that set, never built from input.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use std::net::{IpAddr, Ipv4Addr};

use plinth_types::{MacAddr, MachineState};

use crate::Result;

/// Columns the machine table sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Hostname,
    State,
    Rack,
    Power,
    Changed,
}

impl SortKey {
    pub const ALL: [SortKey; 5] = [
        SortKey::Hostname,
        SortKey::State,
        SortKey::Rack,
        SortKey::Power,
        SortKey::Changed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Hostname => "hostname",
            SortKey::State => "state",
            SortKey::Rack => "rack",
            SortKey::Power => "power",
            SortKey::Changed => "changed",
        }
    }

    pub fn parse(s: &str) -> Option<SortKey> {
        SortKey::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The ORDER BY of each key, in the output columns' names (the page query and the
    /// query around it both have them); `id` last keeps pages stable.
    fn order(self, desc: bool) -> &'static str {
        match (self, desc) {
            (SortKey::Hostname, false) => "hostname asc nulls last, id",
            (SortKey::Hostname, true) => "hostname desc nulls last, id",
            (SortKey::State, false) => "state asc, hostname nulls last, id",
            (SortKey::State, true) => "state desc, hostname nulls last, id",
            (SortKey::Rack, false) => "rack asc nulls last, rack_unit desc, id",
            (SortKey::Rack, true) => "rack desc nulls last, rack_unit asc, id",
            (SortKey::Power, false) => "power_state asc nulls last, hostname nulls last, id",
            (SortKey::Power, true) => "power_state desc nulls last, hostname nulls last, id",
            (SortKey::Changed, false) => "state_changed_at asc, id",
            (SortKey::Changed, true) => "state_changed_at desc, id",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct TableQuery {
    pub state: Option<MachineState>,
    pub rack: Option<String>,
    pub pool: Option<String>,
    pub tag: Option<String>,
    /// `on`, `off`, or `unknown` (no BMC, or not read yet).
    pub power: Option<String>,
    /// Hostname (substring), MAC, serial or IPv4 address.
    pub q: Option<String>,
    /// Set when `q` parses as a MAC / an IPv4 address.
    pub q_mac: Option<MacAddr>,
    pub q_ip: Option<Ipv4Addr>,
    /// Clients see only the machines of their allocations.
    pub owner_token_id: Option<Uuid>,
    /// `ok`, `warning`, `critical`, or `unknown` (no BMC, or not read yet).
    pub health: Option<String>,
    /// Only machines whose firmware inventory has an item of this kind (`bios`, ...) at this
    /// version (issue 21).
    pub firmware: Option<(String, String)>,
    pub sort: SortKey,
    pub desc: bool,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TableRow {
    pub id: Uuid,
    pub hostname: Option<String>,
    pub state: MachineState,
    pub state_changed_at: DateTime<Utc>,
    pub maintenance: bool,
    pub rack: Option<String>,
    pub rack_unit: Option<i32>,
    pub size_u: i32,
    pub pool: String,
    pub tags: Vec<String>,
    pub power_state: Option<String>,
    pub bmc_reachable: Option<bool>,
    pub health: Option<String>,
    pub mac: Option<MacAddr>,
    pub ip: Option<IpAddr>,
    pub serial: Option<String>,
    pub cpu_threads: Option<i64>,
    pub memory_mib: Option<i64>,
}

/// The WHERE of the table's queries: a fragment per filter that is set, each naming its own
/// parameter ($1..$13, bound in that order whether used or not), and the joins they need.
/// Only these literals ever reach the SQL text.
fn filters(q: &TableQuery) -> (bool, bool, String) {
    let mut conds = vec!["true"];
    let (mut racks, mut bmcs) = (false, false);
    if q.state.is_some() {
        conds.push("m.state = $1");
    }
    if q.rack.is_some() {
        conds.push("r.name = $2");
        racks = true;
    }
    if q.pool.is_some() {
        conds.push("m.pool = $3");
    }
    if q.tag.is_some() {
        conds.push("m.tags @> array[$4::text]");
    }
    if let Some(p) = &q.power {
        conds.push(if p == "unknown" {
            "b.power_state is null and $5::text is not null"
        } else {
            "b.power_state = $5"
        });
        bmcs = true;
    }
    if q.q.is_some() {
        // Each way of finding a machine by its own index, then the union.
        conds.push(
            "m.id in (
                select id from machines where hostname ilike $6
                union select id from machines where facts -> 'system' ->> 'serial' = $7
                union select machine_id from bmcs where identity ->> 'serial' = $7
                union select machine_id from nics where $8::macaddr is not null and mac = $8
                union select machine_id from nics where $9::inet is not null and ipv4 = $9
                union select n.machine_id from leases l join nics n on n.mac = l.mac and n.active
                      where $9::inet is not null and l.state = 'bound' and l.address = $9)",
        );
    }
    if q.owner_token_id.is_some() {
        conds.push(
            "m.allocation_id in (select a.id from allocations a where a.owner_token_id = $10)",
        );
    }
    if q.health.is_some() {
        conds.push("coalesce(b.health, 'unknown') = $11");
        bmcs = true;
    }
    if q.firmware.is_some() {
        conds.push(
            "m.id in (select f.machine_id from machine_firmware f
                      where f.items @> jsonb_build_array(jsonb_build_object('kind', $12::text, 'version', $13::text)))",
        );
    }
    (racks, bmcs, conds.join(" and "))
}

/// One page of machines and how many match in all.
pub async fn table(conn: &mut PgConnection, q: &TableQuery) -> Result<(Vec<TableRow>, i64)> {
    let (racks, bmcs, conds) = filters(q);
    let sort_racks = q.sort == SortKey::Rack;
    let sort_bmcs = q.sort == SortKey::Power;
    let join = |racks: bool, bmcs: bool| {
        format!(
            "{}{}",
            if racks {
                " left join racks r on r.id = m.rack_id"
            } else {
                ""
            },
            if bmcs {
                " left join bmcs b on b.machine_id = m.id"
            } else {
                ""
            }
        )
    };
    let like =
        q.q.as_deref()
            .map(|s| format!("%{}%", crate::like_escape(s)));
    macro_rules! bind_filters {
        ($query:expr) => {
            $query
                .bind(&q.state)
                .bind(&q.rack)
                .bind(&q.pool)
                .bind(&q.tag)
                .bind(&q.power)
                .bind(&like)
                .bind(&q.q)
                .bind(&q.q_mac)
                .bind(q.q_ip.map(IpAddr::V4))
                .bind(q.owner_token_id)
                .bind(&q.health)
                .bind(q.firmware.as_ref().map(|f| f.0.as_str()))
                .bind(q.firmware.as_ref().map(|f| f.1.as_str()))
        };
    }
    // Audited: every piece below is one of the literals of `filters`, `join` and
    // `SortKey::order`.
    let count_sql = format!(
        "select count(*) from machines m{} where {conds}",
        join(racks, bmcs)
    );
    let total: i64 = bind_filters!(sqlx::query_scalar(sqlx::AssertSqlSafe(count_sql)))
        .fetch_one(&mut *conn)
        .await?;
    // The page is chosen on narrow rows (the sort keys only); what a row shows is read for
    // those rows alone.
    let sql = format!(
        r#"with page as (
            select m.id, m.hostname, m.state, m.state_changed_at, m.rack_unit,
                   {rack} as rack, {power} as power_state
            from machines m{joins}
            where {conds}
            order by {order}
            limit $14 offset $15)
        select p.id, p.hostname, p.state, p.state_changed_at, m.maintenance, r.name as rack,
               p.rack_unit, m.size_u, m.pool, m.tags, b.power_state, b.reachable as bmc_reachable,
               b.health,
               coalesce(m.facts -> 'system' ->> 'serial', b.identity ->> 'serial') as serial,
               (m.facts -> 'cpu' ->> 'threads')::bigint as cpu_threads,
               (m.facts ->> 'memory_mib')::bigint as memory_mib,
               nic.mac, lease.ip
        from page p
        join machines m on m.id = p.id
        left join racks r on r.id = m.rack_id
        left join bmcs b on b.machine_id = m.id
        left join lateral (
            select n.mac from nics n
            where n.machine_id = p.id and (n.active or p.state = 'decommissioned')
            order by n.pxe desc, n.id limit 1) nic on true
        left join lateral (
            select coalesce(n.ipv4, l.address) as ip
            from nics n left join leases l on l.mac = n.mac and l.state = 'bound'
            where n.machine_id = p.id and n.active and (n.ipv4 is not null or l.address is not null)
            order by n.pxe desc, n.id, l.updated_at desc limit 1) lease on true
        order by {order}"#,
        rack = if racks || sort_racks {
            "r.name"
        } else {
            "null::text"
        },
        power = if bmcs || sort_bmcs {
            "b.power_state"
        } else {
            "null::text"
        },
        joins = join(racks || sort_racks, bmcs || sort_bmcs),
        order = q.sort.order(q.desc),
    );
    let rows = bind_filters!(sqlx::query_as::<_, TableRow>(sqlx::AssertSqlSafe(sql)))
        .bind(q.limit)
        .bind(q.offset)
        .fetch_all(conn)
        .await?;
    Ok((rows, total))
}

/// Machines per state (the filters' counts and the discovered inbox's badge).
pub async fn state_counts(conn: &mut PgConnection) -> Result<Vec<(MachineState, i64)>> {
    let rows = sqlx::query!(
        r#"select state as "state: MachineState", count(*) as "n!" from machines group by state order by state"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.state, r.n)).collect())
}

/// How many machines are in `state` (an index scan, for a badge on every page).
pub async fn count_in_state(conn: &mut PgConnection, state: MachineState) -> Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from machines where state = $1"#,
        state.as_str()
    )
    .fetch_one(conn)
    .await
    .map_err(crate::Error::from)
}

/// A rack's occupant, as the elevation draws it.
#[derive(Debug, Clone)]
pub struct Occupant {
    pub id: Uuid,
    pub rack_id: Uuid,
    pub hostname: Option<String>,
    pub state: MachineState,
    pub maintenance: bool,
    pub rack_unit: i32,
    pub size_u: i32,
    pub power_state: Option<String>,
}

/// The machines in the given racks (all racks when `None`), by rack then from the top.
pub async fn occupants(conn: &mut PgConnection, racks: Option<&[Uuid]>) -> Result<Vec<Occupant>> {
    sqlx::query_as!(
        Occupant,
        r#"select m.id, m.rack_id as "rack_id!", m.hostname, m.state as "state: MachineState", m.maintenance,
                  m.rack_unit as "rack_unit!", m.size_u, b.power_state
           from machines m left join bmcs b on b.machine_id = m.id
           where m.rack_id is not null and ($1::uuid[] is null or m.rack_id = any($1))
           order by m.rack_id, m.rack_unit desc"#,
        racks as Option<&[Uuid]>
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}
