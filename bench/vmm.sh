#!/usr/bin/env bash
# ark-vmm against QEMU's microvm machine on this host, same guests, same kernel. Not a test:
# prints numbers and ratios (ark / qemu; lower is better for times and memory, higher for (c)).
#
#   (a) process start to the guest's first instruction (ark-vmm logs the CLOCK_MONOTONIC time
#       of vCPU 0's first exit; QEMU, which runs its microvm firmware first, gets its start to
#       exit as an upper bound), and process start to exit for both
#   (b) VMM RSS for a 128 MiB guest that never touches its RAM (so RSS ~ VMM overhead)
#   (c) port-I/O exits per second (a guest doing N `out` instructions)
#   (d) time to an /init marker: same kernel, root on virtio-blk (needs ARK_KERNEL)
#
# Usage: bench/vmm.sh [runs]      env: ARK_VMM (default: a release build of ark-vmm, made here;
# the debug build in build.sh's tree is several times larger and slower), ARK_KERNEL
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
tdir=${CARGO_TARGET_DIR:-target}
if [ -z "${ARK_VMM:-}" ]; then
  cargo build --release -q -p ark-vmm
  ARK_VMM=$tdir/release/ark-vmm
fi
VMM=$ARK_VMM
[ -x "$VMM" ] || { echo "bench: $VMM missing: run ./build.sh" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "bench: qemu-system-x86_64 missing (.ci/setup)" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

# Tiny guests: ELF with a PVH note (32-bit flat entry), so both VMMs boot them the same way.
# Exit sequence: `out 0xf4` ends QEMU (isa-debug-exit), `out 0x64, 0xfe` ends ark-vmm (i8042).
mkelf() { # name hex-code
  python3 - "$work/$1" "$2" <<'PY'
import struct, sys
out, code = sys.argv[1], bytes.fromhex(sys.argv[2])
LOAD = 0x200000
note_desc = struct.pack("<I", LOAD)
note = struct.pack("<III", 4, len(note_desc), 18) + b"Xen\0" + note_desc  # XEN_ELFNOTE_PHYS32_ENTRY
ehdr, phdr = 64, 56
off_note = ehdr + 2 * phdr
off_code = (off_note + len(note) + 15) & ~15
e = b"\x7fELF\x02\x01\x01\x00" + bytes(8)
e += struct.pack("<HHIQQQIHHHHHH", 2, 0x3e, 1, LOAD, ehdr, 0, 0, ehdr, phdr, 2, 0, 0, 0)
e += struct.pack("<IIQQQQQQ", 1, 5, off_code, LOAD, LOAD, len(code), len(code), 0x1000)
e += struct.pack("<IIQQQQQQ", 4, 4, off_note, 0, 0, len(note), len(note), 4)
e += note
e += bytes(off_code - len(e)) + code
open(out, "wb").write(e)
PY
}
EXIT_SEQ="e6f4b0fee664f4ebfd"            # out 0xf4,al; mov al,0xfe; out 0x64,al; hlt; jmp
mkelf exit.elf "$EXIT_SEQ"
mkelf idle.elf "fbf4ebfd"                # sti; hlt; jmp (cli; hlt would be a power-off)
N=200000
# mov ecx, N; loop: out 0x80, al; dec ecx; jnz loop; then the exit sequence.
mkelf pio.elf "b9$(python3 -c "import struct;print(struct.pack('<I',$N).hex())")e6804975fb${EXIT_SEQ}"

ark() { "$VMM" --kernel "$1" --memory "${2:-128}" --no-rng --serial none; }
qemu() {
  qemu-system-x86_64 -machine microvm,acpi=off,rtc=off -enable-kvm -cpu host -m "${2:-128}" \
    -nographic -nodefaults -no-reboot -display none \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$1" || true
}
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
timeit() { # runs cmd... → median seconds
  for _ in $(seq "$runs"); do s=$(now); "$@" >/dev/null 2>&1 || true; e=$(now); echo "$e - $s" | bc -l; done | median
}
ratio() { echo "scale=2; $1 / $2" | bc -l; }
row() { printf '%-44s %12s %12s %8s\n' "$@"; }

row "metric" "ark-vmm" "qemu" "ark/qemu"
# → "first-exit-ms total-ms" medians; the first is empty when the VMM logs no first exit.
start_times() {
  python3 - "$runs" "$@" <<'PY'
import re, subprocess, sys, time
runs, cmd = int(sys.argv[1]), sys.argv[2:]
first, total = [], []
for _ in range(runs):
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    p = subprocess.run(cmd, env={"ARK_VMM_LOG": "info", "NO_COLOR": "1"}, capture_output=True, text=True)
    total.append((time.clock_gettime_ns(time.CLOCK_MONOTONIC) - t0) / 1e6)
    m = re.search(r"first guest exit at CLOCK_MONOTONIC (\d+)", p.stderr)
    if m:
        first.append((int(m.group(1)) - t0) / 1e6)
med = lambda v: "%.2f" % sorted(v)[len(v) // 2] if v else ""
print(med(first), med(total))
PY
}
read -r a_first a_ark_total < <(start_times "$VMM" --kernel "$work/exit.elf" --memory 128 --no-rng --serial none)
read -r a_q_total < <(start_times qemu-system-x86_64 -machine microvm,acpi=off,rtc=off -enable-kvm -cpu host -m 128 \
  -nographic -nodefaults -no-reboot -display none -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$work/exit.elf")
row "(a) start to first guest instruction (ms)" "$a_first" "<$a_q_total" "$(ratio "$a_first" "$a_q_total")"
row "(a) start to process exit (ms)" "$a_ark_total" "$a_q_total" "$(ratio "$a_ark_total" "$a_q_total")"
echo "    target (a): first instruction <= 5 ms"
a_ark=$(timeit ark "$work/exit.elf"); a_q=$(timeit qemu "$work/exit.elf")

rss() { # binary args... → VmRSS in KiB after 1 s (run directly so $! is the VMM itself)
  "$@" >/dev/null 2>&1 & local pid=$!
  sleep 1
  local kb; kb=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  echo "$kb"
}
b_ark=$(rss "$VMM" --kernel "$work/idle.elf" --memory 128 --no-rng --serial none)
b_q=$(rss qemu-system-x86_64 -machine microvm,acpi=off,rtc=off -enable-kvm -cpu host -m 128 \
  -nographic -nodefaults -no-reboot -display none -kernel "$work/idle.elf")
row "(b) RSS, idle 128 MiB guest (KiB)" "$b_ark" "$b_q" "$(ratio "$b_ark" "$b_q")"

c_ark=$(timeit ark "$work/pio.elf"); c_q=$(timeit qemu "$work/pio.elf")
c_ark_rate=$(echo "$N / ($c_ark - $a_ark)" | bc -l | cut -d. -f1)
c_q_rate=$(echo "$N / ($c_q - $a_q)" | bc -l | cut -d. -f1)
row "(c) port-I/O exits per second" "$c_ark_rate" "$c_q_rate" "$(ratio "$c_ark_rate" "$c_q_rate")"

if [ -n "${ARK_KERNEL:-}" ] && [ -f "$ARK_KERNEL" ]; then
  root=$work/root; mkdir -p "$root"/{bin,proc,sys,dev,etc,tmp}
  cp "$(command -v busybox)" "$root/bin/busybox"; ln -s busybox "$root/bin/sh"; ln -s busybox "$root/bin/reboot"
  printf '#!/bin/sh\necho ARK_BENCH_MARKER\nreboot -f\n' > "$root/init"; chmod 755 "$root/init"
  flags=$(cat kernel-config/pvm-compat.cmdline 2>/dev/null || echo "noxsave clearcpuid=308,288,145,298,158,306,151,297,580,141,534 nopti mitigations=off nokaslr rodata=off tsc=reliable no_timer_check no_int3_selftest")
  [ -d /sys/module/kvm_pvm ] || flags=$(cat kernel-config/microvm.cmdline 2>/dev/null || true)
  cmd="console=ttyS0 $flags reboot=k panic=-1 root=/dev/vda rw rootfstype=ext4 init=/init"
  marker_time() { # log-file cmd... → seconds until the marker appears (kills the VM then)
    local log=$1; shift; : > "$log"
    local s; s=$(now)
    "$@" > "$log" 2>&1 & local pid=$!
    while ! grep -q ARK_BENCH_MARKER "$log" 2>/dev/null; do
      kill -0 "$pid" 2>/dev/null || break; sleep 0.05
    done
    local e; e=$(now); kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    echo "$e - $s" | bc -l
  }
  d_runs=$(( runs < 3 ? runs : 3 ))
  # Interleaved, so load from anything else on the host hits both VMMs alike.
  for _ in $(seq "$d_runs"); do
    mkfs.ext4 -q -F -d "$root" "$work/root.ext4" 64M >/dev/null
    marker_time "$work/ark.log" "$VMM" --kernel "$ARK_KERNEL" --memory 128 --no-rng --cmdline "$cmd" \
      --blk "$work/root.ext4" >> "$work/d_ark"
    mkfs.ext4 -q -F -d "$root" "$work/root.ext4" 64M >/dev/null
    marker_time "$work/q.log" qemu-system-x86_64 -machine microvm,acpi=off,rtc=off -enable-kvm -cpu host -m 128 \
      -nographic -nodefaults -no-reboot -serial stdio -kernel "$ARK_KERNEL" -append "$cmd" \
      -drive id=root,file="$work/root.ext4",format=raw,if=none -device virtio-blk-device,drive=root >> "$work/d_q"
  done
  d_ark=$(median < "$work/d_ark"); d_q=$(median < "$work/d_q")
  row "(d) time to /init marker (s)" "$d_ark" "$d_q" "$(ratio "$d_ark" "$d_q")"
else
  echo "(d) skipped: set ARK_KERNEL to a guest kernel"
fi
