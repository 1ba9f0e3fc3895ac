-- plinth's schema as of the re-baseline of 2026-12-05 (issue 18): the tables, their
-- constraints and indexes. It replaces the fifteen migrations that came before; a database
-- that applied all fifteen is recognised and recorded as having applied this one instead
-- (plinth_db::migrate).
--
-- From here on a migration that has landed is never edited: the test
-- `landed_migrations_never_change` holds every file to its checksum in
-- crates/plinth-db/landed-migrations.sha256. A change is a new migration. Functions, triggers
-- and views are not here: they live in crates/plinth-db/sql/ and are applied with
-- `create or replace` after the migrations, at every start.
--
-- Constraints live here, not only in Rust: the database is the one shared truth between plinth
-- instances.

create extension if not exists btree_gist;
-- The machine table searches hostnames by substring: a trigram index keeps that fast at
-- 10,000 machines and beyond (pg_trgm is a trusted extension shipped with PostgreSQL).
create extension if not exists pg_trgm;

-- API tokens: only their SHA-256 is stored. A token past expires_at is refused like a revoked one.
create table api_tokens (
    id uuid primary key default gen_random_uuid(),
    name text not null unique check (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$'),
    role text not null check (role in ('admin', 'operator', 'client', 'viewer')),
    secret_sha256 bytea not null unique check (length(secret_sha256) = 32),
    created_at timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at timestamptz,
    expires_at timestamptz,
    constraint api_tokens_expiry_after_creation
        check (expires_at is null or expires_at > created_at)
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

-- DHCP: subnets with their address pools. A relayed packet is served only when its giaddr is
-- one of relay_addresses, or lies inside the CIDR of a subnet with relay_any_in_cidr: anyone on
-- a segment can forge a giaddr.
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
    relay_any_in_cidr boolean not null default false,
    constraint subnets_overlap exclude using gist (cidr inet_ops with &&)
);

-- A range lies inside its subnet and overlaps no other range of it (trigger in sql/dhcp.sql).
create table subnet_ranges (
    id bigint generated always as identity primary key,
    subnet_id uuid not null references subnets (id) on delete cascade,
    first_addr inet not null check (family(first_addr) = 4 and masklen(first_addr) = 32),
    last_addr inet not null check (family(last_addr) = 4 and masklen(last_addr) = 32),
    check (first_addr <= last_addr)
);
create index subnet_ranges_subnet_idx on subnet_ranges (subnet_id);

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
    -- What DHCP learned about the machine, and how to boot it.
    pxe_arch integer,
    pxe_uuid uuid,
    discovered_subnet_id uuid references subnets (id) on delete set null,
    boot_file text check (length(boot_file) <= 255),
    constraint machines_rack_position check ((rack_id is null) = (rack_unit is null)),
    constraint machines_maintenance_reason check (maintenance or maintenance_reason is null),
    constraint machines_allocation_state check (
        (allocation_id is not null) = (state in ('allocated', 'deploying', 'deployed', 'deploy_failed'))
    ),
    constraint machines_decommissioned_unracked check (state <> 'decommissioned' or rack_id is null),
    -- two machines never share a rack unit (and one fits inside its rack: sql/inventory.sql)
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
create index machines_hostname_trgm on machines using gin (hostname gin_trgm_ops);
-- The table's default order.
create index machines_hostname_idx on machines (hostname, id);

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
-- DHCP looks a MAC up among all NICs, the inactive ones of decommissioned machines included.
create index nics_mac_all_idx on nics (mac);

create table bmcs (
    machine_id uuid primary key references machines (id),
    protocol text not null check (protocol in ('redfish', 'ipmi')),
    address text not null check (address <> '' and length(address) <= 255),
    username text not null check (length(username) <= 64),
    -- AEAD (ChaCha20-Poly1305) with the configured key; the machine id is the associated data
    password_nonce bytea not null check (length(password_nonce) = 12),
    password_ciphertext bytea not null,
    verify_tls boolean not null default true,
    updated_at timestamptz not null default now(),
    -- What plinth last learned from the BMC.
    power_state text
        check (power_state in ('on', 'off', 'powering_on', 'powering_off')),
    power_checked_at timestamptz,
    -- null: not polled yet
    reachable boolean,
    consecutive_failures integer not null default 0 check (consecutive_failures >= 0),
    last_error text,
    next_poll_at timestamptz not null default now(),
    -- manufacturer, model, serial, uuid, macs as the BMC reports them
    identity jsonb,
    identity_at timestamptz,
    -- A Redfish BMC reached over plain http:// only with this opt-in, since its password
    -- crosses the network in clear.
    plain_http boolean not null default false
);

create index bmcs_next_poll_idx on bmcs (next_poll_at);
-- a technician searches by the serial on the sticker, before any inspection
create index bmcs_serial_idx on bmcs ((identity ->> 'serial'));

-- Every change to a machine, append-only (sql/inventory.sql refuses update, delete, truncate).
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

-- Leases: one row per address. The primary key on the address is what guarantees that two
-- plinth instances sharing this database never give one address to two clients.
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
    created_at timestamptz not null default now(),
    -- What firmware a disk image boots with (bios, uefi or both; null: not said), and its size
    -- once written (a compressed image's uncompressed size; null: not known).
    firmware text check (firmware in ('bios', 'uefi', 'both')),
    raw_size bigint check (raw_size >= 0),
    -- The SHA-256 of a disk image once written (decompressed): the deploy agent reads the disk
    -- back and compares. Null for other kinds and for images registered before plinth kept it.
    raw_sha256 text check (raw_sha256 ~ '^[0-9a-f]{64}$')
);

-- A secret handed to the agent of one machine, for one mode, until it expires. Only its
-- SHA-256 is stored. `used_at` is set when the agent's final report consumes it; `bound_ip` is
-- the address that may use it; every state change of the machine revokes it
-- (sql/inventory.sql). Keyed by the hash itself, with one more index only: a row is written on
-- every ramdisk boot.
create table agent_tokens (
    secret_sha256 bytea primary key check (length(secret_sha256) = 32),
    machine_id uuid not null references machines (id) on delete cascade,
    mode text not null check (mode in ('inspect', 'clean', 'deploy')),
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    used_at timestamptz,
    bound_ip inet,
    revoked_at timestamptz,
    revoked_reason text check (length(revoked_reason) <= 200),
    -- One live (neither used nor revoked) token per machine and mode. Deferred to the end of
    -- the transaction, so that one statement can revoke the old token and insert the new one.
    constraint agent_tokens_one_live
        exclude using btree (machine_id with =, mode with =)
        where (used_at is null and revoked_at is null)
        deferrable initially deferred
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

-- People who use the web UI: a username, a role (the API's roles) and an argon2id password
-- hash (PHC string). Their browser sessions are random secrets kept as SHA-256, each with its
-- own CSRF token.
create table users (
    id uuid primary key default gen_random_uuid(),
    username text not null unique check (username ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    role text not null check (role in ('admin', 'operator', 'client', 'viewer')),
    password_hash text not null check (password_hash like '$argon2id$%'),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    disabled_at timestamptz,
    last_login_at timestamptz,
    -- Wrong passwords in a row; at the limit the account waits until locked_until.
    failed_logins integer not null default 0 check (failed_logins >= 0),
    locked_until timestamptz
);

create table ui_sessions (
    id uuid primary key default gen_random_uuid(),
    secret_sha256 bytea not null unique check (length(secret_sha256) = 32),
    user_id uuid not null references users (id) on delete cascade,
    csrf_token text not null check (length(csrf_token) >= 32),
    created_at timestamptz not null default now(),
    last_seen_at timestamptz not null default now(),
    -- Idle expiry, pushed forward as the session is used, never past max_expires_at.
    expires_at timestamptz not null,
    max_expires_at timestamptz not null,
    check (expires_at <= max_expires_at)
);

create index ui_sessions_user on ui_sessions (user_id);
create index ui_sessions_expiry on ui_sessions (max_expires_at);

-- What a deploy writes to a machine: the image, the disk chosen for it, and the OS's identity
-- and data (cloud-init NoCloud). Kept only while the allocation lives: release deletes it,
-- user data and keys included.
create table deployments (
    machine_id uuid primary key references machines (id) on delete cascade,
    allocation_id uuid not null references allocations (id),
    image_id uuid not null references images (id),
    -- the disk of the machine's facts the image goes to, and why it was chosen
    root_device text not null check (root_device ~ '^[A-Za-z0-9._-]{1,64}$'),
    root_device_hint jsonb,
    instance_id uuid not null default gen_random_uuid(),
    hostname text check (length(hostname) <= 253),
    user_data text check (length(user_data) <= 65536),
    ssh_authorized_keys text[] not null default '{}',
    network_config text check (length(network_config) <= 65536),
    created_by text not null,
    created_at timestamptz not null default now()
);

-- A deployment's image cannot be deleted from the catalog while it is in use.
create index deployments_image_idx on deployments (image_id);
-- The metadata endpoint finds a deployment by its instance id.
create unique index deployments_instance_key on deployments (instance_id);

-- Pools' settings: the wipe method their machines are cleaned with. A pool is the name
-- machines carry in machines.pool; a row here exists only for a pool with settings.
create table pools (
    name text primary key check (length(name) between 1 and 63),
    wipe_method text check (wipe_method in ('quick', 'discard', 'secure', 'full')),
    updated_at timestamptz not null default now()
);
