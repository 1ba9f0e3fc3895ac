#!/usr/bin/env bash
# The IPMI round trip of plinth's driver next to ipmitool's, against the same ipmi_sim on
# loopback: one whole exchange each (open an RMCP+ session with cipher suite 3, read the chassis
# status, close), N times (BENCH_N, default 50), median.
#   scripts/bench-ipmi.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh openipmi ipmitool
export SQLX_OFFLINE=true
cargo build --release -q -p plinth-bmc --example ipmi_status
bin=${CARGO_TARGET_DIR:-target}/release/examples/ipmi_status
n=${BENCH_N:-50}
work=$(mktemp -d /tmp/plinth-bench-ipmi.XXXXXX)
trap 'kill "$sim" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo 0 >"$work/power"
cat >"$work/chassis.sh" <<EOS
#!/bin/sh
case "\$2 \$3" in
  "get power") echo "power:\$(cat $work/power)";;
  "set power") echo "\$4" > $work/power;;
esac
EOS
chmod +x "$work/chassis.sh"
cat >"$work/lan.conf" <<EOC
name "bmc"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 $port
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "$work/chassis.sh 0x20"
user 2 true "admin" "password" admin 10 none md2 md5 straight
EOC
printf 'mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nsel_enable 0x20 1000 0x0a\nmc_enable 0x20\n' >"$work/bmc.emu"
mkdir -p "$work/state"
ipmi_sim -c "$work/lan.conf" -f "$work/bmc.emu" -s "$work/state" -n </dev/null >"$work/sim.log" 2>&1 &
sim=$!
ipmi() { ipmitool -I lanplus -C 3 -H 127.0.0.1 -p "$port" -U admin -P password "$@"; }
for _ in $(seq 50); do ipmi chassis power status >/dev/null 2>&1 && break; sleep 0.2; done

echo "== ipmitool -I lanplus -C 3 chassis power status, $n times"
times=()
for _ in $(seq "$n"); do
  t0=$(date +%s%N); ipmi chassis power status >/dev/null; t1=$(date +%s%N)
  times+=($(((t1 - t0) / 1000)))
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "ipmitool: median %.2f ms over %d (min %.2f, max %.2f)\n", a[int((NR+1)/2)]/1000, NR, a[1]/1000, a[NR]/1000}'
echo "== plinth's driver, the same exchange, $n times (one process)"
"$bin" "127.0.0.1:$port" admin password "$n"
