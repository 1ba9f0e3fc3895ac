#!/usr/bin/env bash
# The deploy benchmark: a 256 MiB disk image of real binaries (raw, gzip, zstd) written by the
# agent in a QEMU VM (TCG), against busybox `wget | [gunzip |] dd` of the same files from the
# same plinth HTTP server in a VM of the same spec; seconds from `deploy` to `deployed` for one
# VM and for four at once. Needs root (network namespaces) and PLINTH_TEST_DATABASE_URL.
#   scripts/bench-deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh qemu-system-x86 ipxe-qemu ovmf dnsmasq-base fdisk gzip zstd
export SQLX_OFFLINE=true
# The agent in the ramdisk as it ships (release); plinth and the test harness as tests build them.
cargo build -q --release -p plinth-agent
cargo build -q -p plinth-agent -p plinth
export PLINTH_AGENT_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/plinth-agent
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores"
cargo test -q -p plinth --test it deploy::bench_deploy -- --ignored --nocapture 2>&1 | grep -E '^BENCH|panicked|FAILED'
