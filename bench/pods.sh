#!/usr/bin/env bash
# Benchmark (not a test): `ark run --stage1=ns` of busybox `true` against `crun run` of the same
# rootfs bundle and `podman run --rm` of the same image, all from Debian; plus stage0's prepare
# with app roots by overlay vs by copy. Prints means and ratios (target: ark <= 1.5x crun, and
# faster than podman).
#
# Usage: bench/pods.sh [RUNS]      (root; uses $ARK_BIN, else builds with ./build.sh --release)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
[ "$(id -u)" = 0 ] || { echo "bench/pods.sh: needs root" >&2; exit 1; }
for t in hyperfine crun podman umoci skopeo busybox python3; do
  command -v "$t" >/dev/null || { echo "bench/pods.sh: $t is missing (see .ci/setup)" >&2; exit 1; }
done

if [ -z "${ARK_BIN:-}" ]; then
  ARK_BIN=$(./build.sh --release | tail -n 1)
fi
work=$(mktemp -d /tmp/ark-bench-pods.XXXXXX)
data=$work/ark
ark=("$ARK_BIN" --dir "$data" --insecure-options=image)
ctr=ark-bench-$$
cleanup() {
  "${ark[@]}" gc --grace-period=0s --expire-prepared=0s >/dev/null 2>&1 || true
  crun delete -f "$ctr" >/dev/null 2>&1 || true
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
for a in sh true echo cat sleep; do ln -s busybox "$work/b0/rootfs/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$work/b0/rootfs/etc/passwd"
printf 'root:x:0:\n' >"$work/b0/rootfs/etc/group"
umoci repack --image "$layout:latest" "$work/b0" >/dev/null
umoci config --image "$layout:latest" --config.cmd /bin/sh --config.env PATH=/bin >/dev/null
image="oci-layout:$layout:latest"

# crun: the same image unpacked as a runtime bundle, running `true`, no terminal.
umoci unpack --image "$layout:latest" "$work/bundle" >/dev/null
python3 - "$work/bundle/config.json" <<'EOF'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["args"] = ["/bin/true"]
c["process"]["terminal"] = False
json.dump(c, open(p, "w"))
EOF

# podman: the same image in containers-storage.
skopeo copy -q "oci:$layout:latest" containers-storage:localhost/ark-bench-busybox:latest

# Warm the image store's render cache.
"${ark[@]}" run --stage1=ns --net=none "$image" -- true

echo "== prepare: app roots by overlay vs copy ($runs runs each)"
hyperfine -N -w 3 -r "$runs" --export-json "$work/prep.json" \
  -n overlay "env ARK_APP_ROOTFS=overlay ${ark[*]} prepare --stage1=ns $image -- true" \
  -n copy "env ARK_APP_ROOTFS=copy ${ark[*]} prepare --stage1=ns $image -- true"
"${ark[@]}" gc --expire-prepared=0s >/dev/null

echo "== run busybox true ($runs runs each)"
hyperfine -N -w 3 -r "$runs" --export-json "$work/run.json" \
  -n "ark run --stage1=ns" "${ark[*]} run --stage1=ns --net=none $image -- true"
# Podman's default nofile/nproc limits exceed this host's hard limits: ask for plain ones.
podman_cmd="podman run --rm --network=none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 localhost/ark-bench-busybox:latest /bin/true"
crun_cmd="crun run --bundle $work/bundle $ctr"
if $crun_cmd >/dev/null 2>&1; then
  hyperfine -N -w 3 -r "$runs" --export-json "$work/peers.json" \
    -n "crun run" "$crun_cmd" -n "podman run --rm" "$podman_cmd"
else
  # crun 1.8 (also under podman) refuses hybrid cgroup hosts (v1 controllers plus a v2 mount
  # with a controller). Then the peers run in a mount namespace whose /sys/fs/cgroup is a plain
  # cgroup2 mount, without cgroups — what ark's ns flavor does for a pod without limits,
  # minus the pod cgroup ark still makes. This favours the peers.
  echo "(hybrid cgroups: crun and podman measured with cgroups disabled in a cgroup2 mount namespace)"
  crun_cmd="crun --cgroup-manager=disabled run --bundle $work/bundle $ctr"
  podman_cmd="${podman_cmd/podman run/podman run --cgroups=disabled}"
  unshare -m sh -c "mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup &&
    hyperfine -N -w 3 -r $runs --export-json $work/peers.json \
      -n 'crun run' '$crun_cmd' -n 'podman run --rm' '$podman_cmd'"
fi

python3 - "$work/prep.json" "$work/run.json" "$work/peers.json" <<'EOF'
import json, sys
prep = {r["command"]: r["mean"] for r in json.load(open(sys.argv[1]))["results"]}
run = {r["command"]: r["mean"] for f in sys.argv[2:] for r in json.load(open(f))["results"]}
ark, crun, podman = run["ark run --stage1=ns"], run["crun run"], run["podman run --rm"]
print()
print(f"prepare overlay {prep['overlay']*1e3:7.1f} ms   copy {prep['copy']*1e3:7.1f} ms"
      f"   copy/overlay = {prep['copy']/prep['overlay']:.2f}x")
print(f"ark run --stage1=ns   {ark*1e3:7.1f} ms")
print(f"crun run              {crun*1e3:7.1f} ms   ark/crun   = {ark/crun:.2f}x (target <= 1.5x)")
print(f"podman run --rm       {podman*1e3:7.1f} ms   ark/podman = {ark/podman:.2f}x (target < 1x)")
EOF
