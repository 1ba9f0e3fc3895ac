-- The SQL plinth runs for GET /api/v1/machines?state=ready&limit=100: token lookup, the page,
-- its NICs and BMCs. Run by pgbench as the peer: the database's own share of the request.
-- (The page's ids are gathered by one extra index-only query, which plinth does not need.)
select id, name, role, created_at, last_used_at, revoked_at from api_tokens where secret_sha256 = decode(repeat('00', 32), 'hex');
select m.id, m.hostname, m.rack_id, r.name, m.rack_unit, m.size_u, m.pool, m.tags, m.arch, m.facts, m.state, m.state_version,
       m.state_changed_at, m.state_reason, m.maintenance, m.maintenance_reason, m.allocation_id, m.created_at, m.updated_at
  from machines m left join racks r on r.id = m.rack_id
 where m.state = 'ready' order by m.id limit 101;
select array_agg(id)::text as ids from (select id from machines where state = 'ready' order by id limit 100) s \gset
select machine_id, mac::text, host(ipv4), pxe from nics where machine_id = any(:ids::uuid[]) and active order by machine_id, id;
select machine_id, protocol, address, username, verify_tls from bmcs where machine_id = any(:ids::uuid[]);
