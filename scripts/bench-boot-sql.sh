#!/usr/bin/env bash
# The iPXE script requests' batch function alone, without HTTP (docs/benchmarks.md, "The script
# endpoint, step 3"): pgbench calls boot_request_batch with batches shaped like
# scripts/bench-boot.sh's (2,000 machines, even ones ready, odd ones inspecting so that their
# requests mint agent tokens; each batch asks for distinct random machines), and reports the
# time per call and per request, with the rows the tables gained. For choosing among SQL
# variants in seconds.
#   scripts/bench-boot-sql.sh [REQUESTS_PER_BATCH] [CALLS]    (defaults 32 and 2000)
# The database has the embedded default's durability (fsync and synchronous commit on).
# BENCH_SQL_EXTRA=FILE: SQL applied after the schema (a variant to compare). BENCH_LOOP_MAX: the
# boot-loop limit passed (default 10, as plinth's; 0 writes no boot events). BENCH_EXPLAIN: below.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-32}; calls=${2:-2000}
[ "$n" -le 2000 ] || { echo "at most 2,000 requests per batch (one per machine)" >&2; exit 1; }
for c in pgbench psql; do command -v $c >/dev/null || { echo "$c not found (scripts/install-deps.sh)" >&2; exit 1; }; done
work=$(mktemp -d /tmp/plinth-bench-bootsql.XXXXXX)
chmod 755 "$work"
trap 'scripts/pg-scratch.sh "$work/pg" stop; rm -rf "$work"' EXIT
server=$(PG_SCRATCH_OPTS="-c shared_buffers=256MB" scripts/pg-scratch.sh "$work/pg")
psql "$server" -qc "create database bootsql"
url=${server/\/postgres\?//bootsql?}
for f in migrations/*.sql crates/plinth-db/sql/*.sql ${BENCH_SQL_EXTRA:-}; do
  psql "$url" -q -v ON_ERROR_STOP=1 -f "$f" >/dev/null 2>&1 || { psql "$url" -v ON_ERROR_STOP=1 -f "$f"; exit 1; }
done
# The machines and NICs of scripts/bench-boot.sh: machine k has MAC 52:54:00:kk:kk:kk.
psql "$url" -q -v ON_ERROR_STOP=1 -f scripts/bench-boot-machines.sql
psql "$url" -qc "analyze"
cat >"$work/call.sql" <<SQL
select count(*) from (
  select array_agg(('52:54:00:' || lpad(to_hex((k >> 16) & 255), 2, '0') || ':'
                    || lpad(to_hex((k >> 8) & 255), 2, '0') || ':' || lpad(to_hex(k & 255), 2, '0'))::macaddr) as macs,
         array_agg(sha256(random()::text::bytea)) as hashes
  from (select k from generate_series(1, 2000) k order by random() limit $n) s
) b, lateral boot_request_batch(b.macs, array_fill('10.97.0.2'::inet, array[$n]),
    array_fill('system'::text, array[$n]),
    array_fill('{"platform": "pcbios", "remote": "10.97.0.2"}'::jsonb, array[$n]),
    array['ready', 'inspecting'], array[null, 'inspect'], array['boot from the local disk', 'inspect'],
    array['local.ipxe', 'ramdisk.ipxe'], b.hashes, 3600, ${BENCH_LOOP_MAX:-10}, 600) f;
SQL
# The batch's input alone (random machines, fresh token hashes), to subtract from each call.
sed -n '1,/^) b, lateral/p' "$work/call.sql" | sed 's/^) b, lateral.*/) b;/' >"$work/input.sql"
# One unrecorded warm-up (as scripts/bench-boot.sh does), then ANALYZE, then the measured calls.
pgbench -n -M prepared -c 1 -t 200 -f "$work/call.sql" "$url" >/dev/null 2>&1
psql "$url" -qc "analyze"
before=$(psql "$url" -qAtc "select (select count(*) from agent_tokens) || ' ' || (select count(*) from events)")
echo "boot_request_batch, $n requests per batch, $calls calls, one connection:"
out=$(pgbench -n -M prepared -c 1 -t "$calls" -f "$work/call.sql" "$url" 2>&1)
echo "$out" | grep -E "latency average|^tps"
lat=$(echo "$out" | awk '/latency average/ {print $4}')
gen=$(pgbench -n -M prepared -c 1 -t "$calls" -f "$work/input.sql" "$url" 2>&1 | awk '/latency average/ {print $4}')
awk -v l="$lat" -v g="$gen" -v n="$n" 'BEGIN {printf "making the input alone: %.3f ms per call\nthe function: %.3f ms per call, %.1f us per request\n", g, l - g, (l - g) * 1000 / n}'
after=$(psql "$url" -qAtc "select (select count(*) from agent_tokens) || ' ' || (select count(*) from events)")
read -r t0 e0 <<<"$before"; read -r t1 e1 <<<"$after"
echo "rows added during the measured calls: agent tokens $((t1 - t0)), events $((e1 - e0))"
# BENCH_EXPLAIN=1: then one call more under auto_explain (ANALYZE, nested statements), its
# plans printed from the server's log.
if [ -n "${BENCH_EXPLAIN:-}" ]; then
  : >"$work/pg/server.log"
  psql "$url" -q >/dev/null <<SQL
load 'auto_explain';
set auto_explain.log_min_duration = 0;
set auto_explain.log_analyze = on;
set auto_explain.log_buffers = on;
set auto_explain.log_nested_statements = on;
\i $work/call.sql
SQL
  sed -n '/boot_request_batch\|with input as/,$p' "$work/pg/server.log"
fi
