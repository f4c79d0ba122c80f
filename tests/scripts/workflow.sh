#!/usr/bin/env bash
# The experiment workflow end to end on tiny CPU runs (the committed KJV shards, a 1-layer model,
# a few steps each): scripts/sweep.py runs a 2x2 grid into one results folder and skips finished
# runs when restarted; scripts/export_csv.py writes the CSVs; scripts/plot_runs.py draws the
# figures and the final-loss table; scripts/repro.sh runs two of the reproduction configs with
# overrides and redraws its table with --report-only. A ctest test (label cpu), see
# tests/CMakeLists.txt.
#   workflow.sh ORTHOGPT DATA_DIR
set -uo pipefail
orthogpt="$1"; data="$2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/og_workflow.XXXXXX")"
trap 'rm -rf "$work"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
pass() { echo "ok: $*"; }

# plot_runs.py needs matplotlib: the first python3 that has it (a pyenv python3 may lack Debian's)
py=""
for p in python3 /usr/bin/python3; do
  command -v "$p" >/dev/null && "$p" -c "import matplotlib" 2>/dev/null && { py="$p"; break; }
done

tiny=(--data.train "$data/kjv_small/kjv_train_*.bin" --data.val "$data/kjv_small/kjv_val_*.bin" --data.val_tokens 1024
      --model.vocab_size 50304 --model.d_model 32 --model.n_layer 1 --model.n_head 2 --model.seq_len 32
      --train.batch_size 4 --train.micro_batch_size 2 --train.steps 4 --train.val_every 2 --train.device cpu
      --train.threads 1 --log.every 1)

# ---- sweep: 2 fractions x 2 selection rules = 4 runs --------------------------------------------
sweep=(python3 "$root/scripts/sweep.py" --config "$root/configs/tiny.yaml" --results "$work/sweep" --binary "$orthogpt"
       "${tiny[@]}" --fraction 0.5,0.25 --select l1,random)
if "${sweep[@]}" >"$work/sweep1.log" 2>&1; then
  n=$(ls -d "$work"/sweep/*/ 2>/dev/null | wc -l)
  done_runs=$(grep -l '"type":"done"' "$work"/sweep/*/metrics.jsonl 2>/dev/null | wc -l)
  [ "$n" = 4 ] && [ "$done_runs" = 4 ] && pass "sweep: 4 runs finished" || fail "sweep: $n folders, $done_runs finished"
  [ -d "$work/sweep/fraction-0.25_select-random" ] && pass "sweep: run folder named by its overrides" \
    || fail "sweep: no folder fraction-0.25_select-random ($(ls "$work/sweep"))"
  grep -q '"select": "random"' "$work/sweep/sweep.json" && pass "sweep: sweep.json manifest" || fail "sweep: sweep.json"
  grep -Eq 'select: "?random' "$work/sweep/fraction-0.25_select-random/config.yaml" \
    && pass "sweep: the override reached the run's config" || fail "sweep: config.yaml lacks select: random"
else
  fail "sweep exited non-zero"; tail -20 "$work/sweep1.log"
fi
"${sweep[@]}" >"$work/sweep2.log" 2>&1
[ "$(grep -c 'already finished, skipped' "$work/sweep2.log")" = 4 ] && pass "sweep: restart skips finished runs" \
  || fail "sweep: restart did not skip 4 runs"
if python3 "$root/scripts/sweep.py" --config "$root/configs/tiny.yaml" --results "$work/bad" --binary "$orthogpt" \
     "${tiny[@]}" --optim.matrix.no_such_key 1,2 >"$work/bad.log" 2>&1; then
  fail "sweep: an unknown key did not fail"
else
  grep -q "no_such_key" "$work/bad.log" && pass "sweep: unknown key is an error naming it" || fail "sweep: error text"
fi

# ---- CSV export --------------------------------------------------------------------------------
run1="$work/sweep/fraction-0.5_select-l1"
if python3 "$root/scripts/export_csv.py" "$run1" >/dev/null 2>&1; then
  head -1 "$run1/metrics_train.csv" | grep -q "loss" && [ "$(wc -l <"$run1/metrics_train.csv")" = 5 ] \
    && pass "export_csv: header + 4 train rows" || fail "export_csv: $(wc -l <"$run1/metrics_train.csv") lines"
  [ -s "$run1/metrics_val.csv" ] && pass "export_csv: val rows" || fail "export_csv: no metrics_val.csv"
else
  fail "export_csv exited non-zero"
fi

# ---- plots -------------------------------------------------------------------------------------
if [ -n "$py" ]; then
  if "$py" "$root/scripts/plot_runs.py" "$work"/sweep/*/ --out "$work/fig/ablation" --title t >/dev/null 2>&1; then
    for f in ablation_val_vs_step.png ablation_val_vs_time.png; do
      [ "$(head -c 4 "$work/fig/$f" | od -An -c | tr -d ' ')" = "211PNG" ] && pass "plot: $f is a PNG" || fail "plot: $f"
    done
    [ "$(grep -c '^| fraction-' "$work/fig/ablation_table.md")" = 4 ] && pass "plot: table of 4 runs" \
      || fail "plot: table"
  else
    fail "plot_runs.py exited non-zero"
  fi
else
  echo "SKIP plot_runs.py: no python3 with matplotlib (Debian: python3-matplotlib)"
fi

# ---- repro.sh with overrides, then --report-only ---------------------------------------------------
repro=(bash "$root/scripts/repro.sh" --only muon,dion2_a0.5_l1 --out "$work/repro" --figures "$work/fig/repro" --steps 4
       -- "${tiny[@]}")
if ORTHOGPT_BIN="$orthogpt" "${repro[@]}" >"$work/repro1.log" 2>&1; then
  [ "$(grep -c '^| muon\|^| dion2_a0.5_l1' "$work/repro/table.md")" = 2 ] && pass "repro.sh: table of 2 runs" \
    || fail "repro.sh: table"
  ORTHOGPT_BIN="$orthogpt" "${repro[@]}" >"$work/repro2.log" 2>&1
  [ "$(grep -c 'already finished with this command, skipped' "$work/repro2.log")" = 2 ] \
    && pass "repro.sh: restart skips finished runs" || fail "repro.sh: restart"
  rm "$work/repro/table.md"
  bash "$root/scripts/repro.sh" --only muon,dion2_a0.5_l1 --out "$work/repro" --figures "$work/fig/repro2" --report-only \
    >"$work/repro3.log" 2>&1 && [ -s "$work/repro/table.md" ] && pass "repro.sh --report-only" \
    || { fail "repro.sh --report-only"; tail -5 "$work/repro3.log"; }
  if [ -n "$py" ]; then
    [ -s "$work/fig/repro2_val_vs_step.png" ] && pass "repro.sh: figures" || fail "repro.sh: no figures"
  fi
else
  fail "repro.sh exited non-zero"; tail -20 "$work/repro1.log"
fi
bash "$root/scripts/repro.sh" --only no_such_run >/dev/null 2>&1 && fail "repro.sh: unknown run accepted" \
  || pass "repro.sh: unknown run is an error"

echo "workflow: $fails failure(s)"
[ "$fails" = 0 ]
