-- Pools' settings (issue 16): the wipe method their machines are cleaned with. A pool is the
-- name machines carry in machines.pool; a row here exists only for a pool with settings.
create table pools (
    name text primary key check (length(name) between 1 and 63),
    wipe_method text check (wipe_method in ('quick', 'discard', 'secure', 'full')),
    updated_at timestamptz not null default now()
);
