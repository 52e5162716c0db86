#!/usr/bin/env bash
# The qemu peer of bench/net.sh's kvm part: qemu's microvm machine booting $ARK_KERNEL into an
# initramfs of Debian's busybox-static that configures eth0 and runs SCRIPT (the same servers the
# ark pod runs), with qemu's own virtio-net (virtio-mmio) on a TAP. The TAP lives in a network
# namespace made here and is tc-redirected to a veth whose other end is on the host: the path ark's
# `default` network gives a kvm pod (a CNI veth, tc-redirected to the VMM's TAP). vhost-net only
# when /dev/vhost-net exists (QEMU_VHOST=on|off overrides).
#
# Prints "peer <description>", then "ready <guest IP>" once the guest's servers run; stays until
# killed (TERM), then removes its namespace and veth. Not a test.
# Usage: bench/net-qemu-peer.sh SCRIPT        (root; env ARK_KERNEL, ARK_KERNEL_PROFILE)
set -euo pipefail
cd "$(dirname "$0")/.."
script=${1:?usage: bench/net-qemu-peer.sh SCRIPT}
kernel=${ARK_KERNEL:?set ARK_KERNEL}
profile=${ARK_KERNEL_PROFILE:-$(kernel-config/host-profile.sh)}
[ -f "kernel-config/$profile.cmdline" ] || { echo "net-qemu-peer: unknown profile '$profile'" >&2; exit 1; }
vhost=${QEMU_VHOST:-$([ -c /dev/vhost-net ] && echo on || echo off)}

ns=arkbq$$ host_if=arkbq$$h tap=qtap0
host_ip=10.254.77.1 guest_ip=10.254.77.2 mac=02:00:0a:fe:4d:02
work=$(mktemp -d /tmp/ark-bench-qemu.XXXXXX)
qpid=
cleanup() {
  [ -n "$qpid" ] && kill "$qpid" 2>/dev/null && wait "$qpid" 2>/dev/null
  ip link del "$host_if" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' TERM INT

# The initramfs: busybox, the applets the servers and /init use, and /init.
root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,tmp}
cp "$(command -v busybox)" "$root/bin/busybox"
for a in sh true echo cat sleep mkdir nc httpd ip mount mknod; do ln -s busybox "$root/bin/$a"; done
printf '%s\n' "$script" >"$root/srv.sh"
cat >"$root/init" <<EOF
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null || mknod /dev/null c 1 3
ip link set lo up
ip link set eth0 up
ip addr add $guest_ip/24 dev eth0
echo ARK-BENCH-READY
exec sh /srv.sh
EOF
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet) >"$work/initrd.cpio"

# The network: host veth <-> (namespace) veth peer <-tc redirect-> TAP.
ip netns add "$ns"
ip link add "$host_if" type veth peer name eth0 netns "$ns"
ip addr add "$host_ip/24" dev "$host_if"
ip link set "$host_if" up
ip -n "$ns" tuntap add dev "$tap" mode tap vnet_hdr
for d in eth0 "$tap"; do ip -n "$ns" link set "$d" up; done
for pair in "eth0 $tap" "$tap eth0"; do
  set -- $pair
  tc -n "$ns" qdisc add dev "$1" ingress
  tc -n "$ns" filter add dev "$1" parent ffff: protocol all u32 match u8 0 0 \
    action mirred egress redirect dev "$2"
done

cmdline="$(tr -s ' \n' ' ' <"kernel-config/$profile.cmdline") rdinit=/init"
echo "peer qemu $(qemu-system-x86_64 --version | head -n 1 | awk '{print $4}') microvm, 1 vCPU, 128 MiB, virtio-net-device on a TAP, vhost=$vhost"
ip netns exec "$ns" qemu-system-x86_64 \
  -machine microvm,acpi=off,pit=off,pic=off,rtc=off -enable-kvm -cpu host,-arch-capabilities \
  -smp 1 -m 128 -nodefaults -no-user-config -display none -no-reboot \
  -serial "file:$work/serial.log" -kernel "$kernel" -initrd "$work/initrd.cpio" -append "$cmdline" \
  -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no,vhost=$vhost" \
  -device "virtio-net-device,netdev=n0,mac=$mac" </dev/null >"$work/qemu.out" 2>&1 &
qpid=$!
for _ in $(seq 6000); do
  grep -q ARK-BENCH-READY "$work/serial.log" 2>/dev/null && break
  kill -0 "$qpid" 2>/dev/null || { cat "$work/qemu.out" >&2; tail -n 20 "$work/serial.log" >&2; exit 1; }
  sleep 0.1
done
grep -q ARK-BENCH-READY "$work/serial.log" || { echo "net-qemu-peer: the guest did not come up" >&2; exit 1; }
echo "ready $guest_ip"
wait "$qpid" || true
echo "net-qemu-peer: qemu ended" >&2
cat "$work/qemu.out" >&2
exit 1
