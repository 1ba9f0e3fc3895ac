-- The inventory's rules that constraints cannot say: a machine fits inside its rack, a rack
-- cannot shrink below what it holds, events are append-only, and every state change ends the
-- agent tokens of the state before.
--
-- Applied after the migrations at every start (plinth_db::migrate), under an advisory lock, in
-- one transaction: each statement must be idempotent (`create or replace`).

-- A machine must fit inside its rack; a rack cannot shrink below what it holds.
create or replace function machines_check_rack_fit() returns trigger language plpgsql as $$
declare
    rack_height integer;
begin
    if new.rack_id is null then
        return new;
    end if;
    select height_u into rack_height from racks where id = new.rack_id;
    if new.rack_unit + new.size_u - 1 > rack_height then
        raise exception 'machine at U% with height %U does not fit in a %U rack',
            new.rack_unit, new.size_u, rack_height
            using errcode = 'check_violation', constraint = 'machines_rack_fit';
    end if;
    return new;
end
$$;

create or replace trigger machines_rack_fit before insert or update of rack_id, rack_unit, size_u on machines
    for each row execute function machines_check_rack_fit();

create or replace function racks_check_height() returns trigger language plpgsql as $$
begin
    if exists (
        select 1 from machines
        where rack_id = new.id and rack_unit + size_u - 1 > new.height_u
    ) then
        raise exception 'rack % holds machines above U%', new.name, new.height_u
            using errcode = 'check_violation', constraint = 'racks_height_holds_machines';
    end if;
    return new;
end
$$;

create or replace trigger racks_height before update of height_u on racks
    for each row execute function racks_check_height();

create or replace function events_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'events are append-only' using errcode = 'insufficient_privilege';
end
$$;

create or replace trigger events_no_update before update or delete on events
    for each row execute function events_append_only();
create or replace trigger events_no_truncate before truncate on events
    for each statement execute function events_append_only();

-- Every state change ends the tokens of the state before: a ramdisk of an earlier state cannot
-- report into a later one.
create or replace function agent_tokens_revoke_on_state_change() returns trigger
language plpgsql as $$
begin
    update agent_tokens set revoked_at = now(),
           revoked_reason = 'the machine moved from ' || old.state || ' to ' || new.state
    where machine_id = new.id and used_at is null and revoked_at is null;
    return null;
end
$$;

create or replace trigger machines_state_revokes_agent_tokens
    after update of state on machines
    for each row when (old.state is distinct from new.state)
    execute function agent_tokens_revoke_on_state_change();
