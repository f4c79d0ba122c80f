#!/usr/bin/env bash
# Fault injection across ranks: `mpirun -np 2 orthogpt train` with one rank that dies (SIGKILL,
# train.fault_kill_rank/step) or hangs before a collective (train.fault_hang_rank/step) must exit
# non-zero within a bounded time; for the hang, the surviving rank's message names the timeout
# (dist.timeout_s) and the collective. A ctest test (label mpi), see tests/CMakeLists.txt.
#   rank_failure.sh ORTHOGPT MPIEXEC DATA_DIR
set -uo pipefail
orthogpt="$1"; mpiexec="$2"; data="$3"
work="$(mktemp -d "${TMPDIR:-/tmp}/og_rank_failure.XXXXXX")"
trap 'rm -rf "$work"' EXIT
status=0

# A tiny model on the committed KJV shards: a few seconds per run on 2 cores.
common=(--data.train "$data/kjv_small/kjv_train_*.bin" --data.val "$data/kjv_small/kjv_val_*.bin"
        --data.val_tokens 1024 --model.vocab_size 50304 --model.d_model 32 --model.n_layer 1 --model.n_head 2
        --model.seq_len 32 --train.batch_size 4 --train.micro_batch_size 2 --train.steps 50 --train.val_every 0
        --train.device cpu --train.threads 1 --log.every 1000 --optim.matrix.algorithm adamw)

# run NAME MAX_SECONDS EXPECTED_TEXT... -- ARGS...: the job must fail, within MAX_SECONDS, and its
# output must contain every EXPECTED_TEXT.
run() {
  local name="$1" max="$2"; shift 2
  local expect=()
  while [ "$1" != "--" ]; do expect+=("$1"); shift; done
  shift
  local out="$work/$name.log" t0 t1 rc
  t0=$(date +%s)
  # `timeout` only keeps a broken build from hanging ctest; the bound checked is MAX_SECONDS (the
  # exit status alone cannot tell: mpirun itself exits 137 when a rank was SIGKILLed)
  OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive timeout -k 10 300 \
    "$mpiexec" -np 2 --oversubscribe --allow-run-as-root "$orthogpt" train "${common[@]}" \
    --log.dir "$work/$name" "$@" >"$out" 2>&1
  rc=$?
  t1=$(date +%s)
  local ok=1
  if [ "$rc" = 0 ]; then echo "FAIL $name: the job exited 0"; ok=0; fi
  if [ $((t1 - t0)) -ge "$max" ]; then echo "FAIL $name: took $((t1 - t0)) s, the bound is $max s"; ok=0; fi
  for e in "${expect[@]}"; do
    if ! grep -qF -- "$e" "$out"; then echo "FAIL $name: the output lacks '$e'"; ok=0; fi
  done
  if [ "$ok" = 1 ]; then
    echo "ok   $name: exit $rc after $((t1 - t0)) s"
  else
    echo "---- output of $name ----"; tail -40 "$out"; status=1
  fi
}

# A fault-free run first: the failures below must come from the faults, not from the setup.
if ! OMP_NUM_THREADS=1 timeout -k 10 300 "$mpiexec" -np 2 --oversubscribe --allow-run-as-root "$orthogpt" train \
     "${common[@]}" --train.steps 3 --log.dir "$work/clean" >"$work/clean.log" 2>&1; then
  echo "FAIL clean: the fault-free run failed"; tail -40 "$work/clean.log"; exit 1
fi
echo "ok   clean: the fault-free run passes"

# rank 1 is SIGKILLed at step 3: mpirun notices and ends the job
run killed_rank 60 "train.fault_kill_step 3" "signal 9" -- --train.fault_kill_rank 1 --train.fault_kill_step 3
# rank 1 sleeps forever before step 3's gradient all-reduce: rank 0 gives up after dist.timeout_s
run hung_rank 60 "dist.timeout_s = 5s" "all_reduce" "rank 0" -- \
  --train.fault_hang_rank 1 --train.fault_hang_step 3 --dist.timeout_s 5
exit $status
