#!/usr/bin/env bash
# Benchmark (not a test): ark run --stage1=kvm of busybox `true`, split into phases, against a
# hand-driven qemu microvm boot of the same kernel. Usage: bench/kvm.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup >/dev/null
profile=$(kernel-config/host-profile.sh)
kernel=$(kernel-config/build.sh --profile "$profile" | tail -n 1)
ark=$(./build.sh --release | tail -n 1)
image=$(demo/build-image.sh | tail -n 1)
ARK_KERNEL="$kernel" exec python3 bench/kvm.py --ark "$ark" --image "docker-archive:$image" \
  --kernel "$kernel" --profile "$profile" --runs "${1:-3}"
