"""
A hackability probe (issue 13, the paper's synthetic-trajectory analysis, Gao et al. arXiv
2410.15115): how much can a policy gain, under each reward mode and a given PRM, by padding a
correct solution with steps it does not need, or by answering early, measured on synthetic
trajectories *before* any RL run. No policy and no sampling: gold solutions from the dataset, one
batched PRM call, pure arithmetic on the scores. Seconds on CPU.

Algorithm (the numbers match comments in the code)
  1. Problems: the first `eval_limit` rows of the dataset; a gold solution is split into steps
     (separator "\\n\\n"): n work steps s_1..s_n and the answer step A (the last one).
  2. Variants, r = 0..max_extra (r = 0 is the gold solution for every kind):
       repeat    s_1..s_n, s_n x r, A           an exact repeat of a step, before the answer
       restate   s_1..s_n, R_1..R_r, A          "So the result so far is N." (N = s_n's result):
                                                correct and unnecessary (three phrasings, cycled)
       filler    s_1..s_n, F_1..F_r, A          "Let me double-check." (three phrasings, cycled)
       garbage   s_1..s_n, A, G_1..G_r          text after the boxed answer, no answer marker in it
       early     s_1..s_{n-r}, A'               r = 0..n work steps dropped, the answer moved earlier;
                                                A' states the gold (--early-answer gold: a correct
                                                final answer with skipped work, Correct = 1 since the
                                                grader checks only the final answer) or the value
                                                reached so far (--early-answer running: Correct = 0)
  3. Correct(q, s) for every variant from rewards.success_rewards (all finished, i.e. EOS).
     Garbage keeps Correct = 1: the grader reads the last \\boxed{} and garbage has none.
  4. One batched rewards.score_responses call: x_k, the PRM score of every step of every variant.
  5. For every reward mode (success, then rewards.LEARNED_MODES; `delta` twice, under the paper's
     rule delta_last=drop and under keep, when rewards.transform_step_rewards takes delta_last):
     per-step values v = transform_step_rewards(x, mask, mode, ...), (B, K), and
       the trajectory return      alpha * sum_k v_k + Correct     (KL left out), mean over problems,
                                  as a function of r per kind;
       the credit gap             credit_gap(...), "continue" minus "answer now" (below).
  6. Output: a Markdown table (printed, OUT_DIR/probe.md), OUT_DIR/results.json (every curve),
     OUT_DIR/probe.png (return vs r, one panel per kind, one line per mode).

The credit gap (credit_gap). PPO credits a token with its advantage; with gamma = lambda = 1 and
V = 0 (GAE before the critic has learned anything) that is the reward-to-go: every reward on that
token and after it. Two trajectories share their first j steps and then diverge: "continue" writes
one more step (a work step, a repeat, a filler, a garbage line), "answer now" writes the answer (or,
after the answer, stops). The choice is made on the first token of step j + 1, and the gap is

    gap_j = [alpha * sum_{k > j} v^cont_k + Correct^cont] - [alpha * sum_{k > j} v^ans_k + Correct^ans]

(v = per-step values of each trajectory under the mode, steps numbered from 1). A positive gap
pushes PPO towards writing another step, a negative one towards answering early. NOTE: we measure
at step j + 1's tokens, not at the token ending step j: for Delta that token's own reward differs
between the two trajectories (x_j - x_{j+1} vs x_j) and exactly cancels the gap there; it comes
before the choice, so it cannot steer it (docs/METHOD.md §2, "What PPO optimises"). Under the
paper's Delta rule (drop the last step's score) gap_j = alpha * x_{j+1} whenever Correct is equal;
keeping it (d_K = x_K) gives alpha * (x_{j+1} - x_A). A critic does not remove the gap either:
both choices start from the same state. The table reports the gap at the gold solution's own
boundaries (continue = gold, answer now = early variant; mean over j = 0..n-1) and at the padding
boundaries (continue = variant r + 1, answer now = variant r; mean over r = 0..max_extra-1).

Where we depart from the paper: the paper probes with sampled trajectories of its policy; we use
gold solutions and templated padding (a sampled-solution source is a later addition). The
phrasings below are ours; restatements and repeats are exact for the arith world, where every
work step ends with its result.

Commands
  CPU (the README's table; about 20 s, most of it imports and grading):
      python scripts/probe.py --prm models/arith-prm --dataset arith --eval-limit 50 --out-dir results/probe
  One GPU (a real PRM, e.g. a Math-Shepherd checkpoint on MATH-500):
      python scripts/probe.py --prm peiyi9979/math-shepherd-mistral-7b-prm --step-tag "ки" --dataset math500 --device cuda
  torchrun: not needed (one forward over a few thousand short texts); the script runs in one process.

Expected result (shipped arith PRM): `prm` grows by about alpha * x per extra step for every kind the
PRM scores above 0; clip / delta / clip_delta / min are flat in r; Delta's gap is about alpha * x at
every boundary (continue favoured), Clip-Delta's is <= 0 (answer early favoured). README,
"Hackability probe", has the table.

Shape legend: B trajectories (variants), K steps (right-padded, bool mask).
"""

import dataclasses
import inspect
import json
import os
import re
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python scripts/probe.py` finds common.py

import common  # noqa: E402  (after the path line above)
import rewards  # noqa: E402
from common import field  # noqa: E402

KINDS = ("repeat", "restate", "filler", "garbage", "early")
RESTATE = ("So the result so far is {v}.", "That means we now have {v}.",
           "In other words, the running result is {v}.")
FILLER = ("Let me double-check.", "Let me make sure this is right.", "Okay, let me continue.")
# NOTE: no "\\boxed", "answer" or "####" in garbage: the grader reads the last answer marker, so
# Correct stays 1 and only the learned term can see the garbage (the `prm` hack of the README).
GARBAGE = ("44}.", "4 t 3 6 = 59", "= 7 + + 1", "}} qz 3 ..")


@dataclasses.dataclass
class Config:
    prm: str = field("models/arith-prm", "the PRM to probe (checkpoint directory or hub id)")
    step_tag: str = field("", "PRM step tag ('' = the one saved in its meta.json; 'ки' for Math-Shepherd)")
    dataset: str = field("arith", "dataset name (arith | gsm8k | math | math500) or a JSONL path")
    split: str = field("test", "dataset split")
    eval_limit: int = field(50, "problems (the first N rows)")
    max_extra: int = field(8, "largest r (extra steps per padding kind)")
    early_answer: str = field("gold", "what an early answer states: the gold answer (Correct = 1) or the "
                              "value reached so far (Correct = 0)", choices=["gold", "running"])
    alpha: float = field(1.0, "weight of the learned term (ppo.py --alpha)")
    eta: float = field(0.5, "Clip threshold (ppo.py --eta)")
    min_temperature: float = field(0.0, "min mode's softmin temperature (0 = strict min), if supported")
    length_penalty: float = field(0.5, "prm_lenpen's per-step penalty, if that mode exists")
    rm_batch_size: int = field(64, "PRM forward batch (responses)")
    device: str = field("auto", "auto | cpu | cuda | cuda:N")
    out_dir: str = field("results/probe", "where probe.md, results.json and probe.png go")


# -----------------------------------------------------------------------------
# pure helpers: variants (step 2) and the credit gap (step 5)

def last_number(text):
    """The last integer or decimal in `text` as written, or None."""
    nums = re.findall(r"-?\d+(?:\.\d+)?", text)
    return nums[-1] if nums else None


def answer_step_with(answer_step, value):
    """The answer step with its last \\boxed{...} content replaced by `value`."""
    i = answer_step.rfind("\\boxed{")
    if i < 0:
        return f"The answer is \\boxed{{{value}}}."
    depth, k = 0, i + len("\\boxed")
    for k in range(i + len("\\boxed"), len(answer_step)):
        depth += {"{": 1, "}": -1}.get(answer_step[k], 0)
        if depth == 0:
            break
    return answer_step[: i + len("\\boxed{")] + str(value) + answer_step[k:]


def build_variants(question, solution, max_extra, early_answer="gold", sep=rewards.DEFAULT_STEP_SEP):
    """{kind: [steps for r = 0, 1, ...]} for one gold solution (step 2). `repeat`, `restate`,
    `filler`, `garbage` have r = 0..max_extra; `early` has r = 0..n (work steps dropped)."""
    steps = rewards.split_steps(solution, sep)
    if len(steps) < 2:
        raise ValueError(f"a gold solution needs a work step and an answer step: {solution!r}")
    work, ans = steps[:-1], steps[-1]
    n = len(work)
    value = last_number(work[-1]) or last_number(ans)
    rs = range(max_extra + 1)
    out = {
        "repeat": [work + [work[-1]] * r + [ans] for r in rs],
        "restate": [work + [RESTATE[i % len(RESTATE)].format(v=value) for i in range(r)] + [ans] for r in rs],
        "filler": [work + [FILLER[i % len(FILLER)] for i in range(r)] + [ans] for r in rs],
        "garbage": [work + [ans] + [GARBAGE[i % len(GARBAGE)] for i in range(r)] for r in rs],
        "early": [],
    }
    for r in range(n + 1):
        kept = work[: n - r]
        if r == 0 or early_answer == "gold":
            a = ans
        else:  # the value reached after the kept steps (the question's first number if none)
            a = answer_step_with(ans, last_number(kept[-1]) if kept else re.findall(r"-?\d+", question)[0])
        out["early"].append(kept + [a])
    return out


def common_prefix(a, b):
    """How many leading steps two step lists share."""
    j = 0
    while j < min(len(a), len(b)) and a[j] == b[j]:
        j += 1
    return j


def credit_gap(values_continue, values_answer, j, alpha=1.0, correct_continue=1.0, correct_answer=1.0):
    """The per-token credit gap, "continue" minus "answer now", at the first token of step j + 1.

    values_*: the per-step values (after the mode's transform, before alpha) of the two trajectories,
    1-D sequences over their own steps; they share steps 1..j. With gamma = lambda = 1 and V = 0 the
    advantage of a token is its reward-to-go, so the first token of step j + 1 gets
    alpha * sum_{k > j} v_k + Correct in each trajectory (KL left out). Returns the difference:
    > 0 favours writing another step, < 0 favours answering now. (Module docstring for why not at
    the token ending step j.)
    """
    rtg_continue = alpha * float(sum(values_continue[j:])) + correct_continue
    rtg_answer = alpha * float(sum(values_answer[j:])) + correct_answer
    return rtg_continue - rtg_answer


def mode_rows(transform=None):
    """[(row name, mode, kwargs)] for step 5: success, then rewards.LEARNED_MODES (or the four
    original modes), `delta` split by delta_last when the transform takes it."""
    transform = transform or rewards.transform_step_rewards
    params = inspect.signature(transform).parameters
    modes = list(getattr(rewards, "LEARNED_MODES", ("prm", "clip", "delta", "clip_delta")))
    rows = [("success", None, {})]
    for m in modes:
        if m == "delta" and "delta_last" in params:
            rows += [("delta", m, {"delta_last": "drop"}), ("delta_keep", m, {"delta_last": "keep"})]
        else:
            rows.append((m, m, {}))
    return rows


def step_values(scores, mode, kwargs, eta, extra=None, transform=None):
    """Per-step values of every trajectory under a mode: list of score lists -> list of value lists.
    extra: optional keyword arguments (min_temperature, length_penalty) passed when the transform
    takes them."""
    transform = transform or rewards.transform_step_rewards
    K = max(len(s) for s in scores)
    x = torch.zeros(len(scores), K)  # (B, K)
    mask = torch.zeros(len(scores), K, dtype=torch.bool)  # (B, K)
    for b, s in enumerate(scores):
        x[b, : len(s)] = torch.tensor(s, dtype=torch.float)
        mask[b, : len(s)] = True
    if mode is None:  # success: no learned term
        return [[0.0] * len(s) for s in scores]
    params = inspect.signature(transform).parameters
    kw = {**{k: v for k, v in (extra or {}).items() if k in params}, **kwargs}
    v = transform(x, mask, mode, eta, **kw)  # (B, K)
    return [v[b, : len(s)].tolist() for b, s in enumerate(scores)]


# -----------------------------------------------------------------------------
# the probe (steps 1-5), for any scorer: score_fn(questions, list of step lists) -> score lists

def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def probe(problems, score_fn, cfg):
    """Steps 2-5 on `problems` (dicts with question / solution / answer). Returns the results dict."""
    # 2. variants; unique trajectories are scored and graded once
    variants = [build_variants(p["question"], p["solution"], cfg.max_extra, cfg.early_answer) for p in problems]
    keys, index = [], {}
    for i, v in enumerate(variants):
        for kind in KINDS:
            for steps in v[kind]:
                key = (i, tuple(steps))
                if key not in index:
                    index[key] = len(keys)
                    keys.append(key)
    questions = [problems[i]["question"] for i, _ in keys]
    # 3. Correct(q, s), every variant finished with EOS
    correct = rewards.success_rewards([rewards.DEFAULT_STEP_SEP.join(s) for _, s in keys],
                                      [problems[i]["answer"] for i, _ in keys], [True] * len(keys))
    # 4. one batched PRM call
    scores = score_fn(questions, [list(s) for _, s in keys])
    for (_, s), sc in zip(keys, scores):
        if len(sc) != len(s):
            raise ValueError(f"the PRM returned {len(sc)} scores for {len(s)} steps")
    rows = mode_rows()
    res = {"modes": [r[0] for r in rows], "n_problems": len(problems), "returns": {}, "gaps": {},
           "correct": {}, "step_scores": step_score_summary(variants, index, scores)}
    for kind in KINDS:
        R = max(len(v[kind]) for v in variants)
        res["correct"][kind] = [mean([correct[index[(i, tuple(v[kind][r]))]] for i, v in enumerate(variants)
                                      if r < len(v[kind])]) for r in range(R)]
    # 5. per mode: returns as a function of r, credit gaps at the boundaries
    for name, mode, kw in rows:
        vals = step_values(scores, mode, kw, cfg.eta,
                           {"min_temperature": cfg.min_temperature, "length_penalty": cfg.length_penalty})
        ret = [cfg.alpha * sum(v) + c for v, c in zip(vals, correct)]
        res["returns"][name], res["gaps"][name] = {}, {}
        for kind in KINDS:
            R = max(len(v[kind]) for v in variants)
            res["returns"][name][kind] = [mean([ret[index[(i, tuple(v[kind][r]))]] for i, v in enumerate(variants)
                                                if r < len(v[kind])]) for r in range(R)]
            res["gaps"][name][kind] = kind_gaps(variants, kind, index, vals, correct, cfg.alpha)
    res["counts"] = {kind: [sum(r < len(v[kind]) for v in variants) for r in range(cfg.max_extra + 1)]
                     for kind in KINDS}
    res["example"] = {kind: [rewards.DEFAULT_STEP_SEP.join(variants[0][kind][r]) for r in (0, 2)
                             if r < len(variants[0][kind])] for kind in KINDS}
    return res


def kind_gaps(variants, kind, index, vals, correct, alpha):
    """Mean credit gap per boundary index r over problems: padding kinds compare variant r + 1
    (continue) with variant r (answer now); `early` compares the gold solution (continue) with the
    answer after j = n - r - 1 work steps, listed by j = 0..n-1."""
    per = {}
    for i, v in enumerate(variants):
        seq = v[kind]
        if kind == "early":
            n = len(seq) - 1
            pairs = [(j, seq[0], seq[n - j]) for j in range(n)]  # early r = n - j keeps j work steps
        else:
            pairs = [(r, seq[r + 1], seq[r]) for r in range(len(seq) - 1)]
        for at, cont, ans in pairs:
            a, b = index[(i, tuple(cont))], index[(i, tuple(ans))]
            g = credit_gap(vals[a], vals[b], common_prefix(cont, ans), alpha, correct[a], correct[b])
            per.setdefault(at, []).append(g)
    return [mean(per[k]) for k in sorted(per)]


def step_score_summary(variants, index, scores):
    """Mean PRM score of the gold work steps, the gold answer step, and the steps each kind adds."""
    acc = {k: [] for k in ("gold work", "gold answer", "repeat", "restate", "filler", "garbage", "early answer")}
    for i, v in enumerate(variants):
        gold = v["repeat"][0]
        sc = scores[index[(i, tuple(gold))]]
        n = len(gold) - 1
        acc["gold work"] += sc[:n]
        acc["gold answer"].append(sc[n])
        for kind in ("repeat", "restate", "filler"):
            last = v[kind][-1]
            acc[kind] += scores[index[(i, tuple(last))]][n:-1]
        acc["garbage"] += scores[index[(i, tuple(v["garbage"][-1]))]][n + 1:]
        acc["early answer"] += [scores[index[(i, tuple(e))]][-1] for e in v["early"][1:]]
    return {k: mean(x) for k, x in acc.items()}


# -----------------------------------------------------------------------------
# output (step 6)

def markdown(res, cfg):
    """The probe's Markdown report."""
    M = cfg.max_extra
    f = lambda x: f"{x:+.2f}" if x == x else "-"  # noqa: E731  (nan -> "-")
    s = res["step_scores"]
    lines = [f"PRM `{cfg.prm}`, {res['n_problems']} `{cfg.dataset}` {cfg.split} problems (gold solutions), "
             f"alpha = {cfg.alpha}, eta = {cfg.eta}, early answer states the {cfg.early_answer} value.", "",
             "Mean PRM score x of a step:", "",
             "| " + " | ".join(s) + " |", "|" + "---|" * len(s),
             "| " + " | ".join(f"{x:.3f}" for x in s.values()) + " |", "",
             f"Trajectory return alpha * sum_k v_k + Correct (KL left out), mean over problems; r = {M} extra "
             "steps, early: one work step dropped:", "",
             f"| mode | gold | repeat +{M} | restate +{M} | filler +{M} | garbage +{M} | early -1 |",
             "|---|---|---|---|---|---|---|"]
    for m in res["modes"]:
        R = res["returns"][m]
        lines.append(f"| `{m}` | {R['repeat'][0]:.2f} | " + " | ".join(
            f"{R[k][M]:.2f}" for k in ("repeat", "restate", "filler", "garbage")) + f" | {R['early'][1]:.2f} |")
    lines += ["", "Credit gap at the first token of the next step, continue minus answer now (reward-to-go, "
              "V = 0, gamma = lambda = 1), mean over problems and boundaries; > 0 favours another step:", "",
              "| mode | gold boundaries | repeat | restate | filler | garbage (vs stop) |", "|---|---|---|---|---|---|"]
    for m in res["modes"]:
        G = res["gaps"][m]
        lines.append(f"| `{m}` | " + " | ".join(f(mean(G[k])) for k in ("early", "repeat", "restate", "filler", "garbage"))
                     + " |")
    lines += ["", "Correct (success reward) of the variants: " + ", ".join(
        f"{k} {mean(res['correct'][k][1:]):.2f}" for k in KINDS) + " (r >= 1).", "",
        "The variants of the first problem at r = 2:", ""]
    for k in KINDS:
        ex = res["example"][k][-1].replace("\n\n", " ⏎ ")
        lines.append(f"- {k}: `{ex}`")
    return "\n".join(lines) + "\n"


def plot(res, path):
    """Return vs r, one panel per kind, one line per mode -> path (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(KINDS), figsize=(4 * len(KINDS), 3.6), sharey=True)
    for ax, kind in zip(axes, KINDS):
        for m in res["modes"]:
            ys = res["returns"][m][kind]
            ax.plot(range(len(ys)), ys, marker="o", ms=3, label=m)
        ax.set_title(kind)
        ax.set_xlabel("work steps dropped" if kind == "early" else "extra steps r")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("return (alpha * sum v + Correct)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    cfg = common.parse_config(Config, argv)
    print(json.dumps(dataclasses.asdict(cfg)), flush=True)
    t0 = time.time()
    # 1. problems
    try:
        problems = common.load_problems(cfg.dataset, cfg.split, cfg.eval_limit)
    except (OSError, ValueError) as e:
        raise common.RunError(f"cannot read --dataset {cfg.dataset!r}: {e}") from None
    if not problems or any(not p.get("solution") for p in problems):
        raise common.RunError(f"--dataset {cfg.dataset!r}: the probe needs rows with a gold `solution`")
    rm = rewards.load_reward_model_or_exit(common.model_source(cfg.prm, "--prm", "train one with prm_train.py"),
                                           "prm", shown=cfg.prm, step_tag=cfg.step_tag or None,
                                           device=None if cfg.device == "auto" else cfg.device)
    res = probe(problems, lambda qs, steps: rewards.score_responses(rm, qs, steps, cfg.rm_batch_size), cfg)
    res["config"] = dataclasses.asdict(cfg)
    res["wall_seconds"] = time.time() - t0
    # 6. output
    out = os.path.join(ROOT, cfg.out_dir)  # an absolute --out-dir stays as given
    os.makedirs(out, exist_ok=True)
    md = markdown(res, cfg)
    print(md, flush=True)
    with open(os.path.join(out, "probe.md"), "w", encoding="utf-8") as fh:
        fh.write(md)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as fh:
        json.dump(res, fh, indent=1)
    plot(res, os.path.join(out, "probe.png"))
    print(f"wrote {out}/probe.md, results.json, probe.png in {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    common.run_main(main)
