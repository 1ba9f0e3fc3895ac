#!/usr/bin/env bash
# The lease batch function alone, without the network (docs/benchmarks.md, "DHCP, step 2"):
# pgbench calls dhcp_lease_batch with batches shaped like perfdhcp's at a steady rate, on the
# DHCP benchmark's pool (10.70.0.0/15, 130,815 addresses), and pg_stat_statements splits the
# time among the function's statements. For choosing among SQL variants in seconds.
#   scripts/bench-dhcp-sql.sh [DORAS_PER_BATCH] [CALLS]    (defaults 21 and 2000)
# Each batch: DORAS_PER_BATCH new clients' DISCOVERs and as many REQUESTs (the previous batch's
# clients) for free addresses spread over the pool, as offers from memory leave them. The
# database has the embedded default's durability (fsync and synchronous commit on).
# BENCH_SQL_EXTRA=FILE: SQL applied after the schema (a variant to compare).
# BENCH_DISCOVERS=0: batches of the REQUESTs alone (what the database would do per DORA if
# DISCOVERs were answered without it).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-21}; calls=${2:-2000}
[ $((n * calls)) -le 120000 ] || { echo "at most 120,000 REQUESTs: the pool has 130,815 addresses" >&2; exit 1; }
for c in pgbench psql; do command -v $c >/dev/null || { echo "$c not found (scripts/install-deps.sh)" >&2; exit 1; }; done
work=$(mktemp -d /tmp/plinth-bench-sql.XXXXXX)
chmod 755 "$work"
trap 'scripts/pg-scratch.sh "$work/pg" stop; rm -rf "$work"' EXIT
server=$(PG_SCRATCH_OPTS="-c shared_buffers=256MB -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all" \
  scripts/pg-scratch.sh "$work/pg")
psql "$server" -qc "create database dhcpsql"
url=${server/\/postgres\?//dhcpsql?}
for f in migrations/*.sql crates/plinth-db/sql/*.sql ${BENCH_SQL_EXTRA:-}; do
  psql "$url" -q -v ON_ERROR_STOP=1 -f "$f" >/dev/null 2>&1 || { psql "$url" -v ON_ERROR_STOP=1 -f "$f"; exit 1; }
done
# MAC of client k: 02:kk:kk:kk:kk:00.
d=$n; [ "${BENCH_DISCOVERS:-1}" = 0 ] && d=0
psql "$url" -q -v ON_ERROR_STOP=1 -v n="$n" -v d="$d" <<'SQL'
create extension pg_stat_statements;
insert into subnets (cidr, router, lease_time, relay_any_in_cidr) values ('10.70.0.0/15', '10.70.0.1', 3600, true);
insert into subnet_ranges (subnet_id, first_addr, last_addr) select id, '10.70.1.0', '10.71.255.254' from subnets;
insert into leases (address, subnet_id)
  select r.first_addr + g, r.subnet_id from subnet_ranges r, generate_series(0, r.last_addr - r.first_addr) g;
vacuum analyze leases;
create function bench_mac(k bigint) returns macaddr language sql immutable as $$
  select ('02:' || rtrim(regexp_replace(lpad(to_hex(k), 8, '0'), '(..)', '\1:', 'g'), ':') || ':00')::macaddr $$;
create table bench_batches (id int primary key, ops text[], matches inet[], relayed bool[], macs macaddr[],
  addrs inet[], cids bytea[], hosts text[], held inet[], skip inet[]);
-- REQUEST j of batch k: address (k-1)*n+j times a prime coprime with the pool's size, modulo it.
insert into bench_batches
select k,
  array_fill('discover'::text, array[:d]) || array_fill('select'::text, array[:n]),
  array_fill('10.70.0.9'::inet, array[:d + :n]),
  array_fill(true, array[:d + :n]),
  coalesce((select array_agg(bench_mac(k * :n + j) order by j) from generate_series(0, :d - 1) j), '{}')
    || (select array_agg(bench_mac((k - 1) * :n + j) order by j) from generate_series(0, :n - 1) j),
  array_fill(null::inet, array[:d])
    || (select array_agg('10.70.1.0'::inet + (((k - 1) * :n + j)::bigint * 7919 % 130815) order by j)
        from generate_series(0, :n - 1) j),
  array_fill(null::bytea, array[:d + :n]), array_fill(null::text, array[:d + :n]),
  array_fill(null::inet, array[:d + :n]),
  (select array_agg('10.71.200.0'::inet + j) from generate_series(0, 127) j)
from generate_series(1, 120000 / :n) k;
create sequence bench_seq;
select pg_stat_statements_reset();
SQL
cat >"$work/call.sql" <<'SQL'
select count(*) from (select nextval('bench_seq')::int as id) k join bench_batches b on b.id = k.id,
  lateral dhcp_lease_batch(b.ops, b.matches, b.relayed, b.macs, b.addrs, b.cids, b.hosts, b.held, b.skip, 60, 300) f;
SQL
echo "dhcp_lease_batch, $n DORAs per batch ($d DISCOVERs and $n REQUESTs), $calls calls, one connection:"
pgbench -n -M prepared -c 1 -t "$calls" -f "$work/call.sql" "$url" 2>&1 | grep -E "latency average|^tps"
echo
echo "| calls | ms per call | buffers per call | statement |"
echo "|---|---|---|---|"
psql "$url" -qAt -F' | ' -c "select calls, round(mean_exec_time::numeric, 3), shared_blks_hit / greatest(calls, 1),
    left(regexp_replace(regexp_replace(query, '--[^\n]*', '', 'g'), '\s+', ' ', 'g'), 80)
  from pg_stat_statements where calls >= $calls order by total_exec_time desc limit 10" | sed 's/^/| /; s/$/ |/'
psql "$url" -qAtc "select 'leases: ' || string_agg(state || ' ' || n, ', ') from (select state, count(*) n from leases group by 1 order by 1) s"
