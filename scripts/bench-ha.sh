#!/usr/bin/env bash
# The failover benchmark: a Patroni cluster (three PostgreSQL nodes, synchronous mode, ttl
# 8 s), two plinth instances on one segment under perfdhcp (150 DORA/s against each) and
# /healthz probes, the primary killed with SIGKILL 15 s in: seconds without a committed lease
# and without an API answer, and the DHCP rate before, while and after. Needs root (network
# namespaces; PostgreSQL runs as the postgres user). Then the scale-out benchmark: 1, 2 and 3
# instances on the same kind of cluster, 2,000 DORA/s offered to each: DORA/s sustained
# together, CPU per DORA per instance and for the whole machine. The instances are a release
# build of plinth (PLINTH_SERVE_BIN); BENCH_PROFILE=debug runs the test build's instead.
#   scripts/bench-ha.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh $(grep -v "^#" crates/plinth-testkit/PACKAGES) curl wrk
export SQLX_OFFLINE=true
cargo build -q -p plinth
profile=${BENCH_PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build -q --release --locked -p plinth
  export PLINTH_SERVE_BIN="${CARGO_TARGET_DIR:-target}/release/plinth"
fi
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores, plinth: $profile build"
# The benchmarks, and the test that runs 500 BMC jobs through a primary kill (it prints the
# jobs' figures).
cargo test -q -p plinth --test it -- ha::bench_ ha::bmc_jobs_run_exactly_once_through_a_failover \
  --include-ignored --nocapture --test-threads 1 2>&1 | grep -oE 'BENCH.*|panicked.*|FAILED.*'
