#!/usr/bin/env bash
# Sets up a fresh machine and runs ark's whole test suite (what .ci/run calls).
set -euo pipefail
cd "$(dirname "$0")"

bash .ci/setup

# The guest kernel for this host kind (kvm_pvm hosts need the pvm-compat profile), cached by hash.
profile=$(kernel-config/host-profile.sh)
ARK_KERNEL=$(kernel-config/build.sh --profile "$profile" | tail -n 1)
export ARK_KERNEL ARK_KERNEL_PROFILE="$profile"

./build.sh >/dev/null
export ARK_BIN="$PWD/target/ark/bin/ark"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace -- --test-threads=2
