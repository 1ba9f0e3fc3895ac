-- BIOS settings (issue 21, part 2): named profiles of attributes, the profile a pool's
-- machines are given on their way to ready, and what plinth last read from each machine's
-- BIOS through its BMC.
create table bios_profiles (
    name text primary key check (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    -- attribute name -> value (string, number or boolean), as sent to the BMC
    attributes jsonb not null
        check (jsonb_typeof(attributes) = 'object' and attributes <> '{}'::jsonb),
    created_by text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- A pool's profile; a profile in use cannot be removed.
alter table pools
    add column bios_profile text references bios_profiles (name) on delete restrict;

-- The BIOS as plinth last read it through the BMC (a job's read-back), kept apart from the
-- agent's facts: a booted OS reports those, and must have no way to write these.
create table machine_bios (
    machine_id uuid primary key references machines (id),
    attributes jsonb not null check (jsonb_typeof(attributes) = 'object'),
    -- what the BMC's settings object held at that read
    pending jsonb not null default '{}'::jsonb check (jsonb_typeof(pending) = 'object'),
    -- the BMC's attribute registry as plinth reads it (name -> type, values, bounds), when
    -- the BMC publishes one: changes are checked against it before they are queued
    registry jsonb check (jsonb_typeof(registry) = 'object'),
    read_at timestamptz not null default now(),
    -- the job that read it
    job_id uuid
);

-- The BIOS jobs: bios_apply (set pending, boot, read back and compare) and bios_read.
alter table jobs drop constraint jobs_kind_check;
alter table jobs add constraint jobs_kind_check
    check (kind in ('power', 'boot_device', 'identify', 'retire', 'bios_apply', 'bios_read'));
