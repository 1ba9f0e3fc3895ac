-- The SQL plinth runs for GET /api/v1/machines/{id}: token lookup, the machine, its NICs and BMC.
\set n random(1, 10000)
select id, name, role, created_at, last_used_at, revoked_at from api_tokens where secret_sha256 = decode(repeat('00', 32), 'hex');
select m.id, m.hostname, m.rack_id, r.name, m.rack_unit, m.size_u, m.pool, m.tags, m.arch, m.facts, m.state, m.state_version,
       m.state_changed_at, m.state_reason, m.maintenance, m.maintenance_reason, m.allocation_id, m.created_at, m.updated_at
  from machines m left join racks r on r.id = m.rack_id
 where m.id = ('00000000-0000-4000-8000-' || lpad(to_hex(:n::int), 12, '0'))::uuid;
select machine_id, mac::text, host(ipv4), pxe from nics
 where machine_id = ('00000000-0000-4000-8000-' || lpad(to_hex(:n::int), 12, '0'))::uuid and active;
select machine_id, protocol, address, username, verify_tls from bmcs
 where machine_id = ('00000000-0000-4000-8000-' || lpad(to_hex(:n::int), 12, '0'))::uuid;
