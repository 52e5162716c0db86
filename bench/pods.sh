#!/usr/bin/env bash
# Benchmark (not a test): `ark run --stage1=ns` of busybox `true` against `crun run` of the same
# rootfs bundle and `podman run --rm` of the same image, all from Debian; plus stage0's prepare
# with app roots by overlay vs by copy. Prints means and ratios (target: ark <= 1.5x crun, and
# faster than podman).
#
# Like with like: every contender gets its own pid, mount, ipc, uts and network namespace
# (crun's default bundle, as `crun spec` makes it; `podman --network=none`; ark `--net=none`,
# passed explicitly so a change of ark's default network does not change what is measured).
#
# Usage: bench/pods.sh [RUNS]      (root; uses $ARK_BIN, else builds with ./build.sh --release)
#   ARK_BASELINE=/path/to/other/bin/ark also measures another ark build in the same rounds.
#   ROUNDS (default 2): the runs are split into rounds that alternate ark and its peers, so a
#   busy machine weighs on both alike; the means are over all rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
rounds=${ROUNDS:-2}
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
  if [ -n "${ARK_BASELINE:-}" ]; then
    "$ARK_BASELINE" --dir "$work/ark-baseline" gc --grace-period=0s --expire-prepared=0s \
      >/dev/null 2>&1 || true
  fi
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

echo "== run busybox true ($runs runs each, in $rounds rounds)"
ark_cmds=(-n "ark run --stage1=ns" "${ark[*]} run --stage1=ns --net=none $image -- true")
if [ -n "${ARK_BASELINE:-}" ]; then
  base=("$ARK_BASELINE" --dir "$work/ark-baseline" --insecure-options=image)
  "${base[@]}" run --stage1=ns --net=none "$image" -- true ||
    { echo "bench/pods.sh: the baseline ark ($ARK_BASELINE) failed to run the pod" >&2; exit 1; }
  ark_cmds+=(-n "baseline ark run --stage1=ns" "${base[*]} run --stage1=ns --net=none $image -- true")
fi
# Podman's default nofile/nproc limits exceed this host's hard limits: ask for plain ones.
podman_cmd="podman run --rm --network=none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 localhost/ark-bench-busybox:latest /bin/true"
crun_cmd="crun run --bundle $work/bundle $ctr"
peers_in() { "$@"; }
if ! $crun_cmd >/dev/null 2>&1; then
  # crun 1.8 (also under podman) refuses hybrid cgroup hosts (v1 controllers plus a v2 mount
  # with a controller). Then the peers run in a mount namespace whose /sys/fs/cgroup is a plain
  # cgroup2 mount, without cgroups — what ark's ns flavor does for a pod without limits,
  # minus the pod cgroup (and device cgroup) ark still makes. This favours the peers.
  echo "(hybrid cgroups: crun and podman measured with cgroups disabled in a cgroup2 mount namespace)"
  crun_cmd="crun --cgroup-manager=disabled run --bundle $work/bundle $ctr"
  podman_cmd="${podman_cmd/podman run/podman run --cgroups=disabled}"
  peers_in() {
    unshare -m sh -c 'mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && exec "$@"' sh "$@"
  }
fi
# A peer that does not run is a failed benchmark, not a fast peer.
for p in "$crun_cmd" "$podman_cmd"; do
  # shellcheck disable=SC2086 # the command's words
  out=$(peers_in $p 2>&1) || {
    echo "bench/pods.sh: the peer failed: $p" >&2
    printf '%s\n' "$out" | tail -n 5 >&2
    exit 1
  }
done
per_round=$(( (runs + rounds - 1) / rounds ))
for r in $(seq "$rounds"); do
  hyperfine -N -w 3 -r "$per_round" --export-json "$work/run.$r.json" "${ark_cmds[@]}" ||
    { echo "bench/pods.sh: an ark run failed" >&2; exit 1; }
  peers_in hyperfine -N -w 3 -r "$per_round" --export-json "$work/peers.$r.json" \
    -n "crun run" "$crun_cmd" -n "podman run --rm" "$podman_cmd" ||
    { echo "bench/pods.sh: a peer run failed (crun or podman)" >&2; exit 1; }
done

python3 - "$work/prep.json" "$work"/run.*.json "$work"/peers.*.json <<'EOF'
import json, sys
from collections import defaultdict
prep = {r["command"]: r["mean"] for r in json.load(open(sys.argv[1]))["results"]}
times = defaultdict(list)
for f in sys.argv[2:]:
    for r in json.load(open(f))["results"]:
        times[r["command"]] += r["times"]
run = {c: sum(t) / len(t) for c, t in times.items()}
ark, crun, podman = run["ark run --stage1=ns"], run["crun run"], run["podman run --rm"]
print()
print(f"prepare overlay {prep['overlay']*1e3:7.1f} ms   copy {prep['copy']*1e3:7.1f} ms"
      f"   copy/overlay = {prep['copy']/prep['overlay']:.2f}x")
print(f"ark run --stage1=ns   {ark*1e3:7.1f} ms")
base = run.get("baseline ark run --stage1=ns")
if base is not None:
    print(f"baseline ark          {base*1e3:7.1f} ms   ark/baseline = {ark/base:.2f}x"
          f"   baseline/crun = {base/crun:.2f}x")
print(f"crun run              {crun*1e3:7.1f} ms   ark/crun   = {ark/crun:.2f}x (target <= 1.5x)")
print(f"podman run --rm       {podman*1e3:7.1f} ms   ark/podman = {ark/podman:.2f}x (target < 1x)")
EOF
