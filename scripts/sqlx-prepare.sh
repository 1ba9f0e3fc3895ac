#!/usr/bin/env bash
# Regenerates the offline query cache (.sqlx/) that lets plinth build without a database.
# Run after changing a query, a migration or a file of crates/plinth-db/sql/; commit the result.
#   scripts/sqlx-prepare.sh           regenerate
#   scripts/sqlx-prepare.sh --check   fail if the committed cache is out of date
# It uses the server in PLINTH_TEST_DATABASE_URL, or else a scratch cluster it starts and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PLINTH_TEST_DATABASE_URL:-}" ]; then
  server=$PLINTH_TEST_DATABASE_URL
  stop_scratch() { :; }
else
  pgdir=$(mktemp -d /tmp/plinth-sqlx-pg.XXXXXX)
  chmod 755 "$pgdir"
  server=$(scripts/pg-scratch.sh "$pgdir")
  stop_scratch() { scripts/pg-scratch.sh "$pgdir" stop; rm -rf "$pgdir"; }
fi
db=plinth_sqlx_prepare
export PGOPTIONS="-c client_min_messages=warning"
admin_psql() { psql "$server" -v ON_ERROR_STOP=1 -qAt "$@"; }
admin_psql -c "drop database if exists $db" -c "create database $db"
url=${server/\/postgres\?//$db?}
# The schema, then its functions and triggers, in the order plinth_db::migrate applies them.
for f in migrations/*.sql crates/plinth-db/sql/*.sql; do
  psql "$url" -v ON_ERROR_STOP=1 -q -f "$f" >/dev/null
done
out=$(mktemp -d)
trap 'rm -rf "$out"; stop_scratch' EXIT
touch crates/plinth-db/src/*.rs
# --features testing: the queries only tests call are checked and cached too.
DATABASE_URL=$url SQLX_OFFLINE=false SQLX_OFFLINE_DIR=$out cargo check -q -p plinth-db --features testing
if [ "${1:-}" = --check ]; then
  diff -r "$out" .sqlx >/dev/null || { echo ".sqlx/ is out of date: run scripts/sqlx-prepare.sh" >&2; exit 1; }
  echo ".sqlx/ is up to date"
else
  rm -rf .sqlx && mkdir .sqlx && cp "$out"/*.json .sqlx/
  echo "wrote $(ls .sqlx | wc -l) queries to .sqlx/"
fi
