-- plinth inventory: racks, machines, nics, bmcs, allocations, events, api tokens.
-- Constraints live here, not only in Rust: the database is the one shared truth
-- between plinth instances.

create extension if not exists btree_gist;

create table api_tokens (
    id uuid primary key default gen_random_uuid(),
    name text not null unique check (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$'),
    role text not null check (role in ('admin', 'operator', 'client', 'viewer')),
    secret_sha256 bytea not null unique check (length(secret_sha256) = 32),
    created_at timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);

create table racks (
    id uuid primary key default gen_random_uuid(),
    name text not null unique check (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    site text,
    room text,
    row_name text,
    height_u integer not null check (height_u between 1 and 100),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table allocations (
    id uuid primary key default gen_random_uuid(),
    owner text not null,
    owner_token_id uuid references api_tokens (id),
    request jsonb not null default '{}',
    created_at timestamptz not null default now(),
    released_at timestamptz
);

create table machines (
    id uuid primary key default gen_random_uuid(),
    hostname text check (
        length(hostname) <= 253
        and hostname ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$'
    ),
    rack_id uuid references racks (id) on delete restrict,
    rack_unit integer check (rack_unit >= 1),
    size_u integer not null default 1 check (size_u between 1 and 100),
    pool text not null default 'default' check (pool ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    tags text[] not null default '{}',
    arch text check (arch in ('x86_64', 'aarch64')),
    facts jsonb not null default '{}',
    state text not null check (state in (
        'discovered', 'enrolled', 'inspecting', 'inspect_failed', 'ready', 'allocated',
        'deploying', 'deployed', 'deploy_failed', 'cleaning', 'clean_failed',
        'decommissioning', 'decommissioned'
    )),
    state_version bigint not null default 1 check (state_version >= 1),
    state_changed_at timestamptz not null default now(),
    state_reason text,
    maintenance boolean not null default false,
    maintenance_reason text,
    allocation_id uuid references allocations (id),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint machines_rack_position check ((rack_id is null) = (rack_unit is null)),
    constraint machines_maintenance_reason check (maintenance or maintenance_reason is null),
    constraint machines_allocation_state check (
        (allocation_id is not null) = (state in ('allocated', 'deploying', 'deployed', 'deploy_failed'))
    ),
    constraint machines_decommissioned_unracked check (state <> 'decommissioned' or rack_id is null),
    -- two machines never share a rack unit
    constraint machines_rack_overlap exclude using gist (
        rack_id with =,
        int4range(rack_unit, rack_unit + size_u) with &&
    ) where (rack_id is not null)
);

create unique index machines_hostname_key on machines (hostname)
    where hostname is not null and state <> 'decommissioned';
create index machines_state_idx on machines (state, id);
create index machines_rack_idx on machines (rack_id) where rack_id is not null;
create index machines_pool_idx on machines (pool, id);
create index machines_tags_idx on machines using gin (tags);
create index machines_allocation_idx on machines (allocation_id) where allocation_id is not null;
create index machines_serial_idx on machines ((facts -> 'system' ->> 'serial'));

-- A machine must fit inside its rack; a rack cannot shrink below what it holds.
create function machines_check_rack_fit() returns trigger language plpgsql as $$
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

create trigger machines_rack_fit before insert or update of rack_id, rack_unit, size_u on machines
    for each row execute function machines_check_rack_fit();

create function racks_check_height() returns trigger language plpgsql as $$
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

create trigger racks_height before update of height_u on racks
    for each row execute function racks_check_height();

create table nics (
    -- an identity, so a machine's NICs keep the order they were enrolled in
    id bigint generated always as identity primary key,
    machine_id uuid not null references machines (id),
    mac macaddr not null,
    ipv4 inet check (family(ipv4) = 4 and masklen(ipv4) = 32),
    pxe boolean not null default false,
    -- false once the machine is decommissioned: the MAC and address are free again
    active boolean not null default true,
    created_at timestamptz not null default now()
);

create unique index nics_mac_key on nics (mac) where active;
create unique index nics_ipv4_key on nics (ipv4) where active and ipv4 is not null;
create index nics_machine_idx on nics (machine_id);

create table bmcs (
    machine_id uuid primary key references machines (id),
    protocol text not null check (protocol in ('redfish', 'ipmi')),
    address text not null check (address <> '' and length(address) <= 255),
    username text not null check (length(username) <= 64),
    -- AEAD (ChaCha20-Poly1305) with the configured key; the machine id is the associated data
    password_nonce bytea not null check (length(password_nonce) = 12),
    password_ciphertext bytea not null,
    verify_tls boolean not null default true,
    updated_at timestamptz not null default now()
);

create table events (
    id bigint generated always as identity primary key,
    at timestamptz not null default now(),
    actor text not null,
    machine_id uuid references machines (id),
    kind text not null,
    from_state text,
    to_state text,
    details jsonb not null default '{}'
);

create index events_machine_idx on events (machine_id, id);
create index events_at_idx on events (at);

create function events_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'events are append-only' using errcode = 'insufficient_privilege';
end
$$;

create trigger events_no_update before update or delete on events
    for each row execute function events_append_only();
create trigger events_no_truncate before truncate on events
    for each statement execute function events_append_only();
