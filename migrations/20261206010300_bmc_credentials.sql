-- BMC credential rotation (issue 21, part 4). A new password is staged, encrypted with the same
-- AEAD as the current one (the machine id as associated data), and committed before the BMC is
-- asked to take it; after a crash at any step, whichever of the two logs in is the truth
-- (plinth-core's workers/rotate.rs). The staged secret is whole or absent.
alter table bmcs
    add column staged_password_nonce bytea check (length(staged_password_nonce) = 12),
    add column staged_password_ciphertext bytea,
    add column staged_at timestamptz,
    -- the last time plinth set a password of its own (null: the one a person gave)
    add column password_rotated_at timestamptz,
    add constraint bmcs_staged_whole check (
        (staged_password_nonce is null) = (staged_password_ciphertext is null)
        and (staged_password_nonce is null) = (staged_at is null));

-- the rotation is a job of its own (other parts of issue 21 add kinds too: the list below must
-- name every kind of the migrations before it)
alter table jobs drop constraint jobs_kind_check,
    add constraint jobs_kind_check
        check (kind in ('power', 'boot_device', 'identify', 'retire', 'rotate_credentials'));

-- BMC discovery (`plinth bmc scan`): a scan of the addresses of one CIDR, run by one instance at
-- a time (claimed with a lease), and what it found. A result names the factory credential that
-- logged in by its user name only, never its password.
create table bmc_scans (
    id uuid primary key default gen_random_uuid(),
    cidr text not null check (length(cidr) <= 64),
    redfish_ports integer[] not null,
    ipmi_ports integer[] not null,
    rate integer not null check (rate between 1 and 1000),
    addresses integer not null check (addresses between 1 and 1024),
    state text not null default 'queued' check (state in ('queued', 'running', 'done', 'failed')),
    requested_by text not null,
    worker text,
    lease_until timestamptz,
    error text,
    created_at timestamptz not null default now(),
    started_at timestamptz,
    finished_at timestamptz
);
create index bmc_scans_queued_idx on bmc_scans (created_at) where state in ('queued', 'running');

create table bmc_scan_results (
    scan_id uuid not null references bmc_scans (id) on delete cascade,
    address text not null check (length(address) <= 255),
    protocol text not null check (protocol in ('redfish', 'ipmi')),
    vendor text,
    serial text,
    uuid uuid,
    macs text[] not null default '{}',
    credential_username text,
    -- the discovered machine this BMC was attached to (enrolled), when a MAC matched
    machine_id uuid references machines (id),
    found_at timestamptz not null default now(),
    primary key (scan_id, address, protocol)
);
