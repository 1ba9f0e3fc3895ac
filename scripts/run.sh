#!/usr/bin/env bash
# Runs plinth on a fresh Debian 12 machine with Rust installed; installs what is missing.
#
#   scripts/run.sh              the demo (as root): plinth with its embedded PostgreSQL and a
#                               virtual rack of three QEMU machines behind virtual BMCs (Redfish
#                               and IPMI), in network namespaces of their own; the machines are
#                               enrolled into a rack and inspected. plinth's API is on
#                               127.0.0.1:8080 (--listen ADDR picks another). Ctrl-C stops it all
#                               and removes the namespaces, processes and files it made.
#   scripts/run.sh serve [ARGS] plinth for real hardware: `plinth serve ARGS` (e.g. --config
#                               plinth.toml), with the embedded database unless one is configured.
#
# Both build plinth (release) and the boot files (images/build.sh: iPXE, the ramdisk with the
# agent); `serve` puts them in its images root (PLINTH_IMAGES__ROOT, else under the state dir;
# PLINTH_SKIP_IMAGES=1 skips them), the demo in a folder of its own in the cargo target dir.
set -euo pipefail
cd "$(dirname "$0")/.."
export SQLX_OFFLINE=true
target=${CARGO_TARGET_DIR:-$PWD/target}
mode=demo
if [ "${1:-}" = serve ] || [ "${1:-}" = demo ]; then
  mode=$1
  shift
fi

case $mode in
serve)
  scripts/ensure-packages.sh postgresql qemu-utils
  cargo build --release --locked -p plinth -p plinth-agent
  if [ "${PLINTH_SKIP_IMAGES:-}" != 1 ]; then
    PLINTH_AGENT_BIN=$target/release/plinth-agent images/build.sh
  fi
  exec "$target/release/plinth" serve "$@"
  ;;
demo)
  if [ "$(id -u)" != 0 ]; then
    echo "run.sh: the demo needs root (it creates network namespaces, taps and VMs);" \
      "plinth alone runs without: scripts/run.sh serve" >&2
    exit 1
  fi
  scripts/ensure-packages.sh postgresql qemu-utils iproute2 qemu-system-x86 ipxe-qemu ovmf ipxe \
    linux-image-amd64 busybox-static cpio kmod
  cargo build --release --locked -p plinth -p plinth-agent -p plinth-testkit
  PLINTH_AGENT_BIN=$target/release/plinth-agent images/build.sh "$target/demo-images"
  exec "$target/release/plinth-lab" demo --images "$target/demo-images" \
    --plinth "$target/release/plinth" "$@"
  ;;
esac
