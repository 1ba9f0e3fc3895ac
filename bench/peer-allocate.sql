-- The core of POST /api/v1/allocations (count 1) as one transaction: pick with SKIP LOCKED,
-- record the allocation, the guarded transition and its event.
begin;
select m.id as mid, m.state_version as ver from machines m
 where m.state = 'ready' and not m.maintenance and m.tags @> '{}'::text[]
 order by m.id limit 1 for update of m skip locked \gset
insert into allocations (owner, request) values ('pgbench', '{}') returning id as aid \gset
update machines set state = 'allocated', state_version = state_version + 1, state_changed_at = now(),
       allocation_id = :aid, updated_at = now()
 where id = :mid and state = any('{ready}') and state_version = :ver;
insert into events (actor, machine_id, kind, from_state, to_state, details)
 values ('pgbench', :mid, 'allocate', 'ready', 'allocated', '{}');
commit;
