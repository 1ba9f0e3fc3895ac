#!/usr/bin/env bash
# images/build.sh [ROOT] - fill plinth's images root with the boot artefacts it serves:
#   ROOT/undionly.kpxe ROOT/ipxe.efi ROOT/snponly.efi   iPXE, from Debian's ipxe package
#   ROOT/plinth/vmlinuz                                  kernel of Debian's linux-image-amd64
#   ROOT/plinth/initrd.img                               busybox + plinth-agent + NIC/disk modules + images/ramdisk/init
#   ROOT/plinth/vmedia-bios.img ROOT/plinth/vmedia-efi.img  GRUB for the virtual-media ISO: El Torito
#                                                        (BIOS) and a FAT ESP with EFI/BOOT/BOOTX64.EFI (UEFI)
#   ROOT/SHA256SUMS
# Debian packages only (missing ones are installed by scripts/ensure-packages.sh); idempotent;
# work whose output is up to date is skipped. See images/README.md.
#
# ROOT defaults to $PLINTH_IMAGES__ROOT, else /var/lib/plinth/images as root, else
# ${XDG_STATE_HOME:-$HOME/.local/state}/plinth/images.
# Environment: PLINTH_KERNEL_VERSION=6.1.0-NN-amd64 picks the kernel (default: the one the
# linux-image-amd64 package depends on, else the newest /lib/modules/V with a /boot/vmlinuz-V);
# PLINTH_RAMDISK_EXTRA_MODULES="mod1 mod2" adds modules to the ramdisk.
set -euo pipefail

start=$SECONDS
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
self="$here/$(basename "${BASH_SOURCE[0]}")"
ramdisk_src="$here/ramdisk"
ipxe_dir=/usr/lib/ipxe
ipxe_files=(undionly.kpxe ipxe.efi snponly.efi)
max_initrd=$((64 * 1024 * 1024))

log() { printf 'images: %s\n' "$*"; }
# shellcheck source=images/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
warn() { printf 'images: WARNING: %s\n' "$*" >&2; }
die() { printf 'images: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
	cat <<EOF
usage: images/build.sh [ROOT]
Builds plinth's boot artefacts (iPXE binaries, ramdisk kernel and initrd) into ROOT.
ROOT defaults to \$PLINTH_IMAGES__ROOT, else /var/lib/plinth/images (root), else
\${XDG_STATE_HOME:-\$HOME/.local/state}/plinth/images.
EOF
}

case "${1:-}" in -h | --help) usage; exit 0 ;; esac
[ $# -le 1 ] || { usage >&2; exit 2; }

if [ $# -eq 1 ]; then
	[ -n "$1" ] || die "ROOT is empty"
	ROOT=$1
elif [ -n "${PLINTH_IMAGES__ROOT:-}" ]; then
	ROOT=$PLINTH_IMAGES__ROOT
elif [ "$(id -u)" = 0 ]; then
	ROOT=/var/lib/plinth/images
else
	ROOT=${XDG_STATE_HOME:-$HOME/.local/state}/plinth/images
fi
mkdir -p "$ROOT/plinth"
ROOT=$(cd "$ROOT" && pwd)
log "images root: $ROOT"

# One build at a time per ROOT.
exec 9>"$ROOT/.build.lock"
flock -n 9 || { log "another build holds $ROOT/.build.lock; waiting"; flock 9; }

rm -rf "$ROOT"/.initrd-stage.* "$ROOT"/.vmedia-stage.* "$ROOT"/*.tmp "$ROOT"/plinth/*.tmp # left by an interrupted run

# ---- packages --------------------------------------------------------------------------------
"$repo/scripts/ensure-packages.sh" ipxe linux-image-amd64 busybox-static cpio kmod zstd firmware-linux-free \
	grub-pc-bin grub-efi-amd64-bin mtools dosfstools
for tool in cpio gzip zstd dpkg-query depmod modprobe modinfo sha256sum grub-mkimage mkfs.vfat mmd mcopy; do
	command -v "$tool" >/dev/null || PATH=$PATH:/usr/sbin:/sbin
	command -v "$tool" >/dev/null || die "$tool not found (packages cpio, gzip, kmod, coreutils, grub-common, dosfstools, mtools)"
done

# install_file SRC DST: copy unless DST already has the same content.
install_file() {
	local src=$1 dst=$2 rel=${2#"$ROOT"/}
	[ -r "$src" ] || die "cannot read $src"
	if [ -f "$dst" ] && [ ! "$src" -nt "$dst" ] && cmp -s "$src" "$dst"; then
		log "up to date: $rel"
		return
	fi
	install -m 0644 "$src" "$dst.tmp"
	mv -f "$dst.tmp" "$dst"
	log "installed:  $rel (from $src)"
}

# ---- 1. iPXE -----------------------------------------------------------------------------------
for f in "${ipxe_files[@]}"; do
	install_file "$ipxe_dir/$f" "$ROOT/$f"
done

# ---- 2. kernel -------------------------------------------------------------------------------
kver=$(pick_kernel)
[ "$kver" = "$(uname -r)" ] || log "kernel $kver (the running kernel, $(uname -r), is not used)"
log "kernel version: $kver"
install_file "/boot/vmlinuz-$kver" "$ROOT/plinth/vmlinuz"

# ---- 3. initrd -------------------------------------------------------------------------------
moddir=/lib/modules/$kver
busybox=/bin/busybox
require_static_busybox "$busybox"
for f in init udhcpc.script modules.list; do
	[ -f "$ramdisk_src/$f" ] || die "missing $ramdisk_src/$f"
done

# The agent: built from the workspace (release), or taken from $PLINTH_AGENT_BIN; with the shared
# libraries it needs (glibc's loader, libc, libgcc_s), copied from this system.
if [ -n "${PLINTH_AGENT_BIN:-}" ]; then
	agent=$PLINTH_AGENT_BIN
else
	command -v cargo >/dev/null || die "cargo not found: the agent is built from the workspace (or set PLINTH_AGENT_BIN)"
	log "building plinth-agent (cargo build --release -p plinth-agent)"
	(cd "$repo" && SQLX_OFFLINE=true cargo build --release --quiet -p plinth-agent) ||
		die "building plinth-agent failed"
	agent=${CARGO_TARGET_DIR:-$repo/target}/release/plinth-agent
	case "$agent" in /*) ;; *) agent=$repo/$agent ;; esac
fi
[ -x "$agent" ] || die "$agent is not an executable"
mapfile -t agent_libs < <(ldd "$agent" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | LC_ALL=C sort -u)

# Requested modules: images/ramdisk/modules.list (directories of the kernel's tree, names,
# exclusions) plus $PLINTH_RAMDISK_EXTRA_MODULES; then their dependencies, all in one modprobe.
initrd_start=$SECONDS
declare -A class_of=() # module name (as modprobe names it: '-' is '_') -> class
excludes=() wanted=() missing=()
while read -r class entry _; do
	case "$class" in
	"" | \#*) continue ;;
	-) excludes+=("$entry") ;;
	*) [ -n "$entry" ] || die "modules.list: \"$class\" without a module or directory"
		wanted+=("$class $entry") ;;
	esac
done <"$ramdisk_src/modules.list"
for m in ${PLINTH_RAMDISK_EXTRA_MODULES:-}; do wanted+=("extra $m"); done
excluded() { # PATH under $moddir/kernel/
	local g
	for g in "${excludes[@]}"; do
		# shellcheck disable=SC2053 # a glob on purpose
		[[ $1 == $g ]] && return 0
	done
	return 1
}
modname() { local n=${1##*/}; n=${n%%.ko*}; echo "${n//-/_}"; }
names=()
for line in "${wanted[@]}"; do
	class=${line%% *} entry=${line#* }
	case "$entry" in
	kernel/*/)
		if [ ! -d "$moddir/$entry" ]; then
			warn "$entry is not in kernel $kver: skipped"
			missing+=("$entry")
			continue
		fi
		while read -r f; do
			rel=${f#"$moddir"/kernel/}
			excluded "$rel" && continue
			n=$(modname "$f")
			[ -n "${class_of[$n]:-}" ] || { class_of[$n]=$class; names+=("$n"); }
		done < <(find "$moddir/$entry" -name '*.ko*' -type f | LC_ALL=C sort)
		;;
	*)
		if ! path=$(modinfo -k "$kver" -n "$entry" 2>/dev/null) || [ ! -f "$path" ]; then
			warn "module $entry is not in kernel $kver: skipped"
			missing+=("$entry")
			continue
		fi
		n=$(modname "$path")
		[ -n "${class_of[$n]:-}" ] || { class_of[$n]=$class; names+=("$n"); }
		;;
	esac
done
[ ${#names[@]} -gt 0 ] || die "modules.list names no module of kernel $kver"
present=()
for n in "${names[@]}"; do present+=("${class_of[$n]} $n"); done
deps=$(modprobe -S "$kver" --show-depends -a "${names[@]}" 2>&1) ||
	die "modprobe --show-depends failed for kernel $kver: $(tail -n 3 <<<"$deps")"
mapfile -t mod_files < <(awk '$1 == "insmod" { print $2 }' <<<"$deps" | LC_ALL=C sort -u)

# Firmware the modules ask for, when a package of Debian's main archive ships it (for these
# drivers: firmware-linux-free); what only the non-free firmware-* packages have is left out.
fw_files=() fw_nonfree=0 fw_absent=0
declare -A section_of=()
while read -r fw; do
	[ -n "$fw" ] || continue
	f=/lib/firmware/$fw
	if [ ! -f "$f" ]; then fw_absent=$((fw_absent + 1)); continue; fi
	# (dpkg knows a file by the path its package installed: /lib/... or, merged, /usr/lib/...)
	pkg=$({ dpkg-query -S "$f" || dpkg-query -S "$(readlink -f "$f")"; } 2>/dev/null | head -n1 | cut -d: -f1) || pkg=
	if [ -z "$pkg" ]; then fw_nonfree=$((fw_nonfree + 1)); continue; fi
	[ -n "${section_of[$pkg]:-}" ] || section_of[$pkg]=$(dpkg-query -W -f='${Section}' "$pkg" 2>/dev/null || echo unknown)
	case "${section_of[$pkg]}" in
	non-free* | contrib* | unknown) fw_nonfree=$((fw_nonfree + 1)) ;;
	*) fw_files+=("$f") ;;
	esac
done < <(modinfo -F firmware "${mod_files[@]}" 2>/dev/null | LC_ALL=C sort -u)

# Everything the initrd is made of; it is rebuilt when this list or any mtime/size changes.
inputs=("$self" "$here/lib.sh" "$busybox" "$agent" "${agent_libs[@]}" "$ramdisk_src"/* "$moddir/modules.order" "$moddir/modules.builtin"
	"$moddir/modules.builtin.modinfo" "${mod_files[@]}" "${fw_files[@]}")
manifest=$(
	echo "kernel $kver"
	echo "modules ${present[*]// /:}"
	stat -L -c '%n %s %Y' "${inputs[@]}"
)
initrd=$ROOT/plinth/initrd.img
stamp=$ROOT/plinth/.initrd.inputs

if [ -f "$initrd" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$manifest" ] && [ ! "$self" -nt "$initrd" ]; then
	log "up to date: plinth/initrd.img (${#mod_files[@]} module files, kernel $kver)"
else
	log "building plinth/initrd.img: kernel $kver, ${#present[@]} modules requested, ${#mod_files[@]} module files with dependencies"
	stage=$(mktemp -d "$ROOT/.initrd-stage.XXXXXX")
	trap 'rm -rf "$stage" "$initrd.tmp"' EXIT
	mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc/udhcpc,etc/plinth,proc,sys,run,tmp,root,lib/firmware}

	stage_busybox "$stage" "$busybox"

	# /init and friends
	install -m 0755 "$ramdisk_src/init" "$stage/init"
	install -m 0755 "$ramdisk_src/udhcpc.script" "$stage/etc/udhcpc/default.script"
	install -m 0755 "$agent" "$stage/bin/plinth-agent"
	if command -v strip >/dev/null; then strip "$stage/bin/plinth-agent"; fi
	for lib in "${agent_libs[@]}"; do
		install -D -m 0755 "$(readlink -f "$lib")" "$stage$lib"
	done
	printf 'hosts: files dns\n' >"$stage/etc/nsswitch.conf"
	printf '%s\n' "# class module (present in kernel $kver)" "${present[@]}" >"$stage/etc/plinth/modules"
	printf 'kernel=%s\nbuilt=%s\n' "$kver" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$stage/etc/plinth/ramdisk-release"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
	printf 'root:x:0:\n' >"$stage/etc/group"
	ln -s /proc/mounts "$stage/etc/mtab"

	# modules, then a modules.dep/alias/... for exactly those modules
	for f in "${mod_files[@]}"; do
		install -D -m 0644 "$f" "$stage$f"
	done
	for f in modules.order modules.builtin modules.builtin.modinfo; do
		install -m 0644 "$moddir/$f" "$stage$moddir/$f"
	done
	depmod -b "$stage" "$kver"
	for f in "${fw_files[@]}"; do
		install -D -m 0644 "$f" "$stage$f"
	done
	printf '%s\n' "${fw_files[@]#/lib/firmware/}" >"$stage/etc/plinth/firmware"

	# zstd -9: 17 % smaller than gzip -6 here, as fast to write, and several times faster to
	# unpack (the kernel unpacks the initrd before /init runs; under emulation that is
	# seconds). Level 15 is 1.5 % smaller for eight times the time, 19 12 % for 25 times
	# (docs/benchmarks.md). No --long: the kernel's decompressor has a window limit.
	write_initramfs "$stage" "$initrd.tmp" zstd -q -9 -T0
	mv -f "$initrd.tmp" "$initrd"
	printf '%s\n' "$manifest" >"$stamp"
	rm -rf "$stage"
	trap - EXIT
	log "built: plinth/initrd.img ($(du -sh --apparent-size "$ROOT/plinth/initrd.img" | cut -f1) compressed) in $((SECONDS - initrd_start)) s"
fi
[ ${#missing[@]} -eq 0 ] || warn "not in kernel $kver, left out: ${missing[*]}"
log "firmware: ${#fw_files[@]} files from Debian main put in; $fw_nonfree the drivers may ask for are non-free or of no package (left out), $fw_absent not installed"
size=$(stat -c %s "$initrd")
log "initrd size: $size bytes ($(numfmt --to=iec-i --suffix=B "$size"))"
[ "$size" -le "$max_initrd" ] || warn "initrd is larger than $(numfmt --to=iec-i --suffix=B $max_initrd)"

# ---- 4. virtual-media boot loaders ------------------------------------------------------------
# plinth writes a small ISO per virtual-media boot (plinth-core's vmedia::iso): these two GRUB
# images are its El Torito boot entries. Their embedded configuration finds the CD's
# /plinth/grub.cfg (the per-boot kernel command line, written by plinth) and shows GRUB on the
# serial console as well. Rebuilt when this script or GRUB changes.
grub_mods="iso9660 part_msdos part_gpt linux normal search search_fs_file serial echo configfile terminal test sleep"
vmedia_inputs=("$self" /usr/lib/grub/i386-pc/cdboot.img /usr/lib/grub/i386-pc/kernel.img /usr/lib/grub/i386-pc/linux.mod /usr/lib/grub/x86_64-efi/linux.mod)
vmedia_manifest=$(stat -L -c '%n %s %Y' "${vmedia_inputs[@]}")
vmedia_stamp=$ROOT/plinth/.vmedia.inputs
if [ -f "$ROOT/plinth/vmedia-bios.img" ] && [ -f "$ROOT/plinth/vmedia-efi.img" ] && [ -f "$vmedia_stamp" ] &&
	[ "$(cat "$vmedia_stamp")" = "$vmedia_manifest" ]; then
	log "up to date: plinth/vmedia-bios.img, plinth/vmedia-efi.img"
else
	gstage=$(mktemp -d "$ROOT/.vmedia-stage.XXXXXX")
	trap 'rm -rf "$gstage"' EXIT
	# The kernel's parser runs an embedded configuration line by line (no if/fi blocks).
	cat >"$gstage/embed.cfg" <<'GRUBCFG'
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
search --no-floppy --file --set=root /plinth/grub.cfg
configfile ($root)/plinth/grub.cfg
echo "plinth: no /plinth/grub.cfg on any disk or CD: this is not a plinth virtual-media ISO"
sleep 60
GRUBCFG
	# Every module built into the image (no prefix to load more from), the config embedded.
	# shellcheck disable=SC2086 # the module list is words
	grub-mkimage -O i386-pc-eltorito -c "$gstage/embed.cfg" -p /boot/grub -o "$gstage/bios.img" \
		biosdisk $grub_mods || die "grub-mkimage (i386-pc-eltorito) failed"
	# shellcheck disable=SC2086
	grub-mkimage -O x86_64-efi -c "$gstage/embed.cfg" -p /EFI/BOOT -o "$gstage/BOOTX64.EFI" \
		$grub_mods || die "grub-mkimage (x86_64-efi) failed"
	# The ESP: a FAT image one MiB larger than the loader, in whole MiB.
	esp_kib=$((($(stat -c %s "$gstage/BOOTX64.EFI") / 1048576 + 2) * 1024))
	mkfs.vfat -C -n PLINTH-ESP "$gstage/efi.img" "$esp_kib" >/dev/null || die "mkfs.vfat failed"
	MTOOLS_SKIP_CHECK=1 mmd -i "$gstage/efi.img" ::/EFI ::/EFI/BOOT || die "mmd failed"
	MTOOLS_SKIP_CHECK=1 mcopy -i "$gstage/efi.img" "$gstage/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI || die "mcopy failed"
	install -m 0644 "$gstage/bios.img" "$ROOT/plinth/vmedia-bios.img.tmp"
	install -m 0644 "$gstage/efi.img" "$ROOT/plinth/vmedia-efi.img.tmp"
	mv -f "$ROOT/plinth/vmedia-bios.img.tmp" "$ROOT/plinth/vmedia-bios.img"
	mv -f "$ROOT/plinth/vmedia-efi.img.tmp" "$ROOT/plinth/vmedia-efi.img"
	printf '%s\n' "$vmedia_manifest" >"$vmedia_stamp"
	rm -rf "$gstage"
	trap - EXIT
	log "built: plinth/vmedia-bios.img ($(stat -c %s "$ROOT/plinth/vmedia-bios.img") bytes), plinth/vmedia-efi.img ($(stat -c %s "$ROOT/plinth/vmedia-efi.img") bytes)"
fi

"$here/build-disks.sh" "$ROOT"

# ---- SHA256SUMS and summary -----------------------------------------------------------------
# Checksums of files not changed since the last SHA256SUMS are reused (large OS images).
sums=$ROOT/SHA256SUMS
declare -A old=()
if [ -f "$sums" ]; then
	while read -r h n; do old[${n#\*}]=$h; done <"$sums"
fi
mapfile -t files < <(cd "$ROOT" && find . -type f ! -name SHA256SUMS ! -name '.*' ! -path '*/.*' -printf '%P\n' | LC_ALL=C sort)
new_sums=""
printf '\n%-24s %12s  %s\n' NAME SIZE SHA256
for f in "${files[@]}"; do
	if [ -n "${old[$f]:-}" ] && [ ! "$ROOT/$f" -nt "$sums" ]; then
		h=${old[$f]}
	else
		h=$(sha256sum "$ROOT/$f" | cut -d' ' -f1)
	fi
	new_sums+="$h  $f"$'\n'
	printf '%-24s %12s  %s\n' "$f" "$(numfmt --to=iec-i --suffix=B "$(stat -c %s "$ROOT/$f")")" "$h"
done
echo
if [ -f "$sums" ] && [ "$(cat "$sums")"$'\n' = "$new_sums" ]; then
	log "up to date: SHA256SUMS"
else
	printf '%s' "$new_sums" >"$sums.tmp"
	mv -f "$sums.tmp" "$sums"
	log "wrote SHA256SUMS"
fi
log "done in $((SECONDS - start)) s"
