#!/usr/bin/env bash
# Builds every ark binary and lays them out as an install tree:
#   target/ark/bin/ark                 stage0
#   target/ark/libexec/ark/            stage1s, the VMM and the static stage2 init
# Usage: ./build.sh [--release]
set -euo pipefail
cd "$(dirname "$0")"

profile=debug; cargo_profile=()
if [ "${1:-}" = "--release" ]; then profile=release; cargo_profile=(--release); fi

tdir=${CARGO_TARGET_DIR:-target}
cargo build --workspace --bins "${cargo_profile[@]}"

# guest-init must run as PID 1 in any root (a VM, an image without libc): static, musl preferred.
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  cargo build -p ark-guest-init --release --target x86_64-unknown-linux-musl
  init=$tdir/x86_64-unknown-linux-musl/release/ark-init
else
  RUSTFLAGS="-C target-feature=+crt-static" cargo build -p ark-guest-init --release \
    --target x86_64-unknown-linux-gnu
  init=$tdir/x86_64-unknown-linux-gnu/release/ark-init
fi

out=$tdir/ark
mkdir -p "$out/bin" "$out/libexec/ark"
install -m 0755 "$tdir/$profile/ark" "$out/bin/ark"
for b in ark-stage1-kvm ark-stage1-ns ark-stage1-fly ark-vmm; do
  install -m 0755 "$tdir/$profile/$b" "$out/libexec/ark/$b"
done
install -m 0755 "$init" "$out/libexec/ark/ark-init"
echo "$(cd "$out" && pwd)/bin/ark"
