#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine with Rust installed: installs what is
# missing, starts a scratch PostgreSQL, then format, lints, every test, and the query cache.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh postgresql curl python3 qemu-system-x86 ipxe-qemu ovmf \
  ipxe linux-image-amd64 busybox-static cpio kmod $(grep -v "^#" crates/plinth-testkit/PACKAGES)
# Python test tools (sushy-tools' Redfish emulator) in a venv outside the clone.
venv=${PLINTH_VENV:-/var/cache/plinth-venv}
if [ ! -x "$venv/bin/sushy-emulator" ]; then
  scripts/ensure-packages.sh python3-venv
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "sushy-tools==2.2.0"
fi
export PLINTH_SUSHY_EMULATOR=$venv/bin/sushy-emulator
export SQLX_OFFLINE=true
unset DATABASE_URL

pgdir=$(mktemp -d /tmp/plinth-test-pg.XXXXXX)
chmod 755 "$pgdir"
cleanup() { scripts/pg-scratch.sh "$pgdir" stop; rm -rf "$pgdir"; }
trap cleanup EXIT
PLINTH_TEST_DATABASE_URL=$(scripts/pg-scratch.sh "$pgdir")
export PLINTH_TEST_DATABASE_URL

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --workspace
echo "== offline query cache"
SQLX_OFFLINE=false scripts/sqlx-prepare.sh --check
