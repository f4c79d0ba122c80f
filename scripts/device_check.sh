#!/usr/bin/env bash
# Run on the GPU machine (its image has every dependency): build with CUDA, run the GPU-labelled
# tests (and the CPU ones with --all), the optimizer cross-check on CUDA, and the benchmarks;
# print a short table last. Logs go to $OUT (or ./out) when set.
#   scripts/device_check.sh [--all] [--sanitize] [--bench-only]
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${OUT:-$root/out}"
mkdir -p "$out"
all=0; sanitize=0; bench_only=0
for a in "$@"; do
  case "$a" in
    --all) all=1 ;;
    --sanitize) sanitize=1 ;;
    --bench-only) bench_only=1 ;;
    *) echo "unknown option $a"; exit 2 ;;
  esac
done
declare -a rows
row() { rows+=("$(printf '%-34s %s' "$1" "$2")"); }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
build="$root/build-device"
t0=$(date +%s)
if cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DORTHOGPT_CUDA_ARCH=90 >"$out/cmake.log" 2>&1 &&
   cmake --build "$build" -j "$(nproc)" >"$out/build.log" 2>&1; then
  row "build" "ok ($(( $(date +%s) - t0 ))s)"
else
  row "build" "FAILED (see build.log)"; tail -40 "$out/build.log"
  printf '%s\n' "${rows[@]}"; exit 1
fi

if [ "$bench_only" = 0 ]; then
  labels="gpu"; [ "$all" = 1 ] && labels=""
  if [ -n "$labels" ]; then lab=(-L "$labels"); else lab=(); fi
  if [ "$sanitize" = 1 ]; then
    for t in "$build"/tests/gpu_*; do
      [ -x "$t" ] || continue
      compute-sanitizer --tool memcheck --error-exitcode 9 "$t" >"$out/memcheck_$(basename "$t").log" 2>&1 \
        && row "memcheck $(basename "$t")" "clean" || row "memcheck $(basename "$t")" "FINDINGS"
    done
  fi
  ctest --test-dir "$build" "${lab[@]}" --output-on-failure --timeout 900 >"$out/ctest.log" 2>&1
  row "ctest ${labels:-all}" "$(grep -E 'tests passed|tests failed' "$out/ctest.log" | tail -1)"
  grep -E "Failed|\*\*\*" "$out/ctest.log" | head -20
  if [ -d tests/data/reference ]; then
    "$build/orthogpt" check-reference --device cuda tests/data/reference >"$out/check_reference_cuda.log" 2>&1
    rc=$?
    row "check-reference cuda" "$([ $rc = 0 ] && echo PASS || echo FAIL) ($(grep -c PASS "$out/check_reference_cuda.log") cases pass)"
  fi
fi

for b in "$build"/bench/bench_*; do
  [ -x "$b" ] || continue
  "$b" >"$out/$(basename "$b").log" 2>&1 && row "$(basename "$b")" "ok" || row "$(basename "$b")" "FAILED"
  tail -30 "$out/$(basename "$b").log"
done

echo
echo "==== device_check summary ===="
printf '%s\n' "${rows[@]}"
