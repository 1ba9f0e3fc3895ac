#!/usr/bin/env bash
# The benchmark of docs/benchmarks.md: a 10,000-machine inventory on a scratch PostgreSQL,
# `plinth serve` (release build) measured over HTTP by plinth-bench (the API) and
# plinth-bench-ui (the web UI's pages, next to the JSON list as their peer), and the API's peer:
# the same SQL run by pgbench straight on the database, in the same run.
#   scripts/bench.sh            prints the tables to paste into docs/benchmarks.md
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh postgresql postgresql-contrib curl
export SQLX_OFFLINE=true
cargo build --release --locked -q -p plinth -p plinth-bench
target=${CARGO_TARGET_DIR:-target}
bin=$target/release

pgdir=$(mktemp -d /tmp/plinth-bench-pg.XXXXXX)
chmod 755 "$pgdir"
serve_pid=
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  scripts/pg-scratch.sh "$pgdir" stop
  rm -rf "$pgdir"
}
trap cleanup EXIT
server=$(scripts/pg-scratch.sh "$pgdir")
psql "$server" -qc "create database plinth_bench"
url=${server/\/postgres\?//plinth_bench?}
state=$pgdir/state
mkdir -p "$state"
PLINTH_STATE_DIR=$state "$bin/plinth" migrate --database-url "$url" 2>/dev/null
psql "$url" -v ON_ERROR_STOP=1 -q -f bench/seed.sql
token=$(PLINTH_STATE_DIR=$state "$bin/plinth" admin create-token --database-url "$url" --name bench --role admin)
ui_password=bench-password-$RANDOM
PLINTH_STATE_DIR=$state PLINTH_USER_PASSWORD=$ui_password "$bin/plinth" admin create-user \
  --database-url "$url" --username bench --role viewer 2>/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PLINTH_STATE_DIR=$state PLINTH_LOG__LEVEL=warn "$bin/plinth" serve --database-url "$url" --listen "127.0.0.1:$port" &
serve_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$serve_pid/status"; }
sleep 2
rss_start=$(rss)

machines=$(psql "$url" -qAtc "select count(*) from machines")
echo "inventory: $machines machines; $(nproc) cores; $(date -u +%Y-%m-%d)"
echo
PLINTH_TOKEN=$token PLINTH_UI_PASSWORD=$ui_password "$bin/plinth-bench-ui" \
  --api-url "http://127.0.0.1:$port" --user bench --samples 200
echo
echo "| plinth (HTTP, one client) | median | p99 |"
echo "|---|---|---|"
PLINTH_TOKEN=$token "$bin/plinth-bench" --api-url "http://127.0.0.1:$port" --samples 2000 --allocations 2000 --concurrency 32
sleep 3
rss_after=$(rss)

echo
echo "| peer: the same SQL by pgbench on the same database | mean latency | throughput |"
echo "|---|---|---|"
pg() { pgbench -n -M prepared "$@" "$url" 2>&1; }
lat() { sed -n 's/^latency average = \([0-9.]*\) ms/\1 ms/p'; }
tps() { sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | cut -d. -f1; }
out=$(pg -c 1 -t 2000 -f bench/peer-list.sql)
echo "| list page (token, 100 machines, NICs, BMCs), 1 client | $(echo "$out" | lat) | $(echo "$out" | tps) pages/s |"
out=$(pg -c 1 -t 2000 -f bench/peer-get.sql)
echo "| one machine (token, machine, NICs, BMC), 1 client | $(echo "$out" | lat) | $(echo "$out" | tps) reads/s |"
out=$(pg -c 32 -j 2 -t 60 -f bench/peer-allocate.sql)
echo "| allocation transaction, 32 clients | $(echo "$out" | lat) | $(echo "$out" | tps) allocations/s |"
echo
echo "plinth serve RSS: $rss_start idle after start, $rss_after idle after the load"
