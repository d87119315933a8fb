"""
Evaluate a policy on arith / GSM8K / MATH the way the paper reports it (METHOD §6): greedy accuracy,
sampling accuracy at temperature 1.0, pass@k, maj@k, best-of-N reranked by a PRM or an ORM (the
"reward models are strong at inference time" half of the paper), and the reward-hacking
diagnostics (response length, steps per response, repeated steps). A second mode draws training
curves from ppo.py's metrics.jsonl files side by side.

Algorithm (the numbers match comments in the code)
  1. Load problems with rewards.load_problems (arith, gsm8k, math, math500 or a .jsonl path) and
     build every prompt with rewards.build_prompt. Under torchrun each rank takes problems[rank::W].
  2. Generate, batched with left padding, sorted by prompt length: one greedy response per
     problem and n samples at --temperature (plain softmax: no top-k, no repetition penalty).
  3. Grade every response: rewards.extract_answer for the answer, rewards.grade_batch (is_correct,
     optionally in worker processes) for correctness. A truncated response (no EOS within
     --max-new-tokens) is incorrect (METHOD §4); a response whose grading raises is incorrect and
     counted in `grading_errors`; nothing crashes the run.
  4. Diagnostics per response: tokens (EOS included), steps (rewards.split_steps), repeated steps
     (identical, after whitespace normalisation, to an earlier step of the same response),
     truncated, no extractable answer.
  5. Optional reward models (--prm, --orm, via rewards.load_reward_model): score every response,
     batched, one forward per response. A PRM gives one value per step, an ORM one value.
  6. Gather on rank 0 and aggregate:
       greedy_accuracy     mean over problems of the greedy response's correctness
       sampling_accuracy   mean over problems and the n samples
       pass@k              unbiased estimator of Chen et al. 2021: 1 - C(n-c, k) / C(n, k)
       maj@k               majority vote over k samples, averaged over the n // k disjoint chunks
       best_of_n_prm       the sample with the highest aggregated PRM score (min | product | last
                           step; all three are reported, --prm-agg picks the headline), vs greedy
                           and maj@n on the same samples; best_of_n_orm likewise with the ORM.
  7. Print a table; write OUT_DIR/results.json (every figure and the config) and
     OUT_DIR/samples.jsonl (one line per response: question, response, extracted answer, correct,
     PRM step scores, ORM score, diagnostics).
  P. Plot mode (--plot A/metrics.jsonl B/metrics.jsonl): reward, accuracy, response tokens, steps
     per response and repeated-step fraction vs step, one panel per key that exists, one line per
     run labelled by its directory -> OUT_DIR/curves.png.

Decisions (not in the paper)
  - maj@k votes on the extracted answer with whitespace removed; truncated responses and responses
    without an answer do not vote (no vote at all -> incorrect). Tie rule: among the answers with
    the most votes, the one voted first (lowest sample index) wins.
  - best-of-N: ties go to the earliest sample; a response with no steps scores -inf.
  - The headline diagnostics (mean_response_tokens, ...) are over the greedy responses (the
    samples with --greedy false); the same figures over the samples are the sampling_* keys.

Commands
  CPU smoke run:  python evaluate.py --policy models/arith-policy --limit 50 --samples 4
  Best-of-N:      python evaluate.py --policy models/arith-policy --samples 8 \\
                      --prm models/arith-prm --orm models/arith-orm --out-dir out/eval-bon
  One GPU:        python evaluate.py --policy Qwen/Qwen2-1.5B-Instruct --dataset math500 \\
                      --samples 8 --max-new-tokens 1024 --out-dir out/eval-math500
  8 GPUs:         torchrun --nproc_per_node=8 evaluate.py --policy Qwen/Qwen2-1.5B-Instruct \\
                      --dataset math --samples 8 --max-new-tokens 1024 --grade-processes 4 \\
                      --prm peiyi9979/math-shepherd-mistral-7b-prm --step-tag "ки"
  Plots:          python evaluate.py --plot runs/prm/metrics.jsonl runs/clip_delta/metrics.jsonl \\
                      --out-dir out/plots

Sampling is reproducible for a fixed --seed, --batch-size and process count (not bit-exact across
GPU kernels or bf16).

Expected: models/arith-policy on the arith test split (greedy + 8 samples, ~5-10 min on 2 CPU
cores): greedy_accuracy ~0.6, sampling_accuracy ~0.5, pass@8 ~0.8, maj@8 ~0.6, ~72 response tokens,
~4 steps, no repeated steps or truncations (README has the measured figures). A random policy
scores 0 with truncated_fraction ~1.

Shapes: B sequences in a generate batch, P prompt tokens (left-padded), T generated tokens,
n samples per problem, K steps of a response.
"""

import argparse
import json
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.distributed as dist
from tqdm import tqdm

import rewards


def opt(default, help):
    """A Config field with its --help text (lists get a fresh default per instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # policy and data
    policy: str = opt("models/arith-policy", "policy: checkpoint directory or hub id")
    dataset: str = opt("arith", f"one of {', '.join(rewards.DATASETS)}, or a path to a .jsonl file")
    split: str = opt("test", "split of a named dataset (data/<name>/<split>.jsonl)")
    limit: int = opt(0, "evaluate the first N problems only (0 = all)")
    # generation
    greedy: bool = opt(True, "decode one greedy response per problem (--greedy false to skip)")
    samples: int = opt(8, "n samples per problem at --temperature (0 = none); pass@k / maj@k use them")
    temperature: float = opt(1.0, "sampling temperature (the paper's sampling accuracy uses 1.0)")
    top_p: float = opt(1.0, "nucleus sampling threshold (1.0 = off)")
    max_new_tokens: int = opt(512, "generation length limit in tokens; hitting it = truncated")
    batch_size: int = opt(256, "sequences per generate() call (per rank); larger amortises CPU overhead")
    # reward models (best-of-N)
    prm: str = opt("", "PRM checkpoint dir or hub id for best-of-N ('' = none)")
    orm: str = opt("", "ORM checkpoint dir or hub id for best-of-N ('' = none)")
    prm_agg: str = opt("min", "PRM aggregation for the headline best_of_n_prm: min | product | last")
    step_tag: str = opt("", "reward-model step tag ('' = the tag saved with our checkpoints)")
    pos_token: str = opt("+", "reward-model positive label token")
    neg_token: str = opt("-", "reward-model negative label token")
    rm_batch_size: int = opt(16, "responses per reward-model score() call")
    grade_processes: int = opt(1, "grading worker processes per rank (1 = serial; MATH: a few per rank)")
    # runtime and output
    out_dir: str = opt("out/eval", "where results.json / samples.jsonl / curves.png go")
    seed: int = opt(0, "sampling seed (rank r uses seed + r)")
    device: str = opt("", "cpu | cuda | cuda:N ('' = auto)")
    # plot mode
    plot: list = opt([], "plot mode: metrics.jsonl files (or run dirs) to draw side by side")
    plot_smooth: int = opt(1, "plot mode: moving-average window in steps (1 = raw)")


def parse_bool(s):
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def parse_config(argv=None):
    """Config fields -> --flag value options (underscores -> dashes); unknown flags are errors."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Config()
    for f in fields(Config):
        flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        helptext = f"{f.metadata['help']} (default: {default!r})"
        if f.type is bool:  # --flag, --flag true, --flag false (as in sft.py)
            p.add_argument(flag, type=parse_bool, nargs="?", const=True, default=default, help=helptext)
        elif f.type is list:
            p.add_argument(flag, nargs="+", default=default, metavar="PATH", help=helptext)
        else:
            p.add_argument(flag, type=f.type, default=default, help=helptext)
    return Config(**vars(p.parse_args(argv)))


# -----------------------------------------------------------------------------
# Pure helpers (unit-tested against brute force in test_evaluate.py)

PRM_AGGS = ("min", "product", "last")


def pass_at_k(n, c, k):
    """Unbiased pass@k (Chen et al. 2021, eq. 1): 1 - C(n-c, k) / C(n, k), n samples, c correct.

    NOTE: computed as a running product, 1 - prod_{i=n-c+1}^{n} (1 - k / i); the binomials overflow
    floats for n in the hundreds.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def vote_key(answer):
    """The string an answer votes with: whitespace removed ('x = 3' and 'x=3' agree)."""
    return None if answer is None else "".join(str(answer).split())


def majority_vote(answers):
    """Index of the winning vote among `answers` (None = no vote), or None when nobody voted.

    Tie rule: among the keys with the most votes, the one voted first wins, and its first voter's
    index is returned (so the grade of that response is the grade of the majority answer).
    """
    keys = [vote_key(a) for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(i for i, k in enumerate(keys) if k is not None and counts[k] == top)


def maj_at_k(answers, correct, k):
    """maj@k of one problem: majority-vote accuracy averaged over the n // k disjoint chunks of
    k consecutive samples (all n samples used once when k divides n). Voters are `answers`
    (None = does not vote); `correct[i]` grades sample i."""
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n} k={k}")
    hits = []
    for start in range(0, n - k + 1, k):
        w = majority_vote(answers[start:start + k])
        hits.append(0.0 if w is None else float(correct[start + w]))
    return sum(hits) / len(hits)


def normalize_step(step):
    """Whitespace-normalised step text: runs of whitespace collapse to one space."""
    return " ".join(step.split())


def repeated_step_count(steps):
    """How many steps are identical (after whitespace normalisation) to an earlier step."""
    seen, repeated = set(), 0
    for s in steps:
        key = normalize_step(s)
        repeated += key in seen
        seen.add(key)
    return repeated


def aggregate_prm(step_scores, how):
    """One score per response from its PRM step scores: min, product or last; -inf if no steps."""
    if how not in PRM_AGGS:
        raise ValueError(f"unknown PRM aggregation {how!r} (expected one of {', '.join(PRM_AGGS)})")
    if not step_scores:
        return -math.inf
    if how == "min":
        return min(step_scores)
    if how == "product":
        return math.prod(step_scores)
    return step_scores[-1]


def best_of_n(scores):
    """Index of the highest score; ties go to the earliest sample."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def ks_for(n):
    """The k measured for n samples: powers of two below n, and n itself."""
    return sorted({2 ** j for j in range(n.bit_length()) if 2 ** j < n} | {n}) if n > 0 else []


def diagnostics(recs, prefix=""):
    """Hacking diagnostics over response records (dicts from measure)."""
    if not recs:
        return {}
    steps = sum(r["steps"] for r in recs)
    return {
        f"{prefix}mean_response_tokens": sum(r["response_tokens"] for r in recs) / len(recs),
        f"{prefix}steps_per_response": steps / len(recs),
        # pooled over steps: repeated steps / all steps of all responses
        f"{prefix}repeated_step_fraction": sum(r["repeated_steps"] for r in recs) / max(steps, 1),
        f"{prefix}truncated_fraction": sum(r["truncated"] for r in recs) / len(recs),
        f"{prefix}no_answer_fraction": sum(r["answer"] is None for r in recs) / len(recs),
    }


def summarize(records, prm_agg="min"):
    """Every figure of results.json from the response records of all problems (step 6)."""
    greedy = [r for r in records if r["kind"] == "greedy"]
    by_problem = {}
    for r in records:
        if r["kind"] == "sample":
            by_problem.setdefault(r["problem"], []).append(r)
    groups = [sorted(g, key=lambda r: r["sample"]) for _, g in sorted(by_problem.items())]
    n = len(groups[0]) if groups else 0
    if any(len(g) != n for g in groups):
        raise ValueError("every problem must have the same number of samples")
    res = {"n_problems": len({r["problem"] for r in records}), "n_samples": n,
           "greedy_accuracy": sum(r["correct"] for r in greedy) / len(greedy) if greedy else None,
           "sampling_accuracy": (sum(r["correct"] for g in groups for r in g) / (n * len(groups))
                                 if n else None)}
    for k in ks_for(n):
        res[f"pass@{k}"] = sum(pass_at_k(n, sum(r["correct"] for r in g), k) for g in groups) / len(groups)
    for k in ks_for(n):
        res[f"maj@{k}"] = sum(maj_at_k([None if r["truncated"] else r["answer"] for r in g],
                                       [r["correct"] for r in g], k) for g in groups) / len(groups)
    if n and all(r.get("prm_step_scores") is not None for g in groups for r in g):
        for how in PRM_AGGS:
            picks = [g[best_of_n([aggregate_prm(r["prm_step_scores"], how) for r in g])] for g in groups]
            res[f"best_of_n_prm_{how}"] = sum(r["correct"] for r in picks) / len(groups)
        res["best_of_n_prm"] = res[f"best_of_n_prm_{prm_agg}"]
    if n and all("orm_score" in r for g in groups for r in g):
        picks = [g[best_of_n([-math.inf if r["orm_score"] is None else r["orm_score"] for r in g])]
                 for g in groups]
        res["best_of_n_orm"] = sum(r["correct"] for r in picks) / len(groups)
    samples = [r for g in groups for r in g]
    res.update(diagnostics(greedy or samples))
    res.update(diagnostics(samples, prefix="sampling_"))
    res["grading_errors"] = sum(r["grading_error"] is not None for r in records)
    return res


# -----------------------------------------------------------------------------
# Generation, grading, reward-model scoring

@torch.no_grad()
def generate(model, prompt_ids, *, do_sample, temperature, top_p, max_new_tokens, batch_size,
             pad_id, eos_ids, desc="generate", disable=False):
    """Responses for a list of tokenized prompts: list of (token ids, EOS included; truncated).

    Prompts are sorted by length so a batch holds similar lengths, then left-padded (generation
    appends on the right, so every row's last prompt token sits at the same position).
    """
    from transformers import GenerationConfig

    gen_cfg = GenerationConfig(do_sample=do_sample, max_new_tokens=max_new_tokens,
                               pad_token_id=pad_id, eos_token_id=sorted(eos_ids),
                               **(dict(temperature=temperature, top_p=top_p, top_k=0,
                                       repetition_penalty=1.0) if do_sample else {}))
    device = next(model.parameters()).device
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    out = [None] * len(prompt_ids)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=disable):
        idx = order[start:start + batch_size]
        P = max(len(prompt_ids[i]) for i in idx)
        ids = torch.full((len(idx), P), pad_id, dtype=torch.long)  # (B, P)
        attn = torch.zeros((len(idx), P), dtype=torch.long)  # (B, P)
        for row, i in enumerate(idx):
            ids[row, P - len(prompt_ids[i]):] = torch.tensor(prompt_ids[i])
            attn[row, P - len(prompt_ids[i]):] = 1
        seq = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                             generation_config=gen_cfg)  # (B, P + T)
        for row, i in enumerate(idx):
            toks = seq[row, P:].tolist()  # (T,)
            # NOTE: the response ends at the first EOS (kept, per the response_mask convention);
            # what follows is padding, and pad may equal EOS, so we never look for pad ids.
            end = next((t for t, tok in enumerate(toks) if tok in eos_ids), None)
            out[i] = (toks, True) if end is None else (toks[:end + 1], False)
    return out


def measure(response, truncated, n_tokens):
    """One response record without its grade: extracted answer and diagnostics (step 4)."""
    rec = {"response": response, "answer": None, "correct": False, "truncated": truncated,
           "response_tokens": n_tokens, "grading_error": None}
    try:
        rec["answer"] = rewards.extract_answer(response)
    except Exception as e:  # untrusted text: a failure is a response without an answer, counted
        rec["grading_error"] = f"extract_answer: {type(e).__name__}: {e}"
    steps = rewards.split_steps(response)
    rec["steps"], rec["repeated_steps"] = len(steps), repeated_step_count(steps)
    return rec


def response_records(jobs, gen, problems, tok):
    """One ungraded record per generated sequence: jobs[i] = (problem index, kind, sample index),
    gen[i] = (token ids, truncated) from generate. response_tokens counts the EOS of a finished
    response (the response_mask convention) and is max_new_tokens for a truncated one."""
    records = []
    for (i, kind, j), (toks, truncated) in zip(jobs, gen):
        rec = {"problem": i, "kind": kind, "sample": j, "question": problems[i]["question"],
               "gold": problems[i]["answer"]}
        rec.update(measure(tok.decode(toks, skip_special_tokens=True), truncated, len(toks)))
        records.append(rec)
    return records


def grade(records, processes=1, chunk=512, disable=False):
    """Set rec["correct"] on every record (step 3), with rewards.grade_batch in chunks.

    NOTE: a truncated response is incorrect whatever it contains (METHOD §4) and is not graded.
    grade_batch raises only on a gold it cannot parse; that chunk is then graded one by one and
    each failure is an incorrect response with its `grading_error` set, so the run goes on.
    """
    todo = [r for r in records if not r["truncated"] and r["grading_error"] is None]
    for start in tqdm(range(0, len(todo), chunk), desc="grade", disable=disable):
        part = todo[start:start + chunk]
        try:
            ok = rewards.grade_batch([r["response"] for r in part], [r["gold"] for r in part],
                                     processes=processes)
        except Exception:  # noqa: BLE001 -- fall back to one call per response, errors counted
            ok = []
            for r in part:
                try:
                    ok.append(bool(rewards.is_correct(r["response"], r["gold"])))
                except Exception as e:  # noqa: BLE001
                    r["grading_error"] = f"is_correct: {type(e).__name__}: {e}"
                    ok.append(False)
        for r, c in zip(part, ok):
            r["correct"] = bool(c)


def score_with_reward_model(rm, questions, responses, batch_size, desc, disable=False):
    """Per response the reward model's list of scores (PRM: one per step, ORM: one); [] when the
    response has no steps (nothing to score). Longest first so score() batches similar lengths."""
    out = [[] for _ in responses]
    todo = sorted((i for i, r in enumerate(responses) if rewards.split_steps(r)),
                  key=lambda i: -len(responses[i]))
    for start in tqdm(range(0, len(todo), batch_size), desc=desc, disable=disable):
        idx = todo[start:start + batch_size]
        scores = rm.score([questions[i] for i in idx], [responses[i] for i in idx])
        for i, s in zip(idx, scores):
            out[i] = [float(x) for x in s]
    return out


def looks_local_and_missing(path):
    """True for a path meant as a local directory that does not exist: absolute, ./ or ~ paths, or
    one whose first component is an existing local directory (models/arith-prm). Anything else
    may be a hub id. Checked before generating, so a typo does not cost a whole run."""
    if os.path.isdir(path):
        return False
    first = path.split("/", 1)[0]
    return path.startswith(("/", ".", "~")) or ("/" in path and os.path.isdir(first))


def load_reward_model(path, kind, cfg, device):
    """rewards.load_reward_model with the CLI's tag/token flags; bad paths end the run cleanly."""
    if not hasattr(rewards, "load_reward_model"):
        raise SystemExit("evaluate.py: rewards.load_reward_model is not available in this rewards.py")
    try:
        return rewards.load_reward_model(path, kind=kind, step_tag=cfg.step_tag or None,
                                         pos_token=cfg.pos_token, neg_token=cfg.neg_token,
                                         device=device)
    except (OSError, ValueError) as e:
        raise SystemExit(f"evaluate.py: cannot load the {kind.upper()} {path!r}: {e}")


# -----------------------------------------------------------------------------
# Plot mode (step P)

PLOT_PANELS = [  # (title, candidate keys, first one present wins)
    ("reward", ("reward/total", "reward/mean")),
    ("accuracy", ("rollout/accuracy", "reward/success", "eval/accuracy")),
    ("response tokens", ("rollout/response_tokens", "rollout/response_length")),
    ("steps / response", ("rollout/steps_per_response",)),
    ("repeated-step fraction", ("rollout/repeated_step_fraction",)),
    ("truncated fraction", ("rollout/truncated_fraction",)),
]


def read_metrics(path):
    """Rows of a metrics.jsonl (a run directory means DIR/metrics.jsonl). Lines that are not JSON
    objects (e.g. a half-written last line of a running job) are skipped with a warning."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"evaluate.py: {path} does not exist (expected a metrics.jsonl from ppo.py)")
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


def plot_runs(paths, out_path, smooth=1):
    """Training curves of several runs side by side; returns the list of keys plotted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_metrics(p) for p in paths]
    labels = [os.path.basename(os.path.dirname(os.path.abspath(p))) for p, _ in runs]
    if len(set(labels)) < len(labels):  # same leaf name: fall back to the full directory
        labels = [os.path.relpath(os.path.dirname(os.path.abspath(p))) for p, _ in runs]
    present = set().union(*(row.keys() for _, rows in runs for row in rows)) if runs else set()
    panels = [(title, next(k for k in keys if k in present)) for title, keys in PLOT_PANELS
              if any(k in present for k in keys)]
    used = {k for _, k in panels}
    extra = [k for k in sorted(present) if k.startswith("reward/") and k not in used]
    if not panels:  # not a ppo.py log (e.g. sft.py's): plot every metric but step and perf/*
        extra = [k for k in sorted(present) if k != "step" and not k.startswith("perf/")]
    panels += [(k, k) for k in extra][:9 - len(panels)]
    if not panels:
        raise SystemExit(f"evaluate.py: nothing to plot in {paths} (keys found: {sorted(present)})")
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


# -----------------------------------------------------------------------------
# Main

def print_table(res):
    print(f"{'metric':<34} value")
    for k, v in res.items():
        if isinstance(v, float):
            print(f"{k:<34} {v:.4f}")
        elif isinstance(v, (int, str)) or v is None:
            print(f"{k:<34} {v}")


def main(argv=None):
    cfg = parse_config(argv)
    if cfg.plot:  # step P
        out = os.path.join(cfg.out_dir, "curves.png")
        keys = plot_runs(cfg.plot, out, cfg.plot_smooth)
        print(f"wrote {out} ({', '.join(keys)})")
        return
    if cfg.prm_agg not in PRM_AGGS:
        raise SystemExit(f"evaluate.py: --prm-agg must be one of {', '.join(PRM_AGGS)}, got {cfg.prm_agg!r}")
    if cfg.samples < 0 or (cfg.samples == 0 and not cfg.greedy):
        raise SystemExit("evaluate.py: nothing to do: need --greedy or --samples >= 1")
    if (cfg.prm or cfg.orm) and cfg.samples < 1:
        raise SystemExit("evaluate.py: best-of-N with --prm/--orm needs --samples >= 1")
    try:  # bad input fails here, before any model is loaded
        rewards.resolve_dataset(cfg.dataset, cfg.split)
    except FileNotFoundError as e:
        raise SystemExit(f"evaluate.py: {e}")
    for flag, path in (("--policy", cfg.policy), ("--prm", cfg.prm), ("--orm", cfg.orm)):
        if path and looks_local_and_missing(path):
            raise SystemExit(f"evaluate.py: {flag} {path}: no such directory (models/arith-policy "
                             "comes from sft.py, models/arith-prm and arith-orm from prm_train.py)")

    # setup: ranks, device, dtype (same boilerplate as the other stages)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    master = rank == 0
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if world > 1:
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    torch.manual_seed(cfg.seed + rank)
    print0 = print if master else (lambda *a, **k: None)
    print0(f"config: {json.dumps(asdict(cfg))}")
    print0(f"device {device}, {world} process(es), dtype {dtype} "
           f"({'bf16 supported' if bf16 else 'fp32: no bf16-capable GPU'})")
    t0 = time.time()

    # 1. problems and prompts
    try:
        problems = rewards.load_problems(cfg.dataset, cfg.split, cfg.limit or None)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"evaluate.py: {e}")
    if not problems:
        raise SystemExit(f"evaluate.py: no problems in {cfg.dataset!r} (split {cfg.split})")
    from transformers import AutoModelForCausalLM, GenerationConfig
    try:
        tok = rewards.load_tokenizer(cfg.policy)
        model = AutoModelForCausalLM.from_pretrained(cfg.policy, dtype=dtype).to(device).eval()
    except (OSError, ValueError) as e:  # ValueError: not a directory and not a valid hub id
        raise SystemExit(f"evaluate.py: cannot load the policy {cfg.policy!r} (a checkpoint "
                         f"directory, e.g. models/arith-policy from sft.py, or a hub id): {e}")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = model.generation_config.eos_token_id
    eos_ids = {tok.eos_token_id} | set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    eos_ids.discard(None)
    # NOTE: checkpoints ship sampling defaults (Qwen: top_k=20, top_p=0.8, repetition_penalty)
    # that generate() silently merges into any config we pass; a clean one makes "temperature 1.0"
    # mean the plain softmax.
    model.generation_config = GenerationConfig(pad_token_id=pad_id, eos_token_id=sorted(eos_ids))
    mine = list(range(rank, len(problems), world))
    # NOTE: build_prompt already applied the chat template (BOS included where the template has
    # one), so tokenizing must not add special tokens a second time.
    prompt_ids = [tok(rewards.build_prompt(tok, problems[i]["question"]), add_special_tokens=False).input_ids
                  for i in mine]
    print0(f"{len(problems)} problems from {cfg.dataset} ({cfg.split}), policy {cfg.policy}")

    # 2. generation: greedy, then n samples per problem
    jobs = []  # (problem index, kind, sample index) per generated sequence
    gen = []
    gen_kw = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                  batch_size=cfg.batch_size, pad_id=pad_id, eos_ids=eos_ids, disable=not master)
    t_gen = time.time()
    if cfg.greedy:
        jobs += [(i, "greedy", 0) for i in mine]
        gen += generate(model, prompt_ids, do_sample=False, desc="greedy", **gen_kw)
    if cfg.samples:
        jobs += [(i, "sample", j) for i in mine for j in range(cfg.samples)]
        gen += generate(model, [p for p in prompt_ids for _ in range(cfg.samples)], do_sample=True,
                        desc=f"sample x{cfg.samples}", **gen_kw)
    t_gen = time.time() - t_gen
    del model  # the reward models below get its memory
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    # 3.-4. diagnostics and grading
    records = response_records(jobs, gen, problems, tok)
    grade(records, cfg.grade_processes, disable=not master)

    # 5. reward models: every response scored (best-of-N uses the samples)
    for kind, path in (("prm", cfg.prm), ("orm", cfg.orm)):
        if not path:
            continue
        rm = load_reward_model(path, kind, cfg, device)
        scores = score_with_reward_model(rm, [r["question"] for r in records], [r["response"] for r in records],
                                         cfg.rm_batch_size, desc=f"score {kind}", disable=not master)
        for r, s in zip(records, scores):
            if kind == "prm":
                r["prm_step_scores"] = s
            else:
                r["orm_score"] = s[-1] if s else None  # None: no steps, ranks last
        del rm

    # 6. gather on rank 0 and aggregate
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, records)
        records = [r for part in parts for r in part]
        dist.destroy_process_group()
    if not master:
        return
    records.sort(key=lambda r: (r["problem"], r["kind"] != "greedy", r["sample"]))
    res = summarize(records, cfg.prm_agg)
    n_tokens = sum(r["response_tokens"] for r in records)
    res.update({"perf/generate_seconds": t_gen, "perf/generated_tokens": n_tokens,
                "perf/tokens_per_second": n_tokens / max(t_gen, 1e-9),
                "perf/wall_seconds": time.time() - t0, "world_size": world, "device": device,
                "dataset_path": rewards.resolve_dataset(cfg.dataset, cfg.split), "config": asdict(cfg)})

    # 7. outputs
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
    with open(os.path.join(cfg.out_dir, "samples.jsonl"), "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print_table(res)
    for r in records[:2]:  # a couple of decoded responses, to eyeball the format
        prm = f" prm={r['prm_step_scores']}" if "prm_step_scores" in r else ""
        print(f"--- problem {r['problem']} {r['kind']} {r['sample']}: correct={r['correct']} "
              f"answer={r['answer']!r} gold={r['gold']!r}{prm}\n{r['response']}")
    n = res["n_samples"]
    if "best_of_n_prm" in res or "best_of_n_orm" in res:
        print(f"best-of-{n} on the same samples: " + ", ".join(
            f"{k} {res[k]:.4f}" for k in ["best_of_n_prm", "best_of_n_orm", f"maj@{n}", f"pass@{n}",
                                          "sampling_accuracy", "greedy_accuracy"]
            if isinstance(res.get(k), float)))
    print(f"wrote {cfg.out_dir}/results.json and samples.jsonl ({len(records)} responses)")


if __name__ == "__main__":
    main()
