#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for tests and print its URL on stdout.
#   scripts/pg-scratch.sh DIR     start (or reuse) a cluster under DIR
#   scripts/pg-scratch.sh DIR stop
# It listens only on a Unix socket in DIR/run; as root the server runs as the
# unprivileged 'postgres' user (PostgreSQL refuses to run as root). Durability is off (tests
# need speed, not crash safety); PG_SCRATCH_OPTS replaces those server options.
set -euo pipefail
dir=${1:?usage: pg-scratch.sh DIR [stop]}
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -x "$bindir/pg_ctl" ] || { echo "PostgreSQL server binaries not found under /usr/lib/postgresql" >&2; exit 1; }
as_owner=()
if [ "$(id -u)" = 0 ]; then as_owner=(runuser -u postgres --); fi
if [ "${2:-}" = stop ]; then
  [ -d "$dir/data" ] && "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  exit 0
fi
mkdir -p "$dir/run"
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir" "$dir/run"; fi
if [ ! -f "$dir/data/PG_VERSION" ]; then
  "${as_owner[@]}" "$bindir/initdb" -D "$dir/data" -U plinth -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
fi
if ! "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
  "${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -w -t 60 -l "$dir/server.log" \
    -o "-c listen_addresses='' -k $dir/run -c max_connections=400 ${PG_SCRATCH_OPTS--c fsync=off -c synchronous_commit=off -c full_page_writes=off}" \
    start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
fi
echo "postgres://plinth@localhost/postgres?host=$dir/run"
