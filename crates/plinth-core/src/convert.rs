//! Database rows to API types.

use std::collections::HashMap;

use plinth_db::PgConnection;
use plinth_types::Error;
use plinth_types::api::{BmcInfo, Machine, Nic};
use uuid::Uuid;

use crate::{DbResult, Result};

fn parse<T: std::str::FromStr<Err = String>>(what: &str, s: &str) -> Result<T> {
    s.parse().map_err(|e: String| {
        tracing::error!(what, value = s, error = %e, "unparseable value in the database");
        Error::internal()
    })
}

/// Loads machines with their NICs and BMCs in three queries, keeping `rows`' order.
pub(crate) async fn machines(
    conn: &mut PgConnection,
    rows: Vec<plinth_db::machines::MachineRow>,
) -> Result<Vec<Machine>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut nics: HashMap<Uuid, Vec<Nic>> = HashMap::new();
    for n in plinth_db::nics::for_machines(conn, &ids).await.db()? {
        nics.entry(n.machine_id).or_default().push(Nic {
            mac: n.mac,
            ipv4: n.ipv4,
            pxe: n.pxe,
        });
    }
    let mut bmcs: HashMap<Uuid, BmcInfo> = HashMap::new();
    for b in plinth_db::bmcs::for_machines(conn, &ids).await.db()? {
        bmcs.insert(
            b.machine_id,
            BmcInfo {
                protocol: b.protocol,
                address: b.address,
                username: b.username,
                verify_tls: b.verify_tls,
                plain_http: b.plain_http,
                power_state: b.power_state,
                power_checked_at: b.power_checked_at,
                reachable: b.reachable,
                last_error: b.last_error,
                identity: b.identity,
                health: machine_health(b.health, b.health_components, b.health_checked_at),
            },
        );
    }
    let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
    let mut methods: std::collections::HashMap<_, _> = plinth_db::vmedia::boot_methods(conn, &ids)
        .await
        .db()?
        .into_iter()
        .map(|(id, own, rack)| (id, (own, rack)))
        .collect();
    rows.into_iter()
        .map(|r| {
            let (own, rack) = methods.remove(&r.id).unwrap_or_default();
            Ok(Machine {
                boot_method: own.or(rack).unwrap_or_default(),
                boot_method_setting: own,
                nics: nics.remove(&r.id).unwrap_or_default(),
                bmc: bmcs.remove(&r.id),
                id: r.id,
                hostname: r.hostname,
                rack: r.rack_name,
                rack_unit: r.rack_unit,
                size_u: r.size_u,
                pool: r.pool,
                tags: r.tags,
                arch: r.arch,
                facts: r.facts,
                state: r.state,
                state_version: r.state_version,
                state_changed_at: r.state_changed_at,
                state_reason: r.state_reason,
                maintenance: r.maintenance,
                maintenance_reason: r.maintenance_reason,
                allocation_id: r.allocation_id,
                boot_file: r.boot_file,
                pxe_arch: r.pxe_arch,
                pxe_uuid: r.pxe_uuid,
                created_at: r.created_at,
                updated_at: r.updated_at,
            })
        })
        .collect()
}

pub(crate) async fn machine(
    conn: &mut PgConnection,
    row: plinth_db::machines::MachineRow,
) -> Result<Machine> {
    machines(conn, vec![row])
        .await?
        .pop()
        .ok_or_else(crate::missing("machine"))
}

pub(crate) fn event(e: plinth_db::events::EventRow) -> Result<plinth_types::api::Event> {
    Ok(plinth_types::api::Event {
        id: e.id,
        at: e.at,
        actor: e.actor,
        machine_id: e.machine_id,
        kind: e.kind,
        from_state: e
            .from_state
            .as_deref()
            .map(|s| parse("state", s))
            .transpose()?,
        to_state: e
            .to_state
            .as_deref()
            .map(|s| parse("state", s))
            .transpose()?,
        details: e.details,
    })
}

/// The stored health, as the API shows it (`None` until read).
fn machine_health(
    status: Option<String>,
    components: Option<serde_json::Value>,
    checked_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<plinth_types::health::MachineHealth> {
    Some(plinth_types::health::MachineHealth {
        status: plinth_types::health::HealthStatus::parse(status.as_deref()?)?,
        components: components
            .and_then(|c| serde_json::from_value(c).ok())
            .unwrap_or_default(),
        checked_at: checked_at?,
    })
}
