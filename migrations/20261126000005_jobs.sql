-- BMC jobs and power sync (issue 5).
--
-- Every BMC action is a row in `jobs`. Workers on any plinth instance claim queued rows with
-- FOR UPDATE SKIP LOCKED, mark them running with a lease, commit, call the BMC, and record the
-- outcome in a new transaction: no transaction is held across a BMC call. A running job whose
-- lease runs out (its worker died) is queued again by a reconciler.

create table jobs (
    id uuid primary key default gen_random_uuid(),
    -- creation order: the jobs of one machine run one at a time, in this order
    seq bigint generated always as identity unique,
    machine_id uuid not null references machines (id),
    -- retire: power off for good, then forget the BMC's credentials (decommission)
    kind text not null check (kind in ('power', 'boot_device', 'identify', 'retire')),
    params jsonb not null default '{}',
    state text not null default 'queued'
        check (state in ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    -- attempts started so far; also the fencing token of the worker running the job
    attempts integer not null default 0 check (attempts >= 0),
    max_attempts integer not null default 5 check (max_attempts between 1 and 100),
    -- a queued job waits until then (backoff after a transient failure)
    not_before timestamptz not null default now(),
    -- a running job's worker renews this; once passed, the job is queued again
    lease_until timestamptz,
    worker text,
    last_error text,
    result jsonb,
    -- the jobs of one transition share a chain: when one fails, the later ones are cancelled
    chain uuid,
    requested_by text not null,
    created_at timestamptz not null default now(),
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz not null default now(),
    constraint jobs_running_lease check ((state = 'running') = (lease_until is not null)),
    constraint jobs_finished_at check (
        (state in ('succeeded', 'failed', 'cancelled')) = (finished_at is not null)
    )
);

-- at most one job per BMC at a time, whatever the number of instances
create unique index jobs_one_running_per_machine on jobs (machine_id) where state = 'running';
create index jobs_queued_idx on jobs (seq) where state = 'queued';
create index jobs_machine_idx on jobs (machine_id, seq);
create index jobs_lease_idx on jobs (lease_until) where state = 'running';
create index jobs_chain_idx on jobs (chain) where chain is not null;

-- What plinth last learned from each BMC.
alter table bmcs
    add column power_state text
        check (power_state in ('on', 'off', 'powering_on', 'powering_off')),
    add column power_checked_at timestamptz,
    -- null: not polled yet
    add column reachable boolean,
    add column consecutive_failures integer not null default 0 check (consecutive_failures >= 0),
    add column last_error text,
    add column next_poll_at timestamptz not null default now(),
    -- manufacturer, model, serial, uuid, macs as the BMC reports them
    add column identity jsonb,
    add column identity_at timestamptz;

create index bmcs_next_poll_idx on bmcs (next_poll_at);
-- a technician searches by the serial on the sticker, before any inspection
create index bmcs_serial_idx on bmcs ((identity ->> 'serial'));
