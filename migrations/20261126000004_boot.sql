-- The boot chain: the catalog of boot images, one-time agent tokens handed to ramdisks, and the
-- counter behind the boot-loop guard.

-- Files under the images root that plinth knows by name. `path` is relative to the root.
create table images (
    id uuid primary key default gen_random_uuid(),
    name text not null unique check (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
    kind text not null check (kind in ('ipxe', 'kernel', 'initrd', 'rootfs', 'disk-image')),
    arch text not null check (arch in ('x86_64', 'aarch64', 'any')),
    path text not null unique check (length(path) between 1 and 255),
    size bigint not null check (size >= 0),
    sha256 text not null check (sha256 ~ '^[0-9a-f]{64}$'),
    -- `registered` (a file put in the root by an operator or images/build.sh) or `uploaded`
    -- (written by plinth, removed with the entry)
    source text not null check (source in ('registered', 'uploaded')),
    created_by text not null,
    created_at timestamptz not null default now()
);

-- A secret handed to the agent of one machine, for one mode, until it expires. Only its
-- SHA-256 is stored. `used_at` is set when the agent's final report consumes it.
-- Keyed by the hash itself, with one more index only: a row is written on every ramdisk boot.
create table agent_tokens (
    secret_sha256 bytea primary key check (length(secret_sha256) = 32),
    machine_id uuid not null references machines (id) on delete cascade,
    mode text not null check (mode in ('inspect', 'clean', 'deploy')),
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    used_at timestamptz
);
create index agent_tokens_machine_idx on agent_tokens (machine_id);

-- Boot-loop guard: script requests per machine in the current window. A table of its own (not
-- columns of machines) so that counting is a small HOT update, not a rewrite of a wide row and
-- its many indexes on every boot.
create table boot_windows (
    machine_id uuid primary key references machines (id) on delete cascade,
    started_at timestamptz not null,
    requests integer not null check (requests >= 1)
);

-- iPXE script requests, many in one round trip and one transaction (the HTTP server batches
-- what arrives together), set-based: for each request find the machine behind its MAC; record a
-- `boot` event per request; store the agent token's hash when the machine's state boots the
-- ramdisk; count the requests in each machine's boot-loop window, with a `boot_loop` event when
-- a batch takes the count past p_loop_max. What each state does comes from the caller as a table
-- (p_states[k] → p_modes[k], p_messages[k], p_scripts[k]) computed from plinth-core's pure boot
-- decision, so that the decision is written down in one place only. One row per request whose
-- MAC belongs to a machine; `i` is the request's 1-based index. Machines are locked in id order,
-- so concurrent batches (other instances) do not deadlock.
create function boot_request_batch(
    p_macs macaddr[],
    p_actors text[],
    p_details jsonb[],
    p_states text[],
    p_modes text[],
    p_messages text[],
    p_scripts text[],
    p_token_sha256 bytea[],
    p_token_secs double precision,
    p_loop_max integer,
    p_loop_window_secs double precision
) returns table (
    i integer,
    machine_id uuid,
    state text,
    hostname text,
    pxe_arch integer,
    requests integer,
    loop_flagged boolean,
    token_stored boolean
) language plpgsql set jit = off set plan_cache_mode = force_generic_plan as $$
#variable_conflict use_column
begin
    -- plpgsql, not a SQL function: its plan is prepared once per connection, not per call.
    return query
    with input as (
        select k as i, p_macs[k] as mac, p_actors[k] as actor, p_details[k] as details,
               p_token_sha256[k] as hash
        from generate_subscripts(p_macs, 1) as k
    ), found as (
        -- One index lookup per request (a join would be planned for the thousand rows the
        -- planner assumes a set-returning function yields: seq scans and hashes per batch).
        select x.i, x.actor, x.details, x.hash, m.id, m.state, m.hostname, m.pxe_arch,
               array_position(p_states, m.state) as si
        from input x
        cross join lateral (
            select mm.id, mm.state, mm.hostname, mm.pxe_arch
            from nics n join machines mm on mm.id = n.machine_id
            where n.mac = x.mac and (n.active or mm.state = 'decommissioned')
            order by n.active desc, n.id desc
            limit 1
        ) m
    ), counts as (
        select f.id, count(*)::integer as c from found f group by f.id
    ), win as (
        insert into boot_windows as w (machine_id, started_at, requests)
        select c.id, now(), c.c from counts c order by c.id
        on conflict on constraint boot_windows_pkey do update set
            started_at = case when w.started_at < now() - make_interval(secs => p_loop_window_secs)
                              then now() else w.started_at end,
            requests = case when w.started_at < now() - make_interval(secs => p_loop_window_secs)
                            then excluded.requests else w.requests + excluded.requests end
        returning w.machine_id, w.requests
    ), flagged as (
        select w.machine_id, w.requests,
               w.requests > p_loop_max and w.requests - c.c <= p_loop_max as crossed
        from win w join counts c on c.id = w.machine_id
    ), ev as (
        insert into events (actor, machine_id, kind, details)
        select f.actor, f.id, 'boot',
               f.details || jsonb_build_object('message', p_messages[f.si], 'script', p_scripts[f.si])
        from found f order by f.i
    ), lp as (
        insert into events (actor, machine_id, kind, details)
        select 'system', g.machine_id, 'boot_loop',
               jsonb_build_object('requests', g.requests, 'window_secs', p_loop_window_secs)
        from flagged g where g.crossed
    ), tok as (
        insert into agent_tokens (secret_sha256, machine_id, mode, expires_at)
        select f.hash, f.id, p_modes[f.si], now() + make_interval(secs => p_token_secs)
        from found f where p_modes[f.si] is not null
    )
    select f.i, f.id, f.state, f.hostname, f.pxe_arch, g.requests, g.crossed,
           p_modes[f.si] is not null
    from found f join flagged g on g.machine_id = f.id
    order by f.i;
end
$$;
