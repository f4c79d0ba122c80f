#!/usr/bin/env bash
# The model-throughput loop on the GPU machine (issue 4): build only what it needs, check the
# model's kernels against the CPU reference, time them, optionally profile the attention kernels
# with Nsight Compute, and run `orthogpt bench` on the 160M model. Short table last; logs in $OUT.
# --table: instead of the one bench, the model-throughput table of docs/PERF.md (160M with both
# attention kinds, block recompute, AdamW and Muon; the 300M and 1B configs), one row per run.
#   scripts/device_perf.sh [--profile] [--table] [-- extra orthogpt bench arguments]
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/device_lib.sh"
profile=0
table=0
bench_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=1 ;;
    --table) table=1 ;;
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

if [ "$table" = 1 ]; then
  # name | config (empty: built-in 160M, Dion2 α=0.25 + AdamW) | extra overrides
  runs=("160m_flash||--train.attention flash"
        "160m_cudnn||--train.attention cudnn"
        "160m_cudnn_block||--train.attention cudnn --train.recompute block"
        "160m_adamw|configs/gpt160m_adamw.yaml|--train.attention cudnn"
        "160m_muon|configs/gpt160m_muon.yaml|--train.attention cudnn"
        "300m_cudnn|configs/gpt300m_dion2_a0.25.yaml|--train.attention cudnn"
        "1b_cudnn|configs/gpt1b_dion2_a0.25.yaml|--train.attention cudnn")
  table_rows=()
  for r in "${runs[@]}"; do
    IFS='|' read -r name cfg extra <<<"$r"
    args=()
    [ -n "$cfg" ] && args+=(--config "$cfg")
    # shellcheck disable=SC2206
    args+=($extra "${bench_args[@]}")
    log="$out/bench_$name.log"
    if "$build/orthogpt" bench "${args[@]}" >"$log" 2>&1; then
      # fwd+bwd ms, optimizer ms, step ms, step tokens/s, step MFU, GPU memory in use
      table_rows+=("$(awk -v n="$name" '/^forward\+backward/ {fb=$2; fbt=$4} /^optimizer/ {op=$2}
        /^step / {st=$2; tok=$4; mfu=$6} /^GPU memory:/ {mem=$3}
        END {printf "%-18s fwd+bwd %8s ms (%s)  opt %6s ms  step %8s ms  %8s tok/s  MFU %6s  mem %s GiB", n, fb, fbt, op, st, tok, mfu, mem}' "$log")")
      row "bench $name" "ok"
    else
      row "bench $name" "FAILED (see $(basename "$log"))"
      tail -5 "$log"
    fi
  done
  echo "==== model throughput ===="
  printf '%s\n' "${table_rows[@]}"
else
  "$build/orthogpt" bench "${bench_args[@]}" >"$out/bench.log" 2>&1 && row "bench" "ok" || row "bench" "FAILED"
  tail -12 "$out/bench.log"
fi

echo
echo "==== device_perf summary ===="
printf '%s\n' "${rows[@]}"
