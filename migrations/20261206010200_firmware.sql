-- Firmware inventory and updates (issue 21, part 3).

-- The catalog holds firmware images; what each one installs is said when it is described
-- (component and version) and checked against the BMC's inventory after the update.
alter table images drop constraint images_kind_check,
    add constraint images_kind_check
        check (kind in ('ipxe', 'kernel', 'initrd', 'rootfs', 'disk-image', 'firmware'));

create table firmware_images (
    image_id uuid primary key references images (id) on delete cascade,
    component text not null check (component in ('bmc', 'bios', 'nic', 'drive', 'other')),
    version text not null check (version ~ '^[A-Za-z0-9][A-Za-z0-9._+:-]{0,63}$'),
    described_by text not null,
    described_at timestamptz not null default now()
);

-- A firmware update is a BMC job like the others: it pushes the image, follows the BMC's
-- task (its handle kept in the job's result, so that a restarted plinth follows the same task
-- instead of pushing again), reboots when needed and reads the version back. A firmware read
-- stores the inventory only.
alter table jobs drop constraint jobs_kind_check,
    add constraint jobs_kind_check check (kind in (
        'power', 'boot_device', 'identify', 'retire', 'firmware_update', 'firmware_read'
    ));

-- The firmware inventory as the BMC last reported it: [{id, uri, name, kind, version,
-- updateable, software_id}]. The machine table filters on it (kind and version).
create table machine_firmware (
    machine_id uuid primary key references machines (id) on delete cascade,
    items jsonb not null check (jsonb_typeof(items) = 'array'),
    read_at timestamptz not null default now()
);
create index machine_firmware_items_idx on machine_firmware using gin (items jsonb_path_ops);

-- A fleet rollout: one image to many machines, at most max_per_rack updating at once in
-- each rack, stopped (nothing new started) at the first failure.
create table firmware_rollouts (
    id uuid primary key default gen_random_uuid(),
    image_id uuid not null references images (id),
    max_per_rack integer not null check (max_per_rack between 1 and 1000),
    state text not null default 'running'
        check (state in ('running', 'succeeded', 'failed', 'cancelled')),
    reason text check (length(reason) <= 2000),
    created_by text not null,
    created_at timestamptz not null default now(),
    finished_at timestamptz,
    check ((state = 'running') = (finished_at is null))
);
create index firmware_rollouts_running_idx on firmware_rollouts (created_at) where state = 'running';

create table firmware_rollout_machines (
    rollout_id uuid not null references firmware_rollouts (id) on delete cascade,
    machine_id uuid not null references machines (id),
    -- the machine's rack when the rollout was made (null: no rack, a rack of its own)
    rack_id uuid,
    position integer not null check (position >= 0),
    state text not null default 'pending'
        check (state in ('pending', 'running', 'succeeded', 'failed', 'skipped')),
    job_id uuid references jobs (id),
    error text check (length(error) <= 2000),
    updated_at timestamptz not null default now(),
    primary key (rollout_id, machine_id)
);
create index firmware_rollout_machines_job_idx on firmware_rollout_machines (job_id)
    where job_id is not null;
