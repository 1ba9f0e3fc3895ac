-- The event stream's wake-up and the webhook queue (migration 20261205221100_webhooks).
--
-- Every event inserted, by any statement or function, queues one delivery per webhook that
-- wants its kind, in the same transaction, and notifies `events` (a hint for the streams and
-- the webhook worker, sent at commit; identical notifications of one transaction are folded
-- into one by PostgreSQL).
create or replace function events_feed() returns trigger language plpgsql as $$
begin
    insert into webhook_deliveries (webhook_id, event_id, machine_key, txid)
    select w.id, new.id, coalesce(new.machine_id, '00000000-0000-0000-0000-000000000000'::uuid),
           coalesce(new.txid, pg_current_xact_id())
    from webhooks w
    where w.kinds is null or new.kind = any (w.kinds);
    perform pg_notify('events', '');
    return null;
end
$$;

create or replace trigger events_feed after insert on events
    for each row execute function events_feed();
