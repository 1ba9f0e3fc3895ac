#!/usr/bin/env bash
# The wipe benchmark (issue 16): each of the clean agent's wipe methods on a virtio disk and an
# NVMe disk of BENCH_DISK_MIB MiB (default 1024), beside `dd if=/dev/zero bs=4M conv=fsync` over
# the same disk, all in one QEMU VM (TCG) booted from plinth's own kernel and initrd, with a
# benchmark /init appended to the initrd (a later cpio archive replaces /init). The agent runs
# as `plinth-agent --wipe DEVICE --method M`, as the clean mode would wipe that disk. Prints one
# line per run: what, seconds, MiB/s of the disk's size.
#   scripts/bench-wipe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh qemu-system-x86 linux-image-amd64 busybox-static cpio kmod
export SQLX_OFFLINE=true
target=${CARGO_TARGET_DIR:-$PWD/target}
mib=${BENCH_DISK_MIB:-1024}
cargo build -q --release --locked -p plinth-agent
PLINTH_AGENT_BIN=$target/release/plinth-agent images/build.sh "$target/bench-images" >/dev/null
work=$(mktemp -d /tmp/plinth-bench-wipe.XXXXXX)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/overlay"
cat >"$work/overlay/init" <<'INIT'
#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
modprobe virtio_pci 2>/dev/null; modprobe virtio_blk; modprobe nvme
i=0
while [ ! -b /dev/vda ] || [ ! -b /dev/nvme0n1 ]; do
	i=$((i + 1)); [ $i -gt 300 ] && { echo "BENCH-ERROR no disks"; poweroff -f; }
	sleep 0.1
done
now() { cut -d' ' -f1 /proc/uptime; }
MIB=$(($(cat /sys/block/vda/size) / 2048))
run() {
	what=$1 dev=$2; shift 2
	t0=$(now)
	out=$("$@" 2>/dev/null)
	rc=$?
	t1=$(now)
	# (a line of its own: a kernel message may have left the console mid-line)
	echo
	echo "BENCH-RUN $what dev=$dev rc=$rc t0=$t0 t1=$t1 $(echo "$out" | tr -d '\n' | head -c 300)"
}
for dev in vda nvme0n1; do
	# Twice each, alternating: the first write of a run warms the guest and TCG up.
	for round in 1 2; do
		run dd $dev dd if=/dev/zero of=/dev/$dev bs=4M count=$((MIB / 4)) conv=fsync
		run full $dev plinth-agent --wipe /dev/$dev --method full --fallback fail
	done
	run quick $dev plinth-agent --wipe /dev/$dev --method quick --fallback fail
	run discard $dev plinth-agent --wipe /dev/$dev --method discard --fallback fail
done
run secure nvme0n1 plinth-agent --wipe /dev/nvme0n1 --method secure --fallback fail
echo "BENCH-DONE"
poweroff -f
INIT
chmod +x "$work/overlay/init"
(cd "$work/overlay" && echo init | cpio -o -H newc --quiet | gzip -1) >"$work/overlay.cpio.gz"
cat "$target/bench-images/plinth/initrd.img" "$work/overlay.cpio.gz" >"$work/initrd.img"
# Written once on the host first, so that no run pays for the host file's first allocation.
for f in vda nvme; do dd if=/dev/zero of="$work/$f.raw" bs=4M count=$((mib / 4)) status=none; done

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores; disks ${mib} MiB, raw files on $(df --output=fstype "$work" | tail -1); QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}') TCG"
timeout 3600 qemu-system-x86_64 -nographic -machine q35,accel=tcg -m 1024 -smp 2 -no-reboot \
	-kernel "$target/bench-images/plinth/vmlinuz" -initrd "$work/initrd.img" \
	-append "console=ttyS0 loglevel=4" \
	-drive "file=$work/vda.raw,format=raw,if=none,id=d0,discard=unmap" \
	-device virtio-blk-pci,drive=d0,serial=bench-virtio \
	-drive "file=$work/nvme.raw,format=raw,if=none,id=d1,discard=unmap" \
	-device nvme,drive=d1,serial=bench-nvme \
	-nic none </dev/null >"$work/console.log" 2>&1 || true
grep -q BENCH-DONE "$work/console.log" || { cat "$work/console.log"; echo "the benchmark VM did not finish" >&2; exit 1; }
printf '%-8s %-8s %9s %9s  %s\n' method disk seconds "MiB/s" "method used / verification"
grep '^BENCH-RUN' "$work/console.log" | while read -r _ what dev rc t0 t1 rest; do
	dev=${dev#dev=} rc=${rc#rc=} t0=${t0#t0=} t1=${t1#t1=}
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
	rate=$(awk -v s="$secs" -v m="$mib" 'BEGIN { if (s > 0) printf "%.0f", m / s; else print "-" }')
	used=$(echo "$rest" | sed -n 's/.*"method":"\([a-z]*\)".*/\1/p')
	verif=$(echo "$rest" | sed -n 's/.*"verification":"\([^"]*\)".*/\1/p' | cut -c1-70)
	[ "$rc" = 0 ] || verif="FAILED (rc $rc): $(echo "$rest" | sed -n 's/.*"error":"\([^"]*\)".*/\1/p')"
	printf '%-8s %-8s %9s %9s  %s\n' "$what" "$dev" "$secs" "$rate" "${used:+$used: }$verif"
done
