#!/usr/bin/env python3
"""Paper-style figures from orthogpt runs (metrics.jsonl in each run folder).

  scripts/plot_runs.py RUN_DIR... --out docs/figures/ablation [--labels a,b,...] [--title T]

Writes <out>_val_vs_step.png (validation loss against step, with a zoomed panel of the final
phase), <out>_val_vs_time.png (against wall-clock training time) and <out>_table.md (final
validation loss per run, sorted). Needs matplotlib (Debian: python3-matplotlib).
"""
import argparse
import json
import os
import sys


def load(run_dir):
    rows = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"{run_dir}/metrics.jsonl line {n}: {e}")
    val = [r for r in rows if r.get("type") == "val"]
    train = [r for r in rows if r.get("type") == "train"]
    # training time at each step (excluding validation): cumulative step_ms
    t, cum = {}, 0.0
    for r in train:
        cum += r.get("step_ms", 0.0) / 1e3
        t[r["step"]] = cum
    for v in val:
        v["train_time_s"] = t.get(v["step"], 0.0)
    return {"val": val, "train": train, "done": next((r for r in rows if r.get("type") == "done"), None)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True, help="output path prefix")
    p.add_argument("--labels", default="", help="comma-separated labels (default: folder names)")
    p.add_argument("--title", default="")
    p.add_argument("--zoom", type=float, default=0.3, help="final fraction of steps in the zoomed panel")
    a = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = a.labels.split(",") if a.labels else [os.path.basename(os.path.normpath(r)) for r in a.runs]
    if len(labels) != len(a.runs):
        sys.exit("--labels must name every run")
    data = [load(r) for r in a.runs]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)

    fig, (ax, axz) = plt.subplots(1, 2, figsize=(12, 4.5))
    for d, lab in zip(data, labels):
        xs = [v["step"] for v in d["val"]]
        ys = [v["val_loss"] for v in d["val"]]
        ax.plot(xs, ys, marker=".", label=lab)
        if xs:
            cut = xs[-1] * (1 - a.zoom)
            zx = [x for x in xs if x >= cut]
            axz.plot(zx, ys[len(xs) - len(zx):], marker=".", label=lab)
    ax.set_xlabel("step"); ax.set_ylabel("validation loss"); ax.grid(alpha=0.3); ax.legend()
    axz.set_xlabel("step"); axz.set_title(f"final {int(a.zoom * 100)}% of training"); axz.grid(alpha=0.3)
    if a.title:
        fig.suptitle(a.title)
    fig.tight_layout()
    fig.savefig(a.out + "_val_vs_step.png", dpi=130)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for d, lab in zip(data, labels):
        ax.plot([v["train_time_s"] for v in d["val"]], [v["val_loss"] for v in d["val"]], marker=".", label=lab)
    ax.set_xlabel("training time (s, excluding validation)"); ax.set_ylabel("validation loss")
    ax.grid(alpha=0.3); ax.legend()
    if a.title:
        ax.set_title(a.title)
    fig.tight_layout()
    fig.savefig(a.out + "_val_vs_time.png", dpi=130)

    rows = []
    for d, lab in zip(data, labels):
        final = d["val"][-1]["val_loss"] if d["val"] else float("nan")
        steps = d["val"][-1]["step"] if d["val"] else 0
        tps = [r["tokens_per_s"] for r in d["train"][5:]] or [float("nan")]
        opt = [r.get("optim_ms", float("nan")) for r in d["train"][5:]] or [float("nan")]
        rows.append((final, lab, steps, sorted(tps)[len(tps) // 2], sorted(opt)[len(opt) // 2]))
    rows.sort()
    with open(a.out + "_table.md", "w") as f:
        f.write("| run | final val loss | steps | median tokens/s | median optimizer ms |\n|---|---|---|---|---|\n")
        for final, lab, steps, tps, opt in rows:
            f.write(f"| {lab} | {final:.4f} | {steps} | {tps:,.0f} | {opt:.2f} |\n")
    print(open(a.out + "_table.md").read())


if __name__ == "__main__":
    main()
