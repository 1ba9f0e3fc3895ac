//! jobs: durable BMC actions. Queued rows are claimed with `FOR UPDATE SKIP LOCKED`; a claim
//! marks them running with a lease and is committed before the BMC is called. The outcome is
//! recorded in a new transaction, fenced by the attempt number, so a worker whose job was
//! taken away (its lease ran out) cannot overwrite the newer attempt.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use plinth_types::api::{BmcProtocol, JobState};

use plinth_types::JobId;

use crate::Result;

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: JobId,
    pub seq: i64,
    pub machine_id: Uuid,
    pub kind: String,
    pub params: serde_json::Value,
    pub state: JobState,
    pub attempts: i32,
    pub max_attempts: i32,
    pub not_before: DateTime<Utc>,
    pub lease_until: Option<DateTime<Utc>>,
    pub worker: Option<String>,
    pub last_error: Option<String>,
    pub result: Option<serde_json::Value>,
    pub chain: Option<Uuid>,
    pub requested_by: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

pub struct NewJob<'a> {
    pub machine_id: Uuid,
    pub kind: &'a str,
    pub params: serde_json::Value,
    pub max_attempts: i32,
    pub chain: Option<Uuid>,
    pub requested_by: &'a str,
}

/// Queues a job and wakes the workers (the NOTIFY is delivered when the transaction commits).
pub async fn insert(conn: &mut PgConnection, j: NewJob<'_>) -> Result<JobRow> {
    let row = sqlx::query_as!(
        JobRow,
        r#"insert into jobs (machine_id, kind, params, max_attempts, chain, requested_by)
         values ($1, $2, $3, $4, $5, $6)
         returning id as "id: JobId", seq, machine_id, kind, params, state as "state: JobState", attempts, max_attempts, not_before,
                   lease_until, worker, last_error, result, chain, requested_by, created_at,
                   started_at, finished_at, updated_at"#,
        j.machine_id,
        j.kind,
        j.params,
        j.max_attempts,
        j.chain,
        j.requested_by
    )
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query!("select pg_notify('jobs', '')")
        .execute(conn)
        .await?;
    Ok(row)
}

pub async fn get(conn: &mut PgConnection, id: JobId) -> Result<Option<JobRow>> {
    sqlx::query_as!(
        JobRow,
        r#"select id as "id: JobId", seq, machine_id, kind, params, state as "state: JobState", attempts, max_attempts, not_before,
                lease_until, worker, last_error, result, chain, requested_by, created_at,
                started_at, finished_at, updated_at
         from jobs where id = $1"#,
        id as JobId
    )
    .fetch_optional(conn)
    .await
    .map_err(crate::Error::from)
}

/// Jobs newest first, optionally of one machine and/or in one state, before `before_seq`.
pub async fn list(
    conn: &mut PgConnection,
    machine_id: Option<Uuid>,
    state: Option<JobState>,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<JobRow>> {
    sqlx::query_as!(
        JobRow,
        r#"select id as "id: JobId", seq, machine_id, kind, params, state as "state: JobState", attempts, max_attempts, not_before,
                lease_until, worker, last_error, result, chain, requested_by, created_at,
                started_at, finished_at, updated_at
         from jobs
         where ($1::uuid is null or machine_id = $1)
           and ($2::text is null or state = $2)
           and ($3::bigint is null or seq < $3)
         order by seq desc limit $4"#,
        machine_id,
        state.map(JobState::as_str),
        before_seq,
        limit
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// A claimed job with what the worker needs to reach the BMC (the password still encrypted).
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: JobId,
    pub machine_id: Uuid,
    pub kind: String,
    pub params: serde_json::Value,
    pub attempts: i32,
    pub max_attempts: i32,
    pub chain: Option<Uuid>,
    pub requested_by: String,
    /// `None` when the machine's BMC was removed after the job was queued.
    pub protocol: Option<BmcProtocol>,
    pub address: Option<String>,
    pub username: Option<String>,
    pub password_nonce: Option<Vec<u8>>,
    pub password_ciphertext: Option<Vec<u8>>,
    pub verify_tls: Option<bool>,
    pub plain_http: Option<bool>,
}

/// Claims up to `limit` runnable jobs for `worker`: queued, due, the oldest unfinished job of
/// their machine, and no job of their machine running. Marks them running with a lease of
/// `lease_secs` and counts the attempt. Commit before calling any BMC.
pub async fn claim(
    conn: &mut PgConnection,
    worker: &str,
    limit: i64,
    lease_secs: f64,
) -> Result<Vec<Claimed>> {
    sqlx::query_as!(
        Claimed,
        r#"with picked as (
             select c.id from jobs c
             where c.state = 'queued' and c.not_before <= now()
               and not exists (select 1 from jobs r where r.machine_id = c.machine_id and r.state = 'running')
               and not exists (select 1 from jobs e where e.machine_id = c.machine_id
                               and e.state = 'queued' and e.seq < c.seq)
             order by c.seq
             limit $2
             for update skip locked
           ), claimed as (
             update jobs j set state = 'running', attempts = j.attempts + 1, worker = $1,
                 lease_until = now() + make_interval(secs => $3), updated_at = now(),
                 started_at = coalesce(j.started_at, now())
             from picked where j.id = picked.id
             returning j.id, j.machine_id, j.kind, j.params, j.attempts, j.max_attempts, j.chain,
                       j.requested_by, j.seq
           )
           select c.id as "id!: JobId", c.machine_id as "machine_id!", c.kind as "kind!",
                  c.params as "params!", c.attempts as "attempts!", c.max_attempts as "max_attempts!",
                  c.chain, c.requested_by as "requested_by!",
                  b.protocol as "protocol?: BmcProtocol", b.address as "address?", b.username as "username?",
                  b.password_nonce as "password_nonce?", b.password_ciphertext as "password_ciphertext?",
                  b.verify_tls as "verify_tls?", b.plain_http as "plain_http?"
           from claimed c left join bmcs b on b.machine_id = c.machine_id
           order by c.seq"#,
        worker,
        limit,
        lease_secs
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// Extends the leases of `worker`'s running jobs.
pub async fn renew(
    conn: &mut PgConnection,
    worker: &str,
    ids: &[Uuid],
    lease_secs: f64,
) -> Result<u64> {
    let r = sqlx::query!(
        r#"update jobs set lease_until = now() + make_interval(secs => $3)
         where id = any($2) and worker = $1 and state = 'running'"#,
        worker,
        ids,
        lease_secs
    )
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// Marks attempt `attempt` of a running job succeeded. False when the attempt is no longer
/// the job's current one (its lease ran out and it was taken again).
pub async fn succeed(
    conn: &mut PgConnection,
    id: JobId,
    attempt: i32,
    result: &serde_json::Value,
) -> Result<bool> {
    let r = sqlx::query!(
        r#"update jobs set state = 'succeeded', result = $3, last_error = null, lease_until = null,
             finished_at = now(), updated_at = now()
         where id = $1 and attempts = $2 and state = 'running'"#,
        id as JobId,
        attempt,
        result
    )
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Puts attempt `attempt` of a running job back in the queue, due in `delay_secs`.
pub async fn retry_later(
    conn: &mut PgConnection,
    id: JobId,
    attempt: i32,
    error: &str,
    delay_secs: f64,
) -> Result<bool> {
    let r = sqlx::query!(
        r#"update jobs set state = 'queued', last_error = $3, lease_until = null, worker = null,
             not_before = now() + make_interval(secs => $4), updated_at = now()
         where id = $1 and attempts = $2 and state = 'running'"#,
        id as JobId,
        attempt,
        error,
        delay_secs
    )
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Marks attempt `attempt` of a running job failed, and cancels the queued jobs after it in
/// its chain. Returns whether the job was still this attempt's, and the cancelled jobs' ids.
pub async fn fail(
    conn: &mut PgConnection,
    id: JobId,
    attempt: i32,
    error: &str,
) -> Result<Option<Vec<Uuid>>> {
    let chain = sqlx::query_scalar!(
        r#"update jobs set state = 'failed', last_error = $3, lease_until = null,
             finished_at = now(), updated_at = now()
         where id = $1 and attempts = $2 and state = 'running'
         returning chain"#,
        id as JobId,
        attempt,
        error
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(chain) = chain else {
        return Ok(None);
    };
    let Some(chain) = chain else {
        return Ok(Some(Vec::new()));
    };
    Ok(Some(cancel_chain(conn, chain, error).await?))
}

/// Cancels the queued jobs of `chain` because one of its jobs failed with `error`.
pub async fn cancel_chain(conn: &mut PgConnection, chain: Uuid, error: &str) -> Result<Vec<Uuid>> {
    sqlx::query_scalar!(
        r#"update jobs set state = 'cancelled', finished_at = now(), updated_at = now(),
             last_error = 'not run: an earlier job of the same action failed: ' || $2
         where chain = $1 and state = 'queued'
         returning id"#,
        chain,
        error
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// A job whose worker stopped renewing its lease.
#[derive(Debug, Clone)]
pub struct Stale {
    pub id: JobId,
    pub chain: Option<Uuid>,
    pub machine_id: Uuid,
    pub kind: String,
    pub state: JobState,
    pub worker: Option<String>,
}

/// Queues again the running jobs whose lease has passed (or, with `worker`, that worker's
/// running jobs, whatever their lease: a worker stopping cleanly hands its jobs back). A job
/// out of attempts fails instead.
pub async fn requeue_stale(conn: &mut PgConnection, worker: Option<&str>) -> Result<Vec<Stale>> {
    sqlx::query_as!(
        Stale,
        r#"with stale as (
             select id, worker from jobs
             where state = 'running'
               and (($1::text is null and lease_until < now()) or worker = $1)
             for update skip locked
           )
           update jobs j set
               state = case when j.attempts >= j.max_attempts then 'failed' else 'queued' end,
               finished_at = case when j.attempts >= j.max_attempts then now() end,
               last_error = 'the worker running it stopped (' || coalesce(stale.worker, '?') || ')',
               lease_until = null, worker = null, not_before = now(), updated_at = now()
           from stale where j.id = stale.id
           returning j.id as "id: JobId", j.chain, j.machine_id, j.kind, j.state as "state: JobState", stale.worker"#,
        worker
    )
    .fetch_all(conn)
    .await
    .map_err(crate::Error::from)
}

/// How plinth boots a machine with a BMC into its ramdisk (`bmc_boot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcBoot {
    /// Its firmware mode as far as plinth knows (`uefi` or `bios`, from the inspection facts,
    /// else from the architecture its PXE firmware announced).
    pub firmware: Option<String>,
    /// The machine's own setting, else its rack's, else the network.
    pub method: plinth_types::api::BootMethod,
}

/// For a machine with a BMC: how it boots ([`BmcBoot`]). `None` when the machine has no BMC.
pub async fn bmc_boot(conn: &mut PgConnection, machine_id: Uuid) -> Result<Option<BmcBoot>> {
    let row = sqlx::query!(
        r#"select coalesce(m.facts ->> 'firmware',
                           case when m.pxe_arch = 0 then 'bios'
                                when m.pxe_arch in (6, 7, 9, 10, 11, 16, 19) then 'uefi' end) as mode,
                  coalesce(m.boot_method, r.boot_method, 'network') as "method!: plinth_types::api::BootMethod"
           from machines m join bmcs b on b.machine_id = m.id
           left join racks r on r.id = m.rack_id
           where m.id = $1"#,
        machine_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| BmcBoot {
        firmware: r.mode,
        method: r.method,
    }))
}

/// For a cap on running jobs across every instance: serializes claims for the rest of the
/// caller's transaction (an advisory lock) and returns how many jobs are running now. Claim in
/// the same transaction.
pub async fn lock_and_count_running(conn: &mut PgConnection) -> Result<i64> {
    // "plinth jobs" as a number: one advisory lock for every instance's claims
    sqlx::query!("select pg_advisory_xact_lock(7001527451)")
        .execute(&mut *conn)
        .await?;
    let n = sqlx::query_scalar!(
        r#"select count(*) as "n!" from jobs where state = 'running' and lease_until > now()"#
    )
    .fetch_one(conn)
    .await?;
    Ok(n)
}

/// Cancels a queued job (and the queued jobs after it in its chain). `None` when the job is
/// not queued (any more).
pub async fn cancel_queued(
    conn: &mut PgConnection,
    id: JobId,
    reason: &str,
) -> Result<Option<Vec<Uuid>>> {
    let row = sqlx::query!(
        r#"update jobs set state = 'cancelled', finished_at = now(), updated_at = now(),
             last_error = $2
         where id = $1 and state = 'queued'
         returning chain, seq"#,
        id as JobId,
        reason
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let Some(chain) = row.chain else {
        return Ok(Some(Vec::new()));
    };
    let later = sqlx::query_scalar!(
        r#"update jobs set state = 'cancelled', finished_at = now(), updated_at = now(),
             last_error = 'not run: an earlier job of the same action was cancelled'
         where chain = $1 and state = 'queued' and seq > $2
         returning id"#,
        chain,
        row.seq
    )
    .fetch_all(conn)
    .await?;
    Ok(Some(later))
}
