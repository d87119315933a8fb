"""
Training curves of several runs side by side, from their metrics.jsonl files (ppo.py, sft.py and
prm_train.py all write one; see the README's metric list).

  1. Read each run: a run directory means DIR/metrics.jsonl. Lines that are not JSON objects (the
     half-written last line of a running job) are skipped with a warning.
  2. Pick the panels: reward, accuracy, response tokens, steps per response, repeated-step fraction,
     truncated fraction (the first of each panel's candidate keys that some run has), then any other
     reward/* key. A log with none of them (sft.py's, prm_train.py's) gets every key but step and
     perf/*. At most 9 panels.
  3. One line per run (a fixed colour per run, labelled by its directory), x = the `step` key, a
     moving average over --smooth points -> the PNG at --out.

Commands
  python scripts/plot.py out/ppo-prm out/ppo-clip-delta --out out/curves.png
  python scripts/plot.py runs/*/metrics.jsonl --smooth 5 --out curves.png
"""

import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python scripts/plot.py` from anywhere finds common.py

import common  # noqa: E402  (after the path line above)

PANELS = [  # (title, candidate keys: the first one present wins)
    ("reward", ("reward/total", "reward/mean")),
    ("accuracy", ("rollout/accuracy", "reward/success", "eval/accuracy")),
    ("response tokens", ("rollout/response_tokens", "rollout/response_length")),
    ("steps / response", ("rollout/steps_per_response",)),
    ("repeated-step fraction", ("rollout/repeated_step_fraction",)),
    ("truncated fraction", ("rollout/truncated_fraction",)),
]


def read_metrics(path):
    """(path, rows) of a metrics.jsonl (a run directory means DIR/metrics.jsonl); lines that are not
    JSON objects are skipped with a warning (step 1)."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(path):
        raise common.RunError(f"{path} does not exist (expected a run directory or its metrics.jsonl)")
    rows, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    if bad:
        print(f"warning: {path}: skipped {bad} line(s) that are not JSON objects")
    return path, rows


def series(rows, key, smooth=1):
    """(steps, values) of one metric; x = the `step` key, else the row index; non-numbers skipped."""
    xs, ys = [], []
    for i, row in enumerate(rows):
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(row.get("step", i))
            ys.append(float(v))
    if smooth > 1 and ys:
        ys = [sum(ys[max(0, j - smooth + 1):j + 1]) / len(ys[max(0, j - smooth + 1):j + 1])
              for j in range(len(ys))]
    return xs, ys


def pick_panels(runs):
    """[(title, key)] to draw (step 2)."""
    present = set().union(*(row.keys() for _, rows in runs for row in rows)) if runs else set()
    panels = [(title, next(k for k in keys if k in present)) for title, keys in PANELS
              if any(k in present for k in keys)]
    used = {k for _, k in panels}
    extra = [k for k in sorted(present) if k.startswith("reward/") and k not in used]
    if not panels:  # not a ppo.py log (e.g. sft.py's): plot every metric but step and perf/*
        extra = [k for k in sorted(present) if k != "step" and not k.startswith("perf/")]
    panels += [(k, k) for k in extra][:9 - len(panels)]
    if not panels:
        raise common.RunError(f"nothing to plot in {[p for p, _ in runs]} (keys found: {sorted(present)})")
    return panels


def plot_runs(paths, out_path, smooth=1):
    """Training curves of several runs side by side -> out_path; returns the list of keys plotted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # 1. read every run
    runs = [read_metrics(p) for p in paths]
    labels = [os.path.basename(os.path.dirname(os.path.abspath(p))) for p, _ in runs]
    if len(set(labels)) < len(labels):  # same leaf name: fall back to the full directory
        labels = [os.path.relpath(os.path.dirname(os.path.abspath(p))) for p, _ in runs]
    # 2. panels
    panels = pick_panels(runs)
    # 3. one line per run in each panel
    cols = min(3, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.5 * cols, 3.2 * rows_n), squeeze=False)
    for ax, (title, key) in zip(axes.flat, panels):
        for r, (_, rows) in enumerate(runs):
            xs, ys = series(rows, key, smooth)
            if xs:  # NOTE: a fixed colour per run, so a run missing a key does not shift the others
                ax.plot(xs, ys, color=f"C{r % 10}", linewidth=1.2)
        ax.set_title(f"{title}" if title == key else f"{title} ({key})", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=f"C{r % 10}", label=label) for r, label in enumerate(labels)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(labels) - 1) // 4), 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return [k for _, k in panels]


def main(argv=None):
    # NOTE: plain argparse, not common.parse_config: the runs are positional arguments, which a
    # stage's flat Config does not have.
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("runs", nargs="+", help="run directories or their metrics.jsonl files")
    p.add_argument("--out", default="curves.png", help="the PNG to write (default: curves.png)")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window in points (default: 1 = raw)")
    args = p.parse_args(argv)
    keys = plot_runs(args.runs, args.out, args.smooth)
    print(f"wrote {args.out} ({', '.join(keys)})")


if __name__ == "__main__":
    common.run_main(main)
