#!/usr/bin/env bash
# images/build-disks.sh ROOT - two small bootable test disk images (stand-ins for a deployed OS):
#   ROOT/disks/test-disk-bios.raw.zst   MBR, one bootable FAT partition with SYSLINUX
#   ROOT/disks/test-disk-uefi.raw.zst   GPT, an EFI system partition with systemd-boot
# each with ROOT/disks/NAME.raw.zst.sha256 (sha256sum of the .raw.zst) and NAME.raw.size (the
# uncompressed size in bytes). Both boot Debian's kernel (the one images/build.sh picks) with
# a busybox initramfs whose /init is images/disk/init (reads a NoCloud seed, prints
# PLINTH-DEPLOYED ..., optionally calls back, powers off). See images/README.md.
#
# Debian packages only (missing ones are installed by scripts/ensure-packages.sh). No root
# mounts, no loop devices: partitions are made in a sparse file with sfdisk, file systems with
# mkfs.vfat --offset, files copied with mtools (file@@offset), SYSLINUX installed with
# `syslinux --offset` (mtools). Idempotent: an output is rebuilt only when its inputs changed.
# Environment: PLINTH_KERNEL_VERSION as for images/build.sh.
set -euo pipefail

start=$SECONDS
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
self="$here/$(basename "${BASH_SOURCE[0]}")"
disk_src=$here/disk
udhcpc_script=$here/ramdisk/udhcpc.script
cmdline="console=ttyS0,115200n8"
max_raw_mib=64

log() { printf 'disks: %s\n' "$*"; }
# shellcheck source=images/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
warn() { printf 'disks: WARNING: %s\n' "$*" >&2; }
die() { printf 'disks: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
	cat <<EOF
usage: images/build-disks.sh ROOT
Builds ROOT/disks/test-disk-bios.raw.zst and ROOT/disks/test-disk-uefi.raw.zst (with .sha256
and .raw.size files): small bootable disk images for tests. ROOT is the images root.
EOF
}

case "${1:-}" in -h | --help) usage; exit 0 ;; esac
[ $# -eq 1 ] && [ -n "$1" ] || { usage >&2; exit 2; }
mkdir -p "$1/disks"
ROOT=$(cd "$1" && pwd)
out=$ROOT/disks

# One build at a time per ROOT (a lock of its own: images/build.sh, which calls this script,
# holds ROOT/.build.lock).
exec 8>"$out/.build.lock"
flock -n 8 || { log "another build holds $out/.build.lock; waiting"; flock 8; }
rm -rf "$out"/.stage.* "$out"/*.tmp # left by an interrupted run

# ---- packages and tools ----------------------------------------------------------------------
"$repo/scripts/ensure-packages.sh" linux-image-amd64 busybox-static cpio kmod \
	syslinux syslinux-common mtools dosfstools fdisk systemd-boot-efi zstd
for tool in cpio gzip depmod modprobe sfdisk mkfs.vfat syslinux mcopy mmd mdir zstd sha256sum; do
	command -v "$tool" >/dev/null || PATH=$PATH:/usr/sbin:/sbin
	command -v "$tool" >/dev/null || die "$tool not found"
done
mbr_bin=/usr/lib/syslinux/mbr/mbr.bin
sdboot=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
busybox=/bin/busybox
for f in "$mbr_bin" "$sdboot" "$busybox" "$udhcpc_script" "$disk_src/init" "$disk_src/modules"; do
	[ -r "$f" ] || die "missing $f"
done
require_static_busybox "$busybox"
# mtools refuses FAT geometries that do not match a floppy's sectors per track otherwise.
export MTOOLS_SKIP_CHECK=1

# ---- kernel: the same choice as images/build.sh (lib.sh) ---------------------------------------
kver=$(pick_kernel)
kernel=/boot/vmlinuz-$kver
moddir=/lib/modules/$kver
log "kernel version: $kver"

# up_to_date OUTPUT STAMP MANIFEST INPUT...: OUTPUT exists, STAMP holds MANIFEST (the list of
# inputs with their sizes and mtimes) and no input is newer than OUTPUT.
up_to_date() {
	local output=$1 stamp=$2 manifest=$3 f
	shift 3
	[ -f "$output" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$manifest" ] || return 1
	for f in "$@"; do
		[ ! "$f" -nt "$output" ] || return 1
	done
}

# ---- 1. the initramfs (shared by both images) -------------------------------------------------
mapfile -t wanted < <(sed -e 's/#.*//' "$disk_src/modules" | awk 'NF { print $1 }')
mod_files=() present=() missing=()
for name in "${wanted[@]}"; do
	if ! deps=$(modprobe -S "$kver" --show-depends "$name" 2>/dev/null); then
		if grep -q "/$name.ko" "$moddir/modules.builtin" 2>/dev/null; then continue; fi
		warn "module $name is not in kernel $kver: skipped"
		missing+=("$name")
		continue
	fi
	present+=("$name")
	while read -r kind path _; do
		[ "$kind" = insmod ] && mod_files+=("$path")
	done <<<"$deps"
done
mapfile -t mod_files < <(printf '%s\n' "${mod_files[@]}" | LC_ALL=C sort -u)

initrd=$out/.initrd.img
initrd_inputs=("$self" "$(dirname "$self")/lib.sh" "$busybox" "$disk_src/init" "$disk_src/modules" "$udhcpc_script"
	"$moddir/modules.order" "$moddir/modules.builtin" "$moddir/modules.builtin.modinfo" "${mod_files[@]}")
initrd_manifest=$(
	echo "kernel $kver"
	echo "modules ${present[*]}"
	stat -L -c '%n %s %Y' "${initrd_inputs[@]}"
)
stage=
trap 'rm -rf "$stage" "$out"/*.tmp' EXIT

if up_to_date "$initrd" "$out/.initrd.inputs" "$initrd_manifest" "${initrd_inputs[@]}"; then
	log "up to date: initramfs (${#mod_files[@]} module files)"
else
	log "building the initramfs: ${#present[@]} modules, ${#mod_files[@]} module files with dependencies"
	stage=$(mktemp -d "$out/.stage.XXXXXX")
	mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc/udhcpc,etc/disk,proc,sys,run,tmp,root,mnt}
	stage_busybox "$stage" "$busybox"
	install -m 0755 "$disk_src/init" "$stage/init"
	install -m 0755 "$udhcpc_script" "$stage/etc/udhcpc/default.script"
	printf '%s\n' "${present[@]}" >"$stage/etc/disk/modules"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
	printf 'root:x:0:\n' >"$stage/etc/group"
	ln -s /proc/mounts "$stage/etc/mtab"
	for f in "${mod_files[@]}"; do
		install -D -m 0644 "$f" "$stage$f"
	done
	for f in modules.order modules.builtin modules.builtin.modinfo; do
		install -m 0644 "$moddir/$f" "$stage$moddir/$f"
	done
	depmod -b "$stage" "$kver"
	write_initramfs "$stage" "$initrd.tmp" 9
	mv -f "$initrd.tmp" "$initrd"
	printf '%s\n' "$initrd_manifest" >"$out/.initrd.inputs"
	rm -rf "$stage"
	stage=
	log "built: initramfs ($(numfmt --to=iec-i --suffix=B "$(stat -c %s "$initrd")"))"
fi
[ ${#missing[@]} -eq 0 ] || warn "not in kernel $kver, left out: ${missing[*]}"

# ---- 2. the disk images ------------------------------------------------------------------------
# Raw size: kernel + initramfs + 8 MiB of room + 1 MiB before the partition, in whole 4 MiB,
# at least 32 MiB.
payload=$(($(stat -L -c %s "$kernel") + $(stat -c %s "$initrd") + $(stat -c %s "$sdboot")))
raw_mib=$(((payload / 1048576 + 1 + 8 + 1 + 3) / 4 * 4))
[ "$raw_mib" -ge 32 ] || raw_mib=32
[ "$raw_mib" -le "$max_raw_mib" ] || die "kernel and initramfs need a ${raw_mib} MiB disk, more than ${max_raw_mib} MiB"

# partition_geometry RAW: "START SECTORS" of its first partition.
partition_geometry() {
	sfdisk -d "$1" | sed -n 's/.*start= *\([0-9]*\), *size= *\([0-9]*\).*/\1 \2/p' | head -n1
}

# make_fat RAW LABEL VOLID: a FAT file system on the first partition; prints its byte offset.
make_fat() {
	local raw=$1 label=$2 volid=$3 first sectors err
	read -r first sectors < <(partition_geometry "$raw")
	[ -n "$sectors" ] || die "no partition in $raw"
	# BLOCK-COUNT is in KiB; hidden sectors = the partition's start (the boot sector uses it).
	# It warns when the partition ends before the file does (GPT keeps a backup at the end).
	err=$(mkfs.vfat --offset "$first" -h "$first" -n "$label" -i "$volid" "$raw" $((sectors / 2)) 2>&1 >/dev/null) ||
		die "mkfs.vfat on $raw failed: $err"
	err=$(grep -v 'block count mismatch' <<<"$err" || true)
	[ -z "$err" ] || warn "mkfs.vfat: $err"
	echo $((first * 512))
}

write_bios() { # RAW
	local raw=$1 off
	printf 'label: dos\nunit: sectors\nstart=2048, type=e, bootable\n' |
		sfdisk -q --no-reread --no-tell-kernel "$raw" >/dev/null
	off=$(make_fat "$raw" PLINTHBOOT 504c4e31)
	syslinux --install --offset "$off" "$raw"
	dd if="$mbr_bin" of="$raw" bs=440 count=1 conv=notrunc status=none
	cat >"$raw.cfg" <<EOF
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND $cmdline
EOF
	mcopy -o -i "$raw@@$off" "$raw.cfg" ::/syslinux.cfg
	mcopy -o -i "$raw@@$off" "$kernel" ::/vmlinuz
	mcopy -o -i "$raw@@$off" "$initrd" ::/initrd.img
	rm -f "$raw.cfg"
	mdir -i "$raw@@$off" -b ::/ | sed 's/^/disks:   /'
}

write_uefi() { # RAW
	local raw=$1 off esp=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
	printf 'label: gpt\nunit: sectors\nfirst-lba: 2048\nstart=2048, type=%s, name="EFI system partition"\n' "$esp" |
		sfdisk -q --no-reread --no-tell-kernel "$raw" >/dev/null
	off=$(make_fat "$raw" PLINTHESP 504c4e32)
	mmd -i "$raw@@$off" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
	mcopy -o -i "$raw@@$off" "$sdboot" ::/EFI/BOOT/BOOTX64.EFI
	printf 'default plinth.conf\ntimeout 0\nconsole-mode keep\neditor no\n' >"$raw.cfg"
	mcopy -o -i "$raw@@$off" "$raw.cfg" ::/loader/loader.conf
	printf 'title plinth test disk\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' "$cmdline" >"$raw.cfg"
	mcopy -o -i "$raw@@$off" "$raw.cfg" ::/loader/entries/plinth.conf
	mcopy -o -i "$raw@@$off" "$kernel" ::/vmlinuz
	mcopy -o -i "$raw@@$off" "$initrd" ::/initrd.img
	rm -f "$raw.cfg"
	mdir -i "$raw@@$off" -/ -b ::/ | sed 's/^/disks:   /'
}

for kind in bios uefi; do
	name=test-disk-$kind
	zst=$out/$name.raw.zst
	case $kind in
	bios) inputs=("$self" "$kernel" "$initrd" "$mbr_bin" "$(command -v syslinux)") ;;
	uefi) inputs=("$self" "$kernel" "$initrd" "$sdboot") ;;
	esac
	manifest=$(
		echo "raw ${raw_mib} MiB, cmdline $cmdline"
		stat -L -c '%n %s %Y' "${inputs[@]}"
	)
	if up_to_date "$zst" "$out/.$name.inputs" "$manifest" "${inputs[@]}" &&
		[ -f "$zst.sha256" ] && [ -f "$out/$name.raw.size" ]; then
		log "up to date: disks/$name.raw.zst"
		continue
	fi
	log "building disks/$name.raw.zst (${raw_mib} MiB raw)"
	raw=$out/$name.raw.tmp
	rm -f "$raw"
	truncate -s "${raw_mib}M" "$raw"
	"write_$kind" "$raw"
	size=$(stat -c %s "$raw")
	zstd -q -f -T0 --rm "$raw" -o "$zst.tmp"
	hash=$(sha256sum "$zst.tmp" | cut -d' ' -f1)
	printf '%s\n' "$size" >"$out/$name.raw.size.tmp"
	printf '%s  %s\n' "$hash" "$name.raw.zst" >"$zst.sha256.tmp"
	mv -f "$zst.tmp" "$zst"
	mv -f "$zst.sha256.tmp" "$zst.sha256"
	mv -f "$out/$name.raw.size.tmp" "$out/$name.raw.size"
	printf '%s\n' "$manifest" >"$out/.$name.inputs"
	log "built: disks/$name.raw.zst ($(numfmt --to=iec-i --suffix=B "$(stat -c %s "$zst")"), raw $size bytes)"
done
log "done in $((SECONDS - start)) s"
