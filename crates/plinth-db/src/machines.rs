//! machines: the inventory's core table and its lifecycle column.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use plinth_types::api::Arch;
use plinth_types::{MacAddr, MachineState};

use crate::Result;

#[derive(Debug, Clone)]
pub struct MachineRow {
    pub id: Uuid,
    pub hostname: Option<String>,
    pub rack_id: Option<Uuid>,
    pub rack_name: Option<String>,
    pub rack_unit: Option<i32>,
    pub size_u: i32,
    pub pool: String,
    pub tags: Vec<String>,
    pub arch: Option<Arch>,
    pub facts: serde_json::Value,
    pub state: MachineState,
    pub state_version: i64,
    pub state_changed_at: DateTime<Utc>,
    pub state_reason: Option<String>,
    pub maintenance: bool,
    pub maintenance_reason: Option<String>,
    pub allocation_id: Option<Uuid>,
    pub boot_file: Option<String>,
    pub pxe_arch: Option<i32>,
    pub pxe_uuid: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns a technician sets (on enroll or edit).
pub struct MachineFields<'a> {
    pub hostname: Option<&'a str>,
    pub rack_id: Option<Uuid>,
    pub rack_unit: Option<i32>,
    pub size_u: i32,
    pub pool: &'a str,
    pub tags: &'a [String],
    pub arch: Option<Arch>,
    pub boot_file: Option<&'a str>,
}

pub async fn insert(
    conn: &mut PgConnection,
    f: &MachineFields<'_>,
    state: MachineState,
) -> Result<Uuid> {
    sqlx::query_scalar!(
        "insert into machines (hostname, rack_id, rack_unit, size_u, pool, tags, arch, boot_file, state)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning id",
        f.hostname,
        f.rack_id,
        f.rack_unit,
        f.size_u,
        f.pool,
        f.tags,
        f.arch.map(Arch::as_str),
        f.boot_file,
        state.as_str()
    )
    .fetch_one(conn)
    .await
    .map_err(crate::Error::from)
}

pub async fn update_fields(conn: &mut PgConnection, id: Uuid, f: &MachineFields<'_>) -> Result<()> {
    sqlx::query!(
        "update machines set hostname = $2, rack_id = $3, rack_unit = $4, size_u = $5, pool = $6,
                tags = $7, arch = $8, boot_file = $9, updated_at = now()
         where id = $1",
        id,
        f.hostname,
        f.rack_id,
        f.rack_unit,
        f.size_u,
        f.pool,
        f.tags,
        f.arch.map(Arch::as_str),
        f.boot_file
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<MachineRow>> {
    sqlx::query_as!(
        MachineRow,
        r#"select m.id, m.hostname, m.rack_id, r.name as "rack_name?", m.rack_unit, m.size_u, m.pool,
                  m.tags, m.arch as "arch: Arch", m.facts, m.state as "state: MachineState", m.state_version, m.state_changed_at, m.state_reason,
                  m.maintenance, m.maintenance_reason, m.allocation_id, m.boot_file, m.pxe_arch, m.pxe_uuid,
                  m.created_at, m.updated_at
           from machines m left join racks r on r.id = m.rack_id
           where m.id = $1"#,
        id
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

/// Locks the machine row for the rest of the transaction.
pub async fn get_for_update(conn: &mut PgConnection, id: Uuid) -> Result<Option<MachineRow>> {
    sqlx::query_as!(
        MachineRow,
        r#"select m.id, m.hostname, m.rack_id, r.name as "rack_name?", m.rack_unit, m.size_u, m.pool,
                  m.tags, m.arch as "arch: Arch", m.facts, m.state as "state: MachineState", m.state_version, m.state_changed_at, m.state_reason,
                  m.maintenance, m.maintenance_reason, m.allocation_id, m.boot_file, m.pxe_arch, m.pxe_uuid,
                  m.created_at, m.updated_at
           from machines m left join racks r on r.id = m.rack_id
           where m.id = $1
           for update of m"#,
        id
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

pub async fn get_many(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<MachineRow>> {
    sqlx::query_as!(
        MachineRow,
        r#"select m.id, m.hostname, m.rack_id, r.name as "rack_name?", m.rack_unit, m.size_u, m.pool,
                  m.tags, m.arch as "arch: Arch", m.facts, m.state as "state: MachineState", m.state_version, m.state_changed_at, m.state_reason,
                  m.maintenance, m.maintenance_reason, m.allocation_id, m.boot_file, m.pxe_arch, m.pxe_uuid,
                  m.created_at, m.updated_at
           from machines m left join racks r on r.id = m.rack_id
           where m.id = any($1)
           order by m.id"#,
        ids
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

#[derive(Debug, Default)]
pub struct ListFilter {
    pub state: Option<MachineState>,
    pub rack: Option<String>,
    pub pool: Option<String>,
    pub tag: Option<String>,
    /// Free text: matched against hostname (substring), serial (exact: inspected, or as the BMC
    /// reports it) and MAC (exact, canonical).
    pub q: Option<String>,
    pub q_mac: Option<MacAddr>,
    /// Only machines in allocations made by this token.
    pub owner_token_id: Option<Uuid>,
    /// Only machines whose id sorts after this one (the page cursor).
    pub after: Option<Uuid>,
    /// Only machines of this health (`unknown`: no BMC, or not read yet).
    pub health: Option<String>,
    /// Only machines whose firmware inventory has an item of this kind at this version.
    pub firmware: Option<(String, String)>,
    pub limit: i64,
}

pub async fn list(conn: &mut PgConnection, f: &ListFilter) -> Result<Vec<MachineRow>> {
    let q_like =
        f.q.as_deref()
            .map(|q| format!("%{}%", crate::like_escape(q)));
    sqlx::query_as!(
        MachineRow,
        r#"select m.id, m.hostname, m.rack_id, r.name as "rack_name?", m.rack_unit, m.size_u, m.pool,
                  m.tags, m.arch as "arch: Arch", m.facts, m.state as "state: MachineState", m.state_version, m.state_changed_at, m.state_reason,
                  m.maintenance, m.maintenance_reason, m.allocation_id, m.boot_file, m.pxe_arch, m.pxe_uuid,
                  m.created_at, m.updated_at
           from machines m left join racks r on r.id = m.rack_id
           where ($1::text is null or m.state = $1)
             and ($2::text is null or r.name = $2)
             and ($3::text is null or m.pool = $3)
             and ($4::text is null or m.tags @> array[$4])
             and ($5::text is null
                  or m.hostname ilike $5
                  or m.facts -> 'system' ->> 'serial' = $6
                  or exists (select 1 from bmcs b where b.machine_id = m.id and b.identity ->> 'serial' = $6)
                  or ($7::macaddr is not null and exists (
                        select 1 from nics n where n.machine_id = m.id and n.active and n.mac = $7)))
             and ($8::uuid is null or m.allocation_id in (select a.id from allocations a where a.owner_token_id = $8))
             and ($9::uuid is null or m.id > $9)
             and ($11::text is null
                  or coalesce((select b.health from bmcs b where b.machine_id = m.id), 'unknown') = $11)
             and ($12::text is null or m.id in (
                  select f.machine_id from machine_firmware f
                  where f.items @> jsonb_build_array(jsonb_build_object('kind', $12::text, 'version', $13::text))))
           order by m.id
           limit $10"#,
        f.state.map(MachineState::as_str),
        f.rack,
        f.pool,
        f.tag,
        q_like,
        f.q,
        f.q_mac as Option<MacAddr>,
        f.owner_token_id,
        f.after,
        f.limit,
        f.health,
        f.firmware.as_ref().map(|x| x.0.as_str()),
        f.firmware.as_ref().map(|x| x.1.as_str())
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// What a lifecycle transition writes besides the state itself.
#[derive(Debug, Default)]
pub struct TransitionEffects {
    /// Join this allocation (allocate).
    pub set_allocation: Option<Uuid>,
    /// Leave the allocation (release).
    pub clear_allocation: bool,
    /// Free the rack slot (decommission_complete).
    pub unrack: bool,
}

/// The one lifecycle UPDATE: moves machine `id` to `to` only if it is in one of `from` and,
/// when `expected_version` is given, still at that version; `automated` transitions also
/// leave machines in maintenance alone. Returns the state it left and the new version, or
/// `None` when the machine was not in an allowed state (or the version was stale).
#[allow(clippy::too_many_arguments)]
pub async fn transition(
    conn: &mut PgConnection,
    id: Uuid,
    from: &[MachineState],
    to: MachineState,
    expected_version: Option<i64>,
    reason: Option<&str>,
    automated: bool,
    effects: &TransitionEffects,
) -> Result<Option<(MachineState, i64)>> {
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    let row = sqlx::query!(
        r#"with old as (select id, state from machines where id = $1 for update)
         update machines m set
             state = $4,
             state_version = m.state_version + 1,
             state_changed_at = now(),
             state_reason = $5,
             allocation_id = case when $7 then null else coalesce($6, m.allocation_id) end,
             rack_id = case when $8 then null else m.rack_id end,
             rack_unit = case when $8 then null else m.rack_unit end,
             updated_at = now()
         from old
         where m.id = old.id and m.state = any($2) and ($3::bigint is null or m.state_version = $3)
           and not ($9 and m.maintenance)
         returning old.state as "from_state!: MachineState", m.state_version"#,
        id,
        &from as &[&str],
        expected_version,
        to.as_str(),
        reason,
        effects.set_allocation,
        effects.clear_allocation,
        effects.unrack,
        automated
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.from_state, r.state_version)))
}

/// Current state and version, for explaining a refused transition.
pub async fn state_of(conn: &mut PgConnection, id: Uuid) -> Result<Option<(MachineState, i64)>> {
    let row = sqlx::query!(
        r#"select state as "state: MachineState", state_version from machines where id = $1"#,
        id
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.state, r.state_version)))
}

/// Sets or clears maintenance; bumps state_version so that If-Match sees the change.
pub async fn set_maintenance(
    conn: &mut PgConnection,
    id: Uuid,
    on: bool,
    reason: Option<&str>,
    expected_version: Option<i64>,
) -> Result<Option<i64>> {
    sqlx::query_scalar!(
        "update machines set maintenance = $2, maintenance_reason = case when $2 then $3 else null end,
                state_version = state_version + 1, updated_at = now()
         where id = $1 and ($4::bigint is null or state_version = $4)
         returning state_version",
        id,
        on,
        reason,
        expected_version
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

pub async fn set_facts(
    conn: &mut PgConnection,
    id: Uuid,
    facts: &serde_json::Value,
    arch: &str,
) -> Result<()> {
    sqlx::query!(
        "update machines set facts = $2, arch = $3, updated_at = now() where id = $1",
        id,
        facts,
        arch
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Constraints an allocation request puts on machines.
#[derive(Debug, Default)]
pub struct AllocationFilter {
    pub arch: Option<String>,
    pub min_cpus: Option<i64>,
    pub min_memory_mib: Option<i64>,
    pub min_disk_bytes: Option<i64>,
    pub tags: Vec<String>,
    pub pool: Option<String>,
    pub rack: Option<String>,
    /// The healths a machine may have (`unknown`: no BMC, or not read yet).
    pub healths: Vec<String>,
    pub count: i64,
}

/// Picks and locks up to `count` ready, non-maintenance machines that match (and whose pool's
/// BIOS profile, if it has one, was read back in effect). Rows another
/// transaction holds are skipped, so concurrent allocations never wait on each other and
/// never pick the same machine.
pub async fn pick_for_allocation(
    conn: &mut PgConnection,
    f: &AllocationFilter,
) -> Result<Vec<(Uuid, i64)>> {
    let rows = sqlx::query!(
        r#"select m.id, m.state_version from machines m
           where m.state = 'ready' and not m.maintenance
             and ($1::text is null or m.arch = $1)
             and ($2::bigint is null or (m.facts -> 'cpu' ->> 'threads')::bigint >= $2)
             and ($3::bigint is null or (m.facts ->> 'memory_mib')::bigint >= $3)
             and ($4::bigint is null or exists (
                   select 1 from jsonb_array_elements(m.facts -> 'disks') d
                   where (d ->> 'size_bytes')::bigint >= $4))
             and m.tags @> $5
             and ($6::text is null or m.pool = $6)
             and ($7::text is null or m.rack_id = (select id from racks where name = $7))
             and coalesce((select b.health from bmcs b where b.machine_id = m.id), 'unknown') = any($9)
             -- a pool's BIOS profile holds its machines back until plinth read it back in
             -- effect (a profile still being applied, or one that did not stick, leaves the
             -- machine ready but not allocatable)
             and not exists (
                   select 1 from pools p join bios_profiles bp on bp.name = p.bios_profile
                   where p.name = m.pool
                     and not exists (select 1 from machine_bios mb
                                     where mb.machine_id = m.id
                                       and mb.attributes @> bp.attributes))
           -- the longest-ready first: a machine released (and cleaned) a moment ago comes
           -- last, so a client cannot steer an allocation onto the machine its last tenant
           -- just left
           order by m.state_changed_at, m.id
           limit $8
           for update of m skip locked"#,
        f.arch,
        f.min_cpus,
        f.min_memory_mib,
        f.min_disk_bytes,
        &f.tags,
        f.pool,
        f.rack,
        f.count,
        &f.healths
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.state_version)).collect())
}

/// Test support (feature `testing`): puts a machine straight into `state` (with an allocation
/// when the state needs one), bypassing the lifecycle. Never in the product.
#[cfg(feature = "testing")]
pub async fn force_state(
    conn: &mut PgConnection,
    id: Uuid,
    state: MachineState,
    allocation_id: Option<Uuid>,
) -> Result<()> {
    sqlx::query!(
        "update machines set state = $2, allocation_id = $3, state_version = state_version + 1,
                rack_id = case when $2 = 'decommissioned' then null else rack_id end,
                rack_unit = case when $2 = 'decommissioned' then null else rack_unit end
         where id = $1",
        id,
        state.as_str(),
        allocation_id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Records what machines' PXE firmware said about them (machine id, option 93 architecture,
/// option 97 UUID), writing only what changed.
pub async fn note_pxe_clients(
    conn: &mut PgConnection,
    clients: &[(Uuid, Option<i32>, Option<Uuid>)],
) -> Result<()> {
    if clients.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = clients.iter().map(|c| c.0).collect();
    let archs: Vec<Option<i32>> = clients.iter().map(|c| c.1).collect();
    let uuids: Vec<Option<Uuid>> = clients.iter().map(|c| c.2).collect();
    sqlx::query!(
        "update machines m set pxe_arch = coalesce(t.arch, m.pxe_arch), pxe_uuid = coalesce(t.uuid, m.pxe_uuid)
         from (select distinct on (id) id, arch, uuid from unnest($1::uuid[], $2::int[], $3::uuid[]) as u(id, arch, uuid)) t
         where m.id = t.id
           and ((t.arch is not null and m.pxe_arch is distinct from t.arch) or (t.uuid is not null and m.pxe_uuid is distinct from t.uuid))",
        &ids,
        &archs as &[Option<i32>],
        &uuids as &[Option<Uuid>]
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Creates a `discovered` machine for an unknown MAC. Returns `None` when the MAC is already in
/// the inventory (another packet or instance got there first): one record per MAC.
pub async fn insert_discovered(
    conn: &mut PgConnection,
    mac: MacAddr,
    arch: Option<&str>,
    pxe_arch: Option<i32>,
    pxe_uuid: Option<Uuid>,
    subnet_id: Option<Uuid>,
) -> Result<Option<Uuid>> {
    let id = sqlx::query_scalar!(
        "insert into machines (state, arch, pxe_arch, pxe_uuid, discovered_subnet_id)
         select 'discovered', $2, $3, $4, $5
         where not exists (select 1 from nics where mac = $1 and active)
         returning id",
        mac as MacAddr,
        arch,
        pxe_arch,
        pxe_uuid,
        subnet_id
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = id {
        sqlx::query!(
            "insert into nics (machine_id, mac, pxe) values ($1, $2, true)",
            id,
            mac as MacAddr
        )
        .execute(conn)
        .await?;
    }
    Ok(id)
}

/// The machine behind a MAC: the one with the active NIC, or else the last decommissioned one
/// (its MAC must not be booted nor discovered again). (id, state, boot_file override).
pub async fn boot_info_by_mac(
    conn: &mut PgConnection,
    mac: &str,
) -> Result<Option<(Uuid, String, Option<String>)>> {
    let row = sqlx::query!(
        "select m.id, m.state, m.boot_file from nics n join machines m on m.id = n.machine_id
         where n.mac = $1::text::macaddr and (n.active or m.state = 'decommissioned')
         order by n.active desc, n.id desc limit 1",
        mac
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.id, r.state, r.boot_file)))
}

/// Machines in `state` for longer than `secs` (not in maintenance): (id, state_version).
pub async fn stuck(
    conn: &mut PgConnection,
    state: &str,
    secs: f64,
    limit: i64,
) -> Result<Vec<(Uuid, i64)>> {
    let rows = sqlx::query!(
        "select id, state_version from machines
         where state = $1 and not maintenance
           and state_changed_at < now() - make_interval(secs => $2)
         order by state_changed_at limit $3",
        state,
        secs,
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.state_version)).collect())
}

/// Machines deploying with no sign of life (a state change or a progress report, which
/// touches `updated_at`) for `secs`.
pub async fn stuck_deploying(
    conn: &mut PgConnection,
    secs: f64,
    limit: i64,
) -> Result<Vec<(Uuid, i64)>> {
    let rows = sqlx::query!(
        "select id, state_version from machines
         where state = 'deploying' and not maintenance
           and greatest(state_changed_at, updated_at) < now() - make_interval(secs => $1)
         order by updated_at limit $2",
        secs,
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.state_version)).collect())
}

/// Sets a machine's state reason while it is in `state` (progress of a long step); no version
/// change: the state is the same. Returns whether it was in that state.
pub async fn set_state_reason(
    conn: &mut PgConnection,
    id: Uuid,
    state: &str,
    reason: &str,
) -> Result<bool> {
    let n = sqlx::query!(
        "update machines set state_reason = $3, updated_at = now() where id = $1 and state = $2",
        id,
        state,
        reason
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}
