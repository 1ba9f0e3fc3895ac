#!/usr/bin/env bash
# The ramdisk benchmark (issue 22): for this tree's initrd and a peer's (the initrd of git REF,
# default c4675ef: the curated list of 47 modules, gzip), measured in the same run with the same
# agent binary and kernel:
#   - the initrd's size and its build time (images/build.sh's initrd step, from a cold stage);
#   - the boot time to the agent's first report: seconds from QEMU's start to the inspection
#     report's POST arriving, a QEMU VM (TCG, SeaBIOS, e1000, 768 MiB, the kernel and initrd
#     loaded by QEMU itself) with a static network (plinth.net=) to a small HTTP server in a
#     network namespace this script creates and removes; RUNS boots each, the median.
# Needs root (network namespaces). Usage: scripts/bench-ramdisk.sh [REF] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
ref=${1:-c4675ef}
runs=${2:-3}
scripts/ensure-packages.sh qemu-system-x86 python3
export SQLX_OFFLINE=true
target=${CARGO_TARGET_DIR:-$repo/target}
cargo build -q -p plinth-agent
agent=$target/debug/plinth-agent
work=$(mktemp -d /tmp/plinth-bench-ramdisk.XXXXXX)
ns=pbr$$
cleanup() {
	[ -f "$work/server.pid" ] && kill "$(cat "$work/server.pid")" 2>/dev/null || true
	ip netns del "$ns" 2>/dev/null || true
	git -C "$repo" worktree remove --force "$work/peer-src" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) vs $ref, $(nproc) cores, agent $agent"
git -C "$repo" worktree add -q --detach "$work/peer-src" "$ref"

# build SRC ROOT: the images of SRC into ROOT (iPXE, kernel, disks first), then the initrd
# alone, timed, from nothing.
build() {
	local src=$1 root=$2
	PLINTH_AGENT_BIN=$agent bash "$src/images/build.sh" "$root" >/dev/null
	rm -f "$root/plinth/initrd.img" "$root/plinth/.initrd.inputs"
	local t0 t1
	t0=$(date +%s.%N)
	PLINTH_AGENT_BIN=$agent bash "$src/images/build.sh" "$root" >"$root.log" 2>&1
	t1=$(date +%s.%N)
	# (the whole script's other steps are up to date: a fraction of a second)
	echo "$(echo "$t1 - $t0" | bc)"
}

# The HTTP server: 200 to everything; the time of the first POST (the inspection report).
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" tuntap add dev tap0 mode tap
ip -n "$ns" addr add 10.95.0.1/24 dev tap0
ip -n "$ns" link set tap0 up
cat >"$work/server.py" <<'PY'
import http.server, sys, time
out = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def answer(self):
        body = b'{"status":"ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self): self.answer()
    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        self.rfile.read(n)
        with open(out, "a") as f:
            f.write(f"{time.time()} {self.path}\n")
        self.answer()
    do_PUT = do_POST
http.server.ThreadingHTTPServer(("10.95.0.1", 8080), H).serve_forever()
PY
ip netns exec "$ns" python3 "$work/server.py" "$work/posts" &
echo $! >"$work/server.pid"
sleep 1

# boot ROOT: seconds from QEMU's start to the first POST.
boot() {
	local root=$1 t0 t1
	: >"$work/posts"
	t0=$(date +%s.%N)
	ip netns exec "$ns" timeout 600 qemu-system-x86_64 -machine pc,accel=tcg -m 768 -nographic -no-reboot \
		-kernel "$root/plinth/vmlinuz" -initrd "$root/plinth/initrd.img" \
		-append "console=ttyS0,115200n8 plinth.mode=inspect plinth.api=http://10.95.0.1:8080/ plinth.machine=00000000-0000-4000-8000-000000000001 plinth.token=bench plinth.net=52:54:00:95:00:01,10.95.0.10/24,10.95.0.1 plinth.poweroff=1 plinth.api_timeout=5" \
		-netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device e1000,netdev=n0,mac=52:54:00:95:00:01,romfile= \
		>"$work/console.log" 2>&1 &
	local q=$!
	while [ ! -s "$work/posts" ]; do
		kill -0 "$q" 2>/dev/null || { echo "the VM stopped without a report:" >&2; tail -30 "$work/console.log" >&2; exit 1; }
		sleep 0.1
	done
	t1=$(head -n1 "$work/posts" | cut -d' ' -f1)
	kill "$q" 2>/dev/null || true
	wait "$q" 2>/dev/null || true
	echo "$(echo "$t1 - $t0" | bc)"
}
median() { tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for who in peer this; do
	src=$repo
	[ "$who" = peer ] && src=$work/peer-src
	root=$work/images-$who
	secs=$(build "$src" "$root")
	size=$(stat -c %s "$root/plinth/initrd.img")
	files=$(grep -o '[0-9]* module files' "$root.log" | head -n1)
	times=()
	for _ in $(seq "$runs"); do times+=("$(boot "$root")"); done
	printf 'BENCH %s: initrd %s bytes (%.1f MiB, %s), built in %.1f s; boot to the first report: median %.1f s of %s (%s)\n' \
		"$who" "$size" "$(echo "$size / 1048576" | bc -l)" "$files" "$secs" \
		"$(printf '%s ' "${times[@]}" | median)" "$runs" "${times[*]}"
done
