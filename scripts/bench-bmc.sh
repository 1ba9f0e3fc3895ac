#!/usr/bin/env bash
# The BMC job benchmark: N machines (BENCH_N, default 1000), each with its own Redfish BMC of the
# test kit on 127.0.0.1 (one of them never answers), all sent through `inspect` (boot PXE once +
# power cycle) and worked off by plinth's job runner with the real Redfish driver; next to it,
# the same BMC calls straight through the driver with no jobs and no database (the peer).
# BENCH_CONCURRENCY (default 64) is the runner's per-instance limit and the peer's.
#   scripts/bench-bmc.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export SQLX_OFFLINE=true
cargo build --release -q -p plinth-core --example bench_jobs
bin=${CARGO_TARGET_DIR:-target}/release/examples/bench_jobs
# Each BMC is a listening socket, each call a connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ -z "${PLINTH_TEST_DATABASE_URL:-}" ]; then
  pgdir=$(mktemp -d /tmp/plinth-bench-bmc-pg.XXXXXX)
  chmod 755 "$pgdir"
  trap 'scripts/pg-scratch.sh "$pgdir" stop; rm -rf "$pgdir"' EXIT
  PLINTH_TEST_DATABASE_URL=$(scripts/pg-scratch.sh "$pgdir")
  export PLINTH_TEST_DATABASE_URL
fi
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores"
"$bin" "${BENCH_N:-1000}" "${BENCH_CONCURRENCY:-64}"
