#!/usr/bin/env bash
# Build and run the whole test suite (labels cpu and mpi; gpu tests skip with a reason when no
# GPU is present). Used by CI (.ci/run).
#   scripts/test.sh              normal build in build/ (CUDA parts too when nvcc is found)
#   scripts/test.sh --sanitize   CPU build with AddressSanitizer + UBSan in build-asan/, cpu+mpi tests
# ORTHOGPT_BUILD_DIR overrides the build folder; extra arguments go to cmake.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
sanitize=0
if [ "${1:-}" = "--sanitize" ]; then sanitize=1; shift; fi
scripts/install_deps.sh
scripts/get_tokenizer.sh
# OpenMP threads that spin while waiting waste shared cores (ctest runs tests in parallel)
export OMP_WAIT_POLICY=passive
if [ "$sanitize" = 1 ]; then
  build="${ORTHOGPT_BUILD_DIR:-$root/build-asan}"
  ORTHOGPT_BUILD_DIR="$build" scripts/build.sh -DORTHOGPT_SANITIZE=ON -DORTHOGPT_ENABLE_CUDA=OFF \
    -DORTHOGPT_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  export LSAN_OPTIONS="suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0"
  ctest --test-dir "$build" -L cpu --output-on-failure -j "$(nproc)" --timeout 2400
  # The MPI runtime dlopens components and unloads them at MPI_Finalize, so its one-time
  # allocations show up as leaks from unknown modules that no suppression can name: the MPI
  # tests run with ASan and UBSan checks but without leak detection.
  ASAN_OPTIONS="detect_leaks=0:strict_string_checks=1" ctest --test-dir "$build" -L mpi --output-on-failure --timeout 2400
else
  build="${ORTHOGPT_BUILD_DIR:-$root/build}"
  ORTHOGPT_BUILD_DIR="$build" scripts/build.sh "$@"
  ctest --test-dir "$build" --output-on-failure -j "$(nproc)" --timeout 1200
  if ! nvidia-smi -L >/dev/null 2>&1; then
    n=$(ctest --test-dir "$build" -N -L gpu | sed -n 's/^Total Tests: //p')
    echo "note: the ${n:-0} gpu-labelled tests were skipped: no CUDA device on this machine (GTEST_SKIP \"no CUDA device\"); scripts/device_check.sh runs them on a GPU"
  fi
fi
