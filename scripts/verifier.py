"""
The step-corruption test (issue 14, "reward models that are strong verifiers"): does a PRM notice a
wrong step? Take correct solutions, change the result of one work step by --delta (nothing else),
and compare the PRM's score of that step before and after. A verifier that checks arithmetic scores
the corrupted step lower every time; one that only reads the format scores both alike. No policy and
no sampling: one batched PRM call, seconds on CPU. (Its companion, the within-problem AUC of the
PRM / ORM over a policy's own samples, is evaluate.py's prm_within_auc / orm_within_auc.)

Algorithm (the numbers match comments in the code)
  1. Correct solutions, split into steps (rewards.split_steps, separator "\\n\\n"); the last step is
     the answer step, the ones before it are work steps. Either
       gold     (default) the reference `solution` of the first --n problems of --dataset / --split
                whose solution has at least --step work steps and whose step --step can be corrupted
                (step 2);
       policy   (--policy-samples PATH, an evaluate.py samples.jsonl) the policy's own correct,
                untruncated responses: the first one of each problem, in file order (greedy before
                samples, as evaluate.py writes them), for the first --n problems where it can be
                corrupted. --dataset / --split are not read.
  2. Corruption: in work step --step (1-based), the result, i.e. the first number after the step's
     last "=", is increased by --delta ("49 - 8 = 41" -> "49 - 8 = 42", "-13 - 98 = -111" -> "-110";
     decimals keep their digits). Only that step changes: the steps after it still use the correct
     value. A step without "= <number>", or an answer step, is skipped (counted in `skipped`).
  3. One batched rewards.score_responses call scores both versions of every pair: x_k, the PRM score
     of every step.
  4. Per pair, at step k = --step (the corrupted one), at step k + 1 (the next, unchanged, one) and
     for the min over steps (evaluate.py's default best-of-N aggregation): detected when the
     corrupted solution's score is strictly lower than the correct one's (a tie is not detected).
     Reported: the detection rate (fraction of pairs), the mean score of each version and the mean drop.
  5. Output: a Markdown table (printed, OUT_DIR/verifier.md) and OUT_DIR/verifier.json (the figures,
     the config, every pair's texts and scores).

Where we depart from the paper: the paper shows that its reward models are strong at inference time
through best-of-N; this test and the within-problem AUC isolate the verification itself. The
corruption (one result off by a small amount) is ours.

Commands
  CPU (the README's figure; about 10 s, most of it imports and loading):
      python scripts/verifier.py --prm models/arith-prm --n 60
  On the start policy's own correct solutions (as the issue asks):
      python evaluate.py --policy models/arith-policy --eval-limit 100 --samples 4 --out-dir out/eval-start
      python scripts/verifier.py --prm models/arith-prm --policy-samples out/eval-start/samples.jsonl
  One GPU (a public Math-Shepherd PRM; a gold step must hold "= <number>" to count):
      python scripts/verifier.py --prm peiyi9979/math-shepherd-mistral-7b-prm --step-tag "ки" \\
          --dataset gsm8k --device cuda

Expected result: see README (the shipped arith PRM's detection rate). 50% is a coin flip; a verifier
that checks arithmetic detects nearly every corrupted step.
"""

import dataclasses
import decimal
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python scripts/verifier.py` finds common.py

import common  # noqa: E402  (after the path line above)
import rewards  # noqa: E402
from common import field  # noqa: E402

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclasses.dataclass
class Config:
    prm: str = field("models/arith-prm", "the PRM to test (checkpoint directory or hub id)")
    step_tag: str = field("", "PRM step tag ('' = the one saved in its meta.json; 'ки' for Math-Shepherd)")
    dataset: str = field("arith", "dataset name (arith | gsm8k | math | math500) or a JSONL path (gold mode)")
    split: str = field("test", "dataset split; 'auto' = valid where the dataset has one, else test")
    policy_samples: str = field("", "an evaluate.py samples.jsonl: corrupt the policy's own correct responses "
                                "instead of the gold solutions ('' = gold)")
    n: int = field(100, "pairs (problems) to test")
    step: int = field(2, "the work step to corrupt (1-based)")
    delta: int = field(1, "added to the step's result")
    rm_batch_size: int = field(64, "PRM forward batch (responses)")
    device: str = field("auto", "auto | cpu | cuda | cuda:N")
    out_dir: str = field("results/verifier", "where verifier.md and verifier.json go")


# -----------------------------------------------------------------------------
# pure helpers: the corruption (step 2) and the comparison (step 4)

def corrupt_step(step, delta):
    """`step` with its result (the first number after its last "=") increased by `delta`, the rest of
    the text unchanged; None when the step has no "=" followed by a number."""
    eq = step.rfind("=")
    if eq < 0:
        return None
    m = NUMBER.search(step, eq + 1)
    if m is None:
        return None
    value = decimal.Decimal(m.group()) + decimal.Decimal(delta)  # exact: "2.50" + 1 -> "3.50"
    return step[: m.start()] + str(value) + step[m.end():]


def corrupt(steps, k, delta):
    """A copy of `steps` with work step k (1-based; the last step is the answer step, never a work
    step) corrupted by corrupt_step, or None when there is no such step or it cannot be corrupted."""
    if not 1 <= k < len(steps):
        return None
    bad = corrupt_step(steps[k - 1], delta)
    if bad is None or bad == steps[k - 1]:
        return None
    return steps[: k - 1] + [bad] + steps[k:]


def make_pairs(sources, k, delta, n, sep=rewards.DEFAULT_STEP_SEP):
    """Step 1-2: sources = [(key, question, correct text)], in order. The first usable text per key,
    for the first n keys. Returns (pairs, skipped): pairs are dicts with question, steps, corrupted;
    skipped counts the texts left out, by reason."""
    pairs, done, skipped = [], set(), {"too few steps": 0, "no '= number' at the step": 0}
    for key, question, text in sources:
        if len(pairs) >= n:
            break
        if key in done:
            continue
        steps = rewards.split_steps(text, sep)
        if len(steps) - 1 < k:
            skipped["too few steps"] += 1
            continue
        bad = corrupt(steps, k, delta)
        if bad is None:
            skipped["no '= number' at the step"] += 1
            continue
        done.add(key)
        pairs.append({"question": question, "steps": steps, "corrupted": bad})
    return pairs, skipped


def compare(correct, corrupted):
    """Step 4 on two equal-length lists of scores (one per pair): detection rate (corrupted strictly
    lower), the two means and the mean drop (correct - corrupted)."""
    n = len(correct)
    if n != len(corrupted):
        raise ValueError(f"{n} correct scores for {len(corrupted)} corrupted ones")
    if n == 0:
        return {"pairs": 0, "detection_rate": None, "mean_correct": None, "mean_corrupted": None, "mean_drop": None}
    return {"pairs": n, "detection_rate": sum(b < a for a, b in zip(correct, corrupted)) / n,
            "mean_correct": sum(correct) / n, "mean_corrupted": sum(corrupted) / n,
            "mean_drop": sum(a - b for a, b in zip(correct, corrupted)) / n}


def verify(pairs, score_fn, k):
    """Steps 3-4: score_fn(questions, list of step lists) -> score lists (one per step). Returns the
    results dict: rows "step" (step k), "next" (step k + 1), "min" (min over steps), and per pair
    its two score lists."""
    questions = [p["question"] for p in pairs]
    scores = score_fn(questions + questions, [p["steps"] for p in pairs] + [p["corrupted"] for p in pairs])
    good, bad = scores[: len(pairs)], scores[len(pairs):]
    for p, a, b in zip(pairs, good, bad):
        if len(a) != len(p["steps"]) or len(b) != len(p["corrupted"]):
            raise ValueError(f"the PRM returned {len(a)} / {len(b)} scores for {len(p['steps'])} steps")
    rows = {"step": compare([a[k - 1] for a in good], [b[k - 1] for b in bad]),
            "next": compare([a[k] for a in good], [b[k] for b in bad]),  # step k + 1 exists: k is a work step
            "min": compare([min(a) for a in good], [min(b) for b in bad])}
    return {"rows": rows, "n_pairs": len(pairs),
            "pairs": [{**p, "scores": a, "corrupted_scores": b} for p, a, b in zip(pairs, good, bad)]}


# -----------------------------------------------------------------------------
# inputs (step 1) and output (step 5)

def gold_sources(cfg):
    """(key, question, solution) of every problem of --dataset / --split, in order."""
    split = common.eval_split(cfg.dataset, cfg.split)
    try:
        problems = common.load_problems(cfg.dataset, split)
    except (OSError, ValueError) as e:
        raise common.RunError(f"cannot read --dataset {cfg.dataset!r} (split {split}): {e}") from None
    if not problems or not any(isinstance(p.get("solution"), str) and p["solution"] for p in problems):
        raise common.RunError(f"--dataset {cfg.dataset!r}: the gold mode needs rows with a `solution` "
                              "(or pass --policy-samples)")
    return [(i, p["question"], p["solution"]) for i, p in enumerate(problems)
            if isinstance(p.get("solution"), str)]


def policy_sources(path):
    """(question, question, response) of every correct, untruncated response of an evaluate.py
    samples.jsonl, in file order."""
    try:
        rows = common.read_jsonl(path, with_lines=True)
    except (OSError, ValueError) as e:
        raise common.RunError(f"cannot read --policy-samples {path!r}: {e}") from None
    out = []
    for lineno, r in rows:
        if not all(k in r for k in ("question", "response", "correct")):
            raise common.RunError(f"{path}:{lineno}: not an evaluate.py samples.jsonl row "
                                  "(needs question, response, correct)")
        if r["correct"] is True and not r.get("truncated", False):
            out.append((r["question"], r["question"], r["response"]))
    return out


def markdown(res, cfg):
    """The verifier's Markdown report."""
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    src = (f"the correct responses in `{cfg.policy_samples}`" if cfg.policy_samples
           else f"gold solutions of `{cfg.dataset}` {res['split']}")
    k = cfg.step
    lines = [f"PRM `{cfg.prm}`, {res['n_pairs']} pairs from {src}: work step {k}'s result "
             f"{'+' if cfg.delta > 0 else ''}{cfg.delta}, nothing else changed "
             f"(left out: {', '.join(f'{n} {why}' for why, n in res['skipped'].items())}).", "",
             "| PRM score | pairs | detection rate (corrupted < correct) | mean correct | mean corrupted | mean drop |",
             "|---|---|---|---|---|---|"]
    names = {"step": f"step {k} (corrupted)", "next": f"step {k + 1} (next, unchanged)", "min": "min over steps"}
    for key, name in names.items():
        r = res["rows"][key]
        lines.append(f"| {name} | {r['pairs']} | {f(r['detection_rate'])} | {f(r['mean_correct'])} | "
                     f"{f(r['mean_corrupted'])} | {f(r['mean_drop'])} |")
    if res["pairs"]:
        p = res["pairs"][0]
        lines += ["", f"First pair: `{p['steps'][k - 1]}` ({p['scores'][k - 1]:.3f}) -> "
                  f"`{p['corrupted'][k - 1]}` ({p['corrupted_scores'][k - 1]:.3f})."]
    return "\n".join(lines) + "\n"


def check_config(cfg):
    """Bad flags fail here, before any file or model is read."""
    common.require(cfg.n >= 1, f"--n {cfg.n}: must be >= 1")
    common.require(cfg.step >= 1, f"--step {cfg.step}: must be >= 1 (1-based work step)")
    common.require(cfg.delta != 0, "--delta 0: the corrupted step would equal the correct one")
    common.require(cfg.rm_batch_size >= 1, f"--rm-batch-size {cfg.rm_batch_size}: must be >= 1")
    if cfg.policy_samples:
        common.require(os.path.isfile(cfg.policy_samples), f"--policy-samples {cfg.policy_samples!r}: no such file "
                       "(write one with `python evaluate.py ... --out-dir DIR`: DIR/samples.jsonl)")


def main(argv=None):
    cfg = common.parse_config(Config, argv)
    check_config(cfg)
    print(json.dumps(dataclasses.asdict(cfg)), flush=True)
    t0 = time.time()
    # 1.-2. correct solutions and their corrupted copies
    sources = policy_sources(cfg.policy_samples) if cfg.policy_samples else gold_sources(cfg)
    pairs, skipped = make_pairs(sources, cfg.step, cfg.delta, cfg.n)
    if not pairs:
        raise common.RunError(f"no correct solution with a work step {cfg.step} holding '= <number>' "
                              f"(left out: {skipped}); try a smaller --step")
    rm = rewards.load_reward_model_or_exit(common.model_source(cfg.prm, "--prm", "train one with prm_train.py"),
                                           "prm", shown=cfg.prm, step_tag=cfg.step_tag or None,
                                           device=None if cfg.device == "auto" else cfg.device)
    # 3.-4. one batched PRM call, then the comparison
    res = verify(pairs, lambda qs, steps: rewards.score_responses(rm, qs, steps, cfg.rm_batch_size), cfg.step)
    res.update(skipped=skipped, split=None if cfg.policy_samples else common.eval_split(cfg.dataset, cfg.split),
               config=dataclasses.asdict(cfg), wall_seconds=time.time() - t0)
    # 5. output
    out = os.path.join(ROOT, cfg.out_dir)  # an absolute --out-dir stays as given
    os.makedirs(out, exist_ok=True)
    md = markdown(res, cfg)
    print(md, flush=True)
    with open(os.path.join(out, "verifier.md"), "w", encoding="utf-8") as fh:
        fh.write(md)
    with open(os.path.join(out, "verifier.json"), "w", encoding="utf-8") as fh:
        json.dump(res, fh, indent=1, ensure_ascii=False)
    print(f"wrote {out}/verifier.md and verifier.json in {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    common.run_main(main)
