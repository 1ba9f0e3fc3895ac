-- DHCP: subnets with their address pools, and leases. One row per address: the primary key
-- on the address is what guarantees that two plinth instances sharing this database never
-- give one address to two clients.

create table subnets (
    id uuid primary key default gen_random_uuid(),
    cidr cidr not null check (family(cidr) = 4 and masklen(cidr) between 8 and 30),
    router inet check (family(router) = 4 and masklen(router) = 32),
    dns_servers inet[] not null default '{}',
    domain text check (length(domain) <= 253),
    lease_time integer not null default 3600 check (lease_time between 60 and 31536000),
    boot_server inet check (family(boot_server) = 4 and masklen(boot_server) = 32),
    relay_addresses inet[] not null default '{}',
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint subnets_overlap exclude using gist (cidr inet_ops with &&)
);

create table subnet_ranges (
    id bigint generated always as identity primary key,
    subnet_id uuid not null references subnets (id) on delete cascade,
    first_addr inet not null check (family(first_addr) = 4 and masklen(first_addr) = 32),
    last_addr inet not null check (family(last_addr) = 4 and masklen(last_addr) = 32),
    check (first_addr <= last_addr)
);
create index subnet_ranges_subnet_idx on subnet_ranges (subnet_id);

-- A range must lie inside its subnet, and ranges of one subnet never overlap.
create function subnet_ranges_check() returns trigger language plpgsql as $$
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
create trigger subnet_ranges_check before insert or update on subnet_ranges
    for each row execute function subnet_ranges_check();

create table leases (
    address inet primary key check (family(address) = 4 and masklen(address) = 32),
    subnet_id uuid not null references subnets (id) on delete cascade,
    -- inside one of the subnet's ranges (false: a reservation outside the ranges)
    pool boolean not null default true,
    state text not null default 'free' check (state in ('free', 'offered', 'bound', 'declined')),
    -- the client holding (or that last held) the address
    mac macaddr,
    client_id bytea,
    hostname text,
    expires_at timestamptz,
    updated_at timestamptz not null default now(),
    check (state = 'free' or expires_at is not null),
    check (state not in ('offered', 'bound') or mac is not null)
);
-- One live lease per client per subnet.
create unique index leases_client_key on leases (subnet_id, mac) where state in ('offered', 'bound');
create index leases_free_idx on leases (subnet_id, address) where state = 'free' and pool;
create index leases_expiry_idx on leases (expires_at) where state <> 'free';
create index leases_mac_idx on leases (mac);

-- DHCP looks a MAC up among all NICs, the inactive ones of decommissioned machines included.
create index nics_mac_all_idx on nics (mac);

-- What DHCP learned about a machine, and how to boot it.
alter table machines
    add column pxe_arch integer,
    add column pxe_uuid uuid,
    add column discovered_subnet_id uuid references subnets (id) on delete set null,
    add column boot_file text check (length(boot_file) <= 255);

-- One DHCP lease decision, in one round trip: find the subnet, the machine behind the MAC and its
-- reservation, then offer, bind, release or decline an address. Called once per packet, in its
-- own transaction, committed before the reply leaves.
--   p_op: discover | select | init_reboot | renew | select_other | release | decline | inform
--   p_match: giaddr for relayed requests, else the address of the interface the request came in on
--   p_addr: the requested address (option 50) or ciaddr, as the op needs
create function dhcp_lease(
    p_op text,
    p_match inet,
    p_relayed boolean,
    p_mac macaddr,
    p_addr inet,
    p_client_id bytea,
    p_hostname text,
    p_offer_secs integer,
    p_quarantine_secs integer
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
) language plpgsql as $$
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
        -- The client took another server's offer: ours is free again.
        update leases set state = 'free', expires_at = null, updated_at = now()
        where leases.subnet_id = s.id and leases.mac = p_mac and leases.state = 'offered';
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
            order by (lx.state in ('offered', 'bound')) desc, lx.updated_at desc
            limit 1;
            previous := target;
            if target is null and p_addr is not null then
                select lx.address into target from leases lx
                where lx.address = p_addr and lx.subnet_id = s.id and lx.pool
                  and (lx.state = 'free' or (lx.expires_at < now() and lx.state <> 'declined'))
                  and coalesce((select n.mac from nics n where n.active and n.ipv4 = lx.address), p_mac) = p_mac
                for update skip locked;
            end if;
            if target is null then
                -- (Reservations are probed per candidate through the unique index, a subplan the
                -- planner cannot turn into a scan of every reservation.)
                -- The first free address at or after a random point of the subnet: concurrent
                -- pickers rarely meet on the same rows, and no scan walks the index entries that
                -- churn at the low end of the pool before vacuum removes them.
                start := set_masklen(s.cidr::inet + floor(random() * (2 ^ (32 - masklen(s.cidr))))::bigint, 32);
                select lx.address into target from leases lx
                where lx.subnet_id = s.id and lx.state = 'free' and lx.pool and lx.address >= start
                  and (select n.id from nics n where n.active and n.ipv4 = lx.address) is null
                order by lx.address
                limit 1
                for update skip locked;
                if target is null then
                    select lx.address into target from leases lx
                    where lx.subnet_id = s.id and lx.state = 'free' and lx.pool and lx.address < start
                      and (select n.id from nics n where n.active and n.ipv4 = lx.address) is null
                    order by lx.address
                    limit 1
                    for update skip locked;
                end if;
            end if;
            if target is null then
                select lx.address into target from leases lx
                where lx.subnet_id = s.id and lx.state <> 'free' and lx.expires_at < now() and lx.pool
                  and (select n.id from nics n where n.active and n.ipv4 = lx.address) is null
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
