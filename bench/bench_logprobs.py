"""
Benchmark of ppo.policy_logprobs at a real vocabulary: peak memory above the model and time, the
old full-vocabulary log_softmax against the fused chunked head + log-softmax of ppo.ChunkedLogprobs
(figures for the README; not a test).

  1. A tiny random Qwen2 model (hidden --hidden, --layers layers) with Qwen2's vocabulary,
     V = 151,936: the model weighs ~40 MB, so what is measured is the (B, T, V) work.
  2. B rows of a P-token prompt and a T-token response (all valid: the worst case).
  3. Two calls, each variant in a fresh subprocess (a clean allocator and peak):
       train:   log-probs + entropies with gradients, then backward (ppo_update's call);
       rollout: log-probs under no_grad (the old / reference log-probs of the rollout).
     Peak memory above what was allocated before the call: torch.cuda.max_memory_allocated on GPU;
     on CPU the peak resident set (getrusage ru_maxrss) minus the resident set before the call
     (the (B, T, V) buffers are far above glibc's mmap threshold, so they come and go from the RSS).
     Time: the median of --repeats calls after one warm-up.
  Variants: `old`, the reference, is the code ppo.policy_logprobs had before chunking
  (full_logprobs below): (B, t, V) logits and log-softmax, all kept for autograd's backward.
  `fused` is ppo.policy_logprobs now: ppo.ChunkedLogprobs runs the head and the softmax on
  LOGP_CHUNK tokens at a time and its hand-written backward recomputes each chunk's logits, so
  only O(tokens) vectors are kept and at most two (chunk, V) fp32 buffers live at once.

Usage (from the repository root; needs ~8 GB of free RAM on CPU):
    python bench/bench_logprobs.py                       # CPU, B x T = 4 x 512, 1 thread
    python bench/bench_logprobs.py --device cuda --repeats 10
Writes --out (default out/bench_logprobs.json).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ppo  # noqa: E402

QWEN2_VOCAB = 151_936


def full_logprobs(model, ids, attn, P, temperature, entropy=False):
    """The old ppo.policy_logprobs: full (B, t, V) fp32 logits and log-softmax."""
    T = ids.shape[1] - P
    ids, attn, P = ppo.trim(ids, attn, P)
    t = ids.shape[1] - P
    logits = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
                   logits_to_keep=t + 1).logits[:, :-1].float()  # (B, t, V)
    logp_all = torch.log_softmax(logits / max(temperature, 1e-6), -1)
    logp = F.pad(logp_all.gather(-1, ids[:, P:, None]).squeeze(-1), (0, T - t))  # (B, T)
    if not entropy:
        return logp
    return logp, F.pad(-(logp_all.exp() * logp_all).sum(-1), (0, T - t))


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(args):
    """One variant and mode in this process -> a JSON line on stdout."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = Qwen2Config(vocab_size=QWEN2_VOCAB, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
                      tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg).to(device)
    ids = torch.randint(0, QWEN2_VOCAB, (args.B, args.P + args.T), device=device)  # (B, P + T)
    attn = torch.ones_like(ids)
    fn = full_logprobs if args.worker == "old" else ppo.policy_logprobs

    def call():
        if args.mode == "rollout":
            with torch.no_grad():
                fn(model, ids, attn, args.P, 0.7)
        else:
            logp, ent = fn(model, ids, attn, args.P, 0.7, entropy=True)
            (logp.sum() + 0.01 * ent.sum()).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    call()  # warm-up: allocator, kernels, the parameters' .grad
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    times = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if i == 0:  # the peak of a single call, before anything else could raise it
            peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"variant": args.worker, "mode": args.mode, "peak_above_gb": (peak - base) / 1e9,
                      "median_s": statistics.median(times), "times_s": times}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--B", type=int, default=4, help="rows (a micro-batch)")
    p.add_argument("--T", type=int, default=512, help="response tokens per row")
    p.add_argument("--P", type=int, default=16, help="prompt tokens per row")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(ROOT, "out", "bench_logprobs.json"))
    p.add_argument("--worker", choices=["old", "fused"], help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["train", "rollout"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    one = args.B * args.T * QWEN2_VOCAB * 4 / 1e9
    print(f"{args.device}, {args.threads} thread(s): V = {QWEN2_VOCAB:,}, B x T = {args.B} x {args.T}, "
          f"one (B, T, V) fp32 tensor = {one:.2f} GB, LOGP_CHUNK = {ppo.LOGP_CHUNK}")
    rows = []
    for mode in ("train", "rollout"):
        for variant in ("old", "fused"):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--mode", mode] + [
                f"--{k}={getattr(args, k)}" for k in ("device", "B", "T", "P", "hidden", "layers", "repeats", "threads")]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if out.returncode:
                sys.exit(f"{variant} {mode} failed:\n{out.stderr[-2000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  {mode:7s} {variant}: peak above the model {r['peak_above_gb']:.2f} GB, {r['median_s']:.2f} s")
    print("\n| call | old: peak above model | fused | old: time | fused |\n|---|---|---|---|---|")
    for mode in ("train", "rollout"):
        old, fused = (next(r for r in rows if r["mode"] == mode and r["variant"] == v) for v in ("old", "fused"))
        print(f"| {mode} | {old['peak_above_gb']:.2f} GB | {fused['peak_above_gb']:.2f} GB | "
              f"{old['median_s']:.2f} s | {fused['median_s']:.2f} s |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items() if k not in ("worker", "mode")}, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
