"""
Evaluate a policy on arith / GSM8K / MATH the way the paper reports it (METHOD §6): greedy accuracy,
sampling accuracy at temperature 1.0, pass@k, maj@k, best-of-N reranked by a PRM or an ORM (the
"reward models are strong at inference time" half of the paper), and the reward-hacking
diagnostics (response length, steps per response, repeated steps).

Algorithm (the numbers match comments in the code)
  1. Load problems with common.load_problems (arith, gsm8k, math, math500 or a .jsonl path) and
     build every prompt with common.build_prompt. Under torchrun each rank takes problems[rank::W].
  2. Generate with common.generate (batched, left-padded, longest prompts first): one greedy
     response per problem and n samples at --temperature (plain softmax: no top-k, no repetition
     penalty, whatever the checkpoint's generation_config says).
  3. Grade every response with rewards.success_rewards (grading.py extracts and compares, optionally
     in worker processes): a truncated response (no EOS within --max-new-tokens) is incorrect
     (METHOD §4); a response whose grading raises or runs past the grader's time bound is incorrect
     and counted in `grading_errors`;
     nothing crashes the run.
  4. Diagnostics per response: tokens (EOS included), steps (rewards.split_steps), repeated steps
     (rewards.repeated_steps: identical, after whitespace normalisation, to an earlier step of the
     same response), truncated, no extractable answer (grading.extract_answer).
  5. Optional reward models (--prm, --orm, via rewards.load_reward_model): score every response with
     rewards.score_responses (batched, one forward per response). A PRM gives one value per step,
     an ORM one value.
  6. Gather on rank 0 and aggregate:
       greedy_accuracy     mean over problems of the greedy response's correctness
       sampling_accuracy   mean over problems and the n samples
       pass@k              unbiased estimator of Chen et al. 2021: 1 - C(n-c, k) / C(n, k)
       maj@k               majority vote over k samples, averaged over the n // k disjoint chunks
       best_of_n_prm       the sample with the highest aggregated PRM score (min | product | last
                           step; all three are reported, --prm-agg picks the headline), vs greedy
                           and maj@n on the same samples; best_of_n_orm likewise with the ORM.
       prm_within_auc      the reward model as a verifier (issue 14): for every problem whose
                           samples are neither all correct nor all wrong, the ROC AUC of the
                           --prm-agg score separating its correct samples from its wrong ones
                           (prm_train.auc: ties count 1/2; truncated = wrong, as `correct`), the
                           mean over those problems; prm_within_auc_problems counts them.
                           orm_within_auc likewise with the ORM score. 0.5 = no better than chance.
  7. Print a table; write OUT_DIR/results.json (every figure and the config) and
     OUT_DIR/samples.jsonl (one line per response: question, response, extracted answer, correct,
     PRM step scores, ORM score, diagnostics).
Training curves (the former plot mode) are drawn by scripts/plot.py from metrics.jsonl files.

Decisions (not in the paper)
  - maj@k votes on the extracted answer with whitespace removed; truncated responses and responses
    without an answer do not vote (no vote at all -> incorrect). Tie rule: among the answers with
    the most votes, the one voted first (lowest sample index) wins.
  - best-of-N: ties go to the earliest sample; a response with no steps scores -inf.
  - within-problem AUC: problems with only correct or only wrong samples are left out (their AUC is
    undefined), not counted as 0.5; None (null) when no problem has both.
  - The headline diagnostics (mean_response_tokens, ...) are over the greedy responses (the
    samples with --no-greedy); the same figures over the samples are the sampling_* keys.

Commands
  CPU smoke run:  python evaluate.py --policy models/arith-policy --eval-limit 50 --samples 4
  Best-of-N:      python evaluate.py --policy models/arith-policy --samples 8 \\
                      --prm models/arith-prm --orm models/arith-orm --out-dir out/eval-bon
  One GPU:        python evaluate.py --policy Qwen/Qwen2-1.5B-Instruct --dataset math500 \\
                      --samples 8 --max-new-tokens 1024 --out-dir out/eval-math500
  8 GPUs:         torchrun --nproc_per_node=8 evaluate.py --policy Qwen/Qwen2-1.5B-Instruct \\
                      --dataset math --samples 8 --max-new-tokens 1024 --grade-workers 4 \\
                      --prm peiyi9979/math-shepherd-mistral-7b-prm --step-tag "ки"
  Curves:         python scripts/plot.py runs/prm runs/clip_delta --out out/curves.png

Sampling is reproducible for a fixed --seed, --batch-size and process count (not bit-exact across
GPU kernels or bf16).

Expected: models/arith-policy on the arith test split (greedy + 8 samples, ~2 min on 2 CPU
cores): greedy_accuracy 0.452, sampling_accuracy 0.226, pass@8 0.666, maj@8 0.334 (--seed 0), ~72
greedy response tokens, ~4 steps, no repeated steps or truncations; with --prm models/arith-prm
--orm models/arith-orm --temperature 0.5, best-of-8 0.586 / 0.476 against maj@8 0.420 (README, "The
arith world v3"). A random policy scores 0 with truncated_fraction ~1.

Shapes: B sequences in a generate batch, P prompt tokens (left-padded), T generated tokens,
n samples per problem, K steps of a response.
"""

import json
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

import common
import grading
import rewards
from common import field, print0
from prm_train import auc  # the codebase's one ROC AUC (Mann-Whitney, ties 1/2), tested in test_prm.py

PRM_AGGS = ("min", "product", "last")


@dataclass
class Config:
    # policy and data
    policy: str = field("models/arith-policy", "policy: checkpoint directory or hub id")
    dataset: str = field("arith", f"one of {', '.join(common.DATASETS)}, or a path to a .jsonl file")
    split: str = field("test", "split of a named dataset (data/<name>/<split>.jsonl)")
    prompt: str = field("auto", "prompt format (common.build_prompt): auto | chat | cot | plain",
                        choices=common.PROMPTS)
    eval_limit: int = field(0, "evaluate the first N problems only (0 = all)")
    skip_bad: bool = field(False, "skip and count bad data rows (no question or gold, an ungradable gold, an "
                           "overlong question or prompt) instead of stopping at the first with its file:line")
    # generation
    greedy: bool = field(True, "decode one greedy response per problem (--no-greedy to skip)")
    samples: int = field(8, "n samples per problem at --temperature (0 = none); pass@k / maj@k use them")
    temperature: float = field(1.0, "sampling temperature (the paper's sampling accuracy uses 1.0); 0 = greedy "
                               "decoding for the samples too (all n identical)")
    top_p: float = field(1.0, "nucleus sampling threshold (1.0 = off)")
    max_new_tokens: int = field(512, "generation length limit in tokens; hitting it = truncated")
    batch_size: int = field(256, "sequences per generate() call (per rank); larger amortises CPU overhead")
    # reward models (best-of-N)
    prm: str = field("", "PRM checkpoint dir or hub id for best-of-N ('' = none)")
    orm: str = field("", "ORM checkpoint dir or hub id for best-of-N ('' = none)")
    prm_agg: str = field("min", "PRM aggregation for the headline best_of_n_prm", choices=PRM_AGGS)
    step_tag: str = field("", "reward-model step tag ('' = the tag saved with our checkpoints)")
    pos_token: str = field("+", "reward-model positive label token")
    neg_token: str = field("-", "reward-model negative label token")
    rm_batch_size: int = field(16, "responses per reward-model forward")
    grade_workers: int = field(1, "grading worker processes per rank (1 = serial; MATH: a few per rank)")
    # runtime and output
    out_dir: str = field("out/eval", "where results.json and samples.jsonl go")
    seed: int = field(0, "sampling seed (rank r uses seed + r)")
    device: str = field("auto", "auto | cpu | cuda | cuda:N")


# -----------------------------------------------------------------------------
# Pure helpers (unit-tested against brute force in test_evaluate.py)

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


def within_problem_auc(scores, correct):
    """Mean over problems of the ROC AUC of a verifier's scores separating a problem's correct
    samples from its wrong ones (ties count 1/2). scores[p][i], correct[p][i]: sample i of problem p.
    Only problems with both correct and wrong samples count. Returns (mean AUC or None, their number)."""
    aucs = [auc(s, [bool(c) for c in cs]) for s, cs in zip(scores, correct) if 0 < sum(map(bool, cs)) < len(cs)]
    return (sum(aucs) / len(aucs) if aucs else None), len(aucs)


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
    labels = [[r["correct"] and not r["truncated"] for r in g] for g in groups]  # verifier AUC's classes
    if n and all(r.get("prm_step_scores") is not None for g in groups for r in g):
        for how in PRM_AGGS:
            picks = [g[best_of_n([aggregate_prm(r["prm_step_scores"], how) for r in g])] for g in groups]
            res[f"best_of_n_prm_{how}"] = sum(r["correct"] for r in picks) / len(groups)
        res["best_of_n_prm"] = res[f"best_of_n_prm_{prm_agg}"]
        res["prm_within_auc"], res["prm_within_auc_problems"] = within_problem_auc(
            [[aggregate_prm(r["prm_step_scores"], prm_agg) for r in g] for g in groups], labels)
    if n and all("orm_score" in r for g in groups for r in g):
        picks = [g[best_of_n([-math.inf if r["orm_score"] is None else r["orm_score"] for r in g])]
                 for g in groups]
        res["best_of_n_orm"] = sum(r["correct"] for r in picks) / len(groups)
        res["orm_within_auc"], res["orm_within_auc_problems"] = within_problem_auc(
            [[-math.inf if r["orm_score"] is None else r["orm_score"] for r in g] for g in groups], labels)
    samples = [r for g in groups for r in g]
    res.update(diagnostics(greedy or samples))
    res.update(diagnostics(samples, prefix="sampling_"))
    res["grading_errors"] = sum(r["grading_error"] is not None for r in records)
    return res


# -----------------------------------------------------------------------------
# Stages (main runs them in order; the numbers are the docstring's)

MODEL_HINT = ("a checkpoint directory (models/arith-policy comes from sft.py, models/arith-prm and "
              "models/arith-orm from prm_train.py) or a hub id")


def check_inputs(cfg):
    """Bad settings and paths fail here, before any model is loaded or any token generated."""
    if cfg.samples < 0 or (cfg.samples == 0 and not cfg.greedy):
        raise common.RunError("nothing to do: need --greedy or --samples >= 1")
    for name in ("batch_size", "max_new_tokens", "rm_batch_size"):
        common.require(getattr(cfg, name) >= 1, f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= 1")
    for name in ("eval_limit", "grade_workers"):
        common.require(getattr(cfg, name) >= 0, f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= 0")
    common.require(0 <= cfg.temperature < float("inf"), f"--temperature {cfg.temperature}: must be >= 0 (0 = greedy)")
    common.require(0 < cfg.top_p <= 1, f"--top-p {cfg.top_p}: must be in (0, 1]")
    if (cfg.prm or cfg.orm) and cfg.samples < 1:
        raise common.RunError("best-of-N with --prm/--orm needs --samples >= 1")
    try:
        common.resolve_dataset(cfg.dataset, cfg.split)
    except FileNotFoundError as e:
        raise common.RunError(str(e)) from None
    for flag, path in (("--policy", cfg.policy), ("--prm", cfg.prm), ("--orm", cfg.orm)):
        if path:
            common.model_source(path, flag, MODEL_HINT)  # a missing local directory is a RunError


def load_problems(cfg):
    """Step 1: the problems of --dataset / --split (the first --eval-limit of them)."""
    try:
        problems = common.load_problems(cfg.dataset, cfg.split, cfg.eval_limit or None, skip_bad=cfg.skip_bad)
    except (OSError, ValueError) as e:
        raise common.RunError(str(e)) from None
    if not problems:
        raise common.RunError(f"no problems in {cfg.dataset!r} (split {cfg.split})")
    return problems


def generate_responses(model, tok, questions, cfg):
    """Step 2: the greedy responses, then cfg.samples per question at cfg.temperature.
    Returns (jobs, generations): jobs[i] = (question index, "greedy" | "sample", sample index)."""
    # NOTE: build_prompt already applied the chat template (BOS included where the template has
    # one); common.generate tokenizes prompt strings without adding special tokens a second time.
    # Its default sort (longest prompts first) is the order evaluate.py has always batched in, so a
    # seed gives the same samples as before.
    prompts = [common.build_prompt(tok, q, cfg.prompt) for q in questions]
    jobs, gens = [], []
    if cfg.greedy:
        jobs += [(i, "greedy", 0) for i in range(len(prompts))]
        gens += common.generate(model, tok, prompts, cfg.max_new_tokens, batch_size=cfg.batch_size, desc="greedy")
    if cfg.samples:
        jobs += [(i, "sample", j) for i in range(len(prompts)) for j in range(cfg.samples)]
        gens += common.generate(model, tok, [p for p in prompts for _ in range(cfg.samples)], cfg.max_new_tokens,
                                cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size,
                                desc=f"sample x{cfg.samples}")
    return jobs, gens


def measure(response, truncated, n_tokens):
    """One response record without its grade: extracted answer and diagnostics (step 4)."""
    rec = {"response": response, "answer": None, "correct": False, "truncated": truncated,
           "response_tokens": n_tokens, "grading_error": None}
    try:
        rec["answer"] = grading.extract_answer(response)
    except Exception as e:  # untrusted text: a failure is a response without an answer, counted
        rec["grading_error"] = f"extract_answer: {type(e).__name__}: {e}"
    steps = rewards.split_steps(response)
    rec["steps"], rec["repeated_steps"] = len(steps), rewards.repeated_steps(steps)
    return rec


def response_records(jobs, gens, problems, tok):
    """One ungraded record per generated sequence: jobs[i] = (problem index, kind, sample index),
    gens[i] = the common.Generation of that sequence. response_tokens counts the EOS of a finished
    response (the response_mask convention) and is max_new_tokens for a truncated one."""
    records = []
    for (i, kind, j), g in zip(jobs, gens):
        rec = {"problem": i, "kind": kind, "sample": j, "question": problems[i]["question"],
               "gold": problems[i]["answer"]}
        rec.update(measure(tok.decode(g.tokens, skip_special_tokens=True), not g.finished, len(g.tokens)))
        records.append(rec)
    return records


def _grade_one(r):
    try:
        return rewards.success_rewards([r["response"]], [r["gold"]], [not r["truncated"]])[0]
    except Exception as e:  # noqa: BLE001 -- a bad gold or untrusted text: counted, never a crash
        r["grading_error"] = f"is_correct: {type(e).__name__}: {e}"
        return 0.0


def grade(records, workers=1, chunk=512):
    """Step 3: rec["correct"] on every record, from rewards.success_rewards in chunks.

    NOTE: success_rewards owns the truncation rule: a truncated response is incorrect whatever it
    contains and is not graded (METHOD §4). It raises only on a gold it cannot parse; that chunk is
    then graded one by one and each failure is an incorrect response with its `grading_error` set.
    """
    todo = [r for r in records if r["grading_error"] is None]
    for start in tqdm(range(0, len(todo), chunk), desc="grade", disable=not common.is_master()):
        part, statuses = todo[start:start + chunk], []
        try:
            ok = rewards.success_rewards([r["response"] for r in part], [r["gold"] for r in part],
                                         [not r["truncated"] for r in part], workers=workers, statuses=statuses)
        except Exception:  # noqa: BLE001 -- fall back to one call per response, errors counted
            ok, statuses = [_grade_one(r) for r in part], ["ok"] * len(part)
        for r, c, st in zip(part, ok, statuses):
            r["correct"] = c == 1.0
            if st != "ok":  # the grader's time bound cut it, or it raised: wrong, and counted
                r["grading_error"] = f"grader {st}"


def load_reward_model(path, kind, cfg, device):
    """rewards.load_reward_model with the CLI's tag/token flags; a bad checkpoint is a RunError."""
    return rewards.load_reward_model_or_exit(path, kind, step_tag=cfg.step_tag or None,
                                             pos_token=cfg.pos_token, neg_token=cfg.neg_token, device=device)


def score_with_reward_models(records, cfg, device):
    """Step 5: rec["prm_step_scores"] (one per step) and rec["orm_score"] on every record, each reward
    model loaded in turn and batched by rewards.score_responses. A response without steps gets
    [] and None: it ranks last in best-of-N (the decision above)."""
    for kind, path in (("prm", cfg.prm), ("orm", cfg.orm)):
        if not path:
            continue
        rm = load_reward_model(path, kind, cfg, device)
        scores = rewards.score_responses(rm, [r["question"] for r in records], [r["response"] for r in records],
                                         cfg.rm_batch_size, desc=f"score {kind}")
        for r, s in zip(records, scores):
            if kind == "prm":
                r["prm_step_scores"] = s
            else:
                r["orm_score"] = s[-1] if s and r["steps"] else None
        del rm


def gather(records, world_size):
    """Step 6: every rank's records on every rank, in (problem, greedy first, sample) order."""
    if world_size > 1:
        parts = [None] * world_size
        dist.all_gather_object(parts, records)
        records = [r for part in parts for r in part]
    return sorted(records, key=lambda r: (r["problem"], r["kind"] != "greedy", r["sample"]))


def print_table(res):
    print(f"{'metric':<34} value")
    for k, v in res.items():
        if isinstance(v, float):
            print(f"{k:<34} {v:.4f}")
        elif isinstance(v, (int, str)) or v is None:
            print(f"{k:<34} {v}")


def write_outputs(out_dir, res, records):
    """Step 7: results.json, samples.jsonl, the table, two decoded responses, the best-of-N line."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
    with open(os.path.join(out_dir, "samples.jsonl"), "w", encoding="utf-8") as f:
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
        print("within-problem AUC (correct vs wrong samples of a problem; 0.5 = chance): " + ", ".join(
            f"{k} {res[k]:.4f} over {res[k + '_problems']} problems" if res[k] is not None
            else f"{k} - (no problem has both correct and wrong samples)"
            for k in ("prm_within_auc", "orm_within_auc") if k in res))
    print(f"wrote {out_dir}/results.json and samples.jsonl ({len(records)} responses)")


# -----------------------------------------------------------------------------
# Main

def main(argv=None):
    cfg = common.parse_config(Config, argv)
    check_inputs(cfg)
    rt = common.setup_runtime(cfg.device, cfg.seed)
    torch.manual_seed(cfg.seed + rt.rank)  # sampling seeded per rank
    print0(f"config: {json.dumps(asdict(cfg))}")
    t0 = time.time()

    # 1. problems (each rank its slice problems[rank::W]) and the policy
    problems = load_problems(cfg)
    tok = common.load_tokenizer(cfg.policy, "--policy tokenizer", MODEL_HINT)
    model = common.load_model(cfg.policy, "--policy", MODEL_HINT, dtype=rt.dtype).to(rt.device).eval()
    problems = common.check_prompt_lengths(tok, problems, common.max_prompt_tokens(model),
                                           f"{cfg.dataset} ({cfg.split})", cfg.skip_bad, cfg.prompt)
    common.require(problems, f"no problems left in {cfg.dataset!r} after --skip-bad")
    mine = list(range(rt.rank, len(problems), rt.world_size))
    print0(f"{len(problems)} problems from {cfg.dataset} ({cfg.split}), policy {cfg.policy}")

    # 2. generation: greedy, then n samples per problem
    t_gen = time.time()
    jobs, gens = generate_responses(model, tok, [problems[i]["question"] for i in mine], cfg)
    jobs = [(mine[i], kind, j) for i, kind, j in jobs]  # local question index -> problem index
    t_gen = time.time() - t_gen
    del model  # the reward models below get its memory
    if rt.device.startswith("cuda"):
        torch.cuda.empty_cache()

    # 3.-4. grading and diagnostics
    records = response_records(jobs, gens, problems, tok)
    grade(records, cfg.grade_workers)

    # 5. reward models: every response scored (best-of-N uses the samples)
    score_with_reward_models(records, cfg, rt.device)

    # 6. gather on rank 0 and aggregate
    records = gather(records, rt.world_size)
    if not rt.master:
        return
    res = summarize(records, cfg.prm_agg)
    n_tokens = sum(r["response_tokens"] for r in records)
    res.update({"perf/generate_seconds": t_gen, "perf/generated_tokens": n_tokens,
                "perf/tokens_per_second": n_tokens / max(t_gen, 1e-9),
                "perf/wall_seconds": time.time() - t0, "world_size": rt.world_size, "device": rt.device,
                "dataset_path": common.resolve_dataset(cfg.dataset, cfg.split), "config": asdict(cfg)})

    # 7. outputs
    write_outputs(cfg.out_dir, res, records)


if __name__ == "__main__":
    common.run_main(main)
