//! The boot chain's tables: agent_tokens, boot_windows (the boot-loop guard's counters), and
//! the one-round-trip `boot_request_batch` function behind every iPXE script request (which
//! binds each agent token to the address that may use it: sql/boot.sql).

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use plinth_types::{AgentMode, MacAddr, MachineState};

use crate::Result;

/// What each lifecycle state's script does, as the database function needs it: parallel
/// arrays indexed by state (mode: `None` when the state boots no ramdisk, so no token).
#[derive(Debug, Clone, Default)]
pub struct StateTable {
    pub states: Vec<String>,
    pub modes: Vec<Option<String>>,
    pub messages: Vec<String>,
    pub scripts: Vec<String>,
}

/// The machine behind the MAC and what was recorded for it; `None` when no machine has it.
#[derive(Debug, Clone)]
pub struct BootRow {
    pub machine_id: Uuid,
    pub state: MachineState,
    pub hostname: Option<String>,
    pub pxe_arch: Option<i32>,
    /// Script requests in the machine's current boot-loop window, this batch's included.
    pub requests: i32,
    /// This batch took the machine past the boot-loop limit (a `boot_loop` event was added).
    pub loop_flagged: bool,
    pub token_stored: bool,
    /// The state boots the ramdisk, but the request came from an address its token may not be
    /// bound to (a `boot_spoof_suspected` event was added).
    pub token_refused: bool,
}

#[derive(Debug, Clone)]
pub struct AgentTokenRow {
    pub machine_id: Uuid,
    pub mode: AgentMode,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
    /// The address the token may be used from; `None`: minted for a request whose address
    /// was not known.
    pub bound_ip: Option<IpAddr>,
}

/// Machine `machine_id`'s agent token with this secret hash, if any: its token of some mode, or
/// the one that token replaced (expired, used and revoked ones included: the caller tells the
/// agent why it is refused). A machine has one row per mode (sql/boot.sql), found by the key:
/// a token is never looked up by its hash alone, which no index covers.
pub async fn agent_token(
    conn: &mut PgConnection,
    machine_id: Uuid,
    secret_sha256: &[u8],
) -> Result<Option<AgentTokenRow>> {
    sqlx::query_as!(
        AgentTokenRow,
        r#"select machine_id as "machine_id!", mode as "mode!: AgentMode", expires_at as "expires_at!",
                  used_at, revoked_at, revoked_reason, bound_ip as "bound_ip: IpAddr"
           from (
               select machine_id, mode, expires_at, used_at, revoked_at, revoked_reason, bound_ip
               from agent_tokens where machine_id = $1 and secret_sha256 = $2
               union all
               select machine_id, mode, prev_expires_at, prev_used_at, prev_revoked_at,
                      prev_revoked_reason, null
               from agent_tokens where machine_id = $1 and prev_sha256 = $2
           ) t
           limit 1"#,
        machine_id,
        secret_sha256
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

/// Whether `ip` is an address plinth leases to a NIC of the machine now (a bound, unexpired
/// lease): a ramdisk may talk to plinth from another NIC than the one it booted from.
pub async fn machine_holds_address(
    conn: &mut PgConnection,
    machine_id: Uuid,
    ip: IpAddr,
) -> Result<bool> {
    let found = sqlx::query_scalar!(
        r#"select exists (
               select 1 from leases l join nics n on n.mac = l.mac and n.active
               where n.machine_id = $1 and l.address = $2 and l.state = 'bound'
                 and l.expires_at > now()
           ) as "found!""#,
        machine_id,
        ip as IpAddr
    )
    .fetch_one(conn)
    .await?;
    Ok(found)
}

/// Marks machine `machine_id`'s token of `mode` used; false if it already was (another report
/// raced this one) or was replaced meanwhile.
pub async fn use_agent_token(
    conn: &mut PgConnection,
    machine_id: Uuid,
    mode: AgentMode,
    secret_sha256: &[u8],
) -> Result<bool> {
    let n = sqlx::query!(
        r#"update agent_tokens set used_at = now()
           where machine_id = $1 and mode = $2 and secret_sha256 = $3 and used_at is null"#,
        machine_id,
        mode.as_str(),
        secret_sha256
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Deletes the tokens that expired more than a day ago (kept a day so a late agent hears
/// "expired", not "unknown"; a machine has at most one row per mode, so nothing else piles
/// up), and the virtual-media boots a day old whose token is no longer their machine's (it
/// was replaced or purged: their ISO is served no more). Returns how many rows went.
pub async fn purge_agent_tokens(conn: &mut PgConnection) -> Result<u64> {
    let expired =
        sqlx::query!("delete from agent_tokens where expires_at < now() - interval '1 day'")
            .execute(&mut *conn)
            .await?
            .rows_affected();
    let boots = sqlx::query!(
        r#"delete from vmedia_boots v
           where v.created_at < now() - interval '1 day'
             and not exists (select 1 from agent_tokens t
                             where t.machine_id = v.machine_id and t.mode = v.mode
                               and t.secret_sha256 = v.token_sha256)"#
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(expired + boots)
}

/// One request of a batch.
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub mac: MacAddr,
    /// The address the request came from, when known.
    pub remote: Option<IpAddr>,
    pub actor: String,
    /// The `boot` event's details, a JSON object's text.
    pub details: String,
    pub token_sha256: Vec<u8>,
}

/// The settings every request of a batch shares.
pub struct BatchParams<'a> {
    pub table: &'a StateTable,
    pub token_secs: f64,
    pub loop_max: i32,
    pub loop_window_secs: f64,
}

/// Many requests in one round trip and one transaction (the `boot_request_batch` function);
/// the answer for `items[k]` is at `k`, `None` when its MAC belongs to no machine.
pub async fn request_batch(
    conn: &mut PgConnection,
    items: &[BatchItem],
    p: BatchParams<'_>,
) -> Result<Vec<Option<BootRow>>> {
    let macs: Vec<MacAddr> = items.iter().map(|i| i.mac).collect();
    let remotes: Vec<Option<IpAddr>> = items.iter().map(|i| i.remote).collect();
    let actors: Vec<&str> = items.iter().map(|i| i.actor.as_str()).collect();
    let details: Vec<&str> = items.iter().map(|i| i.details.as_str()).collect();
    let hashes: Vec<&[u8]> = items.iter().map(|i| i.token_sha256.as_slice()).collect();
    let rows = sqlx::query!(
        r#"select i as "i!", machine_id as "machine_id!", state as "state!: MachineState", hostname, pxe_arch,
                  requests as "requests!", loop_flagged as "loop_flagged!",
                  token_stored as "token_stored!", token_refused as "token_refused!"
           from boot_request_batch($1::macaddr[], $2::inet[], $3, $4::text[]::jsonb[], $5, $6, $7,
                                   $8, $9, $10, $11, $12)"#,
        &macs as &[MacAddr],
        &remotes as &[Option<IpAddr>],
        &actors as &[&str],
        &details as &[&str],
        &p.table.states,
        &p.table.modes as &[Option<String>],
        &p.table.messages,
        &p.table.scripts,
        &hashes as &[&[u8]],
        p.token_secs,
        p.loop_max,
        p.loop_window_secs,
    )
    .fetch_all(conn)
    .await?;
    let mut out: Vec<Option<BootRow>> = (0..items.len()).map(|_| None).collect();
    for r in rows {
        let k = usize::try_from(r.i - 1).map_err(|_| sqlx::Error::RowNotFound)?;
        if let Some(slot) = out.get_mut(k) {
            *slot = Some(BootRow {
                machine_id: r.machine_id,
                state: r.state,
                hostname: r.hostname,
                pxe_arch: r.pxe_arch,
                requests: r.requests,
                loop_flagged: r.loop_flagged,
                token_stored: r.token_stored,
                token_refused: r.token_refused,
            });
        }
    }
    Ok(out)
}
