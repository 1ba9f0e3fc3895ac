#!/usr/bin/env bash
# Builds and runs plinth on a fresh Debian 12 machine with Rust installed.
# With no database configured, plinth starts its own PostgreSQL under its state directory.
# It also builds the boot files (images/build.sh) into the images root.
# Extra arguments go to `plinth serve` (e.g. --config plinth.toml, --listen 127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh postgresql
export SQLX_OFFLINE=true
cargo build --release --locked -p plinth
# The boot files (iPXE binaries, the inspection ramdisk) in the images root: PLINTH_IMAGES__ROOT,
# else the default under the state directory. Skip with PLINTH_SKIP_IMAGES=1.
if [ "${PLINTH_SKIP_IMAGES:-}" != 1 ]; then
  images/build.sh
fi
exec target/release/plinth serve "$@"
