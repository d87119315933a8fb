"""
How much of a verifier is already in a policy's own log-probabilities, before any PRM training?
(README, "Reward models as verifiers"; an experiment, not a timed test.)

The implicit PRM (prm_train.py --form implicit) scores step k by m_k = beta * sum of
log pi - log pi_ref over the response up to step k's end. Trained from pi = pi_ref, it starts at
m = 0 and must learn every check from the step labels. This script reads the same sums with no
training at all, over the samples of an evaluate.py run (its samples.jsonl), and reports the
within-problem AUC (evaluate.within_problem_auc: right vs wrong samples of one question) of:

  min cumulative   min over steps of sum_{t <= end of step k} log pi_model - log pi_ref
                   (the implicit form's margins at initialisation, evaluate.py's min aggregation)
  min step         min over steps of the step's own sum (its tokens and the separator before it)

With --ref '' the reference term is 0: the model's own log-likelihoods. beta does not change an AUC.

Usage (one thread, about 30 s per model on the 4,000 valid samples):
    python evaluate.py --policy models/arith-policy --split valid --samples 8 --temperature 0.5 \\
        --seed 0 --out-dir out/eval-valid-t05
    python bench/logprob_readout.py --samples out/eval-valid-t05/samples.jsonl --model models/arith-policy-v2
    python bench/logprob_readout.py --samples out/eval-valid-t05/samples.jsonl --model models/arith-policy-v2 \\
        --ref models/arith-policy

Measured (valid, T = 0.5, 8 samples, seed 0, 325 problems with both kinds; README): arith-policy-v2
alone 0.885 / 0.890; arith-policy-v2 against arith-policy 0.858 / 0.861; arith-policy alone
0.703 / 0.695; the shipped trained PRM (ref = its own init) reads 0.853 in evaluate.py.
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import common  # noqa: E402
import evaluate  # noqa: E402
import rewards  # noqa: E402


def readouts(model, ref, tokenizer, question, response, step_sep):
    """(min cumulative, min step) of the summed log-prob (contrast) over the response's steps: the
    implicit form's own margins at beta = 1 (rewards.implicit_margins; ref None: no reference term)."""
    steps = rewards.split_steps(response, step_sep)
    if not steps:
        return 0.0, 0.0
    ids, ends, start = rewards.implicit_input(tokenizer, question, steps, "prm", step_sep)
    x = torch.tensor([ids])
    with torch.no_grad():
        cum = rewards.implicit_margins(model, ref, x, torch.ones_like(x), torch.tensor([start]),
                                       torch.tensor([ends]), 1.0)[0]  # (K,) sums up to each step's end
    step_sums = torch.diff(cum, prepend=cum.new_zeros(1))  # a step's own tokens (the separator before it included)
    return cum.min().item(), step_sums.min().item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", required=True, help="an evaluate.py samples.jsonl")
    p.add_argument("--model", required=True, help="the policy whose log-probs are read (a checkpoint dir)")
    p.add_argument("--ref", default="", help="subtract this model's log-probs ('' = none)")
    p.add_argument("--step-sep", default="\n\n")
    args = p.parse_args(argv)
    common.require(os.path.isfile(args.samples), f"--samples {args.samples}: not found (an evaluate.py samples.jsonl)")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    tokenizer = common.load_tokenizer(args.model)
    model = common.load_model(args.model, "--model", "pass a checkpoint dir", dtype=torch.float32).eval()
    ref = common.load_model(args.ref, "--ref", "pass a checkpoint dir", dtype=torch.float32).eval() if args.ref else None
    recs = [r for r in common.read_jsonl(args.samples) if r["kind"] == "sample"]
    common.require(recs, f"--samples {args.samples}: no sampled responses (run evaluate.py with --samples > 0)")
    by_problem = {}
    for r in recs:
        cum, step = readouts(model, ref, tokenizer, r["question"], r["response"], args.step_sep)
        by_problem.setdefault(r["problem"], []).append((cum, step, bool(r["correct"])))
    correct = [[x[2] for x in v] for v in by_problem.values()]
    res = {}
    for j, name in enumerate(("min_cumulative", "min_step")):
        auc, n = evaluate.within_problem_auc([[x[j] for x in v] for v in by_problem.values()], correct)
        res[name] = auc
        res["problems"] = n
    res.update(model=args.model, ref=args.ref, samples=args.samples, n_samples=len(recs))
    print(json.dumps(res))


if __name__ == "__main__":
    common.run_main(main)
