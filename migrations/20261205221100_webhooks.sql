-- The event stream and webhooks (issue 20).
--
-- Each event records the transaction that wrote it. A reader takes only the events of
-- transactions older than every transaction still running (`txid < pg_snapshot_xmin(...)`), in
-- (txid, id) order: an event that becomes visible later always sorts after everything already
-- taken, so a cursor on (txid, id) never skips one (docs/decisions.md). The column is added
-- without a default first and the default set afterwards, so the table is not rewritten; events
-- written before have none and sort first (as txid 0).
alter table events add column txid xid8;
alter table events alter column txid set default pg_current_xact_id();
create index events_feed_idx on events ((coalesce(txid, '0'::xid8)), id);

-- Webhooks: admins register a URL; every event (of the kinds chosen, or all) is POSTed there,
-- signed with the secret. The secret is kept encrypted with the BMC key (AEAD, the webhook's
-- id as associated data) because plinth must present it.
create table webhooks (
    id uuid primary key default gen_random_uuid(),
    url text not null check (url ~ '^https?://' and length(url) <= 2048),
    -- null: every kind
    kinds text[] check (kinds is null or cardinality(kinds) > 0),
    secret_nonce bytea not null,
    secret_ciphertext bytea not null,
    created_by text not null,
    created_at timestamptz not null default now()
);

-- The delivery queue, filled by a trigger on events in the event's own transaction. One row
-- per (webhook, event). Deliveries of one webhook and one machine (machine_key: the nil uuid
-- for events of no machine) go out one at a time in (txid, event_id) order: the worker takes
-- only the head of each queue.
create table webhook_deliveries (
    webhook_id uuid not null references webhooks (id) on delete cascade,
    event_id bigint not null references events (id),
    machine_key uuid not null,
    txid xid8 not null,
    state text not null default 'pending' check (state in ('pending', 'delivered', 'dead')),
    attempts integer not null default 0,
    -- when it was first tried: a delivery failing for longer than the configured time is dead
    first_attempt_at timestamptz,
    next_attempt_at timestamptz not null default now(),
    -- set while a worker holds it: until then no other instance takes it
    lease_until timestamptz,
    last_status integer,
    last_error text,
    created_at timestamptz not null default now(),
    finished_at timestamptz,
    primary key (webhook_id, event_id)
);
create index webhook_deliveries_queue_idx on webhook_deliveries
    (webhook_id, machine_key, txid, event_id) where state = 'pending';
create index webhook_deliveries_finished_idx on webhook_deliveries (finished_at)
    where state <> 'pending';
