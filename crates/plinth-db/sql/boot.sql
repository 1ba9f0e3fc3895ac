-- The iPXE script requests' batch: the boot event, the agent token (bound to an address), the
-- boot-loop guard.
--
-- Applied after the migrations at every start (plinth_db::migrate), under an advisory lock, in
-- one transaction: each statement must be idempotent (`create or replace`). During a rolling
-- upgrade the previous release's instances keep calling what they know (docs/ha.md): a function
-- whose arguments or result change gets a new signature, and the old one stays, as a wrapper
-- doing what it did, until the release after.

-- iPXE script requests, many in one round trip and one transaction (the HTTP server batches
-- what arrives together), set-based: for each request find the machine behind its MAC; record a
-- `boot` event per request; store the agent token's hash when the machine's state boots the
-- ramdisk; count the requests in each machine's boot-loop window, with a `boot_loop` event when
-- a batch takes the count past p_loop_max. What each state does comes from the caller as a table
-- (p_states[k] -> p_modes[k], p_messages[k], p_scripts[k]) computed from plinth-core's pure boot
-- decision, so that the decision is written down in one place only. One row per request whose
-- MAC belongs to a machine; `i` is the request's 1-based index. Machines are locked in id order,
-- so concurrent batches (other instances) do not deadlock.
--
-- The agent token is bound to an address:
-- - where plinth leased the MAC an address (a bound lease) or reserved one inside a subnet it
--   serves, only a request from one of those addresses gets a token;
-- - elsewhere (ProxyDHCP, another DHCP server) the first request of a boot cycle binds the token
--   to its source address: while that token is live, a request from another address gets none,
--   one from the same address (the machine rebooted) gets a new token;
-- - a request refused this way gets no token, is told to wait (its boot event says so), and
--   leaves a `boot_spoof_suspected` event with the address it came from and the addresses that
--   would have been accepted.
-- A new token replaces the one of its machine and mode (agent_tokens_replace, below). Several
-- requests of one batch for the same machine and mode: the last one accepted gets the token.
--
-- Boot events and boot_spoof_suspected events are rate-limited per machine: once a window holds
-- three times the loop limit, a machine (or whoever asks with its MAC, from any address) adds no
-- more until the window restarts, and its boot_loop event says up to how many are kept. (Spoof
-- events were not capped before: a flood with a victim's MAC wrote a row per request.)
create or replace function boot_request_batch(
    p_macs macaddr[],
    p_remotes inet[],
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
    token_stored boolean,
    token_refused boolean
) language plpgsql set jit = off set plan_cache_mode = force_generic_plan
-- No sequential scans where an index serves: the generic plan is made once per connection,
-- from the statistics of that moment. Planned while agent_tokens was nearly empty (a fresh
-- database, a quiet spell), the live-token lookup and the revocation scanned the whole table
-- for every request; in a boot storm the table grows by a token per inspecting machine's
-- request and the endpoint slowed down as it grew (2,139 then 886 requests/s over four 10-s
-- rounds, docs/benchmarks.md).
set enable_seqscan = off as $$
#variable_conflict use_column
begin
    -- One MAC's requests on several instances at once take turns (in MAC order, as every
    -- batch is sorted). The statement below then starts after another instance's batch for
    -- the same machine has committed, so its snapshot sees that batch's token (and the
    -- address it is bound to).
    perform pg_advisory_xact_lock(1651470196, hashtext(x.mac::text))
    from (select distinct mac from unnest(p_macs) as mac order by mac) x;
    return query
    with input as (
        select k as i, p_macs[k] as mac, p_remotes[k] as remote, p_actors[k] as actor,
               p_details[k] as details, p_token_sha256[k] as hash
        from generate_subscripts(p_macs, 1) as k
    ), found as (
        select x.i, x.mac, x.remote, x.actor, x.details, x.hash, m.id, m.state, m.hostname,
               m.pxe_arch, array_position(p_states, m.state) as si
        from input x
        cross join lateral (
            select mm.id, mm.state, mm.hostname, mm.pxe_arch
            from nics n join machines mm on mm.id = n.machine_id
            where n.mac = x.mac and (n.active or mm.state = 'decommissioned')
            order by n.active desc, n.id desc
            limit 1
        ) m
    ), wants as (
        -- Requests whose state boots the ramdisk: the addresses plinth gave the MAC, and the
        -- live token's binding.
        select f.i, f.id, f.mac, f.remote, p_modes[f.si] as mode,
               array(
                   select l.address from leases l
                   where l.mac = f.mac and l.state = 'bound' and l.expires_at > now()
                   union
                   select n.ipv4 from nics n
                   where n.mac = f.mac and n.active and n.ipv4 is not null
                     and exists (select 1 from subnets s where n.ipv4 <<= s.cidr)
               ) as assigned,
               coalesce(t.live, false) as has_live,
               case when t.live then t.bound_ip end as live_ip,
               t.ctid as slot_row
        from found f
        -- The machine's token row of this mode (one per machine and mode, by the key), and
        -- whether its token is live (unrevoked, unused, unexpired): a new token replaces it in
        -- that row. `limit 1` keeps the subquery a lookup per request: without it the planner
        -- joins it as a table, and the generic plan (made for the 1,000 requests it guesses an
        -- array holds) walks every machine's token for each batch (996 rows for 16 requests).
        left join lateral (
            select tt.ctid, tt.bound_ip,
                   tt.used_at is null and tt.revoked_at is null and tt.expires_at > now() as live
            from agent_tokens tt
            where tt.machine_id = f.id and tt.mode = p_modes[f.si]
            limit 1
        ) t on true
        where p_modes[f.si] is not null
    ), judged as (
        select w.*,
               case when cardinality(w.assigned) > 0 then coalesce(w.remote = any(w.assigned), false)
                    when w.has_live then w.live_ip is not distinct from w.remote
                    else true end as ok
        from wants w
    ), mint as (
        -- the last accepted request of each machine and mode
        select distinct on (j.id, j.mode) j.i, j.id, j.mode, j.remote, j.slot_row
        from judged j where j.ok
        order by j.id, j.mode, j.i desc
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
        -- (a request refused its token is told to wait: its boot event says so). Boot events
        -- are rate-limited per machine: once a window holds three times the loop limit, a
        -- machine (or whoever asks with its MAC) adds no more until the window restarts; its
        -- boot_loop event says so. The spoof events below share the cap.
        insert into events (actor, machine_id, kind, details)
        select f.actor, f.id, 'boot',
               f.details || case when j.ok is false
                   then jsonb_build_object('message', 'told to wait: this boot is bound to another address',
                                           'script', 'wait.ipxe')
                   else jsonb_build_object('message', p_messages[f.si], 'script', p_scripts[f.si]) end
        from found f left join judged j on j.i = f.i
        join flagged g on g.machine_id = f.id
        join counts c on c.id = f.id
        where g.requests - c.c < 3 * p_loop_max
        order by f.i
    ), lp as (
        insert into events (actor, machine_id, kind, details)
        select 'system', g.machine_id, 'boot_loop',
               jsonb_build_object('requests', g.requests, 'window_secs', p_loop_window_secs,
                                  'boot_events_up_to', 3 * p_loop_max)
        from flagged g where g.crossed
    ), spoof as (
        insert into events (actor, machine_id, kind, details)
        select f.actor, j.id, 'boot_spoof_suspected',
               jsonb_build_object(
                   'mac', f.mac::text, 'remote', host(j.remote), 'mode', j.mode,
                   'accepted', case when cardinality(j.assigned) > 0
                                    then (select jsonb_agg(host(a)) from unnest(j.assigned) a)
                                    else jsonb_build_array(host(j.live_ip)) end,
                   'why', case when cardinality(j.assigned) > 0
                               then 'not the address plinth leased or reserved for this MAC'
                               else 'not the address this boot''s token is bound to' end)
        from judged j join found f on f.i = j.i
        join flagged g on g.machine_id = j.id
        join counts c on c.id = j.id
        where not j.ok and g.requests - c.c < 3 * p_loop_max
        order by j.i
    ), slot as (
        -- A new token replaces the one of its machine and mode in its row, the replaced one
        -- kept as it was in prev_* (as agent_tokens_replace below does for a single insert;
        -- here set-based). A HOT update. The rows are the ones the lookup above found, by their
        -- ctid (this statement's snapshot): a join on the key let the generic plan walk every
        -- machine's row for each batch; a TID scan cannot. A row another transaction changed
        -- meanwhile (a state change revoked it, another instance replaced it) is followed and
        -- no longer matches: it is left alone, and the request is told to wait (token_stored).
        update agent_tokens t set
            prev_sha256 = t.secret_sha256,
            prev_expires_at = t.expires_at,
            prev_used_at = t.used_at,
            prev_revoked_at = coalesce(t.revoked_at, case when t.used_at is null then now() end),
            prev_revoked_reason = coalesce(t.revoked_reason,
                                           case when t.used_at is null then 'replaced by a newer token' end),
            secret_sha256 = x.hash,
            created_at = now(),
            expires_at = now() + make_interval(secs => p_token_secs),
            bound_ip = x.remote,
            used_at = null,
            revoked_at = null,
            revoked_reason = null
        from (select m.slot_row, f.hash, m.remote from mint m join found f on f.i = m.i
              where m.slot_row is not null) x
        where t.ctid = any (array(select m.slot_row from mint m where m.slot_row is not null))
          and t.ctid = x.slot_row
        returning t.machine_id, t.mode
    ), tok as (
        -- a machine's first token of a mode
        insert into agent_tokens (secret_sha256, machine_id, mode, expires_at, bound_ip)
        select f.hash, m.id, m.mode, now() + make_interval(secs => p_token_secs), m.remote
        from mint m join found f on f.i = m.i
        where m.slot_row is null
    )
    select f.i, f.id, f.state, f.hostname, f.pxe_arch, g.requests, g.crossed,
           exists (select 1 from mint m where m.i = f.i
                   and (m.slot_row is null
                        or exists (select 1 from slot s where s.machine_id = m.id and s.mode = m.mode))),
           exists (select 1 from judged j where j.i = f.i and not j.ok)
    from found f join flagged g on g.machine_id = f.id
    order by f.i;
end
$$;

-- Agent tokens are one row per machine and mode (migration 20261207010000): a token inserted
-- for a machine and mode that has a row replaces that row's token in place, and the row keeps
-- the token it replaced, as it was, in prev_* (so that its agent is still told why it is
-- refused). Every writer goes through here: the script batch above, virtual-media boots, and
-- during a rolling upgrade the previous release's instances (which revoke the live token and
-- insert a new row). The update changes no indexed column: a HOT update, no index entry.
create or replace function agent_tokens_replace() returns trigger language plpgsql as $$
begin
    update agent_tokens t set
        prev_sha256 = t.secret_sha256,
        prev_expires_at = t.expires_at,
        prev_used_at = t.used_at,
        prev_revoked_at = coalesce(t.revoked_at, case when t.used_at is null then now() end),
        prev_revoked_reason = coalesce(t.revoked_reason,
                                       case when t.used_at is null then 'replaced by a newer token' end),
        secret_sha256 = new.secret_sha256,
        created_at = now(),
        expires_at = new.expires_at,
        bound_ip = new.bound_ip,
        used_at = null,
        revoked_at = null,
        revoked_reason = null
    where t.machine_id = new.machine_id and t.mode = new.mode;
    if found then
        return null;
    end if;
    return new;
end
$$;

create or replace trigger agent_tokens_replace
    before insert on agent_tokens
    for each row execute function agent_tokens_replace();
