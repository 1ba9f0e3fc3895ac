#!/usr/bin/env bash
# Builds and runs plinth on a fresh Debian 12 machine with Rust installed.
# With no database configured, plinth starts its own PostgreSQL under its state directory.
# Extra arguments go to `plinth serve` (e.g. --config plinth.toml, --listen 127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh postgresql
export SQLX_OFFLINE=true
cargo build --release --locked -p plinth
exec target/release/plinth serve "$@"
