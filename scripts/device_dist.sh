#!/usr/bin/env bash
# Run on a multi-GPU device kind (e.g. nvidia-h200-x2; carry data/english, .third_party and
# assets): build orthogpt, the GPU-MPI tests and the DDP optimizer benchmark; run the tests
# (mpirun -np 2 and 3: NCCL where every rank has a GPU, the host-staged communicator always) and
# bench_optim_ddp (the optimizer step on 1 GPU vs split over all GPUs, bytes per step); then
# train the reproduction model (configs/repro, 131k tokens per step) for a few steps on one GPU
# and on every GPU of the machine with mpirun, under DDP (Muon, Dion2 α ∈ {0.5, 0.25, 0.125})
# and FSDP (the same, and AdamW for the matrices too), and Dion2 random with dist.compressed_sync; print tokens/s per GPU, the
# scaling efficiency against one GPU, peak GPU memory and the bytes each rank communicated per
# step (metrics.jsonl). Logs and metrics under $OUT (or ./out).
# --160m trains the paper's 160M model instead (configs/gpt160m_*.yaml: Muon and Dion2
# α ∈ {0.5, 0.25, 0.125} on 1 GPU, DDP and FSDP) on the carried English shards (FineWeb is not
# on the device), with 512 sequences x 1024 tokens per step and 1M validation tokens.
# --1b trains the 1B config instead (configs/gpt1b_*.yaml, seq 2048: Muon and Dion2 α ∈ {0.5, 0.25,
# 0.125} on 1 GPU, FSDP on 2 GPUs and FSDP on every GPU; issue 7) with 64 sequences per step.
# --fig1 also runs the Dion2 paper's Figure 1 micro-benchmark over every GPU (bench_optim_ddp
# --fig1: a 4-layer GPT's matrices under FSDP, d = 1024..8192, Muon and Dion2; issue 7).
#   scripts/device_dist.sh [STEPS] [--no-tests] [--no-bench] [--no-train] [--160m | --1b] [--fig1]  (default 40 steps)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/device_lib.sh"
steps=40; train=1; bench=1; tests=1; model=repro; fig1=0
for a in "$@"; do
  case "$a" in
    --160m) model=160m ;;
    --1b) model=1b ;;
    --no-train) train=0 ;;
    --no-bench) bench=0 ;;
    --no-tests) tests=0 ;;
    --fig1) fig1=1 ;;
    *) steps="$a" ;;
  esac
done
ngpu=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1 | tee "$out/gpu.txt"
t0=$(date +%s)
gpu_mpi_tests=(gpu_mpi_test_cuda_ddp_optim gpu_mpi_test_cuda_fsdp_optim)
device_build orthogpt "${gpu_mpi_tests[@]}" gpu_test_cuda_model bench_optim_ddp || exit 1
echo "build: $(( $(date +%s) - t0 ))s"
bin=$(find "$build" -name orthogpt -type f -perm -u+x | head -1)
mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none -x NCCL_NVLS_ENABLE)
declare -a results=()
if [ "$tests" = 1 ]; then  # the model's unit source and FSDP in a world of one (one GPU)
  GTEST_COLOR=no CUDA_VISIBLE_DEVICES=0 timeout 300 "$build/tests/gpu_test_cuda_model" \
    --gtest_filter='*UnitSource*:*Fsdp*' >"$out/gpu_test_cuda_model_fsdp.log" 2>&1
  results+=("$(printf 'gpu_test_cuda_model (unit source, fsdp): rc %s, %s' "$?" \
    "$(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/gpu_test_cuda_model_fsdp.log" | tr '\n' ' ')")")
fi
for t in "${gpu_mpi_tests[@]}"; do
  for np in 2 3; do
    [ "$tests" = 1 ] || break
    GTEST_COLOR=no timeout 400 "${mpi[@]}" -np "$np" -x GTEST_COLOR "$build/tests/$t" >"$out/${t}_np$np.log" 2>&1
    results+=("$(printf '%s -np %s: rc %s, %s' "$t" "$np" "$?" \
      "$(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/${t}_np$np.log" | tr '\n' ' ')")")
  done
done
if [ "$bench" = 1 ]; then
  timeout 500 "${mpi[@]}" -np "$ngpu" "$build/bench/bench_optim_ddp" --steps 20 >"$out/bench_optim_ddp.log" 2>&1
  echo "bench_optim_ddp rc $?"
fi
if [ "$fig1" = 1 ]; then
  timeout 500 "${mpi[@]}" -np "$ngpu" "$build/bench/bench_optim_ddp" --fig1 >"$out/bench_fig1.log" 2>&1
  echo "bench_optim_ddp --fig1 rc $? (table in bench_fig1.log)"
  sed -n '/==== summary/,$p' "$out/bench_fig1.log"
fi
declare -a rows
declare -A one_gpu
rows+=("$(printf '%-26s %5s %12s %12s %8s %10s %14s %14s %s' run gpus 'tok/s' 'tok/s/GPU' scaling 'peak GiB' 'w+g+opt MiB' 'comm MB/step' rc)")
run() {  # run NAME NP CONFIG [overrides...]
  local name=$1 np=$2 cfg=$3; shift 3
  local dir="$out/run_$name" log="$out/$name.log" rc
  local args=(train --config "$cfg" --train.steps "$steps" --train.val_every 100000 --log.every 10 --log.dir "$dir"
    "${extra[@]}" "$@")
  if [ "$np" -gt 1 ]; then
    timeout 300 mpirun --allow-run-as-root --oversubscribe -np "$np" --bind-to none -x NCCL_NVLS_ENABLE \
      "$bin" "${args[@]}" >"$log" 2>&1
  else
    timeout 300 "$bin" "${args[@]}" >"$log" 2>&1
  fi
  rc=$?
  local tok; tok=$(grep -Eo '\| [0-9.]+[kM]? tok/s' "$log" | tail -1 | grep -Eo '[0-9.]+[kM]?')
  local n; n=$(awk -v t="$tok" 'BEGIN{m=1; if (t ~ /k$/) m=1e3; if (t ~ /M$/) m=1e6; sub(/[kM]$/, "", t); printf "%.0f", t*m}')
  local per=$(( ${n:-0} / np )) key=${name%%_*}
  [ "$np" = 1 ] && one_gpu[$key]=$per
  local eff="-"
  [ "$np" -gt 1 ] && [ -n "${one_gpu[$key]:-}" ] && [ "${one_gpu[$key]}" -gt 0 ] &&
    eff=$(awk -v a="$per" -v b="${one_gpu[$key]}" 'BEGIN{printf "%.0f%%", 100*a/b}')
  local mem; mem=$(grep -Eo 'peak [0-9.]+ GiB' "$log" | tail -1 | grep -Eo '[0-9.]+')
  # weights + gradients + optimizer state per GPU (FSDP: its report; else the model's and the state's)
  local wmem; wmem=$(grep -Eo 'FSDP memory per rank: [0-9.]+ MiB' "$log" | head -1 | grep -Eo '[0-9.]+')
  if [ -z "$wmem" ]; then
    wmem=$(grep -Eo 'weights\+grads\+bf16 copy [0-9.]+ GiB.*optimizer state [0-9.]+ GiB' "$log" | tail -1 |
      sed -E 's/.*copy ([0-9.]+) GiB.*optimizer state ([0-9.]+) GiB/\1 \2/' | awk '{printf "%.0f", ($1 + $2) * 1024}')
  else
    wmem=$(printf '%.0f' "$wmem")
  fi
  local bytes; bytes=$(grep -Eo '"comm_bytes": ?[0-9.e+]+' "$dir/metrics.jsonl" 2>/dev/null | tail -1 | grep -Eo '[0-9.e+]+$')
  local mb="-"; [ -n "$bytes" ] && mb=$(awk -v b="$bytes" 'BEGIN{printf "%.1f", b/1e6}')
  rows+=("$(printf '%-26s %5s %12s %12s %8s %10s %14s %14s %s' "$name" "$np" "${n:-?}" "$per" "$eff" "${mem:--}" \
    "${wmem:--}" "$mb" "$rc")")
  [ "$rc" = 0 ] || tail -15 "$log"
}
extra=()
if [ "$train" = 1 ] && [ "$model" = 160m ]; then
  extra=(--data.train 'data/english/english_train_*.bin' --data.val 'data/english/english_val_*.bin'
    --data.val_tokens 1048576 --train.batch_size 512)
  for o in muon dion2_a0.5 dion2_a0.25 dion2_a0.125; do
    run "${o/_/}_1gpu" 1 "configs/gpt160m_$o.yaml"
    run "${o/_/}_ddp" "$ngpu" "configs/gpt160m_$o.yaml" --dist.mode ddp
    run "${o/_/}_fsdp" "$ngpu" "configs/gpt160m_$o.yaml" --dist.mode fsdp
  done
elif [ "$train" = 1 ] && [ "$model" = 1b ]; then
  extra=(--data.train 'data/english/english_train_*.bin' --data.val 'data/english/english_val_*.bin'
    --data.val_tokens 1048576 --train.batch_size 64)
  for o in muon dion2_a0.5 dion2_a0.25 dion2_a0.125; do
    run "${o/_/}_1gpu" 1 "configs/gpt1b_$o.yaml" --dist.mode ddp
    run "${o/_/}_fsdp2" 2 "configs/gpt1b_$o.yaml" --dist.mode fsdp
    [ "$ngpu" -gt 2 ] && run "${o/_/}_fsdp$ngpu" "$ngpu" "configs/gpt1b_$o.yaml" --dist.mode fsdp
  done
elif [ "$train" = 1 ]; then
  run muon_1gpu 1 configs/repro/muon.yaml
  run muon_ddp "$ngpu" configs/repro/muon.yaml --dist.mode ddp
  run muon_fsdp "$ngpu" configs/repro/muon.yaml --dist.mode fsdp
  for a in 0.5 0.25 0.125; do
    run "dion2a${a}_1gpu" 1 "configs/repro/dion2_a${a}_l1.yaml"
    run "dion2a${a}_ddp" "$ngpu" "configs/repro/dion2_a${a}_l1.yaml" --dist.mode ddp
    run "dion2a${a}_fsdp" "$ngpu" "configs/repro/dion2_a${a}_l1.yaml" --dist.mode fsdp
  done
  run adamw_1gpu 1 configs/repro/base.yaml --optim.matrix.algorithm adamw
  run adamw_fsdp "$ngpu" configs/repro/base.yaml --optim.matrix.algorithm adamw --dist.mode fsdp
  # dist.compressed_sync (Dion2 random): the matrix gradients stay local, only M[K] is all-reduced
  run dion2rand_1gpu 1 configs/repro/dion2_a0.25_random.yaml
  run dion2rand_ddp "$ngpu" configs/repro/dion2_a0.25_random.yaml --dist.mode ddp
  run dion2rand_compressed "$ngpu" configs/repro/dion2_a0.25_random.yaml --dist.mode ddp --dist.compressed_sync true
fi
[ "$bench" = 1 ] && sed -n '/==== summary/,$p' "$out/bench_optim_ddp.log"
[ "$tests" = 1 ] && printf '%s\n' "${results[@]}"
printf '%s\n' "${rows[@]}" | tee "$out/dist_table.txt"
