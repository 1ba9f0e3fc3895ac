#!/usr/bin/env bash
# The virtual rack benchmark: seconds from `inspect` to `ready` for one QEMU VM (TCG) and for
# PLINTH_BENCH_VMS (default 8) at once, each powered and booted through its virtual BMC; next to
# the boot chain alone with dnsmasq serving the same iPXE, kernel and ramdisk to the same VM.
# Also the agent's peak memory and the initrd's size. Needs root (network namespaces).
#   scripts/bench-rack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh qemu-system-x86 ipxe-qemu ovmf dnsmasq-base
export SQLX_OFFLINE=true
cargo build -q -p plinth-agent -p plinth
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores"
cargo test -q -p plinth --test it rack::bench_inspect_to_ready -- --ignored --nocapture 2>&1 | grep -E '^BENCH|panicked|FAILED'
