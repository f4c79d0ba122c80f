#!/usr/bin/env bash
# Configure and build orthogpt into build/ (CUDA parts are built when nvcc is found).
# Extra arguments go to cmake, e.g. scripts/build.sh -DORTHOGPT_SANITIZE=ON
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ORTHOGPT_BUILD_DIR:-$root/build}"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$build" -j "$(nproc)"
