#!/usr/bin/env bash
# Build and run the whole test suite (labels cpu and mpi; gpu tests skip with a reason when no
# GPU is present). Used by CI (.ci/run). ORTHOGPT_BUILD_DIR picks the build folder.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/install_deps.sh
scripts/get_tokenizer.sh
scripts/build.sh "$@"
build="${ORTHOGPT_BUILD_DIR:-$root/build}"
# OpenMP threads that spin while waiting waste shared cores (CI runs tests in parallel)
export OMP_WAIT_POLICY=passive
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" --timeout 1200
