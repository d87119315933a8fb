"""
Mean PRM score per kind of step on a policy's own sampled responses (README, "Results"): arithmetic
operations, restatements ("So far we have N."), checks ("Check: ..."), the answer step, and the step
right after a restatement or a check; split by whether the response is correct. Why: scripts/probe.py
scores templated padding; what PPO meets are the policy's own unneeded steps, and under Delta with
the last step kept the gap "one more step, then answer" minus "answer now" is x(extra step) -
x(answer step) (METHOD §2), so their scores decide which remedies still pay for padding.

Usage (samples.jsonl of an evaluate.py run with --samples > 0; the ablation's start evaluation):
    OMP_NUM_THREADS=1 python bench/prm_step_kinds.py --samples out/ablation/eval/base/samples.jsonl \\
        --prm models/arith-prm --limit 600
"""

import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import rewards  # noqa: E402
from ablation import EXTRA_STEPS  # noqa: E402  (the world's restatement and check prefixes)

RESTATE, CHECK = EXTRA_STEPS


def kind(step):
    if step.startswith(RESTATE):
        return "restate"
    if step.startswith(CHECK):
        return "check"
    return "answer" if "boxed" in step else "operation"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", required=True, help="evaluate.py samples.jsonl (rows of kind 'sample' are used)")
    p.add_argument("--prm", default="models/arith-prm")
    p.add_argument("--limit", type=int, default=600, help="first N sampled responses")
    a = p.parse_args()
    rm = rewards.load_reward_model_or_exit(a.prm)
    rows = [r for r in map(json.loads, open(a.samples, encoding="utf-8")) if r["kind"] != "greedy"][: a.limit]
    steps = [r["response"].split(rewards.DEFAULT_STEP_SEP) for r in rows]
    scores = rewards.score_responses(rm, [r["question"] for r in rows], steps, 64)
    agg = collections.defaultdict(list)
    for st, sc, r in zip(steps, scores, rows):
        for i, (text, x) in enumerate(zip(st, sc)):
            k = kind(text.strip())
            agg[(k, r["correct"])].append(x)
            if k in ("restate", "check") and i + 1 < len(sc):
                agg[("after " + k, r["correct"])].append(sc[i + 1])
    print(f"{len(rows)} sampled responses of {a.samples}, PRM {a.prm}: mean score (count)")
    print("| step kind | in correct responses | in wrong responses |\n|---|---|---|")
    for k in ("operation", "restate", "check", "answer", "after restate", "after check"):
        cells = [f"{sum(agg[(k, c)]) / len(agg[(k, c)]):.3f} ({len(agg[(k, c)])})" if agg[(k, c)] else "-"
                 for c in (True, False)]
        print(f"| {k} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
