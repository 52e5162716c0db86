#!/usr/bin/env bash
# Benchmark (not a test): host <-> pod networking, same image (Debian's busybox-static), same
# host. Measures TCP throughput (1 GiB from the host into `nc -l` in the pod) and request
# latency (1000 small HTTP requests from the host to busybox httpd in the pod, one curl
# process). Two parts:
#   ns:  `ark run --stage1=ns` on its `default` network against `podman run` on podman's
#        default network (target: ark >= 0.95x podman's throughput);
#   kvm: `ark run --stage1=kvm` on `default` against qemu (microvm, its own virtio-net on a TAP
#        tc-redirected to a veth, the path ark's default network gives a kvm pod) booting the
#        same kernel into an initramfs with the same busybox (bench/net-qemu-peer.sh); both VMs
#        up at once and measured in turns (target: ark >= 1.0x qemu's throughput and <= 1.0x its
#        request time).
# Prints each figure and the ratios. Exits non-zero when any run (ark's or a peer's) fails, and
# then prints no ratio. Traffic stays on this host and in network namespaces made here. Times on
# a kvm_pvm host are not hardware times: compare the ratios of one run only.
#
# Usage: bench/net.sh [RUNS] [PARTS]   (root; PARTS "ns", "kvm" or "ns kvm", the default)
#   uses $ARK_BIN, else builds with ./build.sh --release; kvm needs $ARK_KERNEL (and
#   $ARK_KERNEL_PROFILE as for ark) and qemu-system-x86_64.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
parts=${2:-ns kvm}
[ "$(id -u)" = 0 ] || { echo "bench/net.sh: needs root" >&2; exit 1; }
for t in podman umoci skopeo busybox python3 curl; do
  command -v "$t" >/dev/null || { echo "bench/net.sh: $t is missing" >&2; exit 1; }
done
[ -x /usr/lib/cni/ptp ] || { echo "bench/net.sh: CNI plugins missing in /usr/lib/cni" >&2; exit 1; }

if [ -z "${ARK_BIN:-}" ]; then
  ARK_BIN=$(./build.sh --release | tail -n 1)
fi
work=$(mktemp -d /tmp/ark-bench-net.XXXXXX)
data=$work/ark
ark=("$ARK_BIN" --dir "$data" --insecure-options=image)
ctr=ark-bench-net-$$
pods=()
cleanup() {
  for p in "${pods[@]}"; do kill "$p" 2>/dev/null || true; done
  for u in $("${ark[@]}" list --no-legend --full 2>/dev/null | awk '{print $1}'); do
    "${ark[@]}" stop --force "$u" >/dev/null 2>&1 || true
  done
  "${ark[@]}" gc --grace-period=0s --expire-prepared=0s >/dev/null 2>&1 || true
  podman rm -f -t 0 "$ctr" >/dev/null 2>&1 || true
  podman rmi -f localhost/ark-bench-net:latest >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The image: busybox-static with the applets both servers use.
layout=$work/busybox
umoci init --layout "$layout" >/dev/null
umoci new --image "$layout:latest" >/dev/null
umoci unpack --image "$layout:latest" "$work/b0" >/dev/null
mkdir -p "$work/b0/rootfs/bin" "$work/b0/rootfs/etc" "$work/b0/rootfs/tmp"
cp "$(command -v busybox)" "$work/b0/rootfs/bin/busybox"
for a in sh true echo cat sleep mkdir nc httpd; do ln -s busybox "$work/b0/rootfs/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$work/b0/rootfs/etc/passwd"
printf 'root:x:0:\n' >"$work/b0/rootfs/etc/group"
umoci repack --image "$layout:latest" "$work/b0" >/dev/null
umoci config --image "$layout:latest" --config.cmd /bin/sh --config.env PATH=/bin >/dev/null
image="oci-layout:$layout:latest"
skopeo copy -q "oci:$layout:latest" containers-storage:localhost/ark-bench-net:latest

sink='exec nc -l -p 9000 >/dev/null'
web='mkdir -p /www && echo ok >/www/i.html && exec httpd -f -p 80 -h /www'

# Seconds to push 1 GiB to HOST:9000 and see the server close (all of it consumed).
push() {
  python3 - "$1" <<'EOF'
import socket, sys, time
host = sys.argv[1]
buf = b"\0" * (1 << 20)
for _ in range(600):
    try:
        s = socket.create_connection((host, 9000), timeout=1)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("no listener at %s:9000" % host)
s.settimeout(300)
t = time.perf_counter()
for _ in range(1024):
    s.sendall(buf)
s.shutdown(socket.SHUT_WR)
while s.recv(65536):
    pass
print("%.3f" % (time.perf_counter() - t))
EOF
}

# Seconds for 1000 HTTP requests to HOST:80 from one curl.
requests() {
  for _ in $(seq 600); do curl -s -m 1 -o /dev/null "http://$1/i.html" && break; sleep 0.1; done
  python3 - "$1" <<'EOF'
import subprocess, sys, time
t = time.perf_counter()
subprocess.run(["curl", "-s", "-f", "-o", "/dev/null", "http://%s/i.html?[1-1000]" % sys.argv[1]],
               check=True)
print("%.3f" % (time.perf_counter() - t))
EOF
}

# An ark pod (stage1 $2, default ns) running $1 in the background; prints its UUID and eth0
# address once up.
ark_pod() {
  "${ark[@]}" run --stage1="${2:-ns}" --net=default "$image" -- sh -c "$1" >"$work/pod-${2:-ns}.log" 2>&1 &
  pods+=($!)
  for _ in $(seq 6000); do
    u=$("${ark[@]}" list --no-legend --full 2>/dev/null | awk '$4=="running"{print $1; exit}')
    if [ -n "$u" ]; then
      ip=$("${ark[@]}" status "$u" | sed -n 's|^network-default=eth0 \([0-9.]*\)/.*|\1|p')
      [ -n "$ip" ] && { echo "$u $ip"; return; }
    fi
    sleep 0.1
  done
  echo "bench/net.sh: the ark pod did not come up" >&2
  return 1
}

podman_pod() {
  podman run -d --name "$ctr" $podman_flags --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    localhost/ark-bench-net:latest sh -c "$1" >/dev/null
  podman inspect -f '{{.NetworkSettings.IPAddress}}' "$ctr"
}

# One podman round: "THROUGHPUT_SECS REQUESTS_SECS".
podman_round() {
  local ip t r
  ip=$(podman_pod "$sink"); t=$(push "$ip"); podman rm -f -t 0 "$ctr" >/dev/null
  ip=$(podman_pod "$web"); r=$(requests "$ip"); podman rm -f -t 0 "$ctr" >/dev/null
  echo "$t $r"
}
podman_flags=
podman_in=(bash -c podman_round)
if [ -d /sys/fs/cgroup/unified ] && [ -n "$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)" ] \
  || [ -d /sys/fs/cgroup/memory ]; then
  # crun refuses hybrid cgroup hosts (as in bench/pods.sh): podman runs without cgroups in a
  # mount namespace whose /sys/fs/cgroup is a plain cgroup2 mount. The network is the same.
  echo "(hybrid cgroups: podman measured with --cgroups=disabled in a cgroup2 mount namespace)"
  podman_flags=--cgroups=disabled
  podman_in=(unshare -m bash -c 'mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && podman_round')
fi
export -f push requests podman_pod podman_round
export ctr sink web podman_flags

best() { sort -n | head -n 1; }

ns_part() {
  ark_tput=(); ark_req=(); pm_tput=(); pm_req=()
  for _ in $(seq "$runs"); do
    ark_pod "$sink" ns >"$work/pod"; read -r u ip <"$work/pod"
    ark_tput+=("$(push "$ip")")
    "${ark[@]}" stop "$u" >/dev/null
    "${ark[@]}" gc --grace-period=0s >/dev/null
    ark_pod "$web" ns >"$work/pod"; read -r u ip <"$work/pod"
    ark_req+=("$(requests "$ip")")
    "${ark[@]}" stop "$u" >/dev/null
    "${ark[@]}" gc --grace-period=0s >/dev/null

    "${podman_in[@]}" >"$work/pm" || { echo "bench/net.sh: the podman run failed" >&2; exit 1; }
    read -r t r <"$work/pm"
    pm_tput+=("$t"); pm_req+=("$r")
  done

  at=$(printf '%s\n' "${ark_tput[@]}" | best); pt=$(printf '%s\n' "${pm_tput[@]}" | best)
  ar=$(printf '%s\n' "${ark_req[@]}" | best); pr=$(printf '%s\n' "${pm_req[@]}" | best)
  python3 - "$at" "$pt" "$ar" "$pr" <<'EOF'
import sys
at, pt, ar, pr = map(float, sys.argv[1:])
print("throughput (1 GiB host->pod, best of runs): ark %.0f MiB/s, podman %.0f MiB/s, ratio %.2fx (target >= 0.95x)"
      % (1024 / at, 1024 / pt, pt / at))
print("1000 HTTP requests host->pod: ark %.3f s, podman %.3f s, ark/podman time %.2fx"
      % (ar, pr, ar / pr))
EOF
}

# Both servers in one guest, so each VM boots once: httpd (it daemonizes) and nc in a loop, one
# listener per transfer.
both='mkdir -p /www && echo ok >/www/i.html && httpd -p 80 -h /www && while :; do nc -l -p 9000 >/dev/null; done'

kvm_part() {
  [ -n "${ARK_KERNEL:-}" ] || { echo "bench/net.sh: kvm part: set ARK_KERNEL" >&2; exit 1; }
  command -v qemu-system-x86_64 >/dev/null || { echo "bench/net.sh: qemu-system-x86_64 is missing" >&2; exit 1; }
  local u ip qip="" qpid i t
  ark_pod "$both" kvm >"$work/pod" || { tail -n 20 "$work/pod-kvm.log" >&2; exit 1; }
  read -r u ip <"$work/pod"
  # qemu's guest, in a network namespace of its own; it prints "ready IP" once it is up.
  bench/net-qemu-peer.sh "$both" >"$work/qemu.log" 2>&1 &
  qpid=$!; pods+=("$qpid")
  for _ in $(seq 6000); do
    qip=$(sed -n 's/^ready \([0-9.]*\)$/\1/p' "$work/qemu.log")
    [ -n "$qip" ] && break
    kill -0 "$qpid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$qip" ] || { tail -n 20 "$work/qemu.log" >&2; echo "bench/net.sh: the qemu peer did not come up" >&2; exit 1; }
  echo "qemu peer: $(sed -n 's/^peer //p' "$work/qemu.log" | head -n 1)"
  local ark_t=() ark_r=() q_t=() q_r=()
  # In turns, so that a change in the host's load weighs on both.
  for i in $(seq "$runs"); do
    t=$(push "$ip") || { echo "bench/net.sh: the ark kvm transfer failed" >&2; exit 1; }; ark_t+=("$t")
    t=$(push "$qip") || { echo "bench/net.sh: the qemu transfer failed" >&2; exit 1; }; q_t+=("$t")
    t=$(requests "$ip") || { echo "bench/net.sh: the ark kvm requests failed" >&2; exit 1; }; ark_r+=("$t")
    t=$(requests "$qip") || { echo "bench/net.sh: the qemu requests failed" >&2; exit 1; }; q_r+=("$t")
    echo "kvm run $i: 1 GiB ark ${ark_t[-1]} s, qemu ${q_t[-1]} s; 1000 requests ark ${ark_r[-1]} s, qemu ${q_r[-1]} s"
  done
  kill -0 "$qpid" 2>/dev/null || { tail -n 20 "$work/qemu.log" >&2; echo "bench/net.sh: the qemu peer died" >&2; exit 1; }
  kill "$qpid"; wait "$qpid" 2>/dev/null || true
  "${ark[@]}" stop "$u" >/dev/null
  "${ark[@]}" gc --grace-period=0s >/dev/null
  local at pt ar pr
  at=$(printf '%s\n' "${ark_t[@]}" | best); pt=$(printf '%s\n' "${q_t[@]}" | best)
  ar=$(printf '%s\n' "${ark_r[@]}" | best); pr=$(printf '%s\n' "${q_r[@]}" | best)
  python3 - "$at" "$pt" "$ar" "$pr" <<'EOF'
import sys
at, pt, ar, pr = map(float, sys.argv[1:])
print("kvm throughput (1 GiB host->pod, best of runs): ark %.0f MiB/s, qemu %.0f MiB/s, ratio %.2fx (target >= 1.0x)"
      % (1024 / at, 1024 / pt, pt / at))
print("kvm 1000 HTTP requests host->pod: ark %.3f s, qemu %.3f s, ark/qemu time %.2fx (target <= 1.0x)"
      % (ar, pr, ar / pr))
EOF
}

echo "load: $(uptime)"
for part in $parts; do
  case "$part" in
    ns) ns_part ;;
    kvm) kvm_part ;;
    *) echo "bench/net.sh: unknown part '$part'" >&2; exit 2 ;;
  esac
done
