#!/usr/bin/env bash
# The boot storm of docs/benchmarks.md: N simulated machines (`plinth-lab storm`: a PXE ROM's
# DHCP, the loader by TFTP, iPXE's DHCP, the script, kernel and initrd over HTTP, the inspection
# report with the agent's token) boot at once from a client namespace, through a veth pair, against
#   plinth: release `plinth serve` (DHCP, TFTP, HTTP) on a fresh database of a scratch PostgreSQL,
#           the N machines enrolled beforehand in state `inspecting` without a BMC, so that their
#           scripts mint agent tokens and their reports move them on; and
#   the peer: dnsmasq (DHCP, its TFTP server; iPXE, told apart by its user class, is handed a
#           static script's URL) and nginx (the script, the kernel and initrd, and 204 for the
#           report), serving the same files,
# taking turns, BENCH_ROUNDS times each, in the same namespaces. Both run their defaults but
# where parity asks otherwise: dnsmasq does not ping an address before offering it (plinth does
# not) and runs as many TFTP transfers at once as plinth's tftp.max_transfers (512). After each plinth round the
# database must show every report arrived (no machine left inspecting, facts stored) and one
# lease per machine; after each peer round dnsmasq's lease file must hold one lease per machine.
# Nothing is pinned to a CPU: servers, PostgreSQL and the simulator share the machine's cores.
# Usage: scripts/bench-storm.sh   (BENCH_MACHINES=1000, BENCH_ROUNDS=3, BENCH_UEFI_PERCENT=0,
#        BENCH_RAMP_SECS=0; BENCH_SERVERS="plinth peer" (either alone); BENCH_KEEP=DIR keeps each
#        round's JSON report, the server logs and plinth's smaps after the storm)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
scripts/ensure-packages.sh postgresql nginx-light dnsmasq-base iproute2 python3 procps
# Installing nginx starts its service on the host; this benchmark runs its own.
service nginx stop >/dev/null 2>&1 || true
export SQLX_OFFLINE=true
cargo build --release --locked -p plinth -p plinth-testkit -p plinth-agent
target=${CARGO_TARGET_DIR:-$PWD/target}
bin=$target/release/plinth
lab=$target/release/plinth-lab
N=${BENCH_MACHINES:-1000}
ROUNDS=${BENCH_ROUNDS:-3}
UEFI=${BENCH_UEFI_PERCENT:-0}
RAMP=${BENCH_RAMP_SECS:-0}
# The images root images/build.sh makes (iPXE, the ramdisk kernel and initrd with the agent).
PLINTH_AGENT_BIN=$target/release/plinth-agent images/build.sh "$target/bench-images" >/dev/null

work=$(mktemp -d /tmp/plinth-bench-storm.XXXXXX)
chmod 755 "$work"
tag=$$
srv=pbs${tag}s; cli=pbs${tag}c; sif=pbs${tag}a; cif=pbs${tag}b
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }
cleanup() {
  stop_all
  ip netns pids "$srv" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns pids "$cli" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns del "$srv" 2>/dev/null || true
  ip netns del "$cli" 2>/dev/null || true
  scripts/pg-scratch.sh "$work/pg" stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# 10.98.0.0/16: the server at .0.2, the client's own address .0.3 (it routes the subnet; the
# simulator adds each leased address beside it), the pool 10.98.1.0 - 10.98.255.254.
ip netns add "$srv"; ip netns add "$cli"
ip link add "$sif" netns "$srv" type veth peer name "$cif" netns "$cli"
ip -n "$srv" addr add 10.98.0.2/16 dev "$sif"
ip -n "$cli" addr add 10.98.0.3/16 dev "$cif"
for ns in "$srv" "$cli"; do ip -n "$ns" link set lo up; done
ip -n "$srv" link set "$sif" up; ip -n "$cli" link set "$cif" up
first=10.98.1.0; last=10.98.255.254

# The files both servers serve: the loaders and the ramdisk, and the peer's static script with
# the lines plinth's ramdisk.ipxe renders (an unchecked token: nginx answers any report 204).
mkdir -p "$work/images/plinth" "$work/state" "$work/nginx"
for f in undionly.kpxe ipxe.efi snponly.efi plinth/vmlinuz plinth/initrd.img; do
  cp "$target/bench-images/$f" "$work/images/$f"
done
cat >"$work/images/script.ipxe" <<'EOF'
#!ipxe
# peer: a static inspection script
echo peer: booting the inspect ramdisk
kernel http://10.98.0.2:8081/plinth/vmlinuz initrd=initrd.img console=tty0 console=ttyS0,115200n8 plinth.mode=inspect plinth.api=http://10.98.0.2:8081 plinth.machine=00000000-0000-0000-0000-000000000000 plinth.token=peer loglevel=4 || goto failed
initrd http://10.98.0.2:8081/plinth/initrd.img || goto failed
boot || goto failed
:failed
sleep 60
reboot
EOF
chmod -R a+rX "$work/images"

cat >"$work/nginx/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  sendfile on;
  tcp_nopush on;
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  server {
    listen 10.98.0.2:8081;
    root $work/images;
    default_type application/octet-stream;
    location /api/v1/ { return 204; }
  }
}
EOF

# Durability as a production database has it (fsync on), commits not waited for on disk, as
# the DHCP benchmark runs it.
server=$(PG_SCRATCH_OPTS="-c synchronous_commit=off -c shared_buffers=256MB" scripts/pg-scratch.sh "$work/pg")
db=${server/\/postgres\?//stormbench?}

# CPU seconds (user + system) of processes; with `pg`, the postmaster with its reaped and live
# backends.
tick=$(getconf CLK_TCK)
cpu_ticks() { # PID...
  local total=0 t
  for pid in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}
pg_ticks() {
  local pm t
  pm=$(head -n1 "$work/pg/data/postmaster.pid")
  t=$(awk '{print $16 + $17}' "/proc/$pm/stat")
  echo $((t + $(cpu_ticks "$pm" $(pgrep -P "$pm" | tr '\n' ' '))))
}
hwm_mib() { # PID... → the sum of their peak resident memory
  local total=0 k
  for pid in "$@"; do
    k=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    total=$((total + k))
  done
  awk -v k="$total" 'BEGIN {printf "%.1f", k / 1024}'
}
secs() { awk -v t="$1" -v h="$tick" 'BEGIN {printf "%.1f", t / h}'; }

# UDP datagrams a namespace's kernel dropped for a full socket buffer (DHCP and TFTP answers
# the simulator did not read in time; requests the server did not).
udp_drops() { # NS
  ip netns exec "$1" awk '/^Udp:/ {n++; if (n == 1) for (i = 2; i <= NF; i++) h[$i] = i; else print $h["RcvbufErrors"]}' /proc/net/snmp
}
storm() { # NAME ROUND → the storm's JSON in $work/NAME-ROUND.json; UDP drops in $drops
  ip -n "$cli" neigh flush all; ip -n "$srv" neigh flush all
  local c0 s0
  c0=$(udp_drops "$cli"); s0=$(udp_drops "$srv")
  ip netns exec "$cli" timeout 1200 "$lab" storm --iface "$cif" --machines "$N" \
    --mac-base 52:54:00:00:00:01 --uefi-percent "$UEFI" --ramp-secs "$RAMP" \
    >"$work/$1-$2.json" 2>"$work/$1-$2.storm.log"
  drops="$(($(udp_drops "$cli") - c0))/$(($(udp_drops "$srv") - s0))"
  # Whatever the simulator left: the client end keeps only its own address.
  ip -n "$cli" addr flush dev "$cif"; ip -n "$cli" addr add 10.98.0.3/16 dev "$cif"
}

fail() { echo "bench-storm: $*" >&2; exit 1; }
results=$work/results
: >"$results"

plinth_round() { # ROUND
  psql "$server" -qc "drop database if exists stormbench" -c "create database stormbench" >/dev/null 2>&1
  "$bin" migrate --database-url "$db" >/dev/null 2>&1
  rm -rf "$work/state"; mkdir -p "$work/state"
  token=$(PLINTH_STATE_DIR="$work/state" "$bin" admin create-token --database-url "$db" --name bench --role admin)
  # The machines, as a rack's inventory would hold them, being inspected; MACs as the simulator
  # numbers them (52:54:00:00:00:01 and on).
  psql "$db" -qAt >/dev/null <<SQL
with m as (
  insert into machines (hostname, state)
  select 'storm-' || i, 'inspecting' from generate_series(1, $N) i
  returning id, hostname
)
insert into nics (machine_id, mac, pxe)
select id, ('52:54:00:' || lpad(to_hex((n >> 16) & 255), 2, '0') || ':'
            || lpad(to_hex((n >> 8) & 255), 2, '0') || ':' || lpad(to_hex(n & 255), 2, '0'))::macaddr, true
from (select id, substr(hostname, 7)::int as n from m) x;
SQL
  ip netns exec "$srv" env PLINTH_STATE_DIR="$work/state" PLINTH_IMAGES__ROOT="$work/images" \
    PLINTH_BOOT__PUBLIC_URL=http://10.98.0.2:8080 PLINTH_DHCP__ENABLED=true \
    PLINTH_DHCP__INTERFACES="[\"$sif\"]" PLINTH_DHCP__BOOT_SERVER=10.98.0.2 \
    PLINTH_TFTP__ENABLED=true PLINTH_TFTP__LISTEN=10.98.0.2:69 NO_COLOR=1 \
    ${BENCH_WRAP:-} "$bin" serve --database-url "$db" --listen 10.98.0.2:8080 >"$work/plinth-$1.log" 2>&1 &
  local pid=$!; pids+=($pid)
  for _ in $(seq 300); do
    grep -q "DHCP listening" "$work/plinth-$1.log" && grep -q "TFTP is serving" "$work/plinth-$1.log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/plinth-$1.log" >&2; fail "plinth serve exited"; }
    sleep 0.2
  done
  ip netns exec "$srv" env PLINTH_TOKEN="$token" PLINTH_API_URL=http://10.98.0.2:8080 \
    "$bin" subnet add 10.98.0.0/16 --range "$first-$last" --lease-time 3600 >/dev/null
  # As autovacuum would have by the time a rack boots: statistics for the planner.
  psql "$db" -qAt -c "analyze" >/dev/null
  local p0 g0 p1 g1
  # plinth's threads, sampled while the storm lasts (tokio's workers and its blocking pool).
  ( peak=0; while kill -0 "$pid" 2>/dev/null; do
      t=$(awk '/^Threads/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
      [ "${t:-0}" -gt "$peak" ] && { peak=$t; echo "$peak" >"$work/threads-$1"; }
      sleep 0.2
    done ) &
  local sampler=$!
  p0=$(cpu_ticks "$pid"); g0=$(pg_ticks)
  storm plinth "$1"
  p1=$(cpu_ticks "$pid"); g1=$(pg_ticks)
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  echo "plinth round $1: peak threads $(cat "$work/threads-$1" 2>/dev/null || echo '?')" >&2
  local rss; rss=$(hwm_mib "$pid")
  # Where plinth's memory is once the storm is over (kept with BENCH_KEEP).
  cp "/proc/$pid/smaps" "$work/plinth-smaps-$1.log" 2>/dev/null || true
  # What the database says: every report arrived, one lease per machine, no address twice.
  local left facts bound macs addrs
  left=$(psql "$db" -qAt -c "select count(*) from machines where state = 'inspecting'")
  facts=$(psql "$db" -qAt -c "select count(*) from machines where state <> 'inspecting' and facts ? 'cpu' and facts -> 'system' ->> 'product' = 'storm'")
  bound=$(psql "$db" -qAt -c "select count(*) from leases where state = 'bound'")
  macs=$(psql "$db" -qAt -c "select count(distinct mac) from leases where state = 'bound'")
  addrs=$(psql "$db" -qAt -c "select count(distinct address) from leases where state = 'bound'")
  local states; states=$(psql "$db" -qAt -F' ' -c "select state, count(*) from machines group by 1 order by 1" | paste -sd, -)
  echo "plinth round $1: machines $states; facts stored $facts; bound leases $bound ($macs MACs, $addrs addresses)" >&2
  local errors; errors=$(grep -c "ERROR" "$work/plinth-$1.log" || true)
  [ "$errors" = 0 ] || { echo "plinth logged $errors errors, the first:" >&2; grep "ERROR" "$work/plinth-$1.log" | head -3 >&2; }
  stop_all
  echo "plinth $1 $rss $(secs $((p1 - p0))) $(secs $((g1 - g0))) db:left=$left,facts=$facts,leases=$bound,macs=$macs,addresses=$addrs $drops" >>"$results"
}

peer_round() { # ROUND
  rm -f "$work/dnsmasq.leases"
  ip netns exec "$srv" dnsmasq -d --port=0 --conf-file=/dev/null --no-resolv --no-hosts --no-ping \
    --interface="$sif" --bind-interfaces --dhcp-authoritative --dhcp-lease-max=200000 \
    --dhcp-range="$first,$last,255.255.0.0,1h" --dhcp-leasefile="$work/dnsmasq.leases" \
    --dhcp-userclass=set:ipxe,iPXE --dhcp-match=set:efi,option:client-arch,7 \
    --dhcp-boot=tag:ipxe,http://10.98.0.2:8081/script.ipxe \
    --dhcp-boot=tag:!ipxe,tag:efi,ipxe.efi,,10.98.0.2 \
    --dhcp-boot=tag:!ipxe,tag:!efi,undionly.kpxe,,10.98.0.2 \
    --enable-tftp --tftp-root="$work/images" --tftp-max=512 \
    --pid-file="$work/dnsmasq.pid" >"$work/dnsmasq-$1.log" 2>&1 &
  local dpid=$!; pids+=($dpid)
  ip netns exec "$srv" nginx -c "$work/nginx/nginx.conf" >"$work/nginx-$1.log" 2>&1 &
  local npid=$!; pids+=($npid)
  for _ in $(seq 100); do
    ip netns exec "$cli" curl -sf -o /dev/null http://10.98.0.2:8081/script.ipxe && break
    sleep 0.2
  done
  local nginx_all; nginx_all="$npid $(pgrep -P "$npid" | tr '\n' ' ')"
  local c0 c1 n0 n1
  # dnsmasq is one process; nginx a master and its workers.
  # shellcheck disable=SC2086
  c0=$(cpu_ticks "$dpid"); n0=$(cpu_ticks $nginx_all)
  storm peer "$1"
  # shellcheck disable=SC2086
  c1=$(cpu_ticks "$dpid"); n1=$(cpu_ticks $nginx_all)
  local drss nrss
  drss=$(hwm_mib "$dpid")
  # shellcheck disable=SC2086
  nrss=$(hwm_mib $nginx_all)
  stop_all
  # (read once dnsmasq has stopped: it writes the file out on SIGTERM)
  local leases macs addrs
  leases=$(wc -l <"$work/dnsmasq.leases")
  macs=$(awk '{print $2}' "$work/dnsmasq.leases" | sort -u | wc -l)
  addrs=$(awk '{print $3}' "$work/dnsmasq.leases" | sort -u | wc -l)
  echo "peer round $1: dnsmasq leases $leases ($macs MACs, $addrs addresses)" >&2
  echo "peer $1 $drss+$nrss $(secs $((c1 - c0)))+$(secs $((n1 - n0))) - leases=$leases,macs=$macs,addresses=$addrs $drops" >>"$results"
}

echo "== boot storm: $N machines (UEFI $UEFI %, ramp $RAMP s), $ROUNDS rounds, plinth and dnsmasq + nginx alternating" >&2
SERVERS=${BENCH_SERVERS:-plinth peer}
for r in $(seq "$ROUNDS"); do
  for s in $SERVERS; do "${s}_round" "$r"; done
done

[ -z "${BENCH_KEEP:-}" ] || { mkdir -p "$BENCH_KEEP"; cp "$work"/*.json "$work"/*.log "$results" "$BENCH_KEEP"/; }

python3 - "$work" "$results" "$N" <<'PY'
import json, statistics, sys
work, results, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [l.split() for l in open(results)]
print()
print(f"| server | round | machines/min | finished / {n} | failures | total p50 / p95 / slowest (s) "
      f"| DHCP / TFTP / report retransmissions | TFTP refusals (machines) | UDP drops client / server | peak RSS MiB | CPU s (server; PostgreSQL) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
ok = True
per = {}
for name, rnd, rss, cpu, pg, checks, drops in rows:
    r = json.load(open(f"{work}/{name}-{rnd}.json"))
    t = r["phases"].get("total", {"p50": 0, "p95": 0, "max": 0})
    x = r["retransmissions"]
    label = "plinth" if name == "plinth" else "dnsmasq + nginx"
    rss_l = rss if name == "plinth" else "dnsmasq " + rss.replace("+", ", nginx ")
    cpu_l = f"{cpu}; {pg}" if name == "plinth" else "dnsmasq " + cpu.replace("+", ", nginx ")
    print(f"| {label} | {rnd} | {r['machines_per_minute']:.0f} | {r['finished']} | {r['failed']} "
          f"| {t['p50']:.1f} / {t['p95']:.1f} / {t['max']:.1f} | {x['dhcp']} / {x['tftp']} / {x['report']} "
          f"| {x['tftp_refused']} ({x['tftp_refused_machines']}) | {drops.replace('/', ' / ')} | {rss_l} | {cpu_l} |")
    per.setdefault(label, []).append(r["machines_per_minute"])
    ok &= r["failed"] == 0
    got = dict(kv.split("=") for kv in checks.split(":", 1)[-1].split(","))
    want = {"left": 0, "facts": n, "leases": n, "macs": n, "addresses": n}
    for k, v in got.items():
        if int(v) != want[k]:
            ok = False
            print(f"  {label} round {rnd}: {k} = {v}, not {want[k]}", file=sys.stderr)
    for f in r["failures"][:5]:
        print(f"  {label} round {rnd} failure: {f['mac']} in {f['phase']} after {f['after_secs']:.1f} s: {f['reason']}", file=sys.stderr)
print()
for label, v in per.items():
    print(f"{label}: median {statistics.median(v):.0f} machines/min over {len(v)} rounds")
for name, rnd, *_ in rows:
    r = json.load(open(f"{work}/{name}-{rnd}.json"))
    phases = ", ".join(f"{p} {s['p50']:.2f}/{s['p95']:.2f}/{s['max']:.2f}" for p, s in r["phases"].items() if p != "total")
    print(f"{name} round {rnd}: wall {r['wall_secs']:.1f} s; phases p50/p95/max s: {phases}; slowest {r['slowest']['mac'] if r['slowest'] else '-'}")
for name, rnd, *_, checks, _ in rows:
    print(f"{name} round {rnd} checks: {checks}")
sys.exit(0 if ok else 2)
PY
