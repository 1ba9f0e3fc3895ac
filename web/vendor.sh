#!/usr/bin/env bash
# Fetches the web UI's third-party files from the npm registry, checks them against the pinned
# integrity hash, and copies the few files the UI uses into web/static/vendor/ (committed: a
# build needs no network; they are compiled into the binary like the other static files).
#   web/vendor.sh    fetch, check, copy
set -euo pipefail
cd "$(dirname "$0")"
pkg=@xterm/xterm
version=6.0.0
integrity=sha512-TQwDdQGtwwDt+2cgKDLn0IRaSxYu1tSUjgKarSDkUM0ZNiSRXFpjxEsvc/Zgc5kq5omJ+V0a8/kIM2WD3sMOYg==
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$pkg@$version" >/dev/null)
tarball=$(ls "$work"/*.tgz)
got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [ "$got" != "$integrity" ]; then
  echo "integrity mismatch for $pkg@$version: got $got, pinned $integrity" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work"
mkdir -p static/vendor
cp "$work/package/lib/xterm.js" static/vendor/xterm.js
cp "$work/package/css/xterm.css" static/vendor/xterm.css
cp "$work/package/LICENSE" static/vendor/xterm.LICENSE
echo "$pkg@$version ($integrity)" > static/vendor/VERSIONS
