"""
Benchmarks for prm_train.py and the reward-model scorer (README figures; not a timed test).

  1. Labeling throughput: generated tokens/s (up to and including EOS) of Math-Shepherd labeling
     (prm_train.label_problems: the solutions, then every batch of step prefixes in one
     prm_train.sample_n call, each prefix N times; sample_n is common.sample, finished rows leave
     the batch, one budget per row) against plain batched generation: common.generate, i.e.
     Hugging Face generate, from the problems' prompts, with the same model, the same number of
     sequences, the same sequences per call (gen_batch), the same budget (max_new_tokens) and the
     same sampling (T = 1, no top-k / top-p). Ratio = labeling / plain tokens/s (target >= 1.0).
     Each side: tokens over the seconds spent inside its sampler calls (labeling: stats["gen_s"];
     plain: the generate calls); best of --repeats.
     Every prefix is rolled out here (mc_correct=True), correct solutions included.
  2. PRM scoring at K = 4 steps: one forward per response (rewards.RewardModel.score, every step read
     at its tag) against the naive way, one forward per step prefix (K forwards, each reading the
     last position), both batched with the same batch size. Target ratio >= 3x.

Usage (defaults: the shipped arith checkpoints, or a tiny random model when they are absent):
    python bench/bench_prm.py --threads 2
    python bench/bench_prm.py --policy models/arith-policy --prm models/arith-prm-tag --problems 64
"""

import argparse
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import prm_train  # noqa: E402
import common  # noqa: E402
import rewards  # noqa: E402


def tiny_model_dir():
    from conftest import build_tiny_model

    return build_tiny_model(tempfile.mkdtemp(prefix="bench-prm-"), hidden=128, layers=2)


def bench_labeling(policy_dir, problems, samples, completions, gen_batch, max_new_tokens, repeats):
    model = common.load_model(policy_dir, "--policy", dtype=torch.float32).eval()
    tok = common.load_tokenizer(policy_dir, "--policy")
    best_label, best_plain = None, None
    for _ in range(repeats):
        torch.manual_seed(0)
        t0 = time.time()
        recs, st = prm_train.label_problems(model, tok, problems, samples, completions, 1.0, 1.0,
                                            max_new_tokens, gen_batch, "\n\n", True)
        wall = time.time() - t0
        label = {"tok_s": st["gen_tokens"] / st["gen_s"], "tokens": st["gen_tokens"], "calls": st["gen_calls"],
                 "rollouts": st["rollouts"], "wall_s": wall}
        # plain batched generate (common.generate = Hugging Face generate): the same number of
        # sequences, gen_batch per call (each prompt N times in a row), from the prompts
        n_seq = st["rollouts"]
        prompts = [common.build_prompt(tok, p["question"]) for p in problems]
        per_call = max(1, gen_batch // completions)
        torch.manual_seed(0)
        n_tok, done, calls, gen_s = 0, 0, 0, 0.0
        while done < n_seq:
            texts = [prompts[(done // completions + i) % len(prompts)] for i in range(per_call)]
            n = min(completions, max(1, (n_seq - done) // len(texts)))
            batch = [t for t in texts for _ in range(n)]
            t0 = time.time()
            gens = common.generate(model, tok, batch, max_new_tokens, 1.0, batch_size=len(batch), sort=False)
            gen_s += time.time() - t0
            n_tok += sum(len(g.tokens) for g in gens)
            done += len(batch)
            calls += 1
        plain = {"tok_s": n_tok / gen_s, "tokens": n_tok, "calls": calls, "rollouts": done}
        if best_label is None or label["tok_s"] > best_label["tok_s"]:
            best_label = label
        if best_plain is None or plain["tok_s"] > best_plain["tok_s"]:
            best_plain = plain
    return best_label, best_plain


def bench_scoring(prm_dir, step_tag, problems, batch_size, repeats):
    rm = rewards.load_reward_model(prm_dir, step_tag=step_tag, device="cpu")
    qs = [p["question"] for p in problems]
    rs = [p["solution"] for p in problems]
    assert all(len(rewards.split_steps(r)) == 4 for r in rs)
    # naive: one sequence per step prefix, scored at its last (tag) position
    prefix_rows = []
    for q, r in zip(qs, rs):
        steps = rewards.split_steps(r)
        for k in range(len(steps)):
            ids, pos = rm.encode(q, steps[: k + 1])
            prefix_rows.append((ids, pos[-1:]))
    best = {}
    for _ in range(repeats):
        t0 = time.time()
        fast = rm.score(qs, rs, batch_size=batch_size)
        t_fast = time.time() - t0
        t0 = time.time()
        slow = []
        with torch.no_grad():
            for s in range(0, len(prefix_rows), batch_size):
                m, _ = rm.margins(prefix_rows[s: s + batch_size])
                slow += torch.sigmoid(m[:, 0]).tolist()
        t_slow = time.time() - t0
        if not best or t_fast < best["fast_s"]:
            best["fast_s"] = t_fast
        if "slow_s" not in best or t_slow < best["slow_s"]:
            best["slow_s"] = t_slow
        flat = [x for s in fast for x in s]
        best["max_abs_diff"] = max(abs(a - b) for a, b in zip(flat, slow))
    best["tokens_fast"] = sum(len(rm.encode(q, rewards.split_steps(r))[0]) for q, r in zip(qs, rs))
    best["tokens_slow"] = sum(len(ids) for ids, _ in prefix_rows)
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default=os.path.join(ROOT, "models", "arith-policy"))
    p.add_argument("--prm", default=os.path.join(ROOT, "models", "arith-prm-tag"),
                   help="a tag-form PRM (the scoring this benchmark times)")
    p.add_argument("--problems", type=int, default=32, help="problems to label")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--completions", type=int, default=8)
    p.add_argument("--gen-batch", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--score-n", type=int, default=256, help="responses with K = 4 steps to score")
    p.add_argument("--score-batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="best of N timings")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    policy = args.policy if os.path.exists(os.path.join(args.policy, "config.json")) else None
    prm = args.prm if os.path.exists(os.path.join(args.prm, "config.json")) else None
    tiny = tiny_model_dir() if policy is None or prm is None else None
    policy, prm = policy or tiny, prm or tiny
    step_tag = None if os.path.exists(os.path.join(prm, "meta.json")) else "<step>"
    print(f"threads {args.threads}; policy {policy}; prm {prm}")

    problems = common.load_problems("arith", "test", limit=args.problems)
    label, plain = bench_labeling(policy, problems, args.samples, args.completions, args.gen_batch,
                                  args.max_new_tokens, args.repeats)
    four = [r for r in common.load_problems("arith", "train") if len(rewards.split_steps(r["solution"])) == 4]
    sc = bench_scoring(prm, step_tag, four[: args.score_n], args.score_batch, args.repeats)

    print("\n| benchmark | value |\n|---|---|")
    print(f"| labeling: completion tokens/s (M={args.samples}, N={args.completions}, {args.gen_batch} seq/call) "
          f"| {label['tok_s']:.0f} ({label['tokens']} tokens, {label['rollouts']} rollouts, {label['calls']} "
          f"common.sample calls) |")
    print(f"| plain batched generate (common.generate), same model, sequences and seq/call: tokens/s "
          f"| {plain['tok_s']:.0f} ({plain['tokens']} tokens, {plain['rollouts']} sequences, {plain['calls']} calls) |")
    print(f"| labeling / plain tokens/s | {label['tok_s'] / plain['tok_s']:.2f}x |")
    print(f"| PRM scoring K=4, one forward per response ({args.score_n} responses, batch {args.score_batch}) "
          f"| {sc['fast_s']:.3f} s ({sc['tokens_fast']} tokens) |")
    print(f"| PRM scoring K=4, one forward per prefix (naive) | {sc['slow_s']:.3f} s ({sc['tokens_slow']} tokens) |")
    print(f"| speed-up per response vs per prefix | {sc['slow_s'] / sc['fast_s']:.2f}x (max |score diff| "
          f"{sc['max_abs_diff']:.1e}) |")


if __name__ == "__main__":
    main()
