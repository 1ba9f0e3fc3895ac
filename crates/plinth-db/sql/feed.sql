-- The event stream's wake-up and the webhook queue (migration 20261205221100_webhooks).
--
-- Every event inserted, by any statement or function, queues one delivery per webhook that
-- wants its kind, in the same transaction, and notifies `events` (a hint for the streams, sent
-- at commit) and, when a delivery was queued, `webhooks` (for the webhook workers). Identical
-- notifications of one transaction are folded into one by PostgreSQL. A statement that
-- inserted nothing does neither (a boot-script batch whose events are all past their cap: a
-- machine in a boot loop, a flood with its MAC).
create or replace function events_feed() returns trigger language plpgsql as $$
begin
    if not exists (select 1 from new_events) then
        return null;
    end if;
    insert into webhook_deliveries (webhook_id, event_id, machine_key, txid)
    select w.id, n.id, coalesce(n.machine_id, '00000000-0000-0000-0000-000000000000'::uuid),
           coalesce(n.txid, pg_current_xact_id())
    from new_events n
    join webhooks w on w.kinds is null or n.kind = any (w.kinds);
    -- The webhook workers wake only for a delivery queued: every instance runs one, and a
    -- wake-up is a claim query each (with no webhook, a storm's every batch woke them all).
    if found then
        perform pg_notify('webhooks', '');
    end if;
    perform pg_notify('events', '');
    return null;
end
$$;

-- Once per statement, not per row: a boot-script batch inserts its events in one statement,
-- and pays for one call, one set-based insert and one notification.
create or replace trigger events_feed after insert on events
    referencing new table as new_events
    for each statement execute function events_feed();
