#!/usr/bin/env bash
# The TFTP benchmark of docs/benchmarks.md. Two network namespaces joined by a veth pair; in the
# server one, three servers over the same directory: plinth's example server
# (crates/plinth-tftp/examples/tftpd.rs, release build) on port 69, tftpd-hpa (in.tftpd,
# lock-step only) on 1069 and atftpd on 2069. tftpd-hpa and atftpd are not installed: their
# Debian packages are downloaded and unpacked into a temp dir (installing them would start
# daemons, and the two conflict). From the client namespace, atftp fetches a 64 MiB random file
# with blksize 1468, lock-step (windowsize 1) and with windowsize 32, from each server in turn,
# BENCH_ROUNDS times (default 3; the median is reported; each round starts with the next
# server, after one unmeasured warm-up fetch from each); every fetch is checked with cmp.
# Besides MiB/s, the CPU time plinth and atftpd spent on each fetch (utime+stime from
# /proc/PID/stat; tftpd-hpa's is not shown: it forks per transfer and its children are not
# accounted to it).
# Then BENCH_CONCURRENT (default 500) atftp processes at once fetch a 1 MiB file from plinth,
# each checking its copy with cmp; and plinth's peak RSS (VmHWM) over the whole run.
#   scripts/bench-tftp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${BENCH_ROUNDS:-3}
concurrent=${BENCH_CONCURRENT:-500}
scripts/ensure-packages.sh atftp iproute2
export SQLX_OFFLINE=true
cargo build --release -q -p plinth-tftp --example tftpd
bin=${CARGO_TARGET_DIR:-target}/release/examples/tftpd

work=$(mktemp -d /tmp/plinth-bench-tftp.XXXXXX)
# The peers drop privileges to nobody: the files must be world-readable.
chmod 755 "$work"
tag=$$
srv=pbt${tag}s; cli=pbt${tag}c; sif=pbt${tag}a; cif=pbt${tag}b
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  for ns in "$srv" "$cli"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work" "${out:-/nonexistent}"
}
trap cleanup EXIT
ip netns add "$srv"; ip netns add "$cli"
ip link add "$sif" netns "$srv" type veth peer name "$cif" netns "$cli"
ip -n "$srv" addr add 10.97.0.1/24 dev "$sif"; ip -n "$cli" addr add 10.97.0.2/24 dev "$cif"
for ns in "$srv" "$cli"; do ip -n "$ns" link set lo up; done
ip -n "$srv" link set "$sif" up; ip -n "$cli" link set "$cif" up

# The peers, unpacked, not installed.
(cd "$work" && apt-get download -q tftpd-hpa atftpd >/dev/null 2>&1)
for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/peers"; done
hpa_version=$(dpkg-deb -f "$work"/tftpd-hpa_*.deb Version)
atftpd_version=$(dpkg-deb -f "$work"/atftpd_*.deb Version)

root=$work/root
mkdir -p "$root"
# The clients' copies go to tmpfs, so no writeback of earlier copies disturbs a measurement.
out=$(mktemp -d /dev/shm/plinth-bench-tftp.XXXXXX)
chmod 755 "$root"
head -c $((64 * 1024 * 1024)) /dev/urandom > "$root/big"
head -c $((1024 * 1024)) /dev/urandom > "$root/mib"
chmod 644 "$root"/*
sync

ip netns exec "$srv" "$bin" "$root" 10.97.0.1:69 65464 64 >"$work/plinth.log" 2>&1 &
plinth=$!; pids+=($plinth)
ip netns exec "$srv" "$work/peers/usr/sbin/in.tftpd" -L -s -u nobody -a 10.97.0.1:1069 "$root" \
  >"$work/hpa.log" 2>&1 &
pids+=($!)
ip netns exec "$srv" "$work/peers/usr/sbin/atftpd" --daemon --no-fork --port 2069 \
  --bind-address 10.97.0.1 --user nobody --group nogroup --maxthread 1000 --no-multicast \
  --logfile "$work/atftpd.log" "$root" >"$work/atftpd.out" 2>&1 &
pids+=($!)
sleep 1
for p in "${pids[@]}"; do kill -0 "$p" || { cat "$work"/*.log "$work"/*.out; exit 1; }; done

cpu_ticks() { # pid → utime+stime+cutime+cstime
  awk '{ sub(/.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$1/stat"
}
fetch() { # index windowsize → "MiB/s CPU-ms", after checking the copy
  local i=$1 ws=$2 opts=(--option "blksize 1468") t0 t1 c0 c1
  [ "$ws" -gt 1 ] && opts+=(--option "windowsize $ws")
  rm -f "$out/big"
  c0=$(cpu_ticks "${pids[$i]}"); t0=$(date +%s.%N)
  ip netns exec "$cli" atftp -g -r big -l "$out/big" "${opts[@]}" 10.97.0.1 "${ports[$i]}" >/dev/null 2>&1 || true
  t1=$(date +%s.%N); c1=$(cpu_ticks "${pids[$i]}")
  if cmp -s "$out/big" "$root/big"; then
    awk -v a="$t0" -v b="$t1" -v c="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf "%.1f %.0f\n", 64 / (b - a), c * 1000 / hz }'
  else
    echo "FAILED FAILED"
  fi
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "-") }'; }

declare -A mibs cpus
ports=(69 1069 2069)
for i in 0 1 2; do fetch "$i" 32 >/dev/null; done
for r in $(seq "$rounds"); do
  for k in 0 1 2; do
    i=$(( (k + r - 1) % 3 ))
    for ws in 1 32; do
      read -r m c < <(fetch "$i" "$ws")
      mibs[$i,$ws]="${mibs[$i,$ws]:-} $m"; cpus[$i,$ws]="${cpus[$i,$ws]:-} $c"
    done
  done
done

echo
echo "| server | lock-step MiB/s | lock-step server CPU | windowsize 32 MiB/s | windowsize 32 server CPU |"
echo "|---|---|---|---|---|"
rev="$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
[ -z "$(git status --porcelain 2>/dev/null)" ] || rev="$rev + working tree"
label=("plinth $rev" "tftpd-hpa $hpa_version" "atftpd $atftpd_version")
for i in 0 1 2; do
  row="| ${label[$i]} |"
  for ws in 1 32; do
    row="$row $(echo "${mibs[$i,$ws]}" | median) ($(echo "${mibs[$i,$ws]}" | xargs | tr ' ' '/')) |"
    if [ "$i" = 1 ]; then
      row="$row n/a |" # its per-transfer children are not accounted to it
    else
      row="$row $(echo "${cpus[$i,$ws]}" | median) ms ($(echo "${cpus[$i,$ws]}" | xargs | tr ' ' '/')) |"
    fi
  done
  echo "$row"
done
echo "(atftp client, blksize 1468, a 64 MiB file: median of $rounds runs, every run in brackets in order;"
echo " server CPU: user+system time of the server process for one fetch; FAILED: the copy differed)"

# Many clients at once against plinth.
mkdir -p "$out/many"
t0=$(date +%s.%N)
ip netns exec "$cli" bash -c '
  for i in $(seq '"$concurrent"'); do
    ( atftp -g -r mib -l "'"$out"'/many/$i" --option "blksize 1468" 10.97.0.1 69 >/dev/null 2>&1 \
      && cmp -s "'"$out"'/many/$i" "'"$root"'/mib" && touch "'"$out"'/many/$i.ok" ) &
  done
  wait'
t1=$(date +%s.%N)
ok=$(find "$out/many" -name '*.ok' | wc -l)
wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
hwm=$(awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$plinth/status")
echo
echo "$concurrent concurrent 1 MiB fetches from plinth (atftp, blksize 1468): $ok byte-identical, wall time $wall s"
echo "(the server's counters below: peak_active is the most transfers it had in progress at once)"
echo "plinth peak RSS (VmHWM) over the run: $hwm"
kill "$plinth"; wait "$plinth" 2>/dev/null || true
grep -h "counters:" "$work/plinth.log" || true
