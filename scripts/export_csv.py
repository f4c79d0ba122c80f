#!/usr/bin/env python3
"""Export a run's metrics.jsonl to CSV: one file per row type (train, val), all keys as columns.

  scripts/export_csv.py RUN_DIR      -> RUN_DIR/metrics_train.csv, RUN_DIR/metrics_val.csv
"""
import csv
import json
import os
import sys


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run = sys.argv[1]
    rows = {}
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"{run}/metrics.jsonl line {n}: {e}")
                rows.setdefault(r.get("type", "train"), []).append(r)
    for kind in ("train", "val"):
        if kind not in rows:
            continue
        keys = []
        for r in rows[kind]:
            keys += [k for k in r if k not in keys]
        path = os.path.join(run, f"metrics_{kind}.csv")
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows[kind])
        print(f"{path}: {len(rows[kind])} rows")


if __name__ == "__main__":
    main()
