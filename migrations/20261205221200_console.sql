-- Serial consoles (issue 20): where a Redfish BMC's console is reached over IPMI, which plinth
-- instance holds each machine's SOL session, and the bounded recording of each console.

-- A Redfish BMC that also speaks IPMI: the IPMI endpoint of its Serial over LAN console
-- (`host[:port]`, UDP 623 unless named), with its own credentials when they differ from the
-- BMC's. An IPMI BMC's console is its own endpoint and has no row here. Removed with the BMC.
create table bmc_consoles (
    machine_id uuid primary key references bmcs (machine_id) on delete cascade,
    address text not null check (address <> '' and length(address) <= 255),
    username text check (length(username) <= 64),
    password_nonce bytea check (length(password_nonce) = 12),
    password_ciphertext bytea,
    constraint bmc_consoles_password_whole
        check ((password_nonce is null) = (password_ciphertext is null)),
    updated_at timestamptz not null default now()
);

-- The BMC allows one SOL session per machine: the plinth instance that holds it, until the
-- lease runs out (renewed while the session is open; a dead instance's lease is taken over).
create table console_leases (
    machine_id uuid primary key references machines (id),
    holder uuid not null,
    expires_at timestamptz not null,
    taken_at timestamptz not null default now()
);

-- What a machine's console printed while plinth recorded it, in chunks in order, trimmed to
-- the last `console.max_log_bytes` by the writer; deleted when the machine is released.
create table console_chunks (
    machine_id uuid not null references machines (id),
    seq bigint generated always as identity,
    at timestamptz not null default now(),
    data bytea not null check (length(data) between 1 and 1048576),
    primary key (machine_id, seq)
);
