-- The script endpoint's benchmark rack (scripts/bench-boot.sh, scripts/bench-boot-sql.sh):
-- 2,000 machines, even ones ready (a local-boot script), odd ones inspecting (a ramdisk script
-- with a fresh agent token each time); machine k's one NIC has MAC 52:54:00:kk:kk:kk.
with m as (
  insert into machines (hostname, state)
  select 'bench-' || i, case when i % 2 = 0 then 'ready' else 'inspecting' end
  from generate_series(1, 2000) i
  returning id, hostname
)
insert into nics (machine_id, mac, pxe)
select id, ('52:54:00:' || lpad(to_hex((n >> 16) & 255), 2, '0') || ':'
            || lpad(to_hex((n >> 8) & 255), 2, '0') || ':' || lpad(to_hex(n & 255), 2, '0'))::macaddr, true
from (select id, substr(hostname, 7)::int as n from m) x;
