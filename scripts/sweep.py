#!/usr/bin/env python3
"""Run a grid of orthogpt trainings as separate runs into one results folder.

Every option given as `--key v1,v2,...` (an orthogpt config key or alias, e.g. --fraction,
--select, --ef, --optim.matrix.algorithm) is a sweep axis; the runs are the cartesian product.
Options with one value are passed to every run. Each run writes to RESULTS/<name>/ (its
config.yaml and metrics.jsonl); a run whose folder already holds a finished metrics file is
skipped, so an interrupted sweep can be restarted.

  scripts/sweep.py --config configs/gpt160m_dion2_a0.25.yaml --results runs/ablation \\
      --fraction 0.5,0.25,0.125 --select l1,random --ef on,off
  scripts/sweep.py ... --launcher "mpirun -np 8"      # each run under mpirun
  scripts/sweep.py ... --dry-run                       # print the commands only
"""
import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="base YAML config")
    p.add_argument("--results", required=True, help="results folder (one sub-folder per run)")
    p.add_argument("--binary", default=os.path.join(ROOT, "build", "orthogpt"))
    p.add_argument("--launcher", default="", help='prefix command, e.g. "mpirun -np 8"')
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--keep-going", action="store_true", help="continue after a failed run")
    args, rest = p.parse_known_args(argv)
    axes, fixed = [], []
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--"):
            p.error(f"unexpected argument {tok!r} (sweep axes look like --key v1,v2)")
        if "=" in tok:
            key, val = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(rest):
                p.error(f"{tok} needs a value")
            key, val = tok[2:], rest[i + 1]
            i += 2
        values = [v for v in val.split(",")] if not (val.startswith("[") and val.endswith("]")) else [val]
        (axes if len(values) > 1 else fixed).append((key, values))
    return args, axes, fixed


def run_name(combo):
    if not combo:
        return "run"
    return "_".join(f"{k.split('.')[-1]}-{v}" for k, v in combo)


def finished(run_dir, steps_expected=None):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    return any(r.get("type") == "done" for r in rows)


def main(argv):
    args, axes, fixed = parse(argv)
    os.makedirs(args.results, exist_ok=True)
    keys = [k for k, _ in axes]
    combos = [list(zip(keys, vals)) for vals in itertools.product(*[v for _, v in axes])] or [[]]
    manifest = {"config": args.config, "axes": {k: v for k, v in axes}, "fixed": {k: v[0] for k, v in fixed}, "runs": []}
    failures = 0
    for combo in combos:
        name = run_name(combo)
        run_dir = os.path.join(args.results, name)
        cmd = shlex.split(args.launcher) + [args.binary, "train", "--config", args.config]
        for k, v in fixed:
            cmd += [f"--{k}", v[0]]
        for k, v in combo:
            cmd += [f"--{k}", v]
        cmd += ["--log.dir", run_dir]
        manifest["runs"].append({"name": name, "dir": run_dir, "overrides": dict(combo), "command": shlex.join(cmd)})
        if finished(run_dir):
            print(f"[sweep] {name}: already finished, skipped")
            continue
        print(f"[sweep] {name}: {shlex.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        t0 = time.time()
        rc = subprocess.call(cmd)
        print(f"[sweep] {name}: exit {rc} after {time.time() - t0:.0f}s", flush=True)
        if rc != 0:
            failures += 1
            if not args.keep_going:
                break
    with open(os.path.join(args.results, "sweep.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
