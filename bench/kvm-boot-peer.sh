#!/usr/bin/env bash
# Peer line for ark's boot benchmarks: qemu's microvm machine booting the same guest kernel
# to the same static marker /init (kernel-config/qemu-boot.sh), N times.
# On kvm_pvm hosts guest kernel code is emulated, so absolute numbers are not hardware KVM boot
# times: compare ark-vmm against this line on the same kernel and host.
# Usage: bench/kvm-boot-peer.sh [--runs N] [--root initramfs|ext4|erofs] [--mem MiB] [--kernel VMLINUX]
# Prints one line per run and a summary: `qemu-microvm <root> runs=N marker median=..s min=..s max=..s`.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3 root=initramfs extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=${2:?}; shift 2 ;;
    --root) root=${2:?}; shift 2 ;;
    --mem|--kernel|--profile) extra+=("$1" "${2:?}"); shift 2 ;;
    *) echo "bench/kvm-boot-peer.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

times=()
for i in $(seq 1 "$runs"); do
  line=$(kernel-config/qemu-boot.sh --root "$root" "${extra[@]}")
  echo "run $i: $line"
  times+=("$(echo "$line" | sed -E 's/.*marker=([0-9.]+).*/\1/')")
done
printf '%s\n' "${times[@]}" | sort -n | awk -v root="$root" -v n="$runs" '
  { t[NR] = $1 }
  END {
    med = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2
    printf "qemu-microvm %s runs=%d marker median=%.2fs min=%.2fs max=%.2fs\n", root, n, med, t[1], t[NR]
  }'
