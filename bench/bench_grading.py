"""
Benchmark of success grading (grading.is_correct / grade_batch): README figures, not a timed test.

  1. Latency per (response, gold) pair, median and p99 over real formats: GSM8K solutions against
     their bare gold, MATH solutions against their `answer` (all, and the non-integer ones that
     need sympy: integers on both sides are compared in Python), the same MATH solutions against a
     shuffled (wrong) gold, Minerva-style "The final answer is $X$." responses, and arith integers.
     Gold caches are warmed first (a PPO batch grades many samples per question).
  2. A PPO batch of 512 MATH-format responses (half correct, half graded against a wrong gold):
     serially in this process, and with grade_batch in a pool of --processes workers, cold (pool
     started inside the timed call) and warm (the pool PPO reuses every step).

Usage:
    python bench/bench_grading.py                      # reads ../shared/data (external data; see docs/METHOD.md §7)
    python bench/bench_grading.py --pairs 500 --processes 4 --data-dir /path/to/data
"""

import argparse
import json
import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common  # noqa: E402
import grading  # noqa: E402


def read(data_dir, rel):
    path = os.path.join(data_dir, rel)
    if not os.path.exists(path):
        sys.exit(f"{path} not found: pass --data-dir (the directory holding gsm8k/ and math/)")
    return common.read_jsonl(path)


def latency(pairs):
    """Per-pair seconds for is_correct over `pairs`, golds warmed first."""
    for _, g in pairs:
        grading.is_correct("", g)
    out = []
    for r, g in pairs:
        t = time.perf_counter()
        grading.is_correct(r, g)
        out.append(time.perf_counter() - t)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"),
                   help="directory with gsm8k/test.jsonl and math/test.jsonl")
    p.add_argument("--pairs", type=int, default=1000, help="pairs per latency format")
    p.add_argument("--batch", type=int, default=512, help="PPO batch size for section 2")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="grade_batch workers")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)

    gsm = read(args.data_dir, "gsm8k/test.jsonl")
    math = read(args.data_dir, "math/test.jsonl")
    arith = common.read_jsonl(os.path.join(ROOT, "data", "arith", "test.jsonl"))
    gsm_s = rng.sample(gsm, min(args.pairs, len(gsm)))
    math_s = rng.sample(math, min(args.pairs, len(math)))
    wrong = [math[rng.randrange(len(math))]["answer"] for _ in math_s]

    # 1. latency per pair
    formats = {
        "gsm8k solution vs gold": [(r["answer"], r["answer"].rsplit("####", 1)[1].strip()) for r in gsm_s],
        "math solution vs answer": [(r["solution"], r["answer"]) for r in math_s],
        "math, non-integer answers only": [(r["solution"], r["answer"]) for r in math_s
                                           if grading._int_value(r["answer"]) is None],
        "math solution vs wrong gold": [(r["solution"], w) for r, w in zip(math_s, wrong)],
        "minerva 'final answer is $X$'": [(f"The final answer is ${r['answer']}$. I hope it is correct.",
                                           r["answer"]) for r in math_s],
        "arith integer": [(r["solution"], r["answer"]) for r in arith[: args.pairs]],
    }
    print(f"1. latency per pair (ms), {args.pairs} pairs each, one process")
    print(f"   {'format':32s} {'pairs':>6s} {'median':>8s} {'p99':>8s} {'max':>8s}")
    for name, pairs in formats.items():
        s = sorted(latency(pairs))
        print(f"   {name:32s} {len(s):6d} {1e3 * statistics.median(s):8.2f} {1e3 * s[int(0.99 * (len(s) - 1))]:8.2f} "
              f"{1e3 * s[-1]:8.2f}")

    # 2. a PPO batch of `batch` MATH responses, half correct
    batch = rng.sample(math, args.batch)
    responses = [r["solution"] for r in batch]
    golds = [r["answer"] if i % 2 == 0 else math[rng.randrange(len(math))]["answer"] for i, r in enumerate(batch)]
    grading._parse_gold.cache_clear()
    grading._gold_parsed.cache_clear()
    t = time.perf_counter()
    serial = grading.grade_batch(responses, golds, processes=0)
    t_serial = time.perf_counter() - t
    t = time.perf_counter()
    grading.grade_batch(responses, golds, processes=args.processes)
    t_cold = time.perf_counter() - t
    golds2 = [r["answer"] if i % 2 == 1 else math[rng.randrange(len(math))]["answer"] for i, r in enumerate(batch)]
    t = time.perf_counter()
    grading.grade_batch(responses, golds2, processes=args.processes)  # new golds: no warm gold cache
    t_warm = time.perf_counter() - t
    t = time.perf_counter()
    pooled = grading.grade_batch(responses, golds, processes=args.processes)
    t_warm_cached = time.perf_counter() - t
    assert pooled == serial
    print(f"2. batch of {args.batch} MATH responses ({sum(serial)} correct), "
          f"cpu_count={os.cpu_count()}, processes={args.processes}")
    print(f"   serial (one process)                 {t_serial:7.2f} s")
    print(f"   grade_batch, cold pool (start incl.) {t_cold:7.2f} s")
    print(f"   grade_batch, warm pool, new golds    {t_warm:7.2f} s")
    print(f"   grade_batch, warm pool, same golds   {t_warm_cached:7.2f} s")
    print(json.dumps({"serial_s": t_serial, "pool_cold_s": t_cold, "pool_warm_s": t_warm,
                      "pool_warm_cached_s": t_warm_cached, "processes": args.processes}))
    grading.close_grading_pools()


if __name__ == "__main__":
    main()
