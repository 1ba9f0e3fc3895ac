-- DHCP's rules and lease decisions.
--
-- Applied after the migrations at every start (plinth_db::migrate), under an advisory lock, in
-- one transaction: each statement must be idempotent (`create or replace`). During a rolling
-- upgrade the previous release's instances keep calling what they know (docs/ha.md): a function
-- whose arguments or result change gets a new signature, and the old one stays, as a wrapper
-- doing what it did, until the release after. (An added argument with a default is the same
-- function to old callers: the old signature is dropped, or calls to it would be ambiguous.)

-- A range must lie inside its subnet, and ranges of one subnet never overlap.
create or replace function subnet_ranges_check() returns trigger language plpgsql as $$
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
create or replace trigger subnet_ranges_check before insert or update on subnet_ranges
    for each row execute function subnet_ranges_check();

-- Lease decisions are a few index lookups per packet, planned with the statistics of a table
-- whose state column churns faster than ANALYZE can follow. Left alone, the planner costs them
-- high enough to JIT-compile (a second of compiling for a millisecond of work) and, believing
-- free addresses rare, fetches every address above the starting point by bitmap and sorts them
-- rather than walking the free-address index for the few it needs. Neither is ever right here:
-- both functions run with jit, bitmap scans and sorts off. The batch function's statements are
-- planned once per connection (generic plans): replanning them for every call took 1.1 ms of
-- the 1.7 ms a one-packet batch costs.

-- Where a walk for a free address of a subnet starts: a random address of its pool (one of its
-- ranges, each weighted by its size), or of the subnet when it has no range. Concurrent pickers
-- rarely meet on the same rows, and no walk always starts at the low end of the pool, where the
-- index entries churn until vacuum removes them. (Of the subnet rather than the pool, a pool
-- that is a small part of its subnet was nearly always entered at its first free address.)
-- (plpgsql, whose plan is kept per connection: PostgreSQL 15 plans a SQL function's body on
-- every call, which cost 0.2 ms per batch.)
create or replace function dhcp_pool_point(p_subnet uuid) returns inet
language plpgsql volatile as $$
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

-- One DHCP lease decision, in one round trip: find the subnet, the machine behind the MAC and its
-- reservation, then offer, bind, release or decline an address. Called once per packet, in its
-- own transaction, committed before the reply leaves.
--   p_op: discover | select | init_reboot | renew | select_other | release | decline | inform
--   p_match: giaddr for relayed requests, else the address of the interface the request came in on
--   p_addr: the requested address (option 50) or ciaddr, as the op needs
--   p_skip: addresses no DISCOVER may be offered: the instance's offers from memory to other
--           clients (see dhcp_lease_batch), which the table does not show
drop function if exists dhcp_lease(text, inet, boolean, macaddr, inet, bytea, text, integer, integer);
create or replace function dhcp_lease(
    p_op text,
    p_match inet,
    p_relayed boolean,
    p_mac macaddr,
    p_addr inet,
    p_client_id bytea,
    p_hostname text,
    p_offer_secs integer,
    p_quarantine_secs integer,
    p_skip inet[] default '{}'
) returns table (
    outcome text,
    address inet,
    lease_secs integer,
    subnet_id uuid,
    cidr cidr,
    router inet,
    dns_servers inet[],
    domain text,
    boot_server inet,
    machine_id uuid,
    machine_state text,
    boot_file text,
    reason text
) language plpgsql set jit = off set enable_bitmapscan = off set enable_sort = off as $$
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

-- Lease decisions in batches: one round trip and one transaction for every packet that arrived
-- while the previous batch was in the database. The common steps of a boot storm are done for
-- the whole batch in a few set-based statements:
--   bind     a REQUEST (selecting, init-reboot, renewing) for the address this client holds or
--            was offered, or for a free one
--   again    a DISCOVER from a client with a lease row: that address again
--   held     a DISCOVER from a client this instance offered an address from memory: that one
--   new      a DISCOVER from a client the subnet has never seen: the next free addresses
-- and everything else (reservations, requested addresses, NAKs, RELEASE, DECLINE, INFORM, a
-- client sending twice in one batch, a pool running dry) goes through `dhcp_lease`, one item at
-- a time, in arrival order, after the set-based steps. Results are one row per item (`i`, from 1),
-- as `dhcp_lease` would have answered, except that a relayed item whose relay no subnet accepts
-- is answered 'refused' and nothing is written for it (callers before 2026-12-07 filtered those
-- out first, with a query of their own). The constraints that make leases safe to share (the
-- primary key on the address, leases_client_key) are the same. Batches of several instances
-- take a lock per client first, so they do not race for one client; a batch that still fails (a
-- deadlock between two instances' one-by-one items) fails as a whole, and the caller retries its
-- items one by one.
--
-- Offers from memory. In a subnet whose ranges hold at least 1,024 addresses, a DISCOVER that
-- takes a set-based step is answered without a write (`from_memory`): the address is committed
-- when the client's REQUEST binds it, and a free address binds as an offered one does. The
-- calling instance remembers its offers and passes them in, so that it never offers one address
-- to two clients:
--   p_held   per item, the address this instance offered the client from memory (null: none)
--   p_skip   addresses this instance offered from memory lately and has not seen bound (its
--            newest open offers, up to 1,024); null: the caller keeps no offers (a release
--            before offers from memory): all are written. Each statement checks candidates
--            against it through a hash built once (`not in (select ... unnest)`, a hashed
--            subplan), not by scanning the array for every candidate.
-- Other instances do not see them: two instances may offer one free address to two clients at
-- the same moment, and then the first REQUEST binds it and the second is refused (NAK) and the
-- client starts over. That is rare where the pool is large, and a smaller pool keeps written
-- offers (rows `offered` for offer_secs, which every instance sees).
create or replace function dhcp_lease_batch(
    p_op text[],
    p_match inet[],
    p_relayed boolean[],
    p_mac macaddr[],
    p_addr inet[],
    p_client_id bytea[],
    p_hostname text[],
    p_held inet[],
    p_skip inet[],
    p_offer_secs integer,
    p_quarantine_secs integer
) returns table (
    i integer,
    outcome text,
    address inet,
    lease_secs integer,
    subnet_id uuid,
    cidr cidr,
    router inet,
    dns_servers inet[],
    domain text,
    boot_server inet,
    machine_id uuid,
    machine_state text,
    boot_file text,
    reason text,
    from_memory boolean
) language plpgsql
set jit = off set enable_bitmapscan = off set enable_sort = off set plan_cache_mode = force_generic_plan
as $$
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

-- The previous release's signature (before offers from memory), for its instances during a
-- rolling upgrade: every offer written, as they expect. To be dropped by the release after.
create or replace function dhcp_lease_batch(
    p_op text[],
    p_match inet[],
    p_relayed boolean[],
    p_mac macaddr[],
    p_addr inet[],
    p_client_id bytea[],
    p_hostname text[],
    p_offer_secs integer,
    p_quarantine_secs integer
) returns table (
    i integer,
    outcome text,
    address inet,
    lease_secs integer,
    subnet_id uuid,
    cidr cidr,
    router inet,
    dns_servers inet[],
    domain text,
    boot_server inet,
    machine_id uuid,
    machine_state text,
    boot_file text,
    reason text
) language sql as $$
    select b.i, b.outcome, b.address, b.lease_secs, b.subnet_id, b.cidr, b.router, b.dns_servers,
           b.domain, b.boot_server, b.machine_id, b.machine_state, b.boot_file, b.reason
    from dhcp_lease_batch(p_op, p_match, p_relayed, p_mac, p_addr, p_client_id, p_hostname,
                          array_fill(null::inet, array[coalesce(cardinality(p_op), 0)]), null::inet[],
                          p_offer_secs, p_quarantine_secs) b
$$;

-- The DHCP client view (plinth-core's dhcp/view.rs). Each instance keeps in memory the subnets,
-- the MACs the database knows (a NIC's, or a lease row's), and per large subnet a reservoir of
-- free addresses, and answers the DISCOVER of a client it does not know without a round trip
-- (an offer from memory; its REQUEST binds through dhcp_lease_batch as any does). These
-- triggers tell every instance what changed, on the channel `dhcp_view`:
--   'l <mac> <address>,...'  lease rows written for clients (offered, bound, declined): the MACs
--                            are known, the addresses no longer free (up to 200 a notification;
--                            a statement that wrote more sends several)
--   'n <mac> <ipv4 or ->'    a NIC added or changed: its MAC is known, its reserved address taken
--   'reload'                 subnets or ranges changed, or too many lease rows at once to list
--                            (over 1,000 in one statement)
-- A listener that lost its connection reloads everything, so nothing depends on a notification
-- arriving; one that arrives late costs at most an offer that the REQUEST's NAK corrects.
create or replace function dhcp_view_leases_notify() returns trigger language plpgsql as $$
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
create or replace trigger leases_view_on_insert after insert on leases
    referencing new table as changed
    for each statement execute function dhcp_view_leases_notify();
create or replace trigger leases_view_on_update after update on leases
    referencing new table as changed
    for each statement execute function dhcp_view_leases_notify();

create or replace function dhcp_view_nics_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('dhcp_view', 'n ' || new.mac::text || ' ' || coalesce(host(new.ipv4), '-'));
    return null;
end
$$;
create or replace trigger nics_view after insert or update of mac, ipv4, active on nics
    for each row execute function dhcp_view_nics_notify();

create or replace function dhcp_view_reload_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('dhcp_view', 'reload');
    return null;
end
$$;
create or replace trigger subnets_view after insert or update or delete on subnets
    for each statement execute function dhcp_view_reload_notify();
create or replace trigger subnet_ranges_view after insert or update or delete on subnet_ranges
    for each statement execute function dhcp_view_reload_notify();

-- Up to p_n free pool addresses of a subnet for a view's reservoir: from a random point of the
-- pool upwards, none reserved to a NIC; only when there are none above it, from the pool's
-- start. (Not on past the end into the start: every instance's reservoir would then hold the
-- pool's first addresses whenever its point fell near the end. A short reservoir is refilled
-- from another point.) Read only: nothing is held for the instance, which may lose a race for
-- one of them to another (its REQUEST is then refused). (The point is computed once: compared
-- in the WHERE clause, the volatile dhcp_pool_point would be evaluated for every row read.)
create or replace function dhcp_view_free(p_subnet uuid, p_n integer) returns setof inet
language plpgsql set jit = off set enable_bitmapscan = off set enable_sort = off as $$
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
