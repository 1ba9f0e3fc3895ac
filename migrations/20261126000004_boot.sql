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
create table agent_tokens (
    id uuid primary key default gen_random_uuid(),
    machine_id uuid not null references machines (id) on delete cascade,
    mode text not null check (mode in ('inspect', 'clean', 'deploy')),
    secret_sha256 bytea not null unique,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    used_at timestamptz
);
create index agent_tokens_machine_idx on agent_tokens (machine_id);
create index agent_tokens_expiry_idx on agent_tokens (expires_at);

-- Boot-loop guard: script requests per machine in the current window. A table of its own (not
-- columns of machines) so that counting is a small HOT update, not a rewrite of a wide row and
-- its many indexes on every boot.
create table boot_windows (
    machine_id uuid primary key references machines (id) on delete cascade,
    started_at timestamptz not null,
    requests integer not null check (requests >= 1)
);

-- One iPXE script request in one round trip: find the machine behind the MAC, and for it record
-- the `boot` event, store the agent token's hash when its state boots the ramdisk, and count the
-- request in its boot-loop window (a `boot_loop` event when the count first passes p_loop_max).
-- What each state does comes from the caller as a table (p_states[i] → p_modes[i],
-- p_messages[i], p_scripts[i]), computed from plinth-core's pure boot decision, so that the
-- decision is written down in one place only. No row: the MAC belongs to no machine.
create function boot_request(
    p_mac macaddr,
    p_actor text,
    p_details jsonb,
    p_states text[],
    p_modes text[],
    p_messages text[],
    p_scripts text[],
    p_token_sha256 bytea,
    p_token_secs double precision,
    p_loop_max integer,
    p_loop_window_secs double precision
) returns table (
    machine_id uuid,
    state text,
    hostname text,
    pxe_arch integer,
    requests integer,
    token_stored boolean
) language plpgsql set jit = off as $$
declare
    m record;
    i integer;
    v_mode text;
    n integer;
begin
    select mm.id, mm.state, mm.hostname, mm.pxe_arch into m
    from nics nn join machines mm on mm.id = nn.machine_id
    where nn.mac = p_mac and (nn.active or mm.state = 'decommissioned')
    order by nn.active desc, nn.id desc limit 1;
    if not found then
        return;
    end if;
    i := array_position(p_states, m.state);
    v_mode := p_modes[i];
    insert into boot_windows as w (machine_id, started_at, requests)
    values (m.id, now(), 1)
    on conflict on constraint boot_windows_pkey do update set
        started_at = case when w.started_at < now() - make_interval(secs => p_loop_window_secs)
                          then now() else w.started_at end,
        requests = case when w.started_at < now() - make_interval(secs => p_loop_window_secs)
                        then 1 else w.requests + 1 end
    returning w.requests into n;
    insert into events (actor, machine_id, kind, details)
    values (p_actor, m.id, 'boot',
            p_details || jsonb_build_object('message', p_messages[i], 'script', p_scripts[i]));
    if n = p_loop_max + 1 then
        insert into events (actor, machine_id, kind, details)
        values ('system', m.id, 'boot_loop',
                jsonb_build_object('requests', n, 'window_secs', p_loop_window_secs));
    end if;
    if v_mode is not null then
        insert into agent_tokens (machine_id, mode, secret_sha256, expires_at)
        values (m.id, v_mode, p_token_sha256, now() + make_interval(secs => p_token_secs));
    end if;
    return query select m.id, m.state, m.hostname, m.pxe_arch, n, v_mode is not null;
end
$$;

-- Many script requests in one round trip and one transaction (the HTTP server batches what
-- arrives together): boot_request for each, in order; `i` is the 1-based index of the request a
-- row answers (no row: that MAC belongs to no machine). The caller orders the batch by MAC so
-- that concurrent batches lock boot_windows rows in the same order.
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
    token_stored boolean
) language plpgsql set jit = off as $$
begin
    for k in 1 .. coalesce(array_length(p_macs, 1), 0) loop
        return query
            select k, r.machine_id, r.state, r.hostname, r.pxe_arch, r.requests, r.token_stored
            from boot_request(p_macs[k], p_actors[k], p_details[k], p_states, p_modes, p_messages,
                              p_scripts, p_token_sha256[k], p_token_secs, p_loop_max,
                              p_loop_window_secs) r;
    end loop;
end
$$;
