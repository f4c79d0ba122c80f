#!/usr/bin/env bash
# The model-throughput loop on the GPU machine (issue 4): build only what it needs, check the
# model's kernels against the CPU reference, time them, optionally profile the attention kernels
# with Nsight Compute, and run `orthogpt bench` on the 160M model. Short table last; logs in $OUT.
#   scripts/device_perf.sh [--profile] [-- extra orthogpt bench arguments]
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/device_lib.sh"
profile=0
bench_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=1 ;;
    --) shift; bench_args=("$@"); break ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
  shift
done
declare -a rows
row() { rows+=("$(printf '%-34s %s' "$1" "$2")"); }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
tests=(gpu_test_cuda_ops gpu_test_cuda_ops_attention gpu_test_cuda_model)
t0=$(date +%s)
if device_build orthogpt gpu_test_cuda_ops_timing "${tests[@]}"; then
  row "build" "ok ($(( $(date +%s) - t0 ))s)"
else
  row "build" "FAILED (see build.log)"
  printf '%s\n' "${rows[@]}"; exit 1
fi

for t in "${tests[@]}"; do
  "$build/tests/$t" >"$out/$t.log" 2>&1
  rc=$?
  row "$t" "$([ $rc = 0 ] && echo pass || echo FAIL) ($(grep -Eo '\[  PASSED  \] [0-9]+' "$out/$t.log" | grep -Eo '[0-9]+$') passed)"
  [ $rc = 0 ] || grep -E "Failure|FAILED|error" "$out/$t.log" | head -20
done

"$build/tests/gpu_test_cuda_ops_timing" >"$out/timing.log" 2>&1 || row "timing" "FAILED"
grep '^\[timing\]' "$out/timing.log"

if [ "$profile" = 1 ]; then
  # Per-kernel summary of the flash kernels: duration, throughput of each unit, occupancy and
  # where warps stall (--clock-control none: leave the clocks as they are, per METHOD.md).
  ncu --clock-control none --kernel-name-base mangled -k regex:flash_ -c 24 \
      --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis \
      --section MemoryWorkloadAnalysis --print-summary per-kernel \
      "$build/tests/gpu_test_cuda_ops_timing" --gtest_filter=CudaTiming.Attention160M >"$out/ncu_attention.log" 2>&1
  row "ncu attention" "rc=$? (ncu_attention.log)"
fi

"$build/orthogpt" bench "${bench_args[@]}" >"$out/bench.log" 2>&1 && row "bench" "ok" || row "bench" "FAILED"
tail -12 "$out/bench.log"

echo
echo "==== device_perf summary ===="
printf '%s\n' "${rows[@]}"
