#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine with Rust installed: installs what is
# missing, starts a scratch PostgreSQL, then format, lints, every test, and the query cache.
set -euo pipefail
cd "$(dirname "$0")/.."
# One list, one apt transaction (ensure-packages.sh checks afterwards that all are installed).
scripts/ensure-packages.sh postgresql curl python3 python3-venv g++ qemu-system-x86 ipxe-qemu ovmf \
  ipxe linux-image-amd64 busybox-static cpio kmod syslinux syslinux-common systemd-boot-efi \
  $(grep -v "^#" crates/plinth-testkit/PACKAGES)
# Python test tools in a venv outside the clone: sushy-tools' Redfish emulator, and the API
# contract's checkers (crates/plinth-api/tests/contract.rs): openapi-spec-validator,
# schemathesis, openapi-python-client. Each is installed when missing, then all must be there.
venv=${PLINTH_VENV:-/var/cache/plinth-venv}
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
py_tools=(
  "sushy-emulator sushy-tools==2.2.0"
  "openapi-spec-validator openapi-spec-validator==0.9.0"
  "schemathesis schemathesis==4.32.5"
  "openapi-python-client openapi-python-client==0.29.1"
)
missing=()
for t in "${py_tools[@]}"; do
  [ -x "$venv/bin/${t%% *}" ] || missing+=("${t#* }")
done
if [ ${#missing[@]} -gt 0 ]; then
  "$venv/bin/pip" install -q "${missing[@]}"
fi
for t in "${py_tools[@]}"; do
  [ -x "$venv/bin/${t%% *}" ] || { echo "test.sh: ${t%% *} missing from $venv after pip install ${t#* }" >&2; exit 1; }
done
export PLINTH_VENV=$venv
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
# Every test binary runs even when one fails, so one failure does not hide the others.
cargo test --locked --workspace --no-fail-fast
echo "== fuzz targets, a few seconds each (longer runs: scripts/fuzz.sh 300)"
scripts/fuzz.sh "${PLINTH_FUZZ_SECONDS:-5}"
echo "== offline query cache"
SQLX_OFFLINE=false scripts/sqlx-prepare.sh --check
