#!/usr/bin/env bash
# Installs the Debian packages plinth needs. Usage: ensure-packages.sh PKG...
# When any is missing, the whole list goes to apt in one transaction, so that apt resolves them
# together (installing one must not remove another that was already counted as present, as
# qemu-system-x86 removing a newer qemu-utils did); then every package asked for is checked
# again, and a missing one fails the run with its name.
set -euo pipefail
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing() {
  local p out=()
  for p in "$@"; do installed "$p" || out+=("$p"); done
  echo "${out[*]}"
}
[ $# -gt 0 ] || exit 0
todo=$(missing "$@")
[ -z "$todo" ] && exit 0
echo "installing: $todo" >&2
sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
left=$(missing "$@")
if [ -n "$left" ]; then
  echo "ensure-packages: still not installed after apt-get install: $left" >&2
  exit 1
fi
