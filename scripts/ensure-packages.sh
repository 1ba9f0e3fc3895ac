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
# A package installed from a source this machine no longer has (a backport, say) can make the
# set impossible: the backport qemu-utils 10 Breaks bookworm's qemu-system-common 7.2. Then the
# packages apt names in its unmet dependencies, and those asked for, that are installed at a
# version no configured source offers are moved to the newest version a source does offer.
repo_versions() { apt-cache madison "$1" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}'; }
repo_version() { repo_versions "$1" | head -n 1; }
orphaned() {
  local v
  v=$(dpkg-query -W -f='${Version}' "$1" 2>/dev/null) || return 1
  [ -n "$v" ] && ! repo_versions "$1" | grep -qxF "$v"
}
log=$(mktemp)
if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >"$log" 2>&1; then
  pins=()
  for p in "$@" $(sed -n 's/^ \([a-z0-9][a-z0-9.+-]*\) : .*/\1/p' "$log" | sort -u); do
    if orphaned "$p" && v=$(repo_version "$p") && [ -n "$v" ]; then
      echo "ensure-packages: $p $(dpkg-query -W -f='${Version}' "$p") comes from no configured source; using $v" >&2
      pins+=("$p=$v")
    fi
  done
  if [ ${#pins[@]} -eq 0 ]; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rest=()
  for p in "$@"; do
    case " ${pins[*]} " in *" $p="*) ;; *) rest+=("$p") ;; esac
  done
  if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends --allow-downgrades "${rest[@]}" "${pins[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
fi
rm -f "$log"
left=$(missing "$@")
if [ -n "$left" ]; then
  echo "ensure-packages: still not installed after apt-get install: $left" >&2
  exit 1
fi
