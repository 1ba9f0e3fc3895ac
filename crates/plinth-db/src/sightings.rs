//! What plinth last saw of a machine (issue 22): the `file_fetches` rows the file servers'
//! in-memory log is flushed into, and the reads that put a machine's last lease, script
//! request, file and power reading side by side for a timeout's reason.

use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;

/// One client's last fetch over one protocol, as the file servers saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub address: Ipv4Addr,
    /// `tftp` or `http`.
    pub protocol: &'static str,
    pub path: String,
    pub bytes_sent: i64,
    pub size: i64,
    pub complete: bool,
    pub at: DateTime<Utc>,
}

/// Writes `fetches` (one per address and protocol) in one statement; a row already holding a
/// newer fetch (written by another instance) is kept. Addresses nobody holds (no offered or
/// bound lease, no active NIC's static address) are not written, so the table stays as small
/// as the address space plinth hands out whatever a client sends. Returns the rows written.
pub async fn upsert_fetches(conn: &mut PgConnection, fetches: &[Fetch]) -> Result<u64> {
    if fetches.is_empty() {
        return Ok(0);
    }
    let mut sorted: Vec<&Fetch> = fetches.iter().collect();
    // One lock order for every instance's flushes.
    sorted.sort_by_key(|f| (f.address, f.protocol));
    let addresses: Vec<IpAddr> = sorted.iter().map(|f| IpAddr::V4(f.address)).collect();
    let protocols: Vec<&str> = sorted.iter().map(|f| f.protocol).collect();
    let paths: Vec<&str> = sorted.iter().map(|f| f.path.as_str()).collect();
    let sent: Vec<i64> = sorted.iter().map(|f| f.bytes_sent).collect();
    let sizes: Vec<i64> = sorted.iter().map(|f| f.size).collect();
    let complete: Vec<bool> = sorted.iter().map(|f| f.complete).collect();
    let at: Vec<DateTime<Utc>> = sorted.iter().map(|f| f.at).collect();
    let n = sqlx::query!(
        "insert into file_fetches as f (address, protocol, mac, path, bytes_sent, size, complete, at)
         select u.address, u.protocol, h.mac, u.path, u.sent, u.size, u.complete, u.at
         from unnest($1::inet[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::bool[],
                     $7::timestamptz[]) as u(address, protocol, path, sent, size, complete, at)
         cross join lateral (
             select l.mac from leases l
             where l.address = u.address and l.state in ('offered', 'bound') and l.mac is not null
             union all
             select n.mac from nics n where n.active and n.ipv4 = u.address
             limit 1
         ) h
         on conflict (address, protocol) do update
             set mac = excluded.mac, path = excluded.path, bytes_sent = excluded.bytes_sent,
                 size = excluded.size, complete = excluded.complete, at = excluded.at
             where excluded.at >= f.at",
        &addresses as &[IpAddr],
        &protocols as &[&str],
        &paths as &[&str],
        &sent,
        &sizes,
        &complete,
        &at
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n)
}

/// A machine's last lease on any of its active NICs: offered or bound now, or freed (expired or
/// released) since it was last bound.
#[derive(Debug, Clone)]
pub struct LeaseSeen {
    pub address: IpAddr,
    /// offered, bound, or free.
    pub state: String,
    /// When it was last changed: offered, bound, renewed, or freed.
    pub at: DateTime<Utc>,
    /// When it was last bound or renewed (none: never bound).
    pub bound_at: Option<DateTime<Utc>>,
}

/// A machine's last script request (its last `boot` event).
#[derive(Debug, Clone)]
pub struct ScriptSeen {
    pub at: DateTime<Utc>,
    pub script: Option<String>,
}

/// A fetch of a machine's, found by the MAC that held the address.
#[derive(Debug, Clone)]
pub struct FetchSeen {
    pub address: IpAddr,
    pub protocol: String,
    pub path: String,
    pub bytes_sent: i64,
    pub size: i64,
    pub complete: bool,
    pub at: DateTime<Utc>,
}

/// Everything plinth last saw of one machine, read at `now` (the database's clock).
#[derive(Debug, Clone)]
pub struct LastSeen {
    pub now: DateTime<Utc>,
    pub state: String,
    pub state_changed_at: DateTime<Utc>,
    pub lease: Option<LeaseSeen>,
    pub script: Option<ScriptSeen>,
    /// The last fetch per protocol, newest first.
    pub fetches: Vec<FetchSeen>,
    /// The power state last read from the BMC, and when.
    pub power: Option<(String, DateTime<Utc>)>,
    /// Whether the machine has a BMC at all.
    pub has_bmc: bool,
}

/// What plinth last saw of machine `id` (None: no such machine).
pub async fn last_seen(conn: &mut PgConnection, id: Uuid) -> Result<Option<LastSeen>> {
    let Some(m) = sqlx::query!(
        r#"select state, state_changed_at, now() as "now!" from machines where id = $1"#,
        id
    )
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let lease = sqlx::query!(
        r#"select l.address as "address: IpAddr", l.state, l.updated_at, l.bound_at from leases l
           where l.mac in (select n.mac from nics n where n.machine_id = $1 and n.active)
             and (l.state in ('offered', 'bound') or (l.state = 'free' and l.bound_at is not null))
           order by l.updated_at desc limit 1"#,
        id
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| LeaseSeen {
        address: r.address,
        state: r.state,
        at: r.updated_at,
        bound_at: r.bound_at,
    });
    let script = sqlx::query!(
        "select at, details ->> 'script' as script from events
         where machine_id = $1 and kind = 'boot' order by id desc limit 1",
        id
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| ScriptSeen {
        at: r.at,
        script: r.script,
    });
    let mut fetches: Vec<FetchSeen> = sqlx::query!(
        r#"select distinct on (f.protocol) f.address as "address: IpAddr", f.protocol, f.path,
                  f.bytes_sent, f.size, f.complete, f.at
           from file_fetches f
           where f.mac in (select n.mac from nics n where n.machine_id = $1 and n.active)
           order by f.protocol, f.at desc"#,
        id
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| FetchSeen {
        address: r.address,
        protocol: r.protocol,
        path: r.path,
        bytes_sent: r.bytes_sent,
        size: r.size,
        complete: r.complete,
        at: r.at,
    })
    .collect();
    fetches.sort_by_key(|f| std::cmp::Reverse(f.at));
    let bmc = sqlx::query!(
        "select power_state, power_checked_at from bmcs where machine_id = $1",
        id
    )
    .fetch_optional(&mut *conn)
    .await?;
    let has_bmc = bmc.is_some();
    let power = bmc.and_then(|r| r.power_state.zip(r.power_checked_at));
    Ok(Some(LastSeen {
        now: m.now,
        state: m.state,
        state_changed_at: m.state_changed_at,
        lease,
        script,
        fetches,
        power,
        has_bmc,
    }))
}

/// A machine in a ramdisk state whose BMC reads `off` when plinth did not turn it off.
#[derive(Debug, Clone)]
pub struct PoweredOff {
    pub id: Uuid,
    pub state: String,
    pub state_version: i64,
    /// The power sync's reading that found it off.
    pub off_at: DateTime<Utc>,
    /// When plinth's last power-on (or cycle, or reset) of this state finished.
    pub powered_on_at: DateTime<Utc>,
}

/// Machines in one of `states` (not in maintenance) whose BMC reads `off` on two readings in a
/// row: the first (the `power_changed` event to `off`) recorded after a power-on, cycle or
/// reset of plinth's that succeeded since the state was entered, the last recorded more than
/// `grace_secs` after the machine's last job finished; with no job queued or running. A
/// reading recorded that late began after the job (a poll's call is bounded by the call
/// timeout): it cannot be a reading from before the power-on, and it still says off. (The
/// first reading may come within the grace: a ramdisk that fails fast powers off within
/// seconds, and only the last reading has to be late.)
pub async fn powered_off(
    conn: &mut PgConnection,
    states: &[&str],
    grace_secs: f64,
    limit: i64,
) -> Result<Vec<PoweredOff>> {
    let rows = sqlx::query!(
        r#"select m.id, m.state, m.state_version, off.at as "off_at!", pon.at as "powered_on_at!"
           from machines m
           join bmcs b on b.machine_id = m.id
           cross join lateral (
               select max(j.finished_at) as at from jobs j
               where j.machine_id = m.id and j.kind = 'power' and j.state = 'succeeded'
                 and j.params ->> 'action' in ('on', 'cycle', 'reset')
                 and j.finished_at >= m.state_changed_at
           ) pon
           cross join lateral (
               select max(j.finished_at) as at from jobs j where j.machine_id = m.id
           ) last
           cross join lateral (
               select max(e.at) as at from events e
               where e.machine_id = m.id and e.kind = 'power_changed' and e.details ->> 'to' = 'off'
           ) off
           where m.state = any($1) and not m.maintenance
             and b.power_state = 'off'
             and pon.at is not null
             and off.at > pon.at
             and b.power_checked_at > last.at + make_interval(secs => $2)
             and b.power_checked_at > off.at
             and not exists (select 1 from jobs j where j.machine_id = m.id
                             and j.state in ('queued', 'running'))
           order by m.state_changed_at limit $3"#,
        states as &[&str],
        grace_secs,
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| PoweredOff {
            id: r.id,
            state: r.state,
            state_version: r.state_version,
            off_at: r.off_at,
            powered_on_at: r.powered_on_at,
        })
        .collect())
}
