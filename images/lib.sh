# images/lib.sh: what images/build.sh and images/build-disks.sh share. Sourced, not run; the
# caller defines log and die.

# has_kernel V: /boot/vmlinuz-V and its modules are installed.
has_kernel() { [ -f "/boot/vmlinuz-$1" ] && [ -f "/lib/modules/$1/modules.dep" ]; }

# pick_kernel: prints the kernel version to use: $PLINTH_KERNEL_VERSION, else the one the
# linux-image-amd64 package depends on (when complete), else the newest installed one.
pick_kernel() {
	local kver=${PLINTH_KERNEL_VERSION:-} dep d v
	if [ -n "$kver" ]; then
		has_kernel "$kver" || die "PLINTH_KERNEL_VERSION=$kver: need /boot/vmlinuz-$kver and /lib/modules/$kver"
		echo "$kver"
		return
	fi
	dep=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null | grep -o 'linux-image-[^ ,|]*' | head -n1 || true)
	dep=${dep#linux-image-}
	if [ -n "$dep" ] && has_kernel "$dep"; then
		echo "$dep"
		return
	fi
	kver=$(for d in /lib/modules/*/; do
		v=$(basename "$d")
		if has_kernel "$v"; then echo "$v"; fi
	done | sort -V | tail -n1)
	[ -n "$kver" ] || die "no kernel: no /lib/modules/V with a matching /boot/vmlinuz-V (install linux-image-amd64)"
	echo "$kver"
}

# require_static_busybox PATH: the busybox of busybox-static (the initramfs has no libc).
require_static_busybox() {
	[ -x "$1" ] || die "$1 missing (package busybox-static)"
	file -L "$1" 2>/dev/null | grep -q 'statically linked' ||
		ldd "$1" 2>&1 | grep -q 'not a dynamic executable' ||
		die "$1 is not statically linked: install busybox-static (it replaces busybox)"
}

# stage_busybox STAGE BUSYBOX: busybox as STAGE/bin/busybox, with a link per applet.
stage_busybox() {
	local stage=$1 applet
	install -m 0755 "$2" "$stage/bin/busybox"
	while read -r applet; do
		[ -n "$applet" ] && [ "$applet" != bin/busybox ] || continue
		[ -e "$stage/$applet" ] || [ -L "$stage/$applet" ] || ln -s /bin/busybox "$stage/$applet"
	done < <("$stage/bin/busybox" --list-full)
}

# write_initramfs STAGE OUT COMPRESSOR...: STAGE as a reproducible newc cpio archive, compressed
# by the command COMPRESSOR... (stdin to stdout; a bare number N means gzip -n -N), with
# /dev/console in it (cpio copies device nodes only as root, so that entry is written by hand:
# the kernel needs it to give /init a console).
write_initramfs() {
	local stage=$1 out=$2
	shift 2
	[ $# -gt 1 ] || case "${1:-}" in [0-9]) set -- gzip -n "-$1" ;; esac
	newc() { # NAME MODE(octal) RDEV_MAJOR RDEV_MINOR
		local n=$((${#1} + 1))
		printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
			0 "$((8#$2))" 0 0 1 0 0 0 0 "$3" "$4" "$n" 0
		printf '%s\0' "$1"
		head -c $(((4 - (110 + n) % 4) % 4)) /dev/zero
	}
	{
		newc dev 040755 0 0
		newc dev/console 020600 5 1
		(cd "$stage" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
			cpio --quiet -o -H newc -R 0:0 --reproducible)
	} | "$@" >"$out"
}
