-- Virtual-media boot (issue 21): how a machine boots, and the ISO of each virtual-media boot.

-- How a machine is booted into plinth's ramdisk: by the network (PXE, iPXE, UEFI HTTP) or by a
-- per-boot ISO its BMC attaches as virtual media. A machine without its own setting takes its
-- rack's; a machine in no rack without one boots by the network.
alter table racks add column boot_method text not null default 'network'
    check (boot_method in ('network', 'virtual_media'));
alter table machines add column boot_method text
    check (boot_method in ('network', 'virtual_media'));

-- One row per virtual-media boot: the ISO served at /boot/vmedia/<id>.iso while the agent
-- token it carries is live. The id (256 random bits) is stored only as its SHA-256, like
-- tokens; the ISO's grub.cfg (which holds the agent token) is stored sealed with a key derived
-- from the id (ChaCha20-Poly1305, nonce first), so the database alone cannot give the token
-- out. The row goes with its token (purged a day after it expires).
create table vmedia_boots (
    id_sha256 bytea primary key check (length(id_sha256) = 32),
    machine_id uuid not null references machines (id) on delete cascade,
    token_sha256 bytea not null references agent_tokens (secret_sha256) on delete cascade,
    mode text not null check (mode in ('inspect', 'clean', 'deploy')),
    sealed_config bytea not null check (length(sealed_config) between 28 and 16384),
    -- the static address the ramdisk configures (and the token is bound to); null: DHCP
    static_ip inet check (static_ip is null or (family(static_ip) = 4 and masklen(static_ip) = 32)),
    created_at timestamptz not null default now(),
    -- requests for the ISO (a BMC reads it in many ranges); the first is also an event
    fetches integer not null default 0 check (fetches >= 0),
    last_fetched_at timestamptz
);
create index vmedia_boots_machine_idx on vmedia_boots (machine_id);
create index vmedia_boots_token_idx on vmedia_boots (token_sha256);
