//! bmc_scans and bmc_scan_results: BMC discovery (issue 21, part 4). A scan is queued by the
//! API and claimed by one instance's scanner (`FOR UPDATE SKIP LOCKED`, with a lease so that a
//! scan whose instance died is taken again).

use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;

#[derive(Debug, Clone)]
pub struct ScanRow {
    pub id: Uuid,
    pub cidr: String,
    pub redfish_ports: Vec<i32>,
    pub ipmi_ports: Vec<i32>,
    pub rate: i32,
    pub addresses: i32,
    pub state: String,
    pub requested_by: String,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone)]
pub struct ResultRow {
    pub address: String,
    pub protocol: String,
    pub vendor: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<Uuid>,
    pub macs: Vec<String>,
    pub credential_username: Option<String>,
    pub machine_id: Option<Uuid>,
}

pub struct NewScan<'a> {
    pub cidr: &'a str,
    pub redfish_ports: &'a [i32],
    pub ipmi_ports: &'a [i32],
    pub rate: i32,
    pub addresses: i32,
    pub requested_by: &'a str,
}

pub async fn insert(conn: &mut PgConnection, s: &NewScan<'_>) -> Result<Uuid> {
    let id = sqlx::query_scalar!(
        r#"insert into bmc_scans (cidr, redfish_ports, ipmi_ports, rate, addresses, requested_by)
           values ($1, $2, $3, $4, $5, $6) returning id"#,
        s.cidr,
        s.redfish_ports,
        s.ipmi_ports,
        s.rate,
        s.addresses,
        s.requested_by
    )
    .fetch_one(conn)
    .await?;
    Ok(id)
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<ScanRow>> {
    sqlx::query_as!(
        ScanRow,
        r#"select id, cidr, redfish_ports, ipmi_ports, rate, addresses, state, requested_by, error,
                  created_at, started_at, finished_at
           from bmc_scans where id = $1"#,
        id
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

/// The latest scans, newest first.
pub async fn list(conn: &mut PgConnection, limit: i64) -> Result<Vec<ScanRow>> {
    sqlx::query_as!(
        ScanRow,
        r#"select id, cidr, redfish_ports, ipmi_ports, rate, addresses, state, requested_by, error,
                  created_at, started_at, finished_at
           from bmc_scans order by created_at desc limit $1"#,
        limit
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// Claims the oldest queued scan (or a running one whose lease passed) for `worker`.
pub async fn claim(
    conn: &mut PgConnection,
    worker: &str,
    lease_secs: f64,
) -> Result<Option<ScanRow>> {
    sqlx::query_as!(
        ScanRow,
        r#"update bmc_scans s set state = 'running', worker = $1,
               lease_until = now() + make_interval(secs => $2::float8),
               started_at = coalesce(s.started_at, now())
           where s.id = (select id from bmc_scans
                         where state = 'queued' or (state = 'running' and lease_until < now())
                         order by created_at limit 1 for update skip locked)
           returning s.id, s.cidr, s.redfish_ports, s.ipmi_ports, s.rate, s.addresses, s.state,
                     s.requested_by, s.error, s.created_at, s.started_at, s.finished_at"#,
        worker,
        lease_secs
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

/// Renews the lease of a scan this worker runs.
pub async fn renew(conn: &mut PgConnection, id: Uuid, worker: &str, lease_secs: f64) -> Result<()> {
    sqlx::query!(
        r#"update bmc_scans set lease_until = now() + make_interval(secs => $3::float8)
           where id = $1 and worker = $2 and state = 'running'"#,
        id,
        worker,
        lease_secs
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn add_result(conn: &mut PgConnection, scan_id: Uuid, r: &ResultRow) -> Result<()> {
    sqlx::query!(
        r#"insert into bmc_scan_results (scan_id, address, protocol, vendor, serial, uuid, macs,
                                         credential_username, machine_id)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           on conflict (scan_id, address, protocol) do nothing"#,
        scan_id,
        r.address,
        r.protocol,
        r.vendor,
        r.serial,
        r.uuid,
        &r.macs,
        r.credential_username,
        r.machine_id
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn finish(
    conn: &mut PgConnection,
    id: Uuid,
    worker: &str,
    error: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        r#"update bmc_scans set state = case when $3::text is null then 'done' else 'failed' end,
               error = $3, finished_at = now(), lease_until = null
           where id = $1 and worker = $2 and state = 'running'"#,
        id,
        worker,
        error
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn results(conn: &mut PgConnection, scan_id: Uuid) -> Result<Vec<ResultRow>> {
    sqlx::query_as!(
        ResultRow,
        r#"select address, protocol, vendor, serial, uuid, macs, credential_username, machine_id
           from bmc_scan_results where scan_id = $1 order by address, protocol"#,
        scan_id
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// The `discovered` machine with an active NIC of one of these MACs (`aa:bb:..` text), locked
/// for the caller's transaction.
pub async fn discovered_by_macs(conn: &mut PgConnection, macs: &[String]) -> Result<Option<Uuid>> {
    let id = sqlx::query_scalar!(
        r#"select m.id from machines m join nics n on n.machine_id = m.id
           where n.active and m.state = 'discovered'
             and n.mac::text = any($1::text[])
             and not exists (select 1 from bmcs b where b.machine_id = m.id)
           order by m.id limit 1
           for update of m"#,
        macs
    )
    .fetch_optional(conn)
    .await?;
    Ok(id)
}
