#!/usr/bin/env bash
# Run on the GPU machine (one GPU is enough): build the optimizer tests and benchmark, run the
# single-GPU optimizer tests, the distributed CUDA optimizer tests under mpirun -np 2 and 3 (the
# host-staged communicator lets several ranks share one GPU; NCCL too where every rank has a GPU),
# and bench_optim; print a short table last. Logs go to $OUT (or ./out).
#   scripts/device_optim.sh [--only TEXT] [--filter GTEST_FILTER] [--no-tests] [--no-bench]
#     --only TEXT     bench only the cases whose label contains TEXT (bench_optim --only)
#     --filter F      run only these single-GPU optimizer tests (--gtest_filter; default all;
#                     the binaries are gpu_test_cuda_optim and gpu_test_cuda_dion)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/device_lib.sh"
only=""; filter="*"; tests=1; bench=1
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only="$2"; shift ;;
    --filter) filter="$2"; shift ;;
    --no-tests) tests=0 ;;
    --no-bench) bench=0 ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
  shift
done
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU (nvidia-smi)"; } |
  tee "$out/gpu.txt"
t0=$(date +%s)
gpu_tests=(gpu_test_cuda_optim gpu_test_cuda_dion)
mpi_tests=(gpu_mpi_test_cuda_ddp_optim gpu_mpi_test_cuda_fsdp_optim)
device_build "${gpu_tests[@]}" "${mpi_tests[@]}" bench_optim || exit 1
declare -a rows
rows+=("build: $(( $(date +%s) - t0 ))s")
summary() {  # summary LOG: gtest's passed / failed / skipped counts in one line (names in LOG)
  grep -E '^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ tests?' "$1" | sed -E 's/, listed below:?//' | tr '\n' ' '
}
if [ "$tests" = 1 ]; then
  for t in "${gpu_tests[@]}"; do
    GTEST_COLOR=no timeout 400 "$build/tests/$t" --gtest_filter="$filter" >"$out/$t.log" 2>&1
    rows+=("$t: rc $?, $(summary "$out/$t.log")")
  done
  for t in "${mpi_tests[@]}"; do
    for np in 2 3; do
      GTEST_COLOR=no timeout 400 mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$np" -x GTEST_COLOR \
        "$build/tests/$t" >"$out/${t}_np$np.log" 2>&1
      rows+=("$t -np $np: rc $?, $(summary "$out/${t}_np$np.log")")
    done
  done
fi
if [ "$bench" = 1 ]; then
  args=(--steps 20)
  [ -n "$only" ] && args+=(--only "$only")
  timeout 500 "$build/bench/bench_optim" "${args[@]}" >"$out/bench_optim.log" 2>&1
  rows+=("bench_optim: rc $? (table in bench_optim.log)")
  sed -n '/==== summary/,$p' "$out/bench_optim.log"
fi
printf '%s\n' "${rows[@]}"
