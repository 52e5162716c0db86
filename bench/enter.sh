#!/usr/bin/env bash
# Benchmark (not a test): `ark enter UUID true` latency (ns, and kvm when $ARK_KERNEL is set)
# against `podman exec CTR true`, and stdout throughput of `cat` of a 256 MiB file through
# `ark enter` against `podman exec`. Prints means and ratios (targets: ns latency <= 1.0x
# podman's; throughput >= 1.0x podman's in both flavors). Exits non-zero if a peer fails.
#
# Usage: bench/enter.sh [RUNS]     (root; uses $ARK_BIN, else builds with ./build.sh --release)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
[ "$(id -u)" = 0 ] || { echo "bench/enter.sh: needs root" >&2; exit 1; }
for t in hyperfine podman umoci skopeo busybox python3; do
  command -v "$t" >/dev/null || { echo "bench/enter.sh: $t is missing (see .ci/setup)" >&2; exit 1; }
done
if [ -z "${ARK_BIN:-}" ]; then
  ARK_BIN=$(./build.sh --release | tail -n 1)
fi
work=$(mktemp -d /tmp/ark-bench-enter.XXXXXX)
ark=("$ARK_BIN" --dir "$work/ark" --insecure-options=image)
ctr=ark-bench-enter-$$
pids=()
cleanup() {
  for u in $("${ark[@]}" list --format=json 2>/dev/null | python3 -c 'import json,sys;[print(p["uuid"]) for p in json.load(sys.stdin)]' 2>/dev/null); do
    "${ark[@]}" stop --force "$u" >/dev/null 2>&1 || true
  done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  "${ark[@]}" gc --grace-period=0s --expire-prepared=0s >/dev/null 2>&1 || true
  podman rm -f "$ctr" >/dev/null 2>&1 || true
  podman rmi -f localhost/ark-bench-busybox:latest >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# One busybox image (Debian's busybox-static) as an OCI layout, like the tests' image.
layout=$work/busybox
umoci init --layout "$layout" >/dev/null
umoci new --image "$layout:latest" >/dev/null
umoci unpack --image "$layout:latest" "$work/b0" >/dev/null
mkdir -p "$work/b0/rootfs/bin" "$work/b0/rootfs/etc" "$work/b0/rootfs/tmp"
cp "$(command -v busybox)" "$work/b0/rootfs/bin/busybox"
for a in sh true echo cat sleep head; do ln -s busybox "$work/b0/rootfs/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$work/b0/rootfs/etc/passwd"
printf 'root:x:0:\n' >"$work/b0/rootfs/etc/group"
umoci repack --image "$layout:latest" "$work/b0" >/dev/null
umoci config --image "$layout:latest" --config.cmd /bin/sh --config.env PATH=/bin >/dev/null
image="oci-layout:$layout:latest"
skopeo copy -q "oci:$layout:latest" containers-storage:localhost/ark-bench-busybox:latest

big=268435456
# A running pod of `flavor`; prints its UUID once `ark enter` reaches it.
start_pod() {
  local flavor=$1 before uuid
  before=$("${ark[@]}" list --format=json | python3 -c 'import json,sys;print(" ".join(p["uuid"] for p in json.load(sys.stdin)))')
  "${ark[@]}" run --stage1="$flavor" --net=none "$image" -- sleep 3600 </dev/null >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 1200); do
    uuid=$("${ark[@]}" list --format=json | python3 -c "import json,sys;b='$before'.split();print(' '.join(p['uuid'] for p in json.load(sys.stdin) if p['uuid'] not in b))")
    if [ -n "$uuid" ] && "${ark[@]}" enter "$uuid" true >/dev/null 2>&1; then
      "${ark[@]}" enter "$uuid" sh -c "head -c $big /dev/zero > /tmp/big"
      echo "$uuid"; return 0
    fi
    sleep 0.5
  done
  echo "bench/enter.sh: the $flavor pod never answered ark enter" >&2; return 1
}

ns=$(start_pod ns)
hyperfine -N -w 3 -r "$runs" --export-json "$work/ns.json" \
  -n "ark enter (ns) true" "${ark[*]} enter $ns true"
hyperfine -w 1 -r 3 --export-json "$work/ns-cat.json" \
  -n "ark enter (ns) cat" "${ark[*]} enter $ns cat /tmp/big > /dev/null"
files=("$work/ns.json" "$work/ns-cat.json")
if [ -n "${ARK_KERNEL:-}" ]; then
  kvm=$(start_pod kvm)
  hyperfine -N -w 1 -r "$(( runs < 5 ? runs : 5 ))" --export-json "$work/kvm.json" \
    -n "ark enter (kvm) true" "${ark[*]} enter $kvm true"
  hyperfine -w 0 -r 1 --export-json "$work/kvm-cat.json" \
    -n "ark enter (kvm) cat" "${ark[*]} enter $kvm cat /tmp/big > /dev/null"
  files+=("$work/kvm.json" "$work/kvm-cat.json")
else
  echo "(ARK_KERNEL unset: no kvm measurements)"
fi

# podman: the same image; on a hybrid-cgroup host (crun refuses it) without cgroups, in a
# mount namespace whose /sys/fs/cgroup is a plain cgroup2 mount (this favours podman).
peer() {
  podman run -d --name "$ctr" --network=none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    $1 localhost/ark-bench-busybox:latest sleep 3600 >/dev/null
  podman exec "$ctr" sh -c "head -c $big /dev/zero > /tmp/big"
  hyperfine -N -w 3 -r "$runs" --export-json "$work/podman.json" \
    -n "podman exec true" "podman exec $ctr true"
  hyperfine -w 1 -r 3 --export-json "$work/podman-cat.json" \
    -n "podman exec cat" "podman exec $ctr cat /tmp/big > /dev/null"
}
if ! (peer "" ) 2>/dev/null; then
  podman rm -f "$ctr" >/dev/null 2>&1 || true
  echo "(hybrid cgroups: podman measured with cgroups disabled in a cgroup2 mount namespace)"
  export -f peer; export ctr big runs work
  unshare -m bash -c 'mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && peer --cgroups=disabled' \
    || { echo "bench/enter.sh: podman exec failed" >&2; exit 1; }
fi
files+=("$work/podman.json" "$work/podman-cat.json")

python3 - "$big" "${files[@]}" <<'EOF'
import json, sys
big = int(sys.argv[1])
r = {x["command"]: x["mean"] for f in sys.argv[2:] for x in json.load(open(f))["results"]}
pe, pc = r["podman exec true"], r["podman exec cat"]
mib = big / 2**20
print()
print(f"podman exec true          {pe*1e3:8.1f} ms")
print(f"podman exec cat           {mib/pc:8.1f} MiB/s")
for fl in ["ns", "kvm"]:
    t, c = r.get(f"ark enter ({fl}) true"), r.get(f"ark enter ({fl}) cat")
    if t is None:
        continue
    print(f"ark enter ({fl:3}) true     {t*1e3:8.1f} ms   ark/podman = {t/pe:.2f}x (target <= 1.0x{' for ns' if fl == 'ns' else ''})")
    print(f"ark enter ({fl:3}) cat      {mib/c:8.1f} MiB/s  ark/podman = {pc/c:.2f}x (target >= 1.0x)")
EOF
