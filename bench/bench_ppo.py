"""
Benchmarks for ppo.py on the arith default (figures for the README; not a test).

  1. Rollout throughput: common.sample (our KV-cached loop; finished rows leave the batch) against
     plain `model.generate` on the same model, prompts and settings (T = 1 sampling, no top-k/p,
     same max_new_tokens). Tokens/s counts generated tokens up to and including EOS; median of
     --repeats runs, alternated so machine load hits both alike.
  2. Time per phase per step: ppo.main runs in-process for --steps steps (no eval, no samples)
     with the model calls wrapped by timers: generation (common.sample), forward passes
     (ppo.policy_logprobs, ppo.critic_values, the reward model's rewards.tag_margins), backward
     (Tensor.backward). Prints the perf/* phases from metrics.jsonl and the fraction of the step
     spent outside model forward / backward / generation (optimizer steps, grading, step mapping,
     tokenization, Python). Step 1 is reported separately (warm-up).

Usage (from the repository root; --threads 2 for the README figures on a 2-core machine):
    python bench/bench_ppo.py
    python bench/bench_ppo.py --policy models/arith-policy --prm models/arith-prm --steps 6 --threads 2
Writes --out-dir/bench.json.
"""

import dataclasses
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import common  # noqa: E402
import ppo  # noqa: E402
import rewards  # noqa: E402
from common import field  # noqa: E402


def generated_tokens(rows, eos_ids):
    """Tokens up to and including the first EOS (or all of them) per row of a list of id lists."""
    n = 0
    for row in rows:
        end = next((i for i, t in enumerate(row) if t in eos_ids), None)
        n += len(row) if end is None else end + 1
    return n


def bench_rollout(policy_path, n_prompts, samples, max_new_tokens, repeats):
    tok = common.load_tokenizer(policy_path, "policy")
    tok.padding_side = "left"
    model = common.load_model(policy_path, "policy", dtype=torch.float32).eval()
    problems = common.load_problems("arith", "train", limit=n_prompts)
    questions = [p["question"] for p in problems for _ in range(samples)]
    ids, mask = ppo.encode(tok, questions, "cpu")
    B, eos = len(questions), {tok.eos_token_id}
    ours, theirs = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        out, lengths, _ = common.sample(model, ids, mask, max_new_tokens, 1.0, eos, tok.pad_token_id,
                                        torch.Generator().manual_seed(r), torch.arange(B), B)
        ours.append(int(lengths.sum()) / (time.perf_counter() - t0))
        torch.manual_seed(r)
        t0 = time.perf_counter()
        with torch.no_grad():
            seq = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        theirs.append(generated_tokens(seq[:, ids.shape[1]:].tolist(), eos) / (time.perf_counter() - t0))
    return {"rows": B, "max_new_tokens": max_new_tokens, "ours_tok_s": statistics.median(ours),
            "generate_tok_s": statistics.median(theirs),
            "speedup": statistics.median(ours) / statistics.median(theirs)}


class Timers:
    """Wall time spent inside wrapped callables, per category, reset each step."""

    def __init__(self):
        self.t, self.depth = {}, 0

    def wrap(self, fn, name):
        def inner(*a, **k):
            if self.depth:  # nested call: the outer one is already timing
                return fn(*a, **k)
            self.depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0
                self.depth -= 1
        return inner


def bench_step(args):
    timers = Timers()
    per_step = []  # one bucket per step: each step starts with its (only) common.sample call

    def new_bucket(fn):
        def inner(*a, **k):
            timers.t = {}
            per_step.append(timers.t)
            return fn(*a, **k)
        return inner

    common.sample = new_bucket(timers.wrap(common.sample, "generate"))
    ppo.policy_logprobs = timers.wrap(ppo.policy_logprobs, "forward")
    ppo.critic_values = timers.wrap(ppo.critic_values, "forward")
    rewards.tag_margins = timers.wrap(rewards.tag_margins, "rm_forward")
    torch.Tensor.backward = timers.wrap(torch.Tensor.backward, "backward")
    out = os.path.join(args.out_dir, "run")
    argv = ["--steps", str(args.steps), "--eval-limit", "0", "--sample-every", "0", "--save-every", "0",
            "--out-dir", out, "--policy", args.policy, "--prm", args.prm, "--reward", args.reward]
    ppo.main(argv)
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    rows = [r for r in rows if "perf/step_s" in r]
    results = []
    for r, t in zip(rows, per_step):
        # the final checkpoint save is outside perf/step_s; everything else is inside
        model = sum(t.values())
        results.append({**{k: v for k, v in r.items() if k.startswith("perf/")},
                        **{f"in/{k}_s": v for k, v in t.items()},
                        "outside_model_fraction": max(0.0, 1 - model / r["perf/step_s"]),
                        "response_tokens": r["rollout/response_tokens"]})
    return results


@dataclasses.dataclass
class Config:
    policy: str = field("models/arith-policy", "policy dir or hub id")
    prm: str = field("models/arith-prm", "PRM dir or hub id")
    reward: str = field("clip_delta", "ppo.py --reward for the per-phase timing", choices=ppo.REWARD_MODES)
    steps: int = field(6, "PPO steps of the per-phase timing (step 1 is warm-up)")
    repeats: int = field(3, "rollout timing: runs of each sampler (the median is reported)")
    threads: int = field(2, "torch threads")
    out_dir: str = field("out/bench-ppo", "bench.json and the PPO run go here")


def main(argv=None):
    args = common.parse_config(Config, argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    cfg = ppo.Config()
    print(f"torch threads {torch.get_num_threads()}; policy {args.policy}; reward {args.reward}")

    roll = bench_rollout(args.policy, cfg.prompts_per_step, cfg.samples_per_prompt, cfg.max_new_tokens,
                         args.repeats)
    print(f"rollout ({roll['rows']} rows, max_new_tokens {roll['max_new_tokens']}, T=1): common.sample "
          f"{roll['ours_tok_s']:.0f} tok/s vs model.generate {roll['generate_tok_s']:.0f} tok/s "
          f"-> {roll['speedup']:.2f}x")

    steps = bench_step(args)
    later = steps[1:] or steps
    keys = ["perf/generate_s", "perf/forward_s", "perf/grade_s", "perf/score_s", "perf/update_s", "perf/step_s"]
    print("\nper step (mean over steps 2..N; step 1 is warm-up):")
    for k in keys:
        print(f"  {k:18s} {statistics.mean(r.get(k, 0.0) for r in later):7.3f} s   (step 1: {steps[0].get(k, 0.0):.3f})")
    inside = sorted({k for r in later for k in r if k.startswith("in/")})
    for k in inside:
        print(f"  {k:18s} {statistics.mean(r.get(k, 0.0) for r in later):7.3f} s   inside model calls")
    frac = statistics.mean(r["outside_model_fraction"] for r in later)
    print(f"  outside model forward/backward/generation: {100 * frac:.1f}% of the step")
    with open(os.path.join(args.out_dir, "bench.json"), "w") as f:
        json.dump({"rollout": roll, "steps": steps, "outside_model_fraction": frac,
                   "threads": args.threads, "policy": args.policy, "reward": args.reward}, f, indent=2)
    print(f"wrote {os.path.join(args.out_dir, 'bench.json')}")


if __name__ == "__main__":
    common.run_main(main)
