//! Serial consoles: a Redfish BMC's IPMI console endpoint (`bmc_consoles`), which instance
//! holds a machine's SOL session (`console_leases`), and the bounded recording of what the
//! console printed (`console_chunks`).

use sqlx::PgConnection;
use uuid::Uuid;

use plinth_types::api::BmcProtocol;

use crate::Result;

/// A Redfish BMC's IPMI console endpoint; the credentials are the BMC's unless given.
#[derive(Debug, Clone)]
pub struct EndpointRow {
    pub address: String,
    pub username: Option<String>,
}

/// Everything needed to open a machine's console: the BMC and its console endpoint, with the
/// encrypted passwords.
#[derive(Clone)]
pub struct ConsoleTarget {
    pub protocol: BmcProtocol,
    pub address: String,
    pub username: String,
    pub password_nonce: Vec<u8>,
    pub password_ciphertext: Vec<u8>,
    pub console_address: Option<String>,
    pub console_username: Option<String>,
    pub console_password_nonce: Option<Vec<u8>>,
    pub console_password_ciphertext: Option<Vec<u8>>,
}

pub struct NewEndpoint<'a> {
    pub address: &'a str,
    pub username: Option<&'a str>,
    /// (nonce, ciphertext) of the endpoint's own password.
    pub password: Option<(&'a [u8], &'a [u8])>,
}

/// Sets (or with `None` removes) the console endpoint of the machine's BMC.
pub async fn set_endpoint(
    conn: &mut PgConnection,
    machine_id: Uuid,
    e: Option<&NewEndpoint<'_>>,
) -> Result<()> {
    match e {
        None => {
            sqlx::query!("delete from bmc_consoles where machine_id = $1", machine_id)
                .execute(conn)
                .await?;
        }
        Some(e) => {
            let (nonce, ct) = e.password.unzip();
            sqlx::query!(
                r#"insert into bmc_consoles (machine_id, address, username, password_nonce, password_ciphertext)
                   values ($1, $2, $3, $4, $5)
                   on conflict (machine_id) do update set address = excluded.address,
                       username = excluded.username, password_nonce = excluded.password_nonce,
                       password_ciphertext = excluded.password_ciphertext, updated_at = now()"#,
                machine_id,
                e.address,
                e.username,
                nonce,
                ct
            )
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}

/// The console endpoints of these machines' BMCs (for showing them).
pub async fn endpoints(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<(Uuid, EndpointRow)>> {
    let rows = sqlx::query!(
        "select machine_id, address, username from bmc_consoles where machine_id = any($1)",
        ids
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.machine_id,
                EndpointRow {
                    address: r.address,
                    username: r.username,
                },
            )
        })
        .collect())
}

/// The machine's BMC with its console endpoint and encrypted passwords; `None` without a BMC.
pub async fn target(conn: &mut PgConnection, machine_id: Uuid) -> Result<Option<ConsoleTarget>> {
    let row = sqlx::query_as!(
        ConsoleTarget,
        r#"select b.protocol as "protocol: BmcProtocol", b.address, b.username, b.password_nonce,
                  b.password_ciphertext, c.address as "console_address?",
                  c.username as "console_username?", c.password_nonce as "console_password_nonce?",
                  c.password_ciphertext as "console_password_ciphertext?"
           from bmcs b left join bmc_consoles c on c.machine_id = b.machine_id
           where b.machine_id = $1"#,
        machine_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(row)
}

/// Takes or renews the machine's console lease for `holder` for `secs` seconds: true when
/// `holder` holds it now (it was free, expired, or already its own).
pub async fn take_lease(
    conn: &mut PgConnection,
    machine_id: Uuid,
    holder: Uuid,
    secs: f64,
) -> Result<bool> {
    let got = sqlx::query_scalar!(
        r#"insert into console_leases (machine_id, holder, expires_at)
           values ($1, $2, now() + make_interval(secs => $3::float8))
           on conflict (machine_id) do update set holder = excluded.holder,
               expires_at = excluded.expires_at,
               taken_at = case when console_leases.holder = excluded.holder
                               then console_leases.taken_at else now() end
           where console_leases.holder = excluded.holder or console_leases.expires_at < now()
           returning holder"#,
        machine_id,
        holder,
        secs
    )
    .fetch_optional(conn)
    .await?;
    Ok(got == Some(holder))
}

/// Gives the lease up (when `holder` holds it).
pub async fn release_lease(conn: &mut PgConnection, machine_id: Uuid, holder: Uuid) -> Result<()> {
    sqlx::query!(
        "delete from console_leases where machine_id = $1 and holder = $2",
        machine_id,
        holder
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether another instance than `me` holds the machine's console now.
pub async fn held_elsewhere(conn: &mut PgConnection, machine_id: Uuid, me: Uuid) -> Result<bool> {
    let n = sqlx::query_scalar!(
        r#"select count(*) as "n!" from console_leases
           where machine_id = $1 and holder <> $2 and expires_at >= now()"#,
        machine_id,
        me
    )
    .fetch_one(conn)
    .await?;
    Ok(n > 0)
}

/// Appends `data` to the machine's recording and drops the oldest chunks that take it beyond
/// `max_bytes` (of `data` itself only the last `max_bytes` are kept; at most 1 MiB a call).
pub async fn append(
    conn: &mut PgConnection,
    machine_id: Uuid,
    data: &[u8],
    max_bytes: i64,
) -> Result<()> {
    let keep = usize::try_from(max_bytes).unwrap_or(0).min(1 << 20);
    let data = &data[data.len().saturating_sub(keep)..];
    if data.is_empty() {
        return Ok(());
    }
    // One transaction: a reader never sees the new chunk before the oldest are trimmed.
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query!(
        "insert into console_chunks (machine_id, data) values ($1, $2)",
        machine_id,
        data
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        r#"delete from console_chunks where machine_id = $1 and seq <= (
             select max(seq) from (
               select seq, sum(length(data)) over (order by seq desc) as kept
               from console_chunks where machine_id = $1
             ) k where kept > $2)"#,
        machine_id,
        max_bytes
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The recording's chunks after `after` (a `seq`; 0 for all), oldest first: (seq, bytes).
pub async fn chunks_after(
    conn: &mut PgConnection,
    machine_id: Uuid,
    after: i64,
) -> Result<Vec<(i64, Vec<u8>)>> {
    let rows = sqlx::query!(
        "select seq, data from console_chunks where machine_id = $1 and seq > $2 order by seq",
        machine_id,
        after
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.seq, r.data)).collect())
}

/// The newest chunks of the recording that hold its last `bytes` bytes (the first may hold
/// more), oldest first.
pub async fn tail(conn: &mut PgConnection, machine_id: Uuid, bytes: i64) -> Result<Vec<u8>> {
    let rows = sqlx::query_scalar!(
        r#"select data as "data!" from (
             select seq, data, sum(length(data)) over (order by seq desc) as upto
             from console_chunks where machine_id = $1
           ) t where upto - length(data) < $2 order by seq"#,
        machine_id,
        bytes
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.concat())
}

/// The size of the machine's recording in bytes.
pub async fn size(conn: &mut PgConnection, machine_id: Uuid) -> Result<i64> {
    let n = sqlx::query_scalar!(
        r#"select coalesce(sum(length(data)), 0)::int8 as "n!" from console_chunks where machine_id = $1"#,
        machine_id
    )
    .fetch_one(conn)
    .await?;
    Ok(n)
}

/// Deletes the machine's recording.
pub async fn clear(conn: &mut PgConnection, machine_id: Uuid) -> Result<u64> {
    let r = sqlx::query!(
        "delete from console_chunks where machine_id = $1",
        machine_id
    )
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// Machines in one of `states` whose console plinth can open (an IPMI BMC, or a Redfish BMC
/// with a console endpoint).
pub async fn recordable(conn: &mut PgConnection, states: &[&str]) -> Result<Vec<Uuid>> {
    let states: Vec<String> = states.iter().map(|s| (*s).to_owned()).collect();
    let ids = sqlx::query_scalar!(
        r#"select m.id from machines m join bmcs b on b.machine_id = m.id
           where m.state = any($1)
             and (b.protocol = 'ipmi' or exists (select 1 from bmc_consoles c where c.machine_id = m.id))"#,
        &states
    )
    .fetch_all(conn)
    .await?;
    Ok(ids)
}
