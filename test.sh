#!/usr/bin/env bash
# Sets up a fresh machine and runs ark's whole test suite (what .ci/run calls).
set -euo pipefail
cd "$(dirname "$0")"

bash .ci/setup

# The guest kernel for this host kind (kvm_pvm hosts need the pvm-compat profile), cached by hash.
profile=$(kernel-config/host-profile.sh)
ARK_KERNEL=$(kernel-config/build.sh --profile "$profile" | tail -n 1)
export ARK_KERNEL ARK_KERNEL_PROFILE="$profile"

ARK_BIN=$(./build.sh | tail -n 1)
export ARK_BIN

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The fuzz targets are their own workspace (libfuzzer-sys): check that they still build against
# the vmm's API (running them: vmm/fuzz/README.md).
cargo check --manifest-path vmm/fuzz/Cargo.toml --bins
cargo test --workspace --no-fail-fast -- --test-threads=2
