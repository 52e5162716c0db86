#!/usr/bin/env bash
# Image benchmark (not a test): `ark fetch` + `ark image render` of a 3-layer ~50 MB image
# against `skopeo copy` to an OCI layout + `umoci unpack` of the same image, from the same
# local registry (Debian's docker-registry on 127.0.0.1). Prints medians and ark/peer ratios,
# and the cached second render against the first.
#
# Usage: bench/images.sh            (builds ark in release mode unless ARK_BIN is set)
#        RUNS=7 bench/images.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
if [ -z "${ARK_BIN:-}" ]; then
  cargo build --release -p ark >&2
  ARK_BIN=${CARGO_TARGET_DIR:-target}/release/ark
fi
for tool in docker-registry skopeo umoci; do
  command -v "$tool" >/dev/null || { echo "bench/images.sh: $tool is missing (.ci/setup installs it)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/ark-bench-images.XXXXXX)
registry_pid=
cleanup() {
  [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- a registry on a free loopback port -------------------------------------------------------
while :; do
  port=$(shuf -i 20000-60000 -n 1)
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
done
cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

# --- a 3-layer image of about 50 MB, from real files of this machine -----------------------------
# Picks regular files under DIR until about MB megabytes, copies them under DEST.
pick() { # DIR MB DEST
  find "$1" -xdev -type f -size +4k -size -8M -readable -printf '%s %p\n' 2>/dev/null |
    sort -k2 >"$work/list" || true
  awk -v max=$(($2 * 1024 * 1024)) '{ if (t + $1 > max) exit; t += $1; sub(/^[0-9]+ /, ""); print }' \
    "$work/list" | tr '\n' '\0' | xargs -0 cp --parents -t "$3"
}
src=$work/src
umoci init --layout "$src"
umoci new --image "$src:bench"
layer=0
for spec in "/usr/lib/x86_64-linux-gnu 25" "/usr/share 15" "/usr/bin 10"; do
  set -- $spec
  layer=$((layer + 1))
  rm -rf "$work/bundle"
  umoci unpack --image "$src:bench" "$work/bundle" >/dev/null
  if [ $layer = 1 ]; then cp -a /bin/busybox "$work/bundle/rootfs/"; fi
  pick "$1" "$2" "$work/bundle/rootfs"
  umoci repack --image "$src:bench" "$work/bundle" >/dev/null
done
rm -rf "$work/bundle"
skopeo copy --insecure-policy --quiet --dest-tls-verify=false "oci:$src:bench" "docker://127.0.0.1:$port/bench:1"
size=$(du -sm "$src/blobs" | cut -f1)
echo "image: 3 layers, ${size} MB compressed, $(du -sm "$src" | cut -f1) MB layout; $RUNS runs each"

now() { date +%s.%N; }
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

: >"$work/ark_fetch"; : >"$work/ark_render"; : >"$work/ark_cached"
: >"$work/peer_fetch"; : >"$work/peer_render"
for run in $(seq "$RUNS"); do
  # ark: fetch into an empty store, first render (unpacks into the cache), second render (cached).
  rm -rf "$work/store"
  t0=$(now)
  id=$("$ARK_BIN" --dir "$work/store" --insecure-options=image fetch "docker://127.0.0.1:$port/bench:1")
  t1=$(now)
  "$ARK_BIN" --dir "$work/store" image render "$id" >/dev/null
  t2=$(now)
  "$ARK_BIN" --dir "$work/store" image render "$id" >/dev/null
  t3=$(now)
  echo "$t1 - $t0" | bc >>"$work/ark_fetch"
  echo "$t2 - $t1" | bc >>"$work/ark_render"
  echo "$t3 - $t2" | bc >>"$work/ark_cached"

  # peer: skopeo copy into an empty OCI layout, umoci unpack into a fresh bundle.
  rm -rf "$work/peer" "$work/peer-bundle"
  t0=$(now)
  skopeo copy --insecure-policy --quiet --src-tls-verify=false \
    "docker://127.0.0.1:$port/bench:1" "oci:$work/peer:bench"
  t1=$(now)
  umoci unpack --image "$work/peer:bench" "$work/peer-bundle" >/dev/null
  t2=$(now)
  echo "$t1 - $t0" | bc >>"$work/peer_fetch"
  echo "$t2 - $t1" | bc >>"$work/peer_render"
  echo "run $run: ark fetch $(tail -1 "$work/ark_fetch")s render $(tail -1 "$work/ark_render")s cached $(tail -1 "$work/ark_cached")s | skopeo $(tail -1 "$work/peer_fetch")s umoci $(tail -1 "$work/peer_render")s" >&2
done

rootfs_mb=$(du -sm "$work/peer-bundle/rootfs" | cut -f1)
echo "rendered rootfs: ${rootfs_mb} MB"
af=$(median <"$work/ark_fetch"); ar=$(median <"$work/ark_render"); ac=$(median <"$work/ark_cached")
pf=$(median <"$work/peer_fetch"); pr=$(median <"$work/peer_render")
printf '%-34s %8s s\n' "ark fetch (median)" "$af" "skopeo copy (median)" "$pf" \
  "ark image render, first (median)" "$ar" "umoci unpack (median)" "$pr" \
  "ark image render, cached (median)" "$ac"
printf 'ratio fetch  ark/skopeo        = %.2f  (target <= 1.0)\n' "$(echo "$af / $pf" | bc -l)"
printf 'ratio render ark/umoci         = %.2f  (target <= 1.0)\n' "$(echo "$ar / $pr" | bc -l)"
printf 'ratio cached/first ark render  = %.3f (target < 0.05)\n' "$(echo "$ac / $ar" | bc -l)"
