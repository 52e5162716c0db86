#!/usr/bin/env bash
# Boot check of an ark guest kernel under qemu's microvm machine (the peer VMM): boots a static
# marker /init (testdata/marker-init.c) and requires that
#   1. the kernel reaches user space (ARK-INIT-OK on the serial console), and
#   2. the guest's reboot(RB_AUTOBOOT) ends the VM (reboot=k -> i8042 reset -> qemu -no-reboot).
# Prints one result line on stdout: `marker=<s> exit=<s>` (seconds since qemu started).
#
# Usage: kernel-config/qemu-boot.sh [--profile P] [--kernel VMLINUX] [--mem MiB]
#                                   [--root initramfs|ext4|erofs] [--timeout S] [--log FILE]
# Defaults: the host's profile (host-profile.sh), its newest cached build, 128 MiB, initramfs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
me="kernel-config/qemu-boot.sh"
die() { echo "$me: $*" >&2; exit 1; }

profile="" kernel="" mem=128 root=initramfs timeout=180 log=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=${2:?}; shift 2 ;;
    --kernel) kernel=${2:?}; shift 2 ;;
    --mem) mem=${2:?}; shift 2 ;;
    --root) root=${2:?}; shift 2 ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    --log) log=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" >&2; exit 2 ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[ -n "$profile" ] || profile=$("$here/host-profile.sh")
[ -f "$here/$profile.cmdline" ] || die "unknown profile '$profile'"
if [ -z "$kernel" ]; then
  kernel=${XDG_CACHE_HOME:-$HOME/.cache}/ark/kernels/current-$profile/vmlinux
  [ -f "$kernel" ] || die "no $profile kernel built: run kernel-config/build.sh --profile $profile"
fi
[ -f "$kernel" ] || die "$kernel does not exist"
[ -r /dev/kvm ] || die "/dev/kvm is not available"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cc=musl-gcc
command -v "$cc" >/dev/null || cc=gcc
"$cc" -static -Os -o "$work/init" "$here/testdata/marker-init.c"

append="$(cat "$here/$profile.cmdline")"
disk=()
case "$root" in
  initramfs)
    (cd "$work" && echo init | cpio -o -H newc --quiet > initrd.cpio)
    disk=(-initrd "$work/initrd.cpio")
    append="$append rdinit=/init"
    ;;
  ext4|erofs)
    mkdir -p "$work/rootfs/dev" "$work/rootfs/proc"
    cp "$work/init" "$work/rootfs/init"
    if [ "$root" = ext4 ]; then
      mkfs.ext4 -q -F -d "$work/rootfs" "$work/root.img" 16M >&2
      append="$append root=/dev/vda rw rootfstype=ext4 init=/init"
    else
      mkfs.erofs --quiet "$work/root.img" "$work/rootfs" >&2
      append="$append root=/dev/vda ro rootfstype=erofs init=/init"
    fi
    # qemu's microvm adds the virtio_mmio.device= declaration to the command line itself.
    disk=(-drive "id=root,file=$work/root.img,format=raw,if=none" -device virtio-blk-device,drive=root)
    ;;
  *) die "--root must be initramfs, ext4 or erofs" ;;
esac

serial=${log:-$work/serial.log}
: > "$serial"
start=$EPOCHREALTIME
# -device i8042: the keyboard controller whose reset line reboot=k pulls (as Firecracker has).
timeout "$timeout" qemu-system-x86_64 \
  -machine microvm,acpi=off,pit=off,pic=off,rtc=off -enable-kvm -cpu host -m "$mem" \
  -nodefaults -no-user-config -nographic -no-reboot -serial stdio -device i8042 \
  -kernel "$kernel" -append "$append" "${disk[@]}" </dev/null 2>&1 |
  while IFS= read -r line; do
    printf '%s %s\n' "$(echo "$EPOCHREALTIME - $start" | bc)" "$line" >> "$serial"
  done
status=${PIPESTATUS[0]}
end=$(echo "$EPOCHREALTIME - $start" | bc)

marker=$(grep -m1 ' ARK-INIT-OK' "$serial" | cut -d' ' -f1 || true)
if [ -z "$marker" ]; then
  tail -n 20 "$serial" >&2
  die "no ARK-INIT-OK from the guest (qemu status $status after ${end}s; serial log above)"
fi
if [ "$status" -ne 0 ]; then
  tail -n 10 "$serial" >&2
  die "guest reached /init at ${marker}s but qemu did not end cleanly (status $status after ${end}s)"
fi
if grep -q 'ARK-INIT-REBOOT-FAILED' "$serial"; then
  die "reboot(RB_AUTOBOOT) failed in the guest"
fi
echo "marker=$marker exit=$end"
