CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA public;

COMMENT ON EXTENSION btree_gist IS 'support for indexing common datatypes in GiST';

CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;

COMMENT ON EXTENSION pg_trgm IS 'text similarity measurement and index searching based on trigrams';

CREATE FUNCTION public.agent_tokens_replace() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION public.agent_tokens_revoke_on_state_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    update agent_tokens set revoked_at = now(),
           revoked_reason = 'the machine moved from ' || old.state || ' to ' || new.state
    where machine_id = new.id and used_at is null and revoked_at is null;
    return null;
end
$$;

CREATE FUNCTION public.boot_request_batch(p_macs macaddr[], p_remotes inet[], p_actors text[], p_details jsonb[], p_states text[], p_modes text[], p_messages text[], p_scripts text[], p_token_sha256 bytea[], p_token_secs double precision, p_loop_max integer, p_loop_window_secs double precision) RETURNS TABLE(i integer, machine_id uuid, state text, hostname text, pxe_arch integer, requests integer, loop_flagged boolean, token_stored boolean, token_refused boolean)
    LANGUAGE plpgsql
    SET jit TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
    SET enable_seqscan TO 'off'
    AS $$
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

CREATE FUNCTION public.dhcp_lease(p_op text, p_match inet, p_relayed boolean, p_mac macaddr, p_addr inet, p_client_id bytea, p_hostname text, p_offer_secs integer, p_quarantine_secs integer, p_skip inet[] DEFAULT '{}'::inet[]) RETURNS TABLE(outcome text, address inet, lease_secs integer, subnet_id uuid, cidr cidr, router inet, dns_servers inet[], domain text, boot_server inet, machine_id uuid, machine_state text, boot_file text, reason text)
    LANGUAGE plpgsql
    SET jit TO 'off'
    SET enable_bitmapscan TO 'off'
    SET enable_sort TO 'off'
    AS $$
#variable_conflict use_column
declare
    s subnets%rowtype;
    m_id uuid;
    m_state text;
    m_boot text;
    m_ip inet;
    reserved inet;
    target inet;
    start inet;
    previous inet;
    l leases%rowtype;
begin
    if p_relayed then
        select * into s from subnets sn where p_match = any(sn.relay_addresses) limit 1;
        if not found then
            select * into s from subnets sn where sn.cidr >> p_match limit 1;
        end if;
    else
        select * into s from subnets sn where sn.cidr >> p_match limit 1;
    end if;
    if not found then
        return query select 'no_subnet'::text, null::inet, null::integer, null::uuid, null::cidr, null::inet,
            null::inet[], null::text, null::inet, null::uuid, null::text, null::text, 'no subnet for ' || host(p_match);
        return;
    end if;

    -- The machine behind the MAC: the live one, or else the last decommissioned one (so that
    -- a decommissioned machine's MAC is neither booted nor discovered again).
    select mm.id, mm.state, mm.boot_file, case when n.active then n.ipv4 end
    into m_id, m_state, m_boot, m_ip
    from nics n join machines mm on mm.id = n.machine_id
    where n.mac = p_mac and (n.active or mm.state = 'decommissioned')
    order by n.active desc, n.id desc
    limit 1;
    if m_ip is not null and m_ip << s.cidr then
        reserved := m_ip;
    end if;

    if p_op = 'inform' then
        return query select 'ack'::text, null::inet, null::integer, s.id, s.cidr, s.router, s.dns_servers, s.domain,
            s.boot_server, m_id, m_state, m_boot, null::text;
        return;
    elsif p_op = 'select_other' then
        -- The client took another server's offer. That server may be another plinth instance
        -- on this database, about to bind this very row (one lease row per client): the offer
        -- is left to its REQUEST, or to expire (offer_timeout) if the server was not ours.
        outcome := 'ignore';
    elsif p_op = 'release' then
        update leases set state = 'free', expires_at = null, updated_at = now()
        where leases.address = p_addr and leases.mac = p_mac and leases.state in ('offered', 'bound');
        outcome := 'ignore';
    elsif p_op = 'decline' then
        -- Someone else uses the address (the client saw it answer ARP): keep it out of the pool.
        update leases set state = 'declined', expires_at = now() + make_interval(secs => p_quarantine_secs),
            updated_at = now()
        where leases.address = p_addr and leases.mac = p_mac;
        outcome := 'ignore';
    elsif p_op = 'discover' then
        if reserved is not null then
            target := reserved;
        else
            -- The address this client had before, if nobody else holds it now.
            select lx.address into target from leases lx
            where lx.subnet_id = s.id and lx.mac = p_mac and lx.pool and lx.state <> 'declined'
              and coalesce((select n.mac from nics n where n.active and n.ipv4 = lx.address), p_mac) = p_mac
              and lx.address not in (select sk from unnest(p_skip) sk where sk is not null)
            order by (lx.state in ('offered', 'bound')) desc, lx.updated_at desc
            limit 1;
            previous := target;
            if target is null and p_addr is not null then
                select lx.address into target from leases lx
                where lx.address = p_addr and lx.subnet_id = s.id and lx.pool
                  and (lx.state = 'free' or (lx.expires_at < now() and lx.state <> 'declined'))
                  and coalesce((select n.mac from nics n where n.active and n.ipv4 = lx.address), p_mac) = p_mac
                  and lx.address not in (select sk from unnest(p_skip) sk where sk is not null)
                for update skip locked;
            end if;
            if target is null then
                -- (Reservations are probed per candidate through the unique index, a subplan the
                -- planner cannot turn into a scan of every reservation.)
                -- The first free address at or after a random point of the pool.
                start := dhcp_pool_point(s.id);
                select lx.address into target from leases lx
                where lx.subnet_id = s.id and lx.state = 'free' and lx.pool and lx.address >= start
                  and (select n.id from nics n where n.active and n.ipv4 = lx.address) is null
                  and lx.address not in (select sk from unnest(p_skip) sk where sk is not null)
                order by lx.address
                limit 1
                for update skip locked;
                if target is null then
                    select lx.address into target from leases lx
                    where lx.subnet_id = s.id and lx.state = 'free' and lx.pool and lx.address < start
                      and (select n.id from nics n where n.active and n.ipv4 = lx.address) is null
                      and lx.address not in (select sk from unnest(p_skip) sk where sk is not null)
                    order by lx.address
                    limit 1
                    for update skip locked;
                end if;
            end if;
            if target is null then
                select lx.address into target from leases lx
                where lx.subnet_id = s.id and lx.state <> 'free' and lx.expires_at < now() and lx.pool
                  and (select n.id from nics n where n.active and n.ipv4 = lx.address) is null
                  and lx.address not in (select sk from unnest(p_skip) sk where sk is not null)
                order by lx.expires_at
                limit 1
                for update skip locked;
            end if;
            if target is null then
                return query select 'exhausted'::text, null::inet, null::integer, s.id, s.cidr, s.router,
                    s.dns_servers, s.domain, s.boot_server, m_id, m_state, m_boot, 'no free address in ' || s.cidr::text;
                return;
            end if;
        end if;
        -- A race with another instance answering the same client ends in a unique violation
        -- on leases_client_key; the caller treats it as "answered elsewhere".
        if reserved is not null or previous is distinct from target then
            -- The client moves to another address: its old one goes back to the pool. (A new
            -- client has none, so the hot path skips this.)
            update leases set state = 'free', expires_at = null, updated_at = now()
            where leases.subnet_id = s.id and leases.mac = p_mac and leases.address <> target
              and leases.state in ('offered', 'bound');
        end if;
        insert into leases as lx (address, subnet_id, pool, state, mac, client_id, hostname, expires_at)
            values (target, s.id, false, 'offered', p_mac, p_client_id, p_hostname,
                    now() + make_interval(secs => p_offer_secs))
            on conflict (address) do update set
                -- a client re-discovering keeps its binding; anyone else gets a fresh offer
                state = case when lx.state = 'bound' and lx.mac = p_mac and lx.expires_at > now()
                             then 'bound' else 'offered' end,
                expires_at = case when lx.state = 'bound' and lx.mac = p_mac and lx.expires_at > now()
                                  then lx.expires_at else now() + make_interval(secs => p_offer_secs) end,
                mac = p_mac, client_id = p_client_id, hostname = p_hostname, updated_at = now();
        return query select 'offer'::text, target, s.lease_time, s.id, s.cidr, s.router, s.dns_servers, s.domain,
            s.boot_server, m_id, m_state, m_boot, null::text;
        return;
    elsif p_op in ('select', 'init_reboot', 'renew') then
        target := p_addr;
        if target is null or not (target << s.cidr) then
            outcome := 'nak';
            reason := 'address not on this network';
        elsif reserved is not null and target <> reserved then
            outcome := 'nak';
            reason := 'this client has a reserved address';
        elsif exists (select 1 from nics n where n.active and n.ipv4 = target and n.mac <> p_mac) then
            outcome := 'nak';
            reason := 'address reserved for another client';
        else
            select * into l from leases lx where lx.address = target for update;
            if found then
                if l.state = 'declined' and l.expires_at > now() then
                    outcome := 'nak';
                    reason := 'address declined';
                elsif l.mac is distinct from p_mac and l.state in ('offered', 'bound') and l.expires_at > now() then
                    outcome := 'nak';
                    reason := 'address leased to another client';
                elsif not l.pool and target is distinct from reserved then
                    outcome := 'nak';
                    reason := 'address outside the pool';
                end if;
            elsif target is distinct from reserved then
                if p_op = 'init_reboot' then
                    outcome := 'ignore';  -- RFC 2131 4.3.2: no record of this client, stay silent
                else
                    outcome := 'nak';
                    reason := 'no lease for this address';
                end if;
            end if;
            if outcome is null then
                if l.mac is distinct from p_mac then
                    update leases set state = 'free', expires_at = null, updated_at = now()
                    where leases.subnet_id = s.id and leases.mac = p_mac and leases.address <> target
                      and leases.state in ('offered', 'bound');
                end if;
                insert into leases as lx (address, subnet_id, pool, state, mac, client_id, hostname, expires_at)
                values (target, s.id, false, 'bound', p_mac, p_client_id, p_hostname,
                        now() + make_interval(secs => s.lease_time))
                on conflict (address) do update set state = 'bound', mac = p_mac, client_id = p_client_id,
                    hostname = coalesce(p_hostname, lx.hostname),
                    expires_at = now() + make_interval(secs => s.lease_time), updated_at = now();
                return query select 'ack'::text, target, s.lease_time, s.id, s.cidr, s.router, s.dns_servers,
                    s.domain, s.boot_server, m_id, m_state, m_boot, null::text;
                return;
            end if;
        end if;
    else
        raise exception 'unknown dhcp_lease op %', p_op;
    end if;
    return query select outcome, null::inet, null::integer, s.id, s.cidr, s.router, s.dns_servers, s.domain,
        s.boot_server, m_id, m_state, m_boot, reason;
end
$$;

CREATE FUNCTION public.dhcp_lease_batch(p_op text[], p_match inet[], p_relayed boolean[], p_mac macaddr[], p_addr inet[], p_client_id bytea[], p_hostname text[], p_offer_secs integer, p_quarantine_secs integer) RETURNS TABLE(i integer, outcome text, address inet, lease_secs integer, subnet_id uuid, cidr cidr, router inet, dns_servers inet[], domain text, boot_server inet, machine_id uuid, machine_state text, boot_file text, reason text)
    LANGUAGE sql
    AS $$
    select b.i, b.outcome, b.address, b.lease_secs, b.subnet_id, b.cidr, b.router, b.dns_servers,
           b.domain, b.boot_server, b.machine_id, b.machine_state, b.boot_file, b.reason
    from dhcp_lease_batch(p_op, p_match, p_relayed, p_mac, p_addr, p_client_id, p_hostname,
                          array_fill(null::inet, array[coalesce(cardinality(p_op), 0)]), null::inet[],
                          p_offer_secs, p_quarantine_secs) b
$$;

CREATE FUNCTION public.dhcp_lease_batch(p_op text[], p_match inet[], p_relayed boolean[], p_mac macaddr[], p_addr inet[], p_client_id bytea[], p_hostname text[], p_held inet[], p_skip inet[], p_offer_secs integer, p_quarantine_secs integer) RETURNS TABLE(i integer, outcome text, address inet, lease_secs integer, subnet_id uuid, cidr cidr, router inet, dns_servers inet[], domain text, boot_server inet, machine_id uuid, machine_state text, boot_file text, reason text, from_memory boolean)
    LANGUAGE plpgsql
    SET jit TO 'off'
    SET enable_bitmapscan TO 'off'
    SET enable_sort TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
#variable_conflict use_column
declare
    n integer := cardinality(p_op);
    c_kind text[];
    c_sid uuid[];
    c_mid uuid[];
    c_mstate text[];
    c_mboot text[];
    c_res inet[];
    c_prev inet[];
    c_mem boolean[];
    -- the items the set-based steps answered, and their addresses; those offered from memory
    d_i integer[] := '{}';
    d_addr inet[] := '{}';
    m_i integer[] := '{}';
    m_addr inet[] := '{}';
    v_sid uuid;
    v_want integer;
    v_mem boolean;
    v_book boolean := p_skip is not null;
    v_start inet;
    v_free inet[];
    v_taken inet[];
    v_dup inet;       -- a client's second DISCOVER in the batch: its first one's offer
    v_i integer[];
    v_mac macaddr[];
    v_client_id bytea[];
    v_hostname text[];
    k integer;
begin
    if n is null or n = 0 then
        return;
    end if;
    if cardinality(p_match) <> n or cardinality(p_relayed) <> n or cardinality(p_mac) <> n
       or cardinality(p_addr) <> n or cardinality(p_client_id) <> n or cardinality(p_hostname) <> n
       or cardinality(p_held) <> n then
        raise exception 'dhcp_lease_batch: arrays of different lengths';
    end if;
    p_skip := coalesce(p_skip, '{}');  -- (v_book keeps whether it was given)

    -- One batch at a time per client, across instances: two instances on one segment both
    -- answer every broadcast, and the second must find the first one's offer rather than race
    -- it into a unique violation. Taken in one order everywhere, these locks cannot deadlock.
    perform pg_advisory_xact_lock(1346, x.k)  -- 1346: plinth's DHCP client locks
    from (select distinct hashtext(m::text) as k from unnest(p_mac) m order by 1) x;

    -- Classify every item: its subnet, the machine behind its MAC, and which step answers it.
    -- (The subnets are read once, with whether their pools are large; the rows come in item
    -- order, so that the arrays need no sort of their own; `offset 0` keeps the kind from being
    -- inlined into both places that read it, which would evaluate it twice.)
    with sx as materialized (
        select sn.id, sn.cidr, sn.relay_addresses, sn.relay_any_in_cidr,
               coalesce((select sum(rg.last_addr - rg.first_addr + 1) from subnet_ranges rg
                         where rg.subnet_id = sn.id), 0) >= 1024 as large
        from subnets sn
    )
    select array_agg(q.kind), array_agg(q.sid), array_agg(q.mid), array_agg(q.mstate),
           array_agg(q.mboot), array_agg(q.reserved), array_agg(q.prev), array_agg(q.mem)
    into c_kind, c_sid, c_mid, c_mstate, c_mboot, c_res, c_prev, c_mem
    from (
        select c.kind, s.id as sid, m.id as mid, m.state as mstate, m.boot_file as mboot, r.reserved,
               case c.kind when 'held' then h.address else p.address end as prev,
               coalesce(s.large and v_book, false) as mem
        from (
            select t.i::integer as i, t.op, t.match, t.relayed, t.mac, t.addr, t.held,
                   row_number() over (partition by t.mac order by t.i) as nth
            from unnest(p_op, p_match, p_relayed, p_mac, p_addr, p_held) with ordinality
                 as t(op, match, relayed, mac, addr, held, i)
        ) x
        -- as in dhcp_lease: a relay address names its subnet, else the subnet around the
        -- address. A relayed request is served only through a relay some subnet accepts (one of
        -- its relay_addresses, or any address of its cidr where relay_any_in_cidr): a giaddr is
        -- trivially forged. A relayed item left without a subnet is answered 'refused', and
        -- nothing is written for it.
        left join lateral (
            select sx.id, sx.cidr, sx.large from sx
            where sx.id = coalesce(
                (select s1.id from sx s1 where x.relayed and x.match = any(s1.relay_addresses) limit 1),
                (select s2.id from sx s2 where s2.cidr >> x.match and (s2.relay_any_in_cidr or not x.relayed) limit 1))
        ) s on true
        left join lateral (
            select mm.id, mm.state, mm.boot_file, case when nc.active then nc.ipv4 end as ip
            from nics nc join machines mm on mm.id = nc.machine_id
            where nc.mac = x.mac and (nc.active or mm.state = 'decommissioned')
            order by nc.active desc, nc.id desc
            limit 1
        ) m on true
        cross join lateral (select case when m.ip << s.cidr then m.ip end as reserved) r
        -- the client's rows in the subnet, read once: for a DISCOVER the address it had (live
        -- first, then the newest; not one declined or reserved to another NIC), whether it has
        -- any row at all (none: a new client), and whether it holds a live lease other than
        -- the address it asks for
        left join lateral (
            select (array_agg(lx.address order by (lx.state in ('offered', 'bound')) desc, lx.updated_at desc)
                        filter (where x.op = 'discover' and lx.pool and lx.state <> 'declined'
                                  and coalesce((select nc.mac from nics nc where nc.active and nc.ipv4 = lx.address),
                                               x.mac) = x.mac))[1] as address,
                   count(*) as n_rows,
                   coalesce(bool_or(lx.state in ('offered', 'bound') and lx.address is distinct from x.addr), false)
                       as live_elsewhere
            from leases lx
            where lx.subnet_id = s.id and lx.mac = x.mac
        ) p on true
        -- the address offered from memory, if the client may still have it
        left join lateral (
            select lx.address from leases lx
            where x.op = 'discover' and x.held is not null and s.large and v_book
              and lx.address = x.held and lx.subnet_id = s.id and lx.pool
              and case when lx.state = 'free' then true
                       when lx.state in ('offered', 'bound') then lx.mac = x.mac or lx.expires_at < now()
                       else false end
              and coalesce((select nc.mac from nics nc where nc.active and nc.ipv4 = lx.address), x.mac) = x.mac
        ) h on true
        cross join lateral (
            select case
                when x.relayed and s.id is null then 'refused'
                when s.id is null or x.nth > 1 then 'general'
                -- (an address this instance offered another client from memory is not offered again)
                when x.op = 'discover' and r.reserved is null and p.address is not null
                     and (p.address not in (select sk from unnest(p_skip) sk where sk is not null) or p.address = x.held) then 'again'
                when x.op = 'discover' and r.reserved is null and x.addr is null and p.address is null
                     and h.address is not null then 'held'
                when x.op = 'discover' and r.reserved is null and x.addr is null and p.n_rows = 0 then 'new'
                when x.op in ('select', 'init_reboot', 'renew') and x.addr << s.cidr
                     and (r.reserved is null or r.reserved = x.addr)
                     and not exists (select 1 from nics nc where nc.active and nc.ipv4 = x.addr and nc.mac <> x.mac)
                     -- (a live lease of the client's elsewhere is freed first, on the one-by-one path)
                     and not p.live_elsewhere
                    then 'bind'
                else 'general'
            end as kind
            offset 0
        ) c
        order by x.i
    ) q;

    -- (Each step runs only when some item takes it: a statement that finds nothing to do still
    -- costs its executor start-up.)

    -- bind: the client asks for the address it holds or was offered, or for a free one (offered
    -- from memory, by this instance or another). First, so that the steps below see it taken.
    if 'bind' = any(c_kind) then
        with u as (
            update leases l set state = 'bound', mac = t.mac, client_id = t.client_id,
                hostname = case when l.mac = t.mac then coalesce(t.hostname, l.hostname) else t.hostname end,
                expires_at = now() + make_interval(secs => sn.lease_time), updated_at = now(),
                bound_at = now()  -- (set here, the row trigger that would set it does not fire)
            from unnest(c_kind, c_sid, c_res, p_addr, p_mac, p_client_id, p_hostname) with ordinality
                 as t(kind, sid, reserved, addr, mac, client_id, hostname, i)
            join subnets sn on sn.id = t.sid
            where t.kind = 'bind' and l.address = t.addr
              -- (written so that no partial index matches: the planner's statistics on the state
              -- column are always stale, and it would scan one of them instead of the key)
              and case when l.state = 'free' then true
                       when l.state in ('offered', 'bound') then l.mac = t.mac or l.expires_at < now()
                       else false end
              and (l.pool or l.address = t.reserved)
            returning t.i::integer as i, l.address
        )
        select d_i || coalesce(array_agg(u.i), '{}'), d_addr || coalesce(array_agg(u.address), '{}')
        into d_i, d_addr from u;
    end if;

    -- again, where offers are written: offer the client its address once more (a live binding
    -- stays bound).
    if 'again' = any(c_kind) then
        with u as (
            update leases l set
                state = case when l.state = 'bound' and l.expires_at > now() then 'bound' else 'offered' end,
                expires_at = case when l.state = 'bound' and l.expires_at > now() then l.expires_at
                                  else now() + make_interval(secs => p_offer_secs) end,
                client_id = t.client_id, hostname = t.hostname, updated_at = now()
            from unnest(c_kind, c_mem, c_prev, p_mac, p_client_id, p_hostname) with ordinality
                 as t(kind, mem, prev, mac, client_id, hostname, i)
            where t.kind = 'again' and not t.mem and l.address = t.prev and l.mac = t.mac
              and case when l.state <> 'declined' then true else false end
            returning t.i::integer as i, l.address
        )
        select d_i || coalesce(array_agg(u.i), '{}'), d_addr || coalesce(array_agg(u.address), '{}')
        into d_i, d_addr from u;
    end if;

    -- again and held, from memory: nothing to write (unless the address was bound just above,
    -- for another client: then the one-by-one path finds another).
    if 'again' = any(c_kind) or 'held' = any(c_kind) then
        select m_i || coalesce(array_agg(t.i::integer), '{}'), m_addr || coalesce(array_agg(t.prev), '{}')
        into m_i, m_addr
        from unnest(c_kind, c_mem, c_prev) with ordinality as t(kind, mem, prev, i)
        where ((t.kind = 'again' and t.mem) or t.kind = 'held') and not (t.prev = any(d_addr));
    end if;

    -- new: the next free addresses of the subnet from a random point of its pool, as many as
    -- there are new clients; those left over (the pool ran out) go through dhcp_lease.
    -- (Not from just after this instance's newest open offer: two instances whose walks met
    -- would then offer the same addresses to different clients batch after batch.)
    -- (Clients and addresses are paired by position in two arrays, not by a join that the
    -- planner, misjudging the row counts, could turn into a nested loop over both.)
    if 'new' = any(c_kind) then
        for v_sid, v_mem, v_start, v_i, v_mac, v_client_id, v_hostname in
            select t.sid, bool_or(t.mem),
                   dhcp_pool_point(t.sid),
                   array_agg(t.i::integer), array_agg(t.mac), array_agg(t.client_id), array_agg(t.hostname)
            from (select * from unnest(c_kind, c_sid, c_mem, p_mac, p_client_id, p_hostname) with ordinality
                      as u(kind, sid, mem, mac, client_id, hostname, i)
                  where u.kind = 'new') t
            group by t.sid
        loop
            v_want := cardinality(v_i);
            v_taken := p_skip || m_addr;
            if v_mem then
                -- Read only: past the end of the subnet, from its start.
                select array_agg(f.address) into v_free
                from (
                    (select lx.address from leases lx
                     where lx.subnet_id = v_sid and lx.state = 'free' and lx.pool and lx.address >= v_start
                       and lx.address not in (select sk from unnest(v_taken) sk where sk is not null)
                       and (select nc.id from nics nc where nc.active and nc.ipv4 = lx.address) is null
                     order by lx.address
                     limit v_want)
                    union all
                    (select lx.address from leases lx
                     where lx.subnet_id = v_sid and lx.state = 'free' and lx.pool and lx.address < v_start
                       and lx.address not in (select sk from unnest(v_taken) sk where sk is not null)
                       and (select nc.id from nics nc where nc.active and nc.ipv4 = lx.address) is null
                     order by lx.address
                     limit v_want)
                    limit v_want
                ) f;
                select m_i || coalesce(array_agg(z.i), '{}'), m_addr || coalesce(array_agg(z.address), '{}')
                into m_i, m_addr
                from unnest(v_free, v_i) as z(address, i)
                where z.i is not null and z.address is not null;
            else
                select array_agg(f.address) into v_free
                from (
                    select lx.address from leases lx
                    where lx.subnet_id = v_sid and lx.state = 'free' and lx.pool and lx.address >= v_start
                      and lx.address not in (select sk from unnest(v_taken) sk where sk is not null)
                      and (select nc.id from nics nc where nc.active and nc.ipv4 = lx.address) is null
                    order by lx.address
                    limit v_want
                    for update skip locked
                ) f;
                with u as (
                    update leases l set state = 'offered', mac = z.mac, client_id = z.client_id, hostname = z.hostname,
                        expires_at = now() + make_interval(secs => p_offer_secs), updated_at = now()
                    from unnest(v_free, v_i, v_mac, v_client_id, v_hostname) as z(address, i, mac, client_id, hostname)
                    where l.address = z.address and z.i is not null
                    returning z.i, l.address
                )
                select d_i || coalesce(array_agg(u.i), '{}'), d_addr || coalesce(array_agg(u.address), '{}')
                into d_i, d_addr from u;
            end if;
        end loop;
    end if;

    return query
        select d.i, case c_kind[d.i] when 'bind' then 'ack' else 'offer' end, d.addr, sn.lease_time,
               sn.id, sn.cidr, sn.router, sn.dns_servers, sn.domain, sn.boot_server,
               c_mid[d.i], c_mstate[d.i], c_mboot[d.i], null::text, d.mem
        from (select u.i, u.addr, false as mem from unnest(d_i, d_addr) as u(i, addr)
              union all
              select u.i, u.addr, true from unnest(m_i, m_addr) as u(i, addr)) d
        join subnets sn on sn.id = c_sid[d.i];

    -- Everything else, one at a time, in arrival order, away from the addresses offered above
    -- (a client's second DISCOVER in the batch is offered what its first was).
    if cardinality(d_i) + cardinality(m_i) = n then
        return;
    end if;
    v_taken := p_skip || m_addr;
    for k in select g from generate_series(1, n) g where not (g = any(d_i) or g = any(m_i)) order by g loop
        if c_kind[k] = 'refused' then
            return query
                select k, 'refused'::text, null::inet, null::integer, null::uuid, null::cidr, null::inet,
                       null::inet[], null::text, null::inet, null::uuid, null::text, null::text,
                       'relay ' || host(p_match[k]) || ' is not one of a subnet''s relay_addresses', false;
            continue;
        end if;
        v_dup := null;
        if p_op[k] = 'discover' then
            select z.addr into v_dup from unnest(m_i, m_addr) as z(i, addr) where p_mac[z.i] = p_mac[k] and c_sid[z.i] = c_sid[k] limit 1;
        end if;
        if v_dup is not null then
            return query
                select k, 'offer'::text, v_dup, sn.lease_time, sn.id, sn.cidr, sn.router, sn.dns_servers,
                       sn.domain, sn.boot_server, c_mid[k], c_mstate[k], c_mboot[k], null::text, true
                from subnets sn where sn.id = c_sid[k];
        else
            return query
                select k, f.*, false from dhcp_lease(p_op[k], p_match[k], p_relayed[k], p_mac[k], p_addr[k],
                    p_client_id[k], p_hostname[k], p_offer_secs, p_quarantine_secs, v_taken) f;
        end if;
    end loop;
end
$$;

CREATE FUNCTION public.dhcp_pool_point(p_subnet uuid) RETURNS inet
    LANGUAGE plpgsql
    AS $$
begin
    return coalesce(
        (select r.first_addr + floor(random() * (r.last_addr - r.first_addr + 1))::bigint
         from subnet_ranges r
         where r.subnet_id = p_subnet
         order by -ln(1.0 - random()) / (r.last_addr - r.first_addr + 1)
         limit 1),
        (select set_masklen(sn.cidr::inet + floor(random() * (2 ^ (32 - masklen(sn.cidr))))::bigint, 32)
         from subnets sn where sn.id = p_subnet));
end
$$;

CREATE FUNCTION public.dhcp_view_free(p_subnet uuid, p_n integer) RETURNS SETOF inet
    LANGUAGE plpgsql
    SET jit TO 'off'
    SET enable_bitmapscan TO 'off'
    SET enable_sort TO 'off'
    AS $$
declare
    start inet := dhcp_pool_point(p_subnet);
begin
    return query
        select lx.address from leases lx
        where lx.subnet_id = p_subnet and lx.state = 'free' and lx.pool and lx.address >= start
          and (select nc.id from nics nc where nc.active and nc.ipv4 = lx.address) is null
        order by lx.address
        limit p_n;
    if not found then
        return query
            select lx.address from leases lx
            where lx.subnet_id = p_subnet and lx.state = 'free' and lx.pool and lx.address < start
              and (select nc.id from nics nc where nc.active and nc.ipv4 = lx.address) is null
            order by lx.address
            limit p_n;
    end if;
end
$$;

CREATE FUNCTION public.dhcp_view_leases_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
declare
    n bigint;
    payload text;
    payloads text[];
begin
    -- PostgreSQL's notification queue (8 GB) is only freed as far as its slowest listener has
    -- read, and a full queue fails every commit that notifies: a frozen listener (a stopped
    -- process, a paused VM) must not stop DHCP. Past half full, leases are not listed; the
    -- views see it (pg_notification_queue_usage) and leave every decision to the database.
    if pg_notification_queue_usage() >= 0.5 then
        return null;
    end if;
    -- A notification's payload holds at most 8,000 bytes: 200 rows each (a MAC and an address
    -- take at most 34). A statement that wrote more sends one per 200, up to 1,000 rows; past
    -- that, every view loads again. (A single list of 200 and a reload beyond it made a lease
    -- batch of over 200 REQUESTs reload every instance's view: reading every MAC the database
    -- knows, after most large batches, doubled the CPU per DORA of a saturated server,
    -- docs/benchmarks.md "DHCP, step 7".) One pass over the statement's rows, at most 1,001 of
    -- them, makes the lists and counts them.
    select array_agg(p.payload), coalesce(sum(p.n), 0) into payloads, n
    from (select string_agg(c.mac::text || ' ' || host(c.address), ',') as payload,
                 count(*) as n
          from (select ch.mac, ch.address, (row_number() over () - 1) / 200 as part
                from (select ch.mac, ch.address from changed ch
                      where ch.mac is not null and ch.state <> 'free' limit 1001) ch) c
          group by c.part) p;
    if n > 1000 then
        perform pg_notify('dhcp_view', 'reload');
        return null;
    end if;
    if n > 0 then
        foreach payload in array payloads loop
            perform pg_notify('dhcp_view', 'l ' || payload);
        end loop;
    end if;
    return null;
end
$$;

CREATE FUNCTION public.dhcp_view_nics_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    perform pg_notify('dhcp_view', 'n ' || new.mac::text || ' ' || coalesce(host(new.ipv4), '-'));
    return null;
end
$$;

CREATE FUNCTION public.dhcp_view_reload_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    perform pg_notify('dhcp_view', 'reload');
    return null;
end
$$;

CREATE FUNCTION public.events_append_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    raise exception 'events are append-only' using errcode = 'insufficient_privilege';
end
$$;

CREATE FUNCTION public.events_feed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    if not exists (select 1 from new_events) then
        return null;
    end if;
    insert into webhook_deliveries (webhook_id, event_id, machine_key, txid)
    select w.id, n.id, coalesce(n.machine_id, '00000000-0000-0000-0000-000000000000'::uuid),
           coalesce(n.txid, pg_current_xact_id())
    from new_events n
    join webhooks w on w.kinds is null or n.kind = any (w.kinds);
    -- The webhook workers wake only for a delivery queued: every instance runs one, and a
    -- wake-up is a claim query each (with no webhook, a storm's every batch woke them all).
    if found then
        perform pg_notify('webhooks', '');
    end if;
    perform pg_notify('events', '');
    return null;
end
$$;

CREATE FUNCTION public.leases_set_bound_at() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    new.bound_at := now();
    return new;
end
$$;

CREATE FUNCTION public.machines_check_rack_fit() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
declare
    rack_height integer;
begin
    if new.rack_id is null then
        return new;
    end if;
    select height_u into rack_height from racks where id = new.rack_id;
    if new.rack_unit + new.size_u - 1 > rack_height then
        raise exception 'machine at U% with height %U does not fit in a %U rack',
            new.rack_unit, new.size_u, rack_height
            using errcode = 'check_violation', constraint = 'machines_rack_fit';
    end if;
    return new;
end
$$;

CREATE FUNCTION public.racks_check_height() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    if exists (
        select 1 from machines
        where rack_id = new.id and rack_unit + size_u - 1 > new.height_u
    ) then
        raise exception 'rack % holds machines above U%', new.name, new.height_u
            using errcode = 'check_violation', constraint = 'racks_height_holds_machines';
    end if;
    return new;
end
$$;

CREATE FUNCTION public.subnet_ranges_check() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
declare
    net cidr;
begin
    select cidr into net from subnets where id = new.subnet_id;
    if not (new.first_addr << net and new.last_addr << net) then
        raise exception 'range %-% is outside %', host(new.first_addr), host(new.last_addr), net
            using errcode = 'check_violation', constraint = 'subnet_ranges_inside';
    end if;
    if exists (select 1 from subnet_ranges r where r.subnet_id = new.subnet_id and r.id <> new.id
               and r.first_addr <= new.last_addr and new.first_addr <= r.last_addr) then
        raise exception 'range %-% overlaps another range of the subnet', host(new.first_addr), host(new.last_addr)
            using errcode = 'check_violation', constraint = 'subnet_ranges_overlap';
    end if;
    return new;
end
$$;

CREATE TABLE public.agent_tokens (
    secret_sha256 bytea NOT NULL,
    machine_id uuid NOT NULL,
    mode text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    used_at timestamp with time zone,
    bound_ip inet,
    revoked_at timestamp with time zone,
    revoked_reason text,
    prev_sha256 bytea,
    prev_expires_at timestamp with time zone,
    prev_used_at timestamp with time zone,
    prev_revoked_at timestamp with time zone,
    prev_revoked_reason text,
    CONSTRAINT agent_tokens_mode_check CHECK ((mode = ANY (ARRAY['inspect'::text, 'clean'::text, 'deploy'::text]))),
    CONSTRAINT agent_tokens_prev_revoked_reason_check CHECK ((length(prev_revoked_reason) <= 200)),
    CONSTRAINT agent_tokens_prev_sha256_check CHECK (((prev_sha256 IS NULL) OR (length(prev_sha256) = 32))),
    CONSTRAINT agent_tokens_revoked_reason_check CHECK ((length(revoked_reason) <= 200)),
    CONSTRAINT agent_tokens_secret_sha256_check CHECK ((length(secret_sha256) = 32))
)
WITH (fillfactor='50');

CREATE TABLE public.allocations (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    owner text NOT NULL,
    owner_token_id uuid,
    request jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    released_at timestamp with time zone
);

CREATE TABLE public.api_tokens (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text NOT NULL,
    role text NOT NULL,
    secret_sha256 bytea NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    last_used_at timestamp with time zone,
    revoked_at timestamp with time zone,
    expires_at timestamp with time zone,
    CONSTRAINT api_tokens_expiry_after_creation CHECK (((expires_at IS NULL) OR (expires_at > created_at))),
    CONSTRAINT api_tokens_name_check CHECK ((name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$'::text)),
    CONSTRAINT api_tokens_role_check CHECK ((role = ANY (ARRAY['admin'::text, 'operator'::text, 'client'::text, 'viewer'::text]))),
    CONSTRAINT api_tokens_secret_sha256_check CHECK ((length(secret_sha256) = 32))
);

CREATE TABLE public.bios_profiles (
    name text NOT NULL,
    attributes jsonb NOT NULL,
    created_by text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT bios_profiles_attributes_check CHECK (((jsonb_typeof(attributes) = 'object'::text) AND (attributes <> '{}'::jsonb))),
    CONSTRAINT bios_profiles_name_check CHECK ((name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'::text))
);

CREATE TABLE public.bmc_consoles (
    machine_id uuid NOT NULL,
    address text NOT NULL,
    username text,
    password_nonce bytea,
    password_ciphertext bytea,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT bmc_consoles_address_check CHECK (((address <> ''::text) AND (length(address) <= 255))),
    CONSTRAINT bmc_consoles_password_nonce_check CHECK ((length(password_nonce) = 12)),
    CONSTRAINT bmc_consoles_password_whole CHECK (((password_nonce IS NULL) = (password_ciphertext IS NULL))),
    CONSTRAINT bmc_consoles_username_check CHECK ((length(username) <= 64))
);

CREATE TABLE public.bmc_scan_results (
    scan_id uuid NOT NULL,
    address text NOT NULL,
    protocol text NOT NULL,
    vendor text,
    serial text,
    uuid uuid,
    macs text[] DEFAULT '{}'::text[] NOT NULL,
    credential_username text,
    machine_id uuid,
    found_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT bmc_scan_results_address_check CHECK ((length(address) <= 255)),
    CONSTRAINT bmc_scan_results_protocol_check CHECK ((protocol = ANY (ARRAY['redfish'::text, 'ipmi'::text])))
);

CREATE TABLE public.bmc_scans (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    cidr text NOT NULL,
    redfish_ports integer[] NOT NULL,
    ipmi_ports integer[] NOT NULL,
    rate integer NOT NULL,
    addresses integer NOT NULL,
    state text DEFAULT 'queued'::text NOT NULL,
    requested_by text NOT NULL,
    worker text,
    lease_until timestamp with time zone,
    error text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    CONSTRAINT bmc_scans_addresses_check CHECK (((addresses >= 1) AND (addresses <= 1024))),
    CONSTRAINT bmc_scans_cidr_check CHECK ((length(cidr) <= 64)),
    CONSTRAINT bmc_scans_rate_check CHECK (((rate >= 1) AND (rate <= 1000))),
    CONSTRAINT bmc_scans_state_check CHECK ((state = ANY (ARRAY['queued'::text, 'running'::text, 'done'::text, 'failed'::text])))
);

CREATE TABLE public.bmcs (
    machine_id uuid NOT NULL,
    protocol text NOT NULL,
    address text NOT NULL,
    username text NOT NULL,
    password_nonce bytea NOT NULL,
    password_ciphertext bytea NOT NULL,
    verify_tls boolean DEFAULT true NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    power_state text,
    power_checked_at timestamp with time zone,
    reachable boolean,
    consecutive_failures integer DEFAULT 0 NOT NULL,
    last_error text,
    next_poll_at timestamp with time zone DEFAULT now() NOT NULL,
    identity jsonb,
    identity_at timestamp with time zone,
    plain_http boolean DEFAULT false NOT NULL,
    health text,
    health_components jsonb,
    health_checked_at timestamp with time zone,
    next_health_at timestamp with time zone DEFAULT now() NOT NULL,
    log_cursor text,
    log_checked_at timestamp with time zone,
    staged_password_nonce bytea,
    staged_password_ciphertext bytea,
    staged_at timestamp with time zone,
    password_rotated_at timestamp with time zone,
    CONSTRAINT bmcs_address_check CHECK (((address <> ''::text) AND (length(address) <= 255))),
    CONSTRAINT bmcs_consecutive_failures_check CHECK ((consecutive_failures >= 0)),
    CONSTRAINT bmcs_health_check CHECK ((health = ANY (ARRAY['unknown'::text, 'ok'::text, 'warning'::text, 'critical'::text]))),
    CONSTRAINT bmcs_health_components_check CHECK ((jsonb_typeof(health_components) = 'array'::text)),
    CONSTRAINT bmcs_log_cursor_check CHECK ((length(log_cursor) <= 262144)),
    CONSTRAINT bmcs_password_nonce_check CHECK ((length(password_nonce) = 12)),
    CONSTRAINT bmcs_power_state_check CHECK ((power_state = ANY (ARRAY['on'::text, 'off'::text, 'powering_on'::text, 'powering_off'::text]))),
    CONSTRAINT bmcs_protocol_check CHECK ((protocol = ANY (ARRAY['redfish'::text, 'ipmi'::text]))),
    CONSTRAINT bmcs_staged_password_nonce_check CHECK ((length(staged_password_nonce) = 12)),
    CONSTRAINT bmcs_staged_whole CHECK ((((staged_password_nonce IS NULL) = (staged_password_ciphertext IS NULL)) AND ((staged_password_nonce IS NULL) = (staged_at IS NULL)))),
    CONSTRAINT bmcs_username_check CHECK ((length(username) <= 64))
);

CREATE TABLE public.boot_windows (
    machine_id uuid NOT NULL,
    started_at timestamp with time zone NOT NULL,
    requests integer NOT NULL,
    CONSTRAINT boot_windows_requests_check CHECK ((requests >= 1))
);

CREATE TABLE public.console_chunks (
    machine_id uuid NOT NULL,
    seq bigint NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    data bytea NOT NULL,
    CONSTRAINT console_chunks_data_check CHECK (((length(data) >= 1) AND (length(data) <= 1048576)))
);

ALTER TABLE public.console_chunks ALTER COLUMN seq ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.console_chunks_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.console_leases (
    machine_id uuid NOT NULL,
    holder uuid NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    taken_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE public.deployments (
    machine_id uuid NOT NULL,
    allocation_id uuid NOT NULL,
    image_id uuid NOT NULL,
    root_device text NOT NULL,
    root_device_hint jsonb,
    instance_id uuid DEFAULT gen_random_uuid() NOT NULL,
    hostname text,
    user_data text,
    ssh_authorized_keys text[] DEFAULT '{}'::text[] NOT NULL,
    network_config text,
    created_by text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT deployments_hostname_check CHECK ((length(hostname) <= 253)),
    CONSTRAINT deployments_network_config_check CHECK ((length(network_config) <= 65536)),
    CONSTRAINT deployments_root_device_check CHECK ((root_device ~ '^[A-Za-z0-9._-]{1,64}$'::text)),
    CONSTRAINT deployments_user_data_check CHECK ((length(user_data) <= 65536))
);

CREATE TABLE public.events (
    id bigint NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    actor text NOT NULL,
    machine_id uuid,
    kind text NOT NULL,
    from_state text,
    to_state text,
    details jsonb DEFAULT '{}'::jsonb NOT NULL,
    txid xid8 DEFAULT pg_current_xact_id()
);

ALTER TABLE public.events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.file_fetches (
    address inet NOT NULL,
    protocol text NOT NULL,
    mac macaddr NOT NULL,
    path text NOT NULL,
    bytes_sent bigint NOT NULL,
    size bigint NOT NULL,
    complete boolean NOT NULL,
    at timestamp with time zone NOT NULL,
    CONSTRAINT file_fetches_address_check CHECK (((family(address) = 4) AND (masklen(address) = 32))),
    CONSTRAINT file_fetches_bytes_sent_check CHECK ((bytes_sent >= 0)),
    CONSTRAINT file_fetches_path_check CHECK ((length(path) <= 512)),
    CONSTRAINT file_fetches_protocol_check CHECK ((protocol = ANY (ARRAY['tftp'::text, 'http'::text]))),
    CONSTRAINT file_fetches_size_check CHECK ((size >= 0))
);

CREATE TABLE public.firmware_images (
    image_id uuid NOT NULL,
    component text NOT NULL,
    version text NOT NULL,
    described_by text NOT NULL,
    described_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT firmware_images_component_check CHECK ((component = ANY (ARRAY['bmc'::text, 'bios'::text, 'nic'::text, 'drive'::text, 'other'::text]))),
    CONSTRAINT firmware_images_version_check CHECK ((version ~ '^[A-Za-z0-9][A-Za-z0-9._+:-]{0,63}$'::text))
);

CREATE TABLE public.firmware_rollout_machines (
    rollout_id uuid NOT NULL,
    machine_id uuid NOT NULL,
    rack_id uuid,
    "position" integer NOT NULL,
    state text DEFAULT 'pending'::text NOT NULL,
    job_id uuid,
    error text,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT firmware_rollout_machines_error_check CHECK ((length(error) <= 2000)),
    CONSTRAINT firmware_rollout_machines_position_check CHECK (("position" >= 0)),
    CONSTRAINT firmware_rollout_machines_state_check CHECK ((state = ANY (ARRAY['pending'::text, 'running'::text, 'succeeded'::text, 'failed'::text, 'skipped'::text])))
);

CREATE TABLE public.firmware_rollouts (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    image_id uuid NOT NULL,
    max_per_rack integer NOT NULL,
    state text DEFAULT 'running'::text NOT NULL,
    reason text,
    created_by text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    CONSTRAINT firmware_rollouts_check CHECK (((state = 'running'::text) = (finished_at IS NULL))),
    CONSTRAINT firmware_rollouts_max_per_rack_check CHECK (((max_per_rack >= 1) AND (max_per_rack <= 1000))),
    CONSTRAINT firmware_rollouts_reason_check CHECK ((length(reason) <= 2000)),
    CONSTRAINT firmware_rollouts_state_check CHECK ((state = ANY (ARRAY['running'::text, 'succeeded'::text, 'failed'::text, 'cancelled'::text])))
);

CREATE TABLE public.images (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text NOT NULL,
    kind text NOT NULL,
    arch text NOT NULL,
    path text NOT NULL,
    size bigint NOT NULL,
    sha256 text NOT NULL,
    source text NOT NULL,
    created_by text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    firmware text,
    raw_size bigint,
    raw_sha256 text,
    CONSTRAINT images_arch_check CHECK ((arch = ANY (ARRAY['x86_64'::text, 'aarch64'::text, 'any'::text]))),
    CONSTRAINT images_firmware_check CHECK ((firmware = ANY (ARRAY['bios'::text, 'uefi'::text, 'both'::text]))),
    CONSTRAINT images_kind_check CHECK ((kind = ANY (ARRAY['ipxe'::text, 'kernel'::text, 'initrd'::text, 'rootfs'::text, 'disk-image'::text, 'firmware'::text]))),
    CONSTRAINT images_name_check CHECK ((name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'::text)),
    CONSTRAINT images_path_check CHECK (((length(path) >= 1) AND (length(path) <= 255))),
    CONSTRAINT images_raw_sha256_check CHECK ((raw_sha256 ~ '^[0-9a-f]{64}$'::text)),
    CONSTRAINT images_raw_size_check CHECK ((raw_size >= 0)),
    CONSTRAINT images_sha256_check CHECK ((sha256 ~ '^[0-9a-f]{64}$'::text)),
    CONSTRAINT images_size_check CHECK ((size >= 0)),
    CONSTRAINT images_source_check CHECK ((source = ANY (ARRAY['registered'::text, 'uploaded'::text])))
);

CREATE TABLE public.jobs (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    seq bigint NOT NULL,
    machine_id uuid NOT NULL,
    kind text NOT NULL,
    params jsonb DEFAULT '{}'::jsonb NOT NULL,
    state text DEFAULT 'queued'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer DEFAULT 5 NOT NULL,
    not_before timestamp with time zone DEFAULT now() NOT NULL,
    lease_until timestamp with time zone,
    worker text,
    last_error text,
    result jsonb,
    chain uuid,
    requested_by text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT jobs_attempts_check CHECK ((attempts >= 0)),
    CONSTRAINT jobs_finished_at CHECK (((state = ANY (ARRAY['succeeded'::text, 'failed'::text, 'cancelled'::text])) = (finished_at IS NOT NULL))),
    CONSTRAINT jobs_kind_check CHECK ((kind = ANY (ARRAY['power'::text, 'boot_device'::text, 'identify'::text, 'retire'::text, 'vmedia_boot'::text, 'vmedia_eject'::text, 'bios_apply'::text, 'bios_read'::text, 'firmware_update'::text, 'firmware_read'::text, 'rotate_credentials'::text]))),
    CONSTRAINT jobs_max_attempts_check CHECK (((max_attempts >= 1) AND (max_attempts <= 100))),
    CONSTRAINT jobs_running_lease CHECK (((state = 'running'::text) = (lease_until IS NOT NULL))),
    CONSTRAINT jobs_state_check CHECK ((state = ANY (ARRAY['queued'::text, 'running'::text, 'succeeded'::text, 'failed'::text, 'cancelled'::text])))
);

ALTER TABLE public.jobs ALTER COLUMN seq ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.jobs_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.leases (
    address inet NOT NULL,
    subnet_id uuid NOT NULL,
    pool boolean DEFAULT true NOT NULL,
    state text DEFAULT 'free'::text NOT NULL,
    mac macaddr,
    client_id bytea,
    hostname text,
    expires_at timestamp with time zone,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    bound_at timestamp with time zone,
    CONSTRAINT leases_address_check CHECK (((family(address) = 4) AND (masklen(address) = 32))),
    CONSTRAINT leases_check CHECK (((state = 'free'::text) OR (expires_at IS NOT NULL))),
    CONSTRAINT leases_check1 CHECK (((state <> ALL (ARRAY['offered'::text, 'bound'::text])) OR (mac IS NOT NULL))),
    CONSTRAINT leases_state_check CHECK ((state = ANY (ARRAY['free'::text, 'offered'::text, 'bound'::text, 'declined'::text])))
);

CREATE TABLE public.machine_bios (
    machine_id uuid NOT NULL,
    attributes jsonb NOT NULL,
    pending jsonb DEFAULT '{}'::jsonb NOT NULL,
    registry jsonb,
    read_at timestamp with time zone DEFAULT now() NOT NULL,
    job_id uuid,
    CONSTRAINT machine_bios_attributes_check CHECK ((jsonb_typeof(attributes) = 'object'::text)),
    CONSTRAINT machine_bios_pending_check CHECK ((jsonb_typeof(pending) = 'object'::text)),
    CONSTRAINT machine_bios_registry_check CHECK ((jsonb_typeof(registry) = 'object'::text))
);

CREATE TABLE public.machine_firmware (
    machine_id uuid NOT NULL,
    items jsonb NOT NULL,
    read_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT machine_firmware_items_check CHECK ((jsonb_typeof(items) = 'array'::text))
);

CREATE TABLE public.machines (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    hostname text,
    rack_id uuid,
    rack_unit integer,
    size_u integer DEFAULT 1 NOT NULL,
    pool text DEFAULT 'default'::text NOT NULL,
    tags text[] DEFAULT '{}'::text[] NOT NULL,
    arch text,
    facts jsonb DEFAULT '{}'::jsonb NOT NULL,
    state text NOT NULL,
    state_version bigint DEFAULT 1 NOT NULL,
    state_changed_at timestamp with time zone DEFAULT now() NOT NULL,
    state_reason text,
    maintenance boolean DEFAULT false NOT NULL,
    maintenance_reason text,
    allocation_id uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    pxe_arch integer,
    pxe_uuid uuid,
    discovered_subnet_id uuid,
    boot_file text,
    boot_method text,
    CONSTRAINT machines_allocation_state CHECK (((allocation_id IS NOT NULL) = (state = ANY (ARRAY['allocated'::text, 'deploying'::text, 'deployed'::text, 'deploy_failed'::text])))),
    CONSTRAINT machines_arch_check CHECK ((arch = ANY (ARRAY['x86_64'::text, 'aarch64'::text]))),
    CONSTRAINT machines_boot_file_check CHECK ((length(boot_file) <= 255)),
    CONSTRAINT machines_boot_method_check CHECK ((boot_method = ANY (ARRAY['network'::text, 'virtual_media'::text]))),
    CONSTRAINT machines_decommissioned_unracked CHECK (((state <> 'decommissioned'::text) OR (rack_id IS NULL))),
    CONSTRAINT machines_hostname_check CHECK (((length(hostname) <= 253) AND (hostname ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$'::text))),
    CONSTRAINT machines_maintenance_reason CHECK ((maintenance OR (maintenance_reason IS NULL))),
    CONSTRAINT machines_pool_check CHECK ((pool ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'::text)),
    CONSTRAINT machines_rack_position CHECK (((rack_id IS NULL) = (rack_unit IS NULL))),
    CONSTRAINT machines_rack_unit_check CHECK ((rack_unit >= 1)),
    CONSTRAINT machines_size_u_check CHECK (((size_u >= 1) AND (size_u <= 100))),
    CONSTRAINT machines_state_check CHECK ((state = ANY (ARRAY['discovered'::text, 'enrolled'::text, 'inspecting'::text, 'inspect_failed'::text, 'ready'::text, 'allocated'::text, 'deploying'::text, 'deployed'::text, 'deploy_failed'::text, 'cleaning'::text, 'clean_failed'::text, 'decommissioning'::text, 'decommissioned'::text]))),
    CONSTRAINT machines_state_version_check CHECK ((state_version >= 1))
);

CREATE TABLE public.nics (
    id bigint NOT NULL,
    machine_id uuid NOT NULL,
    mac macaddr NOT NULL,
    ipv4 inet,
    pxe boolean DEFAULT false NOT NULL,
    active boolean DEFAULT true NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT nics_ipv4_check CHECK (((family(ipv4) = 4) AND (masklen(ipv4) = 32)))
);

ALTER TABLE public.nics ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.nics_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.pools (
    name text NOT NULL,
    wipe_method text,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    bios_profile text,
    CONSTRAINT pools_name_check CHECK (((length(name) >= 1) AND (length(name) <= 63))),
    CONSTRAINT pools_wipe_method_check CHECK ((wipe_method = ANY (ARRAY['quick'::text, 'discard'::text, 'secure'::text, 'full'::text])))
);

CREATE TABLE public.racks (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text NOT NULL,
    site text,
    room text,
    row_name text,
    height_u integer NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    boot_method text DEFAULT 'network'::text NOT NULL,
    CONSTRAINT racks_boot_method_check CHECK ((boot_method = ANY (ARRAY['network'::text, 'virtual_media'::text]))),
    CONSTRAINT racks_height_u_check CHECK (((height_u >= 1) AND (height_u <= 100))),
    CONSTRAINT racks_name_check CHECK ((name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'::text))
);

CREATE TABLE public.subnet_ranges (
    id bigint NOT NULL,
    subnet_id uuid NOT NULL,
    first_addr inet NOT NULL,
    last_addr inet NOT NULL,
    CONSTRAINT subnet_ranges_check CHECK ((first_addr <= last_addr)),
    CONSTRAINT subnet_ranges_first_addr_check CHECK (((family(first_addr) = 4) AND (masklen(first_addr) = 32))),
    CONSTRAINT subnet_ranges_last_addr_check CHECK (((family(last_addr) = 4) AND (masklen(last_addr) = 32)))
);

ALTER TABLE public.subnet_ranges ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.subnet_ranges_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.subnets (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    cidr cidr NOT NULL,
    router inet,
    dns_servers inet[] DEFAULT '{}'::inet[] NOT NULL,
    domain text,
    lease_time integer DEFAULT 3600 NOT NULL,
    boot_server inet,
    relay_addresses inet[] DEFAULT '{}'::inet[] NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    relay_any_in_cidr boolean DEFAULT false NOT NULL,
    CONSTRAINT subnets_boot_server_check CHECK (((family(boot_server) = 4) AND (masklen(boot_server) = 32))),
    CONSTRAINT subnets_cidr_check CHECK (((family((cidr)::inet) = 4) AND ((masklen((cidr)::inet) >= 8) AND (masklen((cidr)::inet) <= 30)))),
    CONSTRAINT subnets_domain_check CHECK ((length(domain) <= 253)),
    CONSTRAINT subnets_lease_time_check CHECK (((lease_time >= 60) AND (lease_time <= 31536000))),
    CONSTRAINT subnets_router_check CHECK (((family(router) = 4) AND (masklen(router) = 32)))
);

CREATE TABLE public.ui_sessions (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    secret_sha256 bytea NOT NULL,
    user_id uuid NOT NULL,
    csrf_token text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    last_seen_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    max_expires_at timestamp with time zone NOT NULL,
    CONSTRAINT ui_sessions_check CHECK ((expires_at <= max_expires_at)),
    CONSTRAINT ui_sessions_csrf_token_check CHECK ((length(csrf_token) >= 32)),
    CONSTRAINT ui_sessions_secret_sha256_check CHECK ((length(secret_sha256) = 32))
);

CREATE TABLE public.users (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    username text NOT NULL,
    role text NOT NULL,
    password_hash text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    disabled_at timestamp with time zone,
    last_login_at timestamp with time zone,
    failed_logins integer DEFAULT 0 NOT NULL,
    locked_until timestamp with time zone,
    CONSTRAINT users_failed_logins_check CHECK ((failed_logins >= 0)),
    CONSTRAINT users_password_hash_check CHECK ((password_hash ~~ '$argon2id$%'::text)),
    CONSTRAINT users_role_check CHECK ((role = ANY (ARRAY['admin'::text, 'operator'::text, 'client'::text, 'viewer'::text]))),
    CONSTRAINT users_username_check CHECK ((username ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'::text))
);

CREATE TABLE public.vmedia_boots (
    id_sha256 bytea NOT NULL,
    machine_id uuid NOT NULL,
    token_sha256 bytea NOT NULL,
    mode text NOT NULL,
    sealed_config bytea NOT NULL,
    static_ip inet,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    fetches integer DEFAULT 0 NOT NULL,
    last_fetched_at timestamp with time zone,
    CONSTRAINT vmedia_boots_fetches_check CHECK ((fetches >= 0)),
    CONSTRAINT vmedia_boots_id_sha256_check CHECK ((length(id_sha256) = 32)),
    CONSTRAINT vmedia_boots_mode_check CHECK ((mode = ANY (ARRAY['inspect'::text, 'clean'::text, 'deploy'::text]))),
    CONSTRAINT vmedia_boots_sealed_config_check CHECK (((length(sealed_config) >= 28) AND (length(sealed_config) <= 16384))),
    CONSTRAINT vmedia_boots_static_ip_check CHECK (((static_ip IS NULL) OR ((family(static_ip) = 4) AND (masklen(static_ip) = 32))))
);

CREATE TABLE public.webhook_deliveries (
    webhook_id uuid NOT NULL,
    event_id bigint NOT NULL,
    machine_key uuid NOT NULL,
    txid xid8 NOT NULL,
    state text DEFAULT 'pending'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    first_attempt_at timestamp with time zone,
    next_attempt_at timestamp with time zone DEFAULT now() NOT NULL,
    lease_until timestamp with time zone,
    last_status integer,
    last_error text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    CONSTRAINT webhook_deliveries_state_check CHECK ((state = ANY (ARRAY['pending'::text, 'delivered'::text, 'dead'::text])))
);

CREATE TABLE public.webhooks (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    url text NOT NULL,
    kinds text[],
    secret_nonce bytea NOT NULL,
    secret_ciphertext bytea NOT NULL,
    created_by text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT webhooks_kinds_check CHECK (((kinds IS NULL) OR (cardinality(kinds) > 0))),
    CONSTRAINT webhooks_url_check CHECK (((url ~ '^https?://'::text) AND (length(url) <= 2048)))
);

ALTER TABLE ONLY public.agent_tokens
    ADD CONSTRAINT agent_tokens_pkey PRIMARY KEY (machine_id, mode);

ALTER TABLE ONLY public.allocations
    ADD CONSTRAINT allocations_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.api_tokens
    ADD CONSTRAINT api_tokens_name_key UNIQUE (name);

ALTER TABLE ONLY public.api_tokens
    ADD CONSTRAINT api_tokens_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.api_tokens
    ADD CONSTRAINT api_tokens_secret_sha256_key UNIQUE (secret_sha256);

ALTER TABLE ONLY public.bios_profiles
    ADD CONSTRAINT bios_profiles_pkey PRIMARY KEY (name);

ALTER TABLE ONLY public.bmc_consoles
    ADD CONSTRAINT bmc_consoles_pkey PRIMARY KEY (machine_id);

ALTER TABLE ONLY public.bmc_scan_results
    ADD CONSTRAINT bmc_scan_results_pkey PRIMARY KEY (scan_id, address, protocol);

ALTER TABLE ONLY public.bmc_scans
    ADD CONSTRAINT bmc_scans_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.bmcs
    ADD CONSTRAINT bmcs_pkey PRIMARY KEY (machine_id);

ALTER TABLE ONLY public.boot_windows
    ADD CONSTRAINT boot_windows_pkey PRIMARY KEY (machine_id);

ALTER TABLE ONLY public.console_chunks
    ADD CONSTRAINT console_chunks_pkey PRIMARY KEY (machine_id, seq);

ALTER TABLE ONLY public.console_leases
    ADD CONSTRAINT console_leases_pkey PRIMARY KEY (machine_id);

ALTER TABLE ONLY public.deployments
    ADD CONSTRAINT deployments_pkey PRIMARY KEY (machine_id);

ALTER TABLE ONLY public.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.file_fetches
    ADD CONSTRAINT file_fetches_pkey PRIMARY KEY (address, protocol);

ALTER TABLE ONLY public.firmware_images
    ADD CONSTRAINT firmware_images_pkey PRIMARY KEY (image_id);

ALTER TABLE ONLY public.firmware_rollout_machines
    ADD CONSTRAINT firmware_rollout_machines_pkey PRIMARY KEY (rollout_id, machine_id);

ALTER TABLE ONLY public.firmware_rollouts
    ADD CONSTRAINT firmware_rollouts_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.images
    ADD CONSTRAINT images_name_key UNIQUE (name);

ALTER TABLE ONLY public.images
    ADD CONSTRAINT images_path_key UNIQUE (path);

ALTER TABLE ONLY public.images
    ADD CONSTRAINT images_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_seq_key UNIQUE (seq);

ALTER TABLE ONLY public.leases
    ADD CONSTRAINT leases_pkey PRIMARY KEY (address);

ALTER TABLE ONLY public.machine_bios
    ADD CONSTRAINT machine_bios_pkey PRIMARY KEY (machine_id);

ALTER TABLE ONLY public.machine_firmware
    ADD CONSTRAINT machine_firmware_pkey PRIMARY KEY (machine_id);

ALTER TABLE ONLY public.machines
    ADD CONSTRAINT machines_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.machines
    ADD CONSTRAINT machines_rack_overlap EXCLUDE USING gist (rack_id WITH =, int4range(rack_unit, (rack_unit + size_u)) WITH &&) WHERE ((rack_id IS NOT NULL));

ALTER TABLE ONLY public.nics
    ADD CONSTRAINT nics_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.pools
    ADD CONSTRAINT pools_pkey PRIMARY KEY (name);

ALTER TABLE ONLY public.racks
    ADD CONSTRAINT racks_name_key UNIQUE (name);

ALTER TABLE ONLY public.racks
    ADD CONSTRAINT racks_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.subnet_ranges
    ADD CONSTRAINT subnet_ranges_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.subnets
    ADD CONSTRAINT subnets_overlap EXCLUDE USING gist (cidr inet_ops WITH &&);

ALTER TABLE ONLY public.subnets
    ADD CONSTRAINT subnets_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.ui_sessions
    ADD CONSTRAINT ui_sessions_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.ui_sessions
    ADD CONSTRAINT ui_sessions_secret_sha256_key UNIQUE (secret_sha256);

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_username_key UNIQUE (username);

ALTER TABLE ONLY public.vmedia_boots
    ADD CONSTRAINT vmedia_boots_pkey PRIMARY KEY (id_sha256);

ALTER TABLE ONLY public.webhook_deliveries
    ADD CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (webhook_id, event_id);

ALTER TABLE ONLY public.webhooks
    ADD CONSTRAINT webhooks_pkey PRIMARY KEY (id);

CREATE INDEX bmc_scans_queued_idx ON public.bmc_scans USING btree (created_at) WHERE (state = ANY (ARRAY['queued'::text, 'running'::text]));

CREATE INDEX bmcs_next_poll_idx ON public.bmcs USING btree (next_poll_at);

CREATE INDEX bmcs_serial_idx ON public.bmcs USING btree (((identity ->> 'serial'::text)));

CREATE INDEX bmcs_unhealthy ON public.bmcs USING btree (machine_id) WHERE (health = ANY (ARRAY['warning'::text, 'critical'::text]));

CREATE INDEX deployments_image_idx ON public.deployments USING btree (image_id);

CREATE UNIQUE INDEX deployments_instance_key ON public.deployments USING btree (instance_id);

CREATE INDEX events_at_idx ON public.events USING btree (at);

CREATE INDEX events_feed_idx ON public.events USING btree (COALESCE(txid, '0'::xid8), id);

CREATE INDEX events_machine_idx ON public.events USING btree (machine_id, id);

CREATE INDEX file_fetches_mac_idx ON public.file_fetches USING btree (mac);

CREATE INDEX firmware_rollout_machines_job_idx ON public.firmware_rollout_machines USING btree (job_id) WHERE (job_id IS NOT NULL);

CREATE INDEX firmware_rollouts_running_idx ON public.firmware_rollouts USING btree (created_at) WHERE (state = 'running'::text);

CREATE INDEX jobs_chain_idx ON public.jobs USING btree (chain) WHERE (chain IS NOT NULL);

CREATE INDEX jobs_lease_idx ON public.jobs USING btree (lease_until) WHERE (state = 'running'::text);

CREATE INDEX jobs_machine_idx ON public.jobs USING btree (machine_id, seq);

CREATE UNIQUE INDEX jobs_one_running_per_machine ON public.jobs USING btree (machine_id) WHERE (state = 'running'::text);

CREATE INDEX jobs_queued_idx ON public.jobs USING btree (seq) WHERE (state = 'queued'::text);

CREATE UNIQUE INDEX leases_client_key ON public.leases USING btree (subnet_id, mac) WHERE (state = ANY (ARRAY['offered'::text, 'bound'::text]));

CREATE INDEX leases_expiry_idx ON public.leases USING btree (expires_at) WHERE (state <> 'free'::text);

CREATE INDEX leases_free_idx ON public.leases USING btree (subnet_id, address) WHERE ((state = 'free'::text) AND pool);

CREATE INDEX leases_mac_idx ON public.leases USING btree (mac);

CREATE INDEX machine_firmware_items_idx ON public.machine_firmware USING gin (items jsonb_path_ops);

CREATE INDEX machines_allocation_idx ON public.machines USING btree (allocation_id) WHERE (allocation_id IS NOT NULL);

CREATE INDEX machines_hostname_idx ON public.machines USING btree (hostname, id);

CREATE UNIQUE INDEX machines_hostname_key ON public.machines USING btree (hostname) WHERE ((hostname IS NOT NULL) AND (state <> 'decommissioned'::text));

CREATE INDEX machines_hostname_trgm ON public.machines USING gin (hostname public.gin_trgm_ops);

CREATE INDEX machines_pool_idx ON public.machines USING btree (pool, id);

CREATE INDEX machines_rack_idx ON public.machines USING btree (rack_id) WHERE (rack_id IS NOT NULL);

CREATE INDEX machines_serial_idx ON public.machines USING btree ((((facts -> 'system'::text) ->> 'serial'::text)));

CREATE INDEX machines_state_idx ON public.machines USING btree (state, id);

CREATE INDEX machines_tags_idx ON public.machines USING gin (tags);

CREATE UNIQUE INDEX nics_ipv4_key ON public.nics USING btree (ipv4) WHERE (active AND (ipv4 IS NOT NULL));

CREATE INDEX nics_mac_all_idx ON public.nics USING btree (mac);

CREATE UNIQUE INDEX nics_mac_key ON public.nics USING btree (mac) WHERE active;

CREATE INDEX nics_machine_idx ON public.nics USING btree (machine_id);

CREATE INDEX subnet_ranges_subnet_idx ON public.subnet_ranges USING btree (subnet_id);

CREATE INDEX ui_sessions_expiry ON public.ui_sessions USING btree (max_expires_at);

CREATE INDEX ui_sessions_user ON public.ui_sessions USING btree (user_id);

CREATE INDEX vmedia_boots_machine_idx ON public.vmedia_boots USING btree (machine_id);

CREATE INDEX vmedia_boots_token_idx ON public.vmedia_boots USING btree (token_sha256);

CREATE INDEX webhook_deliveries_finished_idx ON public.webhook_deliveries USING btree (finished_at) WHERE (state <> 'pending'::text);

CREATE INDEX webhook_deliveries_queue_idx ON public.webhook_deliveries USING btree (webhook_id, machine_key, txid, event_id) WHERE (state = 'pending'::text);

CREATE TRIGGER agent_tokens_replace BEFORE INSERT ON public.agent_tokens FOR EACH ROW EXECUTE FUNCTION public.agent_tokens_replace();

CREATE TRIGGER events_feed AFTER INSERT ON public.events REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION public.events_feed();

CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON public.events FOR EACH STATEMENT EXECUTE FUNCTION public.events_append_only();

CREATE TRIGGER events_no_update BEFORE DELETE OR UPDATE ON public.events FOR EACH ROW EXECUTE FUNCTION public.events_append_only();

CREATE TRIGGER leases_bound_on_insert BEFORE INSERT ON public.leases FOR EACH ROW WHEN ((new.state = 'bound'::text)) EXECUTE FUNCTION public.leases_set_bound_at();

CREATE TRIGGER leases_bound_on_update BEFORE UPDATE ON public.leases FOR EACH ROW WHEN (((new.state = 'bound'::text) AND ((old.state IS DISTINCT FROM 'bound'::text) OR (new.expires_at IS DISTINCT FROM old.expires_at)) AND (NOT (new.bound_at IS DISTINCT FROM old.bound_at)))) EXECUTE FUNCTION public.leases_set_bound_at();

CREATE TRIGGER leases_view_on_insert AFTER INSERT ON public.leases REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION public.dhcp_view_leases_notify();

CREATE TRIGGER leases_view_on_update AFTER UPDATE ON public.leases REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION public.dhcp_view_leases_notify();

CREATE TRIGGER machines_rack_fit BEFORE INSERT OR UPDATE OF rack_id, rack_unit, size_u ON public.machines FOR EACH ROW EXECUTE FUNCTION public.machines_check_rack_fit();

CREATE TRIGGER machines_state_revokes_agent_tokens AFTER UPDATE OF state ON public.machines FOR EACH ROW WHEN ((old.state IS DISTINCT FROM new.state)) EXECUTE FUNCTION public.agent_tokens_revoke_on_state_change();

CREATE TRIGGER nics_view AFTER INSERT OR UPDATE OF mac, ipv4, active ON public.nics FOR EACH ROW EXECUTE FUNCTION public.dhcp_view_nics_notify();

CREATE TRIGGER racks_height BEFORE UPDATE OF height_u ON public.racks FOR EACH ROW EXECUTE FUNCTION public.racks_check_height();

CREATE TRIGGER subnet_ranges_check BEFORE INSERT OR UPDATE ON public.subnet_ranges FOR EACH ROW EXECUTE FUNCTION public.subnet_ranges_check();

CREATE TRIGGER subnet_ranges_view AFTER INSERT OR DELETE OR UPDATE ON public.subnet_ranges FOR EACH STATEMENT EXECUTE FUNCTION public.dhcp_view_reload_notify();

CREATE TRIGGER subnets_view AFTER INSERT OR DELETE OR UPDATE ON public.subnets FOR EACH STATEMENT EXECUTE FUNCTION public.dhcp_view_reload_notify();

ALTER TABLE ONLY public.agent_tokens
    ADD CONSTRAINT agent_tokens_machine_id_fkey FOREIGN KEY (machine_id) REFERENCES public.machines(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.allocations
    ADD CONSTRAINT allocations_owner_token_id_fkey FOREIGN KEY (owner_token_id) REFERENCES public.api_tokens(id);

ALTER TABLE ONLY public.bmc_consoles
    ADD CONSTRAINT bmc_consoles_machine_id_fkey FOREIGN KEY (machine_id) REFERENCES public.bmcs(machine_id) ON DELETE CASCADE;

ALTER TABLE ONLY public.bmc_scan_results
    ADD CONSTRAINT bmc_scan_results_machine_id_fkey FOREIGN KEY (machine_id) REFERENCES public.machines(id);

ALTER TABLE ONLY public.bmc_scan_results
    ADD CONSTRAINT bmc_scan_results_scan_id_fkey FOREIGN KEY (scan_id) REFERENCES public.bmc_scans(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.bmcs
    ADD CONSTRAINT bmcs_machine_id_fkey FOREIGN KEY (machine_id) REFERENCES public.machines(id);

ALTER TABLE ONLY public.boot_windows
    ADD CONSTRAINT boot_windows_machine_id_fkey FOREIGN KEY (machine_id) REFERENCES public.machines(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.console_chunks
    ADD CONSTRAINT console_chunks_machine_id_fkey FOREIGN KEY (machine_id) REFERENCES public.machines(id);

ALTER TABLE ONLY public.console_leases
    ADD CONSTRAINT console_leases_machine_id_fkey FOREIGN KEY (machine_id) REFERENCES public.machines(id);

ALTER TABLE ONLY public.deployments
    ADD CONSTRAINT deployments_allocation_id_fkey FOREIGN KEY (allocation_id) REFERENCES public.allocations(id);

ALTER TABLE ONLY public.deployments
    ADD CONSTRAINT deployments_image_id_fkey FOREIGN KEY (image_id) REFERENCES public.images(id);

ALTER TABLE ONLY public.deployments
    ADD CONSTRAINT deployments_machine_id_fkey FOREIGN KEY (machine_id) REFERENCES public.machines(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.events
    ADD CONSTRAINT events_machine_id_fkey FOREIGN KEY (machine_id) REFERENCES public.machines(id);

ALTER TABLE ONLY public.firmware_images
    ADD CONSTRAINT firmware_images_image_id_fkey FOREIGN KEY (image_id) REFERENCES public.images(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.firmware_rollout_machines
    ADD CONSTRAINT firmware_rollout_machines_job_id_fkey FOREIGN KEY (job_id) REFERENCES public.jobs(id);

ALTER TABLE ONLY public.firmware_rollout_machines
    ADD CONSTRAINT firmware_rollout_machines_machine_id_fkey FOREIGN KEY (machine_id) REFERENCES public.machines(id);

ALTER TABLE ONLY public.firmware_rollout_machines
    ADD CONSTRAINT firmware_rollout_machines_rollout_id_fkey FOREIGN KEY (rollout_id) REFERENCES public.firmware_rollouts(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.firmware_rollouts
    ADD CONSTRAINT firmware_rollouts_image_id_fkey FOREIGN KEY (image_id) REFERENCES public.images(id);

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_machine_id_fkey FOREIGN KEY (machine_id) REFERENCES public.machines(id);

ALTER TABLE ONLY public.leases
    ADD CONSTRAINT leases_subnet_id_fkey FOREIGN KEY (subnet_id) REFERENCES public.subnets(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.machine_bios
    ADD CONSTRAINT machine_bios_machine_id_fkey FOREIGN KEY (machine_id) REFERENCES public.machines(id);

ALTER TABLE ONLY public.machine_firmware
    ADD CONSTRAINT machine_firmware_machine_id_fkey FOREIGN KEY (machine_id) REFERENCES public.machines(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.machines
    ADD CONSTRAINT machines_allocation_id_fkey FOREIGN KEY (allocation_id) REFERENCES public.allocations(id);

ALTER TABLE ONLY public.machines
    ADD CONSTRAINT machines_discovered_subnet_id_fkey FOREIGN KEY (discovered_subnet_id) REFERENCES public.subnets(id) ON DELETE SET NULL;

ALTER TABLE ONLY public.machines
    ADD CONSTRAINT machines_rack_id_fkey FOREIGN KEY (rack_id) REFERENCES public.racks(id) ON DELETE RESTRICT;

ALTER TABLE ONLY public.nics
    ADD CONSTRAINT nics_machine_id_fkey FOREIGN KEY (machine_id) REFERENCES public.machines(id);

ALTER TABLE ONLY public.pools
    ADD CONSTRAINT pools_bios_profile_fkey FOREIGN KEY (bios_profile) REFERENCES public.bios_profiles(name) ON DELETE RESTRICT;

ALTER TABLE ONLY public.subnet_ranges
    ADD CONSTRAINT subnet_ranges_subnet_id_fkey FOREIGN KEY (subnet_id) REFERENCES public.subnets(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.ui_sessions
    ADD CONSTRAINT ui_sessions_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.vmedia_boots
    ADD CONSTRAINT vmedia_boots_machine_id_fkey FOREIGN KEY (machine_id) REFERENCES public.machines(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.webhook_deliveries
    ADD CONSTRAINT webhook_deliveries_event_id_fkey FOREIGN KEY (event_id) REFERENCES public.events(id);

ALTER TABLE ONLY public.webhook_deliveries
    ADD CONSTRAINT webhook_deliveries_webhook_id_fkey FOREIGN KEY (webhook_id) REFERENCES public.webhooks(id) ON DELETE CASCADE;

