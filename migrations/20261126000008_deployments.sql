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

-- What firmware a disk image boots with (bios, uefi or both; null: not said), and its size
-- once written (a compressed image's uncompressed size; null: not known).
alter table images
    add column firmware text check (firmware in ('bios', 'uefi', 'both')),
    add column raw_size bigint check (raw_size >= 0);

-- The metadata endpoint finds a deployment by its instance id.
create unique index deployments_instance_key on deployments (instance_id);
