#!/usr/bin/env bash
# Builds ark's guest kernel (an uncompressed ELF vmlinux, booted through PVH) for one profile,
# cached by content:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ark/kernels/<hash>/{vmlinux,.config,profile}
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ark/kernels/current-<profile> -> <hash>
# <hash> covers the source tarball's identity, the profile fragment, the profile's patches,
# this script and the compiler, so a second call with the same inputs is instant.
#
# Usage: kernel-config/build.sh --profile microvm|pvm-compat [--source TARBALL] [--jobs N]
# The last line of stdout is the vmlinux path; progress goes to stderr.
#
# Steps: extract the tarball into a temp work dir, apply patches/<profile>/*.patch,
# `make ARCH=x86_64 tinyconfig`, merge profiles/<profile>.config, `make olddefconfig`, check that
# every option the fragment sets survived (else fail naming them), `make vmlinux`, then rename
# the finished entry into place. An interrupted build leaves no cache entry.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
me="kernel-config/build.sh"

die() { echo "$me: $*" >&2; exit 1; }
say() { echo "$me: $*" >&2; }
usage() { echo "usage: $me --profile microvm|pvm-compat [--source TARBALL] [--jobs N]" >&2; exit 2; }

profile="" source="" jobs=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) [ $# -ge 2 ] || usage; profile=$2; shift 2 ;;
    --profile=*) profile=${1#*=}; shift ;;
    --source) [ $# -ge 2 ] || usage; source=$2; shift 2 ;;
    --source=*) source=${1#*=}; shift ;;
    --jobs) [ $# -ge 2 ] || usage; jobs=$2; shift 2 ;;
    --jobs=*) jobs=${1#*=}; shift ;;
    -h|--help) usage ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

case "$profile" in
  microvm|pvm-compat) ;;
  "") die "--profile is required (microvm or pvm-compat; kernel-config/host-profile.sh picks one for this host)" ;;
  *) die "unknown profile '$profile' (expected microvm or pvm-compat)" ;;
esac
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive integer, got '$jobs'"

if [ -z "$source" ]; then
  source=/usr/src/linux-source-6.1.tar.xz
  [ -f "$source" ] || die "no kernel source: install Debian's linux-source-6.1 or pass --source linux-6.1.x.tar.xz"
fi
[ -f "$source" ] || die "source tarball '$source' does not exist"
source=$(realpath "$source")

fragment=$here/profiles/$profile.config
[ -f "$fragment" ] || die "missing profile fragment $fragment"
patches=()
if [ -d "$here/patches/$profile" ]; then
  while IFS= read -r p; do patches+=("$p"); done < <(find "$here/patches/$profile" -maxdepth 1 -name '*.patch' | LC_ALL=C sort)
fi

# Cache key. The tarball is identified by name, size and mtime (hashing 140 MB on every call
# would not be instant); everything else by content.
key() {
  echo "ark-kernel-v1"
  echo "profile $profile"
  echo "source $(basename "$source") $(stat -c '%s %Y' "$source")"
  echo "cc $(${CC:-gcc} --version 2>/dev/null | head -n 1)"
  echo "fragment"; cat "$fragment"
  for p in ${patches[@]+"${patches[@]}"}; do echo "patch $(basename "$p")"; cat "$p"; done
  echo "script"; cat "$here/build.sh"
}
hash=$(key | sha256sum | cut -c1-32)

cache=${XDG_CACHE_HOME:-$HOME/.cache}/ark/kernels
entry=$cache/$hash
mkdir -p "$cache"

publish_current() {
  # Atomic symlink swap so readers never see a missing current-<profile>.
  ln -sfn "$hash" "$cache/.current-$profile.$$"
  mv -Tf "$cache/.current-$profile.$$" "$cache/current-$profile"
}

if [ -f "$entry/vmlinux" ] && [ -f "$entry/.config" ]; then
  publish_current
  say "cached $profile kernel $hash"
  echo "$entry/vmlinux"
  exit 0
fi

# One builder per entry; a second caller waits and then finds the entry.
exec 9>"$cache/.lock-$hash"
flock 9
if [ -f "$entry/vmlinux" ] && [ -f "$entry/.config" ]; then
  publish_current
  echo "$entry/vmlinux"
  exit 0
fi

# Leftovers of a build of this entry that was killed outright (we hold its lock now).
rm -rf "$cache/.work-$hash".*
work=$(mktemp -d "$cache/.work-$hash.XXXXXX")
child="" ticker=""
cleanup() {
  [ -z "$child" ] || kill "$child" 2>/dev/null || true
  [ -z "$ticker" ] || kill "$ticker" 2>/dev/null || true
  rm -rf "$work" 2>/dev/null || { sleep 1; rm -rf "$work"; }
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

find "$cache" -maxdepth 1 -name '.trash-*' -mmin +60 -exec rm -rf {} + 2>/dev/null || true
start=$(date +%s)
say "building $profile kernel $hash from $(basename "$source") in $work (jobs=$jobs; log: $work/build.log)"
say "extracting source"
tar -xf "$source" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n 1)
[ -n "$src" ] && [ -f "$src/Makefile" ] || die "$source does not look like a kernel source tarball"

for p in ${patches[@]+"${patches[@]}"}; do
  say "applying $(basename "$p")"
  patch -s -p1 -N -d "$src" < "$p" >&2 || die "patch $(basename "$p") does not apply to $(basename "$source")"
done

kmake() { nice -n 10 make -C "$src" ARCH=x86_64 "$@"; }

say "configuring: tinyconfig + profiles/$profile.config + olddefconfig"
kmake tinyconfig >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; die "make tinyconfig failed"; }
# Fragment lines replace whatever tinyconfig chose for the same symbol.
syms=$(grep -oE '^(CONFIG_[A-Za-z0-9_]+)=|^# (CONFIG_[A-Za-z0-9_]+) is not set' "$fragment" \
  | sed -E 's/^# //; s/( is not set|=)$//' | sort -u)
grep -vwF -f <(echo "$syms") "$src/.config" > "$work/config.base" || true
{ cat "$work/config.base"; grep -E '^(CONFIG_|# CONFIG_)' "$fragment"; } > "$src/.config"
kmake olddefconfig >>"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; die "make olddefconfig failed"; }

# Every option the fragment sets must be in the final .config with the same value; an option
# set to n may also be absent (its menu is hidden), which is the same thing to Kconfig.
missing=()
while IFS= read -r line; do
  if [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set ]]; then
    sym=${BASH_REMATCH[1]}
    if grep -qE "^$sym=" "$src/.config"; then
      missing+=("$sym=n (got $(grep -E "^$sym=" "$src/.config" | cut -d= -f2-))")
    fi
  elif [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
    sym=${BASH_REMATCH[1]} val=${BASH_REMATCH[2]}
    if ! grep -qxF "$line" "$src/.config"; then
      got=$(grep -E "^$sym=" "$src/.config" | cut -d= -f2- || true)
      missing+=("$sym=$val (got ${got:-not set})")
    fi
  fi
done < "$fragment"
if [ ${#missing[@]} -gt 0 ]; then
  say "profiles/$profile.config: ${#missing[@]} option(s) did not survive olddefconfig:"
  for m in "${missing[@]}"; do echo "  $m" >&2; done
  die "fix the fragment (a dependency is probably missing) and run again"
fi
say "all $(echo "$syms" | wc -l) fragment options survived olddefconfig"

say "make -j$jobs vmlinux (nice 10)"
# Progress: one stderr line per minute instead of thousands of CC lines.
( trap 'exit 0' TERM; while sleep 60; do say "  ... $(( $(date +%s) - start ))s, $(grep -c '^  [A-Z]' "$work/build.log" 2>/dev/null || echo 0) steps"; done ) &
ticker=$!
# In the background so that a TERM runs the trap (and stops make) at once.
kmake -j"$jobs" vmlinux >>"$work/build.log" 2>&1 &
child=$!
if ! wait "$child"; then
  kill "$ticker" 2>/dev/null || true
  tail -n 40 "$work/build.log" >&2
  die "kernel build failed (full log above, last 40 lines)"
fi
kill "$ticker" 2>/dev/null || true

stage=$work/entry
mkdir -p "$stage"
cp "$src/vmlinux" "$stage/vmlinux"
cp "$src/.config" "$stage/.config"
echo "$profile" > "$stage/profile"
sync -f "$stage/vmlinux" 2>/dev/null || true
rm -rf "$entry"
mv -T "$stage" "$entry"
publish_current
# Deleting the ~1.5 GB build tree takes minutes on a busy machine: do it detached, so the caller
# has its path now. A deletion cut short leaves a .trash-* dir that the next build removes.
trash=$cache/.trash-$hash.$$
if mv -T "$work" "$trash" 2>/dev/null; then
  work=$trash/.gone
  setsid rm -rf "$trash" </dev/null >/dev/null 2>&1 &
fi
say "built $profile kernel in $(( $(date +%s) - start ))s: $entry"
echo "$entry/vmlinux"
