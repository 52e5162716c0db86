#!/usr/bin/env bash
# Builds ark's small demo image (ark/demo:latest) from Debian's busybox-static, once:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ark/demo/<hash>/oci        OCI layout (tag latest)
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ark/demo/<hash>/demo.tar   docker-archive of ark/demo:latest
# <hash> covers the busybox binary and this script; the image is reproducible (fixed
# timestamps), so the same inputs give the same digests on every machine.
# stdout: only the tar path (last line); progress and tool output go to stderr.
# Usage: demo/build-image.sh [--busybox PATH]
set -euo pipefail

me="demo/build-image.sh"
die() { echo "$me: $*" >&2; exit 1; }

busybox=/bin/busybox
while [ $# -gt 0 ]; do
  case "$1" in
    --busybox) [ $# -ge 2 ] || die "--busybox needs a path"; busybox=$2; shift 2 ;;
    -h|--help) echo "usage: $me [--busybox PATH]" >&2; exit 2 ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[ -x "$busybox" ] || die "$busybox missing: install Debian's busybox-static (or pass --busybox)"
# A dynamically linked busybox would not run in an image without libc.
if file -L "$busybox" 2>/dev/null | grep -q 'dynamically linked'; then
  die "$busybox is dynamically linked: install busybox-static"
fi
for tool in umoci skopeo; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install $tool)"
done

here=$(cd "$(dirname "$0")" && pwd)
hash=$( { echo "ark-demo-v1"; sha256sum < "$busybox"; cat "$here/build-image.sh"; } | sha256sum | cut -c1-32)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/ark/demo
entry=$cache/$hash
mkdir -p "$cache"

if [ -f "$entry/demo.tar" ] && [ -f "$entry/oci/index.json" ]; then
  echo "$entry/demo.tar"
  exit 0
fi

exec 9>"$cache/.lock-$hash"
flock 9
if [ -f "$entry/demo.tar" ] && [ -f "$entry/oci/index.json" ]; then
  echo "$entry/demo.tar"
  exit 0
fi

work=$(mktemp -d "$cache/.work-$hash.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM HUP

created=2024-01-01T00:00:00Z
epoch=1704067200

# --- the root filesystem ---
root=$work/rootfs
mkdir -p "$root"/{bin,etc,tmp,root,home/user,proc,sys,dev,var/tmp,usr/bin}
install -m 0755 "$busybox" "$root/bin/busybox"
for applet in sh ash echo cat sleep uname id ls env true false mkdir rm cp mv ln touch \
  ps hostname head tail wc grep sed printf test [ date pwd whoami kill mount umount \
  df du free stat sort uniq tr cut tee yes seq dd chmod chown readlink sync vi wget nc; do
  ln -s busybox "$root/bin/$applet"
done
echo demo > "$root/etc/hostname"
cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > "$root/etc/group" <<'EOF'
root:x:0:
user:x:1000:
nogroup:x:65534:
EOF
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 0700 "$root/root"
chown 1000:1000 "$root/home/user"
find "$root" -exec touch -h -d "@$epoch" {} +

# --- the OCI image ---
oci=$work/oci
echo "$me: building ark/demo:latest from $busybox" >&2
umoci init --layout "$oci" >&2
umoci new --image "$oci:latest" >&2
# unpack + repack (rather than `insert DIR /`) gives a layer of relative paths without a "/"
# entry, like any registry image.
umoci unpack --image "$oci:latest" "$work/bundle" >&2
cp -a "$root/." "$work/bundle/rootfs/"
touch -h -d "@$epoch" "$work/bundle/rootfs"
umoci repack --image "$oci:latest" --history.created "$created" \
  --history.created_by "ark demo/build-image.sh: busybox rootfs" "$work/bundle" >&2
umoci config --image "$oci:latest" --created "$created" --history.created "$created" \
  --author "ark" --architecture amd64 --os linux \
  --config.cmd /bin/sh \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.workingdir / \
  --config.label org.opencontainers.image.title=ark-demo \
  --config.label "org.opencontainers.image.description=busybox demo image for ark" >&2
umoci gc --layout "$oci" >&2

skopeo copy --quiet "oci:$oci:latest" "docker-archive:$work/demo.tar:ark/demo:latest" >&2

# --- into place ---
stage=$work/entry
mkdir -p "$stage"
mv "$oci" "$stage/oci"
mv "$work/demo.tar" "$stage/demo.tar"
rm -rf "$entry"
mv -T "$stage" "$entry"
echo "$me: built $entry" >&2
echo "$entry/demo.tar"
