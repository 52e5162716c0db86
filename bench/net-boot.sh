#!/usr/bin/env bash
# What a virtio-net device costs a guest's boot, and what a kernel change (e.g. IPv6) costs:
# boots the same busybox guest (root on virtio-fs, /init prints a marker and powers off) with
# and without a NIC, alternating, and prints the guest's own time to /init (the kernel timestamp
# of a line /init writes) and the wall time from ark-vmm start to the marker, mean and median of each.
# Not a test. Runs in a private network namespace (unshare -n): the TAP never shows on the host.
#
# Usage: bench/net-boot.sh [runs] [kernel-b]   env: ARK_VMM (default target/release/ark-vmm,
# built here), ARK_KERNEL (kernel A). With kernel-b, compares A and B (both with a NIC) instead.
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/.."
runs=${1:-3}
kernel_b=${2:-}
if [ -z "${ARK_VMM:-}" ]; then
  cargo build --release -q -p ark-vmm
  ARK_VMM=${CARGO_TARGET_DIR:-target}/release/ark-vmm
fi
[ -n "${ARK_KERNEL:-}" ] || { echo "bench: set ARK_KERNEL" >&2; exit 1; }
if [ "$(id -u)" != 0 ]; then echo "bench: needs root (TAP, netns)" >&2; exit 1; fi
if [ -z "${ARK_NET_BOOT_IN_NS:-}" ]; then
  ARK_NET_BOOT_IN_NS=1 ARK_VMM=$ARK_VMM exec unshare -n "$self" "$@"
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,tmp}
cp "$(command -v busybox)" "$root/bin/busybox"
for a in $("$root/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"; done
# The guest's own clock at /init: a KERN_ALERT line through /dev/kmsg gets the kernel's timestamp
# on the console even with the profile's `quiet` (which hides "Run /init"), without a process.
printf '#!/bin/sh\necho "<1>ARK-BOOT-MARK" > /dev/kmsg\npoweroff -f\n' > "$root/init"
chmod 755 "$root/init"
ip tuntap add dev arkboot0 mode tap vnet_hdr
ip link set arkboot0 up
flags=$(tr -s ' \n' ' ' < kernel-config/pvm-compat.cmdline 2>/dev/null || true)
cmdline="$flags console=ttyS0 reboot=k panic=-1 rootfstype=virtiofs root=rootfs rw init=/init"

boot() { # label kernel [net-args...]
  local label=$1 kernel=$2; shift 2
  local serial=$work/serial.$label.log start end
  rm -f "$serial"
  start=$(date +%s.%N)
  "$ARK_VMM" --kernel "$kernel" --cmdline "$cmdline" --memory 128 --no-rng \
    --fs "rootfs=$root" --serial "file=$serial" "$@" >/dev/null 2>&1 || true
  end=$(date +%s.%N)
  grep -q ARK-BOOT-MARK "$serial" || { echo "bench: $label: no marker" >&2; tail -5 "$serial" >&2; exit 1; }
  local guest
  guest=$(sed -n 's/^\[ *\([0-9.]*\)\] ARK-BOOT-MARK.*/\1/p' "$serial" | head -1)
  echo "$label $guest $(echo "$end - $start" | bc)" >> "$work/results"
  echo "  $label: guest /init at ${guest}s, wall $(tail -1 "$work/results" | cut -d' ' -f3)s"
}
net=(--net "tap=arkboot0,mac=02:00:00:00:00:0b")
for i in $(seq "$runs"); do
  echo "run $i"
  if [ -z "$kernel_b" ]; then
    boot no-nic "$ARK_KERNEL"
    boot nic "$ARK_KERNEL" "${net[@]}"
  else
    boot kernel-a "$ARK_KERNEL" "${net[@]}"
    boot kernel-b "$kernel_b" "${net[@]}"
  fi
done
stats() { # column label -> "mean / median"
  awk -v l="$2" -v c="$1" '$1==l {print $c}' "$work/results" | sort -n |
    awk '{v[NR]=$1; s+=$1} END {printf "%.2f / %.2f", s/NR, v[int((NR+1)/2)]}'
}
echo "label      guest-to-init mean / median (s)   wall mean / median (s)"
for label in $(cut -d' ' -f1 "$work/results" | sort -u); do
  printf '%-10s %-32s  %s\n' "$label" "$(stats 2 "$label")" "$(stats 3 "$label")"
done
