-- A 10,000-machine inventory for the benchmark: 250 racks of 40 machines, every machine
-- inspected and ready, with one NIC and a BMC. Ids are predictable so the raw-SQL peer can
-- pick machines at random: 00000000-0000-4000-8000-<n in hex>.
\set n 10000
insert into racks (name, site, height_u)
select 'r' || lpad(r::text, 3, '0'), 'bench', 42 from generate_series(1, (:n + 39) / 40) r;

insert into machines (id, hostname, rack_id, rack_unit, size_u, pool, tags, arch, facts, state)
select ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid,
       'node-' || lpad(g::text, 5, '0'),
       (select id from racks where name = 'r' || lpad(((g - 1) / 40 + 1)::text, 3, '0')),
       (g - 1) % 40 + 1, 1, 'default', array['bench', 'ssd'], 'x86_64',
       jsonb_build_object(
           'cpu', jsonb_build_object('model', 'EPYC 7543', 'cores', 32, 'threads', 64),
           'memory_mib', 262144,
           'disks', jsonb_build_array(jsonb_build_object('name', 'nvme0n1', 'size_bytes', 1920383410176, 'rotational', false)),
           'nics', jsonb_build_array(jsonb_build_object('name', 'eno1', 'mac', '02:00:' || rtrim(regexp_replace(lpad(to_hex(g), 8, '0'), '(..)', '\1:', 'g'), ':'), 'speed_mbps', 25000)),
           'system', jsonb_build_object('vendor', 'Acme', 'product', 'X1', 'serial', 'SN' || lpad(g::text, 6, '0'), 'uuid', gen_random_uuid()::text),
           'firmware', 'uefi', 'arch', 'x86_64'),
       'ready'
from generate_series(1, :n) g;

insert into nics (machine_id, mac, ipv4, pxe)
select id, (facts -> 'nics' -> 0 ->> 'mac')::macaddr,
       ('10.' || ((row_number() over (order by id)) / 65536)::int || '.' || (((row_number() over (order by id)) / 256) % 256)::int
        || '.' || ((row_number() over (order by id)) % 256)::int || '/32')::inet,
       true
from machines;

insert into bmcs (machine_id, protocol, address, username, password_nonce, password_ciphertext)
select id, 'redfish', 'bmc-' || hostname, 'root', '\x000000000000000000000000', '\x00' from machines;

analyze;
