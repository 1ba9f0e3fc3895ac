#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine with Rust installed: installs what is
# missing, starts a scratch PostgreSQL, then format, lints, every test, and the query cache.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh postgresql curl python3 qemu-system-x86 ipxe-qemu ovmf \
  ipxe linux-image-amd64 busybox-static cpio kmod $(grep -v "^#" crates/plinth-testkit/PACKAGES)
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
