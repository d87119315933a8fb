"""
Supervised warm start (SFT): teach a causal LM to answer prompt -> solution, with the loss on the
solution tokens only. On real models this stage is optional (the paper starts RL from instruct
models, METHOD §1); in the arith world it produces the starting policy `models/arith-policy`.

Works with any Hugging Face causal LM (`--init` a local path or hub id), or a tiny Llama / Qwen2
built from a config with no download (`--init scratch --tokenizer data/arith/tokenizer`).

Algorithm
  1. Load the problems (rewards.load_problems) and tokenize each one as
        input  = build_prompt(question) + solution + EOS
        labels = -100 on the prompt, the token ids on solution + EOS
     (the prompt is built through rewards.build_prompt, as in every stage).
  2. Build or load the model; AdamW, linear warmup then cosine decay to min_lr.
  3. Each step: draw `batch_size` examples (a seeded permutation per epoch, each rank its slice),
     right-pad, and minimise the token-level cross-entropy summed over all solution tokens of the
     optimizer batch divided by their count (micro-batches accumulate into one update).
  4. Every `eval_every` steps (and at the end): greedy accuracy on the first `eval_n` problems of
     the eval split with model.generate + rewards.is_correct; a response cut at max_new_tokens
     without EOS counts as wrong (METHOD §4). Print one decoded sample.
  5. Save the model + tokenizer with save_pretrained (generation_config carries pad/eos), and
     meta.json (resolved config, step, last metrics). metrics.jsonl has one line per logged step.
  `--eval-only` skips 2-5: it loads `--init`, reports greedy accuracy and sampling accuracy at
  temperature 1 (mean over `--eval-samples` samples per problem) on the eval split, and saves nothing
  but metrics.jsonl.

Departures from the paper: none; this stage is not part of the method (METHOD §1).

Commands
  CPU, the shipped arith policy (0.54M-parameter Llama, 2 layers x 128, 1500 steps of 64 problems;
  about 10-15 min on 2 CPU cores, see README for the measured wall-clock):
    python data/arith/prepare.py
    OMP_NUM_THREADS=1 python sft.py --out-dir models/arith-policy
  (NOTE: one thread is how the shipped weights were made; CPU matmuls are not bit-identical across
  thread counts, so another count gives slightly different weights and accuracy.)
  Measure a checkpoint (greedy + T=1 sampling on the full arith test split):
    python sft.py --eval-only --init models/arith-policy --eval-n 500 --eval-samples 4 --out-dir out/eval
  CPU smoke run (seconds):
    python sft.py --n-layer 1 --n-embd 32 --n-inner 64 --max-steps 20 --eval-n 10 --out-dir out/sft-smoke
  One GPU, a real instruct model on GSM8K (optional warm start):
    python sft.py --init Qwen/Qwen2-1.5B-Instruct --dataset gsm8k --max-len 1024 --batch-size 64 \
        --micro-batch-size 8 --lr 1e-5 --min-lr 1e-6 --max-steps 200 --eval-n 200 \
        --max-new-tokens 512 --eval-batch-size 32 --out-dir out/sft-gsm8k
  8 GPUs: the same with `torchrun --nproc_per_node=8 sft.py ...` (batch_size is global).

Expected result: the default arith command stops at 1500 steps on purpose, while the model is
still learning (greedy accuracy on the first 100 test problems climbs 0.01 / 0.03 / 0.16 / 0.34 /
0.51 / 0.52 at steps 250..1500). The shipped checkpoint scores 60.8% greedy and 50.4% T=1 sampling
(4 samples) on all 500 test problems: like the paper's instruct models it leaves room for RL.
Reproducible from --seed on one CPU setup (same thread count); not bit-reproducible across
machines, thread counts, GPU kernels or bf16.

Shapes: B sequences in a micro-batch, L prompt + solution tokens, V vocabulary.
"""

import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

import rewards


@dataclass
class Config:
    # model
    init: str = "scratch"  # "scratch" (build from the size fields below) or a path / hub id of a causal LM
    tokenizer: str = "data/arith/tokenizer"  # tokenizer dir / hub id for --init scratch (else the model's own)
    arch: str = "llama"  # scratch architecture: llama | qwen2
    n_layer: int = 2  # scratch: transformer blocks
    n_embd: int = 128  # scratch: hidden size
    n_head: int = 4  # scratch: attention heads (n_embd must divide by it)
    n_inner: int = 512  # scratch: MLP intermediate size
    # data
    dataset: str = "arith"  # arith | gsm8k | math | math500 | path/to/file.jsonl (rows need a solution)
    train_split: str = "train"
    eval_split: str = "test"
    max_len: int = 256  # max prompt + solution tokens; longer examples are dropped (count printed)
    # optimisation
    max_steps: int = 1500  # optimizer steps
    batch_size: int = 64  # sequences per optimizer step, global (all ranks, all micro-batches)
    micro_batch_size: int = 64  # sequences per forward pass per rank
    lr: float = 3e-3  # peak learning rate
    min_lr: float = 3e-4  # cosine decay floor
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max grad norm (0 = off)
    # evaluation
    eval_every: int = 250  # steps between greedy evals (0 = only at the end)
    eval_n: int = 100  # eval problems (first N of the eval split)
    eval_batch_size: int = 250  # prompts per generate call
    eval_samples: int = 4  # --eval-only: T=1 samples per problem for sampling accuracy (0 = skip)
    max_new_tokens: int = 160  # generation budget; a response without EOS by then is wrong
    eval_only: bool = False  # evaluate --init on the eval split (greedy + sampling) and exit
    # runtime
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str = "out/sft"


# -----------------------------------------------------------------------------
# config parsing (the same in every stage script)

def parse_config(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool or f.type == "bool":
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), nargs="?",
                           const=True, default=f.default, help=f"(default {f.default})")
        else:
            typ = f.type if callable(f.type) else {"int": int, "float": float, "str": str}[f.type]
            p.add_argument(flag, type=typ, default=f.default, help=f"(default {f.default})")
    return Config(**vars(p.parse_args(argv)))  # NOTE: argparse errors on unknown flags


# -----------------------------------------------------------------------------
# pure helpers

def tokenize_example(tokenizer, question, solution, max_len):
    """(input_ids, labels) for prompt + solution + EOS, labels -100 on the prompt; None if too long.

    NOTE: prompt and solution are tokenized separately and concatenated, so the boundary is exact
    for any tokenizer (BPE merges across it would blur which tokens are "solution").
    """
    prompt_ids = tokenizer(rewards.build_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
    sol_ids = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = prompt_ids + sol_ids
    if len(ids) > max_len:
        return None
    return ids, [-100] * len(prompt_ids) + sol_ids


def collate(examples, pad_id):
    """Right-pad a list of (ids, labels) into input_ids / attention_mask / labels, each (B, L)."""
    L = max(len(ids) for ids, _ in examples)
    B = len(examples)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)  # (B, L)
    labels = torch.full((B, L), -100, dtype=torch.long)  # (B, L)
    attn = torch.zeros((B, L), dtype=torch.long)  # (B, L)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attn[i, : len(ids)] = 1
    return input_ids, attn, labels


def sum_token_nll(logits, labels):
    """Summed next-token NLL over labelled positions, in fp32. logits (B, L, V), labels (B, L)."""
    logits = logits[:, :-1].float()  # (B, L-1, V) predicts token t+1
    target = labels[:, 1:]  # (B, L-1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                           ignore_index=-100, reduction="sum")


def lr_at(step, cfg):
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at cfg.max_steps (nanoGPT)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr
    ratio = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def grade(response, gold, finished):
    """Success per METHOD §4: 1 if the response finished (EOS) and its final answer equals the gold."""
    return bool(finished) and bool(rewards.is_correct(response, gold))


# -----------------------------------------------------------------------------
# model

def build_scratch_model(cfg, tokenizer):
    """A tiny Llama / Qwen2 causal LM from a config (no download), ids from the tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=len(tokenizer), hidden_size=cfg.n_embd, intermediate_size=cfg.n_inner,
                  num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                  num_key_value_heads=cfg.n_head, max_position_embeddings=cfg.max_len,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=None, tie_word_embeddings=True, attention_dropout=0.0)
    if cfg.arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    if cfg.arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    raise ValueError(f"unknown --arch {cfg.arch!r} (expected llama or qwen2)")


def load_model_and_tokenizer(cfg, device):
    from transformers import AutoModelForCausalLM

    if cfg.init == "scratch":
        tokenizer = rewards.load_tokenizer(cfg.tokenizer)
        torch.manual_seed(cfg.seed)  # identical init on every rank
        model = build_scratch_model(cfg, tokenizer)
    else:
        tokenizer = rewards.load_tokenizer(cfg.init)
        model = AutoModelForCausalLM.from_pretrained(cfg.init, dtype=torch.float32)
    if tokenizer.pad_token_id is None:  # NOTE: masks never come from ids == pad, so pad = eos is safe
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # for generation; training pads by hand (right)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if cfg.init == "scratch":  # plain model.generate() is greedy and long enough; a pretrained
        model.generation_config.do_sample = False  # model keeps its own defaults
        model.generation_config.max_new_tokens = cfg.max_new_tokens
    return model.to(device), tokenizer


# -----------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def generate(model, tokenizer, questions, max_new_tokens, temperature=0.0, batch_size=250):
    """Responses (text, finished) for each question; greedy when temperature == 0.

    finished is True when the model emitted EOS within max_new_tokens (else it is a truncation).
    """
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(questions), batch_size):
        prompts = [rewards.build_prompt(tokenizer, q) for q in questions[i: i + batch_size]]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        kw = dict(do_sample=False) if temperature == 0 else dict(
            do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        seq = model.generate(**enc, max_new_tokens=max_new_tokens, **kw,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        gen = seq[:, enc["input_ids"].shape[1]:]  # (B, T) generated tokens, pad after EOS
        for row in gen.tolist():
            finished = tokenizer.eos_token_id in row
            if finished:
                row = row[: row.index(tokenizer.eos_token_id)]
            out.append((tokenizer.decode(row, skip_special_tokens=True), finished))
    return out


def accuracy(model, tokenizer, problems, max_new_tokens, temperature=0.0, samples=1, batch_size=250):
    """Mean success over problems (and over `samples` draws each when sampling); also the responses."""
    questions = [p["question"] for p in problems] * samples
    golds = [p["answer"] for p in problems] * samples
    responses = generate(model, tokenizer, questions, max_new_tokens, temperature, batch_size)
    correct = [grade(r, g, fin) for (r, fin), g in zip(responses, golds)]
    return sum(correct) / max(1, len(correct)), responses


# -----------------------------------------------------------------------------
# main

def main(argv=None):
    cfg = parse_config(argv)
    # setup: distributed, device, seeding
    ddp = "RANK" in os.environ
    if ddp:
        import torch.distributed as dist
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    master = rank == 0

    def print0(*a):
        if master:
            print(*a, flush=True)

    if cfg.device == "auto":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    else:
        device = cfg.device
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
        print0(f"device {device}: bf16 autocast (supported); losses in fp32")
    else:
        autocast = contextlib.nullcontext()
        print0(f"device {device}: fp32 (no bf16 autocast: {'CPU' if device == 'cpu' else 'GPU lacks bf16'})")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    print0("config: " + json.dumps(dataclasses.asdict(cfg)))
    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
    model, tokenizer = load_model_and_tokenizer(cfg, device)
    n_params = sum(p.numel() for p in model.parameters())
    print0(f"model: {cfg.init} ({cfg.arch if cfg.init == 'scratch' else type(model).__name__}), "
           f"{n_params / 1e6:.2f}M parameters")
    eval_problems = rewards.load_problems(cfg.dataset, cfg.eval_split, limit=cfg.eval_n)
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")

    def log(row):
        print0(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if master:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    if cfg.eval_only:
        if master:
            t0 = time.time()
            g_acc, g_resp = accuracy(model, tokenizer, eval_problems, cfg.max_new_tokens,
                                     batch_size=cfg.eval_batch_size)
            row = {"eval/n": len(eval_problems), "eval/greedy_acc": g_acc,
                   "eval/greedy_truncated": sum(not f for _, f in g_resp) / max(1, len(g_resp))}
            if cfg.eval_samples > 0:
                torch.manual_seed(cfg.seed)
                s_acc, _ = accuracy(model, tokenizer, eval_problems, cfg.max_new_tokens, temperature=1.0,
                                    samples=cfg.eval_samples, batch_size=cfg.eval_batch_size)
                row.update({"eval/sample_acc": s_acc, "eval/samples": cfg.eval_samples})
            row["perf/eval_s"] = time.time() - t0
            log(row)
        if ddp:
            dist.destroy_process_group()
        return

    # 1. tokenize the training set
    if cfg.batch_size % (world * cfg.micro_batch_size):
        raise ValueError(f"batch_size {cfg.batch_size} must divide by world_size {world} x "
                         f"micro_batch_size {cfg.micro_batch_size}")
    accum = cfg.batch_size // (world * cfg.micro_batch_size)
    print0(f"per rank: {cfg.batch_size // world} sequences/step = {accum} micro-batches of {cfg.micro_batch_size}")
    train_rows = rewards.load_problems(cfg.dataset, cfg.train_split)
    examples, dropped = [], 0
    for i, row in enumerate(train_rows):
        if not row.get("solution"):
            raise ValueError(f"{cfg.dataset}/{cfg.train_split}: row {i + 1} has no solution to train on")
        ex = tokenize_example(tokenizer, row["question"], row["solution"], cfg.max_len)
        if ex is None:
            dropped += 1
        else:
            examples.append(ex)
    if not examples:
        raise ValueError(f"no training example fits in max_len={cfg.max_len}")
    print0(f"train: {len(examples)} examples ({dropped} dropped, longer than max_len={cfg.max_len})")

    # 2. optimizer (no weight decay on norms/biases), DDP wrapper
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    raw_model = model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)

    if master:
        open(metrics_path, "w").close()  # a fresh run starts a fresh metrics.jsonl
    gen = torch.Generator().manual_seed(cfg.seed)
    order, pos = torch.randperm(len(examples), generator=gen).tolist(), 0
    last = {}
    t_start = time.time()
    bar = tqdm(range(cfg.max_steps), disable=not master, desc="sft", dynamic_ncols=True)
    for step in bar:
        # 3. one optimizer step over the global batch; each rank its contiguous slice
        t0 = time.time()
        batch = []
        for _ in range(cfg.batch_size):
            if pos == len(order):  # new epoch, new seeded permutation
                order, pos = torch.randperm(len(examples), generator=gen).tolist(), 0
            batch.append(examples[order[pos]])
            pos += 1
        per_rank = cfg.batch_size // world
        mine = batch[rank * per_rank: (rank + 1) * per_rank]
        n_tok_global = sum(sum(t != -100 for t in lab[1:]) for _, lab in batch)  # loss normaliser
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        loss_sum = 0.0
        for m in range(accum):
            input_ids, attn, labels = collate(mine[m * cfg.micro_batch_size: (m + 1) * cfg.micro_batch_size],
                                              tokenizer.pad_token_id)
            input_ids, attn, labels = input_ids.to(device), attn.to(device), labels.to(device)
            # NOTE: DDP all-reduces only on the last micro-batch of the step
            ctx = model.no_sync() if ddp and m < accum - 1 else contextlib.nullcontext()
            with ctx, autocast:
                logits = model(input_ids=input_ids, attention_mask=attn).logits  # (B, L, V)
            nll = sum_token_nll(logits, labels)
            # NOTE: DDP averages gradients over ranks, so scale by world to get sum / global count
            loss = nll * world / n_tok_global
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
            loss.backward()
            loss_sum += nll.item()
        if cfg.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
        else:
            gnorm = float("nan")
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ddp:  # every rank joins; the logged loss is the global token mean
            t = torch.tensor([loss_sum], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            loss_sum = t.item()
        dt = time.time() - t0
        last = {"step": step + 1, "train/loss": loss_sum / max(1, n_tok_global),
                "train/lr": lr, "train/grad_norm": gnorm, "perf/step_s": dt,
                "perf/elapsed_s": time.time() - t_start}
        bar.set_postfix(loss=f"{last['train/loss']:.3f}")

        # 4. periodic greedy eval on the first eval_n problems (rank 0 only, no collectives inside)
        is_last = step + 1 == cfg.max_steps
        if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or is_last:
            if master:
                acc, resp = accuracy(raw_model, tokenizer, eval_problems, cfg.max_new_tokens,
                                     batch_size=cfg.eval_batch_size)
                last["eval/greedy_acc"] = acc
                last["eval/greedy_truncated"] = sum(not f for _, f in resp) / max(1, len(resp))
                text, fin = resp[0]
                tqdm.write(f"[step {step + 1}] Q: {eval_problems[0]['question']}\n  gold {eval_problems[0]['answer']}"
                           f"  correct {grade(text, eval_problems[0]['answer'], fin)}\n  {text!r}")
            if ddp:
                dist.barrier()
        if master and ((step + 1) % 10 == 0 or is_last or "eval/greedy_acc" in last):
            with open(metrics_path, "a") as f:
                f.write(json.dumps(last) + "\n")
            if "eval/greedy_acc" in last:
                tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in last.items()))

    # 5. save (unwrapped model) + meta.json
    if master:
        raw_model.save_pretrained(cfg.out_dir)
        tokenizer.save_pretrained(cfg.out_dir)
        meta = {"config": dataclasses.asdict(cfg), "step": cfg.max_steps, "metrics": last,
                "n_params": n_params, "train_wall_s": time.time() - t_start,
                "torch_threads": torch.get_num_threads(), "world_size": world,
                "command": "python " + " ".join(sys.argv)}
        with open(os.path.join(cfg.out_dir, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        print0(f"saved {cfg.out_dir} ({time.time() - t_start:.0f} s)")
    if ddp:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
