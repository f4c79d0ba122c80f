#!/usr/bin/env bash
# Run the reproduction set (configs/repro/: Muon; Dion2 α 0.5/0.25/0.125 × l1/random; Dion2
# α 0.25 ef off; Dion rank fraction 0.25) one after another, then write the final-validation-loss
# table (markdown: stdout and OUT/table.md) and the figures (scripts/plot_runs.py into
# FIGURES_val_vs_step.png / _val_vs_time.png / _table.md; skipped with a note when matplotlib is
# missing: the runs can be plotted later on another machine with the same command).
#
#   scripts/repro.sh [--steps N] [--out runs/repro] [--figures docs/figures/repro]
#                    [--only muon,dion2_a0.25_l1,...] [--build DIR] [--report-only] [-- overrides...]
#   --report-only only write the table and figures from the finished run folders in --out (runs made
#                 on another machine, e.g. the GPU one, copied back here)
#   --build DIR   first build orthogpt (Release, CUDA sm_90 when nvcc is present) into DIR and use it
#   overrides     any `orthogpt train` option for every run, e.g. --device cpu --model.n_layer 1
#   env ORTHOGPT_BIN: the binary (default build/orthogpt; with --build: DIR/orthogpt)
#
# A run whose folder holds a finished metrics.jsonl of the same command is skipped, so the set
# can be run over several calls (each device call is limited in time) and resumes where it
# stopped. Data: data/english from scripts/get_corpus_large.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

RUNS=(muon dion2_a0.5_l1 dion2_a0.5_random dion2_a0.25_l1 dion2_a0.25_random dion2_a0.125_l1
      dion2_a0.125_random dion2_a0.25_l1_efoff dion_r0.25)
steps="" out="runs/repro" figures="docs/figures/repro" only="" build_dir="" report_only=0
extra=()
die() { echo "repro.sh: error: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --steps) [[ $# -ge 2 ]] || die "--steps needs a value"; steps="$2"; shift 2 ;;
    --out) [[ $# -ge 2 ]] || die "--out needs a value"; out="$2"; shift 2 ;;
    --figures) [[ $# -ge 2 ]] || die "--figures needs a value"; figures="$2"; shift 2 ;;
    --only) [[ $# -ge 2 ]] || die "--only needs a value"; only="$2"; shift 2 ;;
    --build) [[ $# -ge 2 ]] || die "--build needs a folder"; build_dir="$2"; shift 2 ;;
    --report-only) report_only=1; shift ;;
    --) shift; extra+=("$@"); break ;;
    *) extra+=("$1"); shift ;;  # an orthogpt override (its value follows as the next word)
  esac
done
if [[ -n "$only" ]]; then
  IFS=',' read -r -a sel <<<"$only"
  for r in "${sel[@]}"; do [[ -f "configs/repro/$r.yaml" ]] || die "--only: no configs/repro/$r.yaml"; done
  RUNS=("${sel[@]}")
fi

if [[ "$report_only" = 1 ]]; then
  for r in "${RUNS[@]}"; do
    grep -qs '"type":"done"' "$out/$r/metrics.jsonl" || die "--report-only: $out/$r/metrics.jsonl is missing or unfinished"
  done
elif [[ -n "$build_dir" ]]; then
  t0=$(date +%s)
  cuda=()
  command -v nvcc >/dev/null && cuda=(-DORTHOGPT_CUDA_ARCH=90)
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "${cuda[@]}" >"$build_dir.cmake.log" 2>&1 \
    || { tail -30 "$build_dir.cmake.log"; die "cmake failed (log: $build_dir.cmake.log)"; }
  cmake --build "$build_dir" -j "$(nproc)" --target orthogpt >"$build_dir.build.log" 2>&1 \
    || { tail -30 "$build_dir.build.log"; die "build failed (log: $build_dir.build.log)"; }
  echo "repro.sh: built $build_dir/orthogpt in $(( $(date +%s) - t0 ))s"
  BIN="${ORTHOGPT_BIN:-$build_dir/orthogpt}"
else
  BIN="${ORTHOGPT_BIN:-build/orthogpt}"
fi
[[ "$report_only" = 1 || -x "$BIN" ]] || die "$BIN not found: build it (scripts/build.sh), pass --build DIR or set ORTHOGPT_BIN"
[[ "$report_only" = 1 ]] || ls data/english/english_train_*.bin >/dev/null 2>&1 || [[ " ${extra[*]} " == *" --data.train "* ]] \
  || die "no data/english/english_train_*.bin: run scripts/get_corpus_large.sh (or carry data/english)"

mkdir -p "$out"
t_all=$(date +%s)
for r in "${RUNS[@]}"; do
  [[ "$report_only" = 1 ]] && break
  cfg="configs/repro/$r.yaml"
  dir="$out/$r"
  cmd=("$BIN" train --config "$cfg")
  [[ -n "$steps" ]] && cmd+=(--steps "$steps")
  cmd+=("${extra[@]}" --log.dir "$dir")
  line="$(printf '%q ' "${cmd[@]}")"
  if [[ -f "$dir/metrics.jsonl" && -f "$dir/command.txt" && "$(cat "$dir/command.txt")" == "$line" ]] \
     && grep -q '"type":"done"' "$dir/metrics.jsonl"; then
    echo "repro.sh: $r: already finished with this command, skipped"
    continue
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  echo "repro.sh: $r: $line"
  t0=$(date +%s)
  "${cmd[@]}" >"$dir/train.log" 2>&1 || { tail -20 "$dir/train.log"; die "$r failed (log: $dir/train.log)"; }
  echo "$line" >"$dir/command.txt"  # written last: marks the run finished for a restart
  echo "repro.sh: $r: done in $(( $(date +%s) - t0 ))s: $(grep -o 'done: .*' "$dir/train.log" | tail -n1)"
done
echo "repro.sh: all runs done in $(( $(date +%s) - t_all ))s"

# ---- table (json only, no plotting library needed) ----------------------------------------------
python3 - "$out" "${RUNS[@]}" <<'EOF' | tee "$out/table.md"
import json, os, statistics, sys
out, runs = sys.argv[1], sys.argv[2:]
what = {
    "muon": "Muon", "dion2_a0.25_l1_efoff": "Dion2 α=0.25 l1, ef off", "dion_r0.25": "Dion rank fraction 0.25",
}
rows = []
for r in runs:
    recs = [json.loads(l) for l in open(os.path.join(out, r, "metrics.jsonl")) if l.strip()]
    val = [x for x in recs if x.get("type") == "val"]
    train = [x for x in recs if x.get("type") == "train"]
    done = next(x for x in recs if x.get("type") == "done")
    label = what.get(r) or "Dion2 α={} {}".format(*r[len("dion2_a"):].split("_"))
    tps = statistics.median([x["tokens_per_s"] for x in train[5:]] or [x["tokens_per_s"] for x in train])
    opt = [x["optim_ms"] for x in train[5:] if "optim_ms" in x]
    rows.append((val[-1]["val_loss"], r, label, done["steps"], train[-1]["tokens"], done["train_seconds"], tps,
                 statistics.median(opt) if opt else float("nan")))
print("| run | optimizer | final val loss | steps | tokens | train s | median tokens/s | median optimizer ms |")
print("|---|---|---|---|---|---|---|---|")
for v, r, label, steps, tokens, secs, tps, opt in sorted(rows):
    print(f"| {r} | {label} | {v:.4f} | {steps} | {tokens:,} | {secs:.1f} | {tps:,.0f} | {opt:.2f} |")
EOF

# ---- figures ---------------------------------------------------------------------------------------
dirs=(); for r in "${RUNS[@]}"; do dirs+=("$out/$r"); done
py=""  # the first python3 with matplotlib (a pyenv python3 may lack Debian's python3-matplotlib)
for p in python3 /usr/bin/python3; do
  command -v "$p" >/dev/null && "$p" -c "import matplotlib" 2>/dev/null && { py="$p"; break; }
done
if [[ -n "$py" ]]; then
  "$py" scripts/plot_runs.py "${dirs[@]}" --out "$figures" --title "orthogpt repro: 512/8/4, seq 512, English corpus" \
    >/dev/null
  echo "repro.sh: figures: ${figures}_val_vs_step.png ${figures}_val_vs_time.png (table ${figures}_table.md)"
else
  echo "repro.sh: matplotlib is missing here: no figures. Later, with the run folders: scripts/plot_runs.py ${dirs[*]} --out $figures"
fi
