#!/usr/bin/env bash
# The DHCP benchmark of docs/benchmarks.md: perfdhcp (full DORA, as a relay from a client
# namespace through a veth pair) against Kea 2.2 (memfile, persist=true; single-threaded and
# with multi-threading), dnsmasq (lease file) and plinth (release build; every lease committed
# to PostgreSQL before the ACK) on the same setup, at the same offered rates. plinth runs in two
# configurations of one PostgreSQL cluster with the embedded database's default durability
# (fsync on): `plinth`, synchronous commit on (the default), and `plinth-async`, its database
# set to synchronous_commit=off (committed and visible before the ACK, flushed to disk within
# ~200 ms: the durability of Kea's memfile, which does not fsync). The servers take turns at
# each rate, BENCH_ROUNDS times over, so that a slow spell of the shared machine falls on all of
# them rather than on whichever ran last. Every run prints its server's CPU per DORA (plinth's
# with PostgreSQL's), and where datagrams were lost to a full receive buffer (the server's
# socket, or perfdhcp's). Then plinth's memory with 100,000 leases.
#   scripts/bench-dhcp.sh [SECONDS_PER_RATE] [RATES...]     default: 10 s at 1000 2000 4000 8000
# BENCH_SERVERS picks the servers (default "kea kea-mt plinth plinth-async memory"; dnsmasq too
# on request, and null: a responder without lease state, scripts/bench-dhcp-null.c, which
# measures what perfdhcp and the machine leave for any server); BENCH_ROUNDS (default 1).
# BENCH_SUSTAINED=1: instead of the fixed rates, each server's highest rate under 0.1 % drops
# with at least 99 % of it achieved (perfdhcp, starved of CPU, sends less than offered):
# rates from BENCH_SUSTAIN_FROM (default 4000) up in steps of BENCH_SUSTAIN_STEP (default 2000)
# until one drops more, then halving the step between the last good and the first bad rate down
# to BENCH_SUSTAIN_RESOLUTION (default 500); the servers take turns at every probe (with several
# BENCH_PLINTH_BINS, each binary is searched on its own: plinth@label, plinth-async@label).
# BENCH_RCVBUF: the receive buffer, in bytes, of perfdhcp's, Kea's and dnsmasq's sockets (a
# preload, scripts/bench-rcvbuf.c; default 4194304, the 4 MiB plinth sets on its own socket;
# 0: the system's default, about 200 KiB).
# BENCH_PLINTH_BINS="label=path ..." measures several plinth binaries in turn (default: this
# tree's release build; a label containing "scraped" has a scraper read /metrics every
# BENCH_SCRAPE seconds, default 1, during its runs: its cost is part of what is measured).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
shift || true
rates=${*:-1000 2000 4000 8000}
servers=" ${BENCH_SERVERS:-kea kea-mt plinth plinth-async memory} "
rounds=${BENCH_ROUNDS:-1}
scripts/ensure-packages.sh postgresql kea-dhcp4-server kea-admin dnsmasq-base iproute2 gcc libc6-dev
export SQLX_OFFLINE=true
cargo build --release --locked -q -p plinth
bin=${CARGO_TARGET_DIR:-target}/release/plinth

work=$(mktemp -d /tmp/plinth-bench-dhcp.XXXXXX)
chmod 755 "$work"
tag=$$
srv=pbd${tag}s; cli=pbd${tag}c; sif=pbd${tag}a; cif=pbd${tag}b
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }
cleanup() {
  stop_all
  ip netns del "$srv" 2>/dev/null || true
  ip netns del "$cli" 2>/dev/null || true
  scripts/pg-scratch.sh "$work/pg" stop
  [ -z "${BENCH_PG_LOG:-}" ] || cp "$work/pg/server.log" "$BENCH_PG_LOG" || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$srv"; ip netns add "$cli"
ip link add "$sif" netns "$srv" type veth peer name "$cif" netns "$cli"
ip -n "$srv" addr add 10.70.0.2/15 dev "$sif"; ip -n "$cli" addr add 10.70.0.9/15 dev "$cif"
for ns in "$srv" "$cli"; do ip -n "$ns" link set lo up; done
ip -n "$srv" link set "$sif" up; ip -n "$cli" link set "$cif" up
# Every process's sockets get the receive buffer plinth sets on its own (BENCH_RCVBUF).
rcvbuf=${BENCH_RCVBUF:-4194304}
preload=()
if [ "$rcvbuf" != 0 ]; then
  cc -shared -fPIC -O2 -o "$work/rcvbuf.so" scripts/bench-rcvbuf.c -ldl
  preload=(env RCVBUF_BYTES="$rcvbuf" LD_PRELOAD="$work/rcvbuf.so")
fi
echo "receive buffers of perfdhcp, Kea and dnsmasq: ${rcvbuf/#0/the system default} bytes; plinth's: 4194304 (its own)" >&2
export KEA_PIDFILE_DIR=$work KEA_LOCKFILE_DIR=$work KEA_LFC_EXECUTABLE=/bin/true

# 10.70.0.0/15 with a pool of 130,815 addresses for every server.
first=10.70.1.0; last=10.71.255.254

# UDP datagrams a namespace's sockets dropped because their receive buffer was full.
rcvbuf_errors() { ip netns exec "$1" awk '/^Udp:/ {if (h) print $6; h=1}' /proc/net/snmp; }
perf() { # name rate [seconds] → one table row, and where packets were lost
  local name=$1 rate=$2 out c0 s0 lost
  c0=$(rcvbuf_errors "$cli"); s0=$(rcvbuf_errors "$srv")
  # -W: after the test period, wait 1 s (perfdhcp's drop time) for the answers still in flight
  # instead of counting them as drops, which would charge a server for its latency.
  out=$(ip netns exec "$cli" "${preload[@]}" perfdhcp -4 -l 10.70.0.9 -r "$rate" -R 100000 -p "${3:-$secs}" -W 1000000 10.70.0.2 2>&1 || true)
  # A drop is a request the server never read (its socket's buffer was full: it fell behind) or
  # a reply perfdhcp never read (perfdhcp's buffer was full: on two cores, perfdhcp is
  # descheduled while the server and its database run), or a packet the server chose to drop.
  lost="  $name at $rate/s: datagrams dropped by full receive buffers: the server's $(( $(rcvbuf_errors "$srv") - s0 )), perfdhcp's $(( $(rcvbuf_errors "$cli") - c0 ))"
  python3 - "$name" "$rate" "$out" "${3:-$secs}" "$work/last" <<'PY'
import re, sys
name, rate, out, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
def ex(label):
    m = re.search(label + r".*?sent packets: (\d+).*?received packets: (\d+).*?drops: (\d+).*?avg delay: ([\d.]+) ms", out, re.S)
    return tuple(float(x) for x in m.groups()) if m else (0, 0, 0, 0)
s1, r1, d1, a1 = ex(r"Statistics for: DISCOVER-OFFER")
s2, r2, d2, a2 = ex(r"Statistics for: REQUEST-ACK")
# Completed exchanges (ACKs received) per second of the test period; perfdhcp's own "Rate"
# divides by the period plus the wait.
achieved = r2 / secs
drops = (d1 + d2) / max(s1 + s2, 1) * 100
print(f"| {name} | {rate} | {achieved:.0f} | {drops:.2f} % | {a1:.2f} ms / {a2:.2f} ms |")
with open(sys.argv[5], "w") as f:
    f.write(f"{achieved:.0f} {drops:.4f} {r2:.0f}\n")
PY
  echo "$lost"
}

kea() { # rate [mt]: Kea memfile, single-threaded, or multi-threaded with "mt"
  local mt='' label="memfile persist"
  if [ "${2:-}" = mt ]; then
    mt='"multi-threading": {"enable-multi-threading": true, "thread-pool-size": 2, "packet-queue-size": 64},'
    label="memfile persist, multi-threading (2 threads)"
  fi
  rm -f "$work"/kea-leases4.csv*
  cat > "$work/kea.conf" <<JSON
{"Dhcp4": {"interfaces-config": {"interfaces": ["$sif"], "dhcp-socket-type": "udp"}, $mt
  "lease-database": {"type": "memfile", "persist": true, "name": "$work/kea-leases4.csv", "lfc-interval": 0},
  "valid-lifetime": 3600, "renew-timer": 1800, "rebind-timer": 3150,
  "subnet4": [{"id": 1, "subnet": "10.70.0.0/15", "pools": [{"pool": "$first - $last"}],
               "option-data": [{"name": "routers", "data": "10.70.0.1"}]}],
  "loggers": [{"name": "kea-dhcp4", "severity": "WARN", "output_options": [{"output": "$work/kea.log"}]}]}}
JSON
  ip netns exec "$srv" "${preload[@]}" kea-dhcp4 -c "$work/kea.conf" >"$work/kea.out" 2>&1 &
  local kpid=$!
  pids+=($kpid); sleep 1
  local k0; k0=$(ticks "/proc/$kpid/stat")
  perf "Kea $(kea-dhcp4 -v 2>/dev/null | head -1) $label" "$1"
  cpu_line "Kea $label at $1/s" "$(( $(ticks "/proc/$kpid/stat") - k0 ))" 0
  stop_all
}

# The CPU per DORA of a run: ticks of the server and of PostgreSQL over the ACKs perfdhcp got.
cpu_line() { # label server-ticks pg-ticks
  local acks; acks=$(awk '{print $3}' "$work/last")
  local hz; hz=$(getconf CLK_TCK)
  echo "  $1: CPU per DORA $(( ($2 + $3) * 1000000 / hz / (acks + 1) )) µs (server $(( $2 * 1000000 / hz / (acks + 1) )) µs, PostgreSQL $(( $3 * 1000000 / hz / (acks + 1) )) µs; $acks ACKs)" >&2
}

dnsmasq_() { # rate
  rm -f "$work/dnsmasq.leases"
  ip netns exec "$srv" "${preload[@]}" dnsmasq -d --port=0 --conf-file=/dev/null --no-resolv --no-hosts --no-ping \
    --interface="$sif" --bind-interfaces --dhcp-authoritative --dhcp-lease-max=200000 \
    --dhcp-range="$first,$last,255.254.0.0,1h" --dhcp-leasefile="$work/dnsmasq.leases" \
    --pid-file="$work/dnsmasq.pid" >"$work/dnsmasq.out" 2>&1 &
  pids+=($!); sleep 1
  perf "dnsmasq $(dnsmasq --version | head -1 | awk '{print $3}') lease file" "$1"
  stop_all
}

null_() { # rate: the floor, a responder without lease state (scripts/bench-dhcp-null.c)
  [ -x "$work/dhcp-null" ] || cc -O2 -o "$work/dhcp-null" scripts/bench-dhcp-null.c
  ip netns exec "$srv" "$work/dhcp-null" 10.70.0.2 >"$work/null.out" 2>&1 &
  local npid=$!
  pids+=($npid); sleep 0.5
  local n0; n0=$(ticks "/proc/$npid/stat")
  perf "null responder (no lease state; the client's and the machine's limit)" "$1"
  cpu_line "null responder at $1/s" "$(( $(ticks "/proc/$npid/stat") - n0 ))" 0
  stop_all
}

# The embedded database's durability: fsync, full-page writes and synchronous commit on.
# (BENCH_PG_OPTS: more server options, e.g. auto_explain's; BENCH_PG_LOG=FILE keeps its log.)
server=$(PG_SCRATCH_OPTS="-c shared_buffers=256MB ${BENCH_PG_OPTS:-}" scripts/pg-scratch.sh "$work/pg")
start_plinth() { # [async]: an empty database, plinth serving the bench subnet
  psql "$server" -qc "drop database if exists dhcpbench" -c "create database dhcpbench" 2>/dev/null
  if [ "${1:-}" = async ]; then
    psql "$server" -qc "alter database dhcpbench set synchronous_commit = off"
  fi
  url=${server/\/postgres\?//dhcpbench?}
  mkdir -p "$work/state"
  "$bin" migrate --database-url "$url" 2>/dev/null
  ip netns exec "$srv" env PLINTH_STATE_DIR="$work/state" PLINTH_LOG__LEVEL=warn PLINTH_DHCP__ENABLED=true \
    PLINTH_DHCP__INTERFACES="[\"$sif\"]" PLINTH_DHCP__BOOT_SERVER=10.70.0.2 PLINTH_DHCP__CLIENT_RATE_LIMIT=1000 PLINTH_DHCP__NEW_CLIENT_RATE=0 \
    "$bin" serve --database-url "$url" --listen 127.0.0.1:8080 >"$work/plinth.out" 2>&1 &
  pid=$!; pids+=($pid); sleep 1
  token=$(ip netns exec "$srv" env PLINTH_STATE_DIR="$work/state" "$bin" admin create-token --database-url "$url" --name bench --role admin)
  ip netns exec "$srv" env PLINTH_TOKEN="$token" PLINTH_API_URL=http://127.0.0.1:8080 \
    "$bin" subnet add 10.70.0.0/15 --range "$first-$last" --router 10.70.0.1 --lease-time 3600 --relay-any-in-cidr >/dev/null
}
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$pid/status"; }
bound() { psql "$url" -qAtc "select count(*) from leases where state = 'bound'"; }
plinth_rss=
plinth_bins=${BENCH_PLINTH_BINS:-$(git rev-parse --short HEAD)=$bin}
head_bin=$bin
ticks() { awk '{s += $14 + $15} END {print s + 0}' "$@" 2>/dev/null || echo 0; }
pg_ticks() { # the postmaster and its children (its backends carry no path to match), and the
  # children that have exited (autovacuum's workers: the postmaster's cutime and cstime)
  local pm; pm=$(head -1 "$work/pg/data/postmaster.pid")
  echo $(( $(ticks "/proc/$pm/stat" $(for p in $(pgrep -P "$pm" || true); do echo "/proc/$p/stat"; done)) +
           $(awk '{print $16 + $17}' "/proc/$pm/stat") ))
}
plinth() { # rate [async]
  local entry label durability="synchronous commit"
  [ "${2:-}" != async ] || durability="synchronous_commit=off"
  for entry in $plinth_bins; do
    label=${entry%%=*}; bin=${entry#*=}
    [ -z "${only_label:-}" ] || [ "$label" = "$only_label" ] || continue
    start_plinth "${2:-}"
    # A label with "scraped" in it is scraped (every BENCH_SCRAPE seconds, default 1).
    local scrape=${BENCH_SCRAPE:-}
    [[ $label != *scraped* ]] || scrape=${BENCH_SCRAPE:-1}
    if [ -n "$scrape" ]; then
      ip netns exec "$srv" bash -c "while :; do curl -s -o /dev/null -H 'Authorization: Bearer $token' http://127.0.0.1:8080/metrics; sleep $scrape; done" &
      pids+=($!)
    fi
    local p0 g0
    p0=$(ticks "/proc/$pid/stat"); g0=$(pg_ticks)
    perf "plinth $label PostgreSQL 15, $durability${scrape:+, /metrics read every ${scrape} s}" "$1"
    cpu_line "plinth $label ($durability) at $1/s" "$(( $(ticks "/proc/$pid/stat") - p0 ))" "$(( $(pg_ticks) - g0 ))"
    # The packets plinth itself chose not to answer, by reason (its counters).
    local metrics dropped naks loads
    metrics=$(ip netns exec "$srv" curl -s -H "Authorization: Bearer $token" http://127.0.0.1:8080/metrics)
    dropped=$(awk '/^plinth_dhcp_packets_dropped_total/ && $2 > 0 {sub(/^plinth_dhcp_packets_dropped_total/, ""); printf " %s %s", $1, $2}' <<<"$metrics")
    naks=$(awk '/^plinth_dhcp_replies_total\{type="nak"\}/ {print $2}' <<<"$metrics")
    # (a client view loaded more than once in a run read every known MAC again: a reload)
    loads=$(awk '/^plinth_dhcp_view_loads_total/ {print $2}' <<<"$metrics")
    echo "  plinth $label at $1/s: packets plinth dropped:${dropped:- none}; NAKs sent: ${naks:-?}; client view loads: ${loads:-?}"
    plinth_rss="$plinth_rss
plinth $label ($durability) RSS after $1/s: $(rss) with $(bound) bound leases"
    stop_all
  done
  bin=$head_bin
}

run_server() { # server[@plinth label] rate: one run at one rate (a table row, a CPU line)
  local only=''
  [[ $1 != *@* ]] || only=${1#*@}
  case ${1%@*} in
    kea) kea "$2" ;;
    kea-mt) kea "$2" mt ;;
    dnsmasq) dnsmasq_ "$2" ;;
    null) null_ "$2" ;;
    plinth) only_label=$only plinth "$2" ;;
    plinth-async) only_label=$only plinth "$2" async ;;
  esac
}
# With several plinth binaries, the highest-rate search runs for each one on its own
# (plinth@label), so that one binary's bad probe does not end the other's search.
measured=()
for s_ in $servers; do
  case $s_ in
    memory) ;;
    plinth|plinth-async)
      if [ -n "${BENCH_SUSTAINED:-}" ] && [ "$(wc -w <<<"$plinth_bins")" -gt 1 ]; then
        for entry in $plinth_bins; do measured+=("$s_@${entry%%=*}"); done
      else
        measured+=("$s_")
      fi ;;
    *) measured+=("$s_") ;;
  esac
done

echo "| server | offered DORA/s | achieved DORA/s | drops (both exchanges) | avg delay DISCOVER-OFFER / REQUEST-ACK |"
echo "|---|---|---|---|---|"
if [ -z "${BENCH_SUSTAINED:-}" ]; then
  for round in $(seq "$rounds"); do
    for rate in $rates; do
      for s_ in "${measured[@]}"; do run_server "$s_" "$rate"; done
    done
  done
else
  # Each server's highest rate under 0.1 % drops; the servers take turns at every probe.
  declare -A good bad step
  from=${BENCH_SUSTAIN_FROM:-4000}; resolution=${BENCH_SUSTAIN_RESOLUTION:-500}
  for s_ in "${measured[@]}"; do good[$s_]=0; bad[$s_]=0; step[$s_]=${BENCH_SUSTAIN_STEP:-2000}; done
  next_rate() { # server → the next rate to probe, or nothing when found
    local g=${good[$1]} b=${bad[$1]}
    if [ "$b" = 0 ]; then
      [ "$g" = 0 ] && echo "$from" || echo $((g + step[$1]))
    elif [ $((b - g)) -gt "$resolution" ]; then
      echo $(( (g + b) / 2 / 100 * 100 ))
    fi
  }
  while :; do
    probed=0
    for s_ in "${measured[@]}"; do
      r=$(next_rate "$s_")
      [ -n "$r" ] || continue
      probed=1
      run_server "$s_" "$r"
      # Sustained: under 0.1 % drops, and perfdhcp sent what was offered (a server whose
      # database takes perfdhcp's share of the cores slows the sender down, without drops).
      if awk -v r="$r" '{exit !($2 < 0.1 && $1 >= 0.99 * r)}' "$work/last"; then good[$s_]=$r; else bad[$s_]=$r; fi
    done
    [ "$probed" = 1 ] || break
  done
  echo
  echo "| server | highest rate under 0.1 % drops, 99 % achieved (DORA/s offered; resolution $resolution) | first rate above it that did not |"
  echo "|---|---|---|"
  for s_ in "${measured[@]}"; do echo "| $s_ | ${good[$s_]} | ${bad[$s_]} |"; done
fi

# Memory with 100,000 leases: bind 100,000 addresses to distinct clients, then serve 4000/s for
# 5 s more (20,000 new clients, fewer than the 30,815 addresses left) and read the process's
# resident memory.
if [[ $servers == *" memory "* ]]; then
  start_plinth
  psql "$url" -qc "update leases set state = 'bound', expires_at = now() + interval '1 hour',
      mac = ('06:00:' || rtrim(regexp_replace(lpad(to_hex((address - '10.70.0.0'::inet)::int), 8, '0'), '(..)', '\\1:', 'g'), ':'))::macaddr
    where address < '10.70.1.0'::inet + 100000"
  perf "plinth, 100,000 leases bound beforehand" 4000 5
  plinth_rss="$plinth_rss
plinth RSS after 4000/s with 100,000 leases preloaded: $(rss) with $(bound) bound leases"
  stop_all
fi
echo "$plinth_rss"
